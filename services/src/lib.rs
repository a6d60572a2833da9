//! The gateway's L4 services, one per room, sans-IO: what a network's
//! gateway does beyond the switch's ARP/ICMP/ND fast path.
//!
//! # Theory of operation
//!
//! The switch (`weft-vswitch`) decides `ToGateway` for a frame to the
//! gateway's MAC; its fast path answers ARP, ICMP echo and neighbour
//! solicitations in place. Every other such frame comes here, to
//! [`GatewayServices::handle_frame`] ([`dispatch`]), which parses it once
//! and hands it to the one service that takes it:
//!
//! - [`dns`]: the embedded DNS, over UDP and (through a small userspace TCP
//!   stack, [`dns::tcp`]) TCP port 53 of the gateway's addresses;
//! - [`tcp_nat`]: the TCP relay, outbound connections and published TCP
//!   ports, terminated by a userspace TCP stack and carried on through host
//!   sockets;
//! - [`dhcp`]: DHCPv4 on UDP port 67, the lease IPAM gave each endpoint;
//! - [`nat`]: UDP and ICMP echo to the outside and published UDP ports,
//!   with IPv4 fragments reassembled first ([`reassembly`]).
//!
//! Nothing here opens a socket, reads a clock or draws from a global RNG:
//! frames, datagrams and the time come in; frames to put into networks,
//! datagrams for upstream resolvers and socket actions (open, send,
//! connect, close) come out, pulled by the driver (`weft-datapath`), which
//! owns every fd.
//!
//! # Dependencies
//!
//! - `weft-vswitch` for the ids, the wire views and the gateway's
//!   configuration: the dependency runs from here to the switch, never back.
//! - `etherparse` parses and builds the IP, UDP, TCP and ICMP packets.
//! - `hickory-proto` is the DNS codec, used without its server or
//!   resolver: queries arrive as frames, not on a socket.
//! - `smoltcp` is the TCP stack of DNS over TCP and of the TCP relay:
//!   sans-IO, so it fits the core; chosen over passt-style sequence
//!   mirroring because a real stack gives windows, retransmission and
//!   half-close for free, and it takes 64 KiB segments whole.
//! - `dhcproto` is the DHCPv4 codec (see [`dhcp`] for why and its catches),
//!   with `ipnet` for its classless routes.
//! - `rustc-hash` (FxHash) for tables keyed by our own ids and flows.
//! - `rand` 0.10 (`StdRng`, ChaCha12) without its thread-local RNG: every
//!   random choice comes from a 256-bit seed the driver draws from the OS,
//!   so DNS query ids are not guessable and tests replay exactly.

pub mod dhcp;
pub mod dispatch;
pub mod dns;
pub mod flow_shares;
pub mod nat;
pub mod reassembly;
mod smol_device;
pub mod tcp_nat;

pub use dispatch::{Egress, GatewayServices, NatLimits, NatNetworkStats};
