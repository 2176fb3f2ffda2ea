//! Development server: `serve ADDR:PORT NAME=PATH[,ro]... [--user NAME:PASSWORD]`.
//!
//! The supported command line is `vmm smbd`; this example only exists to
//! run the crate without building `vmm`.

use std::path::PathBuf;

use smbd_lite::{Config, Server, ShareConfig, User};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let mut args = std::env::args().skip(1);
    let listen = args
        .next()
        .ok_or("usage: serve ADDR:PORT NAME=PATH[,ro]...")?;
    let mut config = Config::default();
    while let Some(a) = args.next() {
        if a == "--user" {
            let u = args.next().ok_or("--user needs NAME:PASSWORD")?;
            let (name, password) = u.split_once(':').ok_or("--user needs NAME:PASSWORD")?;
            config.user = Some(User {
                name: name.into(),
                password: password.into(),
            });
            continue;
        }
        let (name, path) = a.split_once('=').ok_or("share must be NAME=PATH[,ro]")?;
        let (path, ro) = match path.strip_suffix(",ro") {
            Some(p) => (p, true),
            None => (path, false),
        };
        config.shares.push(ShareConfig {
            name: name.into(),
            path: PathBuf::from(path),
            read_only: ro,
        });
    }
    let server = Server::new(config)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&listen).await?;
        smbd_lite::server::listen(server, listener).await
    })?;
    Ok(())
}
