//! The four arms, and the adapter layer that gives pyroscope 2.x span ids.
//!
//! - (a) `none`: no profiler.
//! - (b) `tracing-pyroscope`: this crate's layer and profiler, uploading to
//!   the harness's receiver.
//! - (c) `pyroscope-every`: pyroscope 2.x with its pprof backend, and
//!   [`TagLayer`] in [`TagMode::Every`]: the thread's `span_id` tag follows
//!   the running root span, so every enter and exit of a root span (every
//!   poll of its future) removes one tag and adds another.
//! - (d) `pyroscope-root`: the same with [`TagMode::Root`]: a tag is added
//!   on the thread where the root span is first entered and removed (for
//!   that thread) when the root closes, as a user would at the start and
//!   end of a request.
//! - (e) `pyroscope-untagged` (only with `--arms …e`): pyroscope 2.x without
//!   tags, to tell its sampling losses from those of its tagging.
//!
//! pyroscope's tags are per OS thread: every add or remove takes the
//! backend's global lock and first dumps (symbolizes and aggregates)
//! everything sampled since the last dump, so that earlier samples keep the
//! earlier tags.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use pyroscope::backend::{Backend, Tag, ThreadTag};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::Subscriber;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// One arm of the comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arm {
    None,
    TracingPyroscope,
    PyroscopeEvery,
    PyroscopeRoot,
    PyroscopeUntagged,
}

impl Arm {
    pub const ALL: [Arm; 5] = [
        Arm::None,
        Arm::TracingPyroscope,
        Arm::PyroscopeEvery,
        Arm::PyroscopeRoot,
        Arm::PyroscopeUntagged,
    ];

    pub fn letter(self) -> char {
        match self {
            Arm::None => 'a',
            Arm::TracingPyroscope => 'b',
            Arm::PyroscopeEvery => 'c',
            Arm::PyroscopeRoot => 'd',
            Arm::PyroscopeUntagged => 'e',
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Arm::None => "none",
            Arm::TracingPyroscope => "tracing-pyroscope",
            Arm::PyroscopeEvery => "pyroscope-every",
            Arm::PyroscopeRoot => "pyroscope-root",
            Arm::PyroscopeUntagged => "pyroscope-untagged",
        }
    }

    pub fn from_letter(c: char) -> Option<Arm> {
        Arm::ALL.into_iter().find(|a| a.letter() == c)
    }
}

/// Which span enters and exits move the thread's tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TagMode {
    /// Follow the running root on every enter and exit.
    Every,
    /// Add at the root's first enter, remove at its close.
    Root,
}

/// The backend behind a running pyroscope agent (`agent.backend.backend`).
pub type SharedBackend = Arc<Mutex<Option<Box<dyn Backend>>>>;

/// Tags pyroscope's samples with the running root's `span_id`.
pub struct TagLayer {
    backend: SharedBackend,
    mode: TagMode,
    /// Tag adds and removes made.
    pub calls: Arc<AtomicU64>,
}

/// The root's span id (16 hex), in every span of its tree.
struct Sid(String);
/// (d): the thread a root's tag was added on.
struct TaggedOn(pyroscope::ThreadId, String);

thread_local! {
    /// (c): per thread, the tag each entered span wants, innermost last.
    static WANTED: RefCell<Vec<Option<String>>> = const { RefCell::new(Vec::new()) };
}

/// Finds the `sid` field.
struct SidVisitor(Option<String>);

impl Visit for SidVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "sid" {
            self.0 = Some(value.to_owned());
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "sid" {
            self.0 = Some(format!("{value:?}"));
        }
    }
}

impl TagLayer {
    pub fn new(backend: SharedBackend, mode: TagMode) -> Self {
        TagLayer {
            backend,
            mode,
            calls: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Adds or removes `span_id=value` for thread `tid`, as pyroscope's
    /// `tag_wrapper` does (same lock, same calls).
    fn tag(&self, add: bool, value: &str, tid: pyroscope::ThreadId) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let rule = ThreadTag::new(tid, Tag::new("span_id".into(), value.into()));
        let Ok(backend) = self.backend.lock() else {
            return;
        };
        if let Some(b) = backend.as_ref() {
            let _ = if add {
                b.add_tag(rule)
            } else {
                b.remove_tag(rule)
            };
        }
    }

    fn sid_of<S>(id: &Id, ctx: &Context<'_, S>) -> Option<String>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        let span = ctx.span(id)?;
        let ext = span.extensions();
        ext.get::<Sid>().map(|s| s.0.clone())
    }
}

impl<S> Layer<S> for TagLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut visitor = SidVisitor(None);
        attrs.record(&mut visitor);
        let inherited = span
            .parent()
            .and_then(|p| p.extensions().get::<Sid>().map(|s| s.0.clone()));
        if let Some(sid) = visitor.0.or(inherited) {
            span.extensions_mut().insert(Sid(sid));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let mut visitor = SidVisitor(None);
        values.record(&mut visitor);
        if let (Some(sid), Some(span)) = (visitor.0, ctx.span(id)) {
            let mut ext = span.extensions_mut();
            ext.remove::<Sid>();
            ext.insert(Sid(sid));
        }
    }

    fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
        match self.mode {
            TagMode::Every => {
                let sid = Self::sid_of(id, &ctx);
                WANTED.with(|w| {
                    let mut w = w.borrow_mut();
                    let top = w.last().cloned().flatten();
                    if top != sid {
                        let me = pyroscope::ThreadId::pthread_self();
                        if let Some(old) = &top {
                            self.tag(false, old, me.clone());
                        }
                        if let Some(new) = &sid {
                            self.tag(true, new, me);
                        }
                    }
                    w.push(sid);
                });
            }
            TagMode::Root => {
                let Some(span) = ctx.span(id) else { return };
                if span.parent().is_some() {
                    return;
                }
                let sid = {
                    let ext = span.extensions();
                    if ext.get::<TaggedOn>().is_some() {
                        return;
                    }
                    match ext.get::<Sid>() {
                        Some(s) => s.0.clone(),
                        None => return,
                    }
                };
                let me = pyroscope::ThreadId::pthread_self();
                self.tag(true, &sid, me.clone());
                span.extensions_mut().insert(TaggedOn(me, sid));
            }
        }
    }

    fn on_exit(&self, _id: &Id, _ctx: Context<'_, S>) {
        if self.mode != TagMode::Every {
            return;
        }
        WANTED.with(|w| {
            let mut w = w.borrow_mut();
            let mine = w.pop().flatten();
            let top = w.last().cloned().flatten();
            if top != mine {
                let me = pyroscope::ThreadId::pthread_self();
                if let Some(m) = &mine {
                    self.tag(false, m, me.clone());
                }
                if let Some(t) = &top {
                    self.tag(true, t, me);
                }
            }
        });
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        if self.mode != TagMode::Root {
            return;
        }
        let Some(span) = ctx.span(&id) else { return };
        let tagged = span
            .extensions_mut()
            .remove::<TaggedOn>()
            .map(|t| (t.0, t.1));
        if let Some((tid, sid)) = tagged {
            self.tag(false, &sid, tid);
        }
    }
}
