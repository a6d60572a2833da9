//! The embedded DNS's way to its upstream resolvers: one UDP socket per
//! address family, bound to a port the kernel picks.
//!
//! # Theory of operation
//!
//! The DNS core (`weft_services::dns`) forwards names that are not local as
//! datagrams ([`Upstreams::send_all`] takes them from the services) and
//! matches what comes back by server address, query id and question
//! ([`Upstreams::read`] hands every datagram back). The sockets are opened
//! once, at start; a family the host lacks (no IPv6) has no socket, and its
//! upstreams are skipped. Answers larger than [`DATAGRAM_MAX`] are not
//! asked for (the core's EDNS size is smaller).

use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use mio::net::UdpSocket;
use mio::{Interest, Registry};
use weft_services::GatewayServices;

use crate::taps::IO_LOOP_BOUND;
use crate::tokens::{Source, Tokens};

/// Largest DNS datagram accepted from an upstream.
pub const DATAGRAM_MAX: usize = 4096;

/// See the module header.
#[derive(Debug)]
pub struct Upstreams {
    v4: Option<UdpSocket>,
    v6: Option<UdpSocket>,
}

impl Upstreams {
    /// Open and register a socket per family.
    pub fn open(registry: &Registry, tokens: &mut Tokens) -> Self {
        Upstreams {
            v4: open_socket(registry, tokens, true),
            v6: open_socket(registry, tokens, false),
        }
    }

    /// Hand what the family's socket received to the DNS, bounded.
    pub fn read(&self, services: &mut GatewayServices, v4: bool) {
        let Some(socket) = (if v4 { &self.v4 } else { &self.v6 }) else {
            return;
        };
        let mut buf = [0u8; DATAGRAM_MAX];
        for _ in 0..IO_LOOP_BOUND {
            match socket.recv_from(&mut buf) {
                Ok((len, from)) => services.handle_upstream(Instant::now(), from, &buf[..len]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // ICMP errors (port unreachable) surface here: the
                    // server's timers move on to the next upstream.
                    tracing::debug!(error = %e, "DNS upstream receive");
                }
            }
        }
    }

    /// Send every query the DNS has for its upstreams.
    pub fn send_all(&self, services: &mut GatewayServices) {
        while let Some((upstream, datagram)) = services.poll_upstream() {
            let socket = if upstream.is_ipv4() {
                &self.v4
            } else {
                &self.v6
            };
            let Some(socket) = socket else {
                continue;
            };
            if let Err(e) = socket.send_to(&datagram, upstream) {
                tracing::debug!(%upstream, error = %e, "DNS upstream send failed");
            }
        }
    }
}

fn open_socket(registry: &Registry, tokens: &mut Tokens, v4: bool) -> Option<UdpSocket> {
    let addr: SocketAddr = if v4 {
        SocketAddr::from(([0u8; 4], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let mut socket = match UdpSocket::bind(addr) {
        Ok(socket) => socket,
        Err(e) => {
            tracing::debug!(%addr, error = %e, "no DNS upstream socket for this family");
            return None;
        }
    };
    let token = tokens.insert(Source::Upstream { v4 });
    if registry
        .register(&mut socket, token, Interest::READABLE)
        .is_err()
    {
        tokens.remove(token);
        return None;
    }
    Some(socket)
}
