//! Membership: what foca's notifications mean for the directory and the
//! allocator (members up, down, renamed), the node-name rules (a shared
//! hostname is a warning, an explicit `--node-name` a live member already
//! uses is refused; see the module header of [`super`]), the leases held
//! for a member that comes back, and suspicions timed out by every member
//! that hears of them. The name events are logged by the driver, once.

use std::collections::BTreeMap;
use std::time::Instant;

use foca::OwnedNotification;

use super::{Event, Node};
use crate::directory::OwnerId;
use crate::envelope::{self, PayloadKind};
use crate::identity::NodeIdentity;
use crate::message::{chunk_by_size, GossipMessage};

impl Node {
    pub(super) fn handle_notification(
        &mut self,
        notification: OwnedNotification<NodeIdentity>,
        now: Instant,
    ) {
        match notification {
            OwnedNotification::MemberUp(id) => self.member_up(id),
            OwnedNotification::MemberDown(id) => {
                if self.peers.get(&id.id).is_some_and(|known| *known == id) {
                    self.peers.remove(&id.id);
                    self.member_gone(&id, now);
                    tracing::info!(member = %id.label(), addr = %id.gossip, "overlay member down");
                    self.events.push_back(Event::MemberDown {
                        id: id.id,
                        name: id.name,
                        addr: id.gossip,
                    });
                }
            }
            OwnedNotification::Rename(old, new) => {
                if self.peers.get(&old.id).is_some_and(|known| *known == old) {
                    self.peers.remove(&old.id);
                    if old.boot == new.boot && old.id == new.id {
                        // A renewal of the same life.
                        self.peers.insert(new.id, new.clone());
                        self.directory.owner_up(&OwnerId {
                            id: new.id,
                            boot: new.boot,
                        });
                    } else {
                        // A restart (new boot) before it was declared dead,
                        // or another host at its address (state directory
                        // wiped): the old life's records go, its leases are
                        // held; the new one is a member coming up (and gets
                        // back what is held for its node id).
                        self.member_gone(&old, now);
                        self.member_up(new);
                    }
                }
            }
            OwnedNotification::Rejoin(new) => {
                tracing::info!(
                    renewal = new.renewal,
                    "declared down by the cluster; rejoined"
                );
                self.identity = new;
                self.events.push_back(Event::Rejoined);
            }
            OwnedNotification::Idle => {
                // Every member is gone (a two-host cluster whose other host
                // restarted): ask the `--join` seeds again, as at start; a
                // seed that restarted knows nobody and would not come back.
                if !self.seeds.is_empty() {
                    self.next_join_retry = Some(now + super::JOIN_RETRY);
                }
            }
            OwnedNotification::Active | OwnedNotification::Defunct => {}
        }
    }

    fn member_up(&mut self, id: NodeIdentity) {
        let newer = self
            .peers
            .get(&id.id)
            .is_none_or(|known| known.boot <= id.boot);
        if !newer {
            return;
        }
        if id.name == self.identity.name && id.id != self.identity.id && self.name_clash(&id) {
            return;
        }
        let owner = OwnerId {
            id: id.id,
            boot: id.boot,
        };
        self.peers.insert(id.id, id.clone());
        self.directory.owner_up(&owner);
        tracing::info!(member = %id.label(), addr = %id.gossip, "overlay member up");
        self.events.push_back(Event::MemberUp {
            id: id.id,
            name: id.name.clone(),
            addr: id.gossip,
        });
        // Fetch the newcomer's own records at once; the rest of the
        // directory follows in anti-entropy rounds.
        let since = self.directory.version_of(&owner);
        self.send(id.gossip, &GossipMessage::Request { owner, since });
        // Back after being declared dead (or restarted with its node id):
        // the leases held for it.
        let leases = self.directory.held_for(id.id);
        if !leases.is_empty() {
            for leases in chunk_by_size(leases, self.chunk_budget()) {
                let message = GossipMessage::Returned {
                    holder: id.id,
                    leases,
                };
                self.send(id.gossip, &message);
            }
        }
    }

    /// `other` has this host's name and another node id. Returns whether
    /// `other` is refused (not taken as a member). See the module header.
    fn name_clash(&mut self, other: &NodeIdentity) -> bool {
        let mine = &self.identity;
        let i_am_newer = (mine.boot, mine.id) > (other.boot, other.id);
        let newer_explicit = if i_am_newer {
            mine.explicit_name
        } else {
            other.explicit_name
        };
        let name = other.name.clone();
        if !newer_explicit {
            self.events.push_back(Event::NameShared {
                name,
                id: other.id,
                addr: other.gossip,
            });
            return false;
        }
        if i_am_newer {
            self.runtime.now = None;
            if self.foca.leave_cluster(&mut self.runtime).is_err() {
                self.counters.swim_errors += 1;
            }
            for (to, payload) in std::mem::take(&mut self.runtime.sends) {
                let sealed = envelope::seal(
                    self.key.as_ref(),
                    PayloadKind::Swim,
                    &payload,
                    &mut self.nonce_rng,
                );
                self.outbox.push_back((to.gossip, sealed));
            }
            self.runtime.notifications.clear();
            self.refused = true;
            self.events.push_back(Event::NameRefused {
                name,
                addr: other.gossip,
            });
        } else {
            self.events.push_back(Event::NameClash {
                name,
                id: other.id,
                addr: other.gossip,
            });
        }
        true
    }

    /// `gone` was declared dead or replaced: its records leave the
    /// directory (its leases held), its promises end.
    fn member_gone(&mut self, gone: &NodeIdentity, now: Instant) {
        let owner = OwnerId {
            id: gone.id,
            boot: gone.boot,
        };
        self.directory.owner_down(&owner, now);
        self.allocator
            .owner_down(&mut self.directory, &owner, now, &mut self.rng);
    }

    /// foca starts the suspect-to-down timer only on the member whose probe
    /// failed; members that hear of the suspicion by gossip wait for the
    /// Down update, which a lossy network or a partition can lose for good.
    /// SWIM's suspicion subprotocol (and memberlist) has every member that
    /// learns of a suspicion time it out itself: done here.
    pub(super) fn expire_suspicions(&mut self, now: Instant) {
        let mut current = BTreeMap::new();
        let mut expired = Vec::new();
        for member in self.foca.iter_membership_state() {
            if member.state() != foca::State::Suspect {
                continue;
            }
            let id = member.id();
            let key = (id.name.clone(), id.boot, id.renewal, member.incarnation());
            let since = self.suspicions.get(&key).copied().unwrap_or(now);
            if now.saturating_duration_since(since) >= self.config.suspect_to_down_after {
                expired.push(foca::Member::new(
                    id.clone(),
                    member.incarnation(),
                    foca::State::Down,
                ));
            } else {
                current.insert(key, since);
            }
        }
        self.suspicions = current;
        if !expired.is_empty() {
            self.runtime.now = Some(now);
            let applied = self
                .foca
                .apply_many(expired.into_iter(), true, &mut self.runtime);
            if applied.is_err() {
                self.counters.swim_errors += 1;
            }
            self.after_foca(now);
        }
    }
}
