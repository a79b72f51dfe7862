//! [`FileReader`]: a `gimli::Reader` over a byte range of an object file,
//! read with `pread` a chunk at a time through a bounded [`ChunkStore`].

use super::{CHUNK, CHUNK_BYTES_LIMIT};
use addr2line::gimli::{self, Reader, ReaderOffsetId, RunTimeEndian};
use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Longest slice a reader hands out whole (a name, a path); longer ones
/// are an error rather than an allocation of that size.
pub(super) const MAX_SLICE: u64 = 1 << 20;

/// The file's bytes read so far, by chunk index.
pub(super) struct ChunkStore {
    pub(super) file: File,
    chunks: Mutex<HashMap<u64, Arc<[u8]>>>,
    pub(super) bytes: AtomicUsize,
}

impl ChunkStore {
    pub(super) fn new(file: File) -> Arc<Self> {
        Arc::new(ChunkStore {
            file,
            chunks: Mutex::new(HashMap::new()),
            bytes: AtomicUsize::new(0),
        })
    }

    /// Chunk `index`, read from the file on first use. Shorter than
    /// [`CHUNK`] at the end of the file; `None` if it cannot be read.
    fn chunk(&self, index: u64) -> Option<Arc<[u8]>> {
        let mut chunks = self.chunks.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(hit) = chunks.get(&index) {
            return Some(hit.clone());
        }
        let mut buf = vec![0u8; CHUNK as usize];
        let mut filled = 0;
        while filled < buf.len() {
            match self
                .file
                .read_at(&mut buf[filled..], index * CHUNK + filled as u64)
            {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return None,
            }
        }
        buf.truncate(filled);
        let chunk: Arc<[u8]> = Arc::from(buf);
        if self.bytes.load(Ordering::Relaxed) + chunk.len() > CHUNK_BYTES_LIMIT {
            // A cache: what is dropped is read again if needed (readers
            // keep the chunk they are in).
            chunks.clear();
            self.bytes.store(0, Ordering::Relaxed);
        }
        self.bytes.fetch_add(chunk.len(), Ordering::Relaxed);
        chunks.insert(index, chunk.clone());
        Some(chunk)
    }
}

/// A `gimli::Reader` over a byte range of the file, read through a
/// [`ChunkStore`]. Offsets are file offsets, so [`ReaderOffsetId`]s of
/// different sections never collide.
#[derive(Clone)]
pub(crate) struct FileReader {
    store: Arc<ChunkStore>,
    pos: u64,
    end: u64,
    endian: RunTimeEndian,
    /// The chunk read last, so that byte-at-a-time parsing does not go
    /// through the store's lock.
    current: Option<(u64, Arc<[u8]>)>,
    /// Bytes shown instead of the file's (see [`Overlay`]).
    overlay: Option<Arc<Overlay>>,
    /// File positions `[start, end)` known to hold no overlay byte, so
    /// that reads inside them and inside `current` are a plain copy
    /// (empty until the first read).
    clean: (u64, u64),
}

/// Unit headers shown in place of the file's, sorted by file position:
/// each makes a run of units a lookup does not need look like one DWARF 5
/// type unit, which `addr2line` skips without parsing (see
/// [`DebugInfo::make_context`](super::DebugInfo::make_context)).
pub(super) type Overlay = Vec<(u64, [u8; TYPE_UNIT_HEADER])>;

/// Size of a 32-bit DWARF 5 type unit header.
pub(super) const TYPE_UNIT_HEADER: usize = 24;

impl fmt::Debug for FileReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileReader")
            .field("pos", &self.pos)
            .field("end", &self.end)
            .finish()
    }
}

impl FileReader {
    /// The same reader showing `overlay`'s bytes over the file's.
    pub(super) fn with_overlay(self, overlay: Arc<Overlay>) -> Self {
        FileReader {
            overlay: Some(overlay),
            clean: (0, 0),
            ..self
        }
    }

    pub(super) fn new(store: Arc<ChunkStore>, pos: u64, len: u64, endian: RunTimeEndian) -> Self {
        FileReader {
            store,
            pos,
            end: pos.saturating_add(len),
            endian,
            current: None,
            overlay: None,
            clean: (0, 0),
        }
    }

    fn eof(&self) -> gimli::Error {
        gimli::Error::UnexpectedEof(ReaderOffsetId(self.pos))
    }

    fn remaining(&self) -> u64 {
        self.end - self.pos
    }

    /// The next `len` bytes, if they lie in `current` and in `clean`:
    /// the path nearly every read of a parse takes.
    #[inline]
    fn in_current(&self, len: usize) -> Option<&[u8]> {
        let (index, chunk) = self.current.as_ref()?;
        let end = self.pos.checked_add(len as u64)?;
        if end > self.end || self.pos < self.clean.0 || end > self.clean.1 {
            return None;
        }
        if self.pos / CHUNK != *index {
            return None;
        }
        let within = (self.pos % CHUNK) as usize;
        chunk.get(within..within + len)
    }

    /// Sets `clean` to the overlay-free range around `pos`, unless `pos`
    /// is in it already.
    fn refresh_clean(&mut self) {
        if self.pos >= self.clean.0 && self.pos < self.clean.1 {
            return;
        }
        self.clean = match self.overlay.as_deref() {
            None => (0, u64::MAX),
            Some(overlay) => clean_around(overlay, self.pos),
        };
    }

    /// Copies the bytes at `at` into `out`: the file's, through `current`,
    /// and the overlay's where it has some.
    fn copy_at(
        store: &ChunkStore,
        current: &mut Option<(u64, Arc<[u8]>)>,
        overlay: Option<&Overlay>,
        at: u64,
        out: &mut [u8],
    ) -> bool {
        if !Self::copy_from_file(store, current, at, out) {
            return false;
        }
        if let Some(overlay) = overlay {
            let end = at + out.len() as u64;
            // Patches that start before `end`, from the last one back while
            // they still reach into `[at, end)`.
            let upto = overlay.partition_point(|(p, _)| *p < end);
            for (p, bytes) in overlay[..upto].iter().rev() {
                let p_end = p + TYPE_UNIT_HEADER as u64;
                if p_end <= at {
                    break;
                }
                let from = at.max(*p);
                let to = end.min(p_end);
                out[(from - at) as usize..(to - at) as usize]
                    .copy_from_slice(&bytes[(from - p) as usize..(to - p) as usize]);
            }
        }
        true
    }

    /// Copies the file's bytes at `at` into `out`, through `current`.
    fn copy_from_file(
        store: &ChunkStore,
        current: &mut Option<(u64, Arc<[u8]>)>,
        at: u64,
        out: &mut [u8],
    ) -> bool {
        let mut done = 0usize;
        while done < out.len() {
            let here = at + done as u64;
            let index = here / CHUNK;
            let chunk = match current {
                Some((i, chunk)) if *i == index => chunk,
                _ => match store.chunk(index) {
                    Some(chunk) => &current.insert((index, chunk)).1,
                    None => return false,
                },
            };
            let within = (here % CHUNK) as usize;
            let Some(available) = chunk.get(within..) else {
                return false;
            };
            if available.is_empty() {
                return false;
            }
            let n = available.len().min(out.len() - done);
            out[done..done + n].copy_from_slice(&available[..n]);
            done += n;
        }
        true
    }

    fn bytes(&self) -> gimli::Result<Vec<u8>> {
        let len = self.remaining();
        if len > MAX_SLICE {
            return Err(self.eof());
        }
        let mut out = vec![0u8; len as usize];
        let mut current = self.current.clone();
        if Self::copy_at(
            &self.store,
            &mut current,
            self.overlay.as_deref(),
            self.pos,
            &mut out,
        ) {
            Ok(out)
        } else {
            Err(self.eof())
        }
    }
}

impl Reader for FileReader {
    type Endian = RunTimeEndian;
    type Offset = usize;

    fn endian(&self) -> RunTimeEndian {
        self.endian
    }

    fn len(&self) -> usize {
        self.remaining() as usize
    }

    fn empty(&mut self) {
        self.end = self.pos;
    }

    fn truncate(&mut self, len: usize) -> gimli::Result<()> {
        if len as u64 > self.remaining() {
            return Err(self.eof());
        }
        self.end = self.pos + len as u64;
        Ok(())
    }

    fn offset_from(&self, base: &Self) -> usize {
        self.pos.wrapping_sub(base.pos) as usize
    }

    fn offset_id(&self) -> ReaderOffsetId {
        ReaderOffsetId(self.pos)
    }

    fn lookup_offset_id(&self, id: ReaderOffsetId) -> Option<usize> {
        (id.0 >= self.pos && id.0 <= self.end).then(|| (id.0 - self.pos) as usize)
    }

    fn find(&self, byte: u8) -> gimli::Result<usize> {
        let mut current = self.current.clone();
        let mut buf = [0u8; 256];
        let mut at = self.pos;
        while at < self.end {
            let n = ((self.end - at) as usize).min(buf.len());
            let piece = &mut buf[..n];
            if !Self::copy_at(
                &self.store,
                &mut current,
                self.overlay.as_deref(),
                at,
                piece,
            ) {
                return Err(self.eof());
            }
            if let Some(i) = piece.iter().position(|&b| b == byte) {
                return Ok((at - self.pos) as usize + i);
            }
            at += n as u64;
        }
        Err(self.eof())
    }

    fn skip(&mut self, len: usize) -> gimli::Result<()> {
        if len as u64 > self.remaining() {
            return Err(self.eof());
        }
        self.pos += len as u64;
        Ok(())
    }

    fn split(&mut self, len: usize) -> gimli::Result<Self> {
        if len as u64 > self.remaining() {
            return Err(self.eof());
        }
        let mut head = self.clone();
        head.end = self.pos + len as u64;
        self.pos += len as u64;
        Ok(head)
    }

    fn to_slice(&self) -> gimli::Result<Cow<'_, [u8]>> {
        self.bytes().map(Cow::Owned)
    }

    fn to_string(&self) -> gimli::Result<Cow<'_, str>> {
        String::from_utf8(self.bytes()?)
            .map(Cow::Owned)
            .map_err(|_| gimli::Error::BadUtf8)
    }

    fn to_string_lossy(&self) -> gimli::Result<Cow<'_, str>> {
        let bytes = self.bytes()?;
        Ok(Cow::Owned(String::from_utf8_lossy(&bytes).into_owned()))
    }

    #[inline]
    fn read_u8(&mut self) -> gimli::Result<u8> {
        if let Some(&[byte]) = self.in_current(1) {
            self.pos += 1;
            return Ok(byte);
        }
        let mut buf = [0u8; 1];
        self.read_slice(&mut buf)?;
        Ok(buf[0])
    }

    #[inline]
    fn read_slice(&mut self, buf: &mut [u8]) -> gimli::Result<()> {
        if let Some(bytes) = self.in_current(buf.len()) {
            buf.copy_from_slice(bytes);
            self.pos += buf.len() as u64;
            return Ok(());
        }
        if buf.len() as u64 > self.remaining() {
            return Err(self.eof());
        }
        if !Self::copy_at(
            &self.store,
            &mut self.current,
            self.overlay.as_deref(),
            self.pos,
            buf,
        ) {
            return Err(self.eof());
        }
        self.pos += buf.len() as u64;
        self.refresh_clean();
        Ok(())
    }
}

/// The range `[start, end)` around `at` that holds no byte of `overlay`,
/// or the empty `(at, at)` if a patch covers `at`. Patches have one
/// length and are sorted by start, so the last one starting at or before
/// `at` also ends last among those.
fn clean_around(overlay: &Overlay, at: u64) -> (u64, u64) {
    let after = overlay.partition_point(|(p, _)| *p <= at);
    let start = match after.checked_sub(1).and_then(|i| overlay.get(i)) {
        Some((p, _)) => p + TYPE_UNIT_HEADER as u64,
        None => 0,
    };
    if start > at {
        return (at, at);
    }
    let end = overlay.get(after).map_or(u64::MAX, |(p, _)| *p);
    (start, end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Reads of any size, one byte at a time or many (through the fast
    /// path inside the current chunk and the slow one across chunks and
    /// patches), see the overlay's
    /// bytes exactly where its patches lie and the file's elsewhere,
    /// including reads that start in a patch-free range and end in a
    /// patch.
    #[test]
    fn reads_of_every_size_see_the_overlay_exactly_where_it_lies() {
        let len = 3 * CHUNK as usize + 123;
        let file_bytes: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        let path = std::env::temp_dir().join(format!(
            "tracing-pyroscope-overlay-test-{}",
            std::process::id()
        ));
        std::fs::File::create(&path)
            .and_then(|mut f| f.write_all(&file_bytes))
            .expect("write the test file");
        let file = File::open(&path).expect("open the test file");
        let _ = std::fs::remove_file(&path);
        let patches: Vec<u64> = vec![100, 124, CHUNK - 10, 2 * CHUNK + 500];
        let overlay: Overlay = patches
            .iter()
            .enumerate()
            .map(|(k, &p)| (p, [0xA0 + k as u8; TYPE_UNIT_HEADER]))
            .collect();
        let mut expected = file_bytes.clone();
        for (p, bytes) in &overlay {
            expected[*p as usize..*p as usize + TYPE_UNIT_HEADER].copy_from_slice(bytes);
        }
        let store = ChunkStore::new(file);
        let reader = FileReader::new(store, 0, len as u64, RunTimeEndian::Little)
            .with_overlay(Arc::new(overlay));
        let mut r = reader.clone();
        let bytes: Vec<u8> = (0..len).map(|_| r.read_u8().expect("read_u8")).collect();
        assert!(bytes == expected, "read_u8 differs from the overlay");
        for step in [1usize, 2, 3, 5, 8, 24, 25, 100, len] {
            let mut r = reader.clone();
            let mut got = Vec::with_capacity(len);
            while r.len() > 0 {
                let mut buf = vec![0u8; step.min(r.len())];
                r.read_slice(&mut buf).expect("read");
                got.extend_from_slice(&buf);
            }
            assert!(
                got == expected,
                "reads of {step} bytes differ from the overlay"
            );
        }
        assert_eq!(&*reader.to_slice().expect("slice"), &expected[..]);
    }
}
