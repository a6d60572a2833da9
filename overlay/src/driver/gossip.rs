//! The gossip runtime: the I/O driver of [`Node`] (membership,
//! the replicated directory and the cluster address allocator).
//!
//! # Theory of operation
//!
//! [`Cluster::start`] binds the gossip UDP socket (`--listen`), makes the
//! sans-IO [`Node`] and spawns one tokio task that drives it:
//!
//! ```text
//! gossip datagram ──> Node::handle_datagram ─┐
//! poll_timeout() due ─> Node::handle_timeout ├─> poll_transmit ─> send_to
//! controller call (publish, allocate) ──wake─┘    poll_event ──> allocation waiters
//!                                                              └─> `changes` (watch)
//! ```
//!
//! The node sits behind a `std::sync::Mutex` that is never held across an
//! `.await`: the task takes it for one `handle_*` call and the drain that
//! follows; the controller takes it for one publish, withdraw, allocate or
//! query. After a controller call the task is woken (a `Notify` permit), so
//! what the call queued (pushes to members, claims) leaves at once.
//!
//! Every membership or directory event bumps a counter in a `watch`
//! channel; the controller follows it (`weft_cnm::Controller::follow_cluster`)
//! and re-derives everything that depends on the directory: cluster
//! networks created or deleted elsewhere, each overlay network's tunnel
//! table and DNS zone, and the tunnel's accepted sources. A watch channel
//! coalesces bursts: many events during one sync cause one more sync, not
//! one each.
//!
//! Addresses: [`Cluster::allocate`] returns at once when this host leases a
//! block with a free address; otherwise the node claims a block from every
//! member and the call waits for the `AddressAllocated` event of its ticket
//! (bounded by the caller's timeout; the allocator's own worst case is
//! `MAX_ATTEMPTS * CLAIM_TIMEOUT`, 16 s).
//!
//! # Identity
//!
//! The node is keyed on the node id the daemon keeps in its state directory
//! ([`super::node_id`]); `--node-name` is its display name. When the node
//! reports that this host joined with an explicit name another live member
//! already has (`Event::NameRefused`), the node has left the cluster and
//! [`Cluster::refused`] resolves with a one-line reason: the daemon exits
//! with it. A member refused the other way round, or sharing a hostname, is
//! logged (error, warning).
//!
//! # Timers
//!
//! The task sleeps until the node's `poll_timeout()`, at most
//! [`MAX_SLEEP`], so a clock that the node did not arm still ticks.
//!
//! # Limits
//!
//! One gossip datagram is at most [`MAX_DATAGRAM`] bytes read (the node
//! keeps its own below 1400). Send errors (an unreachable member) are
//! logged at debug level and otherwise left to SWIM, which will suspect
//! the member.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use crate::{
    AllocateError, Allocation, AllocationTicket, ClusterKey, ClusterNetworkId, EndpointRecord,
    Event, MacAddr, MemberState, NetworkRecord, Node, NodeConfig, NodeId, NodeIdentity,
    PublishError, Vni,
};
use serde::Serialize;
use tokio::net::UdpSocket;
use tokio::sync::{oneshot, watch, Notify};

/// Longest sleep of the runtime between two `handle_timeout` calls.
const MAX_SLEEP: Duration = Duration::from_secs(1);

/// Largest gossip datagram read (a UDP datagram's maximum).
const MAX_DATAGRAM: usize = 65_536;

/// How the daemon joins the cluster (`weft daemon --listen ...`).
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The gossip socket's address (`--listen IP:PORT`); its IP is also the
    /// underlay address of the VXLAN socket.
    pub listen: SocketAddr,
    /// Members to ask for admission (`--join`, any member will do).
    pub join: Vec<SocketAddr>,
    /// This host's id in the cluster, from the state directory.
    pub node_id: NodeId,
    /// This host's display name (`--node-name`, or the hostname).
    pub node_name: String,
    /// The name was given with `--node-name`: another member with it is a
    /// clash, refused at join.
    pub explicit_name: bool,
    /// The shared secret (`--cluster-key FILE`, trimmed); None: gossip is
    /// neither encrypted nor authenticated.
    pub secret: Option<Vec<u8>>,
    /// The VXLAN UDP port (`--vxlan-port`), the same on every host.
    pub vxlan_port: u16,
    /// The encrypted transport (QUIC) and what it is for.
    pub quic: QuicSettings,
}

/// The QUIC transport's settings (`weft daemon --transport quic
/// --quic-port PORT`). The transport runs whenever the cluster has a key
/// (it authenticates with it); these say its port and whether overlay
/// networks made on this host are encrypted when `-o encrypted` is not
/// given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuicSettings {
    /// Its UDP port, the same on every host.
    pub port: u16,
    /// `--transport quic`: networks made here are encrypted by default.
    pub encrypt_by_default: bool,
    /// `--quic-congestion cubic`: quinn's CUBIC in the tunnels instead of
    /// none (for measuring the difference).
    pub cubic: bool,
}

/// The QUIC transport's default port.
pub const DEFAULT_QUIC_PORT: u16 = 7947;

/// Why the cluster runtime could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The gossip socket could not be bound.
    #[error("binding the gossip socket {addr} (--listen)")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `--listen 0.0.0.0:PORT` without `--join`.
    #[error("--listen on every address needs --join: this host's own address is the one its route to the cluster leaves from")]
    RoamingNeedsJoin,
    /// No route toward the first `--join` member.
    #[error("finding this host's address: no route to {to} (--join)")]
    NoRoute {
        /// The member.
        to: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The operating system's random number generator failed.
    #[error("reading the OS's randomness for the gossip node's seed: {0}")]
    Random(getrandom::Error),
}

/// Why a cluster address could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ClusterAllocError {
    /// The allocator refused or gave up.
    #[error(transparent)]
    Allocate(#[from] AllocateError),
    /// No answer within the caller's bound.
    #[error("no address block could be leased within {0:?}: are the other members reachable? (weft peers)")]
    Timeout(Duration),
    /// The runtime stopped while the request waited.
    #[error("the cluster runtime stopped")]
    Stopped,
}

/// One member as `weft peers` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerInfo {
    /// Its node id (32 hex digits).
    pub id: String,
    /// Its `--node-name` (or hostname): several members may share one.
    pub name: String,
    /// Its gossip address.
    pub address: SocketAddr,
    /// Where its VXLAN goes (once its host record arrived).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub underlay: Option<SocketAddr>,
    /// `alive`, `suspect` or `dead`.
    pub state: &'static str,
}

/// Gossip drop counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct GossipCounters {
    /// Datagrams that failed authentication (wrong or missing cluster key)
    /// or had the wrong format.
    pub rejected: u64,
    /// Datagrams that opened but did not decode.
    pub malformed: u64,
    /// SWIM errors on received data.
    pub swim_errors: u64,
}

/// An endpoint on another host, as the data path and DNS need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterEndpoint {
    /// Its MAC.
    pub mac: MacAddr,
    /// Its addresses.
    pub ips: Vec<IpAddr>,
    /// Its DNS name.
    pub name: Option<String>,
    /// Its DNS aliases.
    pub aliases: Vec<String>,
    /// Its host's VXLAN address, once known.
    pub vtep: Option<SocketAddr>,
}

/// See the module header.
pub struct Cluster {
    state: Mutex<ClusterState>,
    wake: Notify,
    changes: watch::Sender<u64>,
    /// Set once this host was refused at join (a one-line reason).
    refusal: watch::Sender<Option<String>>,
    id: NodeId,
    name: String,
    /// `--listen 0.0.0.0:PORT`: the address is found, and followed.
    roaming: bool,
    vxlan_port: u16,
    quic: QuicSettings,
}

struct ClusterState {
    node: Node,
    /// Allocations waiting for a block lease, by ticket.
    waiting: HashMap<AllocationTicket, oneshot::Sender<Result<IpAddr, AllocateError>>>,
}

impl Cluster {
    /// Bind the gossip socket, start the node, ask the `join` members in,
    /// and spawn the runtime task (on the current tokio runtime).
    ///
    /// # Errors
    ///
    /// [`ClusterError::Bind`] when `--listen` cannot be bound.
    pub async fn start(config: ClusterConfig) -> Result<Arc<Cluster>, ClusterError> {
        // `--listen 0.0.0.0:PORT`: this host's address is the one its
        // route to the cluster leaves from, followed as it changes.
        let roaming = config.listen.ip().is_unspecified();
        let advertised = if roaming {
            let toward = config
                .join
                .first()
                .copied()
                .ok_or(ClusterError::RoamingNeedsJoin)?;
            let ip = route_source(toward)
                .map_err(|source| ClusterError::NoRoute { to: toward, source })?;
            SocketAddr::new(ip, config.listen.port())
        } else {
            config.listen
        };
        let socket = bind_udp_patiently(config.listen)
            .and_then(|socket| {
                socket.set_nonblocking(true)?;
                UdpSocket::from_std(socket)
            })
            .map_err(|source| ClusterError::Bind {
                addr: config.listen,
                source,
            })?;
        // Larger on every start: the start time in milliseconds.
        let boot = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let identity = NodeIdentity {
            id: config.node_id,
            name: config.node_name.clone(),
            explicit_name: config.explicit_name,
            gossip: advertised,
            boot,
            renewal: 0,
        };
        let underlay = SocketAddr::new(advertised.ip(), config.vxlan_port);
        let key = config.secret.as_deref().map(ClusterKey::from_secret);
        // The seed also seeds AEAD nonces: from the OS's randomness.
        let seed = getrandom::u64().map_err(ClusterError::Random)?;
        let mut node = Node::new(identity, NodeConfig::new(underlay), key, seed);
        let now = Instant::now();
        for seed_addr in &config.join {
            node.join(*seed_addr, now);
        }
        let (changes, _) = watch::channel(0);
        let (refusal, _) = watch::channel(None);
        let cluster = Arc::new(Cluster {
            state: Mutex::new(ClusterState {
                node,
                waiting: HashMap::new(),
            }),
            wake: Notify::new(),
            changes,
            refusal,
            id: config.node_id,
            name: config.node_name,
            roaming,
            vxlan_port: config.vxlan_port,
            quic: config.quic,
        });
        tracing::info!(name = cluster.name, id = %cluster.id, listen = %advertised, join = ?config.join, vxlan = %underlay, authenticated = config.secret.is_some(), "overlay gossip started");
        tokio::spawn(drive(Arc::clone(&cluster), socket));
        Ok(cluster)
    }

    /// Follow membership and directory changes (a counter that grows).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// This host's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// This host's node id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Resolves when this host was refused at join (its `--node-name` is
    /// another live member's), with a one-line reason; never otherwise.
    pub async fn refused(&self) -> String {
        let mut refusal = self.refusal.subscribe();
        loop {
            if let Some(reason) = refusal.borrow_and_update().clone() {
                return reason;
            }
            if refusal.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// The gossip address: `--listen`'s, or, listening on every address,
    /// the one this host is reached at now.
    pub fn listen(&self) -> SocketAddr {
        self.lock().node.identity().gossip
    }

    /// This host's underlay address (where tunnels reach it) now.
    pub fn underlay_ip(&self) -> IpAddr {
        self.listen().ip()
    }

    /// With `--listen 0.0.0.0:PORT`: whether the route to the cluster
    /// leaves from another address than before; if so, the node moves
    /// there (see [`Node::move_to`]).
    fn follow_address(&self, now: Instant) {
        if !self.roaming {
            return;
        }
        let (current, toward) = {
            let state = self.lock();
            let current = state.node.identity().gossip;
            let toward = state
                .node
                .members()
                .into_iter()
                .find(|m| m.state == MemberState::Alive)
                .map(|m| m.addr)
                .or_else(|| state.node.seeds().first().copied());
            (current, toward)
        };
        let Some(toward) = toward else {
            return;
        };
        let Ok(ip) = route_source(toward) else {
            return;
        };
        if ip == current.ip() {
            return;
        }
        let gossip = SocketAddr::new(ip, current.port());
        let underlay = SocketAddr::new(ip, self.vxlan_port);
        tracing::info!(from = %current.ip(), to = %ip, "this host's address changed: telling the cluster");
        self.lock().node.move_to(gossip, underlay, now);
        self.changes.send_modify(|n| *n += 1);
    }

    /// The VXLAN port (every host's).
    pub fn vxlan_port(&self) -> u16 {
        self.vxlan_port
    }

    /// The QUIC transport's settings.
    pub fn quic(&self) -> QuicSettings {
        self.quic
    }

    fn lock(&self) -> MutexGuard<'_, ClusterState> {
        // The node is only mutated through its own methods, each of which
        // leaves it consistent, so a panic elsewhere does not poison it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every member but this host, with its state.
    pub fn members(&self) -> Vec<PeerInfo> {
        let state = self.lock();
        let hosts: HashMap<NodeId, SocketAddr> = state
            .node
            .directory()
            .hosts()
            .into_iter()
            .map(|(owner, addr)| (owner.id, addr))
            .collect();
        let mut members: Vec<PeerInfo> = state
            .node
            .members()
            .into_iter()
            .map(|m| PeerInfo {
                underlay: hosts.get(&m.id).copied(),
                id: m.id.to_string(),
                name: m.name,
                address: m.addr,
                state: match m.state {
                    MemberState::Alive => "alive",
                    MemberState::Suspect => "suspect",
                    MemberState::Dead => "dead",
                },
            })
            .collect();
        members.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
        members
    }

    /// Gossip drop counters.
    pub fn counters(&self) -> GossipCounters {
        let counters = self.lock().node.counters();
        GossipCounters {
            rejected: counters.gossip_rejected,
            malformed: counters.gossip_malformed,
            swim_errors: counters.swim_errors,
        }
    }

    /// The live cluster networks of the directory.
    pub fn networks(&self) -> Vec<(ClusterNetworkId, NetworkRecord)> {
        self.lock()
            .node
            .directory()
            .networks()
            .map(|(id, record)| (id.clone(), record.clone()))
            .collect()
    }

    /// The live cluster network named `name`, if any.
    pub fn network_by_name(&self, name: &str) -> Option<(ClusterNetworkId, NetworkRecord)> {
        self.lock()
            .node
            .directory()
            .network_by_name(name)
            .map(|(id, record)| (id.clone(), record.clone()))
    }

    /// The live network that uses `vni`, if any.
    pub fn network_by_vni(&self, vni: Vni) -> Option<(ClusterNetworkId, NetworkRecord)> {
        self.lock()
            .node
            .directory()
            .network_by_vni(vni)
            .map(|(id, record)| (id.clone(), record.clone()))
    }

    /// Endpoints of `network` on other hosts.
    pub fn remote_endpoints(&self, network: &ClusterNetworkId) -> Vec<ClusterEndpoint> {
        let state = self.lock();
        let directory = state.node.directory();
        let me = directory.me();
        directory
            .endpoints()
            .filter(|l| l.owner != me && l.endpoint.network == *network)
            .map(|l| ClusterEndpoint {
                mac: l.endpoint.mac,
                ips: l.endpoint.ips.clone(),
                name: l.endpoint.name.clone(),
                aliases: l.endpoint.aliases.clone(),
                vtep: l.underlay,
            })
            .collect()
    }

    /// Endpoints of `network` on every host, this one included.
    pub fn endpoint_count(&self, network: &ClusterNetworkId) -> usize {
        self.lock()
            .node
            .directory()
            .endpoints()
            .filter(|l| l.endpoint.network == *network)
            .count()
    }

    /// VXLAN addresses of the other hosts with an endpoint on `network`.
    pub fn hosts_with_network(&self, network: &ClusterNetworkId) -> Vec<SocketAddr> {
        self.lock().node.directory().hosts_with_network(network)
    }

    /// Underlay IPs of the other live members (VXLAN is accepted from them).
    pub fn member_ips(&self) -> Vec<IpAddr> {
        let state = self.lock();
        let directory = state.node.directory();
        let me = directory.me();
        directory
            .hosts()
            .into_iter()
            .filter(|(owner, _)| *owner != me)
            .map(|(_, addr)| addr.ip())
            .collect()
    }

    /// Create or update a cluster network on every host.
    pub fn publish_network(&self, id: ClusterNetworkId, record: NetworkRecord) {
        self.lock().node.publish_network(id, record);
        self.wake.notify_one();
    }

    /// Delete a cluster network on every host.
    pub fn delete_network(&self, id: ClusterNetworkId) {
        self.lock().node.delete_network(id);
        self.wake.notify_one();
    }

    /// Announce a local endpoint to every host.
    ///
    /// # Errors
    ///
    /// [`PublishError`] when the record is too large or the network is not
    /// in the directory.
    pub fn publish_endpoint(&self, endpoint: EndpointRecord) -> Result<(), PublishError> {
        let result = self.lock().node.publish_endpoint(endpoint);
        self.wake.notify_one();
        result
    }

    /// Withdraw a local endpoint from every host.
    pub fn withdraw_endpoint(&self, network: &ClusterNetworkId, mac: MacAddr) {
        self.lock().node.withdraw_endpoint(network, mac);
        self.wake.notify_one();
    }

    /// An address of `network` that no other host hands out; waits at most
    /// `bound` for a block lease.
    ///
    /// # Errors
    ///
    /// [`ClusterAllocError`]: unknown network, subnet exhausted, contention
    /// or no answer in time.
    pub async fn allocate(
        &self,
        network: &ClusterNetworkId,
        bound: Duration,
    ) -> Result<IpAddr, ClusterAllocError> {
        let (ticket, answer) = {
            let mut state = self.lock();
            let allocated = state.node.allocate(network, Instant::now());
            self.wake.notify_one();
            match allocated? {
                Allocation::Ready(ip) => return Ok(ip),
                Allocation::Pending(ticket) => {
                    let (tx, rx) = oneshot::channel();
                    state.waiting.insert(ticket, tx);
                    (ticket, rx)
                }
            }
        };
        match tokio::time::timeout(bound, answer).await {
            Ok(Ok(result)) => result.map_err(ClusterAllocError::from),
            Ok(Err(_)) => Err(ClusterAllocError::Stopped),
            Err(_) => {
                self.lock().waiting.remove(&ticket);
                Err(ClusterAllocError::Timeout(bound))
            }
        }
    }

    /// Return an address to this host's pool.
    pub fn release(&self, network: &ClusterNetworkId, ip: IpAddr) {
        self.lock().node.release(network, ip);
    }

    /// Drain what the node queued: datagrams to send, and events (answers
    /// to allocation waiters, change notifications).
    fn drain(&self) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut state = self.lock();
        let mut transmits = Vec::new();
        while let Some(transmit) = state.node.poll_transmit() {
            transmits.push(transmit);
        }
        let mut changed = false;
        while let Some(event) = state.node.poll_event() {
            match event {
                Event::AddressAllocated {
                    ticket,
                    network,
                    ip,
                } => match state.waiting.remove(&ticket) {
                    Some(waiter) => {
                        if let Err(Ok(ip)) = waiter.send(Ok(ip)) {
                            state.node.release(&network, ip);
                        }
                    }
                    // The waiter gave up: the address goes back.
                    None => state.node.release(&network, ip),
                },
                Event::AllocationFailed { ticket, error } => {
                    if let Some(waiter) = state.waiting.remove(&ticket) {
                        let _ = waiter.send(Err(error));
                    }
                }
                Event::LeaseConflict {
                    network,
                    block,
                    winner,
                    duplicates,
                } => {
                    if duplicates.is_empty() {
                        tracing::warn!(network = network.0, block, winner = %winner.id, "after a partition another host also leased one of this host's address blocks: this host gave it up; its endpoints keep their addresses");
                    } else {
                        tracing::warn!(network = network.0, block, winner = %winner.id, ?duplicates, "after a partition another host also leased one of this host's address blocks and handed out the same addresses: reconnect this host's endpoints with these addresses");
                    }
                }
                Event::MemberUp { id, name, addr } => {
                    tracing::info!(name, %id, %addr, "cluster member up");
                    changed = true;
                }
                Event::MemberDown { id, name, addr } => {
                    tracing::info!(name, %id, %addr, "cluster member down; its address blocks are held for it");
                    changed = true;
                }
                Event::NameShared { name, id, addr } => {
                    tracing::warn!(name, other = %id, %addr, "another cluster member has this host's name (its hostname): both work, told apart by node id in `weft peers`; give each host its own --node-name");
                }
                Event::NameClash { name, id, addr } => {
                    tracing::error!(name, other = %id, %addr, "a host at {addr} joined with this host's --node-name {name:?}: refused, it leaves the cluster");
                }
                Event::NameRefused { name, addr } => {
                    let reason = format!("--node-name {name:?} is already used by the live cluster member at {addr}: give this host another name");
                    tracing::error!(name, %addr, "{reason}");
                    self.refusal.send_replace(Some(reason));
                }
                Event::HeldLeasesExpired { holder, blocks } => {
                    tracing::info!(%holder, blocks, "address blocks held for a member that did not come back are free");
                    changed = true;
                }
                Event::LeasesReturned { blocks } => {
                    tracing::info!(
                        blocks,
                        "address blocks held for this host while it was away: taken back"
                    );
                    changed = true;
                }
                Event::Rejoined => {
                    tracing::warn!("this host was declared dead by the cluster and rejoined");
                    changed = true;
                }
                Event::DirectoryChanged { .. } => changed = true,
            }
        }
        drop(state);
        if changed {
            self.changes.send_modify(|generation| *generation += 1);
        }
        transmits
    }
}

/// The runtime task: see the module header.
async fn drive(cluster: Arc<Cluster>, socket: UdpSocket) {
    let mut buffer = vec![0u8; MAX_DATAGRAM];
    loop {
        for (to, datagram) in cluster.drain() {
            if let Err(error) = socket.send_to(&datagram, to).await {
                tracing::debug!(%to, %error, "gossip send failed");
            }
        }
        let now = Instant::now();
        let deadline = cluster
            .lock()
            .node
            .poll_timeout()
            .map_or(now + MAX_SLEEP, |at| at.min(now + MAX_SLEEP));
        tokio::select! {
            received = socket.recv_from(&mut buffer) => match received {
                Ok((len, from)) => {
                    let datagram = buffer.get(..len).unwrap_or_default();
                    cluster.lock().node.handle_datagram(from, datagram, Instant::now());
                }
                Err(error) => {
                    // ICMP errors of earlier sends surface here; SWIM
                    // deals with unreachable members.
                    tracing::debug!(%error, "gossip receive");
                }
            },
            () = tokio::time::sleep_until(deadline.into()) => {}
            () = cluster.wake.notified() => {}
        }
        let now = Instant::now();
        if now >= deadline {
            cluster.lock().node.handle_timeout(now);
            cluster.follow_address(now);
        }
    }
}

/// The source address of this host's route to `to` (a UDP socket
/// connected there sends nothing, it only asks the routing table).
fn route_source(to: SocketAddr) -> std::io::Result<IpAddr> {
    let any: SocketAddr = if to.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let probe = std::net::UdpSocket::bind(any)?;
    probe.connect(to)?;
    Ok(probe.local_addr()?.ip())
}

/// How long a bind waits for a port still held by a daemon that is exiting.
const BIND_PATIENCE: std::time::Duration = std::time::Duration::from_secs(3);

/// Bind a UDP socket; while the address is in use, retry for
/// [`BIND_PATIENCE`]: a daemon restarted at once (after SIGKILL, say) may
/// find its previous process's sockets not yet closed.
///
/// # Errors
///
/// The bind's error, after the patience for "in use".
pub fn bind_udp_patiently(addr: std::net::SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let deadline = std::time::Instant::now() + BIND_PATIENCE;
    loop {
        match std::net::UdpSocket::bind(addr) {
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            result => return result,
        }
    }
}
