//! The switch core: networks of ports, MAC learning, and the forwarding
//! decision for every frame. Sans-IO: frames and time in, decisions out.
//!
//! # Theory of operation
//!
//! A [`Switch`] holds networks (L2 broadcast domains, each with its own
//! [`MacTable`] and [`Gateway`]) and ports (one per endpoint TAP, each in
//! exactly one network). For a frame read from port `p`,
//! [`Switch::handle_frame`]:
//!
//! 1. drops it if it is shorter than an Ethernet header or its source MAC
//!    is multicast or zero, or if `p` sends as someone else
//!    ([`crate::port_security`]: the endpoint's MAC and addresses are
//!    known, and pinned);
//! 2. learns the source MAC on `p` in `p`'s network (a MAC pinned to
//!    another port is a spoof; a port past its share of learned MACs is
//!    flooding: both dropped);
//! 3. decides: frames to the gateway MAC, and ARP/ND for a gateway address,
//!    go `ToGateway`; other broadcast and multicast, and unicast to an
//!    unknown (or aged-out) MAC, `Flood` to the other ports of the same
//!    network; known unicast is `Forward`ed to its port, or dropped as a
//!    hairpin when that port is `p` itself.
//!
//! Networks never see each other's frames: every lookup and flood is scoped
//! to the ingress port's network.
//!
//! A macvlan network has one more port, its uplink: the parent
//! interface's LAN ([`Switch::add_uplink_port`]). It follows the kernel's
//! macvlan: from the LAN, only frames to the network's endpoints (and
//! broadcast and multicast, flooded to the endpoints alone) come in, the
//! rest (the parent host's own traffic, other LAN hosts') is not ours and
//! is dropped; from an endpoint, unicast to a MAC the network does not
//! hold goes out to the LAN, never flooded to the other endpoints. In
//! [`UplinkMode::Private`], endpoints never reach each other: all they send
//! goes to the LAN only. The gateway never answers the LAN.
//!
//! The core never allocates per frame: decisions are small `Copy` values,
//! flooding borrows the network's port list, gateway replies are written
//! into the caller's buffer.
//!
//! Timers: [`Switch::poll_timeout`] asks for a sweep every
//! [`SWEEP_INTERVAL`], when [`Switch::handle_timeout`] purges aged MAC
//! entries (lookups already ignore them, the sweep frees their memory).

use rustc_hash::FxHashMap;
use std::time::{Duration, Instant};

use crate::counters::DropReason;
use crate::gateway::{Gateway, GatewayConfig};
pub use crate::ids::{NetworkId, PortId};
use crate::mac_table::{Learned, MacTable, DEFAULT_AGEING, DEFAULT_CAPACITY, DEFAULT_PORT_LIMIT};
use crate::port_security::PortIdentity;
use crate::wire::ethernet::{EthernetFrame, MacAddr};
use crate::wire::packet::GatewayFrame;

/// How often aged MAC entries are purged.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(30);

/// What to do with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Write it to this one port.
    Forward(PortId),
    /// Write it to every other port of the ingress port's network
    /// ([`Switch::flood_ports`]).
    Flood,
    /// Give it to the gateway ([`Switch::gateway_reply`]).
    ToGateway,
    /// Drop it, and count why.
    Drop(DropReason),
}

/// How the endpoints of a network with an uplink (macvlan) relate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UplinkMode {
    /// Endpoints reach each other through the switch and the LAN through
    /// the uplink (macvlan `bridge`).
    Bridge,
    /// Endpoints reach the LAN only, never each other (macvlan `private`).
    Private,
}

/// What a port is to its network.
#[derive(Debug, Clone, Copy)]
enum PortRole {
    /// A sandbox's or VM's.
    Local,
    /// A tunnel to another host (overlay).
    Tunnel,
    /// The parent's LAN (macvlan, ipvlan).
    Uplink(UplinkMode),
}

/// One entry of a network's forwarding table ([`Switch::fdb`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdbEntry {
    /// The MAC.
    pub mac: MacAddr,
    /// The port frames to it go to.
    pub port: PortId,
    /// How the switch knows it.
    pub kind: FdbKind,
    /// Since it was last seen (learned entries).
    pub age: Duration,
}

/// How the switch knows a MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdbKind {
    /// An endpoint's own MAC, pinned to its port.
    Static,
    /// Learned from a frame's source.
    Learned,
    /// A remote endpoint of an overlay network, from the cluster directory.
    Remote,
}

/// Why a network or port could not be added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopologyError {
    /// The network id is already in use.
    #[error("network {0:?} already exists in the switch")]
    NetworkExists(NetworkId),
    /// The network id is not known.
    #[error("network {0:?} does not exist in the switch")]
    UnknownNetwork(NetworkId),
    /// The port id is already in use.
    #[error("port {0:?} already exists in the switch")]
    PortExists(PortId),
}

/// The switch core. See the module header.
pub struct Switch {
    networks: FxHashMap<NetworkId, Network>,
    ports: FxHashMap<PortId, NetworkId>,
    /// Ports that are tunnels to other hosts (overlay networks).
    tunnel_ports: rustc_hash::FxHashSet<PortId>,
    /// What each local port may send as (port security).
    identities: FxHashMap<PortId, PortIdentity>,
    next_sweep: Option<Instant>,
}

#[derive(Debug)]
struct Network {
    /// Every port, tunnels included.
    ports: Vec<PortId>,
    /// The ports of local sandboxes: where frames from a tunnel flood
    /// (split horizon: hosts form a full mesh, so a frame from one never
    /// goes on to another).
    local_ports: Vec<PortId>,
    macs: MacTable,
    /// A macvlan network's parent LAN, and how its endpoints relate.
    uplink: Option<(PortId, UplinkMode)>,
    /// Remote endpoints of an overlay network from the cluster directory:
    /// MAC → the tunnel port of the host that owns it. Consulted when the
    /// MAC table has no entry, so remote MACs need no flood-and-learn.
    remote_macs: FxHashMap<MacAddr, PortId>,
    gateway: Gateway,
    floods: FloodCounts,
}

/// Frames a network flooded since it was made (for metrics): to a
/// multicast or broadcast address, or to a unicast MAC it did not know.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FloodCounts {
    /// Multicast and broadcast frames (the gateway's own excepted).
    pub multicast: u64,
    /// Unicast frames to a MAC no port had (or whose entry aged out).
    pub unknown_unicast: u64,
}

impl Default for Switch {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Switch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Switch")
            .field("networks", &self.networks.len())
            .field("ports", &self.ports.len())
            .finish_non_exhaustive()
    }
}

impl Switch {
    /// An empty switch.
    pub fn new() -> Self {
        Switch {
            networks: FxHashMap::default(),
            ports: FxHashMap::default(),
            tunnel_ports: rustc_hash::FxHashSet::default(),
            identities: FxHashMap::default(),
            next_sweep: None,
        }
    }

    /// Add a network with its gateway, default MAC table capacity and
    /// ageing.
    ///
    /// # Errors
    ///
    /// [`TopologyError::NetworkExists`] if the id is taken.
    pub fn add_network(
        &mut self,
        id: NetworkId,
        gateway: GatewayConfig,
    ) -> Result<(), TopologyError> {
        let macs =
            MacTable::new(DEFAULT_CAPACITY, DEFAULT_AGEING).with_port_limit(DEFAULT_PORT_LIMIT);
        self.add_network_with_table(id, gateway, macs)
    }

    /// Add a network with a MAC table of the caller's choosing.
    ///
    /// # Errors
    ///
    /// [`TopologyError::NetworkExists`] if the id is taken.
    pub fn add_network_with_table(
        &mut self,
        id: NetworkId,
        gateway: GatewayConfig,
        macs: MacTable,
    ) -> Result<(), TopologyError> {
        if self.networks.contains_key(&id) {
            return Err(TopologyError::NetworkExists(id));
        }
        self.networks.insert(
            id,
            Network {
                ports: Vec::new(),
                local_ports: Vec::new(),
                macs,
                uplink: None,
                remote_macs: FxHashMap::default(),
                gateway: Gateway::new(gateway),
                floods: FloodCounts::default(),
            },
        );
        Ok(())
    }

    /// Remove a network and every port in it; returns the removed ports.
    pub fn remove_network(&mut self, id: NetworkId) -> Vec<PortId> {
        let Some(network) = self.networks.remove(&id) else {
            return Vec::new();
        };
        for port in &network.ports {
            self.ports.remove(port);
            self.tunnel_ports.remove(port);
            self.identities.remove(port);
        }
        network.ports
    }

    /// Attach a port to a network.
    ///
    /// # Errors
    ///
    /// [`TopologyError::UnknownNetwork`] or [`TopologyError::PortExists`].
    pub fn add_port(&mut self, port: PortId, network: NetworkId) -> Result<(), TopologyError> {
        self.attach_port(port, network, PortRole::Local)
    }

    /// Attach a tunnel port (one remote host of an overlay network).
    ///
    /// # Errors
    ///
    /// [`TopologyError::UnknownNetwork`] or [`TopologyError::PortExists`].
    pub fn add_tunnel_port(
        &mut self,
        port: PortId,
        network: NetworkId,
    ) -> Result<(), TopologyError> {
        self.attach_port(port, network, PortRole::Tunnel)
    }

    /// Attach a macvlan network's uplink (the parent's LAN); a network has
    /// at most one (a second replaces the first's role). See the module
    /// header for how frames cross it.
    ///
    /// # Errors
    ///
    /// [`TopologyError::UnknownNetwork`] or [`TopologyError::PortExists`].
    pub fn add_uplink_port(
        &mut self,
        port: PortId,
        network: NetworkId,
        mode: UplinkMode,
    ) -> Result<(), TopologyError> {
        self.attach_port(port, network, PortRole::Uplink(mode))
    }

    fn attach_port(
        &mut self,
        port: PortId,
        network: NetworkId,
        role: PortRole,
    ) -> Result<(), TopologyError> {
        if self.ports.contains_key(&port) {
            return Err(TopologyError::PortExists(port));
        }
        let net = self
            .networks
            .get_mut(&network)
            .ok_or(TopologyError::UnknownNetwork(network))?;
        net.ports.push(port);
        match role {
            PortRole::Local => net.local_ports.push(port),
            PortRole::Tunnel => {
                self.tunnel_ports.insert(port);
            }
            PortRole::Uplink(mode) => net.uplink = Some((port, mode)),
        }
        self.ports.insert(port, network);
        Ok(())
    }

    /// Set an overlay network's remote endpoints: which tunnel port leads
    /// to each remote MAC, and the IPv4 addresses the gateway answers ARP
    /// for on their behalf.
    pub fn set_remote_endpoints(
        &mut self,
        network: NetworkId,
        macs: FxHashMap<MacAddr, PortId>,
        proxy_arp: FxHashMap<std::net::Ipv4Addr, MacAddr>,
    ) {
        if let Some(net) = self.networks.get_mut(&network) {
            net.remote_macs = macs;
            net.gateway.set_proxy_arp(proxy_arp);
        }
    }

    /// Give a local port its identity: its MAC is pinned to it, and (when
    /// `identity.enforce`) it may send only as itself. See
    /// [`crate::port_security`].
    pub fn set_port_identity(&mut self, port: PortId, identity: PortIdentity, now: Instant) {
        let Some(network) = self.ports.get(&port).and_then(|n| self.networks.get_mut(n)) else {
            return;
        };
        network.macs.set_static(identity.mac, port, now);
        self.identities.insert(port, identity);
    }

    /// Detach a port; its learned MACs are forgotten.
    pub fn remove_port(&mut self, port: PortId) {
        let Some(network) = self.ports.remove(&port) else {
            return;
        };
        self.tunnel_ports.remove(&port);
        self.identities.remove(&port);
        if let Some(net) = self.networks.get_mut(&network) {
            if net.uplink.is_some_and(|(uplink, _)| uplink == port) {
                net.uplink = None;
            }
            net.ports.retain(|p| *p != port);
            net.local_ports.retain(|p| *p != port);
            net.macs.forget_port(port);
            net.remote_macs.retain(|_, p| *p != port);
        }
    }

    /// The network a port is in.
    pub fn network_of(&self, port: PortId) -> Option<NetworkId> {
        self.ports.get(&port).copied()
    }

    /// Decide what to do with `frame` (an Ethernet frame, without any
    /// `virtio_net_hdr`) read from `ingress` at `now`.
    pub fn handle_frame(&mut self, now: Instant, ingress: PortId, frame: &[u8]) -> Decision {
        let Some(network_id) = self.ports.get(&ingress) else {
            return Decision::Drop(DropReason::UnknownPort);
        };
        let Some(network) = self.networks.get_mut(network_id) else {
            return Decision::Drop(DropReason::UnknownPort);
        };
        let Ok(eth) = EthernetFrame::new_checked(frame) else {
            return Decision::Drop(DropReason::Truncated);
        };
        let (src, dst) = (eth.source(), eth.destination());
        if !src.is_valid_source() {
            return Decision::Drop(DropReason::InvalidSource);
        }
        if let Some(identity) = self.identities.get(&ingress) {
            if let Err(reason) = identity.check(frame) {
                return Decision::Drop(reason);
            }
        }
        let from_tunnel = self.tunnel_ports.contains(&ingress);
        let uplink = network.uplink;
        let from_uplink = uplink.is_some_and(|(port, _)| port == ingress);
        let learned = if from_tunnel || from_uplink {
            network.macs.learn_unlimited(src, ingress, now)
        } else {
            network.macs.learn(src, ingress, now)
        };
        match learned {
            Learned::Refreshed | Learned::New => {}
            Learned::Moved { from } => {
                tracing::info!(mac = %src, from = from.0, to = ingress.0, "MAC moved");
            }
            Learned::TableFull => {
                tracing::debug!(mac = %src, port = ingress.0, "MAC table full, not learned");
            }
            Learned::Pinned { owner } => {
                tracing::debug!(mac = %src, owner = owner.0, port = ingress.0, "another endpoint's MAC");
                return Decision::Drop(DropReason::Spoofed);
            }
            Learned::PortFull => return Decision::Drop(DropReason::MacLimit),
        }
        if self.next_sweep.is_none() {
            self.next_sweep = Some(now + SWEEP_INTERVAL);
        }
        let from_outside = from_tunnel || from_uplink;
        if dst == network.gateway.mac() {
            // Every host's gateway has the same MAC: frames for it are
            // answered where they start, never carried across; and a
            // macvlan network's gateway serves its endpoints, not the LAN.
            if from_outside {
                return Decision::Drop(DropReason::NoRoute);
            }
            return Decision::ToGateway;
        }
        if dst.is_multicast() {
            if !from_outside && network.gateway.wants_multicast(frame) {
                return Decision::ToGateway;
            }
            network.floods.multicast += 1;
            return match uplink {
                // A private endpoint's broadcasts reach the LAN alone.
                Some((port, UplinkMode::Private)) if !from_uplink => Decision::Forward(port),
                _ => Decision::Flood,
            };
        }
        let egress = network
            .macs
            .lookup(dst, now)
            .or_else(|| network.remote_macs.get(&dst).copied());
        match (egress, uplink) {
            (Some(port), _) if port == ingress => Decision::Drop(DropReason::Hairpin),
            (Some(port), _) if from_tunnel && self.tunnel_ports.contains(&port) => {
                Decision::Drop(DropReason::Hairpin)
            }
            // Learned behind the uplink: a LAN host, reached through it.
            (Some(port), Some((up, _))) if port == up => Decision::Forward(port),
            (Some(_), Some((_, UplinkMode::Private))) if !from_uplink => {
                Decision::Drop(DropReason::Isolated)
            }
            (Some(port), _) => Decision::Forward(port),
            // Not one of ours: the LAN's other traffic, seen because the
            // parent listens promiscuously.
            (None, Some(_)) if from_uplink => Decision::Drop(DropReason::NotOurs),
            // An endpoint's frame to a MAC the network does not hold: out
            // to the LAN, never flooded to the other endpoints.
            (None, Some((up, _))) => Decision::Forward(up),
            (None, None) => {
                network.floods.unknown_unicast += 1;
                Decision::Flood
            }
        }
    }

    /// What `network` flooded since it was made; None for an unknown
    /// network.
    pub fn flood_counts(&self, network: NetworkId) -> Option<FloodCounts> {
        self.networks.get(&network).map(|n| n.floods)
    }

    /// The ports a frame from `ingress` floods to: every port of its
    /// network, the ingress port included (the caller skips it).
    pub fn flood_ports(&self, ingress: PortId) -> &[PortId] {
        let from_tunnel = self.tunnel_ports.contains(&ingress);
        self.ports
            .get(&ingress)
            .and_then(|n| self.networks.get(n))
            .map_or(&[], |n| {
                let from_uplink = n.uplink.is_some_and(|(port, _)| port == ingress);
                if from_tunnel || from_uplink {
                    &n.local_ports
                } else {
                    &n.ports
                }
            })
    }

    /// Whether `port` is a macvlan network's uplink.
    pub fn is_uplink(&self, port: PortId) -> bool {
        self.ports
            .get(&port)
            .and_then(|n| self.networks.get(n))
            .is_some_and(|n| n.uplink.is_some_and(|(up, _)| up == port))
    }

    /// Let the ingress port's gateway answer a `ToGateway` frame; the reply
    /// goes back out of `ingress`.
    ///
    /// # Errors
    ///
    /// The [`DropReason`] when the gateway has nothing to answer.
    pub fn gateway_reply(
        &self,
        ingress: PortId,
        frame: &GatewayFrame<'_>,
        out: &mut [u8],
    ) -> Result<usize, DropReason> {
        let network = self
            .ports
            .get(&ingress)
            .and_then(|n| self.networks.get(n))
            .ok_or(DropReason::UnknownPort)?;
        network.gateway.answer(frame, out)
    }

    /// The gateway of the network `port` is in, with the network: what the
    /// gateway's L4 services need to take a `ToGateway` frame the fast path
    /// of [`Switch::gateway_reply`] had no answer for.
    ///
    /// # Errors
    ///
    /// [`DropReason::UnknownPort`] when the port or its network is gone.
    pub fn gateway_of(&self, port: PortId) -> Result<(NetworkId, &GatewayConfig), DropReason> {
        let network_id = *self.ports.get(&port).ok_or(DropReason::UnknownPort)?;
        let network = self
            .networks
            .get(&network_id)
            .ok_or(DropReason::UnknownPort)?;
        Ok((network_id, network.gateway.config()))
    }

    /// A network's gateway.
    pub fn gateway_config(&self, network: NetworkId) -> Option<&GatewayConfig> {
        self.networks.get(&network).map(|n| n.gateway.config())
    }

    /// Where a frame the gateway sends into `network` goes: the port that
    /// learned its unicast destination, else None (flood the network's
    /// local ports).
    pub fn gateway_egress(&self, network: NetworkId, frame: &[u8], now: Instant) -> Option<PortId> {
        let dst = EthernetFrame::new_checked(frame).ok()?.destination();
        if dst.is_multicast() {
            return None;
        }
        self.networks.get(&network)?.macs.lookup(dst, now)
    }

    /// The local (sandbox) ports of a network: where the gateway's own
    /// broadcasts go.
    pub fn network_ports(&self, network: NetworkId) -> &[PortId] {
        self.networks.get(&network).map_or(&[], |n| &n.local_ports)
    }

    /// When [`Switch::handle_timeout`] wants to run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_sweep
    }

    /// Purge aged MAC entries if the sweep is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.next_sweep {
            Some(due) if now >= due => {}
            _ => return,
        }
        let mut entries = 0;
        for network in self.networks.values_mut() {
            network.macs.expire(now);
            entries += network.macs.len();
        }
        self.next_sweep = (entries > 0).then(|| now + SWEEP_INTERVAL);
    }

    /// A network's forwarding table (for inspection): its learned and
    /// static entries, then the remote endpoints of an overlay network.
    pub fn fdb(&self, network: NetworkId, now: Instant) -> Vec<FdbEntry> {
        let Some(net) = self.networks.get(&network) else {
            return Vec::new();
        };
        let mut entries: Vec<FdbEntry> = net
            .macs
            .entries(now)
            .into_iter()
            .map(|(mac, port, fixed, age)| FdbEntry {
                mac,
                port,
                kind: if fixed {
                    FdbKind::Static
                } else {
                    FdbKind::Learned
                },
                age,
            })
            .collect();
        let known: rustc_hash::FxHashSet<MacAddr> = entries.iter().map(|e| e.mac).collect();
        entries.extend(
            net.remote_macs
                .iter()
                .filter(|(mac, _)| !known.contains(mac))
                .map(|(mac, port)| FdbEntry {
                    mac: *mac,
                    port: *port,
                    kind: FdbKind::Remote,
                    age: Duration::ZERO,
                }),
        );
        entries.sort_by_key(|e| (e.port, e.mac.0));
        entries
    }

    /// Number of MAC entries of a network (for inspection).
    pub fn mac_count(&self, network: NetworkId) -> usize {
        self.networks.get(&network).map_or(0, |n| n.macs.len())
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;
    use crate::wire::ethernet::MacAddr;
    use proptest::prelude::*;
    use std::net::Ipv4Addr;

    const GW: MacAddr = MacAddr([0x02, 0x42, 10, 0, 0, 1]);
    const NET_A: NetworkId = NetworkId(1);
    const NET_B: NetworkId = NetworkId(2);

    fn mac(n: u8) -> MacAddr {
        MacAddr([0x02, 0x42, 10, 0, 1, n])
    }

    fn frame(dst: MacAddr, src: MacAddr) -> Vec<u8> {
        let mut f = dst.0.to_vec();
        f.extend_from_slice(&src.0);
        f.extend_from_slice(&0x0800u16.to_be_bytes());
        f.extend_from_slice(&[0u8; 46]);
        f
    }

    /// NET_A with local ports 1 and 2 and tunnel ports 100 and 101 (two
    /// remote hosts); mac(9) lives behind port 101 per the directory.
    fn overlay_switch() -> Switch {
        let mut sw = Switch::new();
        sw.add_network(
            NET_A,
            GatewayConfig {
                mac: GW,
                ipv4: vec![Ipv4Addr::new(10, 0, 0, 1)],
                ipv6: vec![],
                outbound: true,
                host_loopback: false,
                dhcp: true,
            },
        )
        .unwrap();
        sw.add_port(PortId(1), NET_A).unwrap();
        sw.add_port(PortId(2), NET_A).unwrap();
        sw.add_tunnel_port(PortId(100), NET_A).unwrap();
        sw.add_tunnel_port(PortId(101), NET_A).unwrap();
        let macs = [(mac(9), PortId(101))].into_iter().collect();
        let arp = [(Ipv4Addr::new(10, 0, 0, 9), mac(9))].into_iter().collect();
        sw.set_remote_endpoints(NET_A, macs, arp);
        sw
    }

    /// NET_A as a macvlan network in `mode`: endpoints on ports 1 and 2
    /// (MACs pinned), the parent's LAN on port 50.
    fn macvlan_switch(mode: UplinkMode) -> Switch {
        let mut sw = Switch::new();
        sw.add_network(
            NET_A,
            GatewayConfig {
                mac: GW,
                ipv4: vec![Ipv4Addr::new(10, 0, 0, 250)],
                ipv6: vec![],
                outbound: false,
                host_loopback: false,
                dhcp: false,
            },
        )
        .unwrap();
        sw.add_port(PortId(1), NET_A).unwrap();
        sw.add_port(PortId(2), NET_A).unwrap();
        sw.add_uplink_port(PortId(50), NET_A, mode).unwrap();
        let now = Instant::now();
        for (port, n) in [(PortId(1), 1), (PortId(2), 2)] {
            let identity = PortIdentity {
                mac: mac(n),
                ipv4: vec![],
                ipv6: vec![],
                enforce: false,
            };
            sw.set_port_identity(port, identity, now);
        }
        sw
    }

    #[test]
    fn a_macvlan_lan_reaches_only_its_endpoints_and_they_reach_it() {
        let mut sw = macvlan_switch(UplinkMode::Bridge);
        let now = Instant::now();
        let router = MacAddr([0x02, 0, 0, 0, 0, 0xfe]);
        let host = MacAddr([0x02, 0, 0, 0, 0, 0x0a]);
        assert!(sw.is_uplink(PortId(50)) && !sw.is_uplink(PortId(1)));
        // The LAN's frames to an endpoint come in; to anyone else (the
        // parent host's own, another LAN host's) they are not ours.
        assert_eq!(
            sw.handle_frame(now, PortId(50), &frame(mac(1), router)),
            Decision::Forward(PortId(1))
        );
        assert_eq!(
            sw.handle_frame(now, PortId(50), &frame(host, router)),
            Decision::Drop(DropReason::NotOurs)
        );
        // The LAN's broadcasts flood to the endpoints alone.
        assert_eq!(
            sw.handle_frame(now, PortId(50), &frame(MacAddr::BROADCAST, router)),
            Decision::Flood
        );
        assert_eq!(sw.flood_ports(PortId(50)), &[PortId(1), PortId(2)]);
        // An endpoint reaches the router (learned) and an unknown MAC
        // through the uplink, never by flooding; the other endpoint
        // directly (bridge mode).
        assert_eq!(
            sw.handle_frame(now, PortId(1), &frame(router, mac(1))),
            Decision::Forward(PortId(50))
        );
        assert_eq!(
            sw.handle_frame(now, PortId(1), &frame(host, mac(1))),
            Decision::Forward(PortId(50))
        );
        assert_eq!(
            sw.handle_frame(now, PortId(1), &frame(mac(2), mac(1))),
            Decision::Forward(PortId(2))
        );
        // Its broadcasts reach the LAN and the other endpoint.
        assert_eq!(
            sw.handle_frame(now, PortId(1), &frame(MacAddr::BROADCAST, mac(1))),
            Decision::Flood
        );
        assert!(sw.flood_ports(PortId(1)).contains(&PortId(50)));
        // The LAN never reaches the gateway.
        assert_eq!(
            sw.handle_frame(now, PortId(50), &frame(GW, router)),
            Decision::Drop(DropReason::NoRoute)
        );
        sw.remove_port(PortId(50));
        assert!(!sw.is_uplink(PortId(50)));
    }

    #[test]
    fn private_macvlan_endpoints_reach_the_lan_but_never_each_other() {
        let mut sw = macvlan_switch(UplinkMode::Private);
        let now = Instant::now();
        let router = MacAddr([0x02, 0, 0, 0, 0, 0xfe]);
        assert_eq!(
            sw.handle_frame(now, PortId(1), &frame(mac(2), mac(1))),
            Decision::Drop(DropReason::Isolated)
        );
        assert_eq!(
            sw.handle_frame(now, PortId(1), &frame(MacAddr::BROADCAST, mac(1))),
            Decision::Forward(PortId(50))
        );
        assert_eq!(
            sw.handle_frame(now, PortId(1), &frame(router, mac(1))),
            Decision::Forward(PortId(50))
        );
        assert_eq!(
            sw.handle_frame(now, PortId(50), &frame(mac(2), router)),
            Decision::Forward(PortId(2))
        );
    }

    fn ipv4_frame(dst: MacAddr, src: MacAddr, src_ip: [u8; 4]) -> Vec<u8> {
        let mut f = frame(dst, src);
        f[14] = 0x45;
        f[14 + 12..14 + 16].copy_from_slice(&src_ip);
        f
    }

    #[test]
    fn endpoints_send_only_as_themselves_and_their_macs_are_pinned() {
        let mut sw = overlay_switch();
        let now = Instant::now();
        for (port, n) in [(PortId(1), 1), (PortId(2), 2)] {
            let identity = PortIdentity {
                mac: mac(n),
                ipv4: vec![Ipv4Addr::new(10, 0, 0, 10 + n)],
                ipv6: vec![],
                enforce: n == 1,
            };
            sw.set_port_identity(port, identity, now);
        }
        // Known before either sent anything: no flood.
        assert_eq!(
            sw.handle_frame(now, PortId(1), &ipv4_frame(mac(2), mac(1), [10, 0, 0, 11])),
            Decision::Forward(PortId(2))
        );
        // Port 1 enforces: another address, another MAC: dropped.
        assert_eq!(
            sw.handle_frame(now, PortId(1), &ipv4_frame(mac(2), mac(1), [10, 0, 0, 12])),
            Decision::Drop(DropReason::Spoofed)
        );
        assert_eq!(
            sw.handle_frame(now, PortId(1), &ipv4_frame(mac(2), mac(5), [10, 0, 0, 11])),
            Decision::Drop(DropReason::Spoofed)
        );
        // Port 2 does not enforce (port_security=false), yet cannot take
        // port 1's pinned MAC; its own extra MACs are learned.
        assert_eq!(
            sw.handle_frame(now, PortId(2), &frame(mac(9), mac(1))),
            Decision::Drop(DropReason::Spoofed)
        );
        assert_eq!(
            sw.handle_frame(now, PortId(2), &frame(mac(1), mac(6))),
            Decision::Forward(PortId(1))
        );
        assert_eq!(
            sw.handle_frame(now, PortId(1), &ipv4_frame(mac(6), mac(1), [10, 0, 0, 11])),
            Decision::Forward(PortId(2))
        );
    }

    #[test]
    fn a_mac_flood_stops_at_the_flooders_share() {
        let mut sw = overlay_switch();
        let now = Instant::now();
        let flood_mac = |i: usize| MacAddr([0x02, 0xee, 0, 0, (i >> 8) as u8, i as u8]);
        let mut limited = 0;
        for i in 0..DEFAULT_PORT_LIMIT + 100 {
            if sw.handle_frame(now, PortId(2), &frame(mac(1), flood_mac(i)))
                == Decision::Drop(DropReason::MacLimit)
            {
                limited += 1;
            }
        }
        assert_eq!(
            limited, 100,
            "past its share the flooder's new MACs are dropped"
        );
        // Everyone else still learns: port 1's MAC is forwarded to, not flooded.
        sw.handle_frame(now, PortId(1), &frame(GW, mac(1)));
        assert_eq!(
            sw.handle_frame(now, PortId(2), &frame(mac(1), flood_mac(0))),
            Decision::Forward(PortId(1))
        );
    }

    #[test]
    fn remote_macs_come_from_the_directory_without_flooding() {
        let mut sw = overlay_switch();
        let now = Instant::now();
        assert_eq!(
            sw.handle_frame(now, PortId(1), &frame(mac(9), mac(1))),
            Decision::Forward(PortId(101))
        );
        // Unknown unicast floods to local ports and every host.
        assert_eq!(
            sw.handle_frame(now, PortId(1), &frame(mac(7), mac(1))),
            Decision::Flood
        );
        assert_eq!(
            sw.flood_ports(PortId(1)),
            &[PortId(1), PortId(2), PortId(100), PortId(101)]
        );
    }

    #[test]
    fn floods_are_counted_by_kind() {
        let mut sw = overlay_switch();
        let now = Instant::now();
        sw.handle_frame(now, PortId(1), &frame(MacAddr([0xff; 6]), mac(1)));
        sw.handle_frame(now, PortId(2), &frame(mac(7), mac(2)));
        sw.handle_frame(now, PortId(2), &frame(mac(1), mac(2)));
        assert_eq!(
            sw.flood_counts(NET_A),
            Some(FloodCounts {
                multicast: 1,
                unknown_unicast: 1,
            }),
            "the known unicast to port 1 was not flooded"
        );
        assert_eq!(sw.flood_counts(NetworkId(99)), None);
    }

    #[test]
    fn frames_from_a_tunnel_never_go_back_into_tunnels() {
        let mut sw = overlay_switch();
        let now = Instant::now();
        // Split horizon: floods from a tunnel reach local ports only.
        assert_eq!(
            sw.handle_frame(now, PortId(100), &frame(MacAddr::BROADCAST, mac(8))),
            Decision::Flood
        );
        assert_eq!(sw.flood_ports(PortId(100)), &[PortId(1), PortId(2)]);
        // A frame from one host for another host's MAC is not relayed.
        assert_eq!(
            sw.handle_frame(now, PortId(100), &frame(mac(9), mac(8))),
            Decision::Drop(DropReason::Hairpin)
        );
        // The sender is learned behind its tunnel: answers go straight back.
        assert_eq!(
            sw.handle_frame(now, PortId(2), &frame(mac(8), mac(2))),
            Decision::Forward(PortId(100))
        );
        // The gateway MAC is every host's own: never carried across.
        assert_eq!(
            sw.handle_frame(now, PortId(100), &frame(GW, mac(8))),
            Decision::Drop(DropReason::NoRoute)
        );
    }

    #[test]
    fn arp_for_a_remote_address_is_answered_locally() {
        let mut sw = overlay_switch();
        let now = Instant::now();
        let mut arp = MacAddr::BROADCAST.0.to_vec();
        arp.extend_from_slice(&mac(1).0);
        arp.extend_from_slice(&0x0806u16.to_be_bytes());
        arp.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        arp.extend_from_slice(&mac(1).0);
        arp.extend_from_slice(&[10, 0, 0, 2]);
        arp.extend_from_slice(&[0; 6]);
        arp.extend_from_slice(&[10, 0, 0, 9]);
        assert_eq!(sw.handle_frame(now, PortId(1), &arp), Decision::ToGateway);
        let mut out = [0u8; 128];
        let arp = GatewayFrame::parse(&arp).unwrap();
        let len = sw.gateway_reply(PortId(1), &arp, &mut out).unwrap();
        let reply = &out[..len];
        // From mac(9), saying 10.0.0.9 is at mac(9).
        assert_eq!(&reply[6..12], &mac(9).0);
        assert_eq!(&reply[22..28], &mac(9).0);
        assert_eq!(&reply[28..32], &[10, 0, 0, 9]);
        // Removing the host's tunnel forgets its MACs.
        sw.remove_port(PortId(101));
        assert_eq!(
            sw.handle_frame(now, PortId(1), &frame(mac(9), mac(1))),
            Decision::Flood
        );
    }

    fn switch_with_two_networks() -> Switch {
        let mut sw = Switch::new();
        let gw = |last| GatewayConfig {
            mac: GW,
            ipv4: vec![Ipv4Addr::new(10, 0, 0, last)],
            ipv6: vec![],
            outbound: true,
            host_loopback: false,
            dhcp: true,
        };
        sw.add_network(NET_A, gw(1)).unwrap();
        sw.add_network(NET_B, gw(1)).unwrap();
        for p in 1..=3 {
            sw.add_port(PortId(p), NET_A).unwrap();
        }
        sw.add_port(PortId(10), NET_B).unwrap();
        sw
    }

    #[test]
    fn learns_then_forwards_known_unicast() {
        let now = Instant::now();
        let mut sw = switch_with_two_networks();
        // Unknown destination: flood.
        assert_eq!(
            sw.handle_frame(now, PortId(1), &frame(mac(2), mac(1))),
            Decision::Flood
        );
        // The answer teaches the switch where mac(2) is, and goes straight back.
        assert_eq!(
            sw.handle_frame(now, PortId(2), &frame(mac(1), mac(2))),
            Decision::Forward(PortId(1))
        );
        assert_eq!(
            sw.handle_frame(now, PortId(1), &frame(mac(2), mac(1))),
            Decision::Forward(PortId(2))
        );
    }

    #[test]
    fn flooding_stays_inside_the_network() {
        let now = Instant::now();
        let mut sw = switch_with_two_networks();
        assert_eq!(
            sw.handle_frame(now, PortId(1), &frame(MacAddr::BROADCAST, mac(1))),
            Decision::Flood
        );
        assert_eq!(
            sw.flood_ports(PortId(1)),
            &[PortId(1), PortId(2), PortId(3)]
        );
        assert_eq!(sw.flood_ports(PortId(10)), &[PortId(10)]);
        // A MAC learned in network A is unknown in network B.
        sw.handle_frame(now, PortId(10), &frame(mac(1), mac(9)));
        assert_eq!(
            sw.handle_frame(now, PortId(10), &frame(mac(1), mac(9))),
            Decision::Flood
        );
    }

    #[test]
    fn drops_bad_frames_with_a_reason() {
        let now = Instant::now();
        let mut sw = switch_with_two_networks();
        assert_eq!(
            sw.handle_frame(now, PortId(1), &[0u8; 13]),
            Decision::Drop(DropReason::Truncated)
        );
        assert_eq!(
            sw.handle_frame(now, PortId(1), &frame(mac(2), MacAddr::BROADCAST)),
            Decision::Drop(DropReason::InvalidSource)
        );
        assert_eq!(
            sw.handle_frame(now, PortId(99), &frame(mac(2), mac(1))),
            Decision::Drop(DropReason::UnknownPort)
        );
        sw.handle_frame(now, PortId(1), &frame(mac(2), mac(1)));
        assert_eq!(
            sw.handle_frame(now, PortId(1), &frame(mac(1), mac(3))),
            Decision::Drop(DropReason::Hairpin)
        );
    }

    #[test]
    fn gateway_mac_goes_to_gateway() {
        let now = Instant::now();
        let mut sw = switch_with_two_networks();
        assert_eq!(
            sw.handle_frame(now, PortId(1), &frame(GW, mac(1))),
            Decision::ToGateway
        );
    }

    #[test]
    fn removed_port_is_forgotten() {
        let now = Instant::now();
        let mut sw = switch_with_two_networks();
        sw.handle_frame(now, PortId(2), &frame(mac(1), mac(2)));
        sw.remove_port(PortId(2));
        assert_eq!(
            sw.handle_frame(now, PortId(1), &frame(mac(2), mac(1))),
            Decision::Flood
        );
        assert_eq!(sw.flood_ports(PortId(1)), &[PortId(1), PortId(3)]);
        assert_eq!(sw.remove_network(NET_A), vec![PortId(1), PortId(3)]);
        assert_eq!(sw.network_of(PortId(1)), None);
    }

    #[test]
    fn sweep_purges_aged_entries() {
        let t0 = Instant::now();
        let mut sw = switch_with_two_networks();
        sw.handle_frame(t0, PortId(1), &frame(mac(2), mac(1)));
        assert_eq!(sw.mac_count(NET_A), 1);
        let due = sw.poll_timeout().unwrap();
        sw.handle_timeout(due);
        assert_eq!(sw.mac_count(NET_A), 1);
        sw.handle_timeout(t0 + DEFAULT_AGEING + SWEEP_INTERVAL);
        assert_eq!(sw.mac_count(NET_A), 0);
        assert_eq!(sw.poll_timeout(), None);
    }

    proptest! {
        /// Whatever the frames, a decision never leaves the ingress
        /// network, and known unicast is never flooded.
        #[test]
        fn decisions_stay_in_the_network(
            frames in proptest::collection::vec((1u32..=3, 0u8..6, 0u8..6), 0..200)
        ) {
            let now = Instant::now();
            let mut sw = switch_with_two_networks();
            for (port, d, s) in frames {
                let dst = if d == 0 { MacAddr::BROADCAST } else { mac(d) };
                match sw.handle_frame(now, PortId(port), &frame(dst, mac(s + 1))) {
                    Decision::Forward(p) => {
                        prop_assert_ne!(p, PortId(port));
                        prop_assert_eq!(sw.network_of(p), Some(NET_A));
                    }
                    Decision::Flood => prop_assert!(sw.flood_ports(PortId(port)).iter().all(|p| sw.network_of(*p) == Some(NET_A))),
                    Decision::ToGateway | Decision::Drop(_) => {}
                }
            }
        }
    }
}
