//! The cluster directory: who owns which MAC and IP, and which networks exist.
//!
//! # Theory of operation
//!
//! Two kinds of state, replicated differently because they die differently:
//!
//! **Owned records** belong to one host (an [`OwnerId`]: node id and boot
//! id; the node id is random and kept in the state directory, see
//! [`crate::identity`], never the node name, which two hosts may share) and
//! only that host writes them: its [`HostRecord`] (underlay address
//! for VXLAN), its [`EndpointRecord`]s and its address-block [`LeaseRecord`]s.
//! Every write bumps the owner's version counter and stamps the record with
//! it; a deletion leaves a tombstone with its version. So an owner's state is
//! a log summarised by one number: "I have everything of X up to version V".
//! When the owner is declared dead by the membership, its whole table is
//! dropped on every host (and records of owners not currently alive are not
//! accepted), so a dead host's endpoints leave every table. Its leases do
//! not free their blocks at once: each becomes a *held* lease for
//! [`LEASE_GRACE`] (10 minutes), still counted as taken by the allocator
//! and granted to no other node id, so a host that was only paused,
//! partitioned or restarted (same node id, kept in its state directory)
//! finds its blocks, and the addresses its endpoints hold, where it left
//! them. A host restarted with a new id (state directory wiped) does not
//! get them: they stay held until the grace period ends. A restarted host
//! has a new boot id: records of the old boot are discarded when the new
//! one appears.
//!
//! **Networks** are cluster-scoped: a network created on any host exists on
//! all and must outlive its creator. They form a last-writer-wins map keyed
//! by [`ClusterNetworkId`], stamped with a Lamport clock and the writer's
//! node id ([`Stamp`]); deletion is a tombstone, kept so a late copy cannot
//! resurrect the network.
//!
//! Replication (driven by [`crate::Node`]): a local change is pushed at once
//! to a few random members, and every `anti_entropy_interval` each host sends
//! a [`Digest`] of `owner -> version` plus a hash of the network map to one
//! random member, which answers with what the sender lacks (records newer
//! than the digest, or the whole network map if the hashes differ) and asks
//! for what it lacks itself. That push-pull repairs lost datagrams, catches
//! up a new joiner and re-converges a healed partition: the state is a
//! join-semilattice (per-key max of version / stamp), so the order and
//! repetition of merges do not matter.
//!
//! # State and capacities
//!
//! One table per live member; per owner, one entry per key ever written
//! (tombstones are kept for the owner's lifetime: an owner that churns
//! endpoints grows by one small tombstone per distinct MAC, reclaimed when it
//! restarts). Held leases: at most the leases of the members that died in
//! the last [`LEASE_GRACE`], each dropped when its grace ends or its holder
//! withdraws it. Network tombstones are kept forever. [`MAX_ALIASES`] and
//! [`MAX_NAME_LEN`] bound one endpoint record so it fits in a datagram.
//!
//! # Limits
//!
//! Every holder of the cluster key is trusted: a member could forge records
//! for another owner. Two hosts creating a network of the same *name* at the
//! same moment produce two networks (different ids); the controller decides
//! which one a name refers to ([`Directory::network_by_name`] picks the
//! lowest id).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::identity::NodeId;
use crate::vxlan::Vni;

/// Most aliases one endpoint may have.
pub const MAX_ALIASES: usize = 16;
/// Longest DNS name or alias of an endpoint, in bytes (RFC 1035's 253).
pub const MAX_NAME_LEN: usize = 253;
/// Most IP addresses one endpoint may have.
pub const MAX_ENDPOINT_IPS: usize = 8;
/// How long the leases of a member declared dead stay held for it: longer
/// than a reboot or a maintenance restart takes, short enough that a host
/// gone for good gives its address blocks back the same day.
pub const LEASE_GRACE: Duration = Duration::from_secs(600);

/// A host incarnation: its node id and the boot id it started with.
/// Ordered by id then boot: the order that breaks allocation ties.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OwnerId {
    /// The node id, random and kept in the state directory: unique.
    pub id: NodeId,
    /// Chosen at daemon start, larger on every restart (e.g. start time in
    /// milliseconds since the epoch).
    pub boot: u64,
}

/// A cluster-scope network's id (Docker-style 64 hex digits).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ClusterNetworkId(pub String);

pub use weft_vswitch::MacAddr;

/// A host's own record: where its VXLAN traffic goes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    /// Underlay address and port of the host's VXLAN socket.
    pub underlay: SocketAddr,
}

/// A cluster-scope network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRecord {
    /// The network's name.
    pub name: String,
    /// Its subnet; addresses are allocated from it ([`crate::allocation`]).
    pub subnet: IpNet,
    /// The gateway address, never allocated to an endpoint.
    pub gateway: Option<IpAddr>,
    /// Its VXLAN network identifier.
    pub vni: Vni,
    /// Driver options (`--opt K=V`).
    pub options: BTreeMap<String, String>,
}

/// An endpoint on some host; the owner of the record is the host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRecord {
    /// Network it is attached to.
    pub network: ClusterNetworkId,
    /// Its MAC address.
    pub mac: MacAddr,
    /// Its addresses.
    pub ips: Vec<IpAddr>,
    /// Its DNS name.
    pub name: Option<String>,
    /// Its DNS aliases.
    pub aliases: Vec<String>,
}

/// A block of addresses of a network leased by its owner.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// The network.
    pub network: ClusterNetworkId,
    /// Index of the block in the subnet ([`crate::allocation::BlockPlan`]).
    pub block: u64,
}

/// One owned record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    /// The host record.
    Host(HostRecord),
    /// An endpoint.
    Endpoint(EndpointRecord),
    /// An address-block lease.
    Lease(LeaseRecord),
}

/// What identifies an owned record within its owner's table.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum RecordKey {
    /// The host record.
    Host,
    /// An endpoint, by network and MAC.
    Endpoint(ClusterNetworkId, MacAddr),
    /// A lease, by network and block.
    Lease(ClusterNetworkId, u64),
}

/// An owned record (or its tombstone) with the owner's version at its write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionedRecord {
    /// The key.
    pub key: RecordKey,
    /// Owner's version counter when written.
    pub version: u64,
    /// `None`: deleted.
    pub record: Option<Record>,
}

/// A last-writer-wins stamp for network records: Lamport counter, then
/// writer's node id as tie-break.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Stamp {
    /// Lamport clock value.
    pub counter: u64,
    /// Node id of the writer.
    pub writer: NodeId,
}

/// A network (or its tombstone) with its stamp.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkEntry {
    /// The network's id.
    pub id: ClusterNetworkId,
    /// When and by whom it was last written.
    pub stamp: Stamp,
    /// `None`: deleted.
    pub record: Option<NetworkRecord>,
}

/// Summary of what a host knows: sent in anti-entropy rounds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    /// First owner id covered by this digest (inclusive).
    pub covers_from: NodeId,
    /// Last owner id covered (inclusive); `None`: to the end.
    pub covers_to: Option<NodeId>,
    /// `(owner, version)` for every owner the sender has in that range.
    pub owners: Vec<(OwnerId, u64)>,
    /// Hash of the sender's whole network map.
    pub networks_hash: u64,
}

/// A remote endpoint as the data path needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointLocation<'a> {
    /// Owning host.
    pub owner: &'a OwnerId,
    /// Underlay address of the owning host's VXLAN socket, once its host
    /// record arrived.
    pub underlay: Option<SocketAddr>,
    /// The endpoint.
    pub endpoint: &'a EndpointRecord,
}

/// One owner's table.
#[derive(Clone, Debug, Default)]
struct OwnerTable {
    /// Everything up to this version has been received.
    version: u64,
    entries: BTreeMap<RecordKey, (u64, Option<Record>)>,
}

/// A lease of a member declared dead, held for its node id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeldLease {
    /// The node id the block is kept for.
    pub holder: NodeId,
    /// When the grace period ends and the block is free.
    pub until: Instant,
}

/// The replicated directory as one host sees it.
#[derive(Debug)]
pub struct Directory {
    me: OwnerId,
    owners: BTreeMap<OwnerId, OwnerTable>,
    /// Boot id of every member the membership says is alive (or suspect).
    live: BTreeMap<NodeId, u64>,
    /// Leases of members declared dead, by network and block.
    held: BTreeMap<(ClusterNetworkId, u64), HeldLease>,
    networks: BTreeMap<ClusterNetworkId, NetworkEntry>,
    lamport: u64,
    generation: u64,
}

impl OwnerTable {
    fn apply(&mut self, entry: VersionedRecord) -> bool {
        match self.entries.get(&entry.key) {
            Some((version, _)) if *version >= entry.version => false,
            _ => {
                self.entries
                    .insert(entry.key, (entry.version, entry.record));
                true
            }
        }
    }

    fn since(&self, version: u64) -> Vec<VersionedRecord> {
        let mut newer: Vec<VersionedRecord> = self
            .entries
            .iter()
            .filter(|(_, (v, _))| *v > version)
            .map(|(key, (v, record))| VersionedRecord {
                key: key.clone(),
                version: *v,
                record: record.clone(),
            })
            .collect();
        newer.sort_by_key(|entry| entry.version);
        newer
    }

    fn live_records(&self) -> impl Iterator<Item = &Record> {
        self.entries
            .values()
            .filter_map(|(_, record)| record.as_ref())
    }
}

impl Directory {
    /// An empty directory for host `me` (whose own table starts empty).
    pub fn new(me: OwnerId) -> Self {
        let mut owners = BTreeMap::new();
        owners.insert(me.clone(), OwnerTable::default());
        let mut live = BTreeMap::new();
        live.insert(me.id, me.boot);
        Self {
            me,
            owners,
            live,
            held: BTreeMap::new(),
            networks: BTreeMap::new(),
            lamport: 0,
            generation: 0,
        }
    }

    /// This host.
    pub fn me(&self) -> &OwnerId {
        &self.me
    }

    /// Bumped on every change a query could see; the data path re-reads
    /// what it caches when it changes.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    // ---- membership input -------------------------------------------------

    /// The membership says `owner` is alive: accept its records from now on.
    /// Records of an older boot of the same name are dropped.
    pub(crate) fn owner_up(&mut self, owner: &OwnerId) {
        if owner.id == self.me.id {
            return;
        }
        if let Some(&boot) = self.live.get(&owner.id) {
            if boot > owner.boot {
                return;
            }
        }
        self.live.insert(owner.id, owner.boot);
        let stale: Vec<OwnerId> = self
            .owners
            .keys()
            .filter(|known| known.id == owner.id && known.boot < owner.boot)
            .cloned()
            .collect();
        for known in stale {
            self.owners.remove(&known);
            self.generation += 1;
        }
    }

    /// The membership declared `owner` dead at `now`: its records leave the
    /// table, and its leases are held for its node id until
    /// `now + LEASE_GRACE`.
    pub(crate) fn owner_down(&mut self, owner: &OwnerId, now: Instant) {
        if owner.id == self.me.id {
            return;
        }
        if self.live.get(&owner.id) == Some(&owner.boot) {
            self.live.remove(&owner.id);
        }
        if let Some(table) = self.owners.remove(owner) {
            for record in table.live_records() {
                if let Record::Lease(lease) = record {
                    let held = HeldLease {
                        holder: owner.id,
                        until: now + LEASE_GRACE,
                    };
                    self.held.insert((lease.network.clone(), lease.block), held);
                }
            }
            self.generation += 1;
        }
    }

    /// Whether records of `owner` are accepted (alive in the membership).
    pub fn is_live(&self, owner: &OwnerId) -> bool {
        self.live.get(&owner.id) == Some(&owner.boot)
    }

    /// Live owners other than this host.
    pub fn live_peers(&self) -> impl Iterator<Item = OwnerId> + '_ {
        self.live
            .iter()
            .filter(|(id, _)| **id != self.me.id)
            .map(|(id, boot)| OwnerId {
                id: *id,
                boot: *boot,
            })
    }

    // ---- held leases --------------------------------------------------------

    /// Blocks of `network` held for members declared dead, with the node
    /// id each is held for.
    pub fn held_leases(&self, network: &ClusterNetworkId) -> Vec<(u64, HeldLease)> {
        self.held
            .range((network.clone(), 0)..=(network.clone(), u64::MAX))
            .map(|((_, block), held)| (*block, *held))
            .collect()
    }

    /// Every lease held for node `holder`.
    pub(crate) fn held_for(&self, holder: NodeId) -> Vec<LeaseRecord> {
        self.held
            .iter()
            .filter(|(_, held)| held.holder == holder)
            .map(|((network, block), _)| LeaseRecord {
                network: network.clone(),
                block: *block,
            })
            .collect()
    }

    /// Drops held leases whose grace period ended by `now`; returns them.
    pub(crate) fn expire_held(&mut self, now: Instant) -> Vec<(LeaseRecord, NodeId)> {
        let mut expired = Vec::new();
        self.held.retain(|(network, block), held| {
            let keep = held.until > now;
            if !keep {
                let lease = LeaseRecord {
                    network: network.clone(),
                    block: *block,
                };
                expired.push((lease, held.holder));
            }
            keep
        });
        if !expired.is_empty() {
            self.generation += 1;
        }
        expired
    }

    /// When the next held lease ends.
    pub(crate) fn next_held_expiry(&self) -> Option<Instant> {
        self.held.values().map(|held| held.until).min()
    }

    // ---- local writes -----------------------------------------------------

    /// Writes (or with `None` deletes) one of this host's own records;
    /// returns the versioned record to push to peers.
    pub(crate) fn write_own(&mut self, key: RecordKey, record: Option<Record>) -> VersionedRecord {
        let table = self.owners.entry(self.me.clone()).or_default();
        table.version += 1;
        let entry = VersionedRecord {
            key,
            version: table.version,
            record,
        };
        table
            .entries
            .insert(entry.key.clone(), (entry.version, entry.record.clone()));
        self.generation += 1;
        entry
    }

    /// Whether this host's own table has a live record under `key`.
    pub(crate) fn has_own(&self, key: &RecordKey) -> bool {
        self.owners
            .get(&self.me)
            .and_then(|table| table.entries.get(key))
            .is_some_and(|(_, record)| record.is_some())
    }

    /// Creates or replaces a network (or with `None` deletes it) as this
    /// host's write; returns the entry to push.
    pub(crate) fn write_network(
        &mut self,
        id: ClusterNetworkId,
        record: Option<NetworkRecord>,
    ) -> NetworkEntry {
        self.lamport += 1;
        let entry = NetworkEntry {
            id: id.clone(),
            stamp: Stamp {
                counter: self.lamport,
                writer: self.me.id,
            },
            record,
        };
        self.networks.insert(id, entry.clone());
        self.generation += 1;
        entry
    }

    // ---- replication ------------------------------------------------------

    /// Merges records of `owner` received from a peer. `base` is the
    /// version the sender assumed we had; when it is not above what we
    /// have, our version advances to `upto`. Returns whether anything changed.
    pub(crate) fn merge_records(
        &mut self,
        owner: &OwnerId,
        base: u64,
        upto: u64,
        records: Vec<VersionedRecord>,
    ) -> bool {
        if owner.id == self.me.id || !self.is_live(owner) {
            return false;
        }
        let table = self.owners.entry(owner.clone()).or_default();
        let mut changed = false;
        for entry in records {
            if entry.version > upto {
                continue;
            }
            // The holder is back and withdrew a lease held for it: the
            // block is free.
            if let (RecordKey::Lease(network, block), None) = (&entry.key, &entry.record) {
                let key = (network.clone(), *block);
                if self
                    .held
                    .get(&key)
                    .is_some_and(|held| held.holder == owner.id)
                {
                    self.held.remove(&key);
                    changed = true;
                }
            }
            changed |= table.apply(entry);
        }
        if base <= table.version && upto > table.version {
            table.version = upto;
        }
        if changed {
            self.generation += 1;
        }
        changed
    }

    /// Merges network entries; returns whether anything changed.
    pub(crate) fn merge_networks(&mut self, entries: Vec<NetworkEntry>) -> bool {
        let mut changed = false;
        for entry in entries {
            self.lamport = self.lamport.max(entry.stamp.counter);
            let newer = match self.networks.get(&entry.id) {
                Some(known) => entry.stamp > known.stamp,
                None => true,
            };
            if newer {
                self.networks.insert(entry.id.clone(), entry);
                changed = true;
            }
        }
        if changed {
            self.generation += 1;
        }
        changed
    }

    /// Our version of `owner`'s table (0 if unknown).
    pub(crate) fn version_of(&self, owner: &OwnerId) -> u64 {
        self.owners.get(owner).map_or(0, |table| table.version)
    }

    /// Records of `owner` newer than `version`, oldest first.
    pub(crate) fn records_since(&self, owner: &OwnerId, version: u64) -> Vec<VersionedRecord> {
        self.owners
            .get(owner)
            .map_or_else(Vec::new, |table| table.since(version))
    }

    /// Every owner we hold a table for, with its version.
    pub(crate) fn owner_versions(&self) -> Vec<(OwnerId, u64)> {
        self.owners
            .iter()
            .filter(|(owner, _)| **owner == self.me || self.is_live(owner))
            .map(|(owner, table)| (owner.clone(), table.version))
            .collect()
    }

    /// Owners we hold with an id in `from..=to` (`to: None`: no upper end).
    pub(crate) fn owners_in_range(&self, from: NodeId, to: Option<NodeId>) -> Vec<OwnerId> {
        self.owner_versions()
            .into_iter()
            .map(|(owner, _)| owner)
            .filter(|owner| owner.id >= from && to.is_none_or(|to| owner.id <= to))
            .collect()
    }

    /// All network entries, tombstones included.
    pub(crate) fn network_entries(&self) -> Vec<NetworkEntry> {
        self.networks.values().cloned().collect()
    }

    /// A hash of the whole network map (ids and stamps): equal maps, equal hashes.
    pub fn networks_hash(&self) -> u64 {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        let mut feed = |bytes: &[u8]| {
            for &byte in bytes {
                hash = (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
            }
        };
        for entry in self.networks.values() {
            feed(entry.id.0.as_bytes());
            feed(&[0]);
            feed(&entry.stamp.counter.to_le_bytes());
            feed(&entry.stamp.writer.0.to_le_bytes());
        }
        hash
    }

    // ---- queries ----------------------------------------------------------

    /// Live networks.
    pub fn networks(&self) -> impl Iterator<Item = (&ClusterNetworkId, &NetworkRecord)> {
        self.networks
            .values()
            .filter_map(|entry| entry.record.as_ref().map(|record| (&entry.id, record)))
    }

    /// One live network.
    pub fn network(&self, id: &ClusterNetworkId) -> Option<&NetworkRecord> {
        self.networks
            .get(id)
            .and_then(|entry| entry.record.as_ref())
    }

    /// The live network with this VNI (lowest id if several claim it).
    pub fn network_by_vni(&self, vni: Vni) -> Option<(&ClusterNetworkId, &NetworkRecord)> {
        self.networks().find(|(_, record)| record.vni == vni)
    }

    /// The live network with this name (lowest id if several have it).
    pub fn network_by_name(&self, name: &str) -> Option<(&ClusterNetworkId, &NetworkRecord)> {
        self.networks().find(|(_, record)| record.name == name)
    }

    /// Underlay address of a host, from its host record.
    pub fn host_underlay(&self, owner: &OwnerId) -> Option<SocketAddr> {
        let table = self.owners.get(owner)?;
        match table.entries.get(&RecordKey::Host) {
            Some((_, Some(Record::Host(host)))) => Some(host.underlay),
            _ => None,
        }
    }

    /// Every live host with its underlay address (this one included).
    pub fn hosts(&self) -> Vec<(&OwnerId, SocketAddr)> {
        self.visible_owners()
            .filter_map(|(owner, _)| self.host_underlay(owner).map(|addr| (owner, addr)))
            .collect()
    }

    /// Every endpoint, on every live host.
    pub fn endpoints(&self) -> impl Iterator<Item = EndpointLocation<'_>> {
        self.visible_owners().flat_map(move |(owner, table)| {
            let underlay = self.host_underlay(owner);
            table.live_records().filter_map(move |record| match record {
                Record::Endpoint(endpoint) => Some(EndpointLocation {
                    owner,
                    underlay,
                    endpoint,
                }),
                _ => None,
            })
        })
    }

    /// Where the endpoint with `mac` on `network` lives.
    pub fn endpoint_by_mac(
        &self,
        network: &ClusterNetworkId,
        mac: MacAddr,
    ) -> Option<EndpointLocation<'_>> {
        let key = RecordKey::Endpoint(network.clone(), mac);
        self.visible_owners()
            .find_map(|(owner, table)| match table.entries.get(&key) {
                Some((_, Some(Record::Endpoint(endpoint)))) => Some(EndpointLocation {
                    owner,
                    underlay: self.host_underlay(owner),
                    endpoint,
                }),
                _ => None,
            })
    }

    /// The MAC that owns `ip` on `network` (for answering ARP locally).
    pub fn endpoint_by_ip(&self, network: &ClusterNetworkId, ip: IpAddr) -> Option<MacAddr> {
        self.endpoints()
            .find(|location| {
                location.endpoint.network == *network && location.endpoint.ips.contains(&ip)
            })
            .map(|location| location.endpoint.mac)
    }

    /// Underlay addresses of the other hosts with an endpoint on `network`
    /// (where broadcast frames are replicated).
    pub fn hosts_with_network(&self, network: &ClusterNetworkId) -> Vec<SocketAddr> {
        let mut hosts = BTreeSet::new();
        for location in self.endpoints() {
            if location.endpoint.network == *network && *location.owner != self.me {
                if let Some(addr) = location.underlay {
                    hosts.insert(addr);
                }
            }
        }
        hosts.into_iter().collect()
    }

    /// Blocks of `network` leased by live owners.
    pub fn leases(&self, network: &ClusterNetworkId) -> Vec<(&OwnerId, u64)> {
        self.visible_owners()
            .flat_map(|(owner, table)| {
                table.live_records().filter_map(move |record| match record {
                    Record::Lease(lease) if lease.network == *network => Some((owner, lease.block)),
                    _ => None,
                })
            })
            .collect()
    }

    /// Owner tables whose owner is alive (and ours).
    fn visible_owners(&self) -> impl Iterator<Item = (&OwnerId, &OwnerTable)> {
        self.owners
            .iter()
            .filter(|(owner, _)| **owner == self.me || self.is_live(owner))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An origin for the tests' clock (the core itself never reads one).
    #[allow(clippy::disallowed_methods)]
    fn t0() -> Instant {
        Instant::now()
    }

    /// The owner called `name` (its first byte is its node id).
    fn owner(name: &str, boot: u64) -> OwnerId {
        OwnerId {
            id: NodeId(u128::from(name.as_bytes()[0])),
            boot,
        }
    }

    fn endpoint(network: &str, last: u8, ip: &str) -> EndpointRecord {
        EndpointRecord {
            network: ClusterNetworkId(network.to_owned()),
            mac: MacAddr([2, 0, 0, 0, 0, last]),
            ips: vec![ip.parse().unwrap()],
            name: Some(format!("ep{last}")),
            aliases: vec![],
        }
    }

    fn publish_endpoint(directory: &mut Directory, record: EndpointRecord) -> VersionedRecord {
        let key = RecordKey::Endpoint(record.network.clone(), record.mac);
        directory.write_own(key, Some(Record::Endpoint(record)))
    }

    #[test]
    fn records_replicate_and_leave_with_their_owner() {
        let a = owner("a", 1);
        let mut at_a = Directory::new(a.clone());
        let mut at_b = Directory::new(owner("b", 1));
        at_a.write_own(
            RecordKey::Host,
            Some(Record::Host(HostRecord {
                underlay: "192.0.2.1:4789".parse().unwrap(),
            })),
        );
        publish_endpoint(&mut at_a, endpoint("n1", 1, "10.0.0.2"));

        // Not a member yet: nothing accepted.
        assert!(!at_b.merge_records(&a, 0, 2, at_a.records_since(&a, 0)));
        at_b.owner_up(&a);
        let generation = at_b.generation();
        assert!(at_b.merge_records(&a, 0, at_a.version_of(&a), at_a.records_since(&a, 0)));
        assert!(at_b.generation() > generation);
        assert_eq!(at_b.version_of(&a), 2);

        let network = ClusterNetworkId("n1".into());
        let found = at_b
            .endpoint_by_mac(&network, MacAddr([2, 0, 0, 0, 0, 1]))
            .unwrap();
        assert_eq!(found.underlay, Some("192.0.2.1:4789".parse().unwrap()));
        assert_eq!(
            at_b.endpoint_by_ip(&network, "10.0.0.2".parse().unwrap()),
            Some(MacAddr([2, 0, 0, 0, 0, 1]))
        );
        assert_eq!(
            at_b.hosts_with_network(&network),
            vec!["192.0.2.1:4789".parse().unwrap()]
        );

        // Deletion travels as a tombstone.
        let tombstone = at_a.write_own(
            RecordKey::Endpoint(network.clone(), MacAddr([2, 0, 0, 0, 0, 1])),
            None,
        );
        at_b.merge_records(&a, 2, 3, vec![tombstone]);
        assert!(at_b
            .endpoint_by_mac(&network, MacAddr([2, 0, 0, 0, 0, 1]))
            .is_none());

        at_b.owner_down(&a, t0());
        assert!(at_b.hosts().iter().all(|(owner, _)| owner.id != a.id));
        assert_eq!(at_b.version_of(&a), 0);
    }

    #[test]
    fn stale_records_do_not_overwrite_newer_ones() {
        let a = owner("a", 1);
        let mut at_a = Directory::new(a.clone());
        let mut at_b = Directory::new(owner("b", 1));
        at_b.owner_up(&a);
        let old = publish_endpoint(&mut at_a, endpoint("n", 1, "10.0.0.2"));
        let new = publish_endpoint(&mut at_a, endpoint("n", 1, "10.0.0.3"));
        at_b.merge_records(&a, 0, 2, vec![new]);
        at_b.merge_records(&a, 0, 1, vec![old]);
        let network = ClusterNetworkId("n".into());
        let found = at_b
            .endpoint_by_mac(&network, MacAddr([2, 0, 0, 0, 0, 1]))
            .unwrap();
        assert_eq!(
            found.endpoint.ips,
            vec!["10.0.0.3".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn a_gap_keeps_the_version_back() {
        let a = owner("a", 1);
        let mut at_b = Directory::new(owner("b", 1));
        at_b.owner_up(&a);
        // Records 3..=4 arrive but 1..=2 were lost: version stays 0.
        at_b.merge_records(&a, 2, 4, vec![]);
        assert_eq!(at_b.version_of(&a), 0);
        at_b.merge_records(&a, 0, 2, vec![]);
        assert_eq!(at_b.version_of(&a), 2);
    }

    #[test]
    fn a_new_boot_replaces_the_old() {
        let mut at_b = Directory::new(owner("b", 1));
        let old = owner("a", 1);
        at_b.owner_up(&old);
        let mut at_a = Directory::new(old.clone());
        publish_endpoint(&mut at_a, endpoint("n", 1, "10.0.0.2"));
        at_b.merge_records(&old, 0, 1, at_a.records_since(&old, 0));
        at_b.owner_up(&owner("a", 2));
        assert_eq!(at_b.endpoints().count(), 0);
        assert!(
            !at_b.merge_records(&old, 0, 1, at_a.records_since(&old, 0)),
            "old boot refused"
        );
    }

    #[test]
    fn a_dead_owners_leases_are_held_until_the_grace_ends_or_it_withdraws_them() {
        let a = owner("a", 1);
        let mut at_a = Directory::new(a.clone());
        let mut at_b = Directory::new(owner("b", 1));
        let network = ClusterNetworkId("n".into());
        for block in [3, 5] {
            let lease = LeaseRecord {
                network: network.clone(),
                block,
            };
            at_a.write_own(
                RecordKey::Lease(network.clone(), block),
                Some(Record::Lease(lease)),
            );
        }
        at_b.owner_up(&a);
        at_b.merge_records(&a, 0, 2, at_a.records_since(&a, 0));
        assert_eq!(at_b.leases(&network).len(), 2);
        let t0 = t0();
        at_b.owner_down(&a, t0);
        assert!(at_b.leases(&network).is_empty(), "the records left");
        let held = at_b.held_leases(&network);
        assert_eq!(
            held.iter()
                .map(|(block, held)| (*block, held.holder))
                .collect::<Vec<_>>(),
            vec![(3, a.id), (5, a.id)]
        );
        assert_eq!(at_b.held_for(a.id).len(), 2);
        assert_eq!(at_b.next_held_expiry(), Some(t0 + LEASE_GRACE));
        // Back (a new boot of the same node id), it withdraws block 5.
        let back = owner("a", 2);
        at_b.owner_up(&back);
        let tombstone = VersionedRecord {
            key: RecordKey::Lease(network.clone(), 5),
            version: 1,
            record: None,
        };
        at_b.merge_records(&back, 0, 1, vec![tombstone]);
        assert_eq!(at_b.held_leases(&network).len(), 1);
        // Nothing expires before the grace ends; then it is free.
        assert!(at_b
            .expire_held(t0 + LEASE_GRACE - Duration::from_secs(1))
            .is_empty());
        let expired = at_b.expire_held(t0 + LEASE_GRACE);
        assert_eq!(expired.len(), 1);
        assert!(at_b.held_leases(&network).is_empty());
        assert_eq!(at_b.next_held_expiry(), None);
    }

    #[test]
    fn networks_are_last_writer_wins_with_tombstones() {
        let mut at_a = Directory::new(owner("a", 1));
        let mut at_b = Directory::new(owner("b", 1));
        let id = ClusterNetworkId("n".into());
        let record = NetworkRecord {
            name: "overlay0".into(),
            subnet: "10.9.0.0/24".parse().unwrap(),
            gateway: None,
            vni: Vni::new(4096).unwrap(),
            options: BTreeMap::new(),
        };
        let created = at_a.write_network(id.clone(), Some(record));
        assert!(at_b.merge_networks(vec![created.clone()]));
        assert_eq!(at_a.networks_hash(), at_b.networks_hash());
        let deleted = at_b.write_network(id.clone(), None);
        at_a.merge_networks(vec![deleted]);
        // The late copy of the creation does not resurrect it.
        assert!(!at_a.merge_networks(vec![created]));
        assert!(at_a.network(&id).is_none());
        assert_eq!(at_a.networks().count(), 0);
        assert_eq!(at_a.networks_hash(), at_b.networks_hash());
    }
}
