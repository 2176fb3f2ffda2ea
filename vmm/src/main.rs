//! The `vmm` command line.
//!
//! Each subcommand lives in `commands/<name>.rs` with its clap arguments and
//! a `run` function returning the process exit code. Errors reach `main` and
//! are printed as one line (`vmm: ...`) with exit status 1.

mod commands;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// KVM virtual machine monitor for reproducible builds.
#[derive(Debug, Parser)]
#[command(name = "vmm", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install a guest once and freeze it into a base (see --spec).
    Bootstrap(commands::bootstrap::BootstrapArgs),
    /// Revive a base, run one command in it over SSH, exit with its status.
    Run(commands::run::RunArgs),
    /// Boot a Linux guest and stream its console.
    Boot(commands::boot::BootArgs),
    /// Build the Linux test guest kit.
    Guest(commands::guest::GuestArgs),
    /// Build or list reproducible FAT12 floppy images.
    Floppy(commands::floppy::FloppyArgs),
    /// Run the built-in SMB2/3 server on a TCP port.
    Smbd(commands::smbd::SmbdArgs),
    /// Resume a snapshot taken by `vmm boot --snapshot-to`.
    Revive(commands::revive::ReviveArgs),
    /// Check a snapshot (`vmm snapshot verify DIR`).
    Snapshot(commands::snapshot::SnapshotCmdArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result: anyhow::Result<ExitCode> = match cli.command {
        Command::Bootstrap(args) => commands::bootstrap::run(args),
        Command::Run(args) => commands::run::run(args),
        Command::Boot(args) => commands::boot::run(args),
        Command::Guest(args) => commands::guest::run(args),
        Command::Floppy(args) => commands::floppy::run(args),
        Command::Smbd(args) => commands::smbd::run(args),
        Command::Revive(args) => commands::revive::run(args),
        Command::Snapshot(args) => commands::snapshot::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vmm: {e:#}");
            ExitCode::from(1)
        }
    }
}
