//! File names on FAT: validity, 8.3 short names, NT case bits, long names.
//!
//! The rule, fixed so the same input always gives the same entries:
//! - A name that is a valid 8.3 name whose base and extension are each all
//!   upper case or all lower case is stored as a short entry only. Lower case
//!   is recorded in the NT case byte (0x08 base, 0x10 extension), as Windows
//!   NT and mtools do, so `winnt.sif` reads back as `winnt.sif`.
//! - Any other name gets long-name (VFAT) entries plus a short alias. The
//!   alias is the upper-cased name when that is a valid 8.3 name
//!   (`Readme.txt` → `README.TXT`); otherwise a basis built as in the FAT
//!   specification (spaces and leading dots dropped, invalid characters
//!   turned into `_`, base cut to 8 and extension to 3) with the first free
//!   numeric tail `~1`, `~2`, ... (`Autounattend.xml` → `AUTOUN~1.XML`).
//! - Names are compared without regard to case: two names differing only in
//!   case cannot share a directory.

use std::collections::BTreeSet;

/// Longest long name, in UTF-16 code units.
pub const MAX_LONG_NAME: usize = 255;
/// NT case byte: base name is lower case.
pub const CASE_LOWER_BASE: u8 = 0x08;
/// NT case byte: extension is lower case.
pub const CASE_LOWER_EXT: u8 = 0x10;
/// UTF-16 code units held by one long-name entry.
pub const LFN_CHARS_PER_ENTRY: usize = 13;

/// Why a name cannot be stored on FAT.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    /// Empty, `.` or `..`.
    #[error("Invalid FAT name {0:?}: empty, \".\" or \"..\"")]
    Reserved(String),
    /// Holds a character FAT refuses.
    #[error("Invalid FAT name {name:?}: character {ch:?} is not allowed")]
    BadChar {
        /// The name.
        name: String,
        /// The offending character.
        ch: char,
    },
    /// Ends in a dot or space, which Windows silently strips.
    #[error("Invalid FAT name {0:?}: it ends with a dot or a space")]
    TrailingDotOrSpace(String),
    /// Longer than 255 UTF-16 units.
    #[error("Invalid FAT name {0:?}: longer than 255 characters")]
    TooLong(String),
    /// A device name DOS reserves (CON, NUL, COM1...).
    #[error("Invalid FAT name {0:?}: reserved DOS device name")]
    Device(String),
    /// Every `~n` tail is taken.
    #[error("No free short alias for {0:?}")]
    NoAlias(String),
    /// Invalid volume label.
    #[error("Invalid volume label {label:?}: {why}")]
    Label {
        /// The label given.
        label: String,
        /// What is wrong with it.
        why: &'static str,
    },
}

/// An 11-byte short name, base and extension space padded, upper case.
pub type ShortName = [u8; 11];

/// How a name is stored in a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredName {
    /// The 8.3 entry name.
    pub short: ShortName,
    /// NT case byte for the short entry.
    pub case: u8,
    /// The long name in UTF-16, when one is needed.
    pub long: Option<Vec<u16>>,
}

impl StoredName {
    /// Directory slots used: one short entry plus the long-name entries.
    pub fn slots(&self) -> usize {
        1 + self
            .long
            .as_ref()
            .map_or(0, |l| l.len().div_ceil(LFN_CHARS_PER_ENTRY))
    }
}

/// Checks that `name` is a valid long file name on FAT.
pub fn validate(name: &str) -> Result<(), NameError> {
    if name.is_empty() || name == "." || name == ".." {
        return Err(NameError::Reserved(name.to_owned()));
    }
    if let Some(ch) = name
        .chars()
        .find(|&c| c < ' ' || "\"*/:<>?\\|\u{7f}".contains(c))
    {
        return Err(NameError::BadChar {
            name: name.to_owned(),
            ch,
        });
    }
    if name.ends_with('.') || name.ends_with(' ') {
        return Err(NameError::TrailingDotOrSpace(name.to_owned()));
    }
    if name.encode_utf16().count() > MAX_LONG_NAME {
        return Err(NameError::TooLong(name.to_owned()));
    }
    let stem = name.split('.').next().unwrap_or("").to_ascii_uppercase();
    let device = matches!(stem.as_str(), "CON" | "PRN" | "AUX" | "NUL" | "CLOCK$")
        || (stem.len() == 4
            && (stem.starts_with("COM") || stem.starts_with("LPT"))
            && stem.as_bytes()[3].is_ascii_digit()
            && stem.as_bytes()[3] != b'0');
    if device {
        return Err(NameError::Device(name.to_owned()));
    }
    Ok(())
}

/// The key two names in one directory must not share (case folded).
pub fn fold(name: &str) -> String {
    name.to_uppercase()
}

/// Characters allowed in a short name besides A-Z and 0-9.
fn short_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "$%'-_@~`!(){}^#&".contains(c)
}

/// Case of the letters of a name part, or `None` when mixed.
fn part_case(part: &str) -> Option<bool> {
    let upper = part.chars().any(|c| c.is_ascii_uppercase());
    let lower = part.chars().any(|c| c.is_ascii_lowercase());
    match (upper, lower) {
        (true, true) => None,
        _ => Some(lower),
    }
}

fn pack(base: &str, ext: &str) -> ShortName {
    let mut s = [b' '; 11];
    for (d, b) in s[..8].iter_mut().zip(base.bytes()) {
        *d = b.to_ascii_uppercase();
    }
    for (d, b) in s[8..].iter_mut().zip(ext.bytes()) {
        *d = b.to_ascii_uppercase();
    }
    s
}

/// The short entry alone for names that are valid 8.3 names with a single
/// case per part: the packed name and NT case byte.
pub fn exact_short(name: &str) -> Option<(ShortName, u8)> {
    let (base, ext) = name.split_once('.').unwrap_or((name, ""));
    let fits = (1..=8).contains(&base.len())
        && ext.len() <= 3
        && !ext.contains('.')
        && (ext.is_empty() != name.contains('.'))
        && base.chars().chain(ext.chars()).all(short_char);
    if !fits {
        return None;
    }
    let mut case = 0;
    if part_case(base)? {
        case |= CASE_LOWER_BASE;
    }
    if part_case(ext)? {
        case |= CASE_LOWER_EXT;
    }
    Some((pack(base, ext), case))
}

/// Assigns stored names to the (already validated, case-distinct) names of
/// one directory, in the given order. Short-only names are placed first so
/// generated aliases never take them.
pub fn assign(names: &[&str]) -> Result<Vec<StoredName>, NameError> {
    let mut used: BTreeSet<ShortName> = BTreeSet::new();
    let mut out: Vec<Option<StoredName>> = names
        .iter()
        .map(|n| {
            exact_short(n).map(|(short, case)| {
                used.insert(short);
                StoredName {
                    short,
                    case,
                    long: None,
                }
            })
        })
        .collect();
    for (slot, name) in out.iter_mut().zip(names) {
        if slot.is_none() {
            let short = alias(name, &used)?;
            used.insert(short);
            *slot = Some(StoredName {
                short,
                case: 0,
                long: Some(name.encode_utf16().collect()),
            });
        }
    }
    Ok(out.into_iter().flatten().collect())
}

/// Generates the short alias of a name needing long entries.
fn alias(name: &str, used: &BTreeSet<ShortName>) -> Result<ShortName, NameError> {
    if let Some((short, _)) = exact_short(&name.to_ascii_uppercase()) {
        if !used.contains(&short) {
            return Ok(short);
        }
    }
    let to_short = |c: char| {
        let c = c.to_ascii_uppercase();
        if short_char(c) {
            c
        } else {
            '_'
        }
    };
    let trimmed: String = name.chars().filter(|&c| c != ' ').collect();
    let trimmed = trimmed.trim_start_matches('.');
    let (base, ext) = match trimmed.rsplit_once('.') {
        Some((b, e)) => (b, e),
        None => (trimmed, ""),
    };
    let mut base: String = base.chars().filter(|&c| c != '.').map(to_short).collect();
    if base.is_empty() {
        base.push('_');
    }
    let ext: String = ext.chars().map(to_short).take(3).collect();
    for n in 1..=999_999u32 {
        let tail = format!("~{n}");
        let keep = 8 - tail.len();
        let candidate: String = base.chars().take(keep).collect::<String>() + &tail;
        let short = pack(&candidate, &ext);
        if !used.contains(&short) {
            return Ok(short);
        }
    }
    Err(NameError::NoAlias(name.to_owned()))
}

/// The checksum of a short name stored in each of its long-name entries.
pub fn lfn_checksum(short: &ShortName) -> u8 {
    short
        .iter()
        .fold(0u8, |sum, &b| sum.rotate_right(1).wrapping_add(b))
}

/// Renders a short name as `BASE.EXT`, applying NT case bits.
pub fn display_short(short: &ShortName, case: u8) -> String {
    let part = |bytes: &[u8], lower: bool| -> String {
        let s: String = bytes.iter().map(|&b| char::from(b)).collect();
        let s = s.trim_end_matches(' ');
        if lower {
            s.to_ascii_lowercase()
        } else {
            s.to_owned()
        }
    };
    let mut first = short[..8].to_vec();
    if first[0] == 0x05 {
        first[0] = 0xE5;
    }
    let base = part(&first, case & CASE_LOWER_BASE != 0);
    let ext = part(&short[8..], case & CASE_LOWER_EXT != 0);
    if ext.is_empty() {
        base
    } else {
        format!("{base}.{ext}")
    }
}

/// Validates a volume label and returns it packed: upper case, space padded.
pub fn volume_label(label: &str) -> Result<[u8; 11], NameError> {
    let err = |why| NameError::Label {
        label: label.to_owned(),
        why,
    };
    if label.trim().is_empty() {
        return Err(err("it is empty"));
    }
    if label.len() > 11 {
        return Err(err("longer than 11 characters"));
    }
    if !label.chars().all(|c| short_char(c) || c == ' ') {
        return Err(err("only A-Z, 0-9, space and $%'-_@~`!(){}^#& are allowed"));
    }
    let mut out = [b' '; 11];
    for (d, b) in out.iter_mut().zip(label.trim_end().bytes()) {
        *d = b.to_ascii_uppercase();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(name: &str) -> StoredName {
        assign(&[name]).unwrap().remove(0)
    }

    #[test]
    fn upper_case_8_3_name_is_a_short_entry_only() {
        let n = one("WINNT.SIF");
        assert_eq!(&n.short, b"WINNT   SIF");
        assert_eq!((n.case, n.slots()), (0, 1));
        assert_eq!(n.long, None);
    }

    #[test]
    fn lower_case_8_3_name_sets_both_case_bits() {
        let n = one("winnt.sif");
        assert_eq!(&n.short, b"WINNT   SIF");
        assert_eq!((n.case, n.long), (0x18, None));
        assert_eq!(display_short(&n.short, n.case), "winnt.sif");
    }

    #[test]
    fn lower_case_base_with_upper_extension_sets_only_base_bit() {
        assert_eq!(one("readme.TXT").case, CASE_LOWER_BASE);
        assert_eq!(one("README.txt").case, CASE_LOWER_EXT);
        assert_eq!(one("makefile").case, CASE_LOWER_BASE);
    }

    #[test]
    fn mixed_case_8_3_name_gets_long_entries_and_plain_alias() {
        let n = one("Readme.txt");
        assert_eq!(&n.short, b"README  TXT");
        assert_eq!(n.case, 0);
        assert_eq!(
            n.long.unwrap(),
            "Readme.txt".encode_utf16().collect::<Vec<_>>()
        );
    }

    #[test]
    fn long_name_gets_numbered_alias_and_two_entries() {
        let n = one("Autounattend.xml");
        assert_eq!(&n.short, b"AUTOUN~1XML");
        assert_eq!(n.slots(), 3); // 16 characters: 2 long entries + 1 short
    }

    #[test]
    fn aliases_count_up_and_avoid_exact_short_names() {
        let names = ["Program Files", "Program Data", "PROGRA~1"];
        let out = assign(&names).unwrap();
        assert_eq!(&out[2].short, b"PROGRA~1   ");
        assert_eq!(&out[0].short, b"PROGRA~2   ");
        assert_eq!(&out[1].short, b"PROGRA~3   ");
    }

    #[test]
    fn alias_replaces_invalid_characters_and_drops_spaces_and_dots() {
        assert_eq!(&one("a+b c.tar.gz").short, b"A_BCTA~1GZ ");
        assert_eq!(&one(".profile").short, b"PROFIL~1   ");
        assert_eq!(&one("héllo.txt").short, b"H_LLO~1 TXT");
    }

    #[test]
    fn tail_grows_into_the_base() {
        let mut used = BTreeSet::new();
        for n in 1..=9 {
            used.insert(pack(&format!("LONGFI~{n}"), "TXT"));
        }
        used.insert(pack("LONGF~10", "TXT"));
        assert_eq!(&alias("longfilename.txt", &used).unwrap(), b"LONGF~11TXT");
    }

    #[test]
    fn checksum_matches_the_specification_example() {
        // Rotate right then add, over the 11 bytes.
        let mut sum = 0u8;
        for &b in b"AUTOUN~1XML" {
            sum = (if sum & 1 != 0 { 0x80 } else { 0 }) + (sum >> 1);
            sum = sum.wrapping_add(b);
        }
        assert_eq!(lfn_checksum(b"AUTOUN~1XML"), sum);
    }

    #[test]
    fn invalid_names_are_refused_naming_the_name() {
        for bad in [
            "",
            ".",
            "..",
            "a:b",
            "x?",
            "tab\there",
            "dot.",
            "space ",
            "CON",
            "com1.txt",
        ] {
            let e = validate(bad).unwrap_err();
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
        assert!(validate(&"x".repeat(256)).is_err());
        assert!(validate(&"x".repeat(255)).is_ok());
        assert!(validate("COM0").is_ok());
    }

    #[test]
    fn folding_makes_case_variants_equal() {
        assert_eq!(fold("a.txt"), fold("A.TXT"));
    }

    #[test]
    fn label_is_upper_cased_and_checked() {
        assert_eq!(&volume_label("winsetup").unwrap(), b"WINSETUP   ");
        assert!(volume_label("TWELVE_CHARS").is_err());
        assert!(volume_label("A.B").is_err());
        assert!(volume_label("  ").is_err());
    }
}
