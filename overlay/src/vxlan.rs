//! VXLAN encapsulation (RFC 7348), the wire format between weft hosts.
//!
//! # Theory of operation
//!
//! A frame leaving for another host is an ordinary Ethernet frame prefixed
//! with an 8-byte VXLAN header and sent in a UDP datagram to port 4789
//! (IANA, RFC 7348 section 5) of the owning host's underlay address:
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |R|R|R|R|I|R|R|R|            Reserved                           |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                VXLAN Network Identifier (VNI) |   Reserved    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! On receipt the I flag (0x08) must be set, every reserved bit is ignored
//! (RFC 7348 section 5: "MUST be ... ignored on receipt"); on transmit the
//! reserved bits are zero. [`decap`] checks the header and that what
//! follows is at least an Ethernet header, and returns the VNI and the inner
//! frame without copying. [`encap_header`] builds the 8 bytes to prepend.
//!
//! The outer UDP source port carries entropy for ECMP and RSS on the
//! underlay (RFC 7348 section 5, "Source Port"): [`source_port`] hashes the
//! inner flow (the IPv4/IPv6 addresses, protocol and TCP/UDP/SCTP ports
//! when present, otherwise the MAC addresses and EtherType) into Linux's
//! default ephemeral range 32768..=60999, as the kernel's vxlan does with
//! `udp_flow_src_port`. The kernel seeds its flow hash randomly at boot, so
//! its port for a given flow cannot be reproduced; ours is deterministic
//! (FNV-1a, no seed), so one flow always leaves with one port, which keeps
//! the flow's packets in order on the underlay.
//!
//! # Limits
//!
//! Everything here works on borrowed slices and cannot panic on any input
//! (the `vxlan_decap` fuzz target holds it to that). The group-policy
//! (VXLAN-GBP) and generic-protocol (VXLAN-GPE) extensions are not parsed:
//! their bits are reserved bits to us, ignored on receipt as the RFC says.

/// UDP port for VXLAN assigned by IANA (RFC 7348 section 5).
pub const DEFAULT_PORT: u16 = 4789;

/// Length of the VXLAN header in bytes.
pub const HEADER_LEN: usize = 8;

/// Bytes that VXLAN over IPv4 adds around an inner Ethernet frame: outer
/// IPv4 header (20) + UDP header (8) + VXLAN header (8) + the inner
/// Ethernet header (14) that the inner MTU does not count. Subtract it
/// from the underlay MTU to get the overlay's inner MTU (1500 -> 1450, as
/// Linux's vxlan does).
pub const OVERHEAD_V4: usize = 50;

/// Same as [`OVERHEAD_V4`] with an outer IPv6 header (40 bytes).
pub const OVERHEAD_V6: usize = 70;

/// Length of an Ethernet header without VLAN tag; the shortest inner frame
/// [`decap`] accepts.
pub const ETHERNET_HEADER_LEN: usize = 14;

/// The lowest outer source port [`source_port`] returns (Linux's default
/// `ip_local_port_range` start).
pub const SOURCE_PORT_MIN: u16 = 32768;

/// The highest outer source port [`source_port`] returns (Linux's default
/// `ip_local_port_range` end).
pub const SOURCE_PORT_MAX: u16 = 60999;

/// The "I" flag: the VNI field is valid (RFC 7348 section 5).
const FLAG_VNI_VALID: u8 = 0x08;

pub use weft_vswitch::{Vni, VniOutOfRange};

/// The parsed VXLAN header (RFC 7348 section 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VxlanHeader {
    /// The network this frame belongs to.
    pub vni: Vni,
}

/// Why a datagram is not a VXLAN frame we accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecapError {
    /// Fewer than 8 bytes: no room for the VXLAN header.
    #[error("datagram of {len} bytes is shorter than the 8-byte VXLAN header")]
    TooShort {
        /// Length of the datagram.
        len: usize,
    },
    /// The I flag (0x08) is clear, so the VNI is not valid (RFC 7348 section 5).
    #[error("VXLAN flags {flags:#04x} lack the I (VNI valid) flag 0x08")]
    VniFlagMissing {
        /// The flags byte as received.
        flags: u8,
    },
    /// What follows the header is shorter than an Ethernet header.
    #[error("inner frame of {len} bytes is shorter than an Ethernet header")]
    InnerTooShort {
        /// Length of the inner frame.
        len: usize,
    },
}

impl VxlanHeader {
    /// Parses the first 8 bytes of `bytes`.
    ///
    /// # Errors
    ///
    /// [`DecapError::TooShort`] or [`DecapError::VniFlagMissing`].
    pub fn parse(bytes: &[u8]) -> Result<Self, DecapError> {
        let Some(header) = bytes.first_chunk::<HEADER_LEN>() else {
            return Err(DecapError::TooShort { len: bytes.len() });
        };
        let flags = header[0];
        if flags & FLAG_VNI_VALID == 0 {
            return Err(DecapError::VniFlagMissing { flags });
        }
        let vni = u32::from_be_bytes([0, header[4], header[5], header[6]]);
        Ok(Self {
            vni: Vni::from_low_bits(vni),
        })
    }

    /// The 8 bytes of this header: I flag set, every reserved bit zero.
    pub fn emit(&self) -> [u8; HEADER_LEN] {
        let [_, vni_high, vni_mid, vni_low] = self.vni.get().to_be_bytes();
        [FLAG_VNI_VALID, 0, 0, 0, vni_high, vni_mid, vni_low, 0]
    }
}

/// Splits a received VXLAN UDP payload into its VNI and inner Ethernet frame.
///
/// # Errors
///
/// [`DecapError`] when the header is short, lacks the I flag, or the inner
/// frame is shorter than an Ethernet header.
pub fn decap(datagram: &[u8]) -> Result<(Vni, &[u8]), DecapError> {
    let header = VxlanHeader::parse(datagram)?;
    let inner = datagram.get(HEADER_LEN..).unwrap_or_default();
    if inner.len() < ETHERNET_HEADER_LEN {
        return Err(DecapError::InnerTooShort { len: inner.len() });
    }
    Ok((header.vni, inner))
}

/// The VXLAN header to prepend to an inner frame of network `vni`.
pub fn encap_header(vni: Vni) -> [u8; HEADER_LEN] {
    VxlanHeader { vni }.emit()
}

/// The outer UDP source port for `inner_frame`: a deterministic hash of its
/// flow in `SOURCE_PORT_MIN..=SOURCE_PORT_MAX`. See the module header.
pub fn source_port(inner_frame: &[u8]) -> u16 {
    let mut hash = FlowHash::new();
    flow_key(inner_frame, &mut hash);
    let span = u64::from(SOURCE_PORT_MAX - SOURCE_PORT_MIN) + 1;
    // Scale the high 32 bits into the span, like the kernel's
    // `reciprocal_scale`; `offset < span <= u16::MAX`, so it fits.
    let offset = ((hash.finish() >> 32) * span) >> 32;
    SOURCE_PORT_MIN.saturating_add(u16::try_from(offset).unwrap_or(0))
}

/// Feeds the flow-identifying fields of an Ethernet frame into `hash`.
fn flow_key(frame: &[u8], hash: &mut FlowHash) {
    const ETHERTYPE_IPV4: u16 = 0x0800;
    const ETHERTYPE_IPV6: u16 = 0x86dd;
    const ETHERTYPE_VLAN: u16 = 0x8100;
    let be16 = |at: usize| {
        frame
            .get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
    };
    let Some(mut ethertype) = be16(12) else {
        hash.write(frame);
        return;
    };
    let mut l3_start = ETHERNET_HEADER_LEN;
    if ethertype == ETHERTYPE_VLAN {
        match be16(16) {
            Some(inner_type) => {
                ethertype = inner_type;
                l3_start += 4;
            }
            None => {
                hash.write(frame);
                return;
            }
        }
    }
    let l3 = frame.get(l3_start..).unwrap_or_default();
    let hashed_l3 = match ethertype {
        ETHERTYPE_IPV4 => ipv4_flow_key(l3, hash),
        ETHERTYPE_IPV6 => ipv6_flow_key(l3, hash),
        _ => false,
    };
    if !hashed_l3 {
        // Not IP (ARP, LLDP, ...) or truncated: the MACs and EtherType.
        hash.write(frame.get(..ETHERNET_HEADER_LEN).unwrap_or(frame));
    }
}

/// IPv4 addresses, protocol and ports; false if the header is truncated.
fn ipv4_flow_key(packet: &[u8], hash: &mut FlowHash) -> bool {
    let Some(header) = packet.get(..20) else {
        return false;
    };
    let header_len = usize::from(header[0] & 0x0f) * 4;
    let protocol = header[9];
    let fragment = u16::from_be_bytes([header[6], header[7]]);
    // More-fragments flag or a non-zero offset: ports are absent or not
    // in every fragment, so hash addresses only (as the kernel does).
    let is_fragment = fragment & 0x3fff != 0;
    hash.write(&header[12..20]);
    hash.write(&[protocol]);
    if !is_fragment && header_len >= 20 {
        ports_flow_key(protocol, packet.get(header_len..).unwrap_or_default(), hash);
    }
    true
}

/// IPv6 addresses, next header and ports; false if the header is truncated.
fn ipv6_flow_key(packet: &[u8], hash: &mut FlowHash) -> bool {
    let Some(header) = packet.get(..40) else {
        return false;
    };
    let next_header = header[6];
    hash.write(&header[8..40]);
    hash.write(&[next_header]);
    // Extension headers are not walked: such packets hash on addresses.
    ports_flow_key(next_header, packet.get(40..).unwrap_or_default(), hash);
    true
}

/// The two 16-bit ports of TCP (6), UDP (17), SCTP (132) or UDP-Lite (136).
fn ports_flow_key(protocol: u8, l4: &[u8], hash: &mut FlowHash) {
    if matches!(protocol, 6 | 17 | 132 | 136) {
        if let Some(ports) = l4.get(..4) {
            hash.write(ports);
        }
    }
}

/// FNV-1a, 64 bits: deterministic, unseeded, fast on a few dozen bytes.
struct FlowHash(u64);

impl FlowHash {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    fn new() -> Self {
        Self(Self::OFFSET_BASIS)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(Self::PRIME);
        }
    }

    fn finish(&self) -> u64 {
        // FNV's high bits mix poorly for short inputs: fold them together.
        let folded = self.0 ^ (self.0 >> 29) ^ (self.0 << 31);
        folded.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(text: &str) -> Vec<u8> {
        let digits: Vec<u8> = text.bytes().filter(u8::is_ascii_hexdigit).collect();
        digits
            .chunks(2)
            .map(|pair| {
                let pair = std::str::from_utf8(pair).expect("hex digits are ASCII");
                u8::from_str_radix(pair, 16).expect("filtered to hex digits")
            })
            .collect()
    }

    /// UDP payload of an ARP request sent by Linux 6.x's vxlan (`ip link add
    /// vx0 type vxlan id 42 dstport 4789`), captured with tcpdump on the
    /// underlay veth: 198.51.100.1 (02:00:00:00:00:0a) asks for 198.51.100.2.
    const LINUX_ARP_REQUEST: &str = "
        0800000000002a00
        ffffffffffff 02000000000a 0806
        0001 0800 06 04 0001 02000000000a c6336401 000000000000 c6336402";

    /// UDP payload of the ICMP echo request that followed (`ping -c 1`).
    const LINUX_ICMP_ECHO: &str = "
        0800000000002a00
        02000000000b 02000000000a 0800
        45000054b839400040012e05c6336401c6336402
        080080d9154b00011a5a046b000000007b420900000000001011121314151617
        18191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f3031323334353637";

    #[test]
    fn decaps_linux_arp_request() {
        let datagram = hex(LINUX_ARP_REQUEST);
        let (vni, inner) = decap(&datagram).expect("Linux's frame decaps");
        assert_eq!(vni, Vni::new(42).unwrap());
        assert_eq!(inner.len(), 42);
        assert_eq!(&inner[..6], &[0xff; 6], "broadcast destination");
        assert_eq!(&inner[6..12], &[2, 0, 0, 0, 0, 0x0a]);
        assert_eq!(&inner[12..14], &[0x08, 0x06], "ARP");
    }

    #[test]
    fn decaps_linux_icmp_echo() {
        let datagram = hex(LINUX_ICMP_ECHO);
        let (vni, inner) = decap(&datagram).expect("Linux's frame decaps");
        assert_eq!(vni.get(), 42);
        assert_eq!(inner.len(), 98);
        assert_eq!(&inner[26..30], &[198, 51, 100, 1], "inner IPv4 source");
    }

    #[test]
    fn emits_the_header_linux_sends() {
        let datagram = hex(LINUX_ICMP_ECHO);
        let vni = Vni::new(42).unwrap();
        assert_eq!(encap_header(vni), datagram[..HEADER_LEN]);
    }

    #[test]
    fn emit_overwrites_every_byte() {
        let mut buffer = [0xa5u8; HEADER_LEN];
        buffer.copy_from_slice(
            &VxlanHeader {
                vni: Vni::new(0x12_3456).unwrap(),
            }
            .emit(),
        );
        assert_eq!(buffer, [0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0]);
    }

    #[test]
    fn reserved_bits_are_ignored_on_receipt() {
        let mut datagram = hex(LINUX_ARP_REQUEST);
        datagram[0] = 0xff;
        datagram[1..4].fill(0xff);
        datagram[7] = 0xff;
        let (vni, _) = decap(&datagram).expect("reserved bits do not matter");
        assert_eq!(vni.get(), 42);
    }

    #[test]
    fn linux_frames_round_trip_through_decap_and_encap() {
        let captured = hex(LINUX_ARP_REQUEST);
        let (vni, inner) = decap(&captured).expect("Linux's frame opens");
        assert_eq!(vni.get(), 42);
        let mut written = encap_header(vni).to_vec();
        assert_eq!(written, captured[..HEADER_LEN]);
        written.extend_from_slice(inner);
        assert_eq!(written, captured);
        assert!(decap(&captured[..7]).is_err());
    }

    #[test]
    fn rejects_missing_i_flag() {
        let mut datagram = hex(LINUX_ARP_REQUEST);
        datagram[0] = 0xf7;
        assert_eq!(
            decap(&datagram),
            Err(DecapError::VniFlagMissing { flags: 0xf7 })
        );
    }

    #[test]
    fn rejects_short_datagrams() {
        let datagram = hex(LINUX_ARP_REQUEST);
        assert_eq!(decap(&datagram[..7]), Err(DecapError::TooShort { len: 7 }));
        assert_eq!(decap(&[]), Err(DecapError::TooShort { len: 0 }));
        assert_eq!(
            decap(&datagram[..21]),
            Err(DecapError::InnerTooShort { len: 13 })
        );
        assert!(
            decap(&datagram[..22]).is_ok(),
            "a bare Ethernet header is enough"
        );
    }

    #[test]
    fn vni_is_24_bits() {
        assert!(Vni::new(Vni::MAX).is_ok());
        assert_eq!(Vni::new(1 << 24), Err(VniOutOfRange(1 << 24)));
    }

    #[test]
    fn source_port_is_stable_and_in_range() {
        let arp = hex(LINUX_ARP_REQUEST);
        let icmp = hex(LINUX_ICMP_ECHO);
        for inner in [&arp[8..], &icmp[8..], &[][..], &[1, 2, 3][..]] {
            let port = source_port(inner);
            assert!((SOURCE_PORT_MIN..=SOURCE_PORT_MAX).contains(&port));
            assert_eq!(port, source_port(inner), "deterministic");
        }
    }

    #[test]
    fn source_port_follows_the_flow() {
        // A UDP/IPv4 frame; vary one field at a time.
        let mut frame = hex("02000000000b 02000000000a 0800
             4500001c000040004011 0000 c6336401 c6336402
             30390035 0008 0000");
        let base = source_port(&frame);
        // Payload-independent fields like the IP id and TTL keep the port.
        frame[18] = 0x77;
        frame[22] = 1;
        assert_eq!(source_port(&frame), base);
        // Another source port is another flow: over 64 source ports the
        // hash must spread over many outer ports.
        let mut ports = std::collections::HashSet::new();
        for sport in 0..64u16 {
            frame[34..36].copy_from_slice(&(40000 + sport).to_be_bytes());
            ports.insert(source_port(&frame));
        }
        assert!(ports.len() > 50, "only {} distinct ports", ports.len());
    }

    #[test]
    fn overhead_matches_linux_default_mtu() {
        // Linux gives a vxlan device over a 1500-byte underlay an MTU of 1450.
        assert_eq!(1500 - OVERHEAD_V4, 1450);
        assert_eq!(20 + 8 + HEADER_LEN + ETHERNET_HEADER_LEN, OVERHEAD_V4);
    }
}
