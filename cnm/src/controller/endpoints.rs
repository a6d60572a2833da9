//! Connecting sandboxes to networks and disconnecting them: addresses
//! (local IPAM, or the cluster allocator for overlay networks), the
//! driver's join and leave, names, resolv.conf, published ports.

use std::net::IpAddr;

use ipnet::IpNet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use weft_vswitch::MacAddr;

use weft_overlay::{ClusterNetworkId, EndpointRecord};

use crate::api::types::{ConnectRequest, DisconnectRequest};
use crate::model::{DriverKind, Endpoint, Network, PortMappingError};
use crate::resolv_conf;
use crate::store::PendingAttach;

use super::error::ControllerError;
use super::validation::{
    default_endpoint_name, random_id, validate_ifname, validate_mac, validate_name,
    validate_socket_path,
};
use super::{join_blocking, Controller, Inner};

/// Addresses a macvlan connect probes on the LAN before it gives up.
const LAN_PROBE_ATTEMPTS: usize = 8;

/// How long a connect waits for a cluster address block.
const CLUSTER_ALLOCATION_WAIT: Duration = Duration::from_secs(10);

/// Attempts at a cluster address that is not already used on this host
/// (by a static `--ip`).
const CLUSTER_ALLOCATION_ATTEMPTS: usize = 4;

impl Controller {
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
        let stream = request.kind.is_vm_socket();
        let sandbox = if request.docker.is_some() {
            // Docker's sandbox key: the namespace is made after the join,
            // and Docker moves the TAP there itself.
            PathBuf::from(&request.sandbox)
        } else if stream {
            // Checked on disk under the lock, below.
            PathBuf::from(&request.sandbox)
        } else {
            self.resolve_sandbox(&request.sandbox)?
        };
        if let (true, Some(ifname)) = (stream, &request.ifname) {
            return Err(ControllerError::InvalidInterface {
                field: "ifname",
                value: ifname.clone(),
                reason:
                    "a VM's stream endpoint has no interface of weft's: the guest names its own",
            });
        }
        let name = match request.name {
            Some(name) => name,
            // A VM's socket `vm1.sock` names it `vm1`.
            None if stream => default_endpoint_name(&sandbox.with_extension("")),
            None => default_endpoint_name(&sandbox),
        };
        validate_name("endpoint name", &name)?;
        for alias in &request.aliases {
            validate_name("alias", alias)?;
        }
        for mapping in &request.ports {
            mapping.validate()?;
        }
        if let Some(ifname) = &request.ifname {
            validate_ifname(ifname)?;
        }
        if let Some(mac) = request.mac {
            validate_mac(mac)?;
        }
        if let Some(limit) = &request.bandwidth {
            limit.validate()?;
        }
        // A limit of zeros is no limit.
        let bandwidth = request.bandwidth.filter(|limit| limit.is_limited());
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
        if bandwidth.is_some() && !network.driver.has_interfaces() {
            return Err(ControllerError::BandwidthNotAllowed {
                driver: network.driver,
            });
        }
        if stream {
            if !network.driver.has_interfaces() {
                return Err(ControllerError::StreamNotAllowed {
                    driver: network.driver,
                });
            }
            // weft's own endpoints first: probing a socket weft listens on
            // would replace its VM's connection.
            if let Some(e) = inner
                .state
                .endpoints
                .iter()
                .find(|e| e.kind.is_vm_socket() && e.sandbox == sandbox)
            {
                return Err(ControllerError::AlreadyConnected {
                    network: e.network.clone(),
                    sandbox,
                });
            }
            validate_socket_path(&sandbox)?;
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
            let addresses = request
                .ips
                .iter()
                .map(|ip| network.address_with_prefix(*ip));
            (addresses.collect(), Vec::new())
        } else {
            let (ips, cluster_ips) = self
                .cluster_addresses(&mut inner, &network, request.ips.clone())
                .await?;
            match inner.assign_addresses(&network, &ips) {
                Ok(addresses) => (addresses, cluster_ips),
                Err(e) => {
                    self.release_cluster_addresses(&network, &cluster_ips);
                    return Err(e);
                }
            }
        };
        let addresses = if network.driver.has_uplink() {
            self.probe_lan(&mut inner, &network, addresses, &request.ips, request.mac)
                .await?
        } else {
            addresses
        };
        let mut endpoint = Endpoint {
            id: random_id(),
            network: network.name.clone(),
            sandbox,
            name,
            aliases: request.aliases,
            ifname: String::new(),
            kind: request.kind,
            mac: None,
            addresses,
            resolv_conf: None,
            ports: request.ports,
            docker: request.docker,
            labels: request.labels,
            bandwidth,
            requested_ifname: request.ifname,
        };
        endpoint.mac = request.mac;
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
        // The journal first (see `crate::store`): a crash from here until
        // the state is saved leaves an entry the next start cleans up.
        let journaled = created.and_then(|()| match pending_attach(&network, &endpoint) {
            Some(pending) => inner.store.journal_attach(&pending).map_err(Into::into),
            None => Ok(()),
        });
        let joined = match journaled {
            Ok(()) => join_blocking(Arc::clone(&driver), network.clone(), endpoint.clone()).await,
            Err(e) => Err(e),
        };
        let mut endpoint = match joined {
            Ok(joined) => joined,
            Err(e) => {
                let _ = driver.delete_endpoint(&network, &endpoint);
                inner.release_addresses(&endpoint);
                self.release_cluster_addresses(&network, &cluster_ips);
                inner.store.clear_attach(&endpoint.id);
                return Err(e);
            }
        };
        if !stream {
            endpoint.resolv_conf = self.install_resolv_conf(&network, &endpoint);
        }
        inner.state.endpoints.push(endpoint.clone());
        let saved = inner.save();
        if let Err(e) = saved {
            if let Some(path) = &endpoint.resolv_conf {
                resolv_conf::remove(path);
            }
            inner.state.endpoints.retain(|x| x.id != endpoint.id);
            let _ = driver.leave(&network, &endpoint);
            inner.release_addresses(&endpoint);
            self.release_cluster_addresses(&network, &cluster_ips);
            inner.store.clear_attach(&endpoint.id);
            return Err(e);
        }
        inner.store.clear_attach(&endpoint.id);
        self.publish_endpoint(&network, &endpoint);
        inner.publish_names(&network);
        tracing::info!(network = network.name, sandbox = %endpoint.sandbox.display(), ifname = endpoint.ifname, addresses = ?endpoint.addresses, "endpoint joined");
        let mut event = crate::events::Event::new("endpoint", "connect", &network.name);
        event.endpoint = Some(endpoint.name.clone());
        event.sandbox = Some(endpoint.sandbox.display().to_string());
        event.addresses = endpoint.addresses.iter().map(ToString::to_string).collect();
        self.events.emit(event);
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
                    cluster.withdraw_endpoint(&id, mac);
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
        let mut event = crate::events::Event::new("endpoint", "disconnect", &network.name);
        event.endpoint = Some(endpoint.name.clone());
        event.sandbox = Some(sandbox.display().to_string());
        self.events.emit(event);
        Ok(())
    }

    /// A macvlan endpoint's addresses, checked on the network's LAN (see
    /// `crate::macvlan_driver::lan_holder`): a dynamic IPv4 address that
    /// another LAN host holds stays reserved, never handed out, and the
    /// next one is probed, up to [`LAN_PROBE_ATTEMPTS`]; a static one is
    /// refused. On an error every address of `addresses` is released.
    async fn probe_lan(
        &self,
        inner: &mut Inner,
        network: &Network,
        addresses: Vec<IpNet>,
        statics: &[IpAddr],
        mac: Option<MacAddr>,
    ) -> Result<Vec<IpNet>, ControllerError> {
        let mut checked = Vec::with_capacity(addresses.len());
        let mut pending = addresses.into_iter();
        while let Some(address) = pending.next() {
            let is_static = statics.contains(&address.addr());
            match self
                .free_on_lan(inner, network, address, is_static, mac)
                .await
            {
                Ok(free) => checked.push(free),
                Err(e) => {
                    for other in checked.iter().chain(pending.as_slice()) {
                        let _ = inner.state.ipam.release(&network.name, other.addr());
                    }
                    return Err(e);
                }
            }
        }
        Ok(checked)
    }

    /// `address`, or the next one IPAM gives, that no LAN host answers for
    /// (see [`Controller::probe_lan`]). On an error, the address in hand is
    /// released, unless a LAN host holds it (then it stays reserved).
    async fn free_on_lan(
        &self,
        inner: &mut Inner,
        network: &Network,
        mut address: IpNet,
        is_static: bool,
        mac: Option<MacAddr>,
    ) -> Result<IpNet, ControllerError> {
        // Bounded: past LAN_PROBE_ATTEMPTS held addresses, an error.
        let mut attempt = 0;
        loop {
            let IpAddr::V4(v4) = address.addr() else {
                return Ok(address);
            };
            let prober = mac.unwrap_or_else(|| crate::driver::endpoint_mac(&[address.addr()]));
            let probed = {
                let network = network.clone();
                tokio::task::spawn_blocking(move || {
                    crate::macvlan_driver::lan_holder(&network, v4, prober)
                })
                .await
            };
            let holder = match probed {
                Ok(Ok(None)) => return Ok(address),
                Ok(Ok(Some(holder))) => holder,
                Ok(Err(source)) => {
                    let _ = inner.state.ipam.release(&network.name, v4.into());
                    return Err(ControllerError::Driver {
                        driver: network.driver,
                        source,
                    });
                }
                Err(join) => std::panic::resume_unwind(join.into_panic()),
            };
            if is_static || attempt >= LAN_PROBE_ATTEMPTS {
                let _ = inner.state.ipam.release(&network.name, v4.into());
                return Err(ControllerError::AddressOnLan {
                    address: address.addr(),
                    holder,
                });
            }
            // Kept reserved: another LAN host has it.
            tracing::warn!(network = network.name, address = %address.addr(), holder = %holder, "address in use on the LAN: never handed out, taking the next");
            address = network.address_with_prefix(inner.state.ipam.allocate(&network.name, true)?);
            attempt += 1;
        }
    }

    /// The addresses of a new endpoint: the static ones (`--ip`), and for
    /// an overlay network one from the cluster allocator for each family
    /// of its subnet that has none (returned apart too, to release them if
    /// the connect fails). Other drivers: the static ones as given.
    pub(super) async fn cluster_addresses(
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

    pub(super) fn release_cluster_addresses(&self, network: &Network, ips: &[IpAddr]) {
        if let Some(cluster) = &self.cluster {
            let id = ClusterNetworkId(network.id.clone());
            for ip in ips {
                cluster.release(&id, *ip);
            }
        }
    }

    /// Announce an overlay network's local endpoint to every host.
    pub(super) fn publish_endpoint(&self, network: &Network, endpoint: &Endpoint) {
        if network.driver != DriverKind::Overlay {
            return;
        }
        let (Some(cluster), Some(mac)) = (&self.cluster, endpoint.mac) else {
            return;
        };
        let record = EndpointRecord {
            network: ClusterNetworkId(network.id.clone()),
            mac,
            ips: endpoint.addresses.iter().map(|a| a.addr()).collect(),
            name: Some(endpoint.name.clone()),
            aliases: endpoint.aliases.clone(),
        };
        if let Err(e) = cluster.publish_endpoint(record) {
            tracing::error!(network = network.name, endpoint = endpoint.name, error = %e, "endpoint not announced to the cluster: other hosts will not reach it by name or without flooding");
        }
    }
}

/// The journal entry of an endpoint about to be attached: where its TAP is
/// made (a Docker endpoint's in the daemon's own namespace, for Docker to
/// move) and its MAC; None for drivers that make no interface.
fn pending_attach(network: &Network, endpoint: &Endpoint) -> Option<PendingAttach> {
    // A stream endpoint makes nothing in a namespace: its socket is
    // bound again (or its stale file removed) by the next start.
    if !network.driver.has_interfaces() || endpoint.kind.is_vm_socket() {
        return None;
    }
    let netns = if endpoint.docker.is_some() {
        PathBuf::from(crate::driver::OWN_NETNS)
    } else {
        endpoint.sandbox.clone()
    };
    Some(PendingAttach {
        endpoint: endpoint.id.clone(),
        network: network.name.clone(),
        netns,
        mac: crate::driver::interface_mac(endpoint),
    })
}
