//! The switch's local ports: registration, the queue of ports with frames
//! waiting, and the single writes of the gateway's own frames.
//!
//! A port's device is a sandbox's TAP or a VM's stream socket
//! ([`PortDevice`], [`crate::stream_port`]); both are read and written
//! here the same way, a TAP with one syscall per frame, a stream through
//! its codec.
//!
//! # Theory of operation
//!
//! A port is registered edge-triggered for reading. Its event only queues
//! it ([`Taps::mark_ready`]); the frame plane ([`crate::frames`]) then reads
//! each queued port in turns of at most [`IO_LOOP_BOUND`] frames, and a port
//! that still has frames after its turn goes to the back of the queue, so
//! one busy sandbox cannot starve the others.
//!
//! Switched frames leave through the frame plane's write batch. The
//! gateway's own frames (replies, DNS answers, NAT and relay output) are
//! written one by one, header and frame in one `writev`
//! ([`Taps::send_parts`]): they are few, and come out of the services'
//! queues, not out of a read burst.
//!
//! A port with a bandwidth limit has a [`Shaper`] ([`crate::shaper`]): its
//! reads wait for credit, and frames to it pass, queue or drop by its
//! bucket; the event loop runs the shapers' timers.
//!
//! A port whose device vanished (a read error other than `EAGAIN`, such as
//! `EBADFD` when its namespace is torn down) is removed by the frame plane
//! and logged once.

use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Instant;

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use rustc_hash::FxHashMap;
use weft_vswitch::sys::tap::Tap;
use weft_vswitch::wire::vnet::VNET_HDR_LEN;
use weft_vswitch::{BandwidthLimit, DropReason, PortCounters, PortId};

use crate::dgram_port::DgramPort;
use crate::packet_port::PacketPort;
use crate::shaper::{Offer, Shaper};
use crate::stream_port::{Sent, StreamPort};
use crate::tokens::{Source, Tokens};

/// Frames read from one port per turn before the next port gets its turn:
/// 64 frames of up to 64 KiB keep a turn under ~50 µs of copying, short
/// enough for fairness, long enough that the wake-up cost is spread.
pub const IO_LOOP_BOUND: usize = 64;

/// What a local port's frames come through.
#[derive(Debug)]
pub enum PortDevice {
    /// A sandbox's TAP.
    Tap(Tap),
    /// A VM's stream socket (QEMU `-netdev stream`).
    Stream(Box<StreamPort>),
    /// A macvlan network's parent LAN (a packet socket).
    Packet(Box<PacketPort>),
    /// A VM's datagram socket (QEMU `-netdev dgram`).
    Dgram(Box<DgramPort>),
}

impl PortDevice {
    /// Read one frame after its virtio header into `buffer`.
    ///
    /// # Errors
    ///
    /// `WouldBlock` when drained; `Interrupted` to read again (a packet
    /// port skipped another VLAN's frame); for a TAP or a packet port, the
    /// error of a device that vanished.
    pub fn recv(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        match self {
            PortDevice::Tap(tap) => tap.recv(buffer),
            PortDevice::Stream(stream) => stream.recv(buffer),
            PortDevice::Packet(packet) => packet.recv(buffer),
            PortDevice::Dgram(dgram) => dgram.recv(buffer),
        }
    }

    /// The TAP's fd, for the write batch (a stream is written through its
    /// codec instead).
    pub fn batch_fd(&self) -> Option<std::os::fd::RawFd> {
        match self {
            PortDevice::Tap(tap) => Some(tap.as_raw_fd()),
            PortDevice::Stream(_) => None,
            PortDevice::Packet(packet) => packet.batch_fd(),
            PortDevice::Dgram(_) => None,
        }
    }
}

/// One attached port.
#[derive(Debug)]
pub struct PortIo {
    /// The device.
    pub device: PortDevice,
    /// Its counters, shared with the control plane.
    pub counters: Arc<PortCounters>,
    token: Token,
}

/// See the module header.
#[derive(Debug, Default)]
pub struct Taps {
    ports: FxHashMap<PortId, PortIo>,
    /// Ports with frames (maybe) waiting, in turn order.
    ready: VecDeque<PortId>,
    /// The limited ports' shapers.
    shapers: FxHashMap<PortId, Shaper>,
}

impl Taps {
    /// Register `device` as port `id`. False when epoll would not take it.
    pub fn attach(
        &mut self,
        registry: &Registry,
        tokens: &mut Tokens,
        id: PortId,
        mut device: PortDevice,
        counters: Arc<PortCounters>,
    ) -> bool {
        let token = tokens.insert(Source::Port(id));
        let registered = match &mut device {
            PortDevice::Tap(tap) => {
                let raw = tap.as_raw_fd();
                tracing::debug!(port = id.0, ifname = tap.name(), "port attached");
                registry.register(&mut SourceFd(&raw), token, Interest::READABLE)
            }
            PortDevice::Packet(packet) => {
                let raw = packet.poll_fd();
                tracing::debug!(
                    port = id.0,
                    parent = packet.parent(),
                    "uplink port attached"
                );
                registry.register(&mut SourceFd(&raw), token, Interest::READABLE)
            }
            PortDevice::Dgram(dgram) => {
                tracing::debug!(port = id.0, path = %dgram.path().display(), "datagram port attached");
                dgram.register(registry, token)
            }
            PortDevice::Stream(stream) => {
                let listener = tokens.insert(Source::StreamListener(id));
                tracing::debug!(port = id.0, path = %stream.path().display(), "stream port attached");
                let registered = stream.register(registry, listener);
                if registered.is_err() {
                    tokens.remove(listener);
                }
                registered
            }
        };
        if let Err(e) = registered {
            tracing::error!(error = %e, port = id.0, "data path: epoll register");
            tokens.remove(token);
            return false;
        }
        self.ports.insert(
            id,
            PortIo {
                device,
                counters,
                token,
            },
        );
        // Frames may have queued before registration; edge-triggered epoll
        // would not report them.
        self.ready.push_back(id);
        true
    }

    /// Deregister port `id` and hand its device back.
    pub fn detach(
        &mut self,
        registry: &Registry,
        tokens: &mut Tokens,
        id: PortId,
    ) -> Option<PortDevice> {
        self.ready.retain(|p| *p != id);
        self.shapers.remove(&id);
        let mut io = self.ports.remove(&id)?;
        match &mut io.device {
            PortDevice::Tap(tap) => {
                let raw = tap.as_raw_fd();
                let _ = registry.deregister(&mut SourceFd(&raw));
            }
            PortDevice::Stream(stream) => {
                if let Some(listener) = stream.deregister(registry) {
                    tokens.remove(listener);
                }
            }
            PortDevice::Packet(packet) => {
                let _ = registry.deregister(&mut SourceFd(&packet.poll_fd()));
            }
            PortDevice::Dgram(dgram) => dgram.deregister(registry),
        }
        tokens.remove(io.token);
        Some(io.device)
    }

    /// A stream port's listener is readable: take the VM's connection.
    pub fn accept(&mut self, registry: &Registry, id: PortId) {
        let Some(io) = self.ports.get_mut(&id) else {
            return;
        };
        if let PortDevice::Stream(stream) = &mut io.device {
            if stream.accept(registry, io.token) {
                self.mark_ready(id);
            }
        }
    }

    /// An ipvlan uplink's sandboxes (address → own MAC).
    pub fn set_uplink_sandboxes(
        &mut self,
        id: PortId,
        sandboxes: FxHashMap<std::net::IpAddr, weft_vswitch::MacAddr>,
    ) {
        if let Some(PortIo {
            device: PortDevice::Packet(packet),
            ..
        }) = self.ports.get_mut(&id)
        {
            packet.set_sandboxes(sandboxes);
        }
    }

    /// A port's fd is writable: a stream writes what it queued.
    pub fn writable(&mut self, id: PortId) {
        if let Some(PortIo {
            device: PortDevice::Stream(stream),
            ..
        }) = self.ports.get_mut(&id)
        {
            stream.flush();
        }
    }

    /// The port `id`, if attached.
    pub fn get(&self, id: PortId) -> Option<&PortIo> {
        self.ports.get(&id)
    }

    /// The port `id`, if attached, to read from.
    pub fn get_mut(&mut self, id: PortId) -> Option<&mut PortIo> {
        self.ports.get_mut(&id)
    }

    /// Queue a port whose fd became readable.
    pub fn mark_ready(&mut self, id: PortId) {
        if !self.ready.contains(&id) {
            self.ready.push_back(id);
        }
    }

    /// Ports wait for a turn.
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// The ports waiting now, in turn order (a port that wants another
    /// turn is queued again with [`Taps::mark_ready`], after the others).
    pub fn take_ready(&mut self) -> VecDeque<PortId> {
        std::mem::take(&mut self.ready)
    }

    /// Count a dropped frame on its ingress port (drops are off the hot
    /// path: one more lookup is fine).
    pub fn count_drop(&self, port: PortId, reason: DropReason) {
        if let Some(io) = self.ports.get(&port) {
            io.counters.count_drop(reason);
        }
    }

    /// Set (or clear, with no limit) port `id`'s bandwidth limit.
    pub fn set_bandwidth(&mut self, id: PortId, limit: &BandwidthLimit, now: Instant) {
        if !self.ports.contains_key(&id) {
            return;
        }
        match Shaper::new(limit, now) {
            Some(shaper) => {
                self.shapers.insert(id, shaper);
            }
            None => {
                self.shapers.remove(&id);
            }
        }
        // A port parked by its old limit must not wait for a timer.
        self.mark_ready(id);
    }

    /// Whether port `id` has a bandwidth limit (its writes go through
    /// [`Taps::send_parts`], not the batch).
    pub fn is_shaped(&self, id: PortId) -> bool {
        !self.shapers.is_empty() && self.shapers.contains_key(&id)
    }

    /// Whether port `id` may be read now (its egress limit has credit);
    /// a port that may not is parked until it has.
    pub fn may_read(&mut self, id: PortId, now: Instant) -> bool {
        self.shapers
            .get_mut(&id)
            .is_none_or(|shaper| shaper.may_read(now))
    }

    /// Charge a frame of `bytes` read from port `id` to its limit.
    pub fn charge_read(&mut self, id: PortId, bytes: usize) {
        if let Some(shaper) = self.shapers.get_mut(&id) {
            shaper.charge_read(bytes);
        }
    }

    /// When a shaper next has work to do.
    pub fn poll_timeout(&mut self, now: Instant) -> Option<Instant> {
        self.shapers
            .values_mut()
            .filter_map(|shaper| shaper.next_due(now))
            .min()
    }

    /// The shapers' timers: parked ports get a turn again, queued frames
    /// leave as their buckets allow.
    pub fn handle_timeout(&mut self, now: Instant) {
        for (id, shaper) in &mut self.shapers {
            if shaper.unpark(now) && !self.ready.contains(id) {
                self.ready.push_back(*id);
            }
            let Some(io) = self.ports.get_mut(id) else {
                continue;
            };
            while let Some(frame) = shaper.release(VNET_HDR_LEN, now) {
                if let Some((header, frame)) = frame.split_first_chunk::<VNET_HDR_LEN>() {
                    write_parts(*id, io, header, frame);
                }
            }
        }
    }

    /// Write a frame to a port with its virtio header (empty, or GSO for a
    /// large TCP segment), in one `writev`; through the port's shaper if
    /// it has a limit.
    pub fn send_parts(
        &mut self,
        egress: PortId,
        header: &[u8; VNET_HDR_LEN],
        frame: &[u8],
        now: Instant,
    ) {
        let Some(io) = self.ports.get_mut(&egress) else {
            return;
        };
        if let Some(shaper) = self.shapers.get_mut(&egress) {
            match shaper.offer(header, frame, now) {
                Offer::Pass => {}
                Offer::Queued => return,
                Offer::Dropped => {
                    io.counters.count_drop(DropReason::RateLimited);
                    return;
                }
            }
        }
        write_parts(egress, io, header, frame);
    }

    /// Write a frame that starts with its virtio header.
    pub fn send(&mut self, egress: PortId, frame_with_header: &[u8], now: Instant) {
        if let Some((header, frame)) = frame_with_header.split_first_chunk::<VNET_HDR_LEN>() {
            self.send_parts(egress, header, frame, now);
        }
    }
}

/// One `writev` of a frame and its virtio header to a TAP, or the frame
/// queued on a stream; counted.
fn write_parts(port: PortId, io: &mut PortIo, header: &[u8; VNET_HDR_LEN], frame: &[u8]) {
    let sent = match &mut io.device {
        PortDevice::Tap(tap) => tap.send_parts(header, frame).map(drop).map_err(|e| {
            tracing::trace!(port = port.0, error = %e, "TAP write failed");
        }),
        PortDevice::Stream(stream) => match stream.send_parts(header, frame) {
            Sent::Queued(_) => Ok(()),
            Sent::Dropped => Err(()),
        },
        PortDevice::Packet(packet) => packet.send_parts(header, frame).map(drop).map_err(|e| {
            tracing::trace!(port = port.0, error = %e, "parent write failed");
        }),
        PortDevice::Dgram(dgram) => dgram.send_parts(header, frame).then_some(()).ok_or(()),
    };
    match sent {
        Ok(()) => io.counters.count_tx(frame.len()),
        Err(()) => io.counters.count_drop(DropReason::EgressFailed),
    }
}
