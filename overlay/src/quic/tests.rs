//! The QUIC core in memory: two or three endpoints, the datagrams between
//! them carried by the test, the clock the test's own.

// The test starts its own clock once; the core never reads one.
#![allow(clippy::disallowed_methods)]

use super::*;

const A: &str = "192.0.2.1:4790";
const B: &str = "192.0.2.2:4790";

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

fn tunnel(secret: &[u8]) -> QuicTunnel {
    QuicTunnel::new(
        &QuicIdentity::from_secret(secret).unwrap(),
        QuicConfig::default(),
    )
    .unwrap()
}

/// Hosts at addresses, a clock, and the wire between them.
struct World {
    hosts: Vec<(SocketAddr, QuicTunnel)>,
    now: Instant,
    /// Datagrams the wire carried, for the "no clear text" check.
    wire: Vec<Vec<u8>>,
}

impl World {
    fn new(hosts: Vec<(&str, QuicTunnel)>) -> World {
        World {
            hosts: hosts.into_iter().map(|(a, t)| (addr(a), t)).collect(),
            now: Instant::now(),
            wire: Vec::new(),
        }
    }

    fn host(&mut self, at: &str) -> &mut QuicTunnel {
        let at = addr(at);
        &mut self
            .hosts
            .iter_mut()
            .find(|(a, _)| *a == at)
            .expect("a host of the test")
            .1
    }

    /// Carry datagrams (and run timers) until nothing moves, at most
    /// `rounds` times; each round advances the clock by 1 ms.
    fn run(&mut self, rounds: usize) {
        for _ in 0..rounds {
            let mut moved = false;
            let mut in_flight = Vec::new();
            for (from, tunnel) in &mut self.hosts {
                tunnel.handle_timeout(self.now);
                let mut buf = Vec::new();
                while let Some(t) = tunnel.poll_transmit(self.now, 10, &mut buf) {
                    for datagram in buf[..t.size].chunks(t.segment) {
                        in_flight.push((*from, t.destination, datagram.to_vec()));
                    }
                }
            }
            for (from, to, datagram) in in_flight {
                moved = true;
                self.wire.push(datagram.clone());
                if let Some((_, tunnel)) = self.hosts.iter_mut().find(|(a, _)| *a == to) {
                    tunnel.handle(self.now, from, None, &datagram);
                }
            }
            self.now += Duration::from_millis(1);
            if !moved {
                break;
            }
        }
    }

    fn received(&mut self, at: &str) -> Vec<(SocketAddr, Bytes)> {
        std::iter::from_fn(|| self.host(at).poll_received()).collect()
    }
}

#[test]
fn frames_cross_once_the_handshake_ends_and_wait_for_it_before() {
    let mut world = World::new(vec![(A, tunnel(b"secret")), (B, tunnel(b"secret"))]);
    let now = world.now;
    let frame =
        Bytes::from_static(b"\x08\0\0\0\0\x10\x92\0 a frame with a marker: PLAINTEXT-MARKER");
    assert_eq!(
        world.host(A).send(now, addr(B), frame.clone()),
        Sent::Waiting
    );
    world.run(50);
    let got = world.received(B);
    assert_eq!(got, vec![(addr(A), frame.clone())]);
    // Both ways, over the one connection.
    let now = world.now;
    assert_eq!(
        world.host(B).send(now, addr(A), frame.clone()),
        Sent::Queued
    );
    world.run(50);
    assert_eq!(world.received(A), vec![(addr(B), frame)]);
    assert!(
        !world
            .wire
            .iter()
            .any(|d| d.windows(16).any(|w| w == b"PLAINTEXT-MARKER")),
        "the frame crossed the wire in clear text"
    );
    let peers = world.host(A).peers();
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].state, LinkState::Established);
    assert_eq!((peers[0].tx_datagrams, peers[0].rx_datagrams), (1, 1));
    assert!(peers[0].max_datagram.unwrap() >= 1412 + 14 + 8);
}

#[test]
fn a_host_with_another_key_gets_no_connection_and_no_frame() {
    let mut world = World::new(vec![(A, tunnel(b"secret")), (B, tunnel(b"not the secret"))]);
    let now = world.now;
    let frame = Bytes::from_static(b"\x08\0\0\0\0\x10\x92\0 hello");
    world.host(B).send(now, addr(A), frame.clone());
    world.run(200);
    assert!(world.received(A).is_empty());
    let now = world.now;
    world.host(A).send(now, addr(B), frame);
    world.run(200);
    assert!(world.received(B).is_empty());
    assert!(world.host(A).counters().handshake_failures >= 1);
    assert!(world.host(B).counters().handshake_failures >= 1);
    assert_eq!(world.host(A).counters().established, 0);
}

#[test]
fn a_full_datagram_fits_and_a_larger_one_is_refused() {
    let mut world = World::new(vec![(A, tunnel(b"k")), (B, tunnel(b"k"))]);
    let now = world.now;
    world.host(A).send(now, addr(B), Bytes::from_static(b"x"));
    world.run(50);
    let max = world.host(A).max_datagram(addr(B)).unwrap();
    // A 1500-byte underlay: 1472 bytes of UDP payload, 38 of QUIC.
    assert_eq!(max, 1472 - QUIC_DATAGRAM_OVERHEAD);
    let now = world.now;
    let full = Bytes::from(vec![7u8; max]);
    assert_eq!(world.host(A).send(now, addr(B), full.clone()), Sent::Queued);
    let too_big = Bytes::from(vec![7u8; max + 1]);
    assert_eq!(world.host(A).send(now, addr(B), too_big), Sent::TooLarge);
    world.run(50);
    let got = world.received(B);
    assert_eq!(got.last().map(|(_, d)| d.len()), Some(max));
}

#[test]
fn a_client_that_moves_keeps_its_connection() {
    let mut world = World::new(vec![(A, tunnel(b"k")), (B, tunnel(b"k"))]);
    let now = world.now;
    world
        .host(B)
        .send(now, addr(A), Bytes::from_static(b"before"));
    world.run(50);
    assert_eq!(world.received(A).len(), 1);
    // B's address changes: its packets now come from elsewhere.
    let moved = addr("198.51.100.7:4790");
    world.hosts[1].0 = moved;
    let now = world.now;
    world
        .host("198.51.100.7:4790")
        .send(now, addr(A), Bytes::from_static(b"after"));
    world.run(100);
    let got = world.received(A);
    assert_eq!(got, vec![(moved, Bytes::from_static(b"after"))]);
    // A answers at the new address, over the same connection.
    let now = world.now;
    assert_eq!(
        world.host(A).send(now, moved, Bytes::from_static(b"back")),
        Sent::Queued
    );
    world.run(50);
    assert_eq!(world.received("198.51.100.7:4790").len(), 1);
    assert_eq!(world.host(A).peers().len(), 1);
}

#[test]
fn a_silent_peer_is_closed_after_the_idle_timeout() {
    let mut world = World::new(vec![(A, tunnel(b"k")), (B, tunnel(b"k"))]);
    let now = world.now;
    world.host(A).send(now, addr(B), Bytes::from_static(b"x"));
    world.run(50);
    // B vanishes.
    world.hosts.truncate(1);
    let end = world.now + IDLE_TIMEOUT * 2;
    while world.now < end {
        world.run(1);
        world.now += Duration::from_millis(100);
    }
    let peers = world.host(A).peers();
    assert!(
        peers.iter().all(|p| p.state == LinkState::Closed),
        "{peers:?}"
    );
    // The next frame opens a new connection.
    let now = world.now;
    assert_eq!(
        world.host(A).send(now, addr(B), Bytes::from_static(b"y")),
        Sent::Waiting
    );
}
