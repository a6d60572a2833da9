//! Wire formats: every header parse of the data path. One file per header
//! ([`ethernet`], [`vnet`]), the IP layout the hot path shares ([`ip`]),
//! the gateway's parsed view of a frame ([`packet`]), and the length-prefixed
//! framing of VM stream sockets ([`stream`]).

pub mod arp_probe;
pub mod checksum;
pub mod ethernet;
pub mod ip;
pub mod ipvlan;
pub mod packet;
pub mod stream;
pub mod vlan;
pub mod vnet;

use std::net::IpAddr;

use etherparse::NetSlice;

/// The source and destination addresses of a parsed IPv4 or IPv6 packet.
pub fn ip_addresses(net: Option<&NetSlice<'_>>) -> Option<(IpAddr, IpAddr)> {
    match net? {
        NetSlice::Ipv4(ip) => Some((
            IpAddr::V4(ip.header().source_addr()),
            IpAddr::V4(ip.header().destination_addr()),
        )),
        NetSlice::Ipv6(ip) => Some((
            IpAddr::V6(ip.header().source_addr()),
            IpAddr::V6(ip.header().destination_addr()),
        )),
        NetSlice::Arp(_) => None,
    }
}
