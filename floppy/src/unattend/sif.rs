//! `winnt.sif` for Windows XP and Server 2003.
//!
//! An INI file: `[Section]` lines, then `Key=Value` lines, CRLF line ends,
//! strings in double quotes (which is why values may not contain any).
//! Text-mode setup reads `[Data]` and `[Unattended]`; GUI setup the rest.
//! The static address uses the adapter sections of `[NetAdapters]` and
//! `[params.MS_TCPIP.Adapter1]`; the commands run from `[GuiRunOnce]`.

use std::fmt::Write;

use super::Answers;

/// One INI section.
type Section = (&'static str, Vec<(&'static str, String)>);

fn quoted(s: &str) -> String {
    format!("\"{s}\"")
}

/// The sections, in file order.
fn sections(a: &Answers) -> Vec<Section> {
    let spec = &a.spec;
    let net = &spec.network;
    let mut user = vec![
        ("FullName", quoted("Administrator")),
        ("OrgName", quoted("vmm")),
        ("ComputerName", quoted(&spec.computer_name)),
    ];
    if let Some(key) = &spec.product_key {
        user.push(("ProductKey", quoted(key)));
    }
    let mut tcpip = vec![
        ("SpecificTo", "Adapter1".to_owned()),
        ("DHCP", "No".to_owned()),
        ("IPAddress", a.address.to_string()),
        ("SubnetMask", a.netmask().to_string()),
    ];
    if let Some(gw) = net.gateway {
        tcpip.push(("DefaultGateway", gw.to_string()));
    }
    if !net.dns.is_empty() {
        let list: Vec<String> = net.dns.iter().map(ToString::to_string).collect();
        tcpip.push(("DNSServerSearchOrder", list.join(",")));
    }
    let mut out: Vec<Section> = vec![
        (
            "Data",
            vec![
                ("AutoPartition", "1".into()),
                ("MsDosInitiated", quoted("0")),
                ("UnattendedInstall", quoted("Yes")),
            ],
        ),
        (
            "Unattended",
            vec![
                ("UnattendMode", "FullUnattended".into()),
                ("OemSkipEula", "Yes".into()),
                ("OemPreinstall", "No".into()),
                ("TargetPath", "\\WINDOWS".into()),
                ("Repartition", "Yes".into()),
                ("UnattendSwitch", quoted("Yes")),
                ("WaitForReboot", "No".into()),
                ("DriverSigningPolicy", "Ignore".into()),
            ],
        ),
        (
            "GuiUnattended",
            vec![
                ("AdminPassword", quoted(&spec.admin_password)),
                ("EncryptedAdminPassword", "No".into()),
                ("AutoLogon", "Yes".into()),
                ("AutoLogonCount", "1".into()),
                ("OEMSkipRegional", "1".into()),
                ("OemSkipWelcome", "1".into()),
                ("TimeZone", "85".into()), // GMT, no daylight saving
            ],
        ),
        ("UserData", user),
        (
            "Identification",
            vec![("JoinWorkgroup", "WORKGROUP".into())],
        ),
        (
            "Networking",
            vec![("InstallDefaultComponents", "Yes".into())],
        ),
        ("NetAdapters", vec![("Adapter1", "params.Adapter1".into())]),
        ("params.Adapter1", vec![("INFID", "*".into())]),
        ("NetProtocols", vec![("MS_TCPIP", "params.MS_TCPIP".into())]),
        (
            "params.MS_TCPIP",
            vec![("AdapterSections", "params.MS_TCPIP.Adapter1".into())],
        ),
        ("params.MS_TCPIP.Adapter1", tcpip),
    ];
    if !a.commands.is_empty() {
        const KEYS: [&str; 10] = [
            "Command0", "Command1", "Command2", "Command3", "Command4", "Command5", "Command6",
            "Command7", "Command8", "Command9",
        ];
        let run = KEYS.iter().zip(&a.commands).map(|(k, c)| (*k, quoted(c)));
        out.push(("GuiRunOnce", run.collect()));
    }
    out
}

/// Renders the file.
pub(super) fn render(a: &Answers) -> String {
    let mut out = String::new();
    for (i, (name, keys)) in sections(a).iter().enumerate() {
        if i > 0 {
            out.push_str("\r\n");
        }
        let _ = write!(out, "[{name}]\r\n");
        for (k, v) in keys {
            let _ = write!(out, "{k}={v}\r\n");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::parse_spec;
    use super::*;
    use std::collections::BTreeMap;

    /// A strict INI reader: every line is a section header, a key=value
    /// pair inside a section, or empty; sections and keys are unique.
    fn parse_ini(text: &str) -> BTreeMap<String, BTreeMap<String, String>> {
        assert!(text.ends_with("\r\n"));
        let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        let mut current: Option<String> = None;
        for line in text.strip_suffix("\r\n").unwrap().split("\r\n") {
            assert!(
                !line.contains('\n') && !line.contains('\r'),
                "bare line end"
            );
            if line.is_empty() {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                assert!(
                    out.insert(name.to_owned(), BTreeMap::new()).is_none(),
                    "{name}"
                );
                current = Some(name.to_owned());
                continue;
            }
            let (k, v) = line.split_once('=').expect("key=value");
            let section = out
                .get_mut(current.as_ref().expect("key before section"))
                .unwrap();
            if v.starts_with('"') {
                assert!(v.len() >= 2 && v.ends_with('"') && !v[1..v.len() - 1].contains('"'));
            }
            assert!(section.insert(k.to_owned(), v.to_owned()).is_none(), "{k}");
        }
        out
    }

    #[test]
    fn layout_is_valid_ini_with_the_spec_values() {
        let a = parse_spec(
            r#"admin_password = "pw"
               product_key = "ABCDE-FGHIJ-KLMNO-PQRST-UVWXY"
               first_logon = 'C:\run.cmd'
               [network]
               address = "192.168.0.1/24"
               gateway = "192.168.0.2"
               dns = ["192.168.0.2", "8.8.8.8"]
               [cygwin]
               installer = 'E:\setup-x86.exe'
               packages = ["openssh"]"#,
        )
        .unwrap();
        let ini = parse_ini(&render(&a));
        assert_eq!(ini["Data"]["UnattendedInstall"], "\"Yes\"");
        assert_eq!(ini["Unattended"]["UnattendMode"], "FullUnattended");
        assert_eq!(ini["GuiUnattended"]["AdminPassword"], "\"pw\"");
        assert_eq!(
            ini["UserData"]["ProductKey"],
            "\"ABCDE-FGHIJ-KLMNO-PQRST-UVWXY\""
        );
        assert_eq!(ini["UserData"]["ComputerName"], "\"BUILDER\"");
        let ip = &ini["params.MS_TCPIP.Adapter1"];
        assert_eq!(ip["IPAddress"], "192.168.0.1");
        assert_eq!(ip["SubnetMask"], "255.255.255.0");
        assert_eq!(ip["DefaultGateway"], "192.168.0.2");
        assert_eq!(ip["DNSServerSearchOrder"], "192.168.0.2,8.8.8.8");
        assert_eq!(ip["DHCP"], "No");
        assert!(ini["GuiRunOnce"]["Command0"].starts_with("\"E:\\setup-x86.exe --quiet-mode"));
        assert_eq!(ini["GuiRunOnce"]["Command1"], "\"C:\\run.cmd\"");
    }

    #[test]
    fn minimal_spec_has_no_key_and_no_run_once() {
        let ini = parse_ini(&render(&parse_spec("admin_password = 'x'").unwrap()));
        assert!(!ini["UserData"].contains_key("ProductKey"));
        assert!(!ini.contains_key("GuiRunOnce"));
        assert!(!ini["params.MS_TCPIP.Adapter1"].contains_key("DefaultGateway"));
    }
}
