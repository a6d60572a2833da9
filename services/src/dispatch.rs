//! The dispatcher of the gateway's L4 services: the embedded DNS over UDP
//! and TCP, and the NAT (outbound flows and published ports). Sans-IO,
//! owned by the data path beside the switch.
//!
//! # Theory of operation
//!
//! The switch's fast path (`weft_vswitch::Gateway`) answers ARP, ICMP echo and
//! neighbour solicitations in place. A frame for the gateway it does not
//! answer comes here ([`GatewayServices::handle_frame`]):
//!
//! - UDP to port 67, to a gateway address or broadcast: a DHCP client's
//!   message for the [`DhcpServer`], whose reply goes back to the ingress
//!   port;
//! - UDP to a gateway address, port 53: a query for the [`DnsServer`], with
//!   the asker (network, port, MAC, address) kept beside it;
//! - TCP to a gateway address, port 53: the network's [`DnsTcp`] stack
//!   (made on first use), whose complete queries go to the same server;
//! - any other TCP: the [`TcpNat`] relay, which knows the flows of
//!   published ports and may open new flows to where `way_out` says
//!   (the destination, or the host's loopback for the gateway's own
//!   address with `host_loopback`), else answers with a reset;
//! - any other UDP and ICMP echo: the [`Nat`], under the same rule;
//! - ARP replies and neighbour advertisements: both TCP stacks, which may
//!   be waiting for them;
//! - anything else: [`DropReason::NoRoute`].
//!
//! Outputs are pulled: [`GatewayServices::poll_frame`] gives frames to put
//! into a network (a DNS answer in UDP, TCP segments, the stacks' ARP
//! requests, NAT replies) with where they go ([`Egress`]), and
//! [`GatewayServices::poll_upstream`] gives datagrams for the upstream
//! resolvers, which the driver sends from a host socket; their answers come
//! back through [`GatewayServices::handle_upstream`]. Socket actions of the
//! NAT and the TCP relay are pulled from them by the driver.
//!
//! Capacities: the output queue holds [`MAX_QUEUED_FRAMES`] frames (more
//! are dropped and counted: the asker retries); the DNS server, the NAT and
//! the TCP stacks bound themselves (see their modules). The daemon sets the
//! NAT's limits with [`NatLimits`]: each table holds at most `max_flows`
//! flows and at most half the file descriptors the daemon can spare for
//! flows (every outbound flow holds a host socket), shared out per sandbox
//! and per network ([`crate::flow_shares`]); [`GatewayServices::nat_stats`]
//! tells the control plane what a network holds and was refused. Randomness (query
//! shuffling, upstream ids, TCP sequence numbers) comes from a ChaCha12
//! stream (`rand`'s `StdRng`) whose 256-bit seed the driver draws from the
//! OS's CSPRNG: an upstream DNS query id cannot be guessed from the ids
//! seen before it (RFC 5452).

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use etherparse::{NetSlice, PacketBuilder, TransportSlice};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rustc_hash::FxHashMap;

use crate::dhcp::{DhcpScope, DhcpServer};
use crate::dns::tcp::DnsTcp;
use crate::dns::{Asker, DnsConfig, DnsServer, DnsTransport, Zone};
use crate::flow_shares::RefusalCounters;
use crate::nat::{FlowId, Nat, NatConfig};
use crate::tcp_nat::{TcpNat, TcpNatConfig};
use weft_vswitch::wire::ethernet::{MacAddr, ETHERTYPE_ARP};
use weft_vswitch::wire::packet::GatewayFrame;
use weft_vswitch::DropReason;
use weft_vswitch::GatewayConfig;
use weft_vswitch::{NetworkId, PortId};

/// Frames waiting to leave the gateway.
pub const MAX_QUEUED_FRAMES: usize = 4096;

/// TTL of the IP packets the gateway sends.
const TTL: u8 = 64;

/// Where a new flow from a sandbox to `dst` may go on the host: `dst`
/// itself when the network has a way out, the host's loopback for the
/// gateway's own address when the network asks for it, else nowhere.
fn way_out(gateway: &GatewayConfig, ours: bool, dst: IpAddr) -> Option<IpAddr> {
    if ours {
        gateway.host_loopback.then_some(match dst {
            IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        })
    } else {
        gateway.outbound.then_some(dst)
    }
}

/// The NAT's limits and timers, as the daemon sets them.
#[derive(Debug, Clone)]
pub struct NatLimits {
    /// Flows per table (UDP and ICMP echo; TCP).
    pub max_flows: usize,
    /// File descriptors the flows' host sockets may take, both tables
    /// together.
    pub socket_budget: usize,
    /// Idle time after which a UDP flow closes.
    pub udp_idle: Duration,
    /// Idle time after which an established TCP flow is reset.
    pub tcp_established_idle: Duration,
}

impl Default for NatLimits {
    fn default() -> Self {
        NatLimits {
            max_flows: crate::nat::DEFAULT_MAX_FLOWS,
            socket_budget: usize::MAX,
            udp_idle: crate::nat::UDP_IDLE,
            tcp_established_idle: crate::tcp_nat::ESTABLISHED_IDLE,
        }
    }
}

/// What the NAT holds and refused for one network.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NatNetworkStats {
    /// UDP and ICMP echo flows open now.
    pub udp_flows: usize,
    /// TCP flows open or connecting now.
    pub tcp_flows: usize,
    /// New UDP and ICMP echo flows refused, by reason.
    pub udp_refused: RefusalCounters,
    /// New TCP flows refused, by reason.
    pub tcp_refused: RefusalCounters,
    /// A sandbox's share of each table, in flows.
    pub sandbox_share: usize,
    /// A network's share of each table, in flows.
    pub network_share: usize,
    /// Each table's capacity (its flow bound, or what the fd budget
    /// allows).
    pub capacity: usize,
}

/// Where a frame from the gateway goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Egress {
    /// One port.
    Port(PortId),
    /// Every port of the network (broadcast, or a MAC not learned yet).
    Flood(NetworkId),
}

/// See the module header.
pub struct GatewayServices {
    dns: DnsServer,
    dhcp: DhcpServer,
    /// Each network's zone as the controller last gave it (see
    /// `apply_zone`).
    zones: FxHashMap<NetworkId, Zone>,
    nat: Nat,
    tcp: TcpNat,
    stacks: FxHashMap<NetworkId, DnsTcp>,
    macs: FxHashMap<NetworkId, MacAddr>,
    out: VecDeque<(Egress, Vec<u8>)>,
    /// Every random choice of the services (DNS query ids and answer
    /// order, TCP initial sequence numbers) comes from this ChaCha12
    /// stream, seeded by the driver from the OS's CSPRNG.
    rng: StdRng,
    dropped: u64,
}

impl GatewayServices {
    /// Services with this DNS configuration and random seed, made at `now`.
    pub fn new(config: DnsConfig, now: Instant, seed: [u8; 32]) -> Self {
        Self::with_max_flows(config, crate::nat::DEFAULT_MAX_FLOWS, now, seed)
    }

    /// Services whose NAT tables (UDP/ICMP, and TCP) hold at most
    /// `max_flows` flows each, made at `now`.
    pub fn with_max_flows(
        config: DnsConfig,
        max_flows: usize,
        now: Instant,
        seed: [u8; 32],
    ) -> Self {
        let limits = NatLimits {
            max_flows,
            ..NatLimits::default()
        };
        Self::with_limits(config, &limits, now, seed)
    }

    /// Services with these NAT limits and timers, made at `now`. Each
    /// table holds at most `max_flows` flows, and at most half of
    /// `socket_budget` (every outbound flow holds a host socket, so the
    /// two tables together never take more file descriptors than the
    /// budget).
    pub fn with_limits(
        config: DnsConfig,
        limits: &NatLimits,
        now: Instant,
        seed: [u8; 32],
    ) -> Self {
        let mut rng = StdRng::from_seed(seed);
        let tcp_seed = rng.next_u64();
        let capacity = limits.max_flows.min(limits.socket_budget / 2).max(1);
        GatewayServices {
            dns: DnsServer::new(config),
            dhcp: DhcpServer::new(),
            zones: FxHashMap::default(),
            nat: Nat::new(NatConfig {
                max_flows: capacity,
                udp_idle: limits.udp_idle,
                ..NatConfig::default()
            }),
            tcp: TcpNat::new(
                TcpNatConfig {
                    max_flows: capacity,
                    established_idle: limits.tcp_established_idle,
                    ..TcpNatConfig::default()
                },
                now,
                tcp_seed,
            ),
            stacks: FxHashMap::default(),
            macs: FxHashMap::default(),
            out: VecDeque::new(),
            rng,
            dropped: 0,
        }
    }

    fn next_random(&mut self) -> u64 {
        self.rng.next_u64()
    }

    /// The DNS server (zones, upstreams, counters).
    pub fn dns(&mut self) -> &mut DnsServer {
        &mut self.dns
    }

    /// The DHCP server (leases, counters).
    pub fn dhcp(&mut self) -> &mut DhcpServer {
        &mut self.dhcp
    }

    /// Set the leases and options a network's DHCP clients get.
    pub fn set_dhcp_scope(&mut self, network: NetworkId, scope: DhcpScope) {
        self.dhcp.set_scope(network, scope);
        // A lease that went takes the name its client asked for with it.
        self.apply_changed_zones();
    }

    /// Serve again the zones whose DHCP-claimed names changed.
    fn apply_changed_zones(&mut self) {
        for changed in self.dhcp.take_changed() {
            self.apply_zone(changed);
        }
    }

    /// The outbound NAT.
    pub fn nat(&mut self) -> &mut Nat {
        &mut self.nat
    }

    /// What the NAT holds and refused for `network`.
    pub fn nat_stats(&self, network: NetworkId) -> NatNetworkStats {
        let shares = self.nat.shares();
        NatNetworkStats {
            udp_flows: self.nat.network_flows(network),
            tcp_flows: self.tcp.shares().network_flows(network),
            udp_refused: self.nat.refused(network),
            tcp_refused: self.tcp.refused(network),
            sandbox_share: shares.sandbox_share(),
            network_share: shares.network_share(),
            capacity: shares.capacity(),
        }
    }

    /// The TCP relay (outbound TCP and published TCP ports).
    pub fn tcp(&mut self) -> &mut TcpNat {
        &mut self.tcp
    }

    /// What a NAT flow's socket received.
    pub fn handle_nat_reply(&mut self, now: Instant, flow: FlowId, data: &[u8]) {
        self.nat.handle_reply(now, flow, data);
        self.drain(now);
    }

    /// A NAT flow's remote refused.
    pub fn handle_nat_refused(&mut self, now: Instant, flow: FlowId) {
        self.nat.handle_refused(flow);
        self.drain(now);
    }

    /// A connection accepted on a published TCP port of the sandbox at
    /// `target` (MAC `mac`) on `network` (whose gateway is `gateway`), from
    /// `client`. None when the relay is full.
    pub fn accept_published_tcp(
        &mut self,
        now: Instant,
        (network, gateway): (NetworkId, &GatewayConfig),
        target: SocketAddr,
        mac: MacAddr,
        client: SocketAddr,
    ) -> Option<FlowId> {
        self.tcp
            .accept_inbound(now, network, gateway, client, target, mac)
    }

    /// A datagram from `client` on the published UDP socket `listener`,
    /// for the sandbox at `target` (MAC `mac`, switch port `port`) on
    /// `network`, whose gateway is `gateway`.
    ///
    /// # Errors
    ///
    /// [`DropReason::NoRoute`] when the client cannot be shown to the
    /// sandbox, [`DropReason::NatFull`] when the flow table is full.
    #[allow(clippy::too_many_arguments)]
    pub fn published_udp(
        &mut self,
        now: Instant,
        listener: u32,
        (network, gateway): (NetworkId, &GatewayConfig),
        (port, mac): (PortId, MacAddr),
        target: SocketAddr,
        client: SocketAddr,
        data: &[u8],
    ) -> Result<(), DropReason> {
        let shown = crate::tcp_nat::shown_client(client, gateway).ok_or(DropReason::NoRoute)?;
        self.nat.handle_inbound(
            now,
            network,
            (port, mac, gateway.mac),
            listener,
            target,
            client,
            shown,
            data,
        )
    }

    /// Set the names a network's sandboxes can resolve.
    pub fn set_zone(&mut self, network: NetworkId, zone: Zone) {
        self.zones.insert(network, zone);
        self.apply_zone(network);
    }

    /// Serve `network`'s zone as the controller gave it, plus the host
    /// names its DHCP clients asked for: each as an alias of the endpoint
    /// that holds the leased address, unless the zone already has the name
    /// (an endpoint's name or alias always wins over a client's wish).
    fn apply_zone(&mut self, network: NetworkId) {
        let Some(zone) = self.zones.get(&network) else {
            return;
        };
        let mut zone = zone.clone();
        if let Some(claims) = self.dhcp.claimed_names(network) {
            for (address, name) in claims {
                let taken = zone.entries.iter().any(|e| {
                    e.name.eq_ignore_ascii_case(name)
                        || e.aliases.iter().any(|a| a.eq_ignore_ascii_case(name))
                });
                if taken {
                    continue;
                }
                if let Some(entry) = zone
                    .entries
                    .iter_mut()
                    .find(|e| e.addresses.contains(&IpAddr::V4(*address)))
                {
                    entry.aliases.push(name.clone());
                }
            }
        }
        self.dns.set_zone(network, zone);
    }

    /// A network and its gateway MAC.
    pub fn add_network(&mut self, network: NetworkId, gateway_mac: MacAddr) {
        self.macs.insert(network, gateway_mac);
    }

    /// Forget a network.
    pub fn remove_network(&mut self, network: NetworkId) {
        self.macs.remove(&network);
        self.nat.remove_network(network);
        self.tcp.remove_network(network);
        self.dns.remove_zone(network);
        self.dhcp.remove_scope(network);
        self.zones.remove(&network);
        self.stacks.remove(&network);
    }

    /// A frame for the gateway of `network` that its fast path did not
    /// answer, read from `ingress`.
    ///
    /// # Errors
    ///
    /// [`DropReason::NoRoute`] when no service takes it.
    pub fn handle_frame(
        &mut self,
        now: Instant,
        network: NetworkId,
        gateway: &GatewayConfig,
        ingress: PortId,
        frame: &GatewayFrame<'_>,
    ) -> Result<(), DropReason> {
        if frame.ethertype() == ETHERTYPE_ARP {
            self.tcp.handle_neighbour_frame(now, network, frame.bytes());
            self.feed_stack(now, network, gateway, frame.bytes());
            return Ok(());
        }
        let packet = frame.packet()?;
        let (src, dst) = frame.addresses().ok_or(DropReason::NoRoute)?;
        let ours = match dst {
            IpAddr::V4(v4) => gateway.ipv4.contains(&v4),
            IpAddr::V6(v6) => gateway.ipv6.contains(&v6),
        };
        if let Some(NetSlice::Ipv4(ip)) = &packet.net {
            // IPv4 fragments of UDP or ICMP: the NAT reassembles them
            // (their transport header is only in the first).
            let protocol = ip.header().protocol();
            if ip.header().is_fragmenting_payload()
                && (protocol == etherparse::IpNumber::UDP || protocol == etherparse::IpNumber::ICMP)
            {
                let open = way_out(gateway, ours, dst);
                let result = self
                    .nat
                    .handle_frame(now, network, ingress, gateway.mac, frame, open);
                // A refusal queues an ICMP error for the sandbox too.
                self.drain(now);
                return result;
            }
        }
        match &packet.transport {
            Some(TransportSlice::Udp(udp))
                if udp.destination_port() == crate::dhcp::SERVER_PORT
                    && (ours || dst == IpAddr::V4(Ipv4Addr::BROADCAST)) =>
            {
                let server = gateway.ipv4.first().copied();
                let reply =
                    self.dhcp
                        .handle_message(network, frame.source(), server, udp.payload());
                self.apply_changed_zones();
                if let Some(reply) = reply {
                    let mut out = Vec::with_capacity(reply.message.len() + 42);
                    PacketBuilder::ethernet2(gateway.mac.0, reply.mac.0)
                        .ipv4(reply.source.octets(), reply.destination.octets(), TTL)
                        .udp(crate::dhcp::SERVER_PORT, crate::dhcp::CLIENT_PORT)
                        .write(&mut out, &reply.message)
                        .map_err(|_| DropReason::Malformed)?;
                    self.push(Egress::Port(ingress), out);
                }
                Ok(())
            }
            Some(TransportSlice::Udp(udp)) if ours && udp.destination_port() == 53 => {
                let asker = Asker {
                    network,
                    port: ingress,
                    mac: frame.source(),
                    addr: SocketAddr::new(src, udp.source_port()),
                    server: dst,
                    transport: DnsTransport::Udp,
                    connection: 0,
                };
                let seed = self.next_random();
                self.dns.handle_query(now, asker, udp.payload(), seed);
                self.drain(now);
                Ok(())
            }
            Some(TransportSlice::Tcp(tcp)) if ours && tcp.destination_port() == 53 => {
                self.feed_stack(now, network, gateway, frame.bytes());
                Ok(())
            }
            Some(TransportSlice::Tcp(tcp)) => {
                let open = way_out(gateway, ours, dst)
                    .map(|ip| SocketAddr::new(ip, tcp.destination_port()));
                self.tcp
                    .handle_frame(now, (network, ingress), gateway, frame, open)
            }
            Some(TransportSlice::Icmpv6(_)) if ours || dst.is_multicast() => {
                // Neighbour advertisements answering the stacks'
                // solicitations.
                self.tcp.handle_neighbour_frame(now, network, frame.bytes());
                self.feed_stack(now, network, gateway, frame.bytes());
                Ok(())
            }
            Some(
                TransportSlice::Udp(_) | TransportSlice::Icmpv4(_) | TransportSlice::Icmpv6(_),
            ) => {
                let open = way_out(gateway, ours, dst);
                let result = self
                    .nat
                    .handle_frame(now, network, ingress, gateway.mac, frame, open);
                // A refusal queues an ICMP error for the sandbox too.
                self.drain(now);
                result
            }
            _ => Err(DropReason::NoRoute),
        }
    }

    fn feed_stack(
        &mut self,
        now: Instant,
        network: NetworkId,
        gateway: &GatewayConfig,
        frame: &[u8],
    ) {
        if !self.stacks.contains_key(&network) {
            // The stack answers anyone who reaches the gateway at L2, so its
            // addresses carry prefix 0: every sender counts as on-link.
            let addresses: Vec<(IpAddr, u8)> = gateway
                .ipv4
                .iter()
                .map(|a| (IpAddr::V4(*a), 0))
                .chain(gateway.ipv6.iter().map(|a| (IpAddr::V6(*a), 0)))
                .collect();
            let seed = self.next_random();
            let stack = DnsTcp::new(
                now,
                gateway.mac,
                &addresses,
                u64::from(network.0) << 32,
                seed,
            );
            self.stacks.insert(network, stack);
        }
        if let Some(stack) = self.stacks.get_mut(&network) {
            stack.handle_frame(now, frame);
        }
        self.drain(now);
    }

    /// A datagram from an upstream resolver.
    pub fn handle_upstream(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        self.dns.handle_upstream(now, from, datagram);
        self.drain(now);
    }

    /// Run timers that are due.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.dns.handle_timeout(now);
        self.nat.handle_timeout(now);
        self.tcp.handle_timeout(now);
        for stack in self.stacks.values_mut() {
            stack.poll(now);
        }
        self.drain(now);
    }

    /// When [`GatewayServices::handle_timeout`] wants to run.
    pub fn poll_timeout(&mut self, now: Instant) -> Option<Instant> {
        let mut due = [
            self.dns.poll_timeout(),
            self.nat.poll_timeout(),
            self.tcp.poll_timeout(now),
        ]
        .into_iter()
        .flatten()
        .min();
        for stack in self.stacks.values_mut() {
            if let Some(at) = stack.poll_timeout(now) {
                due = Some(due.map_or(at, |d| d.min(at)));
            }
        }
        due
    }

    /// The next datagram for an upstream resolver.
    pub fn poll_upstream(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.dns.poll_upstream()
    }

    /// The next frame to put into a network, with its GSO segment size (0:
    /// an ordinary frame; see [`TcpNat::poll_frame`]).
    pub fn poll_frame(&mut self) -> Option<(Egress, Vec<u8>, u16)> {
        if let Some((egress, frame)) = self.out.pop_front() {
            return Some((egress, frame, 0));
        }
        // Datagrams of published UDP ports enter without a drain.
        if let Some((port, frame)) = self.nat.poll_frame() {
            return Some((Egress::Port(port), frame, 0));
        }
        let (network, frame, gso_size) = self.tcp.poll_frame()?;
        Some((Egress::Flood(network), frame, gso_size))
    }

    /// Frames dropped because the output queue was full.
    pub fn dropped_frames(&self) -> u64 {
        self.dropped
    }

    /// Move answers and stack output into the output queue.
    fn drain(&mut self, now: Instant) {
        while let Some((port, frame)) = self.nat.poll_frame() {
            self.push(Egress::Port(port), frame);
        }
        // Queries that arrived over TCP.
        let mut queries = Vec::new();
        for (network, stack) in &mut self.stacks {
            while let Some(q) = stack.poll_query() {
                queries.push((*network, q));
            }
        }
        for (network, q) in queries {
            let asker = Asker {
                network,
                port: PortId(0),
                mac: MacAddr::default(),
                addr: q.peer,
                server: q.server,
                transport: DnsTransport::Tcp,
                connection: q.connection,
            };
            let seed = self.next_random();
            self.dns.handle_query(now, asker, &q.message, seed);
        }
        while let Some((asker, answer)) = self.dns.poll_answer() {
            match asker.transport {
                DnsTransport::Udp => {
                    if let Some(frame) = self.udp_answer(&asker, &answer) {
                        self.push(Egress::Port(asker.port), frame);
                    }
                }
                DnsTransport::Tcp => {
                    if let Some(stack) = self.stacks.get_mut(&asker.network) {
                        stack.send_answer(now, asker.connection, &answer);
                    }
                }
            }
        }
        let mut frames = Vec::new();
        for (network, stack) in &mut self.stacks {
            while let Some(frame) = stack.poll_frame() {
                frames.push((*network, frame));
            }
        }
        for (network, frame) in frames {
            self.push(Egress::Flood(network), frame);
        }
    }

    fn push(&mut self, egress: Egress, frame: Vec<u8>) {
        if self.out.len() >= MAX_QUEUED_FRAMES {
            self.dropped += 1;
            return;
        }
        self.out.push_back((egress, frame));
    }

    fn udp_answer(&self, asker: &Asker, answer: &[u8]) -> Option<Vec<u8>> {
        let gateway_mac = self.gateway_mac_for(asker);
        let builder = PacketBuilder::ethernet2(gateway_mac.0, asker.mac.0);
        let mut frame = Vec::new();
        match (asker.server, asker.addr.ip()) {
            (IpAddr::V4(server), IpAddr::V4(client)) => builder
                .ipv4(server.octets(), client.octets(), TTL)
                .udp(53, asker.addr.port())
                .write(&mut frame, answer)
                .ok()?,
            (IpAddr::V6(server), IpAddr::V6(client)) => builder
                .ipv6(server.octets(), client.octets(), TTL)
                .udp(53, asker.addr.port())
                .write(&mut frame, answer)
                .ok()?,
            _ => return None,
        }
        Some(frame)
    }

    fn gateway_mac_for(&self, asker: &Asker) -> MacAddr {
        self.macs.get(&asker.network).copied().unwrap_or_default()
    }
}
