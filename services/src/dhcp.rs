//! The gateway's DHCPv4 server (RFC 2131), sans-IO: every endpoint that
//! asks gets the address IPAM already gave it.
//!
//! # Theory of operation
//!
//! weft hands out addresses when an endpoint is made (IPAM), so this server
//! allocates nothing: it is a table, per network, from an endpoint's MAC to
//! its lease ([`DhcpLease`]: address, prefix, gateway, host name), replaced
//! whole by the controller whenever the network's endpoints change
//! ([`DhcpServer::set_scope`]), like the DNS zone. A VM (or a sandbox whose
//! address was flushed) that runs a DHCP client learns what weft decided.
//!
//! The switch hands the gateway every DHCP client broadcast (UDP to port 67
//! from a local port: `Gateway::wants_multicast`) and every unicast to the
//! gateway (renewals); the dispatcher gives the UDP payload to
//! [`DhcpServer::handle_message`] with the network and the Ethernet source,
//! and turns the [`DhcpReply`] into a frame back to the ingress port.
//!
//! | client sends | server answers |
//! |---|---|
//! | DISCOVER from a known MAC | OFFER of its lease |
//! | DISCOVER from an unknown MAC | nothing (another server may know it) |
//! | REQUEST for its lease (option 50 or `ciaddr`), ours or no server id | ACK |
//! | REQUEST naming another server (option 54) | nothing: the client chose it |
//! | REQUEST for another address, or from an unknown MAC | NAK |
//! | INFORM from a known MAC | ACK with the options, no lease (RFC 2131 §4.3.5) |
//! | RELEASE, DECLINE | nothing (the address stays the endpoint's; a DECLINE is logged: someone else uses it) |
//!
//! An OFFER or ACK carries: subnet mask (1), router (3), DNS server (6: the
//! gateway, the embedded DNS), host name (12: the endpoint's name), domain
//! name (15: the network's name, so `web.NETWORK` and `web` both resolve),
//! interface MTU (26, when the network sets one), broadcast address (28),
//! lease time (51, [`LEASE_TIME`]) with renewal T1 (58) and rebinding T2
//! (59) at the RFC's 1/2 and 7/8, server identifier (54: the gateway) and a
//! classless default route via the gateway (121, RFC 3442; a client that
//! takes 121 ignores option 3, so both say the same).
//!
//! Replies go where RFC 2131 §4.1 says, within one port: a NAK, or a
//! request with the broadcast flag, to 255.255.255.255; a client that has
//! an address (`ciaddr`) to it; otherwise to the offered address at the
//! client's MAC (a client without an address reads raw frames, as udhcpc
//! and the kernel's DHCP clients do). Relayed messages (`giaddr` set) are
//! dropped: a weft network has no relays.
//!
//! # Limits and what an attacker could try
//!
//! The server keeps no per-client state (the leases are the controller's),
//! so a flood of DISCOVERs allocates nothing and exhausts nothing: each is
//! one decode and at most one reply of a bounded size. Messages longer than
//! [`MAX_MESSAGE_LEN`] are dropped before they are decoded
//! (`oversized`); ones that do not decode, are not BOOTREQUESTs, lack the
//! magic cookie or carry a hardware address that is not a 6-byte Ethernet
//! MAC are dropped (`malformed`); a `chaddr` other than the frame's
//! Ethernet source is dropped (`spoofed`: with port security the source
//! MAC is the port's own, so a client asks only for itself). Every drop is
//! counted in [`DhcpCounters`].
//!
//! # Dependencies
//!
//! `dhcproto` is the message codec: it decodes and encodes every option
//! RFC 2132 defines (121 included) with typed values, so this file says
//! which options to send, not how they are laid out; it shares
//! `hickory-proto` with the DNS server. Its catches, handled here: it does
//! not check the magic cookie; `Message::chaddr` panics when `hlen` is
//! over 16, so `hlen` is checked before `chaddr` is read; and its option
//! decoder asserts on unexpected lengths of some options (the fuzz target
//! found one), so requests are decoded only after [`sanitize`] walked
//! their options and kept the three the server reads (53, 50, 54). Option
//! overload (52: options in `sname`/`file`) is therefore not followed.
//!
//! Not implemented: DHCPv6 and router advertisements, a lease that names
//! the client in DNS from its host name option, relays, dynamic pools.

use std::net::Ipv4Addr;
use std::time::Duration;

use dhcproto::v4::{DhcpOption, Flags, HType, Message, MessageType, Opcode, OptionCode, MAGIC};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use rustc_hash::FxHashMap;

use weft_vswitch::wire::ethernet::MacAddr;
use weft_vswitch::NetworkId;

/// The DHCP server's port.
pub const SERVER_PORT: u16 = 67;
/// The DHCP client's port.
pub const CLIENT_PORT: u16 = 68;

/// The lease time the server gives. Leases never run out for real (the
/// address is the endpoint's until it is removed), so this only says how
/// often a client checks in: an hour, so a change of MTU or routes reaches
/// running guests within half an hour (T1), while a renewal costs nothing.
pub const LEASE_TIME: Duration = Duration::from_secs(3600);

/// The longest DHCP message taken, in bytes: what fits in a 1500-byte
/// Ethernet MTU after the IPv4 and UDP headers (1500 − 20 − 8). RFC 2131
/// §2 lets a client send more only after it learned the server takes it
/// (option 57), which this server never says.
pub const MAX_MESSAGE_LEN: usize = 1472;

/// The fixed part of a BOOTP message before the options: op..file (236
/// bytes) and the magic cookie (RFC 2131 §3).
const MAGIC_OFFSET: usize = 236;

/// One endpoint's lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpLease {
    /// The endpoint's MAC.
    pub mac: MacAddr,
    /// Its IPv4 address.
    pub address: Ipv4Addr,
    /// The prefix length of its subnet.
    pub prefix_len: u8,
    /// The gateway of its subnet (router, DNS server, server identifier).
    pub gateway: Ipv4Addr,
    /// Its name (option 12), when it is a valid host name.
    pub hostname: String,
}

/// What the server knows of one network: its leases and options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DhcpScope {
    /// The network's name, sent as the domain name (option 15).
    pub domain: String,
    /// The network's MTU (option 26), when it sets one.
    pub mtu: Option<u16>,
    /// One lease per endpoint with an IPv4 address.
    pub leases: Vec<DhcpLease>,
}

/// What the server answers, for the dispatcher to put into a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpReply {
    /// The encoded DHCP message (UDP payload, port 67 to 68).
    pub message: Vec<u8>,
    /// The IPv4 source: the gateway of the client's subnet.
    pub source: Ipv4Addr,
    /// The IPv4 destination (see the module header).
    pub destination: Ipv4Addr,
    /// The Ethernet destination.
    pub mac: MacAddr,
}

/// What the server did, since it started. See the module header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DhcpCounters {
    /// DISCOVERs answered with an OFFER.
    pub offers: u64,
    /// REQUESTs and INFORMs answered with an ACK.
    pub acks: u64,
    /// REQUESTs answered with a NAK.
    pub naks: u64,
    /// Well-formed messages not answered: an unknown MAC's DISCOVER, a
    /// REQUEST for another server, RELEASE, DECLINE, other types.
    pub ignored: u64,
    /// Messages longer than [`MAX_MESSAGE_LEN`].
    pub oversized: u64,
    /// Messages that do not decode or are not a client's Ethernet request.
    pub malformed: u64,
    /// Messages whose `chaddr` is not the frame's Ethernet source.
    pub spoofed: u64,
}

/// See the module header.
#[derive(Debug, Default)]
pub struct DhcpServer {
    scopes: FxHashMap<NetworkId, Scope>,
    counters: DhcpCounters,
    /// Host names clients asked for (option 12 in an acknowledged
    /// REQUEST), by network and leased address: extra DNS names for them
    /// (see [`DhcpServer::claimed_names`]).
    claims: FxHashMap<NetworkId, std::collections::BTreeMap<Ipv4Addr, String>>,
    /// Networks whose claims changed since [`DhcpServer::take_changed`].
    changed: Vec<NetworkId>,
}

#[derive(Debug, Default)]
struct Scope {
    domain: String,
    mtu: Option<u16>,
    leases: FxHashMap<MacAddr, DhcpLease>,
}

impl DhcpServer {
    /// A server with no network.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replace what the server knows of `network`.
    pub fn set_scope(&mut self, network: NetworkId, scope: DhcpScope) {
        // A name a client asked for goes with its lease.
        if let Some(names) = self.claims.get_mut(&network) {
            let before = names.len();
            names.retain(|address, _| scope.leases.iter().any(|l| l.address == *address));
            if names.len() != before {
                self.changed.push(network);
            }
        }
        let leases = scope.leases.into_iter().map(|l| (l.mac, l)).collect();
        self.scopes.insert(
            network,
            Scope {
                domain: scope.domain,
                mtu: scope.mtu,
                leases,
            },
        );
    }

    /// Forget a network.
    pub fn remove_scope(&mut self, network: NetworkId) {
        self.scopes.remove(&network);
        self.claims.remove(&network);
    }

    /// The host names the clients of `network` asked for: leased address →
    /// name (a valid host name, lower case, one label).
    pub fn claimed_names(
        &self,
        network: NetworkId,
    ) -> Option<&std::collections::BTreeMap<Ipv4Addr, String>> {
        self.claims.get(&network)
    }

    /// The networks whose claimed names changed since the last call.
    pub fn take_changed(&mut self) -> Vec<NetworkId> {
        std::mem::take(&mut self.changed)
    }

    /// The counters.
    pub fn counters(&self) -> DhcpCounters {
        self.counters
    }

    /// A DHCP message (a UDP payload to port 67) from `source` (the
    /// frame's Ethernet source) on `network`, whose gateway answers from
    /// `gateway` (its first IPv4 address). The reply to send, if any.
    pub fn handle_message(
        &mut self,
        network: NetworkId,
        source: MacAddr,
        gateway: Option<Ipv4Addr>,
        payload: &[u8],
    ) -> Option<DhcpReply> {
        if payload.len() > MAX_MESSAGE_LEN {
            self.counters.oversized += 1;
            tracing::debug!(len = payload.len(), reason = "oversized", "DHCP drop");
            return None;
        }
        let Some(request) = decode_request(payload) else {
            self.counters.malformed += 1;
            tracing::debug!(reason = "malformed", "DHCP drop");
            return None;
        };
        if request.chaddr() != source.0 {
            self.counters.spoofed += 1;
            tracing::debug!(mac = %source, reason = "spoofed", "DHCP drop");
            return None;
        }
        let Some(kind) = request.opts().msg_type() else {
            self.counters.malformed += 1;
            return None;
        };
        let scope = self.scopes.get(&network);
        let lease = scope.and_then(|s| s.leases.get(&source));
        let reply = match (kind, lease) {
            (MessageType::Discover, Some(lease)) => {
                self.counters.offers += 1;
                tracing::debug!(mac = %source, address = %lease.address, "DHCP offer");
                Some(answer(&request, scope?, lease, MessageType::Offer))
            }
            (MessageType::Request, lease) => {
                let server = lease.map(|l| l.gateway).or(gateway);
                match request.opts().get(OptionCode::ServerIdentifier) {
                    Some(DhcpOption::ServerIdentifier(id)) if Some(*id) != server => {
                        // The client took another server's offer.
                        self.counters.ignored += 1;
                        return None;
                    }
                    _ => {}
                }
                let wanted = match request.opts().get(OptionCode::RequestedIpAddress) {
                    Some(DhcpOption::RequestedIpAddress(ip)) => *ip,
                    _ => request.ciaddr(),
                };
                match lease {
                    Some(lease) if wanted == lease.address => {
                        self.counters.acks += 1;
                        tracing::debug!(mac = %source, address = %lease.address, "DHCP ack");
                        let reply = answer(&request, scope?, lease, MessageType::Ack);
                        if let Some(name) = requested_hostname(payload) {
                            if name != lease.hostname.to_ascii_lowercase() {
                                let names = self.claims.entry(network).or_default();
                                if names.get(&lease.address) != Some(&name) {
                                    tracing::info!(address = %lease.address, name, "DHCP client names itself");
                                    names.insert(lease.address, name);
                                    self.changed.push(network);
                                }
                            }
                        }
                        Some(reply)
                    }
                    _ => {
                        self.counters.naks += 1;
                        tracing::debug!(mac = %source, requested = %wanted, "DHCP nak");
                        Some(nak(&request, server?))
                    }
                }
            }
            (MessageType::Inform, Some(lease)) => {
                self.counters.acks += 1;
                let mut reply = answer(&request, scope?, lease, MessageType::Ack);
                // RFC 2131 §4.3.5: no lease, no yiaddr.
                reply.message.set_yiaddr(Ipv4Addr::UNSPECIFIED);
                let opts = reply.message.opts_mut();
                opts.remove(OptionCode::AddressLeaseTime);
                opts.remove(OptionCode::Renewal);
                opts.remove(OptionCode::Rebinding);
                Some(reply)
            }
            (MessageType::Decline, Some(lease)) => {
                tracing::warn!(mac = %source, address = %lease.address, "DHCP decline: another host on the network uses this endpoint's address");
                self.counters.ignored += 1;
                None
            }
            _ => {
                self.counters.ignored += 1;
                None
            }
        }?;
        let mut message = Vec::with_capacity(dhcproto::v4::MIN_PACKET_SIZE);
        if reply
            .message
            .encode(&mut Encoder::new(&mut message))
            .is_err()
        {
            // Only ever values we built: unreachable in practice.
            self.counters.malformed += 1;
            return None;
        }
        // BOOTP's minimum (RFC 1542 §2.1): some clients drop shorter ones.
        if message.len() < dhcproto::v4::MIN_PACKET_SIZE {
            message.resize(dhcproto::v4::MIN_PACKET_SIZE, 0);
        }
        Some(DhcpReply {
            message,
            source: reply.source,
            destination: reply.destination,
            mac: reply.mac,
        })
    }
}

/// A reply before it is encoded.
struct Draft {
    message: Message,
    source: Ipv4Addr,
    destination: Ipv4Addr,
    mac: MacAddr,
}

/// The options the server reads, with the length each must have (0: any
/// length up to 255). Only these reach `dhcproto`'s option decoder.
const READ_OPTIONS: [(u8, usize); 3] = [
    (53, 1), // message type
    (50, 4), // requested IP address
    (54, 4), // server identifier
];

/// The fixed header of `payload` and, of its options, only the first
/// occurrence of each of [`READ_OPTIONS`] with its right length, then End.
/// None when the fixed header is short, the magic cookie is wrong, or an
/// option runs past the end (truncated).
///
/// `dhcproto`'s option decoder asserts (in debug builds) or underflows on
/// lengths it does not expect for some option codes (found by the
/// `dhcp_message` fuzz target: option 94 with a length other than 3), so
/// untrusted options never reach it: this walk checks every option's
/// length itself and passes on only what the server reads.
fn sanitize(payload: &[u8]) -> Option<Vec<u8>> {
    if payload.get(MAGIC_OFFSET..MAGIC_OFFSET + 4) != Some(&MAGIC[..]) {
        return None;
    }
    let options_at = MAGIC_OFFSET + 4;
    let mut out = Vec::with_capacity(options_at + 16);
    out.extend_from_slice(&payload[..options_at]);
    let mut seen = [false; READ_OPTIONS.len()];
    let mut rest = &payload[options_at..];
    loop {
        match rest {
            // No End option: tolerated, as most servers do.
            [] | [255, ..] => break,
            [0, tail @ ..] => rest = tail,
            [code, len, tail @ ..] => {
                let len = usize::from(*len);
                let value = tail.get(..len)?;
                if let Some(i) = READ_OPTIONS.iter().position(|(c, _)| c == code) {
                    if !seen[i] && READ_OPTIONS[i].1 == len {
                        seen[i] = true;
                        out.extend_from_slice(&[*code, value.len().try_into().ok()?]);
                        out.extend_from_slice(value);
                    }
                }
                rest = &tail[len..];
            }
            [_] => return None,
        }
    }
    out.push(255);
    Some(out)
}

/// The host name a client sends (option 12), when it is one DNS label
/// (RFC 1123 letters, digits, hyphens), lower-cased; a name with dots is
/// not taken (it would name something outside the network).
fn requested_hostname(payload: &[u8]) -> Option<String> {
    let mut rest = payload.get(MAGIC_OFFSET + 4..)?;
    // Bounded: every pass consumes at least one byte.
    loop {
        match rest {
            [] | [255, ..] => return None,
            [0, tail @ ..] => rest = tail,
            [code, len, tail @ ..] => {
                let value = tail.get(..usize::from(*len))?;
                if *code == HOSTNAME_OPTION {
                    let name = std::str::from_utf8(value).ok()?.trim_end_matches('\0');
                    let name = name.to_ascii_lowercase();
                    return (is_hostname(&name) && !name.contains('.')).then_some(name);
                }
                rest = &tail[usize::from(*len)..];
            }
            [_] => return None,
        }
    }
}

/// Option 12, Host Name.
const HOSTNAME_OPTION: u8 = 12;

/// Decode a client's request; None unless it is a well-formed BOOTREQUEST
/// from an Ethernet client, not relayed.
fn decode_request(payload: &[u8]) -> Option<Message> {
    let sanitized = sanitize(payload)?;
    let message = Message::decode(&mut Decoder::new(&sanitized)).ok()?;
    // `hlen` before `chaddr()`: it slices by `hlen` (see the header).
    let ethernet = message.htype() == HType::Eth && message.hlen() == 6;
    let ok =
        message.opcode() == Opcode::BootRequest && ethernet && message.giaddr().is_unspecified();
    ok.then_some(message)
}

fn reply_base(request: &Message, kind: MessageType, server: Ipv4Addr) -> Message {
    let mut message = Message::new_with_id(
        request.xid(),
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        request.chaddr(),
    );
    message
        .set_opcode(Opcode::BootReply)
        .set_htype(HType::Eth)
        .set_flags(request.flags());
    let opts = message.opts_mut();
    opts.insert(DhcpOption::MessageType(kind));
    opts.insert(DhcpOption::ServerIdentifier(server));
    message
}

fn answer(request: &Message, scope: &Scope, lease: &DhcpLease, kind: MessageType) -> Draft {
    let mut message = reply_base(request, kind, lease.gateway);
    message.set_yiaddr(lease.address);
    if kind == MessageType::Ack {
        message.set_ciaddr(request.ciaddr());
    }
    let mask = prefix_mask(lease.prefix_len);
    let broadcast = Ipv4Addr::from(u32::from(lease.address) | !u32::from(mask));
    let lease_secs = u32::try_from(LEASE_TIME.as_secs()).unwrap_or(u32::MAX);
    let opts = message.opts_mut();
    opts.insert(DhcpOption::AddressLeaseTime(lease_secs));
    opts.insert(DhcpOption::Renewal(lease_secs / 2));
    opts.insert(DhcpOption::Rebinding(lease_secs / 8 * 7));
    opts.insert(DhcpOption::SubnetMask(mask));
    opts.insert(DhcpOption::BroadcastAddr(broadcast));
    opts.insert(DhcpOption::Router(vec![lease.gateway]));
    opts.insert(DhcpOption::DomainNameServer(vec![lease.gateway]));
    if let Ok(default) = ipnet::Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 0) {
        opts.insert(DhcpOption::ClasslessStaticRoute(vec![(
            default,
            lease.gateway,
        )]));
    }
    if is_hostname(&lease.hostname) {
        opts.insert(DhcpOption::Hostname(lease.hostname.clone()));
    }
    if is_hostname(&scope.domain) {
        opts.insert(DhcpOption::DomainName(scope.domain.clone()));
    }
    if let Some(mtu) = scope.mtu.filter(|m| *m >= 68) {
        opts.insert(DhcpOption::InterfaceMtu(mtu));
    }
    let (destination, mac) = if request.flags().broadcast() {
        (Ipv4Addr::BROADCAST, MacAddr::BROADCAST)
    } else if !request.ciaddr().is_unspecified() {
        (request.ciaddr(), mac_of(request))
    } else {
        (lease.address, mac_of(request))
    };
    Draft {
        message,
        source: lease.gateway,
        destination,
        mac,
    }
}

fn nak(request: &Message, server: Ipv4Addr) -> Draft {
    let mut message = reply_base(request, MessageType::Nak, server);
    // RFC 2131 §4.3.2: a NAK is broadcast (the client's address is wrong).
    message.set_flags(Flags::default().set_broadcast());
    Draft {
        message,
        source: server,
        destination: Ipv4Addr::BROADCAST,
        mac: MacAddr::BROADCAST,
    }
}

fn mac_of(request: &Message) -> MacAddr {
    let mut mac = [0u8; 6];
    // `decode_request` checked hlen == 6.
    mac.copy_from_slice(request.chaddr().get(..6).unwrap_or(&[0; 6]));
    MacAddr(mac)
}

fn prefix_mask(prefix_len: u8) -> Ipv4Addr {
    let bits = u32::from(prefix_len.min(32));
    Ipv4Addr::from(u32::MAX.checked_shl(32 - bits).unwrap_or(0))
}

/// Whether `name` can go in a host or domain name option: a DNS name of
/// letters, digits, hyphens and dots (RFC 1123), at most 253 bytes.
fn is_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests;
