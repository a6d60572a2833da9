//! The control API's request and response bodies: what `curl` and the
//! CLI send and get back (JSON). Requests refuse unknown fields, so a typo
//! is an error, not a silently ignored option.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use weft_datapath::TunnelCounters;
use weft_overlay::driver::gossip::{GossipCounters, PeerInfo};
use weft_vswitch::counters::PortCountersSnapshot;
use weft_vswitch::{BandwidthLimit, MacAddr};

use crate::driver::TunnelPeerCounters;
use crate::model::{DockerAttachment, Endpoint, Network, PortMapping};

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
    /// Labels (`--label KEY=VALUE`): kept with the network, shown by
    /// `inspect`, matched by `network ls --filter label=...`; weft gives
    /// them no meaning.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Addresses never handed out (`--aux-address NAME=IP`, Docker's
    /// `AuxiliaryAddresses`): hosts of a macvlan network's LAN, say.
    #[serde(default)]
    pub aux_addresses: BTreeMap<String, IpAddr>,
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
    /// Namespace path, or a name under `/var/run/netns`; for a `stream`
    /// endpoint, the absolute path of the socket to listen on.
    pub sandbox: String,
    /// The endpoint's port: `tap` (default, a TAP in the sandbox) or
    /// `stream` (a Unix socket a VM's QEMU connects to with `-netdev
    /// stream`; bridge and overlay networks).
    #[serde(default)]
    pub kind: crate::model::EndpointKind,
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
    /// Set by the Docker plugin (never from the API): the endpoint is
    /// Docker's, its TAP is made for Docker to move, and `ips` are
    /// already reserved by the plugin, which also releases them.
    #[serde(skip)]
    pub docker: Option<DockerAttachment>,
    /// The interface's name inside the sandbox (CNI's `CNI_IFNAME`);
    /// default the first free `ethN`. One that exists there already is an
    /// error.
    #[serde(default)]
    pub ifname: Option<String>,
    /// The interface's MAC (default: `02:42` + the IPv4 address). A
    /// unicast address, unique on the network: the caller's to ensure.
    #[serde(default)]
    pub mac: Option<MacAddr>,
    /// Labels kept with the endpoint and shown by `inspect`: `weft-cni`
    /// finds its attachments again by them (container id, interface).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Bandwidth limits of the interface, in CNI's units
    /// (`{"ingress_rate": bits/s, "ingress_burst": bits, "egress_rate": ..,
    /// "egress_burst": ..}`; ingress is toward the sandbox), enforced by
    /// the data path (see `weft_vswitch::rate`).
    #[serde(default)]
    pub bandwidth: Option<BandwidthLimit>,
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
    /// Overlay: the other hosts (and static peers) it carries frames to
    /// and from, with their tunnel ports' counters.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tunnel: Vec<TunnelPeerCounters>,
    /// Overlay: its endpoints on the other hosts (cluster directory).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub remote_endpoints: Vec<crate::driver::RemoteEndpointDetails>,
    /// macvlan, ipvlan: the parent's LAN and its port's counters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uplink: Option<crate::driver::UplinkDetails>,
    /// The Docker networks (Docker's ids) that are this network, made or
    /// joined through the Docker plugin.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub docker_networks: Vec<String>,
    /// The NAT's flows and refusals for this network.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nat: Option<NatDetails>,
    /// How ICMP echo from its sandboxes leaves the host (a network with a
    /// way out only): through a ping socket, a raw socket, or not at all
    /// and the sysctl that fixes it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outbound_icmp_echo: Option<&'static str>,
}

/// A network's share of the NAT, as `inspect` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct NatDetails {
    /// UDP and ICMP echo flows open now.
    pub udp_flows: usize,
    /// TCP flows open or connecting now.
    pub tcp_flows: usize,
    /// Flows each table holds at most (`--nat-max-flows`, or what the
    /// daemon's file descriptor budget allows).
    pub capacity: usize,
    /// Flows of each table one sandbox may hold.
    pub sandbox_share: usize,
    /// Flows of each table one network may hold.
    pub network_share: usize,
    /// New UDP and ICMP echo flows refused, by reason.
    pub udp_refused: RefusedFlows,
    /// New TCP flows refused, by reason.
    pub tcp_refused: RefusedFlows,
}

/// New flows refused, by reason.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct RefusedFlows {
    /// The table (or the fd budget) was full.
    pub table_full: u64,
    /// The network held its share.
    pub network_share: u64,
    /// The sandbox held its share.
    pub sandbox_share: u64,
}

impl From<weft_services::flow_shares::RefusalCounters> for RefusedFlows {
    fn from(c: weft_services::flow_shares::RefusalCounters) -> Self {
        RefusedFlows {
            table_full: c.table_full,
            network_share: c.network_share,
            sandbox_share: c.sandbox_share,
        }
    }
}

impl From<weft_services::NatNetworkStats> for NatDetails {
    fn from(s: weft_services::NatNetworkStats) -> Self {
        NatDetails {
            udp_flows: s.udp_flows,
            tcp_flows: s.tcp_flows,
            capacity: s.capacity,
            sandbox_share: s.sandbox_share,
            network_share: s.network_share,
            udp_refused: s.udp_refused.into(),
            tcp_refused: s.tcp_refused.into(),
        }
    }
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

/// `weft peers`: this host, the other members and the tunnel's counters.
#[derive(Debug, Clone, Serialize)]
pub struct PeersReport {
    /// This host's node id (32 hex digits, kept in the state directory).
    pub id: String,
    /// This host's `--node-name` (or hostname).
    pub name: String,
    /// This host's gossip address.
    pub address: std::net::SocketAddr,
    /// The other members.
    pub members: Vec<PeerInfo>,
    /// The VXLAN tunnel's counters.
    pub tunnel: TunnelCountersSnapshot,
    /// Gossip datagrams dropped.
    pub gossip: GossipCounters,
    /// The QUIC transport (encrypted networks): its connections, one per
    /// host, with their counters; absent without a cluster key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quic: Option<weft_overlay::driver::quic::QuicStatus>,
}

/// The tunnel counters at one moment.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct TunnelCountersSnapshot {
    /// Datagrams received and switched.
    pub rx: u64,
    /// Datagrams sent.
    pub tx: u64,
    /// Datagrams from an address that is neither a member nor a static
    /// peer, dropped.
    pub dropped_not_member: u64,
    /// Datagrams that were not VXLAN, or of an unknown VNI, dropped.
    pub dropped_invalid: u64,
    /// Clear-text VXLAN for an encrypted network, and frames of encrypted
    /// networks with no QUIC transport to leave by, dropped.
    pub dropped_unencrypted: u64,
}

impl From<&TunnelCounters> for TunnelCountersSnapshot {
    fn from(c: &TunnelCounters) -> Self {
        use std::sync::atomic::Ordering::Relaxed;
        TunnelCountersSnapshot {
            rx: c.rx.load(Relaxed),
            tx: c.tx.load(Relaxed),
            dropped_not_member: c.dropped_not_member.load(Relaxed),
            dropped_invalid: c.dropped_invalid.load(Relaxed),
            dropped_unencrypted: c.dropped_unencrypted.load(Relaxed),
        }
    }
}
