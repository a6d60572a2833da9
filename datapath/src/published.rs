//! Published ports: host sockets that carry connections and datagrams into
//! one sandbox (`-p [HOSTIP:]HOSTPORT:PORT[/tcp|/udp]`).
//!
//! # Theory of operation
//!
//! The control plane binds the host socket ([`HostListener::bind`]) while
//! it handles `connect`, so a port in use, or one below
//! `net.ipv4.ip_unprivileged_port_start` for a daemon without the
//! capability, is an error the user sees at once ([`PublishError`]). The
//! bound socket then moves to the data-path thread with where it leads
//! ([`PublishTarget`]), through [`crate::Datapath::publish`], and the
//! event loop polls it ([`PublishedPorts`]):
//!
//! - TCP: the data path accepts each connection and opens one from the
//!   client's own address and port to the sandbox through the network's
//!   userspace TCP stack (`weft_services::tcp_nat`), then relays both ways with
//!   backpressure. The sandbox sees the real client address at L3; at L2
//!   the frames come from the gateway MAC, like any routed packet.
//! - UDP: each datagram enters the sandbox from the client's address and
//!   port; the sandbox's answers, which go back to that address through
//!   its gateway, leave from the published socket to the client.
//!
//! A client on the host's loopback (127.0.0.0/8, ::1) cannot be shown as
//! itself (the sandbox would route the answer to its own loopback), so it
//! appears as the gateway's address, as pasta does.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::Instant;

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use rustc_hash::FxHashMap;
use weft_vswitch::{DropReason, MacAddr, NetworkId, PortId};

use crate::frames::Plane;
use crate::taps::IO_LOOP_BOUND;
use crate::tcp::TcpFlows;
use crate::tokens::{Source, Tokens};

/// Connections accepted per published TCP port per wake-up.
const ACCEPT_BOUND: usize = 64;

/// Largest datagram a published UDP port reads.
const DATAGRAM_MAX: usize = 65536;

/// The transport of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum L4Proto {
    /// TCP connections.
    Tcp,
    /// UDP datagrams.
    Udp,
}

impl L4Proto {
    /// `tcp` or `udp`.
    pub const fn as_str(self) -> &'static str {
        match self {
            L4Proto::Tcp => "tcp",
            L4Proto::Udp => "udp",
        }
    }
}

/// Where a published port leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishTarget {
    /// The sandbox's network.
    pub network: NetworkId,
    /// The sandbox's switch port.
    pub port: PortId,
    /// The sandbox interface's MAC.
    pub mac: MacAddr,
    /// The sandbox's address and port.
    pub addr: SocketAddr,
}

pub use crate::tokens::PublishId;

/// Why a host port cannot be published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Another socket holds it.
    #[error("host port {addr}/{proto} is already in use", proto = proto.as_str())]
    InUse {
        /// The address and port.
        addr: SocketAddr,
        /// The transport.
        proto: L4Proto,
    },
    /// Privileged port, daemon without the right to bind it.
    #[error(
        "host port {addr}/{proto} is privileged: this daemon may bind ports from {start} up \
         (net.ipv4.ip_unprivileged_port_start); choose a higher host port",
        proto = proto.as_str()
    )]
    Privileged {
        /// The address and port.
        addr: SocketAddr,
        /// The transport.
        proto: L4Proto,
        /// The first port this daemon may bind.
        start: u16,
    },
    /// The host has no such address.
    #[error("host address {0} is not an address of this host")]
    NoSuchAddress(IpAddr),
    /// Anything else the kernel said.
    #[error("cannot bind host port {addr}/{proto}", proto = proto.as_str())]
    Bind {
        /// The address and port.
        addr: SocketAddr,
        /// The transport.
        proto: L4Proto,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// A bound, non-blocking host socket of a published port.
#[derive(Debug)]
pub enum HostListener {
    /// A listening TCP socket.
    Tcp(std::net::TcpListener),
    /// A bound UDP socket.
    Udp(std::net::UdpSocket),
}

impl HostListener {
    /// Bind `addr` for `proto` (TCP listens at once), non-blocking.
    ///
    /// # Errors
    ///
    /// [`PublishError`] saying what to change.
    pub fn bind(proto: L4Proto, addr: SocketAddr) -> Result<HostListener, PublishError> {
        let result = match (proto, addr) {
            (L4Proto::Tcp, SocketAddr::V4(_)) => {
                std::net::TcpListener::bind(addr).map(HostListener::Tcp)
            }
            (L4Proto::Udp, SocketAddr::V4(_)) => {
                std::net::UdpSocket::bind(addr).map(HostListener::Udp)
            }
            (_, SocketAddr::V6(v6)) => bind_v6_only(proto, v6),
        };
        let listener = result.map_err(|source| match source.raw_os_error() {
            Some(libc::EADDRINUSE) => PublishError::InUse { addr, proto },
            Some(libc::EACCES) => PublishError::Privileged {
                addr,
                proto,
                start: unprivileged_port_start(),
            },
            Some(libc::EADDRNOTAVAIL) => PublishError::NoSuchAddress(addr.ip()),
            _ => PublishError::Bind {
                addr,
                proto,
                source,
            },
        })?;
        let nonblocking = match &listener {
            HostListener::Tcp(l) => l.set_nonblocking(true),
            HostListener::Udp(s) => s.set_nonblocking(true),
        };
        nonblocking.map_err(|source| PublishError::Bind {
            addr,
            proto,
            source,
        })?;
        Ok(listener)
    }

    /// The bound address (with the port the kernel chose for port 0).
    ///
    /// # Errors
    ///
    /// What `getsockname` says.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            HostListener::Tcp(l) => l.local_addr(),
            HostListener::Udp(s) => s.local_addr(),
        }
    }

    fn raw_fd(&self) -> std::os::fd::RawFd {
        match self {
            HostListener::Tcp(l) => l.as_raw_fd(),
            HostListener::Udp(s) => s.as_raw_fd(),
        }
    }
}

/// Bind an IPv6 socket with `IPV6_V6ONLY`: `[::]:P` then takes only IPv6
/// clients and leaves `0.0.0.0:P` to the IPv4 socket of the same mapping
/// (dual-stack publishing binds both; without the option the IPv6 bind
/// would clash with it, or take IPv4 clients as v4-mapped addresses).
fn bind_v6_only(proto: L4Proto, addr: std::net::SocketAddrV6) -> io::Result<HostListener> {
    use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn6};
    let kind = match proto {
        L4Proto::Tcp => SockType::Stream,
        L4Proto::Udp => SockType::Datagram,
    };
    let fd = socket::socket(AddressFamily::Inet6, kind, SockFlag::SOCK_CLOEXEC, None)?;
    socket::setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
    if proto == L4Proto::Tcp {
        // As std's TcpListener::bind: a port in TIME_WAIT can be taken.
        socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    }
    socket::bind(fd.as_raw_fd(), &SockaddrIn6::from(addr))?;
    Ok(match proto {
        L4Proto::Tcp => {
            socket::listen(&fd, socket::Backlog::MAXCONN)?;
            HostListener::Tcp(std::net::TcpListener::from(fd))
        }
        L4Proto::Udp => HostListener::Udp(std::net::UdpSocket::from(fd)),
    })
}

/// `net.ipv4.ip_unprivileged_port_start` of the daemon's namespace (1024
/// when it cannot be read).
pub fn unprivileged_port_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1024)
}

/// What one published port carried, since it was published.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PublishCounters {
    /// TCP connections accepted and relayed into the sandbox.
    pub connections: u64,
    /// TCP connections accepted and closed at once: the relay was full
    /// (its shares, its memory) or the network had gone.
    pub refused: u64,
    /// UDP datagrams that entered the sandbox.
    pub datagrams: u64,
}

/// One published port's figures: its socket's address and protocol, the
/// switch port it leads to, and its counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishedFigures {
    /// The published port.
    pub id: PublishId,
    /// Its transport.
    pub proto: L4Proto,
    /// Its host socket's address.
    pub host: Option<SocketAddr>,
    /// What it carried.
    pub counters: PublishCounters,
}

/// A published port's host socket and where it leads.
#[derive(Debug)]
struct Published {
    listener: HostListener,
    target: PublishTarget,
    token: Token,
    counters: PublishCounters,
}

/// The published ports' sockets in the event loop.
#[derive(Debug, Default)]
pub struct PublishedPorts {
    ports: FxHashMap<PublishId, Published>,
}

/// What the published ports' readiness needs: the frame plane (switch,
/// services, TAP counters), the relay's sockets, and the poll registry.
#[derive(Debug)]
pub struct Context<'a> {
    /// The switch and the gateway services.
    pub plane: &'a mut Plane,
    /// The TCP relay's host sockets.
    pub tcp: &'a mut TcpFlows,
    /// The poll registry.
    pub registry: &'a Registry,
    /// The token table.
    pub tokens: &'a mut Tokens,
}

impl PublishedPorts {
    /// Poll `listener` for `target`; false (and the socket closed) when
    /// epoll would not take it.
    pub fn publish(
        &mut self,
        registry: &Registry,
        tokens: &mut Tokens,
        id: PublishId,
        listener: HostListener,
        target: PublishTarget,
    ) -> Option<Token> {
        let token = tokens.insert(Source::Published(id));
        let raw = listener.raw_fd();
        if let Err(e) = registry.register(&mut SourceFd(&raw), token, Interest::READABLE) {
            tracing::error!(error = %e, "data path: register published port");
            tokens.remove(token);
            return None;
        }
        self.ports.insert(
            id,
            Published {
                listener,
                target,
                token,
                counters: PublishCounters::default(),
            },
        );
        Some(token)
    }

    /// Close a published port.
    pub fn unpublish(&mut self, registry: &Registry, tokens: &mut Tokens, id: PublishId) {
        if let Some(published) = self.ports.remove(&id) {
            let _ = registry.deregister(&mut SourceFd(&published.listener.raw_fd()));
            tokens.remove(published.token);
        }
    }

    /// Close every published port that leads to switch port `port`.
    pub fn unpublish_port(&mut self, registry: &Registry, tokens: &mut Tokens, port: PortId) {
        let ids: Vec<PublishId> = self
            .ports
            .iter()
            .filter(|(_, p)| p.target.port == port)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.unpublish(registry, tokens, id);
        }
    }

    /// Answer a client of a published UDP port from that port's socket.
    pub fn reply_udp(&self, id: PublishId, client: SocketAddr, data: &[u8]) {
        if let Some(Published {
            listener: HostListener::Udp(socket),
            ..
        }) = self.ports.get(&id)
        {
            if let Err(e) = socket.send_to(data, client) {
                tracing::debug!(%client, error = %e, "published UDP reply");
            }
        }
    }

    /// A published port's socket is readable: accept connections, or take
    /// datagrams, bounded per wake-up. True when drained, false when the
    /// bound stopped it.
    pub fn ready(&mut self, id: PublishId, cx: Context<'_>) -> bool {
        let Some(published) = self.ports.get_mut(&id) else {
            return true;
        };
        let target = published.target;
        let counters = &mut published.counters;
        match &published.listener {
            HostListener::Tcp(listener) => accept_tcp(listener, target, counters, cx),
            HostListener::Udp(socket) => receive_udp(socket, id, target, counters, cx.plane),
        }
    }

    /// Every published port's figures.
    pub fn figures(&self) -> Vec<PublishedFigures> {
        self.ports
            .iter()
            .map(|(id, p)| {
                let proto = match p.listener {
                    HostListener::Tcp(_) => L4Proto::Tcp,
                    HostListener::Udp(_) => L4Proto::Udp,
                };
                PublishedFigures {
                    id: *id,
                    proto,
                    host: p.listener.local_addr().ok(),
                    counters: p.counters,
                }
            })
            .collect()
    }
}

/// Accept connections on a published TCP port and relay each into the
/// sandbox from the client's own address.
fn accept_tcp(
    listener: &std::net::TcpListener,
    target: PublishTarget,
    counters: &mut PublishCounters,
    cx: Context<'_>,
) -> bool {
    let mut accepted = Vec::new();
    let mut drained = false;
    for _ in 0..ACCEPT_BOUND {
        match listener.accept() {
            Ok((stream, client)) => accepted.push((stream, client)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                drained = true;
                break;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::debug!(error = %e, "published port accept");
                drained = true;
                break;
            }
        }
    }
    let Context {
        plane,
        tcp,
        registry,
        tokens,
    } = cx;
    for (stream, client) in accepted {
        let now = Instant::now();
        let Some(gateway) = plane.switch.gateway_config(target.network) else {
            counters.refused += 1;
            continue;
        };
        let flow = plane.services.accept_published_tcp(
            now,
            (target.network, gateway),
            target.addr,
            target.mac,
            client,
        );
        let Some(flow) = flow else {
            tracing::debug!(%client, "published port: connection refused (relay full)");
            counters.refused += 1;
            continue;
        };
        if stream.set_nonblocking(true).is_err() {
            plane.services.tcp().host_failed(now, flow);
            counters.refused += 1;
            continue;
        }
        counters.connections += 1;
        let stream = mio::net::TcpStream::from_std(stream);
        tcp.add(plane.services.tcp(), registry, tokens, flow, stream, true);
    }
    drained
}

/// Datagrams on a published UDP port: each enters the sandbox from the
/// client's address and port.
fn receive_udp(
    socket: &std::net::UdpSocket,
    id: PublishId,
    target: PublishTarget,
    counters: &mut PublishCounters,
    plane: &mut Plane,
) -> bool {
    let mut buf = vec![0u8; DATAGRAM_MAX];
    for _ in 0..IO_LOOP_BOUND {
        match socket.recv_from(&mut buf) {
            Ok((len, client)) => {
                let result = match plane.switch.gateway_config(target.network) {
                    Some(gateway) => plane.services.published_udp(
                        Instant::now(),
                        id.0,
                        (target.network, gateway),
                        (target.port, target.mac),
                        target.addr,
                        client,
                        &buf[..len],
                    ),
                    None => Err(DropReason::UnknownPort),
                };
                match result {
                    Ok(()) => counters.datagrams += 1,
                    Err(reason) => plane.taps.count_drop(target.port, reason),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::debug!(error = %e, "published UDP receive");
                return true;
            }
        }
    }
    false
}
