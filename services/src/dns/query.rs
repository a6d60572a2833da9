//! Who asked and what: the asker a query's answer goes back to, and the
//! parts of a client's query its answer needs. Shared by the server and
//! its forwarder.

use std::net::{IpAddr, SocketAddr};

use hickory_proto::op::Query;
use weft_vswitch::wire::ethernet::MacAddr;
use weft_vswitch::{NetworkId, PortId};

/// How a query reached the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DnsTransport {
    /// One datagram; the answer is bounded by the client's UDP size.
    Udp,
    /// A TCP connection; answers up to 65535 bytes.
    Tcp,
}

/// Who asked: everything the driver needs to deliver the answer. The core
/// reads `network` (which zone the asker sees) and `transport` (the size
/// limit) and hands the rest back untouched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Asker {
    /// The network the query arrived on: the asker sees its names.
    pub network: NetworkId,
    /// The switch port the query came in on.
    pub port: PortId,
    /// The sandbox's MAC.
    pub mac: MacAddr,
    /// The sandbox's address and source port.
    pub addr: SocketAddr,
    /// The gateway address the sandbox asked (the answer's source).
    pub server: IpAddr,
    /// UDP or TCP.
    pub transport: DnsTransport,
    /// Opaque to the core, for the driver (the TCP connection id).
    pub connection: u64,
}

/// The parts of a client's query that its answer needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Request {
    /// The client's id.
    pub(crate) id: u16,
    /// The question as the client spelled it.
    pub(crate) question: Query,
    /// RD, copied into the answer.
    pub(crate) recursion_desired: bool,
    /// CD, copied into the answer and upstream.
    pub(crate) checking_disabled: bool,
    /// AD in the query: the client understands AD (RFC 6840 §5.7).
    pub(crate) authentic_data: bool,
    /// `Some(DO bit)` when the query had an OPT record.
    pub(crate) edns: Option<bool>,
    /// Largest answer the client takes.
    pub(crate) limit: usize,
}
