//! The underlay transport: how the frames of overlay networks reach another
//! host, and how theirs reach us. The seam between the data path's tunnel
//! port and the way frames travel.
//!
//! # Theory of operation
//!
//! The data path (`weft-datapath`) owns the event loop; for the tunnel it
//! holds one `Box<dyn Transport>` and:
//!
//! - sends: for a frame the switch forwards or floods to a tunnel port (one
//!   remote host of one overlay network, a [`TunnelPeer`]), it calls
//!   [`Transport::send_frame`] with the frame as it was read (its
//!   `virtio_net_hdr` first). The transport cuts GSO segments to the
//!   underlay's size, completes partial checksums (the far side is a wire,
//!   not a TAP), wraps each piece in its own header, and may gather
//!   several datagrams into one system call; [`Transport::flush`] sends what
//!   is gathered, and the loop calls it whenever it flushes its TAP writes;
//! - receives: when [`Transport::raw_fd`] is readable it calls
//!   [`Transport::recv`] into its own buffer until `WouldBlock`; a receive
//!   may hold a run of equal-sized datagrams from one sender (UDP GRO),
//!   each opened by [`Transport::open`] into its VNI and inner frame. The
//!   data path checks the sender against the cluster's members itself.
//!
//! Two transports implement it: VXLAN over UDP ([`crate::driver::udp`],
//! the default, interoperable with Linux's `vxlan` devices) and QUIC
//! datagrams for encrypted networks ([`crate::driver::quic`]), which also
//! has timers of its own ([`Transport::poll_timeout`]). A host runs both
//! side by side; each tunnel port's [`TunnelPeer::encrypted`] says which
//! one its frames take. Counting is the
//! transport's part for what it alone knows (datagrams put on the wire, a
//! failed send on the peer's counters); the data path counts the rest.

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Instant;

use weft_vswitch::{PortCounters, Vni};

/// One remote host of one overlay network: where the tunnel port's frames
/// go, and its counters (frames and bytes sent, failed sends).
#[derive(Debug, Clone)]
pub struct TunnelPeer {
    /// The overlay network's VNI.
    pub vni: Vni,
    /// The host's tunnel address (underlay IP and port).
    pub addr: SocketAddr,
    /// The tunnel port's counters, shared with the control plane.
    pub counters: Arc<PortCounters>,
    /// The network is encrypted: its frames go by QUIC, never in clear.
    pub encrypted: bool,
}

/// What one [`Transport::recv`] put into the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// Bytes received.
    pub len: usize,
    /// The sender's underlay address.
    pub from: SocketAddr,
    /// The size of each datagram when the kernel coalesced a run of them
    /// (the last may be shorter); equal to `len` for a single datagram.
    pub segment: usize,
}

/// A way for frames of overlay networks to travel between hosts. See the
/// module header.
pub trait Transport: Send + std::fmt::Debug {
    /// The fd whose readability says [`Transport::recv`] has something.
    fn raw_fd(&self) -> RawFd;

    /// The port peers send to (frames from an unknown source port of a
    /// member are answered at this port of its address).
    fn peer_port(&self) -> u16;

    /// Queue `frame_with_header` (a `virtio_net_hdr`, then an Ethernet
    /// frame, possibly a 64 KiB GSO segment) for `peer`. Returns the
    /// datagrams put on the wire by this call (earlier gathered ones that
    /// had to leave first included). Never blocks; a datagram that cannot
    /// be sent is counted on the peer's counters and lost, as on a wire.
    fn send_frame(&mut self, peer: &TunnelPeer, frame_with_header: &[u8]) -> u64;

    /// Send what is gathered; returns the datagrams put on the wire.
    fn flush(&mut self) -> u64;

    /// Receive into `buf`; `WouldBlock` when there is nothing more.
    ///
    /// # Errors
    ///
    /// The socket's error; `WouldBlock` and `Interrupted` are the usual.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Received>;

    /// The VNI and inner frame of one received datagram; None when it is
    /// not one of ours (it is dropped and counted by the caller).
    fn open<'d>(&self, datagram: &'d [u8]) -> Option<(Vni, &'d [u8])>;

    /// What a datagram to `peer` carries before the inner frame (VXLAN's
    /// 8-byte header), for captures of the tunnel (`weft capture
    /// --overlay`).
    fn encapsulation(&self, peer: &TunnelPeer) -> Vec<u8>;

    /// The address datagrams leave from and arrive at.
    fn local_addr(&self) -> Option<std::net::SocketAddr>;

    /// When [`Transport::handle_timeout`] is due (a transport with timers
    /// of its own: QUIC's loss detection, keep-alives); None: never.
    fn poll_timeout(&mut self) -> Option<Instant> {
        None
    }

    /// Run the timers that are due, then the caller flushes.
    fn handle_timeout(&mut self, _now: Instant) {}

    /// This host's underlay address changed: state tied to the old one
    /// (QUIC connections other hosts opened to it) is dropped.
    fn underlay_moved(&mut self, _now: Instant) {}
}
