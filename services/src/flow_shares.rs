//! Shares of a NAT flow table: how many flows one sandbox, and one
//! network, may hold at once, so that a sandbox that opens flows as fast
//! as it can (a flood, a leak, a scan) cannot take the table from the
//! others. Sans-IO bookkeeping, one per table ([`crate::nat`] for UDP and
//! ICMP echo, [`crate::tcp_nat`] for TCP).
//!
//! # Theory of operation
//!
//! A table has a capacity (its flow bound, lowered to what the daemon's
//! file descriptor budget allows, since every outbound flow holds a host
//! socket). Before a new flow enters, [`FlowShares::admit`] checks three
//! bounds and names the first one that is reached:
//!
//! - the table: `capacity` flows;
//! - the network: half the capacity ([`FlowShares::network_share`]);
//! - the sandbox (the switch port the flow came in on): a quarter of the
//!   capacity, never fewer than [`MIN_SANDBOX_SHARE`] flows (all of a table
//!   smaller than that) ([`FlowShares::sandbox_share`]).
//!
//! So one flooding sandbox holds at most a quarter of the table, one
//! flooding network half of it: with up to three sandboxes (or one
//! network) flooding at once, every other sandbox's new flow is admitted
//! as long as that sandbox is under its own share. Flows that come in on a
//! published port (a client of the host calling a sandbox's server) count
//! as one more "sandbox" of their network, so clients flooding a published
//! port are bounded the same way. A refused flow is answered by the core
//! (TCP reset, ICMP administratively prohibited) and counted by reason.
//! Nothing is evicted: a live flow is never pushed out by a new one.
//!
//! State: one counter per network and per sandbox that holds flows (their
//! entries leave with their last flow), so the bookkeeping is bounded by
//! the table itself.

use rustc_hash::FxHashMap;
use weft_vswitch::{NetworkId, PortId};

/// The smallest sandbox share: below a table of this size a sandbox may
/// use all of it (a small `--nat-max-flows` for tests and tiny hosts).
pub const MIN_SANDBOX_SHARE: usize = 64;

/// Who a flow belongs to for its share: its network and the switch port it
/// came in on (None: a client of a published port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ShareKey {
    /// The flow's network.
    pub network: NetworkId,
    /// The sandbox's switch port; None for a client of a published port.
    pub sandbox: Option<PortId>,
}

/// Why a new flow was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The table (or the daemon's fd budget for it) is full.
    TableFull,
    /// The flow's network holds its share.
    NetworkShare,
    /// The flow's sandbox holds its share.
    SandboxShare,
}

/// Flows refused, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RefusalCounters {
    /// The table (or the fd budget) was full.
    pub table_full: u64,
    /// The network held its share.
    pub network_share: u64,
    /// The sandbox held its share.
    pub sandbox_share: u64,
}

/// See the module header.
#[derive(Debug, Clone)]
pub struct FlowShares {
    capacity: usize,
    total: usize,
    networks: FxHashMap<NetworkId, usize>,
    sandboxes: FxHashMap<ShareKey, usize>,
    refused: FxHashMap<NetworkId, RefusalCounters>,
}

impl FlowShares {
    /// Shares of a table of `capacity` flows.
    pub fn new(capacity: usize) -> Self {
        FlowShares {
            capacity,
            total: 0,
            networks: FxHashMap::default(),
            sandboxes: FxHashMap::default(),
            refused: FxHashMap::default(),
        }
    }

    /// The table's capacity.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Flows one network may hold: half the table (all of a table of one).
    pub fn network_share(&self) -> usize {
        (self.capacity / 2).max(self.sandbox_share())
    }

    /// Flows one sandbox may hold: a quarter of the table, never fewer
    /// than [`MIN_SANDBOX_SHARE`] (nor more than the table).
    pub fn sandbox_share(&self) -> usize {
        (self.capacity / 4)
            .max(MIN_SANDBOX_SHARE)
            .min(self.capacity)
    }

    /// Whether a new flow of `key` may enter; counts a refusal.
    ///
    /// # Errors
    ///
    /// The bound that is reached, the table's first, then the network's,
    /// then the sandbox's.
    pub fn admit(&mut self, key: ShareKey) -> Result<(), Refusal> {
        let refusal = if self.total >= self.capacity {
            Some(Refusal::TableFull)
        } else if self.networks.get(&key.network).copied().unwrap_or(0) >= self.network_share() {
            Some(Refusal::NetworkShare)
        } else if self.sandboxes.get(&key).copied().unwrap_or(0) >= self.sandbox_share() {
            Some(Refusal::SandboxShare)
        } else {
            None
        };
        let Some(refusal) = refusal else {
            self.total += 1;
            *self.networks.entry(key.network).or_insert(0) += 1;
            *self.sandboxes.entry(key).or_insert(0) += 1;
            return Ok(());
        };
        let counters = self.refused.entry(key.network).or_default();
        match refusal {
            Refusal::TableFull => counters.table_full += 1,
            Refusal::NetworkShare => counters.network_share += 1,
            Refusal::SandboxShare => counters.sandbox_share += 1,
        }
        Err(refusal)
    }

    /// A flow of `key` ended.
    pub fn release(&mut self, key: ShareKey) {
        self.total = self.total.saturating_sub(1);
        if let Some(n) = self.networks.get_mut(&key.network) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.networks.remove(&key.network);
            }
        }
        if let Some(n) = self.sandboxes.get_mut(&key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.sandboxes.remove(&key);
            }
        }
    }

    /// Flows a network holds now.
    pub fn network_flows(&self, network: NetworkId) -> usize {
        self.networks.get(&network).copied().unwrap_or(0)
    }

    /// Refusals of new flows of a network, by reason.
    pub fn refused(&self, network: NetworkId) -> RefusalCounters {
        self.refused.get(&network).copied().unwrap_or_default()
    }

    /// Forget a network's refusal counters (the network is gone).
    pub fn remove_network(&mut self, network: NetworkId) {
        self.refused.remove(&network);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(network: u32, port: u32) -> ShareKey {
        ShareKey {
            network: NetworkId(network),
            sandbox: Some(PortId(port)),
        }
    }

    #[test]
    fn a_flooding_sandbox_stops_at_its_share_and_others_still_enter() {
        let mut shares = FlowShares::new(4096);
        assert_eq!(shares.sandbox_share(), 1024);
        assert_eq!(shares.network_share(), 2048);
        for _ in 0..1024 {
            shares.admit(key(1, 1)).unwrap();
        }
        assert_eq!(shares.admit(key(1, 1)), Err(Refusal::SandboxShare));
        shares.admit(key(1, 2)).unwrap();
        shares.admit(key(2, 3)).unwrap();
        assert_eq!(shares.refused(NetworkId(1)).sandbox_share, 1);
        shares.release(key(1, 1));
        shares.admit(key(1, 1)).unwrap();
    }

    #[test]
    fn a_network_stops_at_half_and_the_table_at_its_capacity() {
        let mut shares = FlowShares::new(256);
        assert_eq!(shares.sandbox_share(), 64);
        for port in 0..2 {
            for _ in 0..64 {
                shares.admit(key(1, port)).unwrap();
            }
        }
        assert_eq!(shares.admit(key(1, 9)), Err(Refusal::NetworkShare));
        for port in 10..12 {
            for _ in 0..64 {
                shares.admit(key(2, port)).unwrap();
            }
        }
        assert_eq!(shares.admit(key(3, 20)), Err(Refusal::TableFull));
        assert_eq!(shares.refused(NetworkId(3)).table_full, 1);
        assert_eq!(shares.network_flows(NetworkId(1)), 128);
    }

    #[test]
    fn a_small_table_is_all_one_sandboxs() {
        let mut shares = FlowShares::new(2);
        assert_eq!(shares.sandbox_share(), 2);
        assert_eq!(shares.network_share(), 2);
        shares.admit(key(1, 1)).unwrap();
        shares.admit(key(1, 1)).unwrap();
        assert_eq!(shares.admit(key(1, 2)), Err(Refusal::TableFull));
    }

    #[test]
    fn releasing_every_flow_leaves_no_entries() {
        let mut shares = FlowShares::new(100);
        for port in 0..10 {
            shares.admit(key(port, port)).unwrap();
        }
        for port in 0..10 {
            shares.release(key(port, port));
        }
        assert!(shares.networks.is_empty() && shares.sandboxes.is_empty());
        assert_eq!(shares.total, 0);
    }
}
