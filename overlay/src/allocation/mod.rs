//! Address allocation in cluster networks: no address handed out twice,
//! across hosts, even when every host allocates at the same instant.
//!
//! # Theory of operation
//!
//! A network's subnet is cut into blocks of [`BLOCK_LEN`] addresses
//! ([`BlockPlan`]). A host hands out addresses only from blocks it leases,
//! and allocates inside its own blocks without asking anyone. To lease a
//! block it runs a claim, a one-round, all-members agreement:
//!
//! 1. The claimer picks a random block that is free as far as it knows (no
//!    lease of a live member in the directory, no promise it made to
//!    another claimer) and sends `Claim(network, block, claim id)` to every
//!    member it sees alive.
//! 2. A member *grants* unless it holds that block, the directory shows a
//!    live member holding it, it has promised it to another claimer, or it
//!    is claiming the same block itself and has priority. Priority is the
//!    order of [`OwnerId`] (node name, then boot id): the member with the
//!    lower one wins; a member that loses abandons its own claim and grants.
//!    A grant is a promise: that member will neither claim the block nor
//!    grant it to anyone else while the promise lasts ([`PROMISE_TTL`], or
//!    until the claimer dies once it committed).
//! 3. When every member asked has granted (members declared dead in the
//!    meantime are no longer waited for), the claimer commits: it writes a
//!    lease record (replicated by the directory) and tells the members,
//!    whose promises then last as long as the claimer lives. A refusal
//!    makes the claimer abandon (and tell the members, releasing their
//!    promises) and try another block; after [`MAX_ATTEMPTS`] or
//!    [`CLAIM_TIMEOUT`] per attempt the waiting requests fail.
//!
//! Why no two hosts can commit the same block while they can hear each
//! other: if C and D both commit block B, C asked D or D asked C, or both
//! asked some third member M. M grants B to one claimer at a time; D, asked
//! by C, grants only if it is not claiming B with priority and then will not
//! claim B itself; C, asked by D, likewise. In each case one of the two
//! commits fails. The simulation checks it with 50 hosts allocating at the
//! same instant in a subnet with few blocks.
//!
//! A lease lasts as long as its holder is a live member, and then
//! [`crate::directory::LEASE_GRACE`] longer: when the membership declares a
//! holder dead, the directory keeps its leases as *held* for its node id.
//! A held block is taken for every claimer but that node id: the holder
//! back from a pause or a partition still has its blocks (its own table
//! kept them); a holder restarted with the same node id but a fresh
//! allocator is sent the leases held for it (`Returned` in
//! [`crate::message`]) and takes them back without a claim
//! ([`Allocator::adopt`]): every member that saw the lease holds the block
//! for it. A host restarted with a new node id (its state directory wiped)
//! is a stranger to those blocks; they are free once the grace ends.
//! Addresses are never handed out when an endpoint in the directory holds
//! them, this host's own (restored after a restart) included.
//!
//! # Limits
//!
//! Held leases live in the memory of the members that saw the lease, not
//! in the replicated records: a member that joins during another's grace
//! period does not know the held blocks. A claim still needs the grant of
//! every live member, and each member that holds the block refuses it, so
//! the block stays safe while one of them lives; it is exposed only when
//! every member that saw the lease is gone (or restarted) too. A paused
//! host comes back as the same boot: nothing to take back, its own table
//! kept its leases; for that host too the grace period bounds the pause.
//!
//! During a partition each side sees the other dead, so both may lease the
//! same block (the directory is available, not consistent, under
//! partition). When the partition heals and both leases are visible, the
//! host with the higher [`OwnerId`] gives the block up: it withdraws its
//! lease record and hands out nothing more from the block, and its
//! endpoints keep their addresses. Those stay safe because no host hands
//! out an address that the directory shows on another host's endpoint.
//! Addresses both sides handed out during the partition are duplicated
//! until one of the two endpoints is reconnected: the loser's
//! [`crate::Event::LeaseConflict`] lists them. Blocks are not returned
//! while their holder lives. Fixed addresses asked for by the user (`--ip`) are
//! not coordinated here. Capacity: a claim per network in flight at a time;
//! promises are bounded by the number of members times networks.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use rand::{Rng, RngExt};
use serde::{Deserialize, Serialize};

use crate::directory::{ClusterNetworkId, Directory, LeaseRecord, OwnerId, Record, RecordKey};

mod plan;
pub use plan::{BlockPlan, BLOCK_LEN};

/// How long a claim attempt waits for all grants before trying again.
pub const CLAIM_TIMEOUT: Duration = Duration::from_secs(2);
/// Interval between resends of a claim to members that have not answered.
pub const CLAIM_RESEND: Duration = Duration::from_millis(250);
/// Attempts (blocks tried) before the waiting requests fail.
pub const MAX_ATTEMPTS: u32 = 8;
/// How long a grant binds before the claimer commits; longer than a claim
/// attempt can take, so a claim never outlives its promises.
pub const PROMISE_TTL: Duration = Duration::from_secs(10);
/// How long a returned lease of a network not yet known here waits for the
/// network's entry (anti-entropy brings it within a few rounds).
pub const RETURN_WAIT: Duration = Duration::from_secs(60);
/// Most returned leases waiting for their network.
const MAX_RETURNED_WAITING: usize = 4096;

/// A request for an address that waits for a block lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AllocationTicket(pub u64);

/// Answer of [`crate::Node::allocate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Allocation {
    /// An address from one of this host's blocks.
    Ready(IpAddr),
    /// A block is being leased; an [`crate::Event::AddressAllocated`] or
    /// [`crate::Event::AllocationFailed`] with this ticket follows (within
    /// `MAX_ATTEMPTS * CLAIM_TIMEOUT` at worst).
    Pending(AllocationTicket),
}

/// Why an allocation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AllocateError {
    /// The directory has no such live network.
    #[error("no cluster network {0:?}")]
    UnknownNetwork(ClusterNetworkId),
    /// No free block is left in the subnet.
    #[error("no free address block left in network {0:?}")]
    Exhausted(ClusterNetworkId),
    /// Every attempt to lease a block was refused or timed out.
    #[error("could not lease an address block in network {network:?} after {attempts} attempts")]
    Contended {
        /// The network.
        network: ClusterNetworkId,
        /// Attempts made.
        attempts: u32,
    },
    /// The network was deleted while the request waited.
    #[error("cluster network {0:?} was deleted")]
    NetworkDeleted(ClusterNetworkId),
}

/// Allocation messages between hosts (inside directory datagrams).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AllocationMessage {
    /// Asks for a grant of `block`.
    Claim {
        /// The network.
        network: ClusterNetworkId,
        /// The block.
        block: u64,
        /// Who claims it.
        claimer: OwnerId,
        /// Tells attempts apart.
        claim_id: u64,
    },
    /// The answer to a claim.
    Reply {
        /// The network.
        network: ClusterNetworkId,
        /// Echo of the claim id.
        claim_id: u64,
        /// Who answers.
        member: OwnerId,
        /// Granted or refused.
        granted: bool,
    },
    /// The claimer gave up this attempt: release the promise.
    Abandon {
        /// The network.
        network: ClusterNetworkId,
        /// The block.
        block: u64,
        /// The claimer.
        claimer: OwnerId,
        /// Which attempt.
        claim_id: u64,
    },
    /// The claimer holds the block now.
    Commit {
        /// The network.
        network: ClusterNetworkId,
        /// The block.
        block: u64,
        /// The claimer, now holder.
        claimer: OwnerId,
        /// Which attempt.
        claim_id: u64,
    },
}

/// What the allocator reports to the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum AllocationOutcome {
    Allocated {
        ticket: AllocationTicket,
        network: ClusterNetworkId,
        ip: IpAddr,
    },
    Failed {
        ticket: AllocationTicket,
        error: AllocateError,
    },
    LeaseConflict {
        network: ClusterNetworkId,
        block: u64,
        winner: OwnerId,
        duplicates: Vec<IpAddr>,
    },
    /// A lease record was written: push it to peers.
    LeaseWritten,
    /// Blocks held for this host while it was away were taken back.
    LeasesReturned(usize),
}

#[derive(Debug)]
struct Claim {
    block: u64,
    claim_id: u64,
    /// Members asked, and whether each granted.
    asked: BTreeMap<OwnerId, bool>,
    deadline: Instant,
    next_resend: Instant,
    attempts: u32,
    /// Blocks refused in earlier attempts of this series.
    avoid: BTreeSet<u64>,
}

#[derive(Debug)]
struct Promise {
    claimer: OwnerId,
    claim_id: u64,
    /// `None`: committed, lasts while the claimer lives.
    expires: Option<Instant>,
}

/// One host's allocation state.
#[derive(Debug, Default)]
pub(crate) struct Allocator {
    claims: BTreeMap<ClusterNetworkId, Claim>,
    promises: BTreeMap<(ClusterNetworkId, u64), Promise>,
    own_blocks: BTreeMap<ClusterNetworkId, BTreeSet<u64>>,
    used: BTreeMap<ClusterNetworkId, BTreeSet<IpAddr>>,
    waiting: BTreeMap<ClusterNetworkId, VecDeque<AllocationTicket>>,
    reported_conflicts: BTreeSet<(ClusterNetworkId, u64)>,
    /// Returned leases of networks this host does not know yet (the
    /// network entry travels apart), retried until their deadline.
    returned: Vec<(LeaseRecord, Instant)>,
    next_ticket: u64,
    pub(crate) outbox: Vec<(OwnerId, AllocationMessage)>,
    pub(crate) outcomes: Vec<AllocationOutcome>,
}

impl Allocator {
    /// Hands out an address of `network`, or starts leasing a block.
    pub(crate) fn allocate(
        &mut self,
        directory: &mut Directory,
        network: &ClusterNetworkId,
        now: Instant,
        rng: &mut impl Rng,
    ) -> Result<Allocation, AllocateError> {
        let plan = plan_of(directory, network)?;
        let elsewhere = addresses_of_endpoints(directory, network);
        if let Some(ip) = self.take_free_address(&plan, network, &elsewhere) {
            return Ok(Allocation::Ready(ip));
        }
        self.next_ticket += 1;
        let ticket = AllocationTicket(self.next_ticket);
        self.waiting
            .entry(network.clone())
            .or_default()
            .push_back(ticket);
        if !self.claims.contains_key(network) {
            self.start_claim(directory, network, &plan, 1, BTreeSet::new(), now, rng);
        }
        Ok(Allocation::Pending(ticket))
    }

    /// Gives an address back for reuse by this host.
    pub(crate) fn release(&mut self, network: &ClusterNetworkId, ip: IpAddr) {
        if let Some(used) = self.used.get_mut(network) {
            used.remove(&ip);
        }
    }

    /// Blocks this host holds in `network`.
    pub(crate) fn own_blocks(&self, network: &ClusterNetworkId) -> impl Iterator<Item = u64> + '_ {
        self.own_blocks.get(network).into_iter().flatten().copied()
    }

    /// The earliest claim deadline or resend time.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        let claims = self
            .claims
            .values()
            .map(|claim| claim.next_resend.min(claim.deadline));
        let promises = self.promises.values().filter_map(|promise| promise.expires);
        claims.chain(promises).min()
    }

    /// Resends, timeouts, expired promises, grants no longer needed from dead members.
    pub(crate) fn handle_timeout(
        &mut self,
        directory: &mut Directory,
        now: Instant,
        rng: &mut impl Rng,
    ) {
        self.promises
            .retain(|_, promise| promise.expires.is_none_or(|at| at > now));
        self.retry_returned(directory, now);
        let networks: Vec<ClusterNetworkId> = self.claims.keys().cloned().collect();
        for network in networks {
            let Some(claim) = self.claims.get_mut(&network) else {
                continue;
            };
            if claim.next_resend <= now {
                claim.next_resend = now + CLAIM_RESEND;
                for (member, granted) in &claim.asked {
                    if !*granted && directory.is_live(member) {
                        self.outbox.push((
                            member.clone(),
                            AllocationMessage::Claim {
                                network: network.clone(),
                                block: claim.block,
                                claimer: directory.me().clone(),
                                claim_id: claim.claim_id,
                            },
                        ));
                    }
                }
            }
            self.try_commit(directory, &network, now, rng);
            if let Some(claim) = self.claims.get(&network) {
                if claim.deadline <= now {
                    self.retry(directory, &network, now, rng);
                }
            }
        }
    }

    /// Takes back `leases`, held for this host's node id by a member while
    /// this host was down (see the module header): no claim, because every
    /// member that saw the lease refuses the block to anyone else. A block
    /// of a network that is gone, outside its plan, already ours or leased
    /// by a live member (the hold ended and another host took it) is
    /// skipped; one of a network not known here yet waits for it (at most
    /// [`RETURN_WAIT`]).
    pub(crate) fn adopt(
        &mut self,
        directory: &mut Directory,
        leases: Vec<LeaseRecord>,
        now: Instant,
    ) {
        let mut adopted = 0;
        for lease in leases {
            match self.take_back(directory, &lease) {
                Some(true) => adopted += 1,
                Some(false) => {}
                None => {
                    if self.returned.len() < MAX_RETURNED_WAITING {
                        self.returned.push((lease, now + RETURN_WAIT));
                    }
                }
            }
        }
        self.report_returned(adopted);
    }

    /// Retries the returned leases that waited for their network.
    fn retry_returned(&mut self, directory: &mut Directory, now: Instant) {
        let mut adopted = 0;
        for (lease, deadline) in std::mem::take(&mut self.returned) {
            if deadline <= now {
                continue;
            }
            match self.take_back(directory, &lease) {
                Some(true) => adopted += 1,
                Some(false) => {}
                None => self.returned.push((lease, deadline)),
            }
        }
        self.report_returned(adopted);
    }

    fn report_returned(&mut self, adopted: usize) {
        if adopted > 0 {
            self.outcomes
                .push(AllocationOutcome::LeasesReturned(adopted));
        }
    }

    /// Takes one returned lease back: whether it was; None while its
    /// network is unknown here.
    fn take_back(&mut self, directory: &mut Directory, lease: &LeaseRecord) -> Option<bool> {
        let plan = plan_of(directory, &lease.network).ok()?;
        let mine = self.own_blocks(&lease.network).any(|b| b == lease.block);
        let taken = directory
            .leases(&lease.network)
            .iter()
            .any(|(_, block)| *block == lease.block);
        if mine || taken || lease.block >= plan.blocks() {
            return Some(false);
        }
        self.own_blocks
            .entry(lease.network.clone())
            .or_default()
            .insert(lease.block);
        directory.write_own(
            RecordKey::Lease(lease.network.clone(), lease.block),
            Some(Record::Lease(lease.clone())),
        );
        self.outcomes.push(AllocationOutcome::LeaseWritten);
        Some(true)
    }

    /// A member died: its promises go, and its grants are no longer awaited.
    pub(crate) fn owner_down(
        &mut self,
        directory: &mut Directory,
        owner: &OwnerId,
        now: Instant,
        rng: &mut impl Rng,
    ) {
        self.promises.retain(|_, promise| promise.claimer != *owner);
        let networks: Vec<ClusterNetworkId> = self.claims.keys().cloned().collect();
        for network in networks {
            self.try_commit(directory, &network, now, rng);
        }
    }

    /// Reports own blocks that a live member with priority also holds
    /// (possible only after a partition healed).
    pub(crate) fn detect_conflicts(&mut self, directory: &mut Directory) {
        let mut conflicts = Vec::new();
        for (network, blocks) in &self.own_blocks {
            for (holder, block) in directory.leases(network) {
                if *holder != *directory.me()
                    && blocks.contains(&block)
                    && *holder < *directory.me()
                    && self.reported_conflicts.insert((network.clone(), block))
                {
                    conflicts.push((network.clone(), block, holder.clone()));
                }
            }
        }
        // The loser gives the block up: no more addresses from it, and its
        // lease record withdrawn so every directory shows one holder.
        for (network, block, winner) in conflicts {
            if let Some(blocks) = self.own_blocks.get_mut(&network) {
                blocks.remove(&block);
            }
            directory.write_own(RecordKey::Lease(network.clone(), block), None);
            self.outcomes.push(AllocationOutcome::LeaseWritten);
            let elsewhere = addresses_on_other_hosts(directory, &network);
            let duplicates = match plan_of(directory, &network) {
                Ok(plan) => {
                    let used = self.used.get(&network);
                    plan.addresses(block)
                        .filter(|ip| used.is_some_and(|used| used.contains(ip)))
                        .filter(|ip| elsewhere.contains(ip))
                        .collect()
                }
                Err(_) => Vec::new(),
            };
            self.outcomes.push(AllocationOutcome::LeaseConflict {
                network,
                block,
                winner,
                duplicates,
            });
        }
    }

    /// Handles an allocation message from a peer.
    pub(crate) fn handle_message(
        &mut self,
        directory: &mut Directory,
        message: AllocationMessage,
        now: Instant,
        rng: &mut impl Rng,
    ) {
        match message {
            AllocationMessage::Claim {
                network,
                block,
                claimer,
                claim_id,
            } => {
                if claimer.id == directory.me().id {
                    return;
                }
                let granted =
                    self.judge_claim(directory, &network, block, &claimer, claim_id, now, rng);
                self.outbox.push((
                    claimer,
                    AllocationMessage::Reply {
                        network,
                        claim_id,
                        member: directory.me().clone(),
                        granted,
                    },
                ));
            }
            AllocationMessage::Reply {
                network,
                claim_id,
                member,
                granted,
            } => {
                let Some(claim) = self.claims.get_mut(&network) else {
                    return;
                };
                if claim.claim_id != claim_id {
                    return;
                }
                let Some(answer) = claim.asked.get_mut(&member) else {
                    return;
                };
                if granted {
                    *answer = true;
                    self.try_commit(directory, &network, now, rng);
                } else {
                    self.retry(directory, &network, now, rng);
                }
            }
            AllocationMessage::Abandon {
                network,
                block,
                claimer,
                claim_id,
            } => {
                let key = (network, block);
                if self.promises.get(&key).is_some_and(|promise| {
                    promise.claimer == claimer && promise.claim_id == claim_id
                }) {
                    self.promises.remove(&key);
                }
            }
            AllocationMessage::Commit {
                network,
                block,
                claimer,
                claim_id,
            } => {
                if !directory.is_live(&claimer) {
                    return;
                }
                let promise = Promise {
                    claimer,
                    claim_id,
                    expires: None,
                };
                self.promises.insert((network, block), promise);
            }
        }
    }

    /// Whether to grant `block` to `claimer`; records the promise.
    #[allow(clippy::too_many_arguments)]
    fn judge_claim(
        &mut self,
        directory: &mut Directory,
        network: &ClusterNetworkId,
        block: u64,
        claimer: &OwnerId,
        claim_id: u64,
        now: Instant,
        rng: &mut impl Rng,
    ) -> bool {
        if self
            .own_blocks
            .get(network)
            .is_some_and(|blocks| blocks.contains(&block))
        {
            return false;
        }
        if directory
            .leases(network)
            .iter()
            .any(|(holder, leased)| *leased == block && *holder != claimer)
        {
            return false;
        }
        // Held for a member declared dead: only that node id may have it.
        if directory
            .held_leases(network)
            .iter()
            .any(|(held, lease)| *held == block && lease.holder != claimer.id)
        {
            return false;
        }
        let key = (network.clone(), block);
        if let Some(promise) = self.promises.get(&key) {
            let binding =
                promise.expires.is_none_or(|at| at > now) && directory.is_live(&promise.claimer);
            if binding && promise.claimer != *claimer {
                return false;
            }
        }
        if let Some(mine) = self.claims.get(network) {
            if mine.block == block {
                if directory.me() < claimer {
                    return false;
                }
                // The claimer has priority: this host gives the block up.
                let mut avoid = BTreeSet::new();
                avoid.insert(block);
                self.abandon(directory, network);
                self.restart_after_loss(directory, network, avoid, now, rng);
            }
        }
        self.promises.insert(
            key,
            Promise {
                claimer: claimer.clone(),
                claim_id,
                expires: Some(now + PROMISE_TTL),
            },
        );
        true
    }

    /// An address of one of this host's blocks that neither this host nor
    /// any other host's endpoint uses (`elsewhere`, from
    /// [`addresses_on_other_hosts`]: after a healed partition, a block this
    /// host kept may hold the other side's endpoints).
    fn take_free_address(
        &mut self,
        plan: &BlockPlan,
        network: &ClusterNetworkId,
        elsewhere: &BTreeSet<IpAddr>,
    ) -> Option<IpAddr> {
        let blocks = self.own_blocks.get(network)?;
        let used = self.used.entry(network.clone()).or_default();
        for block in blocks {
            if let Some(ip) = plan
                .addresses(*block)
                .find(|ip| !used.contains(ip) && !elsewhere.contains(ip))
            {
                used.insert(ip);
                return Some(ip);
            }
        }
        None
    }

    #[allow(clippy::too_many_arguments)]
    fn start_claim(
        &mut self,
        directory: &mut Directory,
        network: &ClusterNetworkId,
        plan: &BlockPlan,
        attempts: u32,
        avoid: BTreeSet<u64>,
        now: Instant,
        rng: &mut impl Rng,
    ) {
        let Some(block) = self.pick_free_block(directory, network, plan, &avoid, now, rng) else {
            self.fail_waiting(network, AllocateError::Exhausted(network.clone()));
            return;
        };
        let claim_id = rng.random();
        let asked: BTreeMap<OwnerId, bool> =
            directory.live_peers().map(|peer| (peer, false)).collect();
        for member in asked.keys() {
            self.outbox.push((
                member.clone(),
                AllocationMessage::Claim {
                    network: network.clone(),
                    block,
                    claimer: directory.me().clone(),
                    claim_id,
                },
            ));
        }
        let claim = Claim {
            block,
            claim_id,
            asked,
            deadline: now + CLAIM_TIMEOUT,
            next_resend: now + CLAIM_RESEND,
            attempts,
            avoid,
        };
        self.claims.insert(network.clone(), claim);
        self.try_commit(directory, network, now, rng);
    }

    /// A random block nobody holds, claims with priority or was promised.
    fn pick_free_block(
        &self,
        directory: &Directory,
        network: &ClusterNetworkId,
        plan: &BlockPlan,
        avoid: &BTreeSet<u64>,
        now: Instant,
        rng: &mut impl Rng,
    ) -> Option<u64> {
        let mut taken: BTreeSet<u64> = avoid.clone();
        taken.extend(
            directory
                .leases(network)
                .into_iter()
                .map(|(_, block)| block),
        );
        taken.extend(self.own_blocks(network));
        taken.extend(
            directory
                .held_leases(network)
                .into_iter()
                .map(|(block, _)| block),
        );
        taken.extend(
            self.promises
                .iter()
                .filter(|((promised_network, _), promise)| {
                    promised_network == network
                        && promise.expires.is_none_or(|at| at > now)
                        && directory.is_live(&promise.claimer)
                })
                .map(|((_, block), _)| *block),
        );
        if plan.blocks() <= 4096 {
            let free: Vec<u64> = (0..plan.blocks())
                .filter(|block| !taken.contains(block) && plan.addresses(*block).next().is_some())
                .collect();
            if free.is_empty() {
                return None;
            }
            return free.get(rng.random_range(0..free.len())).copied();
        }
        // A large subnet: random probes find a free block almost surely.
        (0..64)
            .map(|_| rng.random_range(0..plan.blocks()))
            .find(|block| !taken.contains(block))
    }

    fn try_commit(
        &mut self,
        directory: &mut Directory,
        network: &ClusterNetworkId,
        now: Instant,
        rng: &mut impl Rng,
    ) {
        let Some(claim) = self.claims.get(network) else {
            return;
        };
        let complete = claim
            .asked
            .iter()
            .all(|(member, granted)| *granted || !directory.is_live(member));
        if !complete {
            return;
        }
        let Some(claim) = self.claims.remove(network) else {
            return;
        };
        self.own_blocks
            .entry(network.clone())
            .or_default()
            .insert(claim.block);
        directory.write_own(
            RecordKey::Lease(network.clone(), claim.block),
            Some(Record::Lease(LeaseRecord {
                network: network.clone(),
                block: claim.block,
            })),
        );
        self.outcomes.push(AllocationOutcome::LeaseWritten);
        for member in claim.asked.keys() {
            self.outbox.push((
                member.clone(),
                AllocationMessage::Commit {
                    network: network.clone(),
                    block: claim.block,
                    claimer: directory.me().clone(),
                    claim_id: claim.claim_id,
                },
            ));
        }
        self.serve_waiting(directory, network, now, rng);
    }

    fn serve_waiting(
        &mut self,
        directory: &mut Directory,
        network: &ClusterNetworkId,
        now: Instant,
        rng: &mut impl Rng,
    ) {
        let plan = match plan_of(directory, network) {
            Ok(plan) => plan,
            Err(_) => {
                self.fail_waiting(network, AllocateError::NetworkDeleted(network.clone()));
                return;
            }
        };
        // The directory does not change while the queue is served.
        let elsewhere = addresses_of_endpoints(directory, network);
        while let Some(&ticket) = self.waiting.get(network).and_then(VecDeque::front) {
            let Some(ip) = self.take_free_address(&plan, network, &elsewhere) else {
                self.start_claim(directory, network, &plan, 1, BTreeSet::new(), now, rng);
                return;
            };
            if let Some(queue) = self.waiting.get_mut(network) {
                queue.pop_front();
            }
            self.outcomes.push(AllocationOutcome::Allocated {
                ticket,
                network: network.clone(),
                ip,
            });
        }
    }

    /// Gives up the current attempt and tells the members asked.
    fn abandon(&mut self, directory: &Directory, network: &ClusterNetworkId) -> Option<Claim> {
        let claim = self.claims.remove(network)?;
        for member in claim.asked.keys() {
            self.outbox.push((
                member.clone(),
                AllocationMessage::Abandon {
                    network: network.clone(),
                    block: claim.block,
                    claimer: directory.me().clone(),
                    claim_id: claim.claim_id,
                },
            ));
        }
        Some(claim)
    }

    fn retry(
        &mut self,
        directory: &mut Directory,
        network: &ClusterNetworkId,
        now: Instant,
        rng: &mut impl Rng,
    ) {
        let Some(claim) = self.abandon(directory, network) else {
            return;
        };
        let mut avoid = claim.avoid;
        avoid.insert(claim.block);
        if claim.attempts >= MAX_ATTEMPTS {
            let error = AllocateError::Contended {
                network: network.clone(),
                attempts: claim.attempts,
            };
            self.fail_waiting(network, error);
            return;
        }
        match plan_of(directory, network) {
            Ok(plan) => self.start_claim(
                directory,
                network,
                &plan,
                claim.attempts + 1,
                avoid,
                now,
                rng,
            ),
            Err(_) => self.fail_waiting(network, AllocateError::NetworkDeleted(network.clone())),
        }
    }

    fn restart_after_loss(
        &mut self,
        directory: &mut Directory,
        network: &ClusterNetworkId,
        avoid: BTreeSet<u64>,
        now: Instant,
        rng: &mut impl Rng,
    ) {
        // Restarting from inside judge_claim: the new claim must not pick the
        // block being granted, which `avoid` and the promise ensure.
        match plan_of(directory, network) {
            Ok(plan) => self.start_claim(directory, network, &plan, 1, avoid, now, rng),
            Err(_) => self.fail_waiting(network, AllocateError::NetworkDeleted(network.clone())),
        }
    }

    fn fail_waiting(&mut self, network: &ClusterNetworkId, error: AllocateError) {
        for ticket in self.waiting.remove(network).unwrap_or_default() {
            self.outcomes.push(AllocationOutcome::Failed {
                ticket,
                error: error.clone(),
            });
        }
    }
}

/// Addresses of `network` that endpoints hold, this host's included (an
/// endpoint restored after a restart holds its address before this host's
/// allocator knows it), as the directory shows them.
fn addresses_of_endpoints(directory: &Directory, network: &ClusterNetworkId) -> BTreeSet<IpAddr> {
    directory
        .endpoints()
        .filter(|location| location.endpoint.network == *network)
        .flat_map(|location| location.endpoint.ips.iter().copied())
        .collect()
}

/// Addresses of `network` that endpoints of other hosts hold, as the
/// directory shows them.
fn addresses_on_other_hosts(directory: &Directory, network: &ClusterNetworkId) -> BTreeSet<IpAddr> {
    directory
        .endpoints()
        .filter(|location| {
            location.owner != directory.me() && location.endpoint.network == *network
        })
        .flat_map(|location| location.endpoint.ips.iter().copied())
        .collect()
}

fn plan_of(directory: &Directory, network: &ClusterNetworkId) -> Result<BlockPlan, AllocateError> {
    let record = directory
        .network(network)
        .ok_or_else(|| AllocateError::UnknownNetwork(network.clone()))?;
    Ok(BlockPlan::new(record.subnet, record.gateway))
}
