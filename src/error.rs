//! The crate's error type.

use std::fmt;

/// What went wrong, broadly. See [`Error::kind`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A configuration value (environment variable or builder field) is invalid.
    Config,
    /// A profiler is already running in this process.
    AlreadyRunning,
    /// Another `SIGPROF` handler is installed; we refuse to replace it.
    SignalInUse,
    /// Profiling is not supported on this platform.
    Unsupported,
    /// An operating-system call failed (timers, signals, threads, files).
    Os,
}

/// An error from starting or configuring the profiler.
///
/// The message names the variable or field, the offending value (secrets
/// redacted) and what was expected.
pub struct Error {
    kind: ErrorKind,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            source: None,
        }
    }

    pub(crate) fn with_source(
        mut self,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// An invalid configuration value: `variable` is the environment variable
    /// or builder field, `value` what was given (already redacted if secret),
    /// `expected` a description of valid values.
    pub(crate) fn config(variable: &str, value: &str, expected: &str) -> Self {
        Error::new(
            ErrorKind::Config,
            format!("invalid {variable}={value:?}: expected {expected}"),
        )
    }

    /// What kind of error this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("message", &self.message)
            .field("source", &self.source)
            .finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|s| s.as_ref() as &(dyn std::error::Error + 'static))
    }
}
