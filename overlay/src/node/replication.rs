//! Replication of the directory between members: the directory's own
//! messages (pushed records, digests, record requests, network lists) and
//! anti-entropy. Each round a node sends one live peer a digest of what it
//! holds (per owner, the newest stamp); the peer answers with the records
//! the digest lacks and asks for what it lacks itself. Pushes can be lost;
//! this repairs the directory within a few rounds.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Instant;

use rand::RngExt;

use crate::directory::{Digest, OwnerId};
use crate::message::{chunk_by_size, GossipMessage};

use super::Node;
use crate::identity::{NodeId, NodeIdentity};

impl Node {
    pub(super) fn anti_entropy_round(&mut self) {
        let peers = self.live_peer_addresses();
        if peers.is_empty() {
            return;
        }
        let addr = peers[self.rng.random_range(0..peers.len())];
        self.send_digest(addr);
    }

    pub(super) fn send_digest(&mut self, addr: SocketAddr) {
        let networks_hash = self.directory.networks_hash();
        let chunks = chunk_by_size(self.directory.owner_versions(), self.chunk_budget());
        let count = chunks.len();
        for (index, owners) in chunks.into_iter().enumerate() {
            let covers_from = if index == 0 {
                NodeId(0)
            } else {
                owners.first().map_or(NodeId(0), |(owner, _)| owner.id)
            };
            let covers_to = if index + 1 == count {
                None
            } else {
                owners.last().map(|(owner, _)| owner.id)
            };
            let digest = Digest {
                covers_from,
                covers_to,
                owners,
                networks_hash,
            };
            self.send(addr, &GossipMessage::Digest(digest));
        }
    }

    pub(super) fn send_records(&mut self, addr: SocketAddr, owner: &OwnerId, since: u64) {
        let upto = self.directory.version_of(owner);
        if upto <= since {
            return;
        }
        let records = self.directory.records_since(owner, since);
        let chunks = chunk_by_size(records, self.chunk_budget());
        let count = chunks.len();
        let mut base = since;
        for (index, records) in chunks.into_iter().enumerate() {
            let chunk_upto = if index + 1 == count {
                upto
            } else {
                records.last().map_or(upto, |record| record.version)
            };
            let message = GossipMessage::Records {
                owner: owner.clone(),
                base,
                upto: chunk_upto,
                records,
            };
            self.send(addr, &message);
            base = chunk_upto;
        }
    }

    pub(super) fn send_networks(&mut self, addr: SocketAddr, reply: bool) {
        for entries in chunk_by_size(self.directory.network_entries(), self.chunk_budget()) {
            self.send(addr, &GossipMessage::Networks { entries, reply });
        }
    }

    pub(super) fn handle_message(
        &mut self,
        from: SocketAddr,
        message: GossipMessage,
        now: Instant,
    ) {
        match message {
            GossipMessage::Digest(digest) => self.handle_digest(from, digest),
            GossipMessage::Request { owner, since } => self.send_records(from, &owner, since),
            GossipMessage::Records {
                owner,
                base,
                upto,
                records,
            } => {
                self.directory.merge_records(&owner, base, upto, records);
            }
            GossipMessage::Networks { entries, reply } => {
                self.directory.merge_networks(entries);
                if reply {
                    self.send_networks(from, false);
                }
            }
            GossipMessage::Allocation(message) => {
                self.allocator
                    .handle_message(&mut self.directory, message, now, &mut self.rng);
            }
            GossipMessage::Returned { holder, leases } => {
                if holder != self.identity.id {
                    return;
                }
                self.allocator.adopt(&mut self.directory, leases, now);
            }
            GossipMessage::Members(members) => {
                self.runtime.now = Some(now);
                let applied = self
                    .foca
                    .apply_many(members.into_iter(), false, &mut self.runtime);
                if applied.is_err() {
                    self.counters.swim_errors += 1;
                }
                self.after_foca(now);
            }
        }
    }

    pub(super) fn handle_digest(&mut self, from: SocketAddr, digest: Digest) {
        let mut listed = BTreeMap::new();
        for (owner, their_version) in &digest.owners {
            listed.insert(owner.clone(), *their_version);
        }
        let mut stale: BTreeSet<(NodeId, u64)> = BTreeSet::new();
        for (owner, their_version) in listed.iter() {
            if !self.directory.is_live(owner) {
                // Unknown, dead, or another boot: records are exchanged for
                // the current boot only. If we know it dead, tell them below.
                stale.insert((owner.id, owner.boot));
                continue;
            }
            let ours = self.directory.version_of(owner);
            if ours > *their_version {
                self.send_records(from, owner, *their_version);
            } else if ours < *their_version {
                self.send(
                    from,
                    &GossipMessage::Request {
                        owner: owner.clone(),
                        since: ours,
                    },
                );
            }
        }
        let mut unknown_to_them = BTreeSet::new();
        let range_end = digest.covers_to;
        for owner in self
            .directory
            .owners_in_range(digest.covers_from, range_end)
        {
            if !listed.contains_key(&owner) {
                unknown_to_them.insert(owner.id);
                self.send_records(from, &owner, 0);
            }
        }
        // Membership push-pull: members they lack (alive here), and members
        // they still list that were declared dead here. SWIM lets a Down
        // update override any incarnation of the same identity; a renewed
        // identity wins the address conflict and is not affected.
        let members: Vec<foca::Member<NodeIdentity>> = self
            .foca
            .iter_membership_state()
            .filter(|member| member.id().gossip != from)
            .filter(|member| match member.state() {
                foca::State::Alive => unknown_to_them.contains(&member.id().id),
                foca::State::Down => stale.contains(&(member.id().id, member.id().boot)),
                foca::State::Suspect => false,
            })
            .cloned()
            .collect();
        if !members.is_empty() {
            for members in chunk_by_size(members, self.chunk_budget()) {
                self.send(from, &GossipMessage::Members(members));
            }
        }
        if digest.networks_hash != self.directory.networks_hash() {
            self.send_networks(from, true);
        }
    }
}
