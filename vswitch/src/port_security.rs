//! Port security: a sandbox sends only as itself.
//!
//! # Theory of operation
//!
//! Every local port has a [`PortIdentity`]: the MAC and addresses weft gave
//! its endpoint. The switch pins the MAC to the port in the network's MAC
//! table (a static entry: no one else can take it by sending with it), and,
//! unless the network turned enforcement off (`-o port_security=false`,
//! for a VM that bridges further guests), checks every frame the port
//! sends ([`PortIdentity::check`]) before learning or switching it:
//!
//! | frame | allowed when |
//! |---|---|
//! | any | the Ethernet source is the port's MAC |
//! | IPv4 | the source is one of the port's IPv4 addresses, or 0.0.0.0 (DHCP) |
//! | ARP | sender MAC is the port's, sender address one of its IPv4 addresses or 0.0.0.0 (a probe) |
//! | IPv6 | the source is one of the port's IPv6 addresses, link-local (`fe80::/10`) or `::` (DAD) |
//! | ICMPv6 neighbour advertisement | the target is one of the port's addresses or link-local |
//! | 802.1Q / 802.1ad tagged | never (a tag would hide the rest) |
//!
//! Other ethertypes pass with the MAC check alone. A refused frame is
//! dropped and counted on its port as `spoofed`. This is what Docker's
//! bridge cannot do (it does not know what a container may send as);
//! weft knows every endpoint's MAC and addresses because it gave them.
//!
//! The check reads fixed offsets of the headers, no allocation: a hash
//! lookup for the port's identity and a compare of a few bytes per frame.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::counters::DropReason;
use crate::wire::ethernet::MacAddr;

const ETH_HEADER: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_VLAN: u16 = 0x8100;
const ETHERTYPE_QINQ: u16 = 0x88a8;
const IPV6_HEADER: usize = 40;
const NEXT_HOP_BY_HOP: u8 = 0;
const NEXT_ICMPV6: u8 = 58;
const ICMPV6_NEIGHBOR_ADVERTISEMENT: u8 = 136;

/// What a port may send as. See the module header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortIdentity {
    /// The endpoint's MAC.
    pub mac: MacAddr,
    /// Its IPv4 addresses.
    pub ipv4: Vec<Ipv4Addr>,
    /// Its IPv6 addresses (link-local ones are always allowed).
    pub ipv6: Vec<Ipv6Addr>,
    /// Check every frame (false: `port_security=false`, only the MAC is
    /// pinned).
    pub enforce: bool,
}

impl PortIdentity {
    /// Whether `frame`, sent by this port, is sent as itself.
    ///
    /// # Errors
    ///
    /// [`DropReason::Spoofed`] when it is not, [`DropReason::Truncated`]
    /// when its headers are cut short.
    pub fn check(&self, frame: &[u8]) -> Result<(), DropReason> {
        if !self.enforce {
            return Ok(());
        }
        let header = frame.get(..ETH_HEADER).ok_or(DropReason::Truncated)?;
        if header[6..12] != self.mac.0 {
            return Err(DropReason::Spoofed);
        }
        let payload = &frame[ETH_HEADER..];
        match u16::from_be_bytes([header[12], header[13]]) {
            ETHERTYPE_IPV4 => {
                let source = ipv4_at(payload, 12)?;
                self.may_use_v4(source)
            }
            ETHERTYPE_ARP => {
                let sender_mac = payload.get(8..14).ok_or(DropReason::Truncated)?;
                if sender_mac != self.mac.0 {
                    return Err(DropReason::Spoofed);
                }
                self.may_use_v4(ipv4_at(payload, 14)?)
            }
            ETHERTYPE_IPV6 => self.check_ipv6(payload),
            ETHERTYPE_VLAN | ETHERTYPE_QINQ => Err(DropReason::Spoofed),
            _ => Ok(()),
        }
    }

    fn may_use_v4(&self, address: Ipv4Addr) -> Result<(), DropReason> {
        if address.is_unspecified() || self.ipv4.contains(&address) {
            Ok(())
        } else {
            Err(DropReason::Spoofed)
        }
    }

    fn may_use_v6(&self, address: Ipv6Addr) -> Result<(), DropReason> {
        if address.is_unicast_link_local() || self.ipv6.contains(&address) {
            Ok(())
        } else {
            Err(DropReason::Spoofed)
        }
    }

    fn check_ipv6(&self, packet: &[u8]) -> Result<(), DropReason> {
        let source = ipv6_at(packet, 8)?;
        if !source.is_unspecified() {
            self.may_use_v6(source)?;
        }
        // A neighbour advertisement claims its target address: only the
        // port's own (after at most a hop-by-hop header, as MLD uses).
        let mut next = *packet.get(6).ok_or(DropReason::Truncated)?;
        let mut offset = IPV6_HEADER;
        if next == NEXT_HOP_BY_HOP {
            next = *packet.get(offset).ok_or(DropReason::Truncated)?;
            let len = *packet.get(offset + 1).ok_or(DropReason::Truncated)?;
            offset += (usize::from(len) + 1) * 8;
        }
        if next == NEXT_ICMPV6 && packet.get(offset) == Some(&ICMPV6_NEIGHBOR_ADVERTISEMENT) {
            self.may_use_v6(ipv6_at(packet, offset + 8)?)?;
        }
        Ok(())
    }
}

fn ipv4_at(bytes: &[u8], offset: usize) -> Result<Ipv4Addr, DropReason> {
    let octets: [u8; 4] = bytes
        .get(offset..offset + 4)
        .and_then(|b| b.try_into().ok())
        .ok_or(DropReason::Truncated)?;
    Ok(Ipv4Addr::from(octets))
}

fn ipv6_at(bytes: &[u8], offset: usize) -> Result<Ipv6Addr, DropReason> {
    let octets: [u8; 16] = bytes
        .get(offset..offset + 16)
        .and_then(|b| b.try_into().ok())
        .ok_or(DropReason::Truncated)?;
    Ok(Ipv6Addr::from(octets))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: MacAddr = MacAddr([0x02, 0x42, 10, 0, 0, 2]);
    const OTHER: [u8; 6] = [0x02, 0x42, 10, 0, 0, 3];

    fn identity() -> PortIdentity {
        PortIdentity {
            mac: MAC,
            ipv4: vec![Ipv4Addr::new(10, 0, 0, 2)],
            ipv6: vec!["fd00::2".parse().unwrap()],
            enforce: true,
        }
    }

    fn eth(src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&src);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn ipv4(src: [u8; 4]) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0];
        p.extend_from_slice(&src);
        p.extend_from_slice(&[10, 0, 0, 1]);
        p
    }

    fn arp(sender_mac: [u8; 6], sender_ip: [u8; 4]) -> Vec<u8> {
        let mut p = vec![0, 1, 8, 0, 6, 4, 0, 2];
        p.extend_from_slice(&sender_mac);
        p.extend_from_slice(&sender_ip);
        p.extend_from_slice(&[0; 6]);
        p.extend_from_slice(&[10, 0, 0, 1]);
        p
    }

    fn ipv6(src: &str, next: u8, rest: &[u8]) -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0, 0, 0, next, 255];
        p.extend_from_slice(&src.parse::<Ipv6Addr>().unwrap().octets());
        p.extend_from_slice(&"ff02::1".parse::<Ipv6Addr>().unwrap().octets());
        p.extend_from_slice(rest);
        p
    }

    fn neighbour_advertisement(target: &str) -> Vec<u8> {
        let mut icmp = vec![136, 0, 0, 0, 0x20, 0, 0, 0];
        icmp.extend_from_slice(&target.parse::<Ipv6Addr>().unwrap().octets());
        icmp
    }

    #[test]
    fn a_port_sends_as_itself() {
        let id = identity();
        assert_eq!(
            id.check(&eth(MAC.0, ETHERTYPE_IPV4, &ipv4([10, 0, 0, 2]))),
            Ok(())
        );
        assert_eq!(
            id.check(&eth(MAC.0, ETHERTYPE_IPV4, &ipv4([0, 0, 0, 0]))),
            Ok(())
        );
        assert_eq!(
            id.check(&eth(MAC.0, ETHERTYPE_ARP, &arp(MAC.0, [10, 0, 0, 2]))),
            Ok(())
        );
        assert_eq!(
            id.check(&eth(MAC.0, ETHERTYPE_ARP, &arp(MAC.0, [0; 4]))),
            Ok(())
        );
        assert_eq!(
            id.check(&eth(MAC.0, ETHERTYPE_IPV6, &ipv6("fd00::2", 17, &[]))),
            Ok(())
        );
        assert_eq!(
            id.check(&eth(MAC.0, ETHERTYPE_IPV6, &ipv6("fe80::42", 17, &[]))),
            Ok(())
        );
        let na = neighbour_advertisement("fd00::2");
        assert_eq!(
            id.check(&eth(MAC.0, ETHERTYPE_IPV6, &ipv6("fe80::42", 58, &na))),
            Ok(())
        );
        // LLDP and friends: the MAC is checked, nothing more.
        assert_eq!(id.check(&eth(MAC.0, 0x88cc, &[1, 2, 3])), Ok(()));
    }

    #[test]
    fn spoofs_are_refused() {
        let id = identity();
        let spoofed = Err(DropReason::Spoofed);
        assert_eq!(
            id.check(&eth(OTHER, ETHERTYPE_IPV4, &ipv4([10, 0, 0, 2]))),
            spoofed
        );
        assert_eq!(
            id.check(&eth(MAC.0, ETHERTYPE_IPV4, &ipv4([10, 0, 0, 3]))),
            spoofed
        );
        assert_eq!(
            id.check(&eth(MAC.0, ETHERTYPE_ARP, &arp(MAC.0, [10, 0, 0, 1]))),
            spoofed,
            "the gateway's address"
        );
        assert_eq!(
            id.check(&eth(MAC.0, ETHERTYPE_ARP, &arp(OTHER, [10, 0, 0, 2]))),
            spoofed
        );
        assert_eq!(
            id.check(&eth(MAC.0, ETHERTYPE_IPV6, &ipv6("fd00::3", 17, &[]))),
            spoofed
        );
        let na = neighbour_advertisement("fd00::3");
        assert_eq!(
            id.check(&eth(MAC.0, ETHERTYPE_IPV6, &ipv6("fe80::42", 58, &na))),
            spoofed
        );
        // Behind a hop-by-hop header too.
        let mut hop = vec![58, 0, 5, 2, 0, 0, 1, 0];
        hop.extend_from_slice(&na);
        assert_eq!(
            id.check(&eth(MAC.0, ETHERTYPE_IPV6, &ipv6("fe80::42", 0, &hop))),
            spoofed
        );
        assert_eq!(
            id.check(&eth(MAC.0, ETHERTYPE_VLAN, &[0, 5, 8, 0])),
            spoofed
        );
    }

    #[test]
    fn short_frames_are_truncated_and_enforcement_can_be_off() {
        let id = identity();
        assert_eq!(id.check(&[0; 10]), Err(DropReason::Truncated));
        assert_eq!(
            id.check(&eth(MAC.0, ETHERTYPE_IPV4, &[0x45, 0])),
            Err(DropReason::Truncated)
        );
        let open = PortIdentity {
            enforce: false,
            ..identity()
        };
        assert_eq!(
            open.check(&eth(OTHER, ETHERTYPE_IPV4, &ipv4([1, 2, 3, 4]))),
            Ok(())
        );
    }
}
