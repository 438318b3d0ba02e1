//! llm.c token shards: a 256 x int32 little-endian header, then the tokens.
//!
//! | header word | uint16 shards | uint32 shards |
//! |---|---|---|
//! | `[0]` magic | 20240520 | 20240801 |
//! | `[1]` version | 1 | 7 |
//! | `[2]` token count N | N | N |
//!
//! The rest of the header is zero. The file is exactly `1024 + width * N` bytes. Shards are
//! memory-mapped, checked completely when opened (so a bad file fails at start-up, not
//! mid-run), and written atomically (a temporary file renamed into place).

use std::fs::{self, File};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// Header size in bytes (256 int32 words).
pub const HEADER_BYTES: usize = 1024;
pub const MAGIC_U16: i32 = 20240520;
pub const VERSION_U16: i32 = 1;
pub const MAGIC_U32: i32 = 20240801;
pub const VERSION_U32: i32 = 7;

/// Bytes per token in a shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenWidth {
    U16,
    U32,
}

impl TokenWidth {
    pub fn bytes(self) -> usize {
        match self {
            TokenWidth::U16 => 2,
            TokenWidth::U32 => 4,
        }
    }

    /// The narrowest width that holds every id of a vocabulary of `vocab_size`.
    pub fn for_vocab(vocab_size: usize) -> Self {
        if vocab_size <= 1 << 16 {
            TokenWidth::U16
        } else {
            TokenWidth::U32
        }
    }

    fn magic_version(self) -> (i32, i32) {
        match self {
            TokenWidth::U16 => (MAGIC_U16, VERSION_U16),
            TokenWidth::U32 => (MAGIC_U32, VERSION_U32),
        }
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io { op, path: path.to_path_buf(), source }
}

/// Writes `tokens` as a shard at `path`, atomically: the bytes go to a temporary file in
/// the same directory, which is flushed to disk and then renamed over `path`.
pub fn write_shard(path: &Path, tokens: &[u32], width: TokenWidth) -> Result<()> {
    let mut w = ShardWriter::create(path, width, tokens.len())?;
    w.push(tokens)?;
    w.finish().map(|_| ())
}

/// The 1024-byte header of a shard of `count` tokens of `width`.
pub fn header(width: TokenWidth, count: i32) -> [u8; HEADER_BYTES] {
    let (magic, version) = width.magic_version();
    let mut bytes = [0u8; HEADER_BYTES];
    bytes[0..4].copy_from_slice(&magic.to_le_bytes());
    bytes[4..8].copy_from_slice(&version.to_le_bytes());
    bytes[8..12].copy_from_slice(&count.to_le_bytes());
    bytes
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hex SHA-256 of the file at `path`, read in 1 MiB blocks (memory stays small for any size).
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).map_err(io_err("open", path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io_err("read", path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// A shard written as its tokens come, in bounded memory: [`ShardWriter::push`] appends to a
/// temporary file beside `path` (hashing the bytes as they go), [`ShardWriter::finish`]
/// flushes it to disk and renames it into place. Dropped unfinished, the temporary file is
/// removed and `path` is untouched.
pub struct ShardWriter {
    path: PathBuf,
    tmp: PathBuf,
    file: Option<BufWriter<File>>,
    width: TokenWidth,
    expected: usize,
    count: usize,
    hasher: Sha256,
    buf: Vec<u8>,
}

impl ShardWriter {
    /// Starts a shard at `path` that is expected to hold `expected` tokens (the header is
    /// written with that count and rewritten by [`ShardWriter::finish`] if it ends shorter).
    pub fn create(path: &Path, width: TokenWidth, expected: usize) -> Result<Self> {
        let count = i32::try_from(expected).map_err(|_| Error::ShardTooLarge { path: path.to_path_buf(), tokens: expected })?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
        let file = File::create(&tmp).map_err(io_err("create", &tmp))?;
        let mut w = Self {
            path: path.to_path_buf(),
            tmp,
            file: Some(BufWriter::with_capacity(1 << 20, file)),
            width,
            expected,
            count: 0,
            hasher: Sha256::new(),
            buf: Vec::with_capacity(1 << 17),
        };
        let head = header(width, count);
        w.hasher.update(head);
        let tmp = w.tmp.clone();
        w.file.as_mut().expect("open").write_all(&head).map_err(io_err("write", &tmp))?;
        Ok(w)
    }

    /// Tokens written so far.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether no token was written yet.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The shard's final path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `tokens`; an id too wide for the shard's width is an error naming the shard.
    pub fn push(&mut self, tokens: &[u32]) -> Result<()> {
        if self.count + tokens.len() > i32::MAX as usize {
            return Err(Error::ShardTooLarge { path: self.path.clone(), tokens: self.count + tokens.len() });
        }
        for block in tokens.chunks(1 << 16) {
            self.buf.clear();
            match self.width {
                TokenWidth::U16 => {
                    if let Some(&t) = block.iter().find(|&&t| t > u16::MAX as u32) {
                        return Err(Error::TokenTooWide { path: self.path.clone(), token: t });
                    }
                    self.buf.extend(block.iter().flat_map(|&t| (t as u16).to_le_bytes()));
                }
                TokenWidth::U32 => self.buf.extend(block.iter().flat_map(|&t| t.to_le_bytes())),
            }
            self.hasher.update(&self.buf);
            let tmp = &self.tmp;
            self.file.as_mut().expect("open until finish").write_all(&self.buf).map_err(io_err("write", tmp))?;
        }
        self.count += tokens.len();
        Ok(())
    }

    /// Completes the shard: fixes the header if fewer tokens than expected came, flushes the
    /// file to disk, renames it to its path and returns the hex SHA-256 of its bytes.
    pub fn finish(mut self) -> Result<String> {
        let tmp = self.tmp.clone();
        let mut file = self
            .file
            .take()
            .expect("open until finish")
            .into_inner()
            .map_err(|e| Error::Io { op: "write", path: tmp.clone(), source: e.into_error() })?;
        let sha = if self.count == self.expected {
            hex(&std::mem::take(&mut self.hasher).finalize())
        } else {
            file.seek(SeekFrom::Start(0)).map_err(io_err("seek in", &tmp))?;
            file.write_all(&header(self.width, self.count as i32)).map_err(io_err("write", &tmp))?;
            sha256_file(&tmp)?
        };
        file.sync_all().map_err(io_err("sync", &tmp))?;
        drop(file);
        fs::rename(&tmp, &self.path).map_err(io_err("rename into", &self.path))?;
        Ok(sha)
    }
}

impl Drop for ShardWriter {
    fn drop(&mut self) {
        // Unfinished (an error, or the writer abandoned): leave nothing behind. After a
        // successful finish the temporary file was renamed and this finds nothing.
        if self.file.take().is_some() || self.tmp.exists() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// A shard's bytes: the file memory-mapped ([`Shard::open`]) or held in memory
/// ([`Shard::from_bytes`]); both are checked and read by the same code.
enum Bytes {
    Map(Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Map(map) => map,
            Bytes::Owned(bytes) => bytes,
        }
    }
}

/// A validated shard, memory-mapped (or, from [`Shard::from_bytes`], in memory).
pub struct Shard {
    path: PathBuf,
    map: Bytes,
    width: TokenWidth,
    len: usize,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard").field("path", &self.path).field("width", &self.width).field("len", &self.len).finish()
    }
}

impl Shard {
    /// Maps `path` and checks it: the magic number, the version that goes with it, the
    /// file size against the header's count, that it holds at least one token, and, when
    /// `vocab_size` is given, that every token id is below it (a full scan, in parallel).
    ///
    /// The file must not be truncated or rewritten in place while mapped (replacing it by
    /// rename, as [`write_shard`] does, is safe).
    pub fn open(path: &Path, vocab_size: Option<usize>) -> Result<Self> {
        let file = File::open(path).map_err(io_err("open", path))?;
        let size = file.metadata().map_err(io_err("read metadata of", path))?.len();
        if size < HEADER_BYTES as u64 {
            return Err(Error::BadShard {
                path: path.to_path_buf(),
                problem: format!("truncated: {size} bytes, shorter than the {HEADER_BYTES}-byte header"),
            });
        }
        // SAFETY: the map is read-only; the contract above (no in-place truncation while
        // mapped) is what every mmap reader relies on.
        let map = unsafe { Mmap::map(&file) }.map_err(io_err("memory-map", path))?;
        Self::check(path, Bytes::Map(map), vocab_size)
    }

    /// A shard from its bytes (the whole file), checked as [`Shard::open`] checks a file;
    /// `path` only names it in errors.
    pub fn from_bytes(path: &Path, bytes: Vec<u8>, vocab_size: Option<usize>) -> Result<Self> {
        Self::check(path, Bytes::Owned(bytes), vocab_size)
    }

    fn check(path: &Path, map: Bytes, vocab_size: Option<usize>) -> Result<Self> {
        let bad = |problem: String| Error::BadShard { path: path.to_path_buf(), problem };
        let size = map.len() as u64;
        if size < HEADER_BYTES as u64 {
            return Err(bad(format!("truncated: {size} bytes, shorter than the {HEADER_BYTES}-byte header")));
        }
        let word = |i: usize| i32::from_le_bytes(map[4 * i..4 * i + 4].try_into().expect("4 bytes"));
        let (magic, version, count) = (word(0), word(1), word(2));
        let width = match magic {
            MAGIC_U16 => TokenWidth::U16,
            MAGIC_U32 => TokenWidth::U32,
            other => {
                return Err(bad(format!(
                    "wrong magic number {other} (expected {MAGIC_U16} for uint16 tokens or {MAGIC_U32} for uint32 tokens)"
                )))
            }
        };
        let (_, expected_version) = width.magic_version();
        if version != expected_version {
            return Err(bad(format!("unsupported version {version} for magic {magic} (expected version {expected_version})")));
        }
        if count < 0 {
            return Err(bad(format!("negative token count {count} in the header")));
        }
        let expected = HEADER_BYTES as u64 + width.bytes() as u64 * count as u64;
        if size != expected {
            let what = if size < expected { "truncated" } else { "too long" };
            return Err(bad(format!(
                "{what}: the header says {count} tokens of {} bytes, so the file should be {expected} bytes, but it is {size}",
                width.bytes()
            )));
        }
        if count == 0 {
            return Err(bad("empty: the header says 0 tokens".into()));
        }
        let shard = Self { path: path.to_path_buf(), map, width, len: count as usize };
        if let Some(vocab) = vocab_size {
            shard.check_vocab(vocab)?;
        }
        Ok(shard)
    }

    fn check_vocab(&self, vocab: usize) -> Result<()> {
        if self.width == TokenWidth::U16 && vocab > u16::MAX as usize {
            return Ok(()); // every uint16 id fits
        }
        const BLOCK: usize = 1 << 16;
        let blocks = self.len.div_ceil(BLOCK);
        let first_bad = (0..blocks).into_par_iter().find_first(|&b| {
            let start = b * BLOCK;
            let mut buf = vec![0u32; BLOCK.min(self.len - start)];
            self.read(start, &mut buf);
            buf.iter().any(|&t| t as usize >= vocab)
        });
        if let Some(b) = first_bad {
            let start = b * BLOCK;
            let mut buf = vec![0u32; BLOCK.min(self.len - start)];
            self.read(start, &mut buf);
            let (i, &token) = buf.iter().enumerate().find(|(_, &t)| t as usize >= vocab).expect("found above");
            return Err(Error::BadShard {
                path: self.path.clone(),
                problem: format!("token id {token} at position {} is not below the vocabulary size {vocab}", start + i),
            });
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tokens in the shard (never 0).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn width(&self) -> TokenWidth {
        self.width
    }

    /// Copies tokens `[start, start + out.len())` into `out`, widened to u32.
    /// Panics if the range is outside the shard (callers index validated windows).
    #[inline]
    pub fn read(&self, start: usize, out: &mut [u32]) {
        let w = self.width.bytes();
        let bytes = &self.map[HEADER_BYTES + start * w..HEADER_BYTES + (start + out.len()) * w];
        match self.width {
            // chunks_exact + from_le_bytes compiles to vector loads and widening moves.
            TokenWidth::U16 if cfg!(target_endian = "little") && (bytes.as_ptr() as usize) % 2 == 0 => {
                // SAFETY: u16 has no invalid bit patterns; the pointer is 2-aligned (checked),
                // so align_to yields an empty prefix and every byte lands in `ids`.
                let (_, ids, _) = unsafe { bytes.align_to::<u16>() };
                for (o, &id) in out.iter_mut().zip(ids) {
                    *o = id as u32;
                }
            }
            TokenWidth::U16 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = u16::from_le_bytes([c[0], c[1]]) as u32;
                }
            }
            TokenWidth::U32 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
        }
    }

    /// Every token, widened to u32.
    pub fn to_vec(&self) -> Vec<u32> {
        let mut out = vec![0u32; self.len];
        self.read(0, &mut out);
        out
    }
}
