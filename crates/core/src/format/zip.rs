//! Zip archives (PyTorch checkpoints, NumPy `.npz`): lists the entries from the central
//! directory (zip64 included) and opens any one as a stream, stored or deflated, so
//! the pickles inside can be scanned where they lie.

use std::io::{self, Read};

use super::source::{Source, SourceReader, Window};

/// The most entries an archive may list.
pub const MAX_ENTRIES: u64 = 1 << 20;
/// The largest central directory read.
pub const MAX_DIRECTORY: u64 = 256 << 20;
/// The longest entry name.
const MAX_NAME: usize = 4096;

const EOCD_SIG: u32 = 0x0605_4b50;
const ZIP64_LOCATOR_SIG: u32 = 0x0706_4b50;
const ZIP64_EOCD_SIG: u32 = 0x0606_4b50;
const CENTRAL_SIG: u32 = 0x0201_4b50;
const LOCAL_SIG: u32 = 0x0403_4b50;

/// One archive member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its name (path inside the archive).
    pub name: String,
    /// 0 stored, 8 deflated, anything else unsupported.
    pub method: u16,
    /// General-purpose flags (bit 0: encrypted).
    pub flags: u16,
    /// Compressed size.
    pub compressed: u64,
    /// Uncompressed size.
    pub size: u64,
    /// Offset of its local header.
    pub local_offset: u64,
}

/// Why an archive cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed zip archive: {0}")]
pub struct ZipError(pub String);

fn err(s: impl Into<String>) -> ZipError {
    ZipError(s.into())
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn read_at(
    src: &(impl Source + ?Sized),
    len: usize,
    at: u64,
    what: &str,
) -> Result<Vec<u8>, ZipError> {
    let mut b = vec![0u8; len];
    src.read_exact_at(&mut b, at)
        .map_err(|_| err(format!("{what} at offset {at} runs past the end")))?;
    Ok(b)
}

/// Lists the entries of the archive in `src`.
pub fn entries(src: &(impl Source + ?Sized)) -> Result<Vec<Entry>, ZipError> {
    let size = src.size();
    // The end-of-central-directory record is 22 bytes plus a comment of up to 64 KiB.
    let tail_len = size.min(22 + 65_535);
    let tail = read_at(src, tail_len as usize, size - tail_len, "end record")?;
    let at = (0..tail.len().saturating_sub(21))
        .rev()
        .find(|&i| u32_at(&tail, i) == EOCD_SIG)
        .ok_or_else(|| err("no end-of-central-directory record"))?;
    let eocd_pos = size - tail_len + at as u64;
    let e = &tail[at..];
    let mut count = u64::from(u16_at(e, 10));
    let mut dir_size = u64::from(u32_at(e, 12));
    let mut dir_offset = u64::from(u32_at(e, 16));
    if count == 0xffff || dir_size == 0xffff_ffff || dir_offset == 0xffff_ffff {
        let loc_pos = eocd_pos
            .checked_sub(20)
            .ok_or_else(|| err("zip64 locator missing"))?;
        let loc = read_at(src, 20, loc_pos, "zip64 locator")?;
        if u32_at(&loc, 0) != ZIP64_LOCATOR_SIG {
            return Err(err("zip64 locator missing"));
        }
        let rec_pos = u64_at(&loc, 8);
        let rec = read_at(src, 56, rec_pos, "zip64 end record")?;
        if u32_at(&rec, 0) != ZIP64_EOCD_SIG {
            return Err(err("zip64 end record missing"));
        }
        count = u64_at(&rec, 32);
        dir_size = u64_at(&rec, 40);
        dir_offset = u64_at(&rec, 48);
    }
    if count > MAX_ENTRIES || count > dir_size / 46 + 1 {
        return Err(err(format!(
            "{count} entries is more than the archive can hold"
        )));
    }
    if dir_size > MAX_DIRECTORY || dir_offset.saturating_add(dir_size) > size {
        return Err(err("central directory lies outside the file"));
    }
    let dir = read_at(src, dir_size as usize, dir_offset, "central directory")?;
    let mut out = Vec::with_capacity(count as usize);
    let mut p = 0usize;
    for i in 0..count {
        let h = dir
            .get(p..p + 46)
            .ok_or_else(|| err(format!("entry {i} runs past the central directory")))?;
        if u32_at(h, 0) != CENTRAL_SIG {
            return Err(err(format!("entry {i} has a bad signature")));
        }
        let flags = u16_at(h, 8);
        let method = u16_at(h, 10);
        let mut compressed = u64::from(u32_at(h, 20));
        let mut size_u = u64::from(u32_at(h, 24));
        let name_len = usize::from(u16_at(h, 28));
        let extra_len = usize::from(u16_at(h, 30));
        let comment_len = usize::from(u16_at(h, 32));
        let mut local_offset = u64::from(u32_at(h, 42));
        let var = dir
            .get(p + 46..p + 46 + name_len + extra_len + comment_len)
            .ok_or_else(|| err(format!("entry {i} runs past the central directory")))?;
        if name_len > MAX_NAME {
            return Err(err(format!("entry {i} has a {name_len}-byte name")));
        }
        let name = String::from_utf8_lossy(&var[..name_len]).into_owned();
        // Zip64 extra field: the 64-bit values, in order, for those saturated above.
        let mut extra = &var[name_len..name_len + extra_len];
        while extra.len() >= 4 {
            let id = u16_at(extra, 0);
            let len = usize::from(u16_at(extra, 2));
            let body = extra
                .get(4..4 + len)
                .ok_or_else(|| err(format!("entry {name:?} has a truncated extra field")))?;
            if id == 1 {
                let mut vals = body.chunks_exact(8).map(|c| u64_at(c, 0));
                for field in [&mut size_u, &mut compressed, &mut local_offset] {
                    if *field == 0xffff_ffff {
                        *field = vals
                            .next()
                            .ok_or_else(|| err(format!("entry {name:?} lacks its zip64 sizes")))?;
                    }
                }
            }
            extra = &extra[4 + len..];
        }
        out.push(Entry {
            name,
            method,
            flags,
            compressed,
            size: size_u,
            local_offset,
        });
        p += 46 + name_len + extra_len + comment_len;
    }
    Ok(out)
}

/// Opens `entry` as a stream of its uncompressed bytes, at most `entry.size` of them.
pub fn open<'a, S: Source + ?Sized>(
    src: &'a S,
    entry: &Entry,
) -> Result<Box<dyn Read + 'a>, ZipError> {
    if entry.flags & 1 != 0 {
        return Err(err(format!(
            "entry {:?} is encrypted and cannot be inspected",
            entry.name
        )));
    }
    let h = read_at(src, 30, entry.local_offset, "local header")?;
    if u32_at(&h, 0) != LOCAL_SIG {
        return Err(err(format!(
            "entry {:?} has a bad local header",
            entry.name
        )));
    }
    let start = entry.local_offset + 30 + u64::from(u16_at(&h, 26)) + u64::from(u16_at(&h, 28));
    if start.saturating_add(entry.compressed) > src.size() {
        return Err(err(format!(
            "entry {:?} runs past the end of the file",
            entry.name
        )));
    }
    let window = Window {
        inner: src,
        start,
        len: entry.compressed,
    };
    let raw = SourceReader::new(window, 0);
    match entry.method {
        0 => Ok(Box::new(raw.take(entry.size))),
        8 => Ok(Box::new(
            flate2::read::DeflateDecoder::new(raw).take(entry.size),
        )),
        m => Err(err(format!(
            "entry {:?} uses compression method {m}, which modeld cannot inspect",
            entry.name
        ))),
    }
}

/// Reads up to `n` leading bytes of an entry.
pub fn head<S: Source + ?Sized>(src: &S, entry: &Entry, n: usize) -> Result<Vec<u8>, ZipError> {
    let mut r = open(src, entry)?;
    let mut v = Vec::with_capacity(n);
    r.by_ref()
        .take(n as u64)
        .read_to_end(&mut v)
        .map_err(|e: io::Error| err(format!("entry {:?}: {e}", entry.name)))?;
    Ok(v)
}
