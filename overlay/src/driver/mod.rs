//! The overlay's I/O drivers, beside the sans-IO core they drive (the way
//! quinn's driver sits beside quinn-proto):
//!
//! - [`gossip`]: the gossip socket and the tokio task that drives the
//!   cluster [`crate::Node`] (membership, directory, allocation);
//! - [`node_id`]: this host's node id, kept in the state directory;
//! - [`udp`]: VXLAN over UDP, the default [`crate::Transport`] of the
//!   data path's tunnel port;
//! - [`quic`]: QUIC datagrams, the transport of encrypted networks.
//!
//! Only these modules read clocks, own sockets and touch files.

// Drivers read clocks and the OS's randomness (clippy.toml).
#![allow(clippy::disallowed_methods)]

pub mod gossip;
pub mod node_id;
pub mod quic;
pub mod udp;
