//! A simulated cluster: many [`Node`]s over an in-memory network with a
//! virtual clock, seeded randomness, delay, loss and partitions.
//!
//! The clock advances in `TICK` steps; a datagram sent during a tick is
//! delivered after a random delay (never sooner than the next tick). Every
//! run with the same seed is identical.

#![allow(clippy::disallowed_methods)]

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use weft_overlay::{
    AllocateError, Allocation, ClusterKey, ClusterNetworkId, EndpointRecord, Event, MacAddr,
    MemberState, NetworkRecord, Node, NodeConfig, NodeId, NodeIdentity, Vni,
};

const TICK: Duration = Duration::from_millis(5);

struct Datagram {
    due: Instant,
    seq: u64,
    from: usize,
    to: usize,
    bytes: Vec<u8>,
}

/// Networks hash, hosts and endpoints as one node's directory has them.
type DirectoryView = (
    u64,
    BTreeSet<(String, SocketAddr)>,
    BTreeSet<(String, MacAddr, Vec<IpAddr>)>,
);

struct Sim {
    start: Instant,
    now: Instant,
    nodes: Vec<Node>,
    by_addr: HashMap<SocketAddr, usize>,
    in_flight: BinaryHeap<Reverse<(Instant, u64, usize)>>,
    datagrams: HashMap<u64, Datagram>,
    seq: u64,
    rng: StdRng,
    min_delay: Duration,
    max_delay: Duration,
    loss: f64,
    dead: Vec<bool>,
    /// Partition group of each node; datagrams between groups are lost.
    group: Vec<u8>,
    events: Vec<Vec<Event>>,
    delivered: u64,
    /// Nodes that moved (`Node::move_to`): their gossip address now.
    moved: HashMap<usize, SocketAddr>,
}

fn gossip_addr(index: usize) -> SocketAddr {
    let index = u16::try_from(index).unwrap();
    SocketAddr::from(([10, 99, (index >> 8) as u8, (index & 0xff) as u8], 7946))
}

fn underlay_addr(index: usize) -> SocketAddr {
    SocketAddr::new(gossip_addr(index).ip(), 4789)
}

/// Host `index`'s node id: ordered like the hosts (ties break the same).
fn node_id(index: usize) -> NodeId {
    NodeId(index as u128 + 1)
}

/// The name of the host whose owner id this is.
fn name_of(owner: &weft_overlay::OwnerId) -> String {
    name(usize::try_from(owner.id.0 - 1).unwrap_or(usize::MAX))
}

fn name(index: usize) -> String {
    format!("host-{index:03}")
}

impl Sim {
    fn new(count: usize, seed: u64, key: Option<&[u8]>) -> Self {
        let start = Instant::now();
        let nodes: Vec<Node> = (0..count)
            .map(|index| {
                let identity = NodeIdentity {
                    id: node_id(index),
                    name: name(index),
                    explicit_name: true,
                    gossip: gossip_addr(index),
                    boot: 1,
                    renewal: 0,
                };
                let config = NodeConfig::new(underlay_addr(index));
                Node::new(
                    identity,
                    config,
                    key.map(ClusterKey::from_secret),
                    seed.wrapping_add(index as u64),
                )
            })
            .collect();
        let by_addr = (0..count)
            .map(|index| (gossip_addr(index), index))
            .collect();
        Self {
            start,
            now: start,
            nodes,
            by_addr,
            in_flight: BinaryHeap::new(),
            datagrams: HashMap::new(),
            seq: 0,
            rng: StdRng::seed_from_u64(seed),
            min_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(8),
            loss: 0.0,
            dead: vec![false; count],
            group: vec![0; count],
            events: (0..count).map(|_| Vec::new()).collect(),
            delivered: 0,
            moved: HashMap::new(),
        }
    }

    fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// Every node joins node 0, one every 10 ms.
    fn join_all(&mut self) {
        for index in 1..self.nodes.len() {
            let now = self.now;
            self.nodes[index].join(gossip_addr(0), now);
            self.collect(index);
            self.run_for(Duration::from_millis(10));
        }
    }

    fn collect(&mut self, index: usize) {
        while let Some((to, bytes)) = self.nodes[index].poll_transmit() {
            let Some(&target) = self.by_addr.get(&to) else {
                continue;
            };
            let lost = self.loss > 0.0 && self.rng.random_bool(self.loss);
            if lost || self.dead[index] {
                continue;
            }
            let delay = self.rng.random_range(self.min_delay..=self.max_delay);
            self.seq += 1;
            let due = self.now + delay;
            self.in_flight.push(Reverse((due, self.seq, target)));
            self.datagrams.insert(
                self.seq,
                Datagram {
                    due,
                    seq: self.seq,
                    from: index,
                    to: target,
                    bytes,
                },
            );
        }
        while let Some(event) = self.nodes[index].poll_event() {
            self.events[index].push(event);
        }
    }

    fn step(&mut self) {
        self.now += TICK;
        while let Some(Reverse((due, seq, _))) = self.in_flight.peek().copied() {
            if due > self.now {
                break;
            }
            self.in_flight.pop();
            let Some(datagram) = self.datagrams.remove(&seq) else {
                continue;
            };
            debug_assert_eq!((datagram.due, datagram.seq), (due, seq));
            let (from, to) = (datagram.from, datagram.to);
            if self.dead[to] || self.dead[from] || self.group[from] != self.group[to] {
                continue;
            }
            self.delivered += 1;
            let now = self.now;
            let from_addr = self
                .moved
                .get(&from)
                .copied()
                .unwrap_or_else(|| gossip_addr(from));
            self.nodes[to].handle_datagram(from_addr, &datagram.bytes, now);
            self.collect(to);
        }
        for index in 0..self.nodes.len() {
            if self.dead[index] {
                continue;
            }
            if self.nodes[index]
                .poll_timeout()
                .is_some_and(|at| at <= self.now)
            {
                let now = self.now;
                self.nodes[index].handle_timeout(now);
                self.collect(index);
            }
        }
    }

    fn run_for(&mut self, duration: Duration) {
        let until = self.now + duration;
        while self.now < until {
            self.step();
        }
    }

    /// Steps until `done` holds (checked every 100 ms); the time it took.
    fn run_until(
        &mut self,
        limit: Duration,
        mut done: impl FnMut(&Sim) -> bool,
    ) -> Option<Duration> {
        let from = self.now;
        while self.now - from < limit {
            self.run_for(Duration::from_millis(100));
            if done(self) {
                return Some(self.now - from);
            }
        }
        None
    }

    fn live(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.nodes.len()).filter(|index| !self.dead[*index])
    }

    /// Every live node sees every other live node of its group alive.
    fn membership_converged(&self) -> bool {
        self.live().all(|index| {
            let alive: BTreeSet<String> = self.nodes[index]
                .members()
                .into_iter()
                .filter(|member| member.state == MemberState::Alive)
                .map(|member| member.name)
                .collect();
            self.live()
                .filter(|other| *other != index && self.group[*other] == self.group[index])
                .all(|other| alive.contains(&name(other)))
        })
    }

    /// What a node's directory says, in a comparable form.
    fn directory_view(&self, index: usize) -> DirectoryView {
        let directory = self.nodes[index].directory();
        let hosts = directory
            .hosts()
            .into_iter()
            .map(|(owner, addr)| (name_of(owner), addr))
            .collect();
        let endpoints = directory
            .endpoints()
            .map(|location| {
                (
                    name_of(location.owner),
                    location.endpoint.mac,
                    location.endpoint.ips.clone(),
                )
            })
            .collect();
        (directory.networks_hash(), hosts, endpoints)
    }

    /// Every live node of each group has the same directory, holding
    /// exactly the live nodes of its group.
    fn directories_converged(&self, endpoints_per_node: usize) -> bool {
        let mut views: BTreeMap<u8, _> = BTreeMap::new();
        for index in self.live() {
            let view = self.directory_view(index);
            let members = self
                .live()
                .filter(|other| self.group[*other] == self.group[index])
                .count();
            if view.1.len() != members || view.2.len() != members * endpoints_per_node {
                return false;
            }
            match views.get(&self.group[index]) {
                None => {
                    views.insert(self.group[index], view);
                }
                Some(first) if *first == view => {}
                Some(_) => return false,
            }
        }
        true
    }
}

/// The seed: `WEFT_SIM_SEED` if set (to replay or explore), else the default.
fn seed(default: u64) -> u64 {
    std::env::var("WEFT_SIM_SEED")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(default)
}

fn overlay_network() -> (ClusterNetworkId, NetworkRecord) {
    let id = ClusterNetworkId("9f".repeat(32));
    let record = NetworkRecord {
        name: "ov0".into(),
        subnet: "10.20.0.0/21".parse().unwrap(),
        gateway: Some("10.20.0.1".parse().unwrap()),
        vni: Vni::new(4242).unwrap(),
        options: BTreeMap::new(),
    };
    (id, record)
}

fn endpoint_of(index: usize, network: &ClusterNetworkId) -> EndpointRecord {
    let index_u16 = u16::try_from(index).unwrap();
    let [high, low] = index_u16.to_be_bytes();
    EndpointRecord {
        network: network.clone(),
        mac: MacAddr([2, 0x42, 0, 0, high, low]),
        ips: vec![IpAddr::from([10, 20, 7, low])],
        name: Some(format!("web-{index}")),
        aliases: vec!["web".into()],
    }
}

/// A 120-host cluster: joins and converges, detects a dead host within 5 s,
/// splits in two for 30 s and heals.
#[test]
fn cluster_of_120_converges_detects_death_and_heals() {
    const HOSTS: usize = 120;
    let mut sim = Sim::new(HOSTS, seed(0x5eed_0001), None);
    sim.loss = 0.005;
    let (network, record) = overlay_network();
    let now = sim.now;
    sim.nodes[0].publish_network(network.clone(), record);
    sim.nodes[0].handle_timeout(now);
    sim.collect(0);
    sim.join_all();
    let joined_at = sim.elapsed();

    // Membership, host records and the network first; endpoints after.
    let membership = sim
        .run_until(Duration::from_secs(60), |sim| sim.membership_converged())
        .expect("membership converges");
    println!("120 hosts: every host saw all 119 others alive {membership:?} after the last join");
    assert!(membership <= Duration::from_secs(10), "took {membership:?}");
    let converged = sim.run_until(Duration::from_secs(60), |sim| {
        sim.membership_converged() && sim.directories_converged(0)
    });
    let membership_time = converged.expect("membership and host records converge");
    println!("120 hosts: host records and the network reached every host {membership_time:?} after membership converged (joins took {joined_at:?})");
    for index in 0..HOSTS {
        assert!(
            sim.nodes[index].directory().network(&network).is_some(),
            "network reached host {index}"
        );
        sim.nodes[index]
            .publish_endpoint(endpoint_of(index, &network))
            .unwrap();
        sim.collect(index);
    }
    let directory_time = sim
        .run_until(Duration::from_secs(30), |sim| {
            sim.directories_converged(1) && directories_have_endpoints(sim, HOSTS)
        })
        .expect("endpoints converge");
    println!("120 hosts: 120 endpoints published at once reached every host in {directory_time:?}");
    assert!(
        directory_time <= Duration::from_secs(10),
        "directory convergence took {directory_time:?}"
    );

    // Queries the data path uses, from a host far from the owner.
    let owner = 17;
    let at = &sim.nodes[93];
    let location = at
        .directory()
        .endpoint_by_mac(&network, endpoint_of(owner, &network).mac)
        .unwrap();
    assert_eq!(location.underlay, Some(underlay_addr(owner)));
    assert_eq!(
        at.directory()
            .endpoint_by_ip(&network, endpoint_of(owner, &network).ips[0]),
        Some(endpoint_of(owner, &network).mac)
    );
    assert_eq!(at.directory().hosts_with_network(&network).len(), HOSTS - 1);
    assert_eq!(
        at.directory()
            .network_by_vni(Vni::new(4242).unwrap())
            .map(|(id, _)| id.clone()),
        Some(network.clone())
    );

    // Kill one host: everyone must drop it within 5 s.
    let victim = 42;
    sim.dead[victim] = true;
    let victim_name = name(victim);
    let detection = sim
        .run_until(Duration::from_secs(20), |sim| {
            sim.live().all(|index| {
                let node = &sim.nodes[index];
                let gone_from_members = node
                    .members()
                    .iter()
                    .all(|member| member.name != victim_name || member.state == MemberState::Dead);
                let gone_from_directory = node
                    .directory()
                    .hosts()
                    .iter()
                    .all(|(owner, _)| name_of(owner) != victim_name)
                    && node
                        .directory()
                        .endpoints()
                        .all(|location| name_of(location.owner) != victim_name);
                gone_from_members && gone_from_directory
            })
        })
        .expect("the dead host is declared dead everywhere");
    println!(
        "120 hosts: dead host declared dead and its records removed everywhere in {detection:?}"
    );
    assert!(detection <= Duration::from_secs(5), "took {detection:?}");
    assert!(sim.events[7]
        .iter()
        .any(|event| matches!(event, Event::MemberDown { name, .. } if *name == victim_name)));
    assert!(sim.directories_converged(1));

    // Partition into two halves for 30 s.
    for index in 0..HOSTS {
        sim.group[index] = u8::from(index >= HOSTS / 2);
    }
    let split = sim
        .run_until(Duration::from_secs(30), |sim| {
            sim.membership_converged()
                && sim.directories_converged(1)
                && halves_see_each_other_dead(sim)
        })
        .expect("each half drops the other");
    println!("120 hosts: partition: each half dropped the other in {split:?}");
    let remaining = Duration::from_secs(30).saturating_sub(split);
    sim.run_for(remaining);
    assert!(halves_see_each_other_dead(&sim));

    // Heal.
    sim.group.iter_mut().for_each(|group| *group = 0);
    let healed = sim
        .run_until(Duration::from_secs(60), |sim| {
            sim.membership_converged() && sim.directories_converged(1)
        })
        .expect("the cluster reconverges after the partition heals");
    println!("120 hosts: after healing, membership and directory reconverged in {healed:?}");
    assert!(healed <= Duration::from_secs(30), "took {healed:?}");
    println!(
        "120 hosts: {} datagrams delivered in {:?} of virtual time",
        sim.delivered,
        sim.elapsed()
    );
}

fn directories_have_endpoints(sim: &Sim, hosts: usize) -> bool {
    sim.live()
        .all(|index| sim.nodes[index].directory().endpoints().count() == hosts)
}

fn halves_see_each_other_dead(sim: &Sim) -> bool {
    sim.live().all(|index| {
        let node = &sim.nodes[index];
        let others: BTreeSet<String> = sim
            .live()
            .filter(|other| sim.group[*other] != sim.group[index])
            .map(name)
            .collect();
        node.members()
            .iter()
            .all(|member| !others.contains(&member.name) || member.state == MemberState::Dead)
            && node
                .directory()
                .hosts()
                .iter()
                .all(|(owner, _)| !others.contains(&name_of(owner)))
    })
}

/// What one "everyone allocates at the same instant" run produced.
struct AllocationRun {
    addresses: BTreeMap<IpAddr, usize>,
    duplicates: Vec<(IpAddr, usize, usize)>,
    failures: Vec<(usize, AllocateError)>,
    still_pending: usize,
    blocks_leased_twice: Vec<u64>,
    took: Duration,
}

/// `hosts` hosts, host 0 with the network `id`, joined and converged
/// (membership and directories).
fn converged_with_network(
    hosts: usize,
    seed: u64,
    id: &ClusterNetworkId,
    record: NetworkRecord,
) -> Sim {
    let mut sim = Sim::new(hosts, seed, None);
    let now = sim.now;
    sim.nodes[0].publish_network(id.clone(), record);
    sim.nodes[0].handle_timeout(now);
    sim.collect(0);
    sim.join_all();
    sim.run_until(Duration::from_secs(60), |sim| {
        sim.membership_converged() && sim.directories_converged(0)
    })
    .expect("the cluster converges");
    sim
}

/// `hosts` hosts join, converge, then each asks for `per_host` addresses of
/// `subnet` at one instant; runs until every request is answered.
fn allocate_at_once(hosts: usize, per_host: usize, subnet: &str, seed: u64) -> AllocationRun {
    let (network, mut record) = overlay_network();
    record.subnet = subnet.parse().unwrap();
    let mut sim = converged_with_network(hosts, seed, &network, record);

    let mut run = AllocationRun {
        addresses: BTreeMap::new(),
        duplicates: Vec::new(),
        failures: Vec::new(),
        still_pending: 0,
        blocks_leased_twice: Vec::new(),
        took: Duration::ZERO,
    };
    let mut pending: BTreeSet<(usize, u64)> = BTreeSet::new();
    let now = sim.now;
    for index in 0..hosts {
        for _ in 0..per_host {
            match sim.nodes[index].allocate(&network, now).unwrap() {
                Allocation::Ready(ip) => {
                    if let Some(first) = run.addresses.insert(ip, index) {
                        run.duplicates.push((ip, first, index));
                    }
                }
                Allocation::Pending(ticket) => {
                    pending.insert((index, ticket.0));
                }
            }
        }
        sim.collect(index);
    }
    assert_eq!(pending.len(), hosts * per_host, "nobody holds a block yet");
    let started = sim.now;
    let limit = sim.now + Duration::from_secs(60);
    while !pending.is_empty() && sim.now < limit {
        sim.run_for(Duration::from_millis(50));
        for index in 0..hosts {
            for event in std::mem::take(&mut sim.events[index]) {
                match event {
                    Event::AddressAllocated { ticket, ip, .. } => {
                        pending.remove(&(index, ticket.0));
                        if let Some(first) = run.addresses.insert(ip, index) {
                            run.duplicates.push((ip, first, index));
                        }
                    }
                    Event::AllocationFailed { ticket, error } => {
                        pending.remove(&(index, ticket.0));
                        run.failures.push((index, error));
                    }
                    _ => {}
                }
            }
        }
    }
    run.took = sim.now - started;
    run.still_pending = pending.len();
    let mut holders: BTreeMap<u64, usize> = BTreeMap::new();
    for index in 0..hosts {
        for block in sim.nodes[index].leased_blocks(&network) {
            if holders.insert(block, index).is_some() {
                run.blocks_leased_twice.push(block);
            }
        }
    }
    // Once replicated, every directory shows every lease.
    sim.run_for(Duration::from_secs(5));
    for index in 0..hosts {
        let leases = sim.nodes[index].directory().leases(&network);
        assert_eq!(leases.len(), holders.len(), "host {index} sees every lease");
    }
    run
}

/// 50 hosts each allocate 20 addresses at the same instant in a /21 (128
/// blocks of 16): every request succeeds and no address is handed out twice.
#[test]
fn concurrent_allocation_never_duplicates() {
    let run = allocate_at_once(50, 20, "10.20.0.0/21", seed(0x5eed_0002));
    println!(
        "50 hosts x 20 addresses allocated at one instant: done in {:?}, {} failures",
        run.took,
        run.failures.len()
    );
    assert!(
        run.duplicates.is_empty(),
        "duplicates: {:?}",
        run.duplicates
    );
    assert!(
        run.blocks_leased_twice.is_empty(),
        "{:?}",
        run.blocks_leased_twice
    );
    assert!(
        run.failures.is_empty(),
        "failed allocations: {:?}",
        run.failures
    );
    assert_eq!(run.still_pending, 0);
    assert_eq!(run.addresses.len(), 50 * 20);
    let gateway: IpAddr = "10.20.0.1".parse().unwrap();
    assert!(!run.addresses.contains_key(&gateway));
}

/// Scarcity: 30 hosts each want one block of a /23 (32 blocks) at the same
/// instant, so nearly every random first pick collides. Still no address
/// twice; requests that lose every attempt fail cleanly.
#[test]
fn contended_allocation_never_duplicates() {
    let run = allocate_at_once(30, 10, "10.30.0.0/23", seed(0x5eed_0004));
    println!(
        "30 hosts x 10 addresses in 32 blocks at one instant: done in {:?}, {} of 300 failed",
        run.took,
        run.failures.len()
    );
    assert!(
        run.duplicates.is_empty(),
        "duplicates: {:?}",
        run.duplicates
    );
    assert!(
        run.blocks_leased_twice.is_empty(),
        "{:?}",
        run.blocks_leased_twice
    );
    assert_eq!(run.still_pending, 0);
    assert_eq!(run.addresses.len() + run.failures.len(), 300);
    assert!(
        run.addresses.len() >= 200,
        "only {} allocated",
        run.addresses.len()
    );
}

/// With a cluster key, keyed hosts form a cluster; a host with another key
/// or none cannot join, and its datagrams are counted as rejected.
#[test]
fn cluster_key_keeps_strangers_out() {
    const HOSTS: usize = 6;
    let mut sim = Sim::new(HOSTS, 0x5eed_0003, Some(b"s3cret\n"));
    // Host 4 has the wrong key, host 5 none.
    sim.nodes[4] = Node::new(
        NodeIdentity {
            id: node_id(4),
            name: name(4),
            explicit_name: true,
            gossip: gossip_addr(4),
            boot: 1,
            renewal: 0,
        },
        NodeConfig::new(underlay_addr(4)),
        Some(ClusterKey::from_secret(b"guess")),
        4,
    );
    sim.nodes[5] = Node::new(
        NodeIdentity {
            id: node_id(5),
            name: name(5),
            explicit_name: true,
            gossip: gossip_addr(5),
            boot: 1,
            renewal: 0,
        },
        NodeConfig::new(underlay_addr(5)),
        None,
        5,
    );
    let (network, record) = overlay_network();
    let now = sim.now;
    sim.nodes[0].publish_network(network.clone(), record.clone());
    sim.nodes[0].handle_timeout(now);
    sim.collect(0);
    sim.join_all();
    // The strangers also try to inject a network.
    let mut injected = record;
    injected.name = "evil".into();
    sim.nodes[5].publish_network(ClusterNetworkId("ee".repeat(32)), injected);
    sim.collect(5);
    sim.run_for(Duration::from_secs(10));
    for index in 0..4 {
        let names: BTreeSet<String> = sim.nodes[index]
            .members()
            .into_iter()
            .filter(|member| member.state == MemberState::Alive)
            .map(|member| member.name)
            .collect();
        let expected: BTreeSet<String> = (0..4).filter(|other| *other != index).map(name).collect();
        assert_eq!(names, expected, "host {index}");
        assert_eq!(sim.nodes[index].directory().networks().count(), 1);
        assert!(sim.nodes[index]
            .directory()
            .network_by_name("evil")
            .is_none());
    }
    assert!(
        sim.nodes[0].counters().gossip_rejected > 0,
        "stranger datagrams are counted"
    );
    assert!(sim.nodes[4]
        .members()
        .iter()
        .all(|member| member.state != MemberState::Alive));
    assert!(sim.nodes[5]
        .members()
        .iter()
        .all(|member| member.state != MemberState::Alive));
    assert!(sim.nodes[0].is_member_address(underlay_addr(3).ip()));
    assert!(!sim.nodes[0].is_member_address(underlay_addr(5).ip()));
}

/// Both sides of a partition lease the only block of a /28 and hand out
/// addresses from it. After the partition heals, the host with the lower
/// identity keeps the block: every directory shows one holder, the other
/// host lists the addresses both handed out as duplicates, and no address
/// handed out after the heal is one an endpoint anywhere holds.
#[test]
fn a_healed_partition_leaves_one_holder_and_no_new_duplicates() {
    const HOSTS: usize = 4;
    let (network, mut record) = overlay_network();
    record.subnet = "10.40.0.0/28".parse().unwrap();
    record.gateway = Some("10.40.0.1".parse().unwrap());
    let mut sim = converged_with_network(HOSTS, seed(0x5eed_0006), &network, record);

    for index in 0..HOSTS {
        sim.group[index] = u8::from(index >= HOSTS / 2);
    }
    sim.run_until(Duration::from_secs(30), halves_see_each_other_dead)
        .expect("each half drops the other");

    // Host 0 and host 2 (one per side) each hand out 3 addresses and
    // publish an endpoint with each.
    let mut next_mac = 0u8;
    let mut allocate_and_publish = |sim: &mut Sim, index: usize, count: usize| -> Vec<IpAddr> {
        let mut addresses = Vec::new();
        for _ in 0..count {
            let now = sim.now;
            let ip = match sim.nodes[index].allocate(&network, now).unwrap() {
                Allocation::Ready(ip) => ip,
                Allocation::Pending(ticket) => {
                    sim.collect(index);
                    let mut got = None;
                    for _ in 0..100 {
                        sim.run_for(Duration::from_millis(50));
                        for event in std::mem::take(&mut sim.events[index]) {
                            match event {
                                Event::AddressAllocated { ticket: t, ip, .. } if t == ticket => {
                                    got = Some(ip)
                                }
                                Event::AllocationFailed { ticket: t, error } if t == ticket => {
                                    panic!("host {index}: allocation failed: {error:?}")
                                }
                                _ => {}
                            }
                        }
                        if got.is_some() {
                            break;
                        }
                    }
                    got.expect("allocated within 5 s")
                }
            };
            next_mac += 1;
            sim.nodes[index]
                .publish_endpoint(EndpointRecord {
                    network: network.clone(),
                    mac: MacAddr([2, 0x42, 0, 0, index as u8, next_mac]),
                    ips: vec![ip],
                    name: None,
                    aliases: Vec::new(),
                })
                .unwrap();
            sim.collect(index);
            addresses.push(ip);
        }
        addresses
    };
    let side_a = allocate_and_publish(&mut sim, 0, 3);
    // More on side B: addresses only its endpoints hold, which the
    // winner must skip after the heal.
    let side_b = allocate_and_publish(&mut sim, 2, 5);
    let both: BTreeSet<IpAddr> = side_a
        .iter()
        .filter(|ip| side_b.contains(ip))
        .copied()
        .collect();
    assert!(
        !both.is_empty(),
        "the halves should have handed out the same addresses: {side_a:?} {side_b:?}"
    );
    assert_eq!(sim.nodes[0].leased_blocks(&network), vec![0]);
    assert_eq!(sim.nodes[2].leased_blocks(&network), vec![0]);

    // Heal, and give anti-entropy a few rounds.
    sim.group.iter_mut().for_each(|group| *group = 0);
    sim.run_until(Duration::from_secs(60), Sim::membership_converged)
        .expect("membership reconverges after the heal");
    let settled = sim
        .run_until(Duration::from_secs(30), |sim| {
            (0..HOSTS).all(|index| {
                let leases = sim.nodes[index].directory().leases(&network);
                leases.len() == 1 && leases[0].0.id == node_id(0)
            })
        })
        .expect("every directory shows one holder of the block: host 0");
    println!("partition of a /28: one holder everywhere {settled:?} after membership healed");
    assert_eq!(sim.nodes[0].leased_blocks(&network), vec![0]);
    assert!(sim.nodes[2].leased_blocks(&network).is_empty());
    let reported: Vec<Vec<IpAddr>> = sim.events[2]
        .iter()
        .filter_map(|event| match event {
            Event::LeaseConflict {
                block: 0,
                winner,
                duplicates,
                ..
            } if winner.id == node_id(0) => Some(duplicates.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(reported.len(), 1, "one conflict event on host 2");
    let reported: BTreeSet<IpAddr> = reported[0].iter().copied().collect();
    assert_eq!(
        reported, both,
        "the duplicates listed are the shared addresses"
    );

    // The winner hands out the rest of the block, skipping every address
    // an endpoint of either side holds; the loser has no block left.
    let held: BTreeSet<IpAddr> = side_a.iter().chain(&side_b).copied().collect();
    let now = sim.now;
    let mut after = Vec::new();
    for _ in 0..16 {
        match sim.nodes[0].allocate(&network, now).unwrap() {
            Allocation::Ready(ip) => after.push(ip),
            Allocation::Pending(_) => break,
        }
    }
    assert!(!after.is_empty(), "host 0 still has free addresses");
    for ip in &after {
        assert!(!held.contains(ip), "{ip} handed out again after the heal");
    }
    let gateway: IpAddr = "10.40.0.1".parse().unwrap();
    assert!(!after.contains(&gateway));
}

/// Node `index` rebuilt with this identity (a restart, or another host).
fn restart(sim: &mut Sim, index: usize, id: NodeId, name: &str, explicit: bool, boot: u64) {
    let identity = NodeIdentity {
        id,
        name: name.to_owned(),
        explicit_name: explicit,
        gossip: gossip_addr(index),
        boot,
        renewal: 0,
    };
    sim.nodes[index] = Node::new(
        identity,
        NodeConfig::new(underlay_addr(index)),
        None,
        boot.wrapping_mul(31).wrapping_add(index as u64),
    );
    sim.dead[index] = false;
    sim.events[index].clear();
}

/// One address of `network` for node `index`, waiting (bounded) for a
/// block lease; the error if the allocation fails.
fn allocate_one(
    sim: &mut Sim,
    index: usize,
    network: &ClusterNetworkId,
) -> Result<IpAddr, AllocateError> {
    let now = sim.now;
    let ticket = match sim.nodes[index].allocate(network, now)? {
        Allocation::Ready(ip) => return Ok(ip),
        Allocation::Pending(ticket) => ticket,
    };
    sim.collect(index);
    for _ in 0..400 {
        sim.run_for(Duration::from_millis(50));
        for event in std::mem::take(&mut sim.events[index]) {
            match event {
                Event::AddressAllocated { ticket: t, ip, .. } if t == ticket => return Ok(ip),
                Event::AllocationFailed { ticket: t, error } if t == ticket => return Err(error),
                _ => {}
            }
        }
    }
    panic!("allocation on node {index} still pending after 20 s");
}

/// Hosts 0 and 1 share the name "lab" (their hostname: not explicit) and
/// still form one cluster: each sees the other alive, a network published
/// on one and an endpoint published on the other reach both, and each
/// reports the shared name. Host 2 joins later with "lab" given
/// explicitly: it is refused (it reports `NameRefused` and leaves), the
/// members report `NameClash` with its address, and it is no live member.
#[test]
fn one_name_two_hosts_and_an_explicit_clash_refused() {
    let mut sim = Sim::new(3, seed(0x1d_0001), None);
    restart(&mut sim, 0, NodeId(0xa0), "lab", false, 1);
    restart(&mut sim, 1, NodeId(0xb0), "lab", false, 1);
    restart(&mut sim, 2, NodeId(0xc0), "lab", true, 2);
    let (network, record) = overlay_network();
    let now = sim.now;
    sim.nodes[1].publish_network(network.clone(), record);
    sim.nodes[1].handle_timeout(now);
    sim.collect(1);
    let now = sim.now;
    sim.nodes[1].join(gossip_addr(0), now);
    sim.collect(1);
    sim.run_until(Duration::from_secs(10), |sim| {
        sim.nodes[0].directory().network(&network).is_some()
    })
    .expect("the network of one 'lab' reaches the other");
    sim.nodes[0]
        .publish_endpoint(endpoint_of(0, &network))
        .expect("publish");
    sim.collect(0);
    sim.run_until(Duration::from_secs(10), |sim| {
        sim.nodes[1].directory().endpoints().count() == 1
    })
    .expect("the endpoint of one 'lab' reaches the other");
    for index in [0, 1] {
        let alive: Vec<NodeId> = sim.nodes[index]
            .members()
            .into_iter()
            .filter(|m| m.state == MemberState::Alive)
            .map(|m| m.id)
            .collect();
        assert_eq!(alive, vec![NodeId(if index == 0 { 0xb0 } else { 0xa0 })]);
        assert!(
            sim.events[index]
                .iter()
                .any(|e| matches!(e, Event::NameShared { name, .. } if name == "lab")),
            "host {index} reports the shared name: {:?}",
            sim.events[index]
        );
    }

    let now = sim.now;
    sim.nodes[2].join(gossip_addr(0), now);
    sim.collect(2);
    sim.run_for(Duration::from_secs(10));
    assert!(
        sim.events[2]
            .iter()
            .any(|e| matches!(e, Event::NameRefused { name, .. } if name == "lab")),
        "the newcomer is refused: {:?}",
        sim.events[2]
    );
    assert_eq!(sim.nodes[2].poll_timeout(), None, "it stopped");
    for index in [0, 1] {
        assert!(
            sim.events[index].iter().any(|e| matches!(
                e,
                Event::NameClash { id, addr, .. } if *id == NodeId(0xc0) && *addr == gossip_addr(2)
            )),
            "host {index} reports the newcomer: {:?}",
            sim.events[index]
        );
        assert!(
            sim.nodes[index]
                .members()
                .iter()
                .all(|m| m.id != NodeId(0xc0) || m.state != MemberState::Alive),
            "the newcomer is no live member of host {index}"
        );
        assert!(sim.nodes[index]
            .directory()
            .live_peers()
            .all(|owner| owner.id != NodeId(0xc0)));
    }
}

/// A host declared dead keeps its address block for `LEASE_GRACE`: the
/// others, short of blocks, are refused it. Restarted with its node id
/// (a new boot, a fresh allocator) it is sent the block and takes it back.
/// Dead again and replaced by a host with a new id at its address (state
/// directory wiped), the newcomer does not get the block; once the grace
/// ends the block is free and can be leased.
#[test]
fn a_dead_hosts_blocks_are_held_returned_and_freed_after_the_grace() {
    let (network, mut record) = overlay_network();
    // Two blocks: .2-.15 and .16-.30.
    record.subnet = "10.20.0.0/27".parse().unwrap();
    let mut sim = converged_with_network(2, seed(0x1d_0002), &network, record);
    let first = allocate_one(&mut sim, 1, &network).expect("host 1 leases a block");
    let held_block = sim.nodes[1].leased_blocks(&network);
    assert_eq!(held_block.len(), 1);
    let held_block = held_block[0];
    allocate_one(&mut sim, 0, &network).expect("host 0 leases the other");
    sim.run_for(Duration::from_secs(2));

    sim.dead[1] = true;
    sim.run_until(Duration::from_secs(10), |sim| {
        sim.nodes[0]
            .members()
            .iter()
            .any(|m| m.id == node_id(1) && m.state == MemberState::Dead)
    })
    .expect("host 1 declared dead");
    let held = sim.nodes[0].directory().held_leases(&network);
    assert_eq!(held.len(), 1);
    assert_eq!((held[0].0, held[0].1.holder), (held_block, node_id(1)));
    // Host 0 uses up its own block, then is refused host 1's.
    let mut error = None;
    for _ in 0..20 {
        match allocate_one(&mut sim, 0, &network) {
            Ok(ip) => assert_ne!(ip, first, "host 1's address handed out"),
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    assert!(
        matches!(error, Some(AllocateError::Exhausted(_))),
        "{error:?}"
    );
    assert!(!sim.nodes[0].leased_blocks(&network).contains(&held_block));

    // Back with its node id and a fresh allocator: the block comes back.
    restart(&mut sim, 1, node_id(1), &name(1), true, 2);
    let now = sim.now;
    sim.nodes[1].join(gossip_addr(0), now);
    sim.collect(1);
    sim.run_until(Duration::from_secs(10), |sim| {
        sim.nodes[1].leased_blocks(&network) == vec![held_block]
    })
    .expect("the restarted host takes its block back");
    assert!(sim.events[1]
        .iter()
        .any(|e| matches!(e, Event::LeasesReturned { blocks: 1 })));
    let again = allocate_one(&mut sim, 1, &network).expect("from its block");
    assert_eq!(u32::from(octets(again)) / 16, u32::from(octets(first)) / 16);

    // Dead again; a stranger (new node id) takes its address.
    sim.dead[1] = true;
    sim.run_until(Duration::from_secs(10), |sim| {
        sim.nodes[0].directory().held_leases(&network).len() == 1
    })
    .expect("held again");
    restart(&mut sim, 1, NodeId(0x5_0000), "stranger", true, 3);
    let now = sim.now;
    sim.nodes[1].join(gossip_addr(0), now);
    sim.collect(1);
    sim.run_for(Duration::from_secs(5));
    assert!(
        matches!(
            allocate_one(&mut sim, 1, &network),
            Err(AllocateError::Exhausted(_))
        ),
        "the stranger must not get the held block"
    );
    // The grace ends: the block is free for anyone.
    sim.run_for(weft_overlay::directory::LEASE_GRACE);
    assert!(sim.nodes[0].directory().held_leases(&network).is_empty());
    assert!(sim.events[0].iter().any(
        |e| matches!(e, Event::HeldLeasesExpired { holder, blocks: 1 } if *holder == node_id(1))
    ));
    allocate_one(&mut sim, 1, &network).expect("the block is free after the grace");
    assert_eq!(sim.nodes[1].leased_blocks(&network), vec![held_block]);
}

/// The last octet of an IPv4 address.
fn octets(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(v4) => v4.octets()[3],
        IpAddr::V6(_) => 0,
    }
}

/// A host whose address changes (`--listen 0.0.0.0`, a laptop on another
/// network) moves: the others see it alive at its new gossip address with
/// its new underlay in the host record, and its endpoint never leaves
/// their directories. Its old address is then unreachable.
#[test]
fn a_host_that_moves_keeps_its_records_and_is_found_at_its_new_address() {
    let mut sim = Sim::new(3, seed(0x5eed_0707), None);
    let (network, record) = overlay_network();
    let now = sim.now;
    sim.nodes[0].publish_network(network.clone(), record);
    sim.nodes[0].handle_timeout(now);
    sim.collect(0);
    sim.join_all();
    sim.run_until(Duration::from_secs(30), |sim| {
        sim.membership_converged() && sim.directories_converged(0)
    })
    .expect("converges");
    sim.nodes[2]
        .publish_endpoint(endpoint_of(2, &network))
        .unwrap();
    sim.collect(2);
    sim.run_until(Duration::from_secs(10), |sim| {
        (0..2).all(|i| sim.nodes[i].directory().endpoints().count() == 1)
    })
    .expect("the endpoint reaches the others");

    let new_gossip = SocketAddr::from(([10, 98, 0, 2], 7946));
    let new_underlay = SocketAddr::new(new_gossip.ip(), 4789);
    sim.by_addr.remove(&gossip_addr(2));
    sim.by_addr.insert(new_gossip, 2);
    sim.moved.insert(2, new_gossip);
    let now = sim.now;
    sim.nodes[2].move_to(new_gossip, new_underlay, now);
    sim.collect(2);
    let mut endpoint_always_there = true;
    let took = sim.run_until(Duration::from_secs(20), |sim| {
        endpoint_always_there &= (0..2).all(|i| sim.nodes[i].directory().endpoints().count() == 1);
        (0..2).all(|i| {
            let alive_at_new = sim.nodes[i].members().iter().any(|m| {
                m.name == name(2) && m.addr == new_gossip && m.state == MemberState::Alive
            });
            let host_moved = sim.nodes[i]
                .directory()
                .hosts()
                .into_iter()
                .any(|(owner, addr)| name_of(owner) == name(2) && addr == new_underlay);
            alive_at_new && host_moved
        })
    });
    let took = took.expect("the others find the moved host");
    println!("a moved host is found at its new address after {took:?}");
    assert!(took <= Duration::from_secs(5), "{took:?}");
    // A while later nothing was lost, nobody holds the old address alive.
    sim.run_for(Duration::from_secs(10));
    assert!(
        endpoint_always_there,
        "the moved host's endpoint left a directory"
    );
    for i in 0..2 {
        assert_eq!(sim.nodes[i].directory().endpoints().count(), 1);
        let stale = sim.nodes[i]
            .members()
            .into_iter()
            .any(|m| m.addr == gossip_addr(2) && m.state == MemberState::Alive);
        assert!(!stale, "node {i} still has the old address alive");
    }
}
