//! What the control plane asks of the data-path thread.

use std::net::{IpAddr, SocketAddr};
use std::sync::{mpsc, Arc};

use weft_overlay::{OverlayTable, Transport};
use weft_services::dns::Zone;
use weft_services::NatNetworkStats;
use weft_vswitch::{GatewayConfig, NetworkId, PortCounters, PortId};

use crate::published::{HostListener, PublishId, PublishTarget};
use crate::taps::PortDevice;

/// A request from the control plane to the data-path thread, queued on a
/// channel and applied by the event loop when its waker fires.
#[derive(Debug)]
pub enum Command {
    /// Add a network with its gateway.
    AddNetwork {
        /// The network.
        id: NetworkId,
        /// Its gateway.
        gateway: GatewayConfig,
    },
    /// Remove a network, its ports and its tunnel ports.
    RemoveNetwork {
        /// The network.
        id: NetworkId,
    },
    /// Attach a port: a TAP, a VM's stream socket, or (with `uplink`) a
    /// macvlan network's parent.
    AddPort {
        /// The port id the control plane chose.
        id: PortId,
        /// Its network.
        network: NetworkId,
        /// The device.
        device: PortDevice,
        /// Some: the network's uplink, in this mode.
        uplink: Option<weft_vswitch::UplinkMode>,
        /// Its counters.
        counters: Arc<PortCounters>,
    },
    /// Start a packet capture session.
    StartCapture {
        /// The session's id.
        id: u64,
        /// Its data-path end.
        sink: crate::capture::CaptureSink,
    },
    /// Stop a packet capture session.
    StopCapture {
        /// The session's id.
        id: u64,
    },
    /// Read the embedded DNS server's counters.
    DnsCounters {
        /// Where they go.
        reply: std::sync::mpsc::Sender<weft_services::dns::DnsCounters>,
    },
    /// Read the DHCP server's counters.
    DhcpCounters {
        /// Where they go.
        reply: std::sync::mpsc::Sender<weft_services::dhcp::DhcpCounters>,
    },
    /// Read every published port's counters.
    PublishedFigures {
        /// Where they go.
        reply: std::sync::mpsc::Sender<Vec<crate::published::PublishedFigures>>,
    },
    /// Read what a network flooded.
    Floods {
        /// The network.
        network: NetworkId,
        /// Where the counts go (None: no such network).
        reply: std::sync::mpsc::Sender<Option<weft_vswitch::FloodCounts>>,
    },
    /// Read a network's forwarding table.
    Fdb {
        /// The network.
        network: NetworkId,
        /// Where the table goes: each entry with the remote host of a
        /// tunnel port.
        reply: std::sync::mpsc::Sender<Vec<(weft_vswitch::FdbEntry, Option<std::net::SocketAddr>)>>,
    },
    /// Give a port its identity (port security).
    SetPortIdentity {
        /// The port.
        id: PortId,
        /// Its MAC and addresses, and whether it may send only as them.
        identity: weft_vswitch::PortIdentity,
    },
    /// Set (or clear) a port's bandwidth limit.
    SetBandwidth {
        /// The port.
        id: PortId,
        /// Its limit (none limited: cleared).
        limit: weft_vswitch::BandwidthLimit,
    },
    /// Answer with what the NAT holds and refused for a network.
    NatStats {
        /// The network.
        network: NetworkId,
        /// Where the answer goes.
        done: mpsc::Sender<NatNetworkStats>,
    },
    /// Detach a port and hand its device back.
    RemovePort {
        /// The port.
        id: PortId,
        /// Where the device goes (None: unknown port, or the device
        /// vanished).
        done: mpsc::Sender<Option<PortDevice>>,
    },
    /// Replace the names a network's sandboxes resolve.
    SetZone {
        /// The network.
        network: NetworkId,
        /// Its names.
        zone: Zone,
    },
    /// Replace the leases a network's DHCP clients get.
    SetDhcpScope {
        /// The network.
        network: NetworkId,
        /// Its leases and options.
        scope: weft_services::dhcp::DhcpScope,
    },
    /// Tell an ipvlan network's uplink its sandboxes: address → own MAC.
    SetUplinkSandboxes {
        /// The uplink port.
        port: PortId,
        /// The sandboxes.
        sandboxes: rustc_hash::FxHashMap<std::net::IpAddr, weft_vswitch::MacAddr>,
    },
    /// Replace the upstream resolvers.
    SetUpstreams(Vec<SocketAddr>),
    /// Poll a bound host socket of a published port.
    Publish {
        /// Its id.
        id: PublishId,
        /// The socket.
        listener: HostListener,
        /// Where it leads.
        target: PublishTarget,
    },
    /// Close a published port.
    Unpublish {
        /// Its id.
        id: PublishId,
    },
    /// This host's underlay address changed.
    UnderlayMoved,
    /// Carry overlay networks over this transport.
    EnableTunnel(crate::tunnel::Carrier, Box<dyn Transport>),
    /// Make a network an overlay network, or update its view of the other
    /// hosts.
    SetOverlay {
        /// The network.
        network: NetworkId,
        /// The whole view.
        table: OverlayTable,
    },
    /// The underlay addresses tunnel datagrams are accepted from.
    SetTunnelPeers(Vec<IpAddr>),
    /// Stop the thread.
    Shutdown,
}
