//! The identifiers every room of weft shares: a switch port, a network
//! inside the switch, and an overlay network's VXLAN network identifier.
//!
//! They live in this leaf module so that the switch, the gateway services,
//! the overlay and the controller name them the same way without importing
//! each other. (A cluster network's id, the string every host agrees on, is
//! the overlay's `ClusterNetworkId`: a different thing from the switch's
//! per-host [`NetworkId`], named apart on purpose.)

use std::fmt;

use serde::{Deserialize, Serialize};

/// A port of the switch (one TAP, or one remote host of an overlay network).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortId(pub u32);

/// A network inside this host's switch (one broadcast domain).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NetworkId(pub u32);

/// A 24-bit VXLAN Network Identifier: one per overlay network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct Vni(u32);

/// A VNI value that does not fit in 24 bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("VNI {0} does not fit in 24 bits")]
pub struct VniOutOfRange(pub u32);

impl Vni {
    /// The largest VNI (2^24 - 1).
    pub const MAX: u32 = 0x00ff_ffff;

    /// A VNI, or an error if `value` needs more than 24 bits.
    ///
    /// # Errors
    ///
    /// [`VniOutOfRange`] when `value > Vni::MAX`.
    pub const fn new(value: u32) -> Result<Self, VniOutOfRange> {
        if value > Self::MAX {
            Err(VniOutOfRange(value))
        } else {
            Ok(Self(value))
        }
    }

    /// The VNI of the low 24 bits of `value` (what a 24-bit wire field
    /// holds).
    pub const fn from_low_bits(value: u32) -> Self {
        Self(value & Self::MAX)
    }

    /// The VNI as a number.
    pub const fn get(self) -> u32 {
        self.0
    }
}

impl From<Vni> for u32 {
    fn from(vni: Vni) -> Self {
        vni.0
    }
}

impl TryFrom<u32> for Vni {
    type Error = VniOutOfRange;

    fn try_from(value: u32) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl fmt::Display for Vni {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vni_holds_24_bits() {
        assert_eq!(Vni::new(Vni::MAX).map(Vni::get), Ok(Vni::MAX));
        assert_eq!(Vni::new(Vni::MAX + 1), Err(VniOutOfRange(Vni::MAX + 1)));
        assert_eq!(Vni::from_low_bits(0x0100_0042).get(), 0x42);
    }
}
