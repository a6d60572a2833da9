//! Packet capture in the data path: copies of the frames of chosen ports,
//! both directions, timestamped, handed to a reader off the data path.
//!
//! # Theory of operation
//!
//! Off by default and free when off: the frame plane asks
//! [`Captures::is_empty`] (one branch) before anything else. With a
//! capture on, each frame read from a port (the sandbox sent it) and each
//! frame written to a port (the sandbox receives it) is offered to every
//! session whose filter takes the port ([`Filter`]: every port of a
//! network, tunnel ports included, or a set of ports). A taken frame is
//! copied, cut to the session's snap length, stamped with the wall clock
//! and sent over a bounded channel to the control plane, which writes it
//! out as pcap.
//!
//! A slow reader never stalls the switch: the channel holds at most the
//! session's `ring_bytes` of frames (counted in an atomic the reader
//! decrements); a frame that does not fit is dropped and counted
//! ([`CaptureStats::dropped`]), which the reader reports when the capture
//! ends. Dropping the [`CaptureHandle`] stops the session.
//!
//! A capture of the tunnel ([`Filter::Tunnel`], `weft capture --overlay`)
//! takes the datagrams between hosts instead of frames of ports: each one
//! received as it arrived, and each one sent as the transport wraps it
//! (VXLAN's header, then the inner frame), both under an IPv4 or IPv6 and
//! UDP header of the underlay's addresses and ports that the capture
//! writes ([`underlay_frame`]), so tshark and tcpdump decode the VXLAN
//! inside. A 64 KiB TCP segment the transport cuts into datagrams shows as
//! one large datagram, as tcpdump shows segments on a host whose NIC does
//! the cutting (TSO). The UDP checksum is left zero (no checksum).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::SystemTime;

use rustc_hash::FxHashSet;
use weft_vswitch::{NetworkId, PortId};

/// Records the channel holds at most, whatever their size.
const CHANNEL_RECORDS: usize = 65_536;

/// Which frames a session takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    /// Every port of a network (its tunnel ports too).
    Network(NetworkId),
    /// These ports.
    Ports(FxHashSet<PortId>),
    /// The datagrams of the tunnel to and from other hosts.
    Tunnel,
}

/// One captured frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureRecord {
    /// When the data path saw it.
    pub time: SystemTime,
    /// The port it came from or went to.
    pub port: PortId,
    /// True when written to the port (the sandbox receives it).
    pub to_port: bool,
    /// The frame's length on the wire.
    pub original_len: usize,
    /// Its first `snap_len` bytes.
    pub bytes: Vec<u8>,
}

/// What a session counted, shared with its reader.
#[derive(Debug, Default)]
pub struct CaptureStats {
    /// Frames taken and sent to the reader.
    pub captured: AtomicU64,
    /// Frames dropped because the reader was behind (the ring was full).
    pub dropped: AtomicU64,
    /// Bytes waiting in the channel.
    pub queued_bytes: AtomicUsize,
}

/// The data path's end of a session.
#[derive(Debug)]
pub struct CaptureSink {
    filter: Filter,
    snap_len: usize,
    ring_bytes: usize,
    tx: SyncSender<CaptureRecord>,
    stats: Arc<CaptureStats>,
}

/// The reader's end: records, the session's counters; dropping it stops
/// the session (see [`crate::Datapath::start_capture`]).
pub struct CaptureHandle {
    /// The records, in the order the data path saw them.
    pub records: Receiver<CaptureRecord>,
    /// The session's counters.
    pub stats: Arc<CaptureStats>,
    pub(crate) stop: Option<Box<dyn FnOnce() + Send>>,
}

impl std::fmt::Debug for CaptureHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaptureHandle")
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl CaptureHandle {
    /// The next record, waiting at most `timeout`; the ring's room is
    /// given back as records are taken.
    pub fn next(&self, timeout: std::time::Duration) -> Option<CaptureRecord> {
        let record = self.records.recv_timeout(timeout).ok()?;
        self.stats
            .queued_bytes
            .fetch_sub(record.bytes.len(), Ordering::Relaxed);
        Some(record)
    }
}

impl Drop for CaptureHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop();
        }
    }
}

/// A new session: the data path's sink and the reader's receiver.
pub fn session(
    filter: Filter,
    snap_len: usize,
    ring_bytes: usize,
) -> (CaptureSink, Receiver<CaptureRecord>, Arc<CaptureStats>) {
    let (tx, rx) = mpsc::sync_channel(CHANNEL_RECORDS);
    let stats = Arc::new(CaptureStats::default());
    let sink = CaptureSink {
        filter,
        snap_len: snap_len.max(64),
        ring_bytes,
        tx,
        stats: Arc::clone(&stats),
    };
    (sink, rx, stats)
}

/// The sessions of the data path. See the module header.
#[derive(Debug, Default)]
pub struct Captures {
    sessions: Vec<(u64, CaptureSink)>,
}

impl Captures {
    /// No session: the frame plane skips every other call.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Start session `id`.
    pub fn add(&mut self, id: u64, sink: CaptureSink) {
        self.sessions.push((id, sink));
    }

    /// Stop session `id`.
    pub fn remove(&mut self, id: u64) {
        self.sessions.retain(|(i, _)| *i != id);
    }

    /// Offer a frame seen on `port` (of `network`) to every session.
    pub fn offer(&mut self, port: PortId, network: Option<NetworkId>, to_port: bool, frame: &[u8]) {
        let mut gone = Vec::new();
        let time = &mut None;
        for (id, sink) in &self.sessions {
            let wanted = match &sink.filter {
                Filter::Network(n) => network == Some(*n),
                Filter::Ports(ports) => ports.contains(&port),
                Filter::Tunnel => false,
            };
            if wanted && !sink.deliver(time, port, to_port, frame) {
                gone.push(*id);
            }
        }
        for id in gone {
            self.remove(id);
        }
    }

    /// A session of the tunnel is on: [`Captures::offer_datagram`] wants
    /// its datagrams.
    pub fn wants_tunnel(&self) -> bool {
        self.sessions
            .iter()
            .any(|(_, s)| s.filter == Filter::Tunnel)
    }

    /// Offer a datagram of the tunnel port `port`, `from` → `to`, whose
    /// payload is `parts` one after the other; `sent` when this host sent
    /// it.
    pub fn offer_datagram(
        &mut self,
        port: PortId,
        sent: bool,
        (from, to): (SocketAddr, SocketAddr),
        parts: &[&[u8]],
    ) {
        if !self.wants_tunnel() {
            return;
        }
        let frame = underlay_frame(from, to, parts);
        let mut time = None;
        let mut gone = Vec::new();
        for (id, sink) in &self.sessions {
            if sink.filter == Filter::Tunnel && !sink.deliver(&mut time, port, sent, &frame) {
                gone.push(*id);
            }
        }
        for id in gone {
            self.remove(id);
        }
    }
}

impl CaptureSink {
    /// Copy `frame` to the reader, or count it dropped when the ring is
    /// full. False when the reader went away.
    fn deliver(
        &self,
        time: &mut Option<SystemTime>,
        port: PortId,
        to_port: bool,
        frame: &[u8],
    ) -> bool {
        let len = frame.len().min(self.snap_len);
        let queued = self.stats.queued_bytes.load(Ordering::Relaxed);
        if queued + len > self.ring_bytes {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        let record = CaptureRecord {
            time: *time.get_or_insert_with(SystemTime::now),
            port,
            to_port,
            original_len: frame.len(),
            bytes: frame[..len].to_vec(),
        };
        match self.tx.try_send(record) {
            Ok(()) => {
                self.stats.queued_bytes.fetch_add(len, Ordering::Relaxed);
                self.stats.captured.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(TrySendError::Full(_)) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                true
            }
            // The reader went away without stopping the session.
            Err(TrySendError::Disconnected(_)) => false,
        }
    }
}

/// A MAC for the underlay's ends in captures: locally administered, the
/// last byte 1 for the sender and 2 for the receiver.
const UNDERLAY_MAC: [u8; 5] = [0x02, 0x77, 0x65, 0x66, 0x74];

/// An Ethernet frame holding a UDP datagram `from` → `to` whose payload is
/// `parts`: what the underlay carried (see the module header). Lengths
/// that do not fit their fields (a 64 KiB segment over IPv4) are capped.
pub fn underlay_frame(from: SocketAddr, to: SocketAddr, parts: &[&[u8]]) -> Vec<u8> {
    let payload: usize = parts.iter().map(|p| p.len()).sum();
    let udp_len = u16::try_from(8 + payload).unwrap_or(u16::MAX);
    let mut frame = Vec::with_capacity(14 + 40 + 8 + payload);
    frame.extend_from_slice(&UNDERLAY_MAC);
    frame.push(2);
    frame.extend_from_slice(&UNDERLAY_MAC);
    frame.push(1);
    match (from.ip(), to.ip()) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            frame.extend_from_slice(&0x0800u16.to_be_bytes());
            let total = u16::try_from(20 + 8 + payload).unwrap_or(u16::MAX);
            let mut ip = [0u8; 20];
            ip[0] = 0x45;
            ip[2..4].copy_from_slice(&total.to_be_bytes());
            ip[6] = 0x40; // don't fragment
            ip[8] = 64;
            ip[9] = 17; // UDP
            ip[12..16].copy_from_slice(&src.octets());
            ip[16..20].copy_from_slice(&dst.octets());
            let checksum = internet_checksum(&ip);
            ip[10..12].copy_from_slice(&checksum.to_be_bytes());
            frame.extend_from_slice(&ip);
        }
        (src, dst) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V6(v6) => v6,
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            };
            frame.extend_from_slice(&0x86ddu16.to_be_bytes());
            let mut ip = [0u8; 40];
            ip[0] = 0x60;
            ip[4..6].copy_from_slice(&udp_len.to_be_bytes());
            ip[6] = 17;
            ip[7] = 64;
            ip[8..24].copy_from_slice(&v6(src).octets());
            ip[24..40].copy_from_slice(&v6(dst).octets());
            frame.extend_from_slice(&ip);
        }
    }
    frame.extend_from_slice(&from.port().to_be_bytes());
    frame.extend_from_slice(&to.port().to_be_bytes());
    frame.extend_from_slice(&udp_len.to_be_bytes());
    frame.extend_from_slice(&[0, 0]);
    for part in parts {
        frame.extend_from_slice(part);
    }
    frame
}

/// RFC 1071's checksum of an IPv4 header.
fn internet_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_take_their_ports_cut_to_snap_length_and_drop_when_full() {
        let mut captures = Captures::default();
        assert!(captures.is_empty());
        let (sink, rx, stats) = session(Filter::Network(NetworkId(1)), 100, 250);
        captures.add(1, sink);
        let ports: FxHashSet<PortId> = [PortId(7)].into_iter().collect();
        let (only7, rx7, _) = session(Filter::Ports(ports), 1500, 1 << 20);
        captures.add(2, only7);
        let frame = vec![0xabu8; 150];
        captures.offer(PortId(7), Some(NetworkId(1)), false, &frame);
        captures.offer(PortId(8), Some(NetworkId(1)), true, &frame);
        captures.offer(PortId(9), Some(NetworkId(2)), true, &frame);
        // 100 + 100 bytes fit the 250-byte ring; a third does not.
        captures.offer(PortId(8), Some(NetworkId(1)), true, &frame);
        let first = rx.try_recv().expect("port 7's frame");
        assert_eq!(
            (first.port, first.to_port, first.original_len),
            (PortId(7), false, 150)
        );
        assert_eq!(first.bytes.len(), 100);
        assert_eq!(rx.try_recv().expect("port 8's frame").port, PortId(8));
        assert!(
            rx.try_recv().is_err(),
            "network 2 and the overflow are not there"
        );
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 1);
        assert_eq!(stats.captured.load(Ordering::Relaxed), 2);
        let r7: Vec<_> = rx7.try_iter().collect();
        assert_eq!(r7.len(), 1);
        assert_eq!(r7[0].bytes.len(), 150);
        // A reader that went away ends its session.
        drop(rx7);
        captures.offer(PortId(7), Some(NetworkId(1)), false, &frame);
        captures.remove(1);
        assert!(captures.is_empty());
    }

    #[test]
    fn tunnel_sessions_take_datagrams_under_an_underlay_header() {
        let mut captures = Captures::default();
        let (ports, rx_ports, _) = session(Filter::Network(NetworkId(1)), 1500, 1 << 20);
        captures.add(1, ports);
        assert!(!captures.wants_tunnel());
        let (tunnel, rx, stats) = session(Filter::Tunnel, 1500, 1 << 20);
        captures.add(2, tunnel);
        assert!(captures.wants_tunnel());
        let from: SocketAddr = "192.0.2.1:4789".parse().unwrap();
        let to: SocketAddr = "192.0.2.2:4789".parse().unwrap();
        let vxlan = [0x08, 0, 0, 0, 0, 0x10, 0x92, 0];
        let inner = [0xaa; 60];
        captures.offer_datagram(PortId(0x8000_0001), true, (from, to), &[&vxlan, &inner]);
        // Frames of ports are not the tunnel's, and the other way round.
        captures.offer(PortId(3), Some(NetworkId(1)), false, &inner);
        assert_eq!((rx.try_iter().count(), rx_ports.try_iter().count()), (1, 1));
        captures.offer_datagram(PortId(0x8000_0001), false, (to, from), &[&vxlan, &inner]);
        let record = rx.try_recv().expect("the datagram");
        assert!(rx.try_recv().is_err());
        assert_eq!(stats.captured.load(Ordering::Relaxed), 2);
        let frame = &record.bytes;
        assert_eq!(frame.len(), 14 + 20 + 8 + 8 + 60);
        assert_eq!(&frame[12..14], &[0x08, 0x00]);
        assert_eq!(internet_checksum(&frame[14..34]), 0, "a valid IPv4 header");
        assert_eq!(
            &frame[26..30],
            &[192, 0, 2, 2],
            "from the receiver's view: to → from"
        );
        assert_eq!(u16::from_be_bytes([frame[36], frame[37]]), 4789);
        assert_eq!(u16::from_be_bytes([frame[38], frame[39]]), 76, "UDP length");
        assert_eq!(&frame[42..50], &vxlan);
        // Over IPv6 too.
        let v6 = underlay_frame(
            "[2001:db8::1]:4789".parse().unwrap(),
            "[2001:db8::2]:4789".parse().unwrap(),
            &[&vxlan],
        );
        assert_eq!(
            (v6.len(), &v6[12..14]),
            (14 + 40 + 8 + 8, &[0x86, 0xdd][..])
        );
    }
}
