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
        let mut time = None;
        for (id, sink) in &self.sessions {
            let wanted = match &sink.filter {
                Filter::Network(n) => network == Some(*n),
                Filter::Ports(ports) => ports.contains(&port),
            };
            if !wanted {
                continue;
            }
            let len = frame.len().min(sink.snap_len);
            let queued = sink.stats.queued_bytes.load(Ordering::Relaxed);
            if queued + len > sink.ring_bytes {
                sink.stats.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let record = CaptureRecord {
                time: *time.get_or_insert_with(SystemTime::now),
                port,
                to_port,
                original_len: frame.len(),
                bytes: frame[..len].to_vec(),
            };
            match sink.tx.try_send(record) {
                Ok(()) => {
                    sink.stats.queued_bytes.fetch_add(len, Ordering::Relaxed);
                    sink.stats.captured.fetch_add(1, Ordering::Relaxed);
                }
                Err(TrySendError::Full(_)) => {
                    sink.stats.dropped.fetch_add(1, Ordering::Relaxed);
                }
                // The reader went away without stopping the session.
                Err(TrySendError::Disconnected(_)) => gone.push(*id),
            }
        }
        for id in gone {
            self.remove(id);
        }
    }
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
}
