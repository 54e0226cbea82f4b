//! Random-access byte sources for the inspectors, and a bounded sequential reader.
//!
//! The inspectors read headers by position and never hold a whole model in memory:
//! a [`Source`] is a file (read with `pread`) or, in tests and fuzzing, a byte slice.

use std::{
    fs::File,
    io::{self, BufRead, Read},
    os::unix::fs::FileExt,
};

/// Bytes that can be read at any offset.
pub trait Source {
    /// The total length in bytes.
    fn size(&self) -> u64;

    /// Fills `buf` from `offset`; an error if the source ends first.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl Source for [u8] {
    fn size(&self) -> u64 {
        self.len() as u64
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| eof())?;
        let end = start.checked_add(buf.len()).ok_or_else(eof)?;
        buf.copy_from_slice(self.get(start..end).ok_or_else(eof)?);
        Ok(())
    }
}

/// A file as a [`Source`], its length taken once when opened.
#[derive(Debug)]
pub struct FileSource<'a> {
    file: &'a File,
    size: u64,
}

impl<'a> FileSource<'a> {
    /// Wraps an open file.
    pub fn new(file: &'a File) -> io::Result<Self> {
        Ok(Self {
            size: file.metadata()?.len(),
            file,
        })
    }
}

impl Source for FileSource<'_> {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if offset.saturating_add(buf.len() as u64) > self.size {
            return Err(eof());
        }
        FileExt::read_exact_at(self.file, buf, offset)
    }
}

/// A window `[start, start + len)` of another source.
pub(crate) struct Window<'a, S: Source + ?Sized> {
    pub(crate) inner: &'a S,
    pub(crate) start: u64,
    pub(crate) len: u64,
}

impl<S: Source + ?Sized> Source for Window<'_, S> {
    fn size(&self) -> u64 {
        self.len
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if offset.saturating_add(buf.len() as u64) > self.len {
            return Err(eof());
        }
        self.inner.read_exact_at(buf, self.start + offset)
    }
}

pub(crate) fn eof() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "unexpected end of data")
}

impl<T: Source + ?Sized> Source for &T {
    fn size(&self) -> u64 {
        (**self).size()
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        (**self).read_exact_at(buf, offset)
    }
}

/// Reads a source from an offset onwards as a [`Read`].
pub(crate) struct SourceReader<S> {
    src: S,
    pos: u64,
}

impl<S: Source> SourceReader<S> {
    pub(crate) fn new(src: S, pos: u64) -> Self {
        Self { src, pos }
    }
}

impl<S: Source> Read for SourceReader<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.src.size().saturating_sub(self.pos);
        let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        self.src.read_exact_at(&mut buf[..n], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// A buffered reader that counts its position and refuses to allocate more than the
/// remaining input could hold.
pub(crate) struct Cursor<R> {
    inner: io::BufReader<R>,
    pos: u64,
}

/// The buffer of a [`Cursor`].
const CURSOR_BUF: usize = 64 * 1024;

impl<R: Read> Cursor<R> {
    pub(crate) fn new(inner: R, pos: u64) -> Self {
        Self {
            inner: io::BufReader::with_capacity(CURSOR_BUF, inner),
            pos,
        }
    }

    /// Where the next byte comes from, counted from the start of the source.
    pub(crate) fn pos(&self) -> u64 {
        self.pos
    }

    /// The next byte, or `None` at the end.
    pub(crate) fn byte(&mut self) -> io::Result<Option<u8>> {
        let buf = self.inner.fill_buf()?;
        let Some(&b) = buf.first() else {
            return Ok(None);
        };
        self.inner.consume(1);
        self.pos += 1;
        Ok(Some(b))
    }

    pub(crate) fn exact<const N: usize>(&mut self) -> io::Result<[u8; N]> {
        let mut b = [0u8; N];
        self.inner.read_exact(&mut b)?;
        self.pos += N as u64;
        Ok(b)
    }

    pub(crate) fn u32_le(&mut self) -> io::Result<u32> {
        self.exact().map(u32::from_le_bytes)
    }

    pub(crate) fn u64_le(&mut self) -> io::Result<u64> {
        self.exact().map(u64::from_le_bytes)
    }

    /// Reads `n` bytes into a vector; callers bound `n` before calling.
    pub(crate) fn vec(&mut self, n: usize) -> io::Result<Vec<u8>> {
        let mut v = Vec::new();
        let got = (&mut self.inner).take(n as u64).read_to_end(&mut v)?;
        self.pos += got as u64;
        if got < n {
            return Err(eof());
        }
        Ok(v)
    }

    /// Skips `n` bytes without keeping them.
    pub(crate) fn skip(&mut self, n: u64) -> io::Result<()> {
        let got = io::copy(&mut (&mut self.inner).take(n), &mut io::sink())?;
        self.pos += got;
        if got < n {
            return Err(eof());
        }
        Ok(())
    }

    /// Reads up to and including `\n`, at most `max` bytes; returns the line without
    /// the newline, or `None` if there is no newline within `max` bytes or before the end.
    pub(crate) fn line(&mut self, max: usize) -> io::Result<Option<Vec<u8>>> {
        let mut v = Vec::new();
        let got = (&mut self.inner)
            .take(max as u64 + 1)
            .read_until(b'\n', &mut v)?;
        self.pos += got as u64;
        if v.last() != Some(&b'\n') {
            return Ok(None);
        }
        v.pop();
        Ok(Some(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_and_windows_refuse_reads_past_the_end() {
        let data: &[u8] = b"0123456789";
        let mut b = [0u8; 4];
        data.read_exact_at(&mut b, 6).unwrap();
        assert_eq!(&b, b"6789");
        assert!(data.read_exact_at(&mut b, 7).is_err());
        assert!(data.read_exact_at(&mut b, u64::MAX).is_err());
        let w = Window {
            inner: data,
            start: 2,
            len: 5,
        };
        w.read_exact_at(&mut b, 1).unwrap();
        assert_eq!(&b, b"3456");
        assert!(w.read_exact_at(&mut b, 2).is_err());
    }

    #[test]
    fn cursor_counts_and_bounds() {
        let data: &[u8] = b"ab\ncdefgh";
        let mut c = Cursor::new(SourceReader::new(data, 0), 0);
        assert_eq!(c.line(10).unwrap().unwrap(), b"ab");
        assert_eq!(c.pos(), 3);
        assert_eq!(c.line(2).unwrap(), None);
        assert_eq!(c.pos(), 6);
        c.skip(2).unwrap();
        assert_eq!(c.byte().unwrap(), Some(b'h'));
        assert_eq!(c.byte().unwrap(), None);
        assert!(c.skip(1).is_err());
    }
}
