//! Outbound NAT for UDP and ICMP echo: sandbox traffic to addresses beyond
//! the gateway, relayed through ordinary host sockets. Sans-IO: frames in,
//! socket actions out; the driver owns the sockets.
//!
//! # Theory of operation
//!
//! A UDP datagram or an ICMP echo request that a sandbox sends through its
//! gateway to an address that is not the gateway's reaches
//! [`Nat::handle_frame`]. Its flow — network, protocol, the sandbox's
//! address and port (or echo identifier), the remote address and port — is
//! looked up in the flow table; a new flow gets a [`FlowId`] and an
//! [`NatAction::Open`] asking the driver for a host socket connected to the
//! remote (a UDP socket, or an unprivileged ICMP "ping" socket). The payload
//! leaves as [`NatAction::Send`]. What the socket receives comes back
//! through [`Nat::handle_reply`] and is put into the sandbox as a frame from
//! the remote address, through the gateway MAC; the remote sees the host's
//! address (the host's own stack chose the source).
//!
//! A UDP socket that gets "connection refused" ([`Nat::handle_refused`])
//! answers the sandbox with ICMP port unreachable, as a router would.
//!
//! No root, no raw socket, no iptables: the daemon opens only what any
//! user may open. Ping sockets need the daemon's group in
//! `net.ipv4.ping_group_range`; where it is not, the driver logs it once and
//! ICMP echo is dropped and counted.
//!
//! Capacities and timers: at most `max_flows` flows (default
//! [`DEFAULT_MAX_FLOWS`], lowered by the daemon to what its file
//! descriptor budget allows: every outbound flow holds a host socket),
//! shared out by [`crate::flow_shares`]: a sandbox may hold a quarter of
//! the table, a network half. A new flow over a bound is refused rather
//! than evicting a live one, so a sandbox cannot push out the flows of
//! others: a UDP datagram is answered with ICMP destination unreachable,
//! administratively prohibited (ICMPv6: prohibited), an echo request is
//! dropped; both counted by reason. A flow idle for `udp_idle`
//! ([`UDP_IDLE`], 60 s: between Linux conntrack's 30 s for one-way UDP and
//! 120 s for UDP streams) or `icmp_idle` ([`ICMP_IDLE`], 10 s) is closed
//! ([`NatAction::Close`]) and its host socket with it; the timers are
//! checked once a second, so a flow goes at most a second late. A host
//! socket that cannot be opened (the daemon out of file descriptors)
//! ends its flow at once ([`Nat::open_failed`]) with the same refusal. ICMP echo works for
//! IPv4 and IPv6 alike (a ping socket of either family), and so does port
//! unreachable for a refused UDP flow (ICMP or ICMPv6). IPv4 fragments
//! are reassembled first ([`crate::reassembly`]): a host socket sends a
//! datagram whole, and its kernel fragments it again if the path needs it.
//! Not implemented here: TCP (a separate stack), IPv6 fragments (dropped).

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use etherparse::{IcmpEchoHeader, Icmpv4Type, Icmpv6Type, PacketBuilder, TransportSlice};
use rustc_hash::FxHashMap;

use crate::flow_shares::{FlowShares, RefusalCounters, ShareKey};
use crate::reassembly::{Fragment, Reassembly};
use weft_vswitch::wire::ethernet::MacAddr;
use weft_vswitch::wire::packet::GatewayFrame;
use weft_vswitch::DropReason;
use weft_vswitch::{NetworkId, PortId};

/// ICMP and ICMPv6 echo types.
const ECHO_REQUEST_V4: u8 = 8;
const ECHO_REPLY_V4: u8 = 0;
const ECHO_REQUEST_V6: u8 = 128;
const ECHO_REPLY_V6: u8 = 129;

/// The flow of an echo request (the sandbox's identifier as its "port")
/// and what its ping socket sends: the ICMP header with identifier 0 and
/// no checksum, which the kernel fills in, then the payload.
fn echo_flow(
    request_type: u8,
    src: IpAddr,
    dst: IpAddr,
    echo: IcmpEchoHeader,
    payload: &[u8],
) -> (NatProto, SocketAddr, SocketAddr, Vec<u8>) {
    let mut data = vec![request_type, 0, 0, 0, 0, 0];
    data.extend_from_slice(&echo.seq.to_be_bytes());
    data.extend_from_slice(payload);
    (
        NatProto::IcmpEcho,
        SocketAddr::new(src, echo.id),
        SocketAddr::new(dst, 0),
        data,
    )
}

/// The sequence number of an echo reply a ping socket received (type,
/// code, checksum, identifier, sequence), if it is one.
fn echo_reply_seq(data: &[u8], reply_type: u8) -> Option<u16> {
    (data.len() >= 8 && data[0] == reply_type).then(|| u16::from_be_bytes([data[6], data[7]]))
}

/// Flows at once, all networks together.
pub const DEFAULT_MAX_FLOWS: usize = 4096;
/// Idle time after which a UDP flow closes.
pub const UDP_IDLE: Duration = Duration::from_secs(60);
/// Idle time after which an ICMP echo flow closes.
pub const ICMP_IDLE: Duration = Duration::from_secs(10);
/// How often idle flows are looked for.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// TTL of the frames the gateway puts into sandboxes.
const TTL: u8 = 64;

/// A flow's id: the driver's key for its socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowId(pub u64);

/// Which protocol a flow carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NatProto {
    /// UDP: a connected UDP socket.
    Udp,
    /// ICMP echo: a connected ping socket.
    IcmpEcho,
}

/// What the driver is to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NatAction {
    /// Open a host socket for a new flow, connected to `remote` (port 0
    /// for ICMP).
    Open {
        /// The flow.
        flow: FlowId,
        /// UDP or ICMP echo.
        proto: NatProto,
        /// Where to.
        remote: SocketAddr,
    },
    /// Send on a flow's socket: a UDP payload, or an ICMP echo request
    /// (type 8 header with identifier 0, the kernel sets it, and payload).
    Send {
        /// The flow.
        flow: FlowId,
        /// The bytes.
        data: Vec<u8>,
    },
    /// Close a flow's socket.
    Close {
        /// The flow.
        flow: FlowId,
    },
    /// Answer a client of a published UDP port: send `data` from the
    /// published socket `listener` to `client`.
    Reply {
        /// The published socket (the driver's id).
        listener: u32,
        /// The client, as the host socket saw it.
        client: SocketAddr,
        /// The payload.
        data: Vec<u8>,
    },
}

/// Limits and timers.
#[derive(Debug, Clone)]
pub struct NatConfig {
    /// Flows at once.
    pub max_flows: usize,
    /// Idle time after which a UDP flow closes.
    pub udp_idle: Duration,
    /// Idle time after which an ICMP echo flow closes.
    pub icmp_idle: Duration,
}

/// Counters of the NAT.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NatCounters {
    /// Flows opened.
    pub flows_opened: u64,
    /// New flows refused (the table full, a share reached, no socket).
    pub flows_refused: u64,
    /// Flows closed by their idle timer.
    pub flows_idled_out: u64,
    /// Frames sent out.
    pub packets_out: u64,
    /// Frames put back into sandboxes.
    pub packets_in: u64,
    /// Frames not translated (fragments, other protocols).
    pub dropped: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct FlowKey {
    network: NetworkId,
    proto: NatProto,
    local: SocketAddr,
    remote: SocketAddr,
}

#[derive(Debug, Clone)]
struct Flow {
    key: FlowKey,
    /// Whose share the flow counts in.
    share: ShareKey,
    /// For a flow from a published port: its socket and the real client.
    inbound: Option<(u32, SocketAddr)>,
    port: PortId,
    sandbox_mac: MacAddr,
    gateway_mac: MacAddr,
    last_active: Instant,
}

/// The NAT. See the module header.
#[derive(Debug)]
pub struct Nat {
    config: NatConfig,
    by_key: FxHashMap<FlowKey, FlowId>,
    flows: FxHashMap<FlowId, Flow>,
    next_id: u64,
    actions: VecDeque<NatAction>,
    frames: VecDeque<(PortId, Vec<u8>)>,
    counters: NatCounters,
    next_sweep: Option<Instant>,
    reassembly: Reassembly,
    shares: FlowShares,
}

impl Default for NatConfig {
    fn default() -> Self {
        NatConfig {
            max_flows: DEFAULT_MAX_FLOWS,
            udp_idle: UDP_IDLE,
            icmp_idle: ICMP_IDLE,
        }
    }
}

impl Nat {
    /// An empty table.
    pub fn new(config: NatConfig) -> Self {
        Nat {
            shares: FlowShares::new(config.max_flows),
            config,
            by_key: FxHashMap::default(),
            flows: FxHashMap::default(),
            next_id: 0,
            actions: VecDeque::new(),
            frames: VecDeque::new(),
            counters: NatCounters::default(),
            next_sweep: None,
            reassembly: Reassembly::default(),
        }
    }

    /// An outbound frame from `ingress` (network `network`, gateway
    /// `gateway_mac`) to a remote address. A datagram of a known flow
    /// leaves on it; one that starts a flow opens a host socket to `open`
    /// (the destination, or the host's loopback for the gateway's
    /// address), or is refused when `open` is None.
    ///
    /// # Errors
    ///
    /// [`DropReason::NoRoute`] for what this NAT does not translate,
    /// [`DropReason::Malformed`] for headers that do not parse,
    /// [`DropReason::NatFull`] when the flow table is full.
    pub fn handle_frame(
        &mut self,
        now: Instant,
        network: NetworkId,
        ingress: PortId,
        gateway_mac: MacAddr,
        frame: &GatewayFrame<'_>,
        open: Option<IpAddr>,
    ) -> Result<(), DropReason> {
        let packet = frame.packet()?;
        if frame.is_ipv4_fragment() {
            // A fragment: the datagram goes on once it is whole (a new
            // frame, parsed as such).
            return match self.reassembly.push(now, network, frame.bytes()) {
                Fragment::Held => Ok(()),
                Fragment::Complete(whole) => {
                    let whole = GatewayFrame::parse(&whole)?;
                    self.handle_frame(now, network, ingress, gateway_mac, &whole, open)
                }
                Fragment::Dropped => {
                    self.counters.dropped += 1;
                    Err(DropReason::Malformed)
                }
            };
        }
        let (src, dst) = frame.addresses().ok_or(DropReason::NoRoute)?;
        let (proto, local, remote, data) = match &packet.transport {
            Some(TransportSlice::Udp(udp)) => (
                NatProto::Udp,
                SocketAddr::new(src, udp.source_port()),
                SocketAddr::new(dst, udp.destination_port()),
                udp.payload().to_vec(),
            ),
            Some(TransportSlice::Icmpv4(icmp)) => {
                let Icmpv4Type::EchoRequest(echo) = icmp.icmp_type() else {
                    return Err(DropReason::NoRoute);
                };
                echo_flow(ECHO_REQUEST_V4, src, dst, echo, icmp.payload())
            }
            Some(TransportSlice::Icmpv6(icmp)) => {
                let Icmpv6Type::EchoRequest(echo) = icmp.icmp_type() else {
                    return Err(DropReason::NoRoute);
                };
                echo_flow(ECHO_REQUEST_V6, src, dst, echo, icmp.payload())
            }
            _ => {
                self.counters.dropped += 1;
                return Err(DropReason::NoRoute);
            }
        };
        let key = FlowKey {
            network,
            proto,
            local,
            remote,
        };
        let flow = match self.by_key.get(&key) {
            Some(flow) => *flow,
            None => {
                let Some(open) = open else {
                    self.counters.dropped += 1;
                    return Err(DropReason::NoRoute);
                };
                let remote = SocketAddr::new(open, remote.port());
                let new_flow = Flow {
                    key,
                    share: ShareKey {
                        network,
                        sandbox: Some(ingress),
                    },
                    inbound: None,
                    port: ingress,
                    sandbox_mac: frame.source(),
                    gateway_mac,
                    last_active: now,
                };
                let flow = match self.insert_flow(now, new_flow.clone()) {
                    Ok(flow) => flow,
                    Err(e) => {
                        self.refuse(&new_flow, Unreachable::Prohibited);
                        return Err(e);
                    }
                };
                self.actions.push_back(NatAction::Open {
                    flow,
                    proto,
                    remote,
                });
                flow
            }
        };
        let mut inbound = None;
        if let Some(f) = self.flows.get_mut(&flow) {
            f.last_active = now;
            f.port = ingress;
            inbound = f.inbound;
        }
        match inbound {
            Some((listener, client)) => self.actions.push_back(NatAction::Reply {
                listener,
                client,
                data,
            }),
            None => self.actions.push_back(NatAction::Send { flow, data }),
        }
        self.counters.packets_out += 1;
        Ok(())
    }

    /// A datagram from `client` on the published UDP socket `listener`,
    /// for the sandbox at `sandbox` (MAC `sandbox_mac`, switch port
    /// `port`). It enters the sandbox from `shown` (the client, or the
    /// gateway for a loopback client), and the sandbox's answers to `shown`
    /// leave from the published socket.
    ///
    /// # Errors
    ///
    /// [`DropReason::NatFull`] when the flow table is full.
    #[allow(clippy::too_many_arguments)]
    pub fn handle_inbound(
        &mut self,
        now: Instant,
        network: NetworkId,
        (port, sandbox_mac, gateway_mac): (PortId, MacAddr, MacAddr),
        listener: u32,
        sandbox: SocketAddr,
        client: SocketAddr,
        shown: SocketAddr,
        data: &[u8],
    ) -> Result<(), DropReason> {
        let key = FlowKey {
            network,
            proto: NatProto::Udp,
            local: sandbox,
            remote: shown,
        };
        let flow = match self.by_key.get(&key) {
            Some(flow) => *flow,
            None => self.insert_flow(
                now,
                Flow {
                    key,
                    share: ShareKey {
                        network,
                        sandbox: None,
                    },
                    inbound: Some((listener, client)),
                    port,
                    sandbox_mac,
                    gateway_mac,
                    last_active: now,
                },
            )?,
        };
        self.handle_reply(now, flow, data);
        Ok(())
    }

    /// Enter a new flow in the table, unless it is full.
    fn insert_flow(&mut self, now: Instant, flow: Flow) -> Result<FlowId, DropReason> {
        if self.shares.admit(flow.share).is_err() {
            self.counters.flows_refused += 1;
            return Err(DropReason::NatFull);
        }
        self.next_id += 1;
        let id = FlowId(self.next_id);
        self.by_key.insert(flow.key.clone(), id);
        self.flows.insert(id, flow);
        self.counters.flows_opened += 1;
        if self.next_sweep.is_none() {
            self.next_sweep = Some(now + SWEEP_INTERVAL);
        }
        Ok(id)
    }

    /// What a flow's socket received: a UDP payload, or an ICMP echo reply
    /// (header and payload, as a ping socket returns it).
    pub fn handle_reply(&mut self, now: Instant, flow: FlowId, data: &[u8]) {
        let Some(f) = self.flows.get_mut(&flow) else {
            return;
        };
        f.last_active = now;
        let f = f.clone();
        let builder = PacketBuilder::ethernet2(f.gateway_mac.0, f.sandbox_mac.0);
        let mut frame = Vec::with_capacity(64 + data.len());
        let written = match (f.key.proto, f.key.remote.ip(), f.key.local.ip()) {
            (NatProto::Udp, IpAddr::V4(remote), IpAddr::V4(local)) => builder
                .ipv4(remote.octets(), local.octets(), TTL)
                .udp(f.key.remote.port(), f.key.local.port())
                .write(&mut frame, data)
                .is_ok(),
            (NatProto::Udp, IpAddr::V6(remote), IpAddr::V6(local)) => builder
                .ipv6(remote.octets(), local.octets(), TTL)
                .udp(f.key.remote.port(), f.key.local.port())
                .write(&mut frame, data)
                .is_ok(),
            (NatProto::IcmpEcho, IpAddr::V4(remote), IpAddr::V4(local)) => {
                let Some(seq) = echo_reply_seq(data, ECHO_REPLY_V4) else {
                    return;
                };
                builder
                    .ipv4(remote.octets(), local.octets(), TTL)
                    .icmpv4(Icmpv4Type::EchoReply(IcmpEchoHeader {
                        id: f.key.local.port(),
                        seq,
                    }))
                    .write(&mut frame, &data[8..])
                    .is_ok()
            }
            (NatProto::IcmpEcho, IpAddr::V6(remote), IpAddr::V6(local)) => {
                let Some(seq) = echo_reply_seq(data, ECHO_REPLY_V6) else {
                    return;
                };
                builder
                    .ipv6(remote.octets(), local.octets(), TTL)
                    .icmpv6(Icmpv6Type::EchoReply(IcmpEchoHeader {
                        id: f.key.local.port(),
                        seq,
                    }))
                    .write(&mut frame, &data[8..])
                    .is_ok()
            }
            _ => false,
        };
        if written {
            self.counters.packets_in += 1;
            self.frames.push_back((f.port, frame));
        }
    }

    /// A UDP flow's remote refused (ICMP port unreachable reached the host
    /// socket): tell the sandbox the same way, in ICMP or ICMPv6.
    pub fn handle_refused(&mut self, flow: FlowId) {
        let Some(f) = self.flows.get(&flow).cloned() else {
            return;
        };
        self.refuse(&f, Unreachable::Port);
    }

    /// The host socket of a new flow could not be opened (the daemon is
    /// out of file descriptors, or the kernel refused): the flow ends and
    /// the sandbox is told, as for a flow over its share.
    pub fn open_failed(&mut self, flow: FlowId) {
        let Some(f) = self.flows.get(&flow).cloned() else {
            return;
        };
        self.counters.flows_refused += 1;
        self.refuse(&f, Unreachable::Prohibited);
        self.close(flow);
    }

    /// Answer a UDP datagram of `f` with ICMP destination unreachable.
    fn refuse(&mut self, f: &Flow, why: Unreachable) {
        if f.key.proto != NatProto::Udp {
            return;
        }
        if let Some(frame) = udp_unreachable(&f.key, f.sandbox_mac, f.gateway_mac, why) {
            self.frames.push_back((f.port, frame));
        }
    }

    /// Close idle flows.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.reassembly.handle_timeout(now);
        if self.next_sweep.is_none_or(|due| now < due) {
            return;
        }
        let (udp_idle, icmp_idle) = (self.config.udp_idle, self.config.icmp_idle);
        let idle: Vec<FlowId> = self
            .flows
            .iter()
            .filter(|(_, f)| {
                let limit = match f.key.proto {
                    NatProto::Udp => udp_idle,
                    NatProto::IcmpEcho => icmp_idle,
                };
                now.saturating_duration_since(f.last_active) >= limit
            })
            .map(|(id, _)| *id)
            .collect();
        self.counters.flows_idled_out += idle.len() as u64;
        for flow in idle {
            self.close(flow);
        }
        self.next_sweep = (!self.flows.is_empty()).then(|| now + SWEEP_INTERVAL);
    }

    /// Forget a flow (and ask the driver to close its socket).
    pub fn close(&mut self, flow: FlowId) {
        if let Some(f) = self.flows.remove(&flow) {
            self.by_key.remove(&f.key);
            self.shares.release(f.share);
            if f.inbound.is_none() {
                self.actions.push_back(NatAction::Close { flow });
            }
        }
    }

    /// Forget every flow of a network.
    pub fn remove_network(&mut self, network: NetworkId) {
        let flows: Vec<FlowId> = self
            .flows
            .iter()
            .filter(|(_, f)| f.key.network == network)
            .map(|(id, _)| *id)
            .collect();
        for flow in flows {
            self.close(flow);
        }
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

    /// Flows of `network` open now.
    pub fn network_flows(&self, network: NetworkId) -> usize {
        self.shares.network_flows(network)
    }

    /// When [`Nat::handle_timeout`] wants to run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [self.next_sweep, self.reassembly.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
    }

    /// The next socket action for the driver.
    pub fn poll_action(&mut self) -> Option<NatAction> {
        self.actions.pop_front()
    }

    /// The next frame to put into a sandbox, with its port.
    pub fn poll_frame(&mut self) -> Option<(PortId, Vec<u8>)> {
        self.frames.pop_front()
    }

    /// Flows open now.
    pub fn flow_count(&self) -> usize {
        self.flows.len()
    }

    /// The counters.
    pub fn counters(&self) -> NatCounters {
        self.counters
    }
}

/// Which ICMP destination unreachable a refused datagram gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unreachable {
    /// The remote's port is closed (the remote said so).
    Port,
    /// The NAT refuses the flow (a share reached, no socket).
    Prohibited,
}

/// ICMP (or ICMPv6) destination unreachable for a UDP datagram of the
/// flow `key`, from its remote to the sandbox, quoting the datagram's IP
/// and UDP headers (RFC 792 asks for 8 bytes beyond the IP header; RFC
/// 4443 for as much as fits, and the headers are what identify the flow).
fn udp_unreachable(
    key: &FlowKey,
    sandbox_mac: MacAddr,
    gateway_mac: MacAddr,
    why: Unreachable,
) -> Option<Vec<u8>> {
    let mut udp_header = Vec::with_capacity(8);
    udp_header.extend_from_slice(&key.local.port().to_be_bytes());
    udp_header.extend_from_slice(&key.remote.port().to_be_bytes());
    udp_header.extend_from_slice(&8u16.to_be_bytes());
    udp_header.extend_from_slice(&[0, 0]);
    let mut quoted = Vec::with_capacity(48);
    let builder = PacketBuilder::ethernet2(gateway_mac.0, sandbox_mac.0);
    let mut frame = Vec::new();
    match (key.remote.ip(), key.local.ip()) {
        (IpAddr::V4(remote), IpAddr::V4(local)) => {
            etherparse::Ipv4Header::new(
                8,
                64,
                etherparse::IpNumber::UDP,
                local.octets(),
                remote.octets(),
            )
            .ok()?
            .write(&mut quoted)
            .ok()?;
            quoted.extend_from_slice(&udp_header);
            let code = match why {
                Unreachable::Port => etherparse::icmpv4::DestUnreachableHeader::Port,
                Unreachable::Prohibited => {
                    etherparse::icmpv4::DestUnreachableHeader::FilterProhibited
                }
            };
            builder
                .ipv4(remote.octets(), local.octets(), TTL)
                .icmpv4(Icmpv4Type::DestinationUnreachable(code))
                .write(&mut frame, &quoted)
                .ok()?;
        }
        (IpAddr::V6(remote), IpAddr::V6(local)) => {
            etherparse::Ipv6Header {
                payload_length: 8,
                next_header: etherparse::IpNumber::UDP,
                hop_limit: 64,
                source: local.octets(),
                destination: remote.octets(),
                ..Default::default()
            }
            .write(&mut quoted)
            .ok()?;
            quoted.extend_from_slice(&udp_header);
            let code = match why {
                Unreachable::Port => etherparse::icmpv6::DestUnreachableCode::Port,
                Unreachable::Prohibited => etherparse::icmpv6::DestUnreachableCode::Prohibited,
            };
            builder
                .ipv6(remote.octets(), local.octets(), TTL)
                .icmpv6(Icmpv6Type::DestinationUnreachable(code))
                .write(&mut frame, &quoted)
                .ok()?;
        }
        _ => return None,
    }
    Some(frame)
}

#[cfg(test)]
mod tests;
