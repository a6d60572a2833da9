//! IPv4 reassembly of fragments from a sandbox: arbitrary frames, and
//! fragments shaped enough to reach the interesting paths (offsets, "more
//! fragments", identifications, networks), in any order, with time.
//! Invariants: no panic; never more datagrams waiting than the bound; a
//! completed datagram is one unfragmented IPv4 packet whose length fields
//! and header checksum are right.
#![no_main]

use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use weft_services::reassembly::{Fragment, Reassembly, MAX_PENDING};
use weft_vswitch::wire::checksum;
use weft_vswitch::NetworkId;

#[derive(Debug, Arbitrary)]
enum Step {
    Raw {
        network: u8,
        bytes: Vec<u8>,
    },
    Piece {
        network: u8,
        id: u8,
        offset_8: u16,
        more: bool,
        len: u16,
        fill: u8,
    },
    Wait(u8),
}

/// A UDP fragment from 10.0.0.2 to 192.0.2.9.
fn piece(id: u8, offset_8: u16, more: bool, len: u16, fill: u8) -> Vec<u8> {
    let len = usize::from(len % 3000);
    let mut frame = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 8, 0];
    let total = u16::try_from(20 + len).unwrap_or(u16::MAX);
    let flags_offset = (offset_8 & 0x1fff) | if more { 0x2000 } else { 0 };
    frame.extend_from_slice(&[0x45, 0]);
    frame.extend_from_slice(&total.to_be_bytes());
    frame.extend_from_slice(&[0, id]);
    frame.extend_from_slice(&flags_offset.to_be_bytes());
    frame.extend_from_slice(&[64, 17, 0, 0, 10, 0, 0, 2, 192, 0, 2, 9]);
    frame.resize(frame.len() + len, fill);
    frame
}

fuzz_target!(|steps: Vec<Step>| {
    let t0 = Instant::now();
    let mut now = t0;
    let mut reassembly = Reassembly::default();
    for step in steps.into_iter().take(512) {
        let outcome = match step {
            Step::Raw { network, bytes } => {
                reassembly.push(now, NetworkId(u32::from(network % 4)), &bytes)
            }
            Step::Piece {
                network,
                id,
                offset_8,
                more,
                len,
                fill,
            } => reassembly.push(
                now,
                NetworkId(u32::from(network % 4)),
                &piece(id % 8, offset_8 % 16, more, len, fill),
            ),
            Step::Wait(seconds) => {
                now += Duration::from_secs(u64::from(seconds));
                reassembly.handle_timeout(now);
                Fragment::Held
            }
        };
        assert!(reassembly.pending() <= MAX_PENDING);
        if let Fragment::Complete(frame) = outcome {
            assert!(frame.len() >= 34);
            let ip = &frame[14..];
            let header_len = usize::from(ip[0] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            assert_eq!(total, ip.len());
            assert_eq!(u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff, 0);
            assert_eq!(checksum::fold(checksum::sum(0, &ip[..header_len])), 0xffff);
        }
    }
});
