//! Strict validation of GGUF files (versions 2 and 3, little-endian).
//!
//! Layout: `GGUF`, version (u32), tensor count (u64), key-value count (u64), the
//! key-value pairs, the tensor infos, padding to `general.alignment`, then the data
//! section. Every count is bounded by the bytes that could hold it before anything is
//! allocated, and every length is checked against the file.

use std::collections::{BTreeMap, HashSet};

use super::source::{Cursor, Source, SourceReader};

/// The longest key accepted.
pub const MAX_KEY_LEN: u64 = 65_535;
/// The longest tensor name accepted (ggml keeps names in 64 bytes with a NUL).
pub const MAX_TENSOR_NAME: u64 = 63;
/// The most dimensions a tensor may have.
pub const MAX_DIMS: u32 = 4;
/// The largest `general.alignment` accepted.
pub const MAX_ALIGNMENT: u32 = 1 << 20;
/// Hard caps on counts, whatever the file's size.
pub const MAX_TENSORS: u64 = 1 << 20;
/// See [`MAX_TENSORS`].
pub const MAX_KVS: u64 = 1 << 20;
const DEFAULT_ALIGNMENT: u32 = 32;

/// What a valid GGUF file holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GgufInfo {
    /// 2 or 3.
    pub version: u32,
    /// Number of key-value pairs.
    pub metadata: u64,
    /// Number of tensors.
    pub tensors: u64,
    /// Data alignment.
    pub alignment: u32,
    /// Where the data section starts.
    pub data_offset: u64,
    /// `general.architecture`, when present.
    pub architecture: Option<String>,
    /// Tensor count per type.
    pub types: BTreeMap<String, u64>,
}

/// Why a file is not valid GGUF.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GgufError {
    /// Does not start with `GGUF`.
    #[error("missing GGUF magic")]
    Magic,
    /// A version stored big-endian.
    #[error(
        "GGUF version is byte-swapped (big-endian file, version {0}); only little-endian files are supported"
    )]
    ByteSwapped(u32),
    /// A version other than 2 or 3.
    #[error("GGUF version {0} is not supported (2 and 3 are)")]
    Version(u32),
    /// A count larger than the file could hold.
    #[error("{what} count {count} is more than the file can hold (at most {max})")]
    Count {
        /// `tensor`, `key-value` or `array element`.
        what: &'static str,
        /// The declared count.
        count: u64,
        /// The bound.
        max: u64,
    },
    /// A string or array runs past the end of the file.
    #[error("{what} at offset {offset} has length {len}, past the end of the file")]
    Length {
        /// What was being read.
        what: &'static str,
        /// Where.
        offset: u64,
        /// The declared length.
        len: u64,
    },
    /// An empty key.
    #[error("empty key at offset {0}")]
    EmptyKey(u64),
    /// A key over [`MAX_KEY_LEN`] bytes.
    #[error("key at offset {offset} is {len} bytes (limit {MAX_KEY_LEN})")]
    KeyTooLong {
        /// Where.
        offset: u64,
        /// Its length.
        len: u64,
    },
    /// A key that is not UTF-8.
    #[error("key at offset {0} is not UTF-8")]
    KeyNotUtf8(u64),
    /// The same key twice.
    #[error("duplicate key {0:?}")]
    DuplicateKey(String),
    /// An unknown value type.
    #[error("key {key:?}: unknown value type {ty}")]
    ValueType {
        /// The key.
        key: String,
        /// The type number.
        ty: u32,
    },
    /// An array of arrays.
    #[error("key {0:?}: nested arrays are not allowed")]
    NestedArray(String),
    /// `general.alignment` of the wrong type or value.
    #[error(
        "general.alignment {0} must be a non-zero power of two of at most {MAX_ALIGNMENT} (as uint32)"
    )]
    Alignment(String),
    /// An empty, over-long or non-UTF-8 tensor name.
    #[error("tensor {index}: bad name ({reason})")]
    TensorName {
        /// Which tensor info.
        index: u64,
        /// What is wrong.
        reason: String,
    },
    /// The same tensor name twice.
    #[error("duplicate tensor name {0:?}")]
    DuplicateTensor(String),
    /// Too many dimensions.
    #[error("tensor {name:?} has {dims} dimensions (at most {MAX_DIMS})")]
    Dims {
        /// Tensor name.
        name: String,
        /// Its dimension count.
        dims: u32,
    },
    /// The element count or byte size overflows.
    #[error("tensor {0:?}: shape overflows")]
    ShapeOverflow(String),
    /// An unknown tensor type.
    #[error("tensor {name:?}: unknown tensor type {ty}")]
    TensorType {
        /// Tensor name.
        name: String,
        /// The type number.
        ty: u32,
    },
    /// The first dimension is not a whole number of the type's blocks.
    #[error(
        "tensor {name:?}: row of {row} elements is not a whole number of {block}-element blocks"
    )]
    Blocks {
        /// Tensor name.
        name: String,
        /// Elements per row.
        row: u64,
        /// The type's block size.
        block: u64,
    },
    /// An offset that is not aligned.
    #[error("tensor {name:?}: offset {offset} is not a multiple of the alignment {alignment}")]
    Unaligned {
        /// Tensor name.
        name: String,
        /// Its offset.
        offset: u64,
        /// The alignment.
        alignment: u32,
    },
    /// An offset before the end of the previous tensor.
    #[error(
        "tensor {name:?}: offset {offset} is before the end of the previous tensor ({prev_end})"
    )]
    OutOfOrder {
        /// Tensor name.
        name: String,
        /// Its offset.
        offset: u64,
        /// Where the previous tensor ends.
        prev_end: u64,
    },
    /// Tensor data past the end of the file.
    #[error("tensor {name:?}: data [{start}, {end}) is outside the {len}-byte data section")]
    DataOutOfBounds {
        /// Tensor name.
        name: String,
        /// Start, relative to the data section.
        start: u64,
        /// End, relative to the data section.
        end: u64,
        /// The data section's length.
        len: u64,
    },
    /// Bytes after the last tensor beyond alignment padding.
    #[error("{0} bytes follow the last tensor's data (more than alignment padding)")]
    Trailing(u64),
    /// The file ends inside the header.
    #[error("file ends inside the header at offset {0}")]
    Truncated(u64),
    /// Reading the file failed.
    #[error("reading the file: {0}")]
    Io(String),
}

/// Block size (elements) and block bytes of each known ggml tensor type.
pub fn tensor_type(ty: u32) -> Option<(&'static str, u64, u64)> {
    Some(match ty {
        0 => ("F32", 1, 4),
        1 => ("F16", 1, 2),
        2 => ("Q4_0", 32, 18),
        3 => ("Q4_1", 32, 20),
        6 => ("Q5_0", 32, 22),
        7 => ("Q5_1", 32, 24),
        8 => ("Q8_0", 32, 34),
        9 => ("Q8_1", 32, 40),
        10 => ("Q2_K", 256, 84),
        11 => ("Q3_K", 256, 110),
        12 => ("Q4_K", 256, 144),
        13 => ("Q5_K", 256, 176),
        14 => ("Q6_K", 256, 210),
        15 => ("Q8_K", 256, 292),
        16 => ("IQ2_XXS", 256, 66),
        17 => ("IQ2_XS", 256, 74),
        18 => ("IQ3_XXS", 256, 98),
        19 => ("IQ1_S", 256, 50),
        20 => ("IQ4_NL", 32, 18),
        21 => ("IQ3_S", 256, 110),
        22 => ("IQ2_S", 256, 82),
        23 => ("IQ4_XS", 256, 136),
        24 => ("I8", 1, 1),
        25 => ("I16", 1, 2),
        26 => ("I32", 1, 4),
        27 => ("I64", 1, 8),
        28 => ("F64", 1, 8),
        29 => ("IQ1_M", 256, 56),
        30 => ("BF16", 1, 2),
        34 => ("TQ1_0", 256, 54),
        35 => ("TQ2_0", 256, 66),
        39 => ("MXFP4", 32, 17),
        40 => ("NVFP4", 64, 36),
        41 => ("Q1_0", 128, 18),
        _ => return None,
    })
}

// Value types.
const T_UINT8: u32 = 0;
const T_INT8: u32 = 1;
const T_UINT16: u32 = 2;
const T_INT16: u32 = 3;
const T_UINT32: u32 = 4;
const T_INT32: u32 = 5;
const T_FLOAT32: u32 = 6;
const T_BOOL: u32 = 7;
const T_STRING: u32 = 8;
const T_ARRAY: u32 = 9;
const T_UINT64: u32 = 10;
const T_INT64: u32 = 11;
const T_FLOAT64: u32 = 12;

/// Bytes of a fixed-size value type; `None` for strings, arrays and unknown types.
fn fixed_size(ty: u32) -> Option<u64> {
    Some(match ty {
        T_UINT8 | T_INT8 | T_BOOL => 1,
        T_UINT16 | T_INT16 => 2,
        T_UINT32 | T_INT32 | T_FLOAT32 => 4,
        T_UINT64 | T_INT64 | T_FLOAT64 => 8,
        _ => return None,
    })
}

struct Reader<'a, S: Source + ?Sized> {
    c: Cursor<SourceReader<&'a S>>,
    size: u64,
}

impl<S: Source + ?Sized> Reader<'_, S> {
    fn left(&self) -> u64 {
        self.size.saturating_sub(self.c.pos())
    }

    fn truncated(&self) -> GgufError {
        GgufError::Truncated(self.c.pos())
    }

    fn u32(&mut self) -> Result<u32, GgufError> {
        self.c.u32_le().map_err(|_| self.truncated())
    }

    fn u64(&mut self) -> Result<u64, GgufError> {
        self.c.u64_le().map_err(|_| self.truncated())
    }

    /// A string's length, checked against the file and `max`.
    fn string_len(&mut self, what: &'static str) -> Result<u64, GgufError> {
        let offset = self.c.pos();
        let len = self.u64()?;
        if len > self.left() {
            return Err(GgufError::Length { what, offset, len });
        }
        Ok(len)
    }

    /// A string of at most `max` bytes: its offset, its length, and its bytes
    /// (`None` if longer than `max`; then it is left unread).
    fn string(
        &mut self,
        what: &'static str,
        max: u64,
    ) -> Result<(u64, u64, Option<Vec<u8>>), GgufError> {
        let offset = self.c.pos();
        let len = self.string_len(what)?;
        if len > max {
            return Ok((offset, len, None));
        }
        let bytes = self.c.vec(len as usize).map_err(|_| self.truncated())?;
        Ok((offset, len, Some(bytes)))
    }

    fn skip(&mut self, n: u64) -> Result<(), GgufError> {
        self.c.skip(n).map_err(|_| self.truncated())
    }

    /// Skips one value of type `ty`, refusing unknown types and nested arrays.
    fn skip_value(&mut self, key: &str, ty: u32) -> Result<(), GgufError> {
        if let Some(n) = fixed_size(ty) {
            return self.skip(n);
        }
        match ty {
            T_STRING => {
                let n = self.string_len("string value")?;
                self.skip(n)
            }
            T_ARRAY => {
                let elem = self.u32()?;
                let offset = self.c.pos();
                let count = self.u64()?;
                if elem == T_ARRAY {
                    return Err(GgufError::NestedArray(key.to_owned()));
                }
                let min = match (fixed_size(elem), elem) {
                    (Some(n), _) => n,
                    (None, T_STRING) => 8,
                    _ => {
                        return Err(GgufError::ValueType {
                            key: key.to_owned(),
                            ty: elem,
                        });
                    }
                };
                let max = self.left() / min;
                if count > max {
                    return Err(GgufError::Length {
                        what: "array",
                        offset,
                        len: count,
                    });
                }
                if elem == T_STRING {
                    for _ in 0..count {
                        let n = self.string_len("string in array")?;
                        self.skip(n)?;
                    }
                    Ok(())
                } else {
                    self.skip(count * min)
                }
            }
            _ => Err(GgufError::ValueType {
                key: key.to_owned(),
                ty,
            }),
        }
    }
}

/// Validates the GGUF file in `src`.
pub fn validate(src: &(impl Source + ?Sized)) -> Result<GgufInfo, GgufError> {
    let size = src.size();
    let mut r = Reader {
        c: Cursor::new(SourceReader::new(src, 0), 0),
        size,
    };
    let magic: [u8; 4] = r.c.exact().map_err(|_| GgufError::Magic)?;
    if &magic != b"GGUF" {
        return Err(GgufError::Magic);
    }
    let version = r.u32()?;
    if version != 2 && version != 3 {
        let swapped = version.swap_bytes();
        if swapped == 2 || swapped == 3 {
            return Err(GgufError::ByteSwapped(swapped));
        }
        return Err(GgufError::Version(version));
    }
    let tensors = r.u64()?;
    let kvs = r.u64()?;
    // The smallest key-value pair: key length, a 1-byte key, type, a 1-byte value.
    let max_kvs = (r.left() / (8 + 1 + 4 + 1)).min(MAX_KVS);
    if kvs > max_kvs {
        return Err(GgufError::Count {
            what: "key-value",
            count: kvs,
            max: max_kvs,
        });
    }
    let mut info = GgufInfo {
        version,
        metadata: kvs,
        tensors,
        alignment: DEFAULT_ALIGNMENT,
        data_offset: 0,
        architecture: None,
        types: BTreeMap::new(),
    };
    let mut keys = HashSet::new();
    for _ in 0..kvs {
        let (offset, len, key) = r.string("key", MAX_KEY_LEN)?;
        let Some(key) = key else {
            return Err(GgufError::KeyTooLong { offset, len });
        };
        if key.is_empty() {
            return Err(GgufError::EmptyKey(offset));
        }
        let key = String::from_utf8(key).map_err(|_| GgufError::KeyNotUtf8(offset))?;
        if !keys.insert(key.clone()) {
            return Err(GgufError::DuplicateKey(key));
        }
        let ty = r.u32()?;
        match key.as_str() {
            "general.alignment" => {
                if ty != T_UINT32 {
                    r.skip_value(&key, ty)?;
                    return Err(GgufError::Alignment(format!("of value type {ty}")));
                }
                let a = r.u32()?;
                if a == 0 || !a.is_power_of_two() || a > MAX_ALIGNMENT {
                    return Err(GgufError::Alignment(a.to_string()));
                }
                info.alignment = a;
            }
            "general.architecture" if ty == T_STRING => match r.string("string value", 256)? {
                (_, _, Some(v)) => {
                    info.architecture = Some(String::from_utf8_lossy(&v).into_owned());
                }
                (_, len, None) => r.skip(len)?,
            },
            _ => r.skip_value(&key, ty)?,
        }
    }
    // The smallest tensor info: name length, a 1-byte name, dims count, type, offset.
    let max_tensors = (r.left() / (8 + 1 + 4 + 4 + 8)).min(MAX_TENSORS);
    if tensors > max_tensors {
        return Err(GgufError::Count {
            what: "tensor",
            count: tensors,
            max: max_tensors,
        });
    }
    let mut names = HashSet::new();
    let mut layout = Vec::new();
    for index in 0..tensors {
        let name_err = |reason: String| GgufError::TensorName { index, reason };
        let name = match r.string("tensor name", MAX_TENSOR_NAME)? {
            (_, len, None) => {
                return Err(name_err(format!(
                    "{len} bytes, longer than {MAX_TENSOR_NAME}"
                )));
            }
            (_, _, Some(n)) if n.is_empty() => return Err(name_err("empty".to_owned())),
            (_, _, Some(n)) => {
                String::from_utf8(n).map_err(|_| name_err("not UTF-8".to_owned()))?
            }
        };
        if !names.insert(name.clone()) {
            return Err(GgufError::DuplicateTensor(name));
        }
        let dims = r.u32()?;
        if dims > MAX_DIMS {
            return Err(GgufError::Dims { name, dims });
        }
        let mut shape = [1u64; MAX_DIMS as usize];
        for d in shape.iter_mut().take(dims as usize) {
            *d = r.u64()?;
            if *d > i64::MAX as u64 {
                return Err(GgufError::ShapeOverflow(name));
            }
        }
        let ty = r.u32()?;
        let Some((ty_name, block, block_bytes)) = tensor_type(ty) else {
            return Err(GgufError::TensorType { name, ty });
        };
        let offset = r.u64()?;
        if shape[0] % block != 0 {
            return Err(GgufError::Blocks {
                name,
                row: shape[0],
                block,
            });
        }
        let bytes = shape[1..]
            .iter()
            .try_fold((shape[0] / block).checked_mul(block_bytes), |acc, &d| {
                Some(acc?.checked_mul(d))
            })
            .flatten();
        let elements = shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
        let (Some(bytes), Some(_)) = (bytes, elements) else {
            return Err(GgufError::ShapeOverflow(name));
        };
        *info.types.entry(ty_name.to_owned()).or_default() += 1;
        layout.push((name, offset, bytes));
    }
    let alignment = u64::from(info.alignment);
    let data_offset = r.c.pos().div_ceil(alignment) * alignment;
    if data_offset > size {
        return Err(GgufError::Truncated(size));
    }
    info.data_offset = data_offset;
    let data_len = size - data_offset;
    let mut prev_end = 0;
    for (name, offset, bytes) in layout {
        if offset % alignment != 0 {
            return Err(GgufError::Unaligned {
                name,
                offset,
                alignment: info.alignment,
            });
        }
        if offset < prev_end {
            return Err(GgufError::OutOfOrder {
                name,
                offset,
                prev_end,
            });
        }
        let end = offset.saturating_add(bytes);
        if end > data_len {
            return Err(GgufError::DataOutOfBounds {
                name,
                start: offset,
                end,
                len: data_len,
            });
        }
        prev_end = end;
    }
    if tensors > 0 && data_len - prev_end >= alignment {
        return Err(GgufError::Trailing(data_len - prev_end));
    }
    Ok(info)
}
