//! `vmm guest build [--out DIR]`: builds the Linux test guest kit (kernel,
//! initrd, SSH key) from Debian's packages.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

/// Arguments of `vmm guest`.
#[derive(Debug, Args)]
pub struct GuestArgs {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Build the test guest (kernel, initrd, key) from Debian's packages.
    Build {
        /// Output folder [default: $XDG_CACHE_HOME/vmm/guest or ~/.cache/vmm/guest].
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
}

/// Runs `vmm guest ...`.
pub fn run(args: GuestArgs) -> anyhow::Result<ExitCode> {
    match args.action {
        Action::Build { out } => build(out),
    }
}

fn build(out: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let out = match out {
        Some(dir) => dir,
        None => vmm::guest::default_dir()?,
    };
    let debs = vmm::guest::deb_cache_dir()?;
    let report = vmm::guest::build(&out, &debs)?;
    for p in &report.packages {
        let how = if p.downloaded { "downloaded" } else { "cached" };
        println!("package {} {} {} bytes ({how})", p.name, p.version, p.size);
    }
    let optional = report.modules.iter().filter(|m| !m.required).count();
    println!(
        "modules: {} ({} required, {optional} optional soft dependencies)",
        report.modules.len(),
        report.modules.len() - optional
    );
    println!("libraries: {}", report.libraries.join(" "));
    let kit = vmm::guest::Kit::in_dir(&out);
    println!(
        "kernel {} ({} bytes, {})",
        kit.kernel.display(),
        report.kernel_size,
        report.kernel_package
    );
    println!(
        "initrd {} ({} bytes, {} unpacked)",
        kit.initrd.display(),
        report.initrd_size,
        report.initrd_unpacked_size
    );
    println!("key {}", kit.key.display());
    Ok(ExitCode::SUCCESS)
}
