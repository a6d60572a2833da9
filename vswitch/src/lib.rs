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
//!   for the gateway's addresses: handed to [`Gateway`], which answers ARP,
//!   ICMP and ND in place, and then to the gateway services
//!   ([`services`]): the embedded DNS over UDP and TCP, the NAT for UDP and
//!   ICMP echo ([`nat`]) and the TCP relay ([`tcp_nat`]);
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
//! - `libc` provides the TUN/TAP ioctl request numbers and the `ifreq`
//!   layout, so no ioctl number is typed by hand; `nix` the sockets.
//! - `io-uring` batches the writes of a read burst into one submission
//!   ([`sys::write_batch`]): TAPs have no batched write of their own.
//! - `hickory-proto` is the DNS codec of the embedded DNS ([`dns`]), used
//!   without its server or resolver: queries arrive as frames.
//! - `smoltcp` is the TCP stack of the gateway's DNS-over-TCP
//!   ([`dns_tcp`]) and of the TCP relay ([`tcp_nat`]): sans-IO, so it fits
//!   the core; chosen over passt-style sequence mirroring because a real
//!   stack gives windows, retransmission and half-close for free, and it
//!   takes 64 KiB segments whole (measured in bench/RESULTS.md).
//! - `rustc-hash` (FxHash) for tables keyed by our own ids, `ahash` with a
//!   random key for tables keyed by what sandboxes send (MAC addresses).

pub mod counters;
pub mod dns;
pub mod dns_tcp;
pub mod gateway;
pub mod gro;
pub mod gso;
pub mod mac_table;
pub mod nat;
pub mod reassembly;
pub mod services;
mod smol_device;
pub mod switch;
pub mod sys;
pub mod tcp_nat;
pub mod tunnel;
pub mod wire;

pub use counters::{DropReason, PortCounters};
pub use gateway::{Gateway, GatewayConfig};
pub use mac_table::MacTable;
pub use switch::{Decision, NetworkId, PortId, Switch};
pub use wire::ethernet::MacAddr;
