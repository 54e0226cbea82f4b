//! Line framing: each message is one line of JSON, at most [`MAX_FRAME`] bytes.

use std::io::{self, BufRead, Write};

use serde::{Serialize, de::DeserializeOwned};

pub use crate::protocol::MAX_FRAME;

/// Reads one line (without its newline) into `buf`; `Ok(false)` at a clean end of stream.
/// A line longer than [`MAX_FRAME`] is an error, and nothing past the limit is buffered.
pub fn read_line<R: BufRead>(reader: &mut R, buf: &mut Vec<u8>) -> io::Result<bool> {
    buf.clear();
    let mut limited = io::Read::take(&mut *reader, MAX_FRAME as u64 + 1);
    let n = limited.read_until(b'\n', buf)?;
    if n == 0 {
        return Ok(false);
    }
    if buf.last() != Some(&b'\n') {
        return Err(if buf.len() > MAX_FRAME {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "message larger than the frame limit",
            )
        } else {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed mid-message",
            )
        });
    }
    buf.pop();
    Ok(true)
}

/// Parses a line as a message.
pub fn decode<T: DeserializeOwned>(line: &[u8]) -> io::Result<T> {
    serde_json::from_slice(line).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Serializes a message as one line, newline included.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    // Messages are plain data; serializing them cannot fail.
    let mut v = serde_json::to_vec(msg).expect("message serializes");
    v.push(b'\n');
    v
}

/// Writes one message and flushes.
pub fn write_message<T: Serialize>(writer: &mut impl Write, msg: &T) -> io::Result<()> {
    writer.write_all(&encode(msg))?;
    writer.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_limits() {
        let mut input = io::Cursor::new(b"{\"a\":1}\n{\"b\":2}".to_vec());
        let mut buf = Vec::new();
        assert!(read_line(&mut input, &mut buf).unwrap());
        assert_eq!(buf, b"{\"a\":1}");
        let err = read_line(&mut input, &mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        let mut empty = io::Cursor::new(Vec::new());
        assert!(!read_line(&mut empty, &mut buf).unwrap());
        let mut huge = io::Cursor::new(vec![b'x'; MAX_FRAME + 10]);
        let err = read_line(&mut huge, &mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(buf.len() <= MAX_FRAME + 1);
    }
}
