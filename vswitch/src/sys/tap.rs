//! TAP devices (Linux `Documentation/networking/tuntap.rst`).
//!
//! A [`Tap`] owns the fd of one TAP queue, opened non-blocking and
//! close-on-exec with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`: every read
//! and write carries one Ethernet frame behind a 10-byte `virtio_net_hdr`
//! ([`crate::wire::vnet`]) in little-endian byte order (`TUNSETVNETLE`).
//!
//! Offloads ([`Offloads`], `TUNSETOFFLOAD`) tell the kernel what the reader
//! copes with: with checksum and TSO offload on, the sandbox's stack hands
//! over 64 KiB TCP segments with partial checksums, which pass to another
//! TAP untouched. The kernel accepts such frames written to any TAP
//! whatever its own offload flags: those flags only govern what the kernel
//! sends to us.
//!
//! The device is created by whoever calls [`Tap::create`], in the network
//! namespace of the calling thread: weft's attach helper does that inside
//! the sandbox, makes the device persistent so that it outlives the fd,
//! and passes the fd to the daemon ([`Tap::from_fd`]). A persistent TAP is
//! re-opened by name (the same `create` call) after a daemon restart, and
//! destroyed by clearing persistence ([`Tap::set_persistent`]) and closing
//! the last fd.
//!
//! ioctl request numbers come from `libc`; every ioctl is in this file.

use std::ffi::CStr;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use crate::wire::vnet::VNET_HDR_LEN;

/// The TUN/TAP clone device.
const TUN_CLONE_DEVICE: &str = "/dev/net/tun";

/// Offloads the reader of a TAP accepts (`TUN_F_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Offloads {
    /// Partial checksums (`TUN_F_CSUM`); required by every other offload.
    pub csum: bool,
    /// TCP segmentation offload for IPv4 (`TUN_F_TSO4`).
    pub tso4: bool,
    /// TCP segmentation offload for IPv6 (`TUN_F_TSO6`).
    pub tso6: bool,
    /// UDP segmentation offload (`TUN_F_USO4 | TUN_F_USO6`, Linux 6.2+).
    pub uso: bool,
}

/// One TAP queue. See the module header.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Offloads {
    /// Checksum, TSO4 and TSO6: what a switch that passes frames between
    /// TAPs untouched can accept.
    pub const ALL: Offloads = Offloads {
        csum: true,
        tso4: true,
        tso6: true,
        uso: true,
    };

    /// [`Offloads::ALL`] without USO, for kernels older than 6.2.
    pub const ALL_BUT_USO: Offloads = Offloads {
        uso: false,
        ..Offloads::ALL
    };

    fn bits(self) -> libc::c_uint {
        let mut bits = 0;
        if self.csum {
            bits |= libc::TUN_F_CSUM;
            if self.tso4 {
                bits |= libc::TUN_F_TSO4;
            }
            if self.tso6 {
                bits |= libc::TUN_F_TSO6;
            }
            if self.uso {
                bits |= libc::TUN_F_USO4 | libc::TUN_F_USO6;
            }
        }
        bits
    }
}

impl Tap {
    /// Create the TAP `name` in the calling thread's network namespace, or
    /// attach to it if it exists (a persistent TAP made earlier with the
    /// same flags).
    ///
    /// # Errors
    ///
    /// The I/O error of opening `/dev/net/tun` (missing, or not accessible
    /// to this user) or of `TUNSETIFF` (`EBUSY`: another process has it;
    /// `EPERM`: no `CAP_NET_ADMIN` in the namespace's user namespace;
    /// `EINVAL`: an existing device of another kind).
    pub fn create(name: &str) -> io::Result<Tap> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_CLONE_DEVICE)?;
        let mut req = ifreq_with_name(name)?;
        // The flags field is a c_short; IFF_* fit in it.
        req.ifr_ifru.ifru_flags =
            (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
        // SAFETY: TUNSETIFF reads (and writes back the name into) a valid
        // `ifreq` that lives for the call; the fd is open.
        cvt(unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) })?;
        let tap = Tap {
            name: name_of(&req),
            file,
        };
        tap.configure_vnet_header()?;
        Ok(tap)
    }

    /// Take over a TAP fd made elsewhere (passed over SCM_RIGHTS).
    ///
    /// # Errors
    ///
    /// `TUNGETIFF` fails when the fd is not an attached TUN/TAP fd.
    pub fn from_fd(fd: OwnedFd) -> io::Result<Tap> {
        let file = File::from(fd);
        // SAFETY: all-zero is a valid `ifreq` (plain integers and arrays).
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        // SAFETY: TUNGETIFF writes into a valid `ifreq`; the fd is open.
        cvt(unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNGETIFF, &mut req) })?;
        // SAFETY: TUNGETIFF filled the flags member of the union.
        let flags = libc::c_int::from(unsafe { req.ifr_ifru.ifru_flags });
        if flags & libc::IFF_VNET_HDR == 0 || flags & libc::IFF_TAP == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "fd is not a TAP opened with IFF_VNET_HDR",
            ));
        }
        set_nonblocking(file.as_raw_fd())?;
        let tap = Tap {
            name: name_of(&req),
            file,
        };
        tap.configure_vnet_header()?;
        Ok(tap)
    }

    fn configure_vnet_header(&self) -> io::Result<()> {
        let little_endian: libc::c_int = 1;
        // SAFETY: TUNSETVNETLE reads a c_int through a valid pointer.
        cvt(unsafe { libc::ioctl(self.file.as_raw_fd(), libc::TUNSETVNETLE, &little_endian) })?;
        let len = libc::c_int::try_from(VNET_HDR_LEN).map_err(io::Error::other)?;
        // SAFETY: TUNSETVNETHDRSZ reads a c_int through a valid pointer.
        cvt(unsafe { libc::ioctl(self.file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &len) })?;
        Ok(())
    }

    /// Keep the device after the last fd closes (or not: then it goes away
    /// with the last fd).
    ///
    /// # Errors
    ///
    /// The ioctl's error (`EPERM` without `CAP_NET_ADMIN`).
    pub fn set_persistent(&self, persistent: bool) -> io::Result<()> {
        // SAFETY: TUNSETPERSIST takes its argument by value.
        cvt(unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETPERSIST,
                libc::c_ulong::from(persistent),
            )
        })
        .map(drop)
    }

    /// Tell the kernel which offloads this reader accepts.
    ///
    /// # Errors
    ///
    /// `EINVAL` when the kernel does not know one of the flags.
    pub fn set_offloads(&self, offloads: Offloads) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its flags by value.
        cvt(unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(offloads.bits()),
            )
        })
        .map(drop)
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Read one frame (with its `virtio_net_hdr`).
    ///
    /// # Errors
    ///
    /// `WouldBlock` when no frame is queued; `EBADFD`/`EIO` when the
    /// device went away (its namespace was destroyed).
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Write one frame given as its virtio header and its bytes, without
    /// joining them first (`writev`).
    ///
    /// # Errors
    ///
    /// `WouldBlock` when the device's queue is full; `EINVAL` for a frame
    /// the kernel rejects (a GSO header that does not match the frame).
    pub fn send_parts(&self, header: &[u8], frame: &[u8]) -> io::Result<usize> {
        (&self.file).write_vectored(&[io::IoSlice::new(header), io::IoSlice::new(frame)])
    }

    /// Give up the fd (to pass it on).
    pub fn into_fd(self) -> OwnedFd {
        OwnedFd::from(self.file)
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

fn ifreq_with_name(name: &str) -> io::Result<libc::ifreq> {
    let bytes = name.as_bytes();
    if bytes.is_empty()
        || bytes.len() >= libc::IFNAMSIZ
        || bytes.contains(&0)
        || bytes.contains(&b'/')
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid interface name {name:?}: 1 to 15 bytes, no '/' or NUL"),
        ));
    }
    // SAFETY: all-zero is a valid `ifreq` (plain integers and arrays).
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = libc::c_char::from_ne_bytes([*src]);
    }
    Ok(req)
}

fn name_of(req: &libc::ifreq) -> String {
    let bytes: Vec<u8> = req
        .ifr_name
        .iter()
        .map(|c| c.to_ne_bytes()[0])
        .take_while(|b| *b != 0)
        .collect();
    CStr::from_bytes_until_nul(&[bytes.as_slice(), &[0]].concat())
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFL on an open fd has no memory effects.
    let flags = cvt(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    // SAFETY: F_SETFL on an open fd has no memory effects.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) }).map(drop)
}

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_names_before_any_syscall() {
        assert!(ifreq_with_name("").is_err());
        assert!(ifreq_with_name("a/b").is_err());
        assert!(ifreq_with_name("sixteen-chars-xx").is_err());
        let req = ifreq_with_name("eth0").unwrap();
        assert_eq!(name_of(&req), "eth0");
    }

    #[test]
    fn offload_bits_need_csum() {
        assert_eq!(Offloads::default().bits(), 0);
        assert_eq!(
            Offloads {
                csum: false,
                tso4: true,
                tso6: true,
                uso: true,
            }
            .bits(),
            0,
            "TSO without checksum offload is not a valid request"
        );
        assert_eq!(
            Offloads::ALL_BUT_USO.bits(),
            libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6
        );
        assert_eq!(
            Offloads::ALL.bits(),
            libc::TUN_F_CSUM
                | libc::TUN_F_TSO4
                | libc::TUN_F_TSO6
                | libc::TUN_F_USO4
                | libc::TUN_F_USO6
        );
    }
}
