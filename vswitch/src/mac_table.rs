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
//! - Static entries ([`MacTable::set_static`]): an endpoint's own MAC,
//!   known from its configuration, is pinned to its port: it never ages,
//!   is not counted against the capacity (there is one per port), and
//!   learning never moves it ([`Learned::Pinned`]: another port sending
//!   with it is spoofing).
//! - Per-port limit: a port may hold at most `per_port` learned entries
//!   ([`MacTable::with_port_limit`]); past that a new MAC from it is not
//!   learned ([`Learned::PortFull`]), so one port flooding MACs fills its
//!   own share, not the table.
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

/// Default learned entries per port: a VM bridging its own guests or
/// nested containers needs a few dozen; a flood needs thousands.
pub const DEFAULT_PORT_LIMIT: usize = 256;

/// One network's MAC table. See the module header.
#[derive(Debug, Clone)]
pub struct MacTable {
    entries: HashMap<MacAddr, Entry, RandomState>,
    capacity: usize,
    ageing: Duration,
    per_port: usize,
    /// Learned (not static) entries per port.
    learned: rustc_hash::FxHashMap<PortId, usize>,
    /// Learned entries in all.
    dynamic: usize,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    port: PortId,
    last_seen: Instant,
    /// A static entry (see the module header).
    fixed: bool,
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
    /// The port holds its limit of learned entries; not learned.
    PortFull,
    /// A static entry of another port: not moved.
    Pinned {
        /// The port the MAC belongs to.
        owner: PortId,
    },
}

impl MacTable {
    /// An empty table (no per-port limit below the capacity).
    pub fn new(capacity: usize, ageing: Duration) -> Self {
        MacTable {
            entries: HashMap::with_capacity_and_hasher(capacity.min(64), RandomState::new()),
            capacity,
            ageing,
            per_port: capacity,
            learned: rustc_hash::FxHashMap::default(),
            dynamic: 0,
        }
    }

    /// The same with at most `per_port` learned entries per port.
    pub fn with_port_limit(mut self, per_port: usize) -> Self {
        self.per_port = per_port;
        self
    }

    fn count(&self, port: PortId) -> usize {
        self.learned.get(&port).copied().unwrap_or(0)
    }

    fn add_count(&mut self, port: PortId) {
        *self.learned.entry(port).or_insert(0) += 1;
        self.dynamic += 1;
    }

    fn drop_count(learned: &mut rustc_hash::FxHashMap<PortId, usize>, port: PortId) {
        if let Some(n) = learned.get_mut(&port) {
            *n -= 1;
            if *n == 0 {
                learned.remove(&port);
            }
        }
    }

    /// Record that `mac` was seen on `port` at `now`.
    pub fn learn(&mut self, mac: MacAddr, port: PortId, now: Instant) -> Learned {
        self.learn_within(mac, port, now, self.per_port)
    }

    /// [`MacTable::learn`] without the per-port limit: for a tunnel port,
    /// which carries every endpoint of another host.
    pub fn learn_unlimited(&mut self, mac: MacAddr, port: PortId, now: Instant) -> Learned {
        self.learn_within(mac, port, now, usize::MAX)
    }

    fn learn_within(
        &mut self,
        mac: MacAddr,
        port: PortId,
        now: Instant,
        per_port: usize,
    ) -> Learned {
        if let Some(entry) = self.entries.get_mut(&mac) {
            if entry.fixed {
                return if entry.port == port {
                    Learned::Refreshed
                } else {
                    Learned::Pinned { owner: entry.port }
                };
            }
            if entry.port == port {
                entry.last_seen = now;
                return Learned::Refreshed;
            }
            let entry = *entry;
            if self.count(port) >= per_port {
                return Learned::PortFull;
            }
            Self::drop_count(&mut self.learned, entry.port);
            self.dynamic -= 1;
            self.add_count(port);
            self.entries.insert(
                mac,
                Entry {
                    port,
                    last_seen: now,
                    fixed: false,
                },
            );
            return Learned::Moved { from: entry.port };
        }
        if self.count(port) >= per_port || self.dynamic >= self.capacity {
            self.expire(now);
            if self.count(port) >= per_port {
                return Learned::PortFull;
            }
            if self.dynamic >= self.capacity {
                return Learned::TableFull;
            }
        }
        self.entries.insert(
            mac,
            Entry {
                port,
                last_seen: now,
                fixed: false,
            },
        );
        self.add_count(port);
        Learned::New
    }

    /// Pin `mac` to `port` (an endpoint's own MAC): replaces whatever was
    /// learned for it.
    pub fn set_static(&mut self, mac: MacAddr, port: PortId, now: Instant) {
        let old = self.entries.insert(
            mac,
            Entry {
                port,
                last_seen: now,
                fixed: true,
            },
        );
        if let Some(old) = old.filter(|e| !e.fixed) {
            Self::drop_count(&mut self.learned, old.port);
            self.dynamic -= 1;
        }
    }

    /// The port `mac` was last seen on (or is pinned to), unless a learned
    /// entry has aged out.
    pub fn lookup(&self, mac: MacAddr, now: Instant) -> Option<PortId> {
        let entry = self.entries.get(&mac)?;
        if !entry.fixed && now.saturating_duration_since(entry.last_seen) >= self.ageing {
            return None;
        }
        Some(entry.port)
    }

    /// Whether `mac` is pinned to a port other than `port`.
    pub fn is_pinned_elsewhere(&self, mac: MacAddr, port: PortId) -> bool {
        self.entries
            .get(&mac)
            .is_some_and(|e| e.fixed && e.port != port)
    }

    /// Remove every learned entry that has aged out; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let before = self.entries.len();
        let ageing = self.ageing;
        let learned = &mut self.learned;
        self.entries.retain(|_, e| {
            let keep = e.fixed || now.saturating_duration_since(e.last_seen) < ageing;
            if !keep {
                Self::drop_count(learned, e.port);
            }
            keep
        });
        let removed = before - self.entries.len();
        self.dynamic -= removed;
        removed
    }

    /// Remove every entry that points at `port`, static ones too.
    pub fn forget_port(&mut self, port: PortId) {
        self.entries.retain(|_, e| e.port != port);
        self.dynamic -= self.learned.remove(&port).unwrap_or(0);
    }

    /// Every live entry: MAC, port, whether static, time since last seen
    /// (zero for static entries).
    pub fn entries(&self, now: Instant) -> Vec<(MacAddr, PortId, bool, Duration)> {
        self.entries
            .iter()
            .filter_map(|(mac, e)| {
                let age = now.saturating_duration_since(e.last_seen);
                if e.fixed {
                    Some((*mac, e.port, true, Duration::ZERO))
                } else {
                    (age < self.ageing).then_some((*mac, e.port, false, age))
                }
            })
            .collect()
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

    #[test]
    fn static_entries_are_pinned_and_never_age() {
        let t0 = Instant::now();
        let mut table = MacTable::new(2, Duration::from_secs(10));
        table.learn(mac(1), PortId(9), t0);
        table.set_static(mac(1), PortId(1), t0);
        assert_eq!(table.lookup(mac(1), t0), Some(PortId(1)));
        assert_eq!(
            table.learn(mac(1), PortId(2), t0),
            Learned::Pinned { owner: PortId(1) }
        );
        assert!(table.is_pinned_elsewhere(mac(1), PortId(2)));
        assert!(!table.is_pinned_elsewhere(mac(1), PortId(1)));
        let later = t0 + Duration::from_secs(3_600);
        table.expire(later);
        assert_eq!(table.lookup(mac(1), later), Some(PortId(1)));
        // Not counted against the capacity: two learned entries still fit.
        assert_eq!(table.learn(mac(2), PortId(2), later), Learned::New);
        assert_eq!(table.learn(mac(3), PortId(3), later), Learned::New);
        assert_eq!(table.learn(mac(4), PortId(3), later), Learned::TableFull);
        table.forget_port(PortId(1));
        assert_eq!(table.lookup(mac(1), later), None);
    }

    #[test]
    fn a_port_learns_up_to_its_limit_and_the_others_still_learn() {
        let t0 = Instant::now();
        let mut table = MacTable::new(100, Duration::from_secs(10)).with_port_limit(3);
        for m in 0..3 {
            assert_eq!(table.learn(mac(m), PortId(1), t0), Learned::New);
        }
        assert_eq!(table.learn(mac(50), PortId(1), t0), Learned::PortFull);
        assert_eq!(table.learn(mac(60), PortId(2), t0), Learned::New);
        // A learned MAC moving to the full port is refused too.
        assert_eq!(table.learn(mac(60), PortId(1), t0), Learned::PortFull);
        // Ageing frees the share.
        let later = t0 + Duration::from_secs(10);
        assert_eq!(table.learn(mac(50), PortId(1), later), Learned::New);
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
                if !matches!(outcome, Learned::TableFull | Learned::PortFull) {
                    prop_assert_eq!(table.lookup(mac(m), now), Some(PortId(port)));
                }
            }
        }
    }
}
