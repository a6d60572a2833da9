//! A switch port that is a Unix stream socket instead of a TAP: a VM's
//! network card behind QEMU's `-netdev stream` (or passt's framing).
//!
//! # Theory of operation
//!
//! The port owns a listening socket at a path the control plane bound, and
//! at most one accepted connection: QEMU connects to it as a client
//! (`server=off`). The port exists before the VM starts and outlives the
//! connection: when the guest powers off or QEMU restarts, the connection
//! closes and the port waits for the next one; a new connection while one
//! is open replaces it (a QEMU that reconnects after a crash). Each new
//! connection starts both codecs afresh, so nothing half-read or
//! half-written crosses from one to the next.
//!
//! The frames on the stream have no `virtio_net_hdr`
//! (`weft_vswitch::wire::stream`). Reading ([`StreamPort::recv`]) gives the
//! frame plane what a TAP read gives it: an empty virtio header, then the
//! frame; the guest computed its own checksums. Writing
//! ([`StreamPort::send_parts`]) is the other way: the rest of the data
//! path may hand a 64 KiB GSO segment or a frame whose checksum a sandbox's
//! kernel left partial, so the frame is cut and completed in software
//! (`weft_vswitch::gso::segment`), and each piece is queued with its
//! length prefix and written at once; what the socket does not take now
//! waits in the encoder for `EPOLLOUT` ([`StreamPort::flush`]). A full
//! queue (a guest that stopped reading) drops frames, counted, instead of
//! stalling the loop.
//!
//! The connection's fd is registered under the port's own token
//! ([`crate::tokens::Source::Tap`]), readable and writable, the listener
//! under [`crate::tokens::Source::StreamListener`]; both tokens live as
//! long as the port. A closed connection's fd leaves epoll when it is
//! closed, so no token is freed with it.
//!
//! What a guest can send that is wrong: a length prefix over QEMU's limit
//! closes the connection (the stream cannot be resynchronised, and QEMU
//! does the same); a frame longer than the data path's buffers is read
//! and dropped, counted as truncated by the frame plane.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use weft_vswitch::gso;
use weft_vswitch::sys::write_batch::FRAME_BUFFER_LEN;
use weft_vswitch::wire::stream::{StreamDecoder, StreamEncoder};
use weft_vswitch::wire::vnet::{self, VnetHeader, VNET_HDR_LEN};

/// See the module header.
#[derive(Debug)]
pub struct StreamPort {
    listener: UnixListener,
    path: PathBuf,
    conn: Option<UnixStream>,
    decoder: StreamDecoder,
    encoder: StreamEncoder,
    /// Where a GSO frame is cut, one piece at a time.
    scratch: Box<[u8]>,
    /// The listener's token, once registered.
    listener_token: Option<Token>,
    /// Connections accepted so far.
    connections: u64,
}

/// What a write of a frame to the stream came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Queued (and maybe written already): the frame's bytes.
    Queued(usize),
    /// Not queued: no connection, a full queue, or a frame that could not
    /// be cut.
    Dropped,
}

impl StreamPort {
    /// A port listening on `listener`, bound at `path` (which
    /// [`StreamPort::path`] gives back for the control plane to unlink).
    ///
    /// # Errors
    ///
    /// The `fcntl` error making the listener non-blocking.
    pub fn new(listener: UnixListener, path: PathBuf) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        Ok(StreamPort {
            listener,
            path,
            conn: None,
            decoder: StreamDecoder::new(),
            encoder: StreamEncoder::new(),
            scratch: vec![0; FRAME_BUFFER_LEN].into_boxed_slice(),
            listener_token: None,
            connections: 0,
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether a VM is connected.
    pub fn is_connected(&self) -> bool {
        self.conn.is_some()
    }

    /// Register the listener under `token`.
    ///
    /// # Errors
    ///
    /// The `epoll_ctl` error.
    pub fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        let raw = self.listener.as_raw_fd();
        registry.register(&mut SourceFd(&raw), token, Interest::READABLE)?;
        self.listener_token = Some(token);
        Ok(())
    }

    /// Take both fds out of epoll; returns the listener's token to free.
    pub fn deregister(&mut self, registry: &Registry) -> Option<Token> {
        let raw = self.listener.as_raw_fd();
        let _ = registry.deregister(&mut SourceFd(&raw));
        if let Some(conn) = &self.conn {
            let _ = registry.deregister(&mut SourceFd(&conn.as_raw_fd()));
        }
        self.conn = None;
        self.listener_token.take()
    }

    /// Accept waiting connections (the last one wins), registering it
    /// under the port's `token`. True when a new connection is in place.
    pub fn accept(&mut self, registry: &Registry, token: Token) -> bool {
        let mut accepted = false;
        // Bounded: a listener's backlog is finite, and a client that
        // connects in a loop gets its turn next wake-up.
        for _ in 0..16 {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    if e.kind() != io::ErrorKind::WouldBlock {
                        tracing::warn!(path = %self.path.display(), error = %e, "stream port: accept");
                    }
                    break;
                }
            };
            if let Err(e) = stream.set_nonblocking(true) {
                tracing::warn!(error = %e, "stream port: non-blocking");
                continue;
            }
            let raw = stream.as_raw_fd();
            let interest = Interest::READABLE | Interest::WRITABLE;
            if let Err(e) = registry.register(&mut SourceFd(&raw), token, interest) {
                tracing::warn!(error = %e, "stream port: epoll register");
                continue;
            }
            if let Some(old) = self.conn.take() {
                let _ = registry.deregister(&mut SourceFd(&old.as_raw_fd()));
                tracing::info!(path = %self.path.display(), "stream port: a new connection replaces the open one");
            }
            self.decoder.reset();
            self.encoder.reset();
            self.conn = Some(stream);
            self.connections += 1;
            accepted = true;
            tracing::info!(path = %self.path.display(), connections = self.connections, "stream port: VM connected");
        }
        accepted
    }

    /// The next frame, after an empty virtio header, into `out`: its
    /// length with the header, as a TAP read gives it. `WouldBlock` when
    /// no whole frame is waiting (or no VM is connected); a frame that does
    /// not fit `out` gives a length of 0 (the caller counts it).
    ///
    /// # Errors
    ///
    /// `WouldBlock` as above; never another error: a broken connection is
    /// closed here and the port waits for the next.
    pub fn recv(&mut self, out: &mut [u8]) -> io::Result<usize> {
        // Each pass either yields a frame or reads more bytes: a frame
        // fits the decoder, so a handful of reads completes it.
        loop {
            match self.decoder.next_frame() {
                Ok(Some(frame)) => {
                    let len = VNET_HDR_LEN + frame.len();
                    let Some(into) = out.get_mut(..len) else {
                        return Ok(0);
                    };
                    into[..VNET_HDR_LEN].copy_from_slice(&vnet::EMPTY);
                    into[VNET_HDR_LEN..].copy_from_slice(frame);
                    return Ok(len);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), error = %e, "stream port: closing the connection");
                    self.close();
                    return Err(io::ErrorKind::WouldBlock.into());
                }
            }
            let Some(conn) = self.conn.as_mut() else {
                return Err(io::ErrorKind::WouldBlock.into());
            };
            match conn.read(self.decoder.space()) {
                Ok(0) => {
                    tracing::info!(path = %self.path.display(), "stream port: VM disconnected");
                    self.close();
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok(n) => self.decoder.filled(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(e),
                Err(e) => {
                    tracing::info!(path = %self.path.display(), error = %e, "stream port: read failed, closing");
                    self.close();
                    return Err(io::ErrorKind::WouldBlock.into());
                }
            }
        }
    }

    /// Queue a frame (its virtio header, then the frame) for the VM, cut
    /// into MTU-sized frames with complete checksums, and write what the
    /// socket takes.
    pub fn send_parts(&mut self, header: &[u8; VNET_HDR_LEN], frame: &[u8]) -> Sent {
        if self.conn.is_none() {
            return Sent::Dropped;
        }
        let Ok(vnet) = VnetHeader::new_checked(&header[..]) else {
            return Sent::Dropped;
        };
        let mut queued = true;
        let encoder = &mut self.encoder;
        let cut = gso::segment(&vnet, frame, &mut self.scratch, |piece| {
            queued &= encoder.push(piece);
        });
        queued &= cut.is_ok();
        self.flush();
        if queued {
            Sent::Queued(frame.len())
        } else {
            Sent::Dropped
        }
    }

    /// Write what the encoder holds until the socket would block.
    pub fn flush(&mut self) {
        // Bounded by the queue: every pass writes some of it or stops.
        while self.encoder.queued() > 0 {
            let Some(conn) = self.conn.as_mut() else {
                return;
            };
            match conn.write(self.encoder.pending()) {
                Ok(0) => return,
                Ok(n) => self.encoder.consume(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::info!(path = %self.path.display(), error = %e, "stream port: write failed, closing");
                    self.close();
                    return;
                }
            }
        }
    }

    /// Close the connection (its fd leaves epoll as it closes); the port
    /// listens on.
    fn close(&mut self) {
        self.conn = None;
        self.decoder.reset();
        self.encoder.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(len: usize, fill: u8) -> Vec<u8> {
        let mut f = vec![fill; len];
        f[..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        f
    }

    fn port() -> (StreamPort, tempdir::Dir, mio::Poll) {
        let dir = tempdir::Dir::new();
        let path = dir.0.join("vm.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let mut port = StreamPort::new(listener, path).unwrap();
        let poll = mio::Poll::new().unwrap();
        port.register(poll.registry(), Token(1)).unwrap();
        (port, dir, poll)
    }

    /// A directory removed on drop.
    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Self {
                let mut bytes = [0u8; 8];
                getrandom::fill(&mut bytes).unwrap();
                let name = format!("weft-stream-{:016x}", u64::from_ne_bytes(bytes));
                let path = std::env::temp_dir().join(name);
                std::fs::create_dir(&path).unwrap();
                Dir(path)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    fn recv_until(port: &mut StreamPort, out: &mut [u8]) -> usize {
        for _ in 0..1000 {
            match port.recv(out) {
                Ok(len) => return len,
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(2)),
            }
        }
        panic!("no frame within 2 s");
    }

    #[test]
    fn frames_cross_both_ways_with_and_without_their_prefix() {
        let (mut port, _dir, poll) = port();
        let mut vm = UnixStream::connect(port.path()).unwrap();
        assert!(port.accept(poll.registry(), Token(2)));
        assert!(port.is_connected());

        // VM → switch: a prefix, a frame; the port adds the empty header.
        let sent = frame(60, 0xab);
        vm.write_all(&(sent.len() as u32).to_be_bytes()).unwrap();
        vm.write_all(&sent).unwrap();
        let mut out = vec![0; FRAME_BUFFER_LEN];
        let len = recv_until(&mut port, &mut out);
        assert_eq!(len, VNET_HDR_LEN + 60);
        assert_eq!(out[..VNET_HDR_LEN], vnet::EMPTY);
        assert_eq!(out[VNET_HDR_LEN..len], sent[..]);
        assert_eq!(
            port.recv(&mut out).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );

        // Switch → VM: the prefix is added.
        let back = frame(100, 0xcd);
        assert_eq!(port.send_parts(&vnet::EMPTY, &back), Sent::Queued(100));
        let mut got = vec![0; 104];
        vm.read_exact(&mut got).unwrap();
        assert_eq!(got[..4], 100u32.to_be_bytes());
        assert_eq!(got[4..], back[..]);
    }

    #[test]
    fn without_a_vm_frames_are_dropped_and_a_reconnect_starts_clean() {
        let (mut port, _dir, poll) = port();
        assert_eq!(port.send_parts(&vnet::EMPTY, &frame(60, 1)), Sent::Dropped);

        let mut first = UnixStream::connect(port.path()).unwrap();
        assert!(port.accept(poll.registry(), Token(2)));
        // Half a frame, then the VM goes away.
        first.write_all(&60u32.to_be_bytes()).unwrap();
        first.write_all(&[7; 20]).unwrap();
        let mut out = vec![0; FRAME_BUFFER_LEN];
        let _ = port.recv(&mut out);
        drop(first);
        for _ in 0..1000 {
            let _ = port.recv(&mut out);
            if !port.is_connected() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        assert!(!port.is_connected(), "EOF closes the connection");

        // The next VM's frames are read from their start.
        let mut second = UnixStream::connect(port.path()).unwrap();
        assert!(port.accept(poll.registry(), Token(2)));
        let sent = frame(64, 9);
        second.write_all(&64u32.to_be_bytes()).unwrap();
        second.write_all(&sent).unwrap();
        let len = recv_until(&mut port, &mut out);
        assert_eq!(out[VNET_HDR_LEN..len], sent[..]);
    }

    #[test]
    fn a_length_over_the_limit_closes_the_connection() {
        let (mut port, _dir, poll) = port();
        let mut vm = UnixStream::connect(port.path()).unwrap();
        assert!(port.accept(poll.registry(), Token(2)));
        vm.write_all(&u32::MAX.to_be_bytes()).unwrap();
        let mut out = vec![0; FRAME_BUFFER_LEN];
        for _ in 0..1000 {
            let _ = port.recv(&mut out);
            if !port.is_connected() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        assert!(!port.is_connected());
        let mut buf = [0u8; 1];
        assert_eq!(vm.read(&mut buf).unwrap(), 0, "the VM sees the close");
    }

    #[test]
    fn a_gso_segment_reaches_the_vm_as_mtu_sized_frames_with_checksums() {
        let (mut port, _dir, poll) = port();
        let mut vm = UnixStream::connect(port.path()).unwrap();
        assert!(port.accept(poll.registry(), Token(2)));
        // Ethernet + IPv4 + TCP, 3000 bytes of payload, cut at 1000.
        let mut f = vec![0u8; 14 + 20 + 20 + 3000];
        f[..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        let ip = &mut f[14..34];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&(3040u16).to_be_bytes());
        ip[8] = 64;
        ip[9] = 6;
        ip[12..16].copy_from_slice(&[10, 0, 0, 1]);
        ip[16..20].copy_from_slice(&[10, 0, 0, 2]);
        f[34 + 12] = 5 << 4;
        f[34 + 13] = 0x10;
        let header = vnet::tcp_gso_header(&mut f, 1000).expect("a TCP frame");
        assert!(matches!(port.send_parts(&header, &f), Sent::Queued(_)));
        for _ in 0..3 {
            let mut prefix = [0u8; 4];
            vm.read_exact(&mut prefix).unwrap();
            let len = u32::from_be_bytes(prefix) as usize;
            assert_eq!(len, 14 + 20 + 20 + 1000);
            let mut piece = vec![0; len];
            vm.read_exact(&mut piece).unwrap();
            let tcp = &piece[34..];
            let mut pseudo = Vec::new();
            pseudo.extend_from_slice(&piece[26..34]);
            pseudo.extend_from_slice(&[0, 6]);
            pseudo.extend_from_slice(&(tcp.len() as u16).to_be_bytes());
            pseudo.extend_from_slice(tcp);
            assert_eq!(internet_checksum(&pseudo), 0, "the TCP checksum is whole");
        }
    }

    fn internet_checksum(bytes: &[u8]) -> u16 {
        let mut sum: u32 = 0;
        for pair in bytes.chunks(2) {
            let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            sum += u32::from(word);
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }
}
