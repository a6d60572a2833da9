//! Creating and deleting networks: validation, IPAM, the driver, the
//! state file; overlay networks are published in the cluster directory
//! first.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::SystemTime;

use weft_overlay::{ClusterNetworkId, Vni};

use crate::api::types::CreateNetworkRequest;
use crate::driver::NetworkDriver;
use crate::macvlan_driver::DNS_ADDRESS_OPTION;
use crate::model::{
    DriverKind, Network, Scope, DEFAULT_ENCRYPTED_OVERLAY_MTU, DEFAULT_MTU, DEFAULT_OVERLAY_MTU,
    MAX_MTU, MIN_MTU,
};
use crate::overlay_driver::{ENCRYPTED_OPTION, VNI_OPTION};

use super::error::ControllerError;
use super::records::{network_record, random_vni, RANDOM_VNI_MIN};
use super::validation::{random_id, validate_labels, validate_name, validate_options};
use super::{Controller, Inner};

impl Controller {
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
        validate_labels(&request.labels)?;
        let driver = match &request.driver {
            Some(name) => name.parse::<DriverKind>()?,
            None => DriverKind::Bridge,
        };
        // An overlay network is encrypted as -o encrypted says, else as
        // the daemon's --transport.
        let encrypted = driver == DriverKind::Overlay
            && request.options.get(ENCRYPTED_OPTION).map_or_else(
                || {
                    self.cluster
                        .as_ref()
                        .is_some_and(|c| c.quic().encrypt_by_default)
                },
                |v| v == "true",
            );
        let mtu = request.mtu.unwrap_or(match driver {
            DriverKind::Overlay if encrypted => DEFAULT_ENCRYPTED_OVERLAY_MTU,
            DriverKind::Overlay => DEFAULT_OVERLAY_MTU,
            _ => DEFAULT_MTU,
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
        for s in &request.subnets {
            let ranges = [("--subnet", Some(s.subnet)), ("--ip-range", s.ip_range)];
            for (what, given) in ranges {
                if let Some(given) = given.filter(|g| *g != g.trunc()) {
                    return Err(ControllerError::HostBitsSet {
                        what,
                        given,
                        network: given.trunc(),
                    });
                }
            }
        }
        if !driver.has_interfaces() && !request.subnets.is_empty() {
            return Err(ControllerError::SubnetsNotAllowed { driver });
        }
        validate_options(driver, &request.options)?;
        if !request.aux_addresses.is_empty() {
            if !driver.has_interfaces() {
                return Err(ControllerError::SubnetsNotAllowed { driver });
            }
            if driver == DriverKind::Overlay {
                return Err(ControllerError::InvalidOption {
                    key: "--aux-address".into(),
                    reason: "an overlay network's addresses are the cluster's: --aux-address is for bridge and macvlan networks".into(),
                });
            }
            for name in request.aux_addresses.keys() {
                validate_name("--aux-address name", name)?;
            }
        }
        if driver == DriverKind::Overlay {
            return self.create_overlay_network(request, mtu, encrypted).await;
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
        let mut options = request.options;
        if let Err(e) = reserve_extras(
            &mut inner,
            &name,
            driver,
            &request.aux_addresses,
            &mut options,
        ) {
            inner.state.ipam.remove_network(&name);
            return Err(e);
        }
        let network = Network {
            name: name.clone(),
            id: random_id(),
            driver,
            scope: Scope::Local,
            subnets,
            internal: request.internal,
            mtu,
            options,
            labels: request.labels,
            created: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            vni: None,
            aux_addresses: request.aux_addresses,
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
        let mut event = crate::events::Event::new("network", "create", &name);
        event.addresses = network
            .subnets
            .iter()
            .map(|s| s.subnet.to_string())
            .collect();
        self.events.emit(event);
        Ok(network)
    }

    /// `network create --driver overlay`: a cluster network, published in
    /// the directory so that every host makes it too.
    pub(super) async fn create_overlay_network(
        &self,
        mut request: CreateNetworkRequest,
        mtu: u32,
        encrypted: bool,
    ) -> Result<Network, ControllerError> {
        let cluster = self
            .cluster
            .clone()
            .ok_or(ControllerError::OverlayNeedsCluster)?;
        if encrypted && self.quic.is_none() {
            return Err(ControllerError::InvalidOption {
                key: ENCRYPTED_OPTION.into(),
                reason: "encrypted overlay networks ride QUIC, which authenticates hosts with the cluster key: start the daemons with --cluster-key FILE".into(),
            });
        }
        // Written out, so that every host reads the same whatever its own
        // --transport.
        request
            .options
            .insert(ENCRYPTED_OPTION.into(), encrypted.to_string());
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
                let vni = text
                    .parse::<u32>()
                    .ok()
                    .and_then(|v| Vni::new(v).ok())
                    .unwrap_or(Vni::from_low_bits(RANDOM_VNI_MIN));
                if let Some((_, other)) = cluster.network_by_vni(vni) {
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
            labels: request.labels,
            created: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            vni: Some(vni),
            aux_addresses: BTreeMap::new(),
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
        tracing::info!(network = name, vni = vni.get(), encrypted, subnets = ?network.subnets.iter().map(|s| s.subnet).collect::<Vec<_>>(), "overlay network created");
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
        self.events
            .emit(crate::events::Event::new("network", "remove", name));
        Ok(())
    }
}

/// Reserve in a new network's IPAM what is never handed out: the
/// `--aux-address`es, and a macvlan network's DNS address (given with
/// `--opt dns_address`, else taken from the subnet and recorded in
/// `options`).
fn reserve_extras(
    inner: &mut Inner,
    name: &str,
    driver: DriverKind,
    aux_addresses: &BTreeMap<String, IpAddr>,
    options: &mut BTreeMap<String, String>,
) -> Result<(), ControllerError> {
    for address in aux_addresses.values() {
        inner.state.ipam.reserve(name, *address)?;
    }
    if !driver.has_uplink() {
        return Ok(());
    }
    match options.get(DNS_ADDRESS_OPTION) {
        Some(given) => {
            let address: IpAddr = given.parse().map_err(|_| ControllerError::InvalidOption {
                key: DNS_ADDRESS_OPTION.into(),
                reason: format!("{given:?} is not an IP address"),
            })?;
            inner.state.ipam.reserve(name, address)?;
        }
        None => {
            let address = inner.state.ipam.allocate(name, true)?;
            options.insert(DNS_ADDRESS_OPTION.into(), address.to_string());
        }
    }
    Ok(())
}
