#![allow(clippy::disallowed_methods)]

use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr};
use weft_vswitch::wire::ethernet::{EthernetFrame, ETHERTYPE_ARP};

use super::*;
use crate::smol_device::FrameQueues;

const GW_MAC: MacAddr = MacAddr([0x02, 0x42, 10, 9, 0, 1]);
const SB_MAC: MacAddr = MacAddr([0x02, 0x42, 10, 9, 0, 2]);
const NET: NetworkId = NetworkId(1);

fn gateway() -> GatewayConfig {
    GatewayConfig {
        mac: GW_MAC,
        ipv4: vec![Ipv4Addr::new(10, 9, 0, 1)],
        ipv6: Vec::new(),
        outbound: true,
        host_loopback: false,
    }
}

/// A sandbox: a smoltcp client at 10.9.0.2 whose default route is the
/// gateway, with frames crossing in memory.
struct Sandbox {
    iface: Interface,
    device: FrameQueues,
    sockets: SocketSet<'static>,
    handle: SocketHandle,
}

impl Sandbox {
    fn new(remote: SocketAddr, buffer: usize) -> Sandbox {
        let mut device = FrameQueues::new(1514, 4096);
        let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(SB_MAC.0)));
        config.random_seed = 5;
        let mut iface = Interface::new(config, &mut device, smoltcp::time::Instant::ZERO);
        iface.update_ip_addrs(|a| {
            a.push(IpCidr::new(smoltcp::wire::IpAddress::v4(10, 9, 0, 2), 24))
                .unwrap();
        });
        iface
            .routes_mut()
            .add_default_ipv4_route(smoltcp::wire::Ipv4Address::new(10, 9, 0, 1))
            .unwrap();
        let mut sockets = SocketSet::new(Vec::new());
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; buffer]),
            tcp::SocketBuffer::new(vec![0; buffer]),
        );
        socket
            .connect(
                iface.context(),
                (smoltcp::wire::IpAddress::from(remote.ip()), remote.port()),
                40000,
            )
            .unwrap();
        let handle = sockets.add(socket);
        Sandbox {
            iface,
            device,
            sockets,
            handle,
        }
    }

    fn socket(&mut self) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(self.handle)
    }

    /// Run the client and the NAT until neither has anything to say.
    fn exchange(&mut self, nat: &mut TcpNat, now: Instant, open: Option<SocketAddr>) {
        let gw = gateway();
        for _ in 0..100 {
            self.iface.poll(
                smoltcp::time::Instant::ZERO,
                &mut self.device,
                &mut self.sockets,
            );
            let mut moved = false;
            while let Some(frame) = self.device.tx.pop_front() {
                moved = true;
                let eth = EthernetFrame::new_checked(&frame[..]).unwrap();
                if eth.ethertype() == ETHERTYPE_ARP {
                    // The gateway's fast path answers ARP: do it here.
                    let mut reply = frame.clone();
                    reply[0..6].copy_from_slice(&SB_MAC.0);
                    reply[6..12].copy_from_slice(&GW_MAC.0);
                    reply[21] = 2;
                    reply[22..28].copy_from_slice(&GW_MAC.0);
                    reply[28..32].copy_from_slice(&frame[38..42]);
                    reply[32..38].copy_from_slice(&SB_MAC.0);
                    reply[38..42].copy_from_slice(&frame[28..32]);
                    self.device.rx.push_back(reply);
                } else {
                    let parsed = GatewayFrame::parse(&frame).unwrap();
                    nat.handle_frame(now, NET, &gw, &parsed, open).unwrap();
                }
            }
            while let Some((network, frame, _)) = nat.poll_frame() {
                assert_eq!(network, NET);
                moved = true;
                self.device.rx.push_back(frame);
            }
            if !moved {
                break;
            }
        }
    }
}

fn remote() -> SocketAddr {
    "192.0.2.7:443".parse().unwrap()
}

/// The SYN waits for the host connect; the sandbox's data reaches the
/// host writer and the host's bytes reach the sandbox.
#[test]
fn a_flow_opens_only_after_the_host_connects_and_relays_both_ways() {
    let t0 = Instant::now();
    let mut nat = TcpNat::new(TcpNatConfig::default(), t0, 1);
    let mut sb = Sandbox::new(remote(), 65536);
    sb.exchange(&mut nat, t0, Some(remote()));
    let Some(TcpAction::Connect { flow, remote: to }) = nat.poll_action() else {
        panic!("no connect")
    };
    assert_eq!(to, remote());
    assert_eq!(sb.socket().state(), tcp::State::SynSent);
    nat.handle_connected(t0, flow);
    sb.exchange(&mut nat, t0, Some(remote()));
    assert_eq!(sb.socket().state(), tcp::State::Established);

    sb.socket().send_slice(b"hello host").unwrap();
    sb.exchange(&mut nat, t0, Some(remote()));
    assert_eq!(nat.poll_action(), Some(TcpAction::Send { flow }));
    let mut written = Vec::new();
    let outcome = nat.send_to_host(t0, flow, |d| {
        written.extend_from_slice(d);
        Ok(d.len())
    });
    assert_eq!(outcome, HostWrite::Done);
    assert_eq!(written, b"hello host");

    let mut reply: &[u8] = b"hello sandbox";
    let outcome = nat.receive_from_host(t0, flow, |buf| {
        if reply.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = reply.len().min(buf.len());
        buf[..n].copy_from_slice(&reply[..n]);
        reply = &reply[n..];
        Ok(n)
    });
    assert_eq!(outcome, HostRead::Drained);
    sb.exchange(&mut nat, t0, Some(remote()));
    let mut got = [0u8; 64];
    let n = sb.socket().recv_slice(&mut got).unwrap();
    assert_eq!(&got[..n], b"hello sandbox");
}

/// A refused connect answers the SYN with a reset: the sandbox's
/// connect fails at once.
#[test]
fn a_refused_connect_resets_the_sandbox() {
    let t0 = Instant::now();
    let mut nat = TcpNat::new(TcpNatConfig::default(), t0, 1);
    let mut sb = Sandbox::new(remote(), 4096);
    sb.exchange(&mut nat, t0, Some(remote()));
    let Some(TcpAction::Connect { flow, .. }) = nat.poll_action() else {
        panic!("no connect")
    };
    nat.handle_connect_failed(flow, ConnectFailure::Refused);
    sb.exchange(&mut nat, t0, Some(remote()));
    assert_eq!(sb.socket().state(), tcp::State::Closed);
    assert_eq!(nat.flow_count(), 0);
}

/// With no way out, a SYN is reset and nothing is asked of the host.
#[test]
fn no_way_out_resets_at_once() {
    let t0 = Instant::now();
    let mut nat = TcpNat::new(TcpNatConfig::default(), t0, 1);
    let mut sb = Sandbox::new(remote(), 4096);
    sb.exchange(&mut nat, t0, None);
    assert_eq!(nat.poll_action(), None);
    assert_eq!(sb.socket().state(), tcp::State::Closed);
}

/// A host that does not take data closes the sandbox's window: the
/// relay holds at most its buffer, the rest waits in the sandbox.
#[test]
fn a_slow_host_closes_the_sandboxs_window() {
    let t0 = Instant::now();
    let config = TcpNatConfig {
        buffer: 16 * 1024,
        ..TcpNatConfig::default()
    };
    let mut nat = TcpNat::new(config, t0, 1);
    let mut sb = Sandbox::new(remote(), 256 * 1024);
    sb.exchange(&mut nat, t0, Some(remote()));
    let Some(TcpAction::Connect { flow, .. }) = nat.poll_action() else {
        panic!("no connect")
    };
    nat.handle_connected(t0, flow);
    sb.exchange(&mut nat, t0, Some(remote()));
    let data = vec![7u8; 200 * 1024];
    let queued = sb.socket().send_slice(&data).unwrap();
    assert_eq!(queued, data.len());
    sb.exchange(&mut nat, t0, Some(remote()));
    // The host socket is full: nothing is taken.
    let outcome = nat.send_to_host(t0, flow, |_| Err(io::ErrorKind::WouldBlock.into()));
    assert_eq!(outcome, HostWrite::Blocked);
    sb.exchange(&mut nat, t0, Some(remote()));
    let in_sandbox = sb.socket().send_queue();
    assert!(
        in_sandbox >= data.len() - 16 * 1024,
        "the relay took more than its buffer: {} bytes left in the sandbox",
        in_sandbox
    );
    // The host drains: everything arrives, in order.
    let mut written = Vec::new();
    for _ in 0..100 {
        nat.send_to_host(t0, flow, |d| {
            written.extend_from_slice(d);
            Ok(d.len())
        });
        sb.exchange(&mut nat, t0, Some(remote()));
        if written.len() == data.len() {
            break;
        }
    }
    assert_eq!(written.len(), data.len());
    assert!(written.iter().all(|b| *b == 7));
}
