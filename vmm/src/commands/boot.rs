//! `vmm boot`: boot a Linux guest and stream its console.
//!
//! Without `--kernel`/`--initrd` the guest kit in its default folder
//! (`vmm guest build`) is used. The command line is [`DEFAULT_CMDLINE`]
//! unless `--cmdline` replaces it; `--append` adds to it.
//!
//! Exit status: 0 the guest powered off; 3 it reset (reboot, or a panic
//! with `panic=-1`); 4 a vCPU triple-faulted; 5 internal error (KVM or
//! VMM failure while running); 1 bad input or setup failure (one line on
//! stderr); 2 bad command-line syntax.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;

use vmm::boot::{self, LinuxBoot};
use vmm::console::{self, Console};
use vmm::layout::{self, MemoryLayout};
use vmm::machine;
use vmm::vcpu::{self, StopReason, StopSignal};
use vmm::vm::Vm;
use vmm::{acpi, kvm};

/// The command line unless `--cmdline` replaces it.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 panic=-1 quiet i8042.noaux";
/// Exit status: the guest reset.
pub const EXIT_RESET: u8 = 3;
/// Exit status: a vCPU triple-faulted.
pub const EXIT_TRIPLE_FAULT: u8 = 4;
/// Exit status: KVM or the VMM failed while the guest ran.
pub const EXIT_INTERNAL: u8 = 5;
/// Most vCPUs accepted.
pub const MAX_CPUS: u8 = 64;

/// Arguments of `vmm boot`.
#[derive(Debug, Args)]
pub struct BootArgs {
    /// Kernel bzImage [default: the guest kit's kernel]
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
    /// Initramfs [default: the guest kit's initrd]
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,
    /// Kernel command line, replacing the default
    /// ("console=ttyS0 panic=-1 quiet i8042.noaux")
    #[arg(long, value_name = "STR", conflicts_with = "append")]
    cmdline: Option<String>,
    /// Text added to the default kernel command line
    #[arg(long, value_name = "STR")]
    append: Option<String>,
    /// Guest RAM, e.g. 512M or 2G (suffixes K, M, G, T; powers of 1024)
    #[arg(long, value_name = "SIZE", default_value = "256M")]
    mem: String,
    /// Number of vCPUs
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u8).range(1..=i64::from(MAX_CPUS)))]
    cpus: u8,
    /// KVM device
    #[arg(long, value_name = "PATH", default_value = kvm::DEFAULT_DEVICE)]
    kvm_device: PathBuf,
    /// Write the guest console to this file instead of stdout
    #[arg(long, value_name = "PATH")]
    console: Option<PathBuf>,
    /// Print timing and memory figures on stderr when the guest stops
    #[arg(long)]
    stats: bool,
    /// Disk image (repeatable; vda, vdb, ... in order): ro = writes fail,
    /// cow = writes go to a throwaway overlay, cow=OVERLAY = kept there
    #[arg(long = "disk", value_name = "PATH[,ro|,cow[=OVERLAY]]")]
    disks: Vec<vmm::devices::virtio::blk::DiskSpec>,
    #[command(flatten)]
    snapshot: super::snapshot::BootSnapshotArgs,
    #[command(flatten)]
    net: Box<vmm::net::NetArgs>,
}

/// Runs `vmm boot`.
pub fn run(args: BootArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let (kernel, initrd) = kit_paths(&args)?;
    let info = boot::check_kernel(&kernel)?;
    boot::check_initrd(&initrd)?;
    let cmdline = match (&args.cmdline, &args.append) {
        (Some(c), _) => c.clone(),
        (None, Some(a)) => format!("{DEFAULT_CMDLINE} {a}"),
        (None, None) => DEFAULT_CMDLINE.to_owned(),
    };
    check_cmdline(&cmdline, info.cmdline_size)?;
    let mem_size = parse_size(&args.mem)?;
    let layout = MemoryLayout::new(mem_size).with_context(|| format!("--mem {}", args.mem))?;
    check_host_memory(mem_size)?;
    args.snapshot.check(&args.disks)?;
    let kvm = machine::open_kvm(&args.kvm_device)?;
    let max_vcpus = kvm.get_max_vcpus();
    if usize::from(args.cpus) > max_vcpus {
        bail!(
            "--cpus {} exceeds this host's KVM limit of {max_vcpus}",
            args.cpus
        );
    }

    let vm = Arc::new(Vm::new(&kvm, layout)?);
    let mut pci = vmm::devices::pci::kvm::PciDevices::for_boot(vm.clone(), &args.disks)?;
    let network = args.net.start()?;
    if let Some(net) = &network {
        let nic =
            vmm::devices::virtio::net::Net::new(vmm::net::GUEST_MAC, Box::new(net.nic_backend()?));
        pci.add_virtio(Box::new(nic), "virtio-net")?;
    }
    let stop = Arc::new(StopSignal::new());
    let out: Box<dyn Write + Send> = match &args.console {
        Some(path) => Box::new(
            std::fs::File::create(path)
                .with_context(|| format!("Cannot create console file {}", path.display()))?,
        ),
        None => Box::new(std::io::stdout()),
    };
    let console = Console::spawn(out, console::DEFAULT_CAPACITY).context("Cannot start console")?;
    let serial_out = args.snapshot.serial_out(console.writer(), &stop);
    let legacy = machine::add_legacy_devices(&vm, serial_out, stop.clone())?;
    let rsdp = acpi::write_tables(vm.memory(), &layout, usize::from(args.cpus))?;
    let entry = boot::load_linux(
        vm.memory(),
        &layout,
        &LinuxBoot {
            kernel: &kernel,
            initrd: &initrd,
            cmdline: &cmdline,
            rsdp,
        },
    )?;
    let threads = machine::start_vcpus(&kvm, &vm, args.cpus, entry, &stop)?;
    let reason = stop.wait();
    let mut vcpus = vcpu::stop_all(threads);
    if reason == StopReason::Paused {
        let saved = super::snapshot::SavedVm {
            kvm: &kvm,
            vm: &vm,
            vcpus: &mut vcpus,
            legacy: &legacy,
            pci: &pci,
            nic: network.is_some(),
            cmdline: &cmdline,
        };
        args.snapshot.save(saved, &args.disks)?;
    }
    drop(pci);
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
    if args.stats {
        print_stats(&vm, started.elapsed(), dropped);
    }
    Ok(exit_code(&reason))
}

/// The status `vmm boot` exits with for `reason`.
pub fn exit_code(reason: &StopReason) -> ExitCode {
    match reason {
        StopReason::PowerOff | StopReason::Paused => ExitCode::SUCCESS,
        StopReason::Reset => ExitCode::from(EXIT_RESET),
        StopReason::TripleFault => ExitCode::from(EXIT_TRIPLE_FAULT),
        StopReason::InternalError(text) => {
            eprintln!("vmm: internal error: {text}");
            ExitCode::from(EXIT_INTERNAL)
        }
    }
}

fn kit_paths(args: &BootArgs) -> anyhow::Result<(PathBuf, PathBuf)> {
    if let (Some(k), Some(i)) = (&args.kernel, &args.initrd) {
        return Ok((k.clone(), i.clone()));
    }
    let dir = vmm::guest::default_dir()?;
    let kit = vmm::guest::Kit::in_dir(&dir);
    let kernel = args.kernel.clone().unwrap_or(kit.kernel);
    let initrd = args.initrd.clone().unwrap_or(kit.initrd);
    for path in [&kernel, &initrd] {
        if !path.exists() && path.starts_with(&dir) {
            bail!(
                "No guest kit in {}: run `vmm guest build`, or pass --kernel and --initrd",
                dir.display()
            );
        }
    }
    Ok((kernel, initrd))
}

fn check_cmdline(cmdline: &str, kernel_max: u32) -> anyhow::Result<()> {
    let max = usize::try_from(kernel_max)
        .unwrap_or(usize::MAX)
        .min(usize::try_from(layout::CMDLINE_MAX_SIZE - 1).unwrap_or(0));
    if cmdline.len() > max {
        bail!(
            "Kernel command line is {} bytes; this kernel takes at most {max}",
            cmdline.len()
        );
    }
    if !cmdline.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        bail!("Kernel command line may only hold printable ASCII (no newlines or tabs)");
    }
    Ok(())
}

/// Parses `512M`, `2G`, `1GiB`, `65536K` or plain bytes.
pub fn parse_size(text: &str) -> anyhow::Result<u64> {
    vmm::spec::parse_size(text).ok_or_else(|| {
        anyhow::anyhow!("--mem {text:?} is not a size (or too large): use e.g. 512M or 2G")
    })
}

fn check_host_memory(mem_size: u64) -> anyhow::Result<()> {
    let Ok(meminfo) = std::fs::read_to_string("/proc/meminfo") else {
        return Ok(());
    };
    let total_kib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
    if let Some(total) = total_kib.map(|k| k * 1024) {
        if mem_size > total {
            bail!(
                "--mem of {} MiB exceeds this host's {} MiB of RAM",
                mem_size >> 20,
                total >> 20
            );
        }
    }
    Ok(())
}

fn print_stats(vm: &Vm, elapsed: Duration, dropped: u64) {
    let hwm_kib = peak_rss_kib().unwrap_or(0);
    let guest_kib = vm.resident_guest_bytes() / 1024;
    eprintln!(
        "vmm: stats: run {} ms, peak RSS {} KiB, guest memory touched {} KiB, \
         VMM overhead {} KiB, console bytes dropped {}",
        elapsed.as_millis(),
        hwm_kib,
        guest_kib,
        hwm_kib.saturating_sub(guest_kib),
        dropped
    );
}

fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes_and_reject_garbage() {
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("2g").unwrap(), 2 << 30);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999999999999T").is_err());
        assert!(parse_size("9999999999T").is_err());
    }

    #[test]
    fn exit_codes_tell_every_stop_reason_apart() {
        let codes = [
            exit_code(&StopReason::PowerOff),
            exit_code(&StopReason::Reset),
            exit_code(&StopReason::TripleFault),
            exit_code(&StopReason::InternalError("x".into())),
        ];
        for (i, a) in codes.iter().enumerate() {
            for b in &codes[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(codes[0], ExitCode::SUCCESS);
    }
}
