//! Model file formats, recognised and checked by content (never by file name).
//!
//! [`inspect`] classifies a file and validates it: safetensors and GGUF headers
//! strictly (a file that passes cannot make a loader read out of bounds), and pickle
//! wherever it hides (raw streams, legacy `torch.save` files, zip archives such as
//! PyTorch checkpoints and `.npz`, object arrays in `.npy`), reporting every global a
//! loader would import. [`Inspection::check`] applies modeld's policy: pickles that
//! import anything outside [`pickle::ALLOWED_GLOBALS`] are always refused, and other
//! pickle-based files only pass when pickle is explicitly allowed.
//!
//! Everything reads through [`Source`] by position, so memory does not grow with the
//! file; every length and count is checked against the file before it is used.

use std::fmt;

use serde::{Deserialize, Serialize};

pub mod gguf;
pub mod numpy;
pub mod pickle;
pub mod safetensors;
mod source;
pub mod zip;

use source::{Cursor, SourceReader};
pub use source::{FileSource, Source};

/// The format of a model file, as recorded in a manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum FileFormat {
    /// A safetensors file (length-prefixed JSON header, raw tensor data).
    Safetensors,
    /// A GGUF file (llama.cpp and friends).
    Gguf,
    /// A pickle stream, raw or a legacy `torch.save` file: can run code when loaded.
    Pickle,
    /// A zip archive holding pickles (a PyTorch checkpoint's `data.pkl`).
    PickleZip,
    /// NumPy `.npy`, or `.npz` of such arrays, with no Python objects.
    Numpy,
    /// NumPy data holding Python objects: the array data is a pickle.
    NumpyObject,
    /// Another zip archive, with no pickles found inside.
    Zip,
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
            Self::PickleZip => "pickle-zip",
            Self::Numpy => "numpy",
            Self::NumpyObject => "numpy-object",
            Self::Zip => "zip",
            Self::Other => "other",
        }
    }

    /// Whether loading a file of this format unpickles something.
    pub fn is_pickle(self) -> bool {
        matches!(self, Self::Pickle | Self::PickleZip | Self::NumpyObject)
    }
}

impl fmt::Display for FileFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What [`inspect`] found in a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Inspection {
    /// The format, from the content.
    pub format: FileFormat,
    /// The file's length.
    pub size: u64,
    /// For safetensors: what the header describes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub safetensors: Option<safetensors::SafetensorsInfo>,
    /// For GGUF: what the header describes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gguf: Option<gguf::GgufInfo>,
    /// For zip archives: the number of members.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entries: Option<usize>,
    /// NumPy arrays found (the file itself, or `.npy` members of an archive).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub arrays: Vec<Array>,
    /// Every pickle stream found, with the globals it imports.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pickles: Vec<pickle::PickleScan>,
}

/// A NumPy array found in a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Array {
    /// `"file"` or the member's name.
    pub location: String,
    /// Its header.
    #[serde(flatten)]
    pub header: numpy::NpyInfo,
}

/// Why a file is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// A safetensors file that breaks a rule.
    #[error("malformed safetensors: {0}")]
    Safetensors(#[from] safetensors::SafetensorsError),
    /// A GGUF file that breaks a rule.
    #[error("malformed GGUF: {0}")]
    Gguf(#[from] gguf::GgufError),
    /// A zip archive that cannot be read (or whose members cannot be inspected).
    #[error("{0}")]
    Zip(#[from] zip::ZipError),
    /// A NumPy header that cannot be read.
    #[error("{location}: {error}")]
    Numpy {
        /// `"file"` or the member's name.
        location: String,
        /// What is wrong.
        error: numpy::NpyError,
    },
    /// A name that promises one format (loaders choose by name) on content of another.
    #[error("named like a {expected} file, but the content is {found}{detail}")]
    NameMismatch {
        /// What the name promises.
        expected: FileFormat,
        /// What the content is.
        found: FileFormat,
        /// More about the content (for pickles: why it is unsafe), or empty.
        detail: String,
    },
    /// Reading failed.
    #[error("reading the file: {0}")]
    Io(String),
}

/// Why a well-formed file is refused by policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SafetyError {
    /// A pickle imports something outside the allow-list.
    #[error(
        "pickle in {location} imports {globals}, outside the allow-list of tensor-rebuilding callables: loading it could run arbitrary code"
    )]
    UnsafeGlobals {
        /// `"file"` or the archive member.
        location: String,
        /// The offending globals, comma-separated.
        globals: String,
    },
    /// A pickle the scanner could not walk to its end.
    #[error(
        "pickle in {location} cannot be fully scanned ({reason}), so what loading it would run is unknown"
    )]
    Unscannable {
        /// `"file"` or the archive member.
        location: String,
        /// Why the scan stopped.
        reason: String,
    },
    /// A pickle-based file where pickle is not allowed.
    #[error(
        "{format} file: loading it unpickles data, which can run code; refused unless pickle is explicitly allowed"
    )]
    PickleNotAllowed {
        /// Its format.
        format: FileFormat,
    },
}

impl Inspection {
    fn new(format: FileFormat, size: u64) -> Self {
        Self {
            format,
            size,
            safetensors: None,
            gguf: None,
            entries: None,
            arrays: Vec::new(),
            pickles: Vec::new(),
        }
    }

    /// modeld's policy: pickles importing anything outside the allow-list (or that
    /// cannot be scanned to the end) are refused always; other pickle-based files only
    /// when `allow_pickle`.
    pub fn check(&self, allow_pickle: bool) -> Result<(), SafetyError> {
        // Named imports first: they say the most about what the file would do.
        for p in &self.pickles {
            let bad: Vec<String> = p
                .globals
                .iter()
                .filter(|g| !g.allowed)
                .map(ToString::to_string)
                .collect();
            if !bad.is_empty() || p.globals_truncated {
                let mut globals = bad.join(", ");
                if p.globals_truncated {
                    globals.push_str(" and more");
                }
                return Err(SafetyError::UnsafeGlobals {
                    location: p.location.clone(),
                    globals,
                });
            }
        }
        if let Some(p) = self.pickles.iter().find(|p| p.error.is_some()) {
            return Err(SafetyError::Unscannable {
                location: p.location.clone(),
                reason: p.error.clone().unwrap_or_default(),
            });
        }
        if self.format.is_pickle() && !allow_pickle {
            return Err(SafetyError::PickleNotAllowed {
                format: self.format,
            });
        }
        Ok(())
    }
}

/// The most leading bytes a format is recognised from.
const SNIFF_LEN: usize = 16;

/// Recognises and validates the file in `src`.
pub fn inspect(src: &(impl Source + ?Sized)) -> Result<Inspection, FormatError> {
    let size = src.size();
    let mut head = [0u8; SNIFF_LEN];
    let n = (size as usize).min(SNIFF_LEN);
    src.read_exact_at(&mut head[..n], 0)
        .map_err(|e| FormatError::Io(e.to_string()))?;
    let head = &head[..n];
    if head.starts_with(b"GGUF") {
        let mut i = Inspection::new(FileFormat::Gguf, size);
        i.gguf = Some(gguf::validate(src)?);
        return Ok(i);
    }
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        return inspect_zip(src);
    }
    if head.starts_with(b"\x93NUMPY") {
        let mut i = Inspection::new(FileFormat::Numpy, size);
        let mut c = Cursor::new(SourceReader::new(src, 0), 0);
        inspect_npy(&mut c, "file", &mut i)?;
        return Ok(i);
    }
    if looks_like_safetensors(head) {
        let mut i = Inspection::new(FileFormat::Safetensors, size);
        i.safetensors = Some(safetensors::validate(src)?);
        return Ok(i);
    }
    let mut c = Cursor::new(SourceReader::new(src, 0), 0);
    if let pickle::Verdict::Pickle(scan) = pickle::scan(&mut c, "file", false) {
        let mut i = Inspection::new(FileFormat::Pickle, size);
        i.pickles.push(scan);
        return Ok(i);
    }
    Ok(Inspection::new(FileFormat::Other, size))
}

/// The format a file name promises to loaders that choose by extension.
pub fn format_by_name(name: &str) -> Option<FileFormat> {
    let ext = name.rsplit_once('.')?.1.to_ascii_lowercase();
    match ext.as_str() {
        "safetensors" => Some(FileFormat::Safetensors),
        "gguf" => Some(FileFormat::Gguf),
        _ => None,
    }
}

/// Like [`inspect`], for a file that goes by `name`: a file named like safetensors or
/// GGUF must be that format. Detection stays by content; the name only makes the
/// check stricter (content that is not recognised gets the named format's precise
/// error, so a broken `.safetensors` file is never passed through as data).
pub fn inspect_named(src: &(impl Source + ?Sized), name: &str) -> Result<Inspection, FormatError> {
    let found = inspect(src)?;
    let Some(expected) = format_by_name(name) else {
        return Ok(found);
    };
    if found.format == expected {
        return Ok(found);
    }
    if found.format == FileFormat::Other {
        match expected {
            FileFormat::Safetensors => {
                safetensors::validate(src)?;
            }
            FileFormat::Gguf => {
                gguf::validate(src)?;
            }
            _ => {}
        }
    }
    let detail = match found.check(false) {
        Err(e) if found.format.is_pickle() => format!(" ({e})"),
        _ => String::new(),
    };
    Err(FormatError::NameMismatch {
        expected,
        found: found.format,
        detail,
    })
}

/// A length prefix below 2^32 followed by `{`: text and pickles never start so.
fn looks_like_safetensors(head: &[u8]) -> bool {
    head.len() >= 9 && head[8] == b'{' && head[4..8] == [0, 0, 0, 0]
}

/// Reads an `.npy` header at the cursor and, for object arrays, scans the pickle
/// that follows it.
fn inspect_npy<R: std::io::Read>(
    c: &mut Cursor<R>,
    location: &str,
    into: &mut Inspection,
) -> Result<(), FormatError> {
    let header = numpy::header(c).map_err(|error| FormatError::Numpy {
        location: location.to_owned(),
        error,
    })?;
    if header.object {
        into.format = match into.format {
            FileFormat::PickleZip => FileFormat::PickleZip,
            _ => FileFormat::NumpyObject,
        };
        let scan = match pickle::scan(c, location, true) {
            pickle::Verdict::Pickle(scan) => scan,
            pickle::Verdict::NotPickle => pickle::PickleScan::unreadable(location),
        };
        into.pickles.push(scan);
    }
    into.arrays.push(Array {
        location: location.to_owned(),
        header,
    });
    Ok(())
}

fn inspect_zip(src: &(impl Source + ?Sized)) -> Result<Inspection, FormatError> {
    let entries = zip::entries(src)?;
    let mut i = Inspection::new(FileFormat::Zip, src.size());
    i.entries = Some(entries.len());
    let (mut arrays, mut others, mut pickles) = (0, 0, 0);
    for e in &entries {
        if e.name.ends_with('/') && e.size == 0 {
            continue;
        }
        let head = zip::head(src, e, 8)?;
        let mut c = Cursor::new(zip::open(src, e)?, 0);
        if head.starts_with(b"\x93NUMPY") {
            arrays += 1;
            inspect_npy(&mut c, &e.name, &mut i)?;
            continue;
        }
        // Every member is scanned: a loader may unpickle any of them.
        let named = e.name.ends_with(".pkl");
        match pickle::scan(&mut c, &e.name, named) {
            pickle::Verdict::Pickle(scan) => {
                pickles += 1;
                i.pickles.push(scan);
            }
            pickle::Verdict::NotPickle if named => {
                pickles += 1;
                i.pickles.push(pickle::PickleScan::unreadable(&e.name));
            }
            pickle::Verdict::NotPickle => others += 1,
        }
    }
    i.format = if pickles > 0 {
        FileFormat::PickleZip
    } else if i.format == FileFormat::NumpyObject {
        FileFormat::NumpyObject
    } else if arrays > 0 && others == 0 {
        FileFormat::Numpy
    } else {
        FileFormat::Zip
    };
    Ok(i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inspect_bytes(b: &[u8]) -> Result<Inspection, FormatError> {
        inspect(b)
    }

    fn globals(i: &Inspection) -> Vec<String> {
        i.pickles
            .iter()
            .flat_map(|p| p.globals.iter().map(ToString::to_string))
            .collect()
    }

    /// `pickle.dumps(os.system, protocol=2)`-style call of `os.system("ls")`.
    const OS_SYSTEM_P2: &[u8] =
        b"\x80\x02cos\nsystem\nq\x00X\x02\x00\x00\x00lsq\x01\x85q\x02Rq\x03.";

    #[test]
    fn pickles_are_found_and_their_imports_named() {
        let i = inspect_bytes(OS_SYSTEM_P2).unwrap();
        assert_eq!(i.format, FileFormat::Pickle);
        assert_eq!(globals(&i), ["os.system"]);
        assert_eq!(i.pickles[0].protocol, 2);
        assert_eq!(i.pickles[0].pickles, 1);
        assert!(matches!(
            i.check(true),
            Err(SafetyError::UnsafeGlobals { ref globals, .. }) if globals == "os.system"
        ));
        // Module and name through the memo, then STACK_GLOBAL (protocol 4).
        let memo = b"\x80\x04\x8c\x05posix\x94\x8c\x06system\x94h\x00h\x01\x93\x8c\x02ls\x85R.";
        let i = inspect_bytes(memo).unwrap();
        assert_eq!(globals(&i), ["posix.system"]);
        assert_eq!(i.pickles[0].globals[0].opcode, "STACK_GLOBAL");
        // INST (protocol 0).
        let inst = b"(S'ls'\nios\nsystem\n.";
        let i = inspect_bytes(inst).unwrap();
        assert_eq!(i.format, FileFormat::Pickle);
        assert_eq!(globals(&i), ["os.system"]);
    }

    #[test]
    fn tensor_pickles_pass_only_when_allowed() {
        let torch = b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\nq\x00ccollections\nOrderedDict\nq\x01)Rq\x02.";
        let i = inspect_bytes(torch).unwrap();
        assert_eq!(i.format, FileFormat::Pickle);
        assert!(i.pickles[0].globals.iter().all(|g| g.allowed));
        assert!(matches!(
            i.check(false),
            Err(SafetyError::PickleNotAllowed {
                format: FileFormat::Pickle
            })
        ));
        i.check(true).unwrap();
        // Legacy torch.save: several pickles in a row, then raw bytes.
        let mut legacy = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.".to_vec();
        legacy.extend_from_slice(b"\x80\x02M\xe9\x03.");
        legacy.extend_from_slice(torch);
        legacy.extend_from_slice(&[7, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3]);
        let i = inspect_bytes(&legacy).unwrap();
        assert_eq!(i.pickles[0].pickles, 3);
        assert_eq!(globals(&i).len(), 2);
    }

    #[test]
    fn data_is_not_mistaken_for_pickle() {
        for data in [
            &b"{\"vocab\": {\"a\": 1}}"[..],
            b"config\nline two\n",
            b"import os\nos.system('x')\n",
            b"(lp0\nI1\na.",
            b"N.",
            b"",
            b"\x00\x01\x02\x03",
            // Binary data that opens with an `EXT` opcode, after other valid opcodes,
            // or with a `PROTO` of an unknown protocol: a loader fails on each before
            // it could call anything.
            b"\x82\x07\x13\xf0\x9a",
            b"\x84\xff\xff\xff\xff\x00",
            b"N)\x83\x01\x02\xf7",
            b"\x80\x9c\x01\x02\x03",
        ] {
            let i = inspect_bytes(data).unwrap();
            assert_eq!(i.format, FileFormat::Other, "{data:?}");
            i.check(false).unwrap();
        }
    }

    #[test]
    fn random_binary_data_is_not_mistaken_for_pickle() {
        // Many seeded random buffers (SplitMix64): 312 of these 20,000 (1.6 %) were
        // taken for pickles while `EXT` counted as an import. Those opening with a
        // known `PROTO` (6 in 65,536) are left out: a pickle starts so.
        let mut state = 0x6d6f_6465_6c64_u64;
        let mut next = move || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        let mut taken = Vec::new();
        for n in 0..20_000 {
            let buf: Vec<u8> = (0..8).flat_map(|_| next().to_le_bytes()).collect();
            if buf[0] == 0x80 && buf[1] <= 5 {
                continue;
            }
            if inspect_bytes(&buf).unwrap().format != FileFormat::Other {
                taken.push(n);
            }
        }
        assert!(
            taken.is_empty(),
            "random buffers taken for pickles: {taken:?}"
        );
    }

    #[test]
    fn ext_opcodes_in_a_pickle_are_reported_and_refused() {
        let i = inspect_bytes(b"\x80\x02\x82\x01)R.").unwrap();
        assert_eq!(i.format, FileFormat::Pickle);
        assert_eq!(globals(&i), ["copyreg.extension_1"]);
        assert!(matches!(
            i.check(true),
            Err(SafetyError::UnsafeGlobals { .. })
        ));
    }

    #[test]
    fn a_broken_pickle_is_refused_as_unscannable() {
        let i = inspect_bytes(b"\x80\x04\x8c\x02os\x94\xff").unwrap();
        assert_eq!(i.format, FileFormat::Pickle);
        let e = i.check(true).unwrap_err().to_string();
        assert!(e.contains("unknown opcode 0xff at offset 7"), "{e}");
        // A truncated call still imports before it fails: reported, and refused.
        let i = inspect_bytes(b"cos\nsystem\n(S'ls'\n").unwrap();
        assert_eq!(globals(&i), ["os.system"]);
        assert!(i.check(true).is_err());
    }

    #[test]
    fn safetensors_and_gguf_are_recognised_by_content() {
        let mut st = 16u64.to_le_bytes().to_vec();
        st.extend_from_slice(b"{}              ");
        assert_eq!(inspect_bytes(&st).unwrap().format, FileFormat::Safetensors);
        st.push(0);
        assert!(matches!(
            inspect_bytes(&st),
            Err(FormatError::Safetensors(_))
        ));
        assert!(matches!(
            inspect_bytes(b"GGUF\x01\x00\x00\x00"),
            Err(FormatError::Gguf(gguf::GgufError::Version(1)))
        ));
    }

    #[test]
    fn serde_names() {
        assert_eq!(
            serde_json::to_string(&FileFormat::PickleZip).unwrap(),
            "\"pickle-zip\""
        );
        assert!(serde_json::from_str::<FileFormat>("\"exe\"").is_err());
    }
}
