//! Bandwidth limits of the ports that have them (CNI's `bandwidth`
//! capability, `bandwidth` on connect): the driver side of
//! [`weft_vswitch::rate`].
//!
//! # Theory of operation
//!
//! A limited port has a [`Shaper`]; unlimited ports have none and pay one
//! hash lookup per turn and per write, nothing else.
//!
//! - From the sandbox: before each read of a turn the frame plane asks
//!   [`Shaper::may_read`]. Without credit the port is parked until the
//!   bucket refills (its frames wait in the TAP's queue, the sandbox's
//!   stack slows down) and the event loop's timer ([`Taps::poll_timeout`],
//!   [`Taps::handle_timeout`]) queues it for a turn again.
//! - To the sandbox: a frame passes at once while the bucket has credit
//!   and nothing waits before it; otherwise it is copied into the port's
//!   queue, bounded in bytes ([`weft_vswitch::BandwidthLimit::queue_limit`]),
//!   and written when the bucket allows. A frame that does not fit is
//!   dropped and counted (`rate_limited`).
//!
//! [`Taps::poll_timeout`]: crate::taps::Taps::poll_timeout
//! [`Taps::handle_timeout`]: crate::taps::Taps::handle_timeout

use std::collections::VecDeque;
use std::time::Instant;

use weft_vswitch::{BandwidthLimit, TokenBucket};

/// One limited port's buckets and ingress queue. See the module header.
#[derive(Debug)]
pub struct Shaper {
    egress: Option<TokenBucket>,
    ingress: Option<TokenBucket>,
    /// Frames to the sandbox waiting for credit, each with its virtio
    /// header first.
    queue: VecDeque<Vec<u8>>,
    queued_bytes: usize,
    queue_limit: usize,
    /// When a port parked for want of egress credit may be read again.
    parked_until: Option<Instant>,
}

/// What became of a frame offered to a limited port.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer {
    /// Write it now.
    Pass,
    /// Copied into the queue: written later.
    Queued,
    /// The queue is full: dropped.
    Dropped,
}

impl Shaper {
    /// A shaper for `limit`; None when it limits nothing.
    pub fn new(limit: &BandwidthLimit, now: Instant) -> Option<Shaper> {
        if !limit.is_limited() {
            return None;
        }
        Some(Shaper {
            egress: limit.egress_bucket(now),
            ingress: limit.ingress_bucket(now),
            queue: VecDeque::new(),
            queued_bytes: 0,
            queue_limit: limit.queue_limit(),
            parked_until: None,
        })
    }

    /// Whether the port may be read now; parks it otherwise.
    pub fn may_read(&mut self, now: Instant) -> bool {
        let Some(bucket) = self.egress.as_mut() else {
            return true;
        };
        if bucket.has_credit(now) {
            self.parked_until = None;
            return true;
        }
        self.parked_until = Some(bucket.ready_at(now));
        false
    }

    /// Charge a frame read from the sandbox.
    pub fn charge_read(&mut self, bytes: usize) {
        if let Some(bucket) = self.egress.as_mut() {
            bucket.charge(bytes);
        }
    }

    /// Offer a frame (`header` and `frame`) to the sandbox.
    pub fn offer(&mut self, header: &[u8], frame: &[u8], now: Instant) -> Offer {
        let Some(bucket) = self.ingress.as_mut() else {
            return Offer::Pass;
        };
        if self.queue.is_empty() && bucket.has_credit(now) {
            bucket.charge(frame.len());
            return Offer::Pass;
        }
        let len = header.len() + frame.len();
        if self.queued_bytes + len > self.queue_limit {
            return Offer::Dropped;
        }
        let mut copy = Vec::with_capacity(len);
        copy.extend_from_slice(header);
        copy.extend_from_slice(frame);
        self.queue.push_back(copy);
        self.queued_bytes += len;
        Offer::Queued
    }

    /// The next queued frame that may leave now (with its virtio header
    /// first, `header_len` bytes), charged.
    pub fn release(&mut self, header_len: usize, now: Instant) -> Option<Vec<u8>> {
        let bucket = self.ingress.as_mut()?;
        if self.queue.is_empty() || !bucket.has_credit(now) {
            return None;
        }
        let frame = self.queue.pop_front()?;
        self.queued_bytes -= frame.len();
        bucket.charge(frame.len().saturating_sub(header_len));
        Some(frame)
    }

    /// Take the parking if it is over: the port wants a turn.
    pub fn unpark(&mut self, now: Instant) -> bool {
        match self.parked_until {
            Some(until) if until <= now => {
                self.parked_until = None;
                true
            }
            _ => false,
        }
    }

    /// When this shaper next has work: a parked port to wake, or queued
    /// frames with credit.
    pub fn next_due(&mut self, now: Instant) -> Option<Instant> {
        let queued = match self.ingress.as_mut() {
            Some(bucket) if !self.queue.is_empty() => Some(bucket.ready_at(now)),
            _ => None,
        };
        queued.into_iter().chain(self.parked_until).min()
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests start their clocks at now
mod tests {
    use std::time::Duration;

    use super::*;

    fn limit(ingress: u64, egress: u64) -> BandwidthLimit {
        BandwidthLimit {
            ingress_rate: ingress,
            egress_rate: egress,
            ..Default::default()
        }
    }

    #[test]
    fn no_limit_no_shaper() {
        assert!(Shaper::new(&limit(0, 0), Instant::now()).is_none());
    }

    #[test]
    fn egress_parks_the_port_until_the_bucket_refills() {
        let t0 = Instant::now();
        let mut s = Shaper::new(&limit(0, 8_000_000), t0).expect("limited");
        assert!(s.may_read(t0));
        s.charge_read(200_000);
        assert!(!s.may_read(t0), "the burst is spent");
        let due = s.next_due(t0).expect("parked");
        assert!(due > t0 && due < t0 + Duration::from_secs(1));
        assert!(!s.unpark(t0));
        assert!(s.unpark(due));
        assert!(s.may_read(due));
    }

    #[test]
    fn ingress_queues_in_order_then_drops_beyond_the_limit() {
        let t0 = Instant::now();
        let mut s = Shaper::new(&limit(8_000_000, 0), t0).expect("limited");
        let header = [0u8; 12];
        let frame = vec![7u8; 60_000];
        // The burst (64 KiB) passes the first frame and part of the next.
        assert_eq!(s.offer(&header, &frame, t0), Offer::Pass);
        assert_eq!(s.offer(&header, &frame, t0), Offer::Pass);
        let mut queued = 0;
        loop {
            match s.offer(&header, &frame, t0) {
                Offer::Queued => queued += 1,
                Offer::Dropped => break,
                Offer::Pass => panic!("no credit left"),
            }
            assert!(queued < 100, "the queue is bounded");
        }
        assert!(queued >= 2, "{queued}");
        assert!(s.release(12, t0).is_none(), "no credit yet");
        let due = s.next_due(t0).expect("frames wait");
        let first = s.release(12, due).expect("credit at due");
        assert_eq!(first.len(), 12 + 60_000);
    }
}
