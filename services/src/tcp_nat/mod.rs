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
//! Capacities: at most `max_flows` flows (all networks); when full, a new
//! SYN is answered with RST and counted. Each flow has `buffer` bytes of
//! receive and of send buffer (memory is touched only as data flows). The
//! queues of frames are bounded; extra frames are dropped and TCP
//! retransmits.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use etherparse::{SlicedPacket, TransportSlice};
use rustc_hash::FxHashMap;
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use smoltcp::wire::IpListenEndpoint;

use crate::nat::FlowId;
use crate::smol_device::{arp_request, OneFrame};
use segments::{raise_mss, reset_for, unreachable_for};
use stack::{new_socket, Stack, MAX_QUEUED_FRAMES};
use weft_vswitch::wire::ethernet::MacAddr;
use weft_vswitch::wire::packet::GatewayFrame;
use weft_vswitch::DropReason;
use weft_vswitch::GatewayConfig;
use weft_vswitch::NetworkId;

/// Flows at once, all networks together.
pub const DEFAULT_MAX_FLOWS: usize = 4096;
/// Receive and send buffer of each flow: enough window for a few
/// gigabits per second at sub-millisecond round trips.
pub const DEFAULT_BUFFER: usize = 1 << 20;
/// TCP flow ids start here, apart from the UDP/ICMP NAT's ids.
pub const FLOW_ID_BASE: u64 = 1 << 36;
/// An inbound connection whose SYN the sandbox leaves unanswered for this
/// long is given up (the client's connection is reset).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// Limits of the TCP NAT.
#[derive(Debug, Clone)]
pub struct TcpNatConfig {
    /// Flows at once.
    pub max_flows: usize,
    /// Bytes of receive and of send buffer per flow.
    pub buffer: usize,
}

impl Default for TcpNatConfig {
    fn default() -> Self {
        TcpNatConfig {
            max_flows: DEFAULT_MAX_FLOWS,
            buffer: DEFAULT_BUFFER,
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
    /// New flows refused because the table was full.
    pub flows_refused: u64,
    /// Bytes from sandboxes to host sockets.
    pub bytes_out: u64,
    /// Bytes from host sockets to sandboxes.
    pub bytes_in: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Tuple {
    network: NetworkId,
    /// The sandbox's address and port.
    sandbox: SocketAddr,
    /// The peer's address and port as the sandbox sees it.
    peer: SocketAddr,
}

enum Phase {
    /// Outbound: the host socket is connecting; the sandbox's SYN waits.
    Connecting { syn: Vec<u8> },
    /// The stack's socket carries the flow.
    Open { handle: SocketHandle },
}

struct Flow {
    tuple: Tuple,
    phase: Phase,
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
}

impl TcpNat {
    /// A TCP NAT with these limits; `seed` seeds initial sequence numbers.
    pub fn new(config: TcpNatConfig, now: Instant, seed: u64) -> Self {
        TcpNat {
            config,
            epoch: now,
            stacks: FxHashMap::default(),
            flows: FxHashMap::default(),
            by_tuple: FxHashMap::default(),
            actions: VecDeque::new(),
            frames: VecDeque::new(),
            next_flow: FLOW_ID_BASE,
            seed,
            counters: TcpNatCounters::default(),
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

    /// A TCP frame a sandbox of `network` sent through the gateway. `open`
    /// says whether a SYN may open a new flow to its destination, and
    /// `host` where that flow's host socket connects (the destination
    /// itself, or the host's loopback for the gateway's address).
    ///
    /// # Errors
    ///
    /// [`DropReason::Malformed`] for a frame that is not TCP over IP.
    pub fn handle_frame(
        &mut self,
        now: Instant,
        network: NetworkId,
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
                match &mut flow.phase {
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
                Some(remote) if self.flows.len() < self.config.max_flows => {
                    self.stack(network, gateway);
                    let flow = self.new_flow(
                        tuple,
                        Phase::Connecting {
                            syn: frame.to_vec(),
                        },
                    );
                    self.counters.connects += 1;
                    self.actions.push_back(TcpAction::Connect { flow, remote });
                    Ok(())
                }
                Some(_) => {
                    self.counters.flows_refused += 1;
                    self.answer_refused(network, frame);
                    Err(DropReason::NatFull)
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

    fn new_flow(&mut self, tuple: Tuple, phase: Phase) -> FlowId {
        let flow = FlowId(self.next_flow);
        self.next_flow += 1;
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
                phase,
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
        let buffer = self.config.buffer;
        let Some(stack) = self.stacks.get_mut(&tuple.network) else {
            self.forget(flow_id);
            self.actions.push_back(TcpAction::Reset { flow: flow_id });
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
        if self.flows.len() >= self.config.max_flows {
            self.counters.flows_refused += 1;
            return None;
        }
        let shown = shown_client(client, gateway)?;
        let tuple = Tuple {
            network,
            sandbox: target,
            peer: shown,
        };
        if self.by_tuple.contains_key(&tuple) {
            return None;
        }
        let buffer = self.config.buffer;
        let epoch = self.epoch;
        let stack = self.stack(network, gateway);
        let mut socket = new_socket(buffer);
        socket.set_timeout(Some(smoltcp::time::Duration::from_secs(
            CONNECT_TIMEOUT.as_secs(),
        )));
        let remote = smoltcp::wire::IpEndpoint::new(target.ip().into(), target.port());
        let local = smoltcp::wire::IpEndpoint::new(shown.ip().into(), shown.port());
        if socket
            .connect(stack.iface.context(), remote, local)
            .is_err()
        {
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
        let flow = self.new_flow(tuple, Phase::Open { handle });
        self.counters.inbound += 1;
        self.poll_stack(now, network);
        Some(flow)
    }

    /// Write what the sandbox sent on `flow` to its host socket through
    /// `write` (which returns what `write(2)` would).
    pub fn send_to_host(
        &mut self,
        now: Instant,
        flow_id: FlowId,
        mut write: impl FnMut(&[u8]) -> io::Result<usize>,
    ) -> HostWrite {
        let Some((network, handle)) = self.open_flow(flow_id) else {
            return HostWrite::Gone;
        };
        if let Some(flow) = self.flows.get_mut(&flow_id) {
            flow.send_announced = false;
        }
        let Some(stack) = self.stacks.get_mut(&network) else {
            return HostWrite::Gone;
        };
        let socket = stack.sockets.get_mut::<tcp::Socket>(handle);
        let mut outcome = HostWrite::Done;
        let mut written = 0u64;
        // Bounded: each round empties the contiguous part of the ring.
        for _ in 0..4 {
            if socket.recv_queue() == 0 {
                break;
            }
            let result = socket.recv(|data| match write(data) {
                Ok(n) => (n, Ok(n)),
                Err(e) => (0, Err(e)),
            });
            match result {
                Ok(Ok(n)) => written += n as u64,
                Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    outcome = HostWrite::Blocked;
                    break;
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(_)) | Err(_) => {
                    outcome = HostWrite::Gone;
                    break;
                }
            }
        }
        self.counters.bytes_out += written;
        if outcome == HostWrite::Gone {
            self.host_failed(now, flow_id);
            return HostWrite::Gone;
        }
        // The window opened: tell the sandbox.
        self.poll_stack(now, network);
        outcome
    }

    /// Read the host socket of `flow` into the stack through `read` (which
    /// returns what `read(2)` would).
    pub fn receive_from_host(
        &mut self,
        now: Instant,
        flow_id: FlowId,
        mut read: impl FnMut(&mut [u8]) -> io::Result<usize>,
    ) -> HostRead {
        let Some((network, handle)) = self.open_flow(flow_id) else {
            return HostRead::Gone;
        };
        let Some(stack) = self.stacks.get_mut(&network) else {
            return HostRead::Gone;
        };
        let socket = stack.sockets.get_mut::<tcp::Socket>(handle);
        let mut outcome = HostRead::StackFull;
        let mut total = 0u64;
        for _ in 0..8 {
            if !socket.may_send() || socket.send_queue() >= socket.send_capacity() {
                break;
            }
            let result = socket.send(|buf| match read(buf) {
                Ok(n) => (n, Ok(n)),
                Err(e) => (0, Err(e)),
            });
            match result {
                Ok(Ok(0)) => {
                    outcome = HostRead::Eof;
                    break;
                }
                Ok(Ok(n)) => total += n as u64,
                Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    outcome = HostRead::Drained;
                    break;
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(_)) | Err(_) => {
                    outcome = HostRead::Gone;
                    break;
                }
            }
        }
        self.counters.bytes_in += total;
        match outcome {
            HostRead::Gone => {
                self.host_failed(now, flow_id);
                return HostRead::Gone;
            }
            HostRead::Eof => {
                socket.close();
                if let Some(flow) = self.flows.get_mut(&flow_id) {
                    flow.host_eof = true;
                }
            }
            HostRead::StackFull => {
                if let Some(flow) = self.flows.get_mut(&flow_id) {
                    flow.wants_host_data = true;
                }
            }
            HostRead::Drained => {}
        }
        self.poll_stack(now, network);
        outcome
    }

    /// The host socket of `flow` failed (reset by the remote, or an I/O
    /// error): the sandbox's connection is reset and the flow forgotten.
    pub fn host_failed(&mut self, now: Instant, flow_id: FlowId) {
        let Some((network, handle)) = self.open_flow(flow_id) else {
            self.forget(flow_id);
            return;
        };
        if let Some(stack) = self.stacks.get_mut(&network) {
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
                let gso_size = gso_size_for(&self.by_tuple, &self.flows, network, &frame);
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
                // handshake: established flows may idle for as long as
                // their ends like.
                socket.set_timeout(None);
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
                tcp::State::Listen => flow.synchronized,
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
        let mut due: Option<Instant> = None;
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

    /// Run the stacks' timers.
    pub fn handle_timeout(&mut self, now: Instant) {
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

/// How a client of a published port is shown to a sandbox: itself, or the
/// gateway when it is on the host's loopback. None when the network has no
/// gateway address of the needed family.
pub fn shown_client(client: SocketAddr, gateway: &GatewayConfig) -> Option<SocketAddr> {
    let ip = match client.ip() {
        IpAddr::V4(v4) if v4.is_loopback() => IpAddr::V4(*gateway.ipv4.first()?),
        IpAddr::V6(v6) if v6.is_loopback() => IpAddr::V6(*gateway.ipv6.first()?),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) if v4.is_loopback() => IpAddr::V4(*gateway.ipv4.first()?),
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        ip => ip,
    };
    Some(SocketAddr::new(ip, client.port()))
}

/// The 4-tuple of a TCP frame from a sandbox.
fn tcp_tuple(network: NetworkId, packet: &SlicedPacket<'_>) -> Option<Tuple> {
    let (src, dst) = weft_vswitch::wire::ip_addresses(packet.net.as_ref())?;
    let Some(TransportSlice::Tcp(tcp)) = &packet.transport else {
        return None;
    };
    Some(Tuple {
        network,
        sandbox: SocketAddr::new(src, tcp.source_port()),
        peer: SocketAddr::new(dst, tcp.destination_port()),
    })
}

/// The GSO segment size a frame from the stack needs: the flow's sandbox
/// MSS when the frame's TCP payload is larger, else 0.
fn gso_size_for(
    by_tuple: &FxHashMap<Tuple, FlowId>,
    flows: &FxHashMap<FlowId, Flow>,
    network: NetworkId,
    frame: &[u8],
) -> u16 {
    // Frames that fit any Ethernet MTU are not worth a look.
    if frame.len() <= 14 + 40 + 20 + 536 {
        return 0;
    }
    let Ok(packet) = SlicedPacket::from_ethernet(frame) else {
        return 0;
    };
    let Some(TransportSlice::Tcp(tcp)) = &packet.transport else {
        return 0;
    };
    let Some((src, dst)) = weft_vswitch::wire::ip_addresses(packet.net.as_ref()) else {
        return 0;
    };
    let tuple = Tuple {
        network,
        sandbox: SocketAddr::new(dst, tcp.destination_port()),
        peer: SocketAddr::new(src, tcp.source_port()),
    };
    let mss = by_tuple
        .get(&tuple)
        .and_then(|f| flows.get(f))
        .map_or(0, |f| f.sandbox_mss);
    if mss != 0 && tcp.payload().len() > usize::from(mss) {
        mss
    } else {
        0
    }
}

mod segments;
mod stack;
#[cfg(test)]
mod tests;
