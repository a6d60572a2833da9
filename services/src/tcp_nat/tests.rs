#![allow(clippy::disallowed_methods)]

use std::io;

use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr};
use weft_vswitch::wire::ethernet::{EthernetFrame, ETHERTYPE_ARP};

use super::*;
use crate::smol_device::FrameQueues;

const GW_MAC: MacAddr = MacAddr([0x02, 0x42, 10, 9, 0, 1]);
const SB_MAC: MacAddr = MacAddr([0x02, 0x42, 10, 9, 0, 2]);
const NET: NetworkId = NetworkId(1);
const PORT: PortId = PortId(1);

fn gateway() -> GatewayConfig {
    GatewayConfig {
        mac: GW_MAC,
        ipv4: vec![Ipv4Addr::new(10, 9, 0, 1)],
        ipv6: Vec::new(),
        outbound: true,
        host_loopback: false,
        dhcp: true,
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
                    let _ = nat.handle_frame(now, (NET, PORT), &gw, &parsed, open);
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
        max_buffer: 16 * 1024,
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

/// A segment from the sandbox at 10.9.0.2:`sport` to the remote, with
/// these flags (SYN or RST).
fn segment(sport: u16, syn: bool, rst: bool) -> Vec<u8> {
    let mut header = etherparse::TcpHeader::new(sport, 443, 1000, 64240);
    header.syn = syn;
    header.rst = rst;
    let mut frame = Vec::new();
    etherparse::PacketBuilder::ethernet2(SB_MAC.0, GW_MAC.0)
        .ipv4([10, 9, 0, 2], [192, 0, 2, 7], 64)
        .tcp_header(header)
        .write(&mut frame, &[])
        .unwrap();
    frame
}

fn feed(nat: &mut TcpNat, now: Instant, port: PortId, frame: &[u8]) -> Result<(), DropReason> {
    let parsed = GatewayFrame::parse(frame).unwrap();
    nat.handle_frame(now, (NET, port), &gateway(), &parsed, Some(remote()))
}

/// A fast config for the timer tests.
fn short_timers() -> TcpNatConfig {
    TcpNatConfig {
        connect_timeout: Duration::from_secs(5),
        half_closed_idle: Duration::from_secs(10),
        established_idle: Duration::from_secs(60),
        ..TcpNatConfig::default()
    }
}

/// Drain the actions; the flow's last one.
fn last_action(nat: &mut TcpNat) -> Option<TcpAction> {
    std::iter::from_fn(|| nat.poll_action()).last()
}

/// A sandbox that resets its connection while the host connect is still
/// pending: the host socket goes too.
#[test]
fn a_reset_while_connecting_closes_the_host_socket() {
    let t0 = Instant::now();
    let mut nat = TcpNat::new(TcpNatConfig::default(), t0, 1);
    feed(&mut nat, t0, PORT, &segment(40000, true, false)).unwrap();
    let Some(TcpAction::Connect { flow, .. }) = nat.poll_action() else {
        panic!("no connect")
    };
    feed(&mut nat, t0, PORT, &segment(40000, false, true)).unwrap();
    assert_eq!(nat.poll_action(), Some(TcpAction::Close { flow }));
    assert_eq!(nat.flow_count(), 0);
    nat.handle_connected(t0, flow);
    assert_eq!(nat.poll_action(), None, "a late connect revives nothing");
}

/// A sandbox that gave up on its connect answers the stack's SYN-ACK with
/// a reset: the flow ends and its host socket is reset (it stayed
/// established on the host before, for ever).
#[test]
fn a_sandbox_that_gave_up_resets_the_host_socket() {
    let t0 = Instant::now();
    let mut nat = TcpNat::new(TcpNatConfig::default(), t0, 1);
    let mut sb = Sandbox::new(remote(), 4096);
    sb.exchange(&mut nat, t0, Some(remote()));
    let Some(TcpAction::Connect { flow, .. }) = nat.poll_action() else {
        panic!("no connect")
    };
    sb.socket().abort();
    nat.handle_connected(t0, flow);
    sb.exchange(&mut nat, t0, Some(remote()));
    assert_eq!(last_action(&mut nat), Some(TcpAction::Reset { flow }));
    assert_eq!(nat.flow_count(), 0);
    assert_eq!(nat.buffer_bytes(), 0, "its buffers were given back");
}

/// A host connect that never completes is given up after the connect
/// timeout: ICMP unreachable to the sandbox, the socket reset.
#[test]
fn a_connect_that_never_completes_times_out() {
    let t0 = Instant::now();
    let mut nat = TcpNat::new(short_timers(), t0, 1);
    feed(&mut nat, t0, PORT, &segment(40000, true, false)).unwrap();
    let Some(TcpAction::Connect { flow, .. }) = nat.poll_action() else {
        panic!("no connect")
    };
    let due = nat.poll_timeout(t0).expect("a timer is armed");
    assert!(due <= t0 + Duration::from_secs(1));
    nat.handle_timeout(t0 + Duration::from_secs(4));
    assert_eq!(nat.flow_count(), 1, "not yet");
    nat.handle_timeout(t0 + Duration::from_secs(6));
    assert_eq!(nat.poll_action(), Some(TcpAction::Reset { flow }));
    assert_eq!(nat.flow_count(), 0);
    let (_, icmp, _) = nat.poll_frame().expect("the sandbox is told");
    assert_eq!(icmp[23], 1, "ICMP: {icmp:?}");
    assert_eq!(nat.counters().flows_timed_out, 1);
}

/// An established flow idle for its timer is reset on both sides; one
/// that moves is not; a half-closed one goes sooner.
#[test]
fn idle_flows_are_reset_on_both_sides() {
    let t0 = Instant::now();
    let mut nat = TcpNat::new(short_timers(), t0, 1);
    let mut sb = Sandbox::new(remote(), 4096);
    sb.exchange(&mut nat, t0, Some(remote()));
    let Some(TcpAction::Connect { flow, .. }) = nat.poll_action() else {
        panic!("no connect")
    };
    nat.handle_connected(t0, flow);
    sb.exchange(&mut nat, t0, Some(remote()));
    assert_eq!(sb.socket().state(), tcp::State::Established);
    // Activity at 50 s keeps it past 60 s.
    let t50 = t0 + Duration::from_secs(50);
    sb.socket().send_slice(b"still here").unwrap();
    sb.exchange(&mut nat, t50, Some(remote()));
    nat.handle_timeout(t0 + Duration::from_secs(70));
    assert_eq!(nat.flow_count(), 1, "an active flow was reset");
    nat.handle_timeout(t50 + Duration::from_secs(61));
    assert_eq!(last_action(&mut nat), Some(TcpAction::Reset { flow }));
    assert_eq!(nat.flow_count(), 0);
    sb.exchange(&mut nat, t50 + Duration::from_secs(61), None);
    assert_eq!(
        sb.socket().state(),
        tcp::State::Closed,
        "no reset reached the sandbox"
    );

    // Half-closed: the sandbox's FIN passed on, the host says nothing.
    let mut sb = Sandbox::new(remote(), 4096);
    sb.exchange(&mut nat, t0, Some(remote()));
    let Some(TcpAction::Connect { flow, .. }) = nat.poll_action() else {
        panic!("no connect")
    };
    nat.handle_connected(t0, flow);
    sb.exchange(&mut nat, t0, Some(remote()));
    sb.socket().close();
    sb.exchange(&mut nat, t0, Some(remote()));
    assert_eq!(
        last_action(&mut nat),
        Some(TcpAction::ShutdownWrite { flow })
    );
    nat.handle_timeout(t0 + Duration::from_secs(11));
    assert_eq!(last_action(&mut nat), Some(TcpAction::Reset { flow }));
    assert_eq!(nat.flow_count(), 0);
}

/// The buffers of a full table stay within the budget, the first flows
/// get the largest, the last still the smallest, and all come back.
#[test]
fn buffers_of_a_full_table_stay_within_the_budget() {
    let t0 = Instant::now();
    let mut nat = TcpNat::new(TcpNatConfig::default(), t0, 1);
    let sizes: Vec<usize> = (0..DEFAULT_MAX_FLOWS).map(|_| nat.take_buffer()).collect();
    assert_eq!(sizes[0], DEFAULT_BUFFER);
    assert!(sizes.iter().all(|s| *s >= MIN_BUFFER));
    assert!(
        nat.buffer_bytes() <= DEFAULT_BUFFER_BUDGET,
        "{} bytes of buffers",
        nat.buffer_bytes()
    );
    assert!(sizes.windows(2).all(|w| w[0] >= w[1]), "sizes only shrink");
    for size in sizes {
        nat.return_buffer(size);
    }
    assert_eq!(nat.buffer_bytes(), 0);
    assert_eq!(nat.take_buffer(), DEFAULT_BUFFER);
}

/// A sandbox over its share is reset at once; another sandbox still
/// opens flows.
#[test]
fn a_sandbox_over_its_share_is_reset_and_others_still_connect() {
    let t0 = Instant::now();
    let config = TcpNatConfig {
        max_flows: 256,
        ..TcpNatConfig::default()
    };
    let mut nat = TcpNat::new(config, t0, 1);
    let share = nat.shares().sandbox_share();
    assert_eq!(share, 64);
    for i in 0..share {
        let sport = 10_000 + u16::try_from(i).unwrap();
        feed(&mut nat, t0, PORT, &segment(sport, true, false)).unwrap();
    }
    assert_eq!(
        feed(&mut nat, t0, PORT, &segment(20_000, true, false)),
        Err(DropReason::NatFull)
    );
    let reset = std::iter::from_fn(|| nat.poll_frame()).last().unwrap().1;
    let parsed = etherparse::SlicedPacket::from_ethernet(&reset).unwrap();
    let Some(TransportSlice::Tcp(tcp)) = parsed.transport else {
        panic!("not TCP")
    };
    assert!(tcp.rst(), "the refusal is a reset");
    assert_eq!(nat.refused(NET).sandbox_share, 1);
    feed(&mut nat, t0, PortId(2), &segment(20_001, true, false)).unwrap();
    assert_eq!(nat.flow_count(), share + 1);
}

/// A sandbox whose reset was lost (its socket is simply gone) is found by
/// the stack's keepalive: its kernel answers the probe with a reset and
/// the host socket goes; a sandbox that answers its keepalives is still
/// idle for the established timer (their ACKs are not activity).
#[test]
fn keepalives_find_a_sandbox_that_is_gone_and_do_not_keep_an_idle_flow() {
    let t0 = Instant::now();
    let mut nat = TcpNat::new(short_timers(), t0, 1);
    let mut sb = Sandbox::new(remote(), 4096);
    sb.exchange(&mut nat, t0, Some(remote()));
    let Some(TcpAction::Connect { flow, .. }) = nat.poll_action() else {
        panic!("no connect")
    };
    nat.handle_connected(t0, flow);
    sb.exchange(&mut nat, t0, Some(remote()));
    assert_eq!(sb.socket().state(), tcp::State::Established);
    let _ = last_action(&mut nat);
    // Every few seconds the stack probes and the sandbox answers.
    for s in 1..=59 {
        let now = t0 + Duration::from_secs(s);
        nat.handle_timeout(now);
        sb.exchange(&mut nat, now, Some(remote()));
    }
    assert_eq!(nat.flow_count(), 1, "a live sandbox's flow ended");
    let now = t0 + Duration::from_secs(61);
    nat.handle_timeout(now);
    assert_eq!(
        last_action(&mut nat),
        Some(TcpAction::Reset { flow }),
        "keepalive answers kept an idle flow"
    );

    // Gone without a word: the next probe is answered with a reset.
    let mut nat = TcpNat::new(short_timers(), t0, 1);
    let mut sb = Sandbox::new(remote(), 4096);
    sb.exchange(&mut nat, t0, Some(remote()));
    let Some(TcpAction::Connect { flow, .. }) = nat.poll_action() else {
        panic!("no connect")
    };
    nat.handle_connected(t0, flow);
    sb.exchange(&mut nat, t0, Some(remote()));
    let _ = last_action(&mut nat);
    sb.sockets.remove(sb.handle);
    for s in 1..=SANDBOX_KEEPALIVE.as_secs() + 2 {
        let now = t0 + Duration::from_secs(s);
        nat.handle_timeout(now);
        sb.exchange(&mut nat, now, Some(remote()));
    }
    assert_eq!(last_action(&mut nat), Some(TcpAction::Reset { flow }));
    assert_eq!(nat.flow_count(), 0);
}
