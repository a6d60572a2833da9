//! Network drivers (Docker CNM): what a network of each kind does when
//! networks and endpoints come and go.
//!
//! The controller does the bookkeeping (names, IPAM, state) and calls the
//! driver for what is specific to the kind:
//!
//! | driver | network | endpoint join |
//! |---|---|---|
//! | `null` | nothing | the helper brings up `lo` in the sandbox |
//! | `host` | nothing | nothing: the sandbox is the host's namespace |
//! | `bridge` | a network (broadcast domain) in the switch | the helper makes a TAP in the sandbox, its fd becomes a switch port; a VM's endpoint (`kind: stream`) is a Unix socket bound here instead, its connection the port |
//! | `overlay` | a bridge network whose other hosts are tunnel ports (see [`crate::overlay_driver`]) | as `bridge` |
//!
//! `join` and `leave` block (they run the attach helper): the controller
//! calls them off the async runtime.
//!
//! # Published ports
//!
//! Publishing belongs to `join` and `leave` of the bridge driver (the only
//! one with interfaces; the controller refuses `ports` for the others).
//! `join` binds every host socket of `endpoint.ports` first, before the
//! attach helper runs, so a port in use or a privileged one fails the
//! connect at once and leaves nothing behind; the kernel's choice for host
//! port 0 is written back into the endpoint. Once the TAP is a switch port,
//! each socket goes to the data path with its target (network, port, MAC,
//! the endpoint's address of the host address's family and the container
//! port), and the driver keeps the publish ids per endpoint; `leave`
//! unpublishes them before it removes the port, so the host ports are free
//! again when `leave` returns. On a re-join after a daemon restart (the
//! endpoint has an `ifname`), a port that cannot be bound any more is
//! logged and dropped from the endpoint, and the rest goes on.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use weft_datapath::published::{HostListener, PublishId, PublishTarget, PublishedFigures};
use weft_datapath::taps::PortDevice;
use weft_datapath::{Datapath, DatapathError};
use weft_services::dhcp::{DhcpLease, DhcpScope};
use weft_services::dns::{Zone, ZoneEntry};
use weft_services::NatNetworkStats;
use weft_vswitch::counters::PortCountersSnapshot;
use weft_vswitch::sys::tap::Tap;
use weft_vswitch::{
    FdbKind, GatewayConfig, MacAddr, NetworkId, PortCounters, PortId, PortIdentity,
};

use crate::attach::{run_helper, AttachAction, AttachRequest, DockerTapConfig, TapConfig};
use crate::model::{DriverKind, Endpoint, EndpointKind, Network, PortMapping};

mod error;
mod host_sockets;

pub use error::DriverError;

use host_sockets::{bind_dgram_port, bind_published_ports, bind_stream_port, release_device};

/// A macvlan or ipvlan network's parent, as `inspect` shows it: what its
/// port took from the LAN (rx), put on it (tx), and dropped (`not_ours`:
/// the LAN's other traffic).
#[derive(Debug, Clone, serde::Serialize)]
pub struct UplinkDetails {
    /// The parent interface (with `.VID` for a VLAN).
    pub parent: String,
    /// Its port's counters.
    pub counters: PortCountersSnapshot,
}

/// One remote host's tunnel port of an overlay network, with its counters:
/// rx is what came from that host, tx what went to it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TunnelPeerCounters {
    /// The remote host's VXLAN address.
    pub host: IpAddr,
    /// Its tunnel port's counters.
    #[serde(flatten)]
    pub counters: PortCountersSnapshot,
    /// On an encrypted network: the QUIC connection to that host (state,
    /// datagrams, bytes, losses, RTT, path MTU).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quic: Option<weft_overlay::quic::QuicPeerStats>,
}

/// An endpoint of an overlay network on another host, from the cluster
/// directory (`network inspect`'s `remote_endpoints`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RemoteEndpointDetails {
    /// Its DNS name, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Its MAC.
    pub mac: MacAddr,
    /// Its addresses.
    pub addresses: Vec<IpAddr>,
    /// Its host's underlay (VXLAN) address, once the host's record arrived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<IpAddr>,
}

/// One entry of a network's forwarding table (`GET /v1/networks/NAME/fdb`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FdbRow {
    /// The MAC.
    pub mac: MacAddr,
    /// `static` (an endpoint's own MAC, pinned), `learned`, or `remote` (an
    /// overlay endpoint on another host, from the cluster directory).
    pub kind: String,
    /// The local endpoint frames to it go to (its DNS name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The other host frames to it go to (its tunnel address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<std::net::SocketAddr>,
    /// Seconds since a learned entry was last seen (0 for the others).
    pub age_seconds: f64,
}

/// The CNM driver API. See the module header. Every step defaults to
/// "nothing to do", the `host` driver's whole behaviour.
pub trait NetworkDriver: Send + Sync {
    /// The kind this driver serves.
    fn kind(&self) -> DriverKind;

    /// A network of this driver was created (or restored at start).
    ///
    /// # Errors
    ///
    /// [`DriverError`] when the driver cannot make it.
    fn create_network(&self, _network: &Network) -> Result<(), DriverError> {
        Ok(())
    }

    /// A network was deleted (it has no endpoints).
    ///
    /// # Errors
    ///
    /// [`DriverError`] when the driver cannot undo it.
    fn delete_network(&self, _network: &Network) -> Result<(), DriverError> {
        Ok(())
    }

    /// Fill in the driver's part of a new endpoint (its MAC).
    ///
    /// # Errors
    ///
    /// [`DriverError`] when the endpoint cannot be made.
    fn create_endpoint(
        &self,
        _network: &Network,
        _endpoint: &mut Endpoint,
    ) -> Result<(), DriverError> {
        Ok(())
    }

    /// Forget an endpoint (after `leave`).
    ///
    /// # Errors
    ///
    /// [`DriverError`] when the driver cannot undo it.
    fn delete_endpoint(&self, _network: &Network, _endpoint: &Endpoint) -> Result<(), DriverError> {
        Ok(())
    }

    /// Put the endpoint into its sandbox; sets `endpoint.ifname`. With a
    /// non-empty `ifname`, re-open that interface (daemon restart). Also
    /// publishes `endpoint.ports` (see the module header), writing back
    /// the host ports really bound.
    ///
    /// # Errors
    ///
    /// [`DriverError`], with the helper's message when it failed.
    fn join(&self, _network: &Network, _endpoint: &mut Endpoint) -> Result<(), DriverError> {
        Ok(())
    }

    /// Take the endpoint out of its sandbox (and close its published
    /// ports).
    ///
    /// # Errors
    ///
    /// [`DriverError`] when the data path is gone.
    fn leave(&self, _network: &Network, _endpoint: &Endpoint) -> Result<(), DriverError> {
        Ok(())
    }

    /// Counters of an endpoint's port, if it has one.
    fn counters(&self, _endpoint: &Endpoint) -> Option<PortCountersSnapshot> {
        None
    }

    /// Counters of the network's tunnel ports, one per remote host it
    /// carries frames to or from (overlay only).
    fn tunnel_counters(&self, _network: &Network) -> Vec<TunnelPeerCounters> {
        Vec::new()
    }

    /// The network's endpoints on other hosts (overlay only).
    fn remote_endpoints(&self, _network: &Network) -> Vec<RemoteEndpointDetails> {
        Vec::new()
    }

    /// The network's parent LAN and its port's counters (macvlan, ipvlan).
    fn uplink(&self, _network: &Network) -> Option<UplinkDetails> {
        None
    }

    /// What the NAT holds and refused for the network (networks with a
    /// gateway in the data path).
    fn nat_stats(&self, _network: &Network) -> Option<NatNetworkStats> {
        None
    }

    /// The endpoints of a network changed: these are all of them now
    /// (their names for the embedded DNS).
    ///
    /// # Errors
    ///
    /// [`DriverError`] when the data path is gone.
    fn endpoints_changed(
        &self,
        _network: &Network,
        _endpoints: &[&Endpoint],
    ) -> Result<(), DriverError> {
        Ok(())
    }

    /// Set the upstream resolvers of the embedded DNS.
    ///
    /// # Errors
    ///
    /// [`DriverError`] when the data path is gone.
    fn set_dns_upstreams(&self, _upstreams: &[std::net::SocketAddr]) -> Result<(), DriverError> {
        Ok(())
    }
}

/// The attach helper's own network namespace, which is the daemon's (the
/// helper is its child): where Docker's TAPs are made.
pub(crate) const OWN_NETNS: &str = "/proc/self/ns/net";

/// `null`: loopback only.
#[derive(Debug)]
pub struct NullDriver {
    helper_exe: PathBuf,
}

/// `host`: bookkeeping only.
#[derive(Debug, Default)]
pub struct HostDriver;

/// `bridge`: a local network in weft's userspace switch.
#[derive(Debug)]
pub struct BridgeDriver {
    helper_exe: PathBuf,
    datapath: Arc<Datapath>,
    tables: Mutex<BridgeTables>,
}

#[derive(Debug, Default)]
struct BridgeTables {
    networks: HashMap<String, NetworkId>,
    ports: HashMap<String, (PortId, Arc<PortCounters>)>,
    /// Published ports of each endpoint (by endpoint id).
    published: HashMap<String, Vec<PublishId>>,
    next_network: u32,
}

impl NullDriver {
    /// A null driver that runs `helper_exe` to bring up loopback.
    pub fn new(helper_exe: PathBuf) -> Self {
        NullDriver { helper_exe }
    }
}

impl NetworkDriver for NullDriver {
    fn kind(&self) -> DriverKind {
        DriverKind::Null
    }
    fn join(&self, _: &Network, endpoint: &mut Endpoint) -> Result<(), DriverError> {
        let request = AttachRequest {
            sandbox: endpoint.sandbox.clone(),
            action: AttachAction::Loopback,
        };
        let (ifname, _) = run_helper(&self.helper_exe, &request)?;
        endpoint.ifname = ifname;
        Ok(())
    }
}

impl NetworkDriver for HostDriver {
    fn kind(&self) -> DriverKind {
        DriverKind::Host
    }
}

impl BridgeDriver {
    /// A bridge driver over `datapath`, attaching with `helper_exe`.
    pub fn new(helper_exe: PathBuf, datapath: Arc<Datapath>) -> Self {
        BridgeDriver {
            helper_exe,
            datapath,
            tables: Mutex::default(),
        }
    }

    /// Remove the interface with `mac` from `netns`, if there is one (what
    /// a connect a crash cut short left: see `crate::store`); its name.
    ///
    /// # Errors
    ///
    /// [`DriverError`] with the helper's message.
    pub fn remove_stray(&self, netns: &Path, mac: MacAddr) -> Result<Option<String>, DriverError> {
        let request = AttachRequest {
            sandbox: netns.to_owned(),
            action: AttachAction::Remove { mac },
        };
        let (ifname, _) = run_helper(&self.helper_exe, &request)?;
        Ok((!ifname.is_empty()).then_some(ifname))
    }

    /// What a network flooded since it was made (None: not switched
    /// here).
    ///
    /// # Errors
    ///
    /// [`DriverError`] when the data path does not answer.
    pub fn floods(
        &self,
        network: &Network,
    ) -> Result<Option<weft_vswitch::FloodCounts>, DriverError> {
        match self.switch_network(&network.name) {
            Some(id) => Ok(self.datapath.floods(id)?),
            None => Ok(None),
        }
    }

    /// A network's forwarding table, with local ports named by their
    /// endpoints (of `endpoints`) and tunnel ports by their hosts.
    ///
    /// # Errors
    ///
    /// [`DriverError`] when the data path does not answer.
    pub fn fdb(
        &self,
        network: &Network,
        endpoints: &[Endpoint],
    ) -> Result<Vec<FdbRow>, DriverError> {
        let Some(id) = self.switch_network(&network.name) else {
            return Ok(Vec::new());
        };
        let names: BTreeMap<u32, &str> = {
            let tables = self.tables();
            endpoints
                .iter()
                .filter_map(|e| {
                    tables
                        .ports
                        .get(&e.id)
                        .map(|(port, _)| (port.0, e.name.as_str()))
                })
                .collect()
        };
        let rows = self
            .datapath
            .fdb(id)?
            .into_iter()
            .map(|(entry, host)| FdbRow {
                mac: entry.mac,
                kind: match entry.kind {
                    FdbKind::Static => "static",
                    FdbKind::Learned => "learned",
                    FdbKind::Remote => "remote",
                }
                .to_owned(),
                endpoint: names.get(&entry.port.0).map(|n| (*n).to_owned()),
                host,
                age_seconds: entry.age.as_secs_f64(),
            })
            .collect();
        Ok(rows)
    }

    /// Start capturing a network's frames (every port, or `only` that
    /// endpoint's), with its local ports named by their endpoints.
    ///
    /// # Errors
    ///
    /// [`DriverError`] when the network or endpoint has no port here, or
    /// the data path is gone.
    pub fn capture(
        &self,
        network: &Network,
        endpoints: &[Endpoint],
        only: Option<&Endpoint>,
        snap_len: usize,
        ring_bytes: usize,
    ) -> Result<
        (
            weft_datapath::capture::CaptureHandle,
            HashMap<PortId, String>,
        ),
        DriverError,
    > {
        use weft_datapath::capture::Filter;
        let id = self
            .switch_network(&network.name)
            .ok_or_else(|| DriverError::UnknownNetwork(network.name.clone()))?;
        let (names, filter) = {
            let tables = self.tables();
            let names: HashMap<PortId, String> = endpoints
                .iter()
                .filter_map(|e| {
                    tables
                        .ports
                        .get(&e.id)
                        .map(|(port, _)| (*port, e.name.clone()))
                })
                .collect();
            let filter = match only {
                None => Filter::Network(id),
                Some(e) => {
                    let (port, _) = tables
                        .ports
                        .get(&e.id)
                        .ok_or_else(|| DriverError::UnknownNetwork(network.name.clone()))?;
                    Filter::Ports([*port].into_iter().collect())
                }
            };
            (names, filter)
        };
        let handle = self.datapath.start_capture(filter, snap_len, ring_bytes)?;
        Ok((handle, names))
    }

    /// Make (or, `restoring`, re-open) the endpoint's TAP in its sandbox
    /// with the attach helper; its name there and the device.
    fn make_tap(
        &self,
        network: &Network,
        endpoint: &Endpoint,
        mac: MacAddr,
        restoring: bool,
    ) -> Result<(String, Tap), DriverError> {
        let gateways = network.subnets.iter().map(|s| s.gateway).collect();
        let request = match &endpoint.docker {
            // Docker's endpoint: made here for Docker to move into the
            // container, found there by its MAC after a restart.
            Some(docker) => AttachRequest {
                sandbox: if restoring {
                    endpoint.sandbox.clone()
                } else {
                    PathBuf::from(OWN_NETNS)
                },
                action: AttachAction::DockerTap(DockerTapConfig {
                    src_name: docker.src_name.clone(),
                    mac,
                    mtu: network.mtu,
                    reopen: restoring,
                }),
            },
            None => AttachRequest {
                sandbox: endpoint.sandbox.clone(),
                action: AttachAction::Tap(TapConfig {
                    ifname: restoring.then(|| endpoint.ifname.clone()),
                    mac,
                    mtu: network.mtu,
                    addresses: endpoint.addresses.clone(),
                    gateways,
                    new_name: if restoring {
                        None
                    } else {
                        endpoint.requested_ifname.clone()
                    },
                }),
            },
        };
        let (ifname, fd) = run_helper(&self.helper_exe, &request)?;
        let fd = fd.ok_or_else(|| DriverError::NoFd(endpoint.sandbox.clone()))?;
        let tap = Tap::from_fd(fd).map_err(|source| DriverError::Tap {
            sandbox: endpoint.sandbox.clone(),
            source,
        })?;
        Ok((ifname, tap))
    }

    /// The data path this driver feeds.
    pub fn datapath(&self) -> &Arc<Datapath> {
        &self.datapath
    }

    /// The switch's id of a network this driver made.
    pub fn switch_network(&self, name: &str) -> Option<NetworkId> {
        self.tables().networks.get(name).copied()
    }

    /// Serve these names in the network's embedded DNS (all of them: the
    /// zone is replaced).
    ///
    /// # Errors
    ///
    /// [`DriverError::Datapath`] when the data path is gone.
    pub fn set_zone_entries(
        &self,
        network: &Network,
        entries: Vec<ZoneEntry>,
    ) -> Result<(), DriverError> {
        let Some(id) = self.switch_network(&network.name) else {
            return Ok(());
        };
        let zone = Zone {
            network_name: network.name.clone(),
            entries,
        };
        self.datapath.set_zone(id, zone)?;
        Ok(())
    }

    /// Give the network's DHCP server the leases of these (local)
    /// endpoints: each IPv4 address with its subnet's gateway, at the
    /// endpoint's MAC.
    ///
    /// # Errors
    ///
    /// [`DriverError::Datapath`] when the data path is gone.
    pub fn set_dhcp_leases(
        &self,
        network: &Network,
        endpoints: &[&Endpoint],
    ) -> Result<(), DriverError> {
        let Some(id) = self.switch_network(&network.name) else {
            return Ok(());
        };
        self.datapath
            .set_dhcp_scope(id, dhcp_scope(network, endpoints))?;
        Ok(())
    }

    /// Publish `ports` of an endpoint that has joined (Docker's
    /// `ProgramExternalConnectivity`): bound now, relayed to the
    /// endpoint's port, closed by [`BridgeDriver::unpublish_ports`] or
    /// `leave`. Returns the mappings with the host ports really bound.
    ///
    /// # Errors
    ///
    /// [`DriverError::Publish`] for a port that cannot be bound (nothing
    /// of this call stays published), [`DriverError::UnknownNetwork`] for
    /// an endpoint that has no port.
    pub fn publish_ports(
        &self,
        endpoint: &Endpoint,
        ports: &[PortMapping],
    ) -> Result<Vec<PortMapping>, DriverError> {
        let (network_id, port) = {
            let tables = self.tables();
            let network_id = tables.networks.get(&endpoint.network).copied();
            let port = tables.ports.get(&endpoint.id).map(|(port, _)| *port);
            match (network_id, port) {
                (Some(network_id), Some(port)) => (network_id, port),
                _ => return Err(DriverError::UnknownNetwork(endpoint.network.clone())),
            }
        };
        let mac = interface_mac(endpoint);
        let mut wanted = Endpoint {
            ports: ports.to_vec(),
            ..endpoint.clone()
        };
        let listeners = bind_published_ports(&mut wanted, false)?;
        let published = self.publish_all(listeners, network_id, port, mac)?;
        self.tables()
            .published
            .entry(endpoint.id.clone())
            .or_default()
            .extend(published);
        Ok(wanted.ports)
    }

    /// Hand bound host sockets to the data path as published ports of
    /// switch port `port`, all or none: after a failure the ones already
    /// handed over are closed again.
    fn publish_all(
        &self,
        listeners: Vec<(HostListener, SocketAddr)>,
        network: NetworkId,
        port: PortId,
        mac: MacAddr,
    ) -> Result<Vec<PublishId>, DatapathError> {
        let mut published = Vec::with_capacity(listeners.len());
        for (listener, addr) in listeners {
            let target = PublishTarget {
                network,
                port,
                mac,
                addr,
            };
            match self.datapath.publish(listener, target) {
                Ok(id) => published.push(id),
                Err(e) => {
                    for id in published {
                        let _ = self.datapath.unpublish(id);
                    }
                    return Err(e);
                }
            }
        }
        Ok(published)
    }

    /// What every published port carried, each with its endpoint's id.
    ///
    /// # Errors
    ///
    /// [`DriverError::Datapath`] when the data path is gone.
    pub fn published_figures(&self) -> Result<Vec<(String, PublishedFigures)>, DriverError> {
        let figures = self.datapath.published_figures()?;
        let tables = self.tables();
        let owner: HashMap<PublishId, &String> = tables
            .published
            .iter()
            .flat_map(|(endpoint, ids)| ids.iter().map(move |id| (*id, endpoint)))
            .collect();
        Ok(figures
            .into_iter()
            .filter_map(|f| owner.get(&f.id).map(|endpoint| ((*endpoint).clone(), f)))
            .collect())
    }

    /// Close every published port of an endpoint (it stays joined).
    ///
    /// # Errors
    ///
    /// [`DriverError::Datapath`] when the data path is gone.
    pub fn unpublish_ports(&self, endpoint: &Endpoint) -> Result<(), DriverError> {
        let published = self.tables().published.remove(&endpoint.id);
        for id in published.unwrap_or_default() {
            self.datapath.unpublish(id)?;
        }
        Ok(())
    }

    fn tables(&self) -> std::sync::MutexGuard<'_, BridgeTables> {
        // The tables stay consistent even if a holder panicked: every
        // update is a single insert or remove.
        self.tables.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The gateway MAC of a network: Docker's derivation from its first IPv4
/// gateway, or from the first IPv6 gateway's last four bytes.
pub fn gateway_mac(network: &Network) -> MacAddr {
    let v4 = network.subnets.iter().find_map(|s| match s.gateway {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(_) => None,
    });
    match v4 {
        Some(v4) => MacAddr::from_ipv4(v4),
        None => endpoint_mac(
            &network
                .subnets
                .iter()
                .map(|s| s.gateway)
                .collect::<Vec<_>>(),
        ),
    }
}

/// The MAC of an endpoint's interface: its own, else the one derived from
/// its addresses.
/// The network option that turns port security off (on by default).
pub const PORT_SECURITY_OPTION: &str = "port_security";

/// The network option that turns the gateway's DHCP server off
/// (`dhcp=false`: DHCP broadcasts are flooded like any other).
pub const DHCP_OPTION: &str = "dhcp";

/// What an endpoint's port may send as (see `weft_vswitch::port_security`):
/// its MAC and addresses; enforced unless the network says
/// `port_security=false`.
fn port_identity(network: &Network, endpoint: &Endpoint, mac: MacAddr) -> PortIdentity {
    let mut identity = PortIdentity {
        mac,
        ipv4: Vec::new(),
        ipv6: Vec::new(),
        enforce: network
            .options
            .get(PORT_SECURITY_OPTION)
            .map(String::as_str)
            != Some("false"),
    };
    for address in &endpoint.addresses {
        match address.addr() {
            IpAddr::V4(v4) => identity.ipv4.push(v4),
            IpAddr::V6(v6) => identity.ipv6.push(v6),
        }
    }
    identity
}

pub(crate) fn interface_mac(endpoint: &Endpoint) -> MacAddr {
    endpoint.mac.unwrap_or_else(|| {
        endpoint_mac(
            &endpoint
                .addresses
                .iter()
                .map(|a| a.addr())
                .collect::<Vec<_>>(),
        )
    })
}

/// An endpoint's MAC: `02:42` + its IPv4 address, or + the last four bytes
/// of its first IPv6 address when it has no IPv4 address.
pub fn endpoint_mac(addresses: &[IpAddr]) -> MacAddr {
    let v4 = addresses.iter().find_map(|a| match a {
        IpAddr::V4(v4) => Some(*v4),
        IpAddr::V6(_) => None,
    });
    if let Some(v4) = v4 {
        return MacAddr::from_ipv4(v4);
    }
    let tail = addresses
        .iter()
        .find_map(|a| match a {
            IpAddr::V6(v6) => {
                let o = v6.octets();
                Some([o[12], o[13], o[14], o[15]])
            }
            IpAddr::V4(_) => None,
        })
        .unwrap_or([0, 0, 0, 1]);
    MacAddr([0x02, 0x42, tail[0], tail[1], tail[2], tail[3]])
}

impl NetworkDriver for BridgeDriver {
    fn kind(&self) -> DriverKind {
        DriverKind::Bridge
    }

    fn create_network(&self, network: &Network) -> Result<(), DriverError> {
        // A macvlan network's gateway is the LAN's router: weft's keeps
        // only its DNS address there, with no NAT and no DHCP (see
        // `crate::macvlan_driver`).
        let macvlan = network.driver.has_uplink();
        let mut gateway = GatewayConfig {
            mac: gateway_mac(network),
            ipv4: Vec::new(),
            ipv6: Vec::new(),
            outbound: !network.internal && !macvlan,
            host_loopback: network
                .options
                .get("host_loopback")
                .is_some_and(|v| v == "true"),
            dhcp: !macvlan
                && network
                    .options
                    .get(DHCP_OPTION)
                    .is_none_or(|v| v != "false"),
        };
        for address in network.dns_addresses() {
            match address {
                IpAddr::V4(v4) => gateway.ipv4.push(v4),
                IpAddr::V6(v6) => gateway.ipv6.push(v6),
            }
        }
        let id = {
            let mut tables = self.tables();
            tables.next_network += 1;
            let id = NetworkId(tables.next_network);
            tables.networks.insert(network.name.clone(), id);
            id
        };
        self.datapath.add_network(id, gateway)?;
        Ok(())
    }

    fn delete_network(&self, network: &Network) -> Result<(), DriverError> {
        let id = self.tables().networks.remove(&network.name);
        if let Some(id) = id {
            self.datapath.remove_network(id)?;
        }
        Ok(())
    }

    fn create_endpoint(&self, _: &Network, endpoint: &mut Endpoint) -> Result<(), DriverError> {
        let addrs: Vec<IpAddr> = endpoint.addresses.iter().map(|a| a.addr()).collect();
        // A MAC the connect asked for (CNI's `mac`) stays.
        if endpoint.mac.is_none() {
            endpoint.mac = Some(endpoint_mac(&addrs));
        }
        Ok(())
    }

    fn delete_endpoint(&self, _: &Network, _: &Endpoint) -> Result<(), DriverError> {
        Ok(())
    }

    fn join(&self, network: &Network, endpoint: &mut Endpoint) -> Result<(), DriverError> {
        let network_id = *self
            .tables()
            .networks
            .get(&network.name)
            .ok_or_else(|| DriverError::UnknownNetwork(network.name.clone()))?;
        let restoring = !endpoint.ifname.is_empty();
        // Before the helper: a port that cannot be bound leaves nothing.
        let listeners = bind_published_ports(endpoint, restoring)?;
        let mac = interface_mac(endpoint);
        let (ifname, device) = if endpoint.kind == EndpointKind::Stream {
            (
                String::new(),
                PortDevice::Stream(Box::new(bind_stream_port(&endpoint.sandbox)?)),
            )
        } else if endpoint.kind == EndpointKind::Dgram {
            (
                String::new(),
                PortDevice::Dgram(Box::new(bind_dgram_port(&endpoint.sandbox)?)),
            )
        } else {
            let (ifname, tap) = self.make_tap(network, endpoint, mac, restoring)?;
            (ifname, PortDevice::Tap(tap))
        };
        let port = self.datapath.add_port(network_id, device)?;
        self.datapath
            .set_port_identity(port.0, port_identity(network, endpoint, mac))?;
        if let Some(limit) = endpoint.bandwidth {
            self.datapath.set_bandwidth(port.0, limit)?;
        }
        let published = match self.publish_all(listeners, network_id, port.0, mac) {
            Ok(published) => published,
            Err(e) => {
                // Undo: nothing of this join stays (the data path is most
                // likely gone, so this is best effort).
                if let Ok(Some(device)) = self.datapath.remove_port(port.0) {
                    if !restoring {
                        release_device(device);
                    }
                }
                return Err(e.into());
            }
        };
        endpoint.ifname = ifname;
        let mut tables = self.tables();
        tables.ports.insert(endpoint.id.clone(), port);
        if !published.is_empty() {
            tables.published.insert(endpoint.id.clone(), published);
        }
        Ok(())
    }

    fn leave(&self, _: &Network, endpoint: &Endpoint) -> Result<(), DriverError> {
        let (port, published) = {
            let mut tables = self.tables();
            (
                tables.ports.remove(&endpoint.id),
                tables.published.remove(&endpoint.id),
            )
        };
        // Commands run in order on the data-path thread, and `remove_port`
        // waits for its answer: when `leave` returns, the host sockets are
        // closed.
        for id in published.unwrap_or_default() {
            self.datapath.unpublish(id)?;
        }
        let Some((port, _)) = port else {
            return Ok(());
        };
        if let Some(device) = self.datapath.remove_port(port)? {
            release_device(device);
        }
        Ok(())
    }

    fn endpoints_changed(
        &self,
        network: &Network,
        endpoints: &[&Endpoint],
    ) -> Result<(), DriverError> {
        self.set_dhcp_leases(network, endpoints)?;
        self.set_zone_entries(network, endpoints.iter().map(|e| zone_entry(e)).collect())
    }

    fn set_dns_upstreams(&self, upstreams: &[std::net::SocketAddr]) -> Result<(), DriverError> {
        self.datapath.set_upstreams(upstreams.to_vec())?;
        Ok(())
    }

    fn counters(&self, endpoint: &Endpoint) -> Option<PortCountersSnapshot> {
        self.tables()
            .ports
            .get(&endpoint.id)
            .map(|(_, counters)| counters.snapshot())
    }

    fn nat_stats(&self, network: &Network) -> Option<NatNetworkStats> {
        let id = self.switch_network(&network.name)?;
        self.datapath.nat_stats(id).ok()
    }
}

/// What a network's DHCP server hands out: for every endpoint, each IPv4
/// address that lies in one of the network's IPv4 subnets, with that
/// subnet's prefix and gateway; the network's name as the domain and its
/// MTU.
pub fn dhcp_scope(network: &Network, endpoints: &[&Endpoint]) -> DhcpScope {
    let mut leases = Vec::new();
    for endpoint in endpoints {
        let mac = interface_mac(endpoint);
        for address in &endpoint.addresses {
            let IpAddr::V4(v4) = address.addr() else {
                continue;
            };
            let gateway = network
                .subnets
                .iter()
                .find_map(|s| match (s.subnet, s.gateway) {
                    (ipnet::IpNet::V4(net), IpAddr::V4(gw)) if net.contains(&v4) => {
                        Some((net.prefix_len(), gw))
                    }
                    _ => None,
                });
            if let Some((prefix_len, gateway)) = gateway {
                leases.push(DhcpLease {
                    mac,
                    address: v4,
                    prefix_len,
                    gateway,
                    hostname: endpoint.name.clone(),
                });
            }
        }
    }
    DhcpScope {
        domain: network.name.clone(),
        mtu: u16::try_from(network.mtu).ok().filter(|m| *m > 0),
        leases,
    }
}

/// An endpoint's names and addresses for the embedded DNS.
pub fn zone_entry(endpoint: &Endpoint) -> ZoneEntry {
    ZoneEntry {
        name: endpoint.name.clone(),
        aliases: endpoint.aliases.clone(),
        addresses: endpoint.addresses.iter().map(|a| a.addr()).collect(),
    }
}
