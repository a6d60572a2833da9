//! The netavark plugin API (podman 5's `--driver weft`): `create`,
//! `setup NETNS`, `teardown NETNS`, `info`, JSON on stdin and stdout
//! (netavark's docs/plugin-API.md, plugin API 1.0.0).
//!
//! # Theory of operation
//!
//! `create` gets podman's network config, makes (or finds) the weft
//! network of the same name with the given subnets, and prints the config
//! back with weft's subnets and gateways filled in and `dns_enabled`
//! off (weft's gateway answers DNS itself, so podman needs no aardvark).
//! `setup` connects the netns exactly as CNI ADD does (interface name,
//! static IPs and MAC, aliases, port mappings with `range` expanded, the
//! labels of [`super::commands`] with the network config
//! `netavark:NAME`) and prints a status block; `teardown` finds the
//! attachment by container id and interface and disconnects it (nothing
//! to do is success). Errors are `{"error": "..."}` on stdout, exit 1.
//!
//! Options (`podman network create -o K=V`): `weft_driver` (`bridge` or
//! `overlay`), `mtu`; any other is refused. Podman 5 is not on this
//! machine (Debian's netavark 1.4 predates plugins): this is tested
//! against the documented JSON and under netavark 1.17.2 built from
//! crates.io (`cli/tests/netavark.rs`).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use hyper::{Method, StatusCode};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use weft_cnm::api::types::{ConnectRequest, CreateNetworkRequest, SubnetRequest};
use weft_cnm::model::{Endpoint, PortMapping, PortProto};

use super::commands::{
    is_attachment, Daemon, DaemonError, LABEL_CONFIG, LABEL_CONTAINER, LABEL_IFNAME, LABEL_NETNS,
};
use super::error::ErrorCode;

/// The plugin API version netavark documents.
pub const API_VERSION: &str = "1.0.0";

/// A failure, printed as `{"error": message}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginError(pub String);

/// One subnet of a netavark network.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetavarkSubnet {
    /// The subnet.
    pub subnet: IpNet,
    /// Its gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Lease range (ignored: weft allocates from the subnet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_range: Option<Value>,
}

/// The fields of a netavark network weft reads.
#[derive(Debug, Clone, Deserialize)]
pub struct NetavarkNetwork {
    /// Network name (the weft network's too).
    pub name: String,
    /// Podman's id.
    #[serde(default)]
    pub id: String,
    /// The driver (the plugin's name).
    #[serde(default)]
    pub driver: String,
    /// Subnets.
    #[serde(default)]
    pub subnets: Option<Vec<NetavarkSubnet>>,
    /// No way out.
    #[serde(default)]
    pub internal: bool,
    /// `-o K=V`.
    #[serde(default)]
    pub options: Option<BTreeMap<String, String>>,
}

/// A port mapping of `setup`.
#[derive(Debug, Clone, Deserialize)]
pub struct NetavarkPortMapping {
    /// Port in the container.
    pub container_port: u16,
    /// Host address (empty: all).
    #[serde(default)]
    pub host_ip: String,
    /// First host port.
    pub host_port: u16,
    /// `tcp`, `udp` (or several, comma-separated).
    #[serde(default)]
    pub protocol: String,
    /// How many consecutive ports (0 or 1: one).
    #[serde(default)]
    pub range: u16,
}

/// Per-network options of `setup`.
#[derive(Debug, Clone, Deserialize)]
pub struct NetavarkNetworkOptions {
    /// DNS aliases.
    #[serde(default)]
    pub aliases: Option<Vec<String>>,
    /// The interface's name in the container.
    pub interface_name: String,
    /// Static addresses.
    #[serde(default)]
    pub static_ips: Option<Vec<IpAddr>>,
    /// Static MAC.
    #[serde(default)]
    pub static_mac: Option<String>,
}

/// `setup` and `teardown`'s stdin.
#[derive(Debug, Clone, Deserialize)]
pub struct NetavarkExec {
    /// The container's id.
    pub container_id: String,
    /// Its name (the DNS name).
    #[serde(default)]
    pub container_name: String,
    /// Published ports.
    #[serde(default)]
    pub port_mappings: Option<Vec<NetavarkPortMapping>>,
    /// The network.
    pub network: NetavarkNetwork,
    /// This container's options on it.
    pub network_options: NetavarkNetworkOptions,
}

impl std::fmt::Display for PluginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl PluginError {
    /// `{"error": message}`.
    pub fn to_json(&self) -> String {
        json!({ "error": self.0 }).to_string()
    }
}

fn daemon_error(what: &str, e: DaemonError) -> PluginError {
    PluginError(e.into_cni(what, ErrorCode::TryAgainLater).to_string())
}

fn decode<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, PluginError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        PluginError(format!(
            "{what} on stdin: field {}: {}",
            e.path(),
            e.inner()
        ))
    })
}

/// `info`.
pub fn info() -> Value {
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "api_version": API_VERSION,
        "description": "weft: a userspace virtual switch (networks are weft networks of the same name)",
    })
}

/// `create`: make or find the weft network; the config with weft's
/// subnets.
///
/// # Errors
///
/// [`PluginError`] with what to fix.
pub async fn create(daemon: &Daemon, stdin: &[u8]) -> Result<Value, PluginError> {
    let mut config: Map<String, Value> = decode("the network config", stdin)?;
    let network: NetavarkNetwork = decode("the network config", stdin)?;
    let mut driver = None;
    let mut mtu = None;
    for (key, value) in network.options.iter().flatten() {
        match key.as_str() {
            "weft_driver" => driver = Some(value.clone()),
            "mtu" => {
                mtu = Some(value.parse::<u32>().map_err(|_| {
                    PluginError(format!("option mtu={value:?}: write a number such as 1500"))
                })?)
            }
            other => {
                return Err(PluginError(format!(
                    "unknown option {other:?}: weft takes weft_driver=bridge|overlay and mtu=N"
                )))
            }
        }
    }
    let existing = daemon
        .network(&network.name)
        .await
        .map_err(|e| daemon_error("looking up the weft network", e))?;
    let view = match existing {
        Some(view) => {
            if let Some(missing) = network
                .subnets
                .iter()
                .flatten()
                .find(|s| !view.network.subnets.iter().any(|w| w.subnet == s.subnet))
            {
                return Err(PluginError(format!(
                    "weft network {:?} exists without subnet {}: drop --subnet or choose another name",
                    network.name, missing.subnet
                )));
            }
            view
        }
        None => {
            let request = CreateNetworkRequest {
                name: network.name.clone(),
                driver,
                subnets: network
                    .subnets
                    .iter()
                    .flatten()
                    .map(|s| SubnetRequest {
                        subnet: s.subnet,
                        gateway: s.gateway,
                        ip_range: None,
                    })
                    .collect(),
                internal: network.internal,
                mtu,
                ..CreateNetworkRequest::default()
            };
            match daemon
                .call_json::<_, Value>(Method::POST, "/v1/networks", &request)
                .await
            {
                Ok(_) => {}
                Err(DaemonError::Refused(r)) if r.status == StatusCode::CONFLICT => {}
                Err(e) => return Err(daemon_error("creating the weft network", e)),
            }
            daemon
                .network(&network.name)
                .await
                .map_err(|e| daemon_error("looking up the weft network", e))?
                .ok_or_else(|| PluginError("the weft network vanished: try again".into()))?
        }
    };
    let subnets: Vec<NetavarkSubnet> = view
        .network
        .subnets
        .iter()
        .map(|s| NetavarkSubnet {
            subnet: s.subnet,
            gateway: Some(s.gateway),
            lease_range: None,
        })
        .collect();
    config.insert(
        "subnets".into(),
        serde_json::to_value(&subnets).unwrap_or(Value::Null),
    );
    config.insert(
        "ipv6_enabled".into(),
        Value::Bool(subnets.iter().any(|s| s.subnet.addr().is_ipv6())),
    );
    config.insert("dns_enabled".into(), Value::Bool(false));
    config.insert("internal".into(), Value::Bool(view.network.internal));
    Ok(Value::Object(config))
}

fn ports(exec: &NetavarkExec) -> Result<Vec<PortMapping>, PluginError> {
    let mut out = Vec::new();
    for mapping in exec.port_mappings.iter().flatten() {
        let host_ip = if mapping.host_ip.is_empty() {
            None
        } else {
            Some(mapping.host_ip.parse::<IpAddr>().map_err(|_| {
                PluginError(format!(
                    "port mapping host_ip {:?} is not an IP address",
                    mapping.host_ip
                ))
            })?)
        };
        let protocols: Vec<&str> = if mapping.protocol.is_empty() {
            vec!["tcp"]
        } else {
            mapping.protocol.split(',').collect()
        };
        for protocol in protocols {
            let proto = match protocol {
                "tcp" => PortProto::Tcp,
                "udp" => PortProto::Udp,
                other => {
                    return Err(PluginError(format!(
                        "port mapping protocol {other:?}: weft publishes tcp and udp"
                    )))
                }
            };
            for i in 0..mapping.range.max(1) {
                let (Some(host_port), Some(container_port)) = (
                    mapping.host_port.checked_add(i),
                    mapping.container_port.checked_add(i),
                ) else {
                    return Err(PluginError(format!(
                        "port mapping {}:{} range {} passes port 65535",
                        mapping.host_port, mapping.container_port, mapping.range
                    )));
                };
                out.push(PortMapping {
                    host_ip,
                    host_port,
                    container_port,
                    proto,
                });
            }
        }
    }
    Ok(out)
}

fn config_label(network: &str) -> String {
    format!("netavark:{network}")
}

/// `setup NETNS`: connect; the status block.
///
/// # Errors
///
/// [`PluginError`] with the daemon's message.
pub async fn setup(daemon: &Daemon, netns: &str, stdin: &[u8]) -> Result<Value, PluginError> {
    let exec: NetavarkExec = decode("the setup request", stdin)?;
    let mac = exec
        .network_options
        .static_mac
        .as_deref()
        .map(|m| {
            m.parse()
                .map_err(|_| PluginError(format!("static_mac {m:?} is not a MAC address")))
        })
        .transpose()?;
    let ifname = exec.network_options.interface_name.clone();
    let labels = BTreeMap::from([
        (LABEL_CONTAINER.to_owned(), exec.container_id.clone()),
        (LABEL_IFNAME.to_owned(), ifname.clone()),
        (LABEL_CONFIG.to_owned(), config_label(&exec.network.name)),
        (LABEL_NETNS.to_owned(), netns.to_owned()),
    ]);
    let name = if exec.container_name.is_empty() {
        exec.container_id.chars().take(12).collect()
    } else {
        exec.container_name.clone()
    };
    let request = ConnectRequest {
        sandbox: super::commands::daemon_view_of_netns(netns),
        kind: weft_cnm::model::EndpointKind::Tap,
        name: Some(name),
        ips: exec.network_options.static_ips.clone().unwrap_or_default(),
        aliases: exec.network_options.aliases.clone().unwrap_or_default(),
        ports: ports(&exec)?,
        ifname: Some(ifname.clone()),
        mac,
        labels,
        ..ConnectRequest::default()
    };
    let path = super::commands::network_path(&exec.network.name, "/connect");
    let endpoint: Endpoint = daemon
        .call_json(Method::POST, &path, &request)
        .await
        .map_err(|e| daemon_error("attaching the container", e))?;
    let view = daemon
        .network(&exec.network.name)
        .await
        .map_err(|e| daemon_error("looking up the weft network", e))?
        .ok_or_else(|| PluginError("the weft network vanished".into()))?;
    let subnets: Vec<Value> = endpoint
        .addresses
        .iter()
        .map(|address| {
            let gateway = view
                .network
                .subnets
                .iter()
                .find(|s| s.subnet.contains(&address.addr()))
                .map(|s| s.gateway.to_string());
            json!({ "ipnet": address.to_string(), "gateway": gateway })
        })
        .collect();
    let dns: Vec<String> = view
        .network
        .subnets
        .iter()
        .filter(|s| {
            endpoint
                .addresses
                .iter()
                .any(|a| s.subnet.contains(&a.addr()))
        })
        .map(|s| s.gateway.to_string())
        .collect();
    Ok(json!({
        "dns_search_domains": [],
        "dns_server_ips": dns,
        "interfaces": {
            endpoint.ifname.clone(): {
                "mac_address": endpoint.mac.map(|m| m.to_string()).unwrap_or_default(),
                "subnets": subnets,
            }
        }
    }))
}

/// `teardown NETNS`: disconnect; nothing there is success.
///
/// # Errors
///
/// [`PluginError`] with the daemon's message.
pub async fn teardown(daemon: &Daemon, netns: &str, stdin: &[u8]) -> Result<(), PluginError> {
    let exec: NetavarkExec = decode("the teardown request", stdin)?;
    let view = match daemon.network(&exec.network.name).await {
        Ok(Some(view)) => view,
        Ok(None) => return Ok(()),
        Err(DaemonError::Unreachable(_)) if !Path::new(netns).exists() => return Ok(()),
        Err(e) => return Err(daemon_error("detaching the container", e)),
    };
    let ifname = &exec.network_options.interface_name;
    let Some(endpoint) = view
        .endpoints
        .iter()
        .find(|e| is_attachment(e, &exec.container_id, ifname))
    else {
        return Ok(());
    };
    daemon
        .disconnect(&view.network.name, &endpoint.sandbox)
        .await
        .map_err(|e| daemon_error("detaching the container", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of netavark's docs/plugin-API.md, "Setup subcommand".
    const SETUP_EXAMPLE: &str = r#"{
        "container_id": "752947ff91f961eb3cb47ffe9315016979f3ffbec09e4d96a4fae3fb03391697",
        "container_name": "testctr",
        "port_mappings": [
            {"container_port": 80, "host_ip": "127.0.0.1", "host_port": 8080, "protocol": "tcp", "range": 1}
        ],
        "network": {
            "dns_enabled": false, "driver": "bridge",
            "id": "2f259bab93aaaaa2542ba43ef33eb990d0999ee1b9924b557b7be53c0b7a1bb9",
            "internal": false, "ipv6_enabled": false, "name": "podman",
            "network_interface": "podman0", "options": null,
            "ipam_options": {"driver": "host-local"},
            "subnets": [{"gateway": "10.88.0.1", "lease_range": null, "subnet": "10.88.0.0/16"}],
            "network_dns_servers": null
        },
        "network_options": {
            "aliases": ["752947ff91f9"], "interface_name": "eth0",
            "static_ips": ["10.88.0.50"], "static_mac": "aa:bb:cc:dd:aa:00"
        }
    }"#;

    #[test]
    fn the_documented_setup_request_decodes() {
        let exec: NetavarkExec = decode("setup", SETUP_EXAMPLE.as_bytes()).unwrap();
        assert_eq!(exec.network.name, "podman");
        assert_eq!(exec.network_options.interface_name, "eth0");
        let ports = ports(&exec).unwrap();
        assert_eq!(ports.len(), 1);
        assert_eq!(ports[0].host_port, 8080);
        assert_eq!(ports[0].host_ip, Some("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn ranges_expand_and_bad_values_are_named() {
        let mut exec: NetavarkExec = decode("setup", SETUP_EXAMPLE.as_bytes()).unwrap();
        if let Some(list) = exec.port_mappings.as_mut() {
            list[0].range = 3;
            list[0].protocol = "tcp,udp".into();
        }
        assert_eq!(ports(&exec).unwrap().len(), 6);
        if let Some(list) = exec.port_mappings.as_mut() {
            list[0].protocol = "sctp".into();
        }
        assert!(ports(&exec).unwrap_err().0.contains("sctp"));
        let e = decode::<NetavarkExec>("setup", br#"{"container_id": 5}"#).unwrap_err();
        assert!(e.0.contains("container_id"), "{e}");
        assert!(PluginError("x".into()).to_json().contains("\"error\""));
        assert_eq!(info()["api_version"], API_VERSION);
    }
}
