//! QUIC over UDP: the encrypted [`Transport`], around the sans-IO
//! [`QuicTunnel`].
//!
//! # Theory of operation
//!
//! One UDP socket (`--quic-port`, the same on every host) carries every
//! QUIC connection, incoming and outgoing; the data path polls it like the
//! VXLAN socket and calls this driver's timers ([`Transport::poll_timeout`]).
//!
//! Sending. A frame for a peer is cut into segments that each fit one QUIC
//! datagram ([`weft_vswitch::gso::segment_into`]): a GSO frame is cut at
//! its own segment size, or smaller when the path's largest datagram
//! shrank below it (PMTUD found a smaller MTU), so TCP in the sandboxes
//! goes on at a smaller size instead of losing every full segment. Each
//! piece is built behind its VXLAN header in a buffer of its own (a small
//! allocation the allocator recycles from the datagrams quinn already
//! sent: a shared arena was tried, and every arena still referenced by a
//! queued datagram cost a fresh 256 KiB mapping and its page faults) and
//! handed to the core. The core's packets leave at [`Transport::flush`] with UDP GSO
//! when quinn gathers several (it does, for runs of full datagrams).
//!
//! Receiving. The socket has UDP GRO on; each datagram of a run goes to
//! the core, and the frames it opens come out one per
//! [`Transport::recv`], as the data path expects from any transport; the
//! `from` of each is the peer's address as the connection knows it now
//! (after a migration, the new one).
//!
//! Counters: [`QuicStatus`], refreshed about once a second from the
//! connections and shared with the control plane for `weft peers` and
//! `network inspect`.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use nix::sys::socket::{sendmsg, setsockopt, sockopt, ControlMessage, MsgFlags, SockaddrStorage};
use serde::Serialize;
use weft_vswitch::gso;
use weft_vswitch::wire::vnet::{self, VnetHeader, VNET_HDR_LEN};
use weft_vswitch::{DropReason, Vni};

use crate::quic::{QuicConfig, QuicCounters, QuicIdentity, QuicPeerStats, QuicTunnel, Sent};
use crate::transport::{Received, Transport, TunnelPeer};
use crate::vxlan;

/// Largest UDP GSO send: 44 full datagrams stay under the kernel's 64 KiB.
const GSO_MAX_DATAGRAMS: usize = 44;

/// Transmits one flush may make (a bound; the rest leave at the next).
const FLUSH_BOUND: usize = 4096;

/// How often the shared counters are refreshed.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// Bytes of kernel buffer for the socket.
const SOCKET_BUFFER: usize = 8 << 20;

/// The QUIC tunnel's counters, as the control plane reads them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct QuicStatus {
    /// The endpoint's counters.
    pub counters: QuicCounters,
    /// One entry per connection.
    pub peers: Vec<QuicPeerStats>,
}

/// The shared [`QuicStatus`].
pub type SharedQuicStatus = Arc<Mutex<QuicStatus>>;

/// See the module header.
pub struct QuicUdp {
    socket: std::net::UdpSocket,
    port: u16,
    tunnel: QuicTunnel,
    /// A raw receive (a GRO run of datagrams).
    rx: Vec<u8>,
    /// A transmit of the core.
    tx: Vec<u8>,
    /// Whether UDP GSO sends work here.
    gso: bool,
    /// The largest datagram before a connection says (from the underlay's
    /// MTU).
    default_max: usize,
    status: SharedQuicStatus,
    status_due: Instant,
}

impl std::fmt::Debug for QuicUdp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicUdp")
            .field("port", &self.port)
            .field("tunnel", &self.tunnel)
            .finish_non_exhaustive()
    }
}

impl QuicUdp {
    /// QUIC over `socket` (bound to `--quic-port`), as `identity`.
    ///
    /// # Errors
    ///
    /// The socket has no address or cannot be made non-blocking, or the TLS
    /// configuration fails.
    pub fn new(
        socket: std::net::UdpSocket,
        identity: &QuicIdentity,
        underlay_mtu: u16,
        cubic: bool,
    ) -> io::Result<QuicUdp> {
        let local = socket.local_addr()?;
        socket.set_nonblocking(true)?;
        for (option, size) in [(true, SOCKET_BUFFER), (false, SOCKET_BUFFER)] {
            let done = if option {
                setsockopt(&socket, sockopt::RcvBufForce, &size)
                    .or_else(|_| setsockopt(&socket, sockopt::RcvBuf, &size))
            } else {
                setsockopt(&socket, sockopt::SndBufForce, &size)
                    .or_else(|_| setsockopt(&socket, sockopt::SndBuf, &size))
            };
            if let Err(e) = done {
                tracing::debug!(error = %e, "quic tunnel socket buffer");
            }
        }
        if let Err(e) = setsockopt(&socket, sockopt::UdpGroSegment, &true) {
            tracing::debug!(error = %e, "quic tunnel: no UDP GRO");
        }
        // PMTUD needs datagrams that are never fragmented on the way.
        set_dont_fragment(&socket, local.is_ipv6());
        let ip_udp = if local.is_ipv6() { 48 } else { 28 };
        let udp_payload = underlay_mtu.saturating_sub(ip_udp);
        let tunnel = QuicTunnel::new(identity, QuicConfig { udp_payload, cubic })
            .map_err(io::Error::other)?;
        Ok(QuicUdp {
            socket,
            port: local.port(),
            tunnel,
            rx: vec![0; 65_536],
            tx: Vec::with_capacity(65_536),
            gso: true,
            default_max: usize::from(udp_payload)
                .saturating_sub(crate::quic::QUIC_DATAGRAM_OVERHEAD),
            status: Arc::default(),
            status_due: Instant::now(),
        })
    }

    /// The counters this transport keeps up to date, for the control plane.
    pub fn status(&self) -> SharedQuicStatus {
        Arc::clone(&self.status)
    }

    fn refresh_status(&mut self, now: Instant) {
        self.status_due = now + STATUS_INTERVAL;
        let status = QuicStatus {
            counters: self.tunnel.counters(),
            peers: self.tunnel.peers(),
        };
        *self.status.lock().unwrap_or_else(PoisonError::into_inner) = status;
    }

    /// Send one transmit of the core; the datagrams it held.
    fn send_transmit(&mut self, transmit: crate::quic::Transmit) -> u64 {
        let data = &self.tx[..transmit.size.min(self.tx.len())];
        let address = SockaddrStorage::from(transmit.destination);
        let fd = self.socket.as_raw_fd();
        let count = data.len().div_ceil(transmit.segment.max(1));
        let gso_size = u16::try_from(transmit.segment).unwrap_or(u16::MAX);
        let segments = [ControlMessage::UdpGsoSegments(&gso_size)];
        let control: &[_] = if count > 1 { &segments } else { &[] };
        let iov = [io::IoSlice::new(data)];
        match sendmsg(fd, &iov, control, MsgFlags::empty(), Some(&address)) {
            Ok(_) => count as u64,
            Err(e @ (nix::errno::Errno::EIO | nix::errno::Errno::EINVAL)) if count > 1 => {
                tracing::info!(error = %e, "quic tunnel: no UDP GSO, sending datagrams one by one");
                self.gso = false;
                let mut sent = 0;
                for datagram in data.chunks(transmit.segment.max(1)) {
                    let iov = [io::IoSlice::new(datagram)];
                    if sendmsg(fd, &iov, &[], MsgFlags::empty(), Some(&address)).is_ok() {
                        sent += 1;
                    }
                }
                sent
            }
            Err(e) => {
                tracing::trace!(to = %transmit.destination, error = %e, "quic tunnel send");
                0
            }
        }
    }
}

impl Transport for QuicUdp {
    fn raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    fn peer_port(&self) -> u16 {
        self.port
    }

    fn send_frame(&mut self, peer: &TunnelPeer, frame_with_header: &[u8]) -> u64 {
        let Some((header, frame)) = frame_with_header.split_at_checked(VNET_HDR_LEN) else {
            return 0;
        };
        let Ok(parsed) = VnetHeader::new_checked(header) else {
            return 0;
        };
        let to = SocketAddr::new(peer.addr.ip(), self.port);
        let max = self.tunnel.max_datagram(to).unwrap_or(self.default_max);
        let max_inner = max.saturating_sub(vxlan::HEADER_LEN);
        // A GSO frame is cut to fit the path as it is now; so is a single
        // TCP segment larger than the path (PMTUD found it shrank below the
        // sandbox's MTU), as if it were a GSO frame of one segment.
        let mut fitted = [0u8; VNET_HDR_LEN];
        fitted.copy_from_slice(header);
        if !parsed.is_gso() && frame.len() > max_inner {
            if let Some(as_gso) = tcp_as_gso(frame) {
                fitted = as_gso;
            }
        }
        let Ok(vnet) = VnetHeader::new_checked(fitted) else {
            return 0;
        };
        if vnet.is_gso() {
            if let Some(size) = fitting_gso_size(&vnet, frame, max_inner) {
                fitted[vnet::field::GSO_SIZE].copy_from_slice(&size.to_ne_bytes());
            }
        }
        let Ok(vnet) = VnetHeader::new_checked(&fitted[..]) else {
            return 0;
        };
        let now = Instant::now();
        let mut sink = Sink {
            building: Vec::new(),
            tunnel: &mut self.tunnel,
            peer,
            to,
            now,
            open: None,
        };
        let result = gso::segment_into(&vnet, frame, &mut sink);
        sink.finish();
        if result.is_err() {
            peer.counters.count_drop(DropReason::Malformed);
        }
        // Without a window the queue is sent whole at each flush; a
        // nearly full one goes now, before the next frame would push the
        // oldest datagrams out.
        if self.tunnel.send_buffer_low(to) {
            return self.flush();
        }
        0
    }

    fn flush(&mut self) -> u64 {
        let now = Instant::now();
        let max = if self.gso { GSO_MAX_DATAGRAMS } else { 1 };
        let mut sent = 0;
        let mut tx = std::mem::take(&mut self.tx);
        for _ in 0..FLUSH_BOUND {
            let Some(transmit) = self.tunnel.poll_transmit(now, max, &mut tx) else {
                break;
            };
            self.tx = tx;
            sent += self.send_transmit(transmit);
            tx = std::mem::take(&mut self.tx);
        }
        self.tx = tx;
        sent
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Received> {
        let mut now = Instant::now();
        // Bounded: each round reads one UDP receive (up to 64 datagrams).
        for _ in 0..64 {
            if let Some((from, datagram)) = self.tunnel.poll_received() {
                let len = datagram.len().min(buf.len());
                buf[..len].copy_from_slice(&datagram[..len]);
                return Ok(Received {
                    len,
                    from,
                    segment: len,
                });
            }
            let received = super::udp::receive_gro(&self.socket, &mut self.rx)?;
            let datagrams = self.rx[..received.len].chunks(received.segment.max(1));
            for datagram in datagrams {
                self.tunnel.handle(now, received.from, None, datagram);
            }
            now = Instant::now();
        }
        Err(io::ErrorKind::Interrupted.into())
    }

    fn open<'d>(&self, datagram: &'d [u8]) -> Option<(Vni, &'d [u8])> {
        vxlan::decap(datagram).ok()
    }

    fn encapsulation(&self, peer: &TunnelPeer) -> Vec<u8> {
        vxlan::VxlanHeader { vni: peer.vni }.emit().to_vec()
    }

    fn local_addr(&self) -> Option<SocketAddr> {
        self.socket.local_addr().ok()
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        let tunnel = self.tunnel.poll_timeout();
        // While there are connections, the counters are refreshed too.
        tunnel.map(|at| at.min(self.status_due))
    }

    fn underlay_moved(&mut self, now: Instant) {
        self.tunnel.close_accepted(now);
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.tunnel.handle_timeout(now);
        if now >= self.status_due {
            self.refresh_status(now);
        }
    }
}

/// Segments built behind their VXLAN header, each handed to
/// the core once the next is asked for (or at the end).
struct Sink<'t> {
    /// The datagram being filled.
    building: Vec<u8>,
    tunnel: &'t mut QuicTunnel,
    peer: &'t TunnelPeer,
    to: SocketAddr,
    now: Instant,
    /// The length of the datagram being filled, while one is.
    open: Option<usize>,
}

impl Sink<'_> {
    fn finish(&mut self) {
        let Some(len) = self.open.take() else {
            return;
        };
        let datagram = Bytes::from(std::mem::take(&mut self.building));
        let inner = len - vxlan::HEADER_LEN;
        match self.tunnel.send(self.now, self.to, datagram) {
            Sent::Queued | Sent::Waiting => self.peer.counters.count_tx(inner),
            Sent::Dropped => self.peer.counters.count_drop(DropReason::EgressFailed),
            Sent::TooLarge => {
                tracing::debug!(to = %self.to, len = inner, "quic tunnel: frame larger than the path's datagram, dropped");
                self.peer.counters.count_drop(DropReason::EgressFailed);
            }
        }
    }
}

impl gso::SegmentSink for Sink<'_> {
    fn space(&mut self, len: usize) -> Option<&mut [u8]> {
        self.finish();
        let total = vxlan::HEADER_LEN + len;
        let mut building = Vec::with_capacity(total);
        building.extend_from_slice(&vxlan::encap_header(self.peer.vni));
        building.resize(total, 0);
        self.building = building;
        self.open = Some(total);
        self.building.get_mut(vxlan::HEADER_LEN..total)
    }
}

/// The GSO segment size that makes every segment of `frame` (its headers
/// and one segment's payload) at most `max_inner` bytes, when smaller than
/// the frame's own; None when the frame's size already fits or its headers
/// cannot be read.
fn fitting_gso_size<B: AsRef<[u8]>>(
    vnet: &VnetHeader<B>,
    frame: &[u8],
    max_inner: usize,
) -> Option<u16> {
    let l4 = usize::from(vnet.csum_start());
    // Without the ECN bit (0x80, VIRTIO_NET_HDR_GSO_ECN).
    let l4_header = match vnet.gso_type() & 0x7f {
        vnet::GSO_TCPV4 | vnet::GSO_TCPV6 => usize::from(*frame.get(l4 + 12)? >> 4) * 4,
        vnet::GSO_UDP_L4 => 8,
        _ => return None,
    };
    let headers = l4 + l4_header;
    let fits = max_inner.checked_sub(headers)?;
    let size = usize::from(vnet.gso_size());
    (fits < size && fits > 0).then(|| u16::try_from(fits).unwrap_or(u16::MAX))
}

/// The header of a TCP GSO frame of one segment describing `frame`, a
/// plain IPv4 or IPv6 TCP segment (the segmenter then cuts it like any
/// GSO frame, each piece's checksum computed in full); None for anything
/// else.
fn tcp_as_gso(frame: &[u8]) -> Option<[u8; VNET_HDR_LEN]> {
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let (l4, gso_type) = match ethertype {
        0x0800 if *frame.get(23)? == 6 => {
            (14 + usize::from(frame.get(14)? & 0x0f) * 4, vnet::GSO_TCPV4)
        }
        0x86dd if *frame.get(20)? == 6 => (14 + 40, vnet::GSO_TCPV6),
        _ => return None,
    };
    let headers = l4 + usize::from(*frame.get(l4 + 12)? >> 4) * 4;
    let payload = frame.len().checked_sub(headers).filter(|p| *p > 0)?;
    let mut header = [0u8; VNET_HDR_LEN];
    header[vnet::field::FLAGS] = vnet::FLAG_NEEDS_CSUM;
    header[vnet::field::GSO_TYPE] = gso_type;
    let field = |value: usize| u16::try_from(value).ok().map(u16::to_ne_bytes);
    header[vnet::field::HDR_LEN].copy_from_slice(&field(headers)?);
    header[vnet::field::GSO_SIZE].copy_from_slice(&field(payload)?);
    header[vnet::field::CSUM_START].copy_from_slice(&field(l4)?);
    header[vnet::field::CSUM_OFFSET].copy_from_slice(&field(16)?);
    Some(header)
}

/// Set "don't fragment" (path MTU discovery by probing, as QUIC does it).
fn set_dont_fragment(socket: &std::net::UdpSocket, ipv6: bool) {
    let fd = socket.as_raw_fd();
    let (level, name, value) = if ipv6 {
        (
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_PROBE,
        )
    } else {
        (
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_PROBE,
        )
    };
    // SAFETY: `fd` is the open socket `socket` owns; `value` is a c_int
    // that outlives the call, and its size is passed with it.
    let done = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            std::ptr::from_ref(&value).cast(),
            libc::socklen_t::try_from(size_of::<libc::c_int>()).unwrap_or(4),
        )
    };
    if done != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "quic tunnel: don't-fragment");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_vswitch::wire::vnet;

    fn frame(len: usize, marker: &[u8]) -> Vec<u8> {
        let mut frame = vec![0u8; len];
        frame[..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        frame[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        frame[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
        frame[20..20 + marker.len()].copy_from_slice(marker);
        let mut with_header = vnet::EMPTY.to_vec();
        with_header.extend_from_slice(&frame);
        with_header
    }

    /// Two endpoints on one port (as on every host) of two loopback
    /// addresses.
    fn endpoints(identity: &QuicIdentity) -> (QuicUdp, QuicUdp) {
        let first = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = first.local_addr().unwrap().port();
        let second = std::net::UdpSocket::bind(("127.0.0.2", port)).unwrap();
        (
            QuicUdp::new(first, identity, 1500, false).unwrap(),
            QuicUdp::new(second, identity, 1500, false).unwrap(),
        )
    }

    /// Move datagrams both ways until `rx` opened `want` frames or 5 s
    /// passed; the frames it opened.
    fn exchange(tx: &mut QuicUdp, rx: &mut QuicUdp, want: usize) -> Vec<Vec<u8>> {
        let mut opened = Vec::new();
        let mut buf = vec![0u8; 65_536];
        let deadline = Instant::now() + Duration::from_secs(5);
        while opened.len() < want && Instant::now() < deadline {
            for side in [&mut *tx, &mut *rx] {
                side.flush();
                side.handle_timeout(Instant::now());
            }
            for (is_rx, side) in [(false, &mut *tx), (true, &mut *rx)] {
                for _ in 0..1000 {
                    match side.recv(&mut buf) {
                        Ok(received) => {
                            assert!(is_rx, "frames only go one way here");
                            let (vni, inner) = side.open(&buf[..received.len]).expect("ours");
                            assert_eq!(vni.get(), 4242);
                            opened.push(inner.to_vec());
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => panic!("receive: {e}"),
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        opened
    }

    #[test]
    fn frames_cross_loopback_encrypted_and_open_again() {
        let identity = QuicIdentity::from_secret(b"loopback secret").unwrap();
        let (mut rx, mut tx) = endpoints(&identity);
        let peer = TunnelPeer {
            vni: Vni::new(4242).unwrap(),
            addr: rx.local_addr().unwrap(),
            counters: Arc::default(),
            encrypted: true,
        };
        for _ in 0..3 {
            tx.send_frame(&peer, &frame(1400, b"MARKER"));
        }
        let opened = exchange(&mut tx, &mut rx, 3);
        assert_eq!(opened.len(), 3);
        assert!(opened
            .iter()
            .all(|f| f.len() == 1400 && &f[20..26] == b"MARKER"));
        assert_eq!(peer.counters.snapshot().tx_frames, 3);
        rx.refresh_status(Instant::now());
        let status = rx.status().lock().unwrap().clone();
        assert_eq!(status.peers.len(), 1);
        assert_eq!(status.peers[0].rx_datagrams, 3);
    }

    #[test]
    fn a_gso_frame_larger_than_the_path_is_cut_to_fit() {
        // An IPv4/TCP GSO frame of 3 segments of 1448 bytes (a 1500-byte
        // MTU's MSS): the QUIC path fits 1426-byte frames, so 1372-byte
        // segments.
        let mut frame = vec![0u8; 14 + 20 + 32 + 3 * 1448];
        frame[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        frame[14] = 0x45;
        let ip_len = u16::try_from(frame.len() - 14).unwrap();
        frame[16..18].copy_from_slice(&ip_len.to_be_bytes());
        frame[23] = 6;
        frame[14 + 20 + 12] = 8 << 4;
        let mut header = [0u8; VNET_HDR_LEN];
        header[vnet::field::GSO_TYPE] = vnet::GSO_TCPV4;
        header[vnet::field::GSO_SIZE].copy_from_slice(&1448u16.to_ne_bytes());
        header[vnet::field::CSUM_START].copy_from_slice(&34u16.to_ne_bytes());
        let parsed = VnetHeader::new_checked(&header[..]).unwrap();
        let max = 1472 - crate::quic::QUIC_DATAGRAM_OVERHEAD - vxlan::HEADER_LEN;
        assert_eq!(fitting_gso_size(&parsed, &frame, max), Some(1426 - 66));
        assert_eq!(fitting_gso_size(&parsed, &frame, 9000), None);

        // The same bytes as one plain TCP segment (no GSO) larger than the
        // path: described as a GSO frame of one segment, then cut.
        let single = &frame[..14 + 20 + 32 + 1400];
        let mut single = single.to_vec();
        let ip_len = u16::try_from(single.len() - 14).unwrap();
        single[16..18].copy_from_slice(&ip_len.to_be_bytes());
        let as_gso = tcp_as_gso(&single).expect("a TCP segment");
        let parsed = VnetHeader::new_checked(&as_gso[..]).unwrap();
        assert!(parsed.is_gso());
        assert_eq!((parsed.gso_size(), parsed.csum_start()), (1400, 34));
        assert_eq!(fitting_gso_size(&parsed, &single, 1200), Some(1200 - 66));
        struct Count(usize, Vec<u8>);
        impl gso::SegmentSink for Count {
            fn space(&mut self, len: usize) -> Option<&mut [u8]> {
                self.0 += 1;
                self.1 = vec![0; len];
                Some(&mut self.1)
            }
        }
        let mut fitted = as_gso;
        fitted[vnet::field::GSO_SIZE].copy_from_slice(&1134u16.to_ne_bytes());
        let mut count = Count(0, Vec::new());
        let header = VnetHeader::new_checked(&fitted[..]).unwrap();
        gso::segment_into(&header, &single, &mut count).unwrap();
        assert_eq!(count.0, 2, "1400 bytes in pieces of 1134");
        assert!(tcp_as_gso(&single[..60]).is_none(), "no payload");
        let mut udp = single.clone();
        udp[23] = 17;
        assert!(tcp_as_gso(&udp).is_none(), "not TCP");
    }
}
