//! A raw `AF_PACKET` socket on a host interface: the parent LAN of a
//! macvlan network, as one more port of the switch.
//!
//! # Theory of operation
//!
//! The socket is bound to the parent (`ETH_P_ALL`) with `PACKET_VNET_HDR`:
//! every frame read comes after a `virtio_net_hdr`, and every frame written
//! goes after one, exactly as on weft's TAPs. So a frame the parent
//! received with a partial checksum (from a veth peer) or merged by GRO
//! arrives described, not broken, and a sandbox's 64 KiB TSO segment
//! leaves as one write that the kernel cuts for the wire. Frames read are
//! copied once into the data path's buffer (`recvmsg`), and written from
//! it (`sendmsg`), like a TAP: one syscall per frame. A `TPACKET_V3` ring
//! would save the copy on receive but cannot carry the virtio header (the
//! kernel refuses `PACKET_VNET_HDR` with rings of version 3), and without
//! it large GRO frames would be lost to the ring's frame size; the copy is
//! the cheaper price here.
//!
//! `PACKET_AUXDATA` gives the VLAN tag the kernel stripped on receive (the
//! usual case: veths and most NICs offload it) beside each frame;
//! `PACKET_IGNORE_OUTGOING` keeps the host's own transmitted frames (and
//! weft's) out of the socket, so the host's own stack is left alone: weft
//! never sees, let alone forwards, what the host sends.
//!
//! Promiscuous mode ([`PacketSocket::set_promiscuous`]) is a membership of
//! this socket: the kernel counts it, and it ends when the socket closes,
//! so a daemon that dies leaves the parent as it found it.
//!
//! Needs `CAP_NET_RAW` in the parent's network namespace.
//!
//! The virtio header's fields are in the host's byte order here (the TAPs'
//! are set to little endian): the same on the little-endian machines weft
//! runs on.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The receive buffer asked for: 8 MiB, about 128 GRO frames of 64 KiB
/// or 5,000 full-size ones, what a LAN delivers in ~7 ms at 10 Gbit/s.
const RECEIVE_BUFFER: libc::c_int = 8 << 20;

/// A frame read from the parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// Bytes read: the virtio header and the frame.
    pub len: usize,
    /// The VLAN id the kernel stripped from the frame, if it did.
    pub vlan: Option<u16>,
}

/// See the module header.
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
    ifindex: i32,
    name: String,
}

impl PacketSocket {
    /// Open a non-blocking packet socket on interface `ifname`.
    ///
    /// # Errors
    ///
    /// `NotFound` when there is no such interface; `PermissionDenied`
    /// without `CAP_NET_RAW`; other socket errors as they come.
    pub fn open(ifname: &str) -> io::Result<PacketSocket> {
        let name = std::ffi::CString::new(ifname)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name has a NUL"))?;
        // SAFETY: a NUL-terminated string the call only reads.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no interface {ifname:?} in the daemon's network namespace (a rootless daemon's has none of the host's: a macvlan network needs a daemon run as root)"),
            ));
        }
        let ifindex = i32::try_from(ifindex)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface index"))?;
        let protocol = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2); the fd is owned at once.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                libc::c_int::from(protocol),
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh fd nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let socket = PacketSocket {
            fd,
            ifindex,
            name: ifname.to_owned(),
        };
        socket.set_option(libc::PACKET_VNET_HDR, 1)?;
        // The default receive buffer (~208 KiB) holds three 64 KiB GRO
        // frames: a data-path thread descheduled for a moment would drop
        // the LAN's TCP by the thousand (measured: 124,527 retransmits in
        // 3 s of iperf3). Raised past rmem_max where the daemon may
        // (CAP_NET_ADMIN), else as far as rmem_max lets it.
        let wanted = RECEIVE_BUFFER;
        if socket
            .set_socket_option(libc::SO_RCVBUFFORCE, wanted)
            .is_err()
        {
            let _ = socket.set_socket_option(libc::SO_RCVBUF, wanted);
        }
        socket.set_option(libc::PACKET_AUXDATA, 1)?;
        // Linux 4.20+; older kernels deliver outgoing frames, which
        // `recv` then skips by their packet type.
        let _ = socket.set_option(libc::PACKET_IGNORE_OUTGOING, 1);
        // SAFETY: an all-zero sockaddr_ll is valid; the fields are set
        // below.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = protocol;
        addr.sll_ifindex = ifindex;
        // SAFETY: `addr` is a valid sockaddr_ll of the size given.
        let bound = unsafe {
            libc::bind(
                socket.fd.as_raw_fd(),
                std::ptr::addr_of!(addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if bound < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(socket)
    }

    /// The interface's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The interface's MAC (what the bound socket's own address says).
    ///
    /// # Errors
    ///
    /// The `getsockname` error, or `InvalidData` for an interface without
    /// a 6-byte hardware address.
    pub fn hardware_address(&self) -> io::Result<crate::wire::ethernet::MacAddr> {
        // SAFETY: an all-zero sockaddr_ll is valid.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: `addr` has room for `len` bytes, which the call updates.
        let done = unsafe {
            libc::getsockname(
                self.fd.as_raw_fd(),
                std::ptr::addr_of_mut!(addr).cast(),
                &mut len,
            )
        };
        if done < 0 {
            return Err(io::Error::last_os_error());
        }
        if addr.sll_halen != 6 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} has no Ethernet address", self.name),
            ));
        }
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&addr.sll_addr[..6]);
        Ok(crate::wire::ethernet::MacAddr(mac))
    }

    /// Receive every frame on the LAN (a membership of this socket, gone
    /// with it), or stop.
    ///
    /// # Errors
    ///
    /// The `setsockopt` error.
    pub fn set_promiscuous(&self, on: bool) -> io::Result<()> {
        // SAFETY: an all-zero packet_mreq is valid.
        let mut mreq: libc::packet_mreq = unsafe { std::mem::zeroed() };
        mreq.mr_ifindex = self.ifindex;
        mreq.mr_type = libc::PACKET_MR_PROMISC as u16;
        let option = if on {
            libc::PACKET_ADD_MEMBERSHIP
        } else {
            libc::PACKET_DROP_MEMBERSHIP
        };
        // SAFETY: `mreq` is a valid packet_mreq of the size given.
        let done = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                option,
                std::ptr::addr_of!(mreq).cast(),
                std::mem::size_of::<libc::packet_mreq>() as libc::socklen_t,
            )
        };
        if done < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Read one frame after its virtio header into `buf`. Frames the host
    /// sent itself are skipped.
    ///
    /// # Errors
    ///
    /// `WouldBlock` when nothing is queued; `Interrupted` after 64 skipped
    /// frames of the host's (read again: more may wait, and an
    /// edge-triggered poll would not say so); `ENETDOWN`/`ENXIO` when the
    /// parent went away.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Received> {
        // Bounded: each pass consumes a frame; outgoing ones are rare
        // (only without PACKET_IGNORE_OUTGOING).
        for _ in 0..64 {
            let mut iov = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            };
            // SAFETY: an all-zero sockaddr_ll is valid.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            // u64-aligned room for one cmsg of tpacket_auxdata.
            let mut control = [0u64; 8];
            // SAFETY: an all-zero msghdr is valid; its fields are set next.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_name = std::ptr::addr_of_mut!(from).cast();
            msg.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = std::mem::size_of_val(&control);
            // SAFETY: every pointer in `msg` points at live buffers of the
            // lengths it gives.
            let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut msg, libc::MSG_TRUNC) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let len = usize::try_from(n).unwrap_or(0);
            if from.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            if len > buf.len() {
                // Truncated (MSG_TRUNC gives the real length): a frame too
                // big for the buffer, which the caller counts and drops.
                return Ok(Received { len: 0, vlan: None });
            }
            return Ok(Received {
                len,
                vlan: auxdata_vlan(&msg),
            });
        }
        Err(io::ErrorKind::Interrupted.into())
    }

    /// Write one frame given as its virtio header and its bytes.
    ///
    /// # Errors
    ///
    /// `WouldBlock` when the parent's queue is full; `EINVAL` for a
    /// header that does not match the frame; `ENETDOWN` when it is down.
    pub fn send_parts(&self, header: &[u8], frame: &[u8]) -> io::Result<usize> {
        let iov = [
            libc::iovec {
                iov_base: header.as_ptr().cast_mut().cast(),
                iov_len: header.len(),
            },
            libc::iovec {
                iov_base: frame.as_ptr().cast_mut().cast(),
                iov_len: frame.len(),
            },
        ];
        // SAFETY: the iovecs point at live buffers the call only reads.
        let n = unsafe { libc::writev(self.fd.as_raw_fd(), iov.as_ptr(), 2) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(usize::try_from(n).unwrap_or(0))
    }

    fn set_option(&self, option: libc::c_int, value: libc::c_int) -> io::Result<()> {
        self.set_level_option(libc::SOL_PACKET, option, value)
    }

    fn set_socket_option(&self, option: libc::c_int, value: libc::c_int) -> io::Result<()> {
        self.set_level_option(libc::SOL_SOCKET, option, value)
    }

    fn set_level_option(
        &self,
        level: libc::c_int,
        option: libc::c_int,
        value: libc::c_int,
    ) -> io::Result<()> {
        // SAFETY: an int option of the size given.
        let done = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                option,
                std::ptr::addr_of!(value).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if done < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// The VLAN id in a received message's `PACKET_AUXDATA`, if the kernel
/// stripped a tag.
fn auxdata_vlan(msg: &libc::msghdr) -> Option<u16> {
    // SAFETY: `msg` is the header recvmsg just filled; the CMSG macros
    // walk its control buffer within `msg_controllen`.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_PACKET && (*cmsg).cmsg_type == libc::PACKET_AUXDATA {
                let aux: libc::tpacket_auxdata =
                    std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                let valid = aux.tp_status & libc::TP_STATUS_VLAN_VALID != 0;
                // A tag of VLAN 0 (priority only) without the VALID bit is
                // no tag.
                return valid.then_some(aux.tp_vlan_tci & 0x0fff);
            }
            cmsg = libc::CMSG_NXTHDR(msg, cmsg);
        }
    }
    None
}

impl AsFd for PacketSocket {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for PacketSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
