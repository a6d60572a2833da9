//! The controller: networks, endpoints and sandboxes, their state on disk,
//! and the drivers that make them real.
//!
//! # Theory of operation
//!
//! One [`Controller`] per daemon. Every operation takes the controller's
//! lock, validates, updates IPAM and the network/endpoint lists, calls the
//! driver, and saves the state file before it answers; a failure on the way
//! undoes the steps before it, so the state on disk always matches what
//! exists. Operations are serialized: attaching takes a few milliseconds
//! (the helper), and one at a time keeps interface names and addresses
//! free of races.
//!
//! Published ports (`ConnectRequest::ports`) are part of the endpoint:
//! the bridge driver binds them in `join` before anything else is made and
//! closes them in `leave` (see [`crate::driver`]); a port that cannot be
//! bound fails the connect with nothing left behind, a 409 when it is in
//! use. Network options (`--opt K=V`) are checked against what the driver
//! knows ([`validate_options`]): an unknown key or a bad value is a 400.
//!
//! At start ([`Controller::restore`]) the saved networks are re-created in
//! the switch and every endpoint's TAP is re-opened by name in its sandbox
//! (the TAPs are persistent, so sandboxes kept them while the daemon was
//! down). An endpoint whose sandbox has vanished is dropped and its
//! addresses released; everything else keeps its addresses, so a new
//! endpoint never gets one already in use. Restored endpoints publish their
//! stored ports again (with the host port bound before, also for one the
//! kernel chose); one that cannot be bound is logged and dropped.
//!
//! # Overlay networks
//!
//! An overlay network is published in the cluster directory
//! ([`crate::cluster`]) before it is made here, and removed from it on
//! `rm` (refused while any host has endpoints on it). Networks created or
//! deleted on other hosts reach this one through
//! [`Controller::sync_cluster`], which [`Controller::follow_cluster`] runs
//! after every directory change: it makes or removes the local network
//! (one whose name a local network already has is skipped with a warning;
//! one deleted elsewhere while it still has endpoints here stays until they
//! leave), and refreshes every overlay network's tunnel table, DNS zone and
//! the tunnel's accepted sources. Endpoint addresses come from the cluster
//! allocator (unless `--ip`), are reserved in the local IPAM too, and the
//! endpoint is published once joined, withdrawn on disconnect. The
//! record's options carry the network's MTU and `--internal` under
//! reserved `weft.` keys.
//!
//! At start, stored overlay networks and endpoints are published again (a
//! deletion made elsewhere meanwhile wins: its stamp is newer). The
//! address blocks this host leased before the restart are not leased
//! again, but the restored endpoints' addresses stay safe: no host hands
//! out an address the directory shows on another host's endpoint, and the
//! restored records appear as soon as the daemon is back. Limit: while the
//! daemon is down for longer than failure detection takes (~3 s), its
//! records are gone, and another host could hand out one of its
//! addresses before it comes back.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use weft_ipam::{AddSubnetError, AllocError};
use weft_vswitch::counters::PortCountersSnapshot;
use weft_vswitch::sys::datapath::Datapath;
use weft_vswitch::sys::publish::PublishError;

use weft_overlay::{EndpointRecord, NetworkId as ClusterNetworkId, NetworkRecord, Vni};
use weft_vswitch::sys::datapath::TunnelCounters;

use crate::cluster::{
    Cluster, ClusterAllocError, ClusterConfig, ClusterError, GossipCounters, PeerInfo,
};
use crate::docker_plugin::state::DockerState;
use crate::driver::{
    BridgeDriver, DriverError, HostDriver, NetworkDriver, NullDriver, TunnelPeerCounters,
};
use crate::host_routes;
use crate::model::{
    DockerAttachment, DriverKind, Endpoint, Network, PortMapping, PortMappingError, Scope,
    SubnetInfo, UnknownDriver, DEFAULT_MTU, DEFAULT_OVERLAY_MTU, MAX_MTU, MIN_MTU,
};
use crate::overlay_driver::{self, OverlayDriver, PEERS_OPTION, VNI_OPTION};
use crate::resolv_conf;
use crate::store::{State, StateStore, StoreError};

/// The default network's name (Docker's `docker0` network is `bridge`).
pub const DEFAULT_NETWORK: &str = "bridge";

/// Where `ip netns` keeps named namespaces.
pub const NETNS_DIR: &str = "/var/run/netns";

/// Longest name of a network or endpoint (a DNS label is 63 bytes).
const MAX_NAME_LEN: usize = 63;

/// What the controller needs to start.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Directory of the state file.
    pub state_dir: PathBuf,
    /// The binary that runs the attach helper (normally the daemon's own).
    pub helper_exe: PathBuf,
    /// Where bare namespace names are looked up.
    pub netns_dir: PathBuf,
    /// Upstream resolvers of the embedded DNS.
    pub dns_upstreams: Vec<std::net::SocketAddr>,
    /// The gossip cluster to join (`--listen`); None: no overlay networks.
    pub cluster: Option<ClusterConfig>,
    /// Flows the NAT holds at once, per table (UDP/ICMP, and TCP).
    pub nat_max_flows: usize,
}

/// `network create`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateNetworkRequest {
    /// Unique name.
    pub name: String,
    /// Driver name (default `bridge`).
    #[serde(default)]
    pub driver: Option<String>,
    /// Subnets; none picks one from the default pools.
    #[serde(default)]
    pub subnets: Vec<SubnetRequest>,
    /// No way out of the network.
    #[serde(default)]
    pub internal: bool,
    /// MTU of sandbox interfaces.
    #[serde(default)]
    pub mtu: Option<u32>,
    /// Driver options.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

/// One `--subnet` with its `--gateway` and `--ip-range`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubnetRequest {
    /// The subnet.
    pub subnet: IpNet,
    /// Its gateway (default: first usable address).
    #[serde(default)]
    pub gateway: Option<IpAddr>,
    /// Where dynamic addresses come from.
    #[serde(default)]
    pub ip_range: Option<IpNet>,
}

/// `network connect`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectRequest {
    /// Namespace path, or a name under `/var/run/netns`.
    pub sandbox: String,
    /// DNS name (default: the namespace's name).
    #[serde(default)]
    pub name: Option<String>,
    /// Static addresses (one per family at most).
    #[serde(default)]
    pub ips: Vec<IpAddr>,
    /// Extra DNS names.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Published ports (`-p`), each the `-p` text
    /// (`"[HOSTIP:]HOSTPORT:PORT[/tcp|/udp]"`) or an object
    /// `{"host_ip": .., "host_port": .., "container_port": .., "proto": "tcp"|"udp"}`
    /// (see [`PortMapping`]); bridge networks only.
    #[serde(default)]
    pub ports: Vec<PortMapping>,
    /// Set by the Docker plugin (never from the API): the endpoint is
    /// Docker's, its TAP is made for Docker to move, and `ips` are
    /// already reserved by the plugin, which also releases them.
    #[serde(skip)]
    pub docker: Option<DockerAttachment>,
}

/// `network disconnect`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DisconnectRequest {
    /// Namespace path, or a name under `/var/run/netns`.
    pub sandbox: String,
}

/// A network with its endpoints, as `inspect` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct NetworkDetails {
    /// The network.
    #[serde(flatten)]
    pub network: Network,
    /// Its endpoints.
    pub endpoints: Vec<EndpointDetails>,
    /// Overlay: the other hosts (and static peers) it carries frames to
    /// and from, with their tunnel ports' counters.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tunnel: Vec<TunnelPeerCounters>,
    /// The Docker networks (Docker's ids) that are this network, made or
    /// joined through the Docker plugin.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub docker_networks: Vec<String>,
}

/// An endpoint with its counters.
#[derive(Debug, Clone, Serialize)]
pub struct EndpointDetails {
    /// The endpoint.
    #[serde(flatten)]
    pub endpoint: Endpoint,
    /// Its port's counters (bridge only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counters: Option<PortCountersSnapshot>,
}

/// Why an operation failed. [`ControllerError::status`] maps each to an
/// HTTP status for the API.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// No network by that name.
    #[error("network {name:?} not found: `weft network ls` lists the networks")]
    NetworkNotFound {
        /// The name asked for.
        name: String,
    },
    /// The name is taken.
    #[error("network {name:?} already exists: choose another name")]
    NetworkExists {
        /// The name.
        name: String,
    },
    /// A name with characters or a length that is not allowed.
    #[error("invalid {what} {name:?}: use 1 to 63 letters, digits, '-', '_' or '.', starting with a letter or digit")]
    InvalidName {
        /// What the name is for.
        what: &'static str,
        /// The name.
        name: String,
    },
    /// Not a driver weft has.
    #[error(transparent)]
    UnknownDriver(#[from] UnknownDriver),
    /// Subnets given for a driver without addresses.
    #[error("the {driver} driver has no addresses: drop --subnet, --gateway and --ip-range")]
    SubnetsNotAllowed {
        /// The driver.
        driver: DriverKind,
    },
    /// An MTU out of range.
    #[error("MTU {mtu} is out of range: use {min} to {max}")]
    MtuOutOfRange {
        /// The MTU asked for.
        mtu: u32,
        /// The lowest allowed.
        min: u32,
        /// The highest allowed.
        max: u32,
    },
    /// A subnet could not be added.
    #[error(transparent)]
    Subnet(#[from] AddSubnetError),
    /// An address could not be allocated or reserved.
    #[error(transparent)]
    Address(#[from] AllocError),
    /// Two static addresses of one family.
    #[error("more than one --ip of the same family: give at most one IPv4 and one IPv6 address")]
    DuplicateFamily,
    /// `rm` of a network with endpoints.
    #[error("network {name:?} has {count} endpoint(s) attached: disconnect them first (weft network disconnect {name} NETNS)")]
    NetworkInUse {
        /// The network.
        name: String,
        /// How many endpoints.
        count: usize,
    },
    /// `rm` of a network that a Docker network is.
    #[error("network {name:?} is Docker network {docker_id}: remove it with docker network rm")]
    DockerNetwork {
        /// The network.
        name: String,
        /// Docker's short id of the network.
        docker_id: String,
    },
    /// The namespace does not exist.
    #[error("no network namespace at {path}: create it (ip netns add NAME) or give a path like /proc/PID/ns/net")]
    SandboxNotFound {
        /// The path looked at.
        path: PathBuf,
    },
    /// Already on that network.
    #[error("{sandbox} is already connected to network {network:?}")]
    AlreadyConnected {
        /// The network.
        network: String,
        /// The sandbox.
        sandbox: PathBuf,
    },
    /// No endpoint with that id.
    #[error("no endpoint with id {id}: `weft network inspect` lists the endpoints")]
    EndpointNotFound {
        /// The id asked for.
        id: String,
    },
    /// Not on that network.
    #[error("{sandbox} is not connected to network {network:?}")]
    NotConnected {
        /// The network.
        network: String,
        /// The sandbox.
        sandbox: PathBuf,
    },
    /// The driver failed.
    #[error("the {driver} driver failed")]
    Driver {
        /// The driver.
        driver: DriverKind,
        /// The cause.
        #[source]
        source: DriverError,
    },
    /// A driver option that is not known or has a bad value.
    #[error("--opt {key}: {reason}")]
    InvalidOption {
        /// The option's key.
        key: String,
        /// What is wrong and what to write.
        reason: String,
    },
    /// `-p` on a network whose driver has no interfaces.
    #[error("the {driver} driver has no interfaces to publish ports to: drop -p, or use a bridge network")]
    PortsNotAllowed {
        /// The driver.
        driver: DriverKind,
    },
    /// A `-p` that cannot be met.
    #[error(transparent)]
    InvalidPort(#[from] PortMappingError),
    /// A host port that cannot be bound.
    #[error(transparent)]
    Publish(PublishError),
    /// The state file could not be written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The data path could not be started.
    #[error("starting the data path")]
    Datapath(#[source] std::io::Error),
    /// An overlay network on a daemon without `--listen`.
    #[error("start the daemon with --listen to use overlay networks")]
    OverlayNeedsCluster,
    /// More than one subnet, or an `--ip-range`, for an overlay network.
    #[error("an overlay network takes one --subnet and no --ip-range (addresses are leased across hosts from the whole subnet)")]
    OverlaySubnets,
    /// The VNI is taken by another cluster network.
    #[error("VNI {vni} is already used by cluster network {network:?}: choose another --opt vni=N or leave it out")]
    VniInUse {
        /// The VNI.
        vni: u32,
        /// The network that has it.
        network: String,
    },
    /// No cluster address could be had.
    #[error("no address for the endpoint")]
    ClusterAddress(#[source] ClusterAllocError),
    /// The gossip socket could not be bound.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The VXLAN socket could not be bound.
    #[error("binding the VXLAN socket {addr} (--vxlan-port)")]
    TunnelBind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// `weft peers`: this host, the other members and the tunnel's counters.
#[derive(Debug, Clone, Serialize)]
pub struct PeersReport {
    /// This host's `--node-name`.
    pub name: String,
    /// This host's gossip address.
    pub address: std::net::SocketAddr,
    /// The other members.
    pub members: Vec<PeerInfo>,
    /// The VXLAN tunnel's counters.
    pub tunnel: TunnelCountersSnapshot,
    /// Gossip datagrams dropped.
    pub gossip: GossipCounters,
}

/// The tunnel counters at one moment.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct TunnelCountersSnapshot {
    /// Datagrams received and switched.
    pub rx: u64,
    /// Datagrams sent.
    pub tx: u64,
    /// Datagrams from an address that is neither a member nor a static
    /// peer, dropped.
    pub dropped_not_member: u64,
    /// Datagrams that were not VXLAN, or of an unknown VNI, dropped.
    pub dropped_invalid: u64,
}

impl From<&TunnelCounters> for TunnelCountersSnapshot {
    fn from(c: &TunnelCounters) -> Self {
        use std::sync::atomic::Ordering::Relaxed;
        TunnelCountersSnapshot {
            rx: c.rx.load(Relaxed),
            tx: c.tx.load(Relaxed),
            dropped_not_member: c.dropped_not_member.load(Relaxed),
            dropped_invalid: c.dropped_invalid.load(Relaxed),
        }
    }
}

/// How long the cluster sync waits after a change before it runs, so a
/// burst of changes is one sync.
const SYNC_COALESCE: Duration = Duration::from_millis(20);

/// How long a connect waits for a cluster address block.
const CLUSTER_ALLOCATION_WAIT: Duration = Duration::from_secs(10);

/// Attempts at a cluster address that is not already used on this host
/// (by a static `--ip`).
const CLUSTER_ALLOCATION_ATTEMPTS: usize = 4;

/// Lowest VNI chosen at random (Docker's overlay starts at 4096 too,
/// leaving the low ones to hand-made Linux `vxlan` devices).
const RANDOM_VNI_MIN: u32 = 4096;

/// Keys of the network record's options that carry the network's MTU and
/// `--internal` to the other hosts (not user options).
const RECORD_MTU: &str = "weft.mtu";
const RECORD_INTERNAL: &str = "weft.internal";

/// See the module header.
pub struct Controller {
    inner: Mutex<Inner>,
    netns_dir: PathBuf,
    cluster: Option<Arc<Cluster>>,
    datapath: Arc<Datapath>,
}

struct Inner {
    state: State,
    store: StateStore,
    null: Arc<NullDriver>,
    host: Arc<HostDriver>,
    bridge: Arc<BridgeDriver>,
    overlay: Arc<OverlayDriver>,
}

impl ControllerError {
    /// The HTTP status for this error.
    pub fn status(&self) -> u16 {
        match self {
            ControllerError::NetworkNotFound { .. } | ControllerError::NotConnected { .. } => 404,
            ControllerError::EndpointNotFound { .. } => 404,
            ControllerError::SandboxNotFound { .. } => 404,
            ControllerError::NetworkExists { .. }
            | ControllerError::NetworkInUse { .. }
            | ControllerError::DockerNetwork { .. }
            | ControllerError::AlreadyConnected { .. } => 409,
            ControllerError::Subnet(AddSubnetError::Overlaps { .. }) => 409,
            ControllerError::Address(AllocError::InUse { .. }) => 409,
            ControllerError::Publish(PublishError::InUse { .. }) => 409,
            ControllerError::Publish(PublishError::Privileged { .. })
            | ControllerError::Publish(PublishError::NoSuchAddress(_))
            | ControllerError::InvalidOption { .. }
            | ControllerError::PortsNotAllowed { .. }
            | ControllerError::InvalidPort(_) => 400,
            ControllerError::InvalidName { .. }
            | ControllerError::UnknownDriver(_)
            | ControllerError::SubnetsNotAllowed { .. }
            | ControllerError::MtuOutOfRange { .. }
            | ControllerError::Subnet(_)
            | ControllerError::Address(_)
            | ControllerError::DuplicateFamily
            | ControllerError::OverlayNeedsCluster
            | ControllerError::OverlaySubnets => 400,
            ControllerError::VniInUse { .. } => 409,
            ControllerError::ClusterAddress(ClusterAllocError::Allocate(
                weft_overlay::AllocateError::Exhausted(_),
            )) => 409,
            ControllerError::ClusterAddress(_) => 503,
            ControllerError::Driver { .. }
            | ControllerError::Publish(PublishError::Bind { .. })
            | ControllerError::Store(_)
            | ControllerError::Datapath(_)
            | ControllerError::Cluster(_)
            | ControllerError::TunnelBind { .. } => 500,
        }
    }
}

impl Controller {
    /// Open the state directory, start the data path, and restore saved
    /// networks and endpoints.
    ///
    /// # Errors
    ///
    /// [`ControllerError`] when the state cannot be read or the data path
    /// cannot start. Endpoints that cannot be restored are logged and
    /// dropped, not fatal.
    pub async fn start(config: ControllerConfig) -> Result<Controller, ControllerError> {
        let store = StateStore::open(&config.state_dir)?;
        let config_upstreams = config.dns_upstreams.clone();
        let state = store.load()?;
        let datapath = Arc::new(
            Datapath::spawn_with_max_flows(config.nat_max_flows)
                .map_err(ControllerError::Datapath)?,
        );
        let cluster = match config.cluster {
            Some(cluster_config) => {
                let tunnel_addr = std::net::SocketAddr::new(
                    cluster_config.listen.ip(),
                    cluster_config.vxlan_port,
                );
                let socket = crate::cluster::bind_udp_patiently(tunnel_addr).map_err(|source| {
                    ControllerError::TunnelBind {
                        addr: tunnel_addr,
                        source,
                    }
                })?;
                datapath
                    .enable_tunnel(socket, Box::new(weft_overlay::Vxlan))
                    .map_err(|e| ControllerError::Driver {
                        driver: DriverKind::Overlay,
                        source: e.into(),
                    })?;
                Some(Cluster::start(cluster_config).await?)
            }
            None => None,
        };
        let bridge = Arc::new(BridgeDriver::new(
            config.helper_exe.clone(),
            Arc::clone(&datapath),
        ));
        let controller = Controller {
            inner: Mutex::new(Inner {
                state,
                store,
                null: Arc::new(NullDriver::new(config.helper_exe)),
                host: Arc::new(HostDriver),
                overlay: Arc::new(OverlayDriver::new(Arc::clone(&bridge), cluster.clone())),
                bridge,
            }),
            netns_dir: config.netns_dir,
            cluster,
            datapath,
        };
        {
            let inner = controller.inner.lock().await;
            inner
                .bridge
                .set_dns_upstreams(&config_upstreams)
                .map_err(|source| ControllerError::Driver {
                    driver: DriverKind::Bridge,
                    source,
                })?;
        }
        controller.restore().await?;
        Ok(controller)
    }

    async fn restore(&self) -> Result<(), ControllerError> {
        let mut inner = self.inner.lock().await;
        for network in inner.state.networks.clone() {
            if network.driver == DriverKind::Overlay {
                let Some(cluster) = &self.cluster else {
                    tracing::error!(
                        network = network.name,
                        "overlay network not restored: start the daemon with --listen"
                    );
                    continue;
                };
                // Published again (an older stamp loses to a deletion
                // made elsewhere while this host was down).
                if let Some(record) = network_record(&network) {
                    cluster.publish_network(ClusterNetworkId(network.id.clone()), record);
                }
            }
            let driver = inner.driver(network.driver);
            driver
                .create_network(&network)
                .map_err(|source| ControllerError::Driver {
                    driver: network.driver,
                    source,
                })?;
        }
        let endpoints = std::mem::take(&mut inner.state.endpoints);
        for mut endpoint in endpoints {
            let Some(network) = inner.network(&endpoint.network).cloned() else {
                tracing::warn!(
                    endpoint = endpoint.id,
                    network = endpoint.network,
                    "endpoint of an unknown network dropped"
                );
                continue;
            };
            let driver = inner.driver(network.driver);
            let joined = join_blocking(driver, network.clone(), endpoint.clone()).await;
            match joined {
                Ok(joined) => {
                    tracing::info!(network = network.name, sandbox = %endpoint.sandbox.display(), ifname = joined.ifname, "endpoint restored");
                    self.publish_endpoint(&network, &joined);
                    inner.state.endpoints.push(joined);
                }
                Err(e) if !endpoint.sandbox.exists() => {
                    tracing::warn!(network = network.name, sandbox = %endpoint.sandbox.display(), error = %error_chain(&e), "sandbox is gone: endpoint dropped, addresses released");
                    if let Some(path) = &endpoint.resolv_conf {
                        resolv_conf::remove(path);
                    }
                    // A Docker endpoint's addresses are the plugin's.
                    if endpoint.docker.is_none() {
                        for addr in endpoint.addresses.drain(..) {
                            let _ = inner.state.ipam.release(&network.name, addr.addr());
                        }
                    }
                }
                Err(e) => {
                    // Keep it, and its addresses: the sandbox exists, so the
                    // addresses may be configured there still.
                    tracing::error!(network = network.name, sandbox = %endpoint.sandbox.display(), error = %error_chain(&e), "endpoint could not be re-attached; disconnect and connect it again");
                    inner.state.endpoints.push(endpoint);
                }
            }
        }
        for network in inner.state.networks.clone() {
            inner.publish_names(&network);
        }
        inner.save()
    }

    /// Create the default `bridge` network if it does not exist.
    ///
    /// # Errors
    ///
    /// [`ControllerError`] from [`Controller::create_network`].
    pub async fn ensure_default_network(&self) -> Result<(), ControllerError> {
        if self.inner.lock().await.network(DEFAULT_NETWORK).is_some() {
            return Ok(());
        }
        self.create_network(CreateNetworkRequest {
            name: DEFAULT_NETWORK.into(),
            ..CreateNetworkRequest::default()
        })
        .await
        .map(drop)
    }

    /// `network create`.
    ///
    /// # Errors
    ///
    /// [`ControllerError`]: invalid name, driver, MTU or subnet; a name or
    /// subnet already in use; the driver or the state file failing.
    pub async fn create_network(
        &self,
        request: CreateNetworkRequest,
    ) -> Result<Network, ControllerError> {
        validate_name("network name", &request.name)?;
        let driver = match &request.driver {
            Some(name) => name.parse::<DriverKind>()?,
            None => DriverKind::Bridge,
        };
        let mtu = request.mtu.unwrap_or(if driver == DriverKind::Overlay {
            DEFAULT_OVERLAY_MTU
        } else {
            DEFAULT_MTU
        });
        let has_v6 = request.subnets.iter().any(|s| s.subnet.addr().is_ipv6());
        let min = if has_v6 { 1280 } else { MIN_MTU };
        if !(min..=MAX_MTU).contains(&mtu) {
            return Err(ControllerError::MtuOutOfRange {
                mtu,
                min,
                max: MAX_MTU,
            });
        }
        if !driver.has_interfaces() && !request.subnets.is_empty() {
            return Err(ControllerError::SubnetsNotAllowed { driver });
        }
        validate_options(driver, &request.options)?;
        if driver == DriverKind::Overlay {
            return self.create_overlay_network(request, mtu).await;
        }
        let mut inner = self.inner.lock().await;
        if inner.network(&request.name).is_some() {
            return Err(ControllerError::NetworkExists { name: request.name });
        }
        let name = request.name.clone();
        let subnets = if driver.has_interfaces() {
            match inner.add_subnets(&name, &request.subnets) {
                Ok(subnets) => subnets,
                Err(e) => {
                    inner.state.ipam.remove_network(&name);
                    return Err(e);
                }
            }
        } else {
            Vec::new()
        };
        let network = Network {
            name: name.clone(),
            id: random_id(),
            driver,
            scope: Scope::Local,
            subnets,
            internal: request.internal,
            mtu,
            options: request.options,
            created: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            vni: None,
        };
        if let Err(source) = inner.driver(driver).create_network(&network) {
            inner.state.ipam.remove_network(&name);
            return Err(ControllerError::Driver { driver, source });
        }
        inner.state.networks.push(network.clone());
        if let Err(e) = inner.save() {
            inner.state.networks.retain(|n| n.name != name);
            inner.state.ipam.remove_network(&name);
            let _ = inner.driver(driver).delete_network(&network);
            return Err(e);
        }
        tracing::info!(network = name, driver = %driver, subnets = ?network.subnets.iter().map(|s| s.subnet).collect::<Vec<_>>(), "network created");
        Ok(network)
    }

    /// `network create --driver overlay`: a cluster network, published in
    /// the directory so that every host makes it too.
    async fn create_overlay_network(
        &self,
        request: CreateNetworkRequest,
        mtu: u32,
    ) -> Result<Network, ControllerError> {
        let cluster = self
            .cluster
            .clone()
            .ok_or(ControllerError::OverlayNeedsCluster)?;
        if request.subnets.len() > 1 || request.subnets.iter().any(|s| s.ip_range.is_some()) {
            return Err(ControllerError::OverlaySubnets);
        }
        let mut inner = self.inner.lock().await;
        let name = request.name.clone();
        if inner.network(&name).is_some() || cluster.network_by_name(&name).is_some() {
            return Err(ControllerError::NetworkExists { name });
        }
        let vni = match request.options.get(VNI_OPTION) {
            Some(text) => {
                // validate_options checked it is a VNI.
                let vni = text.parse::<u32>().unwrap_or_default();
                if let Some((_, other)) = Vni::new(vni).ok().and_then(|v| cluster.network_by_vni(v))
                {
                    return Err(ControllerError::VniInUse {
                        vni,
                        network: other.name,
                    });
                }
                vni
            }
            None => random_vni(&cluster),
        };
        let subnets = match inner.add_subnets(&name, &request.subnets) {
            Ok(subnets) => subnets,
            Err(e) => {
                inner.state.ipam.remove_network(&name);
                return Err(e);
            }
        };
        let network = Network {
            name: name.clone(),
            id: random_id(),
            driver: DriverKind::Overlay,
            scope: Scope::Cluster,
            subnets,
            internal: request.internal,
            mtu,
            options: request.options,
            created: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            vni: Some(vni),
        };
        let id = ClusterNetworkId(network.id.clone());
        if let Some(record) = network_record(&network) {
            cluster.publish_network(id.clone(), record);
        }
        let undo = |inner: &mut Inner| {
            cluster.delete_network(id.clone());
            inner.state.networks.retain(|n| n.name != name);
            inner.state.ipam.remove_network(&name);
        };
        if let Err(source) = inner.overlay.create_network(&network) {
            undo(&mut inner);
            return Err(ControllerError::Driver {
                driver: DriverKind::Overlay,
                source,
            });
        }
        inner.state.networks.push(network.clone());
        if let Err(e) = inner.save() {
            let _ = inner.overlay.delete_network(&network);
            undo(&mut inner);
            return Err(e);
        }
        tracing::info!(network = name, vni, subnets = ?network.subnets.iter().map(|s| s.subnet).collect::<Vec<_>>(), "overlay network created");
        Ok(network)
    }

    /// `network rm`.
    ///
    /// # Errors
    ///
    /// [`ControllerError::NetworkNotFound`], [`ControllerError::NetworkInUse`]
    /// while endpoints are attached, or the driver or state file failing.
    pub async fn delete_network(&self, name: &str) -> Result<(), ControllerError> {
        let mut inner = self.inner.lock().await;
        let network = inner
            .network(name)
            .cloned()
            .ok_or_else(|| ControllerError::NetworkNotFound { name: name.into() })?;
        if let Some(docker_id) = inner.state.docker.networks_of(name).first() {
            return Err(ControllerError::DockerNetwork {
                name: name.into(),
                docker_id: docker_id.get(..12).unwrap_or(docker_id).to_owned(),
            });
        }
        let local = inner
            .state
            .endpoints
            .iter()
            .filter(|e| e.network == name)
            .count();
        // An overlay network's endpoints on every host count.
        let cluster_id = ClusterNetworkId(network.id.clone());
        let cluster = self
            .cluster
            .as_ref()
            .filter(|_| network.driver == DriverKind::Overlay);
        let count = cluster.map_or(local, |c| c.endpoint_count(&cluster_id).max(local));
        if count > 0 {
            return Err(ControllerError::NetworkInUse {
                name: name.into(),
                count,
            });
        }
        inner
            .driver(network.driver)
            .delete_network(&network)
            .map_err(|source| ControllerError::Driver {
                driver: network.driver,
                source,
            })?;
        if let Some(cluster) = cluster {
            cluster.delete_network(cluster_id);
        }
        inner.state.networks.retain(|n| n.name != name);
        inner.state.ipam.remove_network(name);
        inner.save()?;
        tracing::info!(network = name, "network removed");
        Ok(())
    }

    /// `network ls`.
    pub async fn networks(&self) -> Vec<Network> {
        self.inner.lock().await.state.networks.clone()
    }

    /// `network inspect`.
    ///
    /// # Errors
    ///
    /// [`ControllerError::NetworkNotFound`].
    pub async fn inspect(&self, name: &str) -> Result<NetworkDetails, ControllerError> {
        let inner = self.inner.lock().await;
        let network = inner
            .network(name)
            .cloned()
            .ok_or_else(|| ControllerError::NetworkNotFound { name: name.into() })?;
        let driver = inner.driver(network.driver);
        let endpoints = inner
            .state
            .endpoints
            .iter()
            .filter(|e| e.network == name)
            .map(|e| EndpointDetails {
                endpoint: e.clone(),
                counters: driver.counters(e),
            })
            .collect();
        let tunnel = driver.tunnel_counters(&network);
        let docker_networks = inner.state.docker.networks_of(name);
        Ok(NetworkDetails {
            network,
            endpoints,
            tunnel,
            docker_networks,
        })
    }

    /// `network connect`.
    ///
    /// # Errors
    ///
    /// [`ControllerError`]: unknown network or sandbox, already connected,
    /// an address that is taken or outside the subnets, or the driver
    /// failing (with the helper's message).
    pub async fn connect(
        &self,
        network_name: &str,
        request: ConnectRequest,
    ) -> Result<Endpoint, ControllerError> {
        let sandbox = if request.docker.is_some() {
            // Docker's sandbox key: the namespace is made after the join,
            // and Docker moves the TAP there itself.
            PathBuf::from(&request.sandbox)
        } else {
            self.resolve_sandbox(&request.sandbox)?
        };
        let name = match request.name {
            Some(name) => name,
            None => default_endpoint_name(&sandbox),
        };
        validate_name("endpoint name", &name)?;
        for alias in &request.aliases {
            validate_name("alias", alias)?;
        }
        for mapping in &request.ports {
            mapping.validate()?;
        }
        let mut inner = self.inner.lock().await;
        let network = inner.network(network_name).cloned().ok_or_else(|| {
            ControllerError::NetworkNotFound {
                name: network_name.into(),
            }
        })?;
        if !request.ports.is_empty() && !network.driver.has_interfaces() {
            return Err(ControllerError::PortsNotAllowed {
                driver: network.driver,
            });
        }
        if inner
            .state
            .endpoints
            .iter()
            .any(|e| e.network == network.name && e.sandbox == sandbox)
        {
            return Err(ControllerError::AlreadyConnected {
                network: network.name,
                sandbox,
            });
        }
        let (addresses, cluster_ips) = if request.docker.is_some() {
            // Reserved by the Docker plugin already (it releases them too).
            let addresses = request.ips.iter().map(|ip| with_prefix(&network, *ip));
            (addresses.collect(), Vec::new())
        } else {
            let (ips, cluster_ips) = self
                .cluster_addresses(&mut inner, &network, request.ips)
                .await?;
            match inner.assign_addresses(&network, &ips) {
                Ok(addresses) => (addresses, cluster_ips),
                Err(e) => {
                    self.release_cluster_addresses(&network, &cluster_ips);
                    return Err(e);
                }
            }
        };
        let mut endpoint = Endpoint {
            id: random_id(),
            network: network.name.clone(),
            sandbox,
            name,
            aliases: request.aliases,
            ifname: String::new(),
            mac: None,
            addresses,
            resolv_conf: None,
            ports: request.ports,
            docker: request.docker,
        };
        if let Some(mapping) = endpoint
            .ports
            .iter()
            .find(|m| endpoint.publish_addrs(m).is_none())
        {
            let error = PortMappingError {
                spec: mapping.to_string(),
                reason: format!(
                    "network {:?} gives this endpoint no address of the host address's family to relay to: publish on a host address of the other family",
                    network.name
                ),
            };
            inner.release_addresses(&endpoint);
            self.release_cluster_addresses(&network, &cluster_ips);
            return Err(error.into());
        }
        let driver = inner.driver(network.driver);
        let created = driver
            .create_endpoint(&network, &mut endpoint)
            .map_err(|source| ControllerError::Driver {
                driver: network.driver,
                source,
            });
        let joined = match created {
            Ok(()) => join_blocking(Arc::clone(&driver), network.clone(), endpoint.clone()).await,
            Err(e) => Err(e),
        };
        let mut endpoint = match joined {
            Ok(joined) => joined,
            Err(e) => {
                let _ = driver.delete_endpoint(&network, &endpoint);
                inner.release_addresses(&endpoint);
                self.release_cluster_addresses(&network, &cluster_ips);
                return Err(e);
            }
        };
        endpoint.resolv_conf = self.install_resolv_conf(&network, &endpoint);
        inner.state.endpoints.push(endpoint.clone());
        if let Err(e) = inner.save() {
            if let Some(path) = &endpoint.resolv_conf {
                resolv_conf::remove(path);
            }
            inner.state.endpoints.retain(|x| x.id != endpoint.id);
            let _ = driver.leave(&network, &endpoint);
            inner.release_addresses(&endpoint);
            self.release_cluster_addresses(&network, &cluster_ips);
            return Err(e);
        }
        self.publish_endpoint(&network, &endpoint);
        inner.publish_names(&network);
        tracing::info!(network = network.name, sandbox = %endpoint.sandbox.display(), ifname = endpoint.ifname, addresses = ?endpoint.addresses, "endpoint joined");
        Ok(endpoint)
    }

    /// `network disconnect`.
    ///
    /// # Errors
    ///
    /// [`ControllerError::NetworkNotFound`], [`ControllerError::NotConnected`],
    /// or the driver or state file failing.
    pub async fn disconnect(
        &self,
        network_name: &str,
        request: DisconnectRequest,
    ) -> Result<(), ControllerError> {
        let sandbox = self.sandbox_path(&request.sandbox);
        let mut inner = self.inner.lock().await;
        let network = inner.network(network_name).cloned().ok_or_else(|| {
            ControllerError::NetworkNotFound {
                name: network_name.into(),
            }
        })?;
        let endpoint = inner
            .state
            .endpoints
            .iter()
            .find(|e| e.network == network.name && e.sandbox == sandbox)
            .cloned()
            .ok_or_else(|| ControllerError::NotConnected {
                network: network.name.clone(),
                sandbox: sandbox.clone(),
            })?;
        let driver = inner.driver(network.driver);
        let left = {
            let (driver, network, endpoint) =
                (Arc::clone(&driver), network.clone(), endpoint.clone());
            tokio::task::spawn_blocking(move || driver.leave(&network, &endpoint)).await
        };
        match left {
            Ok(Ok(())) => {}
            Ok(Err(source)) => {
                return Err(ControllerError::Driver {
                    driver: network.driver,
                    source,
                })
            }
            Err(join) => std::panic::resume_unwind(join.into_panic()),
        }
        let _ = driver.delete_endpoint(&network, &endpoint);
        inner.release_addresses(&endpoint);
        if network.driver == DriverKind::Overlay {
            if let Some(cluster) = &self.cluster {
                let id = ClusterNetworkId(network.id.clone());
                if let Some(mac) = endpoint.mac {
                    cluster.withdraw_endpoint(&id, mac.0);
                }
                if endpoint.docker.is_none() {
                    for address in &endpoint.addresses {
                        cluster.release(&id, address.addr());
                    }
                }
            }
        }
        if let Some(path) = &endpoint.resolv_conf {
            resolv_conf::remove(path);
        }
        inner.state.endpoints.retain(|e| e.id != endpoint.id);
        inner.publish_names(&network);
        inner.save()?;
        tracing::info!(network = network.name, sandbox = %sandbox.display(), "endpoint left");
        Ok(())
    }

    /// The addresses of a new endpoint: the static ones (`--ip`), and for
    /// an overlay network one from the cluster allocator for each family
    /// of its subnet that has none (returned apart too, to release them if
    /// the connect fails). Other drivers: the static ones as given.
    async fn cluster_addresses(
        &self,
        inner: &mut Inner,
        network: &Network,
        static_ips: Vec<IpAddr>,
    ) -> Result<(Vec<IpAddr>, Vec<IpAddr>), ControllerError> {
        if network.driver != DriverKind::Overlay {
            return Ok((static_ips, Vec::new()));
        }
        let cluster = self
            .cluster
            .clone()
            .ok_or(ControllerError::OverlayNeedsCluster)?;
        let id = ClusterNetworkId(network.id.clone());
        let mut ips = static_ips;
        let mut leased = Vec::new();
        for subnet in &network.subnets {
            let v4 = subnet.subnet.addr().is_ipv4();
            if ips.iter().any(|ip| ip.is_ipv4() == v4) {
                continue;
            }
            let mut found = None;
            for _ in 0..CLUSTER_ALLOCATION_ATTEMPTS {
                let ip = match cluster.allocate(&id, CLUSTER_ALLOCATION_WAIT).await {
                    Ok(ip) => ip,
                    Err(e) => {
                        self.release_cluster_addresses(network, &leased);
                        return Err(ControllerError::ClusterAddress(e));
                    }
                };
                // Taken on this host by a static --ip: keep it marked used
                // in the cluster pool and take the next one.
                if inner.state.ipam.reserve(&network.name, ip).is_ok() {
                    let _ = inner.state.ipam.release(&network.name, ip);
                    found = Some(ip);
                    break;
                }
            }
            let Some(ip) = found else {
                self.release_cluster_addresses(network, &leased);
                return Err(ControllerError::Address(weft_ipam::AllocError::Exhausted {
                    subnet: subnet.subnet,
                }));
            };
            leased.push(ip);
            ips.push(ip);
        }
        Ok((ips, leased))
    }

    fn release_cluster_addresses(&self, network: &Network, ips: &[IpAddr]) {
        if let Some(cluster) = &self.cluster {
            let id = ClusterNetworkId(network.id.clone());
            for ip in ips {
                cluster.release(&id, *ip);
            }
        }
    }

    /// Announce an overlay network's local endpoint to every host.
    fn publish_endpoint(&self, network: &Network, endpoint: &Endpoint) {
        if network.driver != DriverKind::Overlay {
            return;
        }
        let (Some(cluster), Some(mac)) = (&self.cluster, endpoint.mac) else {
            return;
        };
        let record = EndpointRecord {
            network: ClusterNetworkId(network.id.clone()),
            mac: weft_overlay::MacAddr(mac.0),
            ips: endpoint.addresses.iter().map(|a| a.addr()).collect(),
            name: Some(endpoint.name.clone()),
            aliases: endpoint.aliases.clone(),
        };
        if let Err(e) = cluster.publish_endpoint(record) {
            tracing::error!(network = network.name, endpoint = endpoint.name, error = %e, "endpoint not announced to the cluster: other hosts will not reach it by name or without flooding");
        }
    }

    /// `weft peers`.
    ///
    /// # Errors
    ///
    /// [`ControllerError::OverlayNeedsCluster`] without `--listen`.
    pub fn peers(&self) -> Result<PeersReport, ControllerError> {
        let cluster = self
            .cluster
            .as_ref()
            .ok_or(ControllerError::OverlayNeedsCluster)?;
        Ok(PeersReport {
            name: cluster.name().to_owned(),
            address: cluster.listen(),
            members: cluster.members(),
            tunnel: self.datapath.tunnel_counters().into(),
            gossip: cluster.counters(),
        })
    }

    /// Follow the cluster directory until the daemon stops: after every
    /// change, [`Controller::sync_cluster`]. Returns at once without a
    /// cluster.
    pub async fn follow_cluster(self: Arc<Self>) {
        let Some(cluster) = self.cluster.clone() else {
            return;
        };
        let mut changes = cluster.subscribe();
        loop {
            self.sync_cluster().await;
            if changes.changed().await.is_err() {
                return;
            }
            // Let a burst of changes (a joiner's whole directory) settle
            // into one sync.
            tokio::time::sleep(SYNC_COALESCE).await;
        }
    }

    /// Bring this host in line with the cluster directory: make the cluster
    /// networks created elsewhere, remove those deleted elsewhere (unless
    /// they still have endpoints here), give every overlay network its
    /// tunnel table and DNS names, and the tunnel its accepted sources.
    pub async fn sync_cluster(&self) {
        let Some(cluster) = &self.cluster else {
            return;
        };
        let mut inner = self.inner.lock().await;
        let records = cluster.networks();
        let mut changed = false;
        for (id, record) in &records {
            if inner.state.networks.iter().any(|n| n.id == id.0) {
                continue;
            }
            if let Some(local) = inner.network(&record.name) {
                tracing::warn!(network = record.name, local_driver = %local.driver, "cluster network not made here: a local network has its name");
                continue;
            }
            let network = network_from_record(id, record);
            let subnet = [SubnetRequest {
                subnet: record.subnet,
                gateway: record.gateway,
                ip_range: None,
            }];
            let subnets = match inner.add_subnets(&network.name, &subnet) {
                Ok(subnets) => subnets,
                Err(e) => {
                    inner.state.ipam.remove_network(&network.name);
                    tracing::warn!(network = network.name, error = %error_chain(&e), "cluster network not made here");
                    continue;
                }
            };
            let network = Network { subnets, ..network };
            if let Err(e) = inner.overlay.create_network(&network) {
                inner.state.ipam.remove_network(&network.name);
                tracing::error!(network = network.name, error = %error_chain(&e), "cluster network not made here");
                continue;
            }
            tracing::info!(
                network = network.name,
                vni = network.vni,
                "cluster network appeared"
            );
            inner.state.networks.push(network);
            changed = true;
        }
        let gone: Vec<Network> = inner
            .state
            .networks
            .iter()
            .filter(|n| {
                n.driver == DriverKind::Overlay && !records.iter().any(|(id, _)| id.0 == n.id)
            })
            .cloned()
            .collect();
        for network in gone {
            if inner
                .state
                .endpoints
                .iter()
                .any(|e| e.network == network.name)
            {
                tracing::warn!(network = network.name, "cluster network deleted elsewhere but it has endpoints here: kept until they disconnect");
                continue;
            }
            if let Err(e) = inner.overlay.delete_network(&network) {
                tracing::error!(network = network.name, error = %error_chain(&e), "removing a cluster network");
            }
            inner.state.networks.retain(|n| n.name != network.name);
            inner.state.ipam.remove_network(&network.name);
            tracing::info!(
                network = network.name,
                "cluster network removed (deleted on another host)"
            );
            changed = true;
        }
        if changed {
            if let Err(e) = inner.save() {
                tracing::error!(error = %error_chain(&e), "saving the state after a cluster change");
            }
        }
        let mut sources: Vec<IpAddr> = cluster.member_ips();
        for network in inner.state.networks.clone() {
            if network.driver != DriverKind::Overlay {
                continue;
            }
            sources.extend(overlay_driver::static_peers(&network));
            if let Err(e) = inner.overlay.refresh(&network) {
                tracing::error!(network = network.name, error = %error_chain(&e), "tunnel table not updated");
            }
            inner.publish_names(&network);
        }
        sources.sort();
        sources.dedup();
        if let Err(e) = self.datapath.set_tunnel_peers(sources) {
            tracing::error!(error = %e, "tunnel sources not updated");
        }
    }

    /// Point a named namespace's resolver at the network's gateways (see
    /// [`resolv_conf`]); the path if weft wrote the file.
    fn install_resolv_conf(&self, network: &Network, endpoint: &Endpoint) -> Option<PathBuf> {
        if network.subnets.is_empty() {
            return None;
        }
        let path = resolv_conf::netns_resolv_conf(&self.netns_dir, &endpoint.sandbox)?;
        let mut gateways: Vec<IpAddr> = network.subnets.iter().map(|s| s.gateway).collect();
        gateways.sort_by_key(|g| g.is_ipv6());
        match resolv_conf::install(&path, &gateways) {
            Ok(true) => Some(path),
            Ok(false) => None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "could not write the sandbox's resolv.conf");
                None
            }
        }
    }

    fn sandbox_path(&self, sandbox: &str) -> PathBuf {
        if sandbox.contains('/') {
            PathBuf::from(sandbox)
        } else {
            self.netns_dir.join(sandbox)
        }
    }

    fn resolve_sandbox(&self, sandbox: &str) -> Result<PathBuf, ControllerError> {
        if sandbox.is_empty() {
            return Err(ControllerError::SandboxNotFound {
                path: PathBuf::new(),
            });
        }
        let path = self.sandbox_path(sandbox);
        if !path.is_absolute() || !path.exists() {
            return Err(ControllerError::SandboxNotFound { path });
        }
        Ok(path)
    }
}

/// What the Docker plugin ([`crate::docker_plugin`]) needs beyond the
/// API's operations: its own state, saved with everything else, and
/// addresses and published ports of endpoints handled one at a time.
impl Controller {
    /// The Docker plugin's state (a copy).
    pub async fn docker_state(&self) -> DockerState {
        self.inner.lock().await.state.docker.clone()
    }

    /// Change the Docker plugin's state and save it; on a failed save the
    /// change is undone.
    ///
    /// # Errors
    ///
    /// [`ControllerError::Store`] when the state file cannot be written.
    pub async fn update_docker_state<R>(
        &self,
        change: impl FnOnce(&mut DockerState) -> R,
    ) -> Result<R, ControllerError> {
        let mut inner = self.inner.lock().await;
        let before = inner.state.docker.clone();
        let result = change(&mut inner.state.docker);
        if let Err(e) = inner.save() {
            inner.state.docker = before;
            return Err(e);
        }
        Ok(result)
    }

    /// The subnet a network would get from the default pools now, that
    /// none of `also_avoid` overlaps (nothing is taken).
    ///
    /// # Errors
    ///
    /// [`ControllerError::Subnet`] when the default pools are exhausted.
    pub async fn free_default_subnet(
        &self,
        also_avoid: &[IpNet],
    ) -> Result<IpNet, ControllerError> {
        let inner = self.inner.lock().await;
        let mut probe = inner.state.ipam.clone();
        let mut avoid = host_routes::ipv4_routes();
        avoid.extend_from_slice(also_avoid);
        let subnet = probe.add_default_subnet(" docker probe", &avoid)?.subnet();
        Ok(subnet)
    }

    /// Reserve an address of `network` for a Docker endpoint: `wanted`,
    /// or one chosen in the family of `v6` (for an overlay network, from
    /// the cluster allocator, so no host hands it out twice). `record`
    /// notes it in the plugin's state, saved with the reservation.
    ///
    /// # Errors
    ///
    /// [`ControllerError`]: unknown network, an address taken or outside
    /// the subnets, none left, the state file failing.
    pub async fn reserve_docker_address(
        &self,
        network_name: &str,
        wanted: Option<IpAddr>,
        v6: bool,
        record: impl FnOnce(&mut DockerState, IpNet),
    ) -> Result<IpNet, ControllerError> {
        let mut inner = self.inner.lock().await;
        let network = inner.network(network_name).cloned().ok_or_else(|| {
            ControllerError::NetworkNotFound {
                name: network_name.into(),
            }
        })?;
        let mut cluster_ip = None;
        let ip = match wanted {
            Some(ip) => {
                inner.state.ipam.reserve(&network.name, ip)?;
                ip
            }
            None if network.driver == DriverKind::Overlay => {
                let (ips, leased) = self
                    .cluster_addresses(&mut inner, &network, Vec::new())
                    .await?;
                let Some(ip) = ips.into_iter().find(|ip| ip.is_ipv6() == v6) else {
                    self.release_cluster_addresses(&network, &leased);
                    return Err(weft_ipam::AllocError::NoSubnet {
                        network: network.name.clone(),
                        family: if v6 {
                            weft_ipam::Family::Ipv6
                        } else {
                            weft_ipam::Family::Ipv4
                        },
                    }
                    .into());
                };
                if let Err(e) = inner.state.ipam.reserve(&network.name, ip) {
                    self.release_cluster_addresses(&network, &leased);
                    return Err(e.into());
                }
                cluster_ip = Some(ip);
                ip
            }
            None => inner.state.ipam.allocate(&network.name, !v6)?,
        };
        let address = with_prefix(&network, ip);
        record(&mut inner.state.docker, address);
        if let Err(e) = inner.save() {
            let _ = inner.state.ipam.release(&network.name, ip);
            self.release_cluster_addresses(&network, cluster_ip.as_slice());
            return Err(e);
        }
        Ok(address)
    }

    /// Release an address [`Controller::reserve_docker_address`] took
    /// (in the cluster too for an overlay network); `record` notes it in
    /// the plugin's state. A network that is gone has nothing to release.
    ///
    /// # Errors
    ///
    /// [`ControllerError::Store`] when the state file cannot be written.
    pub async fn release_docker_address(
        &self,
        network_name: &str,
        ip: IpAddr,
        record: impl FnOnce(&mut DockerState),
    ) -> Result<(), ControllerError> {
        let mut inner = self.inner.lock().await;
        if let Some(network) = inner.network(network_name).cloned() {
            if let Err(e) = inner.state.ipam.release(&network.name, ip) {
                tracing::warn!(network = network_name, address = %ip, error = %e, "Docker address release");
            }
            if network.driver == DriverKind::Overlay {
                self.release_cluster_addresses(&network, &[ip]);
            }
        }
        record(&mut inner.state.docker);
        inner.save()
    }

    /// The endpoint Docker knows as `endpoint_id`, with its network.
    pub async fn docker_endpoint(&self, endpoint_id: &str) -> Option<(Network, Endpoint)> {
        let inner = self.inner.lock().await;
        let endpoint = inner
            .state
            .endpoints
            .iter()
            .find(|e| {
                e.docker
                    .as_ref()
                    .is_some_and(|d| d.endpoint_id == endpoint_id)
            })?
            .clone();
        let network = inner.network(&endpoint.network)?.clone();
        Some((network, endpoint))
    }

    /// A network by name (a copy).
    pub async fn network(&self, name: &str) -> Option<Network> {
        self.inner.lock().await.network(name).cloned()
    }

    /// Publish `ports` of the joined endpoint `endpoint_id` (Docker's
    /// `ProgramExternalConnectivity`); they are kept with the endpoint, so
    /// a restart publishes them again. The mappings really bound are
    /// returned (host port 0 gets the kernel's choice).
    ///
    /// # Errors
    ///
    /// [`ControllerError`]: no such endpoint, a host port in use or
    /// privileged, the data path or state file failing.
    pub async fn publish_ports(
        &self,
        endpoint_id: &str,
        ports: Vec<PortMapping>,
    ) -> Result<Vec<PortMapping>, ControllerError> {
        let mut inner = self.inner.lock().await;
        let index = inner
            .state
            .endpoints
            .iter()
            .position(|e| e.id == endpoint_id)
            .ok_or_else(|| ControllerError::EndpointNotFound {
                id: endpoint_id.into(),
            })?;
        let endpoint = inner.state.endpoints[index].clone();
        let network = inner.network(&endpoint.network).cloned().ok_or_else(|| {
            ControllerError::NetworkNotFound {
                name: endpoint.network.clone(),
            }
        })?;
        if !network.driver.has_interfaces() {
            return Err(ControllerError::PortsNotAllowed {
                driver: network.driver,
            });
        }
        for mapping in &ports {
            mapping.validate()?;
        }
        let bridge = Arc::clone(&inner.bridge);
        let published = {
            let endpoint = endpoint.clone();
            tokio::task::spawn_blocking(move || bridge.publish_ports(&endpoint, &ports)).await
        };
        let bound = match published {
            Ok(Ok(bound)) => bound,
            Ok(Err(DriverError::Publish(e))) => return Err(ControllerError::Publish(e)),
            Ok(Err(source)) => {
                return Err(ControllerError::Driver {
                    driver: network.driver,
                    source,
                })
            }
            Err(join) => std::panic::resume_unwind(join.into_panic()),
        };
        inner.state.endpoints[index]
            .ports
            .extend(bound.iter().copied());
        inner.save()?;
        tracing::info!(network = network.name, endpoint = endpoint.name, ports = ?bound, "ports published");
        Ok(bound)
    }

    /// Close every published port of endpoint `endpoint_id` (Docker's
    /// `RevokeExternalConnectivity`); nothing to do for an unknown one.
    ///
    /// # Errors
    ///
    /// [`ControllerError`] when the data path or the state file fails.
    pub async fn unpublish_ports(&self, endpoint_id: &str) -> Result<(), ControllerError> {
        let mut inner = self.inner.lock().await;
        let Some(index) = inner
            .state
            .endpoints
            .iter()
            .position(|e| e.id == endpoint_id)
        else {
            return Ok(());
        };
        let endpoint = inner.state.endpoints[index].clone();
        inner
            .bridge
            .unpublish_ports(&endpoint)
            .map_err(|source| ControllerError::Driver {
                driver: DriverKind::Bridge,
                source,
            })?;
        inner.state.endpoints[index].ports.clear();
        inner.save()
    }
}

impl Inner {
    fn network(&self, name: &str) -> Option<&Network> {
        self.state.networks.iter().find(|n| n.name == name)
    }

    fn driver(&self, kind: DriverKind) -> Arc<dyn NetworkDriver> {
        match kind {
            DriverKind::Null => self.null.clone(),
            DriverKind::Host => self.host.clone(),
            DriverKind::Bridge => self.bridge.clone(),
            DriverKind::Overlay => self.overlay.clone(),
        }
    }

    /// Tell the network's driver the names of all its endpoints (the
    /// embedded DNS serves them at once).
    fn publish_names(&self, network: &Network) {
        let endpoints: Vec<&Endpoint> = self
            .state
            .endpoints
            .iter()
            .filter(|e| e.network == network.name)
            .collect();
        if let Err(e) = self
            .driver(network.driver)
            .endpoints_changed(network, &endpoints)
        {
            tracing::error!(network = network.name, error = %error_chain(&e), "DNS names not updated");
        }
    }

    fn save(&self) -> Result<(), ControllerError> {
        self.store.save(&self.state).map_err(ControllerError::Store)
    }

    fn add_subnets(
        &mut self,
        name: &str,
        requested: &[SubnetRequest],
    ) -> Result<Vec<SubnetInfo>, ControllerError> {
        let ipam = &mut self.state.ipam;
        if requested.is_empty() {
            let avoid = host_routes::ipv4_routes();
            ipam.add_default_subnet(name, &avoid)?;
        }
        for s in requested {
            ipam.add_subnet(name, s.subnet, s.gateway, s.ip_range)?;
        }
        Ok(ipam
            .subnets(name)
            .iter()
            .map(|s| SubnetInfo {
                subnet: s.subnet(),
                gateway: s.gateway(),
                ip_range: s.ip_range(),
            })
            .collect())
    }

    fn assign_addresses(
        &mut self,
        network: &Network,
        ips: &[IpAddr],
    ) -> Result<Vec<IpNet>, ControllerError> {
        if ips.iter().filter(|ip| ip.is_ipv4()).count() > 1
            || ips.iter().filter(|ip| ip.is_ipv6()).count() > 1
        {
            return Err(ControllerError::DuplicateFamily);
        }
        if !network.driver.has_interfaces() {
            return Ok(Vec::new());
        }
        let mut assigned: Vec<IpNet> = Vec::new();
        let mut families_done = Vec::new();
        let result = (|| {
            for ip in ips {
                self.state.ipam.reserve(&network.name, *ip)?;
                assigned.push(with_prefix(network, *ip));
                families_done.push(ip.is_ipv4());
            }
            for v4 in [true, false] {
                let has_family = network
                    .subnets
                    .iter()
                    .any(|s| s.subnet.addr().is_ipv4() == v4);
                if has_family && !families_done.contains(&v4) {
                    let ip = self.state.ipam.allocate(&network.name, v4)?;
                    assigned.push(with_prefix(network, ip));
                }
            }
            Ok::<(), ControllerError>(())
        })();
        if let Err(e) = result {
            for a in &assigned {
                let _ = self.state.ipam.release(&network.name, a.addr());
            }
            return Err(e);
        }
        Ok(assigned)
    }

    fn release_addresses(&mut self, endpoint: &Endpoint) {
        if endpoint.docker.is_some() {
            // The Docker plugin reserved them and releases them.
            return;
        }
        for a in &endpoint.addresses {
            if let Err(e) = self.state.ipam.release(&endpoint.network, a.addr()) {
                tracing::warn!(network = endpoint.network, address = %a, error = %e, "address release failed");
            }
        }
    }
}

/// The address with its subnet's prefix length.
fn with_prefix(network: &Network, ip: IpAddr) -> IpNet {
    let prefix = network
        .subnets
        .iter()
        .find(|s| s.subnet.contains(&ip))
        .map_or(if ip.is_ipv4() { 32 } else { 128 }, |s| {
            s.subnet.prefix_len()
        });
    // The prefix comes from a subnet of the same family, so it is valid.
    IpNet::new(ip, prefix).unwrap_or_else(|_| IpNet::from(ip))
}

async fn join_blocking(
    driver: Arc<dyn NetworkDriver>,
    network: Network,
    mut endpoint: Endpoint,
) -> Result<Endpoint, ControllerError> {
    let kind = network.driver;
    let joined = tokio::task::spawn_blocking(move || {
        driver.join(&network, &mut endpoint).map(|()| endpoint)
    })
    .await;
    match joined {
        Ok(result) => result.map_err(|source| match source {
            DriverError::Publish(e) => ControllerError::Publish(e),
            source => ControllerError::Driver {
                driver: kind,
                source,
            },
        }),
        Err(join) => std::panic::resume_unwind(join.into_panic()),
    }
}

/// The endpoint name when none is given: the namespace's name for
/// `/var/run/netns/NAME`, `pidN` for `/proc/N/ns/net`.
fn default_endpoint_name(sandbox: &Path) -> String {
    let parts: Vec<&str> = sandbox.iter().filter_map(|p| p.to_str()).collect();
    if let ["/", "proc", pid, "ns", "net"] = parts.as_slice() {
        return format!("pid{pid}");
    }
    sandbox
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("sandbox")
        .to_owned()
}

/// The options (`--opt K=V`) each driver knows, with their values.
const BRIDGE_OPTIONS: &[(&str, &[&str])] = &[
    // Connections to the gateway's address on ports that are not gateway
    // services go to the host's loopback.
    ("host_loopback", &["true", "false"]),
];

/// Refuse options the driver does not know and values it does not take;
/// the error says what is allowed.
fn validate_options(
    driver: DriverKind,
    options: &BTreeMap<String, String>,
) -> Result<(), ControllerError> {
    let known: &[(&str, &[&str])] = match driver {
        DriverKind::Bridge => BRIDGE_OPTIONS,
        DriverKind::Overlay => return validate_overlay_options(options),
        DriverKind::Null | DriverKind::Host => &[],
    };
    for (key, value) in options {
        let Some((_, values)) = known.iter().find(|(k, _)| k == key) else {
            let reason = if known.is_empty() {
                format!("the {driver} driver takes no options: drop --opt")
            } else {
                let list: Vec<String> = known
                    .iter()
                    .map(|(k, v)| format!("{k}={}", v.join("|")))
                    .collect();
                format!(
                    "unknown option of the {driver} driver: known options are {}",
                    list.join(", ")
                )
            };
            return Err(ControllerError::InvalidOption {
                key: key.clone(),
                reason,
            });
        };
        if !values.contains(&value.as_str()) {
            return Err(ControllerError::InvalidOption {
                key: key.clone(),
                reason: format!(
                    "{value:?} is not a value of {key}: use {}",
                    values.join(" or ")
                ),
            });
        }
    }
    Ok(())
}

/// `--opt vni=N` (1 to 2^24-1) and `--opt peers=IP[,IP...]`, nothing else.
fn validate_overlay_options(options: &BTreeMap<String, String>) -> Result<(), ControllerError> {
    for (key, value) in options {
        let reason = match key.as_str() {
            VNI_OPTION => match value.parse::<u32>() {
                Ok(vni) if vni >= 1 && Vni::new(vni).is_ok() => continue,
                _ => format!(
                    "{value:?} is not a VNI: use a number from 1 to {}",
                    Vni::MAX
                ),
            },
            PEERS_OPTION => match overlay_driver::parse_peers(value) {
                Ok(peers) if !peers.is_empty() => continue,
                Ok(_) => "give at least one address: peers=IP[,IP...]".to_owned(),
                Err(bad) => format!("{bad:?} is not an IP address: use peers=IP[,IP...]"),
            },
            _ => "unknown option of the overlay driver: known options are vni=N, peers=IP[,IP...]"
                .to_owned(),
        };
        return Err(ControllerError::InvalidOption {
            key: key.clone(),
            reason,
        });
    }
    Ok(())
}

/// A VNI no live cluster network uses, at random from [`RANDOM_VNI_MIN`].
fn random_vni(cluster: &Cluster) -> u32 {
    let mut vni = RANDOM_VNI_MIN;
    // 2^24 - 4096 values for at most a few thousand networks: a free one
    // comes in a few draws; the bound only guards against a full space.
    for _ in 0..1000 {
        vni = rand::random_range(RANDOM_VNI_MIN..=Vni::MAX);
        if Vni::new(vni).is_ok_and(|v| cluster.network_by_vni(v).is_none()) {
            break;
        }
    }
    vni
}

/// The directory's record of an overlay network (its MTU and `--internal`
/// ride in the options under reserved keys).
fn network_record(network: &Network) -> Option<NetworkRecord> {
    let subnet = network.subnets.first()?;
    let vni = Vni::new(network.vni?).ok()?;
    let mut options = network.options.clone();
    options.insert(RECORD_MTU.into(), network.mtu.to_string());
    options.insert(RECORD_INTERNAL.into(), network.internal.to_string());
    Some(NetworkRecord {
        name: network.name.clone(),
        subnet: subnet.subnet,
        gateway: Some(subnet.gateway),
        vni,
        options,
    })
}

/// A cluster network made here from the directory's record (subnets are
/// filled in once the local IPAM took the subnet).
fn network_from_record(id: &ClusterNetworkId, record: &NetworkRecord) -> Network {
    let mut options = record.options.clone();
    let mtu = options
        .remove(RECORD_MTU)
        .and_then(|m| m.parse().ok())
        .filter(|m| (MIN_MTU..=MAX_MTU).contains(m))
        .unwrap_or(DEFAULT_OVERLAY_MTU);
    let internal = options.remove(RECORD_INTERNAL).is_some_and(|v| v == "true");
    Network {
        name: record.name.clone(),
        id: id.0.clone(),
        driver: DriverKind::Overlay,
        scope: Scope::Cluster,
        subnets: Vec::new(),
        internal,
        mtu,
        options,
        created: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        vni: Some(record.vni.get()),
    }
}

fn validate_name(what: &'static str, name: &str) -> Result<(), ControllerError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ControllerError::InvalidName {
            what,
            name: name.into(),
        })
    }
}

fn random_id() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An error and its causes, joined with ": ", for messages to users.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_name("x", "n1").is_ok());
        assert!(validate_name("x", "my-net_2.a").is_ok());
        assert!(validate_name("x", "").is_err());
        assert!(validate_name("x", "-n").is_err());
        assert!(validate_name("x", "a b").is_err());
        assert!(validate_name("x", &"a".repeat(64)).is_err());
    }

    #[test]
    fn default_names_of_sandboxes() {
        assert_eq!(
            default_endpoint_name(Path::new("/var/run/netns/web")),
            "web"
        );
        assert_eq!(
            default_endpoint_name(Path::new("/proc/1234/ns/net")),
            "pid1234"
        );
    }

    /// `--opt` pairs as a network's options.
    fn opts(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn options_are_checked_against_the_driver() {
        assert!(validate_options(DriverKind::Bridge, &opts(&[])).is_ok());
        assert!(validate_options(DriverKind::Bridge, &opts(&[("host_loopback", "true")])).is_ok());
        assert!(validate_options(DriverKind::Bridge, &opts(&[("host_loopback", "false")])).is_ok());
        let bad_value =
            validate_options(DriverKind::Bridge, &opts(&[("host_loopback", "yes")])).unwrap_err();
        assert_eq!(bad_value.status(), 400);
        assert_eq!(
            bad_value.to_string(),
            "--opt host_loopback: \"yes\" is not a value of host_loopback: use true or false"
        );
        let unknown = validate_options(DriverKind::Bridge, &opts(&[("k", "v")])).unwrap_err();
        assert_eq!(unknown.status(), 400);
        assert!(
            unknown
                .to_string()
                .contains("known options are host_loopback=true|false"),
            "{unknown}"
        );
        let null =
            validate_options(DriverKind::Null, &opts(&[("host_loopback", "true")])).unwrap_err();
        assert!(null.to_string().contains("takes no options"), "{null}");
    }

    #[test]
    fn overlay_options_are_a_vni_and_peers() {
        let check = |pairs: &[(&str, &str)]| validate_options(DriverKind::Overlay, &opts(pairs));
        assert!(check(&[]).is_ok());
        assert!(check(&[("vni", "4242"), ("peers", "192.0.2.4,2001:db8::4")]).is_ok());
        assert!(check(&[("vni", "16777215")]).is_ok());
        for bad in ["0", "16777216", "x", "-1"] {
            let e = check(&[("vni", bad)]).unwrap_err();
            assert_eq!(e.status(), 400);
            assert!(e.to_string().contains("from 1 to 16777215"), "{e}");
        }
        let e = check(&[("peers", "192.0.2.4,nohost")]).unwrap_err();
        assert!(
            e.to_string().contains("\"nohost\" is not an IP address"),
            "{e}"
        );
        let e = check(&[("peers", ",")]).unwrap_err();
        assert!(e.to_string().contains("at least one"), "{e}");
        let e = check(&[("host_loopback", "true")]).unwrap_err();
        assert!(e.to_string().contains("known options are vni=N"), "{e}");
    }

    #[test]
    fn overlay_networks_travel_as_records_and_come_back_the_same() {
        let network = Network {
            name: "ov".into(),
            id: "ab".repeat(32),
            driver: DriverKind::Overlay,
            scope: Scope::Cluster,
            subnets: vec![SubnetInfo {
                subnet: "10.232.0.0/24".parse().unwrap(),
                gateway: "10.232.0.1".parse().unwrap(),
                ip_range: None,
            }],
            internal: true,
            mtu: 1400,
            options: [("vni".to_owned(), "7".to_owned())].into(),
            created: String::new(),
            vni: Some(7),
        };
        let record = network_record(&network).expect("an overlay network has a record");
        assert_eq!(record.vni.get(), 7);
        assert_eq!(record.gateway, Some("10.232.0.1".parse().unwrap()));
        let id = ClusterNetworkId(network.id.clone());
        let back = network_from_record(&id, &record);
        assert_eq!(
            Network {
                subnets: network.subnets.clone(),
                created: String::new(),
                ..back
            },
            network
        );
        // A record without the reserved keys gets the overlay defaults.
        let mut bare = record.clone();
        bare.options.clear();
        let back = network_from_record(&id, &bare);
        assert_eq!((back.mtu, back.internal), (DEFAULT_OVERLAY_MTU, false));
        // Without a VNI or a subnet there is no record.
        assert!(network_record(&Network {
            vni: None,
            ..network.clone()
        })
        .is_none());
        assert!(network_record(&Network {
            subnets: Vec::new(),
            ..network
        })
        .is_none());
    }

    #[test]
    fn statuses_follow_the_kind_of_error() {
        assert_eq!(
            ControllerError::NetworkNotFound { name: "x".into() }.status(),
            404
        );
        assert_eq!(
            ControllerError::NetworkExists { name: "x".into() }.status(),
            409
        );
        assert_eq!(
            ControllerError::NetworkInUse {
                name: "x".into(),
                count: 1
            }
            .status(),
            409
        );
        assert_eq!(ControllerError::DuplicateFamily.status(), 400);
        assert_eq!(ControllerError::OverlayNeedsCluster.status(), 400);
        assert_eq!(ControllerError::OverlaySubnets.status(), 400);
        assert_eq!(
            ControllerError::VniInUse {
                vni: 1,
                network: "x".into()
            }
            .status(),
            409
        );
        assert_eq!(
            ControllerError::ClusterAddress(ClusterAllocError::Timeout(Duration::from_secs(1)))
                .status(),
            503
        );
        let addr = "0.0.0.0:8080".parse().unwrap();
        let proto = weft_vswitch::sys::publish::L4Proto::Tcp;
        assert_eq!(
            ControllerError::Publish(PublishError::InUse { addr, proto }).status(),
            409
        );
        assert_eq!(
            ControllerError::Publish(PublishError::Privileged {
                addr,
                proto,
                start: 1024
            })
            .status(),
            400
        );
        assert_eq!(
            ControllerError::PortsNotAllowed {
                driver: DriverKind::Host
            }
            .status(),
            400
        );
    }
}
