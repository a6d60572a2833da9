//! Stateful: a sequence of frames from random ports into a switch with two
//! networks. Invariants: a decision never leaves the ingress network, never
//! forwards back to the ingress port, and a gateway reply fits its buffer
//! and is a well-formed Ethernet frame from the gateway MAC. Ports 0 and 2
//! have port security on (port 1 has an identity without enforcement): a
//! frame from them that is not dropped has their MAC as its source.
#![no_main]

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use weft_vswitch::gateway::REPLY_HEADROOM;
use weft_vswitch::wire::ethernet::EthernetFrame;
use weft_vswitch::wire::packet::GatewayFrame;
use weft_vswitch::{Decision, GatewayConfig, MacAddr, NetworkId, PortId, PortIdentity, Switch};

#[derive(Debug, Arbitrary)]
struct Input {
    frames: Vec<(u8, u16, Vec<u8>)>,
}

const GW: MacAddr = MacAddr([0x02, 0x42, 10, 0, 0, 1]);

fuzz_target!(|input: Input| {
    let mut sw = Switch::new();
    for (net, last) in [(1u32, 1u8), (2, 1)] {
        sw.add_network(
            NetworkId(net),
            GatewayConfig {
                mac: GW,
                ipv4: vec![Ipv4Addr::new(10, 0, net as u8, last)],
                ipv6: vec!["fd00::1".parse().unwrap()],
                outbound: true,
                host_loopback: false,
                dhcp: true,
            },
        )
        .unwrap();
    }
    for p in 0..4u32 {
        sw.add_port(PortId(p), NetworkId(1 + p % 2)).unwrap();
    }
    let t0 = Instant::now();
    let identity = |p: u8| PortIdentity {
        mac: MacAddr([0x02, 0x42, 10, 0, 0, 10 + p]),
        ipv4: vec![Ipv4Addr::new(10, 0, 1 + p % 2, 10 + p)],
        ipv6: vec![],
        enforce: p != 1,
    };
    for p in 0..3u8 {
        sw.set_port_identity(PortId(u32::from(p)), identity(p), t0);
    }
    let mut out = vec![0u8; 2048 + REPLY_HEADROOM];
    for (port, millis, frame) in input.frames.iter().take(256) {
        let ingress = PortId(u32::from(*port % 5));
        let now = t0 + Duration::from_millis(u64::from(*millis) * 100);
        let frame = &frame[..frame.len().min(2048)];
        let decision = sw.handle_frame(now, ingress, frame);
        if matches!(ingress.0, 0 | 2) && !matches!(decision, Decision::Drop(_)) {
            let source = EthernetFrame::new_checked(frame).unwrap().source();
            assert_eq!(source, identity(ingress.0 as u8).mac);
        }
        match decision {
            Decision::Forward(p) => {
                assert_ne!(p, ingress);
                assert_eq!(sw.network_of(p), sw.network_of(ingress));
            }
            Decision::Flood => {
                for p in sw.flood_ports(ingress) {
                    assert_eq!(sw.network_of(*p), sw.network_of(ingress));
                }
            }
            Decision::ToGateway => {
                let reply = GatewayFrame::parse(frame)
                    .and_then(|parsed| sw.gateway_reply(ingress, &parsed, &mut out));
                if let Ok(len) = reply {
                    assert!(len <= frame.len() + REPLY_HEADROOM);
                    let reply = EthernetFrame::new_checked(&out[..len]).unwrap();
                    assert_eq!(reply.source(), GW);
                }
            }
            Decision::Drop(_) => {}
        }
        sw.handle_timeout(now);
    }
});
