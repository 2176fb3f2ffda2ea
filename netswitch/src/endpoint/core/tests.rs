//! Unit tests of the sans-IO endpoint core, driven with hand-made frames
//! and a simulated clock.

use super::*;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetRepr, Icmpv4Packet, Icmpv4Repr, IpProtocol, Ipv4Repr,
    TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
};

const GUEST_MAC: MacAddr = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const GUEST_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 1);
const HOST_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 2);
const HOST_MAC: MacAddr = [0x02, 0x00, 192, 168, 0, 2];

fn core_with(config: EndpointConfig) -> EndpointCore {
    EndpointCore::new(config, Instant::ZERO, 42).unwrap()
}

fn core() -> EndpointCore {
    core_with(EndpointConfig::default())
}

fn ethernet(dst: MacAddr, ethertype: EthernetProtocol, payload_len: usize) -> Vec<u8> {
    let mut buffer = vec![0u8; ETHERNET_HEADER_LEN + payload_len];
    let repr = EthernetRepr {
        src_addr: EthernetAddress(GUEST_MAC),
        dst_addr: EthernetAddress(dst),
        ethertype,
    };
    repr.emit(&mut EthernetFrame::new_unchecked(&mut buffer));
    buffer
}

fn arp_request(target: Ipv4Addr) -> Vec<u8> {
    let repr = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: EthernetAddress(GUEST_MAC),
        source_protocol_addr: GUEST_IP,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: target,
    };
    let mut frame = ethernet([0xff; 6], EthernetProtocol::Arp, repr.buffer_len());
    repr.emit(&mut ArpPacket::new_unchecked(
        &mut frame[ETHERNET_HEADER_LEN..],
    ));
    frame
}

fn ipv4_frame(protocol: IpProtocol, payload_len: usize) -> Vec<u8> {
    let repr = Ipv4Repr {
        src_addr: GUEST_IP,
        dst_addr: HOST_IP,
        next_header: protocol,
        payload_len,
        hop_limit: 64,
    };
    let mut frame = ethernet(HOST_MAC, EthernetProtocol::Ipv4, 20 + payload_len);
    repr.emit(
        &mut Ipv4Packet::new_unchecked(&mut frame[ETHERNET_HEADER_LEN..]),
        &ChecksumCapabilities::default(),
    );
    frame
}

fn echo_request(data: &[u8]) -> Vec<u8> {
    let repr = Icmpv4Repr::EchoRequest {
        ident: 7,
        seq_no: 1,
        data,
    };
    let mut frame = ipv4_frame(IpProtocol::Icmp, repr.buffer_len());
    repr.emit(
        &mut Icmpv4Packet::new_unchecked(&mut frame[ETHERNET_HEADER_LEN + 20..]),
        &ChecksumCapabilities::default(),
    );
    frame
}

fn tcp_segment(dst_port: u16, control: TcpControl, seq: i32, ack: Option<i32>) -> Vec<u8> {
    tcp_segment_from(40000, dst_port, control, seq, ack)
}

fn tcp_segment_from(
    src_port: u16,
    dst_port: u16,
    control: TcpControl,
    seq: i32,
    ack: Option<i32>,
) -> Vec<u8> {
    let repr = TcpRepr {
        src_port,
        dst_port,
        control,
        seq_number: TcpSeqNumber(seq),
        ack_number: ack.map(TcpSeqNumber),
        window_len: 64000,
        window_scale: None,
        max_seg_size: (control == TcpControl::Syn).then_some(1460),
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: b"stale",
    };
    let mut frame = ipv4_frame(IpProtocol::Tcp, repr.buffer_len());
    repr.emit(
        &mut TcpPacket::new_unchecked(&mut frame[ETHERNET_HEADER_LEN + 20..]),
        &GUEST_IP.into(),
        &HOST_IP.into(),
        &ChecksumCapabilities::default(),
    );
    frame
}

/// Feeds one frame, polls at `now` and returns what the core sent.
fn exchange(core: &mut EndpointCore, now: Instant, frame: Vec<u8>) -> Vec<Vec<u8>> {
    assert!(core.receive_frame(frame));
    core.poll(now);
    std::iter::from_fn(|| core.transmit_frame()).collect()
}

fn parse_tcp(frame: &[u8]) -> TcpRepr<'_> {
    let ip = Ipv4Packet::new_checked(&frame[ETHERNET_HEADER_LEN..]).unwrap();
    let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
    TcpRepr::parse(
        &tcp,
        &ip.src_addr().into(),
        &ip.dst_addr().into(),
        &ChecksumCapabilities::default(),
    )
    .unwrap()
}

#[test]
fn answers_arp_for_its_address_with_the_derived_mac() {
    let mut core = core();
    let out = exchange(&mut core, Instant::ZERO, arp_request(HOST_IP));
    assert_eq!(out.len(), 1);
    let reply = ArpRepr::parse(&ArpPacket::new_checked(&out[0][14..]).unwrap()).unwrap();
    let ArpRepr::EthernetIpv4 {
        operation,
        source_hardware_addr,
        source_protocol_addr,
        target_hardware_addr,
        ..
    } = reply
    else {
        panic!("not an Ethernet/IPv4 ARP reply");
    };
    assert_eq!(operation, ArpOperation::Reply);
    assert_eq!(source_hardware_addr.0, HOST_MAC);
    assert_eq!(source_protocol_addr, HOST_IP);
    assert_eq!(target_hardware_addr.0, GUEST_MAC);
    assert_eq!(&out[0][0..6], &GUEST_MAC);
}

#[test]
fn ignores_arp_for_other_addresses() {
    let mut core = core();
    let out = exchange(
        &mut core,
        Instant::ZERO,
        arp_request(Ipv4Addr::new(192, 168, 0, 9)),
    );
    assert!(out.is_empty());
}

#[test]
fn mac_is_the_same_in_every_run_and_seed() {
    let config = EndpointConfig::default();
    assert_eq!(config.mac(), HOST_MAC);
    for seed in [1, 2, 99] {
        let mut core = EndpointCore::new(config.clone(), Instant::ZERO, seed).unwrap();
        let out = exchange(&mut core, Instant::ZERO, arp_request(HOST_IP));
        assert_eq!(&out[0][6..12], &HOST_MAC);
    }
}

#[test]
fn answers_icmp_echo_up_to_a_full_mtu_packet() {
    let mut core = core();
    exchange(&mut core, Instant::ZERO, arp_request(HOST_IP));
    // 1472 bytes of data: a 1500-byte IP packet in a 1514-byte frame.
    let data: Vec<u8> = (0..1472u16).map(|i| i.to_le_bytes()[0]).collect();
    let request = echo_request(&data);
    assert_eq!(request.len(), 1514);
    let out = exchange(&mut core, Instant::from_millis(1), request);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].len(), 1514, "reply must not be cut");
    let ip = Ipv4Packet::new_checked(&out[0][ETHERNET_HEADER_LEN..]).unwrap();
    assert_eq!(ip.dst_addr(), GUEST_IP);
    let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
    let repr = Icmpv4Repr::parse(&icmp, &ChecksumCapabilities::default()).unwrap();
    assert_eq!(
        repr,
        Icmpv4Repr::EchoReply {
            ident: 7,
            seq_no: 1,
            data: &data
        }
    );
}

#[test]
fn segment_of_unknown_connection_to_listening_port_gets_rst_at_once() {
    // A guest revived from a snapshot still holds a connection to :445 that
    // this (new) endpoint never saw: its next segment must be reset.
    let mut core = core();
    core.listen(445).unwrap();
    exchange(&mut core, Instant::ZERO, arp_request(HOST_IP));
    let stale = tcp_segment(445, TcpControl::Psh, 1000, Some(5000));
    let out = exchange(&mut core, Instant::from_millis(1), stale);
    assert_eq!(out.len(), 1);
    let rst = parse_tcp(&out[0]);
    assert_eq!(rst.control, TcpControl::Rst);
    assert_eq!(
        rst.seq_number,
        TcpSeqNumber(5000),
        "RST must carry the peer's ACK"
    );
    assert_eq!((rst.src_port, rst.dst_port), (445, 40000));
}

#[test]
fn syn_to_closed_port_gets_rst() {
    let mut core = core();
    exchange(&mut core, Instant::ZERO, arp_request(HOST_IP));
    let syn = tcp_segment(23, TcpControl::Syn, 1000, None);
    let out = exchange(&mut core, Instant::from_millis(1), syn);
    let rst = parse_tcp(&out[0]);
    assert_eq!(rst.control, TcpControl::Rst);
    assert_eq!(rst.ack_number, Some(TcpSeqNumber(1001 + 5)));
}

#[test]
fn syn_ack_announces_mss_1460_for_mtu_1500() {
    let mut core = core();
    core.listen(22).unwrap();
    exchange(&mut core, Instant::ZERO, arp_request(HOST_IP));
    let syn = tcp_segment(22, TcpControl::Syn, 1000, None);
    let out = exchange(&mut core, Instant::from_millis(1), syn);
    let syn_ack = parse_tcp(&out[0]);
    assert_eq!(syn_ack.control, TcpControl::Syn);
    assert_eq!(syn_ack.max_seg_size, Some(1460));
}

#[test]
fn syn_beyond_a_full_backlog_is_dropped_not_reset() {
    let mut core = core_with(EndpointConfig {
        backlog: 1,
        ..EndpointConfig::default()
    });
    core.listen(22).unwrap();
    exchange(&mut core, Instant::ZERO, arp_request(HOST_IP));
    let first = exchange(
        &mut core,
        Instant::from_millis(1),
        tcp_segment(22, TcpControl::Syn, 1, None),
    );
    assert_eq!(parse_tcp(&first[0]).control, TcpControl::Syn);
    // Another client port, so it is a second connection.
    let second = tcp_segment_from(40001, 22, TcpControl::Syn, 7000, None);
    let out = exchange(&mut core, Instant::from_millis(2), second);
    assert!(out.is_empty(), "expected silence, got {} frames", out.len());
}

#[test]
fn socket_count_stays_bounded_under_a_syn_flood() {
    let mut core = core_with(EndpointConfig {
        backlog: 4,
        ..EndpointConfig::default()
    });
    core.listen(22).unwrap();
    exchange(&mut core, Instant::ZERO, arp_request(HOST_IP));
    for i in 0..200u16 {
        let syn = tcp_segment_from(1000 + i, 22, TcpControl::Syn, i32::from(i), None);
        exchange(&mut core, Instant::from_millis(i32::from(i)), syn);
    }
    assert_eq!(core.socket_count(), 4);
}

#[test]
fn garbage_frames_never_panic() {
    let mut core = core();
    core.listen(22).unwrap();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for i in 0..5000i64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = usize::try_from(x % 1514).unwrap();
        let mut frame: Vec<u8> = (0..len).map(|j| (x >> (j % 57)).to_le_bytes()[0]).collect();
        if len >= 14 && i % 2 == 0 {
            // Make half of them look like IPv4 to us so deeper layers run.
            frame[..6].copy_from_slice(&HOST_MAC);
            frame[12..14].copy_from_slice(&[0x08, 0x00]);
        }
        exchange(&mut core, Instant::from_millis(i), frame);
    }
}

#[test]
fn bad_settings_are_refused() {
    let multicast_mac = EndpointConfig {
        mac: Some([0x01, 0, 0, 0, 0, 1]),
        ..EndpointConfig::default()
    };
    assert!(EndpointCore::new(multicast_mac, Instant::ZERO, 1).is_err());
    let tiny_mtu = EndpointConfig {
        mtu: 20,
        ..EndpointConfig::default()
    };
    assert!(EndpointCore::new(tiny_mtu, Instant::ZERO, 1).is_err());
}

/// Two cores wired back to back through a lossy link, clocked by the test.
struct Link {
    a: EndpointCore,
    b: EndpointCore,
    now: Instant,
    rng: u64,
    loss_percent: u64,
}

impl Link {
    fn new(loss_percent: u64, seed: u64) -> Self {
        Self::with_buffers(loss_percent, seed, EndpointConfig::default().tcp_rx_buffer)
    }

    fn with_buffers(loss_percent: u64, seed: u64, buffer: usize) -> Self {
        let a_config = EndpointConfig {
            tcp_rx_buffer: buffer,
            tcp_tx_buffer: buffer,
            ..EndpointConfig::default()
        };
        let b_config = EndpointConfig {
            address: GUEST_IP,
            ..a_config.clone()
        };
        Self {
            a: EndpointCore::new(a_config, Instant::ZERO, seed).unwrap(),
            b: EndpointCore::new(b_config, Instant::ZERO, seed + 1).unwrap(),
            now: Instant::ZERO,
            rng: seed | 1,
            loss_percent,
        }
    }

    fn lost(&mut self) -> bool {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng % 100 < self.loss_percent
    }

    /// One millisecond of simulated time.
    fn tick(&mut self) {
        self.now += Duration::from_millis(1);
        self.a.poll(self.now);
        self.b.poll(self.now);
        while let Some(frame) = self.a.transmit_frame() {
            if !self.lost() {
                self.b.receive_frame(frame);
            }
        }
        while let Some(frame) = self.b.transmit_frame() {
            if !self.lost() {
                self.a.receive_frame(frame);
            }
        }
    }
}

/// Sends 512 KiB from b to a over `link`, a reading every `read_every`
/// ticks; returns the simulated time taken.
fn lossy_transfer(mut link: Link, read_every: u32) -> Duration {
    let listener = link.a.listen(9000).unwrap();
    let client = link.b.connect(HOST_IP, 9000).unwrap();
    let data: Vec<u8> = (0..512 * 1024u32)
        .map(|i| (i * 7 + i / 251).to_le_bytes()[0])
        .collect();
    let (mut sent, mut received) = (0, Vec::new());
    let mut server = None;
    for tick in 0..600_000u32 {
        link.tick();
        if server.is_none() {
            server = link.a.accept(listener);
        }
        let socket = link.b.socket(client);
        if socket.can_send() && sent < data.len() {
            sent += socket.send_slice(&data[sent..]).unwrap();
        }
        if let Some(handle) = server.filter(|_| tick % read_every == 0) {
            let socket = link.a.socket(handle);
            while socket.can_recv() {
                socket
                    .recv(|buf| {
                        received.extend_from_slice(buf);
                        (buf.len(), ())
                    })
                    .unwrap();
            }
        }
        if received.len() == data.len() {
            break;
        }
    }
    assert_eq!(
        received.len(),
        data.len(),
        "transfer incomplete at t={}",
        link.now
    );
    assert!(received == data, "data corrupted");
    link.now - Instant::ZERO
}

#[test]
fn transfer_survives_seeded_loss_under_a_simulated_clock() {
    lossy_transfer(Link::new(5, 7), 1);
}

#[test]
fn lost_window_update_after_zero_window_does_not_stall_the_sender() {
    // 4 KiB windows that a slow reader closes to zero, and 5 % loss that
    // sooner or later eats the ACK reopening one (PITFALLS Switch 2):
    // the sender must probe rather than wait forever.
    for seed in [3, 17, 40] {
        let took = lossy_transfer(Link::with_buffers(5, seed, 4096), 20);
        // About 12 s with probes (2.6 s would be loss-free); without them
        // the transfer never finishes.
        assert!(took < Duration::from_secs(60), "seed {seed}: took {took}");
    }
}

#[test]
fn dropped_stream_socket_closes_and_is_removed() {
    let mut link = Link::new(0, 3);
    let listener = link.a.listen(80).unwrap();
    let client = link.b.connect(HOST_IP, 80).unwrap();
    let mut server = None;
    for _ in 0..100 {
        link.tick();
        server = server.or_else(|| link.a.accept(listener));
    }
    let server = server.expect("connection accepted");
    let sockets_before = link.b.socket_count();
    link.b.release(client, link.now);
    link.a.release(server, link.now);
    for _ in 0..100 {
        link.tick();
    }
    assert_eq!(link.b.socket_count(), sockets_before - 1);
}

#[test]
fn orphan_that_never_closes_is_reset_after_the_linger_time() {
    let mut link = Link::new(0, 5);
    let listener = link.a.listen(80).unwrap();
    let client = link.b.connect(HOST_IP, 80).unwrap();
    let mut server = None;
    for _ in 0..100 {
        link.tick();
        server = server.or_else(|| link.a.accept(listener));
    }
    assert!(server.is_some());
    let before = link.b.socket_count();
    // The peer keeps its side open forever; ours must not linger forever.
    link.b.release(client, link.now);
    let deadline = link.now + ORPHAN_LINGER + Duration::from_secs(1);
    let mut steps = 0;
    while link.now < deadline {
        let delay = link
            .b
            .poll_delay(link.now)
            .unwrap_or(Duration::from_secs(1));
        link.now += delay.min(Duration::from_secs(1));
        link.tick();
        steps += 1;
        assert!(steps < 100_000);
    }
    assert_eq!(link.b.socket_count(), before - 1);
}

#[test]
fn first_ping_from_a_peer_never_arped_is_answered_at_once() {
    // A revived guest still has our MAC cached and does not ARP; the new
    // endpoint must answer its first ping anyway (PITFALLS Switch 1).
    let mut core = core();
    let out = exchange(&mut core, Instant::ZERO, echo_request(b"first"));
    assert_eq!(out.len(), 1, "expected only the echo reply");
    let ip = Ipv4Packet::new_checked(&out[0][ETHERNET_HEADER_LEN..]).unwrap();
    assert_eq!(ip.next_header(), IpProtocol::Icmp);
    assert_eq!(&out[0][0..6], &GUEST_MAC);
}

#[test]
fn stale_segment_from_a_peer_never_arped_is_reset_at_once() {
    let mut core = core();
    core.listen(445).unwrap();
    let stale = tcp_segment(445, TcpControl::Psh, 1000, Some(5000));
    let out = exchange(&mut core, Instant::ZERO, stale);
    assert_eq!(out.len(), 1);
    assert_eq!(parse_tcp(&out[0]).control, TcpControl::Rst);
}

#[test]
fn stale_segment_to_a_port_nobody_listens_on_is_reset_at_once() {
    // A revived guest's sshd answers on a connection the old endpoint had
    // opened from an ephemeral port: the new endpoint never had it.
    let mut core = core();
    let stale = tcp_segment_from(22, 50123, TcpControl::None, 7000, Some(9000));
    let out = exchange(&mut core, Instant::ZERO, stale);
    assert_eq!(out.len(), 1, "expected only the reset");
    let rst = parse_tcp(&out[0]);
    assert_eq!(rst.control, TcpControl::Rst);
    assert_eq!((rst.src_port, rst.dst_port), (50123, 22));
    assert_eq!(
        rst.seq_number,
        TcpSeqNumber(9000),
        "RST must carry the peer's ACK"
    );
}

#[test]
fn a_stale_connection_is_probed_with_a_syn_and_its_challenge_ack_reset() {
    let mut core = core();
    let peer = TcpPeer {
        local_port: 445,
        remote: std::net::SocketAddrV4::new(GUEST_IP, 40000),
    };
    assert!(core.reset_stale(peer, GUEST_MAC));
    let out: Vec<_> = std::iter::from_fn(|| core.transmit_frame()).collect();
    assert_eq!(out.len(), 1);
    assert_eq!(&out[0][0..6], &GUEST_MAC);
    let syn = parse_tcp(&out[0]);
    assert_eq!(syn.control, TcpControl::Syn);
    assert_eq!(syn.ack_number, None);
    assert_eq!((syn.src_port, syn.dst_port), (445, 40000));
    // The guest's challenge ACK: its own sequence, acknowledging what it
    // last received from the old endpoint.
    let challenge = tcp_segment_from(40000, 445, TcpControl::None, 3000, Some(77_000));
    let out = exchange(&mut core, Instant::from_millis(1), challenge);
    assert_eq!(out.len(), 1);
    let rst = parse_tcp(&out[0]);
    assert_eq!(rst.control, TcpControl::Rst);
    assert_eq!(rst.seq_number, TcpSeqNumber(77_000));
    assert!(core.connections().is_empty());
}

#[test]
fn connections_lists_open_ones_and_reset_stale_spares_them() {
    let mut core = core();
    core.listen(445).unwrap();
    exchange(&mut core, Instant::ZERO, arp_request(HOST_IP));
    let syn = tcp_segment(445, TcpControl::Syn, 1000, None);
    let out = exchange(&mut core, Instant::from_millis(1), syn);
    let synack = parse_tcp(&out[0]);
    let ack = tcp_segment(
        445,
        TcpControl::None,
        1001,
        Some(synack.seq_number.0.wrapping_add(1)),
    );
    exchange(&mut core, Instant::from_millis(2), ack);
    let peer = TcpPeer {
        local_port: 445,
        remote: std::net::SocketAddrV4::new(GUEST_IP, 40000),
    };
    assert_eq!(core.connections(), vec![peer]);
    assert!(
        !core.reset_stale(peer, GUEST_MAC),
        "an open connection is not stale"
    );
}

#[test]
fn every_endpoint_counter_is_reachable() {
    let mut link = Link::new(0, 11);
    // rx_frames, tx_frames, neighbours_primed: a connection.
    link.a.listen(80).unwrap();
    let client = link.b.connect(HOST_IP, 80).unwrap();
    for _ in 0..100 {
        link.tick();
    }
    // orphans_reset: a released connection the peer never closes.
    link.b.release(client, link.now);
    for _ in 0..40 {
        link.now += Duration::from_secs(1);
        link.tick();
    }
    // rx_dropped_queue_full: more frames than the queue holds.
    for _ in 0..=RX_QUEUE_CAP {
        link.a.receive_frame(vec![0; 60]);
    }
    // syn_dropped_backlog: a second SYN for a listener with backlog 1.
    let mut small = core_with(EndpointConfig {
        backlog: 1,
        ..EndpointConfig::default()
    });
    small.listen(22).unwrap();
    exchange(
        &mut small,
        Instant::ZERO,
        tcp_segment_from(1, 22, TcpControl::Syn, 1, None),
    );
    exchange(
        &mut small,
        Instant::ZERO,
        tcp_segment_from(2, 22, TcpControl::Syn, 1, None),
    );

    let (a, b) = (link.a.counters(), link.b.counters());
    let EndpointCounters {
        rx_frames,
        tx_frames,
        rx_dropped_queue_full,
        syn_dropped: _,
        connections_replaced: _,
        neighbours_primed,
        orphans_reset,
        panics_recovered: _,
    } = a;
    assert!(rx_frames > 0 && tx_frames > 0 && rx_dropped_queue_full > 0);
    assert!(neighbours_primed > 0 || b.neighbours_primed > 0);
    assert!(orphans_reset == 0 && b.orphans_reset == 1);
    assert_eq!(small.counters().syn_dropped, 1);
}

#[test]
fn retransmitted_syn_does_not_open_a_second_connection() {
    let mut core = core();
    core.listen(22).unwrap();
    let first = exchange(
        &mut core,
        Instant::ZERO,
        tcp_segment(22, TcpControl::Syn, 100, None),
    );
    assert_eq!(parse_tcp(&first[0]).control, TcpControl::Syn);
    let sockets = core.socket_count();
    let again = exchange(
        &mut core,
        Instant::from_millis(1),
        tcp_segment(22, TcpControl::Syn, 100, None),
    );
    assert!(
        again.is_empty(),
        "duplicate SYN must be left to the SYN-ACK timer"
    );
    assert_eq!(core.socket_count(), sockets);
    assert_eq!(core.counters().syn_dropped, 1);
}

#[test]
fn syn_reusing_an_open_connections_tuple_replaces_it() {
    let mut core = core();
    let listener = core.listen(22).unwrap();
    let syn_ack = exchange(
        &mut core,
        Instant::ZERO,
        tcp_segment(22, TcpControl::Syn, 100, None),
    );
    let isn = parse_tcp(&syn_ack[0]).seq_number;
    let ack = tcp_segment_from(40000, 22, TcpControl::None, 101, Some(isn.0 + 1));
    exchange(&mut core, Instant::from_millis(1), ack);
    let old = core.accept(listener).expect("established");
    // The peer restarts and reuses the same source port.
    let out = exchange(
        &mut core,
        Instant::from_millis(2),
        tcp_segment(22, TcpControl::Syn, 9000, None),
    );
    let replies: Vec<_> = out.iter().map(|f| parse_tcp(f)).collect();
    assert!(
        replies
            .iter()
            .any(|r| r.control == TcpControl::Syn && r.ack_number == Some(TcpSeqNumber(9001))),
        "new SYN must get a SYN-ACK: {replies:?}"
    );
    assert_eq!(core.socket(old).state(), tcp::State::Closed);
    assert_eq!(core.counters().connections_replaced, 1);
}

/// A data segment from the guest on the 40000 -> 22 connection.
fn data_segment(seq: i32, ack: i32, payload: &[u8]) -> Vec<u8> {
    let repr = TcpRepr {
        src_port: 40000,
        dst_port: 22,
        control: TcpControl::None,
        seq_number: TcpSeqNumber(seq),
        ack_number: Some(TcpSeqNumber(ack)),
        window_len: 64000,
        window_scale: None,
        max_seg_size: None,
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload,
    };
    let mut frame = ipv4_frame(IpProtocol::Tcp, repr.buffer_len());
    repr.emit(
        &mut TcpPacket::new_unchecked(&mut frame[ETHERNET_HEADER_LEN + 20..]),
        &GUEST_IP.into(),
        &HOST_IP.into(),
        &ChecksumCapabilities::default(),
    );
    frame
}

#[test]
fn peer_overrunning_the_advertised_window_cannot_crash_the_endpoint() {
    // smoltcp 0.12 panics (sequence-number underflow) when data arrives
    // past the window edge it last advertised but inside its buffer (the
    // app read since that ACK) and no ACK is due yet: a guest can do that
    // on purpose. The endpoint must survive it.
    let mut core = core();
    let listener = core.listen(22).unwrap();
    let syn_ack = exchange(
        &mut core,
        Instant::ZERO,
        tcp_segment(22, TcpControl::Syn, 99, None),
    );
    let isn = parse_tcp(&syn_ack[0]).seq_number.0;
    let ack = exchange(&mut core, Instant::ZERO, data_segment(100, isn + 1, &[]));
    assert!(ack.is_empty());
    let handle = core.accept(listener).expect("established");
    // Fill the buffer to 50 bytes short of full; the ACK advertises 50.
    let mut seq = 100;
    let fill_end = 100 + 65535 - 50;
    while seq < fill_end {
        let len = 1460.min(fill_end - seq);
        let payload = vec![7; usize::try_from(len).unwrap()];
        assert!(core.receive_frame(data_segment(seq, isn + 1, &payload)));
        seq += len;
    }
    core.poll(Instant::from_millis(1));
    core.poll(Instant::from_millis(50));
    let advertised: Vec<_> = std::iter::from_fn(|| core.transmit_frame())
        .map(|f| parse_tcp(&f).window_len)
        .collect();
    assert_eq!(advertised.last(), Some(&50));
    // The app reads 1000 bytes (no ACK yet), then 100 bytes arrive: 50 past
    // the advertised edge.
    let mut sink = [0u8; 1000];
    assert_eq!(core.socket(handle).recv_slice(&mut sink), Ok(1000));
    assert!(core.receive_frame(data_segment(seq, isn + 1, &[8; 100])));
    core.poll(Instant::from_millis(51));
    while core.transmit_frame().is_some() {}
    assert_eq!(
        core.counters().panics_recovered,
        1,
        "smoltcp no longer panics here?"
    );
    assert_eq!(
        core.socket(handle).state(),
        tcp::State::Closed,
        "connection reset"
    );
    // The endpoint still works: a new connection is answered.
    let syn = tcp_segment_from(40001, 22, TcpControl::Syn, 5000, None);
    let out = exchange(&mut core, Instant::from_millis(70), syn);
    assert!(out.iter().any(|f| parse_tcp(f).control == TcpControl::Syn));
}
