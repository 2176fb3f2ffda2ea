//! The host endpoint: the host process itself as a peer on a switch, with
//! TCP sockets as tokio streams.
//!
//! [`HostEndpoint::spawn`] plugs an [`EndpointCore`] into a switch [`Port`]
//! and runs one tokio task that moves frames and drives smoltcp's timers.
//! [`TcpStream`] implements `AsyncRead + AsyncWrite`, so servers (smbd-lite)
//! and clients (russh) run over it unchanged. Everything that decides what
//! goes on the wire is in [`core`]; this file only locks, wakes and waits.

pub mod core;

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use smoltcp::wire::IpAddress;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

pub use self::core::{
    EndpointConfig, EndpointCore, EndpointCounters, EndpointError, ListenerId, TcpPeer,
};
use crate::port::Port;
use crate::switch::MacAddr;
/// TCP connection states, as returned by [`TcpStream::state`].
pub use smoltcp::socket::tcp::State as TcpState;

/// Longest single connection attempt inside [`HostEndpoint::wait_for_port`].
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between refused attempts in [`HostEndpoint::wait_for_port`].
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// Upper bound on frame batches moved in one step of the endpoint task.
const MAX_BATCHES: usize = 16;

struct Shared {
    core: Mutex<EndpointCore>,
    /// Wakes the endpoint task: a socket was used or released.
    poke: Notify,
    /// Woken by the endpoint task after each step (accept, connect wait).
    stepped: Notify,
    start: Instant,
    shut_down: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, EndpointCore> {
        self.core.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn now(&self) -> smoltcp::time::Instant {
        let micros = i64::try_from(self.start.elapsed().as_micros()).unwrap_or(i64::MAX);
        smoltcp::time::Instant::from_micros(micros)
    }

    /// Moves frames both ways and polls; returns how long to sleep.
    fn step(&self, port: &Port) -> Option<Duration> {
        let now = self.now();
        let mut core = self.lock();
        let mut backlog = true;
        for _ in 0..MAX_BATCHES {
            while core.can_receive() {
                let Some(frame) = port.try_recv() else { break };
                core.receive_frame(frame);
            }
            core.poll(now);
            while let Some(frame) = core.transmit_frame() {
                port.send(&frame);
                core.recycle(frame);
            }
            backlog = core.has_pending_input() || port.peek_len().is_some();
            if !backlog {
                break;
            }
        }
        if backlog {
            // Frames are left over: the port will not notify again (it only
            // does on empty to non-empty), so come back at once.
            return Some(Duration::ZERO);
        }
        core.poll_delay(now).map(Duration::from)
    }
}

/// A host endpoint running on the current tokio runtime. Dropping it stops
/// its task and resets every connection.
pub struct HostEndpoint {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
    config: EndpointConfig,
}

impl std::fmt::Debug for HostEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostEndpoint")
            .field("core", &*self.shared.lock())
            .finish()
    }
}

fn fresh_seed() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let low = u64::try_from(nanos & u128::from(u64::MAX)).unwrap_or(0);
    let mixed = low ^ (u64::from(std::process::id()) << 32);
    mixed
        ^ COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

impl HostEndpoint {
    /// Starts an endpoint on `port`. Must be called inside a tokio runtime
    /// (with the time driver enabled); see [`HostEndpoint::spawn_on`].
    pub fn spawn(port: Port, config: EndpointConfig) -> Result<Self, EndpointError> {
        Self::spawn_on(&tokio::runtime::Handle::current(), port, config)
    }

    /// Starts an endpoint on `port`, its task running on `runtime` (which
    /// needs the time driver). Callable from any thread.
    pub fn spawn_on(
        runtime: &tokio::runtime::Handle,
        port: Port,
        config: EndpointConfig,
    ) -> Result<Self, EndpointError> {
        if config.mtu > port.switch().config().mtu {
            return Err(EndpointError::Config("endpoint MTU exceeds the switch's"));
        }
        let start = Instant::now();
        let core = EndpointCore::new(config.clone(), smoltcp::time::Instant::ZERO, fresh_seed())?;
        let shared = Arc::new(Shared {
            core: Mutex::new(core),
            poke: Notify::new(),
            stepped: Notify::new(),
            start,
            shut_down: AtomicBool::new(false),
        });
        let frames = Arc::new(Notify::new());
        let notify = frames.clone();
        port.set_notifier(move || notify.notify_one());
        let task = runtime.spawn(run(shared.clone(), port, frames));
        Ok(Self {
            shared,
            task,
            config,
        })
    }

    /// The endpoint's IPv4 address.
    pub fn address(&self) -> Ipv4Addr {
        self.config.address
    }

    /// The endpoint's MAC address.
    pub fn mac(&self) -> MacAddr {
        self.config.mac()
    }

    /// The endpoint's counters.
    pub fn counters(&self) -> EndpointCounters {
        self.shared.lock().counters()
    }

    /// The connections open or opening now (see
    /// [`EndpointCore::connections`]): what a guest snapshotted now holds.
    pub fn connections(&self) -> Vec<TcpPeer> {
        self.shared.lock().connections()
    }

    /// Makes the peer at `peer_mac` drop each of `peers`, connections of an
    /// earlier endpoint it still holds after a revive (see
    /// [`EndpointCore::reset_stale`]); returns how many were sent.
    pub fn reset_stale(&self, peers: &[TcpPeer], peer_mac: MacAddr) -> usize {
        let sent = {
            let mut core = self.shared.lock();
            peers
                .iter()
                .filter(|&&p| core.reset_stale(p, peer_mac))
                .count()
        };
        self.shared.poke.notify_one();
        sent
    }

    /// Listens on a TCP port of the endpoint's address.
    pub fn listen(&self, port: u16) -> Result<TcpListener, EndpointError> {
        let id = self.shared.lock().listen(port)?;
        self.shared.poke.notify_one();
        Ok(TcpListener {
            shared: self.shared.clone(),
            id,
            port,
        })
    }

    /// Connects to `ip:port`. Fails with [`EndpointError::Refused`] on a
    /// reset; wrap it in `tokio::time::timeout` to bound the wait for an
    /// absent peer.
    pub async fn connect(&self, ip: Ipv4Addr, port: u16) -> Result<TcpStream, EndpointError> {
        let handle = self.shared.lock().connect(ip, port)?;
        // From here a dropped future releases the socket through the stream.
        let stream = TcpStream {
            shared: self.shared.clone(),
            handle,
        };
        self.shared.poke.notify_one();
        std::future::poll_fn(|cx| {
            if self.shared.shut_down.load(Ordering::Acquire) {
                return Poll::Ready(Err(EndpointError::Shutdown));
            }
            let mut core = self.shared.lock();
            let socket = core.socket(handle);
            match socket.state() {
                tcp::State::SynSent | tcp::State::SynReceived => {
                    socket.register_send_waker(cx.waker());
                    Poll::Pending
                }
                tcp::State::Closed => Poll::Ready(Err(EndpointError::Refused(ip, port))),
                _ => Poll::Ready(Ok(())),
            }
        })
        .await?;
        Ok(stream)
    }

    /// Waits until `ip:port` accepts a TCP connection (then closes it), the
    /// way `nc -z` in a loop does; gives up after `timeout`.
    pub async fn wait_for_port(
        &self,
        ip: Ipv4Addr,
        port: u16,
        timeout: Duration,
    ) -> Result<(), EndpointError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(EndpointError::TimedOut);
            }
            match tokio::time::timeout(left.min(ATTEMPT_TIMEOUT), self.connect(ip, port)).await {
                Ok(Ok(_stream)) => return Ok(()),
                Ok(Err(EndpointError::Refused(..))) => {
                    tokio::time::sleep_until(
                        deadline.min(tokio::time::Instant::now() + RETRY_PAUSE),
                    )
                    .await;
                }
                Ok(Err(error)) => return Err(error),
                Err(_elapsed) => {}
            }
        }
    }
}

impl Drop for HostEndpoint {
    fn drop(&mut self) {
        self.task.abort();
        self.shared.shut_down.store(true, Ordering::Release);
        // Aborting wakes every stream waiting on a socket; they then see
        // end-of-file or a broken pipe instead of hanging.
        let mut core = self.shared.lock();
        core.abort_all();
        drop(core);
        self.shared.stepped.notify_waiters();
    }
}

async fn run(shared: Arc<Shared>, port: Port, frames: Arc<Notify>) {
    loop {
        let delay = shared.step(&port);
        shared.stepped.notify_waiters();
        match delay {
            Some(delay) if delay.is_zero() => tokio::task::yield_now().await,
            _ => {
                let sleep = delay.unwrap_or(Duration::from_secs(3600));
                tokio::select! {
                    () = frames.notified() => {}
                    () = shared.poke.notified() => {}
                    () = tokio::time::sleep(sleep) => {}
                }
            }
        }
    }
}

/// A listening TCP port on the endpoint. Dropping it stops listening and
/// resets connections not yet accepted.
pub struct TcpListener {
    shared: Arc<Shared>,
    id: ListenerId,
    port: u16,
}

impl std::fmt::Debug for TcpListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpListener")
            .field("port", &self.port)
            .finish()
    }
}

impl TcpListener {
    /// The port listened on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Waits for the next established connection.
    pub async fn accept(&self) -> Result<TcpStream, EndpointError> {
        loop {
            let stepped = self.shared.stepped.notified();
            tokio::pin!(stepped);
            stepped.as_mut().enable();
            if self.shared.shut_down.load(Ordering::Acquire) {
                return Err(EndpointError::Shutdown);
            }
            if let Some(handle) = self.shared.lock().accept(self.id) {
                self.shared.poke.notify_one();
                return Ok(TcpStream {
                    shared: self.shared.clone(),
                    handle,
                });
            }
            stepped.await;
        }
    }
}

impl Drop for TcpListener {
    fn drop(&mut self) {
        self.shared.lock().unlisten(self.id);
        self.shared.poke.notify_one();
    }
}

/// One TCP connection of the host endpoint, as a tokio byte stream.
///
/// Reads return end-of-file once the peer has closed its side or the
/// connection was reset; writes then fail with `BrokenPipe`. `shutdown`
/// sends FIN. Dropping the stream closes it gracefully (pending data is
/// still delivered), resetting it if the peer does not finish within
/// [`core::ORPHAN_LINGER`].
pub struct TcpStream {
    shared: Arc<Shared>,
    handle: SocketHandle,
}

impl std::fmt::Debug for TcpStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpStream")
            .field("local", &self.local_addr())
            .field("peer", &self.peer_addr())
            .finish()
    }
}

fn v4(endpoint: Option<smoltcp::wire::IpEndpoint>) -> Option<SocketAddrV4> {
    let endpoint = endpoint?;
    #[allow(unreachable_patterns)] // IPv6 may be enabled by another crate
    match endpoint.addr {
        IpAddress::Ipv4(addr) => Some(SocketAddrV4::new(addr, endpoint.port)),
        _ => None,
    }
}

impl TcpStream {
    /// The endpoint's side of the connection.
    pub fn local_addr(&self) -> Option<SocketAddrV4> {
        v4(self.shared.lock().socket(self.handle).local_endpoint())
    }

    /// The peer's side of the connection.
    pub fn peer_addr(&self) -> Option<SocketAddrV4> {
        v4(self.shared.lock().socket(self.handle).remote_endpoint())
    }

    /// The TCP state, e.g. to tell an orderly close from a reset in tests.
    pub fn state(&self) -> tcp::State {
        self.shared.lock().socket(self.handle).state()
    }
}

impl AsyncRead for TcpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut core = self.shared.lock();
        let socket = core.socket(self.handle);
        if socket.can_recv() {
            let read = socket
                .recv_slice(buf.initialize_unfilled())
                .map_err(|_| io::Error::from(io::ErrorKind::NotConnected))?;
            buf.advance(read);
            drop(core);
            // Freed buffer space may need announcing (a window update).
            self.shared.poke.notify_one();
            return Poll::Ready(Ok(()));
        }
        if !socket.may_recv() {
            return Poll::Ready(Ok(()));
        }
        socket.register_recv_waker(cx.waker());
        Poll::Pending
    }
}

impl AsyncWrite for TcpStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut core = self.shared.lock();
        let socket = core.socket(self.handle);
        if !socket.may_send() {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if !socket.can_send() {
            socket.register_send_waker(cx.waker());
            return Poll::Pending;
        }
        let written = socket
            .send_slice(data)
            .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))?;
        drop(core);
        self.shared.poke.notify_one();
        Poll::Ready(Ok(written))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.shared.lock().socket(self.handle).close();
        self.shared.poke.notify_one();
        Poll::Ready(Ok(()))
    }
}

impl Drop for TcpStream {
    fn drop(&mut self) {
        let now = self.shared.now();
        self.shared.lock().release(self.handle, now);
        self.shared.poke.notify_one();
    }
}
