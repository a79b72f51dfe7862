//! A mapped object's file, found by its identity: see the parent module's
//! docs ("Symbols come from the loaded image") and [`open_verified`]; and
//! its separate debug file.

use super::super::dwarf::{DebugInfo, Unsupported};
use super::elf::{debuglink, file_crc32, read_elf_info, ElfInfo, SymbolTable};
use crate::maps::{self, MapsEntry};
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One mapped object and the file its symbols are read from.
pub(super) struct ObjectFile {
    /// Its path as the maps show it (without ` (deleted)`).
    pub(super) path: Arc<str>,
    /// A file with the object's identity ([`open_verified`]), open for
    /// the object's life: its name (`/proc/self/fd/N`) opens it again,
    /// whatever is at `path` now. `None` if no file has that identity.
    pub(super) source: Option<(File, Arc<str>)>,
    /// Its DWARF, read a piece at a time (`dwarf.rs`), from the file or a
    /// separate debug file; `None` until first needed.
    pub(super) dwarf: Option<Result<DebugInfo, Unsupported>>,
    /// For DWARF that `dwarf.rs` does not read (compressed, split):
    /// `None` until first needed; `Some(None)` if it cannot be loaded.
    pub(super) loader: Option<Option<addr2line::Loader>>,
    pub(super) elf: Option<ElfInfo>,
    /// The function symbols, read on first need; `Some(None)` if there
    /// are none.
    pub(super) symbols: Option<Option<SymbolTable>>,
    /// The interval its debug info was last used in.
    pub(super) used: u64,
}

impl ObjectFile {
    /// The name to open the verified file by.
    pub(super) fn open_path(&self) -> Option<&Arc<str>> {
        self.source.as_ref().map(|(_, p)| p)
    }
}

impl ObjectFile {
    /// The object mapped by `entry`, whose loaded image has build id
    /// `loaded` if known: its file opened and checked ([`open_verified`]).
    pub(super) fn open(entry: &MapsEntry<'_>, loaded: Option<&str>) -> ObjectFile {
        let (source, elf) = match open_verified(entry, loaded) {
            Some((file, name, elf)) => (Some((file, name)), elf),
            None => (None, None),
        };
        ObjectFile {
            path: Arc::from(entry.path),
            source,
            dwarf: None,
            loader: None,
            elf,
            symbols: None,
            used: 0,
        }
    }
}

/// Opens a file with the identity of the mapped object `entry`: the path
/// the maps give (unless deleted), `/proc/self/exe` (the main program),
/// `/proc/self/map_files/<range>` (the mapped file itself, where the
/// kernel allows it). A candidate is the object when its GNU build id is
/// the one the loaded image has in memory (`loaded`); without an id in
/// memory, when its device and inode are the mapping's. Anything else at
/// the path (a file renamed over it, or rewritten in place) is not used.
fn open_verified(
    entry: &MapsEntry<'_>,
    loaded: Option<&str>,
) -> Option<(File, Arc<str>, Option<ElfInfo>)> {
    let mut candidates: Vec<PathBuf> = Vec::with_capacity(3);
    if !entry.deleted {
        candidates.push(PathBuf::from(entry.path));
    }
    candidates.push(PathBuf::from("/proc/self/exe"));
    candidates.push(PathBuf::from(format!(
        "/proc/self/map_files/{:x}-{:x}",
        entry.start, entry.end
    )));
    for candidate in candidates {
        let Ok(file) = File::open(&candidate) else {
            continue;
        };
        let Ok(meta) = file.metadata() else {
            continue;
        };
        let same_inode = maps::split_dev(meta.dev()) == entry.dev && meta.ino() == entry.inode;
        if loaded.is_none() && !same_inode {
            continue;
        }
        let name: Arc<str> = Arc::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        let elf = read_elf_info(&name);
        let file_id = elf.as_ref().and_then(|e| e.build_id.as_deref());
        let same = match loaded {
            // The same build: the loaded image's own contents (also where
            // the maps' inode is not the one `stat` gives, as on overlayfs).
            Some(id) => file_id == Some(id),
            None => same_inode,
        };
        if same {
            return Some((file, name, elf));
        }
    }
    None
}

/// A separate debug file for the object with build id `build_id` and file
/// `open_path` (shown as `path`): `<root>/.build-id/xx/yyyy.debug` if its
/// build id is the same, else the `.gnu_debuglink` file (next to `path`,
/// in its `.debug/`, or under `<root>` + its directory) if its CRC-32 is
/// the one the link gives.
pub(super) fn separate_debug_file(
    root: &Path,
    path: &str,
    open_path: &str,
    build_id: Option<&str>,
) -> Option<Arc<str>> {
    if let Some(id) = build_id.filter(|id| id.len() > 2) {
        let candidate = root.join(format!(".build-id/{}/{}.debug", &id[..2], &id[2..]));
        if let Some(name) = candidate.to_str() {
            let same = read_elf_info(name).is_some_and(|e| e.build_id.as_deref() == Some(id));
            if same {
                return Some(Arc::from(name));
            }
        }
    }
    let (name, crc) = debuglink(open_path)?;
    let dir = Path::new(path).parent()?;
    let under_root = root.join(dir.strip_prefix("/").unwrap_or(dir));
    [
        dir.join(&name),
        dir.join(".debug").join(&name),
        under_root.join(&name),
    ]
    .into_iter()
    .filter(|c| c.as_path() != Path::new(path))
    .find(|c| file_crc32(c) == Some(crc))
    .and_then(|c| c.to_str().map(Arc::from))
}

/// The DWARF of the object at `source` (shown as `path`): its own, else
/// that of its separate debug file ([`separate_debug_file`]).
pub(super) fn open_debug_info(
    root: &Path,
    path: &str,
    source: &Arc<str>,
    build_id: Option<&str>,
) -> Result<DebugInfo, Unsupported> {
    match DebugInfo::open(source) {
        Err(Unsupported::NoDwarf) => match separate_debug_file(root, path, source, build_id) {
            Some(debug) => DebugInfo::open(&debug),
            None => Err(Unsupported::NoDwarf),
        },
        other => other,
    }
}

/// Lowercase hex.
pub(super) fn hex(bytes: &[u8]) -> Arc<str> {
    Arc::from(bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
}
