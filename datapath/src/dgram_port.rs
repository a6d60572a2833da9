//! A switch port that is a Unix datagram socket: a VM's network card
//! behind QEMU's `-netdev dgram`, one frame per datagram.
//!
//! # Theory of operation
//!
//! The daemon binds a datagram socket at the endpoint's path; QEMU binds
//! its own (`local.path`) and sends each frame as one datagram to ours
//! (`remote.path`). There is no connection: the port answers whoever sent
//! the last frame (its source address is QEMU's socket), so a QEMU that
//! restarts with the same or another local path is followed at once.
//! Before any guest has sent, frames for it are dropped and counted.
//!
//! Frames in get an empty virtio header, as from the stream port; frames
//! out are cut from GSO segments and completed in software (a datagram has
//! no offloads, `weft_vswitch::gso::segment`) and sent one datagram each.
//! A datagram socket never takes part of a frame: a full socket buffer
//! (a guest that stopped reading) drops the frame, counted.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::{Path, PathBuf};

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use weft_vswitch::gso;
use weft_vswitch::sys::write_batch::FRAME_BUFFER_LEN;
use weft_vswitch::wire::vnet::{self, VnetHeader, VNET_HDR_LEN};

/// See the module header.
#[derive(Debug)]
pub struct DgramPort {
    socket: UnixDatagram,
    path: PathBuf,
    /// The guest's socket: where the last frame came from.
    peer: Option<SocketAddr>,
    /// Where a GSO frame is cut.
    scratch: Box<[u8]>,
}

impl DgramPort {
    /// A port on `socket`, bound at `path`.
    ///
    /// # Errors
    ///
    /// The `fcntl` error making it non-blocking.
    pub fn new(socket: UnixDatagram, path: PathBuf) -> io::Result<Self> {
        socket.set_nonblocking(true)?;
        Ok(DgramPort {
            socket,
            path,
            peer: None,
            scratch: vec![0; FRAME_BUFFER_LEN].into_boxed_slice(),
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether a guest has sent a frame (and so can be answered).
    pub fn has_peer(&self) -> bool {
        self.peer.is_some()
    }

    /// Register the socket under `token`.
    ///
    /// # Errors
    ///
    /// The `epoll_ctl` error.
    pub fn register(&self, registry: &Registry, token: Token) -> io::Result<()> {
        let raw = self.socket.as_raw_fd();
        registry.register(&mut SourceFd(&raw), token, Interest::READABLE)
    }

    /// Take the socket out of epoll.
    pub fn deregister(&self, registry: &Registry) {
        let _ = registry.deregister(&mut SourceFd(&self.socket.as_raw_fd()));
    }

    /// The next frame, after an empty virtio header, into `out` (as a TAP
    /// read gives it); its sender becomes the peer.
    ///
    /// # Errors
    ///
    /// `WouldBlock` when no datagram waits; the socket's other errors.
    pub fn recv(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let Some(body) = out.get_mut(VNET_HDR_LEN..) else {
            return Ok(0);
        };
        let (len, from) = self.socket.recv_from(body)?;
        if from.as_pathname().is_some() {
            self.peer = Some(from);
        }
        out[..VNET_HDR_LEN].copy_from_slice(&vnet::EMPTY);
        Ok(VNET_HDR_LEN + len)
    }

    /// Send a frame (its virtio header, then the frame) to the guest, cut
    /// into MTU-sized frames with complete checksums. False when nothing
    /// could be sent (no guest yet, a full buffer, a frame that cannot be
    /// cut).
    pub fn send_parts(&mut self, header: &[u8; VNET_HDR_LEN], frame: &[u8]) -> bool {
        let Some(peer) = &self.peer else {
            return false;
        };
        let Ok(vnet) = VnetHeader::new_checked(&header[..]) else {
            return false;
        };
        let socket = &self.socket;
        let mut sent = true;
        let cut = gso::segment(&vnet, frame, &mut self.scratch, |piece| {
            sent &= socket.send_to_addr(piece, peer).is_ok();
        });
        sent && cut.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_cross_as_datagrams_and_the_last_sender_is_answered() {
        let dir = std::env::temp_dir().join(format!("weft-dgram-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("vm.sock");
        let _ = std::fs::remove_file(&path);
        let mut port = DgramPort::new(UnixDatagram::bind(&path).unwrap(), path.clone()).unwrap();
        assert!(!port.send_parts(&vnet::EMPTY, &[1; 60]), "no guest yet");
        let guest_path = dir.join("guest.sock");
        let _ = std::fs::remove_file(&guest_path);
        let guest = UnixDatagram::bind(&guest_path).unwrap();
        guest.send_to(&[7; 60], &path).unwrap();
        let mut out = vec![0; FRAME_BUFFER_LEN];
        let len = port.recv(&mut out).unwrap();
        assert_eq!(len, VNET_HDR_LEN + 60);
        assert_eq!(out[..VNET_HDR_LEN], vnet::EMPTY);
        assert_eq!(out[VNET_HDR_LEN..len], [7; 60]);
        assert!(port.has_peer());
        assert!(port.send_parts(&vnet::EMPTY, &[9; 70]));
        let mut back = [0u8; 100];
        let n = guest.recv(&mut back).unwrap();
        assert_eq!(back[..n], [9; 70]);
        assert_eq!(
            port.recv(&mut out).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
