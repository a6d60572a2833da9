//! Gossip datagrams from anyone: arbitrary bytes, or arbitrary payloads in
//! a well-formed plain envelope (so the SWIM and directory decoders are
//! reached, not only the envelope check), fed to a node that has joined a
//! cluster, while time moves on. Invariants: nothing panics; a node with a
//! cluster key accepts nothing unsealed (its counters account for every
//! datagram and its membership stays empty); the keyless node's outputs
//! stay bounded.
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use weft_overlay::{ClusterKey, Node, NodeConfig, NodeIdentity};

#[derive(Debug, Arbitrary)]
enum Op {
    /// Raw bytes as they came off the socket.
    Raw { from: u8, bytes: Vec<u8> },
    /// A plain envelope carrying `kind` (1: SWIM, 2: directory) and `payload`.
    Plain {
        from: u8,
        kind: bool,
        payload: Vec<u8>,
    },
    /// Time passes.
    Wait { millis: u16 },
}

fn node(name: &str, key: Option<ClusterKey>) -> Node {
    let identity = NodeIdentity {
        id: weft_overlay::NodeId(u128::from(name.as_bytes().first().copied().unwrap_or(0))),
        name: name.into(),
        explicit_name: true,
        gossip: "192.0.2.1:7946".parse().unwrap(),
        boot: 1,
        renewal: 0,
    };
    Node::new(
        identity,
        NodeConfig::new("192.0.2.1:4789".parse().unwrap()),
        key,
        7,
    )
}

fuzz_target!(|ops: Vec<Op>| {
    let start = Instant::now();
    let mut now = start;
    let mut open = node("open", None);
    let mut keyed = node("keyed", Some(ClusterKey::from_secret(b"secret")));
    let seed: SocketAddr = "192.0.2.2:7946".parse().unwrap();
    open.join(seed, now);
    keyed.join(seed, now);
    let mut fed = 0u64;
    for op in ops {
        let (from, datagram) = match op {
            Op::Raw { from, bytes } => (from, bytes),
            Op::Plain {
                from,
                kind,
                payload,
            } => {
                let mut datagram = vec![1, if kind { 1 } else { 2 }];
                datagram.extend_from_slice(&payload);
                (from, datagram)
            }
            Op::Wait { millis } => {
                now += Duration::from_millis(u64::from(millis));
                open.handle_timeout(now);
                keyed.handle_timeout(now);
                drain(&mut open);
                drain(&mut keyed);
                continue;
            }
        };
        let from = SocketAddr::from(([198, 51, 100, from], 7946));
        open.handle_datagram(from, &datagram, now);
        keyed.handle_datagram(from, &datagram, now);
        fed += 1;
        drain(&mut open);
        drain(&mut keyed);
        let counters = keyed.counters();
        assert_eq!(
            counters.gossip_rejected, fed,
            "a keyed node accepted unsealed bytes"
        );
        assert!(keyed.members().is_empty());
    }
});

fn drain(node: &mut Node) {
    let mut sent = 0;
    while node.poll_transmit().is_some() {
        sent += 1;
        assert!(sent < 100_000, "unbounded output");
    }
    while node.poll_event().is_some() {}
}
