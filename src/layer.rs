//! The tracing layer.

/// The layer to add to a `tracing_subscriber::Registry`.
#[derive(Clone, Debug)]
pub struct SpanProfileLayer {
    _private: (),
}

impl SpanProfileLayer {
    pub(crate) fn inert() -> Self {
        SpanProfileLayer { _private: () }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for SpanProfileLayer {}
