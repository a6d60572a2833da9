//! The address translation of an ipvlan (L2 mode) network: on the LAN,
//! every sandbox shows the parent's MAC, the one MAC a Wi-Fi access point
//! (or a switch port with port security) accepts from the parent.
//!
//! # Theory of operation
//!
//! Inside weft nothing changes: sandboxes keep their own MACs, and the
//! switch forwards by them. The translation happens at the uplink, in the
//! frame's bytes:
//!
//! - to the LAN ([`to_lan`]): the source MAC becomes the parent's, and an
//!   ARP packet's sender hardware address too, so the LAN's hosts learn
//!   every sandbox address at the parent's MAC;
//! - from the LAN ([`from_lan`]): a unicast frame to the parent's MAC is a
//!   sandbox's if its IPv4 destination (an ARP packet's target address) is
//!   a sandbox address: the destination MAC (and the ARP target hardware
//!   address) becomes that sandbox's. Anything else to the parent's MAC is
//!   the parent host's own traffic, left alone. Broadcast and multicast
//!   pass unchanged (a sandbox answers an ARP request for its address
//!   itself, and the reply is translated on its way out).
//!
//! IPv6 the same way: out, the link-layer address options of neighbour
//! solicitations, advertisements and router solicitations become the
//! parent's (and the ICMPv6 checksum is computed again); in, a frame to the
//! parent's MAC whose IPv6 destination is a sandbox's goes to that
//! sandbox. Neighbour discovery inside a packet with extension headers
//! before ICMPv6 is left as it is (no host sends it so).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rustc_hash::FxHashMap;

use crate::wire::checksum;
use crate::wire::ethernet::{MacAddr, ETHERTYPE_ARP, ETHERTYPE_IPV4, HEADER_LEN};

/// Where the ARP sender hardware address is, from the frame's start.
const ARP_SHA: usize = HEADER_LEN + 8;
/// The ARP target hardware and protocol addresses.
const ARP_THA: usize = HEADER_LEN + 18;
const ARP_TPA: usize = HEADER_LEN + 24;
/// The IPv4 destination address.
const IPV4_DST: usize = HEADER_LEN + 16;
/// The IPv6 header's payload length, next header, source and destination.
const IPV6_PAYLOAD_LEN: usize = HEADER_LEN + 4;
const IPV6_NEXT_HEADER: usize = HEADER_LEN + 6;
const IPV6_SRC: usize = HEADER_LEN + 8;
const IPV6_DST: usize = HEADER_LEN + 24;
/// Where ICMPv6 starts when it follows the IPv6 header directly.
const ICMPV6: usize = HEADER_LEN + 40;
const NEXT_HEADER_ICMPV6: u8 = 58;
const ETHERTYPE_IPV6: u16 = 0x86dd;
/// ND messages whose options may carry this host's link-layer address:
/// router solicitation, neighbour solicitation and advertisement.
const ND_ROUTER_SOLICITATION: u8 = 133;
const ND_NEIGHBOR_SOLICITATION: u8 = 135;
const ND_NEIGHBOR_ADVERTISEMENT: u8 = 136;
/// Source and target link-layer address options.
const OPTION_SOURCE_LL: u8 = 1;
const OPTION_TARGET_LL: u8 = 2;

/// What a frame from the LAN is to an ipvlan network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FromLan {
    /// A sandbox's (translated in place) or everyone's (broadcast,
    /// multicast): switch it.
    Ours,
    /// The parent host's own, or someone else's: leave it.
    NotOurs,
}

/// Rewrite a frame leaving for the LAN: the parent's MAC as its source
/// (and as an ARP packet's sender). Frames too short to be Ethernet are
/// left as they are (the switch drops them before they get here).
pub fn to_lan(frame: &mut [u8], parent: MacAddr) {
    if frame.len() < HEADER_LEN {
        return;
    }
    frame[6..12].copy_from_slice(&parent.0);
    if is_ipv4_arp(frame) {
        frame[ARP_SHA..ARP_SHA + 6].copy_from_slice(&parent.0);
    } else {
        rewrite_nd_options(frame, parent);
    }
}

/// In an ND message of the frame (see the module header), the link-layer
/// address options become `parent`, and the checksum follows.
fn rewrite_nd_options(frame: &mut [u8], parent: MacAddr) {
    if u16::from_be_bytes([frame[12], frame[13]]) != ETHERTYPE_IPV6
        || frame.get(IPV6_NEXT_HEADER) != Some(&NEXT_HEADER_ICMPV6)
    {
        return;
    }
    let Some(payload_len) = frame
        .get(IPV6_PAYLOAD_LEN..IPV6_PAYLOAD_LEN + 2)
        .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    else {
        return;
    };
    let Some(icmp_end) = ICMPV6
        .checked_add(payload_len)
        .filter(|end| *end <= frame.len())
    else {
        return;
    };
    let options_at = match frame.get(ICMPV6) {
        Some(&ND_ROUTER_SOLICITATION) => ICMPV6 + 8,
        Some(&ND_NEIGHBOR_SOLICITATION | &ND_NEIGHBOR_ADVERTISEMENT) => ICMPV6 + 24,
        _ => return,
    };
    let mut at = options_at;
    let mut changed = false;
    // Bounded: every option is at least 8 bytes, and the walk stops at
    // the message's end or at a malformed option.
    while at + 8 <= icmp_end {
        let (kind, units) = (frame[at], usize::from(frame[at + 1]));
        if units == 0 {
            return;
        }
        if (kind == OPTION_SOURCE_LL || kind == OPTION_TARGET_LL) && units == 1 {
            frame[at + 2..at + 8].copy_from_slice(&parent.0);
            changed = true;
        }
        at += units * 8;
    }
    if changed {
        fill_icmpv6_checksum(&mut frame[..icmp_end]);
    }
}

/// Compute an ICMPv6 message's checksum again (RFC 4443 2.3).
fn fill_icmpv6_checksum(frame: &mut [u8]) {
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&frame[IPV6_SRC..IPV6_SRC + 16]);
    dst.copy_from_slice(&frame[IPV6_DST..IPV6_DST + 16]);
    let icmp = &mut frame[ICMPV6..];
    let Ok(length) = u32::try_from(icmp.len()) else {
        return;
    };
    icmp[2..4].copy_from_slice(&[0, 0]);
    let pseudo = checksum::pseudo_header_v6(src, dst, NEXT_HEADER_ICMPV6, length);
    let sum = checksum::finish(checksum::sum(pseudo, icmp));
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
}

/// Translate a frame from the LAN to the sandbox whose address it is for
/// (see the module header); `sandboxes` maps each sandbox address to its
/// own MAC.
pub fn from_lan(
    frame: &mut [u8],
    parent: MacAddr,
    sandboxes: &FxHashMap<IpAddr, MacAddr>,
) -> FromLan {
    if frame.len() < HEADER_LEN {
        return FromLan::NotOurs;
    }
    let destination = MacAddr(frame[0..6].try_into().unwrap_or([0; 6]));
    if destination.is_multicast() {
        return FromLan::Ours;
    }
    if destination != parent {
        return FromLan::NotOurs;
    }
    let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
    let (target, arp) = if ethertype == ETHERTYPE_IPV4 {
        match frame.get(IPV4_DST..IPV4_DST + 4) {
            Some(ip) if frame[HEADER_LEN] >> 4 == 4 => {
                (IpAddr::V4(Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3])), false)
            }
            _ => return FromLan::NotOurs,
        }
    } else if ethertype == ETHERTYPE_IPV6 {
        let Some(ip) = frame.get(IPV6_DST..IPV6_DST + 16) else {
            return FromLan::NotOurs;
        };
        let mut octets = [0u8; 16];
        octets.copy_from_slice(ip);
        (IpAddr::V6(Ipv6Addr::from(octets)), false)
    } else if is_ipv4_arp(frame) {
        let ip = &frame[ARP_TPA..ARP_TPA + 4];
        (IpAddr::V4(Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3])), true)
    } else {
        return FromLan::NotOurs;
    };
    let Some(sandbox) = sandboxes.get(&target) else {
        return FromLan::NotOurs;
    };
    frame[0..6].copy_from_slice(&sandbox.0);
    if arp {
        frame[ARP_THA..ARP_THA + 6].copy_from_slice(&sandbox.0);
    }
    FromLan::Ours
}

/// An ARP packet for IPv4 over Ethernet, whole.
fn is_ipv4_arp(frame: &[u8]) -> bool {
    frame.len() >= ARP_TPA + 4
        && u16::from_be_bytes([frame[12], frame[13]]) == ETHERTYPE_ARP
        && frame[HEADER_LEN..HEADER_LEN + 6] == [0, 1, 0x08, 0x00, 6, 4]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::arp_probe::probe_frame;

    const PARENT: MacAddr = MacAddr([0x02, 0xaa, 0, 0, 0, 1]);
    const SANDBOX: MacAddr = MacAddr([0x02, 0x42, 10, 0, 0, 7]);
    const ROUTER: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0xfe]);

    fn table() -> FxHashMap<IpAddr, MacAddr> {
        [
            (IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7)), SANDBOX),
            (IpAddr::V6("fd00::7".parse().unwrap()), SANDBOX),
        ]
        .into_iter()
        .collect()
    }

    /// A neighbour advertisement from the sandbox's IPv6 address with a
    /// target link-layer address option of `mac`, checksummed.
    fn neighbour_advertisement(mac: MacAddr) -> Vec<u8> {
        let src: Ipv6Addr = "fd00::7".parse().unwrap();
        let dst: Ipv6Addr = "fd00::1".parse().unwrap();
        let mut f = ROUTER.0.to_vec();
        f.extend_from_slice(&mac.0);
        f.extend_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
        let mut ip = [0u8; 40];
        ip[0] = 0x60;
        ip[4..6].copy_from_slice(&32u16.to_be_bytes());
        ip[6] = NEXT_HEADER_ICMPV6;
        ip[7] = 255;
        ip[8..24].copy_from_slice(&src.octets());
        ip[24..40].copy_from_slice(&dst.octets());
        f.extend_from_slice(&ip);
        let mut icmp = vec![ND_NEIGHBOR_ADVERTISEMENT, 0, 0, 0, 0x60, 0, 0, 0];
        icmp.extend_from_slice(&src.octets());
        icmp.extend_from_slice(&[OPTION_TARGET_LL, 1]);
        icmp.extend_from_slice(&mac.0);
        f.extend_from_slice(&icmp);
        fill_icmpv6_checksum(&mut f);
        f
    }

    fn icmpv6_checksum_is_whole(frame: &[u8]) -> bool {
        let mut src = [0u8; 16];
        let mut dst = [0u8; 16];
        src.copy_from_slice(&frame[IPV6_SRC..IPV6_SRC + 16]);
        dst.copy_from_slice(&frame[IPV6_DST..IPV6_DST + 16]);
        let icmp = &frame[ICMPV6..];
        let length = u32::try_from(icmp.len()).unwrap();
        let pseudo = checksum::pseudo_header_v6(src, dst, NEXT_HEADER_ICMPV6, length);
        checksum::finish(checksum::sum(pseudo, icmp)) == 0
    }

    #[test]
    fn a_sandboxs_neighbour_advertisement_names_the_parent() {
        let mut na = neighbour_advertisement(SANDBOX);
        assert!(icmpv6_checksum_is_whole(&na));
        to_lan(&mut na, PARENT);
        assert_eq!(na[6..12], PARENT.0);
        assert_eq!(
            na[ICMPV6 + 26..ICMPV6 + 32],
            PARENT.0,
            "the target link-layer option"
        );
        assert!(icmpv6_checksum_is_whole(&na), "the checksum follows");
        // A reply to the parent's MAC for the sandbox's IPv6 address.
        let mut back = neighbour_advertisement(ROUTER);
        back[0..6].copy_from_slice(&PARENT.0);
        back[IPV6_DST..IPV6_DST + 16]
            .copy_from_slice(&"fd00::7".parse::<Ipv6Addr>().unwrap().octets());
        assert_eq!(from_lan(&mut back, PARENT, &table()), FromLan::Ours);
        assert_eq!(back[0..6], SANDBOX.0);
        // A malformed option (length 0) stops the walk, checksum untouched.
        let mut bad = neighbour_advertisement(SANDBOX);
        bad[ICMPV6 + 25] = 0;
        let before = bad[ICMPV6 + 2..ICMPV6 + 4].to_vec();
        to_lan(&mut bad, PARENT);
        assert_eq!(bad[ICMPV6 + 2..ICMPV6 + 4], before[..]);
    }

    fn ipv4(dst: MacAddr, src: MacAddr, dst_ip: [u8; 4]) -> Vec<u8> {
        let mut f = dst.0.to_vec();
        f.extend_from_slice(&src.0);
        f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        ip[16..20].copy_from_slice(&dst_ip);
        f.extend_from_slice(&ip);
        f
    }

    #[test]
    fn a_sandbox_shows_the_parents_mac_on_the_lan_and_gets_its_replies() {
        // Its ARP request leaves as the parent's.
        let mut request = probe_frame(SANDBOX, Ipv4Addr::new(10, 0, 0, 1)).to_vec();
        to_lan(&mut request, PARENT);
        assert_eq!(request[6..12], PARENT.0);
        assert_eq!(request[ARP_SHA..ARP_SHA + 6], PARENT.0);
        // The router's reply comes to the parent's MAC, for the sandbox's
        // address: translated back.
        let mut reply = probe_frame(ROUTER, Ipv4Addr::new(10, 0, 0, 7)).to_vec();
        reply[0..6].copy_from_slice(&PARENT.0);
        reply[HEADER_LEN + 7] = 2;
        assert_eq!(from_lan(&mut reply, PARENT, &table()), FromLan::Ours);
        assert_eq!(reply[0..6], SANDBOX.0);
        assert_eq!(reply[ARP_THA..ARP_THA + 6], SANDBOX.0);
        // IPv4 to the sandbox's address: to the sandbox.
        let mut packet = ipv4(PARENT, ROUTER, [10, 0, 0, 7]);
        assert_eq!(from_lan(&mut packet, PARENT, &table()), FromLan::Ours);
        assert_eq!(packet[0..6], SANDBOX.0);
    }

    #[test]
    fn the_parent_hosts_own_traffic_is_left_alone() {
        let mut packet = ipv4(PARENT, ROUTER, [10, 0, 0, 5]);
        let before = packet.clone();
        assert_eq!(from_lan(&mut packet, PARENT, &table()), FromLan::NotOurs);
        assert_eq!(packet, before);
        let mut other = ipv4(ROUTER, PARENT, [10, 0, 0, 7]);
        assert_eq!(from_lan(&mut other, PARENT, &table()), FromLan::NotOurs);
        let mut broadcast = ipv4(MacAddr::BROADCAST, ROUTER, [10, 0, 0, 255]);
        assert_eq!(from_lan(&mut broadcast, PARENT, &table()), FromLan::Ours);
        let mut short = vec![0u8; 5];
        assert_eq!(from_lan(&mut short, PARENT, &table()), FromLan::NotOurs);
        to_lan(&mut short, PARENT);
    }
}
