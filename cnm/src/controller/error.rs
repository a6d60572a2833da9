//! Why a controller operation failed. Each variant says what to change;
//! the API maps them to HTTP statuses at its edge (`crate::api`).

use std::path::PathBuf;

use weft_datapath::published::PublishError;
use weft_ipam::{AddSubnetError, AllocError};
use weft_overlay::driver::gossip::{ClusterAllocError, ClusterError};

use crate::driver::DriverError;
use crate::model::{DriverKind, PortMappingError, UnknownDriver};
use crate::store::StoreError;

/// Why an operation failed; `crate::api` maps each to an HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// No network by that name.
    #[error("network {name:?} not found: `weft network ls` lists the networks")]
    NetworkNotFound {
        /// The name asked for.
        name: String,
    },
    /// The name is taken.
    #[error("network {name:?} already exists: choose another name")]
    NetworkExists {
        /// The name.
        name: String,
    },
    /// A name with characters or a length that is not allowed.
    #[error("invalid {what} {name:?}: use 1 to 63 letters, digits, '-', '_' or '.', starting with a letter or digit")]
    InvalidName {
        /// What the name is for.
        what: &'static str,
        /// The name.
        name: String,
    },
    /// Not a driver weft has.
    #[error(transparent)]
    UnknownDriver(#[from] UnknownDriver),
    /// Subnets given for a driver without addresses.
    #[error("the {driver} driver has no addresses: drop --subnet, --gateway and --ip-range")]
    SubnetsNotAllowed {
        /// The driver.
        driver: DriverKind,
    },
    /// A `--subnet` or `--ip-range` with host bits set (Docker refuses it
    /// too rather than guess which was meant).
    #[error("invalid {what} {given}: it has host bits set; it should be {network}")]
    HostBitsSet {
        /// `--subnet` or `--ip-range`.
        what: &'static str,
        /// As given.
        given: ipnet::IpNet,
        /// The network it lies in.
        network: ipnet::IpNet,
    },
    /// An MTU out of range.
    #[error("MTU {mtu} is out of range: use {min} to {max}")]
    MtuOutOfRange {
        /// The MTU asked for.
        mtu: u32,
        /// The lowest allowed.
        min: u32,
        /// The highest allowed.
        max: u32,
    },
    /// A subnet could not be added.
    #[error(transparent)]
    Subnet(#[from] AddSubnetError),
    /// An address could not be allocated or reserved.
    #[error(transparent)]
    Address(#[from] AllocError),
    /// Two static addresses of one family.
    #[error("more than one --ip of the same family: give at most one IPv4 and one IPv6 address")]
    DuplicateFamily,
    /// `rm` of a network with endpoints.
    #[error("network {name:?} has {count} endpoint(s) attached: disconnect them first (weft network disconnect {name} NETNS)")]
    NetworkInUse {
        /// The network.
        name: String,
        /// How many endpoints.
        count: usize,
    },
    /// `rm` of a network that a Docker network is.
    #[error("network {name:?} is Docker network {docker_id}: remove it with docker network rm")]
    DockerNetwork {
        /// The network.
        name: String,
        /// Docker's short id of the network.
        docker_id: String,
    },
    /// No endpoint with that id.
    #[error("no endpoint with id {id}: `weft network inspect` lists the endpoints")]
    EndpointNotFound {
        /// The id asked for.
        id: String,
    },
    /// The namespace does not exist.
    #[error("no network namespace at {path}: create it (ip netns add NAME) or give a path like /proc/PID/ns/net")]
    SandboxNotFound {
        /// The path looked at.
        path: PathBuf,
    },
    /// The path is not a network namespace.
    #[error("{path} is not a network namespace: give a path like /var/run/netns/NAME or /proc/PID/ns/net (or a name made with ip netns add)")]
    NotANetworkNamespace {
        /// The path looked at.
        path: PathBuf,
    },
    /// The daemon's own network namespace.
    #[error("{path} is the weft daemon's own network namespace: sandboxes are other namespaces (ip netns add NAME)")]
    DaemonsOwnNamespace {
        /// The path looked at.
        path: PathBuf,
    },
    /// A stream endpoint on a network whose driver has no ports.
    #[error("the {driver} driver has no switch ports: connect VMs to a bridge or overlay network")]
    StreamNotAllowed {
        /// The network's driver.
        driver: DriverKind,
    },
    /// A stream endpoint's socket path that cannot be listened on.
    #[error("socket path {path}: {reason}")]
    InvalidSocketPath {
        /// The path as given.
        path: PathBuf,
        /// What to change.
        reason: &'static str,
    },
    /// A static address another host of a macvlan network's LAN holds
    /// (or dynamic ones, past the attempts).
    #[error("{address} is in use on the LAN (by {holder}): choose another address, or add it with --aux-address")]
    AddressOnLan {
        /// The address.
        address: std::net::IpAddr,
        /// The MAC that answered for it.
        holder: weft_vswitch::MacAddr,
    },
    /// Already on that network.
    #[error("{sandbox} is already connected to network {network:?}")]
    AlreadyConnected {
        /// The network.
        network: String,
        /// The sandbox.
        sandbox: PathBuf,
    },
    /// Not on that network.
    #[error("{sandbox} is not connected to network {network:?}")]
    NotConnected {
        /// The network.
        network: String,
        /// The sandbox.
        sandbox: PathBuf,
    },
    /// The driver failed.
    #[error("the {driver} driver failed")]
    Driver {
        /// The driver.
        driver: DriverKind,
        /// The cause.
        #[source]
        source: DriverError,
    },
    /// A connect's `ifname` or `mac` that cannot be used.
    #[error("{field} {value:?}: {reason}")]
    InvalidInterface {
        /// `ifname` or `mac`.
        field: &'static str,
        /// The value asked for.
        value: String,
        /// What is wrong and what to write.
        reason: &'static str,
    },
    /// A capture request that cannot be served.
    #[error("capture: {0}")]
    InvalidCapture(String),
    /// No endpoint of that name on the network.
    #[error("network {network:?} has no endpoint named {name:?}: `weft network inspect {network}` lists them")]
    NoSuchEndpoint {
        /// The network.
        network: String,
        /// The name asked for.
        name: String,
    },
    /// A connect's `bandwidth` that cannot be used.
    #[error("bandwidth: {0}")]
    InvalidBandwidth(#[from] weft_vswitch::rate::BandwidthError),
    /// `bandwidth` on a network whose driver has no interfaces.
    #[error("the {driver} driver has no interface to limit: drop bandwidth, or use a bridge or overlay network")]
    BandwidthNotAllowed {
        /// The network's driver.
        driver: crate::model::DriverKind,
    },
    /// A driver option that is not known or has a bad value.
    #[error("--opt {key}: {reason}")]
    InvalidOption {
        /// The option's key.
        key: String,
        /// What is wrong and what to write.
        reason: String,
    },
    /// A label with an empty key, or too many or too long labels.
    #[error("--label {key:?}: {reason}")]
    InvalidLabel {
        /// The label's key.
        key: String,
        /// What is wrong and what to write.
        reason: String,
    },
    /// `-p` on a network whose driver has no interfaces.
    #[error("the {driver} driver has no interfaces to publish ports to: drop -p, or use a bridge network")]
    PortsNotAllowed {
        /// The driver.
        driver: DriverKind,
    },
    /// A `-p` that cannot be met.
    #[error(transparent)]
    InvalidPort(#[from] PortMappingError),
    /// A host port that cannot be bound.
    #[error(transparent)]
    Publish(PublishError),
    /// The state file could not be written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The data path could not be started.
    #[error("starting the data path")]
    Datapath(#[source] std::io::Error),
    /// An overlay network on a daemon without `--listen`.
    #[error("start the daemon with --listen to use overlay networks")]
    OverlayNeedsCluster,
    /// More than one subnet, or an `--ip-range`, for an overlay network.
    #[error("an overlay network takes one --subnet and no --ip-range (addresses are leased across hosts from the whole subnet)")]
    OverlaySubnets,
    /// The VNI is taken by another cluster network.
    #[error("VNI {vni} is already used by cluster network {network:?}: choose another --opt vni=N or leave it out")]
    VniInUse {
        /// The VNI.
        vni: weft_vswitch::Vni,
        /// The network that has it.
        network: String,
    },
    /// No cluster address could be had.
    #[error("no address for the endpoint")]
    ClusterAddress(#[source] ClusterAllocError),
    /// The gossip socket could not be bound.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The VXLAN socket could not be bound.
    #[error("binding the VXLAN socket {addr} (--vxlan-port)")]
    TunnelBind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}
