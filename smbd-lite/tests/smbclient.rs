//! Samba's smbclient against the server on loopback: every basic command
//! on both share kinds, with the right errors on the read-only one.
//! Prints `skipped: ...` without smbclient (fails under CI=true).

mod common;

#[cfg(test)]
mod tests {
    use crate::common::*;
    use smbd_lite::User;

    const DIALECTS: [&str; 5] = ["SMB2_02", "SMB2_10", "SMB3_00", "SMB3_02", "SMB3_11"];

    #[test]
    fn smbclient_ls_get_put_mkdir_rename_rm_work_on_the_read_write_share() {
        let Some(tool) = require_tool("smbclient") else {
            return;
        };
        let shares = Shares::new();
        let port = spawn_server(shares.config());
        let local = shares.tmp.path().join("local.txt");
        std::fs::write(&local, "payload 1234\n").unwrap();
        for (i, m) in DIALECTS.iter().enumerate() {
            let got = shares.tmp.path().join(format!("got-{i}.txt"));
            let cmds = format!(
                "put {} a.txt; mkdir d{i}; rename a.txt d{i}\\b.txt; ls d{i}\\*; get d{i}\\b.txt {}; rm d{i}\\b.txt; rmdir d{i}; ls",
                local.display(),
                got.display()
            );
            let (ok, out) = smbclient(&tool, port, "xchg", &["-U", "guest%", "-m", m], &cmds);
            assert!(ok, "{m}: {out}");
            assert!(out.contains("b.txt"), "{m}: {out}");
            assert_eq!(std::fs::read(&got).unwrap(), b"payload 1234\n", "{m}");
            assert_eq!(
                std::fs::read_dir(&shares.rw).unwrap().count(),
                0,
                "{m}: share not empty"
            );
        }
    }

    #[test]
    fn smbclient_reads_the_read_only_share_and_gets_access_denied_on_changes() {
        let Some(tool) = require_tool("smbclient") else {
            return;
        };
        let shares = Shares::new();
        let port = spawn_server(shares.config());
        let got = shares.tmp.path().join("got.txt");
        let (ok, out) = smbclient(
            &tool,
            port,
            "store",
            &["-N"],
            &format!("ls; get hello.txt {}", got.display()),
        );
        assert!(ok, "{out}");
        assert!(out.contains("hello.txt"), "{out}");
        assert_eq!(std::fs::read(&got).unwrap(), b"hello from the store\n");
        let local = shares.tmp.path().join("local.txt");
        std::fs::write(&local, "x").unwrap();
        for cmd in [
            format!("put {} new.txt", local.display()),
            "mkdir d".to_string(),
            "rm hello.txt".to_string(),
            "rename hello.txt moved.txt".to_string(),
        ] {
            let (_, out) = smbclient(&tool, port, "store", &["-N"], &cmd);
            assert!(out.contains("NT_STATUS_ACCESS_DENIED"), "{cmd}: {out}");
        }
        let names: Vec<_> = std::fs::read_dir(&shares.ro)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("hello.txt")]);
    }

    #[test]
    fn smbclient_user_with_password_gets_a_signed_session_and_wrong_password_fails() {
        let Some(tool) = require_tool("smbclient") else {
            return;
        };
        let shares = Shares::new();
        let mut config = shares.config();
        config.user = Some(User {
            name: "alice".into(),
            password: "s3cret".into(),
        });
        let port = spawn_server(config);
        for m in DIALECTS {
            let (ok, out) = smbclient(
                &tool,
                port,
                "store",
                &["-U", "alice%s3cret", "-m", m, "--client-protection=sign"],
                "ls",
            );
            assert!(ok && out.contains("hello.txt"), "{m}: {out}");
        }
        let (ok, out) = smbclient(&tool, port, "store", &["-U", "alice%wrong"], "ls");
        assert!(!ok && out.contains("NT_STATUS_LOGON_FAILURE"), "{out}");
    }

    #[test]
    fn smbclient_unknown_share_is_bad_network_name() {
        let Some(tool) = require_tool("smbclient") else {
            return;
        };
        let shares = Shares::new();
        let port = spawn_server(shares.config());
        let (ok, out) = smbclient(&tool, port, "nope", &["-N"], "ls");
        assert!(!ok && out.contains("NT_STATUS_BAD_NETWORK_NAME"), "{out}");
    }
}
