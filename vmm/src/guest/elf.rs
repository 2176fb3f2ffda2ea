//! What the kit reads from ELF files: the dynamic loader (`PT_INTERP`) and
//! library names (`DT_NEEDED`) of programs and libraries, and the
//! `.modinfo` section of kernel modules.
//!
//! Limitations:
//! - `DT_RPATH`/`DT_RUNPATH` are ignored: libraries are looked up in the
//!   standard multiarch directories only (Debian's packages do not use them).

use goblin::elf::Elf;

/// Errors from reading an ELF file.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    /// The bytes are not a valid ELF file.
    #[error("Not a valid ELF file")]
    Parse(#[source] goblin::error::Error),
    /// The module has no `.modinfo` section or it lies outside the file.
    #[error("No readable .modinfo section")]
    NoModinfo,
}

/// The dynamic-linking needs of one program or library.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DynamicDeps {
    /// The program interpreter (`PT_INTERP`), e.g. `/lib64/ld-linux-x86-64.so.2`.
    pub interpreter: Option<String>,
    /// `DT_NEEDED` sonames in file order.
    pub needed: Vec<String>,
}

/// Reads `PT_INTERP` and `DT_NEEDED` from an ELF program or library.
pub fn dynamic_deps(data: &[u8]) -> Result<DynamicDeps, ElfError> {
    let elf = Elf::parse(data).map_err(ElfError::Parse)?;
    Ok(DynamicDeps {
        interpreter: elf.interpreter.map(str::to_string),
        needed: elf.libraries.iter().map(|s| s.to_string()).collect(),
    })
}

/// Reads the `key=value` entries of a kernel module's `.modinfo` section,
/// in file order.
pub fn modinfo(data: &[u8]) -> Result<Vec<(String, String)>, ElfError> {
    let elf = Elf::parse(data).map_err(ElfError::Parse)?;
    let section = elf
        .section_headers
        .iter()
        .find(|sh| elf.shdr_strtab.get_at(sh.sh_name) == Some(".modinfo"))
        .ok_or(ElfError::NoModinfo)?;
    let start = usize::try_from(section.sh_offset).map_err(|_| ElfError::NoModinfo)?;
    let len = usize::try_from(section.sh_size).map_err(|_| ElfError::NoModinfo)?;
    let bytes = start
        .checked_add(len)
        .and_then(|end| data.get(start..end))
        .ok_or(ElfError::NoModinfo)?;
    Ok(parse_modinfo(bytes))
}

/// Splits a `.modinfo` payload (NUL-separated `key=value` strings).
fn parse_modinfo(bytes: &[u8]) -> Vec<(String, String)> {
    bytes
        .split(|b| *b == 0)
        .filter_map(|entry| {
            let text = String::from_utf8_lossy(entry);
            let (key, value) = text.split_once('=')?;
            Some((key.to_string(), value.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_modinfo_splits_entries_and_skips_padding() {
        let bytes = b"license=GPL\0\0\0depends=virtio,virtio_ring\0softdep=pre: gcm\0name=x\0";
        let info = parse_modinfo(bytes);
        assert_eq!(
            info,
            vec![
                ("license".into(), "GPL".into()),
                ("depends".into(), "virtio,virtio_ring".into()),
                ("softdep".into(), "pre: gcm".into()),
                ("name".into(), "x".into()),
            ]
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(dynamic_deps(b"\x7fELF\x02\x01\x01garbage").is_err());
        assert!(modinfo(&[0u8; 64]).is_err());
        assert!(dynamic_deps(b"").is_err());
    }

    #[test]
    fn reads_the_test_binary_itself() {
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let deps = dynamic_deps(&exe).unwrap();
        assert!(
            deps.needed.iter().any(|n| n.starts_with("libc.so")),
            "{deps:?}"
        );
    }
}
