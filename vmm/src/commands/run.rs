//! `vmm run [OPTIONS] -- CMD...`: revive a base, run one command in it over
//! SSH with xchg and the store shared, and exit with the command's status.
//!
//! The base is never modified: memory is mapped copy-on-write, disk writes
//! go to throwaway overlays, and each run has its own switch and shares,
//! so runs from one base can go on at once. The command's arguments are
//! quoted for the guest's shell one by one (`vmm run -- sh -c 'a; b'` runs
//! the script `a; b`). Its exit status is also written to `in-vm-exit` in
//! xchg, as the old pipeline did.
//!
//! Exit status: the command's (a signal N gives 128+N); 1 setup failure
//! (one line says what); 2 bad command-line syntax; 124 the command ran
//! past `--timeout`; 125 the guest stopped or the SSH connection broke
//! before the command ended (followed by the console's last lines).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;

use vmm::base::{self, BaseInfo};
use vmm::console::Tail;
use vmm::controller::{link, ssh};
use vmm::machine::{self, Machine};
use vmm::net::{Network, ShareSpec};
use vmm::spec::shell_quote;
use vmm::{kvm, snapshot};

/// Exit status: the command ran past `--timeout`.
pub const EXIT_TIMEOUT: u8 = 124;
/// Exit status: the guest or the connection to it failed mid-command.
pub const EXIT_GUEST_FAILED: u8 = 125;
/// The file in xchg that receives the command's status.
pub const EXIT_FILE: &str = "in-vm-exit";
/// Longest wait for the revived guest's SSH login (a correctness bound:
/// the key exchange is slow in an emulated KVM host with several guests).
const LOGIN_TIMEOUT: Duration = Duration::from_secs(600);
/// "No timeout": a year.
const NO_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);
/// Console bytes kept to show when the guest fails.
const TAIL_BYTES: usize = 16 << 10;

/// Arguments of `vmm run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Base to revive (from `vmm bootstrap`) [default:
    /// $XDG_DATA_HOME/vmm/base, else ~/.local/share/vmm/base]
    #[arg(long, value_name = "BASE")]
    base: Option<PathBuf>,
    /// Folder shared read-write as xchg (created if missing) [default: a
    /// fresh temporary folder, kept, its path printed on stderr]
    #[arg(long, value_name = "DIR")]
    xchg: Option<PathBuf>,
    /// Folder shared read-only as the store [default: /nix/store when it
    /// exists, else an empty folder]
    #[arg(long, value_name = "DIR")]
    store: Option<PathBuf>,
    /// Stop the guest and exit 124 if the command runs longer, e.g. 90s or
    /// 10m [default: no limit]
    #[arg(long, value_name = "DURATION", value_parser = vmm::spec::parse_duration)]
    timeout: Option<Duration>,
    /// Write the guest console to this file
    #[arg(long, value_name = "PATH")]
    console: Option<PathBuf>,
    /// Capture every frame on the switch to this pcap file
    #[arg(long, value_name = "FILE")]
    pcap: Option<PathBuf>,
    /// Print timings (revive, login, command) on stderr
    #[arg(long)]
    stats: bool,
    /// KVM device
    #[arg(long, value_name = "PATH", default_value = kvm::DEFAULT_DEVICE)]
    kvm_device: PathBuf,
    /// The command and its arguments, run in the guest
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

/// Runs `vmm run`.
pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let base = match &args.base {
        Some(p) => p.clone(),
        None => base::default_dir()?,
    };
    let info = BaseInfo::read(&base)?;
    let key_text = base::read_small(&base.join(base::KEY_FILE))?;
    let key = ssh::parse_key(&key_text).context("The base's SSH key")?;
    let snapshot_dir = base.join(base::SNAPSHOT_DIR);
    let mut state = snapshot::load_state(&snapshot_dir)
        .with_context(|| format!("Cannot revive {}", base.display()))?;
    if state.machine.disks.len() != info.disks.len() {
        bail!(
            "{} is inconsistent: the snapshot has {} disks, base.toml lists {}; bootstrap again",
            base.display(),
            state.machine.disks.len(),
            info.disks.len()
        );
    }
    for (disk, name) in state.machine.disks.iter_mut().zip(&info.disks) {
        let path = base.join(name);
        disk.path = std::fs::canonicalize(&path)
            .with_context(|| format!("Disk {} of the base", path.display()))?;
    }

    let xchg = match &args.xchg {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("Cannot create xchg folder {}", dir.display()))?;
            dir.clone()
        }
        None => {
            let dir = tempfile::Builder::new()
                .prefix("vmm-xchg-")
                .tempdir()
                .context("Cannot create a temporary xchg folder")?
                .keep();
            eprintln!("vmm: xchg is {}", dir.display());
            dir
        }
    };
    let mut empty_store = None;
    let store = match &args.store {
        Some(dir) if dir.is_dir() => dir.clone(),
        Some(dir) => bail!(
            "--store {} is not a folder; create it or fix the path",
            dir.display()
        ),
        None if Path::new("/nix/store").is_dir() => PathBuf::from("/nix/store"),
        None => {
            let dir = tempfile::Builder::new()
                .prefix("vmm-store-")
                .tempdir()
                .context("Cannot create an empty store folder")?;
            let path = dir.path().to_owned();
            empty_store = Some(dir);
            path
        }
    };
    let network = Network::start(args.pcap.as_deref())?;
    network.serve_smb(&[
        ShareSpec {
            name: "xchg".into(),
            path: xchg.clone(),
            read_only: false,
        },
        ShareSpec {
            name: "store".into(),
            path: store,
            read_only: true,
        },
    ])?;
    let console_file = match &args.console {
        Some(path) => Some(
            std::fs::File::create(path)
                .with_context(|| format!("Cannot create console file {}", path.display()))?,
        ),
        None => None,
    };
    let tail = Tail::new(TAIL_BYTES, console_file);
    let kvm = machine::open_kvm(&args.kvm_device)?;
    let machine = Machine::revive(
        kvm,
        &snapshot_dir,
        state,
        Some(network),
        Box::new(tail.clone()),
    )?;
    let revived = started.elapsed();
    let command = args
        .command
        .iter()
        .map(|w| shell_quote(w))
        .collect::<Vec<_>>()
        .join(" ");
    let outcome = run_command(&machine, &info, key, &command, args.timeout);
    let stopped = machine.stopped();
    machine.shut_down();
    drop(empty_store);
    let code = match outcome {
        Ok((exit, login, ran)) => {
            let status = exit.shell_status();
            let exit_path = xchg.join(EXIT_FILE);
            std::fs::write(&exit_path, format!("{status}\n"))
                .with_context(|| format!("Cannot write {}", exit_path.display()))?;
            if args.stats {
                eprintln!(
                    "vmm: run: revived in {} ms, logged in after {} ms, command took {} ms, \
                     {} ms in all",
                    revived.as_millis(),
                    login.as_millis(),
                    ran.as_millis(),
                    started.elapsed().as_millis()
                );
            }
            status
        }
        Err(Failure::Setup(e)) => return Err(e),
        Err(Failure::TimedOut(t)) => {
            eprintln!(
                "vmm: the command did not finish within {} (--timeout); the guest was stopped",
                humantime::format_duration(t)
            );
            EXIT_TIMEOUT
        }
        Err(Failure::Guest(e)) => {
            if stopped.is_some() {
                tail.show(25);
            }
            eprintln!("vmm: {e:#}");
            EXIT_GUEST_FAILED
        }
    };
    let _ = std::io::stdout().flush();
    Ok(ExitCode::from(code))
}

enum Failure {
    /// Nothing ran: a setup problem.
    Setup(anyhow::Error),
    /// The command ran past the timeout.
    TimedOut(Duration),
    /// The guest or the link failed.
    Guest(anyhow::Error),
}

/// Logs in and runs `command`; returns how it ended, the login time and
/// the command's run time.
fn run_command(
    machine: &Machine,
    info: &BaseInfo,
    key: russh::keys::PrivateKey,
    command: &str,
    timeout: Option<Duration>,
) -> Result<(ssh::RemoteExit, Duration, Duration), Failure> {
    let t0 = Instant::now();
    let net = machine
        .network()
        .ok_or_else(|| Failure::Setup(anyhow::anyhow!("The revived guest has no network")))?;
    let stopped = || machine.stopped().map(|reason| machine::describe(&reason));
    let session = net
        .runtime()
        .block_on(link::login(
            net.endpoint(),
            info.ssh_port,
            &info.ssh_user,
            key,
            LOGIN_TIMEOUT,
            &stopped,
            &mut |_| {},
        ))
        .map_err(|e| {
            Failure::Guest(anyhow::Error::new(e).context("Cannot log into the revived guest"))
        })?;
    let login = t0.elapsed();
    let t1 = Instant::now();
    let limit = timeout.unwrap_or(NO_TIMEOUT);
    let exit = net.runtime().block_on(async {
        let mut out = tokio::io::stdout();
        let mut err = tokio::io::stderr();
        let r = link::run(&session, command, &mut out, &mut err, limit, &stopped).await;
        if r.is_ok() {
            session.close().await;
        }
        r
    });
    match exit {
        Ok(exit) => Ok((exit, login, t1.elapsed())),
        Err(link::LinkError::TimedOut(t)) => Err(Failure::TimedOut(t)),
        Err(e) => Err(Failure::Guest(
            anyhow::Error::new(e).context("The command did not finish"),
        )),
    }
}
