#![allow(clippy::disallowed_methods)]

use etherparse::{NetSlice, SlicedPacket};
use weft_vswitch::wire::ethernet::EthernetFrame;
use weft_vswitch::wire::ip_addresses;

use super::*;

const GW: MacAddr = MacAddr([0x02, 0x42, 10, 0, 0, 1]);
const SB: MacAddr = MacAddr([0x02, 0x42, 10, 0, 0, 2]);

fn udp_frame(sport: u16, dst: [u8; 4], dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    PacketBuilder::ethernet2(SB.0, GW.0)
        .ipv4([10, 0, 0, 2], dst, 64)
        .udp(sport, dport)
        .write(&mut f, payload)
        .unwrap();
    f
}

#[test]
fn a_udp_flow_opens_once_and_replies_come_back() {
    let t0 = Instant::now();
    let mut nat = Nat::new(NatConfig::default());
    handle(
        &mut nat,
        t0,
        NetworkId(1),
        PortId(3),
        GW,
        &udp_frame(5000, [192, 0, 2, 9], 53, b"q1"),
        Some(IpAddr::from([192, 0, 2, 9])),
    )
    .unwrap();
    handle(
        &mut nat,
        t0,
        NetworkId(1),
        PortId(3),
        GW,
        &udp_frame(5000, [192, 0, 2, 9], 53, b"q2"),
        Some(IpAddr::from([192, 0, 2, 9])),
    )
    .unwrap();
    let Some(NatAction::Open {
        flow,
        proto: NatProto::Udp,
        remote,
    }) = nat.poll_action()
    else {
        panic!("no open")
    };
    assert_eq!(remote, "192.0.2.9:53".parse().unwrap());
    assert_eq!(
        nat.poll_action(),
        Some(NatAction::Send {
            flow,
            data: b"q1".to_vec()
        })
    );
    assert_eq!(
        nat.poll_action(),
        Some(NatAction::Send {
            flow,
            data: b"q2".to_vec()
        })
    );
    assert_eq!(nat.poll_action(), None);
    nat.handle_reply(t0, flow, b"answer");
    let (port, frame) = nat.poll_frame().unwrap();
    assert_eq!(port, PortId(3));
    let p = SlicedPacket::from_ethernet(&frame).unwrap();
    let Some(TransportSlice::Udp(udp)) = p.transport else {
        panic!()
    };
    assert_eq!((udp.source_port(), udp.destination_port()), (53, 5000));
    assert_eq!(udp.payload(), b"answer");
    let eth = EthernetFrame::new_checked(&frame[..]).unwrap();
    assert_eq!((eth.source(), eth.destination()), (GW, SB));
}

#[test]
fn flows_are_one_to_one_and_bounded() {
    let t0 = Instant::now();
    let mut nat = Nat::new(NatConfig {
        max_flows: 2,
        ..NatConfig::default()
    });
    handle(
        &mut nat,
        t0,
        NetworkId(1),
        PortId(1),
        GW,
        &udp_frame(1, [192, 0, 2, 9], 53, b""),
        Some(IpAddr::from([192, 0, 2, 9])),
    )
    .unwrap();
    handle(
        &mut nat,
        t0,
        NetworkId(1),
        PortId(1),
        GW,
        &udp_frame(2, [192, 0, 2, 9], 53, b""),
        Some(IpAddr::from([192, 0, 2, 9])),
    )
    .unwrap();
    assert_eq!(
        handle(
            &mut nat,
            t0,
            NetworkId(1),
            PortId(1),
            GW,
            &udp_frame(3, [192, 0, 2, 9], 53, b""),
            Some(IpAddr::from([192, 0, 2, 9])),
        ),
        Err(DropReason::NatFull)
    );
    assert_eq!(nat.flow_count(), 2);
    // Idle flows close, and make room.
    nat.handle_timeout(t0 + Duration::from_secs(61));
    assert_eq!(nat.flow_count(), 0);
    let closes = std::iter::from_fn(|| nat.poll_action())
        .filter(|a| matches!(a, NatAction::Close { .. }))
        .count();
    assert_eq!(closes, 2);
}

#[test]
fn echo_requests_and_replies_keep_the_sandbox_identifier() {
    let t0 = Instant::now();
    let mut nat = Nat::new(NatConfig::default());
    let mut f = Vec::new();
    PacketBuilder::ethernet2(SB.0, GW.0)
        .ipv4([10, 0, 0, 2], [192, 0, 2, 9], 64)
        .icmpv4_echo_request(0x1234, 7)
        .write(&mut f, b"ping!")
        .unwrap();
    handle(
        &mut nat,
        t0,
        NetworkId(1),
        PortId(1),
        GW,
        &f,
        Some(IpAddr::from([192, 0, 2, 9])),
    )
    .unwrap();
    let Some(NatAction::Open {
        flow,
        proto: NatProto::IcmpEcho,
        ..
    }) = nat.poll_action()
    else {
        panic!()
    };
    let Some(NatAction::Send { data, .. }) = nat.poll_action() else {
        panic!()
    };
    assert_eq!(&data[..8], &[8, 0, 0, 0, 0, 0, 0, 7]);
    // The ping socket's reply carries the kernel's identifier (0x9999).
    let mut reply = vec![0, 0, 0, 0, 0x99, 0x99, 0, 7];
    reply.extend_from_slice(b"ping!");
    nat.handle_reply(t0, flow, &reply);
    let (_, frame) = nat.poll_frame().unwrap();
    let p = SlicedPacket::from_ethernet(&frame).unwrap();
    let Some(TransportSlice::Icmpv4(icmp)) = p.transport else {
        panic!()
    };
    assert_eq!(
        icmp.icmp_type(),
        Icmpv4Type::EchoReply(IcmpEchoHeader { id: 0x1234, seq: 7 })
    );
    assert_eq!(icmp.payload(), b"ping!");
}

/// The IPv6 sandbox and remote of the IPv6 tests.
const SB6: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
const REMOTE6: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 9);

/// An IPv6 frame from the sandbox, with REMOTE6 as the way out.
fn send_v6(nat: &mut Nat, now: Instant, frame: &[u8]) -> Result<(), DropReason> {
    handle(
        nat,
        now,
        NetworkId(1),
        PortId(1),
        GW,
        frame,
        Some(IpAddr::V6(REMOTE6)),
    )
}

#[test]
fn icmpv6_echo_requests_and_replies_keep_the_sandbox_identifier() {
    let t0 = Instant::now();
    let mut nat = Nat::new(NatConfig::default());
    let (sandbox, remote) = (SB6, REMOTE6);
    let mut f = Vec::new();
    PacketBuilder::ethernet2(SB.0, GW.0)
        .ipv6(sandbox.octets(), remote.octets(), 64)
        .icmpv6_echo_request(0x4321, 3)
        .write(&mut f, b"ping6!")
        .unwrap();
    send_v6(&mut nat, t0, &f).unwrap();
    let Some(NatAction::Open {
        flow,
        proto: NatProto::IcmpEcho,
        remote: opened,
    }) = nat.poll_action()
    else {
        panic!()
    };
    assert_eq!(opened, SocketAddr::new(IpAddr::V6(remote), 0));
    let Some(NatAction::Send { data, .. }) = nat.poll_action() else {
        panic!()
    };
    assert_eq!(&data[..8], &[128, 0, 0, 0, 0, 0, 0, 3]);
    assert_eq!(&data[8..], b"ping6!");
    // The ping socket's reply carries the kernel's identifier.
    let mut reply = vec![129, 0, 0, 0, 0x99, 0x99, 0, 3];
    reply.extend_from_slice(b"ping6!");
    nat.handle_reply(t0, flow, &reply);
    let (port, frame) = nat.poll_frame().unwrap();
    assert_eq!(port, PortId(1));
    let p = SlicedPacket::from_ethernet(&frame).unwrap();
    let Some(NetSlice::Ipv6(ip)) = &p.net else {
        panic!()
    };
    assert_eq!(ip.header().source_addr(), remote);
    assert_eq!(ip.header().destination_addr(), sandbox);
    let Some(TransportSlice::Icmpv6(icmp)) = p.transport else {
        panic!()
    };
    assert_eq!(
        icmp.icmp_type(),
        Icmpv6Type::EchoReply(IcmpEchoHeader { id: 0x4321, seq: 3 })
    );
    assert_eq!(icmp.payload(), b"ping6!");
    // The checksum is right (etherparse computes it over the
    // pseudo-header; the sandbox's kernel checks it).
    let expected = icmp
        .header()
        .icmp_type
        .calc_checksum(
            ip.header().source(),
            ip.header().destination(),
            icmp.payload(),
        )
        .unwrap();
    assert_eq!(icmp.checksum(), expected);
    // Anything but an echo request is not translated.
    let mut other = Vec::new();
    PacketBuilder::ethernet2(SB.0, GW.0)
        .ipv6(sandbox.octets(), remote.octets(), 64)
        .icmpv6(Icmpv6Type::EchoReply(IcmpEchoHeader { id: 1, seq: 1 }))
        .write(&mut other, b"")
        .unwrap();
    assert_eq!(send_v6(&mut nat, t0, &other), Err(DropReason::NoRoute));
}

#[test]
fn refused_udp_over_ipv6_becomes_icmpv6_port_unreachable() {
    let t0 = Instant::now();
    let mut nat = Nat::new(NatConfig::default());
    let (sandbox, remote) = (SB6, REMOTE6);
    let mut f = Vec::new();
    PacketBuilder::ethernet2(SB.0, GW.0)
        .ipv6(sandbox.octets(), remote.octets(), 64)
        .udp(4000, 9)
        .write(&mut f, b"x")
        .unwrap();
    send_v6(&mut nat, t0, &f).unwrap();
    let Some(NatAction::Open { flow, .. }) = nat.poll_action() else {
        panic!()
    };
    nat.handle_refused(flow);
    let (_, frame) = nat.poll_frame().unwrap();
    let p = SlicedPacket::from_ethernet(&frame).unwrap();
    let Some(TransportSlice::Icmpv6(icmp)) = p.transport else {
        panic!()
    };
    assert_eq!(
        icmp.icmp_type(),
        Icmpv6Type::DestinationUnreachable(etherparse::icmpv6::DestUnreachableCode::Port)
    );
    // The quote names the flow: the sandbox's address and ports.
    let quoted = icmp.payload();
    assert_eq!(&quoted[8..24], &sandbox.octets());
    assert_eq!(&quoted[40..44], &[0x0f, 0xa0, 0, 9]);
}

#[test]
fn a_published_udp_port_carries_datagrams_both_ways() {
    let t0 = Instant::now();
    let mut nat = Nat::new(NatConfig::default());
    let sandbox: SocketAddr = "10.0.0.2:5353".parse().unwrap();
    let client: SocketAddr = "198.51.100.7:40000".parse().unwrap();
    nat.handle_inbound(
        t0,
        NetworkId(1),
        (PortId(4), SB, GW),
        9,
        sandbox,
        client,
        client,
        b"hello",
    )
    .unwrap();
    let (port, frame) = nat.poll_frame().unwrap();
    assert_eq!(port, PortId(4));
    let p = SlicedPacket::from_ethernet(&frame).unwrap();
    assert_eq!(
        ip_addresses(p.net.as_ref()),
        Some((client.ip(), sandbox.ip()))
    );
    let Some(TransportSlice::Udp(udp)) = p.transport else {
        panic!()
    };
    assert_eq!((udp.source_port(), udp.destination_port()), (40000, 5353));
    // No host socket of its own: the published one answers.
    assert_eq!(nat.poll_action(), None);
    // The sandbox answers the client: out through the published socket,
    // even with no way out (`open` None) for new flows.
    let mut answer = Vec::new();
    PacketBuilder::ethernet2(SB.0, GW.0)
        .ipv4([10, 0, 0, 2], [198, 51, 100, 7], 64)
        .udp(5353, 40000)
        .write(&mut answer, b"world")
        .unwrap();
    handle(&mut nat, t0, NetworkId(1), PortId(4), GW, &answer, None).unwrap();
    assert_eq!(
        nat.poll_action(),
        Some(NatAction::Reply {
            listener: 9,
            client,
            data: b"world".to_vec()
        })
    );
    // A datagram to anyone else with no way out is refused.
    assert_eq!(
        handle(
            &mut nat,
            t0,
            NetworkId(1),
            PortId(4),
            GW,
            &udp_frame(5353, [198, 51, 100, 8], 40000, b"x"),
            None
        ),
        Err(DropReason::NoRoute)
    );
    // Idle inbound flows end without a socket to close.
    nat.handle_timeout(t0 + Duration::from_secs(61));
    assert_eq!(nat.flow_count(), 0);
    assert_eq!(nat.poll_action(), None);
}

#[test]
fn refused_udp_becomes_port_unreachable() {
    let t0 = Instant::now();
    let mut nat = Nat::new(NatConfig::default());
    handle(
        &mut nat,
        t0,
        NetworkId(1),
        PortId(1),
        GW,
        &udp_frame(4000, [192, 0, 2, 9], 9, b"x"),
        Some(IpAddr::from([192, 0, 2, 9])),
    )
    .unwrap();
    let Some(NatAction::Open { flow, .. }) = nat.poll_action() else {
        panic!()
    };
    nat.handle_refused(flow);
    let (_, frame) = nat.poll_frame().unwrap();
    let p = SlicedPacket::from_ethernet(&frame).unwrap();
    let Some(TransportSlice::Icmpv4(icmp)) = p.transport else {
        panic!()
    };
    assert!(matches!(
        icmp.icmp_type(),
        Icmpv4Type::DestinationUnreachable(_)
    ));
}

proptest::proptest! {
    /// Any sequence of datagrams: one flow (one host socket) per
    /// distinct (source port, destination) and the same flow for the
    /// same pair; never more flows than the bound.
    #[test]
    fn flows_map_one_to_one(
        datagrams in proptest::collection::vec((0u16..8, 0u8..4, 1u16..4), 1..64),
        max_flows in 1usize..16,
    ) {
        let t0 = Instant::now();
        let mut nat = Nat::new(NatConfig { max_flows, ..NatConfig::default() });
        let mut flow_of: std::collections::HashMap<(u16, u8, u16), FlowId> =
            std::collections::HashMap::new();
        let mut socket_of: std::collections::HashMap<FlowId, SocketAddr> =
            std::collections::HashMap::new();
        for (sport, host, dport) in datagrams {
            let frame = udp_frame(1000 + sport, [192, 0, 2, host], dport, b"x");
            let dst = IpAddr::from([192, 0, 2, host]);
            let result = handle(&mut nat, t0, NetworkId(1), PortId(1), GW, &frame, Some(dst));
            let known = flow_of.contains_key(&(sport, host, dport));
            if !known && flow_of.len() >= max_flows {
                proptest::prop_assert_eq!(result, Err(DropReason::NatFull));
                continue;
            }
            proptest::prop_assert!(result.is_ok());
            while let Some(action) = nat.poll_action() {
                match action {
                    NatAction::Open { flow, remote, .. } => {
                        // A new socket only for a new pair, to its own remote.
                        proptest::prop_assert!(!known);
                        proptest::prop_assert!(socket_of.insert(flow, remote).is_none());
                        proptest::prop_assert_eq!(remote, SocketAddr::new(dst, dport));
                        flow_of.insert((sport, host, dport), flow);
                    }
                    NatAction::Send { flow, .. } => {
                        proptest::prop_assert_eq!(Some(&flow), flow_of.get(&(sport, host, dport)));
                    }
                    other => proptest::prop_assert!(false, "unexpected {:?}", other),
                }
            }
        }
        proptest::prop_assert!(nat.flow_count() <= max_flows);
        proptest::prop_assert_eq!(nat.flow_count(), flow_of.len());
    }
}

/// Parse a frame, as the driver does, and hand it to the NAT.
fn handle(
    nat: &mut Nat,
    now: Instant,
    network: NetworkId,
    ingress: PortId,
    gateway_mac: MacAddr,
    frame: &[u8],
    open: Option<IpAddr>,
) -> Result<(), DropReason> {
    let parsed = GatewayFrame::parse(frame)?;
    nat.handle_frame(now, network, ingress, gateway_mac, &parsed, open)
}

/// The ICMP type and code of a frame for the sandbox, if it is ICMPv4.
fn icmp_type_code(frame: &[u8]) -> Option<(u8, u8)> {
    let p = SlicedPacket::from_ethernet(frame).ok()?;
    let Some(TransportSlice::Icmpv4(icmp)) = p.transport else {
        return None;
    };
    Some((icmp.type_u8(), icmp.code_u8()))
}

/// A sandbox over its share is refused with ICMP administratively
/// prohibited (counted by reason); another sandbox still opens flows; an
/// idle flow goes within a second of its timer and makes room.
#[test]
fn a_sandbox_over_its_share_is_told_and_others_still_open() {
    let t0 = Instant::now();
    let mut nat = Nat::new(NatConfig {
        max_flows: 256,
        udp_idle: Duration::from_secs(3),
        ..NatConfig::default()
    });
    let to = Some(IpAddr::from([192, 0, 2, 9]));
    let share = nat.shares().sandbox_share();
    assert_eq!(share, 64);
    for sport in 0..share {
        let sport = 1000 + u16::try_from(sport).unwrap();
        let frame = udp_frame(sport, [192, 0, 2, 9], 53, b"");
        handle(&mut nat, t0, NetworkId(1), PortId(1), GW, &frame, to).unwrap();
    }
    let frame = udp_frame(9999, [192, 0, 2, 9], 53, b"");
    assert_eq!(
        handle(&mut nat, t0, NetworkId(1), PortId(1), GW, &frame, to),
        Err(DropReason::NatFull)
    );
    let (port, refusal) = nat.poll_frame().expect("the sandbox is told");
    assert_eq!(port, PortId(1));
    assert_eq!(icmp_type_code(&refusal), Some((3, 13)));
    assert_eq!(nat.refused(NetworkId(1)).sandbox_share, 1);
    assert_eq!(nat.counters().flows_refused, 1);
    let frame = udp_frame(9999, [192, 0, 2, 9], 53, b"");
    handle(&mut nat, t0, NetworkId(1), PortId(2), GW, &frame, to).unwrap();
    assert_eq!(nat.flow_count(), share + 1);

    // The timer: 3 s idle, looked at once a second.
    let due = nat.poll_timeout().unwrap();
    assert!(due <= t0 + Duration::from_secs(1));
    nat.handle_timeout(t0 + Duration::from_secs(1));
    assert_eq!(nat.flow_count(), share + 1);
    nat.handle_timeout(t0 + Duration::from_secs(4));
    assert_eq!(nat.flow_count(), 0);
    assert_eq!(
        nat.counters().flows_idled_out,
        u64::try_from(share).unwrap() + 1
    );
}

/// A flow whose host socket cannot be opened ends at once, and the
/// sandbox is told.
#[test]
fn a_socket_that_cannot_be_opened_ends_the_flow() {
    let t0 = Instant::now();
    let mut nat = Nat::new(NatConfig::default());
    let frame = udp_frame(5000, [192, 0, 2, 9], 53, b"q");
    let to = Some(IpAddr::from([192, 0, 2, 9]));
    handle(&mut nat, t0, NetworkId(1), PortId(1), GW, &frame, to).unwrap();
    let Some(NatAction::Open { flow, .. }) = nat.poll_action() else {
        panic!("no open")
    };
    nat.open_failed(flow);
    assert_eq!(nat.flow_count(), 0);
    let (_, refusal) = nat.poll_frame().expect("the sandbox is told");
    assert_eq!(icmp_type_code(&refusal), Some((3, 13)));
}
