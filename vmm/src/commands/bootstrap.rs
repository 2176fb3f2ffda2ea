//! `vmm bootstrap`: install a guest once and freeze it into a base.
//!
//! Steps: read the spec (none: the Linux test guest of the kit), create
//! the disks and the floppy, boot the guest on a fresh switch whose host
//! endpoint serves two empty shares (xchg and store), wait for its SSH
//! port (with a progress line; a guest that stops first is reported), run
//! the post-install commands over SSH (by default: mount the shares), log
//! out, and snapshot the guest. Everything is written into `BASE.partial`
//! next to BASE and renamed at the end: an interrupted or failed bootstrap
//! leaves no BASE.
//!
//! Exit status: 0 the base is ready; 1 anything failed (one line says
//! what, followed by the guest console's last lines when the guest is to
//! blame); 2 bad command-line syntax.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;

use vmm::base::{self, BaseInfo};
use vmm::console::Tail;
use vmm::controller::{link, ssh};
use vmm::devices::virtio::blk::{DiskMode, DiskSpec};
use vmm::machine::{self, BootConfig, Machine};
use vmm::net::{Network, ShareSpec};
use vmm::spec::{DiskSource, Resolved, Spec};
use vmm::{kvm, snapshot};

use super::boot::DEFAULT_CMDLINE;

/// Console bytes kept to show when the guest fails.
const TAIL_BYTES: usize = 16 << 10;
/// Console lines shown when the guest fails.
const TAIL_LINES: usize = 25;
/// Longest a post-install command may run.
const POST_INSTALL_TIMEOUT: Duration = Duration::from_secs(3600);

/// Arguments of `vmm bootstrap`.
#[derive(Debug, Args)]
pub struct BootstrapArgs {
    /// Spec file (TOML; see the README) [default: the Linux test guest of
    /// `vmm guest build`, with sshd and both shares mounted]
    #[arg(long, value_name = "SPEC.toml")]
    spec: Option<PathBuf>,
    /// Base folder to create [default: $XDG_DATA_HOME/vmm/base, else
    /// ~/.local/share/vmm/base]
    #[arg(long, value_name = "BASE")]
    out: Option<PathBuf>,
    /// Capture every frame on the switch to this pcap file
    #[arg(long, value_name = "FILE")]
    pcap: Option<PathBuf>,
    /// KVM device
    #[arg(long, value_name = "PATH", default_value = kvm::DEFAULT_DEVICE)]
    kvm_device: PathBuf,
}

/// Removes a folder on drop unless disarmed.
struct Cleanup(Option<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!("cannot remove {}: {e}", dir.display());
            }
        }
    }
}

/// Runs `vmm bootstrap`.
pub fn run(args: BootstrapArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let base = match &args.out {
        Some(p) => p.clone(),
        None => base::default_dir()?,
    };
    if base.exists() {
        bail!(
            "{} already exists; remove it or pass another --out",
            base.display()
        );
    }
    let (spec, origin, spec_dir) = match &args.spec {
        Some(path) => (
            Spec::read(path)?,
            path.clone(),
            path.parent().map_or_else(PathBuf::new, Path::to_path_buf),
        ),
        None => (
            Spec::default(),
            PathBuf::from("(default spec)"),
            std::env::current_dir().context("Cannot read the current folder")?,
        ),
    };
    let kit_dir = vmm::guest::default_dir()?;
    let r = spec.resolve(&origin, &spec_dir, &kit_dir, DEFAULT_CMDLINE)?;
    for (what, path) in [
        ("kernel", &r.kernel),
        ("initrd", &r.initrd),
        ("SSH key", &r.key),
    ] {
        if !path.is_file() {
            if path.starts_with(&kit_dir) {
                bail!(
                    "No guest kit in {}: run `vmm guest build` first",
                    kit_dir.display()
                );
            }
            bail!("The spec's {what} {} is not a file", path.display());
        }
    }
    let key_text = base::read_small(&r.key)?;
    ssh::parse_key(&key_text).with_context(|| format!("SSH key {}", r.key.display()))?;
    let kvm = machine::open_kvm(&args.kvm_device)?;

    let parent = base
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    std::fs::create_dir_all(&parent)
        .with_context(|| format!("Cannot create {}", parent.display()))?;
    let name = base
        .file_name()
        .with_context(|| format!("{} has no folder name", base.display()))?;
    let partial = parent.join(format!(
        "{}.partial-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    std::fs::create_dir(&partial)
        .with_context(|| format!("Cannot create {}", partial.display()))?;
    let mut cleanup = Cleanup(Some(partial.clone()));
    let shares = tempfile::Builder::new()
        .prefix("vmm-bootstrap-shares-")
        .tempdir()
        .context("Cannot create the temporary share folders")?;

    let info = prepare(&r, &partial, &key_text)?;
    if let Some(path) = &args.spec {
        std::fs::copy(path, partial.join(base::SPEC_FILE))
            .with_context(|| format!("Cannot copy {}", path.display()))?;
    }
    let network = Network::start(args.pcap.as_deref())?;
    let mut share_specs = Vec::new();
    for (name, ro) in [("xchg", false), ("store", true)] {
        let path = shares.path().join(name);
        std::fs::create_dir(&path).with_context(|| format!("Cannot create {}", path.display()))?;
        share_specs.push(ShareSpec {
            name: name.into(),
            path,
            read_only: ro,
        });
    }
    network.serve_smb(&share_specs)?;
    let log_path = partial.join(base::LOG_FILE);
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("Cannot create {}", log_path.display()))?;
    let tail = Tail::new(TAIL_BYTES, Some(log));

    let disks: Vec<DiskSpec> = info
        .disks
        .iter()
        .map(|n| DiskSpec {
            path: partial.join(n),
            mode: if n == base::FLOPPY_FILE {
                DiskMode::ReadOnly
            } else {
                DiskMode::ReadWrite
            },
        })
        .collect();
    let config = BootConfig {
        kernel: r.kernel.clone(),
        initrd: r.initrd.clone(),
        cmdline: r.cmdline.clone(),
        mem_size: r.mem_size,
        cpus: r.spec.guest.cpus,
        disks,
    };
    eprintln!(
        "vmm: bootstrap: booting {} ({} MiB, {} vCPU{}) into {}",
        r.kernel.display(),
        r.mem_size >> 20,
        r.spec.guest.cpus,
        if r.spec.guest.cpus == 1 { "" } else { "s" },
        base.display()
    );
    let machine = Machine::boot(kvm, &config, Some(network), Box::new(tail.clone()))?;
    if let Err(e) = install(&machine, &r, &key_text) {
        let stopped = machine.stopped().is_some();
        // Shutting down drains the console, so the tail is complete.
        machine.shut_down();
        if stopped {
            tail.show(TAIL_LINES);
        }
        return Err(e);
    }

    let disk_refs = info
        .disks
        .iter()
        .map(|n| snapshot::DiskRef::of(&partial.join(n)))
        .collect::<Result<Vec<_>, _>>()?;
    let report = machine
        .snapshot(&partial.join(base::SNAPSHOT_DIR), disk_refs)
        .context("Cannot snapshot the guest")?;
    info.write(&partial)
        .with_context(|| format!("Cannot write {}", partial.join(base::INFO_FILE).display()))?;
    sync_dir(&partial);
    std::fs::rename(&partial, &base)
        .with_context(|| format!("Cannot rename {} to {}", partial.display(), base.display()))?;
    cleanup.0 = None;
    sync_dir(&parent);
    eprintln!(
        "vmm: bootstrap: {} ready in {:.1} s (snapshot {} ms, {} MiB of guest memory in use)",
        base.display(),
        started.elapsed().as_secs_f64(),
        report.elapsed.as_millis(),
        report.memory.data_bytes >> 20
    );
    Ok(ExitCode::SUCCESS)
}

/// Creates the disks, the floppy and the key in `dir`; returns the base
/// description.
fn prepare(r: &Resolved, dir: &Path, key_text: &str) -> anyhow::Result<BaseInfo> {
    let mut disks = Vec::new();
    for (i, source) in r.disks.iter().enumerate() {
        let name = format!("disk{i}.img");
        let path = dir.join(&name);
        match source {
            DiskSource::Empty(bytes) => {
                let f = std::fs::File::create(&path)
                    .with_context(|| format!("Cannot create {}", path.display()))?;
                f.set_len(*bytes)
                    .with_context(|| format!("Cannot size {}", path.display()))?;
            }
            DiskSource::Copy(image) => {
                eprintln!("vmm: bootstrap: copying {}", image.display());
                std::fs::copy(image, &path).with_context(|| {
                    format!("Cannot copy disk image {} into the base", image.display())
                })?;
            }
        }
        disks.push(name);
    }
    if let Some(f) = &r.floppy {
        let image = super::floppy::build_image(
            f.size,
            f.label.as_deref(),
            &f.add,
            f.unattend.as_deref(),
            None,
            std::env::var("SOURCE_DATE_EPOCH").ok().as_deref(),
        )
        .context("Cannot build the floppy")?;
        floppy::write_atomically(&dir.join(base::FLOPPY_FILE), &image)?;
        disks.push(base::FLOPPY_FILE.to_owned());
    }
    write_private(&dir.join(base::KEY_FILE), key_text)?;
    Ok(BaseInfo {
        format: base::BASE_FORMAT,
        ssh_user: r.spec.ssh.user.clone(),
        ssh_port: r.spec.ssh.port,
        shares: r.spec.shares.clone(),
        disks,
    })
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("Cannot create {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("Cannot write {}", path.display()))
}

/// Waits for SSH, then runs the post-install commands and logs out.
fn install(machine: &Machine, r: &Resolved, key_text: &str) -> anyhow::Result<()> {
    let net = machine
        .network()
        .context("The bootstrap guest has no network")?;
    let key = ssh::parse_key(key_text)?;
    let stopped = || {
        machine
            .stopped()
            .map(|reason| format!("{} before bootstrap finished", machine::describe(&reason)))
    };
    let port = r.spec.ssh.port;
    let mut progress = Progress::new(format!("the guest's SSH port (192.168.0.1:{port})"));
    let session = net
        .runtime()
        .block_on(link::login(
            net.endpoint(),
            port,
            &r.spec.ssh.user,
            key,
            r.ssh_wait,
            &stopped,
            &mut |t| progress.tick(t),
        ))
        .map_err(|e| match e {
            link::LinkError::TimedOut(t) => anyhow::anyhow!(
                "The guest did not open its SSH port {port} within {} (ssh.wait in the spec)",
                humantime::format_duration(t)
            ),
            other => anyhow::Error::new(other).context("Cannot log into the guest over SSH"),
        })?;
    progress.done();
    for (i, command) in r.post_install.iter().enumerate() {
        eprintln!("vmm: bootstrap: post-install {}: {command}", i + 1);
        let mut out = tokio::io::stderr();
        let mut err = tokio::io::stderr();
        let exit = net
            .runtime()
            .block_on(link::run(
                &session,
                command,
                &mut out,
                &mut err,
                POST_INSTALL_TIMEOUT,
                &stopped,
            ))
            .with_context(|| format!("Post-install command {} failed", i + 1))?;
        if exit != ssh::RemoteExit::Code(0) {
            bail!(
                "Post-install command {} exited with status {}: {command}",
                i + 1,
                exit.shell_status()
            );
        }
    }
    net.runtime().block_on(async {
        let mut sink = tokio::io::sink();
        let _ = link::run(
            &session,
            "sync",
            &mut tokio::io::sink(),
            &mut sink,
            POST_INSTALL_TIMEOUT,
            &stopped,
        )
        .await;
        session.close().await;
    });
    if let Some(why) = stopped() {
        bail!("{why}");
    }
    Ok(())
}

/// The waiting line: a spinner on a terminal, a line every 30 s elsewhere.
struct Progress {
    what: String,
    bar: Option<indicatif::ProgressBar>,
    next_line: Duration,
}

impl Progress {
    fn new(what: String) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        if bar.is_none() {
            eprintln!("vmm: bootstrap: waiting for {what}");
        }
        Self {
            what,
            bar,
            next_line: Duration::from_secs(30),
        }
    }

    fn tick(&mut self, elapsed: Duration) {
        let secs = elapsed.as_secs();
        match &self.bar {
            Some(bar) => bar.set_message(format!("waiting for {} ({secs} s)", self.what)),
            None if elapsed >= self.next_line => {
                eprintln!("vmm: bootstrap: still waiting for {} ({secs} s)", self.what);
                self.next_line += Duration::from_secs(30);
            }
            None => {}
        }
    }

    fn done(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        eprintln!("vmm: bootstrap: {} is open", self.what);
    }
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}
