//! What the Docker plugin remembers, saved in the controller's state file
//! with everything else (one atomic write, see [`crate::store`]).
//!
//! Three lists, each small (one entry per Docker pool, network and
//! endpoint on this host) and searched linearly:
//! - pools: what `IpamDriver.RequestPool` handed out, with the addresses
//!   given to Docker from them (reserved in the weft network's IPAM) and
//!   the gateway or auxiliary addresses asked for before the network
//!   existed;
//! - networks: Docker's network id and the weft network it is;
//! - endpoints: Docker's endpoint, from `CreateEndpoint` to
//!   `DeleteEndpoint`, with the addresses weft reserved for it itself.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use weft_vswitch::MacAddr;

use super::protocol::EndpointInterface;

/// The Docker plugin's part of the state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DockerState {
    /// IPAM pools Docker holds.
    #[serde(default)]
    pub pools: Vec<DockerPool>,
    /// Docker networks of this driver.
    #[serde(default)]
    pub networks: Vec<DockerNetwork>,
    /// Docker endpoints of this driver.
    #[serde(default)]
    pub endpoints: Vec<DockerEndpoint>,
}

/// A pool of weft's IPAM driver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DockerPool {
    /// Its id (`weft:SUBNET[:SUBPOOL]`, the same for the same pool).
    pub id: String,
    /// The subnet Docker was given.
    pub subnet: IpNet,
    /// Docker's `--ip-range`, where container addresses come from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_pool: Option<IpNet>,
    /// Chosen by weft (no `--subnet`): may be bound to an existing weft
    /// network of another subnet.
    #[serde(default)]
    pub auto: bool,
    /// How many `RequestPool`s hold it.
    pub refs: u32,
    /// The gateway handed out before the network existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// The weft network whose addresses it hands out, once bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Addresses handed to Docker, reserved in that network's IPAM.
    #[serde(default)]
    pub held: Vec<IpAddr>,
    /// Auxiliary addresses asked for before the network existed (reserved
    /// when it is bound).
    #[serde(default)]
    pub pending: Vec<IpAddr>,
}

/// A Docker network and the weft network it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DockerNetwork {
    /// Docker's network id.
    pub id: String,
    /// The weft network's name.
    pub weft_network: String,
    /// Whether this Docker network made the weft network (and so removes
    /// it with itself); false when it joined one that existed.
    pub created: bool,
}

/// A Docker endpoint between `CreateEndpoint` and `DeleteEndpoint`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DockerEndpoint {
    /// Docker's endpoint id.
    pub id: String,
    /// Docker's network id.
    pub network_id: String,
    /// The weft network's name.
    pub weft_network: String,
    /// Its addresses (Docker's or weft's).
    pub addresses: Vec<IpNet>,
    /// Its MAC.
    pub mac: MacAddr,
    /// The addresses weft reserved for it itself (released with it); the
    /// others belong to an IPAM pool or to Docker's own IPAM.
    #[serde(default)]
    pub owned: Vec<IpAddr>,
    /// The TAP's name before Docker moves it (`Join`'s `SrcName`).
    pub src_name: String,
    /// What `CreateEndpoint` answered (answered again to a replay).
    pub reply: EndpointInterface,
}

impl DockerState {
    /// Nothing is kept (the state file then has no `docker` key).
    pub fn is_empty(&self) -> bool {
        self.pools.is_empty() && self.networks.is_empty() && self.endpoints.is_empty()
    }

    /// The Docker network ids that are weft network `name`.
    pub fn networks_of(&self, name: &str) -> Vec<String> {
        self.networks
            .iter()
            .filter(|n| n.weft_network == name)
            .map(|n| n.id.clone())
            .collect()
    }

    /// A pool by id.
    pub fn pool(&self, id: &str) -> Option<&DockerPool> {
        self.pools.iter().find(|p| p.id == id)
    }

    /// A pool by id, to change.
    pub fn pool_mut(&mut self, id: &str) -> Option<&mut DockerPool> {
        self.pools.iter_mut().find(|p| p.id == id)
    }

    /// A Docker network by id.
    pub fn network(&self, id: &str) -> Option<&DockerNetwork> {
        self.networks.iter().find(|n| n.id == id)
    }

    /// A Docker endpoint by id.
    pub fn endpoint(&self, id: &str) -> Option<&DockerEndpoint> {
        self.endpoints.iter().find(|e| e.id == id)
    }

    /// A Docker endpoint by id, to change.
    pub fn endpoint_mut(&mut self, id: &str) -> Option<&mut DockerEndpoint> {
        self.endpoints.iter_mut().find(|e| e.id == id)
    }

    /// Whether a pool bound to weft network `network` handed `ip` to
    /// Docker.
    pub fn held_by_pool(&self, network: &str, ip: IpAddr) -> bool {
        self.pools
            .iter()
            .any(|p| p.network.as_deref() == Some(network) && p.held.contains(&ip))
    }
}
