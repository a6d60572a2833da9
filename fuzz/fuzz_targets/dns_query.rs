//! Stateful: queries from sandboxes and datagrams from upstreams, in any
//! order, while time moves on. Some upstream datagrams are mutations of the
//! queries the server really sent, so the matching path (id, source,
//! question) is reached, not only the parser. Invariants: every answer
//! parses back as a DNS response carrying the id of the query it answers
//! (kept in `Asker::connection`), fits the asker's transport, and the
//! queries in flight never exceed the limit.
#![no_main]

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use hickory_proto::op::{Message, MessageType};
use libfuzzer_sys::fuzz_target;
use weft_services::dns::{
    Asker, DnsConfig, DnsServer, DnsTransport, Zone, ZoneEntry, TCP_MAX_MESSAGE,
};
use weft_vswitch::{MacAddr, NetworkId, PortId};

#[derive(Debug, Arbitrary)]
enum Op {
    /// A query from a sandbox on network 1 or 2.
    Query {
        network: bool,
        tcp: bool,
        seed: u64,
        bytes: Vec<u8>,
    },
    /// Arbitrary bytes from one of the upstreams (or a stranger).
    Upstream { from: u8, bytes: Vec<u8> },
    /// A sent upstream query turned into a response (QR set), with some
    /// bytes flipped, from where it was sent or a stranger.
    Reply {
        which: u8,
        from_stranger: bool,
        flips: Vec<(u16, u8)>,
    },
    /// Time passes; due timers fire.
    Advance { millis: u16 },
}

const MAX_IN_FLIGHT: usize = 8;
const MAX_UDP: usize = 4096;

fn upstream(i: u8) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 1 + i % 3], 53))
}

fn zone(network: &str, prefix: u8) -> Zone {
    Zone {
        network_name: network.into(),
        entries: (0..4u8)
            .map(|i| ZoneEntry {
                name: format!("host{i}"),
                aliases: vec!["shared".into()],
                addresses: vec![
                    IpAddr::from([10, prefix, 0, 2 + i]),
                    IpAddr::from([0xfd00, u16::from(prefix), 0, 0, 0, 0, 0, u16::from(2 + i)]),
                ],
            })
            .collect(),
    }
}

fn drain(dns: &mut DnsServer, sent: &mut Vec<(SocketAddr, Vec<u8>)>) {
    while let Some((asker, bytes)) = dns.poll_answer() {
        let limit = match asker.transport {
            DnsTransport::Udp => MAX_UDP,
            DnsTransport::Tcp => TCP_MAX_MESSAGE,
        };
        assert!(bytes.len() <= limit);
        let message = Message::from_vec(&bytes).expect("every answer parses");
        assert_eq!(message.metadata.message_type, MessageType::Response);
        assert_eq!(u64::from(message.metadata.id), asker.connection);
    }
    while let Some(transmit) = dns.poll_upstream() {
        assert!(Message::from_vec(&transmit.1).is_ok());
        if sent.len() < 64 {
            sent.push(transmit);
        }
    }
    assert!(dns.in_flight() <= MAX_IN_FLIGHT);
}

fuzz_target!(|ops: Vec<Op>| {
    let mut dns = DnsServer::new(DnsConfig {
        upstreams: vec![upstream(0), upstream(1), upstream(2)],
        max_in_flight: MAX_IN_FLIGHT,
        ..DnsConfig::default()
    });
    dns.set_zone(NetworkId(1), zone("front", 1));
    dns.set_zone(NetworkId(2), zone("back", 2));
    let mut now = Instant::now();
    let mut sent: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
    for op in ops.into_iter().take(256) {
        match op {
            Op::Query {
                network,
                tcp,
                seed,
                bytes,
            } => {
                let network = NetworkId(if network { 2 } else { 1 });
                let connection = match bytes.as_slice() {
                    [a, b, ..] => u64::from(u16::from_be_bytes([*a, *b])),
                    // No id: must not be answered (no answer id equals this).
                    _ => u64::MAX,
                };
                let asker = Asker {
                    network,
                    port: PortId(network.0),
                    mac: MacAddr([0x02, 0x42, 10, 0, 0, 9]),
                    addr: SocketAddr::from(([10, 0, 0, 9], 40_000)),
                    server: IpAddr::from([10, 0, 0, 1]),
                    transport: if tcp {
                        DnsTransport::Tcp
                    } else {
                        DnsTransport::Udp
                    },
                    connection,
                };
                dns.handle_query(now, asker, &bytes, seed);
            }
            Op::Upstream { from, bytes } => dns.handle_upstream(now, upstream(from), &bytes),
            Op::Reply {
                which,
                from_stranger,
                flips,
            } => {
                if sent.is_empty() {
                    continue;
                }
                let (to, mut bytes) = sent[usize::from(which) % sent.len()].clone();
                if let Some(flags) = bytes.get_mut(2) {
                    *flags |= 0x80;
                }
                for (at, x) in flips.into_iter().take(16) {
                    let i = usize::from(at) % bytes.len().max(1);
                    if let Some(byte) = bytes.get_mut(i) {
                        *byte ^= x;
                    }
                }
                let from = if from_stranger {
                    SocketAddr::from(([203, 0, 113, 1], 53))
                } else {
                    to
                };
                dns.handle_upstream(now, from, &bytes);
            }
            Op::Advance { millis } => {
                now += Duration::from_millis(u64::from(millis));
                dns.handle_timeout(now);
            }
        }
        drain(&mut dns, &mut sent);
    }
    // Every query in flight is answered by its deadline.
    now += Duration::from_secs(10);
    dns.handle_timeout(now);
    drain(&mut dns, &mut sent);
    assert_eq!(dns.in_flight(), 0);
    assert_eq!(dns.poll_timeout(), None);
});
