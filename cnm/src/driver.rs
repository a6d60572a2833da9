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
//! | `bridge` | a network (broadcast domain) in the switch | the helper makes a TAP in the sandbox, its fd becomes a switch port |
//!
//! `join` and `leave` block (they run the attach helper): the controller
//! calls them off the async runtime.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use weft_vswitch::counters::PortCountersSnapshot;
use weft_vswitch::dns::{Zone, ZoneEntry};
use weft_vswitch::sys::datapath::{Datapath, DatapathError};
use weft_vswitch::sys::tap::Tap;
use weft_vswitch::{GatewayConfig, MacAddr, NetworkId, PortCounters, PortId};

use crate::attach::{run_helper, AttachAction, AttachError, AttachRequest, TapConfig};
use crate::model::{DriverKind, Endpoint, Network};

/// Why a driver operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The attach helper failed.
    #[error(transparent)]
    Attach(#[from] AttachError),
    /// The data path refused or is gone.
    #[error("data path")]
    Datapath(#[from] DatapathError),
    /// The helper's fd is not a usable TAP.
    #[error("the TAP fd for {sandbox} is not usable")]
    Tap {
        /// The sandbox.
        sandbox: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The helper answered without a TAP fd.
    #[error("the attach helper for {0} sent no TAP fd")]
    NoFd(PathBuf),
    /// The network is not known to the driver.
    #[error("network {0:?} is not known to the driver")]
    UnknownNetwork(String),
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
    /// non-empty `ifname`, re-open that interface (daemon restart).
    ///
    /// # Errors
    ///
    /// [`DriverError`], with the helper's message when it failed.
    fn join(&self, _network: &Network, _endpoint: &mut Endpoint) -> Result<(), DriverError> {
        Ok(())
    }

    /// Take the endpoint out of its sandbox.
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
        let mut gateway = GatewayConfig {
            mac: gateway_mac(network),
            ipv4: Vec::new(),
            ipv6: Vec::new(),
            outbound: !network.internal,
        };
        for subnet in &network.subnets {
            match subnet.gateway {
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
        endpoint.mac = Some(endpoint_mac(&addrs));
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
        let gateways = network.subnets.iter().map(|s| s.gateway).collect();
        let request = AttachRequest {
            sandbox: endpoint.sandbox.clone(),
            action: AttachAction::Tap(TapConfig {
                ifname: (!endpoint.ifname.is_empty()).then(|| endpoint.ifname.clone()),
                mac: endpoint.mac.unwrap_or_else(|| {
                    endpoint_mac(
                        &endpoint
                            .addresses
                            .iter()
                            .map(|a| a.addr())
                            .collect::<Vec<_>>(),
                    )
                }),
                mtu: network.mtu,
                addresses: endpoint.addresses.clone(),
                gateways,
            }),
        };
        let (ifname, fd) = run_helper(&self.helper_exe, &request)?;
        let fd = fd.ok_or_else(|| DriverError::NoFd(endpoint.sandbox.clone()))?;
        let tap = Tap::from_fd(fd).map_err(|source| DriverError::Tap {
            sandbox: endpoint.sandbox.clone(),
            source,
        })?;
        let port = self.datapath.add_port(network_id, tap)?;
        endpoint.ifname = ifname;
        self.tables().ports.insert(endpoint.id.clone(), port);
        Ok(())
    }

    fn leave(&self, _: &Network, endpoint: &Endpoint) -> Result<(), DriverError> {
        let port = self.tables().ports.remove(&endpoint.id);
        let Some((port, _)) = port else {
            return Ok(());
        };
        if let Some(tap) = self.datapath.remove_port(port)? {
            // Not persistent any more: the interface disappears from the
            // sandbox when this last fd closes.
            if let Err(e) = tap.set_persistent(false) {
                tracing::warn!(ifname = tap.name(), error = %e, "could not clear TAP persistence");
            }
        }
        Ok(())
    }

    fn endpoints_changed(
        &self,
        network: &Network,
        endpoints: &[&Endpoint],
    ) -> Result<(), DriverError> {
        let Some(id) = self.tables().networks.get(&network.name).copied() else {
            return Ok(());
        };
        let zone = Zone {
            network_name: network.name.clone(),
            entries: endpoints
                .iter()
                .map(|e| ZoneEntry {
                    name: e.name.clone(),
                    aliases: e.aliases.clone(),
                    addresses: e.addresses.iter().map(|a| a.addr()).collect(),
                })
                .collect(),
        };
        self.datapath.set_zone(id, zone)?;
        Ok(())
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
}
