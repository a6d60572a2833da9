//! `virtio_net_hdr` (virtio spec 1.2, section 5.1.6 "Device Operation"), the
//! header a TAP opened with `IFF_VNET_HDR` puts before every frame.
//!
//! It carries the offload metadata of the frame that follows: whether the
//! transport checksum still has to be completed (`NEEDS_CSUM`, with
//! `csum_start`/`csum_offset`) and whether the frame is a GSO super-segment
//! that the receiver must cut into `gso_size` pieces. Between two TAPs the
//! header passes through untouched; frames the gateway builds carry an
//! all-zero header (no offload: a complete, checksummed frame).
//!
//! weft sets the TAP's header byte order to little endian (`TUNSETVNETLE`),
//! so the fields are read as little endian on every host.

use super::ip::IpLayout;

/// Where each field of the header is.
pub mod field {
    use std::ops::Range;
    /// `flags` (`NEEDS_CSUM`, ...).
    pub const FLAGS: usize = 0;
    /// `gso_type`.
    pub const GSO_TYPE: usize = 1;
    /// `hdr_len`: bytes of headers before the GSO payload.
    pub const HDR_LEN: Range<usize> = 2..4;
    /// `gso_size`: payload bytes per segment.
    pub const GSO_SIZE: Range<usize> = 4..6;
    /// `csum_start`: where the partial checksum's coverage starts.
    pub const CSUM_START: Range<usize> = 6..8;
    /// `csum_offset`: where, from `csum_start`, the checksum goes.
    pub const CSUM_OFFSET: Range<usize> = 8..10;
}

/// Length of the header weft uses (the legacy layout without `num_buffers`).
pub const VNET_HDR_LEN: usize = 10;

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the transport checksum is partial.
pub const FLAG_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_NONE`.
pub const GSO_NONE: u8 = 0;
/// `VIRTIO_NET_HDR_GSO_TCPV4`.
pub const GSO_TCPV4: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_UDP`.
pub const GSO_UDP: u8 = 3;
/// `VIRTIO_NET_HDR_GSO_TCPV6`.
pub const GSO_TCPV6: u8 = 4;
/// `VIRTIO_NET_HDR_GSO_UDP_L4` (USO).
pub const GSO_UDP_L4: u8 = 5;

/// A header that announces no offload.
pub const EMPTY: [u8; VNET_HDR_LEN] = [0; VNET_HDR_LEN];

/// The header for writing `frame`, a TCP segment larger than its path's
/// MSS, to a TAP as one GSO frame of `gso_size`-byte segments: checksum
/// left to the receiving kernel (`NEEDS_CSUM`, with the TCP checksum field
/// set to the folded pseudo-header sum, as the kernel's own partial
/// checksums are), little-endian fields (the TAPs are set to
/// `TUNSETVNETLE`). None when the frame is not TCP over IPv4 or IPv6.
pub fn tcp_gso_header(frame: &mut [u8], gso_size: u16) -> Option<[u8; VNET_HDR_LEN]> {
    let transport = Transport::parse(frame)?;
    if transport.protocol != TCP {
        return None;
    }
    let gso_type = if transport.v4 { GSO_TCPV4 } else { GSO_TCPV6 };
    let tcp_start = transport.start;
    let tcp_header_len = usize::from(frame.get(tcp_start + 12)? >> 4) * 4;
    let check = frame.get_mut(tcp_start + 16..tcp_start + 18)?;
    check.copy_from_slice(&super::checksum::fold(transport.pseudo).to_be_bytes());
    let hdr_len = u16::try_from(tcp_start + tcp_header_len).ok()?;
    let csum_start = u16::try_from(tcp_start).ok()?;
    let mut header = EMPTY;
    header[field::FLAGS] = FLAG_NEEDS_CSUM;
    header[field::GSO_TYPE] = gso_type;
    header[field::HDR_LEN].copy_from_slice(&hdr_len.to_le_bytes());
    header[field::GSO_SIZE].copy_from_slice(&gso_size.to_le_bytes());
    header[field::CSUM_START].copy_from_slice(&csum_start.to_le_bytes());
    header[field::CSUM_OFFSET].copy_from_slice(&16u16.to_le_bytes());
    Some(header)
}

/// The header for writing `frame`, which came from a wire, to a TAP:
/// `NEEDS_CSUM` when its TCP or UDP checksum field holds only the folded
/// pseudo-header sum, the seed a sender's kernel leaves for checksum
/// offload, else no offload.
///
/// A Linux vxlan device on a veth underlay hands such frames on
/// unfinished: veth offloads the checksum, nothing ever computes it, and
/// the UDP socket that receives the datagram cannot tell. Written as they
/// came, the sandbox's kernel would check the seed as a checksum and drop
/// every TCP segment; announced as partial, it takes them as it takes a
/// partial checksum from a veth of its own (and completes it if it
/// forwards the frame). A complete checksum that happens to equal the seed
/// (1 in 65536) is only left unverified.
pub fn wire_frame_header(frame: &[u8]) -> [u8; VNET_HDR_LEN] {
    partial_checksum(frame).map_or(EMPTY, |(start, offset)| {
        let mut header = EMPTY;
        header[field::FLAGS] = FLAG_NEEDS_CSUM;
        header[field::CSUM_START].copy_from_slice(&start.to_le_bytes());
        header[field::CSUM_OFFSET].copy_from_slice(&offset.to_le_bytes());
        header
    })
}

/// Where a frame's transport checksum starts and where its field is, when
/// that field holds only the pseudo-header seed.
fn partial_checksum(frame: &[u8]) -> Option<(u16, u16)> {
    let transport = Transport::parse(frame)?;
    if transport.fragment {
        return None;
    }
    let offset: u16 = match transport.protocol {
        TCP => 16,
        UDP => 6,
        _ => return None,
    };
    let at = transport.start + usize::from(offset);
    let field = u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]);
    // UDP over IPv4 may carry no checksum at all (zero).
    (field != 0 && field == super::checksum::fold(transport.pseudo))
        .then_some((u16::try_from(transport.start).ok()?, offset))
}

const TCP: u8 = 6;
const UDP: u8 = 17;

/// Where an IP frame's transport header starts, and the sum of its
/// pseudo-header: what both a GSO header and a partial checksum are made
/// of. IPv4 (options allowed) or IPv6 without extension headers.
struct Transport {
    v4: bool,
    /// An IPv4 fragment (its transport header is not all there).
    fragment: bool,
    protocol: u8,
    /// Offset of the transport header in the frame.
    start: usize,
    /// The pseudo-header's sum, not folded.
    pseudo: u64,
}

impl Transport {
    fn parse(frame: &[u8]) -> Option<Transport> {
        use super::checksum;
        let layout = IpLayout::parse(frame)?;
        let (src, dst) = layout.address_ranges();
        let pseudo = if layout.v4 {
            let l4_len = u16::try_from(layout.transport_len()?).ok()?;
            checksum::pseudo_header_v4(
                frame.get(src)?.try_into().ok()?,
                frame.get(dst)?.try_into().ok()?,
                layout.protocol,
                l4_len,
            )
        } else {
            let payload = u32::try_from(layout.transport_len()?).ok()?;
            checksum::pseudo_header_v6(
                frame.get(src)?.try_into().ok()?,
                frame.get(dst)?.try_into().ok()?,
                layout.protocol,
                payload,
            )
        };
        Some(Transport {
            v4: layout.v4,
            fragment: layout.fragment,
            protocol: layout.protocol,
            start: layout.transport(),
            pseudo,
        })
    }
}

/// A view of a `virtio_net_hdr`.
#[derive(Debug, Clone, Copy)]
pub struct VnetHeader<B: AsRef<[u8]>> {
    buffer: B,
}

/// A buffer shorter than the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Truncated;

impl<B: AsRef<[u8]>> VnetHeader<B> {
    /// Wrap a buffer after checking its length.
    ///
    /// # Errors
    ///
    /// [`Truncated`] when the buffer is shorter than [`VNET_HDR_LEN`].
    pub fn new_checked(buffer: B) -> Result<Self, Truncated> {
        if buffer.as_ref().len() < VNET_HDR_LEN {
            return Err(Truncated);
        }
        Ok(VnetHeader { buffer })
    }

    fn u16_at(&self, range: std::ops::Range<usize>) -> u16 {
        let b = &self.buffer.as_ref()[range];
        u16::from_le_bytes([b[0], b[1]])
    }

    /// The flags byte.
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// The GSO type (`GSO_*`).
    pub fn gso_type(&self) -> u8 {
        self.buffer.as_ref()[field::GSO_TYPE]
    }

    /// Length of the headers before the segmented payload.
    pub fn hdr_len(&self) -> u16 {
        self.u16_at(field::HDR_LEN)
    }

    /// Payload bytes per segment.
    pub fn gso_size(&self) -> u16 {
        self.u16_at(field::GSO_SIZE)
    }

    /// Where the checksummed region starts, from the Ethernet header.
    pub fn csum_start(&self) -> u16 {
        self.u16_at(field::CSUM_START)
    }

    /// Where the checksum goes, from `csum_start`.
    pub fn csum_offset(&self) -> u16 {
        self.u16_at(field::CSUM_OFFSET)
    }

    /// True when the frame is a GSO super-segment.
    pub fn is_gso(&self) -> bool {
        self.gso_type() != GSO_NONE
    }

    /// True when the transport checksum is partial.
    pub fn needs_csum(&self) -> bool {
        self.flags() & FLAG_NEEDS_CSUM != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Header the kernel put before a 64 KiB TCP segment read from a TAP with
    // TSO4 offload: NEEDS_CSUM, GSO_TCPV4, hdr_len 66, gso_size 1448,
    // csum_start 34, csum_offset 16.
    const TSO_HEADER: [u8; 10] = [0x01, 0x01, 0x42, 0x00, 0xa8, 0x05, 0x22, 0x00, 0x10, 0x00];

    #[test]
    fn deconstruct() {
        let hdr = VnetHeader::new_checked(&TSO_HEADER[..]).unwrap();
        assert!(hdr.needs_csum());
        assert!(hdr.is_gso());
        assert_eq!(hdr.gso_type(), GSO_TCPV4);
        assert_eq!(hdr.hdr_len(), 66);
        assert_eq!(hdr.gso_size(), 1448);
        assert_eq!(hdr.csum_start(), 34);
        assert_eq!(hdr.csum_offset(), 16);
        let empty = VnetHeader::new_checked(&EMPTY[..]).unwrap();
        assert!(!empty.is_gso() && !empty.needs_csum());
        assert_eq!(
            VnetHeader::new_checked(&TSO_HEADER[..9]).unwrap_err(),
            Truncated
        );
    }

    /// A 5000-byte TCP segment with a GSO header cut by our own segmenter
    /// gives 1448-byte segments whose checksums are all right.
    #[test]
    fn a_tcp_gso_header_lets_the_segment_be_cut_with_right_checksums() {
        let payload: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
        let mut frame = Vec::new();
        etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(80, 40000, 1000, 65535)
            .ack(77)
            .write(&mut frame, &payload)
            .unwrap();
        let header = tcp_gso_header(&mut frame, 1448).unwrap();
        let vnet = VnetHeader::new_checked(&header[..]).unwrap();
        assert!(vnet.is_gso() && vnet.needs_csum());
        assert_eq!(vnet.hdr_len(), 14 + 20 + 20);
        let mut scratch = vec![0u8; 65536];
        let mut segments = Vec::new();
        crate::gso::segment(&vnet, &frame, &mut scratch, |s| segments.push(s.to_vec())).unwrap();
        assert_eq!(segments.len(), 4);
        let mut joined = Vec::new();
        for s in &segments {
            let p = etherparse::SlicedPacket::from_ethernet(s).unwrap();
            let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else {
                panic!()
            };
            let Some(etherparse::TransportSlice::Tcp(tcp)) = &p.transport else {
                panic!()
            };
            let expected = tcp
                .to_header()
                .calc_checksum_ipv4(&ip.header().to_header(), tcp.payload())
                .unwrap();
            assert_eq!(tcp.checksum(), expected);
            joined.extend_from_slice(tcp.payload());
        }
        assert_eq!(joined, payload);
    }

    /// A TCP frame whose checksum field holds the pseudo-header seed (as a
    /// Linux vxlan on a veth sends it) is announced as partial, and
    /// completing it as the kernel would gives the right checksum; a frame
    /// with a complete checksum, UDP without one, and ICMP are not.
    #[test]
    fn only_a_seeded_checksum_is_announced_partial() {
        let payload = b"seeded by a sender that offloads its checksum";
        let mut complete = Vec::new();
        etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(80, 40000, 1000, 65535)
            .ack(77)
            .write(&mut complete, payload)
            .unwrap();
        assert_eq!(wire_frame_header(&complete), EMPTY);

        let mut seeded = complete.clone();
        let tcp_len = u16::try_from(20 + payload.len()).unwrap();
        let seed = super::super::checksum::fold(super::super::checksum::pseudo_header_v4(
            [10, 0, 0, 1],
            [10, 0, 0, 2],
            6,
            tcp_len,
        ));
        seeded[34 + 16..34 + 18].copy_from_slice(&seed.to_be_bytes());
        let header = wire_frame_header(&seeded);
        let vnet = VnetHeader::new_checked(&header[..]).unwrap();
        assert!(vnet.needs_csum() && !vnet.is_gso());
        assert_eq!((vnet.csum_start(), vnet.csum_offset()), (34, 16));
        crate::gso::complete_checksum(&mut seeded, 34, 16).unwrap();
        assert_eq!(seeded, complete);

        let mut udp = Vec::new();
        etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv6([0xfd; 16], [0xfe; 16], 64)
            .udp(53, 40000)
            .write(&mut udp, payload)
            .unwrap();
        assert_eq!(wire_frame_header(&udp), EMPTY);
        let udp_len = u32::try_from(8 + payload.len()).unwrap();
        let seed = super::super::checksum::fold(super::super::checksum::pseudo_header_v6(
            [0xfd; 16], [0xfe; 16], 17, udp_len,
        ));
        udp[54 + 6..54 + 8].copy_from_slice(&seed.to_be_bytes());
        let header = wire_frame_header(&udp);
        let vnet = VnetHeader::new_checked(&header[..]).unwrap();
        assert_eq!((vnet.csum_start(), vnet.csum_offset()), (54, 6));

        let mut icmp = Vec::new();
        etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .icmpv4_echo_request(1, 1)
            .write(&mut icmp, payload)
            .unwrap();
        assert_eq!(wire_frame_header(&icmp), EMPTY);
        assert_eq!(wire_frame_header(&icmp[..20]), EMPTY);
    }
}
