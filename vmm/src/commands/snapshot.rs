//! `vmm snapshot verify DIR`, and the `--snapshot-to`/`--snapshot-on`
//! options of `vmm boot`.
//!
//! Exit status of `verify`: 0 the snapshot is intact (state checksum,
//! memory file length and hash, disks unchanged); 1 it is not, with the
//! reason on one line.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

use vmm::devices::pci::kvm::PciDevices;
use vmm::devices::virtio::blk::{DiskMode, DiskSpec};
use vmm::snapshot::{self, LegacyDevices, Machine, PauseOnText, SaveInput};
use vmm::vcpu::{StopSignal, Vcpu};
use vmm::vm::Vm;

/// Arguments of `vmm snapshot`.
#[derive(Debug, Args)]
pub struct SnapshotCmdArgs {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Check a snapshot fully, the memory file's hash included.
    Verify {
        /// Snapshot directory
        dir: PathBuf,
    },
}

/// Runs `vmm snapshot`.
pub fn run(args: SnapshotCmdArgs) -> anyhow::Result<ExitCode> {
    match args.action {
        Action::Verify { dir } => {
            let state = snapshot::verify(&dir)
                .with_context(|| format!("Snapshot {} is not usable", dir.display()))?;
            println!(
                "{}: ok ({} vCPUs, {} MiB RAM, {} KiB of data, taken by vmm {})",
                dir.display(),
                state.vcpus.len(),
                state.machine.mem_size >> 20,
                state.header.memory.data_bytes >> 10,
                state.header.vmm_version
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The snapshot options of `vmm boot`.
#[derive(Debug, Clone, Args)]
pub struct BootSnapshotArgs {
    /// Snapshot the guest into this directory (written as DIR.tmp, then
    /// renamed) and stop, once the console prints --snapshot-on's text
    #[arg(long, value_name = "DIR", requires = "snapshot_on")]
    pub snapshot_to: Option<PathBuf>,
    /// Console text that triggers the snapshot
    #[arg(long, value_name = "TEXT", requires = "snapshot_to")]
    pub snapshot_on: Option<String>,
}

impl BootSnapshotArgs {
    /// Refuses bad options before the guest boots: an existing target, an
    /// empty trigger, a disk behind a copy-on-write overlay (the snapshot
    /// refers to the image itself, and the overlay's writes would be lost).
    pub fn check(&self, disks: &[DiskSpec]) -> anyhow::Result<()> {
        if let Some(dir) = &self.snapshot_to {
            snapshot::check_target(dir)?;
            if self.snapshot_on.as_deref().is_none_or(str::is_empty) {
                bail!("--snapshot-on needs a non-empty text");
            }
            if let Some(d) = disks.iter().find(|d| matches!(d.mode, DiskMode::Cow(_))) {
                bail!(
                    "--snapshot-to needs disks used directly (PATH or PATH,ro): {} is behind a \
                     copy-on-write overlay, whose writes the snapshot would lose",
                    d.path.display()
                );
            }
        }
        Ok(())
    }

    /// The UART's sink: `out`, watched for the trigger text if asked.
    pub fn serial_out<W: Write + Send + 'static>(
        &self,
        out: W,
        stop: &Arc<StopSignal>,
    ) -> Box<dyn Write + Send> {
        match &self.snapshot_on {
            Some(text) if self.snapshot_to.is_some() => {
                Box::new(PauseOnText::new(out, text, stop.clone()))
            }
            _ => Box::new(out),
        }
    }

    /// Saves the stopped VM into `--snapshot-to`, and says so on stderr.
    pub fn save(&self, vm: SavedVm<'_>, disks: &[DiskSpec]) -> anyhow::Result<()> {
        let Some(dir) = &self.snapshot_to else {
            bail!("The VM paused without --snapshot-to");
        };
        let disks = disks
            .iter()
            .map(|d| snapshot::DiskRef::of(&d.path))
            .collect::<Result<Vec<_>, _>>()?;
        let machine = Machine {
            mem_size: vm.vm.layout().mem_size(),
            cmdline: vm.cmdline.to_owned(),
            disks,
            nic: vm.nic,
        };
        let report = snapshot::save(
            dir,
            SaveInput {
                kvm: vm.kvm,
                vm: vm.vm,
                vcpus: vm.vcpus,
                legacy: vm.legacy,
                pci: Some(vm.pci),
                machine,
            },
        )
        .with_context(|| format!("Cannot save snapshot {}", display(dir)))?;
        eprintln!(
            "vmm: snapshot {} saved in {} ms: state {} bytes, memory {} MiB ({} KiB of data)",
            display(dir),
            report.elapsed.as_millis(),
            report.state_bytes,
            report.memory.len >> 20,
            report.memory.data_bytes >> 10
        );
        Ok(())
    }
}

/// The stopped VM `vmm boot` hands to [`BootSnapshotArgs::save`].
#[derive(Debug)]
pub struct SavedVm<'a> {
    /// KVM.
    pub kvm: &'a kvm_ioctls::Kvm,
    /// The VM.
    pub vm: &'a Vm,
    /// Its vCPUs, stopped.
    pub vcpus: &'a mut [Vcpu],
    /// Legacy devices.
    pub legacy: &'a LegacyDevices,
    /// PCI devices (their workers are stopped by the save).
    pub pci: &'a PciDevices,
    /// Whether it has a NIC.
    pub nic: bool,
    /// Its kernel command line.
    pub cmdline: &'a str,
}

fn display(p: &Path) -> std::path::Display<'_> {
    p.display()
}
