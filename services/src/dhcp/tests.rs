use super::*;

const NET: NetworkId = NetworkId(1);
const MAC: MacAddr = MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
const STRANGER: MacAddr = MacAddr([0x52, 0x54, 0, 0xaa, 0xbb, 0xcc]);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 89, 0, 1);
const ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 89, 0, 7);

fn server() -> DhcpServer {
    let mut server = DhcpServer::new();
    server.set_scope(
        NET,
        DhcpScope {
            domain: "lab".into(),
            mtu: Some(1400),
            leases: vec![DhcpLease {
                mac: MAC,
                address: ADDRESS,
                prefix_len: 24,
                gateway: GATEWAY,
                hostname: "vm1".into(),
            }],
        },
    );
    server
}

fn request(kind: MessageType, mac: MacAddr, edit: impl FnOnce(&mut Message)) -> Vec<u8> {
    let mut m = Message::new_with_id(
        0x1234_5678,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &mac.0,
    );
    m.opts_mut().insert(DhcpOption::MessageType(kind));
    edit(&mut m);
    let mut bytes = Vec::new();
    m.encode(&mut Encoder::new(&mut bytes)).unwrap();
    bytes
}

fn decode(reply: &DhcpReply) -> Message {
    Message::decode(&mut Decoder::new(&reply.message)).unwrap()
}

#[test]
fn discover_from_known_mac_is_offered_its_lease_with_every_option() {
    let mut s = server();
    let reply = s
        .handle_message(
            NET,
            MAC,
            Some(GATEWAY),
            &request(MessageType::Discover, MAC, |_| {}),
        )
        .unwrap();
    assert_eq!(reply.source, GATEWAY);
    assert_eq!(reply.destination, ADDRESS);
    assert_eq!(reply.mac, MAC);
    assert!(reply.message.len() >= dhcproto::v4::MIN_PACKET_SIZE);
    let m = decode(&reply);
    assert_eq!(m.opcode(), Opcode::BootReply);
    assert_eq!(m.xid(), 0x1234_5678);
    assert_eq!(m.yiaddr(), ADDRESS);
    assert_eq!(m.chaddr(), &MAC.0);
    let o = m.opts();
    assert_eq!(o.msg_type(), Some(MessageType::Offer));
    assert_eq!(
        o.get(OptionCode::ServerIdentifier),
        Some(&DhcpOption::ServerIdentifier(GATEWAY))
    );
    assert_eq!(
        o.get(OptionCode::SubnetMask),
        Some(&DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)))
    );
    assert_eq!(
        o.get(OptionCode::Router),
        Some(&DhcpOption::Router(vec![GATEWAY]))
    );
    assert_eq!(
        o.get(OptionCode::DomainNameServer),
        Some(&DhcpOption::DomainNameServer(vec![GATEWAY]))
    );
    assert_eq!(
        o.get(OptionCode::DomainName),
        Some(&DhcpOption::DomainName("lab".into()))
    );
    assert_eq!(
        o.get(OptionCode::Hostname),
        Some(&DhcpOption::Hostname("vm1".into()))
    );
    assert_eq!(
        o.get(OptionCode::InterfaceMtu),
        Some(&DhcpOption::InterfaceMtu(1400))
    );
    assert_eq!(
        o.get(OptionCode::AddressLeaseTime),
        Some(&DhcpOption::AddressLeaseTime(3600))
    );
    assert_eq!(o.get(OptionCode::Renewal), Some(&DhcpOption::Renewal(1800)));
    assert_eq!(
        o.get(OptionCode::Rebinding),
        Some(&DhcpOption::Rebinding(3150))
    );
    assert_eq!(
        o.get(OptionCode::BroadcastAddr),
        Some(&DhcpOption::BroadcastAddr(Ipv4Addr::new(10, 89, 0, 255)))
    );
    assert_eq!(
        o.get(OptionCode::ClasslessStaticRoute),
        Some(&DhcpOption::ClasslessStaticRoute(vec![(
            "0.0.0.0/0".parse().unwrap(),
            GATEWAY
        )]))
    );
    assert_eq!(s.counters().offers, 1);
}

#[test]
fn classless_route_encodes_as_rfc_3442_bytes() {
    let mut s = server();
    let reply = s
        .handle_message(
            NET,
            MAC,
            Some(GATEWAY),
            &request(MessageType::Discover, MAC, |_| {}),
        )
        .unwrap();
    // 121, length 5: prefix length 0, no destination octets, the router.
    let wanted = [121u8, 5, 0, 10, 89, 0, 1];
    assert!(reply.message.windows(wanted.len()).any(|w| w == wanted));
}

#[test]
fn request_for_its_lease_is_acked_and_another_address_naked() {
    let mut s = server();
    let ack = s
        .handle_message(
            NET,
            MAC,
            Some(GATEWAY),
            &request(MessageType::Request, MAC, |m| {
                m.opts_mut().insert(DhcpOption::RequestedIpAddress(ADDRESS));
                m.opts_mut().insert(DhcpOption::ServerIdentifier(GATEWAY));
            }),
        )
        .unwrap();
    assert_eq!(decode(&ack).opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(decode(&ack).yiaddr(), ADDRESS);

    let nak = s
        .handle_message(
            NET,
            MAC,
            Some(GATEWAY),
            &request(MessageType::Request, MAC, |m| {
                m.opts_mut()
                    .insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 89, 0, 99)));
            }),
        )
        .unwrap();
    assert_eq!(nak.destination, Ipv4Addr::BROADCAST);
    assert_eq!(nak.mac, MacAddr::BROADCAST);
    let m = decode(&nak);
    assert_eq!(m.opts().msg_type(), Some(MessageType::Nak));
    assert_eq!(m.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!((s.counters().acks, s.counters().naks), (1, 1));
}

#[test]
fn renewal_by_ciaddr_is_acked_to_the_client_address() {
    let mut s = server();
    let ack = s
        .handle_message(
            NET,
            MAC,
            Some(GATEWAY),
            &request(MessageType::Request, MAC, |m| {
                m.set_ciaddr(ADDRESS);
            }),
        )
        .unwrap();
    assert_eq!(ack.destination, ADDRESS);
    assert_eq!(decode(&ack).ciaddr(), ADDRESS);
}

#[test]
fn broadcast_flag_gets_a_broadcast_reply() {
    let mut s = server();
    let offer = s
        .handle_message(
            NET,
            MAC,
            Some(GATEWAY),
            &request(MessageType::Discover, MAC, |m| {
                m.set_flags(Flags::default().set_broadcast());
            }),
        )
        .unwrap();
    assert_eq!(offer.destination, Ipv4Addr::BROADCAST);
    assert_eq!(offer.mac, MacAddr::BROADCAST);
}

#[test]
fn unknown_mac_gets_no_offer_and_a_nak_for_its_request() {
    let mut s = server();
    let discover = request(MessageType::Discover, STRANGER, |_| {});
    assert_eq!(
        s.handle_message(NET, STRANGER, Some(GATEWAY), &discover),
        None
    );
    let req = request(MessageType::Request, STRANGER, |m| {
        m.opts_mut().insert(DhcpOption::RequestedIpAddress(ADDRESS));
    });
    let nak = s
        .handle_message(NET, STRANGER, Some(GATEWAY), &req)
        .unwrap();
    assert_eq!(decode(&nak).opts().msg_type(), Some(MessageType::Nak));
    // On a network the server has no scope for, too.
    let nak = s
        .handle_message(NetworkId(9), STRANGER, Some(GATEWAY), &req)
        .unwrap();
    assert_eq!(decode(&nak).opts().msg_type(), Some(MessageType::Nak));
    assert_eq!(s.counters().ignored, 1);
    assert_eq!(s.counters().naks, 2);
}

#[test]
fn request_naming_another_server_is_ignored() {
    let mut s = server();
    let req = request(MessageType::Request, MAC, |m| {
        m.opts_mut().insert(DhcpOption::RequestedIpAddress(ADDRESS));
        m.opts_mut()
            .insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(192, 0, 2, 1)));
    });
    assert_eq!(s.handle_message(NET, MAC, Some(GATEWAY), &req), None);
    assert_eq!(s.counters().ignored, 1);
}

#[test]
fn inform_is_acked_without_a_lease() {
    let mut s = server();
    let req = request(MessageType::Inform, MAC, |m| {
        m.set_ciaddr(ADDRESS);
    });
    let m = decode(&s.handle_message(NET, MAC, Some(GATEWAY), &req).unwrap());
    assert_eq!(m.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(m.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert!(m.opts().get(OptionCode::AddressLeaseTime).is_none());
    assert!(m.opts().get(OptionCode::Router).is_some());
}

#[test]
fn release_and_decline_are_not_answered() {
    let mut s = server();
    for kind in [MessageType::Release, MessageType::Decline] {
        let req = request(kind, MAC, |_| {});
        assert_eq!(s.handle_message(NET, MAC, Some(GATEWAY), &req), None);
    }
    assert_eq!(s.counters().ignored, 2);
}

#[test]
fn chaddr_other_than_the_frame_source_is_spoofed() {
    let mut s = server();
    let discover = request(MessageType::Discover, MAC, |_| {});
    assert_eq!(
        s.handle_message(NET, STRANGER, Some(GATEWAY), &discover),
        None
    );
    assert_eq!(s.counters().spoofed, 1);
}

#[test]
fn malformed_truncated_and_oversized_are_counted_and_dropped() {
    let mut s = server();
    let good = request(MessageType::Discover, MAC, |_| {});
    // Truncated at every length.
    for len in 0..good.len() - 1 {
        let _ = s.handle_message(NET, MAC, Some(GATEWAY), &good[..len]);
    }
    // Bad magic.
    let mut bad = good.clone();
    bad[MAGIC_OFFSET] ^= 0xff;
    assert_eq!(s.handle_message(NET, MAC, Some(GATEWAY), &bad), None);
    // hlen over 16 (dhcproto's chaddr() would panic on it).
    let mut bad = good.clone();
    bad[2] = 200;
    assert_eq!(s.handle_message(NET, MAC, Some(GATEWAY), &bad), None);
    // A BOOTREPLY.
    let mut bad = good.clone();
    bad[0] = 2;
    assert_eq!(s.handle_message(NET, MAC, Some(GATEWAY), &bad), None);
    // Relayed.
    let mut bad = good.clone();
    bad[24] = 10;
    assert_eq!(s.handle_message(NET, MAC, Some(GATEWAY), &bad), None);
    // No message type.
    let none = {
        let mut m = Message::new_with_id(
            1,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &MAC.0,
        );
        m.opts_mut().insert(DhcpOption::Hostname("x".into()));
        let mut bytes = Vec::new();
        m.encode(&mut Encoder::new(&mut bytes)).unwrap();
        bytes
    };
    assert_eq!(s.handle_message(NET, MAC, Some(GATEWAY), &none), None);
    let mut big = good.clone();
    big.resize(MAX_MESSAGE_LEN + 1, 0);
    assert_eq!(s.handle_message(NET, MAC, Some(GATEWAY), &big), None);
    let c = s.counters();
    assert_eq!(c.oversized, 1);
    assert!(c.malformed >= 5, "{c:?}");
    assert_eq!(c.offers, 0);
}

#[test]
fn scope_replacement_and_removal_take_effect() {
    let mut s = server();
    let discover = request(MessageType::Discover, MAC, |_| {});
    s.set_scope(NET, DhcpScope::default());
    assert_eq!(s.handle_message(NET, MAC, Some(GATEWAY), &discover), None);
    s.remove_scope(NET);
    assert_eq!(s.handle_message(NET, MAC, Some(GATEWAY), &discover), None);
}

#[test]
fn names_that_are_not_host_names_are_left_out() {
    let mut s = DhcpServer::new();
    s.set_scope(
        NET,
        DhcpScope {
            domain: "bad name".into(),
            mtu: None,
            leases: vec![DhcpLease {
                mac: MAC,
                address: ADDRESS,
                prefix_len: 16,
                gateway: GATEWAY,
                hostname: "under_score".into(),
            }],
        },
    );
    let discover = request(MessageType::Discover, MAC, |_| {});
    let m = decode(&s.handle_message(NET, MAC, None, &discover).unwrap());
    assert!(m.opts().get(OptionCode::Hostname).is_none());
    assert!(m.opts().get(OptionCode::DomainName).is_none());
    assert!(m.opts().get(OptionCode::InterfaceMtu).is_none());
    assert_eq!(
        m.opts().get(OptionCode::SubnetMask),
        Some(&DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 0, 0)))
    );
}

#[test]
fn prefix_masks() {
    assert_eq!(prefix_mask(0), Ipv4Addr::UNSPECIFIED);
    assert_eq!(prefix_mask(8), Ipv4Addr::new(255, 0, 0, 0));
    assert_eq!(prefix_mask(32), Ipv4Addr::BROADCAST);
    assert_eq!(prefix_mask(99), Ipv4Addr::BROADCAST);
}

proptest::proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_and_replies_decode(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
        let mut s = server();
        if let Some(reply) = s.handle_message(NET, MAC, Some(GATEWAY), &bytes) {
            let m = decode(&reply);
            proptest::prop_assert_eq!(m.opcode(), Opcode::BootReply);
        }
    }
}

#[test]
fn options_the_codec_would_choke_on_are_dropped_before_it() {
    let mut s = server();
    let mut bytes = request(MessageType::Discover, MAC, |_| {});
    // Option 94 (client network interface) with length 1: dhcproto's
    // decoder asserts length 3 in debug builds. Put it before End.
    let end = bytes.iter().rposition(|b| *b == 255).unwrap();
    bytes.splice(end..end, [94u8, 1, 0, 91, 0]);
    assert!(s.handle_message(NET, MAC, Some(GATEWAY), &bytes).is_some());
    // An option that runs past the end is truncated.
    let mut cut = request(MessageType::Discover, MAC, |_| {});
    let end = cut.iter().rposition(|b| *b == 255).unwrap();
    cut.truncate(end);
    cut.extend_from_slice(&[12, 40, b'x']);
    assert_eq!(s.handle_message(NET, MAC, Some(GATEWAY), &cut), None);
    assert_eq!(s.counters().malformed, 1);
}

/// Through the dispatcher: a client's broadcast DISCOVER frame becomes an
/// OFFER frame from the gateway, UDP 67 to 68, back to the ingress port.
#[test]
fn dispatcher_answers_a_broadcast_discover_frame() {
    use crate::dns::DnsConfig;
    use crate::{Egress, GatewayServices};
    use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};
    use weft_vswitch::wire::packet::GatewayFrame;
    use weft_vswitch::{GatewayConfig, PortId};

    #[allow(clippy::disallowed_methods)] // a test: any start time does
    let now = std::time::Instant::now();
    let mut services = GatewayServices::new(DnsConfig::default(), now, [7; 32]);
    let gateway_mac = MacAddr([0x02, 0x42, 10, 89, 0, 1]);
    services.add_network(NET, gateway_mac);
    services.set_dhcp_scope(
        NET,
        DhcpScope {
            domain: "lab".into(),
            mtu: None,
            leases: vec![DhcpLease {
                mac: MAC,
                address: ADDRESS,
                prefix_len: 24,
                gateway: GATEWAY,
                hostname: "vm1".into(),
            }],
        },
    );
    let gateway = GatewayConfig {
        mac: gateway_mac,
        ipv4: vec![GATEWAY],
        ipv6: Vec::new(),
        outbound: true,
        host_loopback: false,
        dhcp: true,
    };
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(MAC.0, [0xff; 6])
        .ipv4([0; 4], [255; 4], 64)
        .udp(CLIENT_PORT, SERVER_PORT)
        .write(&mut frame, &request(MessageType::Discover, MAC, |_| {}))
        .unwrap();
    let parsed = GatewayFrame::parse(&frame).unwrap();
    services
        .handle_frame(now, NET, &gateway, PortId(5), &parsed)
        .unwrap();
    let (egress, reply, gso) = services.poll_frame().unwrap();
    assert_eq!((egress, gso), (Egress::Port(PortId(5)), 0));
    let packet = SlicedPacket::from_ethernet(&reply).unwrap();
    let Some(etherparse::LinkSlice::Ethernet2(eth)) = &packet.link else {
        panic!("not Ethernet");
    };
    assert_eq!(eth.source(), gateway_mac.0);
    assert_eq!(eth.destination(), MAC.0);
    let Some(TransportSlice::Udp(udp)) = &packet.transport else {
        panic!("not UDP");
    };
    assert_eq!(
        (udp.source_port(), udp.destination_port()),
        (SERVER_PORT, CLIENT_PORT)
    );
    let m = Message::decode(&mut Decoder::new(udp.payload())).unwrap();
    assert_eq!(m.opts().msg_type(), Some(MessageType::Offer));
    assert_eq!(m.yiaddr(), ADDRESS);
    assert!(services.poll_frame().is_none());
}

#[test]
fn a_host_name_the_client_asks_for_is_claimed_with_its_lease() {
    let mut s = server();
    let ask = |s: &mut DhcpServer, name: &str| {
        let name = name.to_owned();
        s.handle_message(
            NET,
            MAC,
            Some(GATEWAY),
            &request(MessageType::Request, MAC, |m| {
                m.opts_mut().insert(DhcpOption::RequestedIpAddress(ADDRESS));
                m.opts_mut().insert(DhcpOption::Hostname(name));
            }),
        )
    };
    assert!(ask(&mut s, "Guest-1").is_some());
    assert_eq!(s.take_changed(), vec![NET]);
    assert_eq!(
        s.claimed_names(NET).and_then(|n| n.get(&ADDRESS)),
        Some(&"guest-1".to_owned())
    );
    // The same again changes nothing; its own name, dots, bad bytes:
    // nothing claimed.
    assert!(ask(&mut s, "guest-1").is_some());
    assert!(s.take_changed().is_empty());
    for bad in ["vm1", "a.example.com", "bad_name", ""] {
        let mut fresh = server();
        assert!(ask(&mut fresh, bad).is_some(), "{bad}: still acked");
        assert!(fresh.claimed_names(NET).is_none(), "{bad}");
    }
    // The lease goes: so does the claim.
    s.set_scope(NET, DhcpScope::default());
    assert_eq!(s.take_changed(), vec![NET]);
    assert!(s.claimed_names(NET).is_none_or(|n| n.is_empty()));
}
