//! The VTEP table: which switch port leads to which remote host of which
//! overlay network, and what changes when a network's view of the other
//! hosts does. Sans-IO; the data path applies what it returns to the
//! switch.
//!
//! # Theory of operation
//!
//! An overlay network spans hosts. On each host it is an ordinary network
//! of the switch whose extra ports are tunnels, one per remote host (a
//! VTEP, in VXLAN's words), numbered from the table's first port id up so
//! they never meet a TAP's. The control plane hands the data path an
//! [`OverlayTable`] per overlay network (the whole view each time, from the
//! cluster directory and static peers); [`VtepTable::set_overlay`] diffs it
//! against what the table holds and returns an [`OverlayUpdate`]: the tunnel
//! ports to add to the switch and to remove from it, and the remote MACs
//! (with the IPv4 addresses the gateway answers ARP for on their behalf).
//!
//! A datagram from a member whose host is not in the table yet (a host that
//! just joined, before the directory said so) makes its port on the spot
//! ([`VtepTable::port_for`]), so the first frames are not lost.
//!
//! A VNI names one network: a table that gives a network a new VNI forgets
//! the old one.

use std::collections::hash_map::Entry;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use rustc_hash::{FxHashMap, FxHashSet};
use weft_vswitch::{MacAddr, NetworkId, PortCounters, PortId, Vni};

use crate::transport::TunnelPeer;

/// An overlay network's view of the other hosts, from the cluster
/// directory (and static peers).
#[derive(Debug, Clone)]
pub struct OverlayTable {
    /// The network's VNI.
    pub vni: Vni,
    /// Endpoints on other hosts: MAC, IPv4 addresses, and the host's tunnel
    /// address (underlay IP and port).
    pub endpoints: Vec<RemoteEndpoint>,
    /// Every host that has the network (and static peers): broadcast,
    /// multicast and unknown unicast go to each.
    pub flood: Vec<SocketAddr>,
    /// The network is encrypted (`-o encrypted=true`): its frames go by
    /// QUIC only, and clear-text VXLAN for its VNI is dropped.
    pub encrypted: bool,
}

/// One endpoint on another host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteEndpoint {
    /// Its MAC.
    pub mac: MacAddr,
    /// Its IPv4 addresses (answered by proxy ARP).
    pub ipv4: Vec<Ipv4Addr>,
    /// The tunnel address of its host.
    pub vtep: SocketAddr,
}

/// A tunnel port the table made: the switch must add it to `network`.
#[derive(Debug, Clone)]
pub struct NewVtep {
    /// The port.
    pub port: PortId,
    /// Its overlay network.
    pub network: NetworkId,
    /// The remote host's underlay address.
    pub host: IpAddr,
    /// The port's counters.
    pub counters: Arc<PortCounters>,
}

/// What the switch must do after [`VtepTable::set_overlay`].
#[derive(Debug, Default)]
pub struct OverlayUpdate {
    /// Tunnel ports to remove from the switch (hosts that left), with the
    /// host each led to.
    pub removed: Vec<(PortId, IpAddr)>,
    /// Tunnel ports to add.
    pub added: Vec<NewVtep>,
    /// Remote MAC → the tunnel port of its host.
    pub remote_macs: FxHashMap<MacAddr, PortId>,
    /// Remote IPv4 address → its MAC (the gateway answers ARP for it).
    pub proxy_arp: FxHashMap<Ipv4Addr, MacAddr>,
}

/// See the module header.
#[derive(Debug)]
pub struct VtepTable {
    peers: FxHashMap<PortId, TunnelPeer>,
    ports: FxHashMap<(NetworkId, IpAddr), PortId>,
    networks: FxHashMap<Vni, NetworkId>,
    /// The overlay networks that are encrypted.
    encrypted: FxHashSet<NetworkId>,
    next_port: u32,
}

impl VtepTable {
    /// An empty table whose ports count up from `first_port`.
    pub fn new(first_port: u32) -> Self {
        VtepTable {
            peers: FxHashMap::default(),
            ports: FxHashMap::default(),
            networks: FxHashMap::default(),
            encrypted: FxHashSet::default(),
            next_port: first_port,
        }
    }

    /// The overlay network of `vni`.
    pub fn network(&self, vni: Vni) -> Option<NetworkId> {
        self.networks.get(&vni).copied()
    }

    /// Whether `network` is encrypted.
    pub fn encrypted(&self, network: NetworkId) -> bool {
        self.encrypted.contains(&network)
    }

    /// The remote host behind a tunnel port.
    pub fn peer(&self, port: PortId) -> Option<&TunnelPeer> {
        self.peers.get(&port)
    }

    /// The tunnel port of `network` toward `addr`, and whether the table
    /// made it now (then the switch must add it). None when the port ids
    /// are exhausted.
    pub fn port_for(
        &mut self,
        network: NetworkId,
        vni: Vni,
        addr: SocketAddr,
    ) -> Option<(PortId, Option<NewVtep>)> {
        let port = match self.ports.entry((network, addr.ip())) {
            Entry::Occupied(entry) => {
                let port = *entry.get();
                if let Some(peer) = self.peers.get_mut(&port) {
                    peer.addr = addr;
                    peer.vni = vni;
                }
                return Some((port, None));
            }
            Entry::Vacant(entry) => {
                let port = PortId(self.next_port);
                self.next_port = self.next_port.checked_add(1)?;
                entry.insert(port);
                port
            }
        };
        let counters = Arc::new(PortCounters::default());
        self.peers.insert(
            port,
            TunnelPeer {
                vni,
                addr,
                counters: Arc::clone(&counters),
                encrypted: self.encrypted.contains(&network),
            },
        );
        let new = NewVtep {
            port,
            network,
            host: addr.ip(),
            counters,
        };
        Some((port, Some(new)))
    }

    /// Forget the tunnel port of `network` toward `host` (the switch would
    /// not take it, or the host left); returns its port.
    pub fn forget(&mut self, network: NetworkId, host: IpAddr) -> Option<PortId> {
        let port = self.ports.remove(&(network, host))?;
        self.peers.remove(&port);
        Some(port)
    }

    /// Make `network` an overlay network with this view of the other hosts,
    /// or update it. See the module header.
    pub fn set_overlay(&mut self, network: NetworkId, table: &OverlayTable) -> OverlayUpdate {
        self.networks.retain(|_, n| *n != network);
        self.networks.insert(table.vni, network);
        if table.encrypted {
            self.encrypted.insert(network);
        } else {
            self.encrypted.remove(&network);
        }
        for ((n, _), port) in &self.ports {
            if let Some(peer) = self.peers.get_mut(port).filter(|_| *n == network) {
                peer.encrypted = table.encrypted;
            }
        }
        let wanted: FxHashSet<IpAddr> = table
            .flood
            .iter()
            .map(SocketAddr::ip)
            .chain(table.endpoints.iter().map(|e| e.vtep.ip()))
            .collect();
        let mut update = OverlayUpdate::default();
        let gone: Vec<IpAddr> = self
            .ports
            .keys()
            .filter(|(n, ip)| *n == network && !wanted.contains(ip))
            .map(|(_, ip)| *ip)
            .collect();
        for ip in gone {
            if let Some(port) = self.forget(network, ip) {
                update.removed.push((port, ip));
            }
        }
        for addr in table
            .flood
            .iter()
            .chain(table.endpoints.iter().map(|e| &e.vtep))
        {
            if let Some((_, Some(new))) = self.port_for(network, table.vni, *addr) {
                update.added.push(new);
            }
        }
        for endpoint in &table.endpoints {
            let Some(port) = self.ports.get(&(network, endpoint.vtep.ip())) else {
                continue;
            };
            update.remote_macs.insert(endpoint.mac, *port);
            for ip in &endpoint.ipv4 {
                update.proxy_arp.insert(*ip, endpoint.mac);
            }
        }
        update
    }

    /// Forget an overlay network: its VNI and its tunnel ports (which the
    /// switch drops with the network). Returns the ports and their hosts.
    pub fn remove_network(&mut self, network: NetworkId) -> Vec<(PortId, IpAddr)> {
        self.networks.retain(|_, n| *n != network);
        self.encrypted.remove(&network);
        let hosts: Vec<IpAddr> = self
            .ports
            .keys()
            .filter(|(n, _)| *n == network)
            .map(|(_, ip)| *ip)
            .collect();
        hosts
            .into_iter()
            .filter_map(|ip| Some((self.forget(network, ip)?, ip)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NET: NetworkId = NetworkId(7);
    const FIRST: u32 = 0x8000_0000;

    fn vni(n: u32) -> Vni {
        Vni::new(n).unwrap()
    }

    fn host(last: u8) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, last], 4789))
    }

    fn endpoint(mac_last: u8, ip_last: u8, vtep: SocketAddr) -> RemoteEndpoint {
        RemoteEndpoint {
            mac: MacAddr([2, 0x42, 10, 0, 0, mac_last]),
            ipv4: vec![Ipv4Addr::new(10, 0, 0, ip_last)],
            vtep,
        }
    }

    #[test]
    fn a_table_makes_one_port_per_host_and_maps_macs_to_it() {
        let mut vteps = VtepTable::new(FIRST);
        let table = OverlayTable {
            vni: vni(42),
            endpoints: vec![endpoint(2, 2, host(2)), endpoint(3, 3, host(2))],
            flood: vec![host(2), host(3)],
            encrypted: false,
        };
        let update = vteps.set_overlay(NET, &table);
        assert!(update.removed.is_empty());
        assert_eq!(update.added.len(), 2, "one port per host, not per endpoint");
        assert!(update.added.iter().all(|v| v.port.0 >= FIRST));
        let to_host2 = update
            .added
            .iter()
            .find(|v| v.host == host(2).ip())
            .unwrap();
        assert_eq!(update.remote_macs.len(), 2);
        assert!(update.remote_macs.values().all(|p| *p == to_host2.port));
        assert_eq!(
            update.proxy_arp.get(&Ipv4Addr::new(10, 0, 0, 3)),
            Some(&MacAddr([2, 0x42, 10, 0, 0, 3]))
        );
        assert_eq!(vteps.network(vni(42)), Some(NET));
        assert_eq!(vteps.peer(to_host2.port).unwrap().addr, host(2));
    }

    #[test]
    fn the_same_table_again_changes_nothing() {
        let mut vteps = VtepTable::new(FIRST);
        let table = OverlayTable {
            vni: vni(42),
            endpoints: vec![endpoint(2, 2, host(2))],
            flood: vec![host(2)],
            encrypted: false,
        };
        vteps.set_overlay(NET, &table);
        let again = vteps.set_overlay(NET, &table);
        assert!(again.added.is_empty() && again.removed.is_empty());
        assert_eq!(again.remote_macs.len(), 1);
    }

    #[test]
    fn a_host_that_left_loses_its_port_and_its_macs() {
        let mut vteps = VtepTable::new(FIRST);
        let both = OverlayTable {
            vni: vni(42),
            endpoints: vec![endpoint(2, 2, host(2)), endpoint(3, 3, host(3))],
            flood: vec![host(2), host(3)],
            encrypted: false,
        };
        let first = vteps.set_overlay(NET, &both);
        let port3 = first
            .added
            .iter()
            .find(|v| v.host == host(3).ip())
            .unwrap()
            .port;
        let one = OverlayTable {
            vni: vni(42),
            endpoints: vec![endpoint(2, 2, host(2))],
            flood: vec![host(2)],
            encrypted: false,
        };
        let update = vteps.set_overlay(NET, &one);
        assert_eq!(update.removed, vec![(port3, host(3).ip())]);
        assert!(update.added.is_empty());
        assert!(!update.remote_macs.values().any(|p| *p == port3));
        assert!(vteps.peer(port3).is_none());
    }

    #[test]
    fn a_new_vni_replaces_the_old_one() {
        let mut vteps = VtepTable::new(FIRST);
        let mut table = OverlayTable {
            vni: vni(42),
            endpoints: Vec::new(),
            flood: vec![host(2)],
            encrypted: false,
        };
        vteps.set_overlay(NET, &table);
        table.vni = vni(43);
        vteps.set_overlay(NET, &table);
        assert_eq!(vteps.network(vni(42)), None);
        assert_eq!(vteps.network(vni(43)), Some(NET));
        let port = vteps.port_for(NET, vni(43), host(2)).unwrap().0;
        assert_eq!(vteps.peer(port).unwrap().vni, vni(43));
    }

    #[test]
    fn a_datagram_from_an_unlisted_member_makes_its_port_once() {
        let mut vteps = VtepTable::new(FIRST);
        let (port, new) = vteps.port_for(NET, vni(9), host(5)).unwrap();
        assert_eq!(new.unwrap().port, port);
        let (again, new) = vteps.port_for(NET, vni(9), host(5)).unwrap();
        assert_eq!(again, port);
        assert!(new.is_none());
    }

    #[test]
    fn removing_the_network_returns_its_ports_only() {
        let mut vteps = VtepTable::new(FIRST);
        let other = NetworkId(8);
        vteps.set_overlay(
            NET,
            &OverlayTable {
                vni: vni(1),
                endpoints: Vec::new(),
                flood: vec![host(2), host(3)],
                encrypted: false,
            },
        );
        vteps.set_overlay(
            other,
            &OverlayTable {
                vni: vni(2),
                endpoints: Vec::new(),
                flood: vec![host(2)],
                encrypted: true,
            },
        );
        let removed = vteps.remove_network(NET);
        assert_eq!(removed.len(), 2);
        assert_eq!(vteps.network(vni(1)), None);
        assert_eq!(vteps.network(vni(2)), Some(other));
    }

    #[test]
    fn port_ids_never_wrap() {
        let mut vteps = VtepTable::new(u32::MAX);
        assert!(vteps.port_for(NET, vni(1), host(2)).is_none());
    }
}
