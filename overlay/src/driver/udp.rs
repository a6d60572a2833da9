//! VXLAN over UDP (RFC 7348): the default [`Transport`], the one Linux's
//! `vxlan` devices speak.
//!
//! # Theory of operation
//!
//! Sending. A frame for a peer is cut into MTU-sized segments straight into
//! the datagram buffer behind their VXLAN headers
//! ([`weft_vswitch::gso::segment_into`]): the payload is copied once, from
//! the frame read to the buffer the kernel sends from. The datagrams of
//! consecutive frames to one peer gather there into one UDP GSO send
//! (`UDP_SEGMENT`) of equal-sized datagrams: a 64 KiB segment is ~45
//! datagrams and one send takes at most 44, so sending per frame would make
//! every other send a small remainder. The gathered datagrams go out when
//! the next one cannot join them (another peer or source socket, a size
//! change, the kernel's limits) and at [`Transport::flush`]. Where the
//! kernel refuses UDP GSO, datagrams go one by one from then on.
//!
//! Source ports. The outer UDP source port carries the inner flow's hash
//! (RFC 7348 section 5), so the underlay's ECMP keeps a flow on one path
//! and spreads flows: frames leave from one of [`SENDERS`] sockets, each
//! bound to its own port, chosen by [`crate::vxlan::source_port`]'s hash of
//! the whole frame's flow.
//!
//! Receiving. The listening socket has UDP GRO on, so a run of datagrams
//! from one sender arrives as one receive with its segment size; the data
//! path opens them one by one ([`Transport::open`]).
//!
//! Buffers: [`SOCKET_BUFFER`] bytes of kernel buffer per socket (forced
//! where the daemon may, else up to `net.core.rmem_max`/`wmem_max`): a burst
//! of 64 KiB frames from several sandboxes is hundreds of datagrams.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use nix::sys::socket::{
    recvmsg, sendmsg, setsockopt, sockopt, ControlMessage, ControlMessageOwned, MsgFlags,
    SockaddrStorage,
};
use weft_vswitch::gso;
use weft_vswitch::wire::vnet::{VnetHeader, VNET_HDR_LEN};
use weft_vswitch::{DropReason, PortCounters, Vni};

use crate::transport::{Received, Transport, TunnelPeer};
use crate::vxlan;

/// Sockets frames are sent from, each bound to its own port: the outer
/// UDP source port is chosen among them by a hash of the inner flow.
pub const SENDERS: usize = 8;

/// Bytes of kernel buffer for each socket.
pub const SOCKET_BUFFER: usize = 8 << 20;

/// Largest UDP GSO send: the kernel's limit on a UDP payload, and on the
/// number of segments.
const GSO_MAX_BYTES: usize = 65_000;
const GSO_MAX_SEGMENTS: usize = 64;

/// Room for the datagrams of one 64 KiB frame and their headers.
const DATAGRAM_BUFFER: usize = 65_536 + 16 + 64;

/// VXLAN over UDP. See the module header.
#[derive(Debug)]
pub struct VxlanUdp {
    socket: std::net::UdpSocket,
    /// The port peers send to: the listening socket's.
    port: u16,
    senders: Vec<std::net::UdpSocket>,
    /// The datagrams being gathered (headers and frames).
    datagram: Vec<u8>,
    /// Bytes of `datagram` gathered for the next send.
    gathered: usize,
    /// Whether UDP GSO sends work here (cleared at the first refusal).
    gso: bool,
    /// What `datagram` holds, for whom; None when it is empty.
    batch: Option<Batch>,
}

/// The datagrams gathered for one UDP GSO send: all of `size` bytes but the
/// last, which may be shorter.
#[derive(Debug)]
struct Batch {
    to: SocketAddr,
    /// Index into `senders`; None sends from the listening socket.
    sender: Option<usize>,
    /// The peer's counters, for a failed send.
    counters: Arc<PortCounters>,
    size: usize,
    count: usize,
    /// The last datagram was short: nothing may follow it in this send.
    closed: bool,
}

impl VxlanUdp {
    /// VXLAN over `socket`, bound to the tunnel's listen address (the
    /// senders bind to the same IP, on ports of the kernel's choosing).
    ///
    /// # Errors
    ///
    /// The socket has no address or cannot be made non-blocking.
    pub fn new(socket: std::net::UdpSocket) -> io::Result<VxlanUdp> {
        let local = socket.local_addr()?;
        socket.set_nonblocking(true)?;
        set_buffer(&socket, true);
        if let Err(e) = setsockopt(&socket, sockopt::UdpGroSegment, &true) {
            tracing::debug!(error = %e, "tunnel: no UDP GRO");
        }
        let senders = (0..SENDERS)
            .filter_map(|_| std::net::UdpSocket::bind(SocketAddr::new(local.ip(), 0)).ok())
            .filter(|s| s.set_nonblocking(true).is_ok())
            .inspect(|s| set_buffer(s, false))
            .collect();
        Ok(VxlanUdp {
            socket,
            port: local.port(),
            senders,
            datagram: vec![0; DATAGRAM_BUFFER],
            gathered: 0,
            gso: true,
            batch: None,
        })
    }

    /// Room for one datagram to `peer`: the VXLAN header, then `inner_len`
    /// bytes for the inner frame, which the caller fills. What was gathered
    /// is sent first if the datagram cannot join it. Returns the datagrams
    /// that sending put on the wire, and the room.
    fn reserve(
        &mut self,
        peer: &TunnelPeer,
        sender: Option<usize>,
        inner_len: usize,
    ) -> (u64, Option<&mut [u8]>) {
        let len = vxlan::HEADER_LEN + inner_len;
        if len > self.datagram.len() {
            return (0, None);
        }
        let joins = self.batch.as_ref().is_some_and(|batch| {
            batch.to == peer.addr
                && batch.sender == sender
                && !batch.closed
                && len <= batch.size
                && batch.count < GSO_MAX_SEGMENTS
                && self.gathered + len <= GSO_MAX_BYTES
                && self.gso
        });
        let mut sent = 0;
        if !joins {
            sent = self.flush();
            self.batch = Some(Batch {
                to: peer.addr,
                sender,
                counters: Arc::clone(&peer.counters),
                size: len,
                count: 0,
                closed: false,
            });
        }
        if let Some(batch) = self.batch.as_mut() {
            batch.closed = len < batch.size;
            batch.count += 1;
        }
        peer.counters.count_tx(inner_len);
        let at = self.gathered;
        self.gathered += len;
        let room = self.datagram.get_mut(at..at + len).map(|datagram| {
            let (header, inner) = datagram.split_at_mut(vxlan::HEADER_LEN);
            header.copy_from_slice(&vxlan::encap_header(peer.vni));
            inner
        });
        (sent, room)
    }
}

impl Transport for VxlanUdp {
    fn raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    fn encapsulation(&self, peer: &TunnelPeer) -> Vec<u8> {
        vxlan::VxlanHeader { vni: peer.vni }.emit().to_vec()
    }

    fn local_addr(&self) -> Option<SocketAddr> {
        self.socket.local_addr().ok()
    }

    fn peer_port(&self) -> u16 {
        self.port
    }

    fn send_frame(&mut self, peer: &TunnelPeer, frame_with_header: &[u8]) -> u64 {
        let Some((header, frame)) = frame_with_header.split_at_checked(VNET_HDR_LEN) else {
            return 0;
        };
        let Ok(vnet) = VnetHeader::new_checked(header) else {
            return 0;
        };
        // One flow, one source port: chosen by the whole frame's flow.
        let sender = (!self.senders.is_empty())
            .then(|| usize::from(vxlan::source_port(frame)) % self.senders.len());
        let mut sink = Sink {
            transport: self,
            peer,
            sender,
            sent: 0,
        };
        if gso::segment_into(&vnet, frame, &mut sink).is_err() {
            peer.counters.count_drop(DropReason::Malformed);
        }
        sink.sent
    }

    fn flush(&mut self) -> u64 {
        let Some(batch) = self.batch.take() else {
            return 0;
        };
        let socket = batch.sender.and_then(|i| self.senders.get(i));
        let fd = socket.map_or_else(|| self.socket.as_raw_fd(), AsRawFd::as_raw_fd);
        let address = SockaddrStorage::from(batch.to);
        let gathered = &self.datagram[..self.gathered.min(self.datagram.len())];
        let data = [io::IoSlice::new(gathered)];
        let gso_size = u16::try_from(batch.size).unwrap_or(u16::MAX);
        let segments = [ControlMessage::UdpGsoSegments(&gso_size)];
        let control: &[_] = if batch.count > 1 { &segments } else { &[] };
        let flags = MsgFlags::empty();
        let mut sent = 0;
        match sendmsg(fd, &data, control, flags, Some(&address)) {
            Ok(_) => sent = batch.count as u64,
            Err(e @ (nix::errno::Errno::EIO | nix::errno::Errno::EINVAL)) if batch.count > 1 => {
                // No UDP GSO here (old kernel, device without it): one
                // datagram per send from now on.
                tracing::info!(error = %e, "tunnel: no UDP GSO, sending datagrams one by one");
                self.gso = false;
                for datagram in gathered.chunks(batch.size) {
                    let data = [io::IoSlice::new(datagram)];
                    if sendmsg(fd, &data, &[], flags, Some(&address)).is_ok() {
                        sent += 1;
                    } else {
                        batch.counters.count_drop(DropReason::EgressFailed);
                    }
                }
            }
            Err(e) => {
                tracing::trace!(addr = %batch.to, error = %e, "tunnel send");
                batch.counters.count_drop(DropReason::EgressFailed);
            }
        }
        self.gathered = 0;
        sent
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Received> {
        receive_gro(&self.socket, buf)
    }

    fn open<'d>(&self, datagram: &'d [u8]) -> Option<(Vni, &'d [u8])> {
        vxlan::decap(datagram).ok()
    }
}

/// Segments (or a whole frame) built straight into the datagram buffer,
/// behind their VXLAN header.
struct Sink<'t> {
    transport: &'t mut VxlanUdp,
    peer: &'t TunnelPeer,
    sender: Option<usize>,
    /// Datagrams that sends made to find room put on the wire.
    sent: u64,
}

impl gso::SegmentSink for Sink<'_> {
    fn space(&mut self, len: usize) -> Option<&mut [u8]> {
        let (sent, space) = self.transport.reserve(self.peer, self.sender, len);
        self.sent += sent;
        space
    }
}

/// One receive from a socket with UDP GRO on: its length, sender and
/// datagram size (a run of equal-sized datagrams from one sender arrives
/// in one receive; the last may be shorter).
///
/// # Errors
///
/// The socket's (`WouldBlock` when there is nothing), or a datagram
/// without an IP sender.
pub(crate) fn receive_gro(socket: &std::net::UdpSocket, buf: &mut [u8]) -> io::Result<Received> {
    let mut iov = [io::IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!(i32);
    let message = recvmsg::<SockaddrStorage>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::empty(),
    )
    .map_err(io::Error::from)?;
    let mut segment = 0;
    if let Ok(cmsgs) = message.cmsgs() {
        for cmsg in cmsgs {
            if let ControlMessageOwned::UdpGroSegments(size) = cmsg {
                segment = usize::try_from(size).unwrap_or(0);
            }
        }
    }
    let from = message
        .address
        .and_then(|a| {
            a.as_sockaddr_in()
                .map(|v4| SocketAddr::from(std::net::SocketAddrV4::from(*v4)))
                .or_else(|| {
                    a.as_sockaddr_in6()
                        .map(|v6| SocketAddr::from(std::net::SocketAddrV6::from(*v6)))
                })
        })
        .ok_or_else(|| io::Error::other("tunnel datagram without a sender address"))?;
    let len = message.bytes;
    Ok(Received {
        len,
        from,
        segment: if segment == 0 { len } else { segment },
    })
}

/// Give a socket a large receive (or send) buffer: the forced size where
/// the daemon may (`CAP_NET_ADMIN`), else as much as the sysctls allow.
fn set_buffer(socket: &std::net::UdpSocket, receive: bool) {
    let done = if receive {
        setsockopt(socket, sockopt::RcvBufForce, &SOCKET_BUFFER)
            .or_else(|_| setsockopt(socket, sockopt::RcvBuf, &SOCKET_BUFFER))
    } else {
        setsockopt(socket, sockopt::SndBufForce, &SOCKET_BUFFER)
            .or_else(|_| setsockopt(socket, sockopt::SndBuf, &SOCKET_BUFFER))
    };
    if let Err(e) = done {
        tracing::debug!(error = %e, "tunnel socket buffer");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_vswitch::wire::vnet;

    fn frame(len: usize) -> Vec<u8> {
        let mut frame = vec![0u8; len];
        frame[..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        frame[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        frame[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
        let mut with_header = vnet::EMPTY.to_vec();
        with_header.extend_from_slice(&frame);
        with_header
    }

    #[test]
    fn frames_cross_loopback_as_vxlan_and_open_again() {
        let receiver = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = receiver.local_addr().unwrap();
        let mut rx = VxlanUdp::new(receiver).unwrap();
        let mut tx = VxlanUdp::new(std::net::UdpSocket::bind("127.0.0.1:0").unwrap()).unwrap();
        let peer = TunnelPeer {
            vni: Vni::new(4242).unwrap(),
            addr: to,
            counters: Arc::default(),
            encrypted: false,
        };
        // Three equal frames gather into one GSO send.
        let mut sent = 0;
        for _ in 0..3 {
            sent += tx.send_frame(&peer, &frame(600));
        }
        sent += tx.flush();
        assert_eq!(sent, 3);
        assert_eq!(peer.counters.snapshot().tx_frames, 3);

        let mut buf = vec![0u8; 65_536];
        let mut opened = 0;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while opened < 3 && std::time::Instant::now() < deadline {
            match rx.recv(&mut buf) {
                Ok(received) => {
                    for datagram in buf[..received.len].chunks(received.segment) {
                        let (vni, inner) = rx.open(datagram).expect("a VXLAN datagram");
                        assert_eq!(vni.get(), 4242);
                        assert_eq!(inner.len(), 600);
                        opened += 1;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(e) => panic!("receive: {e}"),
            }
        }
        assert_eq!(opened, 3);
        assert!(rx.open(&[0u8; 4]).is_none(), "a short datagram is not ours");
    }
}
