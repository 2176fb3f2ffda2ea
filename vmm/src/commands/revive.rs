//! `vmm revive DIR`: resume a snapshot in this process and stream its
//! console; exits as `vmm boot` does when the guest stops.
//!
//! Every check (state checksum and version, CPU, memory file length,
//! disks unchanged, device state) happens before a vCPU runs; a refused
//! snapshot exits 1 with the reason on one line. Disks are attached
//! through throwaway overlays (the images are never written). A snapshot
//! with a NIC gets a fresh switch and host endpoint (192.168.0.2, same
//! MAC), with `--share` folders served by smbd-lite and `--pcap` capturing.
//! `--stats` prints on stderr the time from process start to the vCPUs
//! running.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;

use vmm::console::{self, Console};
use vmm::devices::legacy::SystemControl;
use vmm::kvm;
use vmm::snapshot;
use vmm::vcpu::{self, StopSignal};

use super::boot::exit_code;

/// Arguments of `vmm revive`.
#[derive(Debug, Args)]
pub struct ReviveArgs {
    /// Snapshot directory (from `vmm boot --snapshot-to`)
    dir: PathBuf,
    /// KVM device
    #[arg(long, value_name = "PATH", default_value = kvm::DEFAULT_DEVICE)]
    kvm_device: PathBuf,
    /// Write the guest console to this file instead of stdout
    #[arg(long, value_name = "PATH")]
    console: Option<PathBuf>,
    /// Print the revive time (process start to vCPUs running) on stderr
    #[arg(long)]
    stats: bool,
    /// Capture every frame on the fresh switch to this pcap file (the
    /// snapshot must have a NIC)
    #[arg(long, value_name = "FILE")]
    pcap: Option<PathBuf>,
    /// Serve a folder with SMB on 192.168.0.2:445 (repeatable; the
    /// snapshot must have a NIC)
    #[arg(long = "share", value_name = "NAME=PATH[,ro]")]
    shares: Vec<vmm::net::ShareSpec>,
}

/// The fresh network of a snapshot with a NIC, with its shares served.
fn start_network(args: &ReviveArgs, nic: bool) -> anyhow::Result<Option<vmm::net::Network>> {
    if !nic {
        if args.pcap.is_some() || !args.shares.is_empty() {
            anyhow::bail!("The snapshot has no NIC: --pcap and --share need one");
        }
        return Ok(None);
    }
    let net = vmm::net::Network::start(args.pcap.as_deref())?;
    if !args.shares.is_empty() {
        net.serve_smb(&args.shares)?;
    }
    Ok(Some(net))
}

/// Process start, as early as `main` can note it.
fn process_age() -> Option<Duration> {
    // Field 22 of /proc/self/stat: start time in clock ticks after boot.
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after = stat.rsplit_once(')')?.1;
    let ticks: u64 = after.split_whitespace().nth(19)?.parse().ok()?;
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let started = ticks as f64 / hz.max(1) as f64;
    Some(Duration::from_secs_f64((uptime - started).max(0.0)))
}

/// Runs `vmm revive`.
pub fn run(args: ReviveArgs) -> anyhow::Result<ExitCode> {
    let t0 = Instant::now();
    let state = snapshot::load_state(&args.dir)
        .with_context(|| format!("Cannot revive {}", args.dir.display()))?;
    let kvm = vmm::machine::open_kvm(&args.kvm_device)?;
    let stop = Arc::new(StopSignal::new());
    let out: Box<dyn Write + Send> = match &args.console {
        Some(path) => Box::new(
            std::fs::File::create(path)
                .with_context(|| format!("Cannot create console file {}", path.display()))?,
        ),
        None => Box::new(std::io::stdout()),
    };
    let console = Console::spawn(out, console::DEFAULT_CAPACITY).context("Cannot start console")?;
    let network = start_network(&args, state.machine.nic)?;
    let control: Arc<dyn SystemControl> = stop.clone();
    let mut revived = snapshot::revive(
        &kvm,
        &args.dir,
        state,
        Box::new(console.writer()),
        control,
        network.as_ref(),
    )
    .with_context(|| format!("Cannot revive {}", args.dir.display()))?;
    vcpu::install_kick_handler()?;
    snapshot::mark_clock_paused(&mut revived.vcpus);
    let vm = revived.vm.clone();
    let threads = vmm::machine::start_threads(revived.vcpus, &vm, &stop)?;
    let running = t0.elapsed();
    if args.stats {
        let since_exec = process_age().map_or(String::new(), |a| {
            format!(", process age {} ms", a.as_millis())
        });
        eprintln!(
            "vmm: revive: vCPUs running {} us after main{since_exec}",
            running.as_micros()
        );
    }
    let reason = stop.wait();
    vcpu::stop_all(threads);
    revived.pci.stop();
    if let Some(net) = network {
        net.finish()?;
    }
    let dropped = console.finish(Duration::from_secs(2));
    if dropped > 0 {
        tracing::warn!(
            dropped,
            "console bytes dropped (host not reading fast enough)"
        );
    }
    Ok(exit_code(&reason))
}
