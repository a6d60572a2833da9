//! The frame plane: every frame read from a TAP or from the tunnel is
//! switched here and written out. With `weft_vswitch::switch` (the
//! decision) and `weft_vswitch::sys::write_batch` (the writes), this is the
//! whole walk of a frame.
//!
//! # Theory of operation
//!
//! A turn of one port ([`Plane::read_turn`]) reads up to
//! [`IO_LOOP_BOUND`] frames straight into the write batch's buffers, each
//! with its `virtio_net_hdr`, with no allocation, no lock and one
//! `Instant::now()` for the whole run. For each frame
//! ([`Plane::switch_frame`]) the switch decides:
//!
//! - `Forward(port)`: the buffer is queued for that port (a TAP: in the
//!   batch; a tunnel port: through the transport, which cuts and wraps it);
//! - `Flood`: queued for every other port of the network;
//! - `ToGateway`: the gateway's fast path answers into the reply buffer,
//!   written back to the ingress port at once; what it does not answer goes
//!   to the L4 services ([`to_services`]), whose output the event loop
//!   drains after the turn ([`Plane::flush_gateway_frames`]);
//! - `Drop(reason)`: counted on the ingress port.
//!
//! A TAP has no batched read (one frame per syscall), so a "burst" is a run
//! of reads until `EAGAIN` or the bound. The batch's writes leave in one
//! submission when it is full and at the end of the turn, and with them
//! the datagrams the transport gathered ([`Plane::flush_writes`]).
//!
//! From the tunnel ([`Plane::read_tunnel`]): each receive may hold a run of
//! datagrams (UDP GRO), opened one by one; consecutive segments of one TCP
//! flow are merged back into one GSO frame ([`gro`]) across receives of
//! the same turn, then switched like a frame read from a TAP.
//!
//! Limits: frames up to [`FRAME_BUFFER_LEN`] bytes (a 64 KiB GSO segment
//! plus headers).

use std::io;
use std::time::Instant;

use weft_services::{Egress, GatewayServices};
use weft_vswitch::gateway::REPLY_HEADROOM;
use weft_vswitch::gro;
use weft_vswitch::gso;
use weft_vswitch::sys::write_batch::{WriteBatch, FRAME_BUFFER_LEN};
use weft_vswitch::wire::packet::GatewayFrame;
use weft_vswitch::wire::vnet::{self, VnetHeader, VNET_HDR_LEN};
use weft_vswitch::{Decision, DropReason, PortId, Switch};

use crate::capture::Captures;
use crate::taps::{Taps, IO_LOOP_BOUND};
use crate::tunnel::{Carrier, Tunnel};

/// What a turn of reading one port ended with.
#[derive(Debug)]
pub enum Turn {
    /// The port has nothing more to read.
    Drained,
    /// The bound stopped the turn: the port wants another.
    MoreQueued,
    /// The device is gone.
    DeviceLost(io::Error),
}

/// The switch, the gateway services and every port they write to. See the
/// module header.
pub struct Plane {
    /// The L2 switch core.
    pub switch: Switch,
    /// The gateway's L4 services.
    pub services: GatewayServices,
    /// The sandboxes' TAPs.
    pub taps: Taps,
    /// The overlay's tunnel.
    pub tunnel: Tunnel,
    /// Packet captures (none: nothing is copied).
    pub captures: Captures,
    batch: WriteBatch,
    flood_scratch: Vec<PortId>,
    reply: Vec<u8>,
    /// Where received (possibly coalesced) tunnel datagrams land.
    tunnel_rx: Vec<u8>,
}

impl std::fmt::Debug for Plane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plane")
            .field("switch", &self.switch)
            .field("taps", &self.taps)
            .finish_non_exhaustive()
    }
}

impl Plane {
    /// A plane over these cores, with no port yet.
    pub fn new(switch: Switch, services: GatewayServices, tunnel: Tunnel) -> Self {
        Plane {
            switch,
            services,
            taps: Taps::default(),
            tunnel,
            captures: Captures::default(),
            batch: WriteBatch::new(),
            flood_scratch: Vec::new(),
            reply: vec![0; FRAME_BUFFER_LEN + REPLY_HEADROOM],
            tunnel_rx: vec![0; crate::tunnel::RX_BUFFER],
        }
    }

    /// One turn of reading `port`. See the module header.
    pub fn read_turn(&mut self, port: PortId, now: Instant) -> Turn {
        let mut turn = Turn::MoreQueued;
        for _ in 0..IO_LOOP_BOUND {
            if self.batch.is_full() {
                self.flush_writes();
            }
            if !self.taps.may_read(port, now) {
                // Parked by its egress limit: the shaper's timer queues
                // it again.
                turn = Turn::Drained;
                break;
            }
            let Some(io) = self.taps.get_mut(port) else {
                turn = Turn::Drained;
                break;
            };
            let len = match io.device.recv(self.batch.buffer()) {
                Ok(len) => len,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    turn = Turn::Drained;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    turn = Turn::DeviceLost(e);
                    break;
                }
            };
            self.taps
                .charge_read(port, len.saturating_sub(VNET_HDR_LEN));
            self.switch_frame(port, len, now);
            self.batch.keep();
        }
        self.flush_writes();
        turn
    }

    /// Switch the frame in the batch's current buffer (`len` bytes, its
    /// virtio header first), read from `ingress`.
    fn switch_frame(&mut self, ingress: PortId, len: usize, now: Instant) {
        let counters = match (self.taps.get(ingress), self.tunnel.peer(ingress)) {
            (Some(io), _) => &io.counters,
            (None, Some(peer)) => &peer.counters,
            (None, None) => return,
        };
        if len < VNET_HDR_LEN {
            counters.count_drop(DropReason::Truncated);
            return;
        }
        counters.count_rx(len - VNET_HDR_LEN);
        if !self.captures.is_empty() {
            let network = self.switch.network_of(ingress);
            let frame = &self.batch.current(len)[VNET_HDR_LEN..];
            self.captures.offer(ingress, network, false, frame);
        }
        let decision = {
            let frame = &self.batch.current(len)[VNET_HDR_LEN..];
            self.switch.handle_frame(now, ingress, frame)
        };
        match decision {
            Decision::Forward(egress) => self.queue_write(egress, len, now),
            Decision::Flood => {
                let mut ports = std::mem::take(&mut self.flood_scratch);
                ports.clear();
                ports.extend(
                    self.switch
                        .flood_ports(ingress)
                        .iter()
                        .filter(|p| **p != ingress),
                );
                for &egress in &ports {
                    self.queue_write(egress, len, now);
                }
                self.flood_scratch = ports;
            }
            Decision::ToGateway => self.gateway_frame(ingress, len, now),
            Decision::Drop(reason) => {
                tracing::debug!(port = ingress.0, reason = reason.as_str(), "drop");
                self.taps.count_drop(ingress, reason);
            }
        }
    }

    /// A `ToGateway` frame: the fast path's reply goes straight back; the
    /// rest goes to the L4 services.
    fn gateway_frame(&mut self, ingress: PortId, len: usize, now: Instant) {
        let frame_with_header = self.batch.current(len);
        let frame = &frame_with_header[VNET_HDR_LEN..];
        let (header, body) = self.reply.split_at_mut(VNET_HDR_LEN);
        // Parsed once here; the fast path and the services share the view.
        let parsed = match GatewayFrame::parse(frame) {
            Ok(parsed) => parsed,
            Err(reason) => {
                self.taps.count_drop(ingress, reason);
                return;
            }
        };
        let result = match self.switch.gateway_reply(ingress, &parsed, body) {
            Ok(reply_len) => {
                header.copy_from_slice(&vnet::EMPTY);
                if !self.captures.is_empty() {
                    let network = self.switch.network_of(ingress);
                    let reply = &self.reply[VNET_HDR_LEN..VNET_HDR_LEN + reply_len];
                    self.captures.offer(ingress, network, true, reply);
                }
                self.taps
                    .send(ingress, &self.reply[..VNET_HDR_LEN + reply_len], now);
                Ok(())
            }
            Err(DropReason::NoRoute) => {
                let mut header = [0u8; VNET_HDR_LEN];
                header.copy_from_slice(&frame_with_header[..VNET_HDR_LEN]);
                to_services(
                    &self.switch,
                    &mut self.services,
                    &mut self.reply,
                    (now, ingress),
                    &header,
                    &parsed,
                )
            }
            Err(reason) => Err(reason),
        };
        if let Err(reason) = result {
            tracing::debug!(port = ingress.0, reason = reason.as_str(), "gateway drop");
            self.taps.count_drop(ingress, reason);
        }
    }

    fn queue_write(&mut self, egress: PortId, len: usize, now: Instant) {
        if !self.captures.is_empty() {
            let network = self.switch.network_of(egress);
            let frame = &self.batch.current(len)[VNET_HDR_LEN..];
            self.captures.offer(egress, network, true, frame);
        }
        if self.taps.is_shaped(egress) {
            // A limited port: written (or queued) through its shaper, out
            // of the batch.
            self.taps.send(egress, self.batch.current(len), now);
        } else if let Some(io) = self.taps.get(egress) {
            match io.device.batch_fd() {
                Some(fd) => self.batch.push(egress, fd, len),
                // A stream port: cut and queued by its codec now.
                None => self.taps.send(egress, self.batch.current(len), now),
            }
        } else {
            if self.captures.wants_tunnel() {
                if let Some((addresses, encapsulation)) = self.tunnel.capture_view(egress) {
                    let frame = &self.batch.current(len)[VNET_HDR_LEN..];
                    self.captures
                        .offer_datagram(egress, true, addresses, &[&encapsulation, frame]);
                }
            }
            self.tunnel.send(egress, self.batch.current(len));
        }
    }

    /// Perform the queued writes and count their outcomes; send the
    /// tunnel's gathered datagrams.
    pub fn flush_writes(&mut self) {
        self.tunnel.flush();
        for result in self.batch.flush() {
            let Some(io) = self.taps.get(result.port) else {
                continue;
            };
            if result.ok {
                io.counters.count_tx(result.len - VNET_HDR_LEN);
            } else {
                io.counters.count_drop(DropReason::EgressFailed);
            }
        }
    }

    /// Datagrams from the tunnel: open, check, merge, switch. True when the
    /// transport is drained, false when the bound stopped the reading.
    pub fn read_tunnel(&mut self, carrier: Carrier, now: Instant) -> bool {
        // Consecutive segments of one TCP flow become one GSO frame (see
        // `gro`), across receives too: `run` is the frame being merged in
        // the batch's current buffer, and the port it came by. It is
        // switched before the writes are flushed, whenever the loop ends.
        let mut run: Option<(gro::Run, PortId)> = None;
        let mut drained = false;
        let mut rx = std::mem::take(&mut self.tunnel_rx);
        for _ in 0..IO_LOOP_BOUND {
            let received = match self.tunnel.recv(carrier, &mut rx) {
                Ok(received) => received,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    if !matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::NotFound
                    ) {
                        tracing::debug!(error = %e, "tunnel receive");
                    }
                    drained = true;
                    break;
                }
            };
            let datagrams = rx[..received.len.min(rx.len())].chunks(received.segment.max(1));
            let local = if self.captures.wants_tunnel() {
                self.tunnel.local_addr(carrier)
            } else {
                None
            };
            for datagram in datagrams {
                if let Some(local) = local {
                    // Every datagram that arrived, those about to be
                    // dropped too: as tcpdump on the underlay would show.
                    self.captures.offer_datagram(
                        PortId(crate::tunnel::TUNNEL_PORT_BASE),
                        false,
                        (received.from, local),
                        &[datagram],
                    );
                }
                let Some((port, inner)) =
                    self.tunnel
                        .open(&mut self.switch, carrier, received.from, datagram)
                else {
                    continue;
                };
                if let Some((merging, run_port)) = run.as_mut() {
                    if *run_port == port
                        && merging.append(&mut self.batch.buffer()[VNET_HDR_LEN..], inner)
                    {
                        continue;
                    }
                }
                if let Some((merged, run_port)) = run.take() {
                    self.switch_run(merged, run_port, now);
                }
                if self.batch.is_full() {
                    self.flush_writes();
                }
                let buffer = self.batch.buffer();
                buffer[VNET_HDR_LEN..VNET_HDR_LEN + inner.len()].copy_from_slice(inner);
                match gro::Run::start(inner) {
                    Some(started) => run = Some((started, port)),
                    None => {
                        buffer[..VNET_HDR_LEN].copy_from_slice(&vnet::wire_frame_header(inner));
                        self.tunnel.count_rx(1);
                        self.switch_frame(port, VNET_HDR_LEN + inner.len(), now);
                        self.batch.keep();
                    }
                }
            }
        }
        self.tunnel_rx = rx;
        if let Some((merged, run_port)) = run.take() {
            self.switch_run(merged, run_port, now);
        }
        self.flush_writes();
        drained
    }

    /// Switch a run of merged segments from the batch's current buffer: as
    /// one GSO frame when it merged several.
    fn switch_run(&mut self, run: gro::Run, port: PortId, now: Instant) {
        let buffer = self.batch.buffer();
        let (header, frame) = buffer.split_at_mut(VNET_HDR_LEN);
        run.finish(frame);
        let gso_header = if run.count > 1 {
            u16::try_from(run.segment_size)
                .ok()
                .and_then(|size| vnet::tcp_gso_header(&mut frame[..run.len], size))
        } else {
            None
        };
        header.copy_from_slice(
            &gso_header.unwrap_or_else(|| vnet::wire_frame_header(&frame[..run.len])),
        );
        self.tunnel.count_rx(run.count as u64);
        self.switch_frame(port, VNET_HDR_LEN + run.len, now);
        self.batch.keep();
    }

    /// Write what the gateway services produced into the networks: to the
    /// port that learned the destination, else to every local port of the
    /// network.
    pub fn flush_gateway_frames(&mut self, now: Instant) {
        while let Some((egress, mut frame, gso_size)) = self.services.poll_frame() {
            let header = if gso_size == 0 {
                vnet::EMPTY
            } else {
                vnet::tcp_gso_header(&mut frame, gso_size).unwrap_or(vnet::EMPTY)
            };
            let egress = match egress {
                Egress::Flood(network) => self
                    .switch
                    .gateway_egress(network, &frame, now)
                    .map_or(Egress::Flood(network), Egress::Port),
                port => port,
            };
            match egress {
                Egress::Port(port) => {
                    if !self.captures.is_empty() {
                        let network = self.switch.network_of(port);
                        self.captures.offer(port, network, true, &frame);
                    }
                    self.taps.send_parts(port, &header, &frame, now);
                }
                Egress::Flood(network) => {
                    for &port in self.switch.network_ports(network) {
                        if !self.captures.is_empty() {
                            self.captures.offer(port, Some(network), true, &frame);
                        }
                        self.taps.send_parts(port, &header, &frame, now);
                    }
                }
            }
        }
    }
}

/// Hand a frame to the gateway services. TCP segments go whole, GSO or
/// not: the TCP relay's stack takes 64 KiB segments and, like every
/// consumer behind the gateway, reads payloads without checking the
/// checksums a local TAP leaves partial. Only UDP GSO segments (USO) are
/// cut into datagrams first.
fn to_services(
    switch: &Switch,
    services: &mut GatewayServices,
    scratch: &mut [u8],
    (now, ingress): (Instant, PortId),
    header: &[u8; VNET_HDR_LEN],
    frame: &GatewayFrame<'_>,
) -> Result<(), DropReason> {
    let (network, gateway) = switch.gateway_of(ingress)?;
    let vnet = VnetHeader::new_checked(&header[..]).map_err(|_| DropReason::Truncated)?;
    if !vnet.is_gso() || matches!(vnet.gso_type(), vnet::GSO_TCPV4 | vnet::GSO_TCPV6) {
        return services.handle_frame(now, network, gateway, ingress, frame);
    }
    // A UDP GSO frame becomes datagrams, each a frame of its own.
    let mut result = Ok(());
    gso::segment(&vnet, frame.bytes(), scratch, |segment| {
        let handled = GatewayFrame::parse(segment)
            .and_then(|segment| services.handle_frame(now, network, gateway, ingress, &segment));
        if let Err(reason) = handled {
            result = Err(reason);
        }
    })
    .map_err(|_| DropReason::Malformed)?;
    result
}
