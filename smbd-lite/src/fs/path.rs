//! Client path names: validation and conversion to a share-relative host path.
//!
//! A name is split on `\`; `..`, `.`, empty components, `/`, NUL, stream
//! names (`:`), wildcard characters and DOS device names are refused before
//! anything touches the file system. What remains is joined with `/` and
//! resolved by [`crate::fs::share`] beneath the share root only.

use std::path::PathBuf;

use crate::wire::NtStatus;

/// Longest path accepted, in UTF-8 bytes.
pub const MAX_PATH: usize = 4096;
/// Longest component accepted, in UTF-8 bytes.
pub const MAX_COMPONENT: usize = 255;

/// A validated share-relative path (empty = share root).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SharePath {
    components: Vec<String>,
}

/// DOS device names a Windows client could be tricked into using.
const DEVICES: [&str; 4] = ["CON", "PRN", "AUX", "NUL"];

fn is_device_name(component: &str) -> bool {
    let stem = component.split('.').next().unwrap_or("").trim_end();
    let upper = stem.to_ascii_uppercase();
    if DEVICES.contains(&upper.as_str()) {
        return true;
    }
    let b = upper.as_bytes();
    b.len() == 4
        && (upper.starts_with("COM") || upper.starts_with("LPT"))
        && (b'1'..=b'9').contains(&b[3])
}

impl SharePath {
    /// Validates a client name (already decoded from UTF-16).
    pub fn parse(name: &str) -> Result<Self, NtStatus> {
        if name.len() > MAX_PATH {
            return Err(NtStatus::NameTooLong);
        }
        // "file::$DATA" names the unnamed default stream; every other
        // stream name is refused below.
        let name = name.strip_suffix("::$DATA").unwrap_or(name);
        if name.is_empty() {
            return Ok(Self::default());
        }
        if name.starts_with('\\') {
            return Err(NtStatus::InvalidParameter);
        }
        let mut components = Vec::new();
        for c in name.split('\\') {
            Self::check_component(c)?;
            components.push(c.to_string());
        }
        Ok(Self { components })
    }

    fn check_component(c: &str) -> Result<(), NtStatus> {
        if c.is_empty() || c == "." || c == ".." {
            return Err(NtStatus::ObjectNameInvalid);
        }
        if c.len() > MAX_COMPONENT {
            return Err(NtStatus::ObjectNameInvalid);
        }
        let bad = |ch: char| {
            ch < ' ' || matches!(ch, '/' | ':' | '*' | '?' | '"' | '<' | '>' | '|' | '\\')
        };
        if c.chars().any(bad) || is_device_name(c) {
            return Err(NtStatus::ObjectNameInvalid);
        }
        Ok(())
    }

    /// True for the share root.
    pub fn is_root(&self) -> bool {
        self.components.is_empty()
    }

    /// The host path relative to the share root (`.` for the root).
    pub fn host(&self) -> PathBuf {
        if self.components.is_empty() {
            PathBuf::from(".")
        } else {
            self.components.iter().collect()
        }
    }

    /// The parent directory (root for a top-level name).
    pub fn parent(&self) -> Self {
        let mut components = self.components.clone();
        components.pop();
        Self { components }
    }

    /// The last component ("" for the root).
    pub fn leaf(&self) -> &str {
        self.components.last().map(String::as_str).unwrap_or("")
    }

    /// The components.
    pub fn components(&self) -> &[String] {
        &self.components
    }

    /// Replaces one component (used when resolving case differences).
    pub fn set_component(&mut self, i: usize, name: String) {
        if let Some(c) = self.components.get_mut(i) {
            *c = name;
        }
    }

    /// The name as a client writes it (`a\b`).
    pub fn to_windows(&self) -> String {
        self.components.join("\\")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_dot_component_is_refused() {
        assert_eq!(
            SharePath::parse("a\\..\\..\\etc"),
            Err(NtStatus::ObjectNameInvalid)
        );
        assert_eq!(SharePath::parse(".."), Err(NtStatus::ObjectNameInvalid));
    }

    #[test]
    fn absolute_and_slash_names_are_refused() {
        assert!(SharePath::parse("\\etc\\passwd").is_err());
        assert!(SharePath::parse("a/../../b").is_err());
        assert!(SharePath::parse("a\\\\b").is_err());
    }

    #[test]
    fn stream_names_are_refused_but_default_stream_is_the_file() {
        assert_eq!(
            SharePath::parse("f.txt:secret"),
            Err(NtStatus::ObjectNameInvalid)
        );
        assert_eq!(
            SharePath::parse("f.txt::$DATA").unwrap().host(),
            PathBuf::from("f.txt")
        );
    }

    #[test]
    fn device_names_are_refused() {
        for n in ["CON", "nul.txt", "com1", "LPT9.log", "aux"] {
            assert_eq!(SharePath::parse(n), Err(NtStatus::ObjectNameInvalid), "{n}");
        }
        assert!(SharePath::parse("console").is_ok());
        assert!(SharePath::parse("com10").is_ok());
    }

    #[test]
    fn unicode_names_are_kept() {
        let p = SharePath::parse("Ünïcödé\\日本語.txt").unwrap();
        assert_eq!(p.host(), PathBuf::from("Ünïcödé/日本語.txt"));
    }

    #[test]
    fn empty_name_is_the_root() {
        assert!(SharePath::parse("").unwrap().is_root());
    }
}
