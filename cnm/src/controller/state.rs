//! The state behind the controller's lock: networks, endpoints and IPAM,
//! the drivers, and the state file.

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use crate::api::types::SubnetRequest;
use crate::driver::NetworkDriver;
use crate::error_chain::error_chain;
use crate::host_routes;
use crate::model::{DriverKind, Endpoint, Network, SubnetInfo};

use super::error::ControllerError;
use super::Inner;

impl Inner {
    pub(super) fn network(&self, name: &str) -> Option<&Network> {
        self.state.networks.iter().find(|n| n.name == name)
    }

    pub(super) fn driver(&self, kind: DriverKind) -> Arc<dyn NetworkDriver> {
        match kind {
            DriverKind::Null => self.null.clone(),
            DriverKind::Host => self.host.clone(),
            DriverKind::Bridge => self.bridge.clone(),
            DriverKind::Overlay => self.overlay.clone(),
            DriverKind::Macvlan => self.macvlan.clone(),
            DriverKind::Ipvlan => self.ipvlan.clone(),
        }
    }

    /// Clean up after connects a crash cut short (see `crate::store`'s
    /// attach journal): an interface made for an endpoint the state does
    /// not hold is removed from its namespace. Entries of endpoints that
    /// made it into the state are just dropped.
    pub(super) fn recover_interrupted_attaches(&self) {
        for pending in self.store.pending_attaches() {
            let recorded = self
                .state
                .endpoints
                .iter()
                .any(|e| e.id == pending.endpoint);
            if !recorded && pending.netns.exists() {
                match self.bridge.remove_stray(&pending.netns, pending.mac) {
                    Ok(Some(ifname)) => tracing::warn!(
                        network = pending.network,
                        netns = %pending.netns.display(),
                        ifname,
                        "removed the interface of a connect the daemon's last run did not finish"
                    ),
                    Ok(None) => {}
                    Err(e) => tracing::error!(
                        network = pending.network,
                        netns = %pending.netns.display(),
                        mac = %pending.mac,
                        error = %error_chain(&e),
                        "could not remove the interface of an unfinished connect: delete it by hand"
                    ),
                }
            }
            self.store.clear_attach(&pending.endpoint);
        }
    }

    /// Tell the network's driver the names of all its endpoints (the
    /// embedded DNS serves them at once).
    pub(super) fn publish_names(&self, network: &Network) {
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

    pub(super) fn save(&self) -> Result<(), ControllerError> {
        self.store.save(&self.state).map_err(ControllerError::Store)
    }

    pub(super) fn add_subnets(
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

    pub(super) fn assign_addresses(
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
                assigned.push(network.address_with_prefix(*ip));
                families_done.push(ip.is_ipv4());
            }
            for v4 in [true, false] {
                let has_family = network
                    .subnets
                    .iter()
                    .any(|s| s.subnet.addr().is_ipv4() == v4);
                if has_family && !families_done.contains(&v4) {
                    let ip = self.state.ipam.allocate(&network.name, v4)?;
                    assigned.push(network.address_with_prefix(ip));
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

    pub(super) fn release_addresses(&mut self, endpoint: &Endpoint) {
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
