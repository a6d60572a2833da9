//! Gateway services of one network: the switch's own presence on the L2
//! segment, at the network's gateway MAC and addresses.
//!
//! # Theory of operation
//!
//! The switch hands the gateway two kinds of frames (see
//! [`Gateway::wants_multicast`] and `Switch::handle_frame`): every frame
//! addressed to the gateway MAC, and the broadcast/multicast frames that ask
//! for a gateway address (ARP requests, IPv6 neighbour solicitations). The
//! gateway answers into a caller-supplied buffer; the reply leaves through
//! the ingress port.
//!
//! Served today:
//! - ARP (RFC 826) for each gateway IPv4 address;
//! - ICMPv4 echo (RFC 792) to each gateway IPv4 address;
//! - DHCP client broadcasts (UDP to port 67) are taken too, for the L4
//!   services' DHCP server (the fast path itself does not answer them);
//! - IPv6 neighbour solicitation (RFC 4861 §7.2.4) for each gateway IPv6
//!   address, answered with a solicited, overriding advertisement carrying
//!   the target link-layer option, and ICMPv6 echo (RFC 4443 §4.1).
//!
//! Everything else addressed to the gateway (traffic that would leave the
//! network) is dropped with [`DropReason::NoRoute`]: outbound NAT and DNS
//! are separate services that plug in here.
//!
//! The gateway keeps no state beyond its configuration, so it has no
//! capacity to exhaust; a reply is never larger than the request that
//! caused it (plus a 32-byte ARP/NDP minimum), so the caller's buffer of the
//! request's size plus [`REPLY_HEADROOM`] always fits.

use std::net::{Ipv4Addr, Ipv6Addr};

use etherparse::{
    ArpEthIpv4Packet, ArpOperation, ArpPacketSlice, Icmpv4Type, Icmpv6Type, NetSlice,
    PacketBuilder, SlicedPacket, TransportSlice,
};

use crate::counters::DropReason;
use crate::wire::ethernet::{
    EthernetFrame, MacAddr, ETHERTYPE_ARP, ETHERTYPE_IPV4, ETHERTYPE_IPV6, HEADER_LEN,
};
use crate::wire::packet::GatewayFrame;

/// Bytes a reply may need beyond the request's own length.
pub const REPLY_HEADROOM: usize = 64;

/// The DHCP server's UDP port (RFC 2131 §4.1).
const DHCP_SERVER_PORT: u16 = 67;

/// Whether an IPv4 packet (first fragment or whole) is UDP to the DHCP
/// server port: a client's broadcast DISCOVER or REQUEST, which the
/// gateway's DHCP server answers instead of the switch flooding it.
fn is_dhcp_to_server(packet: &[u8]) -> bool {
    const UDP: u8 = 17;
    let Some(&version_ihl) = packet.first() else {
        return false;
    };
    let header_len = usize::from(version_ihl & 0x0f) * 4;
    if version_ihl >> 4 != 4 || header_len < 20 || packet.get(9) != Some(&UDP) {
        return false;
    }
    // Not a later fragment: those carry no UDP header.
    let fragment = packet
        .get(6..8)
        .map_or(1, |b| u16::from_be_bytes([b[0], b[1]]) & 0x1fff);
    fragment == 0
        && packet
            .get(header_len + 2..header_len + 4)
            .is_some_and(|p| u16::from_be_bytes([p[0], p[1]]) == DHCP_SERVER_PORT)
}

/// Hop limit of the neighbour discovery messages the gateway sends
/// (RFC 4861 §7.1.2 requires 255).
const NDP_HOP_LIMIT: u8 = 255;

/// TTL of the echo replies the gateway sends (Linux's default).
const ECHO_TTL: u8 = 64;

/// Where the gateway of one network lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayConfig {
    /// The gateway's MAC.
    pub mac: MacAddr,
    /// The gateway's IPv4 addresses (one per IPv4 subnet).
    pub ipv4: Vec<Ipv4Addr>,
    /// The gateway's IPv6 addresses (one per IPv6 subnet).
    pub ipv6: Vec<Ipv6Addr>,
    /// Whether traffic may leave through the gateway (outbound NAT); false
    /// for `--internal` networks.
    pub outbound: bool,
    /// Whether connections to the gateway's own addresses on ports that
    /// are not gateway services go to the host's loopback (`--opt
    /// host_loopback=true`, like slirp4netns's 10.0.2.2).
    pub host_loopback: bool,
    /// Whether the gateway's DHCP server takes the network's DHCP client
    /// broadcasts (default); false (`--opt dhcp=false`) floods them as a
    /// plain bridge does, for a DHCP server run inside a sandbox.
    pub dhcp: bool,
}

/// The gateway services of one network. See the module header.
#[derive(Debug, Clone)]
pub struct Gateway {
    config: GatewayConfig,
    /// Remote endpoints of an overlay network (IPv4 address → MAC): ARP
    /// requests for them are answered here, not flooded across hosts.
    proxy_arp: rustc_hash::FxHashMap<Ipv4Addr, MacAddr>,
}

impl Gateway {
    /// A gateway at the given MAC and addresses.
    pub fn new(config: GatewayConfig) -> Self {
        Gateway {
            config,
            proxy_arp: rustc_hash::FxHashMap::default(),
        }
    }

    /// The gateway's MAC.
    pub fn mac(&self) -> MacAddr {
        self.config.mac
    }

    /// The configuration.
    pub fn config(&self) -> &GatewayConfig {
        &self.config
    }

    /// Replace the table of remote addresses answered by proxy ARP.
    pub fn set_proxy_arp(&mut self, table: rustc_hash::FxHashMap<Ipv4Addr, MacAddr>) {
        self.proxy_arp = table;
    }

    /// Who answers an ARP request for `target`: the gateway itself, or a
    /// remote endpoint by proxy.
    fn arp_owner(&self, target: Ipv4Addr) -> Option<MacAddr> {
        if self.config.ipv4.contains(&target) {
            return Some(self.config.mac);
        }
        self.proxy_arp.get(&target).copied()
    }

    /// Whether a broadcast or multicast frame asks for one of the gateway's
    /// addresses (an ARP request or a neighbour solicitation), so the
    /// gateway answers it instead of the switch flooding it.
    pub fn wants_multicast(&self, frame: &[u8]) -> bool {
        let Ok(eth) = EthernetFrame::new_checked(frame) else {
            return false;
        };
        match eth.ethertype() {
            ETHERTYPE_ARP => parse_arp(eth.payload()).is_some_and(|arp| {
                arp.operation == ArpOperation::REQUEST
                    && self.arp_owner(arp.target_ipv4_addr()).is_some()
            }),
            ETHERTYPE_IPV6 if !self.config.ipv6.is_empty() => {
                neighbor_solicitation_target(frame).is_some_and(|t| self.config.ipv6.contains(&t))
            }
            ETHERTYPE_IPV4 if self.config.dhcp && !self.config.ipv4.is_empty() => {
                is_dhcp_to_server(eth.payload())
            }
            _ => false,
        }
    }

    /// Answer a frame for the gateway, parsed once by the caller. On
    /// success the reply (a whole Ethernet frame) is in `out[..len]` and
    /// goes back out the ingress port.
    ///
    /// # Errors
    ///
    /// The reason to drop the frame when there is nothing to answer:
    /// [`DropReason::Malformed`] when its headers do not parse,
    /// [`DropReason::NoRoute`] when no gateway service handles it.
    pub fn answer(&self, frame: &GatewayFrame<'_>, out: &mut [u8]) -> Result<usize, DropReason> {
        match frame.ethertype() {
            ETHERTYPE_ARP => self.answer_arp(frame, out),
            ETHERTYPE_IPV4 | ETHERTYPE_IPV6 => self.answer_ip(frame, out),
            _ => Err(DropReason::NoRoute),
        }
    }

    /// Parse `frame` and [`Gateway::answer`] it.
    ///
    /// # Errors
    ///
    /// As [`Gateway::answer`]; [`DropReason::Truncated`] for a frame
    /// shorter than an Ethernet header.
    pub fn handle_frame(&self, frame: &[u8], out: &mut [u8]) -> Result<usize, DropReason> {
        self.answer(&GatewayFrame::parse(frame)?, out)
    }

    fn answer_arp(&self, frame: &GatewayFrame<'_>, out: &mut [u8]) -> Result<usize, DropReason> {
        let arp = parse_arp(frame.payload()).ok_or(DropReason::Malformed)?;
        if arp.operation != ArpOperation::REQUEST {
            return Err(DropReason::NoRoute);
        }
        let owner = self
            .arp_owner(arp.target_ipv4_addr())
            .ok_or(DropReason::NoRoute)?;
        let reply = ArpEthIpv4Packet {
            operation: ArpOperation::REPLY,
            sender_mac: owner.0,
            sender_ipv4: arp.target_ipv4,
            target_mac: arp.sender_mac,
            target_ipv4: arp.sender_ipv4,
        }
        .to_bytes();
        let len = HEADER_LEN + reply.len();
        let out = out.get_mut(..len).ok_or(DropReason::Malformed)?;
        let mut header = EthernetFrame::new_unchecked(&mut out[..HEADER_LEN]);
        header.set_destination(MacAddr(arp.sender_mac));
        header.set_source(owner);
        header.set_ethertype(ETHERTYPE_ARP);
        out[HEADER_LEN..].copy_from_slice(&reply);
        Ok(len)
    }

    fn answer_ip(&self, frame: &GatewayFrame<'_>, out: &mut [u8]) -> Result<usize, DropReason> {
        let packet = frame.packet()?;
        let builder = PacketBuilder::ethernet2(self.config.mac.0, frame.source().0);
        match (&packet.net, &packet.transport) {
            (Some(NetSlice::Ipv4(ip)), Some(TransportSlice::Icmpv4(icmp))) => {
                let (src, dst) = (ip.header().source_addr(), ip.header().destination_addr());
                if !self.config.ipv4.contains(&dst) {
                    return Err(DropReason::NoRoute);
                }
                let Icmpv4Type::EchoRequest(echo) = icmp.icmp_type() else {
                    return Err(DropReason::NoRoute);
                };
                let reply = builder
                    .ipv4(dst.octets(), src.octets(), ECHO_TTL)
                    .icmpv4_echo_reply(echo.id, echo.seq);
                write_reply(reply.size(icmp.payload().len()), out, |w| {
                    reply.write(w, icmp.payload())
                })
            }
            (Some(NetSlice::Ipv6(ip)), Some(TransportSlice::Icmpv6(icmp))) => {
                let (src, dst) = (ip.header().source_addr(), ip.header().destination_addr());
                match icmp.icmp_type() {
                    Icmpv6Type::EchoRequest(echo) if self.config.ipv6.contains(&dst) => {
                        let reply = builder
                            .ipv6(dst.octets(), src.octets(), ECHO_TTL)
                            .icmpv6_echo_reply(echo.id, echo.seq);
                        write_reply(reply.size(icmp.payload().len()), out, |w| {
                            reply.write(w, icmp.payload())
                        })
                    }
                    Icmpv6Type::NeighborSolicitation => {
                        let target = ns_target(icmp.payload()).ok_or(DropReason::Malformed)?;
                        if !self.config.ipv6.contains(&target) || src.is_unspecified() {
                            return Err(DropReason::NoRoute);
                        }
                        let reply = builder
                            .ipv6(target.octets(), src.octets(), NDP_HOP_LIMIT)
                            .icmpv6(Icmpv6Type::NeighborAdvertisement(
                                etherparse::icmpv6::NeighborAdvertisementHeader {
                                    router: true,
                                    solicited: true,
                                    r#override: true,
                                },
                            ));
                        // Target address, then the target link-layer
                        // address option (type 2, length 1 = 8 bytes).
                        let mut body = [0u8; 24];
                        body[..16].copy_from_slice(&target.octets());
                        body[16] = 2;
                        body[17] = 1;
                        body[18..].copy_from_slice(&self.config.mac.0);
                        write_reply(reply.size(body.len()), out, |w| reply.write(w, &body))
                    }
                    _ => Err(DropReason::NoRoute),
                }
            }
            (Some(NetSlice::Ipv4(_) | NetSlice::Ipv6(_)), _) => Err(DropReason::NoRoute),
            _ => Err(DropReason::Malformed),
        }
    }
}

fn parse_arp(payload: &[u8]) -> Option<ArpEthIpv4Packet> {
    ArpPacketSlice::from_slice(payload)
        .ok()?
        .to_packet()
        .try_eth_ipv4()
        .ok()
}

/// The target of an ICMPv6 neighbour solicitation, if `frame` is one.
fn neighbor_solicitation_target(frame: &[u8]) -> Option<Ipv6Addr> {
    let packet = SlicedPacket::from_ethernet(frame).ok()?;
    match packet.transport? {
        TransportSlice::Icmpv6(icmp) if icmp.icmp_type() == Icmpv6Type::NeighborSolicitation => {
            ns_target(icmp.payload())
        }
        _ => None,
    }
}

fn ns_target(payload: &[u8]) -> Option<Ipv6Addr> {
    let bytes: [u8; 16] = payload.get(..16)?.try_into().ok()?;
    Some(Ipv6Addr::from(bytes))
}

fn write_reply<E>(
    len: usize,
    out: &mut [u8],
    write: impl FnOnce(&mut &mut [u8]) -> Result<(), E>,
) -> Result<usize, DropReason> {
    let mut window = out.get_mut(..len).ok_or(DropReason::Malformed)?;
    write(&mut window).map_err(|_| DropReason::Malformed)?;
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GW_MAC: MacAddr = MacAddr([0x02, 0x42, 10, 231, 0, 1]);
    const PEER_MAC: MacAddr = MacAddr([0x02, 0x42, 10, 231, 0, 2]);

    fn gateway() -> Gateway {
        Gateway::new(GatewayConfig {
            mac: GW_MAC,
            ipv4: vec![Ipv4Addr::new(10, 231, 0, 1)],
            ipv6: vec!["fd00:231::1".parse().unwrap()],
            outbound: true,
            host_loopback: false,
            dhcp: true,
        })
    }

    fn arp_request(target: [u8; 4]) -> Vec<u8> {
        let mut frame = vec![0xff; 6];
        frame.extend_from_slice(&PEER_MAC.0);
        frame.extend_from_slice(&ETHERTYPE_ARP.to_be_bytes());
        frame.extend_from_slice(
            &ArpEthIpv4Packet {
                operation: ArpOperation::REQUEST,
                sender_mac: PEER_MAC.0,
                sender_ipv4: [10, 231, 0, 2],
                target_mac: [0; 6],
                target_ipv4: target,
            }
            .to_bytes(),
        );
        frame
    }

    fn udp_broadcast(dst_port: u16, fragment_offset: u16) -> Vec<u8> {
        let mut frame = Vec::new();
        PacketBuilder::ethernet2(PEER_MAC.0, [0xff; 6])
            .ipv4([0, 0, 0, 0], [255, 255, 255, 255], 64)
            .udp(68, dst_port)
            .write(&mut frame, &[0; 8])
            .unwrap();
        frame[HEADER_LEN + 6..HEADER_LEN + 8].copy_from_slice(&fragment_offset.to_be_bytes());
        frame
    }

    #[test]
    fn takes_dhcp_client_broadcasts_only() {
        let gw = gateway();
        assert!(gw.wants_multicast(&udp_broadcast(67, 0)));
        assert!(!gw.wants_multicast(&udp_broadcast(68, 0)));
        assert!(!gw.wants_multicast(&udp_broadcast(67, 3)));
        let truncated = udp_broadcast(67, 0);
        for len in 0..HEADER_LEN + 20 + 4 {
            assert!(!gw.wants_multicast(&truncated[..len]), "{len}");
        }
        // The fast path leaves it to the L4 services.
        let mut out = [0u8; 512];
        assert_eq!(
            gw.handle_frame(&udp_broadcast(67, 0), &mut out),
            Err(DropReason::NoRoute)
        );
        let v6_only = Gateway::new(GatewayConfig {
            ipv4: Vec::new(),
            ..gw.config().clone()
        });
        assert!(!v6_only.wants_multicast(&udp_broadcast(67, 0)));
        // `--opt dhcp=false`: flooded like any broadcast.
        let no_dhcp = Gateway::new(GatewayConfig {
            dhcp: false,
            ..gw.config().clone()
        });
        assert!(!no_dhcp.wants_multicast(&udp_broadcast(67, 0)));
    }

    #[test]
    fn answers_arp_for_its_address_only() {
        let gw = gateway();
        let request = arp_request([10, 231, 0, 1]);
        assert!(gw.wants_multicast(&request));
        let mut out = [0xa5u8; 128];
        let len = gw.handle_frame(&request, &mut out).unwrap();
        assert_eq!(len, 42);
        let eth = EthernetFrame::new_checked(&out[..len]).unwrap();
        assert_eq!(eth.destination(), PEER_MAC);
        assert_eq!(eth.source(), GW_MAC);
        let arp = parse_arp(eth.payload()).unwrap();
        assert_eq!(arp.operation, ArpOperation::REPLY);
        assert_eq!(arp.sender_mac, GW_MAC.0);
        assert_eq!(arp.sender_ipv4, [10, 231, 0, 1]);
        assert_eq!(arp.target_mac, PEER_MAC.0);
        assert_eq!(arp.target_ipv4, [10, 231, 0, 2]);

        let other = arp_request([10, 231, 0, 3]);
        assert!(!gw.wants_multicast(&other));
        assert_eq!(gw.handle_frame(&other, &mut out), Err(DropReason::NoRoute));
    }

    #[test]
    fn answers_icmp_echo_with_the_same_payload() {
        let gw = gateway();
        let request = PacketBuilder::ethernet2(PEER_MAC.0, GW_MAC.0)
            .ipv4([10, 231, 0, 2], [10, 231, 0, 1], 64)
            .icmpv4_echo_request(7, 3);
        let mut frame = Vec::new();
        request.write(&mut frame, b"hello gateway").unwrap();
        let mut out = vec![0xa5u8; frame.len() + REPLY_HEADROOM];
        let len = gw.handle_frame(&frame, &mut out).unwrap();
        let reply = SlicedPacket::from_ethernet(&out[..len]).unwrap();
        let Some(NetSlice::Ipv4(ip)) = reply.net else {
            panic!("not IPv4")
        };
        assert_eq!(ip.header().source_addr(), Ipv4Addr::new(10, 231, 0, 1));
        assert_eq!(ip.header().destination_addr(), Ipv4Addr::new(10, 231, 0, 2));
        let Some(TransportSlice::Icmpv4(icmp)) = reply.transport else {
            panic!("not ICMP")
        };
        assert_eq!(
            icmp.icmp_type(),
            Icmpv4Type::EchoReply(etherparse::IcmpEchoHeader { id: 7, seq: 3 })
        );
        assert_eq!(icmp.payload(), b"hello gateway");
        // The checksum the builder wrote is valid.
        let sum = icmp.header().icmp_type.calc_checksum(icmp.payload());
        assert_eq!(icmp.header().checksum, sum);
    }

    #[test]
    fn echo_to_another_address_has_no_route() {
        let gw = gateway();
        let request = PacketBuilder::ethernet2(PEER_MAC.0, GW_MAC.0)
            .ipv4([10, 231, 0, 2], [192, 0, 2, 1], 64)
            .icmpv4_echo_request(7, 3);
        let mut frame = Vec::new();
        request.write(&mut frame, b"x").unwrap();
        let mut out = [0u8; 128];
        assert_eq!(gw.handle_frame(&frame, &mut out), Err(DropReason::NoRoute));
    }

    #[test]
    fn answers_neighbor_solicitation() {
        let gw = gateway();
        let target: Ipv6Addr = "fd00:231::1".parse().unwrap();
        let src: Ipv6Addr = "fd00:231::2".parse().unwrap();
        let ns = PacketBuilder::ethernet2(PEER_MAC.0, [0x33, 0x33, 0xff, 0, 0, 1])
            .ipv6(
                src.octets(),
                [0xff02, 0, 0, 0, 0, 1, 0xff00, 1]
                    .map(u16::to_be_bytes)
                    .concat()
                    .try_into()
                    .unwrap(),
                255,
            )
            .icmpv6(Icmpv6Type::NeighborSolicitation);
        let mut frame = Vec::new();
        ns.write(&mut frame, &target.octets()).unwrap();
        assert!(gw.wants_multicast(&frame));
        let mut out = [0xa5u8; 256];
        let len = gw.handle_frame(&frame, &mut out).unwrap();
        let reply = SlicedPacket::from_ethernet(&out[..len]).unwrap();
        let Some(TransportSlice::Icmpv6(icmp)) = reply.transport else {
            panic!("not ICMPv6")
        };
        assert!(matches!(
            icmp.icmp_type(),
            Icmpv6Type::NeighborAdvertisement(h) if h.solicited && h.r#override
        ));
        assert_eq!(&icmp.payload()[..16], &target.octets());
        assert_eq!(&icmp.payload()[18..24], &GW_MAC.0);
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        let gw = gateway();
        let mut out = [0u8; 64];
        let mut frame = GW_MAC.0.to_vec();
        frame.extend_from_slice(&PEER_MAC.0);
        frame.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        frame.extend_from_slice(&[0x45, 0, 0]);
        assert_eq!(
            gw.handle_frame(&frame, &mut out),
            Err(DropReason::Malformed)
        );
        assert_eq!(
            gw.handle_frame(&frame[..10], &mut out),
            Err(DropReason::Truncated)
        );
    }
}
