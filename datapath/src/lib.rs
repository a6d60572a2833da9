//! weft's data-path driver: the thread that owns every fd of the data path
//! and drives the sans-IO cores with them.
//!
//! # Theory of operation
//!
//! The cores decide; this crate does the I/O. One thread, one
//! edge-triggered event loop ([`event_loop`]), one token table that says
//! what each fd is ([`tokens`]), and one module per kind of fd:
//!
//! | fd | module | core it drives |
//! |---|---|---|
//! | sandboxes' TAPs | [`taps`], read and written by [`frames`], limited by [`shaper`] | `weft_vswitch::Switch`, `weft_vswitch::rate` |
//! | VMs' stream sockets (listener, connection) | [`stream_port`], behind [`taps`] | `weft_vswitch::wire::stream`, `weft_vswitch::gso` |
//! | VMs' datagram sockets | [`dgram_port`], behind [`taps`] | `weft_vswitch::gso` |
//! | a macvlan network's parent (packet socket) | [`packet_port`], behind [`taps`] | `weft_vswitch::wire::vlan`, the switch's uplink |
//! | the overlay's transport | [`tunnel`] (and [`frames`] for receive) | `weft_overlay::VtepTable`, `weft_overlay::Transport` |
//! | NAT flow sockets (UDP, ping) | [`nat`] | `weft_services::nat` |
//! | TCP relay host sockets | [`tcp`] | `weft_services::tcp_nat` |
//! | published ports | [`published`] | `weft_services` (relay, NAT) |
//! | DNS upstream sockets | [`upstreams`] | `weft_services::dns` |
//!
//! Packet captures ([`capture`]) copy frames of chosen ports off the frame
//! plane to a reader, and cost one branch per frame when there are none.
//!
//! A frame's walk from a TAP read to a TAP write is in three files:
//! [`frames`] (read, ask, write), `weft_vswitch::switch` (the decision) and
//! `weft_vswitch::sys::write_batch` (the batched writes).
//!
//! After each turn the loop hands memory the TCP relay freed after a burst
//! of flows back to the OS ([`memory`]).
//!
//! The control plane talks to the thread only through [`Datapath`]
//! ([`handle`]), which queues [`command::Command`]s and wakes the loop.
//!
//! Why a crate of its own: the loop drives the switch, the gateway services
//! and the overlay's transport at once, and those crates depend on the
//! switch, never the other way; so the one piece that knows them all sits
//! above them (`cnm -> datapath -> {services, overlay} -> vswitch`), with
//! static dispatch to every core and a trait object only at the transport
//! seam.
//!
//! # Dependencies
//!
//! - `mio` is the edge-triggered event loop: a thin, maintained epoll
//!   wrapper with a cross-thread waker; the data path needs no async
//!   runtime.
//! - `slab` is the token table: a dense, reusable index from `mio::Token`
//!   to what the fd is, with no token ranges to keep apart.
//! - `nix` and `libc` for the NAT's datagram and ping sockets and socket
//!   options; `getrandom` seeds the services' randomness from the OS's
//!   CSPRNG (DNS query ids, TCP initial sequence numbers).

// A driver crate: it reads clocks and the OS's randomness (clippy.toml).
#![allow(clippy::disallowed_methods)]

pub mod capture;
pub mod command;
pub mod dgram_port;
pub mod event_loop;
pub mod frames;
pub mod handle;
pub mod memory;
pub mod nat;
pub mod packet_port;
pub mod published;
pub mod shaper;
pub mod stream_port;
pub mod taps;
pub mod tcp;
pub mod tokens;
pub mod tunnel;
pub mod upstreams;

pub use handle::{Datapath, DatapathError};
pub use published::{HostListener, L4Proto, PublishError, PublishId, PublishTarget};
pub use tunnel::{Carrier, TunnelCounters};
