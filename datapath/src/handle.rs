//! The control plane's handle on the data-path thread.
//!
//! # Theory of operation
//!
//! [`Datapath::spawn`] builds the cores (the switch, the gateway services,
//! the tunnel's VTEP table), starts one thread that owns them and every fd
//! ([`crate::event_loop`]), and returns this handle. Each method queues a
//! [`Command`] on a channel and wakes the loop with a `mio::Waker`; only
//! [`Datapath::remove_port`] waits for an answer (bounded). Port and
//! published-port ids are chosen here, so a call returns its id at once.
//! Counters are shared through `Arc`s the data path writes without locks.
//! Dropping the handle stops the thread.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::taps::PortDevice;
use mio::{Poll, Waker};
use weft_overlay::{OverlayTable, Transport};
use weft_services::dns::{DnsConfig, Zone};
use weft_services::{GatewayServices, NatLimits, NatNetworkStats};
use weft_vswitch::counters::PortCountersSnapshot;
use weft_vswitch::{GatewayConfig, NetworkId, PortCounters, PortId, Switch};

use crate::command::Command;
use crate::event_loop::Loop;
use crate::frames::Plane;
use crate::published::{HostListener, PublishId, PublishTarget};
use crate::tokens::WAKER;
use crate::tunnel::{Carrier, Tunnel, TunnelCounters, TunnelPorts};

/// How long the control plane waits for the data path to hand back a port.
const COMMAND_REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest DNS answer over UDP: the DNS flag day 2020 size, which fits any
/// sandbox MTU without IP fragmentation (the gateway does not fragment);
/// larger answers go out truncated and the client retries over TCP.
const DNS_MAX_UDP_PAYLOAD: u16 = 1232;

/// The handle of the data-path thread. Dropping it stops the thread.
#[derive(Debug)]
pub struct Datapath {
    commands: mpsc::Sender<Command>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
    next_port: AtomicU32,
    next_publish: AtomicU32,
    next_capture: std::sync::atomic::AtomicU64,
    tunnel_counters: Arc<TunnelCounters>,
    tunnel_ports: TunnelPorts,
}

/// Why the data path did not take a command.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// The data-path thread is gone (it panicked or was shut down).
    #[error("the data-path thread has stopped")]
    Stopped,
    /// Waking the data-path thread failed.
    #[error("waking the data-path thread failed")]
    Wake(#[source] io::Error),
    /// The data-path thread did not answer in time.
    #[error("the data-path thread did not answer within {0:?}")]
    Timeout(Duration),
}

impl Datapath {
    /// Start the data-path thread.
    ///
    /// # Errors
    ///
    /// Creating the epoll instance or its waker, reading the OS's
    /// randomness, or spawning the thread.
    pub fn spawn() -> io::Result<Datapath> {
        Self::spawn_with_max_flows(weft_services::nat::DEFAULT_MAX_FLOWS)
    }

    /// Start the data-path thread with NAT tables of at most `max_flows`
    /// flows each (UDP/ICMP, and TCP).
    ///
    /// # Errors
    ///
    /// As [`Datapath::spawn`].
    pub fn spawn_with_max_flows(max_flows: usize) -> io::Result<Datapath> {
        Self::spawn_with_limits(&NatLimits {
            max_flows,
            ..NatLimits::default()
        })
    }

    /// Start the data-path thread with these NAT limits and timers.
    ///
    /// # Errors
    ///
    /// As [`Datapath::spawn`].
    pub fn spawn_with_limits(limits: &NatLimits) -> io::Result<Datapath> {
        crate::memory::return_freed_memory_promptly();
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        // DNS query ids and TCP sequence numbers must not be guessable from
        // outside: the services' randomness is seeded from the OS's CSPRNG.
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| io::Error::other(e.to_string()))?;
        let dns = DnsConfig {
            max_udp_payload: DNS_MAX_UDP_PAYLOAD,
            ..DnsConfig::default()
        };
        let services = GatewayServices::with_limits(dns, limits, Instant::now(), seed);
        let tunnel_counters = Arc::new(TunnelCounters::default());
        let tunnel_ports = TunnelPorts::default();
        let tunnel = Tunnel::new(Arc::clone(&tunnel_counters), tunnel_ports.clone());
        let plane = Plane::new(Switch::new(), services, tunnel);
        let (tx, rx) = mpsc::channel();
        let mut event_loop = Loop::new(poll, rx, plane);
        let thread = std::thread::Builder::new()
            .name("weft-datapath".into())
            .spawn(move || event_loop.run())?;
        Ok(Datapath {
            commands: tx,
            waker,
            thread: Some(thread),
            next_port: AtomicU32::new(1),
            next_publish: AtomicU32::new(1),
            next_capture: std::sync::atomic::AtomicU64::new(1),
            tunnel_counters,
            tunnel_ports,
        })
    }

    fn send(&self, command: Command) -> Result<(), DatapathError> {
        self.commands
            .send(command)
            .map_err(|_| DatapathError::Stopped)?;
        self.waker.wake().map_err(DatapathError::Wake)
    }

    /// Add a network with its gateway.
    ///
    /// # Errors
    ///
    /// [`DatapathError`] when the thread is gone.
    pub fn add_network(&self, id: NetworkId, gateway: GatewayConfig) -> Result<(), DatapathError> {
        self.send(Command::AddNetwork { id, gateway })
    }

    /// Remove a network; its ports are closed.
    ///
    /// # Errors
    ///
    /// [`DatapathError`] when the thread is gone.
    pub fn remove_network(&self, id: NetworkId) -> Result<(), DatapathError> {
        self.send(Command::RemoveNetwork { id })
    }

    /// Attach a port (a TAP or a stream socket) to a network; returns its
    /// port id and counters.
    ///
    /// # Errors
    ///
    /// [`DatapathError`] when the thread is gone.
    pub fn add_port(
        &self,
        network: NetworkId,
        device: PortDevice,
    ) -> Result<(PortId, Arc<PortCounters>), DatapathError> {
        self.add_port_as(network, device, None)
    }

    /// Attach a macvlan network's parent LAN as its uplink (see
    /// `weft_vswitch::switch`); returns its port id and counters.
    ///
    /// # Errors
    ///
    /// [`DatapathError`] when the thread is gone.
    pub fn add_uplink(
        &self,
        network: NetworkId,
        device: PortDevice,
        mode: weft_vswitch::UplinkMode,
    ) -> Result<(PortId, Arc<PortCounters>), DatapathError> {
        self.add_port_as(network, device, Some(mode))
    }

    /// Tell an ipvlan network's uplink its sandboxes (address → own MAC).
    ///
    /// # Errors
    ///
    /// [`DatapathError`] when the thread is gone.
    pub fn set_uplink_sandboxes(
        &self,
        port: PortId,
        sandboxes: rustc_hash::FxHashMap<std::net::IpAddr, weft_vswitch::MacAddr>,
    ) -> Result<(), DatapathError> {
        self.send(Command::SetUplinkSandboxes { port, sandboxes })
    }

    fn add_port_as(
        &self,
        network: NetworkId,
        device: PortDevice,
        uplink: Option<weft_vswitch::UplinkMode>,
    ) -> Result<(PortId, Arc<PortCounters>), DatapathError> {
        let id = PortId(self.next_port.fetch_add(1, Ordering::Relaxed));
        let counters = Arc::new(PortCounters::default());
        self.send(Command::AddPort {
            id,
            network,
            device,
            uplink,
            counters: Arc::clone(&counters),
        })?;
        Ok((id, counters))
    }

    /// Give a port its identity: its MAC pinned to it and, when
    /// `identity.enforce`, frames only as itself (see
    /// `weft_vswitch::port_security`).
    ///
    /// # Errors
    ///
    /// [`DatapathError`] when the thread is gone.
    pub fn set_port_identity(
        &self,
        id: PortId,
        identity: weft_vswitch::PortIdentity,
    ) -> Result<(), DatapathError> {
        self.send(Command::SetPortIdentity { id, identity })
    }

    /// Set (or clear, with a limit that limits nothing) a port's bandwidth
    /// limit.
    ///
    /// # Errors
    ///
    /// [`DatapathError`] when the thread is gone.
    pub fn set_bandwidth(
        &self,
        id: PortId,
        limit: weft_vswitch::BandwidthLimit,
    ) -> Result<(), DatapathError> {
        self.send(Command::SetBandwidth { id, limit })
    }

    /// Set the names a network's sandboxes resolve.
    ///
    /// # Errors
    ///
    /// [`DatapathError`] when the thread is gone.
    pub fn set_zone(&self, network: NetworkId, zone: Zone) -> Result<(), DatapathError> {
        self.send(Command::SetZone { network, zone })
    }

    /// Replace the leases and options a network's DHCP clients get.
    ///
    /// # Errors
    ///
    /// [`DatapathError`] when the thread is gone.
    pub fn set_dhcp_scope(
        &self,
        network: NetworkId,
        scope: weft_services::dhcp::DhcpScope,
    ) -> Result<(), DatapathError> {
        self.send(Command::SetDhcpScope { network, scope })
    }

    /// Set the upstream resolvers for names that are not local.
    ///
    /// # Errors
    ///
    /// [`DatapathError`] when the thread is gone.
    pub fn set_upstreams(&self, upstreams: Vec<SocketAddr>) -> Result<(), DatapathError> {
        self.send(Command::SetUpstreams(upstreams))
    }

    /// Carry a bound host socket's connections or datagrams to a sandbox
    /// (see [`crate::published`]). The socket closes on
    /// [`Datapath::unpublish`], when the target's port or network goes, or
    /// with the data path.
    ///
    /// # Errors
    ///
    /// [`DatapathError`] when the thread is gone.
    pub fn publish(
        &self,
        listener: HostListener,
        target: PublishTarget,
    ) -> Result<PublishId, DatapathError> {
        let id = PublishId(self.next_publish.fetch_add(1, Ordering::Relaxed));
        self.send(Command::Publish {
            id,
            listener,
            target,
        })?;
        Ok(id)
    }

    /// Close a published port; connections already relayed stay until
    /// they end.
    ///
    /// # Errors
    ///
    /// [`DatapathError`] when the thread is gone.
    pub fn unpublish(&self, id: PublishId) -> Result<(), DatapathError> {
        self.send(Command::Unpublish { id })
    }

    /// Carry the overlay networks of `carrier` over `transport` (VXLAN
    /// over UDP: `weft_overlay::driver::udp::VxlanUdp`; QUIC:
    /// `weft_overlay::driver::quic::QuicUdp`).
    ///
    /// # Errors
    ///
    /// [`DatapathError`] when the thread is gone.
    pub fn enable_tunnel(
        &self,
        carrier: Carrier,
        transport: Box<dyn Transport>,
    ) -> Result<(), DatapathError> {
        self.send(Command::EnableTunnel(carrier, transport))
    }

    /// Make `network` an overlay network, or update its view of the other
    /// hosts (the whole table each time).
    ///
    /// # Errors
    ///
    /// [`DatapathError`] when the thread is gone.
    pub fn set_overlay(
        &self,
        network: NetworkId,
        table: OverlayTable,
    ) -> Result<(), DatapathError> {
        self.send(Command::SetOverlay { network, table })
    }

    /// The underlay addresses tunnel datagrams are accepted from (cluster
    /// members and static peers); others are dropped and counted.
    ///
    /// # Errors
    ///
    /// [`DatapathError`] when the thread is gone.
    pub fn set_tunnel_peers(&self, peers: Vec<IpAddr>) -> Result<(), DatapathError> {
        self.send(Command::SetTunnelPeers(peers))
    }

    /// This host's underlay address changed (see
    /// `weft_overlay::Transport::underlay_moved`).
    ///
    /// # Errors
    ///
    /// [`DatapathError`] when the thread is gone.
    pub fn underlay_moved(&self) -> Result<(), DatapathError> {
        self.send(Command::UnderlayMoved)
    }

    /// The tunnel's counters.
    pub fn tunnel_counters(&self) -> &TunnelCounters {
        &self.tunnel_counters
    }

    /// The counters of `network`'s tunnel ports, by remote host: frames
    /// and bytes received from it (rx) and sent to it (tx).
    pub fn tunnel_port_counters(&self, network: NetworkId) -> Vec<(IpAddr, PortCountersSnapshot)> {
        self.tunnel_ports.snapshot(network)
    }

    /// What the NAT holds and refused for `network`. Blocks until the data
    /// path answers.
    ///
    /// # Errors
    ///
    /// [`DatapathError`] when the thread is gone or does not answer.
    pub fn nat_stats(&self, network: NetworkId) -> Result<NatNetworkStats, DatapathError> {
        let (done, answer) = mpsc::channel();
        self.send(Command::NatStats { network, done })?;
        answer
            .recv_timeout(COMMAND_REPLY_TIMEOUT)
            .map_err(|_| DatapathError::Timeout(COMMAND_REPLY_TIMEOUT))
    }

    /// Detach a port and hand its device back (None if the port was unknown or
    /// its device had vanished). Blocks until the data path answers.
    ///
    /// # Errors
    ///
    /// [`DatapathError`] when the thread is gone or does not answer.
    pub fn remove_port(&self, id: PortId) -> Result<Option<PortDevice>, DatapathError> {
        let (done, answer) = mpsc::channel();
        self.send(Command::RemovePort { id, done })?;
        answer
            .recv_timeout(COMMAND_REPLY_TIMEOUT)
            .map_err(|_| DatapathError::Timeout(COMMAND_REPLY_TIMEOUT))
    }

    /// Start capturing the frames `filter` takes, cut to `snap_len`
    /// bytes, with at most `ring_bytes` waiting for the reader (see
    /// [`crate::capture`]); dropping the handle stops the capture.
    ///
    /// # Errors
    ///
    /// [`DatapathError`] when the thread is gone.
    pub fn start_capture(
        &self,
        filter: crate::capture::Filter,
        snap_len: usize,
        ring_bytes: usize,
    ) -> Result<crate::capture::CaptureHandle, DatapathError> {
        let id = self.next_capture.fetch_add(1, Ordering::Relaxed);
        let (sink, records, stats) = crate::capture::session(filter, snap_len, ring_bytes);
        self.send(Command::StartCapture { id, sink })?;
        let (commands, waker) = (self.commands.clone(), Arc::clone(&self.waker));
        Ok(crate::capture::CaptureHandle {
            records,
            stats,
            stop: Some(Box::new(move || {
                if commands.send(Command::StopCapture { id }).is_ok() {
                    let _ = waker.wake();
                }
            })),
        })
    }

    /// The embedded DNS server's counters (every network's).
    ///
    /// # Errors
    ///
    /// [`DatapathError`] when the thread is gone or does not answer.
    pub fn dns_counters(&self) -> Result<weft_services::dns::DnsCounters, DatapathError> {
        let (reply, answer) = mpsc::channel();
        self.send(Command::DnsCounters { reply })?;
        answer
            .recv_timeout(COMMAND_REPLY_TIMEOUT)
            .map_err(|_| DatapathError::Timeout(COMMAND_REPLY_TIMEOUT))
    }

    /// The DHCP server's counters (every network's).
    ///
    /// # Errors
    ///
    /// [`DatapathError`] when the thread is gone or does not answer.
    pub fn dhcp_counters(&self) -> Result<weft_services::dhcp::DhcpCounters, DatapathError> {
        let (reply, answer) = mpsc::channel();
        self.send(Command::DhcpCounters { reply })?;
        answer
            .recv_timeout(COMMAND_REPLY_TIMEOUT)
            .map_err(|_| DatapathError::Timeout(COMMAND_REPLY_TIMEOUT))
    }

    /// Every published port's figures: what each carried.
    ///
    /// # Errors
    ///
    /// [`DatapathError`] when the thread is gone or does not answer.
    pub fn published_figures(
        &self,
    ) -> Result<Vec<crate::published::PublishedFigures>, DatapathError> {
        let (reply, answer) = mpsc::channel();
        self.send(Command::PublishedFigures { reply })?;
        answer
            .recv_timeout(COMMAND_REPLY_TIMEOUT)
            .map_err(|_| DatapathError::Timeout(COMMAND_REPLY_TIMEOUT))
    }

    /// What a network flooded since it was made (None: no such network).
    ///
    /// # Errors
    ///
    /// [`DatapathError`] when the thread is gone or does not answer.
    pub fn floods(
        &self,
        network: NetworkId,
    ) -> Result<Option<weft_vswitch::FloodCounts>, DatapathError> {
        let (reply, answer) = mpsc::channel();
        self.send(Command::Floods { network, reply })?;
        answer
            .recv_timeout(COMMAND_REPLY_TIMEOUT)
            .map_err(|_| DatapathError::Timeout(COMMAND_REPLY_TIMEOUT))
    }

    /// A network's forwarding table (MAC → port), as the switch has it now;
    /// with each entry of a tunnel port, the remote host's tunnel address.
    ///
    /// # Errors
    ///
    /// [`DatapathError`] when the thread is gone or does not answer.
    pub fn fdb(
        &self,
        network: NetworkId,
    ) -> Result<Vec<(weft_vswitch::FdbEntry, Option<std::net::SocketAddr>)>, DatapathError> {
        let (reply, answer) = mpsc::channel();
        self.send(Command::Fdb { network, reply })?;
        answer
            .recv_timeout(COMMAND_REPLY_TIMEOUT)
            .map_err(|_| DatapathError::Timeout(COMMAND_REPLY_TIMEOUT))
    }
}

impl Drop for Datapath {
    fn drop(&mut self) {
        if self.send(Command::Shutdown).is_ok() {
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
    }
}
