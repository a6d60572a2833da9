//! ARP probes (RFC 5227, "IPv4 Address Conflict Detection"): before a
//! macvlan sandbox takes an address of a real LAN, weft asks the LAN
//! whether someone already has it.
//!
//! # Theory of operation
//!
//! A probe is an ARP request for the candidate address whose sender
//! address is 0.0.0.0, so that no host's ARP cache learns anything from
//! it ([`probe_frame`]). A host that has the address answers it (Linux
//! replies to such a request like any other), and a host that is
//! probing for the same address sends its own probe; either one, seen
//! within the wait, means the address is taken ([`claimant`]). Only the
//! frame bytes are here; the driver sends and waits.

use std::net::Ipv4Addr;

use crate::wire::ethernet::{MacAddr, ETHERTYPE_ARP, HEADER_LEN};

/// Bytes of an ARP request for IPv4 over Ethernet, Ethernet header
/// included (no padding: the parent pads short frames).
pub const PROBE_LEN: usize = HEADER_LEN + 28;

const ARP_REQUEST: u16 = 1;
const ARP_REPLY: u16 = 2;

/// A probe for `target` from `source` (the prober's own MAC).
pub fn probe_frame(source: MacAddr, target: Ipv4Addr) -> [u8; PROBE_LEN] {
    let mut frame = [0u8; PROBE_LEN];
    frame[..6].copy_from_slice(&MacAddr::BROADCAST.0);
    frame[6..12].copy_from_slice(&source.0);
    frame[12..14].copy_from_slice(&ETHERTYPE_ARP.to_be_bytes());
    let arp = &mut frame[HEADER_LEN..];
    arp[0..2].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    arp[2..4].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    arp[4] = 6;
    arp[5] = 4;
    arp[6..8].copy_from_slice(&ARP_REQUEST.to_be_bytes());
    arp[8..14].copy_from_slice(&source.0);
    // Sender IP 0.0.0.0 (RFC 5227 2.1.1); target MAC zero.
    arp[24..28].copy_from_slice(&target.octets());
    frame
}

/// If `frame` (an untagged Ethernet frame) says someone other than
/// `prober` holds or wants `address`: that host's MAC. An ARP reply or
/// request whose sender address is `address`, or another host's probe for
/// it (RFC 5227 2.1.1).
pub fn claimant(frame: &[u8], address: Ipv4Addr, prober: MacAddr) -> Option<MacAddr> {
    if frame.get(12..14)? != ETHERTYPE_ARP.to_be_bytes() {
        return None;
    }
    let arp = frame.get(HEADER_LEN..HEADER_LEN + 28)?;
    if arp[0..2] != 1u16.to_be_bytes()
        || arp[2..4] != 0x0800u16.to_be_bytes()
        || arp[4] != 6
        || arp[5] != 4
    {
        return None;
    }
    let operation = u16::from_be_bytes([arp[6], arp[7]]);
    let sender_mac = MacAddr(arp[8..14].try_into().ok()?);
    let sender_ip = Ipv4Addr::new(arp[14], arp[15], arp[16], arp[17]);
    let target_ip = Ipv4Addr::new(arp[24], arp[25], arp[26], arp[27]);
    if sender_mac == prober {
        return None;
    }
    let holds = (operation == ARP_REPLY || operation == ARP_REQUEST) && sender_ip == address;
    let also_probing =
        operation == ARP_REQUEST && sender_ip.is_unspecified() && target_ip == address;
    (holds || also_probing).then_some(sender_mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: MacAddr = MacAddr([0x02, 0x42, 10, 0, 0, 9]);
    const THEM: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 7]);

    fn reply(sender: MacAddr, sender_ip: Ipv4Addr) -> Vec<u8> {
        let mut f = probe_frame(sender, Ipv4Addr::UNSPECIFIED).to_vec();
        f[20..22].copy_from_slice(&ARP_REPLY.to_be_bytes());
        f[28..32].copy_from_slice(&sender_ip.octets());
        f
    }

    #[test]
    fn a_probe_asks_for_the_address_without_claiming_one() {
        let target = Ipv4Addr::new(10, 0, 0, 9);
        let probe = probe_frame(ME, target);
        assert_eq!(probe[..6], [0xff; 6]);
        assert_eq!(probe[28..32], [0, 0, 0, 0], "sender IP 0.0.0.0");
        assert_eq!(probe[38..42], target.octets());
        // Our own probe, seen back, claims nothing.
        assert_eq!(claimant(&probe, target, ME), None);
        // Another host probing for it does.
        assert_eq!(claimant(&probe_frame(THEM, target), target, ME), Some(THEM));
    }

    #[test]
    fn a_reply_or_request_from_the_address_is_a_claim() {
        let target = Ipv4Addr::new(10, 0, 0, 9);
        assert_eq!(claimant(&reply(THEM, target), target, ME), Some(THEM));
        assert_eq!(
            claimant(&reply(THEM, Ipv4Addr::new(10, 0, 0, 8)), target, ME),
            None
        );
        assert_eq!(claimant(&[0u8; 20], target, ME), None);
        let mut not_arp = reply(THEM, target);
        not_arp[12] = 0x08;
        not_arp[13] = 0x00;
        assert_eq!(claimant(&not_arp, target, ME), None);
    }
}
