//! Queries in flight to the upstream resolvers.
//!
//! # Theory of operation
//!
//! [`Forwarder::start`] gives a query a fresh 16-bit id, unique among the
//! queries in flight and drawn from the caller's per-query seed (so not
//! guessable as "last id + 1"), and sends it to the preferred upstream: the
//! one that answered last, else the first. A response is accepted only when
//! it comes from an address this query was sent to, carries its id, is a
//! response to a QUERY, and repeats its question (name case-insensitively,
//! type, class); everything else is dropped and counted by the caller.
//!
//! A try fails on its timeout, or when the upstream it went to answers
//! SERVFAIL, REFUSED, FORMERR or NOTIMP (its failure, not the name's: our
//! query is well formed). Then the next upstream is tried, each at most
//! once; when every upstream has failed, or the total deadline passes, the
//! query fails and the asker gets SERVFAIL. A good answer from an upstream
//! tried earlier, arriving late, is still accepted; a late failure from it
//! is ignored.
//!
//! Capacities: at most `max_in_flight` queries (clamped to
//! [`MAX_IN_FLIGHT_LIMIT`]); at most [`MAX_UPSTREAMS`] upstreams, so a
//! query remembers at most that many addresses. Timers: one per query, the
//! earlier of its try timeout and its deadline; [`Forwarder::poll_timeout`]
//! scans the table (O(in flight), a few µs at the default 1024: DNS is not
//! the per-frame path).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};

use super::query::{Asker, Request};
use super::splitmix::SplitMix64;

/// Upstreams kept from a configured list; `resolv.conf` allows 3, and every
/// one more is one more try timeout before an asker hears SERVFAIL.
pub const MAX_UPSTREAMS: usize = 8;

/// Largest accepted `max_in_flight`: a quarter of the 16-bit id space, so a
/// random id is free at the first draw three times out of four.
pub const MAX_IN_FLIGHT_LIMIT: usize = 16_384;

/// Random draws for a free id before a linear scan takes over (reached with
/// probability below 4^-64 at the limit).
const ID_DRAWS: usize = 64;

/// One query waiting for an upstream.
#[derive(Debug)]
pub(crate) struct Pending {
    /// Who asked.
    pub(crate) asker: Asker,
    /// What they asked, with their id.
    pub(crate) request: Request,
    /// The bytes sent upstream (our id, our EDNS).
    query: Vec<u8>,
    /// The upstreams tried, in order; the last is the current try.
    sent_to: Vec<SocketAddr>,
    /// Index into the upstream list of the first try.
    first: usize,
    /// When the current try times out (never after `deadline`).
    try_deadline: Instant,
    /// When the asker gets SERVFAIL whatever happens.
    deadline: Instant,
    /// When the first try was sent: the answer's latency counts from here.
    pub(crate) started: Instant,
}

/// What to do after an input.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Send these bytes to this upstream.
    Transmit(SocketAddr, Vec<u8>),
    /// The upstream answered: relay the answer to the asker.
    Answer(Box<Pending>, Box<Message>),
    /// Every try failed or the deadline passed: SERVFAIL to the asker.
    Fail(Box<Pending>),
}

/// Why `start` did not send anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StartError {
    /// No upstream is configured.
    NoUpstreams,
    /// `max_in_flight` queries are already waiting.
    Full,
    /// The query could not be encoded (cannot happen for a question that
    /// came off the wire; SERVFAIL is the honest answer if it does).
    Encode,
}

/// Why an upstream response was not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mismatch {
    /// No query in flight has this id.
    UnknownId,
    /// The query with this id was not sent to this address.
    WrongSource,
    /// Not a response, or not to a QUERY.
    NotAResponse,
    /// The question differs from the one asked.
    WrongQuestion,
    /// A failure from an upstream that is no longer the current try.
    LateFailure,
}

/// The in-flight table and the upstream list. See the module header.
#[derive(Debug)]
pub(crate) struct Forwarder {
    upstreams: Vec<SocketAddr>,
    preferred: usize,
    in_flight: HashMap<u16, Pending>,
    max_in_flight: usize,
    try_timeout: Duration,
    deadline: Duration,
    draws: u64,
}

impl Forwarder {
    pub(crate) fn new(
        upstreams: Vec<SocketAddr>,
        max_in_flight: usize,
        try_timeout: Duration,
        deadline: Duration,
    ) -> Self {
        let mut forwarder = Forwarder {
            upstreams: Vec::new(),
            preferred: 0,
            in_flight: HashMap::new(),
            max_in_flight: max_in_flight.min(MAX_IN_FLIGHT_LIMIT),
            try_timeout,
            deadline,
            draws: 0,
        };
        forwarder.set_upstreams(upstreams);
        forwarder
    }

    /// Replaces the upstream list (the first [`MAX_UPSTREAMS`] are kept).
    /// Queries in flight continue with the new list.
    pub(crate) fn set_upstreams(&mut self, mut upstreams: Vec<SocketAddr>) {
        if upstreams.len() > MAX_UPSTREAMS {
            tracing::warn!(
                configured = upstreams.len(),
                kept = MAX_UPSTREAMS,
                "too many DNS upstreams, ignoring the rest"
            );
            upstreams.truncate(MAX_UPSTREAMS);
        }
        self.upstreams = upstreams;
        self.preferred = 0;
    }

    /// Number of queries in flight.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// The effective limit on queries in flight.
    pub(crate) fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }

    /// Starts forwarding `request`: `query` is the upstream query as
    /// encoded with any id; its id field (the first two bytes, RFC 1035
    /// §4.1.1) is overwritten with a fresh one. Returns where to send what.
    ///
    /// # Errors
    ///
    /// [`StartError`] when nothing can be sent: the caller answers
    /// SERVFAIL at once.
    pub(crate) fn start(
        &mut self,
        now: Instant,
        asker: &Asker,
        request: &Request,
        mut query: Vec<u8>,
        seed: u64,
    ) -> Result<(SocketAddr, Vec<u8>), StartError> {
        if self.upstreams.is_empty() {
            return Err(StartError::NoUpstreams);
        }
        if self.in_flight.len() >= self.max_in_flight {
            return Err(StartError::Full);
        }
        let Some(id_field) = query.get_mut(..2) else {
            return Err(StartError::Encode);
        };
        let id = self.fresh_id(seed);
        id_field.copy_from_slice(&id.to_be_bytes());
        let first = self.preferred % self.upstreams.len();
        let to = self.upstreams[first];
        let deadline = now + self.deadline;
        let pending = Pending {
            asker: asker.clone(),
            request: request.clone(),
            query: query.clone(),
            sent_to: vec![to],
            first,
            try_deadline: (now + self.try_timeout).min(deadline),
            deadline,
            started: now,
        };
        self.in_flight.insert(id, pending);
        Ok((to, query))
    }

    /// A parsed response from `from`.
    ///
    /// # Errors
    ///
    /// [`Mismatch`] when the response is not for a query in flight (or is
    /// a stale failure): the caller drops and counts it.
    pub(crate) fn handle_response(
        &mut self,
        now: Instant,
        from: SocketAddr,
        response: Message,
    ) -> Result<Outcome, Mismatch> {
        let id = response.metadata.id;
        let pending = self.in_flight.get(&id).ok_or(Mismatch::UnknownId)?;
        if !pending.sent_to.contains(&from) {
            return Err(Mismatch::WrongSource);
        }
        if response.metadata.message_type != MessageType::Response
            || response.metadata.op_code != OpCode::Query
        {
            return Err(Mismatch::NotAResponse);
        }
        let asked = &pending.request.question;
        let same_question = matches!(
            response.queries.as_slice(),
            [q] if q.name() == asked.name()
                && q.query_type() == asked.query_type()
                && q.query_class() == asked.query_class()
        );
        if !same_question {
            return Err(Mismatch::WrongQuestion);
        }
        if matches!(
            response.metadata.response_code,
            ResponseCode::ServFail
                | ResponseCode::Refused
                | ResponseCode::FormErr
                | ResponseCode::NotImp
        ) {
            if pending.sent_to.last() != Some(&from) {
                return Err(Mismatch::LateFailure);
            }
            tracing::debug!(%from, rcode = %response.metadata.response_code, "DNS upstream failed, trying the next");
            return self.next_try(id, now).ok_or(Mismatch::UnknownId);
        }
        let pending = self.in_flight.remove(&id).ok_or(Mismatch::UnknownId)?;
        if let Some(index) = self.upstreams.iter().position(|u| *u == from) {
            self.preferred = index;
        }
        Ok(Outcome::Answer(Box::new(pending), Box::new(response)))
    }

    /// Expires tries and deadlines due at `now`, appending what to do.
    pub(crate) fn handle_timeout(&mut self, now: Instant, out: &mut Vec<Outcome>) {
        let due: Vec<u16> = self
            .in_flight
            .iter()
            .filter(|(_, p)| p.try_deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            out.extend(self.next_try(id, now));
        }
    }

    /// The earliest try timeout or deadline.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.in_flight.values().map(|p| p.try_deadline).min()
    }

    /// Moves query `id` to its next upstream, or fails it; `None` when `id`
    /// is not in flight.
    fn next_try(&mut self, id: u16, now: Instant) -> Option<Outcome> {
        let pending = self.in_flight.get_mut(&id)?;
        let tried = pending.sent_to.len();
        if tried >= self.upstreams.len() || now >= pending.deadline {
            let pending = self.in_flight.remove(&id)?;
            return Some(Outcome::Fail(Box::new(pending)));
        }
        let to = self.upstreams[(pending.first + tried) % self.upstreams.len()];
        pending.sent_to.push(to);
        pending.try_deadline = (now + self.try_timeout).min(pending.deadline);
        Some(Outcome::Transmit(to, pending.query.clone()))
    }

    /// An id not in flight, from the caller's seed mixed with a counter (so
    /// a repeated seed still gives a new sequence).
    fn fresh_id(&mut self, seed: u64) -> u16 {
        self.draws = self.draws.wrapping_add(1);
        let mut rng = SplitMix64::new(seed ^ self.draws.rotate_left(32));
        for _ in 0..ID_DRAWS {
            let id = rng.next_u16();
            if !self.in_flight.contains_key(&id) {
                return id;
            }
        }
        let start = rng.next_u16();
        (0..=u16::MAX)
            .map(|i| start.wrapping_add(i))
            .find(|id| !self.in_flight.contains_key(id))
            // in_flight.len() <= MAX_IN_FLIGHT_LIMIT < 65536: a free id exists.
            .unwrap_or(start)
    }
}
