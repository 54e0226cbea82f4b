//! Model file formats, recognised by content (never by file name).
//!
//! This module only classifies a file from its first bytes; the strict validators
//! for each format live beside it as they are written.

use std::fmt;

use serde::{Deserialize, Serialize};

/// How many leading bytes [`detect`] looks at.
pub const SNIFF_LEN: usize = 16;

/// The format of a model file, as recorded in a manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum FileFormat {
    /// A safetensors file (length-prefixed JSON header, raw tensor data).
    Safetensors,
    /// A GGUF file (llama.cpp and friends).
    Gguf,
    /// A raw Python pickle stream: can run arbitrary code when loaded.
    Pickle,
    /// A zip archive (PyTorch checkpoints, NumPy `.npz`): may hold pickles.
    Zip,
    /// A NumPy `.npy` array.
    Numpy,
    /// Anything else (configs, tokenizers, text): passed through as data.
    Other,
}

impl FileFormat {
    /// The name used in manifests and listings.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Safetensors => "safetensors",
            Self::Gguf => "gguf",
            Self::Pickle => "pickle",
            Self::Zip => "zip",
            Self::Numpy => "numpy",
            Self::Other => "other",
        }
    }
}

impl fmt::Display for FileFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Classifies a file from its first bytes (`head`, up to [`SNIFF_LEN`]) and its length.
pub fn detect(head: &[u8], len: u64) -> FileFormat {
    if head.starts_with(b"GGUF") {
        return FileFormat::Gguf;
    }
    if head.starts_with(b"PK\x03\x04") {
        return FileFormat::Zip;
    }
    if head.starts_with(b"\x93NUMPY") {
        return FileFormat::Numpy;
    }
    if head.len() >= 9 {
        let mut n = [0u8; 8];
        n.copy_from_slice(&head[..8]);
        let header_len = u64::from_le_bytes(n);
        if header_len >= 2 && header_len <= len.saturating_sub(8) && head[8] == b'{' {
            return FileFormat::Safetensors;
        }
    }
    // Pickle protocol 2 and later begin with PROTO (0x80) and the protocol number.
    if head.len() >= 2 && head[0] == 0x80 && (2..=5).contains(&head[1]) {
        return FileFormat::Pickle;
    }
    FileFormat::Other
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_by_magic() {
        assert_eq!(detect(b"GGUF\x03\0\0\0", 100), FileFormat::Gguf);
        assert_eq!(detect(b"PK\x03\x04rest", 100), FileFormat::Zip);
        assert_eq!(detect(b"\x93NUMPY\x01\x00", 100), FileFormat::Numpy);
        assert_eq!(detect(b"\x80\x04\x95", 100), FileFormat::Pickle);
        let mut st = 10u64.to_le_bytes().to_vec();
        st.extend_from_slice(b"{\"a\":1}   ");
        assert_eq!(detect(&st, st.len() as u64), FileFormat::Safetensors);
        // A header length past the end of the file is not safetensors.
        assert_eq!(detect(&st, 12), FileFormat::Other);
        assert_eq!(detect(b"{\"vocab\": 1}", 12), FileFormat::Other);
        assert_eq!(detect(b"", 0), FileFormat::Other);
    }

    #[test]
    fn serde_names() {
        assert_eq!(
            serde_json::to_string(&FileFormat::Safetensors).unwrap(),
            "\"safetensors\""
        );
        assert!(serde_json::from_str::<FileFormat>("\"exe\"").is_err());
    }
}
