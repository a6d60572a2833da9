//! The data-path thread: one edge-triggered event loop over every TAP,
//! driving the sans-IO [`Switch`].
//!
//! # Theory of operation
//!
//! [`Datapath::spawn`] starts one thread that owns the switch, every port's
//! [`Tap`] and two frame buffers. The control plane talks to it only
//! through [`Datapath`]'s methods, which queue a [`Command`] on a channel
//! and wake the loop with a `mio::Waker`; the loop never blocks on the
//! control plane and takes no lock per frame.
//!
//! On each wake-up the loop:
//! 1. applies queued commands (networks and ports come and go);
//! 2. for every ready port, reads up to [`IO_LOOP_BOUND`] frames; for each
//!    it asks [`Switch::handle_frame`] and writes the frame (header and all,
//!    so GSO segments pass untouched) to one port, floods it to the other
//!    ports of the network, or lets the gateway answer into the second
//!    buffer and writes the reply back to the ingress port;
//! 3. a port that still has frames after the bound goes to the back of the
//!    ready queue, so one busy sandbox cannot starve the others;
//! 4. runs the switch's timer when it is due.
//!
//! A TAP has no batched read or write (one frame per syscall), so a "burst"
//! is a run of reads until `EAGAIN` or the bound within one wake-up, with
//! no allocation, no lock and one `Instant::now()` for the whole run.
//!
//! A port whose device vanished (read error other than `EAGAIN`, such as
//! `EBADFD` when its namespace is torn down) is removed and logged once.
//!
//! The overlay's tunnel is one more kind of port (a remote host of an
//! overlay network). A frame for it is cut into MTU-sized segments
//! straight into the tunnel's send buffer behind their VXLAN headers
//! ([`gso::segment_into`]), and the datagrams of consecutive frames to one
//! peer gather there into one UDP GSO send, flushed whenever the loop
//! flushes its TAP writes. Received datagrams (coalesced by UDP GRO) are
//! opened and merged back into 64 KiB TCP frames for the TAP ([`gro`]),
//! across receives within one turn.
//!
//! Limits: frames up to [`FRAME_BUFFER_LEN`] bytes (a 64 KiB GSO segment
//! plus headers); ports up to `mio::Token` space (u32 port ids).

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use rustc_hash::FxHashMap;
use std::net::SocketAddr;

use crate::counters::{DropReason, PortCounters, PortCountersSnapshot};
use crate::dns::{DnsConfig, Zone};
use crate::gateway::{GatewayConfig, REPLY_HEADROOM};
use crate::gro;
use crate::gso;
use crate::nat::{FlowId, NatAction, NatProto};
use crate::services::Egress;
use crate::switch::{Decision, NetworkId, PortId, Switch};
use crate::sys::publish::{HostListener, PublishId, PublishTarget};
use crate::sys::tap::Tap;
use crate::sys::write_batch::WriteBatch;
use crate::tcp_nat::{ConnectFailure, HostRead, HostWrite, TcpAction, FLOW_ID_BASE};
use crate::tunnel::TunnelCodec;
use crate::wire::ethernet::MacAddr;
use crate::wire::vnet::{self, VnetHeader, VNET_HDR_LEN};

/// Frames read from one port per wake-up before the next port gets its
/// turn: 64 frames of up to 64 KiB keep a turn under ~50 µs of copying,
/// short enough for fairness, long enough that the wake-up cost is spread.
pub const IO_LOOP_BOUND: usize = 64;

pub use crate::sys::write_batch::FRAME_BUFFER_LEN;

/// How long the control plane waits for the data path to hand back a port.
const COMMAND_REPLY_TIMEOUT: Duration = Duration::from_secs(5);

const WAKER_TOKEN: Token = Token(usize::MAX);
const UPSTREAM_V4_TOKEN: Token = Token(usize::MAX - 1);
const UPSTREAM_V6_TOKEN: Token = Token(usize::MAX - 2);
const TUNNEL_TOKEN: Token = Token(usize::MAX - 3);
/// Tunnel ports get ids from here up; TAP ports count up from 1.
const TUNNEL_PORT_BASE: u32 = 0x8000_0000;
/// Sockets the tunnel sends from, each bound to its own port: the outer
/// UDP source port is chosen among them by a hash of the inner flow.
const TUNNEL_SENDERS: usize = 8;
/// NAT flow sockets use tokens from here up (ports use the u32 range); TCP
/// flows among them from `NAT_TOKEN_BASE + tcp_nat::FLOW_ID_BASE`.
const NAT_TOKEN_BASE: usize = 1 << 40;
/// Published ports' sockets use tokens from here up, below the NAT's.
const PUBLISH_TOKEN_BASE: usize = 1 << 39;
/// Connections accepted per published TCP port per wake-up.
const ACCEPT_BOUND: usize = 64;
/// Largest datagram a NAT flow socket reads.
const NAT_DATAGRAM_MAX: usize = 65536;

/// Largest DNS answer over UDP: the DNS flag day 2020 size, which fits any
/// sandbox MTU without IP fragmentation (the gateway does not fragment);
/// larger answers go out truncated and the client retries over TCP.
const DNS_MAX_UDP_PAYLOAD: u16 = 1232;

/// Largest DNS datagram accepted from an upstream (EDNS0 sizes beyond this
/// are not advertised).
const UPSTREAM_DATAGRAM_MAX: usize = 4096;

/// A request from the control plane to the data-path thread.
#[derive(Debug)]
enum Command {
    AddNetwork {
        id: NetworkId,
        gateway: GatewayConfig,
    },
    RemoveNetwork {
        id: NetworkId,
    },
    AddPort {
        id: PortId,
        network: NetworkId,
        tap: Tap,
        counters: Arc<PortCounters>,
    },
    RemovePort {
        id: PortId,
        done: mpsc::Sender<Option<Tap>>,
    },
    SetZone {
        network: NetworkId,
        zone: Zone,
    },
    SetUpstreams(Vec<SocketAddr>),
    Publish {
        id: PublishId,
        listener: HostListener,
        target: PublishTarget,
    },
    Unpublish {
        id: PublishId,
    },
    EnableTunnel {
        socket: std::net::UdpSocket,
        codec: Box<dyn TunnelCodec>,
    },
    SetOverlay {
        network: NetworkId,
        table: OverlayTable,
    },
    SetTunnelPeers(Vec<IpAddr>),
    Shutdown,
}

/// An overlay network's view of the other hosts, from the cluster
/// directory (and static peers).
#[derive(Debug, Clone, Default)]
pub struct OverlayTable {
    /// The network's VNI.
    pub vni: u32,
    /// Endpoints on other hosts: MAC, IPv4 addresses, and the host's tunnel
    /// address (underlay IP and VXLAN port).
    pub endpoints: Vec<RemoteEndpoint>,
    /// Every host that has the network (and static peers): broadcast,
    /// multicast and unknown unicast go to each.
    pub flood: Vec<SocketAddr>,
}

/// One endpoint on another host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteEndpoint {
    /// Its MAC.
    pub mac: MacAddr,
    /// Its IPv4 addresses (answered by proxy ARP).
    pub ipv4: Vec<std::net::Ipv4Addr>,
    /// The tunnel address of its host.
    pub vtep: SocketAddr,
}

/// Counters of the tunnel (all overlay networks).
#[derive(Debug, Default)]
pub struct TunnelCounters {
    /// Datagrams received and switched.
    pub rx: AtomicU64,
    /// Datagrams sent.
    pub tx: AtomicU64,
    /// Datagrams from an address that is neither a member nor a static
    /// peer.
    pub dropped_not_member: AtomicU64,
    /// Datagrams that are not valid encapsulation, or of an unknown VNI.
    pub dropped_invalid: AtomicU64,
}

/// The handle of the data-path thread. Dropping it stops the thread.
#[derive(Debug)]
pub struct Datapath {
    commands: mpsc::Sender<Command>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
    next_port: AtomicU32,
    next_publish: AtomicU32,
    tunnel_counters: Arc<TunnelCounters>,
    tunnel_ports: TunnelPorts,
}

/// The counters of every tunnel port (one remote host of one overlay
/// network), shared with the control plane for `network inspect`. The
/// data-path thread adds and removes entries when it makes or drops a
/// tunnel port, never per frame.
#[derive(Debug, Clone, Default)]
struct TunnelPorts(Arc<std::sync::Mutex<TunnelPortMap>>);

/// (overlay network, remote host) → that tunnel port's counters.
type TunnelPortMap = BTreeMap<(NetworkId, IpAddr), Arc<PortCounters>>;

impl TunnelPorts {
    /// The map, even if a thread panicked holding it (counters only).
    fn lock(&self) -> std::sync::MutexGuard<'_, TunnelPortMap> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Why the data path did not take a command.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// The data-path thread is gone (it panicked or was shut down).
    #[error("the data-path thread has stopped")]
    Stopped,
    /// Waking the data-path thread failed.
    #[error("waking the data-path thread failed")]
    Wake(#[source] io::Error),
    /// The data-path thread did not answer in time.
    #[error("the data-path thread did not answer within {0:?}")]
    Timeout(Duration),
}

struct PortIo {
    tap: Tap,
    counters: Arc<PortCounters>,
}

struct Loop {
    poll: Poll,
    upstream_v4: Option<UdpSocket>,
    upstream_v6: Option<UdpSocket>,
    commands: mpsc::Receiver<Command>,
    switch: Switch,
    ports: FxHashMap<PortId, PortIo>,
    ready: VecDeque<PortId>,
    batch: WriteBatch,
    flood_scratch: Vec<PortId>,
    nat_sockets: FxHashMap<FlowId, NatSocket>,
    ping_refused_logged: bool,
    reply: Vec<u8>,
    published: FxHashMap<PublishId, Published>,
    /// Sockets to read again next turn (their reader hit its bound).
    again: Vec<Token>,
    tcp_flows: FxHashMap<FlowId, TcpFlowIo>,
    tunnel: Option<TunnelIo>,
    /// Tunnel ports: one per (overlay network, remote host).
    vteps: FxHashMap<PortId, Vtep>,
    vtep_ids: FxHashMap<(NetworkId, IpAddr), PortId>,
    /// VNI → overlay network.
    overlays: FxHashMap<u32, NetworkId>,
    tunnel_peers: rustc_hash::FxHashSet<IpAddr>,
    next_vtep: u32,
    tunnel_counters: Arc<TunnelCounters>,
    tunnel_ports: TunnelPorts,
}

/// The tunnel's sockets and codec.
struct TunnelIo {
    socket: UdpSocket,
    /// The tunnel's port: where peers that are not in the table are
    /// answered.
    port: u16,
    senders: Vec<std::net::UdpSocket>,
    codec: Box<dyn TunnelCodec>,
    /// The datagrams being sent (headers and frames).
    datagram: Vec<u8>,
    /// Bytes of `datagram` gathered for the next send.
    gathered: usize,
    /// Whether UDP GSO sends work here (cleared at the first refusal).
    gso: bool,
    /// What `datagram` holds, for whom; None when it is empty.
    batch: Option<TunnelBatch>,
    /// Where received (possibly coalesced) datagrams land.
    rx: Vec<u8>,
}

/// A tunnel port: a remote host of one overlay network.
struct Vtep {
    vni: u32,
    addr: SocketAddr,
    counters: Arc<PortCounters>,
}

/// A published port's host socket and where it leads.
struct Published {
    listener: HostListener,
    target: PublishTarget,
}

/// The host socket of a relayed TCP flow, with its readiness as last seen
/// (edge-triggered: a flag stays set until a read or write says `EAGAIN`).
struct TcpFlowIo {
    stream: mio::net::TcpStream,
    connected: bool,
    readable: bool,
    writable: bool,
}

/// What a turn of reading one port ended with.
enum Turn {
    Drained,
    MoreQueued,
    DeviceLost(io::Error),
}

impl Datapath {
    /// Start the data-path thread.
    ///
    /// # Errors
    ///
    /// Creating the epoll instance or its waker, or spawning the thread.
    pub fn spawn() -> io::Result<Datapath> {
        Self::spawn_with_max_flows(crate::nat::DEFAULT_MAX_FLOWS)
    }

    /// Start the data-path thread with NAT tables of at most `max_flows`
    /// flows each (UDP/ICMP, and TCP).
    ///
    /// # Errors
    ///
    /// Creating the epoll instance or its waker, or spawning the thread.
    pub fn spawn_with_max_flows(max_flows: usize) -> io::Result<Datapath> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER_TOKEN)?);
        let upstream_v4 = upstream_socket(&poll, "0.0.0.0:0", UPSTREAM_V4_TOKEN);
        let upstream_v6 = upstream_socket(&poll, "[::]:0", UPSTREAM_V6_TOKEN);
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id()).rotate_left(32);
        let (tx, rx) = mpsc::channel();
        let tunnel_counters = Arc::new(TunnelCounters::default());
        let tunnel_ports = TunnelPorts::default();
        let mut event_loop = Loop {
            poll,
            upstream_v4,
            upstream_v6,
            commands: rx,
            switch: Switch::with_dns_and_nat(
                DnsConfig {
                    max_udp_payload: DNS_MAX_UDP_PAYLOAD,
                    ..DnsConfig::default()
                },
                max_flows,
                seed,
            ),
            ports: FxHashMap::default(),
            ready: VecDeque::new(),
            batch: WriteBatch::new(),
            flood_scratch: Vec::new(),
            nat_sockets: FxHashMap::default(),
            ping_refused_logged: false,
            reply: vec![0; FRAME_BUFFER_LEN + REPLY_HEADROOM],
            published: FxHashMap::default(),
            again: Vec::new(),
            tcp_flows: FxHashMap::default(),
            tunnel: None,
            vteps: FxHashMap::default(),
            vtep_ids: FxHashMap::default(),
            overlays: FxHashMap::default(),
            tunnel_peers: rustc_hash::FxHashSet::default(),
            next_vtep: TUNNEL_PORT_BASE,
            tunnel_counters: Arc::clone(&tunnel_counters),
            tunnel_ports: tunnel_ports.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("weft-datapath".into())
            .spawn(move || event_loop.run())?;
        Ok(Datapath {
            commands: tx,
            waker,
            thread: Some(thread),
            next_port: AtomicU32::new(1),
            next_publish: AtomicU32::new(1),
            tunnel_counters,
            tunnel_ports,
        })
    }

    fn send(&self, command: Command) -> Result<(), DatapathError> {
        self.commands
            .send(command)
            .map_err(|_| DatapathError::Stopped)?;
        self.waker.wake().map_err(DatapathError::Wake)
    }

    /// Add a network with its gateway.
    ///
    /// # Errors
    ///
    /// [`DatapathError`] when the thread is gone.
    pub fn add_network(&self, id: NetworkId, gateway: GatewayConfig) -> Result<(), DatapathError> {
        self.send(Command::AddNetwork { id, gateway })
    }

    /// Remove a network; its ports are closed.
    ///
    /// # Errors
    ///
    /// [`DatapathError`] when the thread is gone.
    pub fn remove_network(&self, id: NetworkId) -> Result<(), DatapathError> {
        self.send(Command::RemoveNetwork { id })
    }

    /// Attach a TAP to a network; returns its port id and counters.
    ///
    /// # Errors
    ///
    /// [`DatapathError`] when the thread is gone.
    pub fn add_port(
        &self,
        network: NetworkId,
        tap: Tap,
    ) -> Result<(PortId, Arc<PortCounters>), DatapathError> {
        let id = PortId(self.next_port.fetch_add(1, Ordering::Relaxed));
        let counters = Arc::new(PortCounters::default());
        self.send(Command::AddPort {
            id,
            network,
            tap,
            counters: Arc::clone(&counters),
        })?;
        Ok((id, counters))
    }

    /// Set the names a network's sandboxes resolve.
    ///
    /// # Errors
    ///
    /// [`DatapathError`] when the thread is gone.
    pub fn set_zone(&self, network: NetworkId, zone: Zone) -> Result<(), DatapathError> {
        self.send(Command::SetZone { network, zone })
    }

    /// Set the upstream resolvers for names that are not local.
    ///
    /// # Errors
    ///
    /// [`DatapathError`] when the thread is gone.
    pub fn set_upstreams(&self, upstreams: Vec<SocketAddr>) -> Result<(), DatapathError> {
        self.send(Command::SetUpstreams(upstreams))
    }

    /// Carry a bound host socket's connections or datagrams to a sandbox
    /// (see [`crate::sys::publish`]). The socket closes on
    /// [`Datapath::unpublish`], when the target's port or network goes, or
    /// with the data path.
    ///
    /// # Errors
    ///
    /// [`DatapathError`] when the thread is gone.
    pub fn publish(
        &self,
        listener: HostListener,
        target: PublishTarget,
    ) -> Result<PublishId, DatapathError> {
        let id = PublishId(self.next_publish.fetch_add(1, Ordering::Relaxed));
        self.send(Command::Publish {
            id,
            listener,
            target,
        })?;
        Ok(id)
    }

    /// Close a published port; connections already relayed stay until
    /// they end.
    ///
    /// # Errors
    ///
    /// [`DatapathError`] when the thread is gone.
    pub fn unpublish(&self, id: PublishId) -> Result<(), DatapathError> {
        self.send(Command::Unpublish { id })
    }

    /// Carry overlay networks over `socket` (bound to the tunnel's listen
    /// address) with `codec`.
    ///
    /// # Errors
    ///
    /// [`DatapathError`] when the thread is gone.
    pub fn enable_tunnel(
        &self,
        socket: std::net::UdpSocket,
        codec: Box<dyn TunnelCodec>,
    ) -> Result<(), DatapathError> {
        self.send(Command::EnableTunnel { socket, codec })
    }

    /// Make `network` an overlay network, or update its view of the other
    /// hosts (the whole table each time).
    ///
    /// # Errors
    ///
    /// [`DatapathError`] when the thread is gone.
    pub fn set_overlay(
        &self,
        network: NetworkId,
        table: OverlayTable,
    ) -> Result<(), DatapathError> {
        self.send(Command::SetOverlay { network, table })
    }

    /// The underlay addresses tunnel datagrams are accepted from (cluster
    /// members and static peers); others are dropped and counted.
    ///
    /// # Errors
    ///
    /// [`DatapathError`] when the thread is gone.
    pub fn set_tunnel_peers(&self, peers: Vec<IpAddr>) -> Result<(), DatapathError> {
        self.send(Command::SetTunnelPeers(peers))
    }

    /// The tunnel's counters.
    pub fn tunnel_counters(&self) -> &TunnelCounters {
        &self.tunnel_counters
    }

    /// The counters of `network`'s tunnel ports, by remote host: frames
    /// and bytes received from it (rx) and sent to it (tx).
    pub fn tunnel_port_counters(&self, network: NetworkId) -> Vec<(IpAddr, PortCountersSnapshot)> {
        self.tunnel_ports
            .lock()
            .range((network, IpAddr::from([0u8; 4]))..)
            .take_while(|((n, _), _)| *n == network)
            .map(|((_, ip), counters)| (*ip, counters.snapshot()))
            .collect()
    }

    /// Detach a port and hand its TAP back (None if the port was unknown or
    /// its device had vanished). Blocks until the data path answers.
    ///
    /// # Errors
    ///
    /// [`DatapathError`] when the thread is gone or does not answer.
    pub fn remove_port(&self, id: PortId) -> Result<Option<Tap>, DatapathError> {
        let (done, answer) = mpsc::channel();
        self.send(Command::RemovePort { id, done })?;
        answer
            .recv_timeout(COMMAND_REPLY_TIMEOUT)
            .map_err(|_| DatapathError::Timeout(COMMAND_REPLY_TIMEOUT))
    }
}

impl Drop for Datapath {
    fn drop(&mut self) {
        if self.send(Command::Shutdown).is_ok() {
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

impl Loop {
    fn run(&mut self) {
        let mut events = Events::with_capacity(256);
        loop {
            let timeout = if self.ready.is_empty() && self.again.is_empty() {
                let now = Instant::now();
                self.switch
                    .poll_timeout(now)
                    .map(|due| due.saturating_duration_since(now))
            } else {
                Some(Duration::ZERO)
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(error = %e, "data path: epoll failed, stopping");
                return;
            }
            let again = std::mem::take(&mut self.again);
            for event in &events {
                if !self.dispatch(event.token(), event.is_readable(), event.is_writable()) {
                    return;
                }
            }
            // Sockets whose reader stopped at its bound: edge-triggered
            // epoll will not tell again, so they get another turn here.
            for token in again {
                if !self.dispatch(token, true, false) {
                    return;
                }
            }
            let now = Instant::now();
            for _ in 0..self.ready.len() {
                let Some(port) = self.ready.pop_front() else {
                    break;
                };
                match self.read_turn(port, now) {
                    Turn::Drained => {}
                    Turn::MoreQueued => self.ready.push_back(port),
                    Turn::DeviceLost(e) => {
                        tracing::error!(port = port.0, error = %e, "TAP device lost, port removed");
                        self.detach(port);
                    }
                }
            }
            let now = Instant::now();
            if self.switch.poll_timeout(now).is_some_and(|due| due <= now) {
                self.switch.handle_timeout(now);
            }
            self.flush_gateway(now);
        }
    }

    /// Handle one readiness event; false on shutdown.
    fn dispatch(&mut self, token: Token, readable: bool, writable: bool) -> bool {
        if token == WAKER_TOKEN {
            return self.apply_commands();
        }
        if token == TUNNEL_TOKEN {
            if !self.read_tunnel() {
                self.again.push(token);
            }
        } else if token == UPSTREAM_V4_TOKEN || token == UPSTREAM_V6_TOKEN {
            self.read_upstream(token == UPSTREAM_V4_TOKEN);
        } else if token.0 >= NAT_TOKEN_BASE {
            let flow = FlowId((token.0 - NAT_TOKEN_BASE) as u64);
            if flow.0 >= FLOW_ID_BASE {
                self.tcp_flow_ready(flow, readable, writable);
            } else if !self.read_nat(flow) {
                self.again.push(token);
            }
        } else if token.0 >= PUBLISH_TOKEN_BASE {
            let id = (token.0 - PUBLISH_TOKEN_BASE) as u32;
            if !self.published_ready(PublishId(id)) {
                self.again.push(token);
            }
        } else if let Ok(port) = u32::try_from(token.0) {
            let port = PortId(port);
            if !self.ready.contains(&port) {
                self.ready.push_back(port);
            }
        }
        true
    }

    /// Send what the gateway services produced: frames into networks,
    /// datagrams to upstream resolvers.
    fn flush_gateway(&mut self, now: Instant) {
        // NAT actions can queue frames (a refused send answers with ICMP),
        // and frames never queue actions: two rounds drain both.
        for _ in 0..2 {
            while let Some((egress, mut frame, gso_size)) = self.switch.poll_gateway_frame(now) {
                let header = if gso_size == 0 {
                    vnet::EMPTY
                } else {
                    vnet::tcp_gso_header(&mut frame, gso_size).unwrap_or(vnet::EMPTY)
                };
                match egress {
                    Egress::Port(port) => send_parts_to(&self.ports, port, &header, &frame),
                    Egress::Flood(network) => {
                        for &port in self.switch.network_ports(network) {
                            send_parts_to(&self.ports, port, &header, &frame);
                        }
                    }
                }
            }
            while let Some(action) = self.switch.poll_nat_action() {
                self.nat_action(action);
            }
            // Bounded: an action can queue more (a write opens the window,
            // the stack answers), which the next round or wake-up takes.
            for _ in 0..4096 {
                let Some(action) = self.switch.tcp().poll_action() else {
                    break;
                };
                self.tcp_action(action);
            }
        }
        while let Some((upstream, datagram)) = self.switch.poll_upstream() {
            let socket = if upstream.is_ipv4() {
                &self.upstream_v4
            } else {
                &self.upstream_v6
            };
            let Some(socket) = socket else {
                continue;
            };
            if let Err(e) = socket.send_to(&datagram, upstream) {
                tracing::debug!(%upstream, error = %e, "DNS upstream send failed");
            }
        }
    }

    /// Carry out one socket action of the NAT.
    fn nat_action(&mut self, action: NatAction) {
        match action {
            NatAction::Open {
                flow,
                proto,
                remote,
            } => match NatSocket::open(proto, remote) {
                Ok(mut socket) => {
                    let token = Token(NAT_TOKEN_BASE + flow.0 as usize);
                    let raw = socket.raw_fd();
                    if self
                        .poll
                        .registry()
                        .register(&mut SourceFd(&raw), token, Interest::READABLE)
                        .is_ok()
                    {
                        socket.token = Some(token);
                        self.nat_sockets.insert(flow, socket);
                    } else {
                        self.switch.close_nat_flow(flow);
                    }
                }
                Err(e) => {
                    if proto == NatProto::IcmpEcho && !self.ping_refused_logged {
                        self.ping_refused_logged = true;
                        tracing::warn!(error = %e, "ICMP echo cannot leave: ping sockets are not allowed for this daemon's group (net.ipv4.ping_group_range)");
                    } else {
                        tracing::debug!(%remote, error = %e, "NAT socket");
                    }
                    self.switch.close_nat_flow(flow);
                }
            },
            NatAction::Send { flow, data } => {
                let Some(socket) = self.nat_sockets.get(&flow) else {
                    return;
                };
                if let Err(e) = socket.send(&data) {
                    if e.raw_os_error() == Some(libc::ECONNREFUSED) {
                        self.switch.handle_nat_refused(Instant::now(), flow);
                    } else {
                        tracing::debug!(flow = flow.0, error = %e, "NAT send");
                    }
                }
            }
            NatAction::Close { flow } => {
                if let Some(socket) = self.nat_sockets.remove(&flow) {
                    let raw = socket.raw_fd();
                    let _ = self.poll.registry().deregister(&mut SourceFd(&raw));
                }
            }
            NatAction::Reply {
                listener,
                client,
                data,
            } => {
                if let Some(Published {
                    listener: HostListener::Udp(socket),
                    ..
                }) = self.published.get(&PublishId(listener))
                {
                    if let Err(e) = socket.send_to(&data, client) {
                        tracing::debug!(%client, error = %e, "published UDP reply");
                    }
                }
            }
        }
    }

    /// Carry out one socket action of the TCP relay.
    fn tcp_action(&mut self, action: TcpAction) {
        let now = Instant::now();
        match action {
            TcpAction::Connect { flow, remote } => {
                let stream = match mio::net::TcpStream::connect(remote) {
                    Ok(stream) => stream,
                    Err(e) => {
                        tracing::debug!(%remote, error = %e, "TCP NAT connect");
                        self.switch
                            .tcp()
                            .handle_connect_failed(flow, connect_failure(&e));
                        return;
                    }
                };
                self.add_tcp_flow(flow, stream, false);
            }
            TcpAction::Send { flow } => self.tcp_send(flow, now),
            TcpAction::Receive { flow } => self.tcp_receive(flow, now),
            TcpAction::ShutdownWrite { flow } => {
                if let Some(io) = self.tcp_flows.get(&flow) {
                    let _ = io.stream.shutdown(std::net::Shutdown::Write);
                }
            }
            TcpAction::Close { flow } => self.remove_tcp_flow(flow, false),
            TcpAction::Reset { flow } => self.remove_tcp_flow(flow, true),
        }
    }

    fn add_tcp_flow(&mut self, flow: FlowId, mut stream: mio::net::TcpStream, connected: bool) {
        let _ = stream.set_nodelay(true);
        let token = Token(NAT_TOKEN_BASE + flow.0 as usize);
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            token,
            Interest::READABLE | Interest::WRITABLE,
        ) {
            tracing::debug!(error = %e, "TCP NAT register");
            self.switch.tcp().host_failed(Instant::now(), flow);
            return;
        }
        self.tcp_flows.insert(
            flow,
            TcpFlowIo {
                stream,
                connected,
                readable: false,
                writable: false,
            },
        );
    }

    fn remove_tcp_flow(&mut self, flow: FlowId, reset: bool) {
        let Some(mut io) = self.tcp_flows.remove(&flow) else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut io.stream);
        if reset {
            // Linger 0: close sends a reset, as the sandbox's side did.
            let _ = nix::sys::socket::setsockopt(
                &io.stream,
                nix::sys::socket::sockopt::Linger,
                &libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                },
            );
        }
    }

    /// Readiness of a TCP flow's host socket.
    fn tcp_flow_ready(&mut self, flow: FlowId, readable: bool, writable: bool) {
        let now = Instant::now();
        let Some(io) = self.tcp_flows.get_mut(&flow) else {
            return;
        };
        if !io.connected {
            if !writable && !readable {
                return;
            }
            match io.stream.take_error() {
                Ok(Some(e)) | Err(e) => {
                    tracing::debug!(flow = flow.0, error = %e, "TCP NAT connect failed");
                    self.remove_tcp_flow(flow, false);
                    self.switch
                        .tcp()
                        .handle_connect_failed(flow, connect_failure(&e));
                    return;
                }
                Ok(None) => {}
            }
            match io.stream.peer_addr() {
                Ok(_) => {
                    io.connected = true;
                    self.switch.tcp().handle_connected(now, flow);
                }
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) => {
                    self.remove_tcp_flow(flow, false);
                    self.switch
                        .tcp()
                        .handle_connect_failed(flow, connect_failure(&e));
                    return;
                }
            }
        }
        if let Some(io) = self.tcp_flows.get_mut(&flow) {
            io.readable |= readable;
            io.writable |= writable;
        }
        if writable {
            self.tcp_send(flow, now);
        }
        if readable {
            self.tcp_receive(flow, now);
        }
    }

    /// Write what the sandbox sent to the host socket, if it is writable.
    fn tcp_send(&mut self, flow: FlowId, now: Instant) {
        let Some(io) = self.tcp_flows.get_mut(&flow) else {
            return;
        };
        if !io.connected || !io.writable {
            return;
        }
        let stream = &io.stream;
        let outcome = self
            .switch
            .tcp()
            .send_to_host(now, flow, |data| io::Write::write(&mut &*stream, data));
        if outcome == HostWrite::Blocked {
            io.writable = false;
        }
    }

    /// Read the host socket into the stack, if it has data.
    fn tcp_receive(&mut self, flow: FlowId, now: Instant) {
        let Some(io) = self.tcp_flows.get_mut(&flow) else {
            return;
        };
        if !io.connected || !io.readable {
            return;
        }
        let stream = &io.stream;
        let outcome = self
            .switch
            .tcp()
            .receive_from_host(now, flow, |buf| io::Read::read(&mut &*stream, buf));
        if matches!(outcome, HostRead::Drained | HostRead::Eof) {
            io.readable = false;
        }
    }

    fn publish(&mut self, id: PublishId, listener: HostListener, target: PublishTarget) {
        let token = Token(PUBLISH_TOKEN_BASE + id.0 as usize);
        let raw = listener.raw_fd();
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut SourceFd(&raw), token, Interest::READABLE)
        {
            tracing::error!(error = %e, "data path: register published port");
            return;
        }
        self.published.insert(id, Published { listener, target });
        // Connections or datagrams may be waiting already.
        if !self.published_ready(id) {
            self.again.push(token);
        }
    }

    fn unpublish(&mut self, id: PublishId) {
        if let Some(published) = self.published.remove(&id) {
            let raw = published.listener.raw_fd();
            let _ = self.poll.registry().deregister(&mut SourceFd(&raw));
        }
    }

    /// A published port's socket is readable: accept connections, or take
    /// datagrams, bounded per wake-up. True when drained, false when the
    /// bound stopped it.
    fn published_ready(&mut self, id: PublishId) -> bool {
        let Some(published) = self.published.get(&id) else {
            return true;
        };
        let target = published.target;
        let mut drained = false;
        match &published.listener {
            HostListener::Tcp(listener) => {
                let mut accepted = Vec::new();
                for _ in 0..ACCEPT_BOUND {
                    match listener.accept() {
                        Ok((stream, client)) => accepted.push((stream, client)),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            drained = true;
                            break;
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            tracing::debug!(error = %e, "published port accept");
                            drained = true;
                            break;
                        }
                    }
                }
                for (stream, client) in accepted {
                    let now = Instant::now();
                    let flow = self.switch.accept_published_tcp(
                        now,
                        target.network,
                        target.addr,
                        target.mac,
                        client,
                    );
                    let Some(flow) = flow else {
                        tracing::debug!(%client, "published port: connection refused (relay full)");
                        continue;
                    };
                    if stream.set_nonblocking(true).is_err() {
                        self.switch.tcp().host_failed(now, flow);
                        continue;
                    }
                    self.add_tcp_flow(flow, mio::net::TcpStream::from_std(stream), true);
                }
            }
            HostListener::Udp(socket) => {
                let mut buf = vec![0u8; NAT_DATAGRAM_MAX];
                for _ in 0..IO_LOOP_BOUND {
                    let Some(Published {
                        listener: HostListener::Udp(socket),
                        ..
                    }) = self.published.get(&id)
                    else {
                        return true;
                    };
                    match socket.recv_from(&mut buf) {
                        Ok((len, client)) => {
                            let result = self.switch.published_udp(
                                Instant::now(),
                                id.0,
                                (target.network, target.port, target.mac),
                                target.addr,
                                client,
                                &buf[..len],
                            );
                            if let Err(reason) = result {
                                count_drop(&self.ports, target.port, reason);
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            drained = true;
                            break;
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            tracing::debug!(error = %e, "published UDP receive");
                            drained = true;
                            break;
                        }
                    }
                }
                let _ = socket;
            }
        }
        drained
    }

    /// Read a NAT flow's socket, bounded; true when it is drained (or
    /// gone), false when the bound stopped the reading.
    fn read_nat(&mut self, flow: FlowId) -> bool {
        let mut buf = vec![0u8; NAT_DATAGRAM_MAX];
        for _ in 0..IO_LOOP_BOUND {
            let Some(socket) = self.nat_sockets.get(&flow) else {
                return true;
            };
            match socket.recv(&mut buf) {
                Ok(len) => self
                    .switch
                    .handle_nat_reply(Instant::now(), flow, &buf[..len]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                    self.switch.handle_nat_refused(Instant::now(), flow);
                }
                Err(e) => {
                    tracing::debug!(flow = flow.0, error = %e, "NAT receive");
                    return true;
                }
            }
        }
        false
    }

    fn read_upstream(&mut self, v4: bool) {
        let mut buf = [0u8; UPSTREAM_DATAGRAM_MAX];
        for _ in 0..IO_LOOP_BOUND {
            let socket = if v4 {
                &self.upstream_v4
            } else {
                &self.upstream_v6
            };
            let Some(socket) = socket else {
                return;
            };
            match socket.recv_from(&mut buf) {
                Ok((len, from)) => {
                    let now = Instant::now();
                    self.switch.handle_upstream(now, from, &buf[..len]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // ICMP errors (port unreachable) surface here: the
                    // server's timers move on to the next upstream.
                    tracing::debug!(error = %e, "DNS upstream receive");
                }
            }
        }
    }

    /// Apply every queued command; false on shutdown.
    fn apply_commands(&mut self) -> bool {
        while let Ok(command) = self.commands.try_recv() {
            match command {
                Command::AddNetwork { id, gateway } => {
                    if let Err(e) = self.switch.add_network(id, gateway) {
                        tracing::error!(error = %e, "data path: add network");
                    }
                }
                Command::RemoveNetwork { id } => {
                    for port in self.switch.remove_network(id) {
                        self.detach(port);
                    }
                    // An overlay network's VNI and tunnel ports go with it.
                    self.overlays.retain(|_, network| *network != id);
                    let tunnels: Vec<((NetworkId, IpAddr), PortId)> = self
                        .vtep_ids
                        .iter()
                        .filter(|((network, _), _)| *network == id)
                        .map(|(key, port)| (*key, *port))
                        .collect();
                    for ((network, ip), _) in tunnels {
                        self.forget_vtep(network, ip);
                    }
                }
                Command::AddPort {
                    id,
                    network,
                    tap,
                    counters,
                } => self.attach(id, network, tap, counters),
                Command::RemovePort { id, done } => {
                    let tap = self.detach(id);
                    let _ = done.send(tap);
                }
                Command::SetZone { network, zone } => {
                    self.switch.services().set_zone(network, zone)
                }
                Command::SetUpstreams(upstreams) => {
                    self.switch.services().dns().set_upstreams(upstreams);
                }
                Command::Publish {
                    id,
                    listener,
                    target,
                } => self.publish(id, listener, target),
                Command::Unpublish { id } => self.unpublish(id),
                Command::EnableTunnel { socket, codec } => self.enable_tunnel(socket, codec),
                Command::SetOverlay { network, table } => self.set_overlay(network, table),
                Command::SetTunnelPeers(peers) => {
                    self.tunnel_peers = peers.into_iter().collect();
                }
                Command::Shutdown => return false,
            }
        }
        true
    }

    fn enable_tunnel(&mut self, socket: std::net::UdpSocket, codec: Box<dyn TunnelCodec>) {
        let Ok(local) = socket.local_addr() else {
            tracing::error!("tunnel socket without an address");
            return;
        };
        let bind_ip = local.ip();
        if let Err(e) = socket.set_nonblocking(true) {
            tracing::error!(error = %e, "tunnel socket");
            return;
        }
        let mut socket = UdpSocket::from_std(socket);
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut socket, TUNNEL_TOKEN, Interest::READABLE)
        {
            tracing::error!(error = %e, "data path: register the tunnel socket");
            return;
        }
        set_buffer(&socket, true);
        // Runs of datagrams from one sender arrive as one (UDP GRO).
        if let Err(e) =
            nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::UdpGroSegment, &true)
        {
            tracing::debug!(error = %e, "tunnel: no UDP GRO");
        }
        let senders = (0..TUNNEL_SENDERS)
            .filter_map(|_| std::net::UdpSocket::bind(SocketAddr::new(bind_ip, 0)).ok())
            .filter(|s| s.set_nonblocking(true).is_ok())
            .inspect(|s| set_buffer(s, false))
            .collect();
        self.tunnel = Some(TunnelIo {
            socket,
            port: local.port(),
            senders,
            codec,
            datagram: vec![0; FRAME_BUFFER_LEN + 64],
            gathered: 0,
            gso: true,
            batch: None,
            rx: vec![0; TUNNEL_RX_BUFFER],
        });
    }

    /// The tunnel port of `network` toward `addr`, made on first use.
    fn vtep_port(&mut self, network: NetworkId, vni: u32, addr: SocketAddr) -> Option<PortId> {
        if let Some(port) = self.vtep_ids.get(&(network, addr.ip())) {
            return Some(*port);
        }
        let port = PortId(self.next_vtep);
        self.next_vtep = self.next_vtep.checked_add(1)?;
        if let Err(e) = self.switch.add_tunnel_port(port, network) {
            tracing::error!(error = %e, "data path: add tunnel port");
            return None;
        }
        self.vtep_ids.insert((network, addr.ip()), port);
        let counters = Arc::new(PortCounters::default());
        self.tunnel_ports
            .lock()
            .insert((network, addr.ip()), Arc::clone(&counters));
        self.vteps.insert(
            port,
            Vtep {
                vni,
                addr,
                counters,
            },
        );
        Some(port)
    }

    /// Drop the tunnel port of `network` toward `ip` (not from the switch).
    fn forget_vtep(&mut self, network: NetworkId, ip: IpAddr) {
        if let Some(port) = self.vtep_ids.remove(&(network, ip)) {
            self.vteps.remove(&port);
        }
        self.tunnel_ports.lock().remove(&(network, ip));
    }

    fn set_overlay(&mut self, network: NetworkId, table: OverlayTable) {
        self.overlays.retain(|_, n| *n != network);
        self.overlays.insert(table.vni, network);
        let wanted: rustc_hash::FxHashSet<IpAddr> = table
            .flood
            .iter()
            .map(SocketAddr::ip)
            .chain(table.endpoints.iter().map(|e| e.vtep.ip()))
            .collect();
        // Hosts that left the network lose their tunnel port.
        let gone: Vec<(IpAddr, PortId)> = self
            .vtep_ids
            .iter()
            .filter(|((n, ip), _)| *n == network && !wanted.contains(ip))
            .map(|((_, ip), port)| (*ip, *port))
            .collect();
        for (ip, port) in gone {
            self.forget_vtep(network, ip);
            self.switch.remove_port(port);
        }
        for addr in table
            .flood
            .iter()
            .chain(table.endpoints.iter().map(|e| &e.vtep))
        {
            if let Some(port) = self.vtep_port(network, table.vni, *addr) {
                if let Some(vtep) = self.vteps.get_mut(&port) {
                    vtep.addr = *addr;
                    vtep.vni = table.vni;
                }
            }
        }
        let mut macs = FxHashMap::default();
        let mut proxy_arp = FxHashMap::default();
        for endpoint in &table.endpoints {
            let Some(port) = self.vtep_ids.get(&(network, endpoint.vtep.ip())) else {
                continue;
            };
            macs.insert(endpoint.mac, *port);
            for ip in &endpoint.ipv4 {
                proxy_arp.insert(*ip, endpoint.mac);
            }
        }
        self.switch.set_remote_endpoints(network, macs, proxy_arp);
    }

    /// Datagrams from the tunnel socket: open, check, switch. The socket
    /// has UDP GRO on, so one receive can return a run of same-sized
    /// datagrams from one sender, which are taken one by one. True when the
    /// socket is drained, false when the bound stopped the reading.
    fn read_tunnel(&mut self) -> bool {
        let now = Instant::now();
        // Consecutive segments of one TCP flow become one GSO frame (see
        // `gro`), across receives too: `run` is the frame being merged in
        // the batch's current buffer, and the port it came by. It is
        // switched before the writes are flushed, whenever the loop ends.
        let mut run: Option<(gro::Run, PortId)> = None;
        let mut drained = false;
        for _ in 0..IO_LOOP_BOUND {
            let Some(tunnel) = self.tunnel.as_mut() else {
                drained = true;
                break;
            };
            let mut rx = std::mem::take(&mut tunnel.rx);
            let received = receive_coalesced(&tunnel.socket, &mut rx);
            let (len, from, segment) = match received {
                Ok(received) => received,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    self.restore_rx(rx);
                    continue;
                }
                Err(e) => {
                    if e.kind() != io::ErrorKind::WouldBlock {
                        tracing::debug!(error = %e, "tunnel receive");
                    }
                    self.restore_rx(rx);
                    drained = true;
                    break;
                }
            };
            let segment = if segment == 0 { len } else { segment };
            for datagram in rx[..len].chunks(segment.max(1)) {
                let Some((port, inner)) = self.open_datagram(from, datagram) else {
                    continue;
                };
                if let Some((merging, run_port)) = run.as_mut() {
                    if *run_port == port
                        && merging.append(&mut self.batch.buffer()[VNET_HDR_LEN..], inner)
                    {
                        continue;
                    }
                }
                if let Some((merged, run_port)) = run.take() {
                    self.switch_run(merged, run_port, now);
                }
                if self.batch.is_full() {
                    self.flush_writes();
                }
                let buffer = self.batch.buffer();
                buffer[VNET_HDR_LEN..VNET_HDR_LEN + inner.len()].copy_from_slice(inner);
                match gro::Run::start(inner) {
                    Some(started) => run = Some((started, port)),
                    None => {
                        buffer[..VNET_HDR_LEN].copy_from_slice(&vnet::wire_frame_header(inner));
                        self.tunnel_counters.rx.fetch_add(1, Ordering::Relaxed);
                        self.switch_frame(port, VNET_HDR_LEN + inner.len(), now);
                        self.batch.keep();
                    }
                }
            }
            self.restore_rx(rx);
        }
        if let Some((merged, run_port)) = run.take() {
            self.switch_run(merged, run_port, now);
        }
        self.flush_writes();
        drained
    }

    fn restore_rx(&mut self, rx: Vec<u8>) {
        if let Some(tunnel) = self.tunnel.as_mut() {
            tunnel.rx = rx;
        }
    }

    /// Switch a run of merged segments from the batch's current buffer:
    /// as one GSO frame when it merged several.
    fn switch_run(&mut self, run: gro::Run, port: PortId, now: Instant) {
        let buffer = self.batch.buffer();
        let (header, frame) = buffer.split_at_mut(VNET_HDR_LEN);
        run.finish(frame);
        let gso_header = if run.count > 1 {
            u16::try_from(run.segment_size)
                .ok()
                .and_then(|size| vnet::tcp_gso_header(&mut frame[..run.len], size))
        } else {
            None
        };
        header.copy_from_slice(
            &gso_header.unwrap_or_else(|| vnet::wire_frame_header(&frame[..run.len])),
        );
        self.tunnel_counters
            .rx
            .fetch_add(run.count as u64, Ordering::Relaxed);
        self.switch_frame(port, VNET_HDR_LEN + run.len, now);
        self.batch.keep();
    }

    /// One datagram from the tunnel: check its sender, open it; its inner
    /// frame and the tunnel port it came by, or None (dropped, counted).
    fn open_datagram<'d>(
        &mut self,
        from: SocketAddr,
        datagram: &'d [u8],
    ) -> Option<(PortId, &'d [u8])> {
        if !self.tunnel_peers.contains(&from.ip()) {
            self.tunnel_counters
                .dropped_not_member
                .fetch_add(1, Ordering::Relaxed);
            tracing::trace!(%from, "tunnel datagram from a non-member, dropped");
            return None;
        }
        let tunnel = self.tunnel.as_ref()?;
        let tunnel_port = tunnel.port;
        let decoded = tunnel.codec.decap(datagram).and_then(|(vni, inner)| {
            let network = self.overlays.get(&vni).copied()?;
            (inner.len() + VNET_HDR_LEN <= FRAME_BUFFER_LEN).then_some((vni, network, inner))
        });
        let Some((vni, network, inner)) = decoded else {
            self.tunnel_counters
                .dropped_invalid
                .fetch_add(1, Ordering::Relaxed);
            return None;
        };
        // Peers are known by address; they send from any port and are
        // sent to at the tunnel's port.
        let peer = SocketAddr::new(from.ip(), tunnel_port);
        let port = self.vtep_port(network, vni, peer)?;
        Some((port, inner))
    }

    fn attach(&mut self, id: PortId, network: NetworkId, tap: Tap, counters: Arc<PortCounters>) {
        let Ok(token) = usize::try_from(id.0) else {
            return;
        };
        if let Err(e) = self.switch.add_port(id, network) {
            tracing::error!(error = %e, port = id.0, "data path: add port");
            return;
        }
        let raw = tap.as_raw_fd();
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut SourceFd(&raw), Token(token), Interest::READABLE)
        {
            tracing::error!(error = %e, port = id.0, "data path: epoll register");
            self.switch.remove_port(id);
            return;
        }
        tracing::debug!(port = id.0, ifname = tap.name(), "port attached");
        self.ports.insert(id, PortIo { tap, counters });
        // Frames may have queued before registration; edge-triggered epoll
        // would not report them.
        self.ready.push_back(id);
    }

    fn detach(&mut self, id: PortId) -> Option<Tap> {
        let publishes: Vec<PublishId> = self
            .published
            .iter()
            .filter(|(_, p)| p.target.port == id)
            .map(|(publish, _)| *publish)
            .collect();
        for publish in publishes {
            self.unpublish(publish);
        }
        self.switch.remove_port(id);
        self.ready.retain(|p| *p != id);
        let io = self.ports.remove(&id)?;
        let raw = io.tap.as_raw_fd();
        let _ = self.poll.registry().deregister(&mut SourceFd(&raw));
        Some(io.tap)
    }

    fn read_turn(&mut self, port: PortId, now: Instant) -> Turn {
        let mut turn = Turn::MoreQueued;
        for _ in 0..IO_LOOP_BOUND {
            if self.batch.is_full() {
                self.flush_writes();
            }
            let Some(io) = self.ports.get(&port) else {
                turn = Turn::Drained;
                break;
            };
            let len = match io.tap.recv(self.batch.buffer()) {
                Ok(len) => len,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    turn = Turn::Drained;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    turn = Turn::DeviceLost(e);
                    break;
                }
            };
            self.switch_frame(port, len, now);
            self.batch.keep();
        }
        self.flush_writes();
        turn
    }

    /// Perform the queued writes and count their outcomes; send the
    /// tunnel's gathered datagrams.
    fn flush_writes(&mut self) {
        if let Some(tunnel) = self.tunnel.as_mut() {
            let sent = tunnel.flush();
            self.tunnel_counters.tx.fetch_add(sent, Ordering::Relaxed);
        }
        for result in self.batch.flush() {
            let Some(io) = self.ports.get(&result.port) else {
                continue;
            };
            if result.ok {
                io.counters.count_tx(result.len - VNET_HDR_LEN);
            } else {
                io.counters.count_drop(DropReason::EgressFailed);
            }
        }
    }

    fn queue_write(&mut self, egress: PortId, len: usize) {
        if let Some(io) = self.ports.get(&egress) {
            self.batch.push(egress, io.tap.as_raw_fd(), len);
        } else if let (Some(vtep), Some(tunnel)) = (self.vteps.get(&egress), self.tunnel.as_mut()) {
            let frame = self.batch.current(len);
            let sent = tunnel_send(tunnel, vtep, frame);
            self.tunnel_counters.tx.fetch_add(sent, Ordering::Relaxed);
        }
    }

    fn switch_frame(&mut self, ingress: PortId, len: usize, now: Instant) {
        let counters = match (self.ports.get(&ingress), self.vteps.get(&ingress)) {
            (Some(io), _) => &io.counters,
            (None, Some(vtep)) => &vtep.counters,
            (None, None) => return,
        };
        if len < VNET_HDR_LEN {
            counters.count_drop(DropReason::Truncated);
            return;
        }
        counters.count_rx(len - VNET_HDR_LEN);
        let decision = {
            let frame = &self.batch.current(len)[VNET_HDR_LEN..];
            self.switch.handle_frame(now, ingress, frame)
        };
        match decision {
            Decision::Forward(egress) => self.queue_write(egress, len),
            Decision::Flood => {
                let mut ports = std::mem::take(&mut self.flood_scratch);
                ports.clear();
                ports.extend(
                    self.switch
                        .flood_ports(ingress)
                        .iter()
                        .filter(|p| **p != ingress),
                );
                for &egress in &ports {
                    self.queue_write(egress, len);
                }
                self.flood_scratch = ports;
            }
            Decision::ToGateway => {
                let frame_with_header = self.batch.current(len);
                let frame = &frame_with_header[VNET_HDR_LEN..];
                let (header, body) = self.reply.split_at_mut(VNET_HDR_LEN);
                match self.switch.gateway_reply(ingress, frame, body) {
                    Ok(reply_len) => {
                        header.copy_from_slice(&vnet::EMPTY);
                        send_to(
                            &self.ports,
                            ingress,
                            &self.reply[..VNET_HDR_LEN + reply_len],
                        );
                    }
                    Err(DropReason::NoRoute) => {
                        let mut header = [0u8; VNET_HDR_LEN];
                        header.copy_from_slice(&frame_with_header[..VNET_HDR_LEN]);
                        let result = to_services(
                            &mut self.switch,
                            &mut self.reply,
                            now,
                            ingress,
                            &header,
                            frame,
                        );
                        if let Err(reason) = result {
                            tracing::debug!(
                                port = ingress.0,
                                reason = reason.as_str(),
                                "gateway drop"
                            );
                            count_drop(&self.ports, ingress, reason);
                        }
                    }
                    Err(reason) => {
                        tracing::debug!(port = ingress.0, reason = reason.as_str(), "gateway drop");
                        count_drop(&self.ports, ingress, reason);
                    }
                }
            }
            Decision::Drop(reason) => {
                tracing::debug!(port = ingress.0, reason = reason.as_str(), "drop");
                count_drop(&self.ports, ingress, reason);
            }
        }
    }
}

/// Hand a frame to the gateway services. TCP segments go whole, GSO or
/// not: the TCP relay's stack takes 64 KiB segments and, like every
/// consumer behind the gateway, reads payloads without checking the
/// checksums a local TAP leaves partial. Only UDP GSO segments (USO) are
/// cut into datagrams first.
fn to_services(
    switch: &mut Switch,
    scratch: &mut [u8],
    now: Instant,
    ingress: PortId,
    header: &[u8; VNET_HDR_LEN],
    frame: &[u8],
) -> Result<(), DropReason> {
    let vnet = VnetHeader::new_checked(&header[..]).map_err(|_| DropReason::Truncated)?;
    if !vnet.is_gso() || matches!(vnet.gso_type(), vnet::GSO_TCPV4 | vnet::GSO_TCPV6) {
        return switch.gateway_services(now, ingress, frame);
    }
    let mut result = Ok(());
    gso::segment(&vnet, frame, scratch, |segment| {
        if let Err(reason) = switch.gateway_services(now, ingress, segment) {
            result = Err(reason);
        }
    })
    .map_err(|_| DropReason::Malformed)?;
    result
}

/// A NAT flow's host socket: a connected UDP socket, or a connected
/// unprivileged ICMP echo ("ping") socket.
struct NatSocket {
    fd: std::os::fd::OwnedFd,
    token: Option<Token>,
}

impl NatSocket {
    fn open(proto: NatProto, remote: SocketAddr) -> io::Result<NatSocket> {
        use nix::sys::socket::{
            connect, socket, AddressFamily, SockFlag, SockProtocol, SockType, SockaddrStorage,
        };
        let family = if remote.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        let protocol = match (proto, remote.is_ipv4()) {
            (NatProto::Udp, _) => SockProtocol::Udp,
            (NatProto::IcmpEcho, true) => SockProtocol::Icmp,
            (NatProto::IcmpEcho, false) => SockProtocol::IcmpV6,
        };
        let fd = socket(
            family,
            SockType::Datagram,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            protocol,
        )?;
        connect(fd.as_raw_fd(), &SockaddrStorage::from(remote))?;
        Ok(NatSocket { fd, token: None })
    }

    fn raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }

    fn send(&self, data: &[u8]) -> io::Result<usize> {
        nix::sys::socket::send(
            self.fd.as_raw_fd(),
            data,
            nix::sys::socket::MsgFlags::empty(),
        )
        .map_err(io::Error::from)
    }

    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        nix::sys::socket::recv(
            self.fd.as_raw_fd(),
            buf,
            nix::sys::socket::MsgFlags::empty(),
        )
        .map_err(io::Error::from)
    }
}

/// Queue a frame (with its virtio header) for a tunnel port: segmented
/// and checksummed first where it is a GSO segment or has a partial
/// checksum (the far side is a wire, not a TAP). Datagrams gather in
/// `TunnelIo::datagram` for one UDP GSO send (`UDP_SEGMENT`) of
/// equal-sized datagrams, across frames: a 64 KiB segment is ~45
/// datagrams and one send takes at most 44, so sending per frame would
/// make every other send a small remainder. The gathered datagrams go out
/// when the next one cannot join them (another peer or source socket, a
/// size change, the kernel's limits) and at [`TunnelIo::flush`], which the
/// loop calls whenever it flushes its writes. Returns the datagrams sent.
fn tunnel_send(tunnel: &mut TunnelIo, vtep: &Vtep, frame_with_header: &[u8]) -> u64 {
    let Some((header, frame)) = frame_with_header.split_at_checked(VNET_HDR_LEN) else {
        return 0;
    };
    let Ok(vnet) = VnetHeader::new_checked(header) else {
        return 0;
    };
    // One flow, one source port: chosen by the whole frame's flow.
    let sender = if tunnel.senders.is_empty() {
        None
    } else {
        Some(usize::from(tunnel.codec.flow_hash(frame)) % tunnel.senders.len())
    };
    let mut sink = TunnelSink {
        tunnel,
        vtep,
        sender,
        sent: 0,
    };
    if gso::segment_into(&vnet, frame, &mut sink).is_err() {
        vtep.counters.count_drop(DropReason::Malformed);
    }
    sink.sent
}

/// Segments (or a whole frame) built straight into the tunnel's datagram
/// buffer, behind their tunnel header: the payload is copied once, from
/// the frame read to the buffer the kernel sends from.
struct TunnelSink<'t> {
    tunnel: &'t mut TunnelIo,
    vtep: &'t Vtep,
    sender: Option<usize>,
    /// Datagrams that sends made to find room put on the wire.
    sent: u64,
}

impl gso::SegmentSink for TunnelSink<'_> {
    fn space(&mut self, len: usize) -> Option<&mut [u8]> {
        let (sent, space) = self.tunnel.reserve(self.vtep, self.sender, len);
        self.sent += sent;
        space
    }
}

/// Largest UDP GSO send: the kernel's limit on a UDP payload, and on the
/// number of segments.
const UDP_GSO_MAX_BYTES: usize = 65_000;
const UDP_GSO_MAX_SEGMENTS: usize = 64;

/// The datagrams gathered in `TunnelIo::datagram` for one UDP GSO send:
/// all of `size` bytes but the last, which may be shorter.
struct TunnelBatch {
    to: SocketAddr,
    /// Index into `TunnelIo::senders`; None sends from the tunnel socket.
    sender: Option<usize>,
    /// The tunnel port's counters, for a failed send.
    counters: Arc<PortCounters>,
    size: usize,
    count: usize,
    /// The last datagram was short: nothing may follow it in this send.
    closed: bool,
}

impl TunnelIo {
    /// Add one datagram for `vtep`: the codec's header, then `inner_len`
    /// bytes of space for the inner frame, which the caller fills. What
    /// was gathered is sent first if the datagram cannot join it. Returns
    /// the datagrams that sending put on the wire, and the space.
    fn reserve(
        &mut self,
        vtep: &Vtep,
        sender: Option<usize>,
        inner_len: usize,
    ) -> (u64, Option<&mut [u8]>) {
        let header_len = self.codec.header_len();
        let len = header_len + inner_len;
        if len > self.datagram.len() {
            return (0, None);
        }
        let joins = self.batch.as_ref().is_some_and(|batch| {
            batch.to == vtep.addr
                && batch.sender == sender
                && !batch.closed
                && len <= batch.size
                && batch.count < UDP_GSO_MAX_SEGMENTS
                && self.gathered + len <= UDP_GSO_MAX_BYTES
                && self.gso
        });
        let mut sent = 0;
        if !joins {
            sent = self.flush();
            self.batch = Some(TunnelBatch {
                to: vtep.addr,
                sender,
                counters: Arc::clone(&vtep.counters),
                size: len,
                count: 0,
                closed: false,
            });
        }
        if let Some(batch) = self.batch.as_mut() {
            batch.closed = len < batch.size;
            batch.count += 1;
        }
        vtep.counters.count_tx(inner_len);
        let at = self.gathered;
        self.gathered += len;
        let space = self.datagram.get_mut(at..at + len).map(|datagram| {
            let (header, inner) = datagram.split_at_mut(header_len);
            self.codec.write_header(vtep.vni, header);
            inner
        });
        (sent, space)
    }

    /// Send the gathered datagrams; returns how many went out.
    fn flush(&mut self) -> u64 {
        let Some(batch) = self.batch.take() else {
            return 0;
        };
        let socket = batch.sender.and_then(|i| self.senders.get(i));
        let fd = socket.map_or_else(|| self.socket.as_raw_fd(), AsRawFd::as_raw_fd);
        let address = nix::sys::socket::SockaddrStorage::from(batch.to);
        let gathered = &self.datagram[..self.gathered.min(self.datagram.len())];
        let data = [io::IoSlice::new(gathered)];
        let gso_size = u16::try_from(batch.size).unwrap_or(u16::MAX);
        let segments = [nix::sys::socket::ControlMessage::UdpGsoSegments(&gso_size)];
        let control: &[_] = if batch.count > 1 { &segments } else { &[] };
        let flags = nix::sys::socket::MsgFlags::empty();
        let mut sent = 0;
        match nix::sys::socket::sendmsg(fd, &data, control, flags, Some(&address)) {
            Ok(_) => sent = batch.count as u64,
            Err(e @ (nix::errno::Errno::EIO | nix::errno::Errno::EINVAL)) if batch.count > 1 => {
                // No UDP GSO here (old kernel, device without it): one
                // datagram per send from now on.
                tracing::info!(error = %e, "tunnel: no UDP GSO, sending datagrams one by one");
                self.gso = false;
                for datagram in gathered.chunks(batch.size) {
                    let data = [io::IoSlice::new(datagram)];
                    if nix::sys::socket::sendmsg(fd, &data, &[], flags, Some(&address)).is_ok() {
                        sent += 1;
                    } else {
                        batch.counters.count_drop(DropReason::EgressFailed);
                    }
                }
            }
            Err(e) => {
                tracing::trace!(addr = %batch.to, error = %e, "tunnel send");
                batch.counters.count_drop(DropReason::EgressFailed);
            }
        }
        self.gathered = 0;
        sent
    }
}

/// Largest coalesced receive: a UDP GRO run is at most 64 KiB.
const TUNNEL_RX_BUFFER: usize = 65_536;

/// Receive from the tunnel socket: bytes, sender, and the size of each
/// datagram when the kernel coalesced several (UDP GRO), else 0.
fn receive_coalesced(socket: &UdpSocket, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, usize)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, SockaddrStorage};
    let mut iov = [io::IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!(i32);
    let message = recvmsg::<SockaddrStorage>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::empty(),
    )
    .map_err(io::Error::from)?;
    let mut segment = 0;
    if let Ok(cmsgs) = message.cmsgs() {
        for cmsg in cmsgs {
            if let ControlMessageOwned::UdpGroSegments(size) = cmsg {
                segment = usize::try_from(size).unwrap_or(0);
            }
        }
    }
    let from = message
        .address
        .and_then(|a| {
            a.as_sockaddr_in()
                .map(|v4| SocketAddr::from(std::net::SocketAddrV4::from(*v4)))
                .or_else(|| {
                    a.as_sockaddr_in6()
                        .map(|v6| SocketAddr::from(std::net::SocketAddrV6::from(*v6)))
                })
        })
        .ok_or_else(|| io::Error::other("tunnel datagram without a sender address"))?;
    Ok((message.bytes, from, segment))
}

/// Bytes of kernel buffer for the tunnel's sockets: a burst of 64 KiB
/// frames from several sandboxes is hundreds of datagrams, more than the
/// default ~208 KiB holds while the data-path thread waits for a CPU.
const TUNNEL_SOCKET_BUFFER: usize = 8 << 20;

/// Give a tunnel socket a large receive (or send) buffer: the forced size
/// where the daemon may (`CAP_NET_ADMIN`), else as much as
/// `net.core.rmem_max`/`wmem_max` allow.
fn set_buffer(socket: &impl AsRawFd, receive: bool) {
    use nix::sys::socket::{setsockopt, sockopt};
    // SAFETY: the fd is open for the duration of this call (borrowed from
    // the socket the caller holds).
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(socket.as_raw_fd()) };
    let done = if receive {
        setsockopt(&fd, sockopt::RcvBufForce, &TUNNEL_SOCKET_BUFFER)
            .or_else(|_| setsockopt(&fd, sockopt::RcvBuf, &TUNNEL_SOCKET_BUFFER))
    } else {
        setsockopt(&fd, sockopt::SndBufForce, &TUNNEL_SOCKET_BUFFER)
            .or_else(|_| setsockopt(&fd, sockopt::SndBuf, &TUNNEL_SOCKET_BUFFER))
    };
    if let Err(e) = done {
        tracing::debug!(error = %e, "tunnel socket buffer");
    }
}

/// What a failed connect means for the sandbox: refused (a reset) or
/// unreachable (ICMP).
fn connect_failure(e: &io::Error) -> ConnectFailure {
    if e.raw_os_error() == Some(libc::ECONNREFUSED) {
        ConnectFailure::Refused
    } else {
        ConnectFailure::Unreachable
    }
}

fn upstream_socket(poll: &Poll, bind: &str, token: Token) -> Option<UdpSocket> {
    let addr: SocketAddr = bind.parse().ok()?;
    let mut socket = match UdpSocket::bind(addr) {
        Ok(socket) => socket,
        Err(e) => {
            tracing::debug!(%addr, error = %e, "no DNS upstream socket for this family");
            return None;
        }
    };
    poll.registry()
        .register(&mut socket, token, Interest::READABLE)
        .ok()?;
    Some(socket)
}

/// Count a dropped frame on its ingress port (drops are off the hot path:
/// one more lookup is fine).
fn count_drop(ports: &FxHashMap<PortId, PortIo>, port: PortId, reason: DropReason) {
    if let Some(io) = ports.get(&port) {
        io.counters.count_drop(reason);
    }
}

/// Write a frame of the gateway to a port with its virtio header (empty,
/// or GSO for a large TCP segment), header and frame in one `writev`.
fn send_parts_to(
    ports: &FxHashMap<PortId, PortIo>,
    egress: PortId,
    header: &[u8; VNET_HDR_LEN],
    frame: &[u8],
) {
    let Some(io) = ports.get(&egress) else {
        return;
    };
    match io.tap.send_parts(header, frame) {
        Ok(_) => io.counters.count_tx(frame.len()),
        Err(e) => {
            tracing::trace!(port = egress.0, error = %e, "TAP write failed");
            io.counters.count_drop(DropReason::EgressFailed);
        }
    }
}

fn send_to(ports: &FxHashMap<PortId, PortIo>, egress: PortId, frame_with_header: &[u8]) {
    if let Some((header, frame)) = frame_with_header.split_first_chunk::<VNET_HDR_LEN>() {
        send_parts_to(ports, egress, header, frame);
    }
}
