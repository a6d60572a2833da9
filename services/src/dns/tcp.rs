//! DNS over TCP (RFC 7766) on a network's gateway addresses, with smoltcp
//! as the TCP stack.
//!
//! # Theory of operation
//!
//! One [`DnsTcp`] per network: a smoltcp `Interface` with the gateway's
//! MAC and addresses, fed with the frames the switch hands the gateway
//! that its fast path does not answer (TCP to a gateway address, ARP
//! replies), and a few TCP sockets on port 53. The device is a pair of
//! frame queues: frames in, frames out; smoltcp itself is sans-IO.
//!
//! Each connection carries length-prefixed DNS messages (RFC 1035 §4.2.2).
//! Complete queries come out of [`DnsTcp::poll_query`] with an opaque
//! connection id; the answer goes back with [`DnsTcp::send_answer`]. The
//! connection stays open for more queries until the client closes it or it
//! idles for [`IDLE_TIMEOUT`].
//!
//! Neighbour cache: smoltcp learns a peer's MAC from ARP requests aimed at
//! it. Before every IPv4 frame it gets, a synthetic ARP request from the
//! frame's source MAC and address is fed to it (its reply discarded), so
//! replies never wait for an ARP round trip. IPv6 peers are learned from
//! their neighbour solicitations for the gateway, which the switch passes
//! here too.
//!
//! Capacities, so that slow or hostile clients cannot starve the others:
//!
//! - at most [`MAX_CONNECTIONS`] connections per network, and one more
//!   socket always listens. When it accepts while the table is full, the
//!   connection idle longest between messages is closed to make room (RFC
//!   7766 §6.2.3 lets a server close idle connections under pressure); if
//!   every connection is in the middle of a message, the newcomer is
//!   refused (RST);
//! - at most [`MAX_PER_CLIENT`] connections per client address: more are
//!   refused at once;
//! - a message must arrive whole within [`MESSAGE_DEADLINE`] of its first
//!   byte (a client dribbling a byte now and then is cut off), and a
//!   connection with no traffic for [`IDLE_TIMEOUT`] is closed;
//! - a query longer than [`MAX_QUERY`] closes its connection; at most
//!   [`MAX_QUEUED_FRAMES`] frames wait in either direction, extra ones are
//!   dropped (TCP retransmits).

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr};

use crate::smol_device::{arp_request, FrameQueues};
use weft_vswitch::wire::ethernet::{EthernetFrame, MacAddr, ETHERTYPE_IPV4};

/// Connections per network.
pub const MAX_CONNECTIONS: usize = 16;
/// Connections one client address may hold per network.
pub const MAX_PER_CLIENT: usize = 4;
/// Time from a message's first byte to its last.
pub const MESSAGE_DEADLINE: Duration = Duration::from_secs(2);
/// Longest query accepted over TCP (a query is a question and an OPT
/// record: a few hundred bytes).
pub const MAX_QUERY: usize = 4096;
/// Frames queued in either direction.
pub const MAX_QUEUED_FRAMES: usize = 256;
/// A connection with no traffic for this long is closed (RFC 7766 §6.2.3
/// suggests seconds, not minutes).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// The DNS port.
const DNS_PORT: u16 = 53;
/// Answers up to 64 KiB plus the length prefix fit the send buffer.
const SEND_BUFFER: usize = 65_536 + 2;

/// The TCP side of one network's DNS server. See the module header.
pub struct DnsTcp {
    iface: Interface,
    device: FrameQueues,
    sockets: SocketSet<'static>,
    connections: HashMap<u64, Connection>,
    listener: Option<SocketHandle>,
    next_id: u64,
    id_base: u64,
    epoch: Instant,
    queries: VecDeque<TcpQuery>,
    /// Sockets aborted this poll (refused or evicted): removed once their
    /// RST has left.
    refused: Vec<SocketHandle>,
    gateway_ipv4: Vec<std::net::Ipv4Addr>,
    mac: MacAddr,
}

struct Connection {
    handle: SocketHandle,
    received: Vec<u8>,
    /// The client's address.
    client: Option<IpAddr>,
    /// When bytes last arrived (or the connection was accepted).
    last_activity: Instant,
    /// When the first byte of the message being read arrived.
    partial_since: Option<Instant>,
}

/// A complete query read from a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpQuery {
    /// Opaque id of the connection, for [`DnsTcp::send_answer`].
    pub connection: u64,
    /// The client.
    pub peer: SocketAddr,
    /// The gateway address it connected to.
    pub server: IpAddr,
    /// The DNS message, without its length prefix.
    pub message: Vec<u8>,
}

impl DnsTcp {
    /// A stack at `mac` with the gateway `addresses` (with prefixes).
    /// `id_base` makes connection ids unique across networks (put the
    /// network id in its high bits); `seed` seeds TCP sequence numbers.
    pub fn new(
        now: Instant,
        mac: MacAddr,
        addresses: &[(IpAddr, u8)],
        id_base: u64,
        seed: u64,
    ) -> Self {
        let mut device = FrameQueues::new(1514, MAX_QUEUED_FRAMES);
        let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac.0)));
        config.random_seed = seed;
        let mut iface = Interface::new(config, &mut device, smoltcp::time::Instant::ZERO);
        iface.update_ip_addrs(|addrs| {
            for (addr, prefix) in addresses {
                // At most a handful of gateway addresses per network; extra
                // ones past smoltcp's fixed capacity are not served over TCP.
                let _ = addrs.push(IpCidr::new((*addr).into(), *prefix));
            }
        });
        let gateway_ipv4 = addresses
            .iter()
            .filter_map(|(a, _)| match a {
                IpAddr::V4(v4) => Some(*v4),
                IpAddr::V6(_) => None,
            })
            .collect();
        let mut stack = DnsTcp {
            iface,
            device,
            sockets: SocketSet::new(Vec::new()),
            connections: HashMap::new(),
            listener: None,
            next_id: 0,
            id_base,
            epoch: now,
            queries: VecDeque::new(),
            refused: Vec::new(),
            gateway_ipv4,
            mac,
        };
        stack.ensure_listener();
        stack
    }

    fn smol_now(&self, now: Instant) -> smoltcp::time::Instant {
        let micros = now.saturating_duration_since(self.epoch).as_micros();
        smoltcp::time::Instant::from_micros(i64::try_from(micros).unwrap_or(i64::MAX))
    }

    fn ensure_listener(&mut self) {
        if self.listener.is_some() {
            return;
        }
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; MAX_QUERY + 2]),
            tcp::SocketBuffer::new(vec![0; SEND_BUFFER]),
        );
        socket.set_timeout(Some(smoltcp::time::Duration::from_millis(
            u64::try_from(IDLE_TIMEOUT.as_millis()).unwrap_or(u64::MAX),
        )));
        if socket.listen(DNS_PORT).is_ok() {
            self.listener = Some(self.sockets.add(socket));
        }
    }

    /// A frame for the gateway that its fast path did not answer.
    pub fn handle_frame(&mut self, now: Instant, frame: &[u8]) {
        if self.device.rx.len() >= MAX_QUEUED_FRAMES {
            return;
        }
        if let Some(arp) = self.synthetic_arp(frame) {
            let queued = self.device.tx.len();
            self.device.push_rx(arp);
            self.poll(now);
            // The stack's answer to our own ARP request is not for anyone;
            // the frames queued before it (answers to earlier frames) are.
            let mut index = 0;
            self.device.tx.retain(|f| {
                index += 1;
                index <= queued || !is_arp(f)
            });
        }
        self.device.push_rx(frame.to_vec());
        self.poll(now);
    }

    /// An ARP request "from" the sender of an IPv4 frame, so the stack
    /// learns its MAC (see the module header).
    fn synthetic_arp(&self, frame: &[u8]) -> Option<Vec<u8>> {
        let eth = EthernetFrame::new_checked(frame).ok()?;
        if eth.ethertype() != ETHERTYPE_IPV4 {
            return None;
        }
        let ip = eth.payload();
        let src: [u8; 4] = ip.get(12..16)?.try_into().ok()?;
        let dst: [u8; 4] = ip.get(16..20)?.try_into().ok()?;
        if !self.gateway_ipv4.contains(&dst.into()) {
            return None;
        }
        Some(arp_request(eth.source(), src.into(), self.mac, dst.into()))
    }

    /// Run the stack: process queued frames and timers, collect complete
    /// queries, recycle closed sockets.
    pub fn poll(&mut self, now: Instant) {
        let smol_now = self.smol_now(now);
        self.iface
            .poll(smol_now, &mut self.device, &mut self.sockets);
        // The listener became a connection: give it an id, or refuse it.
        if let Some(handle) = self.listener {
            let socket = self.sockets.get::<tcp::Socket>(handle);
            if !socket.is_listening() {
                self.listener = None;
                let client = socket.remote_endpoint().map(|e| IpAddr::from(e.addr));
                self.admit(now, handle, client);
            }
        }
        let mut closed = Vec::new();
        for (id, conn) in &mut self.connections {
            let socket = self.sockets.get_mut::<tcp::Socket>(conn.handle);
            while socket.can_recv() {
                let mut buf = [0u8; 1024];
                match socket.recv_slice(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        conn.received.extend_from_slice(&buf[..n]);
                        conn.last_activity = now;
                        conn.partial_since.get_or_insert(now);
                    }
                }
            }
            while let Some(message) = take_message(&mut conn.received) {
                if let (Some(peer), Some(local)) =
                    (socket.remote_endpoint(), socket.local_endpoint())
                {
                    self.queries.push_back(TcpQuery {
                        connection: *id,
                        peer: SocketAddr::new(peer.addr.into(), peer.port),
                        server: local.addr.into(),
                        message,
                    });
                }
            }
            if conn.received.is_empty() {
                conn.partial_since = None;
            }
            let too_slow = conn
                .partial_since
                .is_some_and(|since| now.saturating_duration_since(since) >= MESSAGE_DEADLINE);
            if conn.received.len() > MAX_QUERY + 2 || too_slow {
                socket.abort();
            }
            if socket.state() == tcp::State::CloseWait {
                socket.close();
            }
            if socket.state() == tcp::State::Closed {
                closed.push(*id);
            }
        }
        for id in closed {
            if let Some(conn) = self.connections.remove(&id) {
                // Removed after the second pass below: an aborted one
                // still has its RST to send.
                self.refused.push(conn.handle);
            }
        }
        self.ensure_listener();
        // Answers written above (and the listener's state) may have frames
        // to send now, the RSTs of refused and evicted connections too;
        // then their sockets go.
        self.iface
            .poll(smol_now, &mut self.device, &mut self.sockets);
        for handle in self.refused.drain(..) {
            self.sockets.remove(handle);
        }
    }

    /// A connection the listener accepted: kept, if its client is under
    /// its share and there is room (made by closing the connection idle
    /// longest, if need be); refused with a RST otherwise.
    fn admit(&mut self, now: Instant, handle: SocketHandle, client: Option<IpAddr>) {
        let from_client = self
            .connections
            .values()
            .filter(|c| c.client == client)
            .count();
        let mut room = from_client < MAX_PER_CLIENT;
        if room && self.connections.len() >= MAX_CONNECTIONS {
            let idle_longest = self
                .connections
                .iter()
                .filter(|(_, c)| c.partial_since.is_none())
                .min_by_key(|(_, c)| c.last_activity)
                .map(|(id, c)| (*id, c.handle));
            match idle_longest {
                Some((id, victim)) => {
                    self.sockets.get_mut::<tcp::Socket>(victim).abort();
                    self.connections.remove(&id);
                    self.refused.push(victim);
                }
                None => room = false,
            }
        }
        if !room {
            let socket = self.sockets.get_mut::<tcp::Socket>(handle);
            socket.abort();
            self.refused.push(handle);
            return;
        }
        self.next_id += 1;
        self.connections.insert(
            self.id_base | self.next_id,
            Connection {
                handle,
                received: Vec::new(),
                client,
                last_activity: now,
                partial_since: None,
            },
        );
    }

    /// The next complete query.
    pub fn poll_query(&mut self) -> Option<TcpQuery> {
        self.queries.pop_front()
    }

    /// Send an answer on a connection (the length prefix is added here).
    /// An answer for a connection that has gone is dropped.
    pub fn send_answer(&mut self, now: Instant, connection: u64, answer: &[u8]) {
        let Some(conn) = self.connections.get(&connection) else {
            return;
        };
        let Ok(len) = u16::try_from(answer.len()) else {
            return;
        };
        let socket = self.sockets.get_mut::<tcp::Socket>(conn.handle);
        if socket.may_send() && socket.send_capacity() - socket.send_queue() >= answer.len() + 2 {
            let _ = socket.send_slice(&len.to_be_bytes());
            let _ = socket.send_slice(answer);
        }
        self.poll(now);
    }

    /// The next frame the stack sends into the network.
    pub fn poll_frame(&mut self) -> Option<Vec<u8>> {
        self.device.tx.pop_front()
    }

    /// When the stack wants [`DnsTcp::poll`] again (retransmissions,
    /// timeouts).
    pub fn poll_timeout(&mut self, now: Instant) -> Option<Instant> {
        let smol_now = self.smol_now(now);
        let stack = self.iface.poll_at(smol_now, &self.sockets).map(|at| {
            let micros = u64::try_from(at.total_micros()).unwrap_or(0);
            self.epoch + Duration::from_micros(micros)
        });
        let deadlines = self
            .connections
            .values()
            .filter_map(|c| c.partial_since)
            .map(|since| since + MESSAGE_DEADLINE);
        stack.into_iter().chain(deadlines).min()
    }

    /// Open connections.
    pub fn connection_count(&self) -> usize {
        self.connections.len()
    }
}

/// Whether an Ethernet frame carries ARP.
fn is_arp(frame: &[u8]) -> bool {
    frame.get(12..14) == Some(&[0x08, 0x06])
}

/// Take one length-prefixed message off the front of `buf`.
fn take_message(buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let len = usize::from(u16::from_be_bytes([*buf.first()?, *buf.get(1)?]));
    if buf.len() < 2 + len {
        return None;
    }
    let message = buf[2..2 + len].to_vec();
    buf.drain(..2 + len);
    Some(message)
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    /// A smoltcp client on the same segment connects to the gateway's port
    /// 53, sends a query, and reads the answer; frames cross in memory.
    #[test]
    fn a_client_gets_its_answer_over_tcp() {
        let t0 = Instant::now();
        let gw_mac = MacAddr([0x02, 0x42, 10, 9, 0, 1]);
        let mut server = DnsTcp::new(t0, gw_mac, &[("10.9.0.1".parse().unwrap(), 24)], 1 << 32, 7);

        let mut client_dev = FrameQueues::new(1514, MAX_QUEUED_FRAMES);
        let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress([
            0x02, 0x42, 10, 9, 0, 2,
        ])));
        config.random_seed = 3;
        let mut client = Interface::new(config, &mut client_dev, smoltcp::time::Instant::ZERO);
        client.update_ip_addrs(|a| {
            a.push(IpCidr::new(smoltcp::wire::IpAddress::v4(10, 9, 0, 2), 24))
                .unwrap();
        });
        let mut sockets = SocketSet::new(Vec::new());
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 4096]),
            tcp::SocketBuffer::new(vec![0; 4096]),
        );
        socket
            .connect(
                client.context(),
                (smoltcp::wire::IpAddress::v4(10, 9, 0, 1), 53),
                40000,
            )
            .unwrap();
        let handle = sockets.add(socket);
        let mut sent = false;
        let mut answer = Vec::new();
        for step in 0..200u64 {
            let now = t0 + Duration::from_millis(step * 10);
            let smol = smoltcp::time::Instant::from_millis(i64::try_from(step * 10).unwrap());
            client.poll(smol, &mut client_dev, &mut sockets);
            while let Some(frame) = client_dev.tx.pop_front() {
                server.handle_frame(now, &frame);
            }
            server.poll(now);
            while let Some(query) = server.poll_query() {
                assert_eq!(query.message, b"hello?");
                assert_eq!(query.server, "10.9.0.1".parse::<IpAddr>().unwrap());
                assert_eq!(query.peer, "10.9.0.2:40000".parse().unwrap());
                server.send_answer(now, query.connection, b"hello!");
            }
            while let Some(frame) = server.poll_frame() {
                client_dev.rx.push_back(frame);
            }
            let socket = sockets.get_mut::<tcp::Socket>(handle);
            if socket.may_send() && !sent {
                socket.send_slice(&[0, 6]).unwrap();
                socket.send_slice(b"hello?").unwrap();
                sent = true;
            }
            while socket.can_recv() {
                let mut buf = [0u8; 64];
                let n = socket.recv_slice(&mut buf).unwrap();
                answer.extend_from_slice(&buf[..n]);
            }
            if answer.len() >= 8 {
                break;
            }
        }
        assert_eq!(answer, b"\x00\x06hello!");
        assert_eq!(server.connection_count(), 1);
    }

    #[test]
    fn messages_are_taken_whole() {
        let mut buf = vec![0, 3, b'a', b'b', b'c', 0, 2, b'x'];
        assert_eq!(take_message(&mut buf), Some(b"abc".to_vec()));
        assert_eq!(take_message(&mut buf), None);
        buf.push(b'y');
        assert_eq!(take_message(&mut buf), Some(b"xy".to_vec()));
        assert!(buf.is_empty());
    }

    /// Clients on the gateway's segment, each a smoltcp stack with its own
    /// MAC and address, and the frames between them and the server.
    struct Segment {
        server: DnsTcp,
        clients: Vec<(Interface, FrameQueues, SocketSet<'static>, [u8; 6])>,
        t0: Instant,
        ms: u64,
    }

    impl Segment {
        fn new(clients: u8) -> Segment {
            let t0 = Instant::now();
            let gw_mac = MacAddr([0x02, 0x42, 10, 9, 0, 1]);
            let server = DnsTcp::new(t0, gw_mac, &[("10.9.0.1".parse().unwrap(), 24)], 1 << 32, 7);
            let clients = (0..clients)
                .map(|i| {
                    let mut dev = FrameQueues::new(1514, MAX_QUEUED_FRAMES);
                    let mac = [0x02, 0x42, 10, 9, 0, 10 + i];
                    let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
                    config.random_seed = u64::from(i) + 100;
                    let mut iface = Interface::new(config, &mut dev, smoltcp::time::Instant::ZERO);
                    iface.update_ip_addrs(|a| {
                        a.push(IpCidr::new(
                            smoltcp::wire::IpAddress::v4(10, 9, 0, 10 + i),
                            24,
                        ))
                        .unwrap();
                    });
                    (iface, dev, SocketSet::new(Vec::new()), mac)
                })
                .collect();
            Segment {
                server,
                clients,
                t0,
                ms: 0,
            }
        }

        /// A connection from client `c` to the gateway's port 53.
        fn connect(&mut self, c: usize, port: u16) -> SocketHandle {
            let (iface, _, sockets, _) = &mut self.clients[c];
            let mut socket = tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; 4096]),
                tcp::SocketBuffer::new(vec![0; 4096]),
            );
            socket
                .connect(
                    iface.context(),
                    (smoltcp::wire::IpAddress::v4(10, 9, 0, 1), 53),
                    port,
                )
                .unwrap();
            sockets.add(socket)
        }

        fn socket(&mut self, c: usize, h: SocketHandle) -> &mut tcp::Socket<'static> {
            self.clients[c].2.get_mut::<tcp::Socket>(h)
        }

        /// Run everyone for `ms` milliseconds of virtual time, answering
        /// every query with "ok".
        fn run(&mut self, ms: u64) {
            for _ in 0..ms / 10 {
                self.ms += 10;
                let now = self.t0 + Duration::from_millis(self.ms);
                let smol = smoltcp::time::Instant::from_millis(i64::try_from(self.ms).unwrap());
                for (iface, dev, sockets, _) in &mut self.clients {
                    iface.poll(smol, dev, sockets);
                    while let Some(frame) = dev.tx.pop_front() {
                        self.server.handle_frame(now, &frame);
                    }
                }
                self.server.poll(now);
                while let Some(query) = self.server.poll_query() {
                    self.server.send_answer(now, query.connection, b"ok");
                }
                while let Some(frame) = self.server.poll_frame() {
                    for (_, dev, _, mac) in &mut self.clients {
                        if frame[..6] == [0xff; 6] || frame[..6] == *mac {
                            dev.rx.push_back(frame.clone());
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_client_dribbling_a_message_is_cut_off() {
        let mut seg = Segment::new(1);
        let h = seg.connect(0, 40000);
        seg.run(100);
        assert!(seg.socket(0, h).may_send(), "connected");
        seg.socket(0, h).send_slice(&[0]).unwrap();
        seg.run(500);
        assert_eq!(seg.server.connection_count(), 1);
        // One more byte now and then: not a message.
        seg.socket(0, h).send_slice(&[20]).unwrap();
        seg.run(MESSAGE_DEADLINE.as_millis() as u64 + 500);
        assert_eq!(
            seg.server.connection_count(),
            0,
            "the slow writer is cut off"
        );
        assert!(!seg.socket(0, h).is_active(), "and told so (RST)");
    }

    #[test]
    fn one_client_holds_at_most_its_share() {
        let mut seg = Segment::new(1);
        let handles: Vec<_> = (0..MAX_PER_CLIENT as u16 + 2)
            .map(|i| seg.connect(0, 40000 + i))
            .collect();
        seg.run(1_000);
        assert_eq!(seg.server.connection_count(), MAX_PER_CLIENT);
        let active = handles
            .iter()
            .filter(|h| seg.socket(0, **h).is_active())
            .count();
        assert_eq!(active, MAX_PER_CLIENT, "the extra connections were refused");
    }

    #[test]
    fn a_full_table_makes_room_for_a_newcomer() {
        let holders = MAX_CONNECTIONS / MAX_PER_CLIENT;
        let mut seg = Segment::new(u8::try_from(holders + 1).unwrap());
        for c in 0..holders {
            for i in 0..MAX_PER_CLIENT as u16 {
                seg.connect(c, 40000 + i);
                seg.run(20);
            }
        }
        seg.run(500);
        assert_eq!(seg.server.connection_count(), MAX_CONNECTIONS);
        let h = seg.connect(holders, 41000);
        seg.run(500);
        let socket = seg.socket(holders, h);
        assert!(socket.may_send(), "the newcomer is accepted");
        socket.send_slice(&[0, 2, b'q', b'?']).unwrap();
        seg.run(500);
        let socket = seg.socket(holders, h);
        let mut buf = [0u8; 16];
        let n = socket.recv_slice(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"\x00\x02ok");
        assert_eq!(seg.server.connection_count(), MAX_CONNECTIONS);
    }
}
