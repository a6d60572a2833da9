//! weft's overlay: VXLAN between weft hosts, peers found by gossip.
//!
//! Modules (all sans-IO: bytes and time in, decisions and bytes out; no
//! socket, thread or clock read anywhere in this crate):
//! - [`vxlan`]: the RFC 7348 codec and the outer source-port hash;
//! - [`transport`]: the trait a UDP or QUIC underlay driver implements.
pub mod transport;
pub mod vxlan;
