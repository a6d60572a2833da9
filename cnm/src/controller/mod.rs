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
//! ([`weft_overlay::driver::gossip`]) before it is made here, and removed from it on
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
//! records are gone, but its address blocks are held for its node id (kept
//! in the state directory) for `weft_overlay::directory::LEASE_GRACE`: no
//! other host hands out its addresses, and when it comes back the members
//! send it the blocks they held and it leases them again.

mod cluster_sync;
mod docker;
mod endpoints;
mod error;
mod networks;
mod records;
mod state;
#[cfg(test)]
mod tests;
mod tunnels;
mod validation;

pub use error::ControllerError;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::Mutex;
use weft_datapath::Datapath;
use weft_overlay::driver::quic::SharedQuicStatus;
use weft_services::NatLimits;

use weft_overlay::ClusterNetworkId;

use crate::api::types::{CreateNetworkRequest, EndpointDetails, NetworkDetails, PeersReport};
use crate::driver::{BridgeDriver, DriverError, FdbRow, HostDriver, NetworkDriver, NullDriver};
use crate::error_chain::error_chain;
use crate::model::{DriverKind, Endpoint, Network};
use crate::netns::{self, NotASandbox};
use crate::overlay_driver::OverlayDriver;
use crate::resolv_conf;
use crate::store::{State, StateStore};
use records::network_record;
use weft_overlay::driver::gossip::{Cluster, ClusterConfig};

/// The default network's name (Docker's `docker0` network is `bridge`).
pub const DEFAULT_NETWORK: &str = "bridge";

/// Where `ip netns` keeps named namespaces.
pub const NETNS_DIR: &str = "/var/run/netns";

/// `weft info` (`GET /v1/info`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Info {
    /// The daemon's version.
    pub version: &'static str,
    /// Its process id.
    pub pid: u32,
    /// Seconds since it started.
    pub uptime_seconds: u64,
    /// Its state directory.
    pub state_dir: PathBuf,
    /// Its upstream resolvers.
    pub dns_upstreams: Vec<std::net::SocketAddr>,
    /// Networks it knows.
    pub networks: usize,
    /// Endpoints on them.
    pub endpoints: usize,
    /// Distinct sandboxes those endpoints are in.
    pub sandboxes: usize,
    /// How ICMP echo from sandboxes leaves the host (see
    /// `weft_datapath::nat::icmp_echo_support`).
    pub icmp_echo: &'static str,
    /// The gossip cluster (None without `--listen`).
    pub cluster: Option<ClusterInfo>,
}

/// The cluster part of [`Info`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClusterInfo {
    /// This host's `--node-name`.
    pub name: String,
    /// Its gossip address.
    pub address: std::net::SocketAddr,
    /// The other members, any state.
    pub members: usize,
    /// Of those, the alive ones.
    pub alive: usize,
}

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
    /// The NAT's limits and timers (flows per table, the file descriptors
    /// its host sockets may take, idle timers).
    pub nat: NatLimits,
}

/// See the module header.
pub struct Controller {
    inner: Mutex<Inner>,
    /// Changes as they happen (`weft events`).
    pub events: crate::events::Events,
    netns_dir: PathBuf,
    cluster: Option<Arc<Cluster>>,
    datapath: Arc<Datapath>,
    /// When the controller started (`weft info`'s uptime).
    started: std::time::Instant,
    /// Where the state file is (`weft info`).
    state_dir: PathBuf,
    /// Where unknown names go (`weft info`).
    dns_upstreams: Vec<std::net::SocketAddr>,
    /// The QUIC transport's counters, when it runs (a cluster key).
    quic: Option<SharedQuicStatus>,
}

struct Inner {
    state: State,
    store: StateStore,
    null: Arc<NullDriver>,
    host: Arc<HostDriver>,
    bridge: Arc<BridgeDriver>,
    overlay: Arc<OverlayDriver>,
    macvlan: Arc<crate::macvlan_driver::MacvlanDriver>,
    ipvlan: Arc<crate::macvlan_driver::MacvlanDriver>,
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
        let datapath =
            Arc::new(Datapath::spawn_with_limits(&config.nat).map_err(ControllerError::Datapath)?);
        let mut quic_status = None;
        let cluster = match config.cluster {
            Some(cluster_config) => {
                quic_status = tunnels::enable(&datapath, &cluster_config)?;
                Some(Cluster::start(cluster_config).await?)
            }
            None => None,
        };
        let bridge = Arc::new(BridgeDriver::new(
            config.helper_exe.clone(),
            Arc::clone(&datapath),
        ));
        // Said once here rather than at every refused ping.
        let icmp = weft_datapath::nat::icmp_echo_support();
        if icmp == weft_datapath::nat::IcmpEchoSupport::Unavailable {
            tracing::warn!(
                gid = nix::unistd::getegid().as_raw(),
                "outbound ping from sandboxes will fail: ping sockets are not allowed for this daemon's group \
                 (net.ipv4.ping_group_range) and it has no CAP_NET_RAW for a raw socket; \
                 fix: sysctl -w net.ipv4.ping_group_range='0 2147483647' in the daemon's network namespace"
            );
        } else {
            tracing::info!(via = icmp.describe(), "outbound ICMP echo");
        }
        let controller = Controller {
            events: crate::events::Events::default(),
            inner: Mutex::new(Inner {
                state,
                store,
                null: Arc::new(NullDriver::new(config.helper_exe)),
                host: Arc::new(HostDriver),
                overlay: Arc::new(OverlayDriver::new(
                    Arc::clone(&bridge),
                    cluster.clone(),
                    quic_status.clone(),
                )),
                macvlan: Arc::new(crate::macvlan_driver::MacvlanDriver::new(
                    Arc::clone(&bridge),
                    DriverKind::Macvlan,
                )),
                ipvlan: Arc::new(crate::macvlan_driver::MacvlanDriver::new(
                    Arc::clone(&bridge),
                    DriverKind::Ipvlan,
                )),
                bridge,
            }),
            netns_dir: config.netns_dir,
            cluster,
            datapath,
            started: std::time::Instant::now(),
            state_dir: config.state_dir.clone(),
            dns_upstreams: config.dns_upstreams.clone(),
            quic: quic_status,
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
        inner.recover_interrupted_attaches();
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
            match driver.create_network(&network) {
                Ok(()) => {}
                // A parent interface that is gone (a NIC unplugged) costs
                // its network, not the daemon: the others come back.
                Err(e) if network.driver.has_uplink() => {
                    tracing::error!(network = network.name, error = %error_chain(&e), "network not restored: its parent cannot be used; its endpoints stay recorded but detached");
                }
                Err(source) => {
                    return Err(ControllerError::Driver {
                        driver: network.driver,
                        source,
                    })
                }
            }
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
        let remote_endpoints = driver.remote_endpoints(&network);
        let uplink = driver.uplink(&network);
        let docker_networks = inner.state.docker.networks_of(name);
        let nat = driver.nat_stats(&network).map(Into::into);
        // A network with a way out through weft's NAT (not one whose
        // gateway is a LAN's router).
        let outbound_icmp_echo =
            (network.driver.has_interfaces() && !network.internal && !network.driver.has_uplink())
                .then(|| weft_datapath::nat::icmp_echo_support().describe());
        Ok(NetworkDetails {
            network,
            endpoints,
            tunnel,
            remote_endpoints,
            uplink,
            docker_networks,
            nat,
            outbound_icmp_echo,
        })
    }

    /// `weft capture`: start a capture of the network's ports (or one
    /// endpoint's); the session and the names of its ports.
    ///
    /// # Errors
    ///
    /// [`ControllerError::InvalidCapture`] for a bad request or a network
    /// without interfaces, [`ControllerError::NetworkNotFound`],
    /// [`ControllerError::NoSuchEndpoint`], or the data path being gone.
    pub async fn capture(
        &self,
        name: &str,
        request: &crate::capture::CaptureRequest,
    ) -> Result<
        (
            weft_datapath::capture::CaptureHandle,
            std::collections::HashMap<weft_vswitch::PortId, String>,
        ),
        ControllerError,
    > {
        if let Some(problem) = request.problem() {
            return Err(ControllerError::InvalidCapture(problem));
        }
        let (bridge, network, endpoints) = self.network_with_endpoints(name).await?;
        if !network.driver.has_interfaces() {
            return Err(ControllerError::InvalidCapture(format!(
                "network {name:?} has driver {}, which switches no frames",
                network.driver
            )));
        }
        let only = match &request.endpoint {
            Some(wanted) => Some(endpoints.iter().find(|e| &e.name == wanted).ok_or_else(
                || ControllerError::NoSuchEndpoint {
                    network: name.into(),
                    name: wanted.clone(),
                },
            )?),
            None => None,
        };
        let snap_len = request.snap_len.unwrap_or(crate::capture::MAX_SNAP_LEN);
        let ring = request.ring_mib.unwrap_or(crate::capture::DEFAULT_RING_MIB);
        bridge
            .capture(
                &network,
                &endpoints,
                only,
                snap_len as usize,
                ring as usize * 1024 * 1024,
            )
            .map_err(|source| ControllerError::Driver {
                driver: network.driver,
                source,
            })
    }

    /// Start a capture of the tunnel: the datagrams to and from the other
    /// hosts of every overlay network (`weft capture --overlay`).
    ///
    /// # Errors
    ///
    /// [`ControllerError::InvalidCapture`] for a bad request (an endpoint
    /// named) or a daemon without a cluster, or the data path being gone.
    pub async fn capture_overlay(
        &self,
        request: &crate::capture::CaptureRequest,
    ) -> Result<weft_datapath::capture::CaptureHandle, ControllerError> {
        if let Some(problem) = request.problem() {
            return Err(ControllerError::InvalidCapture(problem));
        }
        if request.endpoint.is_some() {
            return Err(ControllerError::InvalidCapture(
                "a capture of the tunnel takes no endpoint: capture the endpoint's network instead"
                    .into(),
            ));
        }
        if self.cluster.is_none() {
            return Err(ControllerError::InvalidCapture(
                "this daemon carries no overlay: start it with --listen IP:PORT to join a cluster"
                    .into(),
            ));
        }
        let snap_len = request.snap_len.unwrap_or(crate::capture::MAX_SNAP_LEN);
        let ring = request.ring_mib.unwrap_or(crate::capture::DEFAULT_RING_MIB);
        let datapath = Arc::clone(&self.datapath);
        datapath
            .start_capture(
                weft_datapath::capture::Filter::Tunnel,
                snap_len as usize,
                ring as usize * 1024 * 1024,
            )
            .map_err(|e| ControllerError::Datapath(std::io::Error::other(e.to_string())))
    }

    /// The embedded DNS server's counters (for metrics).
    ///
    /// # Errors
    ///
    /// The data path not answering.
    pub async fn dns_counters(&self) -> Result<weft_services::dns::DnsCounters, ControllerError> {
        let datapath = Arc::clone(&self.datapath);
        tokio::task::spawn_blocking(move || datapath.dns_counters())
            .await
            .map_err(|join| ControllerError::Datapath(std::io::Error::other(join.to_string())))?
            .map_err(|e| ControllerError::Datapath(std::io::Error::other(e.to_string())))
    }

    /// The gateways' DHCP server's counters (for metrics).
    ///
    /// # Errors
    ///
    /// The data path not answering.
    pub async fn dhcp_counters(
        &self,
    ) -> Result<weft_services::dhcp::DhcpCounters, ControllerError> {
        let datapath = Arc::clone(&self.datapath);
        tokio::task::spawn_blocking(move || datapath.dhcp_counters())
            .await
            .map_err(|join| ControllerError::Datapath(std::io::Error::other(join.to_string())))?
            .map_err(|e| ControllerError::Datapath(std::io::Error::other(e.to_string())))
    }

    /// What every published port carried, each with its endpoint's id (for
    /// metrics).
    ///
    /// # Errors
    ///
    /// The data path not answering.
    pub async fn published_figures(
        &self,
    ) -> Result<Vec<(String, weft_datapath::published::PublishedFigures)>, ControllerError> {
        let bridge = Arc::clone(&self.inner.lock().await.bridge);
        tokio::task::spawn_blocking(move || bridge.published_figures())
            .await
            .map_err(|join| ControllerError::Datapath(std::io::Error::other(join.to_string())))?
            .map_err(|source| ControllerError::Driver {
                driver: DriverKind::Bridge,
                source,
            })
    }

    /// A network, its endpoints on this host, and the driver that attaches
    /// them (a copy: the lock is not held after).
    async fn network_with_endpoints(
        &self,
        name: &str,
    ) -> Result<(Arc<BridgeDriver>, Network, Vec<Endpoint>), ControllerError> {
        let inner = self.inner.lock().await;
        let network = inner
            .network(name)
            .cloned()
            .ok_or_else(|| ControllerError::NetworkNotFound { name: name.into() })?;
        let endpoints = inner
            .state
            .endpoints
            .iter()
            .filter(|e| e.network == name)
            .cloned()
            .collect();
        Ok((Arc::clone(&inner.bridge), network, endpoints))
    }

    /// `network fdb`: the network's forwarding table.
    ///
    /// # Errors
    ///
    /// [`ControllerError::NetworkNotFound`], or the data path not answering.
    pub async fn fdb(&self, name: &str) -> Result<Vec<FdbRow>, ControllerError> {
        let (bridge, network, endpoints) = self.network_with_endpoints(name).await?;
        let driver = network.driver;
        let rows = tokio::task::spawn_blocking(move || bridge.fdb(&network, &endpoints))
            .await
            .map_err(|join| ControllerError::Datapath(std::io::Error::other(join.to_string())))?;
        rows.map_err(|source| ControllerError::Driver { driver, source })
    }

    /// What a network flooded since it was made (for metrics).
    ///
    /// # Errors
    ///
    /// [`ControllerError::NetworkNotFound`], or the data path not
    /// answering.
    pub async fn floods(
        &self,
        name: &str,
    ) -> Result<Option<weft_vswitch::FloodCounts>, ControllerError> {
        let (bridge, network, _) = self.network_with_endpoints(name).await?;
        let driver = network.driver;
        let counts = tokio::task::spawn_blocking(move || bridge.floods(&network))
            .await
            .map_err(|join| ControllerError::Datapath(std::io::Error::other(join.to_string())))?;
        counts.map_err(|source| ControllerError::Driver { driver, source })
    }

    /// `weft info`: this daemon at a glance.
    pub async fn info(&self) -> Info {
        let inner = self.inner.lock().await;
        let mut sandboxes: Vec<&std::path::Path> = inner
            .state
            .endpoints
            .iter()
            .map(|e| e.sandbox.as_path())
            .collect();
        sandboxes.sort_unstable();
        sandboxes.dedup();
        Info {
            version: env!("CARGO_PKG_VERSION"),
            pid: std::process::id(),
            uptime_seconds: self.started.elapsed().as_secs(),
            state_dir: self.state_dir.clone(),
            dns_upstreams: self.dns_upstreams.clone(),
            networks: inner.state.networks.len(),
            endpoints: inner.state.endpoints.len(),
            sandboxes: sandboxes.len(),
            icmp_echo: weft_datapath::nat::icmp_echo_support().describe(),
            cluster: self.cluster.as_ref().map(|c| ClusterInfo {
                name: c.name().to_owned(),
                address: c.listen(),
                members: c.members().len(),
                alive: c.members().iter().filter(|m| m.state == "alive").count(),
            }),
        }
    }

    /// The cluster runtime, with `--listen`.
    pub fn cluster(&self) -> Option<Arc<Cluster>> {
        self.cluster.clone()
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
            id: cluster.id().to_string(),
            name: cluster.name().to_owned(),
            address: cluster.listen(),
            members: cluster.members(),
            tunnel: self.datapath.tunnel_counters().into(),
            gossip: cluster.counters(),
            quic: self.quic.as_ref().map(|status| {
                status
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone()
            }),
        })
    }

    /// Point a named namespace's resolver at the network's gateways (see
    /// [`resolv_conf`]); the path if weft wrote the file.
    fn install_resolv_conf(&self, network: &Network, endpoint: &Endpoint) -> Option<PathBuf> {
        if network.subnets.is_empty() {
            return None;
        }
        let path = resolv_conf::netns_resolv_conf(&self.netns_dir, &endpoint.sandbox)?;
        let mut gateways: Vec<IpAddr> = network.dns_addresses();
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
        match netns::check(&path) {
            Ok(()) => Ok(path),
            Err(NotASandbox::NotANetworkNamespace) => {
                Err(ControllerError::NotANetworkNamespace { path })
            }
            Err(NotASandbox::DaemonsOwn) => Err(ControllerError::DaemonsOwnNamespace { path }),
        }
    }
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
