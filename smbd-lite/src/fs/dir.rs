//! Directory listings: wildcard matching and directory information classes.

use super::info::FileStat;
use crate::wire::{string_to_utf16, u32_len, Out};

/// Longest pattern accepted, in characters.
pub const MAX_PATTERN: usize = 512;

/// Matches `name` against a Windows pattern: `*`, `?`, and the DOS
/// wildcards `<` (DOS_STAR), `>` (DOS_QM) and `"` (DOS_DOT); case-insensitive.
pub fn matches(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().flat_map(char::to_lowercase).collect();
    let n: Vec<char> = name.chars().flat_map(char::to_lowercase).collect();
    if p.len() > MAX_PATTERN {
        return false;
    }
    if p == ['*'] || (p.len() == 3 && p == ['*', '.', '*']) {
        return true;
    }
    let last_dot = n.iter().rposition(|&c| c == '.');
    // reach[j] = pattern prefix consumed so far can end at name position j.
    let mut reach = vec![false; n.len() + 1];
    reach[0] = true;
    for &pc in &p {
        let mut next = vec![false; n.len() + 1];
        for j in 0..=n.len() {
            if !reach[j] {
                continue;
            }
            match pc {
                '*' => next[j..].iter_mut().for_each(|x| *x = true),
                '<' => {
                    // Any run that does not swallow the last dot.
                    let stop = match last_dot {
                        Some(d) if d >= j => d,
                        _ => n.len(),
                    };
                    next[j..=stop].iter_mut().for_each(|x| *x = true);
                }
                '>' => {
                    if j < n.len() && n[j] != '.' {
                        next[j + 1] = true;
                    } else {
                        next[j] = true;
                    }
                }
                '"' => {
                    if j < n.len() && n[j] == '.' {
                        next[j + 1] = true;
                    } else if j == n.len() {
                        next[j] = true;
                    }
                }
                '?' => {
                    if j < n.len() {
                        next[j + 1] = true;
                    }
                }
                c => {
                    if j < n.len() && n[j] == c {
                        next[j + 1] = true;
                    }
                }
            }
        }
        reach = next;
    }
    reach[n.len()]
}

/// Directory information classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirClass {
    /// FileDirectoryInformation (1)
    Directory,
    /// FileFullDirectoryInformation (2)
    Full,
    /// FileBothDirectoryInformation (3)
    Both,
    /// FileNamesInformation (12)
    Names,
    /// FileIdBothDirectoryInformation (37)
    IdBoth,
    /// FileIdFullDirectoryInformation (38)
    IdFull,
}

impl DirClass {
    /// The class for a wire value.
    pub fn from_wire(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Directory,
            2 => Self::Full,
            3 => Self::Both,
            12 => Self::Names,
            37 => Self::IdBoth,
            38 => Self::IdFull,
            _ => return None,
        })
    }
}

/// Encodes one entry (without alignment padding); NextEntryOffset is 0.
pub fn encode_entry(class: DirClass, name: &str, st: &FileStat) -> Vec<u8> {
    let name16 = string_to_utf16(name);
    let mut o = Out::with_capacity(104 + name16.len());
    o.u32(0).u32(0);
    if class == DirClass::Names {
        o.u32(u32_len(name16.len())).bytes(&name16);
        return o.0;
    }
    st.emit_times(&mut o);
    o.u64(st.size).u64(st.alloc).u32(st.attributes);
    o.u32(u32_len(name16.len()));
    match class {
        DirClass::Directory | DirClass::Names => {}
        DirClass::Full => {
            o.u32(0);
        }
        DirClass::IdFull => {
            o.u32(0).u32(0).u64(st.inode);
        }
        DirClass::Both => {
            o.u32(0).u8(0).u8(0).zeros(24);
        }
        DirClass::IdBoth => {
            o.u32(0).u8(0).u8(0).zeros(24).u16(0).u64(st.inode);
        }
    }
    o.bytes(&name16);
    o.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn star_and_question_mark_match_case_insensitively() {
        assert!(matches("*", "anything"));
        assert!(matches("*.TXT", "a.txt"));
        assert!(matches("a?c", "ABC"));
        assert!(!matches("a?c", "ac"));
        assert!(!matches("*.txt", "a.txt.bak"));
    }

    #[test]
    fn dos_wildcards_follow_windows_rules() {
        assert!(matches("<.txt", "file.txt"));
        assert!(matches("a>>", "a"));
        assert!(matches("a\"", "a"));
        assert!(matches("<\"*", "file.txt"));
        assert!(!matches("<", "a.b"));
    }

    #[test]
    fn exact_name_matches_only_itself() {
        assert!(matches("Readme.md", "README.MD"));
        assert!(!matches("Readme.md", "Readme.mdx"));
    }

    #[test]
    fn entry_sizes_match_the_classes() {
        let st = FileStat::default();
        assert_eq!(encode_entry(DirClass::IdBoth, "ab", &st).len(), 104 + 4);
        assert_eq!(encode_entry(DirClass::IdFull, "ab", &st).len(), 80 + 4);
        assert_eq!(encode_entry(DirClass::Both, "ab", &st).len(), 94 + 4);
        assert_eq!(encode_entry(DirClass::Directory, "ab", &st).len(), 64 + 4);
        assert_eq!(encode_entry(DirClass::Names, "ab", &st).len(), 12 + 4);
    }
}
