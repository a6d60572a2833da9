//! QEMU `-netdev stream` framing: arbitrary bytes from a guest, read in
//! arbitrary pieces, and frames queued for it with partial writes.
//! Invariants: the decoder never panics, never yields a frame over
//! MAX_FRAME_LEN, and yields the same frames (and the same error) however
//! the bytes are cut; what the encoder writes out decodes back to exactly
//! the frames it accepted, and its queue never exceeds its capacity.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use weft_vswitch::wire::stream::{
    StreamDecoder, StreamEncoder, StreamError, ENCODER_CAPACITY, MAX_FRAME_LEN,
};

#[derive(Debug, Arbitrary)]
struct Input {
    bytes: Vec<u8>,
    cuts: Vec<u16>,
    frames: Vec<(u16, u8)>,
    writes: Vec<u16>,
}

fn decode(bytes: &[u8], cuts: &[u16]) -> (Vec<Vec<u8>>, Option<StreamError>) {
    let mut dec = StreamDecoder::new();
    let mut out = Vec::new();
    let mut at = 0;
    let mut i = 0;
    while at < bytes.len() {
        let space = dec.space();
        assert!(!space.is_empty());
        let want = cuts
            .get(i % cuts.len().max(1))
            .map_or(bytes.len(), |c| usize::from(*c).max(1));
        i += 1;
        let n = want.min(space.len()).min(bytes.len() - at);
        space[..n].copy_from_slice(&bytes[at..at + n]);
        dec.filled(n);
        at += n;
        loop {
            match dec.next_frame() {
                Ok(Some(frame)) => {
                    assert!(frame.len() <= MAX_FRAME_LEN);
                    out.push(frame.to_vec());
                }
                Ok(None) => break,
                Err(e) => return (out, Some(e)),
            }
        }
    }
    (out, None)
}

fuzz_target!(|input: Input| {
    let whole = decode(&input.bytes, &[]);
    let cut = decode(&input.bytes, &input.cuts);
    assert_eq!(whole, cut);

    let mut enc = StreamEncoder::new();
    let mut accepted = Vec::new();
    let mut written = Vec::new();
    let mut writes = input.writes.iter().cycle();
    for (len, fill) in input.frames.iter().take(64) {
        // Lengths up to 64 KiB, and a few maximal ones by wrapping.
        let len = usize::from(*len) * 2 % (MAX_FRAME_LEN + 2);
        let frame = vec![*fill; len];
        if enc.push(&frame) {
            accepted.push(frame);
        } else {
            assert!(len > MAX_FRAME_LEN || enc.queued() + 4 + len > ENCODER_CAPACITY);
        }
        assert!(enc.queued() <= ENCODER_CAPACITY);
        if let Some(w) = writes.next() {
            let n = usize::from(*w).min(enc.pending().len());
            written.extend_from_slice(&enc.pending()[..n]);
            enc.consume(n);
        }
    }
    written.extend_from_slice(enc.pending());
    let n = enc.pending().len();
    enc.consume(n);
    assert_eq!(enc.queued(), 0);
    assert_eq!(decode(&written, &input.cuts), (accepted, None));
});
