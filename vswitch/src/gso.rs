//! Software segmentation and checksum completion for frames that carry
//! offload metadata in their `virtio_net_hdr`.
//!
//! # Theory of operation
//!
//! With TAP offloads on, a sandbox's kernel hands the switch TCP
//! super-segments of up to 64 KiB (`GSO_TCPV4`/`GSO_TCPV6`) whose transport
//! checksum is only seeded with the pseudo-header (`NEEDS_CSUM`). Between
//! two TAPs they pass untouched. Where a frame must leave as ordinary
//! MTU-sized frames (a receiver without offloads: the gateway's own
//! stack, NAT's host sockets, the overlay's UDP), [`segment`] cuts it:
//!
//! - the Ethernet, IP and TCP headers are copied in front of each
//!   `gso_size`-byte piece of payload;
//! - IPv4: total length, identification (+1 per segment, as Linux does)
//!   and header checksum per segment; IPv6: payload length;
//! - TCP: sequence number advanced by the bytes before the piece; FIN and
//!   PSH only on the last segment, CWR only on the first; checksum computed
//!   in full over the pseudo-header, header and piece.
//!
//! [`complete_checksum`] finishes a `NEEDS_CSUM` frame in place (no GSO):
//! the sum from `csum_start` to the end, stored at `csum_start +
//! csum_offset`, exactly what the kernel's `skb_checksum_help` does.
//!
//! UDP segmentation offload (`GSO_UDP_L4`, USO) is cut the same way into
//! datagrams of `gso_size` payload bytes, each with its own UDP length and
//! checksum.
//!
//! Each segment is built in space the caller lends ([`SegmentSink`]): one
//! scratch buffer handed to a callback ([`segment`]), or straight where it
//! will be sent from (the overlay's datagram buffer, behind its tunnel
//! header), so nothing is allocated per frame and the payload is copied
//! once. Not handled (an error, the
//! frame is dropped and counted): UDP fragmentation offload (`GSO_UDP`,
//! which Linux no longer produces),
//! IPv6 extension headers before TCP, IPv4 options are copied as they are.

use crate::wire::checksum;
use crate::wire::ip::IpLayout;
use crate::wire::vnet::{VnetHeader, GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4};

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const UDP_HEADER_LEN: usize = 8;
const TCP_FLAG_FIN: u8 = 0x01;
const TCP_FLAG_PSH: u8 = 0x08;
const TCP_FLAG_CWR: u8 = 0x80;
/// `VIRTIO_NET_HDR_GSO_ECN`, or-ed into the GSO type.
const GSO_ECN: u8 = 0x80;

/// Why a frame could not be segmented or completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GsoError {
    /// Headers shorter than they claim, or a checksum offset outside the
    /// frame.
    Malformed,
    /// A GSO type or header layout this module does not cut.
    Unsupported,
    /// `gso_size` of zero.
    ZeroSegmentSize,
    /// The scratch buffer is smaller than one segment.
    ScratchTooSmall,
}

/// Finish a partial transport checksum in place.
///
/// # Errors
///
/// [`GsoError::Malformed`] when `csum_start`/`csum_offset` point outside
/// the frame.
pub fn complete_checksum(
    frame: &mut [u8],
    csum_start: usize,
    csum_offset: usize,
) -> Result<(), GsoError> {
    let at = csum_start
        .checked_add(csum_offset)
        .ok_or(GsoError::Malformed)?;
    if at + 2 > frame.len() || csum_start > frame.len() {
        return Err(GsoError::Malformed);
    }
    let sum = checksum::finish(checksum::sum(0, &frame[csum_start..]));
    frame[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    Ok(())
}

/// Where segments are built: space for each, lent by the caller.
pub trait SegmentSink {
    /// Space for the next segment, exactly `len` bytes; None when the sink
    /// has none that large ([`GsoError::ScratchTooSmall`]).
    fn space(&mut self, len: usize) -> Option<&mut [u8]>;
    /// The segment in the space last lent is complete.
    fn filled(&mut self) {}
}

/// A sink of one scratch buffer: each segment is handed to `emit` once
/// built.
struct Scratch<'s, F> {
    buffer: &'s mut [u8],
    len: usize,
    emit: F,
}

impl<F: FnMut(&[u8])> SegmentSink for Scratch<'_, F> {
    fn space(&mut self, len: usize) -> Option<&mut [u8]> {
        self.len = len;
        self.buffer.get_mut(..len)
    }

    fn filled(&mut self) {
        (self.emit)(&self.buffer[..self.len]);
    }
}

/// Cut a GSO frame (Ethernet frame `frame`, its header `vnet`) into
/// MTU-sized frames, each built in `scratch` and passed to `emit`. A frame
/// without GSO is passed through once, its checksum completed (in
/// `scratch`) if needed; one that needs nothing is passed as it is,
/// without a copy. Returns the number of frames emitted.
///
/// # Errors
///
/// [`GsoError`] when the frame cannot be cut; nothing was emitted then.
pub fn segment<B: AsRef<[u8]>>(
    vnet: &VnetHeader<B>,
    frame: &[u8],
    scratch: &mut [u8],
    mut emit: impl FnMut(&[u8]),
) -> Result<usize, GsoError> {
    if vnet.gso_type() & !GSO_ECN == GSO_NONE && !vnet.needs_csum() {
        emit(frame);
        return Ok(1);
    }
    let mut sink = Scratch {
        buffer: scratch,
        len: 0,
        emit,
    };
    segment_into(vnet, frame, &mut sink)
}

/// [`segment`], building each frame in space `sink` lends.
///
/// # Errors
///
/// [`GsoError`] when the frame cannot be cut. Headers are checked before
/// the first frame is built, so nothing was built then, except when the
/// sink runs out of space part way.
pub fn segment_into<B: AsRef<[u8]>>(
    vnet: &VnetHeader<B>,
    frame: &[u8],
    sink: &mut impl SegmentSink,
) -> Result<usize, GsoError> {
    let gso_type = vnet.gso_type() & !GSO_ECN;
    if gso_type == GSO_NONE {
        if vnet.needs_csum() {
            let (start, offset) = (
                usize::from(vnet.csum_start()),
                usize::from(vnet.csum_offset()),
            );
            // Checked before the sink lends space: a bad offset builds nothing.
            if start.saturating_add(offset).saturating_add(2) > frame.len() {
                return Err(GsoError::Malformed);
            }
            let out = sink.space(frame.len()).ok_or(GsoError::ScratchTooSmall)?;
            out.copy_from_slice(frame);
            complete_checksum(out, start, offset)?;
        } else {
            let out = sink.space(frame.len()).ok_or(GsoError::ScratchTooSmall)?;
            out.copy_from_slice(frame);
        }
        sink.filled();
        return Ok(1);
    }
    if gso_type == GSO_UDP_L4 {
        return segment_udp(vnet, frame, sink);
    }
    if gso_type != GSO_TCPV4 && gso_type != GSO_TCPV6 {
        return Err(GsoError::Unsupported);
    }
    let mss = usize::from(vnet.gso_size());
    if mss == 0 {
        return Err(GsoError::ZeroSegmentSize);
    }
    let layout = Layout::parse(frame, gso_type == GSO_TCPV4)?;
    let payload = &frame[layout.headers_len..];
    if payload.is_empty() {
        return Err(GsoError::Malformed);
    }
    let pieces = payload.len().div_ceil(mss);
    let seq = read_u32(frame, layout.tcp + 4);
    let flags = frame[layout.tcp + 13];
    let ip_id = if layout.v4 {
        read_u16(frame, layout.ip + 4)
    } else {
        0
    };
    for (i, piece) in payload.chunks(mss).enumerate() {
        let len = layout.headers_len + piece.len();
        let tcp_len = layout.tcp_header_len + piece.len();
        // Segment sizes are bounded by the 64 KiB frame, so they fit u16.
        // Every check comes before the sink lends space: a sink never
        // holds a segment half built.
        let tcp_len16 = u16::try_from(tcp_len).map_err(|_| GsoError::Malformed)?;
        let total = if layout.v4 {
            u16::try_from(layout.ip_header_len + tcp_len).map_err(|_| GsoError::Malformed)?
        } else {
            0
        };
        let offset = u32::try_from(i * mss).map_err(|_| GsoError::Malformed)?;
        let out = sink.space(len).ok_or(GsoError::ScratchTooSmall)?;
        out[..layout.headers_len].copy_from_slice(&frame[..layout.headers_len]);
        out[layout.headers_len..].copy_from_slice(piece);
        if layout.v4 {
            write_u16(out, layout.ip + 2, total);
            write_u16(
                out,
                layout.ip + 4,
                ip_id.wrapping_add(u16::try_from(i).unwrap_or(0)),
            );
            checksum::fill_ipv4_header(&mut out[layout.ip..layout.ip + layout.ip_header_len]);
        } else {
            write_u16(out, layout.ip + 4, tcp_len16);
        }
        write_u32(out, layout.tcp + 4, seq.wrapping_add(offset));
        let mut seg_flags = flags;
        if i + 1 < pieces {
            seg_flags &= !(TCP_FLAG_FIN | TCP_FLAG_PSH);
        }
        if i > 0 {
            seg_flags &= !TCP_FLAG_CWR;
        }
        out[layout.tcp + 13] = seg_flags;
        write_u16(out, layout.tcp + 16, 0);
        let pseudo = if layout.v4 {
            checksum::pseudo_header_v4(
                read_array(out, layout.ip + 12),
                read_array(out, layout.ip + 16),
                IPPROTO_TCP,
                tcp_len16,
            )
        } else {
            checksum::pseudo_header_v6(
                read_array(out, layout.ip + 8),
                read_array(out, layout.ip + 24),
                IPPROTO_TCP,
                u32::from(tcp_len16),
            )
        };
        let tcp_sum = checksum::finish(checksum::sum(pseudo, &out[layout.tcp..]));
        write_u16(out, layout.tcp + 16, tcp_sum);
        sink.filled();
    }
    Ok(pieces)
}

/// Cut a UDP segmentation offload (USO, `GSO_UDP_L4`) frame: every
/// `gso_size` bytes of payload become one datagram with its own UDP length
/// and checksum, behind copies of the IP header (IPv4 identification +1 per
/// datagram).
fn segment_udp<B: AsRef<[u8]>>(
    vnet: &VnetHeader<B>,
    frame: &[u8],
    sink: &mut impl SegmentSink,
) -> Result<usize, GsoError> {
    let mss = usize::from(vnet.gso_size());
    if mss == 0 {
        return Err(GsoError::ZeroSegmentSize);
    }
    let layout = IpLayout::parse(frame).ok_or(GsoError::Malformed)?;
    let (v4, ip, ip_header_len, protocol) =
        (layout.v4, IpLayout::IP, layout.header_len, layout.protocol);
    if protocol != IPPROTO_UDP {
        return Err(GsoError::Unsupported);
    }
    let udp = ip + ip_header_len;
    let headers_len = udp + UDP_HEADER_LEN;
    let payload = frame.get(headers_len..).ok_or(GsoError::Malformed)?;
    if payload.is_empty() {
        return Err(GsoError::Malformed);
    }
    let ip_id = if v4 { read_u16(frame, ip + 4) } else { 0 };
    let mut count = 0;
    for (i, piece) in payload.chunks(mss).enumerate() {
        let len = headers_len + piece.len();
        let udp_len =
            u16::try_from(UDP_HEADER_LEN + piece.len()).map_err(|_| GsoError::Malformed)?;
        let total = if v4 {
            u16::try_from(ip_header_len + usize::from(udp_len)).map_err(|_| GsoError::Malformed)?
        } else {
            0
        };
        let out = sink.space(len).ok_or(GsoError::ScratchTooSmall)?;
        out[..headers_len].copy_from_slice(&frame[..headers_len]);
        out[headers_len..].copy_from_slice(piece);
        if v4 {
            write_u16(out, ip + 2, total);
            write_u16(
                out,
                ip + 4,
                ip_id.wrapping_add(u16::try_from(i).unwrap_or(0)),
            );
            checksum::fill_ipv4_header(&mut out[ip..ip + ip_header_len]);
        } else {
            write_u16(out, ip + 4, udp_len);
        }
        write_u16(out, udp + 4, udp_len);
        write_u16(out, udp + 6, 0);
        let pseudo = if v4 {
            checksum::pseudo_header_v4(
                read_array(out, ip + 12),
                read_array(out, ip + 16),
                IPPROTO_UDP,
                udp_len,
            )
        } else {
            checksum::pseudo_header_v6(
                read_array(out, ip + 8),
                read_array(out, ip + 24),
                IPPROTO_UDP,
                u32::from(udp_len),
            )
        };
        // A computed zero is sent as all ones (RFC 768).
        let sum = match checksum::finish(checksum::sum(pseudo, &out[udp..])) {
            0 => 0xffff,
            sum => sum,
        };
        write_u16(out, udp + 6, sum);
        sink.filled();
        count += 1;
    }
    Ok(count)
}

/// Where the headers of a TCP frame are.
struct Layout {
    v4: bool,
    ip: usize,
    ip_header_len: usize,
    tcp: usize,
    tcp_header_len: usize,
    headers_len: usize,
}

impl Layout {
    fn parse(frame: &[u8], v4: bool) -> Result<Layout, GsoError> {
        let layout = IpLayout::parse(frame).ok_or(GsoError::Malformed)?;
        if layout.v4 != v4 {
            return Err(GsoError::Malformed);
        }
        let (ip, ip_header_len, protocol) = (IpLayout::IP, layout.header_len, layout.protocol);
        if protocol != IPPROTO_TCP {
            return Err(GsoError::Unsupported);
        }
        let tcp = ip + ip_header_len;
        let data_offset = *frame.get(tcp + 12).ok_or(GsoError::Malformed)?;
        let tcp_header_len = usize::from(data_offset >> 4) * 4;
        if tcp_header_len < 20 || tcp + tcp_header_len > frame.len() {
            return Err(GsoError::Malformed);
        }
        Ok(Layout {
            v4,
            ip,
            ip_header_len,
            tcp,
            tcp_header_len,
            headers_len: tcp + tcp_header_len,
        })
    }
}

fn read_u16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn read_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn read_array<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&b[at..at + N]);
    out
}

fn write_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

fn write_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::vnet::{FLAG_NEEDS_CSUM, VNET_HDR_LEN};
    use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};

    fn vnet(
        flags: u8,
        gso_type: u8,
        gso_size: u16,
        csum_start: u16,
        csum_offset: u16,
    ) -> [u8; VNET_HDR_LEN] {
        let mut h = [0u8; VNET_HDR_LEN];
        h[0] = flags;
        h[1] = gso_type;
        h[4..6].copy_from_slice(&gso_size.to_le_bytes());
        h[6..8].copy_from_slice(&csum_start.to_le_bytes());
        h[8..10].copy_from_slice(&csum_offset.to_le_bytes());
        h
    }

    /// A TCP super-segment as the kernel hands it over: lengths of the
    /// whole thing, checksum seeded with the pseudo-header only.
    fn super_segment(v4: bool, payload: &[u8], flags_fin_psh: bool) -> Vec<u8> {
        let builder = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        let builder = if v4 {
            builder.ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        } else {
            builder.ipv6([0xfd; 16], [0xfe; 16], 64)
        };
        let mut tcp = builder.tcp(40000, 5201, 1_000_000, 65535).ack(77).cwr();
        if flags_fin_psh {
            tcp = tcp.psh().fin();
        }
        let mut frame = Vec::new();
        tcp.write(&mut frame, payload).unwrap();
        frame
    }

    fn check_segments(v4: bool) {
        let payload: Vec<u8> = (0..10_000u32).map(|i| (i * 7 + 3) as u8).collect();
        let frame = super_segment(v4, &payload, true);
        let tcp_at = if v4 { 34 } else { 54 };
        let hdr = vnet(
            FLAG_NEEDS_CSUM,
            if v4 { GSO_TCPV4 } else { GSO_TCPV6 },
            1448,
            tcp_at,
            16,
        );
        let hdr = VnetHeader::new_checked(&hdr[..]).unwrap();
        let mut scratch = vec![0xa5u8; 2000];
        let mut got = Vec::new();
        let n = segment(&hdr, &frame, &mut scratch, |f| got.push(f.to_vec())).unwrap();
        assert_eq!(n, 7);
        let mut reassembled = Vec::new();
        for (i, seg) in got.iter().enumerate() {
            let p = SlicedPacket::from_ethernet(seg).unwrap();
            let Some(TransportSlice::Tcp(tcp)) = p.transport else {
                panic!("not TCP")
            };
            assert_eq!(tcp.sequence_number(), 1_000_000 + (i as u32) * 1448);
            let last = i + 1 == got.len();
            assert_eq!(tcp.fin(), last);
            assert_eq!(tcp.psh(), last);
            assert_eq!(tcp.cwr(), i == 0);
            match p.net {
                Some(NetSlice::Ipv4(ip)) => {
                    let h = ip.header().to_header();
                    assert_eq!(h.header_checksum, h.calc_header_checksum());
                    assert_eq!(usize::from(h.total_len), seg.len() - 14);
                    assert_eq!(
                        tcp.to_header()
                            .calc_checksum_ipv4(&h, tcp.payload())
                            .unwrap(),
                        tcp.checksum()
                    );
                }
                Some(NetSlice::Ipv6(ip)) => {
                    let h = ip.header().to_header();
                    assert_eq!(usize::from(h.payload_length), seg.len() - 54);
                    assert_eq!(
                        tcp.to_header()
                            .calc_checksum_ipv6(&h, tcp.payload())
                            .unwrap(),
                        tcp.checksum()
                    );
                }
                _ => panic!("no IP"),
            }
            assert!(tcp.payload().len() <= 1448);
            reassembled.extend_from_slice(tcp.payload());
        }
        assert_eq!(reassembled, payload);
    }

    #[test]
    fn segments_tcpv4() {
        check_segments(true);
    }

    #[test]
    fn segments_tcpv6() {
        check_segments(false);
    }

    #[test]
    fn segments_uso_datagrams() {
        let payload: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        let mut frame = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(4000, 5000)
            .write(&mut frame, &payload)
            .unwrap();
        let hdr = vnet(FLAG_NEEDS_CSUM, GSO_UDP_L4, 1200, 34, 6);
        let hdr = VnetHeader::new_checked(&hdr[..]).unwrap();
        let mut scratch = vec![0xa5u8; 2000];
        let mut got = Vec::new();
        assert_eq!(
            segment(&hdr, &frame, &mut scratch, |f| got.push(f.to_vec())).unwrap(),
            3
        );
        let mut reassembled = Vec::new();
        for seg in &got {
            let p = SlicedPacket::from_ethernet(seg).unwrap();
            let Some(NetSlice::Ipv4(ip)) = p.net else {
                panic!("not IPv4")
            };
            let h = ip.header().to_header();
            assert_eq!(h.header_checksum, h.calc_header_checksum());
            let Some(TransportSlice::Udp(udp)) = p.transport else {
                panic!("not UDP")
            };
            assert_eq!(usize::from(udp.length()), 8 + udp.payload().len());
            assert_eq!(
                udp.to_header()
                    .calc_checksum_ipv4(&h, udp.payload())
                    .unwrap(),
                udp.checksum()
            );
            reassembled.extend_from_slice(udp.payload());
        }
        assert_eq!(reassembled, payload);
    }

    #[test]
    fn completes_a_partial_checksum() {
        let payload = b"partial checksum please";
        let full = super_segment(true, payload, false);
        let p = SlicedPacket::from_ethernet(&full).unwrap();
        let Some(TransportSlice::Tcp(tcp)) = p.transport else {
            panic!()
        };
        let good = tcp.checksum();
        // Seed the field with the folded pseudo-header sum, as the kernel does.
        let mut partial = full.clone();
        let tcp_len = (full.len() - 34) as u16;
        let seed = checksum::fold(checksum::pseudo_header_v4(
            [10, 0, 0, 1],
            [10, 0, 0, 2],
            6,
            tcp_len,
        ));
        partial[50..52].copy_from_slice(&seed.to_be_bytes());
        let hdr = vnet(FLAG_NEEDS_CSUM, GSO_NONE, 0, 34, 16);
        let hdr = VnetHeader::new_checked(&hdr[..]).unwrap();
        let mut scratch = vec![0u8; 2000];
        let mut out = Vec::new();
        segment(&hdr, &partial, &mut scratch, |f| out = f.to_vec()).unwrap();
        assert_eq!(u16::from_be_bytes([out[50], out[51]]), good);
    }

    #[test]
    fn rejects_what_it_cannot_cut() {
        let frame = super_segment(true, &[1; 3000], false);
        let mut scratch = vec![0u8; 2000];
        let zero = vnet(1, GSO_TCPV4, 0, 34, 16);
        assert_eq!(
            segment(
                &VnetHeader::new_checked(&zero[..]).unwrap(),
                &frame,
                &mut scratch,
                |_| {}
            ),
            Err(GsoError::ZeroSegmentSize)
        );
        let udp = vnet(1, crate::wire::vnet::GSO_UDP, 1400, 34, 6);
        // GSO_UDP (UFO) is not cut; USO of a TCP frame is not UDP.
        let uso_of_tcp = vnet(1, GSO_UDP_L4, 1400, 34, 6);
        assert_eq!(
            segment(
                &VnetHeader::new_checked(&uso_of_tcp[..]).unwrap(),
                &frame,
                &mut scratch,
                |_| {}
            ),
            Err(GsoError::Unsupported)
        );
        assert_eq!(
            segment(
                &VnetHeader::new_checked(&udp[..]).unwrap(),
                &frame,
                &mut scratch,
                |_| {}
            ),
            Err(GsoError::Unsupported)
        );
        let wrong_family = vnet(1, GSO_TCPV6, 1400, 34, 16);
        assert_eq!(
            segment(
                &VnetHeader::new_checked(&wrong_family[..]).unwrap(),
                &frame,
                &mut scratch,
                |_| {}
            ),
            Err(GsoError::Malformed)
        );
        let ok = vnet(1, GSO_TCPV4, 1400, 34, 16);
        assert_eq!(
            segment(
                &VnetHeader::new_checked(&ok[..]).unwrap(),
                &frame[..40],
                &mut scratch,
                |_| {}
            ),
            Err(GsoError::Malformed)
        );
        assert_eq!(
            complete_checksum(&mut [0u8; 10], 8, 4),
            Err(GsoError::Malformed)
        );
    }
}
