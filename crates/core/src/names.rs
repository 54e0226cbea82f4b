//! Validated names: model names (`org/model`), versions, and safe relative file paths.
//!
//! Parse, don't validate: a [`ModelPath`] cannot hold `..`, an absolute path or an
//! empty component, so code that writes a model out never has to check again.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest model path in bytes.
pub const MAX_PATH_BYTES: usize = 1024;
/// Longest single path component in bytes (the common file-system limit).
pub const MAX_COMPONENT_BYTES: usize = 255;
/// Deepest directory nesting of a model path.
pub const MAX_PATH_DEPTH: usize = 32;
/// Longest part of a model name (`org` or `model`).
pub const MAX_NAME_PART: usize = 96;
/// Longest version string.
pub const MAX_VERSION: usize = 64;

/// Why a string is not a valid name, version or path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// A model name is not of the form `org/model`.
    #[error(
        "invalid model name {name:?}: {why} (a name is `org/model`: letters, digits, `.`, `_` and `-`, each part at most 96 characters and starting with a letter or digit)"
    )]
    ModelName {
        /// The offending text (truncated).
        name: String,
        /// What rule it breaks.
        why: &'static str,
    },
    /// A version string breaks the rules.
    #[error(
        "invalid version {version:?}: {why} (a version is 1 to 64 of letters, digits, `.`, `_`, `+` and `-`, starting with a letter or digit)"
    )]
    Version {
        /// The offending text (truncated).
        version: String,
        /// What rule it breaks.
        why: &'static str,
    },
    /// A file path that is not a safe relative path.
    #[error("unsafe file path {path:?}: {why}")]
    UnsafePath {
        /// The offending path (truncated).
        path: String,
        /// What rule it breaks.
        why: &'static str,
    },
}

fn truncated(s: &str) -> String {
    s.chars().take(120).collect()
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// A model name: `org/model`, as on model hubs.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ModelName(String);

impl ModelName {
    /// The text form.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The organisation part (before the `/`).
    pub fn org(&self) -> &str {
        self.0.split_once('/').map_or("", |(org, _)| org)
    }
}

impl FromStr for ModelName {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why| NameError::ModelName {
            name: truncated(s),
            why,
        };
        let (org, model) = s.split_once('/').ok_or(err("missing `/`"))?;
        for part in [org, model] {
            if part.is_empty() {
                return Err(err("empty part"));
            }
            if part.len() > MAX_NAME_PART {
                return Err(err("part too long"));
            }
            if !part.chars().all(is_name_char) {
                return Err(err("character not allowed"));
            }
            if !part.starts_with(|c: char| c.is_ascii_alphanumeric()) {
                return Err(err("part must start with a letter or digit"));
            }
        }
        Ok(Self(s.to_owned()))
    }
}

/// A version label such as `3`, `1.2.0` or `2024-06-01+cuda`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version(String);

impl Version {
    /// The text form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Version {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why| NameError::Version {
            version: truncated(s),
            why,
        };
        if s.is_empty() {
            return Err(err("empty"));
        }
        if s.len() > MAX_VERSION {
            return Err(err("too long"));
        }
        if !s.chars().all(|c| is_name_char(c) || c == '+') {
            return Err(err("character not allowed"));
        }
        if !s.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            return Err(err("must start with a letter or digit"));
        }
        Ok(Self(s.to_owned()))
    }
}

/// A safe relative path of a file inside a model directory, `/`-separated.
///
/// Every component is non-empty, not `.` or `..`, free of `\`, NUL and control
/// characters, at most 255 bytes; the whole path is at most 1024 bytes and 32 deep.
/// Joining it under a directory can never name anything outside that directory.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ModelPath(String);

impl ModelPath {
    /// The text form, `/`-separated.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The components, in order.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// The parent directories of this path, shortest first (`a`, `a/b` for `a/b/c`).
    pub fn ancestors(&self) -> impl Iterator<Item = &str> {
        self.0.match_indices('/').map(move |(i, _)| &self.0[..i])
    }
}

impl FromStr for ModelPath {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why| NameError::UnsafePath {
            path: truncated(s),
            why,
        };
        if s.is_empty() {
            return Err(err("empty path"));
        }
        if s.len() > MAX_PATH_BYTES {
            return Err(err("longer than 1024 bytes"));
        }
        if s.starts_with('/') {
            return Err(err("absolute path"));
        }
        if s.contains('\\') {
            return Err(err("contains a backslash"));
        }
        if s.chars().any(char::is_control) {
            return Err(err("contains a control character"));
        }
        let mut depth = 0;
        for component in s.split('/') {
            depth += 1;
            match component {
                "" => return Err(err("empty path component (`//` or a trailing `/`)")),
                "." => return Err(err("`.` component")),
                ".." => return Err(err("`..` component")),
                c if c.len() > MAX_COMPONENT_BYTES => {
                    return Err(err("component longer than 255 bytes"));
                }
                _ => {}
            }
        }
        if depth > MAX_PATH_DEPTH {
            return Err(err("nested more than 32 directories deep"));
        }
        Ok(Self(s.to_owned()))
    }
}

macro_rules! text_type_impls {
    ($ty:ident) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($ty), self.0)
            }
        }

        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

text_type_impls!(ModelName);
text_type_impls!(Version);
text_type_impls!(ModelPath);

/// A reference to a model as users type it: `org/model` (the latest) or `org/model:VERSION`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameRef {
    /// The model name.
    pub name: ModelName,
    /// A specific version, or `None` for the highest sequence.
    pub version: Option<Version>,
}

impl FromStr for NameRef {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            Some((name, version)) => Ok(Self {
                name: name.parse()?,
                version: Some(version.parse()?),
            }),
            None => Ok(Self {
                name: s.parse()?,
                version: None,
            }),
        }
    }
}

impl fmt::Display for NameRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.version {
            Some(v) => write!(f, "{}:{v}", self.name),
            None => write!(f, "{}", self.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn model_names() {
        assert_eq!("org/model".parse::<ModelName>().unwrap().org(), "org");
        for ok in ["a/b", "Meta-Llama/Llama-3.1-8B", "org_1/m.v2"] {
            ok.parse::<ModelName>().unwrap();
        }
        for bad in [
            "", "org", "/m", "o/", "o/m/x", "o/.m", "o m/x", "o/m:1", "../x",
        ] {
            assert!(bad.parse::<ModelName>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn versions() {
        for ok in ["1", "1.2.0", "2024-06-01+cuda", "v3"] {
            ok.parse::<Version>().unwrap();
        }
        for bad in ["", "-1", "1/2", "1:2", "a b", &"9".repeat(65)] {
            assert!(bad.parse::<Version>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn name_refs() {
        let r: NameRef = "org/m:3".parse().unwrap();
        assert_eq!(r.version.unwrap().as_str(), "3");
        let r: NameRef = "org/m".parse().unwrap();
        assert!(r.version.is_none());
    }

    #[test]
    fn unsafe_paths_are_refused_with_reason() {
        let cases = [
            ("", "empty path"),
            ("/etc/passwd", "absolute path"),
            ("../x", "`..` component"),
            ("a/../../x", "`..` component"),
            ("a/./b", "`.` component"),
            ("a//b", "empty path component"),
            ("a/", "empty path component"),
            ("a\\b", "backslash"),
            ("a\0b", "control character"),
            ("a\nb", "control character"),
        ];
        for (path, why) in cases {
            let err = path.parse::<ModelPath>().unwrap_err().to_string();
            assert!(err.contains(why), "{path:?}: {err}");
        }
        let long = "a".repeat(256);
        assert!(long.parse::<ModelPath>().is_err());
        let deep = vec!["d"; 33].join("/");
        assert!(deep.parse::<ModelPath>().is_err());
    }

    #[test]
    fn ancestors() {
        let p: ModelPath = "a/b/c.bin".parse().unwrap();
        assert_eq!(p.ancestors().collect::<Vec<_>>(), ["a", "a/b"]);
        let p: ModelPath = "c.bin".parse().unwrap();
        assert_eq!(p.ancestors().count(), 0);
    }

    proptest! {
        /// Whatever text comes in, an accepted path stays inside its directory.
        #[test]
        fn accepted_paths_never_escape(s in "[a-z./\\\\\0]{0,24}") {
            if let Ok(p) = s.parse::<ModelPath>() {
                let joined = std::path::Path::new("/root/dir").join(p.as_str());
                let mut depth = 0i32;
                for c in joined.strip_prefix("/root/dir").unwrap().components() {
                    match c {
                        std::path::Component::Normal(_) => depth += 1,
                        other => prop_assert!(false, "component {other:?} in {s:?}"),
                    }
                }
                prop_assert!(depth >= 1);
            }
        }
    }
}
