//! The overlay's tunnel: the transport's fd, the VTEP table's ports in the
//! switch, and the check that a datagram comes from a cluster member.
//!
//! # Theory of operation
//!
//! The tunnel is one more kind of port of the switch: one per remote host
//! of each overlay network, numbered from [`TUNNEL_PORT_BASE`] up. Which
//! port leads where is the overlay's sans-IO [`VtepTable`]; this module
//! applies what it decides to the switch ([`Tunnel::set_overlay`],
//! [`Tunnel::remove_network`]) and keeps the per-port counters the control
//! plane shows in `network inspect` ([`TunnelPorts`]).
//!
//! Frames leave through one of two [`Transport`]s, the [`Carrier`]s: VXLAN
//! over UDP for plain networks, QUIC for encrypted ones (each tunnel port's
//! [`TunnelPeer::encrypted`] says which; an encrypted network's frame
//! without a QUIC transport is dropped, never sent in clear). Datagrams
//! that arrive are opened here ([`Tunnel::open`]): from a member or static
//! peer only, of a VNI this host has, small enough for a frame buffer,
//! and, for an encrypted network, by QUIC. Everything else is dropped and
//! counted ([`TunnelCounters`]). The receive loop itself, which
//! merges segments back into 64 KiB frames, is part of the frame plane
//! ([`crate::frames`]).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use rustc_hash::FxHashSet;
use weft_overlay::{OverlayTable, Transport, TunnelPeer, VtepTable};
use weft_vswitch::counters::PortCountersSnapshot;
use weft_vswitch::sys::write_batch::FRAME_BUFFER_LEN;
use weft_vswitch::wire::vnet::VNET_HDR_LEN;
use weft_vswitch::{DropReason, NetworkId, PortCounters, PortId, Switch};

use crate::tokens::{Source, Tokens};

/// Tunnel ports get ids from here up; TAP ports count up from 1.
pub const TUNNEL_PORT_BASE: u32 = 0x8000_0000;

/// Largest coalesced receive: a UDP GRO run is at most 64 KiB.
pub const RX_BUFFER: usize = 65_536;

/// Counters of the tunnel (all overlay networks).
#[derive(Debug, Default)]
pub struct TunnelCounters {
    /// Datagrams received and switched.
    pub rx: AtomicU64,
    /// Datagrams sent.
    pub tx: AtomicU64,
    /// Datagrams from an address that is neither a member nor a static
    /// peer.
    pub dropped_not_member: AtomicU64,
    /// Datagrams that are not valid encapsulation, or of an unknown VNI.
    pub dropped_invalid: AtomicU64,
    /// Clear-text VXLAN for an encrypted network, and frames of encrypted
    /// networks that had no QUIC transport to leave by.
    pub dropped_unencrypted: AtomicU64,
}

/// The two ways frames travel between hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Carrier {
    /// VXLAN over UDP: plain networks.
    Vxlan,
    /// QUIC datagrams: encrypted networks.
    Quic,
}

impl Carrier {
    fn index(self) -> usize {
        match self {
            Carrier::Vxlan => 0,
            Carrier::Quic => 1,
        }
    }

    /// The carrier of a network's frames.
    pub fn of(encrypted: bool) -> Carrier {
        if encrypted {
            Carrier::Quic
        } else {
            Carrier::Vxlan
        }
    }
}

/// An enabled transport, its poll token, and its address (read once).
#[derive(Debug)]
struct Enabled {
    transport: Box<dyn Transport>,
    token: Token,
    local: Option<SocketAddr>,
}

/// The counters of every tunnel port (one remote host of one overlay
/// network), shared with the control plane for `network inspect`. The
/// data-path thread adds and removes entries when it makes or drops a
/// tunnel port, never per frame.
#[derive(Debug, Clone, Default)]
pub struct TunnelPorts(Arc<Mutex<TunnelPortMap>>);

/// (overlay network, remote host) → that tunnel port's counters.
type TunnelPortMap = BTreeMap<(NetworkId, IpAddr), Arc<PortCounters>>;

impl TunnelPorts {
    /// The map, even if a thread panicked holding it (counters only).
    fn lock(&self) -> MutexGuard<'_, TunnelPortMap> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The counters of `network`'s tunnel ports, by remote host.
    pub fn snapshot(&self, network: NetworkId) -> Vec<(IpAddr, PortCountersSnapshot)> {
        self.lock()
            .range((network, IpAddr::from([0u8; 4]))..)
            .take_while(|((n, _), _)| *n == network)
            .map(|((_, ip), counters)| (*ip, counters.snapshot()))
            .collect()
    }
}

/// See the module header.
#[derive(Debug)]
pub struct Tunnel {
    /// By [`Carrier::index`].
    transports: [Option<Enabled>; 2],
    vteps: VtepTable,
    /// Underlay addresses datagrams are accepted from.
    members: FxHashSet<IpAddr>,
    counters: Arc<TunnelCounters>,
    ports: TunnelPorts,
}

impl Tunnel {
    /// No transport yet, no overlay network.
    pub fn new(counters: Arc<TunnelCounters>, ports: TunnelPorts) -> Self {
        Tunnel {
            transports: [None, None],
            vteps: VtepTable::new(TUNNEL_PORT_BASE),
            members: FxHashSet::default(),
            counters,
            ports,
        }
    }

    /// Carry the overlay networks of `carrier` over `transport` from now on.
    pub fn enable(
        &mut self,
        registry: &Registry,
        tokens: &mut Tokens,
        carrier: Carrier,
        transport: Box<dyn Transport>,
    ) {
        if let Some(old) = self.transports[carrier.index()].take() {
            let _ = registry.deregister(&mut SourceFd(&old.transport.raw_fd()));
            tokens.remove(old.token);
        }
        let token = tokens.insert(Source::Tunnel(carrier));
        let raw = transport.raw_fd();
        if let Err(e) = registry.register(&mut SourceFd(&raw), token, Interest::READABLE) {
            tracing::error!(error = %e, "data path: register the tunnel");
            tokens.remove(token);
            return;
        }
        let local = transport.local_addr();
        self.transports[carrier.index()] = Some(Enabled {
            transport,
            token,
            local,
        });
    }

    fn enabled(&self, carrier: Carrier) -> Option<&Enabled> {
        self.transports[carrier.index()].as_ref()
    }

    fn enabled_mut(&mut self, carrier: Carrier) -> Option<&mut Enabled> {
        self.transports[carrier.index()].as_mut()
    }

    /// The underlay addresses datagrams are accepted from.
    pub fn set_members(&mut self, members: impl IntoIterator<Item = IpAddr>) {
        self.members = members.into_iter().collect();
    }

    /// The remote host behind a tunnel port, when `port` is one.
    pub fn peer(&self, port: PortId) -> Option<&TunnelPeer> {
        self.vteps.peer(port)
    }

    /// Send a frame (with its virtio header) to the host behind `port`.
    pub fn send(&mut self, port: PortId, frame_with_header: &[u8]) {
        let Some(peer) = self.vteps.peer(port) else {
            return;
        };
        let carrier = Carrier::of(peer.encrypted);
        let Some(enabled) = self.transports[carrier.index()].as_mut() else {
            if carrier == Carrier::Quic {
                // Never in clear: without QUIC, an encrypted network's
                // frames do not leave.
                self.counters
                    .dropped_unencrypted
                    .fetch_add(1, Ordering::Relaxed);
                peer.counters.count_drop(DropReason::EgressFailed);
            }
            return;
        };
        let sent = enabled.transport.send_frame(peer, frame_with_header);
        self.counters.tx.fetch_add(sent, Ordering::Relaxed);
    }

    /// For a capture of the tunnel: the underlay addresses of a datagram
    /// to the host behind `port` (from, to) and what the transport puts
    /// before the inner frame.
    pub fn capture_view(&self, port: PortId) -> Option<((SocketAddr, SocketAddr), Vec<u8>)> {
        let peer = self.vteps.peer(port)?;
        let enabled = self.enabled(Carrier::of(peer.encrypted))?;
        let to = SocketAddr::new(peer.addr.ip(), enabled.transport.peer_port());
        Some(((enabled.local?, to), enabled.transport.encapsulation(peer)))
    }

    /// The address of `carrier`'s transport (where its datagrams arrive).
    pub fn local_addr(&self, carrier: Carrier) -> Option<SocketAddr> {
        self.enabled(carrier)?.local
    }

    /// Send what the transports gathered.
    pub fn flush(&mut self) {
        for enabled in self.transports.iter_mut().flatten() {
            let sent = enabled.transport.flush();
            self.counters.tx.fetch_add(sent, Ordering::Relaxed);
        }
    }

    /// When a transport's timers are due next.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        self.transports
            .iter_mut()
            .flatten()
            .filter_map(|enabled| enabled.transport.poll_timeout())
            .min()
    }

    /// Run the transports' timers that are due, and send what they made.
    pub fn handle_timeout(&mut self, now: Instant) {
        for enabled in self.transports.iter_mut().flatten() {
            enabled.transport.handle_timeout(now);
        }
        self.flush();
    }

    /// This host's underlay address changed: each transport drops what was
    /// tied to the old one.
    pub fn underlay_moved(&mut self, now: Instant) {
        for enabled in self.transports.iter_mut().flatten() {
            enabled.transport.underlay_moved(now);
        }
        self.flush();
    }

    /// Receive a burst from `carrier` into `buf`: its length, sender and
    /// datagram size. `WouldBlock` when there is nothing more; `NotFound`
    /// when there is no such transport.
    pub fn recv(
        &mut self,
        carrier: Carrier,
        buf: &mut [u8],
    ) -> std::io::Result<weft_overlay::Received> {
        let Some(enabled) = self.enabled_mut(carrier) else {
            return Err(std::io::ErrorKind::NotFound.into());
        };
        enabled.transport.recv(buf)
    }

    /// One datagram from `from`: check its sender, open it; its inner frame
    /// and the tunnel port it came by, or None (dropped, counted).
    pub fn open<'d>(
        &mut self,
        switch: &mut Switch,
        carrier: Carrier,
        from: SocketAddr,
        datagram: &'d [u8],
    ) -> Option<(PortId, &'d [u8])> {
        if !self.members.contains(&from.ip()) {
            self.counters
                .dropped_not_member
                .fetch_add(1, Ordering::Relaxed);
            tracing::trace!(%from, "tunnel datagram from a non-member, dropped");
            return None;
        }
        let transport = &self.enabled(carrier)?.transport;
        let opened = transport.open(datagram).and_then(|(vni, inner)| {
            let network = self.vteps.network(vni)?;
            (inner.len() + VNET_HDR_LEN <= FRAME_BUFFER_LEN).then_some((vni, network, inner))
        });
        let Some((vni, network, inner)) = opened else {
            self.counters
                .dropped_invalid
                .fetch_add(1, Ordering::Relaxed);
            return None;
        };
        if carrier == Carrier::Vxlan && self.vteps.encrypted(network) {
            self.counters
                .dropped_unencrypted
                .fetch_add(1, Ordering::Relaxed);
            tracing::trace!(%from, vni = vni.get(), "clear-text VXLAN for an encrypted network, dropped");
            return None;
        }
        // Peers are known by address; they send from any port and are
        // sent to at the VXLAN transport's port (QUIC only needs the
        // address, and finds its own port).
        let port = self
            .enabled(Carrier::Vxlan)
            .unwrap_or(self.enabled(carrier)?)
            .transport
            .peer_port();
        let peer = SocketAddr::new(from.ip(), port);
        let (port, new) = self.vteps.port_for(network, vni, peer)?;
        if let Some(new) = new {
            if !add_to_switch(switch, &mut self.vteps, &self.ports, new) {
                return None;
            }
        }
        Some((port, inner))
    }

    /// Count datagrams received and switched.
    pub fn count_rx(&self, datagrams: u64) {
        self.counters.rx.fetch_add(datagrams, Ordering::Relaxed);
    }

    /// Make `network` an overlay network, or update its view of the other
    /// hosts, and apply the difference to the switch.
    pub fn set_overlay(&mut self, switch: &mut Switch, network: NetworkId, table: &OverlayTable) {
        let update = self.vteps.set_overlay(network, table);
        for (port, host) in update.removed {
            self.ports.lock().remove(&(network, host));
            switch.remove_port(port);
        }
        for new in update.added {
            add_to_switch(switch, &mut self.vteps, &self.ports, new);
        }
        switch.set_remote_endpoints(network, update.remote_macs, update.proxy_arp);
    }

    /// Forget an overlay network (the switch dropped its ports with it).
    pub fn remove_network(&mut self, network: NetworkId) {
        for (_, host) in self.vteps.remove_network(network) {
            self.ports.lock().remove(&(network, host));
        }
    }
}

/// Add a tunnel port the VTEP table made to the switch, and its counters to
/// the shared map; if the switch refuses it, the table forgets it.
fn add_to_switch(
    switch: &mut Switch,
    vteps: &mut VtepTable,
    ports: &TunnelPorts,
    new: weft_overlay::vtep::NewVtep,
) -> bool {
    if let Err(e) = switch.add_tunnel_port(new.port, new.network) {
        tracing::error!(error = %e, "data path: add tunnel port");
        vteps.forget(new.network, new.host);
        return false;
    }
    ports.lock().insert((new.network, new.host), new.counters);
    true
}
