//! The 4-tuples of the relay's flows: how a frame from a sandbox names
//! its flow, how a client of a published port is shown to a sandbox, and
//! which frames toward a sandbox need a GSO segment size.

use std::net::{IpAddr, SocketAddr};

use etherparse::{SlicedPacket, TransportSlice};
use weft_vswitch::GatewayConfig;
use weft_vswitch::NetworkId;

/// A flow's 4-tuple, with its network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Tuple {
    pub(super) network: NetworkId,
    /// The sandbox's address and port.
    pub(super) sandbox: SocketAddr,
    /// The peer's address and port as the sandbox sees it.
    pub(super) peer: SocketAddr,
}

/// How a client of a published port is shown to a sandbox: itself, or the
/// gateway when it is on the host's loopback. None when the network has no
/// gateway address of the needed family.
pub fn shown_client(client: SocketAddr, gateway: &GatewayConfig) -> Option<SocketAddr> {
    let ip = match client.ip() {
        IpAddr::V4(v4) if v4.is_loopback() => IpAddr::V4(*gateway.ipv4.first()?),
        IpAddr::V6(v6) if v6.is_loopback() => IpAddr::V6(*gateway.ipv6.first()?),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) if v4.is_loopback() => IpAddr::V4(*gateway.ipv4.first()?),
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        ip => ip,
    };
    Some(SocketAddr::new(ip, client.port()))
}

/// The 4-tuple of a TCP frame from a sandbox.
pub(super) fn tcp_tuple(network: NetworkId, packet: &SlicedPacket<'_>) -> Option<Tuple> {
    let (src, dst) = weft_vswitch::wire::ip_addresses(packet.net.as_ref())?;
    let Some(TransportSlice::Tcp(tcp)) = &packet.transport else {
        return None;
    };
    Some(Tuple {
        network,
        sandbox: SocketAddr::new(src, tcp.source_port()),
        peer: SocketAddr::new(dst, tcp.destination_port()),
    })
}

/// The GSO segment size a frame from the stack needs: the flow's sandbox
/// MSS (`mss_of` its tuple, 0 when unknown) when the frame's TCP payload
/// is larger, else 0.
pub(super) fn gso_size_for(
    network: NetworkId,
    frame: &[u8],
    mss_of: impl Fn(&Tuple) -> u16,
) -> u16 {
    // Frames that fit any Ethernet MTU are not worth a look.
    if frame.len() <= 14 + 40 + 20 + 536 {
        return 0;
    }
    let Ok(packet) = SlicedPacket::from_ethernet(frame) else {
        return 0;
    };
    let Some(TransportSlice::Tcp(tcp)) = &packet.transport else {
        return 0;
    };
    let Some((src, dst)) = weft_vswitch::wire::ip_addresses(packet.net.as_ref()) else {
        return 0;
    };
    let tuple = Tuple {
        network,
        sandbox: SocketAddr::new(dst, tcp.destination_port()),
        peer: SocketAddr::new(src, tcp.source_port()),
    };
    let mss = mss_of(&tuple);
    if mss != 0 && tcp.payload().len() > usize::from(mss) {
        mss
    } else {
        0
    }
}
