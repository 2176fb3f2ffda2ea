//! Resetting connections a peer holds from before a snapshot of it.
//!
//! A guest revived from a snapshot still has TCP connections to the
//! endpoint that was there when the snapshot was taken. The fresh endpoint
//! answers their next segment with a RST, but the request riding on that
//! segment is lost to the guest's client (Linux's cifs client fails it
//! with EAGAIN). [`syn_frame`] lets the endpoint make the guest drop such
//! a connection at once, before its clients use it: a SYN on the
//! connection's 4-tuple draws a challenge ACK (RFC 5961 4.2; Linux, and
//! RFC 793 for an in-window SYN, answer so), that ACK matches no socket of
//! the fresh endpoint, and smoltcp answers it with a RST whose sequence
//! number is the ACK's acknowledgement number: exactly what the guest
//! expects, so it accepts the reset. A guest that no longer has the
//! connection answers the SYN with a RST (ignored) or, if it listens on
//! the port, a SYN-ACK that is reset the same way.

use std::net::{Ipv4Addr, SocketAddrV4};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpProtocol, Ipv4Packet,
    Ipv4Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
};

use crate::switch::{MacAddr, ETHERNET_HEADER_LEN};

/// A TCP connection of the endpoint, by its 4-tuple (the endpoint's own
/// address being the fourth).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TcpPeer {
    /// The endpoint's port.
    pub local_port: u16,
    /// The peer's address and port.
    pub remote: SocketAddrV4,
}

/// The SYN that makes `peer_mac`/`peer` reset the connection to
/// `local`:`peer.local_port` (see the module docs).
pub(super) fn syn_frame(
    local: (Ipv4Addr, MacAddr),
    peer: TcpPeer,
    peer_mac: MacAddr,
    seq: u32,
) -> Vec<u8> {
    let tcp = TcpRepr {
        src_port: peer.local_port,
        dst_port: peer.remote.port(),
        control: TcpControl::Syn,
        // Any value: the peer answers a SYN on an open connection whatever
        // its sequence number.
        seq_number: TcpSeqNumber(i32::from_ne_bytes(seq.to_ne_bytes())),
        ack_number: None,
        window_len: 1024,
        window_scale: None,
        max_seg_size: None,
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: &[],
    };
    let ip = Ipv4Repr {
        src_addr: local.0,
        dst_addr: *peer.remote.ip(),
        next_header: IpProtocol::Tcp,
        payload_len: tcp.buffer_len(),
        hop_limit: 64,
    };
    let eth = EthernetRepr {
        src_addr: EthernetAddress(local.1),
        dst_addr: EthernetAddress(peer_mac),
        ethertype: EthernetProtocol::Ipv4,
    };
    let mut frame = vec![0u8; ETHERNET_HEADER_LEN + ip.buffer_len() + tcp.buffer_len()];
    let caps = ChecksumCapabilities::default();
    eth.emit(&mut EthernetFrame::new_unchecked(&mut frame));
    let ip_start = ETHERNET_HEADER_LEN;
    let tcp_start = ip_start + ip.buffer_len();
    ip.emit(
        &mut Ipv4Packet::new_unchecked(&mut frame[ip_start..tcp_start]),
        &caps,
    );
    tcp.emit(
        &mut TcpPacket::new_unchecked(&mut frame[tcp_start..]),
        &local.0.into(),
        &(*peer.remote.ip()).into(),
        &caps,
    );
    frame
}
