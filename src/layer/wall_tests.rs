//! Awaiting time.
