//! The data-path thread's loop: wait for readiness, dispatch each event to
//! the module that owns the fd, drain what the gateway services produced.
//!
//! # Theory of operation
//!
//! One edge-triggered `epoll` (mio) over every fd of the data path. On each
//! wake-up the loop:
//!
//! 1. dispatches each event by its token ([`crate::tokens`]): the waker
//!    applies queued [`Command`]s; a TAP is queued for a turn; the tunnel,
//!    NAT sockets, relay sockets, published ports and DNS upstreams are
//!    read by their modules;
//! 2. gives every queued TAP its turn of reads ([`Plane::read_turn`]);
//! 3. runs the cores' timers when due (the switch's MAC sweep, the
//!    services' DNS, NAT and TCP timers);
//! 4. drains the services: frames into networks, NAT and relay socket
//!    actions, queries for upstream resolvers ([`Loop::flush_gateway`]).
//!
//! Readers stop at a bound per wake-up; a socket whose reader stopped
//! there is dispatched again next turn (`again`), since edge-triggered
//! epoll will not report it twice. The loop never blocks on the control
//! plane and takes no lock per frame.

use std::io;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token};

use crate::command::Command;
use crate::frames::{Plane, Turn};
use crate::memory::Trim;
use crate::nat::NatSockets;
use crate::published::{Context, PublishedPorts};
use crate::tcp::TcpFlows;
use crate::tokens::{Source, Tokens, WAKER};
use crate::upstreams::Upstreams;

/// Bound of the relay's socket actions drained per round: an action can
/// queue more (a write opens the window, the stack answers), which the
/// next round or wake-up takes.
const TCP_ACTIONS_PER_ROUND: usize = 4096;

/// Everything the data-path thread owns. See the module header.
#[derive(Debug)]
pub struct Loop {
    poll: Poll,
    commands: mpsc::Receiver<Command>,
    tokens: Tokens,
    plane: Plane,
    nat: NatSockets,
    tcp: TcpFlows,
    published: PublishedPorts,
    upstreams: Upstreams,
    /// Sockets to read again next turn (their reader hit its bound).
    again: Vec<Token>,
    /// Hands memory freed after a burst of flows back to the OS.
    memory: Trim,
}

impl Loop {
    /// A loop over `poll` (whose waker has [`WAKER`]) driving `plane`.
    pub fn new(poll: Poll, commands: mpsc::Receiver<Command>, plane: Plane) -> Self {
        let mut tokens = Tokens::default();
        let upstreams = Upstreams::open(poll.registry(), &mut tokens);
        Loop {
            poll,
            commands,
            tokens,
            plane,
            nat: NatSockets::default(),
            tcp: TcpFlows::default(),
            published: PublishedPorts::default(),
            upstreams,
            again: Vec::new(),
            memory: Trim::default(),
        }
    }

    /// Run until [`Command::Shutdown`] or an epoll failure.
    pub fn run(&mut self) {
        let mut events = Events::with_capacity(256);
        loop {
            let busy = self.plane.taps.has_ready()
                || !self.again.is_empty()
                || self.plane.services.tcp().has_actions();
            let timeout = if busy {
                Some(Duration::ZERO)
            } else {
                let now = Instant::now();
                self.next_timer(now)
                    .map(|due| due.saturating_duration_since(now))
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(error = %e, "data path: epoll failed, stopping");
                return;
            }
            let again = std::mem::take(&mut self.again);
            let ready = events
                .iter()
                .map(|e| (e.token(), e.is_readable(), e.is_writable()));
            let retried = again.into_iter().map(|token| (token, true, false));
            for (token, readable, writable) in ready.chain(retried) {
                if !self.dispatch(token, readable, writable) {
                    return;
                }
            }
            let now = Instant::now();
            for port in self.plane.taps.take_ready() {
                match self.plane.read_turn(port, now) {
                    Turn::Drained => {}
                    Turn::MoreQueued => self.plane.taps.mark_ready(port),
                    Turn::DeviceLost(e) => {
                        tracing::error!(port = port.0, error = %e, "TAP device lost, port removed");
                        self.detach(port);
                    }
                }
            }
            let now = Instant::now();
            if self.next_timer(now).is_some_and(|due| due <= now) {
                self.plane.switch.handle_timeout(now);
                self.plane.services.handle_timeout(now);
                self.plane.taps.handle_timeout(now);
                self.plane.tunnel.handle_timeout(now);
            }
            self.flush_gateway(now);
            let held = self.plane.services.tcp().buffer_bytes()
                + self.plane.services.nat().flow_count() * crate::memory::UDP_FLOW_WEIGHT;
            self.memory.after_turn(held);
        }
    }

    /// When the cores' next timer is due.
    fn next_timer(&mut self, now: Instant) -> Option<Instant> {
        let switch = self.plane.switch.poll_timeout();
        let services = self.plane.services.poll_timeout(now);
        let shapers = self.plane.taps.poll_timeout(now);
        let tunnel = self.plane.tunnel.poll_timeout();
        switch
            .into_iter()
            .chain(services)
            .chain(shapers)
            .chain(tunnel)
            .min()
    }

    /// Handle one readiness event; false on shutdown.
    fn dispatch(&mut self, token: Token, readable: bool, writable: bool) -> bool {
        if token == WAKER {
            return self.apply_commands();
        }
        let drained = match self.tokens.get(token) {
            None => true,
            Some(Source::Port(port)) => {
                if writable {
                    self.plane.taps.writable(port);
                }
                // Anything but a bare "writable" (readable, an error, a
                // hang-up) gets the port a read turn, which sees it.
                if readable || !writable {
                    self.plane.taps.mark_ready(port);
                }
                true
            }
            Some(Source::StreamListener(port)) => {
                self.plane.taps.accept(self.poll.registry(), port);
                true
            }
            Some(Source::Tunnel(carrier)) => self.plane.read_tunnel(carrier, Instant::now()),
            Some(Source::Upstream { v4 }) => {
                self.upstreams.read(&mut self.plane.services, v4);
                true
            }
            Some(Source::Nat(flow)) => self.nat.read(&mut self.plane.services, flow),
            Some(Source::TcpFlow(flow)) => {
                let registry = self.poll.registry();
                let relay = self.plane.services.tcp();
                let event = (flow, readable, writable);
                self.tcp.ready(relay, registry, &mut self.tokens, event);
                true
            }
            Some(Source::Published(id)) => self.published.ready(
                id,
                Context {
                    plane: &mut self.plane,
                    tcp: &mut self.tcp,
                    registry: self.poll.registry(),
                    tokens: &mut self.tokens,
                },
            ),
        };
        if !drained {
            self.again.push(token);
        }
        true
    }

    /// Send what the gateway services produced: frames into networks,
    /// socket actions, datagrams to upstream resolvers.
    fn flush_gateway(&mut self, now: Instant) {
        let registry = self.poll.registry();
        // NAT actions can queue frames (a refused send answers with ICMP),
        // and frames never queue actions: two rounds drain both.
        for _ in 0..2 {
            self.plane.flush_gateway_frames(now);
            while let Some(action) = self.plane.services.nat().poll_action() {
                let io = (registry, &mut self.tokens);
                self.nat
                    .act(&mut self.plane.services, io, &self.published, action);
            }
            for _ in 0..TCP_ACTIONS_PER_ROUND {
                let relay = self.plane.services.tcp();
                let Some(action) = relay.poll_action() else {
                    break;
                };
                self.tcp.act(relay, registry, &mut self.tokens, action);
            }
        }
        self.upstreams.send_all(&mut self.plane.services);
    }

    /// Detach a port: its published ports close, the switch forgets it;
    /// its device is handed back.
    fn detach(&mut self, id: weft_vswitch::PortId) -> Option<crate::taps::PortDevice> {
        let registry = self.poll.registry();
        self.published
            .unpublish_port(registry, &mut self.tokens, id);
        self.plane.switch.remove_port(id);
        self.plane.taps.detach(registry, &mut self.tokens, id)
    }

    /// Apply every queued command; false on shutdown.
    fn apply_commands(&mut self) -> bool {
        while let Ok(command) = self.commands.try_recv() {
            let registry = self.poll.registry();
            let plane = &mut self.plane;
            match command {
                Command::AddNetwork { id, gateway } => {
                    plane.services.add_network(id, gateway.mac);
                    if let Err(e) = plane.switch.add_network(id, gateway) {
                        tracing::error!(error = %e, "data path: add network");
                    }
                }
                Command::RemoveNetwork { id } => {
                    for port in plane.switch.remove_network(id) {
                        self.detach(port);
                    }
                    self.plane.services.remove_network(id);
                    // An overlay network's VNI and tunnel ports go with it.
                    self.plane.tunnel.remove_network(id);
                }
                Command::AddPort {
                    id,
                    network,
                    device,
                    uplink,
                    counters,
                } => {
                    let added = match uplink {
                        Some(mode) => plane.switch.add_uplink_port(id, network, mode),
                        None => plane.switch.add_port(id, network),
                    };
                    if let Err(e) = added {
                        tracing::error!(error = %e, port = id.0, "data path: add port");
                    } else if !plane
                        .taps
                        .attach(registry, &mut self.tokens, id, device, counters)
                    {
                        plane.switch.remove_port(id);
                    }
                }
                Command::NatStats { network, done } => {
                    let _ = done.send(plane.services.nat_stats(network));
                }
                Command::RemovePort { id, done } => {
                    let device = self.detach(id);
                    let _ = done.send(device);
                }
                Command::StartCapture { id, sink } => plane.captures.add(id, sink),
                Command::StopCapture { id } => plane.captures.remove(id),
                Command::DnsCounters { reply } => {
                    let _ = reply.send(plane.services.dns().counters());
                }
                Command::DhcpCounters { reply } => {
                    let _ = reply.send(plane.services.dhcp().counters());
                }
                Command::PublishedFigures { reply } => {
                    let _ = reply.send(self.published.figures());
                }
                Command::Floods { network, reply } => {
                    let _ = reply.send(plane.switch.flood_counts(network));
                }
                Command::Fdb { network, reply } => {
                    let entries = plane.switch.fdb(network, std::time::Instant::now());
                    let with_hosts = entries
                        .into_iter()
                        .map(|e| (e, plane.tunnel.peer(e.port).map(|p| p.addr)))
                        .collect();
                    let _ = reply.send(with_hosts);
                }
                Command::SetPortIdentity { id, identity } => {
                    plane
                        .switch
                        .set_port_identity(id, identity, std::time::Instant::now());
                }
                Command::SetBandwidth { id, limit } => {
                    plane
                        .taps
                        .set_bandwidth(id, &limit, std::time::Instant::now());
                }
                Command::SetZone { network, zone } => plane.services.set_zone(network, zone),
                Command::SetDhcpScope { network, scope } => {
                    plane.services.set_dhcp_scope(network, scope);
                }
                Command::SetUplinkSandboxes { port, sandboxes } => {
                    plane.taps.set_uplink_sandboxes(port, sandboxes);
                }
                Command::SetUpstreams(upstreams) => plane.services.dns().set_upstreams(upstreams),
                Command::Publish {
                    id,
                    listener,
                    target,
                } => {
                    let token =
                        self.published
                            .publish(registry, &mut self.tokens, id, listener, target);
                    // Connections or datagrams may be waiting already.
                    if let Some(token) = token {
                        self.again.push(token);
                    }
                }
                Command::Unpublish { id } => {
                    self.published.unpublish(registry, &mut self.tokens, id)
                }
                Command::EnableTunnel(carrier, transport) => {
                    plane
                        .tunnel
                        .enable(registry, &mut self.tokens, carrier, transport);
                }
                Command::SetOverlay { network, table } => {
                    plane.tunnel.set_overlay(&mut plane.switch, network, &table);
                }
                Command::SetTunnelPeers(peers) => plane.tunnel.set_members(peers),
                Command::UnderlayMoved => plane.tunnel.underlay_moved(Instant::now()),
                Command::Shutdown => return false,
            }
        }
        true
    }
}
