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
//! ([`PublishTarget`]), through [`super::datapath::Datapath::publish`]:
//!
//! - TCP: the data path accepts each connection and opens one from the
//!   client's own address and port to the sandbox through the network's
//!   userspace TCP stack ([`crate::tcp_nat`]), then relays both ways with
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

use crate::switch::{NetworkId, PortId};
use crate::wire::ethernet::MacAddr;

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

/// The id of a published port in the data path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublishId(pub u32);

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
        let result = match proto {
            L4Proto::Tcp => std::net::TcpListener::bind(addr).map(HostListener::Tcp),
            L4Proto::Udp => std::net::UdpSocket::bind(addr).map(HostListener::Udp),
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

    pub(crate) fn raw_fd(&self) -> std::os::fd::RawFd {
        match self {
            HostListener::Tcp(l) => l.as_raw_fd(),
            HostListener::Udp(s) => s.as_raw_fd(),
        }
    }
}

/// `net.ipv4.ip_unprivileged_port_start` of the daemon's namespace (1024
/// when it cannot be read).
pub fn unprivileged_port_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1024)
}
