//! Function names as frames show them.
//!
//! A symbolized frame has one full name: a demangled linkage or
//! symbol-table name with every generic argument, such as
//! `<tokio::runtime::blocking::task::BlockingTask<T> as core::future::future::Future>::poll`,
//! or a bare DWARF name (`poll`), which [`frame_name`] has already
//! stripped of its arguments.
//!
//! A pprof `Function` then gets two names (`encode.rs`): `name`, the
//! [`readable`] form that Pyroscope, Grafana and Google's pprof tool show,
//! and `system_name`, the full name. The readable form drops generic
//! arguments but keeps every type and trait they belong to:
//!
//! | full | readable |
//! |---|---|
//! | `<F as core::ops::function::FnOnce<()>>::call_once` | `<F as core::ops::function::FnOnce>::call_once` |
//! | `core::iter::range::<impl core::iter::traits::iterator::Iterator for core::ops::range::Range<A>>::next` | `core::iter::range::<impl core::iter::traits::iterator::Iterator for core::ops::range::Range>::next` |
//! | `tokio::runtime::task::harness::Harness<T,S>::poll` | `tokio::runtime::task::harness::Harness::poll` |
//! | `core::ptr::drop_in_place::<alloc::vec::Vec<u8>>` | `core::ptr::drop_in_place` |
//!
//! Without this, readers simplify the full name themselves, C++-style,
//! removing everything between `<` and `>`: `::call_once`, `::poll`,
//! `core::iter::range::::next`, which merges every future's `poll` into
//! one frame and names none of them.

use std::borrow::Cow;

#[cfg_attr(not(tp_sampler), allow(dead_code))] // the symbolizer's
/// `true` if `name` has a path: a `::` outside generic arguments, as in
/// `tokio::runtime::Runtime::block_on` or `<T as Trait>::call`, and not only
/// inside them, as in `poll<tokio::time::Sleep>`.
pub(crate) fn is_qualified(name: &str) -> bool {
    let mut depth = 0usize;
    let mut prev = '\0';
    for c in name.chars() {
        match c {
            '<' => depth += 1,
            // `->` in `fn(A) -> B` closes nothing.
            '>' if prev != '-' => depth = depth.saturating_sub(1),
            ':' if prev == ':' && depth == 0 => return true,
            _ => {}
        }
        prev = c;
    }
    false
}

#[cfg_attr(not(tp_sampler), allow(dead_code))] // the symbolizer's
/// The name a symbolized frame keeps (its full name).
///
/// Qualified names ([`is_qualified`]) are kept whole: they come from a
/// linkage name or the symbol table and are the same for every caller. A
/// bare name (DWARF's `DW_AT_name`, all that `debug = "line-tables-only"`
/// has for inlined code) loses the generic arguments that follow it:
/// `call_once<(), tokio::…::{closure_env#0}<…>>` becomes `call_once`,
/// `{closure#0}<F, ()>` becomes `{closure#0}`. What is left depends only on
/// the source, so it is the same in every run and for every caller.
/// Anything else (unbalanced brackets, C++ `operator<`) is kept as it is.
pub(crate) fn frame_name(name: &str) -> &str {
    if is_qualified(name) {
        return name;
    }
    let Some(open) = name.find('<').filter(|&i| i > 0) else {
        return name;
    };
    let base = &name[..open];
    if base.ends_with("operator") {
        return name;
    }
    // The arguments must be one group that closes at the very end.
    let mut depth = 0usize;
    let mut prev = '\0';
    for (i, c) in name[open..].char_indices() {
        match c {
            '<' => depth += 1,
            '>' if prev != '-' => {
                depth = match depth.checked_sub(1) {
                    Some(d) => d,
                    None => return name,
                };
                if depth == 0 && open + i + 1 != name.len() {
                    return name;
                }
            }
            _ => {}
        }
        prev = c;
    }
    if depth == 0 {
        base
    } else {
        name
    }
}

/// The name a reader shows for a frame whose full name is `full`: its
/// generic arguments removed, its types and traits kept.
///
/// - `<` right after a name (`Range<A>`, `FnOnce<()>`, `{closure#0}<F>`)
///   opens generic arguments: they go, brackets included; so does a
///   turbofish (`drop_in_place::<T>`) with its `::`.
/// - `<` anywhere else (at the start, after `::` before `impl `, after a
///   space or `(`) opens a qualified path (`<T as Trait>`, `<[T]>`,
///   `<impl Trait for Type>`): it stays, and its contents are simplified
///   the same way.
/// - `->` (`fn(A) -> B`) is an arrow, not a bracket.
///
/// `full` comes back as it is when it has no `<`, when it names a C++
/// operator (`operator<`, `operator<<`, `operator->`), when its brackets do
/// not balance, or when the result would not read as a path (empty,
/// starting or ending with `::`, or with `::::` in it).
pub(crate) fn readable(full: &str) -> Cow<'_, str> {
    if !full.contains('<')
        || ["operator<", "operator>", "operator-"]
            .iter()
            .any(|o| full.contains(o))
    {
        return Cow::Borrowed(full);
    }
    let mut out = String::with_capacity(full.len());
    match simplify(full, &mut out) {
        Some(())
            if !out.is_empty()
                && !out.starts_with("::")
                && !out.ends_with("::")
                && !out.contains("::::") =>
        {
            Cow::Owned(out)
        }
        _ => Cow::Borrowed(full),
    }
}

/// Bytes that end a name, so that a `<` right after one opens generic
/// arguments.
fn ends_name(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'}' | b'$' | b'\'') || !b.is_ascii()
}

/// Bytes that may follow generic arguments.
fn after_arguments(b: Option<&u8>) -> bool {
    matches!(
        b,
        None | Some(b':' | b'>' | b',' | b')' | b']' | b';' | b' ')
    )
}

/// The index of the `>` that closes the `<` at `open`, skipping `->`.
fn closing(s: &[u8], open: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (i, &b) in s.iter().enumerate().skip(open) {
        match b {
            b'<' => depth += 1,
            b'>' if i == 0 || s[i - 1] != b'-' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// Appends the readable form of `s` to `out`; `None` if `s` does not
/// parse (unbalanced, or arguments followed by something odd).
fn simplify(s: &str, out: &mut String) -> Option<()> {
    let bytes = s.as_bytes();
    let mut i = 0;
    // Start of the text not yet copied to `out`.
    let mut copied = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'<' => {
                let close = closing(bytes, i)?;
                let before = &s[..i];
                let is_binder = before.ends_with("for")
                    && !before[..before.len() - 3]
                        .bytes()
                        .next_back()
                        .is_some_and(ends_name);
                let arguments = i > 0 && ends_name(bytes[i - 1]) && !is_binder;
                let turbofish = before.ends_with("::") && !s[i + 1..].starts_with("impl ");
                out.push_str(&s[copied..i]);
                if arguments || turbofish {
                    if !after_arguments(bytes.get(close + 1)) {
                        return None;
                    }
                    if turbofish {
                        out.truncate(out.len() - 2);
                    }
                } else {
                    out.push('<');
                    simplify(&s[i + 1..close], out)?;
                    out.push('>');
                }
                i = close + 1;
                copied = i;
            }
            // A `>` that closes nothing opened here.
            b'>' if i == 0 || bytes[i - 1] != b'-' => return None,
            _ => i += 1,
        }
    }
    out.push_str(&s[copied..]);
    Some(())
}

#[cfg(test)]
mod tests {
    use super::{frame_name, is_qualified, readable};

    #[test]
    fn qualified_names_have_a_path_outside_generic_arguments() {
        for name in [
            "tokio::runtime::task::harness::Harness<T,S>::poll",
            "<alloc::boxed::Box<dyn core::ops::function::FnOnce<(), Output = ()> + core::marker::Send> as core::ops::function::FnOnce<()>>::call_once",
            "<std::sys::thread::unix::Thread>::new::thread_start",
            "ride_sharing_demo::server::order::{{closure}}",
            "core::ptr::drop_in_place::<alloc::vec::Vec<u8>>",
            "std::process::id",
        ] {
            assert!(is_qualified(name), "{name}");
        }
        for name in [
            "poll",
            "{closure#0}",
            "poll<ride_sharing_demo::server::order::{async_fn#0}::{closure_env#0}, u64>",
            "call_once<fn(u8) -> core::option::Option<u8>, (u8,)>",
            "libc.so.6+0x891f4",
            "0x1234",
            "",
            ":x",
        ] {
            assert!(!is_qualified(name), "{name}");
        }
    }

    #[test]
    fn bare_names_lose_their_generic_arguments() {
        let cases = [
            (
                "poll<ride_sharing_demo::server::order::{async_fn#0}::{closure_env#0}, u64>",
                "poll",
            ),
            (
                "{closure#0}<tokio::runtime::blocking::task::BlockingTask<ride_sharing_demo::server::order::{async_fn#0}::{closure_env#0}>, tokio::runtime::blocking::schedule::BlockingSchedule>",
                "{closure#0}",
            ),
            (
                "call_once<(), std::thread::lifecycle::spawn_unchecked::{closure#1}::{closure_env#0}<F, ()>>",
                "call_once",
            ),
            ("call_once<fn(u8) -> u8, (u8,)>", "call_once"),
            ("black_box<u64>", "black_box"),
            ("spec_next<[u8; 4]>", "spec_next"),
        ];
        for (name, shown) in cases {
            assert_eq!(frame_name(name), shown, "{name}");
            assert_eq!(readable(name), shown, "{name}");
        }
        // Every instantiation of a function is one frame, in every run.
        assert_eq!(
            frame_name("poll<tokio::runtime::blocking::task::BlockingTask<A>, S>"),
            frame_name("poll<B, core::task::poll::Poll<u64>>")
        );
    }

    #[test]
    fn other_names_are_kept_whole() {
        for name in [
            // Qualified: linkage or symbol-table names.
            "tokio::runtime::task::harness::Harness<T,S>::poll",
            "<alloc::boxed::Box<dyn core::ops::function::FnOnce<()>> as core::ops::function::FnOnce<()>>::call_once",
            "core::ptr::drop_in_place::<alloc::vec::Vec<u8>>",
            // Bare names without arguments, fallbacks.
            "spin",
            "{closure#0}",
            "libc.so.6+0x891f4",
            "0x8",
            "",
            // Not one closing group of arguments: left alone.
            "<lambda>",
            "foo<int",
            "foo<a>b",
            "foo<a>>",
            "foo<a><b>",
            // C++ operators.
            "operator<",
            "operator<<",
            "operator<=>",
            "operator->",
        ] {
            assert_eq!(frame_name(name), name);
        }
    }

    /// Real names from the demo's profiles (release build, `debug =
    /// "limited"`) and from the symbol tables of std and tokio.
    #[test]
    fn readable_names_keep_types_and_drop_generic_arguments() {
        let cases = [
            (
                "<F as core::ops::function::FnOnce<()>>::call_once",
                "<F as core::ops::function::FnOnce>::call_once",
            ),
            (
                "<tokio::runtime::blocking::task::BlockingTask<T> as core::future::future::Future>::poll",
                "<tokio::runtime::blocking::task::BlockingTask as core::future::future::Future>::poll",
            ),
            (
                "core::iter::range::<impl core::iter::traits::iterator::Iterator for core::ops::range::Range<A>>::next",
                "core::iter::range::<impl core::iter::traits::iterator::Iterator for core::ops::range::Range>::next",
            ),
            (
                "<alloc::boxed::Box<dyn core::ops::function::FnOnce<(), Output = ()> + core::marker::Send> as core::ops::function::FnOnce<()>>::call_once",
                "<alloc::boxed::Box as core::ops::function::FnOnce>::call_once",
            ),
            (
                "tokio::runtime::task::harness::Harness<T,S>::poll",
                "tokio::runtime::task::harness::Harness::poll",
            ),
            (
                "tokio::runtime::task::core::Core<T,S>::poll::{{closure}}",
                "tokio::runtime::task::core::Core::poll::{{closure}}",
            ),
            (
                "core::ptr::drop_in_place::<alloc::vec::Vec<u8>>",
                "core::ptr::drop_in_place",
            ),
            (
                "core::ptr::drop_in_place<tokio::runtime::task::core::Stage<F>>",
                "core::ptr::drop_in_place",
            ),
            (
                "<core::pin::Pin<P> as core::future::future::Future>::poll",
                "<core::pin::Pin as core::future::future::Future>::poll",
            ),
            (
                "<fn(A) -> B as core::ops::function::FnOnce<(A,)>>::call_once",
                "<fn(A) -> B as core::ops::function::FnOnce>::call_once",
            ),
            (
                "<&mut I as core::iter::traits::iterator::Iterator>::next",
                "<&mut I as core::iter::traits::iterator::Iterator>::next",
            ),
            (
                "<[T] as core::slice::index::SliceIndex<[T]>>::index",
                "<[T] as core::slice::index::SliceIndex>::index",
            ),
            (
                "<alloc::vec::Vec<T,A> as core::ops::drop::Drop>::drop",
                "<alloc::vec::Vec as core::ops::drop::Drop>::drop",
            ),
            (
                "std::thread::Builder::spawn_unchecked_::{{closure}}::{{closure}}",
                "std::thread::Builder::spawn_unchecked_::{{closure}}::{{closure}}",
            ),
            (
                "<std::sys::thread::unix::Thread>::new::thread_start",
                "<std::sys::thread::unix::Thread>::new::thread_start",
            ),
            (
                "<tokio::runtime::scheduler::multi_thread::worker::Context>::run_task::{closure#0}",
                "<tokio::runtime::scheduler::multi_thread::worker::Context>::run_task::{closure#0}",
            ),
            (
                "tokio::runtime::context::scoped::Scoped<T>::set",
                "tokio::runtime::context::scoped::Scoped::set",
            ),
            (
                "core::fmt::num::<impl core::fmt::Debug for i32>::fmt",
                "core::fmt::num::<impl core::fmt::Debug for i32>::fmt",
            ),
            (
                "<hashbrown::raw::RawTable<T,A> as core::ops::drop::Drop>::drop",
                "<hashbrown::raw::RawTable as core::ops::drop::Drop>::drop",
            ),
            (
                "<<F as axum::handler::Handler<(M,T1),S>>::call::{{closure}} as core::future::future::Future>::poll",
                "<<F as axum::handler::Handler>::call::{{closure}} as core::future::future::Future>::poll",
            ),
            // Bare DWARF names.
            ("call_once<(), ride_sharing_demo::work::X>", "call_once"),
            ("{closure#0}<F>", "{closure#0}"),
            // Nothing to remove.
            ("ride_sharing_demo::work::find_nearest_vehicle", "ride_sharing_demo::work::find_nearest_vehicle"),
            ("libc.so.6+0x891f4", "libc.so.6+0x891f4"),
            ("[tracing-pyroscope collector]", "[tracing-pyroscope collector]"),
            ("", ""),
        ];
        for (full, shown) in cases {
            assert_eq!(readable(full), shown, "{full}");
            assert!(
                !shown.starts_with("::") && !shown.contains("::::") && !shown.ends_with("::"),
                "{shown}"
            );
        }
    }

    #[test]
    fn readable_names_keep_what_they_cannot_parse() {
        for name in [
            // C++ operators.
            "operator<",
            "std::operator<< <std::char_traits<char> >",
            "operator<=>",
            "Foo::operator->",
            "foo::operator>>=",
            // Unbalanced brackets.
            "foo<int",
            "foo<a>>",
            "core::iter::<impl Foo",
            "a>b",
            // Arguments followed by something that is not a path.
            "foo<a>b",
            // Nothing left but separators.
            "<T>",
            "::<T>",
        ] {
            assert_eq!(readable(name), name, "{name}");
        }
        // A lone generic name.
        assert_eq!(readable("Vec<T>::new"), "Vec::new");
    }
}
