//! TCP through the gateway: sandbox connections to the outside, relayed
//! through host sockets, and connections from published host ports into
//! sandboxes. Sans-IO: frames in, socket actions out; the driver owns the
//! sockets and lends them to the core as read and write closures.
//!
//! # Theory of operation
//!
//! Each network has one userspace TCP stack (smoltcp) at the gateway's MAC,
//! in "any IP" mode: it terminates TCP for every destination address, so a
//! sandbox's connection to 192.0.2.7:443 ends here and continues from a
//! host socket connected to 192.0.2.7:443. The sandbox talks to a real TCP
//! peer with real windows; the remote talks to the host's kernel.
//!
//! Outbound, step by step:
//! 1. A SYN for an unknown 4-tuple arrives ([`TcpNat::handle_frame`]). It
//!    is held, not given to the stack, and the driver is asked to connect
//!    a non-blocking host socket ([`TcpAction::Connect`]). Retransmitted
//!    SYNs meanwhile are dropped.
//! 2. When the host connect succeeds ([`TcpNat::handle_connected`]), a
//!    socket listening on exactly that destination is added to the stack
//!    and the held SYN is fed to it: the sandbox gets its SYN-ACK only once
//!    the remote has accepted. A refused connect answers the held SYN with
//!    a RST, an unreachable remote with ICMP unreachable
//!    ([`TcpNat::handle_connect_failed`]): an immediate error in the
//!    sandbox, never a hang.
//! 3. Data: what the sandbox sends waits in the stack's receive buffer
//!    until the driver writes it to the host socket
//!    ([`TcpNat::send_to_host`], after a [`TcpAction::Send`]); what the
//!    host socket has is read straight into the stack's send buffer
//!    ([`TcpNat::receive_from_host`]). Neither side buffers more than the
//!    stack's fixed buffers: a full receive buffer closes the sandbox's
//!    window, a full send buffer stops reading the host socket (the
//!    kernel's window then closes toward the remote); when room returns
//!    the driver is told ([`TcpAction::Receive`]).
//! 4. Closing: the sandbox's FIN becomes `shutdown(SHUT_WR)` on the host
//!    socket once its data is written ([`TcpAction::ShutdownWrite`]); the
//!    host's end of stream becomes the stack's FIN after the data queued
//!    before it. When both directions are closed the flow ends
//!    ([`TcpAction::Close`]); a reset on either side resets the other
//!    ([`TcpAction::Reset`], [`TcpNat::host_failed`]).
//!
//! Inbound ([`TcpNat::accept_inbound`]): the driver accepted a connection
//! on a published port; the stack connects to the sandbox *from the
//! client's own address and port*, so the sandbox's server sees who is
//! calling. The sandbox answers through its default route, the gateway,
//! and the 4-tuple leads those frames back here. Loopback clients are shown
//! as the gateway (a sandbox cannot route to 127.0.0.1).
//!
//! Offloads: frames come in as the sandbox's kernel sent them, GSO super
//! frames of up to 64 KiB with partial checksums included: the stack takes
//! them whole (its MTU is 64 KiB and it does not verify checksums from
//! local TAPs), so bulk uploads cost one stack pass per 64 KiB, not per
//! 1500 bytes. Toward the sandbox the stack sends segments of the
//! sandbox's MSS, so a network with a large MTU gets large segments.
//!
//! Neighbours: before each IPv4 frame, a synthetic ARP request from the
//! frame's sender teaches the stack the sandbox's MAC (as in
//! [`crate::dns::tcp`]); an inbound connection teaches it the target's MAC
//! the same way before its SYN.
//!
//! Capacities: at most `max_flows` flows (all networks), shared out by
//! [`crate::flow_shares`] (a sandbox a quarter, a network half); a SYN
//! over a bound is answered with RST and counted by reason. The queues of
//! frames are bounded; extra frames are dropped and TCP retransmits.
//!
//! Memory, bounded by design ([`buffers`]): each flow's stack socket has a
//! receive and a send buffer of the same size, chosen when the flow opens
//! from a budget of [`DEFAULT_BUFFER_BUDGET`] (256 MiB) for all flows
//! together: the first flows get [`DEFAULT_BUFFER`] (1 MiB) each way, and
//! as the budget fills new flows get smaller buffers, down to
//! [`MIN_BUFFER`] (16 KiB), which is always kept in reserve for every flow
//! the table may still take (4,096 x 2 x 16 KiB = 128 MiB). So the
//! buffers of a full table never exceed 256 MiB at the default limits,
//! whatever the sandboxes do; they are freed when their flow ends
//! ([`TcpNat::buffer_bytes`] tells the driver how much is held, so that it
//! can hand freed memory back to the OS after a burst).
//!
//! Timers ([`timers`]), so that no flow outlives both its ends: a host
//! connect, or a handshake with the sandbox, that does not complete within
//! [`CONNECT_TIMEOUT`] (20 s) is given up (ICMP unreachable or a reset to
//! the sandbox, the host socket closed); a flow with one direction closed
//! and nothing moving for [`HALF_CLOSED_IDLE`] (120 s, conntrack's
//! `fin_wait`) is reset on both sides; an established flow idle for
//! [`ESTABLISHED_IDLE`] (2 h 4 min, the least RFC 5382 REQ-5 allows a NAT)
//! likewise. Activity is a segment with data or a flag from the sandbox,
//! or bytes moved on the host socket. A sandbox that resets a flow (also
//! while its host connect is pending, or by answering the stack's SYN-ACK
//! with a reset because it gave up) ends the host socket at once. Resets
//! get lost (a sandbox that aborts a thousand connections at once
//! overflows its TAP's queue), so the stack also probes a sandbox quiet
//! for [`SANDBOX_KEEPALIVE`] (5 s; a keepalive on the local TAP): a
//! sandbox whose socket is gone answers with a reset, one that is gone
//! altogether answers nothing and the flow ends after
//! [`SANDBOX_TIMEOUT`] (60 s).

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use etherparse::TransportSlice;
use rustc_hash::FxHashMap;
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use smoltcp::wire::IpListenEndpoint;

use crate::flow_shares::{FlowShares, RefusalCounters, ShareKey};
use crate::nat::FlowId;
use crate::smol_device::{arp_request, OneFrame};
use segments::{raise_mss, reset_for, unreachable_for};
use stack::{new_socket, Stack, MAX_QUEUED_FRAMES};
pub use tuple::shown_client;
use tuple::{gso_size_for, tcp_tuple, Tuple};
use weft_vswitch::wire::ethernet::MacAddr;
use weft_vswitch::wire::packet::GatewayFrame;
use weft_vswitch::DropReason;
use weft_vswitch::GatewayConfig;
use weft_vswitch::{NetworkId, PortId};

/// Flows at once, all networks together.
pub const DEFAULT_MAX_FLOWS: usize = 4096;
/// Receive and send buffer of each flow while the budget allows: enough
/// window for a few gigabits per second at sub-millisecond round trips.
pub const DEFAULT_BUFFER: usize = 1 << 20;
/// The smallest receive and send buffer of a flow, kept in reserve for
/// every flow the table may still take: a window of a dozen 1500-byte
/// segments.
pub const MIN_BUFFER: usize = 16 << 10;
/// Bytes of stack buffers all flows together may hold.
pub const DEFAULT_BUFFER_BUDGET: usize = 256 << 20;
/// TCP flow ids start here, apart from the UDP/ICMP NAT's ids.
pub const FLOW_ID_BASE: u64 = 1 << 36;
/// A host connect, or a handshake with the sandbox, that takes longer is
/// given up (Linux gives a connect ~2 minutes of SYN retries; a sandbox
/// that waits that long holds an fd and a table entry for nothing).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// A flow with one direction closed and nothing moving this long is reset
/// (Linux conntrack's `nf_conntrack_tcp_timeout_fin_wait`).
pub const HALF_CLOSED_IDLE: Duration = Duration::from_secs(120);
/// An established flow idle this long is reset: 2 hours 4 minutes, the
/// least RFC 5382 (REQ-5) allows a NAT, so that TCP keepalives (2 h by
/// default) keep a quiet flow alive.
pub const ESTABLISHED_IDLE: Duration = Duration::from_secs(2 * 3600 + 4 * 60);

/// A flow quiet for this long is probed toward the sandbox (a keepalive
/// on the local TAP: one small frame and its answer).
pub const SANDBOX_KEEPALIVE: Duration = Duration::from_secs(5);
/// A sandbox that answers nothing (no ACK, not even to keepalives) for
/// this long is gone: its flow ends.
pub const SANDBOX_TIMEOUT: Duration = Duration::from_secs(60);

fn smol_duration(d: Duration) -> smoltcp::time::Duration {
    smoltcp::time::Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Limits and timers of the TCP NAT.
#[derive(Debug, Clone)]
pub struct TcpNatConfig {
    /// Flows at once.
    pub max_flows: usize,
    /// Largest receive and send buffer of a flow.
    pub max_buffer: usize,
    /// Smallest receive and send buffer of a flow.
    pub min_buffer: usize,
    /// Bytes of buffers all flows together may hold.
    pub buffer_budget: usize,
    /// See [`CONNECT_TIMEOUT`].
    pub connect_timeout: Duration,
    /// See [`HALF_CLOSED_IDLE`].
    pub half_closed_idle: Duration,
    /// See [`ESTABLISHED_IDLE`].
    pub established_idle: Duration,
}

impl Default for TcpNatConfig {
    fn default() -> Self {
        TcpNatConfig {
            max_flows: DEFAULT_MAX_FLOWS,
            max_buffer: DEFAULT_BUFFER,
            min_buffer: MIN_BUFFER,
            buffer_budget: DEFAULT_BUFFER_BUDGET,
            connect_timeout: CONNECT_TIMEOUT,
            half_closed_idle: HALF_CLOSED_IDLE,
            established_idle: ESTABLISHED_IDLE,
        }
    }
}

/// What the driver is to do with a flow's host socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpAction {
    /// Open a non-blocking TCP socket connected to `remote`; report with
    /// [`TcpNat::handle_connected`] or [`TcpNat::handle_connect_failed`].
    Connect {
        /// The flow.
        flow: FlowId,
        /// Where to.
        remote: SocketAddr,
    },
    /// The sandbox sent data: call [`TcpNat::send_to_host`] when the socket
    /// is writable.
    Send {
        /// The flow.
        flow: FlowId,
    },
    /// The stack has room again: call [`TcpNat::receive_from_host`] if the
    /// socket has data.
    Receive {
        /// The flow.
        flow: FlowId,
    },
    /// The sandbox closed its direction: `shutdown(SHUT_WR)`.
    ShutdownWrite {
        /// The flow.
        flow: FlowId,
    },
    /// The flow ended cleanly: close the socket.
    Close {
        /// The flow.
        flow: FlowId,
    },
    /// The sandbox reset the flow (or it timed out): close the socket with
    /// a reset (`SO_LINGER` 0).
    Reset {
        /// The flow.
        flow: FlowId,
    },
}

/// Why a host connect failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFailure {
    /// The remote answered with a reset (`ECONNREFUSED`).
    Refused,
    /// No route, host or network unreachable, or the connect timed out.
    Unreachable,
}

/// How reading the host socket into the stack ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostRead {
    /// The socket has nothing more now (`EAGAIN`).
    Drained,
    /// The stack's buffer is full; a [`TcpAction::Receive`] follows when
    /// there is room.
    StackFull,
    /// The remote closed its direction.
    Eof,
    /// The flow is gone or the socket failed (the flow was reset).
    Gone,
}

/// How writing to the host socket ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostWrite {
    /// Everything the sandbox sent so far is written.
    Done,
    /// The socket is full (`EAGAIN`): call again when it is writable.
    Blocked,
    /// The flow is gone or the socket failed (the flow was reset).
    Gone,
}

/// Counters of the TCP NAT.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpNatCounters {
    /// Outbound flows asked of the host.
    pub connects: u64,
    /// Host connects refused or unreachable.
    pub connect_failures: u64,
    /// Inbound flows from published ports.
    pub inbound: u64,
    /// New flows refused (table full, a share reached), reset at once.
    pub flows_refused: u64,
    /// Flows ended by a timer (connect, half-closed or established idle).
    pub flows_timed_out: u64,
    /// Bytes from sandboxes to host sockets.
    pub bytes_out: u64,
    /// Bytes from host sockets to sandboxes.
    pub bytes_in: u64,
}

enum Phase {
    /// Outbound: the host socket is connecting; the sandbox's SYN waits.
    Connecting { syn: Vec<u8> },
    /// The stack's socket carries the flow.
    Open { handle: SocketHandle },
}

struct Flow {
    tuple: Tuple,
    /// Whose share the flow counts in.
    share: ShareKey,
    phase: Phase,
    /// When a segment from the sandbox or bytes on the host socket last
    /// moved (the idle timers count from here).
    last_active: Instant,
    /// Bytes of each of the stack socket's two buffers (0 while
    /// connecting).
    buffer: usize,
    /// A [`TcpAction::Send`] is out and not yet answered.
    send_announced: bool,
    /// The host socket stopped being read because the stack was full.
    wants_host_data: bool,
    /// The host's direction ended (FIN queued to the sandbox).
    host_eof: bool,
    /// The sandbox's direction ended and was passed on.
    shutdown_sent: bool,
    /// The stack's socket has been past the handshake (so a return to
    /// `Listen` means a reset, not a new flow).
    synchronized: bool,
    /// The MSS the sandbox announced (0: none seen). The stack is told a
    /// 64 KiB one instead, and its larger segments go to the sandbox as
    /// GSO frames of this size.
    sandbox_mss: u16,
}

/// See the module header.
pub struct TcpNat {
    config: TcpNatConfig,
    epoch: Instant,
    stacks: FxHashMap<NetworkId, Stack>,
    flows: FxHashMap<FlowId, Flow>,
    by_tuple: FxHashMap<Tuple, FlowId>,
    actions: VecDeque<TcpAction>,
    /// Frames for networks, with the GSO segment size of a TCP segment
    /// larger than the sandbox's MSS (0: an ordinary frame).
    frames: VecDeque<(NetworkId, Vec<u8>, u16)>,
    next_flow: u64,
    seed: u64,
    counters: TcpNatCounters,
    shares: FlowShares,
    /// Bytes of stack buffers the flows hold now, and how many flows hold
    /// them.
    buffer_bytes: usize,
    buffered_flows: usize,
    /// When the timers next look at the flows.
    next_sweep: Option<Instant>,
}

impl TcpNat {
    /// A TCP NAT with these limits; `seed` seeds initial sequence numbers.
    pub fn new(config: TcpNatConfig, now: Instant, seed: u64) -> Self {
        TcpNat {
            epoch: now,
            stacks: FxHashMap::default(),
            flows: FxHashMap::default(),
            by_tuple: FxHashMap::default(),
            actions: VecDeque::new(),
            frames: VecDeque::new(),
            next_flow: FLOW_ID_BASE,
            seed,
            counters: TcpNatCounters::default(),
            shares: FlowShares::new(config.max_flows),
            buffer_bytes: 0,
            buffered_flows: 0,
            next_sweep: None,
            config,
        }
    }

    fn smol_now(&self, now: Instant) -> smoltcp::time::Instant {
        let micros = now.saturating_duration_since(self.epoch).as_micros();
        smoltcp::time::Instant::from_micros(i64::try_from(micros).unwrap_or(i64::MAX))
    }

    fn stack(&mut self, network: NetworkId, gateway: &GatewayConfig) -> &mut Stack {
        let seed = self.seed ^ u64::from(network.0).rotate_left(17);
        self.stacks
            .entry(network)
            .or_insert_with(|| Stack::new(gateway, seed))
    }

    /// A TCP frame a sandbox of `network` sent through the gateway from
    /// switch port `ingress`. `open` says whether a SYN may open a new
    /// flow, and where that flow's host socket connects (the destination
    /// itself, or the host's loopback for the gateway's address).
    ///
    /// # Errors
    ///
    /// [`DropReason::Malformed`] for a frame that is not TCP over IP,
    /// [`DropReason::NatFull`] for a SYN over the table's or a share's
    /// bound (answered with a reset).
    pub fn handle_frame(
        &mut self,
        now: Instant,
        (network, ingress): (NetworkId, PortId),
        gateway: &GatewayConfig,
        parsed: &GatewayFrame<'_>,
        open: Option<SocketAddr>,
    ) -> Result<(), DropReason> {
        let packet = parsed.packet()?;
        let frame = parsed.bytes();
        let tuple = tcp_tuple(network, packet).ok_or(DropReason::Malformed)?;
        let Some(TransportSlice::Tcp(tcp)) = &packet.transport else {
            return Err(DropReason::Malformed);
        };
        let is_syn = tcp.syn() && !tcp.ack() && !tcp.rst();
        match self.by_tuple.get(&tuple).copied() {
            Some(flow_id) => {
                let Some(flow) = self.flows.get_mut(&flow_id) else {
                    return Ok(());
                };
                // Activity: data or a flag. Pure ACKs are not (the
                // stack's keepalive probes get them as answers).
                if !tcp.payload().is_empty() || tcp.syn() || tcp.fin() || tcp.rst() {
                    flow.last_active = now;
                }
                match &mut flow.phase {
                    // The sandbox gave up while the host connects: so
                    // does the host socket.
                    Phase::Connecting { .. } if tcp.rst() => {
                        self.forget(flow_id);
                        self.actions.push_back(TcpAction::Close { flow: flow_id });
                        Ok(())
                    }
                    // A retransmitted SYN: the first one is still held.
                    Phase::Connecting { syn } => {
                        if is_syn {
                            *syn = frame.to_vec();
                        }
                        Ok(())
                    }
                    Phase::Open { .. } => {
                        if tcp.syn() {
                            // The sandbox's SYN-ACK of an inbound flow.
                            if let Some((raised, mss)) = raise_mss(frame) {
                                flow.sandbox_mss = mss;
                                self.feed(now, network, gateway, &raised);
                                return Ok(());
                            }
                        }
                        self.feed(now, network, gateway, frame);
                        Ok(())
                    }
                }
            }
            None if is_syn => match open {
                Some(remote) => {
                    let share = ShareKey {
                        network,
                        sandbox: Some(ingress),
                    };
                    if self.shares.admit(share).is_err() {
                        self.counters.flows_refused += 1;
                        self.answer_refused(network, frame);
                        return Err(DropReason::NatFull);
                    }
                    self.stack(network, gateway);
                    let phase = Phase::Connecting {
                        syn: frame.to_vec(),
                    };
                    let flow = self.new_flow(now, tuple, share, phase);
                    self.counters.connects += 1;
                    self.actions.push_back(TcpAction::Connect { flow, remote });
                    Ok(())
                }
                None => {
                    self.answer_refused(network, frame);
                    Ok(())
                }
            },
            // Not ours (a flow that ended, a daemon restart): the stack
            // answers with a reset.
            None => {
                if !tcp.rst() {
                    self.answer_refused(network, frame);
                }
                Ok(())
            }
        }
    }

    fn new_flow(&mut self, now: Instant, tuple: Tuple, share: ShareKey, phase: Phase) -> FlowId {
        let flow = FlowId(self.next_flow);
        self.next_flow += 1;
        self.arm_sweep(now);
        self.by_tuple.insert(tuple, flow);
        if let Phase::Open { .. } = phase {
            if let Some(stack) = self.stacks.get_mut(&tuple.network) {
                stack.flows.push(flow);
            }
        }
        self.flows.insert(
            flow,
            Flow {
                tuple,
                share,
                phase,
                last_active: now,
                buffer: 0,
                send_announced: false,
                wants_host_data: false,
                host_eof: false,
                shutdown_sent: false,
                synchronized: false,
                sandbox_mss: 0,
            },
        );
        flow
    }

    /// The host socket of an outbound flow connected: the sandbox's SYN
    /// goes to the stack now.
    pub fn handle_connected(&mut self, now: Instant, flow_id: FlowId) {
        let Some(flow) = self.flows.get_mut(&flow_id) else {
            return;
        };
        let Phase::Connecting { syn } = &mut flow.phase else {
            return;
        };
        let syn = std::mem::take(syn);
        let tuple = flow.tuple;
        flow.last_active = now;
        if !self.stacks.contains_key(&tuple.network) {
            self.forget(flow_id);
            self.actions.push_back(TcpAction::Reset { flow: flow_id });
            return;
        }
        let buffer = self.take_buffer();
        if let Some(flow) = self.flows.get_mut(&flow_id) {
            flow.buffer = buffer;
        }
        let Some(stack) = self.stacks.get_mut(&tuple.network) else {
            return;
        };
        let mut socket = new_socket(buffer);
        let endpoint = IpListenEndpoint {
            addr: Some(tuple.peer.ip().into()),
            port: tuple.peer.port(),
        };
        if socket.listen(endpoint).is_err() {
            self.forget(flow_id);
            self.actions.push_back(TcpAction::Reset { flow: flow_id });
            return;
        }
        let handle = stack.sockets.add(socket);
        stack.flows.push(flow_id);
        if let Some(flow) = self.flows.get_mut(&flow_id) {
            flow.phase = Phase::Open { handle };
        }
        let network = tuple.network;
        match raise_mss(&syn) {
            Some((raised, mss)) => {
                if let Some(flow) = self.flows.get_mut(&flow_id) {
                    flow.sandbox_mss = mss;
                }
                self.feed_raw(now, network, &raised);
            }
            None => self.feed_raw(now, network, &syn),
        }
    }

    /// The host connect of an outbound flow failed: the sandbox's SYN is
    /// answered with a reset or ICMP unreachable, and the flow forgotten.
    pub fn handle_connect_failed(&mut self, flow_id: FlowId, why: ConnectFailure) {
        let Some(flow) = self.flows.get(&flow_id) else {
            return;
        };
        let Phase::Connecting { syn } = &flow.phase else {
            return;
        };
        let network = flow.tuple.network;
        let answer = match why {
            ConnectFailure::Refused => reset_for(syn),
            ConnectFailure::Unreachable => unreachable_for(syn),
        };
        self.counters.connect_failures += 1;
        if let Some(frame) = answer {
            self.push_frame(network, frame);
        }
        self.forget(flow_id);
        self.actions.push_back(TcpAction::Close { flow: flow_id });
    }

    /// A connection accepted on a published port: open one from `client`
    /// to the sandbox at `target` (MAC `target_mac`). Returns the flow, or
    /// None when the table is full or the tuple is taken (the driver
    /// closes the connection).
    pub fn accept_inbound(
        &mut self,
        now: Instant,
        network: NetworkId,
        gateway: &GatewayConfig,
        client: SocketAddr,
        target: SocketAddr,
        target_mac: MacAddr,
    ) -> Option<FlowId> {
        let shown = shown_client(client, gateway)?;
        let tuple = Tuple {
            network,
            sandbox: target,
            peer: shown,
        };
        if self.by_tuple.contains_key(&tuple) {
            return None;
        }
        let share = ShareKey {
            network,
            sandbox: None,
        };
        if self.shares.admit(share).is_err() {
            self.counters.flows_refused += 1;
            return None;
        }
        let buffer = self.take_buffer();
        let epoch = self.epoch;
        let connect_timeout = self.config.connect_timeout;
        let stack = self.stack(network, gateway);
        let mut socket = new_socket(buffer);
        socket.set_timeout(Some(smol_duration(connect_timeout)));
        let remote = smoltcp::wire::IpEndpoint::new(target.ip().into(), target.port());
        let local = smoltcp::wire::IpEndpoint::new(shown.ip().into(), shown.port());
        if socket
            .connect(stack.iface.context(), remote, local)
            .is_err()
        {
            self.shares.release(share);
            self.return_buffer(buffer);
            return None;
        }
        if let (IpAddr::V4(target_v4), IpAddr::V4(_)) = (target.ip(), shown.ip()) {
            let arp = arp_request(
                target_mac,
                target_v4,
                stack.mac,
                stack.gateway_v4.unwrap_or(Ipv4Addr::UNSPECIFIED),
            );
            stack.learn(now, epoch, &arp);
        }
        let handle = stack.sockets.add(socket);
        let flow = self.new_flow(now, tuple, share, Phase::Open { handle });
        if let Some(f) = self.flows.get_mut(&flow) {
            f.buffer = buffer;
        }
        self.counters.inbound += 1;
        self.poll_stack(now, network);
        Some(flow)
    }

    /// The host socket of `flow` failed (reset by the remote, or an I/O
    /// error): the sandbox's connection is reset and the flow forgotten.
    pub fn host_failed(&mut self, now: Instant, flow_id: FlowId) {
        let Some((network, handle)) = self.open_flow(flow_id) else {
            self.forget(flow_id);
            return;
        };
        let sandbox = self.flows.get(&flow_id).map(|f| f.tuple.sandbox.ip());
        let epoch = self.epoch;
        if let Some(stack) = self.stacks.get_mut(&network) {
            if let Some(sandbox) = sandbox {
                stack.reteach(now, epoch, sandbox);
            }
            stack.sockets.get_mut::<tcp::Socket>(handle).abort();
        }
        // The reset leaves with this poll; then the socket is gone.
        self.poll_stack(now, network);
        self.forget(flow_id);
        self.actions.push_back(TcpAction::Close { flow: flow_id });
    }

    fn open_flow(&self, flow: FlowId) -> Option<(NetworkId, SocketHandle)> {
        let flow = self.flows.get(&flow)?;
        match flow.phase {
            Phase::Open { handle } => Some((flow.tuple.network, handle)),
            Phase::Connecting { .. } => None,
        }
    }

    fn forget(&mut self, flow_id: FlowId) {
        let Some(flow) = self.flows.remove(&flow_id) else {
            return;
        };
        self.by_tuple.remove(&flow.tuple);
        self.shares.release(flow.share);
        self.return_buffer(flow.buffer);
        if let Some(stack) = self.stacks.get_mut(&flow.tuple.network) {
            stack.flows.retain(|f| *f != flow_id);
            if let Phase::Open { handle } = flow.phase {
                stack.sockets.remove(handle);
            }
        }
    }

    /// A frame for a flow of the stack, with the synthetic ARP first.
    fn feed(&mut self, now: Instant, network: NetworkId, gateway: &GatewayConfig, frame: &[u8]) {
        self.stack(network, gateway);
        self.feed_raw(now, network, frame);
    }

    fn feed_raw(&mut self, now: Instant, network: NetworkId, frame: &[u8]) {
        let epoch = self.epoch;
        let Some(stack) = self.stacks.get_mut(&network) else {
            return;
        };
        if let Some(arp) = stack.synthetic_arp(now, frame) {
            stack.learn(now, epoch, &arp);
        }
        self.poll_stack_with(now, network, Some(frame));
    }

    /// ARP and neighbour discovery frames for the gateway: the stack may
    /// be waiting for one of them.
    pub fn handle_neighbour_frame(&mut self, now: Instant, network: NetworkId, frame: &[u8]) {
        let Some(stack) = self.stacks.get_mut(&network) else {
            return;
        };
        stack.device.push_rx(frame.to_vec());
        self.poll_stack(now, network);
    }

    /// Answer a SYN (or a stray segment) that no flow takes with a reset.
    fn answer_refused(&mut self, network: NetworkId, frame: &[u8]) {
        if let Some(reset) = reset_for(frame) {
            self.push_frame(network, reset);
        }
    }

    fn push_frame(&mut self, network: NetworkId, frame: Vec<u8>) {
        if self.frames.len() < MAX_QUEUED_FRAMES {
            self.frames.push_back((network, frame, 0));
        }
    }

    /// Run a network's stack and turn what changed into actions.
    fn poll_stack(&mut self, now: Instant, network: NetworkId) {
        self.poll_stack_with(now, network, None);
    }

    /// Run a network's stack, first giving it `frame` (lent, not copied),
    /// and turn what changed into actions.
    fn poll_stack_with(&mut self, now: Instant, network: NetworkId, frame: Option<&[u8]>) {
        let smol_now = self.smol_now(now);
        let Some(stack) = self.stacks.get_mut(&network) else {
            return;
        };
        match frame {
            Some(frame) => {
                let mut device = OneFrame::new(frame, &mut stack.device);
                stack.iface.poll(smol_now, &mut device, &mut stack.sockets);
            }
            None => {
                stack
                    .iface
                    .poll(smol_now, &mut stack.device, &mut stack.sockets);
            }
        }
        while let Some(frame) = stack.device.tx.pop_front() {
            if self.frames.len() < MAX_QUEUED_FRAMES {
                let (by_tuple, flows) = (&self.by_tuple, &self.flows);
                let gso_size = gso_size_for(network, &frame, |tuple| {
                    by_tuple
                        .get(tuple)
                        .and_then(|f| flows.get(f))
                        .map_or(0, |f| f.sandbox_mss)
                });
                self.frames.push_back((network, frame, gso_size));
            }
        }
        let mut ended = Vec::new();
        for &flow_id in &stack.flows {
            let Some(flow) = self.flows.get_mut(&flow_id) else {
                continue;
            };
            let Phase::Open { handle } = flow.phase else {
                continue;
            };
            let socket = stack.sockets.get_mut::<tcp::Socket>(handle);
            let state = socket.state();
            if !flow.synchronized
                && matches!(
                    state,
                    tcp::State::Established
                        | tcp::State::FinWait1
                        | tcp::State::FinWait2
                        | tcp::State::CloseWait
                        | tcp::State::Closing
                        | tcp::State::LastAck
                        | tcp::State::TimeWait
                )
            {
                flow.synchronized = true;
                // The connect timeout of an inbound flow ends with the
                // handshake. From here the stack probes a quiet sandbox:
                // a sandbox whose socket is gone answers with a reset
                // (its own reset may have been lost: a burst of them
                // overflows a TAP's queue), one that is gone altogether
                // does not answer, and the flow ends either way.
                socket.set_keep_alive(Some(smol_duration(SANDBOX_KEEPALIVE)));
                socket.set_timeout(Some(smol_duration(SANDBOX_TIMEOUT)));
            }
            if socket.recv_queue() > 0 && !flow.send_announced {
                flow.send_announced = true;
                self.actions.push_back(TcpAction::Send { flow: flow_id });
            }
            if flow.wants_host_data
                && socket.may_send()
                && socket.send_queue() < socket.send_capacity()
            {
                flow.wants_host_data = false;
                self.actions.push_back(TcpAction::Receive { flow: flow_id });
            }
            let sandbox_done = matches!(
                state,
                tcp::State::CloseWait
                    | tcp::State::LastAck
                    | tcp::State::Closing
                    | tcp::State::TimeWait
            );
            if sandbox_done && socket.recv_queue() == 0 && !flow.shutdown_sent {
                flow.shutdown_sent = true;
                self.actions
                    .push_back(TcpAction::ShutdownWrite { flow: flow_id });
            }
            let reset = match state {
                tcp::State::Closed => !(flow.host_eof && flow.shutdown_sent),
                // Back to listening: the sandbox reset the handshake (it
                // gave up on its connect) or the flow.
                tcp::State::Listen => true,
                _ => false,
            };
            let clean = state == tcp::State::TimeWait || (state == tcp::State::Closed && !reset);
            if reset {
                ended.push((flow_id, TcpAction::Reset { flow: flow_id }));
            } else if clean && socket.recv_queue() == 0 {
                ended.push((flow_id, TcpAction::Close { flow: flow_id }));
            }
        }
        for (flow_id, action) in ended {
            self.forget(flow_id);
            self.actions.push_back(action);
        }
    }

    /// The next socket action.
    pub fn poll_action(&mut self) -> Option<TcpAction> {
        self.actions.pop_front()
    }

    /// The next frame to put into a network (addressed by MAC), with its
    /// GSO segment size (0: an ordinary frame): a TCP segment larger than
    /// the sandbox's MSS, which the driver writes to the TAP with a GSO
    /// header ([`weft_vswitch::wire::vnet::tcp_gso_header`]) so that the
    /// sandbox's kernel takes it whole.
    pub fn poll_frame(&mut self) -> Option<(NetworkId, Vec<u8>, u16)> {
        self.frames.pop_front()
    }

    /// When the stacks want [`TcpNat::handle_timeout`] (retransmissions,
    /// delayed ACKs, timeouts).
    pub fn poll_timeout(&mut self, now: Instant) -> Option<Instant> {
        let smol_now = self.smol_now(now);
        let mut due: Option<Instant> = self.next_sweep;
        for stack in self.stacks.values_mut() {
            if stack.flows.is_empty() {
                continue;
            }
            if let Some(at) = stack.iface.poll_at(smol_now, &stack.sockets) {
                let micros = u64::try_from(at.total_micros()).unwrap_or(0);
                let at = self.epoch + Duration::from_micros(micros);
                due = Some(due.map_or(at, |d| d.min(at)));
            }
        }
        due
    }

    /// Run the stacks' timers and the relay's idle timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.sweep(now);
        let networks: Vec<NetworkId> = self
            .stacks
            .iter()
            .filter(|(_, s)| !s.flows.is_empty())
            .map(|(n, _)| *n)
            .collect();
        for network in networks {
            self.poll_stack(now, network);
        }
    }

    /// Forget a network: its flows end with a reset of their host sockets.
    pub fn remove_network(&mut self, network: NetworkId) {
        let flows: Vec<FlowId> = self
            .flows
            .iter()
            .filter(|(_, f)| f.tuple.network == network)
            .map(|(id, _)| *id)
            .collect();
        for flow in flows {
            self.forget(flow);
            self.actions.push_back(TcpAction::Reset { flow });
        }
        self.stacks.remove(&network);
        self.shares.remove_network(network);
    }

    /// The table's shares (capacity, and a sandbox's and a network's).
    pub fn shares(&self) -> &FlowShares {
        &self.shares
    }

    /// New flows of `network` refused, by reason.
    pub fn refused(&self, network: NetworkId) -> RefusalCounters {
        self.shares.refused(network)
    }

    /// Whether socket actions are waiting for the driver.
    pub fn has_actions(&self) -> bool {
        !self.actions.is_empty()
    }

    /// Flows open or connecting.
    pub fn flow_count(&self) -> usize {
        self.flows.len()
    }

    /// The counters.
    pub fn counters(&self) -> TcpNatCounters {
        self.counters
    }
}

mod buffers;
mod host_io;
mod segments;
mod stack;
#[cfg(test)]
mod tests;
mod timers;
mod tuple;
