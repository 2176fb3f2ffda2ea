//! Sans-IO host endpoint: a smoltcp interface and its TCP sockets, fed and
//! drained through frame queues, with time passed in by the caller.
//!
//! The tokio layer in [`crate::endpoint`] moves frames between this core and
//! a switch port and turns sockets into streams; tests drive the core
//! directly with a simulated clock.
//!
//! Threat model: frames come from guests and may be anything. smoltcp
//! parses them with checked views; this layer bounds every queue, the
//! number of sockets, and the half-open connections a listener keeps.

use std::collections::{HashMap, VecDeque};
use std::net::Ipv4Addr;

use smoltcp::iface::{
    Config, Interface, PollIngressSingleResult, PollResult, SocketHandle, SocketSet,
};
use smoltcp::socket::{tcp, AnySocket};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, HardwareAddress, IpCidr, IpEndpoint, Ipv4Cidr, Ipv4Packet,
};

use crate::switch::{MacAddr, ETHERNET_HEADER_LEN, MAX_MTU, MIN_MTU};

mod device;
mod screen;
mod stale;

use self::device::QueueDevice;
use self::screen::{screen_syn, SynScreen};
pub use self::stale::TcpPeer;

/// Frames waiting to enter the interface at most.
pub const RX_QUEUE_CAP: usize = 256;
/// Frames produced by the interface and not yet taken at most.
pub const TX_QUEUE_CAP: usize = 256;
/// How long a socket whose stream was dropped may take to close cleanly
/// before it is reset.
pub const ORPHAN_LINGER: Duration = Duration::from_secs(30);
/// Largest TCP receive buffer. A larger one makes smoltcp 0.12 scale its
/// window, and then the rounding of the scaled window can move its right
/// edge back by a few bytes; a peer sending up to the earlier edge (as it
/// may) makes smoltcp panic on a sequence-number underflow.
pub const MAX_TCP_RX_BUFFER: usize = 65535;
/// Interval of keep-alive segments, which double as zero-window probes.
///
/// smoltcp sends no zero-window probes, and it ignores the window field of
/// segments it finds unacceptable: a peer's window update that rides on a
/// retransmission or on its own window probe is lost, and the peer, having
/// announced it, sends no other. A keep-alive draws a pure ACK carrying the
/// peer's current window, so such a stall lasts at most this long.
pub const KEEP_ALIVE: Duration = Duration::from_millis(250);
/// Ephemeral ports used by [`EndpointCore::connect`].
const EPHEMERAL: std::ops::RangeInclusive<u16> = 49152..=65535;
/// Upper bound on interface polls in one [`EndpointCore::poll`] call.
const MAX_POLL_ROUNDS: usize = 64;
const POOL_CAP: usize = 256;
/// Peers remembered by [`EndpointCore`]'s neighbour priming at most.
const NEIGHBOURS_CAP: usize = 1024;
/// Re-prime a neighbour this long after the last time (smoltcp's ARP cache
/// keeps entries for 60 s).
const NEIGHBOUR_REFRESH: Duration = Duration::from_secs(30);

/// Settings of a host endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointConfig {
    /// The endpoint's IPv4 address.
    pub address: Ipv4Addr,
    /// Prefix length of the endpoint's subnet.
    pub prefix_len: u8,
    /// Default gateway, if any (none is needed on a one-switch network).
    pub gateway: Option<Ipv4Addr>,
    /// Fixed MAC address; `None` derives one from the address (see
    /// [`EndpointConfig::mac`]).
    pub mac: Option<MacAddr>,
    /// IP MTU; frames are up to this plus 14 bytes, TCP MSS is MTU - 40.
    pub mtu: usize,
    /// Receive buffer of each TCP socket, in bytes; at most
    /// [`MAX_TCP_RX_BUFFER`].
    pub tcp_rx_buffer: usize,
    /// Send buffer of each TCP socket, in bytes.
    pub tcp_tx_buffer: usize,
    /// Connections per listener that may wait for `accept`, half-open ones
    /// included.
    pub backlog: usize,
    /// Most TCP sockets at once, listening ones included.
    pub max_sockets: usize,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        Self {
            address: Ipv4Addr::new(192, 168, 0, 2),
            prefix_len: 24,
            gateway: None,
            mac: None,
            mtu: 1500,
            tcp_rx_buffer: MAX_TCP_RX_BUFFER,
            tcp_tx_buffer: 256 * 1024,
            backlog: 8,
            max_sockets: 256,
        }
    }
}

impl EndpointConfig {
    /// The endpoint's MAC address: the configured one, or else
    /// `02:00:` followed by the four bytes of the IPv4 address. Being
    /// derived from the configuration, it is the same in every run, so a
    /// guest revived with this address in its ARP cache still reaches it.
    pub fn mac(&self) -> MacAddr {
        self.mac.unwrap_or_else(|| {
            let [a, b, c, d] = self.address.octets();
            [0x02, 0x00, a, b, c, d]
        })
    }

    /// Checks the settings for values the endpoint cannot work with.
    pub fn validate(&self) -> Result<(), EndpointError> {
        let bad = |what: &'static str| Err(EndpointError::Config(what));
        if self.mac()[0] & 1 == 1 || self.mac() == [0; 6] {
            return bad("MAC address must be unicast and non-zero");
        }
        if self.prefix_len > 32 {
            return bad("prefix length must be at most 32");
        }
        if !(MIN_MTU..=MAX_MTU).contains(&self.mtu) {
            return bad("MTU must be within 68..=65535");
        }
        if self.tcp_rx_buffer < 1024 || self.tcp_tx_buffer < 1024 {
            return bad("TCP buffers must be at least 1024 bytes");
        }
        if self.tcp_rx_buffer > MAX_TCP_RX_BUFFER {
            return bad("TCP receive buffer must be at most 65535 bytes");
        }
        if self.backlog == 0 || self.max_sockets == 0 {
            return bad("backlog and socket limit must be at least 1");
        }
        Ok(())
    }
}

/// Errors of the host endpoint.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum EndpointError {
    /// A setting is unusable; the text says which.
    #[error("Invalid endpoint settings: {0}")]
    Config(&'static str),
    /// The socket limit is reached.
    #[error("Too many TCP sockets (limit {0})")]
    TooManySockets(usize),
    /// Another listener already uses the port.
    #[error("TCP port {0} is already listened on")]
    PortInUse(u16),
    /// Every ephemeral port is taken.
    #[error("No free ephemeral TCP port")]
    NoFreePort,
    /// Port 0 or an unusable remote address.
    #[error("Invalid TCP endpoint {0}:{1}")]
    InvalidEndpoint(Ipv4Addr, u16),
    /// The peer refused or reset the connection attempt.
    #[error("Connection refused by {0}:{1}")]
    Refused(Ipv4Addr, u16),
    /// The operation did not finish in time.
    #[error("Timed out")]
    TimedOut,
    /// The endpoint's background task has stopped.
    #[error("Host endpoint is shut down")]
    Shutdown,
}

/// Counters of one host endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EndpointCounters {
    /// Frames taken from the switch.
    pub rx_frames: u64,
    /// Frames the endpoint sent.
    pub tx_frames: u64,
    /// Frames refused because the receive queue was full.
    pub rx_dropped_queue_full: u64,
    /// SYNs dropped: the listener's backlog was full, or a duplicate SYN
    /// of a half-open connection.
    pub syn_dropped: u64,
    /// Open connections reset because the peer reopened their 4-tuple.
    pub connections_replaced: u64,
    /// Peers whose MAC was handed to smoltcp from their IP frames.
    pub neighbours_primed: u64,
    /// Released connections reset because they did not close in time.
    pub orphans_reset: u64,
    /// Panics of the TCP/IP stack caught (every connection was reset).
    pub panics_recovered: u64,
}

/// Identifies a listener of one [`EndpointCore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ListenerId(usize);

#[derive(Debug)]
struct Listener {
    port: u16,
    /// Sockets in LISTEN or SYN-RECEIVED.
    waiting: Vec<SocketHandle>,
    /// Established connections not yet accepted.
    ready: VecDeque<SocketHandle>,
}

#[derive(Debug)]
struct Orphan {
    handle: SocketHandle,
    deadline: Instant,
    /// Reaps seen since the socket was aborted (its RST goes out between).
    aborted_reaps: Option<u8>,
}

/// The sans-IO host endpoint. See the module docs.
pub struct EndpointCore {
    config: EndpointConfig,
    iface: Interface,
    device: QueueDevice,
    sockets: SocketSet<'static>,
    listeners: Vec<Option<Listener>>,
    orphans: Vec<Orphan>,
    next_port: u16,
    /// Peers whose MAC was handed to smoltcp, and when.
    neighbours: HashMap<Ipv4Addr, (MacAddr, Instant)>,
    counters: EndpointCounters,
}

impl std::fmt::Debug for EndpointCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sockets: Vec<String> = self
            .sockets
            .iter()
            .filter_map(|(_, s)| tcp::Socket::downcast(s))
            .map(|s| {
                format!(
                    "{} {:?} -> {:?}, send queue {}, receive queue {}",
                    s.state(),
                    s.local_endpoint(),
                    s.remote_endpoint(),
                    s.send_queue(),
                    s.recv_queue()
                )
            })
            .collect();
        f.debug_struct("EndpointCore")
            .field("config", &self.config)
            .field("sockets", &sockets)
            .field("listeners", &self.listeners)
            .field("orphans", &self.orphans.len())
            .finish_non_exhaustive()
    }
}

impl EndpointCore {
    /// Creates the endpoint. `seed` drives TCP initial sequence numbers and
    /// the first ephemeral port; give a different one in each run so a
    /// revived guest's stale connections never look like new ones.
    pub fn new(config: EndpointConfig, now: Instant, seed: u64) -> Result<Self, EndpointError> {
        config.validate()?;
        let mut device = QueueDevice {
            rx: VecDeque::new(),
            tx: VecDeque::new(),
            pool: Vec::new(),
            max_frame_len: config.mtu + ETHERNET_HEADER_LEN,
            transmitted: 0,
        };
        let mac = HardwareAddress::Ethernet(EthernetAddress(config.mac()));
        let mut iface_config = Config::new(mac);
        iface_config.random_seed = seed;
        let mut iface = Interface::new(iface_config, &mut device, now);
        let cidr = IpCidr::new(config.address.into(), config.prefix_len);
        let mut pushed = Ok(());
        iface.update_ip_addrs(|addrs| pushed = addrs.push(cidr).map_err(|_| ()));
        pushed.map_err(|()| EndpointError::Config("cannot add the IP address"))?;
        if let Some(gateway) = config.gateway {
            iface
                .routes_mut()
                .add_default_ipv4_route(gateway)
                .map_err(|_| EndpointError::Config("cannot add the default route"))?;
        }
        let span = u64::from(EPHEMERAL.end() - EPHEMERAL.start()) + 1;
        let next_port = EPHEMERAL.start() + u16::try_from(seed % span).unwrap_or(0);
        Ok(Self {
            config,
            iface,
            device,
            sockets: SocketSet::new(Vec::new()),
            listeners: Vec::new(),
            orphans: Vec::new(),
            next_port,
            neighbours: HashMap::new(),
            counters: EndpointCounters::default(),
        })
    }

    /// The endpoint's settings.
    pub fn config(&self) -> &EndpointConfig {
        &self.config
    }

    /// The endpoint's counters.
    pub fn counters(&self) -> EndpointCounters {
        EndpointCounters {
            tx_frames: self.device.transmitted,
            ..self.counters
        }
    }

    /// Whether another frame fits in the receive queue.
    pub fn can_receive(&self) -> bool {
        self.device.rx.len() < RX_QUEUE_CAP
    }

    /// Whether received frames still wait for [`EndpointCore::poll`].
    pub fn has_pending_input(&self) -> bool {
        !self.device.rx.is_empty()
    }

    /// Queues a frame from the switch. A frame that does not fit is dropped
    /// (returns `false`), as a NIC drops with a full ring.
    pub fn receive_frame(&mut self, frame: Vec<u8>) -> bool {
        if !self.can_receive() {
            self.counters.rx_dropped_queue_full += 1;
            return false;
        }
        self.counters.rx_frames += 1;
        self.device.rx.push_back(frame);
        true
    }

    /// Takes the next frame the endpoint wants to send.
    pub fn transmit_frame(&mut self) -> Option<Vec<u8>> {
        self.device.tx.pop_front()
    }

    /// Returns a frame buffer from [`EndpointCore::transmit_frame`] for reuse.
    pub fn recycle(&mut self, mut buffer: Vec<u8>) {
        if self.device.pool.len() < POOL_CAP {
            buffer.clear();
            self.device.pool.push(buffer);
        }
    }

    /// Processes queued frames and timers and produces outgoing frames.
    /// Returns whether any socket may have changed state.
    ///
    /// smoltcp 0.12 has panicking paths a peer can reach (sequence-number
    /// arithmetic on unexpected segments). A panic is caught here: every
    /// connection is reset (their streams see the end), listeners and the
    /// endpoint keep working, and `panics_recovered` counts it.
    pub fn poll(&mut self, now: Instant) -> bool {
        let attempt =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.poll_inner(now)));
        attempt.unwrap_or_else(|_| {
            tracing::error!("TCP/IP stack panicked; resetting every connection");
            self.counters.panics_recovered += 1;
            self.device.rx.clear();
            for (_, socket) in self.sockets.iter_mut() {
                match tcp::Socket::downcast_mut(socket) {
                    Some(tcp) if tcp.state() != tcp::State::Listen => tcp.abort(),
                    _ => {}
                }
            }
            true
        })
    }

    fn poll_inner(&mut self, now: Instant) -> bool {
        let mut changed = false;
        while let Some(front) = self.device.rx.front() {
            if self.device.tx.len() >= TX_QUEUE_CAP {
                break;
            }
            match screen_syn(front, self.config.address, &self.listeners, &self.sockets) {
                SynScreen::Pass => {}
                SynScreen::Drop(why) => {
                    tracing::trace!(why, "SYN dropped");
                    self.device.rx.pop_front();
                    self.counters.syn_dropped += 1;
                    continue;
                }
                SynScreen::Replace(stale) => {
                    tracing::debug!("peer reopened a connection it lost; resetting ours");
                    self.sockets.get_mut::<tcp::Socket>(stale).abort();
                    self.counters.connections_replaced += 1;
                }
            }
            if let Some((ip, mac)) = self.unprimed_sender(front, now) {
                self.prime_neighbour(ip, mac, now);
            }
            match self
                .iface
                .poll_ingress_single(now, &mut self.device, &mut self.sockets)
            {
                PollIngressSingleResult::None => break,
                PollIngressSingleResult::PacketProcessed => {}
                PollIngressSingleResult::SocketStateChanged => {
                    changed = true;
                    // A SYN may have taken a listening socket: replace it
                    // before the next frame, which may be another SYN.
                    self.service_listeners();
                }
            }
        }
        for _ in 0..MAX_POLL_ROUNDS {
            let before = self.device.transmitted;
            let result = self
                .iface
                .poll_egress(now, &mut self.device, &mut self.sockets);
            changed |= result == PollResult::SocketStateChanged;
            if self.device.transmitted == before || self.device.tx.len() >= TX_QUEUE_CAP {
                break;
            }
        }
        self.service_listeners();
        self.reap_orphans(now);
        changed
    }

    /// The IPv4 sender of `frame` if it is a peer on our subnet whose MAC
    /// smoltcp may not know (new, changed, or not refreshed lately).
    fn unprimed_sender(&self, frame: &[u8], now: Instant) -> Option<(Ipv4Addr, MacAddr)> {
        let eth = EthernetFrame::new_checked(frame).ok()?;
        if eth.ethertype() != EthernetProtocol::Ipv4 || eth.dst_addr().0 != self.config.mac() {
            return None;
        }
        let src_mac = eth.src_addr();
        let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
        let src = ip.src_addr();
        let subnet = Ipv4Cidr::new(self.config.address, self.config.prefix_len);
        let usable = src_mac.is_unicast() && src != self.config.address && !src.is_broadcast();
        if !usable || !subnet.contains_addr(&src) || src == subnet.broadcast()? {
            return None;
        }
        match self.neighbours.get(&src) {
            Some(&(mac, at)) if mac == src_mac.0 && now < at + NEIGHBOUR_REFRESH => None,
            _ => Some((src, src_mac.0)),
        }
    }

    /// Tells smoltcp a peer's MAC by feeding it that peer's ARP request
    /// (its reply is discarded). Without this, smoltcp answers the first
    /// IP packet of a peer it has no ARP entry for (a guest revived with
    /// our MAC still cached) with an ARP request and drops its own answer:
    /// the first ping is lost and a stale connection's RST comes only
    /// after the guest retransmits.
    fn prime_neighbour(&mut self, ip: Ipv4Addr, mac: MacAddr, now: Instant) {
        if self.neighbours.len() >= NEIGHBOURS_CAP {
            self.neighbours.clear();
        }
        self.neighbours.insert(ip, (mac, now));
        self.counters.neighbours_primed += 1;
        let arp = ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Request,
            source_hardware_addr: EthernetAddress(mac),
            source_protocol_addr: ip,
            target_hardware_addr: EthernetAddress([0; 6]),
            target_protocol_addr: self.config.address,
        };
        let mut frame = vec![0u8; ETHERNET_HEADER_LEN + arp.buffer_len()];
        let eth = EthernetRepr {
            src_addr: EthernetAddress(mac),
            dst_addr: EthernetAddress(self.config.mac()),
            ethertype: EthernetProtocol::Arp,
        };
        eth.emit(&mut EthernetFrame::new_unchecked(&mut frame));
        arp.emit(&mut ArpPacket::new_unchecked(
            &mut frame[ETHERNET_HEADER_LEN..],
        ));
        let queued = self.device.tx.len();
        self.device.rx.push_front(frame);
        self.iface
            .poll_ingress_single(now, &mut self.device, &mut self.sockets);
        if self.device.tx.len() > queued {
            if let Some(reply) = self.device.tx.pop_back() {
                self.recycle(reply);
            }
        }
    }

    /// How long the caller may wait before the next [`EndpointCore::poll`]
    /// if no frame arrives and no socket is used; `None` means forever.
    pub fn poll_delay(&mut self, now: Instant) -> Option<Duration> {
        let iface = self.iface.poll_delay(now, &self.sockets);
        let orphans = self.orphans.iter().map(|o| {
            if o.aborted_reaps.is_some() || o.deadline <= now {
                Duration::ZERO
            } else {
                o.deadline - now
            }
        });
        iface.into_iter().chain(orphans).min()
    }

    /// Starts listening on a TCP port of the endpoint's address.
    pub fn listen(&mut self, port: u16) -> Result<ListenerId, EndpointError> {
        if port == 0 {
            return Err(EndpointError::InvalidEndpoint(self.config.address, 0));
        }
        if self.listeners.iter().flatten().any(|l| l.port == port) {
            return Err(EndpointError::PortInUse(port));
        }
        let id = ListenerId(self.listeners.len());
        self.listeners.push(Some(Listener {
            port,
            waiting: Vec::new(),
            ready: VecDeque::new(),
        }));
        self.service_listeners();
        Ok(id)
    }

    /// Stops a listener; connections not yet accepted are reset.
    pub fn unlisten(&mut self, id: ListenerId) {
        let Some(listener) = self.listeners.get_mut(id.0).and_then(Option::take) else {
            return;
        };
        for handle in listener.waiting.into_iter().chain(listener.ready) {
            self.sockets.get_mut::<tcp::Socket>(handle).abort();
            self.orphans.push(Orphan {
                handle,
                deadline: Instant::ZERO,
                aborted_reaps: Some(0),
            });
        }
    }

    /// Takes an established connection from a listener, if one is waiting.
    pub fn accept(&mut self, id: ListenerId) -> Option<SocketHandle> {
        let listener = self.listeners.get_mut(id.0)?.as_mut()?;
        let handle = listener.ready.pop_front()?;
        self.service_listeners();
        Some(handle)
    }

    /// Starts connecting to `remote:port` from a free ephemeral port. Poll,
    /// then watch the socket's state: ESTABLISHED means connected, CLOSED
    /// means refused.
    pub fn connect(&mut self, remote: Ipv4Addr, port: u16) -> Result<SocketHandle, EndpointError> {
        if port == 0 || remote.is_unspecified() || remote.is_broadcast() || remote.is_multicast() {
            return Err(EndpointError::InvalidEndpoint(remote, port));
        }
        let local_port = self.free_port()?;
        let handle = self.new_socket()?;
        let socket = self.sockets.get_mut::<tcp::Socket>(handle);
        let remote_endpoint = IpEndpoint::new(remote.into(), port);
        if socket
            .connect(self.iface.context(), remote_endpoint, local_port)
            .is_err()
        {
            self.sockets.remove(handle);
            return Err(EndpointError::InvalidEndpoint(remote, port));
        }
        Ok(handle)
    }

    /// The TCP socket behind a handle from `accept` or `connect`.
    ///
    /// # Panics
    /// If the handle was released; handles are owned by one stream each.
    pub fn socket(&mut self, handle: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(handle)
    }

    /// Gives up a socket: it is closed gracefully (pending data still goes
    /// out) and removed once closed, or reset after [`ORPHAN_LINGER`].
    pub fn release(&mut self, handle: SocketHandle, now: Instant) {
        let socket = self.sockets.get_mut::<tcp::Socket>(handle);
        match socket.state() {
            tcp::State::Closed | tcp::State::TimeWait | tcp::State::Listen => {
                self.sockets.remove(handle);
            }
            _ => {
                socket.close();
                self.orphans.push(Orphan {
                    handle,
                    deadline: now + ORPHAN_LINGER,
                    aborted_reaps: None,
                });
            }
        }
    }

    /// Resets every connection and stops every listener's sockets (used at
    /// shutdown; waiting streams are woken and see the connection closed).
    pub fn abort_all(&mut self) {
        for (_, socket) in self.sockets.iter_mut() {
            if let Some(tcp) = tcp::Socket::downcast_mut(socket) {
                tcp.abort();
            }
        }
    }

    /// The connections open or opening now: what a peer snapshotted at
    /// this moment holds, for [`EndpointCore::reset_stale`] after it is
    /// revived against another endpoint.
    pub fn connections(&self) -> Vec<TcpPeer> {
        self.sockets
            .iter()
            .filter_map(|(_, s)| tcp::Socket::downcast(s))
            .filter(|s| {
                !matches!(
                    s.state(),
                    tcp::State::Closed | tcp::State::Listen | tcp::State::TimeWait
                )
            })
            .filter_map(|s| {
                let local = s.local_endpoint()?;
                let remote = s.remote_endpoint()?;
                let smoltcp::wire::IpAddress::Ipv4(ip) = remote.addr;
                Some(TcpPeer {
                    local_port: local.port,
                    remote: std::net::SocketAddrV4::new(ip, remote.port),
                })
            })
            .collect()
    }

    /// Makes the peer at `peer_mac` drop `peer`, a connection of another
    /// endpoint that it still holds (it was revived from a snapshot): sends
    /// it a SYN on the 4-tuple, whose answer is reset (a challenge ACK, see
    /// `core/stale.rs`). Returns `false` when the transmit queue is
    /// full or this endpoint has the connection itself.
    pub fn reset_stale(&mut self, peer: TcpPeer, peer_mac: MacAddr) -> bool {
        if self.device.tx.len() >= TX_QUEUE_CAP || self.connections().contains(&peer) {
            return false;
        }
        let seq = u32::from(peer.local_port) << 16 | u32::from(peer.remote.port());
        let local = (self.config.address, self.config.mac());
        self.device
            .tx
            .push_back(stale::syn_frame(local, peer, peer_mac, seq));
        self.device.transmitted += 1;
        true
    }

    /// Number of TCP sockets in use, listening ones included.
    pub fn socket_count(&self) -> usize {
        self.sockets.iter().count()
    }

    fn new_socket(&mut self) -> Result<SocketHandle, EndpointError> {
        if self.socket_count() >= self.config.max_sockets {
            return Err(EndpointError::TooManySockets(self.config.max_sockets));
        }
        let rx = tcp::SocketBuffer::new(vec![0; self.config.tcp_rx_buffer]);
        let tx = tcp::SocketBuffer::new(vec![0; self.config.tcp_tx_buffer]);
        let mut socket = tcp::Socket::new(rx, tx);
        // Like TCP_NODELAY: request/response protocols (SMB, SSH) must not
        // wait for Nagle plus the peer's delayed ACK.
        socket.set_nagle_enabled(false);
        // Probes a peer's zero window; see KEEP_ALIVE.
        socket.set_keep_alive(Some(KEEP_ALIVE));
        Ok(self.sockets.add(socket))
    }

    fn port_in_use(&self, port: u16) -> bool {
        self.sockets
            .iter()
            .filter_map(|(_, s)| tcp::Socket::downcast(s))
            .any(|s| {
                s.local_endpoint().is_some_and(|e| e.port == port)
                    || s.listen_endpoint().port == port
            })
    }

    fn free_port(&mut self) -> Result<u16, EndpointError> {
        for _ in EPHEMERAL {
            let port = self.next_port;
            self.next_port = if port == *EPHEMERAL.end() {
                *EPHEMERAL.start()
            } else {
                port + 1
            };
            if !self.port_in_use(port) {
                return Ok(port);
            }
        }
        Err(EndpointError::NoFreePort)
    }

    /// Moves established connections to the ready queues and keeps every
    /// free backlog slot listening, so a burst of SYNs in one poll finds
    /// sockets for all of them.
    fn service_listeners(&mut self) {
        for index in 0..self.listeners.len() {
            let Some(listener) = self.listeners[index].as_mut() else {
                continue;
            };
            let mut closed = Vec::new();
            let sockets = &mut self.sockets;
            listener
                .waiting
                .retain(|&handle| match sockets.get::<tcp::Socket>(handle).state() {
                    tcp::State::Listen | tcp::State::SynReceived => true,
                    tcp::State::Closed => {
                        closed.push(handle);
                        false
                    }
                    _ => {
                        listener.ready.push_back(handle);
                        false
                    }
                });
            for handle in closed {
                self.sockets.remove(handle);
            }
            let port = listener.port;
            let mut missing = self
                .config
                .backlog
                .saturating_sub(listener.waiting.len() + listener.ready.len());
            let mut added = Vec::new();
            while missing > 0 {
                let Ok(handle) = self.new_socket() else {
                    break;
                };
                // Only fails for port 0 or an open socket, both excluded.
                let _ = self.sockets.get_mut::<tcp::Socket>(handle).listen(port);
                added.push(handle);
                missing -= 1;
            }
            if let Some(listener) = self.listeners[index].as_mut() {
                listener.waiting.extend(added);
            }
        }
    }

    fn reap_orphans(&mut self, now: Instant) {
        let sockets = &mut self.sockets;
        let reset = &mut self.counters.orphans_reset;
        self.orphans.retain_mut(|orphan| {
            let socket = sockets.get_mut::<tcp::Socket>(orphan.handle);
            let done = match orphan.aborted_reaps.as_mut() {
                Some(reaps) => {
                    *reaps += 1;
                    *reaps > 1
                }
                None => matches!(socket.state(), tcp::State::Closed | tcp::State::TimeWait),
            };
            if done {
                sockets.remove(orphan.handle);
                return false;
            }
            if orphan.aborted_reaps.is_none() && now >= orphan.deadline {
                tracing::debug!("resetting a connection that did not close in time");
                socket.abort();
                orphan.aborted_reaps = Some(0);
                *reset += 1;
            }
            true
        });
    }
}

#[cfg(test)]
mod tests;
