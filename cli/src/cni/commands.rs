//! ADD, DEL, CHECK, GC and STATUS as calls to the weft daemon's API.
//!
//! # Theory of operation
//!
//! weft-cni keeps no state of its own: the daemon is the one store. ADD
//! connects the container's netns to the weft network (`POST
//! /v1/networks/{net}/connect`) with `ifname` = `CNI_IFNAME`, the DNS name
//! from `K8S_POD_NAME` (else the container id's first 12 characters), the
//! capabilities' ports, addresses, MAC and aliases, and labels that name
//! the attachment ([`LABEL_CONTAINER`], [`LABEL_IFNAME`], [`LABEL_CONFIG`],
//! [`LABEL_NETNS`]); the daemon stores them atomically with the endpoint.
//! DEL, CHECK and GC find attachments again by these labels in `GET
//! /v1/networks/{net}`, so a DEL works without the netns (gone, or
//! `CNI_NETNS` empty) and a second DEL finds nothing and succeeds.
//!
//! A missing network is created when the config says how (`subnet`,
//! `gateway`, `driver`); two ADDs racing to create it both go on (the
//! loser's 409 means it exists). An ADD for an attachment that exists
//! already with the same container id and interface answers its result
//! again (a runtime that retries after a timeout).
//!
//! Errors: the daemon unreachable is code 11 ("try again later") for ADD,
//! DEL, CHECK and GC, and 50 for STATUS; a DEL whose netns is gone
//! succeeds even then, since a daemon drops endpoints of vanished
//! sandboxes when it starts. The daemon's 400 is code 7 (the config asked
//! for something invalid), other refusals 100, its failures 101, each
//! with the daemon's message.
//!
//! Rootless podman runs plugins inside its own user and mount namespace,
//! where `CNI_NETNS` is a bind mount the user's daemon (outside) cannot
//! see. There the netns is handed over as `/proc/<plugin pid>/root<CNI_NETNS>`,
//! which the daemon (same user) can open while the plugin runs; after a
//! daemon restart such an endpoint cannot be re-opened and is dropped.
//!
//! Every request is bounded by [`REQUEST_TIMEOUT`].

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper::{Method, StatusCode};
use serde::Deserialize;
use serde_json::Value;
use weft_cnm::api::types::{
    ConnectRequest, CreateNetworkRequest, DisconnectRequest, SubnetRequest,
};
use weft_cnm::model::{Endpoint, Network, PortMapping, PortProto};

use crate::client::{Client, Refusal};

use super::args::Invocation;
use super::config::{CniVersion, NetConf, PortPublisher};
use super::error::{CniError, ErrorCode};
use super::result::{self, Attached};

/// Label: the attachment's `CNI_CONTAINERID`.
pub const LABEL_CONTAINER: &str = "weft.cni.container_id";
/// Label: the attachment's `CNI_IFNAME`.
pub const LABEL_IFNAME: &str = "weft.cni.ifname";
/// Label: the CNI network (config `name`) that made it; GC looks only at
/// its own.
pub const LABEL_CONFIG: &str = "weft.cni.network";
/// Label: `CNI_NETNS` as the runtime gave it.
pub const LABEL_NETNS: &str = "weft.cni.netns";

/// Longest a call to the daemon may take: an attach runs a helper bounded
/// by 10 s, and an overlay address may wait 10 s for the cluster.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A network as `GET /v1/networks/{name}` shows it.
#[derive(Debug, Deserialize)]
pub struct NetworkView {
    /// The network.
    #[serde(flatten)]
    pub network: Network,
    /// Its endpoints.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
}

/// What went wrong talking to the daemon.
#[derive(Debug)]
pub enum DaemonError {
    /// Nothing listens on the socket (or it does not exist), or it did not
    /// answer in time.
    Unreachable(String),
    /// The daemon answered with an error.
    Refused(Refusal),
    /// Anything else (a malformed answer, no permission on the socket).
    Other(String),
}

/// The daemon of one config.
pub struct Daemon {
    client: Client,
    socket: PathBuf,
}

impl Daemon {
    /// The daemon at `socket`.
    pub fn new(socket: &Path) -> Daemon {
        Daemon {
            client: Client::new(socket),
            socket: socket.to_owned(),
        }
    }

    async fn call<B: serde::Serialize, T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, DaemonError> {
        let call = self.client.call(method, path, body);
        match tokio::time::timeout(REQUEST_TIMEOUT, call).await {
            Err(_) => Err(DaemonError::Unreachable(format!(
                "the weft daemon at {} did not answer within {REQUEST_TIMEOUT:?}",
                self.socket.display()
            ))),
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => Err(classify(e)),
        }
    }

    /// A request with a JSON body.
    ///
    /// # Errors
    ///
    /// [`DaemonError`].
    pub async fn call_json<B: serde::Serialize, T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &B,
    ) -> Result<T, DaemonError> {
        self.call(method, path, Some(body)).await
    }

    /// `GET /v1/networks/{name}`; None when it does not exist.
    ///
    /// # Errors
    ///
    /// [`DaemonError`].
    pub async fn network(&self, name: &str) -> Result<Option<NetworkView>, DaemonError> {
        match self
            .call::<(), NetworkView>(Method::GET, &network_path(name, ""), None)
            .await
        {
            Ok(view) => Ok(Some(view)),
            Err(DaemonError::Refused(r)) if r.status == StatusCode::NOT_FOUND => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `GET /v1/version`: whether it answers.
    ///
    /// # Errors
    ///
    /// [`DaemonError`].
    pub async fn ping(&self) -> Result<(), DaemonError> {
        self.call::<(), Value>(Method::GET, "/v1/version", None)
            .await
            .map(drop)
    }

    /// `POST /v1/networks/{name}/disconnect` of a sandbox path as stored.
    /// Not connected (any more) counts as done.
    ///
    /// # Errors
    ///
    /// [`DaemonError`].
    pub async fn disconnect(&self, network: &str, sandbox: &Path) -> Result<(), DaemonError> {
        let request = DisconnectRequest {
            sandbox: sandbox.to_string_lossy().into_owned(),
        };
        match self
            .call::<_, Value>(
                Method::POST,
                &network_path(network, "/disconnect"),
                Some(&request),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(DaemonError::Refused(r)) if r.status == StatusCode::NOT_FOUND => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// The path of a network (names are checked by the daemon; percent-encode
/// what a path cannot carry).
pub fn network_path(name: &str, suffix: &str) -> String {
    let mut encoded = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    format!("/v1/networks/{encoded}{suffix}")
}

fn classify(e: anyhow::Error) -> DaemonError {
    if let Some(refusal) = e.downcast_ref::<Refusal>() {
        return DaemonError::Refused(Refusal {
            status: refusal.status,
            message: refusal.message.clone(),
        });
    }
    let unreachable = e.chain().any(|cause| {
        cause.downcast_ref::<std::io::Error>().is_some_and(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            )
        })
    });
    if unreachable {
        DaemonError::Unreachable(format!("{e:#}"))
    } else {
        DaemonError::Other(format!("{e:#}"))
    }
}

impl DaemonError {
    /// The CNI error for this failure of `what` (`unreachable` is the code
    /// for a daemon that is down: 11, or 50 for STATUS).
    pub fn into_cni(self, what: &str, unreachable: ErrorCode) -> CniError {
        match self {
            DaemonError::Unreachable(detail) => CniError::new(
                unreachable,
                format!("{what}: the weft daemon is not reachable"),
                format!("{detail} (start it with `weft daemon`, or set \"socket\" in the config)"),
            ),
            DaemonError::Refused(r) if r.status == StatusCode::BAD_REQUEST => {
                CniError::new(ErrorCode::InvalidConfig, what.to_owned(), r.message)
            }
            DaemonError::Refused(r) if r.status.is_server_error() => {
                CniError::new(ErrorCode::DaemonFailed, what.to_owned(), r.message)
            }
            DaemonError::Refused(r) => {
                CniError::new(ErrorCode::DaemonRefused, what.to_owned(), r.message)
            }
            DaemonError::Other(detail) => CniError::new(ErrorCode::Io, what.to_owned(), detail),
        }
    }
}

/// The labels of an attachment.
fn labels(invocation: &Invocation, conf: &NetConf) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_CONTAINER.to_owned(), invocation.container_id.clone()),
        (LABEL_IFNAME.to_owned(), invocation.ifname.clone()),
        (LABEL_CONFIG.to_owned(), conf.name.clone()),
        (LABEL_NETNS.to_owned(), invocation.netns.clone()),
    ])
}

/// Whether `endpoint` is the attachment of container `id`, interface
/// `ifname`.
pub fn is_attachment(endpoint: &Endpoint, id: &str, ifname: &str) -> bool {
    endpoint.labels.get(LABEL_CONTAINER).map(String::as_str) == Some(id)
        && endpoint.labels.get(LABEL_IFNAME).map(String::as_str) == Some(ifname)
}

/// The attachment of this invocation in `view`: the one in the
/// invocation's netns when a container id was reused (see
/// [`stale_attachments`]), else any with its container id and interface.
fn find_attachment<'a>(view: &'a NetworkView, invocation: &Invocation) -> Option<&'a Endpoint> {
    let mut candidates = view
        .endpoints
        .iter()
        .filter(|e| is_attachment(e, &invocation.container_id, &invocation.ifname));
    let first = candidates.next()?;
    std::iter::once(first)
        .chain(candidates)
        .find(|e| e.labels.get(LABEL_NETNS).map(String::as_str) == Some(invocation.netns.as_str()))
        .or(Some(first))
}

/// Attachments of this container id and interface whose netns is gone: a
/// runtime that never called DEL (`ctr run -d` does not) and reuses the
/// id. ADD removes them so the id names one attachment again.
fn stale_attachments<'a>(
    view: &'a NetworkView,
    invocation: &'a Invocation,
) -> impl Iterator<Item = &'a Endpoint> + 'a {
    view.endpoints.iter().filter(|e| {
        is_attachment(e, &invocation.container_id, &invocation.ifname)
            && e.labels
                .get(LABEL_NETNS)
                .is_some_and(|netns| *netns != invocation.netns && !Path::new(netns).exists())
    })
}

/// The netns path as the daemon can open it (see the module header).
pub fn daemon_view_of_netns(netns: &str) -> String {
    if crate::paths::in_initial_user_namespace() {
        return netns.to_owned();
    }
    format!("/proc/{}/root{netns}", std::process::id())
}

/// The network, created from the config's `subnet`/`gateway`/`driver` if
/// it does not exist and they are given.
async fn ensure_network(daemon: &Daemon, conf: &NetConf) -> Result<NetworkView, CniError> {
    let name = conf.weft_network();
    let fail = |e: DaemonError| e.into_cni("looking up the weft network", ErrorCode::TryAgainLater);
    if let Some(view) = daemon.network(name).await.map_err(fail)? {
        if let Some(subnet) = conf.subnet {
            if !view.network.subnets.iter().any(|s| s.subnet == subnet) {
                let have: Vec<String> = view
                    .network
                    .subnets
                    .iter()
                    .map(|s| s.subnet.to_string())
                    .collect();
                return Err(CniError::new(
                    ErrorCode::InvalidConfig,
                    "the weft network has another subnet",
                    format!(
                        "network {name:?} exists with subnet(s) {} but the config asks for {subnet}: fix \"subnet\" or use another \"network\"",
                        have.join(", ")
                    ),
                ));
            }
        }
        return Ok(view);
    }
    if conf.subnet.is_none() && conf.driver.is_none() {
        return Err(CniError::new(
            ErrorCode::InvalidConfig,
            "no such weft network",
            format!(
                "weft network {name:?} does not exist: create it (`weft network create --subnet CIDR {name}`) or give \"subnet\" (and \"driver\") in the config so weft-cni creates it"
            ),
        ));
    }
    if conf.gateway.is_some() && conf.subnet.is_none() {
        return Err(CniError::new(
            ErrorCode::InvalidConfig,
            "\"gateway\" without \"subnet\"",
            "give \"subnet\" too, or drop \"gateway\"",
        ));
    }
    let request = CreateNetworkRequest {
        name: name.to_owned(),
        driver: conf.driver.clone(),
        subnets: conf
            .subnet
            .map(|subnet| SubnetRequest {
                subnet,
                gateway: conf.gateway,
                ip_range: None,
            })
            .into_iter()
            .collect(),
        ..CreateNetworkRequest::default()
    };
    match daemon
        .call::<_, Value>(Method::POST, "/v1/networks", Some(&request))
        .await
    {
        Ok(_) => {}
        // Another ADD made it meanwhile.
        Err(DaemonError::Refused(r)) if r.status == StatusCode::CONFLICT => {}
        Err(e) => {
            return Err(e.into_cni(
                &format!("creating weft network {name:?}"),
                ErrorCode::TryAgainLater,
            ))
        }
    }
    daemon.network(name).await.map_err(fail)?.ok_or_else(|| {
        CniError::new(
            ErrorCode::DaemonFailed,
            "the weft network vanished",
            format!("network {name:?} was removed right after it was created: try again"),
        )
    })
}

/// The published ports of `portMappings`.
fn port_mappings(conf: &NetConf) -> Result<Vec<PortMapping>, CniError> {
    let in_user_namespace = !crate::paths::in_initial_user_namespace();
    if conf.port_publisher(in_user_namespace) == PortPublisher::Runtime {
        return Ok(Vec::new());
    }
    conf.runtime_config
        .port_mappings
        .iter()
        .map(|entry| {
            let proto = match entry
                .protocol
                .as_deref()
                .map(str::to_ascii_lowercase)
                .as_deref()
            {
                None | Some("") | Some("tcp") => PortProto::Tcp,
                Some("udp") => PortProto::Udp,
                Some(other) => {
                    return Err(CniError::new(
                        ErrorCode::UnsupportedField,
                        "unsupported port mapping protocol",
                        format!("portMappings protocol {other:?}: weft publishes tcp and udp"),
                    ))
                }
            };
            let host_ip = match entry.host_ip.as_deref() {
                None | Some("") => None,
                Some(text) => Some(text.parse::<IpAddr>().map_err(|_| {
                    CniError::new(
                        ErrorCode::InvalidConfig,
                        "invalid port mapping",
                        format!("portMappings hostIP {text:?} is not an IP address"),
                    )
                })?),
            };
            Ok(PortMapping {
                host_ip,
                host_port: entry.host_port,
                container_port: entry.container_port,
                proto,
            })
        })
        .collect()
}

fn attached_of(view: &NetworkView, endpoint: &Endpoint, invocation: &Invocation) -> Attached {
    let mut gateways: Vec<IpAddr> = view
        .network
        .subnets
        .iter()
        .map(|s| s.gateway)
        .filter(|g| {
            endpoint
                .addresses
                .iter()
                .any(|a| a.addr().is_ipv4() == g.is_ipv4())
        })
        .collect();
    gateways.sort_by_key(IpAddr::is_ipv6);
    Attached {
        ifname: endpoint.ifname.clone(),
        mac: endpoint.mac.map(|m| m.to_string()).unwrap_or_default(),
        sandbox: invocation.netns.clone(),
        mtu: view.network.mtu,
        addresses: endpoint.addresses.clone(),
        gateways,
    }
}

/// ADD: attach, answer the result.
///
/// # Errors
///
/// [`CniError`], see the module header.
pub async fn add(
    daemon: &Daemon,
    invocation: &Invocation,
    conf: &NetConf,
) -> Result<Value, CniError> {
    let mut ips = conf.static_ips()?;
    if ips.is_empty() {
        for text in &invocation.args.ips {
            ips.push(text.parse().map_err(|_| {
                CniError::new(
                    ErrorCode::InvalidEnvironment,
                    "invalid CNI_ARGS",
                    format!("CNI_ARGS IP={text:?} is not an IP address"),
                )
            })?);
        }
    }
    let mac_text = conf.mac().or(invocation.args.mac.as_deref());
    let mac = mac_text
        .map(|text| {
            text.parse().map_err(|_| {
                CniError::new(
                    ErrorCode::InvalidConfig,
                    "invalid MAC",
                    format!("mac {text:?} is not a MAC address (write 02:00:00:00:00:01)"),
                )
            })
        })
        .transpose()?;
    let ports = port_mappings(conf)?;
    let view = ensure_network(daemon, conf).await?;
    if !view.network.driver.has_interfaces() {
        return Err(CniError::new(
            ErrorCode::InvalidConfig,
            "the weft network gives no interface",
            format!(
                "weft network {:?} has driver {}: weft-cni attaches to bridge and overlay networks",
                view.network.name, view.network.driver
            ),
        ));
    }
    for stale in stale_attachments(&view, invocation) {
        daemon
            .disconnect(&view.network.name, &stale.sandbox)
            .await
            .map_err(|e| e.into_cni("removing a stale attachment", ErrorCode::TryAgainLater))?;
    }
    let name = invocation
        .container_name()
        .map(str::to_owned)
        .unwrap_or_else(|| invocation.container_id.chars().take(12).collect());
    let request = ConnectRequest {
        sandbox: daemon_view_of_netns(&invocation.netns),
        kind: weft_cnm::model::EndpointKind::Tap,
        name: Some(name),
        ips,
        aliases: conf.aliases(),
        ports,
        ifname: Some(invocation.ifname.clone()),
        mac,
        labels: labels(invocation, conf),
        bandwidth: conf.bandwidth(),
        ..ConnectRequest::default()
    };
    let network = view.network.name.clone();
    let endpoint = match daemon
        .call::<_, Endpoint>(
            Method::POST,
            &network_path(&network, "/connect"),
            Some(&request),
        )
        .await
    {
        Ok(endpoint) => endpoint,
        Err(DaemonError::Refused(r)) if r.status == StatusCode::CONFLICT => {
            // The same attachment again (a retried ADD): answer it.
            let again = daemon.network(&network).await.ok().flatten();
            match again.as_ref().and_then(|v| find_attachment(v, invocation)) {
                Some(endpoint) => endpoint.clone(),
                None => {
                    return Err(DaemonError::Refused(r)
                        .into_cni("attaching the container", ErrorCode::TryAgainLater))
                }
            }
        }
        Err(DaemonError::Refused(r)) if r.status == StatusCode::NOT_FOUND => {
            return Err(CniError::new(
                ErrorCode::UnknownContainer,
                "the container's network namespace does not exist",
                r.message,
            ))
        }
        Err(e) => return Err(e.into_cni("attaching the container", ErrorCode::TryAgainLater)),
    };
    let attached = attached_of(&view, &endpoint, invocation);
    result::build(
        conf.version(),
        &conf.cni_version,
        conf.prev_result.as_ref(),
        &attached,
    )
}

/// DEL: detach; success when there is nothing to detach.
///
/// # Errors
///
/// Code 11 when the daemon is down and the netns still exists; the
/// daemon's refusal.
pub async fn del(daemon: &Daemon, invocation: &Invocation, conf: &NetConf) -> Result<(), CniError> {
    let view = match daemon.network(conf.weft_network()).await {
        Ok(Some(view)) => view,
        Ok(None) => return Ok(()),
        Err(DaemonError::Unreachable(_))
            if invocation.netns.is_empty() || !Path::new(&invocation.netns).exists() =>
        {
            // The daemon drops endpoints of vanished sandboxes when it
            // starts: nothing will be left.
            return Ok(());
        }
        Err(e) => return Err(e.into_cni("detaching the container", ErrorCode::TryAgainLater)),
    };
    let Some(endpoint) = find_attachment(&view, invocation) else {
        return Ok(());
    };
    daemon
        .disconnect(&view.network.name, &endpoint.sandbox)
        .await
        .map_err(|e| e.into_cni("detaching the container", ErrorCode::TryAgainLater))
}

/// CHECK: the attachment exists as `prevResult` says, and so does the
/// interface in the netns.
///
/// # Errors
///
/// Code 102 naming the difference; code 7 without `prevResult`.
pub async fn check(
    daemon: &Daemon,
    invocation: &Invocation,
    conf: &NetConf,
) -> Result<(), CniError> {
    if conf.version() < CniVersion::V0_4 {
        return Err(CniError::new(
            ErrorCode::IncompatibleVersion,
            "CHECK needs cniVersion 0.4.0 or later",
            format!("the config says {}", conf.cni_version),
        ));
    }
    let Some(prev) = conf.prev_result.as_ref() else {
        return Err(CniError::new(
            ErrorCode::InvalidConfig,
            "CHECK without prevResult",
            "the runtime must pass the result of ADD as prevResult",
        ));
    };
    let failed = |details: String| CniError::new(ErrorCode::CheckFailed, "CHECK failed", details);
    let view = daemon
        .network(conf.weft_network())
        .await
        .map_err(|e| e.into_cni("checking the attachment", ErrorCode::TryAgainLater))?
        .ok_or_else(|| {
            failed(format!(
                "weft network {:?} does not exist",
                conf.weft_network()
            ))
        })?;
    let endpoint = find_attachment(&view, invocation).ok_or_else(|| {
        failed(format!(
            "weft has no attachment of container {} as {} on network {:?}",
            invocation.container_id, invocation.ifname, view.network.name
        ))
    })?;
    let stored_netns = endpoint.labels.get(LABEL_NETNS).map(String::as_str);
    if stored_netns != Some(invocation.netns.as_str()) {
        return Err(failed(format!(
            "the attachment is in netns {stored_netns:?}, not {}",
            invocation.netns
        )));
    }
    let (mac, addresses) = result::addresses_of(prev, &invocation.ifname, &invocation.netns)
        .ok_or_else(|| {
            failed(format!(
                "prevResult has no interface {} in {}",
                invocation.ifname, invocation.netns
            ))
        })?;
    let weft_mac = endpoint.mac.map(|m| m.to_string()).unwrap_or_default();
    if !mac.eq_ignore_ascii_case(&weft_mac) {
        return Err(failed(format!(
            "prevResult says MAC {mac}, weft has {weft_mac}"
        )));
    }
    for address in &endpoint.addresses {
        if !addresses.contains(address) {
            return Err(failed(format!("prevResult lacks weft's address {address}")));
        }
    }
    if endpoint.bandwidth != conf.bandwidth() {
        return Err(failed(format!(
            "the bandwidth limits are {:?} in weft, {:?} in the config",
            endpoint.bandwidth,
            conf.bandwidth()
        )));
    }
    super::netns_check::interface_matches(
        Path::new(&invocation.netns),
        &invocation.ifname,
        &weft_mac,
        &endpoint.addresses,
    )
    .map_err(failed)
}

/// GC: detach this config's attachments that are not in
/// `cni.dev/valid-attachments`; the number detached.
///
/// # Errors
///
/// Code 11 when the daemon is down; the daemon's refusal.
pub async fn gc(daemon: &Daemon, conf: &NetConf) -> Result<usize, CniError> {
    let fail = |e: DaemonError| e.into_cni("garbage collection", ErrorCode::TryAgainLater);
    let Some(view) = daemon.network(conf.weft_network()).await.map_err(fail)? else {
        return Ok(0);
    };
    let valid = conf.valid_attachments.clone().unwrap_or_default();
    let mut removed = 0;
    for endpoint in &view.endpoints {
        if endpoint.labels.get(LABEL_CONFIG) != Some(&conf.name) {
            continue;
        }
        let keep = valid
            .iter()
            .any(|a| is_attachment(endpoint, &a.container_id, &a.ifname));
        if !keep {
            daemon
                .disconnect(&view.network.name, &endpoint.sandbox)
                .await
                .map_err(fail)?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// STATUS: the daemon answers, and the network exists or can be made.
///
/// # Errors
///
/// Code 50 naming what is missing.
pub async fn status(daemon: &Daemon, conf: &NetConf) -> Result<(), CniError> {
    let unavailable = |e: DaemonError| e.into_cni("weft is not available", ErrorCode::NotAvailable);
    daemon.ping().await.map_err(unavailable)?;
    let exists = daemon
        .network(conf.weft_network())
        .await
        .map_err(unavailable)?
        .is_some();
    if !exists && conf.subnet.is_none() && conf.driver.is_none() {
        return Err(CniError::new(
            ErrorCode::NotAvailable,
            "weft is not available",
            format!(
                "weft network {:?} does not exist and the config gives no \"subnet\" to create it",
                conf.weft_network()
            ),
        ));
    }
    Ok(())
}
