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
//! IPv6 (neighbour discovery carries link-layer addresses inside ICMPv6,
//! under its checksum) is not translated: ipvlan networks are IPv4.

use std::net::Ipv4Addr;

use rustc_hash::FxHashMap;

use crate::wire::ethernet::{MacAddr, ETHERTYPE_ARP, ETHERTYPE_IPV4, HEADER_LEN};

/// Where the ARP sender hardware address is, from the frame's start.
const ARP_SHA: usize = HEADER_LEN + 8;
/// The ARP target hardware and protocol addresses.
const ARP_THA: usize = HEADER_LEN + 18;
const ARP_TPA: usize = HEADER_LEN + 24;
/// The IPv4 destination address.
const IPV4_DST: usize = HEADER_LEN + 16;

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
    }
}

/// Translate a frame from the LAN to the sandbox whose address it is for
/// (see the module header); `sandboxes` maps each sandbox address to its
/// own MAC.
pub fn from_lan(
    frame: &mut [u8],
    parent: MacAddr,
    sandboxes: &FxHashMap<Ipv4Addr, MacAddr>,
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
                (Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]), false)
            }
            _ => return FromLan::NotOurs,
        }
    } else if is_ipv4_arp(frame) {
        let ip = &frame[ARP_TPA..ARP_TPA + 4];
        (Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]), true)
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

    fn table() -> FxHashMap<Ipv4Addr, MacAddr> {
        [(Ipv4Addr::new(10, 0, 0, 7), SANDBOX)]
            .into_iter()
            .collect()
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
