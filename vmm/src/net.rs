//! The guest network of `vmm boot --net`: a fresh netswitch switch, a
//! virtio-net backend that is one of its ports ([`SwitchBackend`]), and the
//! host endpoint (192.168.0.2/24) on a tokio runtime inside the process,
//! with services put on it: smbd-lite on port 445 ([`Network::serve_smb`]),
//! a file served to every connection ([`Network::serve_file`]), and a wait
//! for a guest port ([`Network::report_port_open`]).
//!
//! The guest configures its own address (192.168.0.1/24 by convention);
//! nothing of the host's network is touched.
//!
//! Limitations:
//! - One switch per process, one NIC per guest, IPv4 only.
//! - The endpoint's address and the guest NIC's MAC are fixed
//!   ([`ENDPOINT_ADDR`], [`GUEST_MAC`]).

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use netswitch::endpoint::{EndpointConfig, EndpointError, HostEndpoint};
use netswitch::{Port, Switch, SwitchConfig, SwitchError};
use tokio::io::AsyncWriteExt;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::devices::virtio::net::NetBackend;

/// The host endpoint's address.
pub const ENDPOINT_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 2);
/// The address guests give themselves by convention.
pub const GUEST_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 1);
/// The guest NIC's MAC address (locally administered).
pub const GUEST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
/// The SMB port smbd-lite serves on.
pub const SMB_PORT: u16 = 445;
/// Most bytes [`Network::serve_file`] loads.
pub const MAX_SERVED_FILE: u64 = 256 << 20;

/// Errors of the guest network.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The async runtime could not start.
    #[error("Cannot start the network runtime")]
    Runtime(#[source] std::io::Error),
    /// An eventfd could not be made.
    #[error("Cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
    /// The switch refused its configuration or the capture file.
    #[error("Switch setup failed")]
    Switch(#[source] SwitchError),
    /// The host endpoint failed.
    #[error("Host endpoint failed")]
    Endpoint(#[source] EndpointError),
    /// smbd-lite refused its configuration.
    #[error("Cannot configure the SMB server")]
    Smb(#[source] smbd_lite::ServerError),
    /// A served file could not be read.
    #[error("Cannot read {0}")]
    File(PathBuf, #[source] std::io::Error),
    /// A served file is larger than [`MAX_SERVED_FILE`].
    #[error("{0} is larger than the 256 MiB a served file may be")]
    FileTooLarge(PathBuf),
}

/// A virtio-net backend on a switch port, woken through the port's
/// notifier (an eventfd the device worker polls).
#[derive(Debug)]
pub struct SwitchBackend {
    port: Port,
    wake: Arc<EventFd>,
    /// The host endpoint on the same switch, whose connections a snapshot
    /// records.
    endpoint: Option<Arc<HostEndpoint>>,
}

impl SwitchBackend {
    /// Wraps `port`; frames arriving on it signal the backend's eventfd.
    pub fn new(port: Port) -> Result<Self, NetError> {
        let wake = Arc::new(EventFd::new(EFD_NONBLOCK).map_err(NetError::EventFd)?);
        let signal = wake.clone();
        port.set_notifier(move || {
            let _ = signal.write(1);
        });
        Ok(Self {
            port,
            wake,
            endpoint: None,
        })
    }

    /// The port's counters.
    pub fn counters(&self) -> netswitch::PortCounters {
        self.port.counters()
    }
}

impl Drop for SwitchBackend {
    fn drop(&mut self) {
        self.port.clear_notifier();
    }
}

impl NetBackend for SwitchBackend {
    fn send(&mut self, frame: &[u8]) {
        let _ = self.port.send(frame);
    }

    fn peek_len(&self) -> Option<usize> {
        self.port.peek_len()
    }

    fn recv(&mut self, buf: &mut [u8]) -> Option<usize> {
        let frame = self.port.try_recv()?;
        let n = frame.len().min(buf.len());
        buf[..n].copy_from_slice(&frame[..n]);
        self.port.recycle(frame);
        Some(n)
    }

    fn rx_event(&self) -> Option<RawFd> {
        Some(self.wake.as_raw_fd())
    }

    fn ack_rx_event(&mut self) {
        // The notifier fires on empty -> non-empty; the device drains after this.
        let _ = self.wake.read();
    }

    fn host_connections(&self) -> Vec<netswitch::endpoint::TcpPeer> {
        self.endpoint
            .as_ref()
            .map_or_else(Vec::new, |e| e.connections())
    }
}

/// A share for smbd-lite: `NAME=PATH` or `NAME=PATH,ro`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareSpec {
    /// Share name.
    pub name: String,
    /// Folder served.
    pub path: PathBuf,
    /// Whether every change is refused.
    pub read_only: bool,
}

impl std::str::FromStr for ShareSpec {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, String> {
        let bad = || format!("{spec:?}: expected NAME=PATH or NAME=PATH,ro");
        let (name, rest) = spec.split_once('=').ok_or_else(bad)?;
        let (path, read_only) = match rest.strip_suffix(",ro") {
            Some(p) => (p, true),
            None => (rest.strip_suffix(",rw").unwrap_or(rest), false),
        };
        if name.is_empty() || path.is_empty() {
            return Err(bad());
        }
        let path = PathBuf::from(path);
        if !path.is_dir() {
            return Err(format!(
                "{spec:?}: {} is not a directory; create it or fix the path",
                path.display()
            ));
        }
        Ok(Self {
            name: name.to_owned(),
            path,
            read_only,
        })
    }
}

/// A file served on a TCP port: `PORT=PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeFileSpec {
    /// Endpoint port.
    pub port: u16,
    /// File whose bytes every connection gets.
    pub path: PathBuf,
}

impl std::str::FromStr for ServeFileSpec {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, String> {
        let bad = || format!("{spec:?}: expected PORT=PATH, e.g. 8000=/tmp/file");
        let (port, path) = spec.split_once('=').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        if port == 0 || path.is_empty() {
            return Err(bad());
        }
        Ok(Self {
            port,
            path: PathBuf::from(path),
        })
    }
}

/// The switch, the host endpoint and its runtime. Dropping it stops every
/// service and finishes the capture file.
pub struct Network {
    runtime: tokio::runtime::Runtime,
    switch: Switch,
    endpoint: Arc<HostEndpoint>,
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("switch", &self.switch)
            .finish_non_exhaustive()
    }
}

impl Network {
    /// A fresh switch (capturing to `pcap` if given) with the host endpoint
    /// at [`ENDPOINT_ADDR`]/24 on two runtime threads.
    pub fn start(pcap: Option<&Path>) -> Result<Self, NetError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("vmm-net")
            .enable_all()
            .build()
            .map_err(NetError::Runtime)?;
        let switch = Switch::new(SwitchConfig::default()).map_err(NetError::Switch)?;
        if let Some(path) = pcap {
            switch.capture_to(path).map_err(NetError::Switch)?;
        }
        let config = EndpointConfig {
            address: ENDPOINT_ADDR,
            ..EndpointConfig::default()
        };
        let endpoint = HostEndpoint::spawn_on(runtime.handle(), switch.add_port(), config)
            .map_err(NetError::Endpoint)?;
        Ok(Self {
            runtime,
            switch,
            endpoint: Arc::new(endpoint),
        })
    }

    /// A new port on the switch as a virtio-net backend (whose host
    /// connections are this endpoint's).
    pub fn nic_backend(&self) -> Result<SwitchBackend, NetError> {
        let mut backend = SwitchBackend::new(self.switch.add_port())?;
        backend.endpoint = Some(self.endpoint.clone());
        Ok(backend)
    }

    /// After a revive: makes the guest at `guest_mac` drop the TCP
    /// connections it had with the endpoint of the snapshot, at once
    /// rather than at their next use (see netswitch's
    /// `HostEndpoint::reset_stale`).
    pub fn reset_stale(&self, connections: &[netswitch::endpoint::TcpPeer], guest_mac: [u8; 6]) {
        let sent = self.endpoint.reset_stale(connections, guest_mac);
        tracing::debug!(sent, "stale guest connections probed");
    }

    /// The switch.
    pub fn switch(&self) -> &Switch {
        &self.switch
    }

    /// The host endpoint.
    pub fn endpoint(&self) -> &Arc<HostEndpoint> {
        &self.endpoint
    }

    /// The runtime the endpoint and services run on.
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        self.runtime.handle()
    }

    /// Serves `shares` with smbd-lite (guest access) on the endpoint's
    /// port 445.
    pub fn serve_smb(&self, shares: &[ShareSpec]) -> Result<(), NetError> {
        let config = smbd_lite::Config {
            interface_addr: Some(ENDPOINT_ADDR),
            shares: shares
                .iter()
                .map(|s| smbd_lite::ShareConfig {
                    name: s.name.clone(),
                    path: s.path.clone(),
                    read_only: s.read_only,
                })
                .collect(),
            ..smbd_lite::Config::default()
        };
        let server = smbd_lite::Server::new(config).map_err(NetError::Smb)?;
        let listener = self.endpoint.listen(SMB_PORT).map_err(NetError::Endpoint)?;
        self.runtime.spawn(async move {
            loop {
                let stream = match listener.accept().await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!("smbd on the endpoint stops: {e}");
                        return;
                    }
                };
                let server = server.clone();
                tokio::spawn(async move {
                    if let Err(e) = smbd_lite::server::serve(server, stream).await {
                        tracing::debug!("smbd connection ended: {e}");
                    }
                });
            }
        });
        Ok(())
    }

    /// Sends the bytes of `spec.path` (read now) to every connection on
    /// `spec.port`, then closes it.
    pub fn serve_file(&self, spec: &ServeFileSpec) -> Result<(), NetError> {
        let meta =
            std::fs::metadata(&spec.path).map_err(|e| NetError::File(spec.path.clone(), e))?;
        if meta.len() > MAX_SERVED_FILE {
            return Err(NetError::FileTooLarge(spec.path.clone()));
        }
        let bytes: Arc<[u8]> = std::fs::read(&spec.path)
            .map_err(|e| NetError::File(spec.path.clone(), e))?
            .into();
        let listener = self
            .endpoint
            .listen(spec.port)
            .map_err(NetError::Endpoint)?;
        self.runtime.spawn(async move {
            while let Ok(mut stream) = listener.accept().await {
                let bytes = bytes.clone();
                tokio::spawn(async move {
                    let sent = async {
                        stream.write_all(&bytes).await?;
                        stream.shutdown().await
                    };
                    if let Err(e) = sent.await {
                        tracing::debug!("served file not sent whole: {e}");
                    }
                });
            }
        });
        Ok(())
    }

    /// Waits (in the background) until the guest's `port` accepts a TCP
    /// connection, then prints `vmm: guest port PORT open` on stderr (or
    /// `vmm: guest port PORT not open after N s`).
    pub fn report_port_open(&self, port: u16, timeout: Duration) {
        let endpoint = self.endpoint.clone();
        self.runtime.spawn(async move {
            match endpoint.wait_for_port(GUEST_ADDR, port, timeout).await {
                Ok(()) => eprintln!("vmm: guest port {port} open"),
                Err(e) => eprintln!(
                    "vmm: guest port {port} not open after {} s: {e}",
                    timeout.as_secs()
                ),
            }
        });
    }

    /// Finishes the capture file (also done when the switch is dropped).
    pub fn finish(&self) -> Result<(), NetError> {
        self.switch.finish_capture().map_err(NetError::Switch)
    }
}

/// `vmm boot` network options.
#[derive(Debug, Clone, clap::Args)]
pub struct NetArgs {
    /// Give the guest one NIC (eth0) on a fresh switch whose host endpoint is
    /// 192.168.0.2/24 (the guest sets 192.168.0.1/24 itself)
    #[arg(long)]
    pub net: bool,
    /// Capture every frame on the switch to this pcap file
    #[arg(long, value_name = "FILE", requires = "net")]
    pub pcap: Option<PathBuf>,
    /// Serve a folder with SMB on 192.168.0.2:445 (repeatable)
    #[arg(long = "share", value_name = "NAME=PATH[,ro]", requires = "net")]
    pub shares: Vec<ShareSpec>,
    /// Send a file's bytes to every TCP connection on 192.168.0.2:PORT
    /// (repeatable)
    #[arg(long = "serve-file", value_name = "PORT=PATH", requires = "net")]
    pub serve_files: Vec<ServeFileSpec>,
    /// Print "vmm: guest port PORT open" on stderr once 192.168.0.1:PORT
    /// accepts a connection (repeatable; gives up after 600 s)
    #[arg(long = "wait-port", value_name = "PORT", requires = "net")]
    pub wait_ports: Vec<u16>,
}

impl NetArgs {
    /// The network these options ask for, with its services started, or
    /// `None` without `--net`.
    pub fn start(&self) -> Result<Option<Network>, NetError> {
        if !self.net {
            return Ok(None);
        }
        let net = Network::start(self.pcap.as_deref())?;
        if !self.shares.is_empty() {
            net.serve_smb(&self.shares)?;
        }
        for spec in &self.serve_files {
            net.serve_file(spec)?;
        }
        for &port in &self.wait_ports {
            net.report_port_open(port, Duration::from_secs(600));
        }
        Ok(Some(net))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn share_specs_parse_ro_and_refuse_missing_folders() {
        let dir = std::env::temp_dir();
        let s: ShareSpec = format!("store={},ro", dir.display()).parse().unwrap();
        assert!(s.read_only);
        assert_eq!(s.name, "store");
        let s: ShareSpec = format!("xchg={}", dir.display()).parse().unwrap();
        assert!(!s.read_only);
        assert!("store".parse::<ShareSpec>().is_err());
        assert!("x=/nonexistent/folder".parse::<ShareSpec>().is_err());
    }

    #[test]
    fn serve_file_specs_need_a_port_and_a_path() {
        let s: ServeFileSpec = "8000=/tmp/f".parse().unwrap();
        assert_eq!(s.port, 8000);
        assert!("0=/tmp/f".parse::<ServeFileSpec>().is_err());
        assert!("x=/tmp/f".parse::<ServeFileSpec>().is_err());
        assert!("8000".parse::<ServeFileSpec>().is_err());
    }

    #[test]
    fn switch_backend_delivers_frames_and_signals_its_eventfd() {
        let switch = Switch::new(SwitchConfig::default()).unwrap();
        let mut nic = SwitchBackend::new(switch.add_port()).unwrap();
        let other = switch.add_port();
        let mut frame = vec![0u8; 60];
        frame[..6].copy_from_slice(&[0xff; 6]);
        frame[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 9]);
        other.send(&frame);
        assert_eq!(nic.wake.read().unwrap(), 1);
        assert_eq!(nic.peek_len(), Some(60));
        let mut buf = [0u8; 1514];
        assert_eq!(nic.recv(&mut buf), Some(60));
        assert_eq!(&buf[..60], &frame[..]);
        assert_eq!(nic.recv(&mut buf), None);
        nic.send(&frame);
        assert_eq!(other.try_recv().unwrap(), frame);
    }
}
