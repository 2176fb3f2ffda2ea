//! Unattended-install answer files from a small TOML spec.
//!
//! Windows setup reads its answers from drive A: `winnt.sif` (Windows XP and
//! Server 2003, an INI file) and `autounattend.xml` (Vista and later). One
//! spec renders both, so a single floppy serves either family:
//!
//! ```toml
//! admin_password = "vmm"                  # required
//! product_key = "XXXXX-XXXXX-XXXXX-XXXXX-XXXXX"  # optional
//! computer_name = "BUILDER"               # default BUILDER, 1-15 of A-Z 0-9 -
//! arch = "amd64"                          # or "x86" (autounattend.xml)
//! files = ["autounattend.xml", "winnt.sif"]  # default: both
//! first_logon = 'C:\cygwin\bin\bash.exe -l /setup.sh'  # optional
//!
//! [network]                               # optional section
//! address = "192.168.0.1/24"              # default
//! gateway = "192.168.0.2"                 # optional
//! dns = ["192.168.0.2"]                   # optional
//! interface = "Ethernet"                  # autounattend.xml adapter name
//!
//! [cygwin]                                # optional section
//! installer = 'E:\setup-x86_64.exe'       # required in the section
//! packages = ["openssh", "make"]
//! root = 'C:\cygwin'                      # default
//! package_dir = 'E:\'                     # default: the installer's folder
//! ```
//!
//! At first logon the Cygwin installer runs (quiet, from the local package
//! folder), then `first_logon`. Unknown keys are refused, so typos surface.
//! Values cannot hold double quotes or control characters: `winnt.sif` has
//! no way to escape them.

mod sif;
mod xml;

use std::net::Ipv4Addr;

use serde::Deserialize;

/// Why a spec was refused.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// Not valid TOML or not the expected shape.
    #[error("Invalid answer-file spec")]
    Toml(#[source] toml::de::Error),
    /// A value that cannot be written safely.
    #[error("Invalid answer-file spec: {field} {why}")]
    Value {
        /// Key in the spec.
        field: &'static str,
        /// What is wrong.
        why: String,
    },
}

/// Which answer files to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum AnswerFile {
    /// `autounattend.xml` for Windows Vista and later.
    #[serde(rename = "autounattend.xml")]
    Autounattend,
    /// `winnt.sif` for Windows XP and Server 2003.
    #[serde(rename = "winnt.sif")]
    WinntSif,
}

impl AnswerFile {
    /// The name the file gets on the floppy.
    pub fn file_name(self) -> &'static str {
        match self {
            AnswerFile::Autounattend => "autounattend.xml",
            AnswerFile::WinntSif => "WINNT.SIF",
        }
    }
}

/// CPU architecture named in `autounattend.xml` components.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// 64-bit Windows.
    #[default]
    Amd64,
    /// 32-bit Windows.
    X86,
}

/// The answer-file spec as read from TOML.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// Administrator password (also used for the automatic first logon).
    pub admin_password: String,
    /// Product key, when the media needs one.
    #[serde(default)]
    pub product_key: Option<String>,
    /// NetBIOS computer name.
    #[serde(default = "default_computer_name")]
    pub computer_name: String,
    /// Architecture of the Windows image.
    #[serde(default)]
    pub arch: Arch,
    /// Answer files to write.
    #[serde(default = "default_files")]
    pub files: Vec<AnswerFile>,
    /// Command run at first logon, after the Cygwin installer.
    #[serde(default)]
    pub first_logon: Option<String>,
    /// Static address settings.
    #[serde(default)]
    pub network: Network,
    /// Cygwin installation, when wanted.
    #[serde(default)]
    pub cygwin: Option<Cygwin>,
}

/// Static IPv4 settings of the guest's adapter.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// Address with prefix length, e.g. `192.168.0.1/24`.
    #[serde(default = "default_address")]
    pub address: String,
    /// Default gateway.
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
    /// DNS servers.
    #[serde(default)]
    pub dns: Vec<Ipv4Addr>,
    /// Adapter name (`Identifier` in autounattend.xml).
    #[serde(default = "default_interface")]
    pub interface: String,
}

impl Default for Network {
    fn default() -> Self {
        Network {
            address: default_address(),
            gateway: None,
            dns: Vec::new(),
            interface: default_interface(),
        }
    }
}

/// Cygwin installer run at first logon.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cygwin {
    /// Path of `setup-x86_64.exe` (or `setup-x86.exe`) as the guest sees it.
    pub installer: String,
    /// Packages to install.
    #[serde(default)]
    pub packages: Vec<String>,
    /// Installation root.
    #[serde(default = "default_cygwin_root")]
    pub root: String,
    /// Local package folder; defaults to the installer's folder.
    #[serde(default)]
    pub package_dir: Option<String>,
}

impl Cygwin {
    /// The installer command line: quiet, local install, no shortcuts.
    pub fn command(&self) -> String {
        let dir = self
            .package_dir
            .clone()
            .unwrap_or_else(|| match self.installer.rfind('\\') {
                Some(i) => self.installer[..=i].to_owned(),
                None => ".".to_owned(),
            });
        let mut cmd = format!(
            "{} --quiet-mode --no-shortcuts --local-install --local-package-dir {} --root {}",
            self.installer,
            quote_arg(&dir),
            quote_arg(&self.root)
        );
        if !self.packages.is_empty() {
            cmd.push_str(" --packages ");
            cmd.push_str(&self.packages.join(","));
        }
        cmd
    }
}

/// Quotes a path for cmd.exe only when it needs it (a trailing backslash
/// would escape the closing quote, so it is dropped).
fn quote_arg(s: &str) -> String {
    if s.contains(' ') {
        format!("\"{}\"", s.trim_end_matches('\\'))
    } else {
        s.to_owned()
    }
}

fn default_computer_name() -> String {
    "BUILDER".to_owned()
}
fn default_files() -> Vec<AnswerFile> {
    vec![AnswerFile::Autounattend, AnswerFile::WinntSif]
}
fn default_address() -> String {
    "192.168.0.1/24".to_owned()
}
fn default_interface() -> String {
    "Ethernet".to_owned()
}
fn default_cygwin_root() -> String {
    "C:\\cygwin".to_owned()
}

/// A spec checked and reduced to what the renderers need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answers {
    /// The spec itself.
    pub spec: Spec,
    /// Parsed address.
    pub address: Ipv4Addr,
    /// Prefix length of the address.
    pub prefix: u8,
    /// First-logon commands in order (Cygwin installer, then `first_logon`).
    pub commands: Vec<String>,
}

impl Answers {
    /// Subnet mask of the prefix, for `winnt.sif`.
    pub fn netmask(&self) -> Ipv4Addr {
        let bits = u32::MAX
            .checked_shl(32 - u32::from(self.prefix))
            .unwrap_or(0);
        Ipv4Addr::from(bits)
    }
}

/// Parses and checks a TOML spec.
pub fn parse_spec(text: &str) -> Result<Answers, SpecError> {
    let spec: Spec = toml::from_str(text).map_err(SpecError::Toml)?;
    check(spec)
}

fn check(spec: Spec) -> Result<Answers, SpecError> {
    let bad = |field, why: &str| SpecError::Value {
        field,
        why: why.to_owned(),
    };
    let mut texts: Vec<(&'static str, &str)> = vec![
        ("admin_password", &spec.admin_password),
        ("computer_name", &spec.computer_name),
        ("network.interface", &spec.network.interface),
    ];
    texts.extend(spec.product_key.as_deref().map(|k| ("product_key", k)));
    texts.extend(spec.first_logon.as_deref().map(|c| ("first_logon", c)));
    if let Some(c) = &spec.cygwin {
        texts.push(("cygwin.installer", &c.installer));
        texts.push(("cygwin.root", &c.root));
        texts.extend(c.package_dir.as_deref().map(|d| ("cygwin.package_dir", d)));
        texts.extend(c.packages.iter().map(|p| ("cygwin.packages", p.as_str())));
    }
    for (field, value) in texts {
        if value.chars().any(|c| c == '"' || c.is_control()) {
            return Err(bad(field, "holds a double quote or control character"));
        }
        if value.len() > 4096 {
            return Err(bad(field, "is longer than 4096 bytes"));
        }
    }
    let name = &spec.computer_name;
    if name.is_empty()
        || name.len() > 15
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        || name.chars().all(|c| c.is_ascii_digit())
    {
        return Err(bad(
            "computer_name",
            "must be 1-15 letters, digits or '-', not all digits",
        ));
    }
    if let Some(c) = &spec.cygwin {
        if c.packages
            .iter()
            .any(|p| p.is_empty() || p.contains([',', ' ']))
        {
            return Err(bad(
                "cygwin.packages",
                "entries must be non-empty, without ',' or spaces",
            ));
        }
    }
    if spec.files.is_empty() {
        return Err(bad(
            "files",
            "is empty: name autounattend.xml and/or winnt.sif",
        ));
    }
    let (address, prefix) = parse_cidr(&spec.network.address)
        .ok_or_else(|| bad("network.address", "must look like 192.168.0.1/24"))?;
    let mut commands = Vec::new();
    commands.extend(spec.cygwin.as_ref().map(Cygwin::command));
    commands.extend(spec.first_logon.clone());
    Ok(Answers {
        spec,
        address,
        prefix,
        commands,
    })
}

fn parse_cidr(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (addr, prefix) = s.split_once('/')?;
    let prefix: u8 = prefix.parse().ok()?;
    (1..=32).contains(&prefix).then_some(())?;
    Some((addr.parse().ok()?, prefix))
}

/// Renders the requested answer files: (name on the floppy, bytes).
pub fn render(answers: &Answers) -> Vec<(&'static str, Vec<u8>)> {
    let mut files = answers.spec.files.clone();
    files.dedup();
    files
        .into_iter()
        .map(|f| {
            let text = match f {
                AnswerFile::Autounattend => xml::render(answers),
                AnswerFile::WinntSif => sif::render(answers),
            };
            (f.file_name(), text.into_bytes())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
        admin_password = "s3cret"
        product_key = "ABCDE-FGHIJ-KLMNO-PQRST-UVWXY"
        computer_name = "WINBUILD"
        first_logon = 'C:\cygwin\bin\bash.exe -l /setup.sh'
        [network]
        gateway = "192.168.0.2"
        dns = ["192.168.0.2"]
        [cygwin]
        installer = 'E:\setup-x86_64.exe'
        packages = ["openssh", "make"]
    "#;

    #[test]
    fn minimal_spec_takes_documented_defaults() {
        let a = parse_spec("admin_password = 'x'").unwrap();
        assert_eq!(a.address, Ipv4Addr::new(192, 168, 0, 1));
        assert_eq!(a.prefix, 24);
        assert_eq!(a.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(a.spec.computer_name, "BUILDER");
        assert_eq!(
            a.spec.files,
            [AnswerFile::Autounattend, AnswerFile::WinntSif]
        );
        assert!(a.commands.is_empty());
    }

    #[test]
    fn cygwin_runs_before_first_logon_command() {
        let a = parse_spec(FULL).unwrap();
        assert_eq!(
            a.commands,
            [
                r"E:\setup-x86_64.exe --quiet-mode --no-shortcuts --local-install --local-package-dir E:\ --root C:\cygwin --packages openssh,make",
                r"C:\cygwin\bin\bash.exe -l /setup.sh",
            ]
        );
    }

    #[test]
    fn paths_with_spaces_are_quoted() {
        let c = Cygwin {
            installer: r"E:\my files\setup.exe".into(),
            packages: vec![],
            root: r"C:\Program Files\cygwin".into(),
            package_dir: None,
        };
        assert_eq!(
            c.command(),
            r#"E:\my files\setup.exe --quiet-mode --no-shortcuts --local-install --local-package-dir "E:\my files" --root "C:\Program Files\cygwin""#
        );
    }

    #[test]
    fn unknown_key_is_refused() {
        let e = parse_spec("admin_password = 'x'\nadmin_pasword = 'y'").unwrap_err();
        assert!(format!("{:?}", e).contains("admin_pasword"), "{e:?}");
    }

    #[test]
    fn quote_in_a_value_is_refused_naming_the_field() {
        let e = parse_spec("admin_password = 'a\"b'").unwrap_err();
        assert_eq!(
            e.to_string(),
            "Invalid answer-file spec: admin_password holds a double quote or control character"
        );
    }

    #[test]
    fn bad_address_and_computer_name_are_refused() {
        for spec in [
            "admin_password='x'\n[network]\naddress='192.168.0.1'",
            "admin_password='x'\n[network]\naddress='192.168.0.1/33'",
            "admin_password='x'\ncomputer_name='NAME_WITH_UNDERSCORE'",
            "admin_password='x'\ncomputer_name='1234'",
            "admin_password='x'\nfiles=[]",
        ] {
            assert!(
                matches!(parse_spec(spec), Err(SpecError::Value { .. })),
                "{spec}"
            );
        }
    }

    #[test]
    fn render_names_the_files_as_requested() {
        let a = parse_spec("admin_password='x'\nfiles=['winnt.sif']").unwrap();
        let out = render(&a);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, "WINNT.SIF");
    }
}
