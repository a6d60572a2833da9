//! Receive coalescing (GRO) of TCP segments (IPv4 or IPv6) that arrive as separate
//! frames (from a tunnel), so that a TAP gets one GSO frame instead of
//! dozens of MTU-sized ones.
//!
//! # Theory of operation
//!
//! A sender's 64 KiB TCP segment crosses the underlay as ~45 datagrams
//! and arrives as a run of frames of the same flow, each carrying the next
//! bytes of the stream. Writing each to a TAP costs one trip through the
//! kernel's receive path per 1400 bytes. Instead, consecutive frames that
//! only continue one another are merged into one frame (the first one's
//! headers, all the payloads) written with a GSO header of the original
//! segment size ([`crate::wire::vnet::tcp_gso_header`]): the sandbox's
//! kernel takes it whole, as it takes a GRO'd packet from a NIC.
//!
//! Frames merge only when nothing but the payload and sequence number
//! differ, as Linux's GRO asks: same Ethernet and IP addresses, IPv4
//! without options or fragmentation (IPv6 without extension headers), same
//! TTL and TOS (hop limit, traffic class and flow label), same ports, same
//! TCP header length and options, the same acknowledgment number, flags
//! ACK only (a PSH ends the run), the sequence number right after the
//! merged bytes, and every merged payload of the first one's size but the
//! last. Anything else is written as it came.
//!
//! The merged frame goes out with a partial checksum (`NEEDS_CSUM`), so
//! the inner checksums of the merged segments are not verified again. The
//! outer UDP checksum, which the kernel verifies before the datagram
//! reaches the tunnel socket, already covers every inner byte (weft sends
//! it, and so does Linux's vxlan by default). Only from a peer that sends
//! a zero outer checksum would a corrupted merged segment go unnoticed.

use crate::wire::checksum;
use crate::wire::ip::IpLayout;

const ETH: usize = 14;
const IPV4: usize = 20;
const IPV6: usize = 40;
/// IP protocol number of TCP.
const TCP: u8 = 6;
/// TCP flags byte: ACK alone, or ACK and PSH.
const ACK: u8 = 0x10;
const PSH: u8 = 0x08;

/// Largest merged frame: a GSO frame's IP packet fits in 64 KiB.
pub const MAX_MERGED: usize = ETH + 65_535;

/// The parts of a TCP frame GRO looks at; None for anything else.
#[derive(Debug, Clone, Copy)]
struct Segment {
    /// 20 (IPv4 without options) or 40 (IPv6 without extension headers).
    ip_header: usize,
    tcp_header: usize,
    payload: usize,
    seq: u32,
    flags: u8,
}

fn segment(frame: &[u8]) -> Option<Segment> {
    // TCP, not a fragment (DF allowed), IPv4 without options or IPv6
    // without extension headers, exactly as long as its header says.
    let layout = IpLayout::parse(frame)?;
    let ip = frame.get(ETH..)?;
    let (ip_header, ip_len) = (layout.header_len, layout.total_len);
    if layout.protocol != TCP
        || layout.fragment
        || (layout.v4 && ip_header != IPV4)
        || ip_len != ip.len()
    {
        return None;
    }
    let tcp = ip.get(ip_header..)?;
    let tcp_header = usize::from(tcp.get(12)? >> 4) * 4;
    if tcp_header < 20 || ip_header + tcp_header > ip_len {
        return None;
    }
    Some(Segment {
        ip_header,
        tcp_header,
        payload: ip_len - ip_header - tcp_header,
        seq: u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
        flags: tcp[13],
    })
}

/// A run of merged segments, kept in the caller's buffer.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    /// Payload bytes of the first segment: the GSO segment size.
    pub segment_size: usize,
    /// Segments merged so far.
    pub count: usize,
    /// The merged frame's length.
    pub len: usize,
    next_seq: u32,
    ip_header: usize,
    tcp_header: usize,
    /// A short or PSH segment ended the run.
    closed: bool,
}

impl Run {
    /// Start a run with `frame`, when it is a segment GRO can merge into
    /// (a pure ACK with payload); None otherwise.
    pub fn start(frame: &[u8]) -> Option<Run> {
        let s = segment(frame)?;
        if s.payload == 0 || (s.flags & !PSH) != ACK {
            return None;
        }
        Some(Run {
            segment_size: s.payload,
            count: 1,
            len: frame.len(),
            next_seq: s.seq.wrapping_add(s.payload as u32),
            ip_header: s.ip_header,
            tcp_header: s.tcp_header,
            closed: s.flags & PSH != 0,
        })
    }

    /// Append `next` to the run in `merged` (which holds the run's frame
    /// and has room up to [`MAX_MERGED`]) if it continues it; false, and
    /// nothing changed, if it does not.
    pub fn append(&mut self, merged: &mut [u8], next: &[u8]) -> bool {
        if self.closed {
            return false;
        }
        let Some(s) = segment(next) else {
            return false;
        };
        // Same IP family and header lengths first: the field comparisons
        // below index both frames by the run's layout.
        if s.ip_header != self.ip_header || s.tcp_header != self.tcp_header {
            return false;
        }
        let tcp = ETH + self.ip_header;
        let headers = tcp + self.tcp_header;
        if merged.len() < headers {
            return false;
        }
        let same_ip = if self.ip_header == IPV4 {
            // TOS; TTL and protocol; addresses.
            merged[ETH + 1] == next[ETH + 1]
                && merged[ETH + 8..ETH + 10] == next[ETH + 8..ETH + 10]
                && merged[ETH + 12..tcp] == next[ETH + 12..tcp]
        } else {
            // Version, traffic class, flow label; next header and hop
            // limit; addresses.
            merged[ETH..ETH + 4] == next[ETH..ETH + 4] && merged[ETH + 6..tcp] == next[ETH + 6..tcp]
        };
        // Ethernet addresses and type.
        let same_headers = merged[..ETH] == next[..ETH]
            && same_ip
            // Ports; acknowledgment number; header length; options.
            && merged[tcp..tcp + 4] == next[tcp..tcp + 4]
            && merged[tcp + 8..tcp + 13] == next[tcp + 8..tcp + 13]
            && merged[tcp + 20..headers] == next[tcp + 20..headers];
        let fits = s.payload > 0
            && s.payload <= self.segment_size
            && s.seq == self.next_seq
            && (s.flags & !PSH) == ACK
            && self.len + s.payload <= MAX_MERGED
            && self.len + s.payload <= merged.len();
        if !same_headers || !fits {
            return false;
        }
        merged[self.len..self.len + s.payload].copy_from_slice(&next[headers..]);
        self.len += s.payload;
        self.count += 1;
        self.next_seq = s.seq.wrapping_add(s.payload as u32);
        // The newest window and flags (a PSH ends the run).
        merged[tcp + 13..tcp + 16].copy_from_slice(&next[tcp + 13..tcp + 16]);
        if s.payload < self.segment_size || s.flags & PSH != 0 {
            self.closed = true;
        }
        true
    }

    /// Make the merged frame's IP header right again (IPv4: total length
    /// and header checksum; IPv6: payload length); the TCP checksum is left
    /// to the GSO header.
    pub fn finish(&self, merged: &mut [u8]) {
        if self.count < 2 {
            return;
        }
        if self.ip_header == IPV6 {
            let payload = u16::try_from(self.len - ETH - IPV6).unwrap_or(u16::MAX);
            merged[ETH + 4..ETH + 6].copy_from_slice(&payload.to_be_bytes());
            return;
        }
        let total = u16::try_from(self.len - ETH).unwrap_or(u16::MAX);
        merged[ETH + 2..ETH + 4].copy_from_slice(&total.to_be_bytes());
        checksum::fill_ipv4_header(&mut merged[ETH..ETH + IPV4]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};

    fn seg(seq: u32, payload: &[u8], psh: bool) -> Vec<u8> {
        let mut f = Vec::new();
        let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(5201, 40000, seq, 1000)
            .ack(99);
        let b = if psh { b.psh() } else { b };
        b.write(&mut f, payload).unwrap();
        f
    }

    /// A run started with the first frame, every other frame appended (each
    /// must join), in a buffer of `MAX_MERGED` bytes.
    fn merge(frames: &[Vec<u8>]) -> (Vec<u8>, Run) {
        let mut merged = vec![0u8; MAX_MERGED];
        merged[..frames[0].len()].copy_from_slice(&frames[0]);
        let mut run = Run::start(&frames[0]).unwrap();
        for frame in &frames[1..] {
            assert!(run.append(&mut merged, frame));
        }
        (merged, run)
    }

    /// Give a merged frame its GSO header and cut it back as a receiving
    /// kernel would: the GSO type and the segments.
    fn cut_back(frame: &mut [u8], run: &Run) -> (u8, Vec<Vec<u8>>) {
        let size = u16::try_from(run.segment_size).unwrap();
        let header = crate::wire::vnet::tcp_gso_header(frame, size).unwrap();
        let vnet = crate::wire::vnet::VnetHeader::new_checked(&header[..]).unwrap();
        let mut scratch = vec![0u8; MAX_MERGED];
        let mut segments = Vec::new();
        crate::gso::segment(&vnet, frame, &mut scratch, |s| segments.push(s.to_vec())).unwrap();
        (vnet.gso_type(), segments)
    }

    #[test]
    fn consecutive_segments_merge_and_cut_back_the_same() {
        let data: Vec<u8> = (0..3500u32).map(|i| (i % 251) as u8).collect();
        let frames = [
            seg(1000, &data[..1400], false),
            seg(2400, &data[1400..2800], false),
            seg(3800, &data[2800..], true),
        ];
        let (mut merged, mut run) = merge(&frames);
        // A short PSH segment ended it.
        assert!(!run.append(&mut merged, &seg(4500, b"x", false)));
        run.finish(&mut merged);
        let mut frame = merged[..run.len].to_vec();
        let p = SlicedPacket::from_ethernet(&frame).unwrap();
        let Some(TransportSlice::Tcp(tcp)) = &p.transport else {
            panic!()
        };
        assert_eq!(tcp.payload(), &data[..]);
        assert_eq!(tcp.sequence_number(), 1000);
        let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else {
            panic!()
        };
        // The header checksum is right again.
        let header = ip.header().to_header();
        assert_eq!(header.header_checksum, header.calc_header_checksum());
        drop(p);
        // Cut back by the GSO header: the original segments' payloads.
        let (gso_type, segments) = cut_back(&mut frame, &run);
        assert_eq!(gso_type, crate::wire::vnet::GSO_TCPV4);
        let payloads: Vec<Vec<u8>> = segments
            .iter()
            .map(|s| {
                let p = SlicedPacket::from_ethernet(s).unwrap();
                let Some(TransportSlice::Tcp(tcp)) = &p.transport else {
                    panic!()
                };
                tcp.payload().to_vec()
            })
            .collect();
        assert_eq!(payloads.len(), 3);
        assert_eq!(payloads.concat(), data);
    }

    fn seg6(seq: u32, payload: &[u8], psh: bool) -> Vec<u8> {
        let mut f = Vec::new();
        let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv6([0xfd; 16], [0xfe; 16], 64)
            .tcp(5201, 40000, seq, 1000)
            .ack(99);
        let b = if psh { b.psh() } else { b };
        b.write(&mut f, payload).unwrap();
        f
    }

    #[test]
    fn ipv6_segments_merge_and_cut_back_the_same() {
        let data: Vec<u8> = (0..3000u32).map(|i| (i % 253) as u8).collect();
        let frames = [
            seg6(7, &data[..1200], false),
            seg6(1207, &data[1200..2400], false),
            seg6(2407, &data[2400..], true),
        ];
        let (mut merged, mut run) = merge(&frames);
        // An IPv4 segment never joins an IPv6 run.
        assert!(!run.append(&mut merged, &seg(3007, &[1; 10], false)));
        run.finish(&mut merged);
        let mut frame = merged[..run.len].to_vec();
        let p = SlicedPacket::from_ethernet(&frame).unwrap();
        let Some(TransportSlice::Tcp(tcp)) = &p.transport else {
            panic!()
        };
        assert_eq!(tcp.payload(), &data[..]);
        drop(p);
        let (gso_type, segments) = cut_back(&mut frame, &run);
        assert_eq!(gso_type, crate::wire::vnet::GSO_TCPV6);
        let payloads: Vec<Vec<u8>> = segments
            .iter()
            .map(|s| {
                let p = SlicedPacket::from_ethernet(s).unwrap();
                let (Some(etherparse::NetSlice::Ipv6(ip)), Some(TransportSlice::Tcp(tcp))) =
                    (&p.net, &p.transport)
                else {
                    panic!()
                };
                let expected = tcp
                    .to_header()
                    .calc_checksum_ipv6(&ip.header().to_header(), tcp.payload())
                    .unwrap();
                assert_eq!(tcp.checksum(), expected);
                tcp.payload().to_vec()
            })
            .collect();
        assert_eq!(payloads.len(), 3);
        assert_eq!(payloads.concat(), data);
        // Another flow label is another flow.
        let mut run = Run::start(&frames[0]).unwrap();
        merged[..frames[0].len()].copy_from_slice(&frames[0]);
        let mut labelled = frames[1].clone();
        labelled[ETH + 3] ^= 1;
        assert!(!run.append(&mut merged, &labelled));
    }

    #[test]
    fn gaps_other_flows_and_control_segments_do_not_merge() {
        let a = seg(1000, &[1; 100], false);
        let mut merged = vec![0u8; MAX_MERGED];
        merged[..a.len()].copy_from_slice(&a);
        let mut run = Run::start(&a).unwrap();
        // A gap in the sequence.
        assert!(!run.append(&mut merged, &seg(1200, &[2; 100], false)));
        // Another flow (other port).
        let mut other = seg(1100, &[2; 100], false);
        other[14 + 20] ^= 1;
        assert!(!run.append(&mut merged, &other));
        // A bigger segment than the first.
        assert!(!run.append(&mut merged, &seg(1100, &[2; 200], false)));
        assert_eq!(run.count, 1);
        // Pure ACKs and SYNs do not start runs.
        assert!(Run::start(&seg(1000, &[], false)).is_none());
        let mut syn = seg(1000, &[1; 10], false);
        syn[14 + 20 + 13] |= 0x02;
        assert!(Run::start(&syn).is_none());
    }
}
