//! [`Secret`]: a string that `Debug` never shows (passwords, tokens).

use std::fmt;

/// A secret string: `Debug` prints `"<redacted>"`, and there is no
/// `Display`. The value is read only where it is used (the `Authorization`
/// header, which `reqwest` marks as sensitive).
#[derive(Clone, Default, PartialEq, Eq)]
pub(crate) struct Secret(pub(crate) String);

/// Shown instead of a secret value, in `Debug` and in error messages.
pub(crate) const REDACTED: &str = "<redacted>";

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{REDACTED}\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let s = Secret("hunter2".into());
        assert_eq!(format!("{s:?}"), "\"<redacted>\"");
        assert!(!format!("{:?}", Some(("user", s))).contains("hunter2"));
    }
}
