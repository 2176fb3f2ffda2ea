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
    /// Refuses bad options before the guest boots.
    pub fn check(&self, disks: usize) -> anyhow::Result<()> {
        if let Some(dir) = &self.snapshot_to {
            snapshot::check_target(dir)?;
            if self.snapshot_on.as_deref().is_none_or(str::is_empty) {
                bail!("--snapshot-on needs a non-empty text");
            }
            if disks > 0 {
                bail!("--snapshot-to does not support --disk yet (virtio state is not saved)");
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
    pub fn save(
        &self,
        kvm: &kvm_ioctls::Kvm,
        vm: &Vm,
        vcpus: &mut [Vcpu],
        legacy: &LegacyDevices,
        cmdline: &str,
    ) -> anyhow::Result<()> {
        let Some(dir) = &self.snapshot_to else {
            bail!("The VM paused without --snapshot-to");
        };
        let machine = Machine {
            mem_size: vm.layout().mem_size(),
            cmdline: cmdline.to_owned(),
            disks: Vec::new(),
        };
        let report = snapshot::save(
            dir,
            SaveInput {
                kvm,
                vm,
                vcpus,
                legacy,
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

fn display(p: &Path) -> std::path::Display<'_> {
    p.display()
}
