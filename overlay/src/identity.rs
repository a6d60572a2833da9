//! A host's identity in the cluster: its node id, its display name, where
//! its gossip goes, and the counters that tell one life of a host from the
//! next.
//!
//! # Theory of operation
//!
//! The cluster keys everything on the [`NodeId`]: 128 random bits drawn
//! once from the operating system's randomness when a daemon first starts
//! with a state directory and kept there (the driver's `node-id` file,
//! [`crate::driver::node_id`]). Directory owners, SWIM identities, host
//! records, address-block leases and every tie-break use it; two hosts
//! cannot clash by accident (a collision needs about 2^64 hosts).
//!
//! The node *name* (`--node-name`, default the hostname) is for people:
//! `weft peers` and the logs show it, with the id's first eight hex digits
//! ([`NodeId::short`]) beside it. Two hosts may share a name when it is
//! their hostname (cloned VMs, namespaces on one laptop): they just work,
//! and each logs a warning. A name given explicitly with `--node-name` is
//! a promise of uniqueness: a member that joins with a name another live
//! member already uses, explicitly, is refused ([`crate::node`]).
//!
//! Why not the name, as before: everything keyed on it made two hosts that
//! share a hostname one owner, so each ignored the other's records and
//! they never shared a network.
//!
//! foca keys its membership on [`NodeIdentity::addr`], the gossip address,
//! because a joiner announces to an address before it knows anyone's id;
//! the id is part of the identity it gossips, and a renewed or restarted
//! identity at one address wins by `(boot, renewal)`.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// A host's id in the cluster: random, generated once, kept in the state
/// directory. Shown as 32 lowercase hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId(pub u128);

/// Why a node id did not parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a node id is 32 hexadecimal digits")]
pub struct NodeIdParseError;

/// A member's identity in SWIM.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeIdentity {
    /// What the cluster keys on.
    pub id: NodeId,
    /// `--node-name` or the hostname: a display name.
    pub name: String,
    /// The name was given with `--node-name` (and must be unique).
    pub explicit_name: bool,
    /// The address gossip is sent to (`--listen`).
    pub gossip: SocketAddr,
    /// Larger on every daemon start.
    pub boot: u64,
    /// Bumped when this member rejoins after being declared down.
    pub renewal: u32,
}

impl NodeId {
    /// The id made of these random bytes.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(u128::from_be_bytes(bytes))
    }

    /// The first eight hex digits, to tell hosts of one name apart.
    pub fn short(&self) -> String {
        let full = self.to_string();
        full.get(..8).unwrap_or(&full).to_owned()
    }
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl std::str::FromStr for NodeId {
    type Err = NodeIdParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.len() != 32 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(NodeIdParseError);
        }
        u128::from_str_radix(text, 16)
            .map(Self)
            .map_err(|_| NodeIdParseError)
    }
}

impl NodeIdentity {
    /// The name and short id, as logs and `weft peers` show a member.
    pub fn label(&self) -> String {
        format!("{} ({})", self.name, self.id.short())
    }
}

impl foca::Identity for NodeIdentity {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(Self {
            renewal: self.renewal.wrapping_add(1),
            ..self.clone()
        })
    }

    fn addr(&self) -> SocketAddr {
        self.gossip
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        (self.boot, self.renewal, self.id) > (adversary.boot, adversary.renewal, adversary.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_print_and_parse() {
        let id = NodeId::from_bytes([0xab; 16]);
        let text = id.to_string();
        assert_eq!(text.len(), 32);
        assert_eq!(text.parse::<NodeId>(), Ok(id));
        assert_eq!(id.short(), "abababab");
        assert_eq!(NodeId(1).to_string(), format!("{:031}1", 0));
        for bad in [
            "",
            "abc",
            &"g".repeat(32),
            &"a".repeat(33),
            "+0000000000000000000000000000001",
        ] {
            assert!(bad.parse::<NodeId>().is_err(), "{bad}");
        }
    }
}
