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
mod tests;
