//! Wire formats the switch reads on its hot path. One file per header.

pub mod ethernet;
pub mod vnet;
