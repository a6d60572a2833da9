//! One host's overlay control plane: membership, directory and allocation,
//! sans-IO.
//!
//! # Theory of operation
//!
//! [`Node`] owns a foca SWIM instance, the replicated [`Directory`] and the
//! [`crate::allocation`] state. A driver (the daemon's UDP gossip socket)
//! feeds it:
//!
//! ```text
//! datagram in  -> handle_datagram(from, bytes, now) -> envelope::open
//!                    SWIM       -> foca -> membership notifications -> directory liveness
//!                    Directory  -> digest / records / networks / claims
//! timer        -> handle_timeout(now): foca timers, anti-entropy round, claim resends
//! out          <- poll_transmit() -> (addr, sealed datagram)
//! wake-up      <- poll_timeout()
//! news         <- poll_event(): MemberUp, MemberDown, DirectoryChanged, AddressAllocated, ...
//! ```
//!
//! Time is only what the caller passes; randomness only from the seed.
//!
//! # Membership (SWIM via foca)
//!
//! A member's identity is its node id (random, kept in the state
//! directory: what the directory, the allocator and every tie-break key
//! on), its display name, gossip address, boot id and a renewal counter
//! ([`NodeIdentity`], see [`crate::identity`]). foca probes one member per
//! `probe_period`, asks `num_indirect_probes` others to probe when the direct
//! probe goes unanswered for `probe_rtt`, marks it suspect at the end of the
//! period, and declares it down `suspect_to_down_after` later unless it
//! refutes; updates ride on every SWIM message and on a periodic gossip.
//! With the defaults in [`NodeConfig::new`] (800 ms, 300 ms, 1.5 s, gossip
//! every 200 ms to 3 members) the worst case from a host's death to every
//! member dropping it is about 0.8 + 0.8 + 1.5 + ~1 s of dissemination, under
//! the 5 s target; the simulation measures it.
//!
//! Three additions to foca, each measured in the simulation:
//! - every member that *hears* of a suspicion times it out itself
//!   (`suspect_to_down_after`) and declares the member down, as SWIM's
//!   suspicion subprotocol and memberlist do; foca alone only times out
//!   suspicions the local probe raised, so a lost Down update left members
//!   suspect for a whole probe round (over 30 s at 120 hosts);
//! - the directory's anti-entropy digest doubles as a membership push-pull:
//!   a digest that lacks a member we see alive gets that member back, and
//!   one that still lists a member we know dead gets the Down update (a
//!   joiner learns the whole cluster in about a second, not one random feed
//!   every `announce_period`);
//! - `join` is retried every second while no member is known, so a
//!   lost announce (or seeds that are down) does not leave a host alone;
//!   also when every member died later (foca stops announcing to down
//!   members once it has no live one, so a restarted seed that knows
//!   nobody would otherwise never be found again).
//!
//! Names: when a member comes up with this host's name and another node
//! id, the newer of the two (by boot id, then node id) decides: if its name
//! was given explicitly (`--node-name`) it is refused; the newer host
//! leaves the cluster and reports [`Event::NameRefused`] (the daemon exits),
//! the older reports [`Event::NameClash`] with the newcomer's address.
//! Otherwise (a shared hostname) both report [`Event::NameShared`] and work
//! on, told apart by their ids.
//!
//! Returning members: the directory holds a dead member's leases for
//! [`crate::directory::LEASE_GRACE`]; when a member with that node id comes
//! up again, this host sends it the leases it holds for it
//! ([`GossipMessage::Returned`]) and the member takes back those its
//! allocator lost in a restart.
//!
//! A member that learns it was declared down (after a partition) renews its
//! identity (renewal + 1) and rejoins; members periodically announce to
//! members they consider down, which is how two halves of a healed
//! partition find each other again.
//!
//! # Limits
//!
//! The gossip address is the identity's address: a restarted host with the
//! same address and a higher boot id replaces the old one at once. Every
//! SWIM and directory datagram is at most `max_datagram` bytes, except a
//! single directory record larger than that (bounded by the endpoint
//! limits), which goes alone and relies on IP fragmentation.

use std::cmp::Reverse;
use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::num::{NonZeroU32, NonZeroUsize};
use std::time::{Duration, Instant};

use foca::{Foca, NoCustomBroadcast, PostcardCodec};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::allocation::{
    AllocateError, Allocation, AllocationOutcome, AllocationTicket, Allocator,
};
use crate::directory::{
    ClusterNetworkId, Directory, EndpointRecord, HostRecord, MacAddr, NetworkRecord, OwnerId,
    Record, RecordKey, MAX_ALIASES, MAX_ENDPOINT_IPS, MAX_NAME_LEN,
};
use crate::envelope::{self, ClusterKey, PayloadKind, MAX_ENVELOPE_OVERHEAD};
use crate::identity::NodeId;
use crate::message::GossipMessage;

mod membership;
mod replication;
mod runtime;

pub use crate::identity::NodeIdentity;
use runtime::FocaRuntime;

/// Room left in a datagram for a message's own framing around chunked items.
const CHUNK_SLACK: usize = 96;
/// Interval between announces to the `--join` addresses while alone.
const JOIN_RETRY: Duration = Duration::from_secs(1);
/// How often suspicions heard by gossip are checked for expiry.
const SUSPICION_CHECK_PERIOD: Duration = Duration::from_millis(100);
/// Bound on timers handled in one `handle_timeout` call (livelock guard).
const MAX_TIMERS_PER_CALL: usize = 10_000;

/// Tunables; [`NodeConfig::new`] has the defaults.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Where other hosts send VXLAN for this host.
    pub underlay: SocketAddr,
    /// How many members are expected (sizes SWIM's retransmissions).
    pub cluster_size_hint: u32,
    /// SWIM probe period.
    pub probe_period: Duration,
    /// SWIM direct-probe timeout.
    pub probe_rtt: Duration,
    /// Time a suspect has to refute before being declared down.
    pub suspect_to_down_after: Duration,
    /// Period of SWIM's extra gossip (3 members each time).
    pub gossip_period: Duration,
    /// Period of asking a member for more members.
    pub announce_period: Duration,
    /// Period of announcing to members believed down (partition healing).
    pub announce_to_down_period: Duration,
    /// Period of the directory's push-pull round with one random member.
    pub anti_entropy_period: Duration,
    /// Members a local directory change is pushed to at once.
    pub push_fanout: usize,
    /// Largest gossip datagram, envelope included (UDP: below the path MTU).
    pub max_datagram: usize,
}

/// A member as [`Node::members`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    /// Node id.
    pub id: NodeId,
    /// Node name (display).
    pub name: String,
    /// Gossip address.
    pub addr: SocketAddr,
    /// Boot id.
    pub boot: u64,
    /// SWIM state.
    pub state: MemberState,
}

/// SWIM state of a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberState {
    /// Answering.
    Alive,
    /// Did not answer a probe; declared dead unless it refutes in time.
    Suspect,
    /// Declared dead; its records are gone.
    Dead,
}

/// What happened, for the daemon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A member joined or came back.
    MemberUp {
        /// Its node id.
        id: NodeId,
        /// Its name.
        name: String,
        /// Its gossip address.
        addr: SocketAddr,
    },
    /// A member was declared dead; its records left the directory (its
    /// leases are held for it, see [`crate::directory::LEASE_GRACE`]).
    MemberDown {
        /// Its node id.
        id: NodeId,
        /// Its name.
        name: String,
        /// Its gossip address.
        addr: SocketAddr,
    },
    /// Another member has this host's name, which neither gave explicitly
    /// (a shared hostname): both work on, told apart by node id.
    NameShared {
        /// The shared name.
        name: String,
        /// The other member's node id.
        id: NodeId,
        /// The other member's gossip address.
        addr: SocketAddr,
    },
    /// This host joined with an explicit `--node-name` that an older live
    /// member already uses: it left the cluster and handles nothing more.
    NameRefused {
        /// The name.
        name: String,
        /// The older member's gossip address.
        addr: SocketAddr,
    },
    /// A newer member joined with this host's name, explicitly: it was
    /// refused (it leaves the cluster by itself).
    NameClash {
        /// The name.
        name: String,
        /// The newcomer's node id.
        id: NodeId,
        /// The newcomer's gossip address.
        addr: SocketAddr,
    },
    /// Address-block leases of a member declared dead were held for
    /// [`crate::directory::LEASE_GRACE`] and it did not come back: the
    /// blocks are free.
    HeldLeasesExpired {
        /// The node id they were held for.
        holder: NodeId,
        /// How many blocks.
        blocks: usize,
    },
    /// This host came back and took back the address blocks a member held
    /// for it.
    LeasesReturned {
        /// How many blocks.
        blocks: usize,
    },
    /// The directory changed: re-read what the data path caches.
    DirectoryChanged {
        /// The directory's new generation.
        generation: u64,
    },
    /// A pending allocation got its address.
    AddressAllocated {
        /// The ticket [`Node::allocate`] returned.
        ticket: AllocationTicket,
        /// The network.
        network: ClusterNetworkId,
        /// The address.
        ip: IpAddr,
    },
    /// A pending allocation failed.
    AllocationFailed {
        /// The ticket.
        ticket: AllocationTicket,
        /// Why.
        error: AllocateError,
    },
    /// After a healed partition, a member with priority holds one of our
    /// blocks: this host gave it up (its endpoints keep their addresses).
    LeaseConflict {
        /// The network.
        network: ClusterNetworkId,
        /// The block.
        block: u64,
        /// The member that keeps it.
        winner: OwnerId,
        /// Addresses this host handed out from the block that an endpoint
        /// of another host also holds: duplicated until one of the two is
        /// reconnected.
        duplicates: Vec<IpAddr>,
    },
    /// This host was declared down and rejoined with a renewed identity.
    Rejoined,
}

/// Drops and errors, for the API.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Datagrams that failed authentication or had the wrong format.
    pub gossip_rejected: u64,
    /// Datagrams that opened but did not decode.
    pub gossip_malformed: u64,
    /// Errors foca reported on received SWIM data.
    pub swim_errors: u64,
}

/// Why a local directory write was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// The endpoint has more than [`MAX_ALIASES`] aliases, more than
    /// [`MAX_ENDPOINT_IPS`] addresses, or a name longer than [`MAX_NAME_LEN`].
    #[error("endpoint record too large: at most {MAX_ALIASES} aliases, {MAX_ENDPOINT_IPS} IPs, names of {MAX_NAME_LEN} bytes")]
    EndpointTooLarge,
    /// The endpoint's network is not a live cluster network.
    #[error("no cluster network {0:?}")]
    UnknownNetwork(ClusterNetworkId),
}

/// One host's membership, directory and allocator.
pub struct Node {
    identity: NodeIdentity,
    config: NodeConfig,
    key: Option<ClusterKey>,
    foca: Foca<NodeIdentity, PostcardCodec, StdRng, NoCustomBroadcast>,
    runtime: FocaRuntime,
    rng: StdRng,
    nonce_rng: StdRng,
    /// Latest identity of every member foca reports up, by node id.
    peers: BTreeMap<NodeId, NodeIdentity>,
    /// Refused at join (see [`Event::NameRefused`]): out of the cluster,
    /// every input ignored.
    refused: bool,
    directory: Directory,
    allocator: Allocator,
    outbox: VecDeque<(SocketAddr, Vec<u8>)>,
    events: VecDeque<Event>,
    reported_generation: u64,
    next_anti_entropy: Option<Instant>,
    /// When each suspicion (member, incarnation) was first seen here.
    suspicions: BTreeMap<(String, u64, u32, foca::Incarnation), Instant>,
    /// `--join` addresses, asked again while no member is known.
    seeds: Vec<SocketAddr>,
    next_join_retry: Option<Instant>,
    next_suspicion_check: Option<Instant>,
    counters: Counters,
}

impl NodeConfig {
    /// Defaults tuned for a LAN and the 5 s failure-detection target.
    pub fn new(underlay: SocketAddr) -> Self {
        Self {
            underlay,
            cluster_size_hint: 128,
            probe_period: Duration::from_millis(800),
            probe_rtt: Duration::from_millis(300),
            suspect_to_down_after: Duration::from_millis(1500),
            gossip_period: Duration::from_millis(200),
            announce_period: Duration::from_secs(5),
            announce_to_down_period: Duration::from_secs(3),
            anti_entropy_period: Duration::from_millis(500),
            push_fanout: 3,
            max_datagram: 1400,
        }
    }

    fn foca_config(&self) -> foca::Config {
        let size = NonZeroU32::new(self.cluster_size_hint.max(1)).unwrap_or(NonZeroU32::MIN);
        let mut config = foca::Config::new_lan(size);
        config.probe_period = self.probe_period;
        config.probe_rtt = self.probe_rtt;
        config.suspect_to_down_after = self.suspect_to_down_after;
        let swim_max = self
            .max_datagram
            .saturating_sub(MAX_ENVELOPE_OVERHEAD)
            .max(512);
        config.max_packet_size = NonZeroUsize::new(swim_max).unwrap_or(NonZeroUsize::MIN);
        config.notify_down_members = true;
        let three = NonZeroUsize::new(3).unwrap_or(NonZeroUsize::MIN);
        config.periodic_gossip = Some(foca::PeriodicParams {
            frequency: self.gossip_period,
            num_members: three,
        });
        config.periodic_announce = Some(foca::PeriodicParams {
            frequency: self.announce_period,
            num_members: NonZeroUsize::MIN,
        });
        config.periodic_announce_to_down_members = Some(foca::PeriodicParams {
            frequency: self.announce_to_down_period,
            num_members: three,
        });
        config
    }
}

impl Node {
    /// A node that knows nobody yet. `rng_seed` must come from the
    /// operating system's randomness in a daemon (it also seeds AEAD nonces);
    /// tests pass fixed seeds.
    pub fn new(
        identity: NodeIdentity,
        config: NodeConfig,
        key: Option<ClusterKey>,
        rng_seed: u64,
    ) -> Self {
        let mix = |salt: u64| {
            // Each input through the finaliser before they are combined:
            // seeds and ids that differ by small, related amounts (as in
            // simulations) must not give equal streams.
            let id = identity.id.0.to_le_bytes();
            let (low, high) = id.split_at(8);
            let half = |bytes: &[u8]| u64::from_le_bytes(bytes.try_into().unwrap_or([0; 8]));
            let state = splitmix64(rng_seed ^ salt)
                ^ splitmix64(identity.boot.rotate_left(17) ^ salt).rotate_left(11)
                ^ splitmix64(half(low)).rotate_left(23)
                ^ splitmix64(half(high) ^ 0x5bd1_e995).rotate_left(37);
            splitmix64(state)
        };
        let me = OwnerId {
            id: identity.id,
            boot: identity.boot,
        };
        let mut directory = Directory::new(me);
        directory.write_own(
            RecordKey::Host,
            Some(Record::Host(HostRecord {
                underlay: config.underlay,
            })),
        );
        let foca = Foca::new(
            identity.clone(),
            config.foca_config(),
            StdRng::seed_from_u64(mix(1)),
            PostcardCodec,
        );
        let rng = StdRng::seed_from_u64(mix(2));
        let nonce_rng = StdRng::seed_from_u64(mix(3));
        Self {
            identity,
            key,
            foca,
            runtime: FocaRuntime::new(),
            rng,
            nonce_rng,
            peers: BTreeMap::new(),
            refused: false,
            reported_generation: directory.generation(),
            directory,
            allocator: Allocator::default(),
            outbox: VecDeque::new(),
            events: VecDeque::new(),
            next_anti_entropy: None,
            suspicions: BTreeMap::new(),
            seeds: Vec::new(),
            next_join_retry: None,
            next_suspicion_check: None,
            counters: Counters::default(),
            config,
        }
    }

    /// This node's current identity.
    pub fn identity(&self) -> &NodeIdentity {
        &self.identity
    }

    /// The `--join` members this node was told to ask in.
    pub fn seeds(&self) -> &[SocketAddr] {
        &self.seeds
    }

    /// This host's address changed (a laptop on another network): gossip
    /// now reaches it at `gossip` and tunnels at `underlay`. The host
    /// record is rewritten and pushed, and the SWIM identity renewed with
    /// the new address (foca declares the old one down itself); members
    /// keep this host's records, keyed on its node id, and take the new
    /// identity as the same member's (see `member_up`).
    pub fn move_to(&mut self, gossip: SocketAddr, underlay: SocketAddr, now: Instant) {
        self.config.underlay = underlay;
        self.write_and_push(RecordKey::Host, Some(Record::Host(HostRecord { underlay })));
        let mut moved = self.identity.clone();
        moved.gossip = gossip;
        moved.renewal = moved.renewal.wrapping_add(1);
        self.runtime.now = Some(now);
        if self
            .foca
            .change_identity(moved.clone(), &mut self.runtime)
            .is_err()
        {
            self.counters.swim_errors += 1;
        }
        self.identity = moved;
        self.after_foca(now);
        // Announce to every member too: the first to hear it need not wait
        // for the gossip to go round.
        for addr in self.live_peer_addresses() {
            self.announce_to(addr, now);
        }
        self.report_directory_changes();
    }

    /// Asks the member at `addr` (`--join`) to let this node in; any member
    /// will do, and several may be asked.
    pub fn join(&mut self, addr: SocketAddr, now: Instant) {
        self.start_clock(now);
        if !self.seeds.contains(&addr) {
            self.seeds.push(addr);
        }
        self.announce_to(addr, now);
        self.next_join_retry = Some(now + JOIN_RETRY);
    }

    fn announce_to(&mut self, addr: SocketAddr, now: Instant) {
        // foca accepts an announce whose destination has the member's
        // address, whatever the rest of the identity.
        let placeholder = NodeIdentity {
            id: NodeId(0),
            name: String::new(),
            explicit_name: false,
            gossip: addr,
            boot: 0,
            renewal: 0,
        };
        self.runtime.now = Some(now);
        if self.foca.announce(placeholder, &mut self.runtime).is_err() {
            self.counters.swim_errors += 1;
        }
        self.after_foca(now);
    }

    /// While no member is known (the announce or its answer was lost, or
    /// every seed was down), asks the seeds again every [`JOIN_RETRY`].
    fn retry_join(&mut self, now: Instant) {
        if self.next_join_retry.is_none_or(|at| at > now) {
            return;
        }
        if self.foca.num_members() > 0 {
            self.next_join_retry = None;
            return;
        }
        for seed in self.seeds.clone() {
            self.announce_to(seed, now);
        }
        self.next_join_retry = Some(now + JOIN_RETRY);
    }

    /// Handles a gossip datagram from `from`.
    pub fn handle_datagram(&mut self, from: SocketAddr, datagram: &[u8], now: Instant) {
        if self.refused {
            return;
        }
        self.start_clock(now);
        let (kind, payload) = match envelope::open(self.key.as_ref(), datagram) {
            Ok(opened) => opened,
            Err(reason) => {
                self.counters.gossip_rejected += 1;
                tracing::debug!(%from, %reason, "gossip datagram dropped");
                return;
            }
        };
        match kind {
            PayloadKind::Swim => {
                self.runtime.now = Some(now);
                if let Err(error) = self.foca.handle_data(&payload, &mut self.runtime) {
                    self.counters.swim_errors += 1;
                    tracing::debug!(%from, %error, "SWIM datagram dropped");
                }
                self.after_foca(now);
            }
            PayloadKind::Directory => match GossipMessage::decode(&payload) {
                Ok(message) => self.handle_message(from, message, now),
                Err(error) => {
                    self.counters.gossip_malformed += 1;
                    tracing::debug!(%from, %error, "directory datagram dropped");
                }
            },
        }
        self.after_allocation(now);
        self.report_directory_changes();
    }

    /// Runs whatever is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.refused {
            return;
        }
        self.start_clock(now);
        self.runtime.now = Some(now);
        for _ in 0..MAX_TIMERS_PER_CALL {
            let Some(due) = self.runtime.pop_due(now) else {
                break;
            };
            if let Err(error) = self.foca.handle_timer(due, &mut self.runtime) {
                self.counters.swim_errors += 1;
                tracing::debug!(%error, "SWIM timer failed");
            }
        }
        self.after_foca(now);
        self.retry_join(now);
        if self.next_suspicion_check.is_none_or(|at| at <= now) {
            self.expire_suspicions(now);
            self.next_suspicion_check = Some(now + SUSPICION_CHECK_PERIOD);
        }
        if self.next_anti_entropy.is_some_and(|at| at <= now) {
            self.anti_entropy_round();
            self.allocator.detect_conflicts(&mut self.directory);
            // +-25 % jitter so rounds of different hosts do not align.
            let period = self.config.anti_entropy_period;
            let jitter = period.mul_f64(self.rng.random_range(0.75..1.25));
            self.next_anti_entropy = Some(now + jitter);
        }
        self.allocator
            .handle_timeout(&mut self.directory, now, &mut self.rng);
        self.expire_held_leases(now);
        self.after_allocation(now);
        self.report_directory_changes();
    }

    fn expire_held_leases(&mut self, now: Instant) {
        let mut per_holder: BTreeMap<NodeId, usize> = BTreeMap::new();
        for (_, holder) in self.directory.expire_held(now) {
            *per_holder.entry(holder).or_default() += 1;
        }
        for (holder, blocks) in per_holder {
            tracing::info!(%holder, blocks, "address blocks of a member gone longer than the grace period are free");
            self.events
                .push_back(Event::HeldLeasesExpired { holder, blocks });
        }
    }

    /// When [`Node::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.refused {
            return None;
        }
        let timers = self.runtime.timers.peek().map(|Reverse(timer)| timer.due);
        let suspicion_check = self
            .next_suspicion_check
            .filter(|_| !self.suspicions.is_empty());
        [
            timers,
            self.next_anti_entropy,
            suspicion_check,
            self.next_join_retry,
            self.allocator.poll_timeout(),
            self.directory.next_held_expiry(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.outbox.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Every member foca knows (not this node), with its state.
    pub fn members(&self) -> Vec<MemberInfo> {
        self.foca
            .iter_membership_state()
            .map(|member| {
                let id = member.id();
                let state = match member.state() {
                    foca::State::Alive => MemberState::Alive,
                    foca::State::Suspect => MemberState::Suspect,
                    foca::State::Down => MemberState::Dead,
                };
                MemberInfo {
                    id: id.id,
                    name: id.name.clone(),
                    addr: id.gossip,
                    boot: id.boot,
                    state,
                }
            })
            .collect()
    }

    /// The replicated directory, for queries.
    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    /// Drop counters.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Whether VXLAN from `ip` should be accepted: the underlay or gossip
    /// address of a live member (static peers are the driver's list).
    pub fn is_member_address(&self, ip: IpAddr) -> bool {
        self.directory
            .hosts()
            .iter()
            .any(|(_, addr)| addr.ip() == ip)
            || self.peers.values().any(|peer| peer.gossip.ip() == ip)
    }

    /// Creates or updates a cluster network on every host.
    pub fn publish_network(&mut self, id: ClusterNetworkId, record: NetworkRecord) {
        let entry = self.directory.write_network(id, Some(record));
        self.push(GossipMessage::Networks {
            entries: vec![entry],
            reply: false,
        });
        self.report_directory_changes();
    }

    /// Deletes a cluster network on every host.
    pub fn delete_network(&mut self, id: ClusterNetworkId) {
        let entry = self.directory.write_network(id, None);
        self.push(GossipMessage::Networks {
            entries: vec![entry],
            reply: false,
        });
        self.report_directory_changes();
    }

    /// Announces (or updates) a local endpoint to every host.
    ///
    /// # Errors
    ///
    /// [`PublishError`] when the record is too large or the network unknown.
    pub fn publish_endpoint(&mut self, endpoint: EndpointRecord) -> Result<(), PublishError> {
        let too_long = |name: &String| name.len() > MAX_NAME_LEN;
        if endpoint.aliases.len() > MAX_ALIASES
            || endpoint.ips.len() > MAX_ENDPOINT_IPS
            || endpoint.name.as_ref().is_some_and(too_long)
            || endpoint.aliases.iter().any(too_long)
        {
            return Err(PublishError::EndpointTooLarge);
        }
        if self.directory.network(&endpoint.network).is_none() {
            return Err(PublishError::UnknownNetwork(endpoint.network));
        }
        let key = RecordKey::Endpoint(endpoint.network.clone(), endpoint.mac);
        self.write_and_push(key, Some(Record::Endpoint(endpoint)));
        Ok(())
    }

    /// Withdraws a local endpoint from every host.
    pub fn withdraw_endpoint(&mut self, network: &ClusterNetworkId, mac: MacAddr) {
        let key = RecordKey::Endpoint(network.clone(), mac);
        if self.directory.has_own(&key) {
            self.write_and_push(key, None);
        }
    }

    /// An address of `network` never handed out by another host; see
    /// [`crate::allocation`].
    ///
    /// # Errors
    ///
    /// [`AllocateError::UnknownNetwork`] when the network does not exist.
    pub fn allocate(
        &mut self,
        network: &ClusterNetworkId,
        now: Instant,
    ) -> Result<Allocation, AllocateError> {
        self.start_clock(now);
        let result = self
            .allocator
            .allocate(&mut self.directory, network, now, &mut self.rng);
        self.after_allocation(now);
        self.report_directory_changes();
        result
    }

    /// Returns an address to this host's pool.
    pub fn release(&mut self, network: &ClusterNetworkId, ip: IpAddr) {
        self.allocator.release(network, ip);
    }

    /// Blocks of `network` this host leases.
    pub fn leased_blocks(&self, network: &ClusterNetworkId) -> Vec<u64> {
        self.allocator.own_blocks(network).collect()
    }

    // ---- internals ---------------------------------------------------------

    fn start_clock(&mut self, now: Instant) {
        if self.next_anti_entropy.is_none() {
            self.next_anti_entropy = Some(now + self.config.anti_entropy_period);
        }
    }

    fn write_and_push(&mut self, key: RecordKey, record: Option<Record>) {
        let base = self.directory.version_of(self.directory.me());
        let entry = self.directory.write_own(key, record);
        let owner = self.directory.me().clone();
        self.push(GossipMessage::Records {
            owner,
            base,
            upto: entry.version,
            records: vec![entry],
        });
        self.report_directory_changes();
    }

    /// Sends `message` to `push_fanout` random live members.
    fn push(&mut self, message: GossipMessage) {
        let mut peers: Vec<SocketAddr> = self.live_peer_addresses();
        for _ in 0..self.config.push_fanout.min(peers.len()) {
            let index = self.rng.random_range(0..peers.len());
            let addr = peers.swap_remove(index);
            self.send(addr, &message);
        }
    }

    fn live_peer_addresses(&self) -> Vec<SocketAddr> {
        self.directory
            .live_peers()
            .filter_map(|owner| self.peers.get(&owner.id).map(|peer| peer.gossip))
            .collect()
    }

    fn send(&mut self, addr: SocketAddr, message: &GossipMessage) {
        let sealed = envelope::seal(
            self.key.as_ref(),
            PayloadKind::Directory,
            &message.encode(),
            &mut self.nonce_rng,
        );
        self.outbox.push_back((addr, sealed));
    }

    fn chunk_budget(&self) -> usize {
        self.config
            .max_datagram
            .saturating_sub(MAX_ENVELOPE_OVERHEAD + CHUNK_SLACK)
            .max(256)
    }

    fn after_foca(&mut self, now: Instant) {
        for (to, payload) in std::mem::take(&mut self.runtime.sends) {
            let sealed = envelope::seal(
                self.key.as_ref(),
                PayloadKind::Swim,
                &payload,
                &mut self.nonce_rng,
            );
            self.outbox.push_back((to.gossip, sealed));
        }
        for notification in std::mem::take(&mut self.runtime.notifications) {
            self.handle_notification(notification, now);
        }
    }

    fn after_allocation(&mut self, now: Instant) {
        let _ = now;
        for (owner, message) in std::mem::take(&mut self.allocator.outbox) {
            if let Some(addr) = self.peers.get(&owner.id).map(|peer| peer.gossip) {
                self.send(addr, &GossipMessage::Allocation(message));
            }
        }
        for outcome in std::mem::take(&mut self.allocator.outcomes) {
            match outcome {
                AllocationOutcome::Allocated {
                    ticket,
                    network,
                    ip,
                } => {
                    self.events.push_back(Event::AddressAllocated {
                        ticket,
                        network,
                        ip,
                    });
                }
                AllocationOutcome::Failed { ticket, error } => {
                    self.events
                        .push_back(Event::AllocationFailed { ticket, error });
                }
                AllocationOutcome::LeaseConflict {
                    network,
                    block,
                    winner,
                    duplicates,
                } => {
                    tracing::warn!(?network, block, winner = %winner.id, ?duplicates, "address block leased twice after a partition: given up");
                    self.events.push_back(Event::LeaseConflict {
                        network,
                        block,
                        winner,
                        duplicates,
                    });
                }
                AllocationOutcome::LeasesReturned(blocks) => {
                    tracing::info!(
                        blocks,
                        "address blocks held for this host while it was away: taken back"
                    );
                    self.events.push_back(Event::LeasesReturned { blocks });
                }
                AllocationOutcome::LeaseWritten => {
                    let me = self.directory.me().clone();
                    let upto = self.directory.version_of(&me);
                    let records = self.directory.records_since(&me, upto.saturating_sub(1));
                    self.push(GossipMessage::Records {
                        owner: me,
                        base: upto.saturating_sub(1),
                        upto,
                        records,
                    });
                }
            }
        }
    }

    fn report_directory_changes(&mut self) {
        let generation = self.directory.generation();
        if generation != self.reported_generation {
            self.reported_generation = generation;
            self.events
                .push_back(Event::DirectoryChanged { generation });
        }
    }
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("identity", &self.identity)
            .field("peers", &self.peers.len())
            .finish()
    }
}

/// SplitMix64's finaliser: spreads a seed over all 64 bits.
fn splitmix64(mut state: u64) -> u64 {
    state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    state = (state ^ (state >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    state = (state ^ (state >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    state ^ (state >> 31)
}
