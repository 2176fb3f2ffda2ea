//! Screening of incoming SYNs before smoltcp sees them.

use std::net::Ipv4Addr;

use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::{tcp, AnySocket};
use smoltcp::wire::{
    EthernetFrame, EthernetProtocol, IpEndpoint, IpProtocol, Ipv4Packet, TcpPacket,
};

use super::Listener;

/// What to do with an incoming segment before smoltcp sees it.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum SynScreen {
    /// Not a SYN needing care: hand it to smoltcp.
    Pass,
    /// Drop a SYN silently; the peer retries it.
    Drop(&'static str),
    /// A SYN reusing the 4-tuple of a connection we consider open: the peer
    /// lost that connection (it restarted or was revived), so abort ours
    /// and let a listener take the SYN.
    Replace(SocketHandle),
}

/// smoltcp hands a SYN to the first socket that accepts it, and a LISTEN
/// socket accepts any SYN for its port: a retransmitted SYN could create a
/// second half-open connection with the same 4-tuple, and a SYN reusing an
/// old connection's 4-tuple could land on the old socket. A SYN for a
/// listener with no LISTEN socket left (backlog full) would be reset
/// instead of dropped. This screen settles all three before smoltcp runs.
pub(super) fn screen_syn(
    frame: &[u8],
    address: Ipv4Addr,
    listeners: &[Option<Listener>],
    sockets: &SocketSet<'static>,
) -> SynScreen {
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return SynScreen::Pass;
    };
    if eth.ethertype() != EthernetProtocol::Ipv4 {
        return SynScreen::Pass;
    }
    let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else {
        return SynScreen::Pass;
    };
    if ip.next_header() != IpProtocol::Tcp || ip.dst_addr() != address {
        return SynScreen::Pass;
    }
    let Ok(segment) = TcpPacket::new_checked(ip.payload()) else {
        return SynScreen::Pass;
    };
    if !segment.syn() || segment.ack() || segment.rst() {
        return SynScreen::Pass;
    }
    let remote = IpEndpoint::new(ip.src_addr().into(), segment.src_port());
    let same_tuple = sockets.iter().find_map(|(handle, socket)| {
        let socket = tcp::Socket::downcast(socket)?;
        let local = socket.local_endpoint()?;
        (local.port == segment.dst_port() && socket.remote_endpoint() == Some(remote))
            .then_some((handle, socket.state()))
    });
    match same_tuple {
        Some((_, tcp::State::SynReceived)) => return SynScreen::Drop("duplicate SYN"),
        Some((_, tcp::State::SynSent | tcp::State::Closed | tcp::State::Listen)) => {
            return SynScreen::Pass
        }
        Some((handle, _)) => return SynScreen::Replace(handle),
        None => {}
    }
    let backlog_full = listeners.iter().flatten().any(|listener| {
        listener.port == segment.dst_port()
            && !listener
                .waiting
                .iter()
                .any(|&h| sockets.get::<tcp::Socket>(h).state() == tcp::State::Listen)
    });
    if backlog_full {
        // Dropped, not reset: the client retries its SYN later, as with a
        // full backlog on any TCP stack.
        return SynScreen::Drop("listener backlog full");
    }
    SynScreen::Pass
}
