//! The MAC table of one network: which port each source MAC was last seen
//! on.
//!
//! # Theory of operation
//!
//! Every frame's source MAC is learned on its ingress port
//! ([`MacTable::learn`]); unicast destinations are looked up
//! ([`MacTable::lookup`]) to pick one egress port instead of flooding.
//!
//! - Ageing: an entry not refreshed for [`DEFAULT_AGEING`] (300 s, the IEEE
//!   802.1D default and Linux bridge's `ageing_time`) is treated as absent
//!   by `lookup` and removed by [`MacTable::expire`], which the switch calls
//!   from its timer.
//! - Capacity: at most `capacity` entries ([`DEFAULT_CAPACITY`] unless the
//!   network says otherwise). When full, expired entries are purged; if the
//!   table is still full the new MAC is not learned (frames to it keep
//!   flooding) and existing entries are kept. A MAC-flooding sandbox thus
//!   cannot evict its neighbours' entries, and memory stays bounded.
//! - Moves: a MAC seen on another port moves to it at once (a sandbox
//!   re-attached, a VM migrated); the move is reported to the caller.
//! - Ports that leave are forgotten with [`MacTable::forget_port`].
//! - Hashing: aHash with a random key per table: about as fast as FxHash
//!   on 6-byte keys, but a sandbox cannot craft MACs that collide (hash
//!   flooding), since it does not know the key.

use std::collections::HashMap;

use ahash::RandomState;
use std::time::{Duration, Instant};

use crate::ids::PortId;
use crate::wire::ethernet::MacAddr;

/// Default ageing time: IEEE 802.1D's (and Linux bridge's) 300 s.
pub const DEFAULT_AGEING: Duration = Duration::from_secs(300);

/// Default number of entries per network: far above any real network of
/// sandboxes, and at ~40 bytes an entry about 320 KiB when full.
pub const DEFAULT_CAPACITY: usize = 8192;

/// One network's MAC table. See the module header.
#[derive(Debug, Clone)]
pub struct MacTable {
    entries: HashMap<MacAddr, Entry, RandomState>,
    capacity: usize,
    ageing: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    port: PortId,
    last_seen: Instant,
}

/// What [`MacTable::learn`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    /// Already known on this port; its age was refreshed.
    Refreshed,
    /// A new entry.
    New,
    /// Known on another port; moved.
    Moved {
        /// Where it was before.
        from: PortId,
    },
    /// The table is full; not learned.
    TableFull,
}

impl MacTable {
    /// An empty table.
    pub fn new(capacity: usize, ageing: Duration) -> Self {
        MacTable {
            entries: HashMap::with_capacity_and_hasher(capacity.min(64), RandomState::new()),
            capacity,
            ageing,
        }
    }

    /// Record that `mac` was seen on `port` at `now`.
    pub fn learn(&mut self, mac: MacAddr, port: PortId, now: Instant) -> Learned {
        if let Some(entry) = self.entries.get_mut(&mac) {
            let from = entry.port;
            entry.port = port;
            entry.last_seen = now;
            return if from == port {
                Learned::Refreshed
            } else {
                Learned::Moved { from }
            };
        }
        if self.entries.len() >= self.capacity {
            self.expire(now);
            if self.entries.len() >= self.capacity {
                return Learned::TableFull;
            }
        }
        self.entries.insert(
            mac,
            Entry {
                port,
                last_seen: now,
            },
        );
        Learned::New
    }

    /// The port `mac` was last seen on, unless that entry has aged out.
    pub fn lookup(&self, mac: MacAddr, now: Instant) -> Option<PortId> {
        let entry = self.entries.get(&mac)?;
        if now.saturating_duration_since(entry.last_seen) >= self.ageing {
            return None;
        }
        Some(entry.port)
    }

    /// Remove every entry that has aged out; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let before = self.entries.len();
        let ageing = self.ageing;
        self.entries
            .retain(|_, e| now.saturating_duration_since(e.last_seen) < ageing);
        before - self.entries.len()
    }

    /// Remove every entry that points at `port`.
    pub fn forget_port(&mut self, port: PortId) {
        self.entries.retain(|_, e| e.port != port);
    }

    /// Number of entries, aged or not.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there is no entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The ageing time.
    pub fn ageing(&self) -> Duration {
        self.ageing
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn mac(n: u8) -> MacAddr {
        MacAddr([0x02, 0, 0, 0, 0, n])
    }

    #[test]
    fn learns_refreshes_and_moves() {
        let t0 = Instant::now();
        let mut table = MacTable::new(16, DEFAULT_AGEING);
        assert_eq!(table.learn(mac(1), PortId(1), t0), Learned::New);
        assert_eq!(table.learn(mac(1), PortId(1), t0), Learned::Refreshed);
        assert_eq!(
            table.learn(mac(1), PortId(2), t0),
            Learned::Moved { from: PortId(1) }
        );
        assert_eq!(table.lookup(mac(1), t0), Some(PortId(2)));
        assert_eq!(table.lookup(mac(2), t0), None);
    }

    #[test]
    fn entries_age_out() {
        let t0 = Instant::now();
        let mut table = MacTable::new(16, Duration::from_secs(300));
        table.learn(mac(1), PortId(1), t0);
        assert_eq!(
            table.lookup(mac(1), t0 + Duration::from_secs(299)),
            Some(PortId(1))
        );
        assert_eq!(table.lookup(mac(1), t0 + Duration::from_secs(300)), None);
        assert_eq!(table.expire(t0 + Duration::from_secs(300)), 1);
        assert!(table.is_empty());
    }

    #[test]
    fn full_table_keeps_old_entries_until_they_expire() {
        let t0 = Instant::now();
        let mut table = MacTable::new(2, Duration::from_secs(10));
        table.learn(mac(1), PortId(1), t0);
        table.learn(mac(2), PortId(1), t0);
        assert_eq!(table.learn(mac(3), PortId(2), t0), Learned::TableFull);
        assert_eq!(table.lookup(mac(1), t0), Some(PortId(1)));
        let later = t0 + Duration::from_secs(10);
        assert_eq!(table.learn(mac(3), PortId(2), later), Learned::New);
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn forget_port_removes_only_its_entries() {
        let t0 = Instant::now();
        let mut table = MacTable::new(16, DEFAULT_AGEING);
        table.learn(mac(1), PortId(1), t0);
        table.learn(mac(2), PortId(2), t0);
        table.forget_port(PortId(1));
        assert_eq!(table.lookup(mac(1), t0), None);
        assert_eq!(table.lookup(mac(2), t0), Some(PortId(2)));
    }

    proptest! {
        #[test]
        fn never_exceeds_capacity(
            capacity in 1usize..32,
            ops in proptest::collection::vec((any::<u8>(), 0u32..4, 0u64..1000), 0..400),
        ) {
            let t0 = Instant::now();
            let mut table = MacTable::new(capacity, Duration::from_secs(100));
            let mut now = t0;
            for (m, port, dt) in ops {
                now += Duration::from_millis(dt);
                let outcome = table.learn(mac(m), PortId(port), now);
                prop_assert!(table.len() <= capacity);
                if outcome != Learned::TableFull {
                    prop_assert_eq!(table.lookup(mac(m), now), Some(PortId(port)));
                }
            }
        }
    }
}
