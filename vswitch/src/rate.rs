//! Per-port bandwidth limits: a token bucket, and the shape of a port's
//! limits as the API and CNI's `bandwidth` capability give them.
//!
//! # Theory of operation
//!
//! A [`TokenBucket`] holds up to `burst` bytes of credit and refills at
//! `rate` bytes per second. A frame is charged after it passes, whatever
//! its size, so the level may go below zero (a 64 KiB GSO segment through
//! a bucket of 16 KiB); the next frame waits until the level is back above
//! zero ([`TokenBucket::ready_at`]). Over any interval the bytes that pass
//! are at most `burst + rate × interval` plus one frame: the guarantee of
//! the kernel's `tbf`, which the reference `bandwidth` plugin installs.
//!
//! The data path uses one bucket per direction of a limited port:
//!
//! - from the sandbox (egress, `egress_rate`): the port is not read while
//!   its bucket is empty, so frames wait in the TAP's own queue and the
//!   sandbox's stack feels back-pressure, as under a shaping qdisc: no
//!   drop, no retransmission;
//! - to the sandbox (ingress, `ingress_rate`): frames wait in a bounded
//!   queue of the port ([`BandwidthLimit::queue_limit`]) and leave as the
//!   bucket allows; beyond the queue they are dropped, counted as
//!   `rate_limited`, which is how a `tbf` with a `limit` behaves.
//!
//! Sans-IO: time comes in as an [`Instant`].

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// How long a frame may wait in a limited port's ingress queue at the
/// configured rate before the queue drops: the `latency` the reference
/// `bandwidth` plugin gives its `tbf` (25 ms), doubled for GSO segments.
pub const QUEUE_LATENCY: Duration = Duration::from_millis(50);

/// Limits of one port, in CNI's `bandwidth` units: rates in bits per
/// second, bursts in bits. A rate of zero (or none) is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BandwidthLimit {
    /// Traffic to the sandbox, bits per second.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ingress_rate: u64,
    /// Burst to the sandbox, bits (default: [`BandwidthLimit::default_burst`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ingress_burst: u64,
    /// Traffic from the sandbox, bits per second.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub egress_rate: u64,
    /// Burst from the sandbox, bits.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub egress_burst: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Why a [`BandwidthLimit`] cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BandwidthError {
    /// A burst without its rate.
    #[error("{0}_burst is set without {0}_rate: give the rate (bits per second) too")]
    BurstWithoutRate(&'static str),
    /// Below what a frame needs to pass at all.
    #[error("{0}_rate of {1} bit/s is below the minimum of {MIN_RATE} bit/s")]
    RateTooLow(&'static str, u64),
}

/// The lowest rate accepted: 8 kbit/s (one full frame per 1.5 s).
pub const MIN_RATE: u64 = 8_000;

impl BandwidthLimit {
    /// Whether any limit is set.
    pub fn is_limited(&self) -> bool {
        self.ingress_rate > 0 || self.egress_rate > 0
    }

    /// Check the values for meaning.
    ///
    /// # Errors
    ///
    /// [`BandwidthError`] names the field and what to fix.
    pub fn validate(&self) -> Result<(), BandwidthError> {
        for (name, rate, burst) in [
            ("ingress", self.ingress_rate, self.ingress_burst),
            ("egress", self.egress_rate, self.egress_burst),
        ] {
            if rate == 0 && burst > 0 {
                return Err(BandwidthError::BurstWithoutRate(name));
            }
            if rate > 0 && rate < MIN_RATE {
                return Err(BandwidthError::RateTooLow(name, rate));
            }
        }
        Ok(())
    }

    /// The burst used for a rate when none is given (bits): 10 ms of the
    /// rate, at least 64 KiB so one GSO segment passes at once.
    pub fn default_burst(rate: u64) -> u64 {
        (rate / 100).max(64 * 1024 * 8)
    }

    /// The bucket for traffic to the sandbox, if limited.
    pub fn ingress_bucket(&self, now: Instant) -> Option<TokenBucket> {
        TokenBucket::from_bits(self.ingress_rate, self.ingress_burst, now)
    }

    /// The bucket for traffic from the sandbox, if limited.
    pub fn egress_bucket(&self, now: Instant) -> Option<TokenBucket> {
        TokenBucket::from_bits(self.egress_rate, self.egress_burst, now)
    }

    /// Bytes the ingress queue may hold: [`QUEUE_LATENCY`] at the rate,
    /// plus the burst, at least two 64 KiB segments.
    pub fn queue_limit(&self) -> usize {
        let rate = self.ingress_rate / 8;
        let burst = self
            .ingress_burst
            .max(Self::default_burst(self.ingress_rate))
            / 8;
        let latency = rate.saturating_mul(QUEUE_LATENCY.as_millis() as u64) / 1000;
        usize::try_from(latency.saturating_add(burst))
            .unwrap_or(usize::MAX)
            .max(2 * 65_536)
    }
}

/// See the module header.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Bytes per second.
    rate: u64,
    /// Most credit held, bytes.
    burst: i64,
    /// Credit now (may be negative: see the module header), bytes.
    level: i64,
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket of `burst` bytes refilled at `rate` bytes per second.
    pub fn new(rate: u64, burst: u64, now: Instant) -> Self {
        let burst = i64::try_from(burst.max(1)).unwrap_or(i64::MAX);
        TokenBucket {
            rate: rate.max(1),
            burst,
            level: burst,
            updated: now,
        }
    }

    /// From CNI's units (bits per second, bits; a zero burst takes
    /// [`BandwidthLimit::default_burst`]); None for no limit.
    pub fn from_bits(rate: u64, burst: u64, now: Instant) -> Option<Self> {
        if rate == 0 {
            return None;
        }
        let burst = if burst == 0 {
            BandwidthLimit::default_burst(rate)
        } else {
            burst
        };
        Some(TokenBucket::new(rate / 8, burst / 8, now))
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated);
        let earned = u128::from(self.rate) * elapsed.as_nanos() / 1_000_000_000;
        if earned == 0 {
            // Keep the fraction: `updated` moves only when credit is added.
            return;
        }
        let earned = i64::try_from(earned).unwrap_or(i64::MAX);
        self.level = self.level.saturating_add(earned).min(self.burst);
        self.updated = now;
    }

    /// Whether a frame may pass now.
    pub fn has_credit(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.level > 0
    }

    /// Charge a frame that passed.
    pub fn charge(&mut self, bytes: usize) {
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        self.level = self.level.saturating_sub(bytes);
    }

    /// When the next frame may pass (now, if it may already).
    pub fn ready_at(&mut self, now: Instant) -> Instant {
        self.refill(now);
        if self.level > 0 {
            return now;
        }
        let missing = u128::try_from(1 - self.level).unwrap_or(u128::MAX);
        let nanos = missing * 1_000_000_000 / u128::from(self.rate) + 1;
        let wait = Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
        self.updated.checked_add(wait).unwrap_or(now).max(now)
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests start their clocks at now
mod tests {
    use super::*;

    #[test]
    fn a_full_bucket_passes_its_burst_then_waits_for_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1_000_000, 3_000, t0);
        let mut passed = 0;
        while b.has_credit(t0) {
            b.charge(1_000);
            passed += 1;
        }
        assert_eq!(passed, 3, "the burst, and no more");
        // 1 MB/s: one byte of credit per microsecond.
        let ready = b.ready_at(t0);
        assert!(ready > t0);
        assert!(ready <= t0 + Duration::from_micros(2), "{:?}", ready - t0);
        assert!(b.has_credit(ready));
    }

    #[test]
    fn a_large_frame_borrows_and_the_next_waits_it_off() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1_000_000, 1_000, t0);
        assert!(b.has_credit(t0));
        b.charge(65_536);
        assert!(!b.has_credit(t0));
        let wait = b.ready_at(t0) - t0;
        assert!(
            wait >= Duration::from_micros(64_536) && wait <= Duration::from_micros(64_540),
            "{wait:?}"
        );
    }

    #[test]
    fn over_a_second_the_rate_holds() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(125_000, 12_500, t0); // 1 Mbit/s
        let mut now = t0;
        let mut bytes = 0usize;
        // A sender that always has 1,500-byte frames waiting.
        for _ in 0..10_000 {
            now = b.ready_at(now);
            if now > t0 + Duration::from_secs(1) {
                break;
            }
            assert!(b.has_credit(now));
            b.charge(1_500);
            bytes += 1_500;
        }
        assert!(
            (125_000..=125_000 + 12_500 + 1_500).contains(&bytes),
            "{bytes} bytes in one second"
        );
    }

    #[test]
    fn credit_never_exceeds_the_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1_000, 500, t0);
        let later = t0 + Duration::from_secs(3_600);
        assert!(b.has_credit(later));
        b.charge(500);
        assert!(!b.has_credit(later), "an hour idle still holds one burst");
    }

    #[test]
    fn limits_are_checked_for_meaning() {
        let ok = BandwidthLimit {
            ingress_rate: 10_000_000,
            ..Default::default()
        };
        assert!(ok.validate().is_ok() && ok.is_limited());
        let burst_only = BandwidthLimit {
            egress_burst: 1_000,
            ..Default::default()
        };
        assert_eq!(
            burst_only.validate(),
            Err(BandwidthError::BurstWithoutRate("egress"))
        );
        let slow = BandwidthLimit {
            ingress_rate: 100,
            ..Default::default()
        };
        assert!(matches!(
            slow.validate(),
            Err(BandwidthError::RateTooLow("ingress", 100))
        ));
        assert!(!BandwidthLimit::default().is_limited());
        assert!(ok.queue_limit() >= 2 * 65_536);
        let fast = BandwidthLimit {
            ingress_rate: 8_000_000_000,
            ..Default::default()
        };
        // 1 GB/s × 50 ms + 10 ms of burst.
        assert_eq!(fast.queue_limit(), 50_000_000 + 10_000_000);
    }
}
