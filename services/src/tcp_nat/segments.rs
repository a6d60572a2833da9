//! The packets the relay makes or rewrites itself, apart from the stack:
//! a SYN whose MSS option is raised to the stack's, the GSO size of a
//! segment for the sandbox, and the answers for a connection that cannot
//! be made (a reset, ICMP unreachable).

use etherparse::{
    Icmpv4Type, Icmpv6Type, NetSlice, PacketBuilder, SlicedPacket, TcpHeader, TransportSlice,
};
use weft_vswitch::wire::ethernet::EthernetFrame;

use super::stack::MAX_FRAME;

/// TTL of the error packets the gateway makes.
const TTL: u8 = 64;

/// The largest MSS the stack may use toward a sandbox: its MTU less the IP
/// and TCP headers.
fn stack_mss(ipv6: bool) -> u16 {
    let ip_header = if ipv6 { 40 } else { 20 };
    u16::try_from(MAX_FRAME - 14 - ip_header - 20).unwrap_or(1460)
}

/// A copy of a SYN (or SYN-ACK) from a sandbox whose MSS option says the
/// stack's largest, and the MSS it said; None without an MSS option.
/// (The stack does not check checksums of frames from TAPs, so the copy's
/// is left as it was.)
pub(super) fn raise_mss(frame: &[u8]) -> Option<(Vec<u8>, u16)> {
    let packet = SlicedPacket::from_ethernet(frame).ok()?;
    let Some(TransportSlice::Tcp(tcp)) = &packet.transport else {
        return None;
    };
    let ipv6 = matches!(packet.net, Some(NetSlice::Ipv6(_)));
    let options = tcp.options();
    // Where the options start in the frame: right after the fixed header.
    let tcp_start = frame.len() - tcp.slice().len();
    let options_start = tcp_start + 20;
    let mut at = 0;
    while at < options.len() {
        match options[at] {
            0 => break,
            1 => at += 1,
            kind => {
                let len = usize::from(*options.get(at + 1)?);
                if len < 2 {
                    return None;
                }
                if kind == 2 && len == 4 {
                    let mss = u16::from_be_bytes([*options.get(at + 2)?, *options.get(at + 3)?]);
                    let mut raised = frame.to_vec();
                    let field = options_start + at + 2;
                    raised
                        .get_mut(field..field + 2)?
                        .copy_from_slice(&stack_mss(ipv6).to_be_bytes());
                    return Some((raised, mss));
                }
                at += len;
            }
        }
    }
    None
}

/// The reset a closed port answers `frame` (a TCP segment) with.
pub(super) fn reset_for(frame: &[u8]) -> Option<Vec<u8>> {
    let packet = SlicedPacket::from_ethernet(frame).ok()?;
    let eth = EthernetFrame::new_checked(frame).ok()?;
    let Some(TransportSlice::Tcp(tcp)) = &packet.transport else {
        return None;
    };
    if tcp.rst() {
        return None;
    }
    let payload_len = u32::try_from(tcp.payload().len()).ok()?;
    let mut header = TcpHeader::new(tcp.destination_port(), tcp.source_port(), 0, 0);
    header.rst = true;
    if tcp.ack() {
        header.sequence_number = tcp.acknowledgment_number();
    } else {
        header.ack = true;
        header.acknowledgment_number = tcp
            .sequence_number()
            .wrapping_add(payload_len)
            .wrapping_add(u32::from(tcp.syn()))
            .wrapping_add(u32::from(tcp.fin()));
    }
    let builder = PacketBuilder::ethernet2(eth.destination().0, eth.source().0);
    let mut out = Vec::with_capacity(64);
    match &packet.net {
        Some(NetSlice::Ipv4(ip)) => builder
            .ipv4(ip.header().destination(), ip.header().source(), TTL)
            .tcp_header(header)
            .write(&mut out, &[])
            .ok()?,
        Some(NetSlice::Ipv6(ip)) => builder
            .ipv6(ip.header().destination(), ip.header().source(), TTL)
            .tcp_header(header)
            .write(&mut out, &[])
            .ok()?,
        _ => return None,
    }
    Some(out)
}

/// ICMP destination unreachable (host) for `frame`, from the address the
/// frame was sent to, as a router next to the lost host would answer.
pub(super) fn unreachable_for(frame: &[u8]) -> Option<Vec<u8>> {
    let packet = SlicedPacket::from_ethernet(frame).ok()?;
    let eth = EthernetFrame::new_checked(frame).ok()?;
    let ip_packet = eth.payload();
    let builder = PacketBuilder::ethernet2(eth.destination().0, eth.source().0);
    let mut out = Vec::with_capacity(128);
    match &packet.net {
        Some(NetSlice::Ipv4(ip)) => {
            // The IP header and the first 8 bytes of what it carried.
            let quoted = &ip_packet[..ip_packet.len().min(usize::from(ip.header().ihl()) * 4 + 8)];
            builder
                .ipv4(ip.header().destination(), ip.header().source(), TTL)
                .icmpv4(Icmpv4Type::DestinationUnreachable(
                    etherparse::icmpv4::DestUnreachableHeader::Host,
                ))
                .write(&mut out, quoted)
                .ok()?;
        }
        Some(NetSlice::Ipv6(ip)) => {
            let quoted = &ip_packet[..ip_packet.len().min(1232)];
            builder
                .ipv6(ip.header().destination(), ip.header().source(), TTL)
                .icmpv6(Icmpv6Type::DestinationUnreachable(
                    etherparse::icmpv6::DestUnreachableCode::Address,
                ))
                .write(&mut out, quoted)
                .ok()?;
        }
        _ => return None,
    }
    Some(out)
}
