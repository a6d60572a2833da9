//! The `overlay` driver: a cluster-scope network, switched by weft on every
//! host and carried between hosts in VXLAN.
//!
//! # Theory of operation
//!
//! On each host an overlay network is an ordinary network of the switch,
//! made exactly as the bridge driver makes one (this driver delegates to
//! the [`BridgeDriver`]: same TAPs, same ports, same gateway). Every host's
//! gateway has the same MAC and addresses (derived from the subnet), an
//! anycast gateway: ARP, DNS and NAT are answered on the host where the
//! frame entered.
//!
//! What is added comes from the cluster directory ([`Cluster`]):
//! - the tunnel table of the network ([`OverlayDriver::refresh`]): every
//!   endpoint on another host (MAC, IPv4 addresses, its host's VXLAN
//!   address), so the switch forwards to it without flooding and answers
//!   ARP for it locally; and the flood list: the other hosts with an
//!   endpoint on the network plus the static peers (`--opt peers=`, Linux
//!   `vxlan` devices or other VTEPs that are not weft), where broadcast and
//!   unknown unicast go. Static peers' MACs are learned from what they send;
//! - the DNS zone: local endpoints and those of every other host.
//!
//! The controller calls `refresh` and `endpoints_changed` again on every
//! directory change, with the whole table each time.
//!
//! Options (`--opt`): `vni=N` (1 to 16777215; default: random, unused in
//! the directory) and `peers=IP[,IP...]` (static VTEPs).

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use weft_overlay::driver::gossip::Cluster;
use weft_overlay::driver::quic::SharedQuicStatus;
use weft_overlay::{ClusterNetworkId, OverlayTable, RemoteEndpoint};
use weft_services::dns::ZoneEntry;
use weft_vswitch::counters::PortCountersSnapshot;

use crate::driver::{
    zone_entry, BridgeDriver, DriverError, NetworkDriver, RemoteEndpointDetails, TunnelPeerCounters,
};
use crate::model::{DriverKind, Endpoint, Network};

/// The option naming the static peers.
pub const PEERS_OPTION: &str = "peers";

/// The option fixing the VNI.
pub const VNI_OPTION: &str = "vni";

/// See the module header.
pub struct OverlayDriver {
    bridge: Arc<BridgeDriver>,
    cluster: Option<Arc<Cluster>>,
    /// The QUIC transport's counters, when it runs.
    quic: Option<SharedQuicStatus>,
}

impl OverlayDriver {
    /// An overlay driver over the bridge driver's data path; without a
    /// cluster (no `--listen`) every operation is refused.
    pub fn new(
        bridge: Arc<BridgeDriver>,
        cluster: Option<Arc<Cluster>>,
        quic: Option<SharedQuicStatus>,
    ) -> Self {
        OverlayDriver {
            bridge,
            cluster,
            quic,
        }
    }

    fn cluster(&self) -> Result<&Arc<Cluster>, DriverError> {
        self.cluster.as_ref().ok_or(DriverError::NoCluster)
    }

    /// Give the switch the network's current view of the other hosts (see
    /// the module header).
    ///
    /// # Errors
    ///
    /// [`DriverError`] without a cluster or when the data path is gone.
    pub fn refresh(&self, network: &Network) -> Result<(), DriverError> {
        let cluster = self.cluster()?;
        let Some(switch_id) = self.bridge.switch_network(&network.name) else {
            return Ok(());
        };
        let Some(vni) = network.vni else {
            return Ok(());
        };
        let id = ClusterNetworkId(network.id.clone());
        let endpoints = cluster
            .remote_endpoints(&id)
            .into_iter()
            .filter_map(|e| {
                Some(RemoteEndpoint {
                    mac: e.mac,
                    ipv4: e
                        .ips
                        .iter()
                        .filter_map(|ip| match ip {
                            IpAddr::V4(v4) => Some(*v4),
                            IpAddr::V6(_) => None,
                        })
                        .collect(),
                    vtep: e.vtep?,
                })
            })
            .collect();
        let port = cluster.vxlan_port();
        let flood: BTreeSet<SocketAddr> = cluster
            .hosts_with_network(&id)
            .into_iter()
            .chain(
                static_peers(network)
                    .into_iter()
                    .map(|ip| SocketAddr::new(ip, port)),
            )
            .collect();
        self.bridge.datapath().set_overlay(
            switch_id,
            OverlayTable {
                vni,
                endpoints,
                flood: flood.into_iter().collect(),
                encrypted: is_encrypted(network),
            },
        )?;
        Ok(())
    }
}

/// The option that makes an overlay network's frames go by QUIC.
pub const ENCRYPTED_OPTION: &str = "encrypted";

/// Whether `network` is encrypted (`-o encrypted=true`; the controller
/// writes the option at creation, so every host reads the same).
pub fn is_encrypted(network: &Network) -> bool {
    network
        .options
        .get(ENCRYPTED_OPTION)
        .is_some_and(|v| v == "true")
}

/// The static peers of a network (`--opt peers=IP[,IP...]`); the controller
/// checked the list at create time, so an entry that does not parse is
/// skipped.
pub fn static_peers(network: &Network) -> Vec<IpAddr> {
    network
        .options
        .get(PEERS_OPTION)
        .map(|list| parse_peers(list).unwrap_or_default())
        .unwrap_or_default()
}

/// Parse `IP[,IP...]`.
///
/// # Errors
///
/// The first entry that is not an IP address.
pub fn parse_peers(list: &str) -> Result<Vec<IpAddr>, String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<IpAddr>().map_err(|_| s.to_owned()))
        .collect()
}

impl NetworkDriver for OverlayDriver {
    fn kind(&self) -> DriverKind {
        DriverKind::Overlay
    }

    fn create_network(&self, network: &Network) -> Result<(), DriverError> {
        self.cluster()?;
        self.bridge.create_network(network)?;
        self.refresh(network)
    }

    fn delete_network(&self, network: &Network) -> Result<(), DriverError> {
        self.bridge.delete_network(network)
    }

    fn create_endpoint(
        &self,
        network: &Network,
        endpoint: &mut Endpoint,
    ) -> Result<(), DriverError> {
        self.bridge.create_endpoint(network, endpoint)
    }

    fn delete_endpoint(&self, network: &Network, endpoint: &Endpoint) -> Result<(), DriverError> {
        self.bridge.delete_endpoint(network, endpoint)
    }

    fn join(&self, network: &Network, endpoint: &mut Endpoint) -> Result<(), DriverError> {
        self.cluster()?;
        self.bridge.join(network, endpoint)
    }

    fn leave(&self, network: &Network, endpoint: &Endpoint) -> Result<(), DriverError> {
        self.bridge.leave(network, endpoint)
    }

    fn counters(&self, endpoint: &Endpoint) -> Option<PortCountersSnapshot> {
        self.bridge.counters(endpoint)
    }

    fn nat_stats(&self, network: &Network) -> Option<weft_services::NatNetworkStats> {
        self.bridge.nat_stats(network)
    }

    fn tunnel_counters(&self, network: &Network) -> Vec<TunnelPeerCounters> {
        let Some(switch_id) = self.bridge.switch_network(&network.name) else {
            return Vec::new();
        };
        // An encrypted network's hosts are QUIC connections: theirs too.
        let quic = self
            .quic
            .as_ref()
            .filter(|_| is_encrypted(network))
            .map(|status| {
                status
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .peers
                    .clone()
            })
            .unwrap_or_default();
        self.bridge
            .datapath()
            .tunnel_port_counters(switch_id)
            .into_iter()
            .map(|(host, counters)| TunnelPeerCounters {
                host,
                counters,
                quic: quic
                    .iter()
                    .filter(|c| c.remote.ip() == host)
                    .max_by_key(|c| c.state == weft_overlay::quic::LinkState::Established)
                    .cloned(),
            })
            .collect()
    }

    fn remote_endpoints(&self, network: &Network) -> Vec<RemoteEndpointDetails> {
        let Some(cluster) = &self.cluster else {
            return Vec::new();
        };
        let mut endpoints: Vec<RemoteEndpointDetails> = cluster
            .remote_endpoints(&ClusterNetworkId(network.id.clone()))
            .into_iter()
            .map(|e| RemoteEndpointDetails {
                name: e.name,
                mac: e.mac,
                addresses: e.ips,
                host: e.vtep.map(|v| v.ip()),
            })
            .collect();
        endpoints.sort_by(|a, b| (&a.host, &a.name, &a.mac).cmp(&(&b.host, &b.name, &b.mac)));
        endpoints
    }

    /// Local endpoints, and every other host's from the directory.
    fn endpoints_changed(
        &self,
        network: &Network,
        endpoints: &[&Endpoint],
    ) -> Result<(), DriverError> {
        // DHCP answers local ports only: the local endpoints' leases.
        self.bridge.set_dhcp_leases(network, endpoints)?;
        let mut entries: Vec<ZoneEntry> = endpoints.iter().map(|e| zone_entry(e)).collect();
        if let Some(cluster) = &self.cluster {
            let id = ClusterNetworkId(network.id.clone());
            entries.extend(cluster.remote_endpoints(&id).into_iter().filter_map(|e| {
                Some(ZoneEntry {
                    name: e.name?,
                    aliases: e.aliases,
                    addresses: e.ips,
                })
            }));
        }
        self.bridge.set_zone_entries(network, entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_lists_parse_and_name_the_bad_entry() {
        assert_eq!(
            parse_peers("192.0.2.4, 192.0.2.5,").unwrap(),
            vec![
                "192.0.2.4".parse::<IpAddr>().unwrap(),
                "192.0.2.5".parse().unwrap()
            ]
        );
        assert_eq!(parse_peers("192.0.2.4,host").unwrap_err(), "host");
        assert!(parse_peers("").unwrap().is_empty());
    }
}
