//! Everything of this crate that touches the kernel: TAP devices, packet
//! sockets on a macvlan network's parent, and the
//! batched writes to them. The sans-IO core never imports this module; the
//! event loop that drives these fds is `weft-datapath`.

// The TAP driver may read clocks (clippy.toml).
#![allow(clippy::disallowed_methods)]

pub mod packet;
pub mod tap;
pub mod write_batch;
