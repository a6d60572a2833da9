//! The relay's buffer budget: how big a new flow's stack buffers may be so
//! that all flows together stay within `buffer_budget` (see the module
//! header of [`super`] for the numbers).
//!
//! A new flow takes the largest size of [`SIZES`] (capped by
//! `max_buffer`, at least `min_buffer`) for which the bytes held, its own
//! two buffers, and two `min_buffer` buffers for every flow the table may
//! still take all fit the budget. The reserve makes the minimum always
//! available, so the last flow of a full table is as welcome as the first;
//! the sizes are a few steps apart so that freed buffers are reused by the
//! allocator rather than fragmented.

use super::TcpNat;

/// Buffer sizes a flow may get, largest first.
const SIZES: [usize; 5] = [1 << 20, 256 << 10, 64 << 10, 32 << 10, 16 << 10];

impl TcpNat {
    /// The size of each of a new flow's two buffers, now held.
    pub(super) fn take_buffer(&mut self) -> usize {
        let config = &self.config;
        let min = config.min_buffer.min(config.max_buffer);
        // Flows with buffers, this one included; the rest may still come.
        let with_buffers = self.buffered_flows + 1;
        let still_to_come = config.max_flows.saturating_sub(with_buffers);
        let reserve = still_to_come.saturating_mul(2 * min);
        let size = SIZES
            .iter()
            .copied()
            .chain(std::iter::once(min))
            .filter(|s| *s <= config.max_buffer && *s >= min)
            .find(|s| {
                self.buffer_bytes
                    .saturating_add(2 * s)
                    .saturating_add(reserve)
                    <= config.buffer_budget
            })
            .unwrap_or(min);
        self.buffer_bytes += 2 * size;
        self.buffered_flows += 1;
        size
    }

    /// A flow's buffers (each of `size` bytes) were freed.
    pub(super) fn return_buffer(&mut self, size: usize) {
        if size == 0 {
            return;
        }
        self.buffer_bytes = self.buffer_bytes.saturating_sub(2 * size);
        self.buffered_flows = self.buffered_flows.saturating_sub(1);
    }

    /// Bytes of stack buffers the flows hold now (their receive and send
    /// buffers together). Freed buffers go back to the allocator; a driver
    /// may hand memory back to the OS when this falls after a burst.
    pub fn buffer_bytes(&self) -> usize {
        self.buffer_bytes
    }
}
