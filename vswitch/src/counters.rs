//! Per-port counters: frames and bytes in and out, and drops by reason.
//!
//! The data-path thread is the only writer; the control plane reads them
//! for `network inspect`. Relaxed atomics on a cache line that only one
//! thread writes cost the same as plain integers.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Why a frame was not delivered. Dropping is a decision, not an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Shorter than an Ethernet header (or its `virtio_net_hdr`).
    Truncated,
    /// Source MAC is multicast or all-zero.
    InvalidSource,
    /// Destination was learned on the ingress port itself.
    Hairpin,
    /// For the gateway, but no gateway service handles it (no route out).
    NoRoute,
    /// For the gateway, but its ARP/IP/ICMP headers do not parse.
    Malformed,
    /// The egress TAP would block or failed to take the frame.
    EgressFailed,
    /// The ingress port is not attached to any network.
    UnknownPort,
    /// The NAT flow table is full: the new flow was refused.
    NatFull,
    /// To a port with an ingress rate limit whose queue was full.
    RateLimited,
    /// Sent with a MAC or address that is not the port's (port security).
    Spoofed,
    /// From a new MAC past the port's limit of learned MACs.
    MacLimit,
    /// From a macvlan parent's LAN to a MAC that is none of the network's
    /// endpoints: another LAN host's, or the parent host's own.
    NotOurs,
    /// Between two endpoints of a `private` macvlan network.
    Isolated,
}

/// Counters of one port. See the module header for the threading rule.
#[derive(Debug, Default)]
pub struct PortCounters {
    rx_frames: AtomicU64,
    rx_bytes: AtomicU64,
    tx_frames: AtomicU64,
    tx_bytes: AtomicU64,
    drops: [AtomicU64; DropReason::COUNT],
}

/// A copy of a port's counters at one moment, for the API.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PortCountersSnapshot {
    /// Frames read from the port.
    pub rx_frames: u64,
    /// Bytes read from the port (without the `virtio_net_hdr`).
    pub rx_bytes: u64,
    /// Frames written to the port.
    pub tx_frames: u64,
    /// Bytes written to the port (without the `virtio_net_hdr`).
    pub tx_bytes: u64,
    /// Frames read from the port and dropped, by reason (only non-zero ones).
    pub drops: std::collections::BTreeMap<&'static str, u64>,
}

impl DropReason {
    /// Number of reasons.
    pub const COUNT: usize = 13;
    /// Every reason, in index order.
    pub const ALL: [DropReason; Self::COUNT] = [
        DropReason::Truncated,
        DropReason::InvalidSource,
        DropReason::Hairpin,
        DropReason::NoRoute,
        DropReason::Malformed,
        DropReason::EgressFailed,
        DropReason::UnknownPort,
        DropReason::NatFull,
        DropReason::RateLimited,
        DropReason::Spoofed,
        DropReason::MacLimit,
        DropReason::NotOurs,
        DropReason::Isolated,
    ];

    /// Index into a counter array.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Name used in logs and the API.
    pub const fn as_str(self) -> &'static str {
        match self {
            DropReason::Truncated => "truncated",
            DropReason::InvalidSource => "invalid_source",
            DropReason::Hairpin => "hairpin",
            DropReason::NoRoute => "no_route",
            DropReason::Malformed => "malformed",
            DropReason::EgressFailed => "egress_failed",
            DropReason::UnknownPort => "unknown_port",
            DropReason::NatFull => "nat_full",
            DropReason::RateLimited => "rate_limited",
            DropReason::Spoofed => "spoofed",
            DropReason::MacLimit => "mac_limit",
            DropReason::NotOurs => "not_ours",
            DropReason::Isolated => "isolated",
        }
    }
}

impl PortCounters {
    /// Count a frame read from the port.
    pub fn count_rx(&self, bytes: usize) {
        self.rx_frames.fetch_add(1, Ordering::Relaxed);
        self.rx_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Count a frame written to the port.
    pub fn count_tx(&self, bytes: usize) {
        self.tx_frames.fetch_add(1, Ordering::Relaxed);
        self.tx_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Count a dropped frame.
    pub fn count_drop(&self, reason: DropReason) {
        self.drops[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Drops counted for one reason.
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason.index()].load(Ordering::Relaxed)
    }

    /// Read every counter.
    pub fn snapshot(&self) -> PortCountersSnapshot {
        PortCountersSnapshot {
            rx_frames: self.rx_frames.load(Ordering::Relaxed),
            rx_bytes: self.rx_bytes.load(Ordering::Relaxed),
            tx_frames: self.tx_frames.load(Ordering::Relaxed),
            tx_bytes: self.tx_bytes.load(Ordering::Relaxed),
            drops: DropReason::ALL
                .iter()
                .map(|r| (r.as_str(), self.drops(*r)))
                .filter(|(_, n)| *n > 0)
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_index_their_own_slot() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
        let c = PortCounters::default();
        c.count_drop(DropReason::Hairpin);
        c.count_drop(DropReason::Hairpin);
        c.count_rx(60);
        let s = c.snapshot();
        assert_eq!(s.drops.get("hairpin"), Some(&2));
        assert_eq!(s.drops.len(), 1);
        assert_eq!((s.rx_frames, s.rx_bytes), (1, 60));
    }
}
