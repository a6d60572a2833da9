//! The switch core's tests.
use super::*;
use crate::wire::ethernet::MacAddr;
use proptest::prelude::*;
use std::net::Ipv4Addr;

const GW: MacAddr = MacAddr([0x02, 0x42, 10, 0, 0, 1]);
const NET_A: NetworkId = NetworkId(1);
const NET_B: NetworkId = NetworkId(2);

fn mac(n: u8) -> MacAddr {
    MacAddr([0x02, 0x42, 10, 0, 1, n])
}

fn frame(dst: MacAddr, src: MacAddr) -> Vec<u8> {
    let mut f = dst.0.to_vec();
    f.extend_from_slice(&src.0);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    f.extend_from_slice(&[0u8; 46]);
    f
}

/// NET_A with local ports 1 and 2 and tunnel ports 100 and 101 (two
/// remote hosts); mac(9) lives behind port 101 per the directory.
fn overlay_switch() -> Switch {
    let mut sw = Switch::new();
    sw.add_network(
        NET_A,
        GatewayConfig {
            mac: GW,
            ipv4: vec![Ipv4Addr::new(10, 0, 0, 1)],
            ipv6: vec![],
            outbound: true,
            host_loopback: false,
            dhcp: true,
        },
    )
    .unwrap();
    sw.add_port(PortId(1), NET_A).unwrap();
    sw.add_port(PortId(2), NET_A).unwrap();
    sw.add_tunnel_port(PortId(100), NET_A).unwrap();
    sw.add_tunnel_port(PortId(101), NET_A).unwrap();
    let macs = [(mac(9), PortId(101))].into_iter().collect();
    let arp = [(Ipv4Addr::new(10, 0, 0, 9), mac(9))].into_iter().collect();
    sw.set_remote_endpoints(NET_A, macs, arp);
    sw
}

/// NET_A as a macvlan network in `mode`: endpoints on ports 1 and 2
/// (MACs pinned), the parent's LAN on port 50.
fn macvlan_switch(mode: UplinkMode) -> Switch {
    let mut sw = Switch::new();
    sw.add_network(
        NET_A,
        GatewayConfig {
            mac: GW,
            ipv4: vec![Ipv4Addr::new(10, 0, 0, 250)],
            ipv6: vec![],
            outbound: false,
            host_loopback: false,
            dhcp: false,
        },
    )
    .unwrap();
    sw.add_port(PortId(1), NET_A).unwrap();
    sw.add_port(PortId(2), NET_A).unwrap();
    sw.add_uplink_port(PortId(50), NET_A, mode).unwrap();
    let now = Instant::now();
    for (port, n) in [(PortId(1), 1), (PortId(2), 2)] {
        let identity = PortIdentity {
            mac: mac(n),
            ipv4: vec![],
            ipv6: vec![],
            enforce: false,
        };
        sw.set_port_identity(port, identity, now);
    }
    sw
}

#[test]
fn a_macvlan_lan_reaches_only_its_endpoints_and_they_reach_it() {
    let mut sw = macvlan_switch(UplinkMode::Bridge);
    let now = Instant::now();
    let router = MacAddr([0x02, 0, 0, 0, 0, 0xfe]);
    let host = MacAddr([0x02, 0, 0, 0, 0, 0x0a]);
    assert!(sw.is_uplink(PortId(50)) && !sw.is_uplink(PortId(1)));
    // The LAN's frames to an endpoint come in; to anyone else (the
    // parent host's own, another LAN host's) they are not ours.
    assert_eq!(
        sw.handle_frame(now, PortId(50), &frame(mac(1), router)),
        Decision::Forward(PortId(1))
    );
    assert_eq!(
        sw.handle_frame(now, PortId(50), &frame(host, router)),
        Decision::Drop(DropReason::NotOurs)
    );
    // The LAN's broadcasts flood to the endpoints alone.
    assert_eq!(
        sw.handle_frame(now, PortId(50), &frame(MacAddr::BROADCAST, router)),
        Decision::Flood
    );
    assert_eq!(sw.flood_ports(PortId(50)), &[PortId(1), PortId(2)]);
    // An endpoint reaches the router (learned) and an unknown MAC
    // through the uplink, never by flooding; the other endpoint
    // directly (bridge mode).
    assert_eq!(
        sw.handle_frame(now, PortId(1), &frame(router, mac(1))),
        Decision::Forward(PortId(50))
    );
    assert_eq!(
        sw.handle_frame(now, PortId(1), &frame(host, mac(1))),
        Decision::Forward(PortId(50))
    );
    assert_eq!(
        sw.handle_frame(now, PortId(1), &frame(mac(2), mac(1))),
        Decision::Forward(PortId(2))
    );
    // Its broadcasts reach the LAN and the other endpoint.
    assert_eq!(
        sw.handle_frame(now, PortId(1), &frame(MacAddr::BROADCAST, mac(1))),
        Decision::Flood
    );
    assert!(sw.flood_ports(PortId(1)).contains(&PortId(50)));
    // The LAN never reaches the gateway.
    assert_eq!(
        sw.handle_frame(now, PortId(50), &frame(GW, router)),
        Decision::Drop(DropReason::NoRoute)
    );
    sw.remove_port(PortId(50));
    assert!(!sw.is_uplink(PortId(50)));
}

#[test]
fn private_macvlan_endpoints_reach_the_lan_but_never_each_other() {
    let mut sw = macvlan_switch(UplinkMode::Private);
    let now = Instant::now();
    let router = MacAddr([0x02, 0, 0, 0, 0, 0xfe]);
    assert_eq!(
        sw.handle_frame(now, PortId(1), &frame(mac(2), mac(1))),
        Decision::Drop(DropReason::Isolated)
    );
    assert_eq!(
        sw.handle_frame(now, PortId(1), &frame(MacAddr::BROADCAST, mac(1))),
        Decision::Forward(PortId(50))
    );
    assert_eq!(
        sw.handle_frame(now, PortId(1), &frame(router, mac(1))),
        Decision::Forward(PortId(50))
    );
    assert_eq!(
        sw.handle_frame(now, PortId(50), &frame(mac(2), router)),
        Decision::Forward(PortId(2))
    );
}

fn ipv4_frame(dst: MacAddr, src: MacAddr, src_ip: [u8; 4]) -> Vec<u8> {
    let mut f = frame(dst, src);
    f[14] = 0x45;
    f[14 + 12..14 + 16].copy_from_slice(&src_ip);
    f
}

#[test]
fn endpoints_send_only_as_themselves_and_their_macs_are_pinned() {
    let mut sw = overlay_switch();
    let now = Instant::now();
    for (port, n) in [(PortId(1), 1), (PortId(2), 2)] {
        let identity = PortIdentity {
            mac: mac(n),
            ipv4: vec![Ipv4Addr::new(10, 0, 0, 10 + n)],
            ipv6: vec![],
            enforce: n == 1,
        };
        sw.set_port_identity(port, identity, now);
    }
    // Known before either sent anything: no flood.
    assert_eq!(
        sw.handle_frame(now, PortId(1), &ipv4_frame(mac(2), mac(1), [10, 0, 0, 11])),
        Decision::Forward(PortId(2))
    );
    // Port 1 enforces: another address, another MAC: dropped.
    assert_eq!(
        sw.handle_frame(now, PortId(1), &ipv4_frame(mac(2), mac(1), [10, 0, 0, 12])),
        Decision::Drop(DropReason::Spoofed)
    );
    assert_eq!(
        sw.handle_frame(now, PortId(1), &ipv4_frame(mac(2), mac(5), [10, 0, 0, 11])),
        Decision::Drop(DropReason::Spoofed)
    );
    // Port 2 does not enforce (port_security=false), yet cannot take
    // port 1's pinned MAC; its own extra MACs are learned.
    assert_eq!(
        sw.handle_frame(now, PortId(2), &frame(mac(9), mac(1))),
        Decision::Drop(DropReason::Spoofed)
    );
    assert_eq!(
        sw.handle_frame(now, PortId(2), &frame(mac(1), mac(6))),
        Decision::Forward(PortId(1))
    );
    assert_eq!(
        sw.handle_frame(now, PortId(1), &ipv4_frame(mac(6), mac(1), [10, 0, 0, 11])),
        Decision::Forward(PortId(2))
    );
}

#[test]
fn a_mac_flood_stops_at_the_flooders_share() {
    let mut sw = overlay_switch();
    let now = Instant::now();
    let flood_mac = |i: usize| MacAddr([0x02, 0xee, 0, 0, (i >> 8) as u8, i as u8]);
    let mut limited = 0;
    for i in 0..DEFAULT_PORT_LIMIT + 100 {
        if sw.handle_frame(now, PortId(2), &frame(mac(1), flood_mac(i)))
            == Decision::Drop(DropReason::MacLimit)
        {
            limited += 1;
        }
    }
    assert_eq!(
        limited, 100,
        "past its share the flooder's new MACs are dropped"
    );
    // Everyone else still learns: port 1's MAC is forwarded to, not flooded.
    sw.handle_frame(now, PortId(1), &frame(GW, mac(1)));
    assert_eq!(
        sw.handle_frame(now, PortId(2), &frame(mac(1), flood_mac(0))),
        Decision::Forward(PortId(1))
    );
}

#[test]
fn remote_macs_come_from_the_directory_without_flooding() {
    let mut sw = overlay_switch();
    let now = Instant::now();
    assert_eq!(
        sw.handle_frame(now, PortId(1), &frame(mac(9), mac(1))),
        Decision::Forward(PortId(101))
    );
    // Unknown unicast floods to local ports and every host.
    assert_eq!(
        sw.handle_frame(now, PortId(1), &frame(mac(7), mac(1))),
        Decision::Flood
    );
    assert_eq!(
        sw.flood_ports(PortId(1)),
        &[PortId(1), PortId(2), PortId(100), PortId(101)]
    );
}

#[test]
fn floods_are_counted_by_kind() {
    let mut sw = overlay_switch();
    let now = Instant::now();
    sw.handle_frame(now, PortId(1), &frame(MacAddr([0xff; 6]), mac(1)));
    sw.handle_frame(now, PortId(2), &frame(mac(7), mac(2)));
    sw.handle_frame(now, PortId(2), &frame(mac(1), mac(2)));
    assert_eq!(
        sw.flood_counts(NET_A),
        Some(FloodCounts {
            multicast: 1,
            unknown_unicast: 1,
        }),
        "the known unicast to port 1 was not flooded"
    );
    assert_eq!(sw.flood_counts(NetworkId(99)), None);
}

#[test]
fn frames_from_a_tunnel_never_go_back_into_tunnels() {
    let mut sw = overlay_switch();
    let now = Instant::now();
    // Split horizon: floods from a tunnel reach local ports only.
    assert_eq!(
        sw.handle_frame(now, PortId(100), &frame(MacAddr::BROADCAST, mac(8))),
        Decision::Flood
    );
    assert_eq!(sw.flood_ports(PortId(100)), &[PortId(1), PortId(2)]);
    // A frame from one host for another host's MAC is not relayed.
    assert_eq!(
        sw.handle_frame(now, PortId(100), &frame(mac(9), mac(8))),
        Decision::Drop(DropReason::Hairpin)
    );
    // The sender is learned behind its tunnel: answers go straight back.
    assert_eq!(
        sw.handle_frame(now, PortId(2), &frame(mac(8), mac(2))),
        Decision::Forward(PortId(100))
    );
    // The gateway MAC is every host's own: never carried across.
    assert_eq!(
        sw.handle_frame(now, PortId(100), &frame(GW, mac(8))),
        Decision::Drop(DropReason::NoRoute)
    );
}

#[test]
fn arp_for_a_remote_address_is_answered_locally() {
    let mut sw = overlay_switch();
    let now = Instant::now();
    let mut arp = MacAddr::BROADCAST.0.to_vec();
    arp.extend_from_slice(&mac(1).0);
    arp.extend_from_slice(&0x0806u16.to_be_bytes());
    arp.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&mac(1).0);
    arp.extend_from_slice(&[10, 0, 0, 2]);
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&[10, 0, 0, 9]);
    assert_eq!(sw.handle_frame(now, PortId(1), &arp), Decision::ToGateway);
    let mut out = [0u8; 128];
    let arp = GatewayFrame::parse(&arp).unwrap();
    let len = sw.gateway_reply(PortId(1), &arp, &mut out).unwrap();
    let reply = &out[..len];
    // From mac(9), saying 10.0.0.9 is at mac(9).
    assert_eq!(&reply[6..12], &mac(9).0);
    assert_eq!(&reply[22..28], &mac(9).0);
    assert_eq!(&reply[28..32], &[10, 0, 0, 9]);
    // Removing the host's tunnel forgets its MACs.
    sw.remove_port(PortId(101));
    assert_eq!(
        sw.handle_frame(now, PortId(1), &frame(mac(9), mac(1))),
        Decision::Flood
    );
}

fn switch_with_two_networks() -> Switch {
    let mut sw = Switch::new();
    let gw = |last| GatewayConfig {
        mac: GW,
        ipv4: vec![Ipv4Addr::new(10, 0, 0, last)],
        ipv6: vec![],
        outbound: true,
        host_loopback: false,
        dhcp: true,
    };
    sw.add_network(NET_A, gw(1)).unwrap();
    sw.add_network(NET_B, gw(1)).unwrap();
    for p in 1..=3 {
        sw.add_port(PortId(p), NET_A).unwrap();
    }
    sw.add_port(PortId(10), NET_B).unwrap();
    sw
}

#[test]
fn learns_then_forwards_known_unicast() {
    let now = Instant::now();
    let mut sw = switch_with_two_networks();
    // Unknown destination: flood.
    assert_eq!(
        sw.handle_frame(now, PortId(1), &frame(mac(2), mac(1))),
        Decision::Flood
    );
    // The answer teaches the switch where mac(2) is, and goes straight back.
    assert_eq!(
        sw.handle_frame(now, PortId(2), &frame(mac(1), mac(2))),
        Decision::Forward(PortId(1))
    );
    assert_eq!(
        sw.handle_frame(now, PortId(1), &frame(mac(2), mac(1))),
        Decision::Forward(PortId(2))
    );
}

#[test]
fn flooding_stays_inside_the_network() {
    let now = Instant::now();
    let mut sw = switch_with_two_networks();
    assert_eq!(
        sw.handle_frame(now, PortId(1), &frame(MacAddr::BROADCAST, mac(1))),
        Decision::Flood
    );
    assert_eq!(
        sw.flood_ports(PortId(1)),
        &[PortId(1), PortId(2), PortId(3)]
    );
    assert_eq!(sw.flood_ports(PortId(10)), &[PortId(10)]);
    // A MAC learned in network A is unknown in network B.
    sw.handle_frame(now, PortId(10), &frame(mac(1), mac(9)));
    assert_eq!(
        sw.handle_frame(now, PortId(10), &frame(mac(1), mac(9))),
        Decision::Flood
    );
}

#[test]
fn drops_bad_frames_with_a_reason() {
    let now = Instant::now();
    let mut sw = switch_with_two_networks();
    assert_eq!(
        sw.handle_frame(now, PortId(1), &[0u8; 13]),
        Decision::Drop(DropReason::Truncated)
    );
    assert_eq!(
        sw.handle_frame(now, PortId(1), &frame(mac(2), MacAddr::BROADCAST)),
        Decision::Drop(DropReason::InvalidSource)
    );
    assert_eq!(
        sw.handle_frame(now, PortId(99), &frame(mac(2), mac(1))),
        Decision::Drop(DropReason::UnknownPort)
    );
    sw.handle_frame(now, PortId(1), &frame(mac(2), mac(1)));
    assert_eq!(
        sw.handle_frame(now, PortId(1), &frame(mac(1), mac(3))),
        Decision::Drop(DropReason::Hairpin)
    );
}

#[test]
fn gateway_mac_goes_to_gateway() {
    let now = Instant::now();
    let mut sw = switch_with_two_networks();
    assert_eq!(
        sw.handle_frame(now, PortId(1), &frame(GW, mac(1))),
        Decision::ToGateway
    );
}

#[test]
fn removed_port_is_forgotten() {
    let now = Instant::now();
    let mut sw = switch_with_two_networks();
    sw.handle_frame(now, PortId(2), &frame(mac(1), mac(2)));
    sw.remove_port(PortId(2));
    assert_eq!(
        sw.handle_frame(now, PortId(1), &frame(mac(2), mac(1))),
        Decision::Flood
    );
    assert_eq!(sw.flood_ports(PortId(1)), &[PortId(1), PortId(3)]);
    assert_eq!(sw.remove_network(NET_A), vec![PortId(1), PortId(3)]);
    assert_eq!(sw.network_of(PortId(1)), None);
}

#[test]
fn sweep_purges_aged_entries() {
    let t0 = Instant::now();
    let mut sw = switch_with_two_networks();
    sw.handle_frame(t0, PortId(1), &frame(mac(2), mac(1)));
    assert_eq!(sw.mac_count(NET_A), 1);
    let due = sw.poll_timeout().unwrap();
    sw.handle_timeout(due);
    assert_eq!(sw.mac_count(NET_A), 1);
    sw.handle_timeout(t0 + DEFAULT_AGEING + SWEEP_INTERVAL);
    assert_eq!(sw.mac_count(NET_A), 0);
    assert_eq!(sw.poll_timeout(), None);
}

proptest! {
    /// Whatever the frames, a decision never leaves the ingress
    /// network, and known unicast is never flooded.
    #[test]
    fn decisions_stay_in_the_network(
        frames in proptest::collection::vec((1u32..=3, 0u8..6, 0u8..6), 0..200)
    ) {
        let now = Instant::now();
        let mut sw = switch_with_two_networks();
        for (port, d, s) in frames {
            let dst = if d == 0 { MacAddr::BROADCAST } else { mac(d) };
            match sw.handle_frame(now, PortId(port), &frame(dst, mac(s + 1))) {
                Decision::Forward(p) => {
                    prop_assert_ne!(p, PortId(port));
                    prop_assert_eq!(sw.network_of(p), Some(NET_A));
                }
                Decision::Flood => prop_assert!(sw.flood_ports(PortId(port)).iter().all(|p| sw.network_of(*p) == Some(NET_A))),
                Decision::ToGateway | Decision::Drop(_) => {}
            }
        }
    }
}
