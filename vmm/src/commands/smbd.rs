//! `vmm smbd`: run the built-in SMB2/3 server standalone on a TCP port.
//!
//! Used to test real clients (smbclient, smbtorture, `mount -t cifs`) and
//! for benchmarks; the build pipeline runs the same server on the switch's
//! host endpoint instead.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use smbd_lite::{Config, Server, ShareConfig, User};

/// Arguments of `vmm smbd`.
#[derive(Debug, Args)]
pub struct SmbdArgs {
    /// Address and port to listen on, e.g. 127.0.0.1:4455.
    #[arg(long, value_name = "ADDR:PORT")]
    listen: SocketAddr,
    /// A share: NAME=PATH, or NAME=PATH,ro for read-only. Repeatable.
    #[arg(long = "share", value_name = "NAME=PATH[,ro]", required = true)]
    shares: Vec<String>,
    /// A user who must log in with this password (NTLMv2, signed); other
    /// names still log in as guest.
    #[arg(long, value_name = "NAME:PASSWORD")]
    user: Option<String>,
    /// Close connections idle for this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 600)]
    idle_timeout: u64,
}

/// Parses `NAME=PATH[,ro]`.
fn parse_share(spec: &str) -> anyhow::Result<ShareConfig> {
    let Some((name, rest)) = spec.split_once('=') else {
        bail!("--share {spec:?}: expected NAME=PATH or NAME=PATH,ro");
    };
    let (path, read_only) = match rest.strip_suffix(",ro") {
        Some(p) => (p, true),
        None => (rest.strip_suffix(",rw").unwrap_or(rest), false),
    };
    if name.is_empty() || path.is_empty() {
        bail!("--share {spec:?}: expected NAME=PATH or NAME=PATH,ro");
    }
    let path = PathBuf::from(path);
    if !path.is_dir() {
        bail!(
            "--share {spec:?}: {} is not a directory; create it or fix the path",
            path.display()
        );
    }
    Ok(ShareConfig {
        name: name.to_string(),
        path,
        read_only,
    })
}

/// Parses `NAME:PASSWORD`.
fn parse_user(spec: &str) -> anyhow::Result<User> {
    match spec.split_once(':') {
        Some((name, password)) if !name.is_empty() => Ok(User {
            name: name.to_string(),
            password: password.to_string(),
        }),
        _ => bail!("--user: expected NAME:PASSWORD"),
    }
}

/// Runs the server until interrupted.
pub fn run(args: SmbdArgs) -> anyhow::Result<ExitCode> {
    let mut config = Config::default();
    for s in &args.shares {
        config.shares.push(parse_share(s)?);
    }
    config.user = args.user.as_deref().map(parse_user).transpose()?;
    config.limits.idle_timeout = Duration::from_secs(args.idle_timeout.max(1));
    if let SocketAddr::V4(a) = args.listen {
        if !a.ip().is_unspecified() {
            config.interface_addr = Some(*a.ip());
        }
    }
    let server = Server::new(config)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("Cannot start the async runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("Cannot listen on {}", args.listen))?;
        tracing::info!("smbd listening on {}", args.listen);
        tokio::select! {
            r = smbd_lite::server::listen(server, listener) => r.context("Accepting connections failed"),
            r = tokio::signal::ctrl_c() => r.context("Waiting for Ctrl-C failed"),
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn share_spec_with_ro_suffix_is_read_only() {
        let s = parse_share("store=/tmp,ro").unwrap();
        assert!(s.read_only);
        assert_eq!(s.name, "store");
        assert!(!parse_share("xchg=/tmp").unwrap().read_only);
    }

    #[test]
    fn share_spec_without_equals_is_refused() {
        assert!(parse_share("store").is_err());
        assert!(parse_share("x=/nonexistent/dir").is_err());
    }

    #[test]
    fn user_spec_needs_a_colon() {
        assert!(parse_user("alice").is_err());
        assert_eq!(parse_user("alice:pw").unwrap().password, "pw");
    }
}
