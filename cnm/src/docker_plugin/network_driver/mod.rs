//! `NetworkDriver.*`: Docker networks and endpoints as weft networks and
//! endpoints.
//!
//! | call | what weft does |
//! |---|---|
//! | `CreateNetwork` | make the weft network (`weft.network`, else `docker-ID12`) with Docker's subnets and gateways and the `-o` options, or join the one of that name; bind weft IPAM pools to it |
//! | `DeleteNetwork` | forget it; remove the weft network if this Docker network made it (refused while endpoints are on it) |
//! | `CreateEndpoint` | reserve Docker's addresses (or choose them), choose the MAC if Docker did not; answer what weft chose |
//! | `Join` | connect: the attach helper makes the TAP `SrcName` in weft's namespace, its fd becomes a switch port; answer the gateway |
//! | `ProgramExternalConnectivity` | publish the `-p` ports on the host |
//! | `RevokeExternalConnectivity` | close them |
//! | `Leave` | disconnect: the TAP goes, the port too |
//! | `DeleteEndpoint` | release what `CreateEndpoint` reserved |
//! | `EndpointOperInfo` | the weft network, interface, MAC, addresses, ports |
//!
//! Options (`docker network create -o K=V`): `weft.network=NAME`,
//! `weft.driver=bridge|overlay`, `com.docker.network.driver.mtu=N` (or
//! `--mtu`'s key), and the weft driver's own options (`host_loopback`;
//! `vni`, `peers`), checked by the controller. Docker's `--internal` and
//! `--ipv6` arrive as their own options. Another `com.docker.network.*`
//! key (one of Docker's bridge driver) is refused by name.

use std::collections::BTreeMap;
use std::net::IpAddr;

use axum::body::Bytes;
use axum::response::Response;
use ipnet::IpNet;
use serde_json::Value;
use weft_vswitch::MacAddr;

use super::protocol::{
    CapabilitiesResponse, CreateEndpointRequest, CreateEndpointResponse, CreateNetworkRequest,
    EndpointInterface, EndpointRequest, InterfaceName, IpamData, JoinRequest, JoinResponse,
    NetworkRequest, OperInfoResponse, PortBinding, ProgramExternalConnectivityRequest, DRIVER_MTU,
    ENABLE_IPV6, GENERIC_OPTIONS, INTERNAL, PORT_MAP,
};
use super::state::{DockerEndpoint, DockerNetwork};
use super::{answer, parse_body, short_id, Plugin, PluginError};
use crate::api::types::{
    ConnectRequest, CreateNetworkRequest as WeftCreate, DisconnectRequest, SubnetRequest,
};
use crate::driver::endpoint_mac;
use crate::model::{DockerAttachment, DriverKind, Network, PortMapping, PortProto};
use crate::ControllerError;
use weft_datapath::published::PublishError;

/// `-o weft.network=NAME`: the weft network this Docker network is.
pub const NETWORK_OPTION: &str = "weft.network";
/// `-o weft.driver=bridge|overlay`: the weft driver of a network made.
pub const DRIVER_OPTION: &str = "weft.driver";

/// The prefix of the interface's name in the container (`eth0`, ...).
const DST_PREFIX: &str = "eth";

/// A Docker network's options, sorted out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkOptions {
    /// `weft.network`.
    pub weft_network: Option<String>,
    /// `weft.driver`.
    pub driver: Option<DriverKind>,
    /// The MTU asked for.
    pub mtu: Option<u32>,
    /// `--internal`.
    pub internal: bool,
    /// `--ipv6`.
    pub ipv6: bool,
    /// The weft driver's own options.
    pub driver_options: BTreeMap<String, String>,
}

/// Sort out `CreateNetwork`'s options.
///
/// # Errors
///
/// A message naming the option and what to write, for a bad
/// `weft.driver` or MTU, or a `com.docker.network.*` key weft does not
/// take.
pub fn parse_network_options(options: &BTreeMap<String, Value>) -> Result<NetworkOptions, String> {
    let mut parsed = NetworkOptions {
        ipv6: options.get(ENABLE_IPV6).is_some_and(is_true),
        internal: options.get(INTERNAL).is_some_and(is_true),
        ..NetworkOptions::default()
    };
    let generic = match options.get(GENERIC_OPTIONS) {
        None | Some(Value::Null) => return Ok(parsed),
        Some(Value::Object(map)) => map,
        Some(other) => {
            return Err(format!(
                "{GENERIC_OPTIONS} is not a map of options: {other}"
            ))
        }
    };
    for (key, value) in generic {
        let text = match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        match key.as_str() {
            NETWORK_OPTION => parsed.weft_network = Some(text),
            DRIVER_OPTION => match text.parse::<DriverKind>() {
                Ok(kind @ (DriverKind::Bridge | DriverKind::Overlay)) => parsed.driver = Some(kind),
                _ => {
                    return Err(format!(
                        "-o {DRIVER_OPTION}={text}: use {DRIVER_OPTION}=bridge or {DRIVER_OPTION}=overlay"
                    ))
                }
            },
            DRIVER_MTU => match text.parse::<u32>() {
                Ok(mtu) => parsed.mtu = Some(mtu),
                Err(_) => return Err(format!("-o {DRIVER_MTU}={text}: the MTU is a number, e.g. 1400")),
            },
            ENABLE_IPV6 => parsed.ipv6 |= text == "true",
            INTERNAL => parsed.internal |= text == "true",
            other if other.starts_with("com.docker.network.") => {
                return Err(format!(
                    "-o {other}: an option of Docker's own drivers, not of weft: weft takes {NETWORK_OPTION}=NAME, {DRIVER_OPTION}=bridge|overlay, {DRIVER_MTU}=N and its drivers' options (bridge: host_loopback=true|false; overlay: vni=N, peers=IP[,IP...])"
                ))
            }
            other => {
                parsed.driver_options.insert(other.to_owned(), text);
            }
        }
    }
    Ok(parsed)
}

fn is_true(value: &Value) -> bool {
    match value {
        Value::Bool(b) => *b,
        Value::String(s) => s == "true",
        _ => false,
    }
}

/// A CIDR of Docker's (`10.0.0.1/24`): the address and the network.
fn parse_cidr(what: &str, text: &str) -> Result<IpNet, PluginError> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| {
            PluginError::refused(format!(
                "{what} {text:?} is not an address in CIDR notation"
            ))
        })
}

/// The network's gateway of the family of `v6`, if it has that family.
fn gateway_of(network: &Network, v6: bool) -> Option<IpAddr> {
    network
        .subnets
        .iter()
        .find(|s| s.subnet.addr().is_ipv6() == v6)
        .map(|s| s.gateway)
}

/// A Docker port binding as a weft published port.
///
/// # Errors
///
/// A message for SCTP, a bad host address or a container port 0.
pub fn port_mapping(binding: &PortBinding) -> Result<PortMapping, String> {
    let proto = match binding.proto {
        6 => PortProto::Tcp,
        17 => PortProto::Udp,
        other => {
            let name = if other == 132 {
                "sctp".to_owned()
            } else {
                format!("protocol {other}")
            };
            return Err(format!(
                "-p {}:{}/{name}: weft publishes TCP and UDP ports only",
                binding.host_port, binding.port
            ));
        }
    };
    let host_ip = match binding.host_ip.as_deref() {
        None | Some("") => None,
        Some(text) => Some(
            text.parse::<IpAddr>()
                .map_err(|_| format!("-p {text}:...: {text:?} is not an IP address"))?,
        ),
    };
    let mapping = PortMapping {
        host_ip,
        host_port: binding.host_port,
        container_port: binding.port,
        proto,
    };
    mapping.validate().map_err(|e| e.to_string())?;
    Ok(mapping)
}

impl Plugin {
    /// `NetworkDriver.GetCapabilities`.
    pub(super) async fn network_capabilities(
        &self,
        _call: &str,
        _body: &Bytes,
    ) -> Result<Response, PluginError> {
        Ok(answer(&CapabilitiesResponse {
            scope: "local",
            connectivity_scope: "global",
        }))
    }

    /// `NetworkDriver.DiscoverNew` and `DiscoverDelete`: weft's gossip
    /// finds its hosts itself, so Docker's node discovery (swarm only) is
    /// answered and not used.
    pub(super) async fn discover(
        &self,
        call: &str,
        _body: &Bytes,
    ) -> Result<Response, PluginError> {
        tracing::debug!(
            call,
            "Docker discovery notification ignored: weft's gossip finds hosts"
        );
        Ok(answer(&serde_json::json!({})))
    }

    /// `NetworkDriver.CreateNetwork`.
    pub(super) async fn create_network(
        &self,
        call: &str,
        body: &Bytes,
    ) -> Result<Response, PluginError> {
        let request: CreateNetworkRequest = parse_body(call, body)?;
        let state = self.controller.docker_state().await;
        if state.network(&request.network_id).is_some() {
            return Ok(answer(&serde_json::json!({})));
        }
        let options = parse_network_options(&request.options.clone().unwrap_or_default())
            .map_err(PluginError::refused)?;
        let name = options
            .weft_network
            .clone()
            .unwrap_or_else(|| format!("docker-{}", short_id(&request.network_id)));
        let data: Vec<IpamData> = request
            .ipv4_data
            .iter()
            .chain(request.ipv6_data.iter())
            .flatten()
            .filter(|d| !d.pool.is_empty())
            .cloned()
            .collect();
        let mut subnets = Vec::with_capacity(data.len());
        for d in &data {
            let subnet = parse_cidr("pool", &d.pool)?.trunc();
            if subnet.prefix_len() == 0 {
                // Docker's null IPAM (`--ipam-driver null`): no subnet;
                // weft chooses one, and the endpoints' addresses.
                continue;
            }
            let gateway = match d.gateway.as_deref() {
                Some(g) if !g.is_empty() => Some(parse_cidr("gateway", g)?.addr()),
                _ => None,
            };
            subnets.push((subnet, gateway));
        }
        let created = match self.controller.network(&name).await {
            Some(existing) => {
                self.check_joinable(&existing, &options, &subnets, &state)?;
                false
            }
            None => {
                let requests = subnets
                    .iter()
                    .map(|(subnet, gateway)| SubnetRequest {
                        subnet: *subnet,
                        gateway: *gateway,
                        ip_range: state
                            .pools
                            .iter()
                            .find(|p| p.network.is_none() && p.subnet == *subnet)
                            .and_then(|p| p.sub_pool),
                    })
                    .collect();
                let made = self
                    .controller
                    .create_network(WeftCreate {
                        name: name.clone(),
                        driver: Some(options.driver.unwrap_or(DriverKind::Bridge).to_string()),
                        subnets: requests,
                        internal: options.internal,
                        mtu: options.mtu,
                        options: options.driver_options.clone(),
                        labels: Default::default(),
                        aux_addresses: Default::default(),
                    })
                    .await;
                if let Err(e) = made {
                    return Err(self.explain_create_error(e, &subnets).await);
                }
                true
            }
        };
        let network = self.controller.network(&name).await.ok_or_else(|| {
            PluginError::refused(format!("weft network {name:?} vanished while it was made"))
        })?;
        let network_id = request.network_id.clone();
        let bound = self
            .controller
            .update_docker_state(|state| {
                state.networks.push(DockerNetwork {
                    id: network_id,
                    weft_network: name.clone(),
                    created,
                });
                // Bind the pools of these subnets (an auto pool to the
                // network's subnet of its family).
                let mut pending = Vec::new();
                for (subnet, _) in &subnets {
                    let pool = state
                        .pools
                        .iter_mut()
                        .find(|p| p.network.is_none() && p.subnet == *subnet);
                    if let Some(pool) = pool {
                        pool.network = Some(name.clone());
                        pool.gateway = None;
                        if pool.auto {
                            if let Some(real) = network
                                .subnets
                                .iter()
                                .find(|s| s.subnet.addr().is_ipv6() == subnet.addr().is_ipv6())
                            {
                                pool.subnet = real.subnet;
                            }
                        }
                        pending.extend(pool.pending.drain(..).map(|ip| (pool.id.clone(), ip)));
                    }
                }
                pending
            })
            .await;
        let pending = match bound {
            Ok(pending) => pending,
            Err(e) => {
                if created {
                    let _ = self.controller.delete_network(&name).await;
                }
                return Err(e.into());
            }
        };
        for (pool_id, ip) in pending {
            let reserved = self
                .controller
                .reserve_docker_address(&name, Some(ip), ip.is_ipv6(), |state, a| {
                    if let Some(pool) = state.pool_mut(&pool_id) {
                        pool.held.push(a.addr());
                    }
                })
                .await;
            if let Err(e) = reserved {
                tracing::warn!(network = name, address = %ip, error = %crate::error_chain::error_chain(&e), "auxiliary address not reserved");
            }
        }
        tracing::info!(
            network = name,
            docker_network = short_id(&request.network_id),
            created,
            "Docker network is a weft network"
        );
        Ok(answer(&serde_json::json!({})))
    }

    /// A Docker network may be an existing weft network when the driver
    /// and the subnets agree.
    fn check_joinable(
        &self,
        existing: &Network,
        options: &NetworkOptions,
        subnets: &[(IpNet, Option<IpAddr>)],
        state: &super::state::DockerState,
    ) -> Result<(), PluginError> {
        let name = &existing.name;
        if let Some(driver) = options.driver {
            if driver != existing.driver {
                return Err(PluginError::refused(format!(
                    "weft network {name:?} exists with driver {}: drop -o {DRIVER_OPTION}={driver} or name another network with -o {NETWORK_OPTION}=NAME",
                    existing.driver
                )));
            }
        }
        if !existing.driver.has_interfaces() {
            return Err(PluginError::refused(format!(
                "weft network {name:?} has driver {}, which has no interfaces for containers: use a bridge or overlay network",
                existing.driver
            )));
        }
        for (key, value) in &options.driver_options {
            if existing.options.get(key) != Some(value) {
                return Err(PluginError::refused(format!(
                    "-o {key}={value}: weft network {name:?} exists and keeps its own options ({:?}): drop the option",
                    existing.options
                )));
            }
        }
        let theirs: Vec<String> = existing
            .subnets
            .iter()
            .map(|s| s.subnet.to_string())
            .collect();
        for (subnet, _) in subnets {
            let same = existing.subnets.iter().any(|s| s.subnet == *subnet);
            let auto = state
                .pools
                .iter()
                .any(|p| p.network.is_none() && p.auto && p.subnet == *subnet);
            if !same && !auto {
                return Err(PluginError::refused(format!(
                    "weft network {name:?} has subnet {}, not {subnet}: give --subnet {} (or no --subnet with --ipam-driver weft)",
                    theirs.join(", "),
                    theirs.first().map_or("", String::as_str)
                )));
            }
        }
        Ok(())
    }

    /// A clearer word for a subnet that is already a weft network's.
    async fn explain_create_error(
        &self,
        e: crate::ControllerError,
        subnets: &[(IpNet, Option<IpAddr>)],
    ) -> PluginError {
        for network in self.controller.networks().await {
            if network
                .subnets
                .iter()
                .any(|s| subnets.iter().any(|(subnet, _)| s.subnet == *subnet))
            {
                return PluginError::refused(format!(
                    "{}: to make this Docker network be weft network {:?}, add -o {NETWORK_OPTION}={}",
                    crate::error_chain::error_chain(&e),
                    network.name,
                    network.name
                ));
            }
        }
        e.into()
    }

    /// `NetworkDriver.DeleteNetwork`.
    pub(super) async fn delete_network(
        &self,
        call: &str,
        body: &Bytes,
    ) -> Result<Response, PluginError> {
        let request: NetworkRequest = parse_body(call, body)?;
        let state = self.controller.docker_state().await;
        let Some(docker) = state.network(&request.network_id).cloned() else {
            return Ok(answer(&serde_json::json!({})));
        };
        let others = state
            .networks
            .iter()
            .any(|n| n.id != docker.id && n.weft_network == docker.weft_network);
        // Forgotten first: weft refuses to remove a network that a Docker
        // network is.
        self.controller
            .update_docker_state(|state| {
                state.networks.retain(|n| n.id != docker.id);
                // Another Docker network that is the same weft network
                // removes it when it goes.
                if docker.created {
                    if let Some(heir) = state
                        .networks
                        .iter_mut()
                        .find(|n| n.weft_network == docker.weft_network)
                    {
                        heir.created = true;
                    }
                }
            })
            .await?;
        let exists = self
            .controller
            .network(&docker.weft_network)
            .await
            .is_some();
        if docker.created && !others && exists {
            if let Err(e) = self.controller.delete_network(&docker.weft_network).await {
                let restored = docker.clone();
                let _ = self
                    .controller
                    .update_docker_state(|state| state.networks.push(restored))
                    .await;
                return Err(e.into());
            }
        }
        tracing::info!(
            network = docker.weft_network,
            docker_network = short_id(&docker.id),
            "Docker network removed"
        );
        Ok(answer(&serde_json::json!({})))
    }

    /// `NetworkDriver.CreateEndpoint`.
    pub(super) async fn create_endpoint(
        &self,
        call: &str,
        body: &Bytes,
    ) -> Result<Response, PluginError> {
        let request: CreateEndpointRequest = parse_body(call, body)?;
        let state = self.controller.docker_state().await;
        if let Some(known) = state.endpoint(&request.endpoint_id) {
            return Ok(answer(&create_endpoint_answer(&known.reply)));
        }
        let docker = state.network(&request.network_id).cloned().ok_or_else(|| {
            PluginError::refused(format!(
                "Docker network {} is not known to weft (its state was reset?): remove it (docker network rm) and create it again",
                short_id(&request.network_id)
            ))
        })?;
        let network = self.weft_network(&docker.weft_network).await?;
        let given = request.interface.clone().unwrap_or_default();
        let mut addresses = Vec::new();
        let mut reply = EndpointInterface::default();
        let mut docker_chose = Vec::new();
        for (text, v6) in [(&given.address, false), (&given.address_ipv6, true)] {
            if !text.is_empty() {
                docker_chose.push((parse_cidr("address", text)?.addr(), v6));
            }
        }
        let mac = if given.mac_address.is_empty() {
            None
        } else {
            Some(given.mac_address.parse::<MacAddr>().map_err(|_| {
                PluginError::refused(format!("MAC address {:?} is not valid", given.mac_address))
            })?)
        };
        let endpoint_id = request.endpoint_id.clone();
        // Recorded first, so that what is reserved next is noted in it.
        self.controller
            .update_docker_state(|state| {
                state.endpoints.push(DockerEndpoint {
                    id: endpoint_id.clone(),
                    network_id: docker.id.clone(),
                    weft_network: network.name.clone(),
                    addresses: Vec::new(),
                    mac: mac.unwrap_or(MacAddr([0; 6])),
                    owned: Vec::new(),
                    src_name: src_name(&endpoint_id),
                    reply: EndpointInterface::default(),
                });
            })
            .await?;
        let reserved: Result<(), PluginError> = async {
            if docker_chose.is_empty() {
                for v6 in [false, true] {
                    if gateway_of(&network, v6).is_none() {
                        continue;
                    }
                    let a = self
                        .reserve_owned(&network.name, &endpoint_id, None, v6)
                        .await?;
                    addresses.push(a);
                    if v6 {
                        reply.address_ipv6 = a.to_string();
                    } else {
                        reply.address = a.to_string();
                    }
                }
            }
            for (ip, v6) in &docker_chose {
                if state.held_by_pool(&network.name, *ip) {
                    addresses.push(network.address_with_prefix(*ip));
                } else {
                    let a = self
                        .reserve_owned(&network.name, &endpoint_id, Some(*ip), *v6)
                        .await?;
                    addresses.push(a);
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = reserved {
            self.forget_endpoint(&endpoint_id).await;
            return Err(e);
        }
        let mac = mac.unwrap_or_else(|| {
            reply_mac(
                &mut reply,
                &addresses.iter().map(IpNet::addr).collect::<Vec<_>>(),
            )
        });
        let saved = self
            .controller
            .update_docker_state(|state| {
                if let Some(e) = state.endpoint_mut(&endpoint_id) {
                    e.addresses = addresses.clone();
                    e.mac = mac;
                    e.reply = reply.clone();
                }
            })
            .await;
        if let Err(e) = saved {
            self.forget_endpoint(&endpoint_id).await;
            return Err(e.into());
        }
        tracing::info!(network = network.name, endpoint = short_id(&endpoint_id), addresses = ?addresses, mac = %mac, "Docker endpoint created");
        Ok(answer(&create_endpoint_answer(&reply)))
    }

    /// Reserve an address for an endpoint, noted as the endpoint's own.
    async fn reserve_owned(
        &self,
        network: &str,
        endpoint_id: &str,
        wanted: Option<IpAddr>,
        v6: bool,
    ) -> Result<IpNet, PluginError> {
        let id = endpoint_id.to_owned();
        Ok(self
            .controller
            .reserve_docker_address(network, wanted, v6, move |state, a| {
                if let Some(e) = state.endpoint_mut(&id) {
                    e.owned.push(a.addr());
                }
            })
            .await?)
    }

    /// Release what an endpoint owns and forget it (best effort: used on
    /// failure paths and by `DeleteEndpoint`).
    async fn forget_endpoint(&self, endpoint_id: &str) {
        let state = self.controller.docker_state().await;
        let Some(endpoint) = state.endpoint(endpoint_id).cloned() else {
            return;
        };
        for ip in &endpoint.owned {
            let id = endpoint_id.to_owned();
            let ip = *ip;
            let released = self
                .controller
                .release_docker_address(&endpoint.weft_network, ip, move |state| {
                    if let Some(e) = state.endpoint_mut(&id) {
                        e.owned.retain(|a| *a != ip);
                    }
                })
                .await;
            if let Err(e) = released {
                tracing::warn!(address = %ip, error = %crate::error_chain::error_chain(&e), "releasing a Docker endpoint's address");
            }
        }
        let forgotten = self
            .controller
            .update_docker_state(|state| state.endpoints.retain(|e| e.id != endpoint_id))
            .await;
        if let Err(e) = forgotten {
            tracing::warn!(error = %crate::error_chain::error_chain(&e), "forgetting a Docker endpoint");
        }
    }

    async fn weft_network(&self, name: &str) -> Result<Network, PluginError> {
        self.controller.network(name).await.ok_or_else(|| {
            PluginError::refused(format!(
                "weft network {name:?} is gone (removed with weft network rm, or deleted on another host): remove this Docker network (docker network rm)"
            ))
        })
    }

    /// `NetworkDriver.Join`.
    pub(super) async fn join(&self, call: &str, body: &Bytes) -> Result<Response, PluginError> {
        let request: JoinRequest = parse_body(call, body)?;
        let state = self.controller.docker_state().await;
        let endpoint = state
            .endpoint(&request.endpoint_id)
            .cloned()
            .ok_or_else(|| {
                PluginError::refused(format!(
                "Docker endpoint {} is not known to weft: remove the container and start it again",
                short_id(&request.endpoint_id)
            ))
            })?;
        let network = self.weft_network(&endpoint.weft_network).await?;
        if self
            .controller
            .docker_endpoint(&endpoint.id)
            .await
            .is_none()
        {
            let joined = self
                .controller
                .connect(
                    &network.name,
                    ConnectRequest {
                        sandbox: request.sandbox_key.clone(),
                        kind: crate::model::EndpointKind::Tap,
                        name: Some(format!("docker-{}", short_id(&endpoint.id))),
                        ips: endpoint.addresses.iter().map(IpNet::addr).collect(),
                        docker: Some(DockerAttachment {
                            network_id: endpoint.network_id.clone(),
                            endpoint_id: endpoint.id.clone(),
                            src_name: endpoint.src_name.clone(),
                        }),
                        ..ConnectRequest::default()
                    },
                )
                .await?;
            tracing::info!(
                network = network.name,
                endpoint = short_id(&endpoint.id),
                tap = joined.ifname,
                sandbox = request.sandbox_key,
                "Docker endpoint joined"
            );
        }
        let has = |v6: bool| endpoint.addresses.iter().any(|a| a.addr().is_ipv6() == v6);
        let gateway = |v6: bool| {
            gateway_of(&network, v6)
                .filter(|_| has(v6) && !network.internal)
                .map(|g| g.to_string())
                .unwrap_or_default()
        };
        Ok(answer(&JoinResponse {
            interface_name: InterfaceName {
                src_name: endpoint.src_name.clone(),
                dst_prefix: DST_PREFIX,
            },
            gateway: gateway(false),
            gateway_ipv6: gateway(true),
            static_routes: Vec::new(),
            disable_gateway_service: false,
        }))
    }

    /// `NetworkDriver.Leave`.
    pub(super) async fn leave(&self, call: &str, body: &Bytes) -> Result<Response, PluginError> {
        let request: EndpointRequest = parse_body(call, body)?;
        self.disconnect(&request.endpoint_id).await?;
        Ok(answer(&serde_json::json!({})))
    }

    async fn disconnect(&self, endpoint_id: &str) -> Result<(), PluginError> {
        if let Some((network, endpoint)) = self.controller.docker_endpoint(endpoint_id).await {
            self.controller
                .disconnect(
                    &network.name,
                    DisconnectRequest {
                        sandbox: endpoint.sandbox.to_string_lossy().into_owned(),
                    },
                )
                .await?;
            tracing::info!(
                network = network.name,
                endpoint = short_id(endpoint_id),
                "Docker endpoint left"
            );
        }
        Ok(())
    }

    /// `NetworkDriver.DeleteEndpoint`.
    pub(super) async fn delete_endpoint(
        &self,
        call: &str,
        body: &Bytes,
    ) -> Result<Response, PluginError> {
        let request: EndpointRequest = parse_body(call, body)?;
        // A Leave that never came (Docker's cleanup after a crash).
        self.disconnect(&request.endpoint_id).await?;
        self.forget_endpoint(&request.endpoint_id).await;
        Ok(answer(&serde_json::json!({})))
    }

    /// `NetworkDriver.EndpointOperInfo`.
    pub(super) async fn endpoint_oper_info(
        &self,
        call: &str,
        body: &Bytes,
    ) -> Result<Response, PluginError> {
        let request: EndpointRequest = parse_body(call, body)?;
        let mut value = BTreeMap::new();
        let state = self.controller.docker_state().await;
        if let Some(endpoint) = state.endpoint(&request.endpoint_id) {
            value.insert(
                "weft.network".into(),
                Value::from(endpoint.weft_network.clone()),
            );
            value.insert("weft.mac".into(), Value::from(endpoint.mac.to_string()));
            let addresses: Vec<Value> = endpoint
                .addresses
                .iter()
                .map(|a| Value::from(a.to_string()))
                .collect();
            value.insert("weft.addresses".into(), Value::from(addresses));
        }
        if let Some((_, endpoint)) = self.controller.docker_endpoint(&request.endpoint_id).await {
            value.insert("weft.endpoint".into(), Value::from(endpoint.id.clone()));
            value.insert("weft.tap".into(), Value::from(endpoint.ifname.clone()));
            let ports: Vec<Value> = endpoint
                .ports
                .iter()
                .map(|p| Value::from(p.to_string()))
                .collect();
            value.insert("weft.ports".into(), Value::from(ports));
        }
        Ok(answer(&OperInfoResponse { value }))
    }

    /// `NetworkDriver.ProgramExternalConnectivity`: Docker's `-p` as
    /// weft's published ports (already published ones are kept: a replay).
    pub(super) async fn program_external_connectivity(
        &self,
        call: &str,
        body: &Bytes,
    ) -> Result<Response, PluginError> {
        let request: ProgramExternalConnectivityRequest = parse_body(call, body)?;
        let bindings: Vec<PortBinding> =
            match request.options.as_ref().and_then(|o| o.get(PORT_MAP)) {
                None | Some(Value::Null) => Vec::new(),
                Some(list) => serde_json::from_value(list.clone()).map_err(|e| {
                    PluginError::refused(format!("{PORT_MAP} is not a list of port bindings: {e}"))
                })?,
            };
        let mut mappings = Vec::with_capacity(bindings.len());
        for binding in &bindings {
            mappings.push((
                port_mapping(binding).map_err(PluginError::refused)?,
                binding,
            ));
        }
        let Some((_, endpoint)) = self.controller.docker_endpoint(&request.endpoint_id).await
        else {
            return Err(PluginError::refused(format!(
                "Docker endpoint {} has not joined: start the container again",
                short_id(&request.endpoint_id)
            )));
        };
        for (mapping, binding) in mappings {
            let published = endpoint.ports.iter().any(|p| {
                p.container_port == mapping.container_port
                    && p.proto == mapping.proto
                    && p.host_ip == mapping.host_ip
                    && host_ports(binding).contains(&p.host_port)
            });
            if published {
                // A replay: already there.
                continue;
            }
            // `-p 8000-8010:80`: the first host port of the range that is
            // free, as Docker's bridge does.
            let mut last_in_use = None;
            for host_port in host_ports(binding) {
                let one = PortMapping {
                    host_port,
                    ..mapping
                };
                match self.controller.publish_ports(&endpoint.id, vec![one]).await {
                    Ok(_) => {
                        last_in_use = None;
                        break;
                    }
                    Err(e @ ControllerError::Publish(PublishError::InUse { .. })) => {
                        last_in_use = Some(e);
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            if let Some(e) = last_in_use {
                return Err(e.into());
            }
        }
        Ok(answer(&serde_json::json!({})))
    }

    /// `NetworkDriver.RevokeExternalConnectivity`.
    pub(super) async fn revoke_external_connectivity(
        &self,
        call: &str,
        body: &Bytes,
    ) -> Result<Response, PluginError> {
        let request: EndpointRequest = parse_body(call, body)?;
        if let Some((_, endpoint)) = self.controller.docker_endpoint(&request.endpoint_id).await {
            self.controller.unpublish_ports(&endpoint.id).await?;
        }
        Ok(answer(&serde_json::json!({})))
    }
}

/// The host ports a binding may take: its range (`HostPort` to
/// `HostPortEnd`), or its one port (0: the kernel's choice).
fn host_ports(binding: &PortBinding) -> std::ops::RangeInclusive<u16> {
    binding.host_port..=binding.host_port_end.max(binding.host_port)
}

/// The TAP's name in weft's namespace: `wft` and 12 digits of Docker's
/// endpoint id (15 bytes, the kernel's limit).
fn src_name(endpoint_id: &str) -> String {
    let digits: String = endpoint_id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(12)
        .collect();
    format!("wft{digits}")
}

/// Choose the MAC from the addresses (`02:42` and the IPv4 address, as
/// Docker's bridge) and put it in the answer.
fn reply_mac(reply: &mut EndpointInterface, addresses: &[IpAddr]) -> MacAddr {
    let mac = endpoint_mac(addresses);
    reply.mac_address = mac.to_string();
    mac
}

fn create_endpoint_answer(reply: &EndpointInterface) -> CreateEndpointResponse {
    CreateEndpointResponse {
        interface: (reply != &EndpointInterface::default()).then(|| reply.clone()),
    }
}

#[cfg(test)]
mod tests;
