//! Sinks: the Pyroscope uploader and the local directory.
