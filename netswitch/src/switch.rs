//! The switching core: MAC learning with ageing, flooding, MTU policing and
//! bounded per-port output queues.
//!
//! This is sans-IO: no clocks, threads or locks. Every call that needs the
//! time takes it as an argument, so tests drive it with a simulated clock.
//! [`crate::Switch`] wraps it for sharing between threads.
//!
//! Threat model: every frame comes from a possibly hostile guest. Frames of
//! any length and content are accepted without panicking; memory is bounded
//! by the per-port queue caps and the MAC table cap.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Length of an Ethernet II header (destination, source, ethertype).
pub const ETHERNET_HEADER_LEN: usize = 14;

/// A 48-bit Ethernet MAC address.
pub type MacAddr = [u8; 6];

/// Largest MTU accepted in a [`SwitchConfig`]: the largest IPv4 packet.
pub const MAX_MTU: usize = 65535;

/// Smallest MTU accepted in a [`SwitchConfig`]: the IPv4 minimum.
pub const MIN_MTU: usize = 68;

/// Upper bound on the recycled frame buffers the core keeps for reuse.
const POOL_CAP: usize = 1024;

/// Settings of a switch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchConfig {
    /// Largest IP packet carried; frames may be this plus 14 bytes long.
    pub mtu: usize,
    /// Most frames one port's output queue holds before dropping.
    pub queue_frames: usize,
    /// Most bytes one port's output queue holds before dropping.
    pub queue_bytes: usize,
    /// How long a learned MAC address stays valid without traffic from it.
    pub mac_ageing: Duration,
    /// Most MAC addresses remembered at once.
    pub max_macs: usize,
}

impl Default for SwitchConfig {
    fn default() -> Self {
        Self {
            mtu: 1500,
            queue_frames: 512,
            queue_bytes: 1024 * 1024,
            mac_ageing: Duration::from_secs(300),
            max_macs: 4096,
        }
    }
}

/// Errors from [`SwitchConfig::validate`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// MTU outside what Ethernet and IPv4 allow.
    #[error("MTU {0} is outside {MIN_MTU}..={MAX_MTU}")]
    Mtu(usize),
    /// A queue that cannot hold one full-size frame.
    #[error("Port queue too small for one frame of {frame} bytes")]
    QueueTooSmall {
        /// Size of the largest frame allowed by the MTU.
        frame: usize,
    },
    /// A MAC table that cannot hold anything.
    #[error("MAC table size must be at least 1")]
    MacTable,
}

impl SwitchConfig {
    /// Largest frame forwarded: MTU plus the Ethernet header.
    pub fn max_frame_len(&self) -> usize {
        self.mtu + ETHERNET_HEADER_LEN
    }

    /// Checks the settings for values the switch cannot work with.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(MIN_MTU..=MAX_MTU).contains(&self.mtu) {
            return Err(ConfigError::Mtu(self.mtu));
        }
        if self.queue_frames == 0 || self.queue_bytes < self.max_frame_len() {
            return Err(ConfigError::QueueTooSmall {
                frame: self.max_frame_len(),
            });
        }
        if self.max_macs == 0 {
            return Err(ConfigError::MacTable);
        }
        Ok(())
    }
}

/// Identifies a port of one switch. Ids are never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortId(pub u32);

/// Traffic counters of one port, seen from the port's side: `rx` is what the
/// port sent into the switch, `tx` what the switch queued towards the port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortCounters {
    /// Frames received from the port and accepted.
    pub rx_frames: u64,
    /// Bytes of the frames counted in `rx_frames`.
    pub rx_bytes: u64,
    /// Frames queued towards the port.
    pub tx_frames: u64,
    /// Bytes of the frames counted in `tx_frames`.
    pub tx_bytes: u64,
    /// Frames from the port longer than MTU + 14, dropped.
    pub rx_dropped_oversize: u64,
    /// Frames from the port shorter than an Ethernet header, dropped.
    pub rx_dropped_runt: u64,
    /// Frames for the port dropped because its queue was full.
    pub tx_dropped_queue_full: u64,
}

/// Counters of the switch as a whole.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SwitchCounters {
    /// Frames sent to every other port (broadcast, multicast or unknown).
    pub flooded: u64,
    /// Frames whose destination was learned on the port they came from.
    pub filtered: u64,
    /// Source addresses not learned because the MAC table was full.
    pub learn_table_full: u64,
    /// Learned addresses removed after `mac_ageing` without traffic.
    pub aged_out: u64,
}

/// What happened to one frame handed to [`SwitchCore::input`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forward {
    /// Queued towards the one port its destination was learned on (or
    /// dropped there if that queue was full; see the port's counters).
    Unicast(PortId),
    /// Queued towards every other port.
    Flooded,
    /// Destination lives on the ingress port; nothing was sent.
    Filtered,
    /// Not forwarded at all.
    Dropped(DropReason),
}

/// Why a frame was dropped at ingress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Longer than MTU + 14.
    Oversize,
    /// Shorter than an Ethernet header.
    Runt,
    /// The ingress port does not exist (removed, or from another switch).
    UnknownPort,
}

#[derive(Debug)]
struct MacEntry {
    port: PortId,
    last_seen: Instant,
}

#[derive(Debug, Default)]
struct PortSlot {
    queue: VecDeque<Vec<u8>>,
    queued_bytes: usize,
    counters: PortCounters,
}

/// The switching core. See the module docs.
#[derive(Debug)]
pub struct SwitchCore {
    config: SwitchConfig,
    ports: Vec<Option<PortSlot>>,
    macs: HashMap<MacAddr, MacEntry>,
    counters: SwitchCounters,
    /// Ports whose queue went from empty to non-empty since the last
    /// [`SwitchCore::drain_woken`].
    woken: Vec<PortId>,
    pool: Vec<Vec<u8>>,
    last_sweep: Option<Instant>,
}

fn is_multicast(mac: &MacAddr) -> bool {
    mac[0] & 1 == 1
}

fn port_index(id: PortId) -> usize {
    usize::try_from(id.0).unwrap_or(usize::MAX)
}

impl SwitchCore {
    /// Creates a switch with no ports.
    pub fn new(config: SwitchConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            config,
            ports: Vec::new(),
            macs: HashMap::new(),
            counters: SwitchCounters::default(),
            woken: Vec::new(),
            pool: Vec::new(),
            last_sweep: None,
        })
    }

    /// The settings this switch runs with.
    pub fn config(&self) -> &SwitchConfig {
        &self.config
    }

    /// Adds a port and returns its id.
    pub fn add_port(&mut self) -> PortId {
        let id = PortId(u32::try_from(self.ports.len()).unwrap_or(u32::MAX));
        self.ports.push(Some(PortSlot::default()));
        id
    }

    /// Removes a port: its queue is freed and the addresses learned on it
    /// are forgotten. Unknown ids are ignored.
    pub fn remove_port(&mut self, id: PortId) {
        if let Some(slot) = self.ports.get_mut(port_index(id)) {
            *slot = None;
        }
        self.macs.retain(|_, entry| entry.port != id);
        self.woken.retain(|&p| p != id);
    }

    /// Counters of a port, or `None` if there is no such port.
    pub fn port_counters(&self, id: PortId) -> Option<PortCounters> {
        self.slot(id).map(|slot| slot.counters)
    }

    /// Counters of the switch as a whole.
    pub fn counters(&self) -> SwitchCounters {
        self.counters
    }

    /// Number of MAC addresses currently learned.
    pub fn learned_macs(&self) -> usize {
        self.macs.len()
    }

    /// The port a MAC address is learned on, if it is and has not aged.
    pub fn lookup(&self, now: Instant, mac: &MacAddr) -> Option<PortId> {
        let entry = self.macs.get(mac)?;
        (now.saturating_duration_since(entry.last_seen) <= self.config.mac_ageing)
            .then_some(entry.port)
    }

    /// Frames and bytes waiting in a port's queue.
    pub fn queued(&self, id: PortId) -> (usize, usize) {
        self.slot(id)
            .map_or((0, 0), |slot| (slot.queue.len(), slot.queued_bytes))
    }

    /// Switches one frame that arrived from port `from` at time `now`.
    pub fn input(&mut self, now: Instant, from: PortId, frame: &[u8]) -> Forward {
        let max_frame_len = self.config.max_frame_len();
        let Some(slot) = self.slot_mut(from) else {
            return Forward::Dropped(DropReason::UnknownPort);
        };
        if frame.len() < ETHERNET_HEADER_LEN {
            slot.counters.rx_dropped_runt += 1;
            return Forward::Dropped(DropReason::Runt);
        }
        if frame.len() > max_frame_len {
            slot.counters.rx_dropped_oversize += 1;
            return Forward::Dropped(DropReason::Oversize);
        }
        slot.counters.rx_frames += 1;
        slot.counters.rx_bytes += frame.len() as u64;

        let mut dst = [0u8; 6];
        let mut src = [0u8; 6];
        dst.copy_from_slice(&frame[0..6]);
        src.copy_from_slice(&frame[6..12]);
        self.learn(now, from, src);

        let target = if is_multicast(&dst) {
            None
        } else {
            self.lookup(now, &dst)
        };
        match target {
            Some(to) if to == from => {
                self.counters.filtered += 1;
                Forward::Filtered
            }
            Some(to) => {
                self.enqueue(to, frame);
                Forward::Unicast(to)
            }
            None => {
                self.counters.flooded += 1;
                for index in 0..self.ports.len() {
                    let to = PortId(u32::try_from(index).unwrap_or(u32::MAX));
                    if to != from && self.ports[index].is_some() {
                        self.enqueue(to, frame);
                    }
                }
                Forward::Flooded
            }
        }
    }

    /// Takes the oldest frame queued towards a port.
    pub fn pop(&mut self, id: PortId) -> Option<Vec<u8>> {
        let slot = self.slot_mut(id)?;
        let frame = slot.queue.pop_front()?;
        slot.queued_bytes -= frame.len();
        Some(frame)
    }

    /// Length of the oldest frame queued towards a port.
    pub fn peek_len(&self, id: PortId) -> Option<usize> {
        self.slot(id)?.queue.front().map(Vec::len)
    }

    /// Gives a frame buffer back for reuse, saving an allocation later.
    pub fn recycle(&mut self, mut buffer: Vec<u8>) {
        if self.pool.len() < POOL_CAP && buffer.capacity() <= self.config.max_frame_len() {
            buffer.clear();
            self.pool.push(buffer);
        }
    }

    /// Ports whose queue became non-empty since the last call; each should
    /// be told that frames wait for it.
    pub fn drain_woken(&mut self) -> std::vec::Drain<'_, PortId> {
        self.woken.drain(..)
    }

    /// Forgets every learned address older than the ageing time.
    pub fn expire(&mut self, now: Instant) {
        let ageing = self.config.mac_ageing;
        let before = self.macs.len();
        self.macs
            .retain(|_, entry| now.saturating_duration_since(entry.last_seen) <= ageing);
        self.counters.aged_out += (before - self.macs.len()) as u64;
        self.last_sweep = Some(now);
    }

    fn learn(&mut self, now: Instant, port: PortId, src: MacAddr) {
        if is_multicast(&src) || src == [0; 6] {
            return;
        }
        if let Some(entry) = self.macs.get_mut(&src) {
            entry.port = port;
            entry.last_seen = now;
            return;
        }
        if self.macs.len() >= self.config.max_macs {
            // A sweep is O(table); do it at most once a second so a guest
            // cycling source addresses cannot make every frame pay for one.
            let due = self
                .last_sweep
                .is_none_or(|last| now.saturating_duration_since(last) >= Duration::from_secs(1));
            if due {
                self.expire(now);
            }
            if self.macs.len() >= self.config.max_macs {
                self.counters.learn_table_full += 1;
                return;
            }
        }
        self.macs.insert(
            src,
            MacEntry {
                port,
                last_seen: now,
            },
        );
    }

    fn enqueue(&mut self, to: PortId, frame: &[u8]) {
        let (queue_frames, queue_bytes) = (self.config.queue_frames, self.config.queue_bytes);
        let mut buffer = self.pool.pop().unwrap_or_default();
        let index = port_index(to);
        let Some(Some(slot)) = self.ports.get_mut(index) else {
            return;
        };
        if slot.queue.len() >= queue_frames || slot.queued_bytes + frame.len() > queue_bytes {
            slot.counters.tx_dropped_queue_full += 1;
            self.pool.push(buffer);
            return;
        }
        buffer.extend_from_slice(frame);
        slot.counters.tx_frames += 1;
        slot.counters.tx_bytes += frame.len() as u64;
        slot.queued_bytes += frame.len();
        let was_empty = slot.queue.is_empty();
        slot.queue.push_back(buffer);
        if was_empty {
            self.woken.push(to);
        }
    }

    fn slot(&self, id: PortId) -> Option<&PortSlot> {
        self.ports.get(port_index(id))?.as_ref()
    }

    fn slot_mut(&mut self, id: PortId) -> Option<&mut PortSlot> {
        self.ports.get_mut(port_index(id))?.as_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BCAST: MacAddr = [0xff; 6];

    fn mac(n: u8) -> MacAddr {
        [0x02, 0, 0, 0, 0, n]
    }

    fn frame(dst: MacAddr, src: MacAddr, len: usize) -> Vec<u8> {
        let mut f = vec![0u8; len];
        f[0..6].copy_from_slice(&dst);
        f[6..12].copy_from_slice(&src);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        for (i, b) in f.iter_mut().enumerate().skip(14) {
            *b = (i % 251).to_le_bytes()[0];
        }
        f
    }

    fn switch_with_ports(config: SwitchConfig, n: usize) -> (SwitchCore, Vec<PortId>) {
        let mut sw = SwitchCore::new(config).unwrap();
        let ports = (0..n).map(|_| sw.add_port()).collect();
        (sw, ports)
    }

    fn drain(sw: &mut SwitchCore, port: PortId) -> Vec<Vec<u8>> {
        std::iter::from_fn(|| sw.pop(port)).collect()
    }

    #[test]
    fn unknown_destination_is_flooded_to_every_other_port() {
        let (mut sw, p) = switch_with_ports(SwitchConfig::default(), 3);
        let now = Instant::now();
        let f = frame(mac(2), mac(1), 60);
        assert_eq!(sw.input(now, p[0], &f), Forward::Flooded);
        assert!(drain(&mut sw, p[0]).is_empty());
        assert_eq!(drain(&mut sw, p[1]), vec![f.clone()]);
        assert_eq!(drain(&mut sw, p[2]), vec![f]);
        assert_eq!(sw.counters().flooded, 1);
    }

    #[test]
    fn broadcast_is_flooded_even_when_learned() {
        let (mut sw, p) = switch_with_ports(SwitchConfig::default(), 3);
        let now = Instant::now();
        sw.input(now, p[1], &frame(BCAST, BCAST, 60));
        let f = frame(BCAST, mac(1), 60);
        assert_eq!(sw.input(now, p[0], &f), Forward::Flooded);
        assert_eq!(drain(&mut sw, p[1]).len(), 1);
        assert_eq!(drain(&mut sw, p[2]).len(), 2);
        assert_eq!(sw.learned_macs(), 1, "multicast source must not be learned");
    }

    #[test]
    fn learned_destination_goes_to_one_port_only() {
        let (mut sw, p) = switch_with_ports(SwitchConfig::default(), 3);
        let now = Instant::now();
        sw.input(now, p[1], &frame(BCAST, mac(2), 60));
        drain(&mut sw, p[0]);
        drain(&mut sw, p[2]);
        let f = frame(mac(2), mac(1), 100);
        assert_eq!(sw.input(now, p[0], &f), Forward::Unicast(p[1]));
        assert_eq!(drain(&mut sw, p[1]), vec![f]);
        assert!(drain(&mut sw, p[2]).is_empty());
        // And the reply finds the sender, learned from the first frame.
        let reply = frame(mac(1), mac(2), 100);
        assert_eq!(sw.input(now, p[1], &reply), Forward::Unicast(p[0]));
    }

    #[test]
    fn station_moving_port_is_relearned() {
        let (mut sw, p) = switch_with_ports(SwitchConfig::default(), 3);
        let now = Instant::now();
        sw.input(now, p[1], &frame(BCAST, mac(2), 60));
        sw.input(now, p[2], &frame(BCAST, mac(2), 60));
        assert_eq!(sw.lookup(now, &mac(2)), Some(p[2]));
    }

    #[test]
    fn learned_address_ages_out_and_floods_again() {
        let config = SwitchConfig {
            mac_ageing: Duration::from_secs(10),
            ..SwitchConfig::default()
        };
        let (mut sw, p) = switch_with_ports(config, 3);
        let t0 = Instant::now();
        sw.input(t0, p[1], &frame(BCAST, mac(2), 60));
        let f = frame(mac(2), mac(1), 60);
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(sw.input(t1, p[0], &f), Forward::Unicast(p[1]));
        let t2 = t0 + Duration::from_secs(11);
        assert_eq!(sw.input(t2, p[0], &f), Forward::Flooded);
        sw.expire(t2);
        assert_eq!(sw.lookup(t2, &mac(2)), None);
        assert_eq!(sw.counters().aged_out, 1);
        // mac(1) was refreshed at t2 and survives.
        assert_eq!(sw.lookup(t2, &mac(1)), Some(p[0]));
    }

    #[test]
    fn traffic_refreshes_a_learned_address() {
        let config = SwitchConfig {
            mac_ageing: Duration::from_secs(10),
            ..SwitchConfig::default()
        };
        let (mut sw, p) = switch_with_ports(config, 2);
        let t0 = Instant::now();
        for s in 0..5 {
            sw.input(
                t0 + Duration::from_secs(8 * s),
                p[1],
                &frame(BCAST, mac(2), 60),
            );
        }
        let t = t0 + Duration::from_secs(8 * 4 + 9);
        assert_eq!(sw.lookup(t, &mac(2)), Some(p[1]));
    }

    #[test]
    fn frame_longer_than_mtu_plus_header_is_dropped_and_counted() {
        let (mut sw, p) = switch_with_ports(SwitchConfig::default(), 2);
        let now = Instant::now();
        let full = frame(BCAST, mac(1), 1514);
        assert_eq!(sw.input(now, p[0], &full), Forward::Flooded);
        assert_eq!(
            drain(&mut sw, p[1]),
            vec![full],
            "1514 B frame must arrive intact"
        );
        let over = frame(BCAST, mac(1), 1515);
        assert_eq!(
            sw.input(now, p[0], &over),
            Forward::Dropped(DropReason::Oversize)
        );
        assert!(drain(&mut sw, p[1]).is_empty());
        let c = sw.port_counters(p[0]).unwrap();
        assert_eq!((c.rx_frames, c.rx_dropped_oversize), (1, 1));
    }

    #[test]
    fn configured_mtu_sets_the_frame_limit() {
        let config = SwitchConfig {
            mtu: 9000,
            queue_bytes: 100_000,
            ..SwitchConfig::default()
        };
        let (mut sw, p) = switch_with_ports(config, 2);
        let now = Instant::now();
        assert_eq!(
            sw.input(now, p[0], &frame(BCAST, mac(1), 9014)),
            Forward::Flooded
        );
        assert_eq!(
            sw.input(now, p[0], &frame(BCAST, mac(1), 9015)),
            Forward::Dropped(DropReason::Oversize)
        );
    }

    #[test]
    fn runt_frames_are_dropped_without_panic() {
        let (mut sw, p) = switch_with_ports(SwitchConfig::default(), 2);
        let now = Instant::now();
        for len in 0..14 {
            assert_eq!(
                sw.input(now, p[0], &vec![0xff; len]),
                Forward::Dropped(DropReason::Runt)
            );
        }
        assert_eq!(sw.port_counters(p[0]).unwrap().rx_dropped_runt, 14);
        assert_eq!(
            sw.input(now, PortId(99), &frame(BCAST, mac(1), 60)),
            Forward::Dropped(DropReason::UnknownPort)
        );
    }

    #[test]
    fn full_queue_drops_for_that_port_only_and_stays_bounded() {
        let config = SwitchConfig {
            queue_frames: 8,
            ..SwitchConfig::default()
        };
        let (mut sw, p) = switch_with_ports(config, 3);
        let now = Instant::now();
        sw.input(now, p[1], &frame(BCAST, mac(2), 60));
        sw.input(now, p[2], &frame(BCAST, mac(3), 60));
        for &port in &p {
            drain(&mut sw, port);
        }
        // Port 1 never reads; port 0 floods it with 10 000 frames.
        for _ in 0..10_000 {
            sw.input(now, p[0], &frame(mac(2), mac(1), 1514));
        }
        assert_eq!(sw.queued(p[1]).0, 8);
        assert!(sw.queued(p[1]).1 <= 8 * 1514);
        assert_eq!(
            sw.port_counters(p[1]).unwrap().tx_dropped_queue_full,
            10_000 - 8
        );
        // Port 2 is unaffected.
        let f = frame(mac(3), mac(1), 60);
        assert_eq!(sw.input(now, p[0], &f), Forward::Unicast(p[2]));
        assert_eq!(drain(&mut sw, p[2]), vec![f]);
    }

    #[test]
    fn byte_cap_limits_queue_memory() {
        let config = SwitchConfig {
            queue_bytes: 4 * 1514,
            ..SwitchConfig::default()
        };
        let (mut sw, p) = switch_with_ports(config, 2);
        let now = Instant::now();
        for _ in 0..10 {
            sw.input(now, p[0], &frame(BCAST, mac(1), 1514));
        }
        assert_eq!(sw.queued(p[1]), (4, 4 * 1514));
        assert_eq!(sw.port_counters(p[1]).unwrap().tx_dropped_queue_full, 6);
    }

    #[test]
    fn mac_table_is_capped() {
        let config = SwitchConfig {
            max_macs: 16,
            ..SwitchConfig::default()
        };
        let (mut sw, p) = switch_with_ports(config, 2);
        let now = Instant::now();
        for i in 0..100u8 {
            sw.input(now, p[0], &frame(BCAST, mac(i), 60));
            sw.pop(p[1]);
        }
        assert_eq!(sw.learned_macs(), 16);
        assert_eq!(sw.counters().learn_table_full, 84);
        // Once the entries age, new addresses are learned again.
        let later = now + Duration::from_secs(301);
        sw.input(later, p[0], &frame(BCAST, mac(200), 60));
        assert_eq!(sw.lookup(later, &mac(200)), Some(p[0]));
    }

    #[test]
    fn frame_to_its_own_port_is_filtered() {
        let (mut sw, p) = switch_with_ports(SwitchConfig::default(), 2);
        let now = Instant::now();
        sw.input(now, p[0], &frame(BCAST, mac(1), 60));
        assert_eq!(
            sw.input(now, p[0], &frame(mac(1), mac(5), 60)),
            Forward::Filtered
        );
        assert_eq!(sw.counters().filtered, 1);
    }

    #[test]
    fn removed_port_is_forgotten() {
        let (mut sw, p) = switch_with_ports(SwitchConfig::default(), 3);
        let now = Instant::now();
        sw.input(now, p[1], &frame(BCAST, mac(2), 60));
        sw.remove_port(p[1]);
        assert_eq!(sw.lookup(now, &mac(2)), None);
        assert_eq!(
            sw.input(now, p[0], &frame(mac(2), mac(1), 60)),
            Forward::Flooded
        );
        assert_eq!(sw.port_counters(p[1]), None);
    }

    #[test]
    fn only_empty_to_nonempty_transitions_wake_a_port() {
        let (mut sw, p) = switch_with_ports(SwitchConfig::default(), 2);
        let now = Instant::now();
        sw.input(now, p[0], &frame(BCAST, mac(1), 60));
        sw.input(now, p[0], &frame(BCAST, mac(1), 60));
        assert_eq!(sw.drain_woken().collect::<Vec<_>>(), vec![p[1]]);
        drain(&mut sw, p[1]);
        sw.input(now, p[0], &frame(BCAST, mac(1), 60));
        assert_eq!(sw.drain_woken().collect::<Vec<_>>(), vec![p[1]]);
    }

    #[test]
    fn counters_track_frames_and_bytes_both_ways() {
        let (mut sw, p) = switch_with_ports(SwitchConfig::default(), 2);
        let now = Instant::now();
        sw.input(now, p[0], &frame(BCAST, mac(1), 100));
        sw.input(now, p[0], &frame(BCAST, mac(1), 200));
        let a = sw.port_counters(p[0]).unwrap();
        let b = sw.port_counters(p[1]).unwrap();
        assert_eq!((a.rx_frames, a.rx_bytes, a.tx_frames), (2, 300, 0));
        assert_eq!((b.tx_frames, b.tx_bytes, b.rx_frames), (2, 300, 0));
    }

    #[test]
    fn every_counter_is_incremented_by_some_path() {
        let config = SwitchConfig {
            queue_frames: 1,
            max_macs: 2,
            mac_ageing: Duration::from_secs(1),
            ..SwitchConfig::default()
        };
        let (mut sw, p) = switch_with_ports(config, 2);
        let t = Instant::now();
        sw.input(t, p[0], &frame(BCAST, mac(1), 60)); // rx, tx, flooded
        sw.input(t, p[0], &frame(BCAST, mac(1), 60)); // tx_dropped_queue_full
        sw.input(t, p[0], &frame(mac(1), mac(2), 60)); // filtered
        sw.input(t, p[0], &frame(BCAST, mac(3), 60)); // learn_table_full
        sw.input(t, p[0], &[0; 10]); // runt
        sw.input(t, p[0], &vec![0; 1515]); // oversize
        sw.expire(t + Duration::from_secs(5)); // aged_out
        let PortCounters {
            rx_frames,
            rx_bytes,
            tx_frames: _,
            tx_bytes: _,
            rx_dropped_oversize,
            rx_dropped_runt,
            tx_dropped_queue_full: _,
        } = sw.port_counters(p[0]).unwrap();
        let to = sw.port_counters(p[1]).unwrap();
        let SwitchCounters {
            flooded,
            filtered,
            learn_table_full,
            aged_out,
        } = sw.counters();
        for (name, value) in [
            ("rx_frames", rx_frames),
            ("rx_bytes", rx_bytes),
            ("tx_frames", to.tx_frames),
            ("tx_bytes", to.tx_bytes),
            ("rx_dropped_oversize", rx_dropped_oversize),
            ("rx_dropped_runt", rx_dropped_runt),
            ("tx_dropped_queue_full", to.tx_dropped_queue_full),
            ("flooded", flooded),
            ("filtered", filtered),
            ("learn_table_full", learn_table_full),
            ("aged_out", aged_out),
        ] {
            assert!(value > 0, "counter {name} never incremented");
        }
    }

    #[test]
    fn bad_config_is_refused() {
        let bad_mtu = SwitchConfig {
            mtu: 10,
            ..SwitchConfig::default()
        };
        assert_eq!(SwitchCore::new(bad_mtu).unwrap_err(), ConfigError::Mtu(10));
        let small_queue = SwitchConfig {
            queue_bytes: 1000,
            ..SwitchConfig::default()
        };
        assert!(SwitchCore::new(small_queue).is_err());
    }

    #[test]
    fn hostile_random_frames_never_panic_and_memory_stays_bounded() {
        let config = SwitchConfig {
            max_macs: 64,
            queue_frames: 16,
            ..SwitchConfig::default()
        };
        let (mut sw, p) = switch_with_ports(config, 4);
        let mut t = Instant::now();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let len = (next() % 1600) as usize;
            let f: Vec<u8> = (0..len).map(|_| next().to_le_bytes()[0]).collect();
            let port = p[(next() % 4) as usize];
            sw.input(t, port, &f);
            t += Duration::from_millis(next() % 50);
        }
        assert!(sw.learned_macs() <= 64);
        for &port in &p {
            assert!(sw.queued(port).0 <= 16);
        }
    }
}
