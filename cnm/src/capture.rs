//! `weft capture`: frames of a network or one endpoint, as pcapng.
//!
//! # Theory of operation
//!
//! The data path copies the frames a session's filter takes
//! (`weft_datapath::capture`); this module turns them into a pcapng stream
//! that tcpdump, tshark and Wireshark read, and ends the session.
//!
//! - One interface description block per port, written the first time
//!   the port has a frame: its name is the endpoint's DNS name (or
//!   `tunnel-N` for a tunnel port of an overlay network), so Wireshark
//!   shows which sandbox a frame crossed. A capture of the tunnel
//!   (`--overlay`) has one interface, `underlay`, whose frames are the
//!   datagrams between hosts (see `weft_datapath::capture`). Timestamps are nanoseconds
//!   (`if_tsresol` 9), the data path's wall clock when it saw the frame.
//! - Each frame is an enhanced packet block whose flags say its direction
//!   as seen from the switch: inbound when the switch read it from the
//!   port (the sandbox sent it), outbound when it wrote it there.
//! - The session ends after `duration_secs`, after `count` frames, or when
//!   the reader goes away. Then an interface statistics block per
//!   interface carries the frames captured and those dropped because the
//!   reader was behind (`isb_ifdrop`: the ring of `ring_mib` was full).
//!
//! [`pump`] runs on a blocking thread: it waits on the session's channel
//! and hands encoded chunks to `send`, which fails when the reader is
//! gone; dropping the session's handle stops it in the data path.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pcap_file::pcapng::blocks::enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption};
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::blocks::interface_statistics::{
    InterfaceStatisticsBlock, InterfaceStatisticsOption,
};
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::DataLink;
use serde::{Deserialize, Serialize};
use weft_datapath::capture::{CaptureHandle, CaptureRecord};
use weft_vswitch::PortId;

/// Largest snap length: a 64 KiB GSO segment and its headers.
pub const MAX_SNAP_LEN: u32 = 262_144;
/// Default ring between the data path and the reader.
pub const DEFAULT_RING_MIB: u32 = 16;
/// Largest ring.
pub const MAX_RING_MIB: u32 = 1024;

/// `POST /v1/networks/NAME/capture`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureRequest {
    /// Only this endpoint's port (its DNS name); default every port of
    /// the network.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Stop after this many seconds.
    #[serde(default)]
    pub duration_secs: Option<f64>,
    /// Stop after this many frames.
    #[serde(default)]
    pub count: Option<u64>,
    /// Bytes kept of each frame (default and at most 262144).
    #[serde(default)]
    pub snap_len: Option<u32>,
    /// MiB of frames that may wait for the reader before frames are
    /// dropped (default 16).
    #[serde(default)]
    pub ring_mib: Option<u32>,
}

impl CaptureRequest {
    /// What is wrong with the request, for a 400.
    pub fn problem(&self) -> Option<String> {
        if let Some(d) = self.duration_secs {
            if !(d > 0.0 && d <= 86_400.0) {
                return Some(format!("duration_secs {d}: give 0 < seconds <= 86400"));
            }
        }
        if self.count == Some(0) {
            return Some("count 0: give at least one frame".into());
        }
        if let Some(s) = self.snap_len {
            if !(64..=MAX_SNAP_LEN).contains(&s) {
                return Some(format!("snap_len {s}: give 64 to {MAX_SNAP_LEN} bytes"));
            }
        }
        if let Some(r) = self.ring_mib {
            if !(1..=MAX_RING_MIB).contains(&r) {
                return Some(format!("ring_mib {r}: give 1 to {MAX_RING_MIB}"));
            }
        }
        None
    }
}

/// The pcapng encoder of one session. See the module header.
pub struct PcapNg {
    writer: PcapNgWriter<Vec<u8>>,
    snap_len: u32,
    interfaces: HashMap<PortId, u32>,
    captured: HashMap<PortId, u64>,
}

/// `epb_flags`: inbound (bits 0-1 = 1) and outbound (= 2).
const INBOUND: u32 = 1;
const OUTBOUND: u32 = 2;

impl PcapNg {
    /// A stream; its section header is the first chunk.
    pub fn new(snap_len: u32) -> Self {
        let writer = PcapNgWriter::new(Vec::new()).expect("writing to memory");
        PcapNg {
            writer,
            snap_len,
            interfaces: HashMap::new(),
            captured: HashMap::new(),
        }
    }

    /// What was encoded since the last call.
    pub fn take(&mut self) -> Vec<u8> {
        std::mem::take(self.writer.get_mut())
    }

    /// Encode one frame seen on `port` (named `name`).
    pub fn frame(
        &mut self,
        port: PortId,
        name: &str,
        time: SystemTime,
        to_port: bool,
        original_len: usize,
        bytes: &[u8],
    ) {
        let interface_id = match self.interfaces.get(&port) {
            Some(id) => *id,
            None => {
                let id = u32::try_from(self.interfaces.len()).unwrap_or(u32::MAX);
                let mut idb = InterfaceDescriptionBlock::new(DataLink::ETHERNET, self.snap_len);
                idb.options = vec![
                    InterfaceDescriptionOption::IfName(Cow::Owned(name.to_owned())),
                    InterfaceDescriptionOption::IfTsResol(9),
                ];
                let _ = self.writer.write_pcapng_block(idb);
                self.interfaces.insert(port, id);
                id
            }
        };
        *self.captured.entry(port).or_insert(0) += 1;
        let block = EnhancedPacketBlock {
            interface_id,
            timestamp: time.duration_since(UNIX_EPOCH).unwrap_or_default(),
            original_len: u32::try_from(original_len).unwrap_or(u32::MAX),
            data: Cow::Borrowed(bytes),
            options: vec![EnhancedPacketOption::Flags(if to_port {
                OUTBOUND
            } else {
                INBOUND
            })],
        };
        let _ = self.writer.write_pcapng_block(block);
    }

    /// The closing statistics: per interface, frames captured; `dropped`
    /// (the session's, not per port) on each.
    pub fn finish(&mut self, dropped: u64) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let mut ports: Vec<(PortId, u32)> = self.interfaces.iter().map(|(p, i)| (*p, *i)).collect();
        ports.sort_by_key(|(_, i)| *i);
        for (port, interface_id) in ports {
            let isb = InterfaceStatisticsBlock {
                interface_id,
                timestamp: u64::try_from(now).unwrap_or(u64::MAX),
                options: vec![
                    InterfaceStatisticsOption::IsbIfRecv(
                        self.captured.get(&port).copied().unwrap_or(0),
                    ),
                    InterfaceStatisticsOption::IsbIfDrop(dropped),
                ],
            };
            let _ = self.writer.write_pcapng_block(isb);
        }
    }
}

/// How a session's records become pcapng interfaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interfaces {
    /// One interface per port: endpoints by name, tunnel ports as
    /// `tunnel-N`.
    Ports(HashMap<PortId, String>),
    /// One interface, `underlay`, for every datagram of the tunnel
    /// (`weft capture --overlay`).
    Underlay,
}

impl Interfaces {
    /// The interface of a record of `port`: a key and its name.
    fn of(&self, port: PortId) -> (PortId, Cow<'_, str>) {
        match self {
            Interfaces::Ports(names) => (
                port,
                names.get(&port).map_or_else(
                    || Cow::Owned(format!("tunnel-{}", port.0)),
                    |name| Cow::Borrowed(name.as_str()),
                ),
            ),
            Interfaces::Underlay => (PortId(0), Cow::Borrowed("underlay")),
        }
    }

    /// Encode `record` into `pcap` on its interface.
    fn write(&self, pcap: &mut PcapNg, record: &CaptureRecord) {
        let (port, name) = self.of(record.port);
        pcap.frame(
            port,
            &name,
            record.time,
            record.to_port,
            record.original_len,
            &record.bytes,
        );
    }
}

/// Run a session until its end (see the module header), handing pcapng
/// chunks to `send`; false from `send` means the reader is gone.
/// Returns the frames captured and dropped.
pub fn pump(
    handle: CaptureHandle,
    interfaces: &Interfaces,
    request: &CaptureRequest,
    mut send: impl FnMut(Vec<u8>) -> bool,
) -> (u64, u64) {
    let snap_len = request.snap_len.unwrap_or(MAX_SNAP_LEN);
    let mut pcap = PcapNg::new(snap_len);
    let deadline = request
        .duration_secs
        .map(|d| Instant::now() + Duration::from_secs_f64(d));
    let mut frames = 0u64;
    let mut alive = send(pcap.take());
    while alive {
        let wait = match deadline {
            Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                Some(left) => left.min(Duration::from_millis(200)),
                None => break,
            },
            None => Duration::from_millis(200),
        };
        let Some(record) = handle.next(wait) else {
            // Nothing for a while: an empty chunk tells whether the reader
            // is still there.
            alive = send(Vec::new());
            continue;
        };
        interfaces.write(&mut pcap, &record);
        frames += 1;
        // Batch what is already waiting into one chunk.
        while let Some(more) = handle.next(Duration::ZERO) {
            if request.count.is_some_and(|c| frames >= c) {
                break;
            }
            interfaces.write(&mut pcap, &more);
            frames += 1;
        }
        alive = send(pcap.take());
        if request.count.is_some_and(|c| frames >= c) {
            break;
        }
    }
    let dropped = handle.stats.dropped.load(Ordering::Relaxed);
    drop(handle);
    if alive {
        pcap.finish(dropped);
        send(pcap.take());
    }
    (frames, dropped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pcap_file::pcapng::{Block, PcapNgReader};

    #[test]
    fn frames_come_out_as_pcapng_with_interfaces_directions_and_statistics() {
        let mut pcap = PcapNg::new(1500);
        let mut bytes = pcap.take();
        let t = UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789);
        pcap.frame(PortId(3), "alpha", t, false, 60, &[0xaa; 60]);
        pcap.frame(PortId(4), "beta", t, true, 2000, &[0xbb; 1500]);
        pcap.frame(PortId(3), "alpha", t, true, 42, &[0xcc; 42]);
        pcap.finish(7);
        bytes.extend(pcap.take());
        let mut reader = PcapNgReader::new(&bytes[..]).expect("a section header");
        let mut names = Vec::new();
        let mut packets = Vec::new();
        let mut stats = Vec::new();
        while let Some(block) = reader.next_block() {
            match block.expect("a block") {
                Block::InterfaceDescription(idb) => names.push(format!("{:?}", idb.options)),
                Block::EnhancedPacket(epb) => packets.push((
                    epb.interface_id,
                    epb.original_len,
                    epb.data.len(),
                    epb.timestamp,
                    format!("{:?}", epb.options),
                )),
                Block::InterfaceStatistics(isb) => stats.push(format!("{:?}", isb.options)),
                _ => {}
            }
        }
        assert_eq!(names.len(), 2);
        assert!(
            names[0].contains("alpha") && names[1].contains("beta"),
            "{names:?}"
        );
        assert_eq!(packets.len(), 3);
        assert_eq!((packets[0].0, packets[1].0, packets[2].0), (0, 1, 0));
        assert_eq!((packets[1].1, packets[1].2), (2000, 1500));
        assert_eq!(
            packets[0].3,
            Duration::from_nanos(1_700_000_000_123_456_789)
        );
        assert_eq!(
            packets[0].4,
            format!("{:?}", [EnhancedPacketOption::Flags(INBOUND)])
        );
        assert_eq!(
            packets[1].4,
            format!("{:?}", [EnhancedPacketOption::Flags(OUTBOUND)])
        );
        assert_eq!(stats.len(), 2);
        assert!(
            stats[0].contains("IsbIfRecv(2)") && stats[0].contains("IsbIfDrop(7)"),
            "{stats:?}"
        );
    }

    #[test]
    fn requests_are_checked() {
        assert!(CaptureRequest::default().problem().is_none());
        let bad = |r: CaptureRequest| r.problem().expect("a problem");
        assert!(bad(CaptureRequest {
            duration_secs: Some(0.0),
            ..Default::default()
        })
        .contains("duration_secs"));
        assert!(bad(CaptureRequest {
            count: Some(0),
            ..Default::default()
        })
        .contains("count"));
        assert!(bad(CaptureRequest {
            snap_len: Some(10),
            ..Default::default()
        })
        .contains("snap_len"));
        assert!(bad(CaptureRequest {
            ring_mib: Some(0),
            ..Default::default()
        })
        .contains("ring_mib"));
    }
}
