//! The CNM objects as weft stores and shows them: networks and endpoints.
//! A sandbox is not stored on its own: it is the namespace path its
//! endpoints name.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use weft_vswitch::MacAddr;

/// Default MTU of a local network's sandbox interfaces (Ethernet's).
pub const DEFAULT_MTU: u32 = 1500;

/// Lowest MTU accepted (IPv4's minimum is 68; IPv6 needs 1280, enforced when
/// a network has an IPv6 subnet).
pub const MIN_MTU: u32 = 68;

/// Largest MTU accepted: a TAP frame must fit the data path's 64 KiB
/// buffer.
pub const MAX_MTU: u32 = 65520;

/// A network driver (Docker's CNM names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DriverKind {
    /// No interface but loopback.
    Null,
    /// The sandbox is the host's own namespace: bookkeeping only.
    Host,
    /// A local L2 network switched in userspace by weft.
    Bridge,
}

/// Local (this host) or cluster (every host of the gossip cluster).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// This host only.
    Local,
}

/// One subnet of a network, as shown by `inspect`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubnetInfo {
    /// The subnet (CIDR).
    pub subnet: IpNet,
    /// The gateway's address in it.
    pub gateway: IpAddr,
    /// The part of the subnet dynamic addresses come from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_range: Option<IpNet>,
}

/// A network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    /// Unique name.
    pub name: String,
    /// Random 64-hex-digit id, like Docker's.
    pub id: String,
    /// Its driver.
    pub driver: DriverKind,
    /// Its scope.
    pub scope: Scope,
    /// Its subnets (none for `null` and `host`).
    pub subnets: Vec<SubnetInfo>,
    /// No way out of the network (no NAT).
    pub internal: bool,
    /// MTU of the sandbox interfaces.
    pub mtu: u32,
    /// Driver options (`--opt K=V`).
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// When it was created (RFC 3339, UTC).
    pub created: String,
}

/// An endpoint: one network's interface inside one sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Random id.
    pub id: String,
    /// The network's name.
    pub network: String,
    /// The sandbox's network-namespace path.
    pub sandbox: PathBuf,
    /// DNS name.
    pub name: String,
    /// Extra DNS names.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Interface name inside the sandbox (`eth0`, ...); `lo` for the `null`
    /// driver, empty for `host`.
    pub ifname: String,
    /// The interface's MAC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
    /// Its addresses with the subnet's prefix length.
    pub addresses: Vec<IpNet>,
    /// The per-namespace resolv.conf weft wrote for it, removed when it
    /// leaves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolv_conf: Option<PathBuf>,
}

/// A driver name that is not one of weft's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown driver {0:?}: use bridge, host or null")]
pub struct UnknownDriver(pub String);

impl DriverKind {
    /// The name users type.
    pub const fn as_str(self) -> &'static str {
        match self {
            DriverKind::Null => "null",
            DriverKind::Host => "host",
            DriverKind::Bridge => "bridge",
        }
    }

    /// Whether the driver gives endpoints addresses and interfaces.
    pub const fn has_interfaces(self) -> bool {
        matches!(self, DriverKind::Bridge)
    }
}

impl fmt::Display for DriverKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DriverKind {
    type Err = UnknownDriver;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "null" | "none" => Ok(DriverKind::Null),
            "host" => Ok(DriverKind::Host),
            "bridge" => Ok(DriverKind::Bridge),
            other => Err(UnknownDriver(other.to_owned())),
        }
    }
}

impl Network {
    /// The short id shown in tables (12 hex digits, like Docker).
    pub fn short_id(&self) -> &str {
        self.id.get(..12).unwrap_or(&self.id)
    }
}

impl Endpoint {
    /// The endpoint's IPv4 address, if any.
    pub fn ipv4(&self) -> Option<std::net::Ipv4Addr> {
        self.addresses.iter().find_map(|a| match a.addr() {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        })
    }
}
