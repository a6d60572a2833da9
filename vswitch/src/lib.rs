//! weft's data path for one host: a userspace Ethernet switch with gateway
//! services, and the TAP ports it switches between.
//!
//! # Theory of operation
//!
//! A frame's walk: a TAP fd becomes readable; the data-path driver
//! ([`sys::datapath`]) reads a burst of frames, each prefixed with its
//! `virtio_net_hdr` ([`wire::vnet`]). For each frame it asks the sans-IO
//! switch core ([`Switch::handle_frame`]) what to do: the core parses the
//! Ethernet header ([`wire::ethernet`]), learns the source MAC on the ingress
//! port ([`MacTable`]), and answers with a [`Decision`]:
//!
//! - `Forward(port)`: known unicast, written to one TAP, header untouched;
//! - `Flood`: broadcast, multicast, unknown unicast: written to every other
//!   port of the ingress port's network, never to another network;
//! - `ToGateway`: frames for the gateway MAC, ARP and neighbour solicitations
//!   for the gateway's addresses: handed to [`Gateway`], which may produce a
//!   reply that goes back out of the ingress port;
//! - `Drop(reason)`: counted per port by [`DropReason`], never a panic.
//!
//! The core (everything outside `sys`) opens no fd, reads no clock and
//! spawns nothing: inputs carry the time. `sys` owns the fds and the event
//! loop, and is the only module that touches the kernel.
//!
//! # Dependencies
//!
//! - `etherparse` parses and builds the ARP, IPv4, IPv6 and ICMP packets the
//!   gateway answers: it is zero-copy and strict, so we do not hand-write
//!   those parsers. The hot path reads only the 14-byte Ethernet header,
//!   through our own tiny view ([`wire::ethernet`]).
//! - `mio` is the edge-triggered event loop of the data-path thread: a thin,
//!   maintained epoll wrapper with a cross-thread waker; the data path needs
//!   no async runtime.
//! - `nix` provides the ioctl request-code macros and `libc` the `ifreq`
//!   layout for the TAP ioctls, so no ioctl number is typed by hand.

pub mod counters;
pub mod dns;
pub mod dns_tcp;
pub mod gateway;
pub mod gso;
pub mod mac_table;
pub mod nat;
pub mod services;
pub mod switch;
pub mod sys;
pub mod wire;

pub use counters::{DropReason, PortCounters};
pub use gateway::{Gateway, GatewayConfig};
pub use mac_table::MacTable;
pub use switch::{Decision, NetworkId, PortId, Switch};
pub use wire::ethernet::MacAddr;
