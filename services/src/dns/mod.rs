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
mod query;
mod splitmix;
pub mod tcp;
pub mod zone;

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Header, HeaderCounts, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, PTR};
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use hickory_proto::ProtoError;

use weft_vswitch::NetworkId;

use forwarder::{Forwarder, Outcome, StartError};
pub use forwarder::{MAX_IN_FLIGHT_LIMIT, MAX_UPSTREAMS};
use query::Request;
pub use query::{Asker, DnsTransport};
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
    /// How long relayed upstream answers took, from the first try.
    pub upstream_latency: LatencyHistogram,
}

/// Upper bounds, in seconds, of [`LatencyHistogram`]'s buckets: from a
/// resolver on the same link (a millisecond) to one that needed every try.
pub const UPSTREAM_LATENCY_BOUNDS_SECONDS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// A histogram of durations with the fixed buckets of
/// [`UPSTREAM_LATENCY_BOUNDS_SECONDS`] (plus one above the last bound),
/// kept as plain counts so the counters stay `Copy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LatencyHistogram {
    /// Observations per bucket (not cumulative); the last is above every
    /// bound.
    pub buckets: [u64; UPSTREAM_LATENCY_BOUNDS_SECONDS.len() + 1],
    /// Observations.
    pub count: u64,
    /// Their sum, in microseconds.
    pub sum_micros: u64,
}

impl LatencyHistogram {
    /// Count one duration.
    pub fn observe(&mut self, took: Duration) {
        let seconds = took.as_secs_f64();
        let bucket = UPSTREAM_LATENCY_BOUNDS_SECONDS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(UPSTREAM_LATENCY_BOUNDS_SECONDS.len());
        self.buckets[bucket] += 1;
        self.count += 1;
        self.sum_micros = self
            .sum_micros
            .saturating_add(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
    }
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
            Ok(outcome) => self.apply(now, outcome),
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
            self.apply(now, outcome);
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
            Lookup::OtherNetwork | Lookup::NoSuchName => ResponseCode::NXDomain,
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

    fn apply(&mut self, now: Instant, outcome: Outcome) {
        match outcome {
            Outcome::Transmit(to, query) => {
                self.counters.upstream_retries += 1;
                self.push_transmit(to, query);
            }
            Outcome::Answer(pending, upstream) => {
                self.counters
                    .upstream_latency
                    .observe(now.saturating_duration_since(pending.started));
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
mod tests;
