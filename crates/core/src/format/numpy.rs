//! NumPy `.npy` headers: enough to tell whether the array holds Python objects (whose
//! data is a pickle) and where that data starts.

use std::io::Read;

use super::source::Cursor;

/// The longest header accepted (NumPy itself refuses more than 10,000 bytes by
/// default).
pub const MAX_HEADER: u64 = 1 << 20;

/// What an `.npy` header says.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NpyInfo {
    /// Format version, e.g. `1.0`.
    pub version: String,
    /// The `descr` field as written, e.g. `'<f4'`.
    pub descr: String,
    /// The array holds Python objects: its data is a pickle.
    pub object: bool,
    /// Where the array data starts.
    pub data_offset: u64,
}

/// Why a `.npy` header is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed .npy header: {0}")]
pub struct NpyError(pub String);

/// Reads the header of the `.npy` stream at the cursor (positioned at its magic).
pub(crate) fn header<R: Read>(c: &mut Cursor<R>) -> Result<NpyInfo, NpyError> {
    let err = |s: &str| NpyError(s.to_owned());
    let start = c.pos();
    let magic: [u8; 8] = c.exact().map_err(|_| err("too short"))?;
    if &magic[..6] != b"\x93NUMPY" {
        return Err(err("missing magic"));
    }
    let (major, minor) = (magic[6], magic[7]);
    let len = match major {
        1 => u64::from(u16::from_le_bytes(c.exact().map_err(|_| err("too short"))?)),
        2 | 3 => u64::from(c.u32_le().map_err(|_| err("too short"))?),
        v => return Err(NpyError(format!("unknown version {v}.{minor}"))),
    };
    if len > MAX_HEADER {
        return Err(NpyError(format!(
            "header of {len} bytes is over the {MAX_HEADER}-byte limit"
        )));
    }
    let text = c
        .vec(len as usize)
        .map_err(|_| err("header runs past the end"))?;
    let text = String::from_utf8(text).map_err(|_| err("header is not text"))?;
    let descr = descr(&text).ok_or_else(|| err("no 'descr' entry"))?;
    Ok(NpyInfo {
        version: format!("{major}.{minor}"),
        object: is_object(descr),
        descr: descr.to_owned(),
        data_offset: c.pos() - start,
    })
}

/// The text of the `descr` value in a header dict such as
/// `{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }`.
fn descr(header: &str) -> Option<&str> {
    let at = header
        .find("'descr'")
        .or_else(|| header.find("\"descr\""))?;
    let rest = header[at + 7..]
        .trim_start()
        .strip_prefix(':')?
        .trim_start();
    // A plain type string, or a structured dtype (a list of fields), up to the next
    // top-level key.
    if rest.starts_with('[') {
        let mut depth = 0usize;
        for (i, ch) in rest.char_indices() {
            match ch {
                '[' | '(' => depth += 1,
                ']' | ')' => {
                    depth = depth.checked_sub(1)?;
                    if depth == 0 {
                        return Some(&rest[..=i]);
                    }
                }
                _ => {}
            }
        }
        None
    } else {
        // A quoted type string; the quote is ASCII, so slicing after it is safe.
        let q = rest.chars().next().filter(|c| *c == '\'' || *c == '"')?;
        let end = rest[1..].find(q)?;
        Some(&rest[..end + 2])
    }
}

/// Whether a `descr` names the object type anywhere (`'|O'`, or a field of type `O`).
/// Conservative: a structured dtype with any quoted `O` type string counts.
fn is_object(descr: &str) -> bool {
    descr
        .split(['\'', '"'])
        .skip(1)
        .step_by(2)
        .any(|s| s.trim_start_matches(['<', '>', '|', '=']).starts_with('O'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::source::SourceReader;

    fn npy(dict: &str) -> Vec<u8> {
        let mut v = b"\x93NUMPY\x01\x00".to_vec();
        v.extend_from_slice(&(dict.len() as u16).to_le_bytes());
        v.extend_from_slice(dict.as_bytes());
        v
    }

    fn read(bytes: &[u8]) -> Result<NpyInfo, NpyError> {
        header(&mut Cursor::new(SourceReader::new(bytes, 0), 0))
    }

    #[test]
    fn object_dtypes_are_found() {
        let dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }\n";
        let plain = read(&npy(dict)).unwrap();
        assert!(!plain.object);
        assert_eq!(plain.descr, "'<f4'");
        assert_eq!(plain.data_offset, 10 + dict.len() as u64);
        assert!(
            read(&npy(
                "{'descr': '|O', 'fortran_order': False, 'shape': (2,), }\n"
            ))
            .unwrap()
            .object
        );
        let structured = read(&npy(
            "{'descr': [('a', '<i4'), ('b', '|O')], 'fortran_order': False, 'shape': (2,), }\n",
        ))
        .unwrap();
        assert!(structured.object);
        assert!(read(b"\x93NUMPY\x09\x00").is_err());
        // Found by the `inspect` fuzzer: a multi-byte character where a quote belongs.
        assert!(
            read(&npy(
                "{'descr': \u{649}O', 'fortran_order': False, 'shape': (3,), }\n"
            ))
            .is_err()
        );
        assert!(read(&npy("{'shape': (2,), }\n")).is_err());
    }
}
