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
//! ICMP echo leaves through a ping socket (`SOCK_DGRAM`, `IPPROTO_ICMP`)
//! where the daemon's group is in `net.ipv4.ping_group_range` (it is not
//! by default in a new network namespace, for root neither). Otherwise a
//! daemon with `CAP_NET_RAW` uses a raw ICMP socket per flow, connected to
//! the remote, and does by hand what the kernel does for a ping socket:
//! it writes an echo identifier of its own (derived from the flow id, so
//! two sandboxes pinging one remote stay apart), the ICMPv4 checksum (the
//! kernel computes ICMPv6's), and on receive strips the IPv4 header and
//! keeps only echo replies with that identifier (a raw socket sees every
//! ICMP message from its remote). With neither, [`icmp_echo_support`]
//! says so, the daemon warns once at start with the sysctl that fixes it,
//! and `network inspect` shows it; each refused echo is only a debug line.
//!
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
    /// A raw ICMP socket's echo identifier (None: UDP or a ping socket).
    raw: Option<RawEcho>,
}

/// What a raw ICMP socket of one flow needs (see the module header).
#[derive(Debug, Clone, Copy)]
struct RawEcho {
    id: u16,
    v4: bool,
}

/// How ICMP echo from sandboxes can leave this daemon's host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IcmpEchoSupport {
    /// Ping sockets (`net.ipv4.ping_group_range` includes the daemon).
    PingSocket,
    /// Raw ICMP sockets (`CAP_NET_RAW`).
    RawSocket,
    /// Neither: echo requests to the outside are dropped.
    Unavailable,
}

impl IcmpEchoSupport {
    /// How `network inspect` and `weft info` show it.
    pub const fn describe(self) -> &'static str {
        match self {
            IcmpEchoSupport::PingSocket => "ping socket",
            IcmpEchoSupport::RawSocket => "raw socket (CAP_NET_RAW)",
            IcmpEchoSupport::Unavailable => {
                "unavailable: the daemon's group is not in net.ipv4.ping_group_range and it has no CAP_NET_RAW; \
                 fix: sysctl -w net.ipv4.ping_group_range='0 2147483647' (in the daemon's network namespace)"
            }
        }
    }
}

/// Probe (IPv4) which socket ICMP echo would leave through now: two
/// `socket()` calls, nothing sent. The sysctl may change while the daemon
/// runs; every flow tries a ping socket first anyway.
pub fn icmp_echo_support() -> IcmpEchoSupport {
    let open = |kind| {
        socket(
            AddressFamily::Inet,
            kind,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::Icmp,
        )
        .is_ok()
    };
    if open(SockType::Datagram) {
        IcmpEchoSupport::PingSocket
    } else if open(SockType::Raw) {
        IcmpEchoSupport::RawSocket
    } else {
        IcmpEchoSupport::Unavailable
    }
}

/// ICMPv4's type of an echo reply, and where the identifier sits.
const ECHO_REPLY_V4: u8 = 0;
/// ICMPv6's type of an echo reply.
const ECHO_REPLY_V6: u8 = 129;

impl NatSocket {
    /// Open a flow's socket: UDP, or a ping socket, or (refused) a raw
    /// ICMP socket with an identifier of its own.
    fn open(
        proto: NatProto,
        remote: SocketAddr,
        flow: FlowId,
    ) -> io::Result<(OwnedFd, Option<RawEcho>)> {
        let v4 = remote.is_ipv4();
        let family = if v4 {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        let protocol = match (proto, v4) {
            (NatProto::Udp, _) => SockProtocol::Udp,
            (NatProto::IcmpEcho, true) => SockProtocol::Icmp,
            (NatProto::IcmpEcho, false) => SockProtocol::IcmpV6,
        };
        let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
        let (fd, raw) = match socket(family, SockType::Datagram, flags, protocol) {
            Ok(fd) => (fd, None),
            // EACCES: not in ping_group_range; a raw socket may do.
            Err(nix::errno::Errno::EACCES) if proto == NatProto::IcmpEcho => {
                let fd = socket(family, SockType::Raw, flags, protocol)?;
                let [a, b, ..] = flow.0.to_le_bytes();
                (
                    fd,
                    Some(RawEcho {
                        id: u16::from_le_bytes([a, b]),
                        v4,
                    }),
                )
            }
            Err(e) => return Err(e.into()),
        };
        // A raw socket's remote is an address only (port 0).
        let remote = if raw.is_some() {
            SocketAddr::new(remote.ip(), 0)
        } else {
            remote
        };
        connect(fd.as_raw_fd(), &SockaddrStorage::from(remote))?;
        Ok((fd, raw))
    }

    fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl RawEcho {
    /// The echo request a ping socket would have completed: our
    /// identifier, and for ICMPv4 the checksum (RFC 792).
    fn complete(self, data: &mut [u8]) {
        if data.len() < 8 {
            return;
        }
        data[4..6].copy_from_slice(&self.id.to_be_bytes());
        data[2..4].fill(0);
        if self.v4 {
            let sum = internet_checksum(data);
            data[2..4].copy_from_slice(&sum.to_be_bytes());
        }
    }

    /// The ICMP message of what the raw socket received when it is an
    /// echo reply to this flow (IPv4's header stripped); None otherwise.
    fn reply(self, received: &[u8]) -> Option<&[u8]> {
        let message = if self.v4 {
            let ihl = usize::from(received.first()? & 0x0f) * 4;
            received.get(ihl..)?
        } else {
            received
        };
        let reply_type = if self.v4 {
            ECHO_REPLY_V4
        } else {
            ECHO_REPLY_V6
        };
        (message.len() >= 8 && message[0] == reply_type && message[4..6] == self.id.to_be_bytes())
            .then_some(message)
    }
}

/// The Internet checksum (RFC 1071) of `data`.
fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for pair in data.chunks(2) {
        let word = match pair {
            [a, b] => u16::from_be_bytes([*a, *b]),
            [a] => u16::from_be_bytes([*a, 0]),
            _ => 0,
        };
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).unwrap_or(0xffff)
}

/// See the module header.
#[derive(Debug, Default)]
pub struct NatSockets {
    sockets: FxHashMap<FlowId, NatSocket>,
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
            } => match NatSocket::open(proto, remote, flow) {
                Ok((fd, echo)) => {
                    let token = tokens.insert(Source::Nat(flow));
                    let raw = fd.as_raw_fd();
                    if registry
                        .register(&mut SourceFd(&raw), token, Interest::READABLE)
                        .is_ok()
                    {
                        self.sockets.insert(
                            flow,
                            NatSocket {
                                fd,
                                token,
                                raw: echo,
                            },
                        );
                    } else {
                        tokens.remove(token);
                        services.nat().open_failed(flow);
                    }
                }
                Err(e) => {
                    // ICMP echo without ping nor raw sockets was said once
                    // at start (icmp_echo_support). Out of fds (or refused
                    // by the kernel): the flow ends now, counted, and a UDP
                    // sender is told.
                    tracing::debug!(%remote, ?proto, error = %e, "NAT socket");
                    services.nat().open_failed(flow);
                }
            },
            NatAction::Send { flow, data } => {
                let Some(socket) = self.sockets.get(&flow) else {
                    return;
                };
                let mut data = data;
                if let Some(echo) = socket.raw {
                    echo.complete(&mut data);
                }
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
            let raw = socket.raw;
            match recv(socket.raw_fd(), buf, MsgFlags::empty()) {
                Ok(len) => match raw {
                    None => services.handle_nat_reply(Instant::now(), flow, &buf[..len]),
                    Some(echo) => {
                        if let Some(reply) = echo.reply(&buf[..len]) {
                            services.handle_nat_reply(Instant::now(), flow, reply);
                        }
                    }
                },
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_echo_requests_get_our_id_and_a_valid_checksum() {
        // An echo request as the NAT core hands it to a ping socket.
        let mut data = vec![8, 0, 0, 0, 0, 0, 0, 7, b'h', b'i', b'!'];
        let echo = RawEcho {
            id: 0x1234,
            v4: true,
        };
        echo.complete(&mut data);
        assert_eq!(&data[4..6], &[0x12, 0x34]);
        // A correct checksum sums, with itself, to 0xffff: complement 0.
        assert_eq!(internet_checksum(&data), 0);
        // RFC 1071's example, as 16-bit words 0001 f203 f4f5 f6f7.
        assert_eq!(
            internet_checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            !0xddf2
        );
    }

    #[test]
    fn raw_replies_are_kept_only_for_this_flow() {
        let echo = RawEcho {
            id: 0x1234,
            v4: true,
        };
        let mut ip = vec![0x45u8];
        ip.resize(20, 0);
        let reply = [0u8, 0, 0xaa, 0xbb, 0x12, 0x34, 0, 7, b'x'];
        let other = [0u8, 0, 0xaa, 0xbb, 0x99, 0x99, 0, 7];
        let request = [8u8, 0, 0xaa, 0xbb, 0x12, 0x34, 0, 7];
        let framed = |icmp: &[u8]| [ip.as_slice(), icmp].concat();
        assert_eq!(echo.reply(&framed(&reply)), Some(&reply[..]));
        assert_eq!(echo.reply(&framed(&other)), None);
        assert_eq!(echo.reply(&framed(&request)), None);
        assert_eq!(echo.reply(&[0x45, 0]), None);
        let v6 = RawEcho {
            id: 0x1234,
            v4: false,
        };
        let reply6 = [129u8, 0, 0, 0, 0x12, 0x34, 0, 1];
        assert_eq!(v6.reply(&reply6), Some(&reply6[..]));
    }
}
