//! The IP layout of an Ethernet frame: where its IP and transport headers
//! are, its protocol, the length its IP header announces, and whether it
//! is an IPv4 fragment.
//!
//! One parse of the fixed fields, shared by everything on the hot path
//! that must find the transport header without a full parse: GSO
//! ([`crate::gso`]), GRO ([`crate::gro`]), the virtio header's checksum
//! offsets ([`crate::wire::vnet`]) and IPv4 reassembly (in the gateway's
//! services). The rules live here once: IPv4 with or without options,
//! IPv6 without extension headers (its next header is taken as the
//! transport, as Linux's GSO does), anything else is not IP to them.
//!
//! No length is trusted beyond what the buffer holds: [`IpLayout::parse`]
//! checks the header is all there; whether the announced length matches
//! the frame is each consumer's rule (a GSO frame's may not), so it is
//! given, not enforced.

use crate::wire::ethernet::{ETHERTYPE_IPV4, ETHERTYPE_IPV6, HEADER_LEN};

/// Length of an IPv6 header (extension headers are not followed).
pub const IPV6_HEADER_LEN: usize = 40;

/// Length of an IPv4 header without options.
pub const IPV4_MIN_HEADER_LEN: usize = 20;

/// See the module header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpLayout {
    /// IPv4 (else IPv6).
    pub v4: bool,
    /// Length of the IP header: IPv4's IHL × 4, or 40.
    pub header_len: usize,
    /// IPv4's protocol or IPv6's next header.
    pub protocol: u8,
    /// The IP packet's length as its header says: IPv4's total length, or
    /// 40 plus IPv6's payload length.
    pub total_len: usize,
    /// An IPv4 fragment: more fragments follow, or this one is not the
    /// first. (IPv6 fragments are an extension header: not followed.)
    pub fragment: bool,
}

impl IpLayout {
    /// Where the IP header starts: right after the Ethernet header.
    pub const IP: usize = HEADER_LEN;

    /// The layout of `frame`, or None when it is not IPv4 or IPv6 or its
    /// IP header is cut short.
    pub fn parse(frame: &[u8]) -> Option<IpLayout> {
        let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
        let ip = frame.get(Self::IP..)?;
        match ethertype {
            ETHERTYPE_IPV4 => {
                let version_ihl = *ip.first()?;
                let header_len = usize::from(version_ihl & 0x0f) * 4;
                if version_ihl >> 4 != 4
                    || header_len < IPV4_MIN_HEADER_LEN
                    || ip.len() < header_len
                {
                    return None;
                }
                let flags_offset = u16::from_be_bytes([ip[6], ip[7]]);
                Some(IpLayout {
                    v4: true,
                    header_len,
                    protocol: ip[9],
                    total_len: usize::from(u16::from_be_bytes([ip[2], ip[3]])),
                    fragment: flags_offset & 0x3fff != 0,
                })
            }
            ETHERTYPE_IPV6 => {
                if ip.len() < IPV6_HEADER_LEN || ip[0] >> 4 != 6 {
                    return None;
                }
                Some(IpLayout {
                    v4: false,
                    header_len: IPV6_HEADER_LEN,
                    protocol: ip[6],
                    total_len: IPV6_HEADER_LEN + usize::from(u16::from_be_bytes([ip[4], ip[5]])),
                    fragment: false,
                })
            }
            _ => None,
        }
    }

    /// Where the transport header starts in the frame.
    pub fn transport(&self) -> usize {
        Self::IP + self.header_len
    }

    /// Bytes of transport header and payload the IP header announces
    /// (None when it announces less than its own header).
    pub fn transport_len(&self) -> Option<usize> {
        self.total_len.checked_sub(self.header_len)
    }

    /// The source and destination addresses' bytes within the frame.
    pub fn address_ranges(&self) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
        let ip = Self::IP;
        if self.v4 {
            (ip + 12..ip + 16, ip + 16..ip + 20)
        } else {
            (ip + 8..ip + 24, ip + 24..ip + 40)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    fn udp_v4(options: bool) -> Vec<u8> {
        let mut frame = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(1, 2)
            .write(&mut frame, b"hello")
            .unwrap();
        if options {
            // Insert a 4-byte NOP option: IHL 6.
            frame.splice(34..34, [1, 1, 1, 1]);
            frame[14] = 0x46;
            let total = u16::from_be_bytes([frame[16], frame[17]]) + 4;
            frame[16..18].copy_from_slice(&total.to_be_bytes());
        }
        frame
    }

    #[test]
    fn ipv4_with_and_without_options() {
        let plain = IpLayout::parse(&udp_v4(false)).unwrap();
        assert_eq!(
            plain,
            IpLayout {
                v4: true,
                header_len: 20,
                protocol: 17,
                total_len: 20 + 8 + 5,
                fragment: false
            }
        );
        assert_eq!(plain.transport(), 34);
        assert_eq!(plain.transport_len(), Some(13));
        let with_options = IpLayout::parse(&udp_v4(true)).unwrap();
        assert_eq!(with_options.header_len, 24);
        assert_eq!(with_options.transport(), 38);
        assert_eq!(with_options.address_ranges(), (26..30, 30..34));
    }

    #[test]
    fn ipv6_and_fragments() {
        let mut frame = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv6([1; 16], [2; 16], 64)
            .tcp(1, 2, 3, 4)
            .write(&mut frame, b"x")
            .unwrap();
        let v6 = IpLayout::parse(&frame).unwrap();
        assert!(!v6.v4 && !v6.fragment);
        assert_eq!(
            (v6.protocol, v6.transport(), v6.total_len),
            (6, 54, 40 + 21)
        );
        assert_eq!(&frame[v6.address_ranges().0], &[1; 16]);

        let mut fragment = udp_v4(false);
        fragment[20] = 0x20; // MF
        assert!(IpLayout::parse(&fragment).unwrap().fragment);
    }

    #[test]
    fn what_is_not_ip_or_is_cut_short_has_no_layout() {
        let frame = udp_v4(false);
        assert!(IpLayout::parse(&frame[..14 + 19]).is_none());
        let mut arp = frame.clone();
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert!(IpLayout::parse(&arp).is_none());
        let mut bad_version = frame.clone();
        bad_version[14] = 0x65;
        assert!(IpLayout::parse(&bad_version).is_none());
        let mut short_ihl = frame;
        short_ihl[14] = 0x44;
        assert!(IpLayout::parse(&short_ihl).is_none());
        assert!(IpLayout::parse(&[0u8; 3]).is_none());
    }
}
