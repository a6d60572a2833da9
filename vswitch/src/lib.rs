//! weft's L2 data path for one host: the wire views, the ids every room
//! shares, the Ethernet switch, the gateway's ARP/ICMP/ND fast path,
//! GSO/GRO, and the TAP port driver.
//!
//! # Theory of operation
//!
//! A frame's walk, TAP read to TAP write, is readable in three files:
//!
//! 1. `weft-datapath`'s `taps.rs` (the driver): a TAP fd is readable; it
//!    reads a burst of frames, each prefixed with its `virtio_net_hdr`
//!    ([`wire::vnet`]), into the write batch's buffers;
//! 2. [`switch`] (this crate's core): for each frame [`Switch::handle_frame`]
//!    parses the Ethernet header ([`wire::ethernet`]), learns the source MAC
//!    on the ingress port ([`MacTable`]), and answers with a [`Decision`]:
//!    - `Forward(port)`: known unicast, written to one port, header
//!      untouched (GSO segments pass whole);
//!    - `Flood`: broadcast, multicast, unknown unicast: written to every
//!      other port of the ingress port's network, never to another network;
//!    - `ToGateway`: frames for the gateway MAC, ARP and neighbour
//!      solicitations for the gateway's addresses: answered in place by the
//!      fast path ([`Gateway`]: ARP, ICMP echo, ND), or handed to the L4
//!      services of the `weft-services` crate (DNS, NAT, the TCP relay);
//!    - `Drop(reason)`: counted per port by [`DropReason`], never a panic;
//! 3. [`sys::write_batch`] (the driver): the writes of a burst leave in one
//!    `io_uring` submission, and their outcomes are counted.
//!
//! Frames for another host (an overlay network's tunnel port) are cut into
//! MTU-sized segments by [`gso`] and leave through the overlay's transport;
//! frames from other hosts are merged back by [`gro`].
//!
//! The core (everything outside `sys`) opens no fd, reads no clock and
//! spawns nothing: inputs carry the time. `sys` owns the TAP fds.
//!
//! Rooms, and the direction of their dependencies (never the other way):
//! `weft-datapath` (the event loop over every fd) → `weft-services` (the
//! gateway's L4 services, sans-IO) and `weft-overlay` (cluster core and
//! tunnel transport) → this crate.
//!
//! # Dependencies
//!
//! - `etherparse` parses and builds the ARP, IPv4, IPv6 and ICMP packets the
//!   gateway answers: it is zero-copy and strict, so we do not hand-write
//!   those parsers. The hot path reads only the 14-byte Ethernet header,
//!   through our own tiny view ([`wire::ethernet`]).
//! - `libc` provides the TUN/TAP ioctl request numbers and the `ifreq`
//!   layout, so no ioctl number is typed by hand; `nix` the sockets.
//! - `io-uring` batches the writes of a read burst into one submission
//!   ([`sys::write_batch`]): TAPs have no batched write of their own.
//! - `rustc-hash` (FxHash) for tables keyed by our own ids, `ahash` with a
//!   random key for tables keyed by what sandboxes send (MAC addresses).
//! - `serde` for the ids and MACs that the overlay's gossip and the
//!   controller's state file carry.

pub mod counters;
pub mod gateway;
pub mod gro;
pub mod gso;
pub mod ids;
pub mod mac_table;
pub mod port_security;
pub mod rate;
pub mod switch;
pub mod sys;
pub mod wire;

pub use counters::{DropReason, PortCounters};
pub use gateway::{Gateway, GatewayConfig};
pub use ids::{NetworkId, PortId, Vni, VniOutOfRange};
pub use mac_table::MacTable;
pub use port_security::PortIdentity;
pub use rate::{BandwidthLimit, TokenBucket};
pub use switch::{Decision, FdbEntry, FdbKind, FloodCounts, Switch, UplinkMode};
pub use wire::ethernet::MacAddr;
