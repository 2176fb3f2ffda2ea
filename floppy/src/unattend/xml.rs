//! `autounattend.xml` for Windows Vista and later.
//!
//! Passes used: windowsPE (language, wipe disk 0 into one NTFS partition,
//! install there, product key, EULA), specialize (computer name, static
//! address, DNS), oobeSystem (administrator password, one automatic logon,
//! OOBE pages skipped, first-logon commands). Every value is escaped.

use std::fmt::Write;

use super::{Answers, Arch};

const WCM: &str = "http://schemas.microsoft.com/WMIConfig/2002/State";

/// Escapes text for element content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            _ => out.push(c),
        }
    }
    out
}

/// A small indenting writer for well-formed XML.
#[derive(Debug, Default)]
struct Doc {
    out: String,
    open: Vec<&'static str>,
}

impl Doc {
    fn indent(&mut self) {
        for _ in 0..self.open.len() {
            self.out.push_str("  ");
        }
    }

    fn start(&mut self, tag: &'static str, attrs: &[(&str, &str)]) {
        self.indent();
        let _ = write!(self.out, "<{tag}");
        for (k, v) in attrs {
            let _ = write!(self.out, " {k}=\"{}\"", esc(v));
        }
        self.out.push_str(">\r\n");
        self.open.push(tag);
    }

    fn end(&mut self) {
        if let Some(tag) = self.open.pop() {
            self.indent();
            let _ = write!(self.out, "</{tag}>\r\n");
        }
    }

    fn leaf(&mut self, tag: &'static str, text: &str) {
        self.leaf_with(tag, &[], text);
    }

    fn leaf_with(&mut self, tag: &'static str, attrs: &[(&str, &str)], text: &str) {
        self.indent();
        let _ = write!(self.out, "<{tag}");
        for (k, v) in attrs {
            let _ = write!(self.out, " {k}=\"{}\"", esc(v));
        }
        let _ = write!(self.out, ">{}</{tag}>\r\n", esc(text));
    }

    fn component(&mut self, name: &str, arch: &str) {
        self.start(
            "component",
            &[
                ("name", name),
                ("processorArchitecture", arch),
                ("publicKeyToken", "31bf3856ad364e35"),
                ("language", "neutral"),
                ("versionScope", "nonSxS"),
            ],
        );
    }
}

/// Renders the document.
pub(super) fn render(a: &Answers) -> String {
    let arch = match a.spec.arch {
        Arch::Amd64 => "amd64",
        Arch::X86 => "x86",
    };
    let mut d = Doc::default();
    d.out
        .push_str("<?xml version=\"1.0\" encoding=\"utf-8\"?>\r\n");
    d.start(
        "unattend",
        &[
            ("xmlns", "urn:schemas-microsoft-com:unattend"),
            ("xmlns:wcm", WCM),
        ],
    );
    windows_pe(&mut d, a, arch);
    specialize(&mut d, a, arch);
    oobe(&mut d, a, arch);
    d.end();
    d.out
}

fn windows_pe(d: &mut Doc, a: &Answers, arch: &str) {
    d.start("settings", &[("pass", "windowsPE")]);
    d.component("Microsoft-Windows-International-Core-WinPE", arch);
    d.start("SetupUILanguage", &[]);
    d.leaf("UILanguage", "en-US");
    d.end();
    for tag in ["InputLocale", "SystemLocale", "UILanguage", "UserLocale"] {
        d.leaf(tag, "en-US");
    }
    d.end();
    d.component("Microsoft-Windows-Setup", arch);
    d.start("DiskConfiguration", &[]);
    d.start("Disk", &[("wcm:action", "add")]);
    d.leaf("DiskID", "0");
    d.leaf("WillWipeDisk", "true");
    d.start("CreatePartitions", &[]);
    d.start("CreatePartition", &[("wcm:action", "add")]);
    d.leaf("Order", "1");
    d.leaf("Type", "Primary");
    d.leaf("Extend", "true");
    d.end();
    d.end();
    d.start("ModifyPartitions", &[]);
    d.start("ModifyPartition", &[("wcm:action", "add")]);
    for (tag, v) in [
        ("Order", "1"),
        ("PartitionID", "1"),
        ("Format", "NTFS"),
        ("Label", "Windows"),
        ("Letter", "C"),
        ("Active", "true"),
    ] {
        d.leaf(tag, v);
    }
    d.end();
    d.end();
    d.end();
    d.end();
    d.start("ImageInstall", &[]);
    d.start("OSImage", &[]);
    d.start("InstallTo", &[]);
    d.leaf("DiskID", "0");
    d.leaf("PartitionID", "1");
    d.end();
    d.end();
    d.end();
    d.start("UserData", &[]);
    if let Some(key) = &a.spec.product_key {
        d.start("ProductKey", &[]);
        d.leaf("Key", key);
        d.leaf("WillShowUI", "OnError");
        d.end();
    }
    d.leaf("AcceptEula", "true");
    d.end();
    d.end();
    d.end();
}

fn specialize(d: &mut Doc, a: &Answers, arch: &str) {
    let net = &a.spec.network;
    d.start("settings", &[("pass", "specialize")]);
    d.component("Microsoft-Windows-Shell-Setup", arch);
    d.leaf("ComputerName", &a.spec.computer_name);
    d.end();
    d.component("Microsoft-Windows-TCPIP", arch);
    d.start("Interfaces", &[]);
    d.start("Interface", &[("wcm:action", "add")]);
    d.start("Ipv4Settings", &[]);
    d.leaf("DhcpEnabled", "false");
    d.end();
    d.leaf("Identifier", &net.interface);
    d.start("UnicastIpAddresses", &[]);
    let cidr = format!("{}/{}", a.address, a.prefix);
    d.leaf_with(
        "IpAddress",
        &[("wcm:action", "add"), ("wcm:keyValue", "1")],
        &cidr,
    );
    d.end();
    if let Some(gw) = net.gateway {
        d.start("Routes", &[]);
        d.start("Route", &[("wcm:action", "add")]);
        d.leaf("Identifier", "0");
        d.leaf("Prefix", "0.0.0.0/0");
        d.leaf("NextHopAddress", &gw.to_string());
        d.end();
        d.end();
    }
    d.end();
    d.end();
    d.end();
    if !net.dns.is_empty() {
        d.component("Microsoft-Windows-DNS-Client", arch);
        d.start("Interfaces", &[]);
        d.start("Interface", &[("wcm:action", "add")]);
        d.leaf("Identifier", &net.interface);
        d.start("DNSServerSearchOrder", &[]);
        for (i, server) in net.dns.iter().enumerate() {
            let key = (i + 1).to_string();
            d.leaf_with(
                "IpAddress",
                &[("wcm:action", "add"), ("wcm:keyValue", &key)],
                &server.to_string(),
            );
        }
        d.end();
        d.end();
        d.end();
        d.end();
    }
    d.end();
}

fn oobe(d: &mut Doc, a: &Answers, arch: &str) {
    let password = &a.spec.admin_password;
    d.start("settings", &[("pass", "oobeSystem")]);
    d.component("Microsoft-Windows-Shell-Setup", arch);
    d.start("UserAccounts", &[]);
    d.start("AdministratorPassword", &[]);
    d.leaf("Value", password);
    d.leaf("PlainText", "true");
    d.end();
    d.end();
    d.start("AutoLogon", &[]);
    d.leaf("Enabled", "true");
    d.leaf("Username", "Administrator");
    d.start("Password", &[]);
    d.leaf("Value", password);
    d.leaf("PlainText", "true");
    d.end();
    d.leaf("LogonCount", "1");
    d.end();
    d.start("OOBE", &[]);
    for (tag, v) in [
        ("HideEULAPage", "true"),
        ("HideWirelessSetupInOOBE", "true"),
        ("NetworkLocation", "Work"),
        ("ProtectYourPC", "3"),
        ("SkipMachineOOBE", "true"),
        ("SkipUserOOBE", "true"),
    ] {
        d.leaf(tag, v);
    }
    d.end();
    d.leaf("TimeZone", "UTC");
    if !a.commands.is_empty() {
        d.start("FirstLogonCommands", &[]);
        for (i, cmd) in a.commands.iter().enumerate() {
            d.start("SynchronousCommand", &[("wcm:action", "add")]);
            d.leaf("Order", &(i + 1).to_string());
            d.leaf("CommandLine", cmd);
            d.leaf("Description", &format!("vmm step {}", i + 1));
            d.end();
        }
        d.end();
    }
    d.end();
    d.end();
}

#[cfg(test)]
mod tests {
    use super::super::parse_spec;
    use super::*;

    const NS: &str = "urn:schemas-microsoft-com:unattend";

    fn parsed(spec: &str) -> String {
        render(&parse_spec(spec).unwrap())
    }

    /// Texts of all elements named `tag`, in document order.
    fn texts(doc: &roxmltree::Document, tag: &str) -> Vec<String> {
        doc.descendants()
            .filter(|n| n.has_tag_name((NS, tag)))
            .map(|n| n.text().unwrap_or("").to_owned())
            .collect()
    }

    #[test]
    fn output_parses_back_with_every_value() {
        let xml = parsed(
            r#"admin_password = "p&<w>'d"
               product_key = "ABCDE-FGHIJ-KLMNO-PQRST-UVWXY"
               computer_name = "WINBUILD"
               first_logon = 'cmd /c echo a<b & exit'
               [network]
               address = "10.0.2.15/8"
               gateway = "10.0.2.2"
               dns = ["10.0.2.3", "10.0.2.4"]
               [cygwin]
               installer = 'E:\setup.exe'
               packages = ["openssh"]"#,
        );
        let doc = roxmltree::Document::parse(&xml).unwrap();
        assert!(doc.root_element().has_tag_name((NS, "unattend")));
        assert_eq!(texts(&doc, "Value"), ["p&<w>'d", "p&<w>'d"]);
        assert_eq!(texts(&doc, "Key"), ["ABCDE-FGHIJ-KLMNO-PQRST-UVWXY"]);
        assert_eq!(texts(&doc, "ComputerName"), ["WINBUILD"]);
        assert_eq!(texts(&doc, "NextHopAddress"), ["10.0.2.2"]);
        assert_eq!(
            texts(&doc, "IpAddress"),
            ["10.0.2.15/8", "10.0.2.3", "10.0.2.4"]
        );
        let commands = texts(&doc, "CommandLine");
        assert_eq!(commands.len(), 2);
        assert!(commands[0].starts_with(r"E:\setup.exe --quiet-mode"));
        assert_eq!(commands[1], "cmd /c echo a<b & exit");
        assert_eq!(texts(&doc, "Order")[..2], ["1", "1"]); // partitions
        let passes: Vec<_> = doc
            .descendants()
            .filter(|n| n.has_tag_name((NS, "settings")))
            .map(|n| n.attribute("pass").unwrap())
            .collect();
        assert_eq!(passes, ["windowsPE", "specialize", "oobeSystem"]);
        let wcm_actions = doc
            .descendants()
            .filter(|n| n.attribute((WCM, "action")) == Some("add"))
            .count();
        assert!(wcm_actions >= 8, "{wcm_actions}");
    }

    #[test]
    fn default_spec_has_static_address_and_no_optional_parts() {
        let xml = parsed("admin_password = 'x'\narch = 'x86'");
        let doc = roxmltree::Document::parse(&xml).unwrap();
        assert_eq!(texts(&doc, "IpAddress"), ["192.168.0.1/24"]);
        assert_eq!(texts(&doc, "DhcpEnabled"), ["false"]);
        assert!(texts(&doc, "Key").is_empty());
        assert!(texts(&doc, "FirstLogonCommands").is_empty());
        assert!(doc
            .descendants()
            .filter(|n| n.has_tag_name((NS, "component")))
            .all(|n| n.attribute("processorArchitecture") == Some("x86")));
    }
}
