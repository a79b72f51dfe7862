//! The one `/proc/self/maps` parser: the sampler reads it for stack bounds,
//! the symbolizer for the objects that hold code.
//!
//! A line is `start-end perms offset dev inode [path]`, e.g.
//! `7f1c2a000000-7f1c2a1b0000 r-xp 00028000 08:01 1234   /usr/lib/libc.so.6`.
//! The path may hold spaces; a file unlinked (or renamed over) since it was
//! mapped reads `<path> (deleted)`: [`MapsEntry::deleted`] says so and
//! [`MapsEntry::path`] is without the suffix.

#![cfg_attr(not(tp_sampler), allow(dead_code))]

/// One line of `/proc/self/maps`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MapsEntry<'a> {
    /// First address.
    pub(crate) start: u64,
    /// One past the last address.
    pub(crate) end: u64,
    /// `rwxp` flags as written (`-` for a missing permission).
    pub(crate) perms: [u8; 4],
    /// File offset the mapping starts at.
    pub(crate) offset: u64,
    /// Device of the mapped file, `(major, minor)`; `(0, 0)` if anonymous.
    pub(crate) dev: (u32, u32),
    /// Inode of the mapped file; 0 if anonymous.
    pub(crate) inode: u64,
    /// Path or pseudo name (`[stack]`, `[vdso]`), without ` (deleted)`;
    /// empty if anonymous.
    pub(crate) path: &'a str,
    /// The file was unlinked or replaced since it was mapped.
    pub(crate) deleted: bool,
}

impl MapsEntry<'_> {
    /// Readable.
    pub(crate) fn readable(&self) -> bool {
        self.perms[0] == b'r'
    }

    /// Executable.
    pub(crate) fn executable(&self) -> bool {
        self.perms[2] == b'x'
    }

    /// A mapping of a file (not anonymous, not a pseudo name like `[vdso]`).
    pub(crate) fn is_file(&self) -> bool {
        self.inode != 0 && !self.path.is_empty() && !self.path.starts_with('[')
    }
}

const DELETED: &str = " (deleted)";

/// Parses one line; `None` if it is not a well-formed maps line.
pub(crate) fn parse_line(line: &str) -> Option<MapsEntry<'_>> {
    let mut rest = line;
    let mut field = || {
        rest = rest.trim_start_matches(' ');
        let end = rest.find(' ').unwrap_or(rest.len());
        let (f, r) = rest.split_at(end);
        rest = r;
        f
    };
    let range = field();
    let perms = field();
    let offset = field();
    let dev = field();
    let inode = field();
    let (start, end) = range.split_once('-')?;
    let start = u64::from_str_radix(start, 16).ok()?;
    let end = u64::from_str_radix(end, 16).ok()?;
    if end <= start {
        return None;
    }
    let perms: [u8; 4] = perms.as_bytes().try_into().ok()?;
    let offset = u64::from_str_radix(offset, 16).ok()?;
    let (major, minor) = dev.split_once(':')?;
    let dev = (
        u32::from_str_radix(major, 16).ok()?,
        u32::from_str_radix(minor, 16).ok()?,
    );
    let inode = inode.parse().ok()?;
    let path = rest.trim_start_matches(' ').trim_end_matches(['\n', '\r']);
    let (path, deleted) = match path.strip_suffix(DELETED) {
        Some(p) if inode != 0 => (p, true),
        _ => (path, false),
    };
    Some(MapsEntry {
        start,
        end,
        perms,
        offset,
        dev,
        inode,
        path,
        deleted,
    })
}

/// Every well-formed line of `text` (the contents of `/proc/self/maps`).
pub(crate) fn entries(text: &str) -> impl Iterator<Item = MapsEntry<'_>> {
    text.lines().filter_map(parse_line)
}

/// `(major, minor)` of a `st_dev` as glibc's `makedev` encodes it, to
/// compare with [`MapsEntry::dev`].
pub(crate) fn split_dev(dev: u64) -> (u32, u32) {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    (major as u32, minor as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_field() {
        let line = "7f1c2a000000-7f1c2a1b0000 r-xp 00028000 08:01 1234   /usr/lib/x86_64-linux-gnu/libc.so.6";
        assert_eq!(
            parse_line(line),
            Some(MapsEntry {
                start: 0x7f1c2a000000,
                end: 0x7f1c2a1b0000,
                perms: *b"r-xp",
                offset: 0x28000,
                dev: (8, 1),
                inode: 1234,
                path: "/usr/lib/x86_64-linux-gnu/libc.so.6",
                deleted: false,
            })
        );
        let e = parse_line(line).expect("line");
        assert!(e.readable() && e.executable() && e.is_file());
    }

    #[test]
    fn paths_with_spaces_pseudo_names_anonymous_and_deleted_files() {
        let spaces = "1000-2000 r-xp 00000000 fe:00 1 /tmp/a dir/lib x.so";
        let e = parse_line(spaces).expect("line");
        assert_eq!((e.path, e.dev), ("/tmp/a dir/lib x.so", (0xfe, 0)));
        let vdso = "7ffd1000-7ffd3000 r-xp 00000000 00:00 0                          [vdso]";
        let e = parse_line(vdso).expect("line");
        assert_eq!(e.path, "[vdso]");
        assert!(!e.is_file());
        let anon = "7ffd1000-7ffd3000 rw-p 00000000 00:00 0 ";
        let e = parse_line(anon).expect("line");
        assert_eq!(e.path, "");
        assert!(!e.readable() || !e.executable());
        assert!(!e.is_file());
        let gone = "1000-2000 r-xp 00001000 08:01 77 /opt/app/libdeploy.so (deleted)";
        let e = parse_line(gone).expect("line");
        assert_eq!(
            (e.path, e.deleted, e.inode),
            ("/opt/app/libdeploy.so", true, 77)
        );
    }

    #[test]
    fn malformed_lines_are_refused() {
        for line in [
            "garbage",
            "",
            "2000-1000 r-xp 00000000 08:01 1 /x",
            "1000-2000 r-x 00000000 08:01 1 /x",
            "1000-2000 r-xp 0000zz00 08:01 1 /x",
            "1000-2000 r-xp 00000000 0801 1 /x",
            "1000-2000 r-xp 00000000 08:01 x /x",
        ] {
            assert_eq!(parse_line(line), None, "{line}");
        }
        assert_eq!(entries("garbage\n1000-2000 r--p 0 00:00 0\n").count(), 1);
    }

    #[test]
    fn device_numbers_match_stat() {
        use std::os::unix::fs::MetadataExt;
        let exe = std::env::current_exe().expect("exe");
        let meta = std::fs::metadata(&exe).expect("stat");
        let text = std::fs::read_to_string("/proc/self/maps").expect("maps");
        let exe = exe.to_str().expect("utf-8");
        let e = entries(&text)
            .find(|e| e.path == exe)
            .expect("the test binary is mapped");
        // On overlayfs the maps give the lower layer's device and inode,
        // not what `stat` gives.
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let fs = mounts
            .lines()
            .filter_map(|l| {
                let mut f = l.split(' ');
                let (_, at, fs) = (f.next()?, f.next()?, f.next()?);
                exe.starts_with(at).then_some((at.len(), fs))
            })
            .max_by_key(|(len, _)| *len)
            .map(|(_, fs)| fs);
        if fs == Some("overlay") {
            return;
        }
        assert_eq!((e.dev, e.inode), (split_dev(meta.dev()), meta.ino()));
    }
}
