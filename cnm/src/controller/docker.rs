//! What the Docker plugin ([`crate::docker_plugin`]) needs of the
//! controller beyond the API's operations: its own state, saved in the
//! same state file; addresses reserved for Docker (through the cluster
//! allocator on overlay networks); and published ports added to and
//! removed from an endpoint that has joined (Docker's
//! `ProgramExternalConnectivity` comes after `Join`).

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use crate::docker_plugin::state::DockerState;
use crate::driver::DriverError;
use crate::host_routes;
use crate::model::{DriverKind, Endpoint, Network, PortMapping};

use super::error::ControllerError;
use super::Controller;

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
        let address = network.address_with_prefix(ip);
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
