//! The Linux symbolizer: objects from `/proc/self/maps`, identified by
//! device and inode, with their build id and load bias from the loaded
//! image; see the parent module's docs.

use super::super::dwarf::{raw_frames, RawFrame, Unsupported};
use super::elf::SymbolTable;
use super::objects::{hex, open_debug_info, ObjectFile};
use super::{
    frame_name, hex_frame, is_qualified, LoadedImage, ObjectMapping, Resolved, SymbolFrame,
    CACHE_LIMIT,
};
use crate::maps;
use addr2line::gimli;
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Addresses of the profiler's own samples kept before that cache is
/// cleared (each holds a pointer to its function's shared result).
const SYMBOL_CACHE_LIMIT: usize = 16 * 1024;

/// How often `/proc/self/maps` may be re-read for unknown addresses.
const MAPS_REFRESH: Duration = Duration::from_secs(1);

/// Objects whose parsed debug info (unit contexts and file chunks, each
/// bounded in `dwarf.rs`) is kept from one interval to the next; the ones
/// used least recently are let go first.
pub(crate) const DEBUG_INFO_OBJECTS: usize = 2;

/// Chunk bytes kept across intervals, all objects together.
pub(crate) const DEBUG_INFO_BYTES: usize = 8 << 20;

/// Where distributions keep separate debug files.
const DEBUG_ROOT: &str = "/usr/lib/debug";

/// A mapped object's identity: `(major, minor)` device and inode, as
/// `/proc/self/maps` gives them.
type ObjectKey = ((u32, u32), u64);

/// An executable mapping plus what is needed to look addresses up in it.
struct Range {
    mapping: Arc<ObjectMapping>,
    /// `svma = avma - bias` (wrapping).
    bias: u64,
    /// Key into `Symbolizer::objects`; `None` for pseudo files.
    object: Option<ObjectKey>,
}

/// Maps addresses of this process to frames. See the module docs.
pub(crate) struct Symbolizer {
    /// Sorted by start address, non-overlapping.
    ranges: Vec<Range>,
    objects: HashMap<ObjectKey, ObjectFile>,
    /// The loaded images with their build ids (from memory).
    images: Option<fn() -> Vec<LoadedImage>>,
    debug_root: PathBuf,
    /// Addresses cached at most (both generations).
    cache_limit: usize,
    last_maps_read: Option<Instant>,
    /// Resolved addresses, newest generation; [`old`](Self::old) holds
    /// the one before. A hit in the old one moves to the new one; when the
    /// new one is full, the old one is dropped (counted in `evictions`):
    /// addresses still sampled stay, whatever the number of intervals.
    cache: HashMap<u64, Arc<Resolved>>,
    old: HashMap<u64, Arc<Resolved>>,
    /// The cache's results, one per distinct content: addresses with
    /// the same frames (the many sampled instructions of one source
    /// line, say) share one, so a new address costs a map entry.
    shared: HashSet<Arc<Resolved>>,
    /// Addresses resolved from the symbol table alone
    /// ([`Symbolizer::resolve_from_symbols`]).
    symbol_cache: HashMap<u64, Arc<Resolved>>,
    /// Their results, one per function: `(mapping start, function
    /// start)`.
    symbol_functions: HashMap<(u64, u64), Arc<Resolved>>,
    names: HashSet<Arc<str>>,
    /// Intervals ended ([`end_interval`](Self::end_interval)).
    interval: u64,
    /// New addresses named `object+offset` because no file had their
    /// object's identity.
    mismatches: u64,
    /// Cached addresses dropped to keep the cache bounded.
    evictions: u64,
}

impl fmt::Debug for Symbolizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Symbolizer")
            .field("ranges", &self.ranges.len())
            .field("objects", &self.objects.len())
            .field("cached_addresses", &(self.cache.len() + self.old.len()))
            .finish()
    }
}

impl Default for Symbolizer {
    fn default() -> Self {
        Self::new()
    }
}

impl Symbolizer {
    /// A new symbolizer. Cheap: maps and debug info are read on first use.
    /// Without [`with_images`](Self::with_images), an object's file is
    /// recognised by its device and inode only.
    pub(crate) fn new() -> Self {
        Symbolizer {
            ranges: Vec::new(),
            objects: HashMap::new(),
            images: None,
            debug_root: PathBuf::from(DEBUG_ROOT),
            cache_limit: CACHE_LIMIT,
            last_maps_read: None,
            cache: HashMap::new(),
            old: HashMap::new(),
            shared: HashSet::new(),
            symbol_cache: HashMap::new(),
            symbol_functions: HashMap::new(),
            names: HashSet::new(),
            interval: 0,
            mismatches: 0,
            evictions: 0,
        }
    }

    /// A symbolizer that takes each object's load bias and build id from
    /// the loaded image (`images`, the dynamic loader's list), and reads
    /// symbols only from a file with that build id.
    pub(crate) fn with_images(images: fn() -> Vec<LoadedImage>) -> Self {
        Symbolizer {
            images: Some(images),
            ..Self::new()
        }
    }

    /// A symbolizer whose address cache holds at most `limit` entries.
    #[cfg(test)]
    pub(crate) fn with_cache_limit(mut self, limit: usize) -> Self {
        self.cache_limit = limit;
        self
    }

    /// New addresses named `object+offset` because no file had their
    /// object's identity (replaced or rewritten since it was loaded).
    pub(crate) fn symbol_mismatches(&self) -> u64 {
        self.mismatches
    }

    /// Cached addresses dropped to keep the cache within [`CACHE_LIMIT`].
    #[cfg(test)]
    pub(crate) fn evictions(&self) -> u64 {
        self.evictions
    }

    fn cached_result(&mut self, probe: u64) -> Option<Arc<Resolved>> {
        if let Some(hit) = self.cache.get(&probe) {
            return Some(hit.clone());
        }
        let hit = self.old.remove(&probe)?;
        self.insert(probe, hit.clone());
        Some(hit)
    }

    fn insert(&mut self, probe: u64, resolved: Arc<Resolved>) {
        if self.cache.len() >= self.cache_limit / 2 {
            let dropped = std::mem::replace(&mut self.old, std::mem::take(&mut self.cache));
            self.evictions += dropped.len() as u64;
            drop(dropped);
            self.shared.retain(|r| Arc::strong_count(r) > 1);
            self.names.retain(|n| Arc::strong_count(n) > 1);
        }
        self.cache.insert(probe, resolved);
    }

    /// The frames at `probe`, an address of this process. Pass
    /// [`lookup_address`](super::lookup_address)`(addr, is_return)`.
    pub(crate) fn resolve(&mut self, probe: u64) -> Arc<Resolved> {
        if let Some(hit) = self.cached_result(probe) {
            return hit;
        }
        let range = match self.find_range(probe) {
            Some(i) => i,
            None => {
                // Not cached: a later maps refresh may know the address.
                return Arc::new(Resolved {
                    frames: vec![hex_frame(probe, Arc::from(""))],
                    mapping: None,
                });
            }
        };
        let resolved = self.resolve_in(range, probe);
        let resolved = match self.shared.get(&resolved) {
            Some(hit) => hit.clone(),
            None => {
                let resolved = Arc::new(resolved);
                self.shared.insert(resolved.clone());
                resolved
            }
        };
        self.insert(probe, resolved.clone());
        resolved
    }

    /// Resolves every address of `probes` not cached yet, in address
    /// order, so that [`resolve`](Self::resolve) then finds them all
    /// cached. In address order each compilation unit's debug info is
    /// read once, while its addresses are looked up: the few unit
    /// contexts kept
    /// ([`UNIT_CONTEXTS`](super::super::dwarf::UNIT_CONTEXTS)) are
    /// enough, and the heap used to symbolize an interval stays that of
    /// a few units, not of every unit its new addresses fall in.
    pub(crate) fn prefetch(&mut self, probes: impl IntoIterator<Item = u64>) {
        let mut todo: Vec<u64> = probes
            .into_iter()
            .filter(|probe| !self.cache.contains_key(probe))
            .collect();
        todo.sort_unstable();
        todo.dedup();
        for probe in todo {
            self.resolve(probe);
        }
    }

    /// The frame at `probe` for a sample of the profiler's own threads:
    /// what [`resolve`](Self::resolve) already knows, else the
    /// function's name from the object's symbol table (no inlined
    /// frames, no line), so that symbolizing the profiler's own
    /// samples never reads debug info. Without this, its leaf addresses
    /// are new in every interval (it runs different code each time
    /// its samples land) and each interval would read the binary's debug
    /// info again, which costs more than the rest of its work.
    pub(crate) fn resolve_from_symbols(&mut self, probe: u64) -> Arc<Resolved> {
        if let Some(hit) = self.cache.get(&probe).or_else(|| self.old.get(&probe)) {
            return hit.clone();
        }
        if let Some(hit) = self.symbol_cache.get(&probe) {
            return hit.clone();
        }
        let Some(range) = self.find_range(probe) else {
            return Arc::new(Resolved {
                frames: vec![hex_frame(probe, Arc::from(""))],
                mapping: None,
            });
        };
        let mapping = self.ranges[range].mapping.clone();
        let svma = probe.wrapping_sub(self.ranges[range].bias);
        let key = self.ranges[range].object;
        let mut mismatch = false;
        let found = key.and_then(|key| {
            let file = self.objects.get_mut(&key)?;
            let Some(source) = file.open_path().cloned() else {
                mismatch = true;
                return None;
            };
            let table = file
                .symbols
                .get_or_insert_with(|| SymbolTable::read(&source));
            let (start, name) = table.as_ref()?.find(svma)?;
            Some((key, source, start, name))
        });
        self.mismatches += u64::from(mismatch);
        let resolved = match found {
            // One result per function, shared by its addresses.
            Some((key, source, start, name)) => {
                let fkey = (mapping.start, start);
                match self.symbol_functions.get(&fkey) {
                    Some(hit) => hit.clone(),
                    None => {
                        let file = &self.objects[&key];
                        let path = file.path.clone();
                        let name = file
                            .symbols
                            .as_ref()
                            .and_then(Option::as_ref)
                            .and_then(|t| t.name(&source, name))
                            .map(|s| {
                                addr2line::demangle_auto(Cow::Borrowed(&s), None).into_owned()
                            });
                        let frame = match name.as_deref().map(frame_name) {
                            Some(n) if !n.is_empty() => SymbolFrame {
                                name: self.intern(n),
                                file: path,
                                line: 0,
                            },
                            _ => unknown_frame(&path, start),
                        };
                        let resolved = Arc::new(Resolved {
                            frames: vec![frame],
                            mapping: Some(mapping),
                        });
                        self.symbol_functions.insert(fkey, resolved.clone());
                        resolved
                    }
                }
            }
            None => Arc::new(Resolved {
                frames: vec![unknown_frame(&mapping.path, svma)],
                mapping: Some(mapping),
            }),
        };
        if self.symbol_cache.len() >= SYMBOL_CACHE_LIMIT {
            self.evictions += self.symbol_cache.len() as u64;
            self.symbol_cache.clear();
        }
        self.symbol_cache.insert(probe, resolved.clone());
        resolved
    }

    /// Ends an interval: keeps the debug info of the
    /// [`DEBUG_INFO_OBJECTS`] objects used last, within
    /// [`DEBUG_INFO_BYTES`] of file chunks, so that the next interval's new
    /// addresses in the same units do not parse them again, and drops the
    /// rest (and every `addr2line::Loader`, which holds a whole file).
    /// Returns `true` if some was dropped.
    pub(crate) fn end_interval(&mut self) -> bool {
        self.interval += 1;
        let mut released = false;
        let mut held: Vec<(u64, ObjectKey)> = Vec::new();
        for (key, object) in &mut self.objects {
            if let Some(Some(_)) = object.loader {
                object.loader = None;
                released = true;
            }
            if matches!(&object.dwarf, Some(Ok(d)) if d.holds()) {
                held.push((object.used, *key));
            }
        }
        held.sort_unstable_by(|a, b| b.cmp(a));
        let mut bytes = 0usize;
        for (i, (_, key)) in held.into_iter().enumerate() {
            let Some(Some(Ok(dwarf))) = self.objects.get_mut(&key).map(|o| o.dwarf.as_mut()) else {
                continue;
            };
            bytes += dwarf.bytes_held();
            if i >= DEBUG_INFO_OBJECTS || bytes > DEBUG_INFO_BYTES {
                released |= dwarf.release();
            }
        }
        released
    }

    /// Drops all the debug info read so far (the units' parsed DWARF and
    /// the file's pages read; the compact symbol tables stay), keeping
    /// the resolved addresses. Returns `true` if some was in memory.
    #[cfg(test)]
    pub(crate) fn release_debug_info(&mut self) -> bool {
        let mut released = false;
        for object in self.objects.values_mut() {
            if let Some(Some(_)) = object.loader {
                object.loader = None;
                released = true;
            }
            if let Some(Ok(dwarf)) = &mut object.dwarf {
                released |= dwarf.release();
            }
        }
        released
    }

    /// Objects whose debug info is in memory.
    #[cfg(test)]
    pub(crate) fn loaded_objects(&self) -> usize {
        self.objects
            .values()
            .filter(|o| {
                matches!(o.loader, Some(Some(_))) || matches!(&o.dwarf, Some(Ok(d)) if d.holds())
            })
            .count()
    }

    /// Number of cached addresses (for tests and stats).
    #[cfg(test)]
    pub(crate) fn cached(&self) -> usize {
        self.cache.len() + self.old.len()
    }

    fn find_range(&mut self, addr: u64) -> Option<usize> {
        if let Some(i) = self.lookup_range(addr) {
            return Some(i);
        }
        let due = self
            .last_maps_read
            .is_none_or(|at| at.elapsed() >= MAPS_REFRESH);
        if !due {
            return None;
        }
        self.reload_maps();
        self.lookup_range(addr)
    }

    fn lookup_range(&self, addr: u64) -> Option<usize> {
        let i = self.ranges.partition_point(|r| r.mapping.start <= addr);
        let i = i.checked_sub(1)?;
        (addr < self.ranges[i].mapping.limit).then_some(i)
    }

    /// Reads the maps again: new objects are opened (and checked), those
    /// no longer mapped are dropped with their cached addresses.
    pub(crate) fn reload_maps(&mut self) {
        self.last_maps_read = Some(Instant::now());
        let text = match std::fs::read_to_string("/proc/self/maps") {
            Ok(text) => text,
            Err(_) => return,
        };
        let images = self.images.map(|f| f()).unwrap_or_default();
        let mut ranges = Vec::new();
        for entry in maps::entries(&text) {
            if !entry.executable() || entry.path.is_empty() {
                continue;
            }
            let image = images
                .iter()
                .find(|i| i.text.iter().any(|r| r.contains(&entry.start)));
            let loaded_id = image.and_then(|i| i.build_id.as_deref()).map(hex);
            let key = entry.is_file().then_some((entry.dev, entry.inode));
            if let Some(key) = key {
                self.objects
                    .entry(key)
                    .or_insert_with(|| ObjectFile::open(&entry, loaded_id.as_deref()));
            }
            let object = key.and_then(|k| self.objects.get(&k));
            let elf = object.and_then(|o| o.elf.as_ref());
            let bias = match (image, elf) {
                (Some(image), _) => image.bias,
                (None, Some(elf)) => elf.bias(entry.start, entry.offset),
                // Pseudo files: addresses relative to the mapping.
                (None, None) => entry.start.wrapping_sub(entry.offset),
            };
            let build_id = loaded_id.or_else(|| elf.and_then(|e| e.build_id.clone()));
            ranges.push(Range {
                mapping: Arc::new(ObjectMapping {
                    path: Arc::from(entry.path),
                    start: entry.start,
                    limit: entry.end,
                    file_offset: entry.offset,
                    build_id,
                }),
                bias,
                object: key,
            });
        }
        ranges.sort_by_key(|r| r.mapping.start);
        let live: HashSet<ObjectKey> = ranges.iter().filter_map(|r| r.object).collect();
        self.objects.retain(|key, _| live.contains(key));
        let changed = ranges.len() != self.ranges.len()
            || ranges
                .iter()
                .zip(&self.ranges)
                .any(|(a, b)| a.mapping != b.mapping || a.object != b.object);
        if changed {
            // An unloaded library's addresses may now belong to another:
            // only results whose mapping is still there are kept.
            let mappings: HashSet<&ObjectMapping> = ranges.iter().map(|r| &*r.mapping).collect();
            let keep =
                |r: &Arc<Resolved>| r.mapping.as_ref().is_some_and(|m| mappings.contains(&**m));
            self.cache.retain(|_, r| keep(r));
            self.old.retain(|_, r| keep(r));
            self.shared.retain(keep);
            self.symbol_cache.retain(|_, r| keep(r));
            self.symbol_functions.retain(|_, r| keep(r));
            self.ranges = ranges;
        }
    }

    fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(hit) = self.names.get(s) {
            return hit.clone();
        }
        let arc: Arc<str> = Arc::from(s);
        self.names.insert(arc.clone());
        arc
    }

    fn resolve_in(&mut self, range: usize, probe: u64) -> Resolved {
        let mapping = self.ranges[range].mapping.clone();
        let svma = probe.wrapping_sub(self.ranges[range].bias);
        let source = self.ranges[range]
            .object
            .and_then(|key| Some((key, self.objects.get(&key)?.open_path()?.clone())));
        let Some((object, source)) = source else {
            self.mismatches += u64::from(self.ranges[range].object.is_some());
            return Resolved {
                frames: vec![unknown_frame(&mapping.path, svma)],
                mapping: Some(mapping),
            };
        };
        let interval = self.interval;
        let root = self.debug_root.clone();
        let Some(file) = self.objects.get_mut(&object) else {
            return Resolved {
                frames: vec![unknown_frame(&mapping.path, svma)],
                mapping: Some(mapping),
            };
        };
        file.used = interval;
        let dwarf = file.dwarf.get_or_insert_with(|| {
            let build_id = file.elf.as_ref().and_then(|e| e.build_id.as_deref());
            open_debug_info(&root, &file.path, &source, build_id)
        });
        let frames = match dwarf {
            Ok(dwarf) => dwarf.find_frames(svma),
            Err(Unsupported::NoDwarf) => Vec::new(),
            Err(Unsupported::Other) => {
                let loader = file
                    .loader
                    .get_or_insert_with(|| addr2line::Loader::new(&*source).ok());
                match loader {
                    Some(loader) => loader_frames(loader, svma),
                    None => Vec::new(),
                }
            }
        };
        // With `debug = "line-tables-only"` DWARF has bare names
        // (`run`, no path): the symbol table's is better for the
        // outermost frame, which owns the symbol.
        let bare = |name: &Option<String>| name.as_deref().is_none_or(|n| !is_qualified(n));
        let symbol = if frames.last().is_none_or(|(name, _, _)| bare(name))
            || frames.iter().any(|(name, _, _)| name.is_none())
        {
            self.symbol_name(object, &source, svma)
        } else {
            None
        };
        self.build_resolved(object, mapping, svma, RawFrames { frames, symbol })
    }

    /// The demangled symbol-table name of the function at `svma` of
    /// `object`.
    fn symbol_name(&mut self, object: ObjectKey, source: &str, svma: u64) -> Option<String> {
        let file = self.objects.get_mut(&object)?;
        let table = file
            .symbols
            .get_or_insert_with(|| SymbolTable::read(source))
            .as_ref()?;
        let (_, name) = table.find(svma)?;
        let name = table.name(source, name)?;
        Some(addr2line::demangle_auto(Cow::Borrowed(&name), None).into_owned())
    }

    /// Interns the [`RawFrames`] found at `svma` of `object` into a
    /// [`Resolved`] (fallbacks included).
    fn build_resolved(
        &mut self,
        object: ObjectKey,
        mapping: Arc<ObjectMapping>,
        svma: u64,
        raw: RawFrames,
    ) -> Resolved {
        let RawFrames {
            frames: raw,
            symbol,
        } = raw;
        let object_path = self
            .objects
            .get(&object)
            .map_or_else(|| mapping.path.clone(), |o| o.path.clone());
        let mut frames = Vec::with_capacity(raw.len().max(1));
        let outermost = raw.len().saturating_sub(1);
        for (i, (name, file, line)) in raw.into_iter().enumerate() {
            if name.is_none() && i != outermost {
                continue; // a nameless inlined frame: the outer one says enough
            }
            let bare = name.as_deref().is_none_or(|n| !is_qualified(n));
            let name = if i == outermost && bare && symbol.is_some() {
                symbol.as_deref()
            } else {
                name.as_deref().or(symbol.as_deref())
            };
            let name = match name.map(frame_name) {
                Some(n) if !n.is_empty() => self.intern(n),
                _ => unknown_frame(&object_path, svma).name,
            };
            let file = match file {
                Some(f) => self.intern(&f),
                None => self.intern(""),
            };
            frames.push(SymbolFrame { name, file, line });
        }
        if frames.is_empty() {
            match symbol.as_deref().map(frame_name) {
                Some(s) if !s.is_empty() => {
                    let name = self.intern(s);
                    frames.push(SymbolFrame {
                        name,
                        file: object_path,
                        line: 0,
                    });
                }
                _ => frames.push(unknown_frame(&object_path, svma)),
            }
        }
        Resolved {
            frames,
            mapping: Some(mapping),
        }
    }
}

/// What `addr2line` says about one address, before interning: the
/// frames innermost first (name, file, line), and the symbol table's
/// name when DWARF's is missing or bare.
#[derive(Default)]
struct RawFrames {
    frames: Vec<RawFrame>,
    symbol: Option<String>,
}

/// The frames `addr2line::Loader` finds at `svma`, innermost first.
fn loader_frames(loader: &addr2line::Loader, svma: u64) -> Vec<RawFrame> {
    raw_frames(loader.find_frames(svma).map_err(|_| gimli::Error::Io))
}

/// `<basename>+0x<svma>`, file = the object's path.
fn unknown_frame(path: &Arc<str>, svma: u64) -> SymbolFrame {
    let base = path.rsplit('/').next().unwrap_or(path);
    SymbolFrame {
        name: Arc::from(format!("{base}+0x{svma:x}")),
        file: path.clone(),
        line: 0,
    }
}
