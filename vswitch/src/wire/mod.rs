//! Wire formats the switch reads on its hot path. One file per header.

pub mod checksum;
pub mod ethernet;
pub mod vnet;
