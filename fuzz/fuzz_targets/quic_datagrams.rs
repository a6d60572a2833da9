//! What the QUIC transport parses before anyone is authenticated: UDP
//! datagrams from anyone, fed to an encrypted overlay host's QUIC
//! endpoint, while time moves on; optionally after a genuine first packet
//! (a client Initial of a host with another cluster key), so the fuzzer
//! also reaches the handshake's later stages. Invariants: nothing panics;
//! no frame ever comes out (nobody proved the key) and no connection is
//! established; what the endpoint sends back stays bounded (no
//! amplification beyond QUIC's 3x before address validation).
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use weft_overlay::quic::{QuicConfig, QuicIdentity, QuicTunnel};

#[derive(Debug, Arbitrary)]
enum Op {
    /// Bytes as they came off the socket, from one of a few senders.
    Datagram { from: u8, bytes: Vec<u8> },
    /// Time passes.
    Wait { millis: u16 },
}

#[derive(Debug, Arbitrary)]
struct Input {
    /// Start with a real client Initial (of another key).
    genuine_start: bool,
    ops: Vec<Op>,
}

fn sender(index: u8) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 10 + index % 4], 7947))
}

fuzz_target!(|input: Input| {
    let host = QuicIdentity::from_secret(b"the cluster's secret").expect("identity");
    let mut tunnel = QuicTunnel::new(&host, QuicConfig::default()).expect("tunnel");
    let mut now = Instant::now();
    let mut received_bytes = 0usize;
    let mut sent_bytes = 0usize;
    let mut feed = |tunnel: &mut QuicTunnel, from: SocketAddr, bytes: &[u8], now: Instant| {
        received_bytes += bytes.len();
        tunnel.handle(now, from, None, bytes);
        assert!(tunnel.poll_received().is_none(), "a frame from nobody");
    };
    let drain = |tunnel: &mut QuicTunnel, now: Instant| {
        let mut buf = Vec::new();
        let mut sent = 0;
        while let Some(t) = tunnel.poll_transmit(now, 10, &mut buf) {
            sent += t.size;
        }
        sent
    };
    if input.genuine_start {
        let other = QuicIdentity::from_secret(b"another secret").expect("identity");
        let mut intruder = QuicTunnel::new(&other, QuicConfig::default()).expect("tunnel");
        intruder.send(now, SocketAddr::from(([192, 0, 2, 1], 7947)), Bytes::from_static(b"x"));
        let mut initial = Vec::new();
        if let Some(t) = intruder.poll_transmit(now, 1, &mut initial) {
            let first = initial[..t.size].to_vec();
            feed(&mut tunnel, sender(0), &first, now);
            sent_bytes += drain(&mut tunnel, now);
        }
    }
    for op in input.ops {
        match op {
            Op::Datagram { from, bytes } => {
                feed(&mut tunnel, sender(from), &bytes, now);
                sent_bytes += drain(&mut tunnel, now);
            }
            Op::Wait { millis } => {
                now += Duration::from_millis(u64::from(millis));
                tunnel.handle_timeout(now);
                sent_bytes += drain(&mut tunnel, now);
            }
        }
    }
    drop(feed);
    assert_eq!(tunnel.counters().established, 0);
    // Before an address is validated QUIC sends at most 3x what it got
    // (RFC 9000 section 8.1); stateless answers (version negotiation,
    // resets) are smaller than what they answer. Leave room for the one
    // Initial the genuine start made us answer in full.
    assert!(
        sent_bytes <= 3 * received_bytes + 4 * 1500,
        "sent {sent_bytes} for {received_bytes} received"
    );
});
