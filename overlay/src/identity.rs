//! A member's identity in SWIM: its name, where its gossip goes, and the
//! counters that tell one life of a host from the next.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// A member's identity in SWIM.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeIdentity {
    /// `--node-name`.
    pub name: String,
    /// The address gossip is sent to (`--listen`).
    pub gossip: SocketAddr,
    /// Larger on every daemon start.
    pub boot: u64,
    /// Bumped when this member rejoins after being declared down.
    pub renewal: u32,
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
        (self.boot, self.renewal) > (adversary.boot, adversary.renewal)
    }
}
