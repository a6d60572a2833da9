//! A switch port that is a host interface's LAN: the parent of a macvlan
//! network, through a raw packet socket (`weft_vswitch::sys::packet`).
//!
//! # Theory of operation
//!
//! The socket gives frames after a `virtio_net_hdr`, as a TAP does, so the
//! frame plane reads and writes this port like any other. What this
//! module adds is the VLAN: a network on `parent=eth0.50` takes from the
//! LAN only frames of VLAN 50 (tagged in band, or with the tag the kernel
//! stripped beside them) and sends its frames tagged
//! (`weft_vswitch::wire::vlan`); a network on the plain parent takes only
//! untagged frames. A frame of another VLAN is consumed and skipped: the
//! read reports `Interrupted`, which the frame plane's turn takes as "read
//! again" within its bound, so a busy LAN cannot hold the loop.
//!
//! An ipvlan network's uplink also translates MACs
//! (`weft_vswitch::wire::ipvlan`): its sandboxes show the parent's MAC on
//! the LAN, and frames to the parent's MAC for a sandbox address are
//! given that sandbox's MAC before the switch sees them; the parent
//! host's own frames are skipped like another VLAN's.
//!
//! Writes of an untagged macvlan network go through the frame plane's write batch
//! like a TAP's ([`PacketPort::batch_fd`]); a tagged frame is built in the
//! port's scratch buffer first.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use std::net::IpAddr;
use weft_vswitch::sys::packet::PacketSocket;
use weft_vswitch::sys::write_batch::FRAME_BUFFER_LEN;

use rustc_hash::FxHashMap;
use weft_vswitch::wire::ipvlan::{self, FromLan};
use weft_vswitch::wire::vlan::{self, Tagging};
use weft_vswitch::wire::vnet::VNET_HDR_LEN;
use weft_vswitch::MacAddr;

impl std::os::fd::AsFd for PacketPort {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

/// See the module header.
#[derive(Debug)]
pub struct PacketPort {
    socket: PacketSocket,
    vlan: Option<u16>,
    /// Where a tagged frame is built.
    scratch: Box<[u8]>,
    /// An ipvlan network's translation: the parent's MAC, the sandboxes'
    /// addresses and MACs, and where a translated frame is built.
    ipvlan: Option<Ipvlan>,
}

#[derive(Debug)]
struct Ipvlan {
    parent: MacAddr,
    sandboxes: FxHashMap<IpAddr, MacAddr>,
    rewritten: Box<[u8]>,
}

impl PacketPort {
    /// A port on `socket` for VLAN `vlan` (None: untagged).
    pub fn new(socket: PacketSocket, vlan: Option<u16>) -> Self {
        PacketPort {
            socket,
            vlan,
            scratch: vec![0; FRAME_BUFFER_LEN + vlan::TAG_LEN].into_boxed_slice(),
            ipvlan: None,
        }
    }

    /// Make this an ipvlan (L2) network's uplink: on the LAN its
    /// sandboxes show `parent`'s MAC (`weft_vswitch::wire::ipvlan`).
    pub fn with_ipvlan(mut self, parent: MacAddr) -> Self {
        self.ipvlan = Some(Ipvlan {
            parent,
            sandboxes: FxHashMap::default(),
            rewritten: vec![0; FRAME_BUFFER_LEN].into_boxed_slice(),
        });
        self
    }

    /// An ipvlan network's sandboxes: address → own MAC.
    pub fn set_sandboxes(&mut self, sandboxes: FxHashMap<IpAddr, MacAddr>) {
        if let Some(ipvlan) = &mut self.ipvlan {
            ipvlan.sandboxes = sandboxes;
        }
    }

    /// The parent interface's MAC.
    ///
    /// # Errors
    ///
    /// The socket's error.
    pub fn hardware_address(&self) -> io::Result<MacAddr> {
        self.socket.hardware_address()
    }

    /// Receive every frame of the LAN while the port lives.
    ///
    /// # Errors
    ///
    /// The socket's error.
    pub fn set_promiscuous(&self, on: bool) -> io::Result<()> {
        self.socket.set_promiscuous(on)
    }

    /// The parent interface's name.
    pub fn parent(&self) -> &str {
        self.socket.name()
    }

    /// The fd the write batch may write to: untagged macvlan networks
    /// only (the others rewrite each frame first).
    pub fn batch_fd(&self) -> Option<RawFd> {
        (self.vlan.is_none() && self.ipvlan.is_none()).then(|| self.socket.as_raw_fd())
    }

    /// The fd to poll.
    pub fn poll_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    /// Read one frame of this network's VLAN after its virtio header.
    ///
    /// # Errors
    ///
    /// `WouldBlock` when drained; `Interrupted` when the frame read was
    /// another VLAN's (read again); the socket's error when the parent
    /// went away.
    pub fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let received = match self.socket.recv(buf) {
            Ok(received) => received,
            // The parent went down (a cable, `ip link set down`): the
            // socket says so once; the port waits for it to come back
            // instead of being removed.
            Err(e) if e.raw_os_error() == Some(libc::ENETDOWN) => {
                tracing::warn!(parent = self.socket.name(), "the parent is down");
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Err(e) => return Err(e),
        };
        if received.len < VNET_HDR_LEN {
            return Ok(received.len);
        }
        let frame = &buf[VNET_HDR_LEN..received.len];
        let len = match vlan::classify(frame, received.vlan, self.vlan) {
            Tagging::Ours => received.len,
            Tagging::OursTagged => {
                vlan::pop_tag(buf, received.len).or(Err(io::ErrorKind::Interrupted))?
            }
            Tagging::NotOurs => return Err(io::ErrorKind::Interrupted.into()),
        };
        if let Some(ipvlan) = &self.ipvlan {
            let frame = &mut buf[VNET_HDR_LEN..len];
            if ipvlan::from_lan(frame, ipvlan.parent, &ipvlan.sandboxes) == FromLan::NotOurs {
                return Err(io::ErrorKind::Interrupted.into());
            }
        }
        Ok(len)
    }

    /// Write a frame (tagged for a VLAN network).
    ///
    /// # Errors
    ///
    /// The socket's error, or `InvalidInput` for a frame that cannot be
    /// tagged.
    pub fn send_parts(&mut self, header: &[u8; VNET_HDR_LEN], frame: &[u8]) -> io::Result<usize> {
        let frame = match &mut self.ipvlan {
            Some(ipvlan) => {
                let copy = ipvlan
                    .rewritten
                    .get_mut(..frame.len())
                    .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
                copy.copy_from_slice(frame);
                ipvlan::to_lan(copy, ipvlan.parent);
                &ipvlan.rewritten[..frame.len()]
            }
            None => frame,
        };
        let Some(vid) = self.vlan else {
            return self.socket.send_parts(header, frame);
        };
        let len = vlan::push_tag(header, frame, vid, &mut self.scratch)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let (header, tagged) = self.scratch[..len].split_at(VNET_HDR_LEN);
        self.socket.send_parts(header, tagged)
    }
}
