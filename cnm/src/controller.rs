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

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use weft_ipam::{AddSubnetError, AllocError};
use weft_vswitch::counters::PortCountersSnapshot;
use weft_vswitch::sys::datapath::Datapath;
use weft_vswitch::sys::publish::PublishError;

use crate::driver::{BridgeDriver, DriverError, HostDriver, NetworkDriver, NullDriver};
use crate::host_routes;
use crate::model::{
    DriverKind, Endpoint, Network, PortMapping, PortMappingError, Scope, SubnetInfo, UnknownDriver,
    DEFAULT_MTU, MAX_MTU, MIN_MTU,
};
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
}

/// See the module header.
pub struct Controller {
    inner: Mutex<Inner>,
    netns_dir: PathBuf,
}

struct Inner {
    state: State,
    store: StateStore,
    null: Arc<NullDriver>,
    host: Arc<HostDriver>,
    bridge: Arc<BridgeDriver>,
}

impl ControllerError {
    /// The HTTP status for this error.
    pub fn status(&self) -> u16 {
        match self {
            ControllerError::NetworkNotFound { .. } | ControllerError::NotConnected { .. } => 404,
            ControllerError::SandboxNotFound { .. } => 404,
            ControllerError::NetworkExists { .. }
            | ControllerError::NetworkInUse { .. }
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
            | ControllerError::DuplicateFamily => 400,
            ControllerError::Driver { .. }
            | ControllerError::Publish(PublishError::Bind { .. })
            | ControllerError::Store(_)
            | ControllerError::Datapath(_) => 500,
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
        let datapath = Arc::new(Datapath::spawn().map_err(ControllerError::Datapath)?);
        let controller = Controller {
            inner: Mutex::new(Inner {
                state,
                store,
                null: Arc::new(NullDriver::new(config.helper_exe.clone())),
                host: Arc::new(HostDriver),
                bridge: Arc::new(BridgeDriver::new(config.helper_exe, datapath)),
            }),
            netns_dir: config.netns_dir,
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
                    inner.state.endpoints.push(joined);
                }
                Err(e) if !endpoint.sandbox.exists() => {
                    tracing::warn!(network = network.name, sandbox = %endpoint.sandbox.display(), error = %error_chain(&e), "sandbox is gone: endpoint dropped, addresses released");
                    if let Some(path) = &endpoint.resolv_conf {
                        resolv_conf::remove(path);
                    }
                    for addr in endpoint.addresses.drain(..) {
                        let _ = inner.state.ipam.release(&network.name, addr.addr());
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
        let mtu = request.mtu.unwrap_or(DEFAULT_MTU);
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
        let count = inner
            .state
            .endpoints
            .iter()
            .filter(|e| e.network == name)
            .count();
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
        Ok(NetworkDetails { network, endpoints })
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
        let sandbox = self.resolve_sandbox(&request.sandbox)?;
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
        let addresses = inner.assign_addresses(&network, &request.ips)?;
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
            return Err(e);
        }
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
        if let Some(path) = &endpoint.resolv_conf {
            resolv_conf::remove(path);
        }
        inner.state.endpoints.retain(|e| e.id != endpoint.id);
        inner.publish_names(&network);
        inner.save()?;
        tracing::info!(network = network.name, sandbox = %sandbox.display(), "endpoint left");
        Ok(())
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

impl Inner {
    fn network(&self, name: &str) -> Option<&Network> {
        self.state.networks.iter().find(|n| n.name == name)
    }

    fn driver(&self, kind: DriverKind) -> Arc<dyn NetworkDriver> {
        match kind {
            DriverKind::Null => self.null.clone(),
            DriverKind::Host => self.host.clone(),
            DriverKind::Bridge => self.bridge.clone(),
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

    #[test]
    fn options_are_checked_against_the_driver() {
        let opts = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
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
