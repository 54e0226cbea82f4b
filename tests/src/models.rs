//! Model files for the format tests: real ones written by the formats' own Python
//! packages (`tests/fixtures/make_models.py`), and builders that write the same
//! formats byte for byte so a test can break exactly one rule.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

/// The directory of files written by `tests/fixtures/make_models.py` (once per test
/// process): `valid/` and `pickle/`.
pub fn fixtures() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("modeld-fixtures-")
            .tempdir()
            .expect("temp dir")
            .keep();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/make_models.py");
        let out = Command::new("python3")
            .arg(&script)
            .arg(&dir)
            .output()
            .expect("running python3");
        assert!(
            out.status.success(),
            "{} failed (scripts/test installs tests/requirements.txt):\n{}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
}

/// The bytes of a fixture file, e.g. `valid/small.gguf`.
pub fn fixture(rel: &str) -> Vec<u8> {
    std::fs::read(fixtures().join(rel)).unwrap_or_else(|e| panic!("fixture {rel}: {e}"))
}

/// A safetensors file: the length prefix, `header` padded with spaces to a multiple
/// of 8 (as the reference writer does), then `data` zero bytes.
pub fn safetensors(header: &str, data: usize) -> Vec<u8> {
    let mut h = header.as_bytes().to_vec();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut f = (h.len() as u64).to_le_bytes().to_vec();
    f.extend_from_slice(&h);
    f.resize(f.len() + data, 0);
    f
}

/// A GGUF metadata value.
#[derive(Debug, Clone)]
pub enum Value {
    /// uint32 (type 4).
    U32(u32),
    /// uint64 (type 10).
    U64(u64),
    /// float32 (type 6).
    F32(f32),
    /// string (type 8).
    Str(Vec<u8>),
    /// array (type 9) of one element type, with raw element bytes.
    Array(u32, u64, Vec<u8>),
    /// Any type number with raw value bytes (for unknown or mis-typed values).
    Raw(u32, Vec<u8>),
}

/// A GGUF tensor info.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// Name bytes.
    pub name: Vec<u8>,
    /// Dimensions, innermost first (ggml order).
    pub dims: Vec<u64>,
    /// ggml type number.
    pub ty: u32,
    /// Offset in the data section.
    pub offset: u64,
}

/// A GGUF file as parts; [`Gguf::to_bytes`] writes it as the `gguf` package does.
#[derive(Debug, Clone)]
pub struct Gguf {
    /// Magic (normally `GGUF`).
    pub magic: [u8; 4],
    /// Version field as stored.
    pub version: u32,
    /// Key-value pairs in order.
    pub kvs: Vec<(Vec<u8>, Value)>,
    /// Tensor infos in order.
    pub tensors: Vec<TensorInfo>,
    /// Counts written instead of the true ones.
    pub tensor_count: Option<u64>,
    /// See `tensor_count`.
    pub kv_count: Option<u64>,
    /// Alignment used to place the data section.
    pub alignment: u64,
    /// The data section.
    pub data: Vec<u8>,
}

impl Gguf {
    /// What `gguf.GGUFWriter` writes for `valid/small.gguf`: architecture `llama`,
    /// `t0` F32 `[32, 4]` of zeros and `t1` F16 `[8]` of ones.
    pub fn small() -> Self {
        let mut data = vec![0u8; 512];
        for _ in 0..8 {
            data.extend_from_slice(&0x3c00u16.to_le_bytes());
        }
        data.resize(544, 0);
        Self {
            magic: *b"GGUF",
            version: 3,
            kvs: vec![(
                b"general.architecture".to_vec(),
                Value::Str(b"llama".to_vec()),
            )],
            tensors: vec![
                TensorInfo {
                    name: b"t0".to_vec(),
                    dims: vec![32, 4],
                    ty: 0,
                    offset: 0,
                },
                TensorInfo {
                    name: b"t1".to_vec(),
                    dims: vec![8],
                    ty: 1,
                    offset: 512,
                },
            ],
            tensor_count: None,
            kv_count: None,
            alignment: 32,
            data,
        }
    }

    /// The file's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        fn string(out: &mut Vec<u8>, s: &[u8]) {
            out.extend_from_slice(&(s.len() as u64).to_le_bytes());
            out.extend_from_slice(s);
        }
        let mut out = self.magic.to_vec();
        out.extend_from_slice(&self.version.to_le_bytes());
        let tc = self.tensor_count.unwrap_or(self.tensors.len() as u64);
        let kc = self.kv_count.unwrap_or(self.kvs.len() as u64);
        out.extend_from_slice(&tc.to_le_bytes());
        out.extend_from_slice(&kc.to_le_bytes());
        for (k, v) in &self.kvs {
            string(&mut out, k);
            match v {
                Value::U32(x) => {
                    out.extend_from_slice(&4u32.to_le_bytes());
                    out.extend_from_slice(&x.to_le_bytes());
                }
                Value::U64(x) => {
                    out.extend_from_slice(&10u32.to_le_bytes());
                    out.extend_from_slice(&x.to_le_bytes());
                }
                Value::F32(x) => {
                    out.extend_from_slice(&6u32.to_le_bytes());
                    out.extend_from_slice(&x.to_le_bytes());
                }
                Value::Str(s) => {
                    out.extend_from_slice(&8u32.to_le_bytes());
                    string(&mut out, s);
                }
                Value::Array(elem, count, raw) => {
                    out.extend_from_slice(&9u32.to_le_bytes());
                    out.extend_from_slice(&elem.to_le_bytes());
                    out.extend_from_slice(&count.to_le_bytes());
                    out.extend_from_slice(raw);
                }
                Value::Raw(ty, raw) => {
                    out.extend_from_slice(&ty.to_le_bytes());
                    out.extend_from_slice(raw);
                }
            }
        }
        for t in &self.tensors {
            string(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.ty.to_le_bytes());
            out.extend_from_slice(&t.offset.to_le_bytes());
        }
        while !(out.len() as u64).is_multiple_of(self.alignment) {
            out.push(0);
        }
        out.extend_from_slice(&self.data);
        out
    }
}
