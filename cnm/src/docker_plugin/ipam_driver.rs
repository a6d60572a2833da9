//! `IpamDriver.*`: weft's IPAM as Docker's IPAM driver.
//!
//! Docker asks for a pool before it creates the network, and for the
//! gateway (and `--aux-address`es) before the network driver hears of the
//! network; container addresses come after. So a pool lives in the
//! plugin's state ([`super::state::DockerPool`]) until `CreateNetwork`
//! binds it to the weft network it is; from then on its addresses are the
//! weft network's, reserved in its IPAM (and, for an overlay network,
//! leased from the cluster allocator, unique across hosts).
//!
//! - `RequestPool`: `--subnet` (checked against every weft network's and
//!   every pool's subnet: an overlap is refused with the network it
//!   overlaps; the very subnet of a weft network is fine, as the Docker
//!   network will be that network), or, without it, the first free block
//!   of weft's default pools (IPv4 only: IPv6 needs `--subnet`). The same
//!   pool asked again is the same id, counted.
//! - `RequestAddress`: the gateway (the weft network's own if the subnet
//!   is one already; else `--gateway` or the subnet's first address);
//!   before binding, an `--aux-address` is noted and reserved at binding;
//!   after, a container's address is reserved in the weft network.
//! - `ReleaseAddress`, `ReleasePool`: the reverse; releasing what is not
//!   held is not an error (Docker's cleanup may repeat itself).

use std::collections::BTreeMap;
use std::net::IpAddr;

use axum::body::Bytes;
use axum::response::Response;
use ipnet::IpNet;

use super::protocol::{
    AddressSpacesResponse, IpamCapabilitiesResponse, ReleaseAddressRequest, ReleasePoolRequest,
    RequestAddressRequest, RequestAddressResponse, RequestPoolRequest, RequestPoolResponse,
    GATEWAY_ADDRESS_TYPE, REQUEST_ADDRESS_TYPE,
};
use super::state::DockerPool;
use super::{answer, parse_body, Plugin, PluginError};
use crate::model::Network;

/// weft's one address space (local and global alike: an overlay
/// network's addresses are unique across hosts through the cluster).
const ADDRESS_SPACE: &str = "weft";

/// A pool's id: the same subnet and range give the same id.
fn pool_id(subnet: IpNet, sub_pool: Option<IpNet>) -> String {
    match sub_pool {
        Some(range) => format!("weft:{subnet}:{range}"),
        None => format!("weft:{subnet}"),
    }
}

fn overlaps(a: IpNet, b: IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The first address after the network address: the gateway weft gives
/// a subnet without `--gateway` (as its IPAM does).
fn first_address(subnet: IpNet) -> IpAddr {
    match subnet {
        IpNet::V4(v4) => v4.hosts().next().map_or(subnet.addr(), IpAddr::V4),
        // ipnet counts an IPv6 subnet's first address as a host; the
        // subnet-router anycast address is no gateway.
        IpNet::V6(v6) => IpAddr::V6(std::net::Ipv6Addr::from(
            u128::from(v6.network()).saturating_add(1),
        )),
    }
}

fn with_prefix(ip: IpAddr, prefix: u8) -> String {
    IpNet::new(ip, prefix).map_or_else(|_| ip.to_string(), |n| n.to_string())
}

impl Plugin {
    /// `IpamDriver.GetCapabilities`.
    pub(super) async fn ipam_capabilities(
        &self,
        _call: &str,
        _body: &Bytes,
    ) -> Result<Response, PluginError> {
        Ok(answer(&IpamCapabilitiesResponse {
            requires_mac_address: false,
            requires_request_replay: false,
        }))
    }

    /// `IpamDriver.GetDefaultAddressSpaces`.
    pub(super) async fn default_address_spaces(
        &self,
        _call: &str,
        _body: &Bytes,
    ) -> Result<Response, PluginError> {
        Ok(answer(&AddressSpacesResponse {
            local: ADDRESS_SPACE,
            global: ADDRESS_SPACE,
        }))
    }

    /// `IpamDriver.RequestPool`.
    pub(super) async fn request_pool(
        &self,
        call: &str,
        body: &Bytes,
    ) -> Result<Response, PluginError> {
        let request: RequestPoolRequest = parse_body(call, body)?;
        if !request.address_space.is_empty() && request.address_space != ADDRESS_SPACE {
            tracing::debug!(
                space = request.address_space,
                "address space ignored: weft has one"
            );
        }
        if let Some(options) = request.options.as_ref().filter(|o| !o.is_empty()) {
            return Err(PluginError::refused(format!(
                "--ipam-opt {}: weft's IPAM takes no options: drop --ipam-opt",
                options.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        let state = self.controller.docker_state().await;
        let networks = self.controller.networks().await;
        let parse = |what: &str, text: &str| {
            text.parse::<IpNet>().map(|n| n.trunc()).map_err(|_| {
                PluginError::refused(format!(
                    "{what} {text:?} is not a subnet in CIDR notation (e.g. 10.240.0.0/24)"
                ))
            })
        };
        let sub_pool = match request.sub_pool.as_str() {
            "" => None,
            text => Some(parse("--ip-range", text)?),
        };
        let (subnet, auto) = if request.pool.is_empty() {
            if sub_pool.is_some() {
                return Err(PluginError::refused(
                    "--ip-range needs --subnet: give the subnet it is part of",
                ));
            }
            if request.v6 {
                return Err(PluginError::refused(
                    "weft's IPAM has no default IPv6 pool: give the IPv6 subnet with --subnet (e.g. --ipv6 --subnet fd00:db8::/64)",
                ));
            }
            let taken: Vec<IpNet> = state.pools.iter().map(|p| p.subnet).collect();
            (self.controller.free_default_subnet(&taken).await?, true)
        } else {
            (parse("--subnet", &request.pool)?, false)
        };
        if let Some(range) = sub_pool {
            if !subnet.contains(&range.network()) || range.prefix_len() < subnet.prefix_len() {
                return Err(PluginError::refused(format!(
                    "--ip-range {range} is not inside --subnet {subnet}: give a range inside the subnet"
                )));
            }
        }
        let id = pool_id(subnet, sub_pool);
        if state.pool(&id).is_some() {
            self.controller
                .update_docker_state(|state| {
                    if let Some(pool) = state.pool_mut(&id) {
                        pool.refs += 1;
                    }
                })
                .await?;
            return Ok(answer(&pool_answer(&id, subnet)));
        }
        if !auto {
            check_free(subnet, &networks, &state.pools)?;
        }
        let pool = DockerPool {
            id: id.clone(),
            subnet,
            sub_pool,
            auto,
            refs: 1,
            gateway: None,
            network: None,
            held: Vec::new(),
            pending: Vec::new(),
        };
        self.controller
            .update_docker_state(|state| state.pools.push(pool))
            .await?;
        tracing::info!(pool = id, auto, "Docker pool requested");
        Ok(answer(&pool_answer(&id, subnet)))
    }

    /// `IpamDriver.ReleasePool`.
    pub(super) async fn release_pool(
        &self,
        call: &str,
        body: &Bytes,
    ) -> Result<Response, PluginError> {
        let request: ReleasePoolRequest = parse_body(call, body)?;
        let state = self.controller.docker_state().await;
        let Some(pool) = state.pool(&request.pool_id).cloned() else {
            return Ok(answer(&serde_json::json!({})));
        };
        if pool.refs <= 1 {
            if let Some(network) = &pool.network {
                for ip in &pool.held {
                    let (id, ip) = (pool.id.clone(), *ip);
                    self.controller
                        .release_docker_address(network, ip, move |state| {
                            if let Some(p) = state.pool_mut(&id) {
                                p.held.retain(|a| *a != ip);
                            }
                        })
                        .await?;
                }
            }
        }
        self.controller
            .update_docker_state(|state| {
                if let Some(p) = state.pool_mut(&request.pool_id) {
                    p.refs = p.refs.saturating_sub(1);
                }
                state.pools.retain(|p| p.refs > 0);
            })
            .await?;
        Ok(answer(&serde_json::json!({})))
    }

    /// `IpamDriver.RequestAddress`.
    pub(super) async fn request_address(
        &self,
        call: &str,
        body: &Bytes,
    ) -> Result<Response, PluginError> {
        let request: RequestAddressRequest = parse_body(call, body)?;
        let state = self.controller.docker_state().await;
        let pool = state.pool(&request.pool_id).cloned().ok_or_else(|| {
            PluginError::refused(format!(
                "pool {} is not known to weft's IPAM (its state was reset?): remove the network and create it again",
                request.pool_id
            ))
        })?;
        let wanted = match request.address.as_str() {
            "" => None,
            text => Some(
                text.split('/')
                    .next()
                    .unwrap_or(text)
                    .parse::<IpAddr>()
                    .map_err(|_| PluginError::refused(format!("{text:?} is not an IP address")))?,
            ),
        };
        let gateway_asked = request
            .options
            .as_ref()
            .and_then(|o| o.get(REQUEST_ADDRESS_TYPE))
            .is_some_and(|t| t == GATEWAY_ADDRESS_TYPE);
        let v6 = pool.subnet.addr().is_ipv6();
        let bound = match &pool.network {
            Some(name) => self.controller.network(name).await,
            None => None,
        };
        let address = match (bound, gateway_asked) {
            (Some(network), true) => {
                let gateway = network_gateway(&network, v6).ok_or_else(|| {
                    PluginError::refused(format!(
                        "weft network {:?} has no IPv{} subnet",
                        network.name,
                        if v6 { 6 } else { 4 }
                    ))
                })?;
                check_gateway(&network.name, gateway, wanted)?;
                with_prefix(gateway, network.address_with_prefix(gateway).prefix_len())
            }
            (Some(network), false) => {
                let id = pool.id.clone();
                self.controller
                    .reserve_docker_address(&network.name, wanted, v6, move |state, a| {
                        if let Some(p) = state.pool_mut(&id) {
                            p.held.push(a.addr());
                        }
                    })
                    .await?
                    .to_string()
            }
            (None, true) => {
                // A weft network that already has this subnet keeps its
                // gateway (the Docker network will be it).
                let existing = self
                    .controller
                    .networks()
                    .await
                    .into_iter()
                    .find(|n| n.subnets.iter().any(|s| s.subnet == pool.subnet));
                let gateway = match existing.as_ref().and_then(|n| network_gateway(n, v6)) {
                    Some(gateway) => {
                        if let Some(network) = &existing {
                            check_gateway(&network.name, gateway, wanted)?;
                        }
                        gateway
                    }
                    None => wanted.unwrap_or_else(|| first_address(pool.subnet)),
                };
                if !pool.subnet.contains(&gateway) {
                    return Err(PluginError::refused(format!(
                        "--gateway {gateway} is not inside --subnet {}: give an address inside the subnet",
                        pool.subnet
                    )));
                }
                let id = pool.id.clone();
                self.controller
                    .update_docker_state(move |state| {
                        if let Some(p) = state.pool_mut(&id) {
                            p.gateway = Some(gateway);
                        }
                    })
                    .await?;
                with_prefix(gateway, pool.subnet.prefix_len())
            }
            (None, false) => {
                let ip = wanted.ok_or_else(|| {
                    PluginError::refused(format!(
                        "pool {} belongs to no weft network yet: create the network before its containers",
                        pool.id
                    ))
                })?;
                if !pool.subnet.contains(&ip) {
                    return Err(PluginError::refused(format!(
                        "--aux-address {ip} is not inside --subnet {}: give an address inside the subnet",
                        pool.subnet
                    )));
                }
                let id = pool.id.clone();
                self.controller
                    .update_docker_state(move |state| {
                        if let Some(p) = state.pool_mut(&id) {
                            p.pending.push(ip);
                        }
                    })
                    .await?;
                with_prefix(ip, pool.subnet.prefix_len())
            }
        };
        Ok(answer(&RequestAddressResponse {
            address,
            data: BTreeMap::new(),
        }))
    }

    /// `IpamDriver.ReleaseAddress`.
    pub(super) async fn release_address(
        &self,
        call: &str,
        body: &Bytes,
    ) -> Result<Response, PluginError> {
        let request: ReleaseAddressRequest = parse_body(call, body)?;
        let state = self.controller.docker_state().await;
        let ip = request
            .address
            .split('/')
            .next()
            .unwrap_or("")
            .parse::<IpAddr>();
        let (Some(pool), Ok(ip)) = (state.pool(&request.pool_id).cloned(), ip) else {
            return Ok(answer(&serde_json::json!({})));
        };
        let id = pool.id.clone();
        match &pool.network {
            Some(network) if pool.held.contains(&ip) => {
                self.controller
                    .release_docker_address(network, ip, move |state| {
                        if let Some(p) = state.pool_mut(&id) {
                            p.held.retain(|a| *a != ip);
                        }
                    })
                    .await?;
            }
            _ => {
                self.controller
                    .update_docker_state(move |state| {
                        if let Some(p) = state.pool_mut(&id) {
                            p.pending.retain(|a| *a != ip);
                            if p.gateway == Some(ip) {
                                p.gateway = None;
                            }
                        }
                    })
                    .await?;
            }
        }
        Ok(answer(&serde_json::json!({})))
    }
}

fn pool_answer(id: &str, subnet: IpNet) -> RequestPoolResponse {
    RequestPoolResponse {
        pool_id: id.to_owned(),
        pool: subnet.to_string(),
        data: BTreeMap::new(),
    }
}

fn network_gateway(network: &Network, v6: bool) -> Option<IpAddr> {
    network
        .subnets
        .iter()
        .find(|s| s.subnet.addr().is_ipv6() == v6)
        .map(|s| s.gateway)
}

fn check_gateway(
    network: &str,
    gateway: IpAddr,
    wanted: Option<IpAddr>,
) -> Result<(), PluginError> {
    match wanted {
        Some(asked) if asked != gateway => Err(PluginError::refused(format!(
            "--gateway {asked}: weft network {network:?} has gateway {gateway}: drop --gateway or give --gateway {gateway}"
        ))),
        _ => Ok(()),
    }
}

/// A `--subnet` may be a weft network's very subnet (the Docker network
/// will be that network) but may not overlap another one, or another
/// pool's.
fn check_free(
    subnet: IpNet,
    networks: &[Network],
    pools: &[DockerPool],
) -> Result<(), PluginError> {
    for network in networks {
        for s in &network.subnets {
            if s.subnet != subnet && overlaps(s.subnet, subnet) {
                return Err(PluginError::refused(format!(
                    "subnet {subnet} overlaps {} of weft network {:?}: choose another --subnet",
                    s.subnet, network.name
                )));
            }
        }
    }
    for pool in pools {
        if pool.subnet != subnet && overlaps(pool.subnet, subnet) {
            return Err(PluginError::refused(format!(
                "subnet {subnet} overlaps {} of another Docker network on weft: choose another --subnet",
                pool.subnet
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_ids_are_stable() {
        let subnet: IpNet = "10.240.0.0/24".parse().unwrap();
        assert_eq!(pool_id(subnet, None), "weft:10.240.0.0/24");
        assert_eq!(
            pool_id(subnet, Some("10.240.0.128/25".parse().unwrap())),
            "weft:10.240.0.0/24:10.240.0.128/25"
        );
    }

    #[test]
    fn overlapping_subnets_are_refused_with_the_network() {
        let pool = DockerPool {
            id: "weft:10.240.0.0/24".into(),
            subnet: "10.240.0.0/24".parse().unwrap(),
            sub_pool: None,
            auto: false,
            refs: 1,
            gateway: None,
            network: None,
            held: Vec::new(),
            pending: Vec::new(),
        };
        let e = check_free(
            "10.240.0.0/16".parse().unwrap(),
            &[],
            std::slice::from_ref(&pool),
        )
        .unwrap_err();
        assert!(
            e.message.contains("overlaps 10.240.0.0/24"),
            "{}",
            e.message
        );
        assert!(check_free("10.241.0.0/24".parse().unwrap(), &[], &[pool]).is_ok());
        assert_eq!(
            first_address("10.240.0.0/24".parse().unwrap()),
            "10.240.0.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            first_address("fd00:1::/64".parse().unwrap()),
            "fd00:1::1".parse::<IpAddr>().unwrap()
        );
    }
}
