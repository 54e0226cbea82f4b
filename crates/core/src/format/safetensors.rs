//! Strict validation of safetensors files.
//!
//! Layout: an 8-byte little-endian header length `n`, `n` bytes of UTF-8 JSON (an
//! object, padded with trailing spaces), then the tensor data. Every rule a loader
//! relies on is checked here, so a file that passes cannot make a loader read out of
//! bounds, allocate without limit or see two tensors share bytes.

use std::{collections::BTreeMap, fmt};

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::{Value, value::RawValue};

use super::source::Source;

/// The largest header a file may declare (the reference implementation's limit).
pub const MAX_HEADER: u64 = 100_000_000;

/// What a valid safetensors file holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SafetensorsInfo {
    /// Length of the JSON header.
    pub header_len: u64,
    /// Number of tensors.
    pub tensors: usize,
    /// Bytes of tensor data.
    pub data_bytes: u64,
    /// Tensor count per dtype.
    pub dtypes: BTreeMap<String, usize>,
    /// Entries in `__metadata__`.
    pub metadata: usize,
}

/// Why a file is not valid safetensors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SafetensorsError {
    /// Shorter than the 8-byte length prefix.
    #[error("file is {0} bytes, too short for the 8-byte header length")]
    TooShort(u64),
    /// The declared header is over [`MAX_HEADER`].
    #[error("header length {0} is over the limit of {MAX_HEADER} bytes")]
    HeaderTooLarge(u64),
    /// The declared header runs past the end of the file.
    #[error("header length {len} runs past the end of the {size}-byte file")]
    HeaderOutOfBounds {
        /// Declared header length.
        len: u64,
        /// File size.
        size: u64,
    },
    /// The header is not UTF-8.
    #[error("header is not valid UTF-8")]
    NotUtf8,
    /// The header does not start with `{`.
    #[error("header does not start with '{{'")]
    NotAnObject,
    /// The header is not JSON of the expected shape.
    #[error("header is not valid JSON: {0}")]
    Json(String),
    /// A key appears twice.
    #[error("duplicate key {0:?} in header")]
    DuplicateKey(String),
    /// `__metadata__` is not a map of strings to strings.
    #[error("__metadata__ must map strings to strings")]
    BadMetadata,
    /// A tensor entry is not `{dtype, shape, data_offsets}`.
    #[error("tensor {name:?}: {reason}")]
    BadTensor {
        /// Tensor name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// An unknown dtype.
    #[error("tensor {name:?}: unknown dtype {dtype:?}")]
    UnknownDtype {
        /// Tensor name.
        name: String,
        /// The dtype given.
        dtype: String,
    },
    /// The shape's element count (or its size in bits) overflows.
    #[error("tensor {0:?}: shape overflows")]
    ShapeOverflow(String),
    /// The element count times the dtype's bits is not a whole number of bytes.
    #[error("tensor {0:?}: {1} bits is not a whole number of bytes")]
    PartialByte(String, u128),
    /// The offsets do not describe exactly the tensor's bytes.
    #[error(
        "tensor {name:?}: data_offsets [{begin}, {end}] hold {got} bytes, its shape needs {need}"
    )]
    WrongSize {
        /// Tensor name.
        name: String,
        /// Start offset.
        begin: u64,
        /// End offset.
        end: u64,
        /// `end - begin` (or 0 if reversed).
        got: u64,
        /// What dtype and shape require.
        need: u64,
    },
    /// Sorted by offset, a tensor does not start where the previous one ended.
    #[error("tensor {name:?} starts at {begin}, expected {expected}: {what}")]
    NotContiguous {
        /// Tensor name.
        name: String,
        /// Its start.
        begin: u64,
        /// Where the previous tensor ended.
        expected: u64,
        /// `gap`, `overlap` or `alias`.
        what: &'static str,
    },
    /// The tensors do not end exactly at the end of the file.
    #[error("tensor data ends at {end} but the file holds {data} bytes of data")]
    DataLength {
        /// Where the last tensor ends.
        end: u64,
        /// Bytes after the header.
        data: u64,
    },
    /// Reading the file failed.
    #[error("reading the file: {0}")]
    Io(String),
}

/// Bits per element of each known dtype.
fn dtype_bits(dtype: &str) -> Option<u32> {
    Some(match dtype {
        "F4" => 4,
        "F6_E2M3" | "F6_E3M2" => 6,
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" | "F8_E4M3FNUZ"
        | "F8_E5M2FNUZ" => 8,
        "I16" | "U16" | "F16" | "BF16" => 16,
        "I32" | "U32" | "F32" => 32,
        "C64" | "F64" | "I64" | "U64" => 64,
        _ => return None,
    })
}

/// Validates the safetensors file in `src`.
pub fn validate(src: &(impl Source + ?Sized)) -> Result<SafetensorsInfo, SafetensorsError> {
    let size = src.size();
    let io = |e: std::io::Error| SafetensorsError::Io(e.to_string());
    if size < 8 {
        return Err(SafetensorsError::TooShort(size));
    }
    let mut n = [0u8; 8];
    src.read_exact_at(&mut n, 0).map_err(io)?;
    let header_len = u64::from_le_bytes(n);
    if header_len > MAX_HEADER {
        return Err(SafetensorsError::HeaderTooLarge(header_len));
    }
    if header_len > size - 8 {
        return Err(SafetensorsError::HeaderOutOfBounds {
            len: header_len,
            size,
        });
    }
    let mut header = vec![0u8; header_len as usize];
    src.read_exact_at(&mut header, 8).map_err(io)?;
    let mut info = check_header(&header)?;
    let data = size - 8 - header_len;
    if info.data_bytes != data {
        return Err(SafetensorsError::DataLength {
            end: info.data_bytes,
            data,
        });
    }
    info.header_len = header_len;
    Ok(info)
}

/// A JSON object read with its keys in order and duplicates refused (serde_json's
/// own maps keep the last of two equal keys silently).
struct Entries<T>(Vec<(String, T)>);

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for Entries<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: serde::Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Entries<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries<T>, A::Error> {
                let mut seen = std::collections::HashSet::new();
                let mut out = Vec::new();
                while let Some(k) = map.next_key::<String>()? {
                    if !seen.insert(k.clone()) {
                        return Err(de::Error::custom(format_args!("\u{0}duplicate:{k}")));
                    }
                    let v: T = map.next_value()?;
                    out.push((k, v));
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// Parses an object, naming a duplicate key if there is one.
fn entries<'a, T: serde::Deserialize<'a>>(
    json: &'a str,
) -> Result<Vec<(String, T)>, SafetensorsError> {
    match serde_json::from_str::<Entries<T>>(json) {
        Ok(e) => Ok(e.0),
        Err(e) => {
            let msg = e.to_string();
            match msg.strip_prefix("\u{0}duplicate:") {
                Some(rest) => {
                    // serde_json appends " at line L column C".
                    let key = rest.rsplit_once(" at line ").map_or(rest, |(k, _)| k);
                    Err(SafetensorsError::DuplicateKey(key.to_owned()))
                }
                None => Err(SafetensorsError::Json(msg)),
            }
        }
    }
}

/// A tensor's byte range, for the contiguity check.
struct Span {
    name: String,
    begin: u64,
    end: u64,
}

fn check_header(header: &[u8]) -> Result<SafetensorsInfo, SafetensorsError> {
    let text = std::str::from_utf8(header).map_err(|_| SafetensorsError::NotUtf8)?;
    if !text.starts_with('{') {
        return Err(SafetensorsError::NotAnObject);
    }
    // Trailing spaces pad the header to an aligned length; nothing else may follow.
    let text = text.trim_end_matches(' ');
    let mut info = SafetensorsInfo {
        header_len: 0,
        tensors: 0,
        data_bytes: 0,
        dtypes: BTreeMap::new(),
        metadata: 0,
    };
    let mut spans = Vec::new();
    for (name, value) in entries::<&RawValue>(text)? {
        if name == "__metadata__" {
            let meta = entries::<Value>(value.get()).map_err(|e| match e {
                SafetensorsError::DuplicateKey(k) => SafetensorsError::DuplicateKey(k),
                _ => SafetensorsError::BadMetadata,
            })?;
            if !meta.iter().all(|(_, v)| v.is_string()) {
                return Err(SafetensorsError::BadMetadata);
            }
            info.metadata = meta.len();
            continue;
        }
        let (dtype, span) = check_tensor(name, value)?;
        *info.dtypes.entry(dtype).or_default() += 1;
        spans.push(span);
    }
    spans.sort_by_key(|s| (s.begin, s.end));
    let mut expected = 0;
    let mut last_begin = None;
    for s in &spans {
        if s.begin != expected {
            let what = if s.begin > expected {
                "gap"
            } else if last_begin == Some(s.begin) {
                "alias"
            } else {
                "overlap"
            };
            return Err(SafetensorsError::NotContiguous {
                name: s.name.clone(),
                begin: s.begin,
                expected,
                what,
            });
        }
        if s.end > s.begin {
            last_begin = Some(s.begin);
        }
        expected = s.end;
    }
    info.tensors = spans.len();
    info.data_bytes = expected;
    Ok(info)
}

fn check_tensor(name: String, value: &RawValue) -> Result<(String, Span), SafetensorsError> {
    let bad = |name: &str, reason: &str| SafetensorsError::BadTensor {
        name: name.to_owned(),
        reason: reason.to_owned(),
    };
    let fields = entries::<Value>(value.get()).map_err(|e| match e {
        SafetensorsError::DuplicateKey(k) => bad(&name, &format!("duplicate key {k:?}")),
        _ => bad(&name, "not an object"),
    })?;
    let (mut dtype, mut shape, mut offsets) = (None, None, None);
    for (k, v) in fields {
        match k.as_str() {
            "dtype" => dtype = Some(v),
            "shape" => shape = Some(v),
            "data_offsets" => offsets = Some(v),
            other => return Err(bad(&name, &format!("unknown key {other:?}"))),
        }
    }
    let dtype = match dtype {
        Some(Value::String(s)) => s,
        Some(_) => return Err(bad(&name, "dtype is not a string")),
        None => return Err(bad(&name, "missing dtype")),
    };
    let bits = dtype_bits(&dtype).ok_or_else(|| SafetensorsError::UnknownDtype {
        name: name.clone(),
        dtype: dtype.clone(),
    })?;
    let shape = match shape {
        Some(Value::Array(dims)) => dims
            .iter()
            .map(Value::as_u64)
            .collect::<Option<Vec<u64>>>()
            .ok_or_else(|| bad(&name, "shape is not a list of non-negative integers"))?,
        Some(_) => return Err(bad(&name, "shape is not a list")),
        None => return Err(bad(&name, "missing shape")),
    };
    let (begin, end) = match offsets {
        Some(Value::Array(o)) if o.len() == 2 => match (o[0].as_u64(), o[1].as_u64()) {
            (Some(b), Some(e)) => (b, e),
            _ => return Err(bad(&name, "data_offsets are not non-negative integers")),
        },
        Some(_) => return Err(bad(&name, "data_offsets is not a pair [begin, end]")),
        None => return Err(bad(&name, "missing data_offsets")),
    };
    let elements = shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| SafetensorsError::ShapeOverflow(name.clone()))?;
    let total_bits = u128::from(elements) * u128::from(bits);
    if total_bits % 8 != 0 {
        return Err(SafetensorsError::PartialByte(name, total_bits));
    }
    let need =
        u64::try_from(total_bits / 8).map_err(|_| SafetensorsError::ShapeOverflow(name.clone()))?;
    let got = end.saturating_sub(begin);
    if end < begin || got != need {
        return Err(SafetensorsError::WrongSize {
            name,
            begin,
            end,
            got,
            need,
        });
    }
    Ok((dtype, Span { name, begin, end }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file from a header and `data` bytes of zeros, padded like the reference
    /// writer.
    pub(crate) fn file(header: &str, data: usize) -> Vec<u8> {
        let mut h = header.as_bytes().to_vec();
        while !h.len().is_multiple_of(8) {
            h.push(b' ');
        }
        let mut f = (h.len() as u64).to_le_bytes().to_vec();
        f.extend_from_slice(&h);
        f.resize(f.len() + data, 0);
        f
    }

    fn err(header: &str, data: usize) -> String {
        validate(file(header, data).as_slice())
            .unwrap_err()
            .to_string()
    }

    const GOOD: &str = r#"{"__metadata__":{"format":"pt"},"b":{"dtype":"F16","shape":[2,3],"data_offsets":[16,28]},"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;

    #[test]
    fn a_valid_file_is_described() {
        let info = validate(file(GOOD, 28).as_slice()).unwrap();
        assert_eq!(info.tensors, 2);
        assert_eq!(info.data_bytes, 28);
        assert_eq!(info.metadata, 1);
        assert_eq!(info.dtypes["F16"], 1);
    }

    #[test]
    fn every_rule_has_its_error() {
        assert!(err(GOOD, 27).contains("data ends at 28 but the file holds 27"));
        assert!(err(GOOD, 29).contains("holds 29"));
        assert!(
            err(
                r#"{"a":{"dtype":"F33","shape":[1],"data_offsets":[0,4]}}"#,
                4
            )
            .contains("unknown dtype \"F33\"")
        );
        assert!(
            err(
                r#"{"a":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}}"#,
                2
            )
            .contains("12 bits is not a whole number")
        );
        assert!(
            err(
                r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}}"#,
                4
            )
            .contains("shape overflows")
        );
        assert!(
            err(
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#,
                4
            )
            .contains("hold 4 bytes, its shape needs 8")
        );
        assert!(
            err(
                r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"a":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}}"#,
                8
            )
            .contains("duplicate key \"a\"")
        );
        assert!(
            err(
                r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[8,12]}}"#,
                12
            )
            .contains("starts at 8, expected 4: gap")
        );
        assert!(
            err(
                r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}}"#,
                6
            )
            .contains("overlap")
        );
        assert!(
            err(
                r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}"#,
                4
            )
            .contains("alias")
        );
        assert!(
            err(
                r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}}"#,
                8
            )
            .contains("starts at 4, expected 0")
        );
        assert!(err(r#"{"__metadata__":{"n":1}}"#, 0).contains("__metadata__ must map strings"));
        assert!(
            err(
                r#"{"__metadata__":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}}"#,
                0
            )
            .contains("__metadata__")
        );
        assert!(
            err(
                r#"{"a":{"dtype":"U8","shape":[0],"data_offsets":[0,0],"x":1}}"#,
                0
            )
            .contains("unknown key \"x\"")
        );
        assert!(err(r#"["a"]"#, 0).contains("does not start with"));
        assert!(err(r#"{"a":1} x"#, 0).contains("not valid JSON"));
    }

    #[test]
    fn header_bounds() {
        let mut f = (MAX_HEADER + 1).to_le_bytes().to_vec();
        f.extend_from_slice(b"{}");
        assert!(matches!(
            validate(f.as_slice()),
            Err(SafetensorsError::HeaderTooLarge(_))
        ));
        let mut f = 100u64.to_le_bytes().to_vec();
        f.extend_from_slice(b"{}");
        assert!(matches!(
            validate(f.as_slice()),
            Err(SafetensorsError::HeaderOutOfBounds { len: 100, size: 10 })
        ));
        let mut f = 2u64.to_le_bytes().to_vec();
        f.extend_from_slice(&[b'{', 0xff]);
        assert_eq!(validate(f.as_slice()), Err(SafetensorsError::NotUtf8));
        assert!(matches!(
            validate(&b"1234"[..]),
            Err(SafetensorsError::TooShort(4))
        ));
    }

    #[test]
    fn empty_and_zero_sized_tensors() {
        validate(file("{}", 0).as_slice()).unwrap();
        validate(
            file(
                r#"{"e":{"dtype":"F32","shape":[0,5],"data_offsets":[0,0]},"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}"#,
                2,
            )
            .as_slice(),
        )
        .unwrap();
    }
}
