//! Stateful: DHCP messages from clients (arbitrary bytes, and real
//! requests with bytes flipped) while the controller replaces scopes.
//! Invariants: nothing panics; every reply decodes as a BOOTREPLY that
//! carries the request's xid and a message type, is addressed from the
//! lease's gateway, and offers (yiaddr) only the address of the MAC that
//! asked; every message is counted exactly once.
#![no_main]

use std::net::Ipv4Addr;

use arbitrary::Arbitrary;
use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use libfuzzer_sys::fuzz_target;
use weft_services::dhcp::{DhcpCounters, DhcpLease, DhcpScope, DhcpServer};
use weft_vswitch::{MacAddr, NetworkId};

#[derive(Debug, Arbitrary)]
enum Op {
    /// Arbitrary bytes from client `mac` on network 1 or 2.
    Bytes {
        network: bool,
        mac: u8,
        bytes: Vec<u8>,
    },
    /// A well-formed request of type `kind` from `mac`, asking for
    /// `requested`, with some bytes flipped.
    Request {
        network: bool,
        mac: u8,
        kind: u8,
        requested: u8,
        server: Option<u8>,
        ciaddr: u8,
        broadcast: bool,
        flips: Vec<(u16, u8)>,
    },
    /// Replace network 1's scope with `count` leases.
    SetScope { count: u8, mtu: u16, domain: String },
    /// Forget network 2.
    RemoveScope,
}

fn mac(i: u8) -> MacAddr {
    MacAddr([0x52, 0x54, 0, 0, 0, i % 8])
}

fn address(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, 10 + i % 8)
}

const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

fn scope(count: u8, mtu: u16, domain: String) -> DhcpScope {
    DhcpScope {
        domain,
        mtu: Some(mtu),
        leases: (0..count % 8)
            .map(|i| DhcpLease {
                mac: mac(i),
                address: address(i),
                prefix_len: 24,
                gateway: GATEWAY,
                hostname: format!("vm{i}"),
            })
            .collect(),
    }
}

fn total(c: &DhcpCounters) -> u64 {
    c.offers + c.acks + c.naks + c.ignored + c.oversized + c.malformed + c.spoofed
}

fuzz_target!(|ops: Vec<Op>| {
    let mut server = DhcpServer::new();
    server.set_scope(NetworkId(1), scope(4, 1500, "one".into()));
    server.set_scope(NetworkId(2), scope(8, 1400, "two".into()));
    let mut leases: [u8; 3] = [0, 4, 8];
    for op in ops.into_iter().take(128) {
        let before = total(&server.counters());
        let (network, source, bytes) = match op {
            Op::Bytes {
                network,
                mac: m,
                bytes,
            } => (network, mac(m), bytes),
            Op::Request {
                network,
                mac: m,
                kind,
                requested,
                server: id,
                ciaddr,
                broadcast,
                flips,
            } => {
                let mut message = Message::new_with_id(
                    u32::from(kind) << 8 | u32::from(m),
                    if ciaddr % 2 == 0 {
                        Ipv4Addr::UNSPECIFIED
                    } else {
                        address(ciaddr)
                    },
                    Ipv4Addr::UNSPECIFIED,
                    Ipv4Addr::UNSPECIFIED,
                    Ipv4Addr::UNSPECIFIED,
                    &mac(m).0,
                );
                if broadcast {
                    message.set_flags(dhcproto::v4::Flags::default().set_broadcast());
                }
                message
                    .opts_mut()
                    .insert(DhcpOption::MessageType(MessageType::from(kind % 9 + 1)));
                message
                    .opts_mut()
                    .insert(DhcpOption::RequestedIpAddress(address(requested)));
                if let Some(id) = id {
                    message
                        .opts_mut()
                        .insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(
                            10,
                            0,
                            0,
                            id % 3,
                        )));
                }
                let mut bytes = Vec::new();
                message
                    .encode(&mut Encoder::new(&mut bytes))
                    .expect("a message we built encodes");
                for (at, x) in flips.into_iter().take(8) {
                    let i = usize::from(at) % bytes.len();
                    bytes[i] ^= x;
                }
                (network, mac(m), bytes)
            }
            Op::SetScope { count, mtu, domain } => {
                leases[1] = count % 8;
                server.set_scope(NetworkId(1), scope(count, mtu, domain));
                continue;
            }
            Op::RemoveScope => {
                leases[2] = 0;
                server.remove_scope(NetworkId(2));
                continue;
            }
        };
        let network: u8 = if network { 2 } else { 1 };
        let reply =
            server.handle_message(NetworkId(u32::from(network)), source, Some(GATEWAY), &bytes);
        assert_eq!(total(&server.counters()), before + 1);
        let Some(reply) = reply else {
            continue;
        };
        let message = Message::decode(&mut Decoder::new(&reply.message)).expect("reply decodes");
        assert_eq!(message.opcode(), Opcode::BootReply);
        assert_eq!(reply.source, GATEWAY);
        let kind = message.opts().msg_type().expect("reply has a type");
        // The request's xid from its raw bytes (dhcproto's own decoder
        // may choke on the options this target makes).
        let xid = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        assert_eq!(message.xid(), xid);
        assert_eq!(message.chaddr(), &source.0);
        match kind {
            MessageType::Offer | MessageType::Ack => {
                let yiaddr = message.yiaddr();
                let index = source.0[5];
                assert!(index < leases[usize::from(network)]);
                assert!(yiaddr == address(index) || yiaddr.is_unspecified());
            }
            MessageType::Nak => assert!(message.yiaddr().is_unspecified()),
            other => panic!("unexpected reply type {other:?}"),
        }
    }
});
