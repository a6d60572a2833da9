//! The embedded DNS server's sans-IO core: local names of the endpoints
//! that share a network with the asker, everything else forwarded to the
//! upstream resolvers.
//!
//! # Theory of operation
//!
//! Data flow. Sandboxes ask the gateway address of their network, over UDP
//! or TCP port 53. The data path takes the DNS message out of the frame (or
//! out of the TCP stream, see [`crate::dns::tcp`]) and calls
//! [`DnsServer::handle_query`] with an [`Asker`] (network, port, MAC, the
//! sandbox's address and port, the gateway address it asked, the transport)
//! and a random `u64`. The core parses the query with `hickory-proto` and:
//!
//! 1. answers from the asker's network zone when the name is local there
//!    (A, AAAA, PTR; NODATA for other types; the answer is authoritative);
//! 2. answers NXDOMAIN when the name (or reverse address) is local to
//!    another network of this daemon only: networks do not see each other,
//!    and the name is not leaked to the upstream;
//! 3. otherwise forwards it: a new query (fresh id, the same question, our
//!    own OPT record) comes out of [`DnsServer::poll_upstream`]; the driver
//!    sends it from a host UDP socket, and feeds what comes back to
//!    [`DnsServer::handle_upstream`]. The accepted response is rebuilt for
//!    the asker (its id, its question as it spelled it, its EDNS).
//!
//! Every answer, local or relayed, and every error comes out of
//! [`DnsServer::poll_answer`] as the bytes of one DNS message, with the
//! [`Asker`] it is for; the driver wraps it in UDP from `server:53` to
//! `addr` (or writes it, length-prefixed, to the TCP connection).
//!
//! State and capacities:
//! - the zones ([`zone`]): exactly what the controller gives with
//!   [`DnsServer::set_zone`], replaced whole per network;
//! - queries in flight: at most [`DnsConfig::max_in_flight`] (default
//!   1024, at most [`MAX_IN_FLIGHT_LIMIT`]); when full, a query that must
//!   be forwarded gets SERVFAIL at once;
//! - upstreams: at most [`MAX_UPSTREAMS`];
//! - output queues: each holds at most `max_in_flight` + [`OUTPUT_SLACK`]
//!   messages; beyond that a message is dropped and counted (the client
//!   retries), which only happens when the driver stops draining.
//!
//! Timers (defaults in [`DnsConfig::default`]): each forwarded query tries
//! one upstream for `try_timeout` (1.5 s), then the next; after `deadline`
//! (4 s) the asker gets SERVFAIL even if upstreams remain. 4 s answers
//! before glibc's 5 s resolver timeout, so the client hears SERVFAIL
//! instead of retrying into the same dead upstreams.
//!
//! Sizes: a UDP answer is at most 512 bytes without EDNS, else the
//! client's advertised size clamped to 512..=[`DnsConfig::max_udp_payload`]
//! (RFC 6891 §6.2.5). An answer that does not fit loses its additional
//! section first (no TC, RFC 2181 §9), then every record, with TC set, so
//! the client retries over TCP, where the limit is 65535. Upstream queries
//! advertise [`DnsConfig::upstream_payload`].
//!
//! Limits and attacks:
//! - spoofed upstream answers: accepted only from an address the query was
//!   sent to, with its 16-bit id (random, unique among in-flight queries),
//!   and the same question; the rest is dropped and counted. The id is the
//!   only entropy the core adds: the driver should also send from a random
//!   source port (RFC 5452);
//! - floods of queries for names that are not ours: bounded by
//!   `max_in_flight`, then SERVFAIL without upstream traffic;
//! - reflection: an answer is never larger than the client's advertised
//!   size over UDP, and a message with the QR bit set (a response) is never
//!   answered, so two servers cannot bounce errors at each other;
//! - hostile bytes: header counts are checked against the message length
//!   before decoding (a 12-byte query cannot make the codec reserve room for
//!   65535 questions); nothing here panics on input (fuzzed by
//!   `fuzz/fuzz_targets/dns_query.rs`).
//!
//! Errors: a header that cannot be read (under 12 bytes) or has QR set is
//! dropped; an opcode other than QUERY gets NOTIMP (RFC 1035 §4.1.1 says
//! that, not FORMERR); an undecodable message or one without exactly one
//! question gets FORMERR with its id; an EDNS version other than 0 gets
//! BADVERS (RFC 6891 §6.1.3).
//!
//! Not implemented: a cache (the upstream has one; names here change on
//! connect/disconnect, hence the short [`DnsConfig::ttl`] of 10 s), SOA
//! records in negative answers (so clients do not cache NXDOMAIN/NODATA for
//! names that may appear at the next connect), forwarding over TCP (an
//! answer larger than `upstream_payload` reaches even a TCP asker with TC
//! set), retrying an upstream without EDNS, merging a client's duplicate
//! retransmissions, DNS cookies, DNSSEC validation (DO, AD and CD pass
//! through), zone transfers, UPDATE, NOTIFY.
//!
//! # Dependencies
//!
//! `hickory-proto` with default features off is the codec: it parses and
//! emits messages, names, EDNS and every record type an upstream may send,
//! and has no I/O. Without its `std` feature it links no thread RNG either;
//! all randomness comes from the caller's seed (SplitMix64, `splitmix.rs`).

mod forwarder;
mod splitmix;
pub mod tcp;
pub mod zone;

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_proto::op::{
    Edns, Header, HeaderCounts, Message, MessageType, OpCode, Query, ResponseCode,
};
use hickory_proto::rr::rdata::{A, AAAA, PTR};
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use hickory_proto::ProtoError;

use weft_vswitch::wire::ethernet::MacAddr;
use weft_vswitch::{NetworkId, PortId};

use forwarder::{Forwarder, Outcome, StartError};
pub use forwarder::{MAX_IN_FLIGHT_LIMIT, MAX_UPSTREAMS};
use splitmix::SplitMix64;
pub use zone::{check_name, Zone, ZoneEntry, ZoneError};
use zone::{Lookup, Zones};

/// Messages each output queue holds beyond `max_in_flight`: room for the
/// local answers of one driver wake-up (a burst of frames from every port)
/// on top of one answer per query in flight.
pub const OUTPUT_SLACK: usize = 1024;

/// Largest DNS message over TCP (the 16-bit length prefix, RFC 1035
/// §4.2.2).
pub const TCP_MAX_MESSAGE: usize = 65_535;

/// Largest UDP answer without EDNS (RFC 1035 §2.3.4), and the floor of an
/// advertised EDNS size (RFC 6891 §6.2.5).
pub const UDP_MIN_PAYLOAD: u16 = 512;

/// Fixed header length (RFC 1035 §4.1.1).
const HEADER_LEN: usize = 12;
/// Smallest question: the root name, type, class (RFC 1035 §4.1.2).
const MIN_QUESTION_LEN: usize = 5;
/// Smallest resource record: the root name, type, class, TTL, length
/// (RFC 1035 §4.1.3).
const MIN_RECORD_LEN: usize = 11;

/// How a query reached the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DnsTransport {
    /// One datagram; the answer is bounded by the client's UDP size.
    Udp,
    /// A TCP connection; answers up to 65535 bytes.
    Tcp,
}

/// Who asked: everything the driver needs to deliver the answer. The core
/// reads `network` (which zone the asker sees) and `transport` (the size
/// limit) and hands the rest back untouched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Asker {
    /// The network the query arrived on: the asker sees its names.
    pub network: NetworkId,
    /// The switch port the query came in on.
    pub port: PortId,
    /// The sandbox's MAC.
    pub mac: MacAddr,
    /// The sandbox's address and source port.
    pub addr: SocketAddr,
    /// The gateway address the sandbox asked (the answer's source).
    pub server: IpAddr,
    /// UDP or TCP.
    pub transport: DnsTransport,
    /// Opaque to the core, for the driver (the TCP connection id).
    pub connection: u64,
}

/// Configuration of a [`DnsServer`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsConfig {
    /// Upstream resolvers, tried in order (the first [`MAX_UPSTREAMS`]).
    pub upstreams: Vec<SocketAddr>,
    /// How long one upstream gets before the next is tried.
    pub try_timeout: Duration,
    /// How long a forwarded query may take in total before SERVFAIL.
    pub deadline: Duration,
    /// Queries in flight to upstreams at most (clamped to
    /// [`MAX_IN_FLIGHT_LIMIT`]; 0 turns forwarding into SERVFAIL).
    pub max_in_flight: usize,
    /// TTL of local answers, in seconds.
    pub ttl: u32,
    /// Largest UDP answer to a sandbox, whatever its EDNS size says (and
    /// the size advertised in our OPT records); at least 512.
    pub max_udp_payload: u16,
    /// UDP size advertised to upstreams: the largest answer forwarding can
    /// fetch, since forwarding is UDP only.
    pub upstream_payload: u16,
}

/// What the server did, since it was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsCounters {
    /// Queries handed to [`DnsServer::handle_query`].
    pub queries: u64,
    /// Queries answered from the zones (records, NODATA or NXDOMAIN).
    pub local_answers: u64,
    /// Of `local_answers`, the NXDOMAINs (a name of another network).
    pub nxdomain: u64,
    /// Queries sent upstream (first tries).
    pub forwarded: u64,
    /// Further tries at the next upstream.
    pub upstream_retries: u64,
    /// Upstream answers relayed to askers.
    pub forwarded_answers: u64,
    /// SERVFAILs sent: no upstream, all failed, deadline, table full.
    pub servfail: u64,
    /// Upstream datagrams not used: undecodable, unknown id, wrong source,
    /// wrong question, not a response, a stale failure.
    pub dropped_responses: u64,
    /// Answers sent with TC set because they did not fit.
    pub truncated: u64,
    /// FORMERRs sent.
    pub formerr: u64,
    /// NOTIMPs sent (opcode other than QUERY).
    pub notimp: u64,
    /// BADVERS sent (EDNS version other than 0).
    pub badvers: u64,
    /// Queries dropped unanswered: no readable header, or QR set.
    pub dropped_queries: u64,
    /// Queries refused because `max_in_flight` were in flight (also
    /// counted in `servfail`).
    pub in_flight_full: u64,
    /// Messages dropped because an output queue was full.
    pub dropped_outputs: u64,
    /// Zone names left out by [`DnsServer::set_zone`] as invalid.
    pub invalid_names: u64,
}

/// The embedded DNS server of every network on this host. See the module
/// header.
#[derive(Debug)]
pub struct DnsServer {
    ttl: u32,
    max_udp_payload: u16,
    upstream_payload: u16,
    zones: Zones,
    forwarder: Forwarder,
    answers: VecDeque<(Asker, Vec<u8>)>,
    transmits: VecDeque<(SocketAddr, Vec<u8>)>,
    counters: DnsCounters,
    outcomes: Vec<Outcome>,
}

/// The parts of a client's query that its answer needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Request {
    /// The client's id.
    pub(crate) id: u16,
    /// The question as the client spelled it.
    pub(crate) question: Query,
    /// RD, copied into the answer.
    pub(crate) recursion_desired: bool,
    /// CD, copied into the answer and upstream.
    pub(crate) checking_disabled: bool,
    /// AD in the query: the client understands AD (RFC 6840 §5.7).
    pub(crate) authentic_data: bool,
    /// `Some(DO bit)` when the query had an OPT record.
    pub(crate) edns: Option<bool>,
    /// Largest answer the client takes.
    pub(crate) limit: usize,
}

/// A query's fate after its header.
enum Parsed {
    /// A well-formed query with one question.
    Query(Box<Message>),
    /// Not answered at all.
    Drop(&'static str),
    /// Answered with this error code and no question.
    Refuse {
        id: u16,
        op_code: OpCode,
        recursion_desired: bool,
        rcode: ResponseCode,
    },
}

impl Default for DnsConfig {
    /// No upstreams, 1.5 s per try, 4 s in total (see the module header),
    /// 1024 queries in flight, TTL 10 s, 4096-byte UDP answers and upstream
    /// size (the common EDNS default, RFC 6891 §6.2.5).
    fn default() -> Self {
        DnsConfig {
            upstreams: Vec::new(),
            try_timeout: Duration::from_millis(1500),
            deadline: Duration::from_secs(4),
            max_in_flight: 1024,
            ttl: 10,
            max_udp_payload: 4096,
            upstream_payload: 4096,
        }
    }
}

impl DnsServer {
    /// A server with no zones.
    pub fn new(config: DnsConfig) -> Self {
        DnsServer {
            ttl: config.ttl,
            max_udp_payload: config.max_udp_payload.max(UDP_MIN_PAYLOAD),
            upstream_payload: config.upstream_payload.max(UDP_MIN_PAYLOAD),
            zones: Zones::default(),
            forwarder: Forwarder::new(
                config.upstreams,
                config.max_in_flight,
                config.try_timeout,
                config.deadline,
            ),
            answers: VecDeque::new(),
            transmits: VecDeque::new(),
            counters: DnsCounters::default(),
            outcomes: Vec::new(),
        }
    }

    /// Replaces the upstream resolvers (the first [`MAX_UPSTREAMS`]).
    /// Queries in flight move on to the new list at their next try.
    pub fn set_upstreams(&mut self, upstreams: Vec<SocketAddr>) {
        self.forwarder.set_upstreams(upstreams);
    }

    /// Replaces the names of `network`. A name, alias or network name that
    /// is not a valid DNS name is left out, logged and counted in
    /// [`DnsCounters::invalid_names`]; the rest of the zone is served (the
    /// control API should refuse such names first, with [`check_name`]).
    pub fn set_zone(&mut self, network: NetworkId, zone: Zone) {
        let skipped = self.zones.set(network, &zone);
        self.counters.invalid_names += u64::try_from(skipped).unwrap_or(u64::MAX);
    }

    /// Forgets the names of `network` (queries in flight still get their
    /// answers).
    pub fn remove_zone(&mut self, network: NetworkId) {
        self.zones.remove(network);
    }

    /// A query from a sandbox: the bytes of one DNS message (no TCP length
    /// prefix). `seed` is a fresh random number for this query (answer
    /// order, upstream id). Local answers and errors come out of
    /// [`DnsServer::poll_answer`]; a forwarded query comes out of
    /// [`DnsServer::poll_upstream`].
    pub fn handle_query(&mut self, now: Instant, asker: Asker, query: &[u8], seed: u64) {
        self.counters.queries += 1;
        let message = match parse_query(query) {
            Parsed::Query(message) => message,
            Parsed::Drop(reason) => {
                self.counters.dropped_queries += 1;
                tracing::debug!(reason, len = query.len(), "DNS query dropped");
                return;
            }
            Parsed::Refuse {
                id,
                op_code,
                recursion_desired,
                rcode,
            } => {
                if rcode == ResponseCode::NotImp {
                    self.counters.notimp += 1;
                } else {
                    self.counters.formerr += 1;
                }
                tracing::debug!(id, %rcode, "DNS query refused");
                let mut reply = Message::error_msg(id, op_code, rcode);
                reply.metadata.recursion_desired = recursion_desired;
                reply.metadata.recursion_available = true;
                let limit = answer_limit(asker.transport, None, self.max_udp_payload);
                self.push_answer(asker, reply, limit);
                return;
            }
        };
        let edns = message.edns.as_ref();
        let [question] = message.queries.as_slice() else {
            // parse_query lets only one question through.
            return;
        };
        let request = Request {
            id: message.metadata.id,
            question: question.clone(),
            recursion_desired: message.metadata.recursion_desired,
            checking_disabled: message.metadata.checking_disabled,
            authentic_data: message.metadata.authentic_data,
            edns: edns.map(|e| e.flags().dnssec_ok),
            limit: answer_limit(asker.transport, edns, self.max_udp_payload),
        };
        if edns.is_some_and(|e| e.version() != 0) {
            self.counters.badvers += 1;
            let reply = self.response(&request, ResponseCode::BADVERS);
            self.push_answer(asker, reply, request.limit);
            return;
        }
        tracing::trace!(
            network = asker.network.0,
            name = %request.question.name(),
            qtype = %request.question.query_type(),
            "DNS query"
        );
        match self.zones.lookup(asker.network, request.question.name()) {
            Lookup::NotLocal => self.forward(now, asker, request, seed),
            lookup => {
                let reply = self.answer_locally(&request, lookup, seed);
                self.counters.local_answers += 1;
                if reply.metadata.response_code == ResponseCode::NXDomain {
                    self.counters.nxdomain += 1;
                }
                self.push_answer(asker, reply, request.limit);
            }
        }
    }

    /// A datagram from `from`, which should be an upstream resolver.
    /// Anything that is not the answer to a query in flight is dropped and
    /// counted.
    pub fn handle_upstream(&mut self, now: Instant, from: SocketAddr, response: &[u8]) {
        let Some(message) = parse_response(response) else {
            self.counters.dropped_responses += 1;
            tracing::debug!(%from, reason = "undecodable", "DNS upstream response dropped");
            return;
        };
        match self.forwarder.handle_response(now, from, message) {
            Ok(outcome) => self.apply(outcome),
            Err(reason) => {
                self.counters.dropped_responses += 1;
                tracing::debug!(%from, ?reason, "DNS upstream response dropped");
            }
        }
    }

    /// Moves on the queries whose try or deadline is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut outcomes = std::mem::take(&mut self.outcomes);
        self.forwarder.handle_timeout(now, &mut outcomes);
        for outcome in outcomes.drain(..) {
            self.apply(outcome);
        }
        self.outcomes = outcomes;
    }

    /// When [`DnsServer::handle_timeout`] should be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.forwarder.poll_timeout()
    }

    /// The next datagram to send to an upstream resolver.
    pub fn poll_upstream(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.transmits.pop_front()
    }

    /// The next answer for a sandbox: the bytes of one DNS message (no TCP
    /// length prefix), never larger than the asker's limit.
    pub fn poll_answer(&mut self) -> Option<(Asker, Vec<u8>)> {
        self.answers.pop_front()
    }

    /// What the server did so far.
    pub fn counters(&self) -> DnsCounters {
        self.counters
    }

    /// Queries waiting for an upstream now.
    pub fn in_flight(&self) -> usize {
        self.forwarder.in_flight()
    }

    /// The answer from the zones, for a name that is local somewhere.
    fn answer_locally(&self, request: &Request, lookup: Lookup<'_>, seed: u64) -> Message {
        let question = &request.question;
        let qtype = question.query_type();
        let class_ok = matches!(question.query_class(), DNSClass::IN | DNSClass::ANY);
        let owner = question.name();
        let mut records = Vec::new();
        let rcode = match lookup {
            Lookup::Addresses(addrs) if class_ok => {
                let mut picked: Vec<IpAddr> =
                    addrs.iter().copied().filter(|a| wanted(qtype, a)).collect();
                SplitMix64::new(seed).shuffle(&mut picked);
                records.extend(picked.into_iter().map(|addr| {
                    let data = match addr {
                        IpAddr::V4(v4) => RData::A(A(v4)),
                        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
                    };
                    Record::from_rdata(owner.clone(), self.ttl, data)
                }));
                ResponseCode::NoError
            }
            Lookup::Pointers(names) if class_ok => {
                if matches!(qtype, RecordType::PTR | RecordType::ANY) {
                    records.extend(names.iter().map(|target| {
                        Record::from_rdata(owner.clone(), self.ttl, RData::PTR(PTR(target.clone())))
                    }));
                }
                ResponseCode::NoError
            }
            Lookup::Addresses(_) | Lookup::Pointers(_) | Lookup::NotLocal => ResponseCode::NoError,
            Lookup::OtherNetwork => ResponseCode::NXDomain,
        };
        let mut reply = self.response(request, rcode);
        reply.metadata.authoritative = true;
        reply.answers = records;
        reply
    }

    /// Sends `request` upstream, or SERVFAILs it at once.
    fn forward(&mut self, now: Instant, asker: Asker, request: Request, seed: u64) {
        let started = match upstream_query(&request, self.upstream_payload) {
            Ok(query) => self.forwarder.start(now, &asker, &request, query, seed),
            Err(error) => {
                tracing::debug!(%error, "DNS upstream query not encodable");
                Err(StartError::Encode)
            }
        };
        match started {
            Ok((to, query)) => {
                self.counters.forwarded += 1;
                self.push_transmit(to, query);
            }
            Err(reason) => {
                if reason == StartError::Full {
                    self.counters.in_flight_full += 1;
                }
                tracing::debug!(?reason, "DNS query not forwarded");
                self.servfail(asker, &request);
            }
        }
    }

    fn apply(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Transmit(to, query) => {
                self.counters.upstream_retries += 1;
                self.push_transmit(to, query);
            }
            Outcome::Answer(pending, upstream) => {
                self.relay(pending.asker, &pending.request, *upstream)
            }
            Outcome::Fail(pending) => self.servfail(pending.asker, &pending.request),
        }
    }

    /// The upstream's answer, rebuilt for the asker: its id, its question,
    /// its EDNS; the upstream's records, rcode, TC and (when the asker can
    /// take it, RFC 6840 §5.8) AD.
    fn relay(&mut self, asker: Asker, request: &Request, upstream: Message) {
        self.counters.forwarded_answers += 1;
        let mut rcode = upstream.metadata.response_code;
        if request.edns.is_none() && rcode.high() != 0 {
            // An extended rcode needs an OPT record the asker cannot read.
            rcode = ResponseCode::ServFail;
        }
        let mut reply = self.response(request, rcode);
        reply.metadata.truncation = upstream.metadata.truncation;
        reply.metadata.authentic_data = upstream.metadata.authentic_data
            && (request.authentic_data || request.edns == Some(true));
        reply.answers = upstream.answers;
        reply.authorities = upstream.authorities;
        reply.additionals = upstream.additionals;
        self.push_answer(asker, reply, request.limit);
    }

    fn servfail(&mut self, asker: Asker, request: &Request) {
        self.counters.servfail += 1;
        let reply = self.response(request, ResponseCode::ServFail);
        self.push_answer(asker, reply, request.limit);
    }

    /// An empty answer to `request` with `rcode`: its id, RD, CD and
    /// question, RA set, and an OPT record when it sent one.
    fn response(&self, request: &Request, rcode: ResponseCode) -> Message {
        let mut reply = Message::response(request.id, OpCode::Query);
        reply.metadata.recursion_desired = request.recursion_desired;
        reply.metadata.recursion_available = true;
        reply.metadata.checking_disabled = request.checking_disabled;
        reply.metadata.response_code = rcode;
        reply.add_query(request.question.clone());
        if let Some(dnssec_ok) = request.edns {
            let mut edns = Edns::new();
            edns.set_max_payload(self.max_udp_payload);
            edns.set_dnssec_ok(dnssec_ok);
            reply.set_edns(edns);
        }
        reply
    }

    /// Encodes `reply` within `limit` and queues it for the asker.
    fn push_answer(&mut self, asker: Asker, mut reply: Message, limit: usize) {
        let id = reply.metadata.id;
        let bytes = match encode_within(&mut reply, limit) {
            Ok((bytes, truncated)) => {
                if truncated {
                    self.counters.truncated += 1;
                }
                bytes
            }
            Err(error) => {
                tracing::debug!(%error, id, "DNS answer not encodable, sending SERVFAIL");
                self.counters.servfail += 1;
                match Message::error_msg(id, OpCode::Query, ResponseCode::ServFail).to_vec() {
                    Ok(bytes) => bytes,
                    Err(_) => return,
                }
            }
        };
        if self.answers.len() >= self.queue_capacity() {
            self.counters.dropped_outputs += 1;
            tracing::debug!(id, "DNS answer queue full, answer dropped");
            return;
        }
        self.answers.push_back((asker, bytes));
    }

    fn push_transmit(&mut self, to: SocketAddr, query: Vec<u8>) {
        if self.transmits.len() >= self.queue_capacity() {
            // The try times out and the next upstream gets it.
            self.counters.dropped_outputs += 1;
            tracing::debug!(%to, "DNS upstream queue full, query dropped");
            return;
        }
        self.transmits.push_back((to, query));
    }

    fn queue_capacity(&self) -> usize {
        self.forwarder.max_in_flight() + OUTPUT_SLACK
    }
}

/// Reads a query's header, then the whole message when the header allows.
fn parse_query(bytes: &[u8]) -> Parsed {
    let Ok(header) = Header::read(&mut BinDecoder::new(bytes)) else {
        return Parsed::Drop("no DNS header");
    };
    let meta = header.metadata;
    if meta.message_type == MessageType::Response {
        return Parsed::Drop("QR set");
    }
    let refuse = |rcode| Parsed::Refuse {
        id: meta.id,
        op_code: meta.op_code,
        recursion_desired: meta.recursion_desired,
        rcode,
    };
    if meta.op_code != OpCode::Query {
        return refuse(ResponseCode::NotImp);
    }
    if header.counts.queries != 1 || !counts_fit(&header.counts, bytes.len()) {
        return refuse(ResponseCode::FormErr);
    }
    match Message::from_vec(bytes) {
        Ok(message) if message.queries.len() == 1 => Parsed::Query(Box::new(message)),
        _ => refuse(ResponseCode::FormErr),
    }
}

/// Decodes an upstream datagram, after the same length check as a query.
fn parse_response(bytes: &[u8]) -> Option<Message> {
    let header = Header::read(&mut BinDecoder::new(bytes)).ok()?;
    if !counts_fit(&header.counts, bytes.len()) {
        return None;
    }
    Message::from_vec(bytes).ok()
}

/// Whether a message of `len` bytes can hold the sections its header
/// counts: the codec reserves memory by these counts, so they are checked
/// against the bytes first.
fn counts_fit(counts: &HeaderCounts, len: usize) -> bool {
    let records = usize::from(counts.answers)
        + usize::from(counts.authorities)
        + usize::from(counts.additionals);
    usize::from(counts.queries) * MIN_QUESTION_LEN + records * MIN_RECORD_LEN
        <= len.saturating_sub(HEADER_LEN)
}

/// Whether an address answers a query of type `qtype`.
fn wanted(qtype: RecordType, addr: &IpAddr) -> bool {
    match qtype {
        RecordType::A => addr.is_ipv4(),
        RecordType::AAAA => addr.is_ipv6(),
        RecordType::ANY => true,
        _ => false,
    }
}

/// The largest answer an asker takes (see "Sizes" in the module header).
fn answer_limit(transport: DnsTransport, edns: Option<&Edns>, max_udp: u16) -> usize {
    match (transport, edns) {
        (DnsTransport::Tcp, _) => TCP_MAX_MESSAGE,
        (DnsTransport::Udp, None) => usize::from(UDP_MIN_PAYLOAD),
        (DnsTransport::Udp, Some(edns)) => {
            usize::from(edns.max_payload().clamp(UDP_MIN_PAYLOAD, max_udp))
        }
    }
}

/// The query sent upstream for `request`, with id 0 (the forwarder writes
/// the real one): the question as asked, RD, CD and AD as asked, and our
/// OPT record with the client's DO bit. The client's EDNS options (cookies,
/// padding, client subnet) are hop-by-hop and stay behind.
fn upstream_query(request: &Request, payload: u16) -> Result<Vec<u8>, ProtoError> {
    let mut query = Message::new(0, MessageType::Query, OpCode::Query);
    query.metadata.recursion_desired = request.recursion_desired;
    query.metadata.checking_disabled = request.checking_disabled;
    query.metadata.authentic_data = request.authentic_data;
    query.add_query(request.question.clone());
    let mut edns = Edns::new();
    edns.set_max_payload(payload);
    edns.set_dnssec_ok(request.edns == Some(true));
    query.set_edns(edns);
    query.to_vec()
}

/// Encodes `reply` in at most `limit` bytes: whole if it fits, else without
/// its additional section, else header, question and OPT with TC set.
/// Returns the bytes and whether TC had to be set.
fn encode_within(reply: &mut Message, limit: usize) -> Result<(Vec<u8>, bool), ProtoError> {
    let bytes = reply.to_vec()?;
    if bytes.len() <= limit {
        return Ok((bytes, false));
    }
    if !reply.additionals.is_empty() {
        reply.additionals.clear();
        let bytes = reply.to_vec()?;
        if bytes.len() <= limit {
            return Ok((bytes, false));
        }
    }
    // A question is at most 259 bytes and an OPT record 11 without
    // options: this fits the 512-byte floor.
    Ok((reply.truncate().to_vec()?, true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::Name;
    use proptest::prelude::*;

    const FRONT: NetworkId = NetworkId(1);
    const BACK: NetworkId = NetworkId(2);

    fn upstream(i: u8) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, i], 53))
    }

    fn t0() -> Instant {
        Instant::now()
    }

    fn asker(network: NetworkId, transport: DnsTransport) -> Asker {
        Asker {
            network,
            port: PortId(7),
            mac: MacAddr([0x02, 0x42, 10, 0, 0, 9]),
            addr: SocketAddr::from(([10, 0, 0, 9], 40_000)),
            server: IpAddr::from([10, 0, 0, 1]),
            transport,
            connection: 0,
        }
    }

    fn udp(network: NetworkId) -> Asker {
        asker(network, DnsTransport::Udp)
    }

    fn query_with(id: u16, name: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
        let mut m = Message::new(id, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        if let Some(size) = edns {
            let mut e = Edns::new();
            e.set_max_payload(size);
            m.set_edns(e);
        }
        m.to_vec().unwrap()
    }

    fn query(id: u16, name: &str, qtype: RecordType) -> Vec<u8> {
        query_with(id, name, qtype, None)
    }

    fn entry(name: &str, aliases: &[&str], addresses: &[&str]) -> ZoneEntry {
        ZoneEntry {
            name: name.into(),
            aliases: aliases.iter().map(|a| (*a).into()).collect(),
            addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
        }
    }

    fn server_with(config: DnsConfig) -> DnsServer {
        let mut s = DnsServer::new(config);
        let mut front = vec![
            entry("web", &["www"], &["10.0.0.2", "fd00::2"]),
            entry("db", &[], &["10.0.0.3"]),
            entry("v6only", &[], &["fd00::4"]),
        ];
        for i in 0..6 {
            front.push(entry(
                &format!("pool{i}"),
                &["pool"],
                &[&format!("10.0.0.{}", 10 + i)],
            ));
        }
        let many: Vec<String> = (0..40).map(|i| format!("fd00::1:{i:x}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        front.push(entry("big", &[], &many));
        s.set_zone(
            FRONT,
            Zone {
                network_name: "frontnet".into(),
                entries: front,
            },
        );
        s.set_zone(
            BACK,
            Zone {
                network_name: "backnet".into(),
                entries: vec![entry("secret", &[], &["10.1.0.5", "fd01::5"])],
            },
        );
        s
    }

    fn config() -> DnsConfig {
        DnsConfig {
            upstreams: vec![upstream(1), upstream(2), upstream(3)],
            ..DnsConfig::default()
        }
    }

    fn server() -> DnsServer {
        server_with(config())
    }

    /// The one answer queued, parsed; checks its size against the limit.
    fn answer(s: &mut DnsServer, limit: usize) -> Message {
        let (_, bytes) = s.poll_answer().expect("an answer");
        assert!(bytes.len() <= limit, "{} > {limit}", bytes.len());
        assert!(s.poll_answer().is_none(), "one answer only");
        Message::from_vec(&bytes).unwrap()
    }

    fn ask(s: &mut DnsServer, network: NetworkId, name: &str, qtype: RecordType) -> Message {
        s.handle_query(t0(), udp(network), &query(0xbeef, name, qtype), 1);
        let m = answer(s, 512);
        assert_eq!(m.metadata.id, 0xbeef);
        m
    }

    fn addresses(m: &Message) -> Vec<IpAddr> {
        m.answers
            .iter()
            .map(|r| match &r.data {
                RData::A(a) => IpAddr::V4(a.0),
                RData::AAAA(a) => IpAddr::V6(a.0),
                other => panic!("unexpected record {other:?}"),
            })
            .collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn names_aliases_and_qualified_names_answer_locally() {
        let mut s = server();
        for name in [
            "web.",
            "web",
            "WEB.",
            "www.",
            "web.frontnet.",
            "Www.FrontNet",
            "web.frontnet",
        ] {
            let m = ask(&mut s, FRONT, name, RecordType::A);
            assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{name}");
            assert_eq!(addresses(&m), vec![ip("10.0.0.2")], "{name}");
            assert!(m.metadata.authoritative);
            assert!(m.metadata.recursion_available);
            assert!(m.metadata.recursion_desired);
            assert_eq!(m.message_type, MessageType::Response);
            assert_eq!(m.answers[0].ttl, 10);
            // The question and owner name keep the client's spelling.
            assert!(m.queries[0]
                .name()
                .eq_case(&Name::from_ascii(name).unwrap().into_fqdn()));
            assert!(m.answers[0].name.eq_case(m.queries[0].name()));
            assert!(m.edns.is_none());
        }
        let m = ask(&mut s, FRONT, "web", RecordType::AAAA);
        assert_eq!(addresses(&m), vec![ip("fd00::2")]);
        assert!(s.poll_upstream().is_none(), "nothing forwarded");
        let c = s.counters();
        assert_eq!((c.queries, c.local_answers, c.forwarded), (8, 8, 0));
    }

    trait IntoFqdn {
        fn into_fqdn(self) -> Name;
    }
    impl IntoFqdn for Name {
        fn into_fqdn(mut self) -> Name {
            self.set_fqdn(true);
            self
        }
    }

    #[test]
    fn names_of_other_networks_are_nxdomain_and_not_forwarded() {
        let mut s = server();
        let m = ask(&mut s, FRONT, "secret", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert!(m.answers.is_empty());
        let m = ask(&mut s, FRONT, "secret.backnet", RecordType::AAAA);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        let m = ask(&mut s, FRONT, "5.0.1.10.in-addr.arpa", RecordType::PTR);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        // The other way round, and from a network without a zone.
        let m = ask(&mut s, BACK, "web", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        let m = ask(&mut s, NetworkId(9), "db.frontnet", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert!(s.poll_upstream().is_none());
        assert_eq!(s.counters().nxdomain, 5);
        // Once the zone is gone the name is nobody's: forwarded.
        s.remove_zone(BACK);
        s.handle_query(t0(), udp(FRONT), &query(1, "secret", RecordType::A), 1);
        assert!(s.poll_upstream().is_some());
    }

    #[test]
    fn other_families_and_types_are_nodata() {
        let mut s = server();
        for (name, qtype) in [
            ("db", RecordType::AAAA),
            ("v6only", RecordType::A),
            ("web", RecordType::MX),
            ("web", RecordType::TXT),
            ("web", RecordType::PTR),
            ("2.0.0.10.in-addr.arpa", RecordType::A),
        ] {
            let m = ask(&mut s, FRONT, name, qtype);
            assert_eq!(
                m.metadata.response_code,
                ResponseCode::NoError,
                "{name} {qtype}"
            );
            assert!(m.answers.is_empty(), "{name} {qtype}");
            assert!(m.metadata.authoritative);
        }
        let m = ask(&mut s, FRONT, "web", RecordType::ANY);
        assert_eq!(addresses(&m).len(), 2);
        assert!(s.poll_upstream().is_none());
    }

    #[test]
    fn a_shared_alias_answers_every_address_shuffled_by_seed() {
        let mut s = server();
        let expected: Vec<IpAddr> = (10..16).map(|i| IpAddr::from([10, 0, 0, i])).collect();
        let mut orders = Vec::new();
        for seed in 0..16 {
            s.handle_query(t0(), udp(FRONT), &query(5, "pool", RecordType::A), seed);
            let got = addresses(&answer(&mut s, 512));
            let mut sorted = got.clone();
            sorted.sort();
            assert_eq!(sorted, expected);
            orders.push(got);
        }
        assert_ne!(orders[1], orders[2], "two seeds, two orders");
        orders.sort();
        orders.dedup();
        assert!(
            orders.len() > 8,
            "16 seeds gave only {} orders",
            orders.len()
        );
        // The same seed gives the same order.
        s.handle_query(t0(), udp(FRONT), &query(5, "pool", RecordType::A), 3);
        let a = addresses(&answer(&mut s, 512));
        s.handle_query(t0(), udp(FRONT), &query(5, "pool", RecordType::A), 3);
        assert_eq!(a, addresses(&answer(&mut s, 512)));
    }

    #[test]
    fn ptr_answers_the_qualified_primary_name() {
        let mut s = server();
        let v6 = Name::from(ip("fd00::2")).to_ascii();
        for reverse in ["2.0.0.10.in-addr.arpa.", v6.as_str()] {
            let m = ask(&mut s, FRONT, reverse, RecordType::PTR);
            assert_eq!(m.metadata.response_code, ResponseCode::NoError);
            let [record] = m.answers.as_slice() else {
                panic!("one PTR for {reverse}: {m:?}");
            };
            let RData::PTR(target) = &record.data else {
                panic!("a PTR");
            };
            assert_eq!(target.0, Name::from_ascii("web.frontnet.").unwrap());
        }
        // Not an endpoint address: forwarded.
        s.handle_query(
            t0(),
            udp(FRONT),
            &query(9, "99.0.0.10.in-addr.arpa.", RecordType::PTR),
            1,
        );
        assert!(s.poll_answer().is_none());
        assert_eq!(s.poll_upstream().unwrap().0, upstream(1));
    }

    /// Parses the next upstream query and checks where it goes.
    fn upstream_query_to(s: &mut DnsServer, to: SocketAddr) -> Message {
        let (addr, bytes) = s.poll_upstream().expect("an upstream query");
        assert_eq!(addr, to);
        Message::from_vec(&bytes).unwrap()
    }

    /// The upstream's answer to `q`, with one A record.
    fn upstream_answer(q: &Message, rcode: ResponseCode, a: [u8; 4]) -> Vec<u8> {
        let mut m = Message::response(q.metadata.id, OpCode::Query);
        m.metadata.recursion_available = true;
        m.metadata.response_code = rcode;
        m.add_query(q.queries[0].clone());
        if rcode == ResponseCode::NoError {
            m.add_answer(Record::from_rdata(
                q.queries[0].name().clone(),
                300,
                RData::A(A(a.into())),
            ));
        }
        m.to_vec().unwrap()
    }

    #[test]
    fn forwards_with_a_new_id_and_restores_the_askers() {
        let mut s = server();
        let now = t0();
        s.handle_query(
            now,
            udp(FRONT),
            &query(0x1234, "Example.COM", RecordType::A),
            99,
        );
        assert!(s.poll_answer().is_none());
        let q = upstream_query_to(&mut s, upstream(1));
        assert_ne!(q.metadata.id, 0x1234);
        assert!(q.metadata.recursion_desired);
        assert_eq!(q.queries[0].name().to_ascii(), "Example.COM.");
        assert_eq!(q.edns.as_ref().unwrap().max_payload(), 4096);
        assert_eq!(s.in_flight(), 1);
        assert_eq!(s.poll_timeout(), Some(now + Duration::from_millis(1500)));

        s.handle_upstream(
            now,
            upstream(1),
            &upstream_answer(&q, ResponseCode::NoError, [192, 0, 2, 80]),
        );
        let m = answer(&mut s, 512);
        assert_eq!(m.metadata.id, 0x1234);
        assert_eq!(addresses(&m), vec![ip("192.0.2.80")]);
        assert!(!m.metadata.authoritative);
        assert!(m.metadata.recursion_available);
        assert!(m.edns.is_none(), "the asker sent no OPT");
        assert_eq!(s.in_flight(), 0);
        assert_eq!(s.poll_timeout(), None);
        let c = s.counters();
        assert_eq!((c.forwarded, c.forwarded_answers, c.servfail), (1, 1, 0));
    }

    #[test]
    fn upstream_ids_are_unique_in_flight() {
        let mut s = server_with(DnsConfig {
            max_in_flight: 4000,
            ..config()
        });
        let mut ids = Vec::new();
        // The same seed every time: the id still changes.
        for i in 0..4000u16 {
            s.handle_query(t0(), udp(FRONT), &query(i, "example.com", RecordType::A), 7);
            ids.push(upstream_query_to(&mut s, upstream(1)).metadata.id);
        }
        assert_eq!(s.in_flight(), 4000);
        let mut unique = ids.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ids.len(), "an id twice in flight");
        // Not a counter: consecutive ids are (almost) never +1 apart.
        let sequential = ids
            .windows(2)
            .filter(|w| w[1] == w[0].wrapping_add(1))
            .count();
        assert!(sequential < 5, "{sequential} sequential ids");
    }

    #[test]
    fn servfail_and_refused_move_to_the_next_upstream() {
        let mut s = server();
        let now = t0();
        s.handle_query(now, udp(FRONT), &query(77, "example.com", RecordType::A), 1);
        let q = upstream_query_to(&mut s, upstream(1));
        s.handle_upstream(
            now,
            upstream(1),
            &upstream_answer(&q, ResponseCode::ServFail, [0; 4]),
        );
        assert!(s.poll_answer().is_none());
        let q2 = upstream_query_to(&mut s, upstream(2));
        assert_eq!(q2.metadata.id, q.metadata.id);
        s.handle_upstream(
            now,
            upstream(2),
            &upstream_answer(&q, ResponseCode::Refused, [0; 4]),
        );
        let q3 = upstream_query_to(&mut s, upstream(3));
        // A late failure from an earlier upstream is ignored.
        s.handle_upstream(
            now,
            upstream(1),
            &upstream_answer(&q, ResponseCode::ServFail, [0; 4]),
        );
        assert!(s.poll_upstream().is_none());
        s.handle_upstream(
            now,
            upstream(3),
            &upstream_answer(&q3, ResponseCode::NoError, [192, 0, 2, 3]),
        );
        let m = answer(&mut s, 512);
        assert_eq!(m.metadata.id, 77);
        assert_eq!(addresses(&m), vec![ip("192.0.2.3")]);
        let c = s.counters();
        assert_eq!((c.upstream_retries, c.dropped_responses), (2, 1));

        // Upstream 3 answered last: the next query starts there.
        s.handle_query(now, udp(FRONT), &query(78, "example.org", RecordType::A), 1);
        upstream_query_to(&mut s, upstream(3));
    }

    #[test]
    fn all_upstreams_failing_is_servfail() {
        let mut s = server_with(DnsConfig {
            upstreams: vec![upstream(1), upstream(2)],
            ..config()
        });
        let now = t0();
        s.handle_query(
            now,
            udp(FRONT),
            &query_with(8, "example.com", RecordType::A, Some(1232)),
            1,
        );
        let q = upstream_query_to(&mut s, upstream(1));
        s.handle_upstream(
            now,
            upstream(1),
            &upstream_answer(&q, ResponseCode::ServFail, [0; 4]),
        );
        upstream_query_to(&mut s, upstream(2));
        s.handle_upstream(
            now,
            upstream(2),
            &upstream_answer(&q, ResponseCode::ServFail, [0; 4]),
        );
        let m = answer(&mut s, 1232);
        assert_eq!(m.metadata.id, 8);
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
        assert_eq!(m.queries.len(), 1);
        assert!(m.edns.is_some());
        assert_eq!(s.in_flight(), 0);
    }

    #[test]
    fn timeouts_move_on_then_the_deadline_is_servfail() {
        let mut s = server();
        let now = t0();
        s.handle_query(now, udp(FRONT), &query(9, "example.com", RecordType::A), 1);
        let q = upstream_query_to(&mut s, upstream(1));
        s.handle_timeout(now + Duration::from_millis(1499));
        assert!(s.poll_upstream().is_none());
        let t1 = s.poll_timeout().unwrap();
        assert_eq!(t1, now + Duration::from_millis(1500));
        s.handle_timeout(t1);
        upstream_query_to(&mut s, upstream(2));
        let t2 = s.poll_timeout().unwrap();
        assert_eq!(t2, now + Duration::from_millis(3000));
        s.handle_timeout(t2);
        upstream_query_to(&mut s, upstream(3));
        // The third try is cut short by the 4 s deadline.
        let t3 = s.poll_timeout().unwrap();
        assert_eq!(t3, now + Duration::from_secs(4));
        s.handle_timeout(t3);
        assert!(s.poll_upstream().is_none());
        let m = answer(&mut s, 512);
        assert_eq!(m.metadata.id, 9);
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
        assert_eq!(s.poll_timeout(), None);
        // The answer arriving afterwards is dropped.
        s.handle_upstream(
            t3,
            upstream(1),
            &upstream_answer(&q, ResponseCode::NoError, [1, 2, 3, 4]),
        );
        assert!(s.poll_answer().is_none());
        assert_eq!(s.counters().dropped_responses, 1);
    }

    #[test]
    fn a_late_answer_from_an_earlier_upstream_is_taken() {
        let mut s = server();
        let now = t0();
        s.handle_query(now, udp(FRONT), &query(10, "example.com", RecordType::A), 1);
        let q = upstream_query_to(&mut s, upstream(1));
        s.handle_timeout(now + Duration::from_millis(1500));
        upstream_query_to(&mut s, upstream(2));
        s.handle_upstream(
            now,
            upstream(1),
            &upstream_answer(&q, ResponseCode::NoError, [1, 2, 3, 4]),
        );
        assert_eq!(addresses(&answer(&mut s, 512)), vec![ip("1.2.3.4")]);
    }

    #[test]
    fn spoofed_responses_are_dropped() {
        let mut s = server();
        let now = t0();
        s.handle_query(now, udp(FRONT), &query(11, "example.com", RecordType::A), 1);
        let q = upstream_query_to(&mut s, upstream(1));
        let good = upstream_answer(&q, ResponseCode::NoError, [1, 2, 3, 4]);

        // Wrong source: another upstream we did not ask, a random host.
        s.handle_upstream(now, upstream(2), &good);
        s.handle_upstream(now, SocketAddr::from(([203, 0, 113, 1], 53)), &good);
        s.handle_upstream(now, SocketAddr::from(([192, 0, 2, 1], 5353)), &good);
        // Wrong id.
        let mut wrong_id = good.clone();
        wrong_id[..2].copy_from_slice(&q.metadata.id.wrapping_add(1).to_be_bytes());
        s.handle_upstream(now, upstream(1), &wrong_id);
        // Wrong question: name, type, class.
        for question in [
            Query::query(Name::from_ascii("example.net.").unwrap(), RecordType::A),
            Query::query(q.queries[0].name().clone(), RecordType::AAAA),
            {
                let mut ch = q.queries[0].clone();
                ch.set_query_class(DNSClass::CH);
                ch
            },
        ] {
            let mut other = q.clone();
            other.queries = vec![question];
            s.handle_upstream(
                now,
                upstream(1),
                &upstream_answer(&other, ResponseCode::NoError, [6, 6, 6, 6]),
            );
        }
        // Not a response (QR clear), and garbage.
        let mut not_response = good.clone();
        not_response[2] &= 0x7f;
        s.handle_upstream(now, upstream(1), &not_response);
        s.handle_upstream(now, upstream(1), &good[..good.len() - 3]);
        assert!(s.poll_answer().is_none());
        assert_eq!(s.counters().dropped_responses, 9);
        assert_eq!(s.in_flight(), 1);

        // The real one, with the question's case changed: accepted.
        let mut upper = q.clone();
        upper.queries[0].set_name(Name::from_ascii("EXAMPLE.com.").unwrap());
        s.handle_upstream(
            now,
            upstream(1),
            &upstream_answer(&upper, ResponseCode::NoError, [1, 2, 3, 4]),
        );
        let m = answer(&mut s, 512);
        assert_eq!(m.metadata.id, 11);
        // The asker's own spelling of the question comes back.
        assert!(m.queries[0]
            .name()
            .eq_case(&Name::from_ascii("example.com.").unwrap()));
    }

    #[test]
    fn the_in_flight_limit_answers_servfail_at_once() {
        let mut s = server_with(DnsConfig {
            max_in_flight: 2,
            ..config()
        });
        for id in 0..3 {
            s.handle_query(
                t0(),
                udp(FRONT),
                &query(id, "example.com", RecordType::A),
                1,
            );
        }
        assert_eq!(s.in_flight(), 2);
        let m = answer(&mut s, 512);
        assert_eq!(
            (m.metadata.id, m.metadata.response_code),
            (2, ResponseCode::ServFail)
        );
        let c = s.counters();
        assert_eq!((c.in_flight_full, c.servfail, c.forwarded), (1, 1, 2));
        // Local names still answer.
        assert_eq!(ask(&mut s, FRONT, "db", RecordType::A).answers.len(), 1);
    }

    #[test]
    fn no_upstreams_is_servfail_at_once() {
        let mut s = server_with(DnsConfig::default());
        let m = ask(&mut s, FRONT, "example.com", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
        assert!(s.poll_upstream().is_none());
        // Upstreams can come later.
        s.set_upstreams(vec![upstream(4)]);
        s.handle_query(t0(), udp(FRONT), &query(1, "example.com", RecordType::A), 1);
        upstream_query_to(&mut s, upstream(4));
    }

    #[test]
    fn edns_size_and_truncation() {
        let mut s = server();
        // 40 AAAA records (28 bytes each compressed) do not fit 512 bytes.
        s.handle_query(t0(), udp(FRONT), &query(1, "big", RecordType::AAAA), 1);
        let m = answer(&mut s, 512);
        assert!(m.metadata.truncation);
        assert!(m.answers.is_empty());
        assert_eq!(m.queries.len(), 1);
        assert_eq!(s.counters().truncated, 1);

        // They fit 1232, and an OPT record comes back.
        s.handle_query(
            t0(),
            udp(FRONT),
            &query_with(2, "big", RecordType::AAAA, Some(1232)),
            1,
        );
        let m = answer(&mut s, 1232);
        assert!(!m.metadata.truncation);
        assert_eq!(m.answers.len(), 40);
        assert_eq!(m.edns.as_ref().unwrap().max_payload(), 4096);

        // An advertised size under 512 counts as 512: truncated, with OPT.
        s.handle_query(
            t0(),
            udp(FRONT),
            &query_with(3, "big", RecordType::AAAA, Some(100)),
            1,
        );
        let m = answer(&mut s, 512);
        assert!(m.metadata.truncation);
        assert!(m.edns.is_some());

        // Over TCP there is no UDP limit.
        s.handle_query(
            t0(),
            asker(FRONT, DnsTransport::Tcp),
            &query(4, "big", RecordType::AAAA),
            1,
        );
        let m = answer(&mut s, TCP_MAX_MESSAGE);
        assert_eq!(m.answers.len(), 40);

        // A forwarded answer is held to the same limit.
        s.handle_query(t0(), udp(FRONT), &query(5, "example.com", RecordType::A), 1);
        let q = upstream_query_to(&mut s, upstream(1));
        let mut big = Message::response(q.metadata.id, OpCode::Query);
        big.add_query(q.queries[0].clone());
        for i in 0..60u8 {
            big.add_answer(Record::from_rdata(
                q.queries[0].name().clone(),
                60,
                RData::A(A([192, 0, 2, i].into())),
            ));
        }
        s.handle_upstream(t0(), upstream(1), &big.to_vec().unwrap());
        let m = answer(&mut s, 512);
        assert!(m.metadata.truncation);
        assert_eq!(m.metadata.id, 5);
        assert_eq!(s.counters().truncated, 3);
    }

    #[test]
    fn additional_records_go_before_tc() {
        let mut reply = Message::response(1, OpCode::Query);
        reply.add_query(Query::query(Name::from_ascii("x.").unwrap(), RecordType::A));
        reply.add_answer(Record::from_rdata(
            Name::from_ascii("x.").unwrap(),
            1,
            RData::A(A([1, 1, 1, 1].into())),
        ));
        for i in 0..40u8 {
            reply.add_additional(Record::from_rdata(
                Name::from_ascii(format!("glue{i}.example.")).unwrap(),
                1,
                RData::A(A([2, 2, 2, i].into())),
            ));
        }
        let (bytes, truncated) = encode_within(&mut reply, 512).unwrap();
        assert!(!truncated);
        let m = Message::from_vec(&bytes).unwrap();
        assert_eq!((m.answers.len(), m.additionals.len()), (1, 0));
        assert!(!m.metadata.truncation);
    }

    #[test]
    fn malformed_queries() {
        let mut s = server();
        let id_only = |bytes: &[u8]| u16::from_be_bytes([bytes[0], bytes[1]]);

        // A readable header, garbage after it: FORMERR with the id.
        let mut garbage = query(0x4242, "web", RecordType::A);
        garbage.truncate(15);
        s.handle_query(t0(), udp(FRONT), &garbage, 1);
        let m = answer(&mut s, 512);
        assert_eq!(
            (m.metadata.id, m.metadata.response_code),
            (0x4242, ResponseCode::FormErr)
        );
        assert!(m.queries.is_empty());

        // No question; two questions; counts the bytes cannot hold.
        let mut none = Message::new(0x4243, MessageType::Query, OpCode::Query);
        let mut two = none.clone();
        two.metadata.id = 0x4244;
        two.add_query(Query::query(Name::from_ascii("a.").unwrap(), RecordType::A));
        two.add_query(Query::query(Name::from_ascii("b.").unwrap(), RecordType::A));
        s.handle_query(t0(), udp(FRONT), &none.to_vec().unwrap(), 1);
        assert_eq!(
            answer(&mut s, 512).metadata.response_code,
            ResponseCode::FormErr
        );
        s.handle_query(t0(), udp(FRONT), &two.to_vec().unwrap(), 1);
        assert_eq!(answer(&mut s, 512).metadata.id, 0x4244);
        let mut huge_counts = vec![
            0x42, 0x45, 0x01, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        ];
        huge_counts.extend_from_slice(&[0; 20]);
        s.handle_query(t0(), udp(FRONT), &huge_counts, 1);
        assert_eq!(id_only(&huge_counts), answer(&mut s, 512).metadata.id);

        // Opcode other than QUERY: NOTIMP.
        none.metadata.op_code = OpCode::Update;
        none.metadata.id = 0x4246;
        s.handle_query(t0(), udp(FRONT), &none.to_vec().unwrap(), 1);
        let m = answer(&mut s, 512);
        assert_eq!(
            (m.metadata.id, m.metadata.response_code),
            (0x4246, ResponseCode::NotImp)
        );

        // Too short for a header, or a response: not answered at all.
        s.handle_query(t0(), udp(FRONT), &[0x42, 0x47, 0], 1);
        let mut response = query(0x4248, "web", RecordType::A);
        response[2] |= 0x80;
        s.handle_query(t0(), udp(FRONT), &response, 1);
        assert!(s.poll_answer().is_none());

        let c = s.counters();
        assert_eq!((c.formerr, c.notimp, c.dropped_queries), (4, 1, 2));
    }

    #[test]
    fn edns_version_other_than_zero_is_badvers() {
        let mut s = server();
        let mut m = Message::new(12, MessageType::Query, OpCode::Query);
        m.add_query(Query::query(
            Name::from_ascii("web.").unwrap(),
            RecordType::A,
        ));
        let mut e = Edns::new();
        e.set_version(1);
        m.set_edns(e);
        s.handle_query(t0(), udp(FRONT), &m.to_vec().unwrap(), 1);
        let m = answer(&mut s, 512);
        // 16 is both BADVERS and BADSIG (RFC 6891, RFC 8945); hickory
        // decodes it as the latter.
        assert_eq!(u16::from(m.metadata.response_code), 16);
        assert_eq!(m.edns.as_ref().unwrap().version(), 0);
        assert_eq!(s.counters().badvers, 1);
    }

    #[test]
    fn output_queues_are_bounded() {
        let mut s = server_with(DnsConfig {
            max_in_flight: 0,
            ..config()
        });
        for i in 0..(OUTPUT_SLACK + 10) {
            let id = u16::try_from(i).unwrap();
            s.handle_query(t0(), udp(FRONT), &query(id, "web", RecordType::A), 1);
        }
        assert_eq!(s.counters().dropped_outputs, 10);
        let mut n = 0;
        while s.poll_answer().is_some() {
            n += 1;
        }
        assert_eq!(n, OUTPUT_SLACK);
    }

    #[test]
    fn invalid_zone_names_are_counted() {
        let mut s = server();
        s.set_zone(
            NetworkId(3),
            Zone {
                network_name: "third".into(),
                entries: vec![entry("ok", &["bad..alias"], &["10.3.0.2"])],
            },
        );
        assert_eq!(s.counters().invalid_names, 1);
        assert_eq!(
            ask(&mut s, NetworkId(3), "ok.third", RecordType::A)
                .answers
                .len(),
            1
        );
    }

    /// Drains both queues; every answer parses with `id`.
    fn drain_checking(s: &mut DnsServer, id: Option<u16>) {
        while let Some((asker, bytes)) = s.poll_answer() {
            let limit = match asker.transport {
                DnsTransport::Udp => 4096,
                DnsTransport::Tcp => TCP_MAX_MESSAGE,
            };
            assert!(bytes.len() <= limit);
            let m = Message::from_vec(&bytes).expect("answers parse");
            assert_eq!(m.metadata.message_type, MessageType::Response);
            if let Some(id) = id {
                assert_eq!(m.metadata.id, id);
            }
        }
        while s.poll_upstream().is_some() {}
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..600),
            seed in any::<u64>(),
            tcp in any::<bool>(),
        ) {
            let mut s = server();
            let transport = if tcp { DnsTransport::Tcp } else { DnsTransport::Udp };
            s.handle_query(t0(), asker(FRONT, transport), &bytes, seed);
            let id = (bytes.len() >= 2).then(|| u16::from_be_bytes([bytes[0], bytes[1]]));
            drain_checking(&mut s, id);
            s.handle_upstream(t0(), upstream(1), &bytes);
            s.handle_timeout(t0() + Duration::from_secs(10));
            drain_checking(&mut s, None);
        }

        #[test]
        fn mutated_queries_and_answers_never_panic(
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
            seed in any::<u64>(),
        ) {
            let mut s = server();
            let mut q = query_with(0x5151, "example.com", RecordType::A, Some(1400));
            for (at, x) in &flips {
                let i = at % q.len();
                q[i] ^= x;
            }
            s.handle_query(t0(), udp(FRONT), &q, seed);
            let id = u16::from_be_bytes([q[0], q[1]]);
            while let Some((_, bytes)) = s.poll_answer() {
                prop_assert_eq!(Message::from_vec(&bytes).unwrap().metadata.id, id);
            }
            if let Some((to, sent)) = s.poll_upstream() {
                let sent = Message::from_vec(&sent).unwrap();
                let mut a = upstream_answer(&sent, ResponseCode::NoError, [1, 2, 3, 4]);
                for (at, x) in &flips {
                    let i = at % a.len();
                    a[i] ^= x;
                }
                s.handle_upstream(t0(), to, &a);
                s.handle_timeout(t0() + Duration::from_secs(10));
                let mut answers = 0;
                while let Some((_, bytes)) = s.poll_answer() {
                    answers += 1;
                    prop_assert_eq!(Message::from_vec(&bytes).unwrap().metadata.id, id);
                }
                prop_assert_eq!(answers, 1, "every forwarded query is answered once");
            }
        }
    }
}
