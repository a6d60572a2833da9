//! Stateful: sequences of sandbox frames, host socket events and time
//! through the TCP relay and the UDP/ICMP NAT. Invariants: no panic, the
//! flow tables stay within their bounds, and every frame the relay puts
//! into a network is an Ethernet frame from the gateway's MAC.
#![no_main]

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use weft_services::nat::{FlowId, Nat, NatConfig};
use weft_services::tcp_nat::{ConnectFailure, TcpAction, TcpNat, TcpNatConfig};
use weft_vswitch::wire::ethernet::EthernetFrame;
use weft_vswitch::wire::packet::GatewayFrame;
use weft_vswitch::{GatewayConfig, MacAddr, NetworkId, PortId};

#[derive(Debug, Arbitrary)]
enum Step {
    Frame { bytes: Vec<u8>, open: bool },
    Connected(u8),
    Failed { flow: u8, refused: bool },
    HostData { flow: u8, bytes: Vec<u8>, eof: bool },
    HostWritable { flow: u8, accept: u16 },
    HostFailed(u8),
    Inbound { client_port: u16, target_port: u16 },
    Wait(u16),
}

const GW: MacAddr = MacAddr([0x02, 0x42, 10, 0, 0, 1]);
const NET: NetworkId = NetworkId(1);
const MAX_FLOWS: usize = 8;

fuzz_target!(|steps: Vec<Step>| {
    let gateway = GatewayConfig {
        mac: GW,
        ipv4: vec![Ipv4Addr::new(10, 0, 0, 1)],
        ipv6: vec!["fd00::1".parse().unwrap()],
        outbound: true,
        host_loopback: true,
        dhcp: true,
    };
    let t0 = Instant::now();
    let mut now = t0;
    let mut tcp = TcpNat::new(
        TcpNatConfig {
            max_flows: MAX_FLOWS,
            max_buffer: 4096,
            min_buffer: 4096,
            ..TcpNatConfig::default()
        },
        t0,
        7,
    );
    let mut nat = Nat::new(NatConfig {
        max_flows: MAX_FLOWS,
        ..NatConfig::default()
    });
    let mut flows: Vec<FlowId> = Vec::new();
    let pick = |flows: &[FlowId], i: u8| flows.get(usize::from(i) % flows.len().max(1)).copied();
    for step in steps.into_iter().take(128) {
        match step {
            Step::Frame { bytes, open } => {
                let frame = &bytes[..bytes.len().min(4096)];
                let to: SocketAddr = "192.0.2.9:80".parse().unwrap();
                if let Ok(parsed) = GatewayFrame::parse(frame) {
                    let _ = tcp.handle_frame(now, (NET, PortId(1)), &gateway, &parsed, open.then_some(to));
                    let _ = nat.handle_frame(now, NET, PortId(1), GW, &parsed, open.then_some(to.ip()));
                }
            }
            Step::Connected(i) => {
                if let Some(flow) = pick(&flows, i) {
                    tcp.handle_connected(now, flow);
                }
            }
            Step::Failed { flow, refused } => {
                if let Some(flow) = pick(&flows, flow) {
                    let why = if refused {
                        ConnectFailure::Refused
                    } else {
                        ConnectFailure::Unreachable
                    };
                    tcp.handle_connect_failed(flow, why);
                }
            }
            Step::HostData { flow, bytes, eof } => {
                if let Some(flow) = pick(&flows, flow) {
                    let mut rest: &[u8] = &bytes;
                    tcp.receive_from_host(now, flow, |buf| {
                        if rest.is_empty() {
                            return if eof {
                                Ok(0)
                            } else {
                                Err(io::ErrorKind::WouldBlock.into())
                            };
                        }
                        let n = rest.len().min(buf.len());
                        buf[..n].copy_from_slice(&rest[..n]);
                        rest = &rest[n..];
                        Ok(n)
                    });
                }
            }
            Step::HostWritable { flow, accept } => {
                if let Some(flow) = pick(&flows, flow) {
                    let mut room = usize::from(accept);
                    tcp.send_to_host(now, flow, |data| {
                        if room == 0 {
                            return Err(io::ErrorKind::WouldBlock.into());
                        }
                        let n = data.len().min(room);
                        room -= n;
                        Ok(n)
                    });
                }
            }
            Step::HostFailed(i) => {
                if let Some(flow) = pick(&flows, i) {
                    tcp.host_failed(now, flow);
                }
            }
            Step::Inbound {
                client_port,
                target_port,
            } => {
                let client = SocketAddr::new([198, 51, 100, 7].into(), client_port);
                let target = SocketAddr::new([10, 0, 0, 2].into(), target_port);
                if let Some(flow) = tcp.accept_inbound(
                    now,
                    NET,
                    &gateway,
                    client,
                    target,
                    MacAddr([2, 0x42, 10, 0, 0, 2]),
                ) {
                    flows.push(flow);
                }
            }
            Step::Wait(millis) => {
                now += Duration::from_millis(u64::from(millis));
                tcp.handle_timeout(now);
                nat.handle_timeout(now);
            }
        }
        while let Some(action) = tcp.poll_action() {
            if let TcpAction::Connect { flow, .. } = action {
                flows.push(flow);
            }
        }
        while nat.poll_action().is_some() {}
        while let Some((network, frame, _)) = tcp.poll_frame() {
            assert_eq!(network, NET);
            let eth = EthernetFrame::new_checked(&frame[..]).expect("an Ethernet frame");
            assert_eq!(eth.source(), GW);
        }
        while nat.poll_frame().is_some() {}
        assert!(tcp.flow_count() <= MAX_FLOWS);
        assert!(nat.flow_count() <= MAX_FLOWS);
        flows.truncate(64);
    }
});
