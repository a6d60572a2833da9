//! A frame for the gateway, parsed once.
//!
//! The switch reads only the Ethernet header of the frames it forwards. A
//! frame it hands to the gateway (`Decision::ToGateway`) is parsed here,
//! once, by the driver: its Ethernet addresses and type, and etherparse's
//! zero-copy slices of its ARP, IP and transport headers. The gateway's
//! fast path (ARP, ICMP echo, ND) and then the L4 services (DNS, NAT, the
//! TCP relay) all take this view; none parses the frame again. (The TCP
//! relay's stack, smoltcp, reads the bytes once more as a TCP peer must.)

use std::net::IpAddr;

use etherparse::{NetSlice, SlicedPacket};

use crate::counters::DropReason;
use crate::wire::ethernet::{EthernetFrame, MacAddr};
use crate::wire::ip_addresses;

/// See the module header.
#[derive(Debug, Clone)]
pub struct GatewayFrame<'a> {
    bytes: &'a [u8],
    source: MacAddr,
    destination: MacAddr,
    ethertype: u16,
    /// The headers, or why they did not parse.
    packet: Result<SlicedPacket<'a>, DropReason>,
}

impl<'a> GatewayFrame<'a> {
    /// Parse `bytes` (an Ethernet frame without any `virtio_net_hdr`).
    ///
    /// # Errors
    ///
    /// [`DropReason::Truncated`] when it is shorter than an Ethernet
    /// header. Headers past Ethernet that do not parse are not an error
    /// here: [`GatewayFrame::packet`] says so to whoever needs them.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, DropReason> {
        let eth = EthernetFrame::new_checked(bytes).map_err(|_| DropReason::Truncated)?;
        Ok(GatewayFrame {
            bytes,
            source: eth.source(),
            destination: eth.destination(),
            ethertype: eth.ethertype(),
            packet: SlicedPacket::from_ethernet(bytes).map_err(|_| DropReason::Malformed),
        })
    }

    /// The whole frame.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// What follows the Ethernet header.
    pub fn payload(&self) -> &'a [u8] {
        self.bytes
            .get(crate::wire::ethernet::HEADER_LEN..)
            .unwrap_or_default()
    }

    /// The sender's MAC.
    pub fn source(&self) -> MacAddr {
        self.source
    }

    /// The destination MAC.
    pub fn destination(&self) -> MacAddr {
        self.destination
    }

    /// The EtherType.
    pub fn ethertype(&self) -> u16 {
        self.ethertype
    }

    /// The parsed headers.
    ///
    /// # Errors
    ///
    /// [`DropReason::Malformed`] when they did not parse.
    pub fn packet(&self) -> Result<&SlicedPacket<'a>, DropReason> {
        self.packet.as_ref().map_err(|reason| *reason)
    }

    /// The IP source and destination, for an IP packet.
    pub fn addresses(&self) -> Option<(IpAddr, IpAddr)> {
        ip_addresses(self.packet.as_ref().ok()?.net.as_ref())
    }

    /// An IPv4 fragment (its transport header is only in the first).
    pub fn is_ipv4_fragment(&self) -> bool {
        matches!(
            self.packet.as_ref().map(|p| &p.net),
            Ok(Some(NetSlice::Ipv4(ip))) if ip.header().is_fragmenting_payload()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{PacketBuilder, TransportSlice};

    #[test]
    fn parses_once_and_keeps_every_layer() {
        let mut frame = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([10, 0, 0, 2], [10, 0, 0, 1], 64)
            .udp(4000, 53)
            .write(&mut frame, b"query")
            .unwrap();
        let parsed = GatewayFrame::parse(&frame).unwrap();
        assert_eq!(parsed.source(), MacAddr([2, 0, 0, 0, 0, 1]));
        assert_eq!(parsed.destination(), MacAddr([2, 0, 0, 0, 0, 2]));
        assert_eq!(parsed.ethertype(), 0x0800);
        assert_eq!(
            parsed.addresses(),
            Some((IpAddr::from([10, 0, 0, 2]), IpAddr::from([10, 0, 0, 1])))
        );
        assert!(matches!(
            &parsed.packet().unwrap().transport,
            Some(TransportSlice::Udp(udp)) if udp.payload() == b"query"
        ));
        assert!(!parsed.is_ipv4_fragment());
        assert_eq!(parsed.bytes(), &frame[..]);
        assert_eq!(parsed.payload(), &frame[14..]);
    }

    #[test]
    fn a_short_frame_is_truncated_and_bad_headers_are_malformed_later() {
        assert_eq!(
            GatewayFrame::parse(&[0u8; 10]).unwrap_err(),
            DropReason::Truncated
        );
        let mut frame = vec![0u8; 14];
        frame[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        frame.extend_from_slice(&[0x45, 0, 0]);
        let parsed = GatewayFrame::parse(&frame).unwrap();
        assert_eq!(parsed.packet().unwrap_err(), DropReason::Malformed);
        assert_eq!(parsed.addresses(), None);
    }
}
