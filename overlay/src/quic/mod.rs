//! QUIC between weft hosts: the core of the encrypted transport. Sans-IO
//! (quinn-proto): datagrams and the time go in, datagrams to send and the
//! frames that arrived come out; the driver ([`crate::driver::quic`]) owns
//! the socket and reads the clock.
//!
//! # Theory of operation
//!
//! One QUIC connection per pair of hosts carries the frames of every
//! encrypted overlay network between them, each frame in one QUIC datagram
//! (RFC 9221: unreliable, unordered, never retransmitted, so no
//! head-of-line blocking) behind the same 8-byte VXLAN header the plain
//! transport uses (it names the VNI; captures of the tunnel read alike).
//! Every host listens and connects: the first frame for a host with no
//! connection opens one ([`QuicTunnel::send`]) and waits, with a bounded
//! number of others ([`PENDING_LIMIT`]), for the handshake; a connection
//! the other side opened is used as well as one of ours. Who may connect
//! is [`crypto`]'s: the cluster key, on both sides.
//!
//! Connections are found by the peer's current address. When a host's
//! address changes, the connections it opened follow it (QUIC migration:
//! its packets arrive from the new address with the same connection ids,
//! and the path is validated before it is used); for those it accepted,
//! the gossip tells the others its new address and their next frame
//! opens a connection there. A connection idle for [`IDLE_TIMEOUT`] (keep
//! alives every [`KEEP_ALIVE`]) is closed; so is one that lost its peer.
//!
//! MTU: the driver gives the underlay's UDP payload size; quinn starts at
//! it, probes (PMTUD, RFC 8899 as quinn does it) and falls back when the
//! path shrinks. [`QuicTunnel::max_datagram`] says what fits now, and the
//! driver cuts frames to it.
//!
//! Congestion control: none of the tunnel's own ([`congestion`]).
//!
//! Counters per connection ([`QuicPeerStats`]) for `weft peers` and
//! `network inspect`.

pub mod congestion;
pub mod crypto;

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use quinn_proto::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn_proto::{
    AckFrequencyConfig, ClientConfig, Connection, ConnectionHandle, DatagramEvent, Endpoint,
    EndpointConfig, Event, MtuDiscoveryConfig, SendDatagramError, ServerConfig, TransportConfig,
    VarInt,
};
use rustc_hash::FxHashMap;
use serde::Serialize;

pub use crypto::{CryptoError, QuicIdentity};

/// Frames kept for a connection whose handshake is under way.
pub const PENDING_LIMIT: usize = 256;

/// Keep-alive interval: a quiet tunnel still shows a dead peer soon, and
/// NAT bindings on the way stay open.
pub const KEEP_ALIVE: Duration = Duration::from_secs(2);

/// A connection that heard nothing for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Outgoing datagrams quinn may queue per connection (bytes); older ones
/// are dropped first beyond it. Without a window of its own the queue is
/// emptied at every flush, so it only holds what the data path gathers
/// between two: the driver flushes early when less than a 64 KiB frame's
/// worth is left ([`QuicTunnel::send_buffer_low`]).
const DATAGRAM_SEND_BUFFER: usize = 2 << 20;

/// Room below which the driver flushes before queuing more.
const SEND_BUFFER_LOW: usize = 128 << 10;

/// Incoming datagrams quinn may hold before the driver reads them (bytes).
const DATAGRAM_RECEIVE_BUFFER: usize = 4 << 20;

/// Packets the peer may receive before it must acknowledge (the ACK
/// frequency extension), and how long it may wait.
const ACK_EVERY: u32 = 32;
const ACK_DELAY: Duration = Duration::from_millis(5);

/// The name the client asks for; the key, not the name, is checked.
const SERVER_NAME: &str = "weft";

/// UDP payload size QUIC is always allowed (RFC 9000: 1200).
const MIN_UDP_PAYLOAD: u16 = 1200;

/// Bytes QUIC adds to a datagram's payload on the wire (UDP payload minus
/// datagram): a short header (1 + 8-byte connection id + up to 4 bytes of
/// packet number), the DATAGRAM frame's type and length (quinn reserves 9),
/// and the AEAD tag (16). What quinn subtracts in
/// `datagrams().max_size()`.
pub const QUIC_DATAGRAM_OVERHEAD: usize = 1 + 8 + 4 + 9 + 16;

/// Bytes between an encrypted network's sandbox MTU and the underlay's
/// MTU over IPv4: IPv4 (20) + UDP (8) + QUIC ([`QUIC_DATAGRAM_OVERHEAD`],
/// 38) + the VXLAN header (8) + the inner Ethernet header (14) = 88; a
/// 1500-byte underlay gives 1412.
pub const OVERHEAD_V4: usize = 20 + 8 + QUIC_DATAGRAM_OVERHEAD + 8 + 14;

/// [`OVERHEAD_V4`] over IPv6 (its header is 40 bytes): 108.
pub const OVERHEAD_V6: usize = OVERHEAD_V4 + 20;

/// What became of a frame given to [`QuicTunnel::send`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Queued in the connection; it leaves at the next transmit.
    Queued,
    /// Kept until the handshake ends.
    Waiting,
    /// Lost: no connection could be had, or too many frames wait.
    Dropped,
    /// Larger than a datagram on this path can be now.
    TooLarge,
}

/// A connection's state as `weft peers` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkState {
    /// The handshake is under way.
    Handshaking,
    /// Authenticated; frames flow.
    Established,
    /// Closing or closed (the peer left, timed out or failed the
    /// handshake).
    Closed,
}

/// One connection's counters (`weft peers`, `network inspect`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QuicPeerStats {
    /// The peer's current address.
    pub remote: SocketAddr,
    /// Who opened it: `client` (this host) or `server` (the peer).
    pub opened_by: &'static str,
    /// Its state.
    pub state: LinkState,
    /// Overlay frames (QUIC datagrams) sent and received.
    pub tx_datagrams: u64,
    /// See `tx_datagrams`.
    pub rx_datagrams: u64,
    /// UDP bytes sent and received (QUIC's overhead and control included).
    pub tx_bytes: u64,
    /// See `tx_bytes`.
    pub rx_bytes: u64,
    /// Packets QUIC declared lost.
    pub lost_packets: u64,
    /// Smoothed round-trip time, in microseconds.
    pub rtt_us: u64,
    /// The path's current UDP payload size (PMTUD's estimate).
    pub path_mtu: u16,
    /// The largest overlay datagram that fits now.
    pub max_datagram: Option<usize>,
    /// Frames dropped at this connection (too many waiting for the
    /// handshake, or too large for the path).
    pub dropped: u64,
}

/// Counters of the whole endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct QuicCounters {
    /// Connections that ended in a failed handshake (a host without the
    /// cluster key among the causes).
    pub handshake_failures: u64,
    /// Connections established.
    pub established: u64,
    /// Frames sent toward a host no connection could be opened to.
    pub unreachable: u64,
}

/// The knobs of [`QuicTunnel::new`].
#[derive(Debug, Clone, Copy)]
pub struct QuicConfig {
    /// The underlay's UDP payload size (the MTU minus the IP and UDP
    /// headers): where QUIC's packet size starts and PMTUD's upper bound.
    pub udp_payload: u16,
    /// Use quinn's CUBIC instead of [`congestion::Transparent`] (for
    /// measuring the difference).
    pub cubic: bool,
}

impl Default for QuicConfig {
    fn default() -> Self {
        QuicConfig {
            udp_payload: 1500 - 28,
            cubic: false,
        }
    }
}

/// One connection and what waits for it.
struct Link {
    connection: Connection,
    established: bool,
    /// Frames given before the handshake ended.
    pending: VecDeque<Bytes>,
    dropped: u64,
    rx_datagrams: u64,
    tx_datagrams: u64,
}

/// See the module header.
pub struct QuicTunnel {
    endpoint: Endpoint,
    client: ClientConfig,
    links: FxHashMap<ConnectionHandle, Link>,
    /// The peer's address → the connection frames to it take.
    routes: FxHashMap<SocketAddr, ConnectionHandle>,
    /// Frames that arrived, with their sender, for the driver to read.
    received: VecDeque<(SocketAddr, Bytes)>,
    /// Stateless answers of the endpoint (version negotiation, refusals).
    responses: VecDeque<(SocketAddr, Vec<u8>)>,
    counters: QuicCounters,
    scratch: Vec<u8>,
}

impl std::fmt::Debug for QuicTunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicTunnel")
            .field("links", &self.links.len())
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl QuicTunnel {
    /// An endpoint that accepts and opens connections as `identity`.
    ///
    /// # Errors
    ///
    /// [`CryptoError`] when the TLS configuration cannot be made.
    pub fn new(identity: &QuicIdentity, config: QuicConfig) -> Result<QuicTunnel, CryptoError> {
        let transport = Arc::new(transport_config(config));
        let server_crypto = QuicServerConfig::try_from(identity.server_config()?)
            .map_err(|e| CryptoError::from(e.to_string()))?;
        let mut server = ServerConfig::with_crypto(Arc::new(server_crypto));
        server.transport_config(Arc::clone(&transport));
        server.migration(true);
        let client_crypto = QuicClientConfig::try_from(identity.client_config()?)
            .map_err(|e| CryptoError::from(e.to_string()))?;
        let mut client = ClientConfig::new(Arc::new(client_crypto));
        client.transport_config(transport);
        let endpoint = Endpoint::new(
            Arc::new(EndpointConfig::default()),
            Some(Arc::new(server)),
            true,
            None,
        );
        Ok(QuicTunnel {
            endpoint,
            client,
            links: FxHashMap::default(),
            routes: FxHashMap::default(),
            received: VecDeque::new(),
            responses: VecDeque::new(),
            counters: QuicCounters::default(),
            scratch: Vec::new(),
        })
    }

    /// Send one frame (its VXLAN header first) to the host at `to`,
    /// opening a connection if there is none.
    pub fn send(&mut self, now: Instant, to: SocketAddr, datagram: Bytes) -> Sent {
        let handle = match self.routes.get(&to) {
            Some(handle) => *handle,
            None => match self.connect(now, to) {
                Some(handle) => handle,
                None => {
                    self.counters.unreachable += 1;
                    return Sent::Dropped;
                }
            },
        };
        let Some(link) = self.links.get_mut(&handle) else {
            return Sent::Dropped;
        };
        if !link.established {
            if link.pending.len() >= PENDING_LIMIT {
                link.dropped += 1;
                return Sent::Dropped;
            }
            link.pending.push_back(datagram);
            return Sent::Waiting;
        }
        link.queue(datagram)
    }

    /// Whether the queue toward `to` is nearly full: the driver sends what
    /// is queued before it queues more (else the oldest would be dropped).
    pub fn send_buffer_low(&mut self, to: SocketAddr) -> bool {
        self.established(to)
            .is_some_and(|link| link.connection.datagrams().send_buffer_space() < SEND_BUFFER_LOW)
    }

    /// The largest datagram (VXLAN header and frame) that fits the path to
    /// `to` now; None before a connection is established.
    pub fn max_datagram(&mut self, to: SocketAddr) -> Option<usize> {
        self.established(to)?.connection.datagrams().max_size()
    }

    /// The established connection frames to `to` take.
    fn established(&mut self, to: SocketAddr) -> Option<&mut Link> {
        let handle = self.routes.get(&to)?;
        self.links.get_mut(handle).filter(|link| link.established)
    }

    /// One UDP datagram from the underlay.
    pub fn handle(&mut self, now: Instant, from: SocketAddr, local: Option<IpAddr>, data: &[u8]) {
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        let event = self
            .endpoint
            .handle(now, from, local, None, BytesMut::from(data), &mut buf);
        match event {
            Some(DatagramEvent::ConnectionEvent(handle, event)) => {
                if let Some(link) = self.links.get_mut(&handle) {
                    link.connection.handle_event(event);
                    self.drive(handle);
                }
            }
            Some(DatagramEvent::NewConnection(incoming)) => {
                match self.endpoint.accept(incoming, now, &mut buf, None) {
                    Ok((handle, connection)) => {
                        tracing::debug!(%from, "quic: a host connects");
                        self.links.insert(handle, Link::new(connection));
                        self.drive(handle);
                    }
                    Err(e) => {
                        tracing::debug!(%from, error = %e.cause, "quic: connection refused");
                        if let Some(response) = e.response {
                            self.responses
                                .push_back((response.destination, buf[..response.size].to_vec()));
                        }
                    }
                }
            }
            Some(DatagramEvent::Response(transmit)) => {
                self.responses
                    .push_back((transmit.destination, buf[..transmit.size].to_vec()));
            }
            None => {}
        }
        self.scratch = buf;
    }

    /// The next frame that arrived, with the address of its host.
    pub fn poll_received(&mut self) -> Option<(SocketAddr, Bytes)> {
        self.received.pop_front()
    }

    /// The next UDP datagrams to send: written into `buf`, to
    /// `destination`, `segment` bytes each (the last may be shorter); at
    /// most `max_datagrams` of them.
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        max_datagrams: usize,
        buf: &mut Vec<u8>,
    ) -> Option<Transmit> {
        if let Some((destination, bytes)) = self.responses.pop_front() {
            buf.clear();
            buf.extend_from_slice(&bytes);
            return Some(Transmit {
                destination,
                size: bytes.len(),
                segment: bytes.len(),
            });
        }
        let handles: Vec<ConnectionHandle> = self.links.keys().copied().collect();
        for handle in handles {
            let Some(link) = self.links.get_mut(&handle) else {
                continue;
            };
            buf.clear();
            let transmit = link
                .connection
                .poll_transmit(now, max_datagrams.max(1), buf);
            self.drive(handle);
            if let Some(t) = transmit {
                return Some(Transmit {
                    destination: t.destination,
                    size: t.size,
                    segment: t.segment_size.unwrap_or(t.size),
                });
            }
        }
        None
    }

    /// When [`QuicTunnel::handle_timeout`] is due next.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        self.links
            .values_mut()
            .filter_map(|link| link.connection.poll_timeout())
            .min()
    }

    /// Run the timers that are due (loss detection, keep-alives, idle
    /// timeouts, PMTUD probes).
    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<ConnectionHandle> = self
            .links
            .iter_mut()
            .filter_map(|(handle, link)| {
                let at = link.connection.poll_timeout()?;
                (at <= now).then_some(*handle)
            })
            .collect();
        for handle in due {
            if let Some(link) = self.links.get_mut(&handle) {
                link.connection.handle_timeout(now);
                self.drive(handle);
            }
        }
    }

    /// Close the connections other hosts opened to this one: after this
    /// host's address changed they point at the old one (QUIC lets only
    /// the side that opened a connection move it). The next frame to each
    /// host opens a connection from here, which follows this host from now
    /// on. Connections this host opened move by themselves.
    pub fn close_accepted(&mut self, now: Instant) {
        let accepted: Vec<ConnectionHandle> = self
            .links
            .iter()
            .filter(|(_, link)| link.connection.side().is_server())
            .map(|(handle, _)| *handle)
            .collect();
        for handle in accepted {
            self.routes.retain(|_, h| *h != handle);
            if let Some(link) = self.links.get_mut(&handle) {
                link.connection
                    .close(now, VarInt::from_u32(0), Bytes::from_static(b"moved"));
            }
            self.drive(handle);
        }
    }

    /// Every connection's counters.
    pub fn peers(&mut self) -> Vec<QuicPeerStats> {
        let mut peers: Vec<QuicPeerStats> = self
            .links
            .values_mut()
            .map(|link| {
                let stats = link.connection.stats();
                let state = if link.connection.is_closed() {
                    LinkState::Closed
                } else if link.established {
                    LinkState::Established
                } else {
                    LinkState::Handshaking
                };
                QuicPeerStats {
                    remote: link.connection.remote_address(),
                    opened_by: match link.connection.side() {
                        quinn_proto::Side::Client => "client",
                        quinn_proto::Side::Server => "server",
                    },
                    state,
                    tx_datagrams: link.tx_datagrams,
                    rx_datagrams: link.rx_datagrams,
                    tx_bytes: stats.udp_tx.bytes,
                    rx_bytes: stats.udp_rx.bytes,
                    lost_packets: stats.path.lost_packets,
                    rtt_us: u64::try_from(stats.path.rtt.as_micros()).unwrap_or(u64::MAX),
                    path_mtu: stats.path.current_mtu,
                    max_datagram: if link.established {
                        link.connection.datagrams().max_size()
                    } else {
                        None
                    },
                    dropped: link.dropped,
                }
            })
            .collect();
        peers.sort_by_key(|p| p.remote);
        peers
    }

    /// The endpoint's counters.
    pub fn counters(&self) -> QuicCounters {
        self.counters
    }

    /// Open a connection to `to`; None when quinn refuses (no address).
    fn connect(&mut self, now: Instant, to: SocketAddr) -> Option<ConnectionHandle> {
        match self
            .endpoint
            .connect(now, self.client.clone(), to, SERVER_NAME)
        {
            Ok((handle, connection)) => {
                tracing::debug!(%to, "quic: connecting");
                self.links.insert(handle, Link::new(connection));
                self.routes.insert(to, handle);
                Some(handle)
            }
            Err(e) => {
                tracing::debug!(%to, error = %e, "quic: cannot connect");
                None
            }
        }
    }

    /// After anything happened to a connection: its events for the
    /// endpoint and for us, its frames, and its end.
    fn drive(&mut self, handle: ConnectionHandle) {
        let Some(link) = self.links.get_mut(&handle) else {
            return;
        };
        while let Some(event) = link.connection.poll_endpoint_events() {
            if let Some(event) = self.endpoint.handle_event(handle, event) {
                link.connection.handle_event(event);
            }
        }
        while let Some(event) = link.connection.poll() {
            match event {
                Event::Connected => {
                    link.established = true;
                    self.counters.established += 1;
                    let remote = link.connection.remote_address();
                    tracing::info!(%remote, "quic: tunnel established");
                    // A connection the peer opened serves until ours is
                    // up, and ours is kept once it is.
                    let ours = link.connection.side().is_client();
                    let route = self.routes.entry(remote).or_insert(handle);
                    if ours {
                        *route = handle;
                    }
                    while let Some(datagram) = link.pending.pop_front() {
                        link.queue(datagram);
                    }
                }
                Event::ConnectionLost { reason } => {
                    let remote = link.connection.remote_address();
                    if link.established {
                        tracing::info!(%remote, %reason, "quic: tunnel lost");
                    } else {
                        self.counters.handshake_failures += 1;
                        tracing::warn!(%remote, %reason, "quic: handshake failed (a host with another cluster key?)");
                    }
                    link.dropped += link.pending.len() as u64;
                    link.pending.clear();
                }
                Event::DatagramReceived => {}
                Event::HandshakeDataReady | Event::Stream(_) | Event::DatagramsUnblocked => {}
            }
        }
        let remote = link.connection.remote_address();
        while let Some(datagram) = link.connection.datagrams().recv() {
            link.rx_datagrams += 1;
            self.received.push_back((remote, datagram));
        }
        // A connection that migrated is found at its new address.
        if link.established && !self.routes.contains_key(&remote) {
            self.routes.insert(remote, handle);
        }
        if link.connection.is_closed() {
            self.routes.retain(|_, h| *h != handle);
        }
        if link.connection.is_drained() {
            self.links.remove(&handle);
        }
    }
}

impl Link {
    /// Queue a datagram on the established connection (the oldest queued
    /// go first when the queue is full), counted.
    fn queue(&mut self, datagram: Bytes) -> Sent {
        match self.connection.datagrams().send(datagram, true) {
            Ok(()) => {
                self.tx_datagrams += 1;
                Sent::Queued
            }
            Err(SendDatagramError::TooLarge) => {
                self.dropped += 1;
                Sent::TooLarge
            }
            Err(_) => {
                self.dropped += 1;
                Sent::Dropped
            }
        }
    }

    fn new(connection: Connection) -> Link {
        Link {
            connection,
            established: false,
            pending: VecDeque::new(),
            dropped: 0,
            rx_datagrams: 0,
            tx_datagrams: 0,
        }
    }
}

/// UDP datagrams to send, from [`QuicTunnel::poll_transmit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// Where to.
    pub destination: SocketAddr,
    /// Bytes written to the buffer.
    pub size: usize,
    /// Each datagram's size (UDP GSO); `size` for a single one.
    pub segment: usize,
}

/// The transport parameters both sides use.
fn transport_config(config: QuicConfig) -> TransportConfig {
    let mut transport = TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(VarInt::from_u32(0))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .datagram_receive_buffer_size(Some(DATAGRAM_RECEIVE_BUFFER))
        .datagram_send_buffer_size(DATAGRAM_SEND_BUFFER)
        .keep_alive_interval(Some(KEEP_ALIVE))
        .max_idle_timeout(IDLE_TIMEOUT.try_into().ok())
        .initial_rtt(Duration::from_millis(20));
    let payload = config.udp_payload.max(MIN_UDP_PAYLOAD);
    transport.initial_mtu(payload).min_mtu(MIN_UDP_PAYLOAD);
    let mut mtud = MtuDiscoveryConfig::default();
    mtud.upper_bound(payload);
    transport.mtu_discovery_config(Some(mtud));
    if !config.cubic {
        transport.congestion_controller_factory(Arc::new(congestion::Transparent));
        // Without a window to open, acknowledgements only serve loss
        // counting, RTT and PMTUD: ask the peer (the ACK frequency
        // extension) for one every ACK_EVERY packets or ACK_DELAY instead
        // of every other packet, which halves neither side's work for
        // nothing.
        let mut acks = AckFrequencyConfig::default();
        acks.ack_eliciting_threshold(VarInt::from_u32(ACK_EVERY))
            .max_ack_delay(Some(ACK_DELAY));
        transport.ack_frequency_config(Some(acks));
    }
    transport
}

#[cfg(test)]
mod tests;
