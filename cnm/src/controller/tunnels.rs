//! The overlay's transports: VXLAN over UDP always, and QUIC beside it
//! when the cluster has a key (its socket, its identity, the underlay's
//! MTU).

use std::net::{IpAddr, SocketAddr};

use weft_datapath::{Carrier, Datapath};
use weft_overlay::driver::gossip::{bind_udp_patiently, ClusterConfig};
use weft_overlay::driver::quic::{QuicUdp, SharedQuicStatus};
use weft_overlay::driver::udp::VxlanUdp;
use weft_overlay::quic::QuicIdentity;
use weft_overlay::Transport;

use super::ControllerError;
use crate::model::DriverKind;

/// The MTU assumed when the underlay's interface cannot be found.
const FALLBACK_UNDERLAY_MTU: u16 = 1500;

/// Give the data path its transports: VXLAN at the gossip address's IP and
/// `--vxlan-port`; with a cluster key, QUIC too. The QUIC transport's
/// counters for the control plane, when it runs.
pub(super) fn enable(
    datapath: &Datapath,
    config: &ClusterConfig,
) -> Result<Option<SharedQuicStatus>, ControllerError> {
    let addr = SocketAddr::new(config.listen.ip(), config.vxlan_port);
    let bind_error = |source| ControllerError::TunnelBind { addr, source };
    let socket = bind_udp_patiently(addr).map_err(bind_error)?;
    let transport = VxlanUdp::new(socket).map_err(bind_error)?;
    give(datapath, Carrier::Vxlan, Box::new(transport))?;
    config
        .secret
        .as_deref()
        .map(|secret| enable_quic(datapath, config, secret))
        .transpose()
}

/// Carry `carrier`'s networks over `transport` from now on.
fn give(
    datapath: &Datapath,
    carrier: Carrier,
    transport: Box<dyn Transport>,
) -> Result<(), ControllerError> {
    datapath
        .enable_tunnel(carrier, transport)
        .map_err(|e| ControllerError::Driver {
            driver: DriverKind::Overlay,
            source: e.into(),
        })
}

/// Bind the QUIC socket at the gossip address's IP and `--quic-port`, and
/// give the data path the transport; its counters for the control plane.
fn enable_quic(
    datapath: &Datapath,
    config: &ClusterConfig,
    secret: &[u8],
) -> Result<SharedQuicStatus, ControllerError> {
    let addr = SocketAddr::new(config.listen.ip(), config.quic.port);
    let bind_error = |source| ControllerError::TunnelBind { addr, source };
    let socket = bind_udp_patiently(addr).map_err(bind_error)?;
    let identity =
        QuicIdentity::from_secret(secret).map_err(|e| bind_error(std::io::Error::other(e)))?;
    let mtu = underlay_mtu(config.listen.ip());
    let transport = QuicUdp::new(socket, &identity, mtu, config.quic.cubic).map_err(bind_error)?;
    let status = transport.status();
    give(datapath, Carrier::Quic, Box::new(transport))?;
    tracing::info!(%addr, underlay_mtu = mtu, congestion = if config.quic.cubic { "cubic" } else { "none" }, "QUIC transport for encrypted overlay networks");
    Ok(status)
}

/// The MTU of the interface that holds `ip` (where tunnel datagrams
/// leave), or 1500.
fn underlay_mtu(ip: IpAddr) -> u16 {
    let name = nix::ifaddrs::getifaddrs().ok().and_then(|mut addresses| {
        addresses.find_map(|a| {
            let address = a.address?;
            let holds = address
                .as_sockaddr_in()
                .map(|v4| IpAddr::V4(v4.ip()) == ip)
                .or_else(|| {
                    address
                        .as_sockaddr_in6()
                        .map(|v6| IpAddr::V6(v6.ip()) == ip)
                })
                .unwrap_or(false);
            holds.then_some(a.interface_name)
        })
    });
    name.and_then(|name| std::fs::read_to_string(format!("/sys/class/net/{name}/mtu")).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(FALLBACK_UNDERLAY_MTU)
}
