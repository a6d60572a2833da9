//! Batched TAP writes: many frames, one syscall.
//!
//! # Theory of operation
//!
//! Writing a frame into a sandbox's TAP runs that sandbox's receive path
//! (IP, UDP/TCP, socket wake-up) in the writer's context, and the wake-up
//! lets the woken receiver preempt the writer when the syscall returns. With
//! one `write()` per frame, a flood of small frames turns into a context
//! switch every few frames (see bench/README.md). [`WriteBatch`] collects the
//! writes of one read burst and submits them to an io_uring in one
//! `io_uring_enter`: the kernel performs them inline, one after the other,
//! and the preemption point (syscall exit) comes once per burst.
//!
//! Frames are read straight into the batch's buffers ([`WriteBatch::buffer`])
//! so nothing is copied; a flooded frame is one buffer written to several
//! ports. [`WriteBatch::flush`] submits, waits for every completion (a TAP
//! write never blocks: the kernel drops rather than waits), and reports
//! each result, after which every buffer is free again.
//!
//! Capacity: [`BATCH`] buffers of [`FRAME_BUFFER_LEN`] bytes (4 MiB, fixed,
//! whatever the number of ports) and at most [`MAX_WRITES`] writes per
//! flush; the caller flushes when either runs out. Where io_uring is not
//! available (an old kernel, a seccomp filter that forbids it) the batch
//! falls back to one `write()` per frame, with the same results.

use std::io;
use std::os::fd::RawFd;

use io_uring::{opcode, types, IoUring};

use crate::ids::PortId;

/// Buffers per batch: one read burst (`IO_LOOP_BOUND` frames).
pub const BATCH: usize = 64;

/// Writes per flush: a burst of floods to a few ports each.
pub const MAX_WRITES: usize = 256;

/// Largest frame: a 64 KiB GSO segment, its Ethernet header and its
/// `virtio_net_hdr`, rounded up.
pub const FRAME_BUFFER_LEN: usize = 65536 + 256;

/// One queued write.
#[derive(Debug, Clone, Copy)]
struct PendingWrite {
    port: PortId,
    fd: RawFd,
    buffer: usize,
    len: usize,
}

/// The outcome of one write, for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteResult {
    /// The port written to.
    pub port: PortId,
    /// Bytes of the frame (with its header).
    pub len: usize,
    /// Whether the kernel took it.
    pub ok: bool,
}

/// See the module header.
pub struct WriteBatch {
    ring: Option<IoUring>,
    buffers: Vec<Box<[u8]>>,
    filled: usize,
    writes: Vec<PendingWrite>,
    results: Vec<WriteResult>,
}

impl WriteBatch {
    /// A batch with an io_uring if the kernel allows one.
    pub fn new() -> Self {
        let entries = u32::try_from(MAX_WRITES).unwrap_or(256);
        let ring = match IoUring::new(entries) {
            Ok(ring) => Some(ring),
            Err(e) => {
                tracing::info!(error = %e, "io_uring unavailable: one write() per frame");
                None
            }
        };
        WriteBatch {
            ring,
            buffers: (0..BATCH)
                .map(|_| vec![0u8; FRAME_BUFFER_LEN].into_boxed_slice())
                .collect(),
            filled: 0,
            writes: Vec::with_capacity(MAX_WRITES),
            results: Vec::with_capacity(MAX_WRITES),
        }
    }

    /// Whether writes go through io_uring.
    pub fn uses_io_uring(&self) -> bool {
        self.ring.is_some()
    }

    /// True when no buffer is free or the write queue is full: flush first.
    pub fn is_full(&self) -> bool {
        self.filled >= BATCH || self.writes.len() + 8 > MAX_WRITES
    }

    /// The next free buffer, to read a frame into; it becomes part of the
    /// batch with [`WriteBatch::keep`]. Callers check [`WriteBatch::is_full`]
    /// first.
    pub fn buffer(&mut self) -> &mut [u8] {
        let index = self.filled.min(BATCH - 1);
        &mut self.buffers[index]
    }

    /// The current buffer's first `len` bytes.
    pub fn current(&self, len: usize) -> &[u8] {
        &self.buffers[self.filled.min(BATCH - 1)][..len]
    }

    /// Queue a write of the current buffer's first `len` bytes to `fd`.
    pub fn push(&mut self, port: PortId, fd: RawFd, len: usize) {
        if self.writes.len() >= MAX_WRITES {
            return;
        }
        self.writes.push(PendingWrite {
            port,
            fd,
            buffer: self.filled.min(BATCH - 1),
            len,
        });
    }

    /// Keep the current buffer (writes were queued from it) and move on to
    /// the next.
    pub fn keep(&mut self) {
        if self.writes.last().is_some_and(|w| w.buffer == self.filled) {
            self.filled += 1;
        }
    }

    /// Perform every queued write; returns their results. Afterwards every
    /// buffer is free.
    pub fn flush(&mut self) -> &[WriteResult] {
        self.results.clear();
        if !self.writes.is_empty() {
            match &mut self.ring {
                Some(ring) => submit(ring, &self.buffers, &self.writes, &mut self.results),
                None => write_each(&self.buffers, &self.writes, &mut self.results),
            }
        }
        self.writes.clear();
        self.filled = 0;
        &self.results
    }
}

impl Default for WriteBatch {
    fn default() -> Self {
        Self::new()
    }
}

fn submit(
    ring: &mut IoUring,
    buffers: &[Box<[u8]>],
    writes: &[PendingWrite],
    results: &mut Vec<WriteResult>,
) {
    {
        let mut sq = ring.submission();
        for (i, w) in writes.iter().enumerate() {
            let len = u32::try_from(w.len).unwrap_or(0);
            let entry = opcode::Write::new(types::Fd(w.fd), buffers[w.buffer].as_ptr(), len)
                .build()
                .user_data(i as u64);
            // SAFETY: the buffer lives in `buffers`, which is neither moved
            // nor written until every completion of this flush has been
            // reaped below; the fd stays open for the whole flush (ports
            // are only removed between flushes).
            if unsafe { sq.push(&entry) }.is_err() {
                break;
            }
        }
    }
    let mut done = 0;
    let mut outcome = vec![false; writes.len()];
    let expected = writes.len();
    // Bounded: every submitted write completes inline or fails; an error
    // from io_uring_enter itself ends the loop.
    for _ in 0..expected + 1 {
        if done >= expected {
            break;
        }
        match ring.submit_and_wait(expected - done) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(error = %e, "io_uring_enter failed");
                break;
            }
        }
        for cqe in ring.completion() {
            let index = usize::try_from(cqe.user_data()).unwrap_or(usize::MAX);
            if let Some(slot) = outcome.get_mut(index) {
                *slot = cqe.result() >= 0;
                done += 1;
            }
        }
    }
    results.extend(writes.iter().zip(outcome).map(|(w, ok)| WriteResult {
        port: w.port,
        len: w.len,
        ok,
    }));
}

fn write_each(buffers: &[Box<[u8]>], writes: &[PendingWrite], results: &mut Vec<WriteResult>) {
    for w in writes {
        let frame = &buffers[w.buffer][..w.len];
        // SAFETY: writing from a live buffer of `w.len` bytes to an open fd.
        let ret = unsafe { libc::write(w.fd, frame.as_ptr().cast(), frame.len()) };
        results.push(WriteResult {
            port: w.port,
            len: w.len,
            ok: ret >= 0,
        });
    }
}
