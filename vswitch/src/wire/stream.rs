//! The framing of a VM's stream socket: QEMU's `-netdev stream` (and
//! passt's, and QEMU's older `-netdev socket`), sans-IO.
//!
//! # Theory of operation
//!
//! A stream socket carries Ethernet frames back to back, each after a
//! 4-byte big-endian length (QEMU `net/stream.c`, `net_fill_rstate` in
//! `net/net.c`):
//!
//! ```text
//! +--------+--------+--------+--------+--------------------------+
//! |       length (u32, big-endian)    | Ethernet frame (length)  |
//! +--------+--------+--------+--------+--------------------------+
//! ```
//!
//! There is no `virtio_net_hdr` on the stream (QEMU's stream backend has
//! no vnet header): the driver adds an empty one on the way in and strips
//! it on the way out, so the rest of the data path sees the same frames as
//! from a TAP.
//!
//! Reading: the driver reads whatever the socket has into
//! [`StreamDecoder::space`] and reports it with [`StreamDecoder::filled`];
//! [`StreamDecoder::next_frame`] then yields every complete frame, without
//! copying it, and keeps a partial one for the next read. The buffer holds
//! one maximal frame and its prefix ([`DECODER_CAPACITY`]); it is
//! compacted (the partial frame moved to the front) only when the free
//! space behind it is too small for the rest of that frame, so a frame is
//! copied at most once.
//!
//! Writing: [`StreamEncoder`] queues the prefix and the frame, and the
//! driver writes [`StreamEncoder::pending`] and reports how much the
//! socket took with [`StreamEncoder::consume`]. The queue holds at most
//! [`ENCODER_CAPACITY`] bytes; a frame that does not fit is refused (the
//! caller counts the drop) rather than blocking the data path on a slow
//! guest, and a frame is never queued in part, so the stream stays in
//! step.
//!
//! Limits and what a peer could try: a length above [`MAX_FRAME_LEN`]
//! (QEMU's own receive buffer, `NET_BUFSIZE`) is a protocol error: the
//! stream cannot be resynchronised, so the driver closes the connection,
//! as QEMU does. Frames shorter than an Ethernet header, zero-length ones
//! included, are yielded: the switch drops and counts them like any
//! truncated frame.

/// Bytes of the length prefix.
pub const PREFIX_LEN: usize = 4;

/// The longest frame on a stream: QEMU's `NET_BUFSIZE` (4096 + 65536),
/// the most its receive side takes, and so the most it can send.
pub const MAX_FRAME_LEN: usize = 4096 + 65536;

/// The decoder's buffer: one maximal frame and its prefix.
pub const DECODER_CAPACITY: usize = PREFIX_LEN + MAX_FRAME_LEN;

/// The encoder's queue, in bytes: about 16 maximal frames, or a thousand
/// 1500-byte ones, for a guest that reads slowly.
pub const ENCODER_CAPACITY: usize = 16 * DECODER_CAPACITY;

/// Why a stream cannot be read or written on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// A length prefix says more than [`MAX_FRAME_LEN`].
    #[error("stream frame of {0} bytes is longer than {MAX_FRAME_LEN}")]
    TooLong(u32),
}

/// See the module header.
#[derive(Debug)]
pub struct StreamDecoder {
    buf: Box<[u8]>,
    /// Where the first unread byte is.
    start: usize,
    /// Where the read bytes end.
    end: usize,
}

impl Default for StreamDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl StreamDecoder {
    /// A decoder with an empty buffer of [`DECODER_CAPACITY`] bytes.
    pub fn new() -> Self {
        StreamDecoder {
            buf: vec![0; DECODER_CAPACITY].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    /// Where the next read goes; never empty while no frame is complete.
    pub fn space(&mut self) -> &mut [u8] {
        let needed = self.needed();
        if self.buf.len() - self.end < needed.min(self.buf.len() - (self.end - self.start)) {
            self.compact();
        }
        &mut self.buf[self.end..]
    }

    /// `n` bytes were read into [`StreamDecoder::space`].
    pub fn filled(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }

    /// The next complete frame, if there is one.
    ///
    /// # Errors
    ///
    /// [`StreamError::TooLong`] when the next length prefix is over
    /// [`MAX_FRAME_LEN`]: close the connection.
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, StreamError> {
        let available = self.end - self.start;
        let Some(len) = self.peek_len()? else {
            return Ok(None);
        };
        if available < PREFIX_LEN + len {
            return Ok(None);
        }
        let at = self.start + PREFIX_LEN;
        self.start = at + len;
        if self.start == self.end {
            // Empty: the next read starts at the front.
            let frame = &self.buf[at..at + len];
            self.start = 0;
            self.end = 0;
            return Ok(Some(frame));
        }
        Ok(Some(&self.buf[at..at + len]))
    }

    /// Bytes buffered that are not yet a whole frame.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Forget everything buffered (a new connection).
    pub fn reset(&mut self) {
        self.start = 0;
        self.end = 0;
    }

    fn peek_len(&self) -> Result<Option<usize>, StreamError> {
        let Some(prefix) = self.buf.get(self.start..self.start + PREFIX_LEN) else {
            return Ok(None);
        };
        if self.end - self.start < PREFIX_LEN {
            return Ok(None);
        }
        let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
        match usize::try_from(len) {
            Ok(len) if len <= MAX_FRAME_LEN => Ok(Some(len)),
            _ => Err(StreamError::TooLong(len)),
        }
    }

    /// Bytes still missing for the frame at `start` (its prefix when that
    /// is incomplete or bad).
    fn needed(&self) -> usize {
        let available = self.end - self.start;
        match self.peek_len() {
            Ok(Some(len)) => (PREFIX_LEN + len).saturating_sub(available),
            _ => PREFIX_LEN.saturating_sub(available).max(1),
        }
    }

    fn compact(&mut self) {
        self.buf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
    }
}

/// See the module header.
#[derive(Debug, Default)]
pub struct StreamEncoder {
    queue: Vec<u8>,
    /// Where the unwritten bytes of `queue` start.
    written: usize,
}

impl StreamEncoder {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queue `frame` with its prefix. False (nothing queued) when the frame
    /// is longer than [`MAX_FRAME_LEN`] or the queue has no room for it.
    pub fn push(&mut self, frame: &[u8]) -> bool {
        let Ok(len) = u32::try_from(frame.len()) else {
            return false;
        };
        if frame.len() > MAX_FRAME_LEN
            || self.queued() + PREFIX_LEN + frame.len() > ENCODER_CAPACITY
        {
            return false;
        }
        if self.written > 0 && self.written == self.queue.len() {
            self.queue.clear();
            self.written = 0;
        }
        self.queue.extend_from_slice(&len.to_be_bytes());
        self.queue.extend_from_slice(frame);
        true
    }

    /// The bytes to write next.
    pub fn pending(&self) -> &[u8] {
        &self.queue[self.written..]
    }

    /// The socket took `n` bytes of [`StreamEncoder::pending`].
    pub fn consume(&mut self, n: usize) {
        self.written = (self.written + n).min(self.queue.len());
        if self.written == self.queue.len() {
            self.queue.clear();
            self.written = 0;
        } else if self.written >= ENCODER_CAPACITY / 2 {
            // Keep the queue from creeping: move the rest to the front.
            self.queue.drain(..self.written);
            self.written = 0;
        }
    }

    /// Bytes queued and not written.
    pub fn queued(&self) -> usize {
        self.queue.len() - self.written
    }

    /// Forget everything queued (a new connection).
    pub fn reset(&mut self) {
        self.queue.clear();
        self.written = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(frames: &[Vec<u8>]) -> Vec<u8> {
        let mut enc = StreamEncoder::new();
        for f in frames {
            assert!(enc.push(f));
        }
        enc.pending().to_vec()
    }

    /// Feed `bytes` in chunks of the given sizes (cycled); the frames.
    fn decode_chunked(bytes: &[u8], chunks: &[usize]) -> Result<Vec<Vec<u8>>, StreamError> {
        let mut dec = StreamDecoder::new();
        let mut out = Vec::new();
        let mut at = 0;
        let mut i = 0;
        while at < bytes.len() {
            let space = dec.space();
            assert!(!space.is_empty());
            let want = chunks[i % chunks.len()].max(1);
            i += 1;
            let n = want.min(space.len()).min(bytes.len() - at);
            space[..n].copy_from_slice(&bytes[at..at + n]);
            dec.filled(n);
            at += n;
            while let Some(frame) = dec.next_frame()? {
                out.push(frame.to_vec());
            }
        }
        Ok(out)
    }

    #[test]
    fn prefix_is_big_endian_length() {
        // A 60-byte frame as QEMU sends it.
        let frame = vec![0xab; 60];
        let bytes = encode(std::slice::from_ref(&frame));
        assert_eq!(&bytes[..4], &[0, 0, 0, 60]);
        assert_eq!(&bytes[4..], &frame[..]);
    }

    #[test]
    fn frames_come_whole_however_the_bytes_arrive() {
        let frames: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; usize::from(i) * 97]).collect();
        let bytes = encode(&frames);
        for chunks in [&[1usize][..], &[3, 7], &[4096], &[bytes.len()]] {
            assert_eq!(
                decode_chunked(&bytes, chunks).unwrap(),
                frames,
                "{chunks:?}"
            );
        }
    }

    #[test]
    fn maximal_frames_fit_after_partial_ones() {
        let frames = vec![
            vec![1u8; 100],
            vec![2; MAX_FRAME_LEN],
            vec![3; MAX_FRAME_LEN],
        ];
        let bytes = encode(&frames);
        assert_eq!(decode_chunked(&bytes, &[1000]).unwrap(), frames);
        assert_eq!(decode_chunked(&bytes, &[65_521]).unwrap(), frames);
    }

    #[test]
    fn too_long_is_an_error() {
        let mut dec = StreamDecoder::new();
        let bad = u32::try_from(MAX_FRAME_LEN + 1).unwrap().to_be_bytes();
        dec.space()[..4].copy_from_slice(&bad);
        dec.filled(4);
        assert_eq!(
            dec.next_frame(),
            Err(StreamError::TooLong(u32::from_be_bytes(bad)))
        );
        let mut enc = StreamEncoder::new();
        assert!(!enc.push(&vec![0; MAX_FRAME_LEN + 1]));
        assert_eq!(enc.queued(), 0);
    }

    #[test]
    fn empty_frames_are_yielded() {
        let bytes = encode(&[Vec::new(), vec![9; 3]]);
        assert_eq!(
            decode_chunked(&bytes, &[2]).unwrap(),
            vec![Vec::new(), vec![9; 3]]
        );
    }

    #[test]
    fn encoder_refuses_past_its_capacity_and_keeps_step_on_partial_writes() {
        let mut enc = StreamEncoder::new();
        let frame = vec![7u8; MAX_FRAME_LEN];
        let mut pushed = 0;
        while enc.push(&frame) {
            pushed += 1;
        }
        assert_eq!(pushed, ENCODER_CAPACITY / (PREFIX_LEN + MAX_FRAME_LEN));
        assert!(enc.queued() <= ENCODER_CAPACITY);
        // Write it out in odd pieces; what comes out decodes to the frames.
        let mut written = Vec::new();
        while enc.queued() > 0 {
            let n = enc.pending().len().min(12_345);
            written.extend_from_slice(&enc.pending()[..n]);
            enc.consume(n);
        }
        let frames = decode_chunked(&written, &[50_000]).unwrap();
        assert_eq!(frames.len(), pushed);
        assert!(frames.iter().all(|f| *f == frame));
        assert!(enc.push(&frame));
    }

    proptest::proptest! {
        #[test]
        fn round_trip_under_any_chunking(
            frames in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..3000), 0..12),
            chunks in proptest::collection::vec(1usize..5000, 1..8),
        ) {
            let bytes = encode(&frames);
            proptest::prop_assert_eq!(decode_chunked(&bytes, &chunks).unwrap(), frames);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..2000), chunk in 1usize..300) {
            let _ = decode_chunked(&bytes, &[chunk]);
        }
    }
}
