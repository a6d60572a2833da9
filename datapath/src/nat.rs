//! The NAT's host sockets: one connected UDP or unprivileged ICMP echo
//! ("ping") socket per flow, opened, written, read and closed as the NAT
//! core asks.
//!
//! # Theory of operation
//!
//! The core (`weft_services::nat`) translates sandbox datagrams and pings
//! into [`NatAction`]s: open a socket for a new flow, send a payload, close
//! an idle flow, or answer a client of a published UDP port (from that
//! port's socket, which [`crate::published`] owns). What a flow's socket
//! receives goes back to the core ([`NatSockets::read`]), which builds the
//! frames for the sandbox. A refused UDP send or receive (`ECONNREFUSED`,
//! from an ICMP port unreachable) is reported so the sandbox gets its own
//! ICMP error.
//!
//! Ping sockets need the daemon's group in `net.ipv4.ping_group_range`;
//! where it is not, the first refused echo is logged once as a warning.
//! A socket that cannot be opened or registered (the daemon out of file
//! descriptors, which the core's fd budget is there to prevent) ends its
//! flow at once: the core counts it and tells a UDP sender with ICMP
//! administratively prohibited. One receive buffer serves every read.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Instant;

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use nix::sys::socket::{
    connect, recv, send, socket, AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType,
    SockaddrStorage,
};
use rustc_hash::FxHashMap;
use weft_services::nat::{FlowId, NatAction, NatProto};
use weft_services::GatewayServices;

use crate::published::{PublishId, PublishedPorts};
use crate::taps::IO_LOOP_BOUND;
use crate::tokens::{Source, Tokens};

/// Largest datagram a NAT flow socket reads.
const DATAGRAM_MAX: usize = 65536;

/// A NAT flow's host socket.
#[derive(Debug)]
struct NatSocket {
    fd: OwnedFd,
    token: Token,
}

impl NatSocket {
    fn open(proto: NatProto, remote: SocketAddr) -> io::Result<OwnedFd> {
        let family = if remote.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        let protocol = match (proto, remote.is_ipv4()) {
            (NatProto::Udp, _) => SockProtocol::Udp,
            (NatProto::IcmpEcho, true) => SockProtocol::Icmp,
            (NatProto::IcmpEcho, false) => SockProtocol::IcmpV6,
        };
        let fd = socket(
            family,
            SockType::Datagram,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            protocol,
        )?;
        connect(fd.as_raw_fd(), &SockaddrStorage::from(remote))?;
        Ok(fd)
    }

    fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// See the module header.
#[derive(Debug, Default)]
pub struct NatSockets {
    sockets: FxHashMap<FlowId, NatSocket>,
    ping_refused_logged: bool,
    /// The receive buffer, reused by every read.
    buf: Vec<u8>,
}

impl NatSockets {
    /// Carry out one socket action of the NAT.
    pub fn act(
        &mut self,
        services: &mut GatewayServices,
        (registry, tokens): (&Registry, &mut Tokens),
        published: &PublishedPorts,
        action: NatAction,
    ) {
        match action {
            NatAction::Open {
                flow,
                proto,
                remote,
            } => match NatSocket::open(proto, remote) {
                Ok(fd) => {
                    let token = tokens.insert(Source::Nat(flow));
                    let raw = fd.as_raw_fd();
                    if registry
                        .register(&mut SourceFd(&raw), token, Interest::READABLE)
                        .is_ok()
                    {
                        self.sockets.insert(flow, NatSocket { fd, token });
                    } else {
                        tokens.remove(token);
                        services.nat().open_failed(flow);
                    }
                }
                Err(e) => {
                    if proto == NatProto::IcmpEcho && !self.ping_refused_logged {
                        self.ping_refused_logged = true;
                        tracing::warn!(error = %e, "ICMP echo cannot leave: ping sockets are not allowed for this daemon's group (net.ipv4.ping_group_range)");
                    } else {
                        tracing::debug!(%remote, error = %e, "NAT socket");
                    }
                    // Out of fds (or refused by the kernel): the flow ends
                    // now, counted, and a UDP sender is told.
                    services.nat().open_failed(flow);
                }
            },
            NatAction::Send { flow, data } => {
                let Some(socket) = self.sockets.get(&flow) else {
                    return;
                };
                if let Err(e) = send(socket.raw_fd(), &data, MsgFlags::empty()) {
                    if e == nix::errno::Errno::ECONNREFUSED {
                        services.handle_nat_refused(Instant::now(), flow);
                    } else {
                        tracing::debug!(flow = flow.0, error = %e, "NAT send");
                    }
                }
            }
            NatAction::Close { flow } => {
                if let Some(socket) = self.sockets.remove(&flow) {
                    let _ = registry.deregister(&mut SourceFd(&socket.raw_fd()));
                    tokens.remove(socket.token);
                }
            }
            NatAction::Reply {
                listener,
                client,
                data,
            } => published.reply_udp(PublishId(listener), client, &data),
        }
    }

    /// Read a flow's socket, bounded; true when it is drained (or gone),
    /// false when the bound stopped the reading.
    pub fn read(&mut self, services: &mut GatewayServices, flow: FlowId) -> bool {
        // One buffer for every read, made on first use.
        let mut buf = std::mem::take(&mut self.buf);
        buf.resize(DATAGRAM_MAX, 0);
        let drained = self.read_into(services, flow, &mut buf);
        self.buf = buf;
        drained
    }

    fn read_into(&mut self, services: &mut GatewayServices, flow: FlowId, buf: &mut [u8]) -> bool {
        for _ in 0..IO_LOOP_BOUND {
            let Some(socket) = self.sockets.get(&flow) else {
                return true;
            };
            match recv(socket.raw_fd(), buf, MsgFlags::empty()) {
                Ok(len) => services.handle_nat_reply(Instant::now(), flow, &buf[..len]),
                Err(nix::errno::Errno::EAGAIN) => return true,
                Err(nix::errno::Errno::EINTR) => {}
                Err(nix::errno::Errno::ECONNREFUSED) => {
                    services.handle_nat_refused(Instant::now(), flow);
                }
                Err(e) => {
                    tracing::debug!(flow = flow.0, error = %e, "NAT receive");
                    return true;
                }
            }
        }
        false
    }
}
