//! Receive coalescing of frames from a tunnel: arbitrary frames, and TCP
//! segments (IPv4 or IPv6) shaped enough to merge, offered to a run in
//! order. Invariants: no panic; a run never outgrows `MAX_MERGED`; a merged
//! frame cut back by its GSO header gives as many segments as were merged,
//! whose payloads are the merged payload.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use weft_vswitch::gro::{Run, MAX_MERGED};
use weft_vswitch::wire::vnet::{tcp_gso_header, VnetHeader};

#[derive(Debug, Arbitrary)]
enum Offer {
    Raw(Vec<u8>),
    Segment {
        v6: bool,
        seq: u32,
        len: u16,
        psh: bool,
        port: u8,
        fill: u8,
    },
    /// The segment right after the last one offered, same flow.
    Next {
        len: u16,
        psh: bool,
        fill: u8,
    },
}

fn segment(v6: bool, seq: u32, len: u16, psh: bool, port: u8, fill: u8) -> Vec<u8> {
    let payload = vec![fill; usize::from(len % 2000)];
    let mut frame = Vec::new();
    let builder = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
    let builder = if v6 {
        builder.ipv6([0xfd; 16], [0xfe; 16], 64)
    } else {
        builder.ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
    };
    let builder = builder
        .tcp(5201, 40000 + u16::from(port % 2), seq, 1000)
        .ack(1);
    let builder = if psh { builder.psh() } else { builder };
    let _ = builder.write(&mut frame, &payload);
    frame
}

fuzz_target!(|offers: Vec<Offer>| {
    let mut merged = vec![0u8; MAX_MERGED];
    let mut run: Option<Run> = None;
    let mut payload_total = 0usize;
    let mut headers_len = 0usize;
    // The last shaped segment: family, port, and the next sequence number.
    let mut last = (false, 0u8, 0u32);
    for offer in offers.into_iter().take(256) {
        let frame = match offer {
            Offer::Raw(bytes) => bytes,
            Offer::Segment {
                v6,
                seq,
                len,
                psh,
                port,
                fill,
            } => {
                last = (v6, port, seq.wrapping_add(u32::from(len % 2000)));
                segment(v6, seq, len, psh, port, fill)
            }
            Offer::Next { len, psh, fill } => {
                let (v6, port, seq) = last;
                last.2 = seq.wrapping_add(u32::from(len % 2000));
                segment(v6, seq, len, psh, port, fill)
            }
        };
        if frame.len() > MAX_MERGED {
            continue;
        }
        if let Some(current) = run.as_mut() {
            let before = current.len;
            if current.append(&mut merged, &frame) {
                assert!(current.len <= MAX_MERGED);
                payload_total += current.len - before;
                continue;
            }
        }
        if let Some(done) = run.take() {
            check(done, &mut merged, payload_total, headers_len);
        }
        if let Some(started) = Run::start(&frame) {
            merged[..frame.len()].copy_from_slice(&frame);
            payload_total = started.segment_size;
            headers_len = frame.len() - started.segment_size;
            run = Some(started);
        }
    }
    if let Some(done) = run.take() {
        check(done, &mut merged, payload_total, headers_len);
    }
});

fn check(run: Run, merged: &mut [u8], payload_total: usize, headers_len: usize) {
    run.finish(merged);
    assert_eq!(run.len, headers_len + payload_total);
    if run.count < 2 {
        return;
    }
    let mut frame = merged[..run.len].to_vec();
    let size = u16::try_from(run.segment_size).expect("a segment fits u16");
    let header = tcp_gso_header(&mut frame, size).expect("a merged frame is TCP");
    let vnet = VnetHeader::new_checked(&header[..]).expect("10 bytes");
    let mut scratch = vec![0u8; MAX_MERGED];
    let mut payload = Vec::new();
    let count = weft_vswitch::gso::segment(&vnet, &frame, &mut scratch, |s| {
        payload.extend_from_slice(&s[headers_len..]);
    })
    .expect("a merged frame cuts back");
    assert_eq!(count, run.count);
    assert_eq!(payload, frame[headers_len..]);
}
