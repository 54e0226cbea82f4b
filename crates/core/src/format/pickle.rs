//! A pickle scanner: walks the opcode stream (protocols 0 to 5) without executing
//! anything and reports every global the stream would import.
//!
//! Loading a pickle calls whatever callables its `GLOBAL`, `STACK_GLOBAL`, `INST` and
//! extension-registry opcodes name, so those imports are the whole attack surface. The
//! scanner keeps a shadow stack and memo that track only strings (enough to resolve
//! `STACK_GLOBAL` even when its module and name come through the memo) and skips over
//! data arguments without holding them, so memory stays bounded whatever the size.

use std::{collections::HashMap, io::Read};

use super::source::Cursor;

/// Callables that only rebuild tensors, arrays and plain containers. A pickle that
/// imports anything else can run arbitrary code when loaded.
pub const ALLOWED_GLOBALS: &[(&str, &str)] = &[
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_tensor_v3"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch", "FloatStorage"),
    ("torch", "DoubleStorage"),
    ("torch", "HalfStorage"),
    ("torch", "BFloat16Storage"),
    ("torch", "LongStorage"),
    ("torch", "IntStorage"),
    ("torch", "ShortStorage"),
    ("torch", "CharStorage"),
    ("torch", "ByteStorage"),
    ("torch", "BoolStorage"),
    ("torch", "UntypedStorage"),
    ("torch", "float16"),
    ("torch", "float32"),
    ("torch", "float64"),
    ("torch", "bfloat16"),
    ("torch", "int8"),
    ("torch", "int16"),
    ("torch", "int32"),
    ("torch", "int64"),
    ("torch", "uint8"),
    ("torch", "bool"),
    ("numpy", "dtype"),
    ("numpy", "ndarray"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("_codecs", "encode"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "complex"),
    ("builtins", "slice"),
    ("__builtin__", "set"),
];

/// Whether `module.name` is in [`ALLOWED_GLOBALS`].
pub fn is_allowed(module: &str, name: &str) -> bool {
    ALLOWED_GLOBALS
        .iter()
        .any(|&(m, n)| m == module && n == name)
}

/// The most distinct globals reported per scan.
pub const MAX_GLOBALS: usize = 256;
/// The most entries the shadow stack and memo may hold.
pub const MAX_SHADOW: usize = 1 << 20;
/// The longest string the shadow stack keeps (longer ones are tracked as "other").
const MAX_TRACKED_STR: u64 = 512;
/// The longest line argument (protocol 0 text opcodes).
const MAX_LINE: usize = 64 * 1024;

/// An import found in a pickle.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Global {
    /// The module, e.g. `torch._utils`.
    pub module: String,
    /// The attribute, e.g. `_rebuild_tensor_v2`.
    pub name: String,
    /// The opcode that imports it: `GLOBAL`, `STACK_GLOBAL`, `INST` or `EXT`.
    pub opcode: &'static str,
    /// In [`ALLOWED_GLOBALS`].
    pub allowed: bool,
}

impl std::fmt::Display for Global {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.module, self.name)
    }
}

/// What scanning a pickle stream found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PickleScan {
    /// Where the stream is (`"file"`, or a path inside an archive).
    pub location: String,
    /// The protocol of the first pickle (0 or 1 when there is no `PROTO` opcode).
    pub protocol: u8,
    /// Complete pickles (up to `STOP`) found one after another.
    pub pickles: u32,
    /// Distinct globals imported, in the order first seen.
    pub globals: Vec<Global>,
    /// More distinct globals than [`MAX_GLOBALS`] were seen.
    pub globals_truncated: bool,
    /// Why the scan of the first pickle stopped before `STOP`, if it did.
    pub error: Option<String>,
}

impl PickleScan {
    /// A stream that should be a pickle (by its name or place) but is not one.
    pub fn unreadable(location: &str) -> Self {
        Self {
            location: location.to_owned(),
            protocol: 0,
            pickles: 0,
            globals: Vec::new(),
            globals_truncated: false,
            error: Some("not a valid pickle stream".to_owned()),
        }
    }

    /// Whether loading this stream could call something outside the allow-list (or the
    /// scan could not be completed, so that cannot be ruled out).
    pub fn unsafe_globals(&self) -> bool {
        self.error.is_some() || self.globals_truncated || self.globals.iter().any(|g| !g.allowed)
    }
}

/// A value on the shadow stack.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Shadow {
    Mark,
    Str(String),
    Other,
}

/// Why a pickle could not be walked.
#[derive(Debug)]
enum Stop {
    /// Not a valid opcode stream; `offset` is where it broke.
    Invalid { offset: u64, reason: String },
}

struct Scanner<'a, R: Read> {
    c: &'a mut Cursor<R>,
    stack: Vec<Shadow>,
    memo: HashMap<u64, Shadow>,
    globals: Vec<Global>,
    truncated: bool,
    /// Opcodes decoded in the current pickle.
    ops: u64,
    /// The protocol from a leading `PROTO` opcode (0 without one).
    protocol: u8,
    /// The current pickle opened with a `PROTO` of a protocol Python knows (0 to 5).
    leading_proto: bool,
    /// Where the opcode being applied starts (errors point at it).
    op_start: u64,
}

/// Outcome of walking one pickle.
enum Walk {
    /// Reached `STOP`.
    Done,
    /// Ended at the very first byte (no pickle here).
    Empty,
    /// Broke off.
    Broken(Stop),
}

impl<R: Read> Scanner<'_, R> {
    fn invalid(&self, reason: impl Into<String>) -> Stop {
        Stop::Invalid {
            offset: self.op_start,
            reason: reason.into(),
        }
    }

    fn push(&mut self, v: Shadow) -> Result<(), Stop> {
        if self.stack.len() >= MAX_SHADOW {
            return Err(self.invalid("stack deeper than the scanner's limit"));
        }
        self.stack.push(v);
        Ok(())
    }

    fn pop(&mut self) -> Result<Shadow, Stop> {
        self.stack
            .pop()
            .ok_or_else(|| self.invalid("stack underflow"))
    }

    fn pop_n(&mut self, n: usize) -> Result<(), Stop> {
        for _ in 0..n {
            self.pop()?;
        }
        Ok(())
    }

    fn pop_mark(&mut self) -> Result<(), Stop> {
        loop {
            if self.pop()? == Shadow::Mark {
                return Ok(());
            }
        }
    }

    fn top(&self) -> Result<Shadow, Stop> {
        self.stack
            .last()
            .cloned()
            .ok_or_else(|| self.invalid("stack underflow"))
    }

    fn memo_put(&mut self, idx: u64) -> Result<(), Stop> {
        let v = self.top()?;
        if self.memo.len() >= MAX_SHADOW && !self.memo.contains_key(&idx) {
            return Err(self.invalid("memo larger than the scanner's limit"));
        }
        self.memo.insert(idx, v);
        Ok(())
    }

    fn memo_get(&mut self, idx: u64) -> Result<(), Stop> {
        let v = self
            .memo
            .get(&idx)
            .cloned()
            .ok_or_else(|| self.invalid(format!("memo key {idx} was never stored")))?;
        self.push(v)
    }

    fn eof(&self) -> Stop {
        self.invalid("ends before STOP")
    }

    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], Stop> {
        self.c.exact().map_err(|_| self.eof())
    }

    fn u8(&mut self) -> Result<u64, Stop> {
        Ok(u64::from(self.bytes::<1>()?[0]))
    }

    fn u16(&mut self) -> Result<u64, Stop> {
        Ok(u64::from(u16::from_le_bytes(self.bytes()?)))
    }

    fn u32(&mut self) -> Result<u64, Stop> {
        Ok(u64::from(u32::from_le_bytes(self.bytes()?)))
    }

    fn u64(&mut self) -> Result<u64, Stop> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }

    fn line(&mut self) -> Result<Vec<u8>, Stop> {
        match self.c.line(MAX_LINE) {
            Ok(Some(l)) => Ok(l),
            Ok(None) => Err(self.invalid("line argument without a newline")),
            Err(_) => Err(self.eof()),
        }
    }

    /// A length-prefixed argument: kept as a string if short UTF-8, else skipped.
    fn data(&mut self, len: u64, text: bool) -> Result<Shadow, Stop> {
        if text && len <= MAX_TRACKED_STR {
            let v = self.c.vec(len as usize).map_err(|_| self.eof())?;
            return match String::from_utf8(v) {
                Ok(s) => Ok(Shadow::Str(s)),
                Err(_) => Err(self.invalid("string argument is not UTF-8")),
            };
        }
        self.c.skip(len).map_err(|_| self.eof())?;
        Ok(Shadow::Other)
    }

    fn import(&mut self, module: String, name: String, opcode: &'static str) -> Result<(), Stop> {
        if !is_identifier_path(&module) || !is_identifier_path(&name) {
            return Err(self.invalid(format!(
                "{opcode} names {module:?} {name:?}, not an importable name"
            )));
        }
        if !self
            .globals
            .iter()
            .any(|g| g.module == module && g.name == name)
        {
            if self.globals.len() >= MAX_GLOBALS {
                self.truncated = true;
            } else {
                let allowed = is_allowed(&module, &name);
                self.globals.push(Global {
                    module,
                    name,
                    opcode,
                    allowed,
                });
            }
        }
        Ok(())
    }

    fn text_line(&mut self) -> Result<String, Stop> {
        let l = self.line()?;
        String::from_utf8(l).map_err(|_| self.invalid("text argument is not UTF-8"))
    }

    /// Walks one pickle from the current position to its `STOP`. With `need_proto`,
    /// anything but a leading `PROTO` of protocol 2 or later is [`Walk::Empty`].
    fn walk(&mut self, need_proto: bool) -> Walk {
        self.stack.clear();
        self.memo.clear();
        self.ops = 0;
        self.protocol = 0;
        self.leading_proto = false;
        loop {
            self.op_start = self.c.pos();
            let op = match self.c.byte() {
                Ok(Some(op)) => op,
                Ok(None) if self.ops == 0 => return Walk::Empty,
                _ => return Walk::Broken(self.eof()),
            };
            self.ops += 1;
            if need_proto && self.ops == 1 && op != 0x80 {
                return Walk::Empty;
            }
            if need_proto && self.ops == 2 && self.protocol < 2 {
                return Walk::Empty;
            }
            match self.step(op) {
                Ok(true) => return Walk::Done,
                Ok(false) => {}
                Err(e) => return Walk::Broken(e),
            }
        }
    }

    /// Applies one opcode; `Ok(true)` at `STOP`.
    fn step(&mut self, op: u8) -> Result<bool, Stop> {
        use Shadow::{Mark, Other};
        match op {
            b'.' => return Ok(true),
            b'(' => self.push(Mark)?,
            b'0' => self.pop_n(1)?,
            b'1' => self.pop_mark()?,
            b'2' => {
                let t = self.top()?;
                self.push(t)?;
            }
            // Text numbers and persistent ids: a line argument.
            b'F' | b'I' | b'L' | b'P' => {
                self.line()?;
                self.push(Other)?;
            }
            b'S' => {
                let l = self.line()?;
                let s = std::str::from_utf8(&l)
                    .ok()
                    .and_then(|s| s.strip_prefix(['\'', '"']))
                    .and_then(|s| s.strip_suffix(['\'', '"']))
                    .map(str::to_owned);
                self.push(s.map_or(Other, Shadow::Str))?;
            }
            b'V' => {
                let s = self.text_line()?;
                self.push(Shadow::Str(s))?;
            }
            b'J' => {
                self.bytes::<4>()?;
                self.push(Other)?;
            }
            b'K' => {
                self.bytes::<1>()?;
                self.push(Other)?;
            }
            b'M' => {
                self.bytes::<2>()?;
                self.push(Other)?;
            }
            b'G' => {
                self.bytes::<8>()?;
                self.push(Other)?;
            }
            b'N' | b'}' | b']' | b')' | 0x88 | 0x89 | 0x8f | 0x97 => self.push(Other)?,
            b'Q' => {
                self.pop()?;
                self.push(Other)?;
            }
            b'R' | 0x81 => {
                self.pop_n(2)?;
                self.push(Other)?;
            }
            0x92 => {
                self.pop_n(3)?;
                self.push(Other)?;
            }
            b'T' => {
                let n = self.u32()?;
                let v = self.data(n, true)?;
                self.push(v)?;
            }
            b'U' => {
                let n = self.u8()?;
                let v = self.data(n, true)?;
                self.push(v)?;
            }
            b'X' | 0x8c | 0x8d => {
                let n = match op {
                    b'X' => self.u32()?,
                    0x8c => self.u8()?,
                    _ => self.u64()?,
                };
                let v = self.data(n, true)?;
                self.push(v)?;
            }
            b'B' | b'C' | 0x8e | 0x96 | 0x8a | 0x8b => {
                let n = match op {
                    b'B' => self.u32()?,
                    b'C' | 0x8a => self.u8()?,
                    0x8b => self.u32()?,
                    _ => self.u64()?,
                };
                self.data(n, false)?;
                self.push(Other)?;
            }
            b'a' | b'b' => self.pop_n(1)?,
            b's' => self.pop_n(2)?,
            b'e' | b'u' | 0x90 => self.pop_mark()?,
            b'd' | b'l' | b't' | b'o' | 0x91 => {
                self.pop_mark()?;
                self.push(Other)?;
            }
            0x85 => {
                self.pop_n(1)?;
                self.push(Other)?;
            }
            0x86 => {
                self.pop_n(2)?;
                self.push(Other)?;
            }
            0x87 => {
                self.pop_n(3)?;
                self.push(Other)?;
            }
            b'c' => {
                let module = self.text_line()?;
                let name = self.text_line()?;
                self.import(module, name, "GLOBAL")?;
                self.push(Other)?;
            }
            b'i' => {
                let module = self.text_line()?;
                let name = self.text_line()?;
                self.import(module, name, "INST")?;
                self.pop_mark()?;
                self.push(Other)?;
            }
            0x93 => {
                let name = self.pop()?;
                let module = self.pop()?;
                match (module, name) {
                    (Shadow::Str(m), Shadow::Str(n)) => self.import(m, n, "STACK_GLOBAL")?,
                    _ => {
                        return Err(self.invalid(
                            "STACK_GLOBAL with a module or name the scanner cannot resolve",
                        ));
                    }
                }
                self.push(Other)?;
            }
            0x82..=0x84 => {
                let code = match op {
                    0x82 => self.u8()?,
                    0x83 => self.u16()?,
                    _ => self.u32()?,
                };
                // The copyreg extension registry maps codes to arbitrary globals.
                self.import("copyreg".to_owned(), format!("extension_{code}"), "EXT")?;
                if let Some(g) = self.globals.last_mut() {
                    g.allowed = false;
                }
                self.push(Other)?;
            }
            b'g' => {
                let idx =
                    parse_decimal(&self.line()?).ok_or_else(|| self.invalid("bad GET index"))?;
                self.memo_get(idx)?;
            }
            b'h' => {
                let i = self.u8()?;
                self.memo_get(i)?;
            }
            b'j' => {
                let i = self.u32()?;
                self.memo_get(i)?;
            }
            b'p' => {
                let idx =
                    parse_decimal(&self.line()?).ok_or_else(|| self.invalid("bad PUT index"))?;
                self.memo_put(idx)?;
            }
            b'q' => {
                let i = self.u8()?;
                self.memo_put(i)?;
            }
            b'r' => {
                let i = self.u32()?;
                self.memo_put(i)?;
            }
            0x94 => {
                let i = self.memo.len() as u64;
                self.memo_put(i)?;
            }
            0x80 => {
                let p = self.bytes::<1>()?[0];
                if p > 5 {
                    return Err(self.invalid(format!("unknown protocol {p}")));
                }
                if self.ops == 1 {
                    self.protocol = p;
                    self.leading_proto = true;
                }
            }
            0x95 => {
                self.u64()?;
            }
            0x98 => {}
            other => return Err(self.invalid(format!("unknown opcode 0x{other:02x}"))),
        }
        Ok(false)
    }
}

fn parse_decimal(line: &[u8]) -> Option<u64> {
    std::str::from_utf8(line).ok()?.trim().parse().ok()
}

/// A dotted Python identifier path, as `find_class` would import it.
fn is_identifier_path(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 256
        && s.split('.').all(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .is_some_and(|c| c == '_' || c.is_ascii_alphabetic())
                && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
        })
}

/// How a byte stream relates to pickle.
#[derive(Debug)]
pub enum Verdict {
    /// A pickle (or what a pickle loader would act on): the scan.
    Pickle(PickleScan),
    /// Not a pickle.
    NotPickle,
}

/// Scans a stream known to be meant as a pickle (such as an archive's `data.pkl`).
pub fn scan_reader<R: Read>(reader: R, location: &str) -> Verdict {
    scan(&mut Cursor::new(reader, 0), location, true)
}

/// Scans the stream in `c` (positioned at its start) for consecutive pickles.
///
/// It is a pickle if it starts with a `PROTO` opcode of a known protocol, or if
/// walking it imports anything by name (a loader would import that before it could
/// fail), or if `plain_counts` and it parses to `STOP`. (Protocol 0/1 streams without imports cannot call anything;
/// detection by content leaves such files as data, while a stream already known to be
/// a pickle, such as an archive's `data.pkl`, is reported whatever it holds.)
pub(crate) fn scan<R: Read>(c: &mut Cursor<R>, location: &str, plain_counts: bool) -> Verdict {
    let start = c.pos();
    let mut s = Scanner {
        c,
        stack: Vec::new(),
        memo: HashMap::new(),
        globals: Vec::new(),
        truncated: false,
        ops: 0,
        protocol: 0,
        leading_proto: false,
        op_start: start,
    };
    let first = s.walk(false);
    let protocol = s.protocol;
    // Evidence that a stream of unknown kind is a pickle. A `PROTO` naming a protocol
    // Python does not know makes a loader fail at once, and `EXT` resolves codes
    // through copyreg's extension registry, empty in a stock Python, so a loader
    // fails on it before calling anything: neither is evidence on its own. (Random
    // data opens with one of the three `EXT` opcodes once in 85 files; counting
    // them refused 1.6 % of random buffers as pickles that import
    // `copyreg.extension_N`.) In a stream that is a pickle, `EXT` is still reported
    // and never allowed.
    let starts_with_proto = s.leading_proto;
    let imports = s.globals.iter().any(|g| g.opcode != "EXT");
    let error = match first {
        Walk::Done => None,
        Walk::Empty => return Verdict::NotPickle,
        Walk::Broken(Stop::Invalid { offset, reason }) => {
            Some(format!("{reason} at offset {}", offset - start))
        }
    };
    let is_pickle =
        starts_with_proto || imports || s.truncated || (error.is_none() && plain_counts);
    if !is_pickle {
        return Verdict::NotPickle;
    }
    let mut pickles = 0;
    if error.is_none() {
        pickles = 1;
        // Legacy torch.save files are several pickles in a row, then raw storages;
        // follow-on pickles are recognised by a PROTO opcode (protocol 2 or later).
        while let Walk::Done = s.walk(true) {
            pickles += 1;
        }
    }
    Verdict::Pickle(PickleScan {
        location: location.to_owned(),
        protocol,
        pickles,
        globals: s.globals,
        globals_truncated: s.truncated,
        error,
    })
}
