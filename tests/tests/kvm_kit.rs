//! The test guest kit booted by Debian's QEMU with `-enable-kvm` (a
//! known-good reference VMM, used only by tests): the ready marker, a
//! `run=` command's output and exit status, and an SSH login in
//! `mode=sshd`. The kit must be built first (`vmm guest build`); it is
//! found in its default folder.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use vmm::guest::{self, Kit};

/// Boot budget. The emulated KVM test host is much slower than hardware
/// (and on a loaded 2-core machine a boot to the marker took 180 s wall).
const BOOT_TIMEOUT: Duration = Duration::from_secs(600);
/// Budget for each later step of a test (a command, power-off).
const STEP_TIMEOUT: Duration = Duration::from_secs(180);
/// Budget for dropbear to answer a login once the guest is ready.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(300);

fn kit() -> Kit {
    let dir = guest::default_dir().expect("kit folder");
    let kit = Kit::in_dir(&dir);
    assert!(
        kit.exists(),
        "no guest kit in {}: run `vmm guest build` first",
        dir.display()
    );
    kit
}

/// A QEMU process whose serial console lines arrive on a channel.
struct Qemu {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Qemu {
    fn start(kit: &Kit, append: &str, extra: &[&str]) -> Qemu {
        let mut child = Command::new("qemu-system-x86_64")
            .args(["-enable-kvm", "-cpu", "host", "-M", "pc", "-m", "256M"])
            .args(["-nodefaults", "-no-user-config", "-display", "none"])
            .args(["-serial", "stdio", "-no-reboot"])
            .arg("-kernel")
            .arg(&kit.kernel)
            .arg("-initrd")
            .arg(&kit.initrd)
            .arg("-append")
            .arg(format!("console=ttyS0 panic=-1 quiet {append}"))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start qemu-system-x86_64 (apt-get install qemu-system-x86)");
        let stdout = child.stdout.take().expect("qemu stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line.trim_end_matches('\r').to_string()).is_err() {
                    break;
                }
            }
        });
        Qemu {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a console line equal to `wanted`; panics with the console
    /// so far when it does not come in time.
    fn expect_line(&mut self, wanted: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.trim() == wanted;
                    self.seen.push(line);
                    if found {
                        return;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "no {wanted:?} within {timeout:?}; console: {:#?}",
                        self.seen
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("QEMU ended before {wanted:?}; console: {:#?}", self.seen)
                }
            }
        }
    }

    /// Waits for QEMU to exit by itself.
    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("wait for qemu") {
                return status;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "QEMU still running after {timeout:?}; console: {:#?}",
            self.seen
        )
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod qemu {
    use super::*;

    #[test]
    fn kvm_kit_boots_to_the_ready_marker_in_qemu() {
        if !tests::require_kvm() {
            return;
        }
        let kit = kit();
        let started = Instant::now();
        let mut qemu = Qemu::start(&kit, "", &[]);
        qemu.expect_line(guest::READY_MARKER, BOOT_TIMEOUT);
        println!("ready marker after {:?} (wall)", started.elapsed());
        let noisy: Vec<&String> = qemu
            .seen
            .iter()
            .filter(|l| l.contains("vmm-guest: cannot"))
            .collect();
        assert!(noisy.is_empty(), "module failures: {noisy:?}");
    }

    #[test]
    fn kvm_kit_run_prints_output_and_exit_status_then_powers_off() {
        if !tests::require_kvm() {
            return;
        }
        let kit = kit();
        let mut qemu = Qemu::start(&kit, "run=\"echo hi; exit 3\"", &[]);
        qemu.expect_line(guest::READY_MARKER, BOOT_TIMEOUT);
        qemu.expect_line("hi", STEP_TIMEOUT);
        qemu.expect_line(&format!("{}3", guest::EXIT_MARKER_PREFIX), STEP_TIMEOUT);
        let status = qemu.wait_exit(STEP_TIMEOUT);
        assert!(status.success(), "QEMU exit after poweroff: {status}");
    }

    #[test]
    fn kvm_kit_sshd_answers_a_login_with_the_kit_key() {
        if !tests::require_kvm() {
            return;
        }
        let kit = kit();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free loopback port")
            .port();
        // ssh insists on a private key readable by its owner only.
        let key = std::env::temp_dir().join(format!("vmm-kit-key-{}", std::process::id()));
        std::fs::copy(&kit.key, &key).expect("copy key");
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod key");
        let netdev = format!(
            "user,id=n0,net=192.168.0.0/24,host=192.168.0.2,\
             hostfwd=tcp:127.0.0.1:{port}-192.168.0.1:22"
        );
        let mut qemu = Qemu::start(
            &kit,
            "mode=sshd",
            &["-netdev", &netdev, "-device", "virtio-net-pci,netdev=n0"],
        );
        qemu.expect_line(guest::READY_MARKER, BOOT_TIMEOUT);
        let deadline = Instant::now() + LOGIN_TIMEOUT;
        let mut last = String::new();
        let output = loop {
            let out = Command::new("ssh")
                .args([
                    "-F",
                    "/dev/null",
                    "-o",
                    "BatchMode=yes",
                    "-o",
                    "IdentitiesOnly=yes",
                ])
                .args([
                    "-o",
                    "StrictHostKeyChecking=no",
                    "-o",
                    "UserKnownHostsFile=/dev/null",
                ])
                .args(["-o", "ConnectTimeout=20", "-o", "LogLevel=ERROR"])
                .arg("-i")
                .arg(&key)
                .args([
                    "-p",
                    &port.to_string(),
                    "root@127.0.0.1",
                    "echo ssh-ok; id -u",
                ])
                .stdin(Stdio::null())
                .output()
                .expect("run ssh (apt-get install openssh-client)");
            if out.status.success() {
                break String::from_utf8_lossy(&out.stdout).into_owned();
            }
            last = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(
                Instant::now() < deadline,
                "no SSH login within {LOGIN_TIMEOUT:?}: {last}"
            );
            std::thread::sleep(Duration::from_secs(1));
        };
        let _ = std::fs::remove_file(&key);
        assert_eq!(output, "ssh-ok\n0\n", "ssh stderr before success: {last}");
    }
}
