//! In-process L2 switch and a host endpoint built on smoltcp: the guests'
//! only network, touching nothing of the host's.
//!
//! # Parts
//!
//! - [`switch::SwitchCore`]: the sans-IO switching core (MAC learning with
//!   ageing, flooding, MTU policing, bounded per-port queues, counters).
//!   Time comes from the caller.
//! - [`Switch`] and [`Port`]: the thread-safe handles peers use. A port is
//!   what a guest NIC, the host endpoint or a test holds.
//! - [`endpoint::HostEndpoint`]: the host process as a peer (by default
//!   192.168.0.2/24), answering ARP and ICMP echo, with TCP listen and
//!   connect as tokio streams, and [`endpoint::HostEndpoint::wait_for_port`].
//!   Segments for connections it does not know are answered with RST at
//!   once, so a guest revived from a snapshot drops its old connections.
//! - [`pcap`]: capture of every frame the switch forwards
//!   ([`Switch::capture_to`]).
//!
//! # Plugging in a device on plain threads (virtio-net)
//!
//! A device thread sends guest TX frames with [`Port::send`] (never
//! blocks) and drains its queue with [`Port::try_recv`]. To sleep until
//! frames arrive it registers a notifier, called when the port's queue goes
//! from empty to non-empty; drain until `try_recv` gives `None` before
//! sleeping again. With an eventfd the notifier is
//! `move || { let _ = eventfd.write(1); }` and the device thread polls the
//! eventfd with its other events (queue kicks).
//!
//! Frames are plain Ethernet frames (no `virtio_net_hdr`; the device strips
//! and adds it), at most [`SwitchConfig::max_frame_len`] bytes (1514 for
//! MTU 1500): longer ones are dropped and counted, so the device must not
//! offer TSO/GSO/UFO features unless it segments itself, and should tell
//! the guest the MTU (`VIRTIO_NET_F_MTU`). Offering no checksum offload is
//! simplest: the host endpoint verifies and fills every checksum. If the
//! guest has no RX buffers, leave frames in the port's queue; it is bounded
//! and drops (counted) when full. The same with a channel:
//!
//! ```
//! use std::sync::{mpsc, Arc};
//! use std::time::Duration;
//! use netswitch::{Switch, SwitchConfig};
//!
//! let switch = Switch::new(SwitchConfig::default()).unwrap();
//! let guest_nic = Arc::new(switch.add_port());
//! let other = switch.add_port();
//!
//! let (wake, woken) = mpsc::sync_channel::<()>(1);
//! guest_nic.set_notifier(move || {
//!     let _ = wake.try_send(()); // only signal; never call into the switch
//! });
//!
//! let nic = guest_nic.clone();
//! let device_thread = std::thread::spawn(move || {
//!     woken.recv_timeout(Duration::from_secs(5)).unwrap();
//!     let mut frames = Vec::new();
//!     while let Some(frame) = nic.try_recv() {
//!         // Copy into the guest's RX descriptors here; if the guest has
//!         // no buffers, leave frames queued (the queue is bounded and
//!         // drops, counted, when full).
//!         frames.push(frame);
//!     }
//!     frames
//! });
//!
//! let mut frame = vec![0u8; 60];
//! frame[..6].copy_from_slice(&[0xff; 6]); // broadcast
//! frame[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
//! other.send(&frame);
//! assert_eq!(device_thread.join().unwrap(), vec![frame]);
//! assert_eq!(guest_nic.counters().tx_frames, 1);
//! ```
//!
//! # The host endpoint
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use netswitch::endpoint::{EndpointConfig, HostEndpoint};
//! use netswitch::{Switch, SwitchConfig};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! let switch = Switch::new(SwitchConfig::default())?;
//! let host = HostEndpoint::spawn(switch.add_port(), EndpointConfig::default())?;
//! let peer_config = EndpointConfig {
//!     address: "192.168.0.1".parse()?,
//!     ..EndpointConfig::default()
//! };
//! let peer = HostEndpoint::spawn(switch.add_port(), peer_config)?;
//!
//! let listener = host.listen(445)?;
//! let mut client = peer.connect("192.168.0.2".parse()?, 445).await?;
//! let mut server = listener.accept().await?;
//! client.write_all(b"hello").await?;
//! let mut got = [0u8; 5];
//! server.read_exact(&mut got).await?;
//! assert_eq!(&got, b"hello");
//! host.wait_for_port("192.168.0.1".parse()?, 9, std::time::Duration::from_millis(300))
//!     .await
//!     .unwrap_err(); // nothing listens there
//! # Ok(()) }
//! ```
//!
//! # Limitations
//!
//! - IPv4 only; no VLAN tags (a tagged full-size frame exceeds MTU + 14 and
//!   is dropped); no spanning tree (a loop between ports is not detected).
//! - Full queues drop frames (tail drop, counted); there is no blocking
//!   back-pressure towards the sender.
//! - The host endpoint speaks TCP only (plus ARP and ICMP echo replies);
//!   no UDP, no DHCP server, no IP fragment reassembly.
//! - A reset connection reads as end-of-file, like an orderly close; use
//!   [`endpoint::TcpStream::state`] to tell them apart.
//! - Streams work only while their [`endpoint::HostEndpoint`] lives.
//! - smoltcp 0.12 quirks, contained rather than fixed: it ignores the window
//!   of segments it finds unacceptable and sends no zero-window probes, so a
//!   peer's reopened window can go unnoticed until the next keep-alive
//!   (every 250 ms, [`endpoint::core::KEEP_ALIVE`]); window scaling can make
//!   it panic, so receive buffers are capped at 65535 bytes (no scaling;
//!   about 64 KiB in flight per connection); any panic in it resets every
//!   connection of that endpoint (counted), listeners keep working.
//! - The capture file is renamed into place only when capture is finished
//!   or the switch is dropped; a killed process leaves `NAME.partial`.
#![forbid(unsafe_code)]

pub mod endpoint;
pub mod pcap;
pub mod port;
pub mod switch;

pub use port::{Notifier, Port, Switch, SwitchError};
pub use switch::{Forward, MacAddr, PortCounters, PortId, SwitchConfig, SwitchCounters};
