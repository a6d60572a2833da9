//! Handing memory back to the OS after a burst of NAT flows.
//!
//! # Theory of operation
//!
//! The TCP relay's flows hold stack buffers (see
//! `weft_services::tcp_nat`, at most 256 MiB at the default limits).
//! Freed, they go back to glibc's malloc, which keeps them for reuse:
//! after a flood of flows the daemon's RSS would stay at the flood's peak.
//! Two things bring it back near the baseline:
//!
//! - at start, [`return_freed_memory_promptly`] fixes glibc's mmap
//!   threshold at its initial 128 KiB (`M_MMAP_THRESHOLD`; glibc otherwise
//!   raises it up to 32 MiB as large blocks are freed), so buffers of
//!   256 KiB and 1 MiB are mapped on their own, touched only as data moves
//!   through them, and unmapped when their flow ends (frames, at most
//!   64 KiB, stay below it: no mmap per frame);
//! - after each turn of the loop, [`Trim::after_turn`] watches the bytes of
//!   buffers the relay holds, plus [`UDP_FLOW_WEIGHT`] per UDP or ICMP
//!   flow (what a flow's entries, socket bookkeeping and the frames of a
//!   burst cost, roughly); when they fell by half and by at least
//!   [`TRIM_STEP`] since their high-water mark, `malloc_trim(0)` returns the
//!   free pages of every arena (the smaller buffers live there) and the
//!   mark starts again from the current value. A trim costs a pass over
//!   the heap (milliseconds), at most once per burst.
//!
//! Other C libraries: nothing is done (musl returns large blocks itself).

/// How far the relay's buffers must fall before a trim: a burst, not the
/// coming and going of a few flows.
pub const TRIM_STEP: usize = 16 << 20;

/// What one UDP or ICMP flow is counted as when deciding to trim: a
/// burst of 4,096 flows ending is worth a trim, a few hundred are not.
pub const UDP_FLOW_WEIGHT: usize = 16 << 10;

/// glibc's mmap threshold while the daemon runs.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 128 << 10;

/// Fix the allocator's mmap threshold (see the module header). Idempotent.
pub fn return_freed_memory_promptly() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a tunable of the allocator; any value is
    // accepted or refused with a return code.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}

/// The high-water mark of the relay's buffers since the last trim.
#[derive(Debug, Default)]
pub struct Trim {
    mark: usize,
}

impl Trim {
    /// After a turn of the loop, with the bytes of buffers held now.
    pub fn after_turn(&mut self, held: usize) {
        self.mark = self.mark.max(held);
        if held <= self.mark / 2 && self.mark - held >= TRIM_STEP {
            self.mark = held;
            trim();
        }
    }
}

fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory of the allocator's
    // arenas to the OS; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trim_follows_a_burst_not_a_trickle() {
        let mut trim = Trim::default();
        trim.after_turn(100 << 20);
        trim.after_turn(90 << 20);
        assert_eq!(trim.mark, 100 << 20, "a trickle does not trim");
        trim.after_turn(40 << 20);
        assert_eq!(trim.mark, 40 << 20, "a burst closed: trimmed");
        trim.after_turn(30 << 20);
        assert_eq!(trim.mark, 40 << 20, "less than the step");
    }
}
