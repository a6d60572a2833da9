//! What `weft-bench nat` compares: the lab's names and addresses, the MTUs,
//! the three datapaths, the paths it measures through each, and the samples
//! it keeps.

use std::collections::BTreeMap;

use crate::measure::TcpSample;

/// The title of the RESULTS.md section this command owns.
pub const SECTION_HEADING: &str = "## NAT and published ports: weft vs pasta vs slirp4netns";

/// The namespace that plays the host.
pub const HOST_NS: &str = "wb-nat-host";
/// The namespace behind the host's "uplink".
pub const FAR_NS: &str = "wb-nat-far";
/// The host's side of the uplink veth, and the far end.
pub const HOST_UPLINK: &str = "10.238.0.1";
pub const FAR_ADDRESS: &str = "10.238.0.2";
/// Port of every outbound run's server (on 127.0.0.1 of the host, or on
/// the far address); pasta's `-T` splices the same port.
pub const OUT_PORT: u16 = 47201;
/// The MTUs measured: Ethernet's, and the largest pasta and slirp4netns
/// take (their default / recommended large value).
pub const MTUS: [u32; 2] = [1500, 65520];
/// pasta's and slirp4netns's addresses inside the sandbox (as the anchors).
pub const SLIRP_GATEWAY: &str = "10.0.2.2";
pub const SLIRP_GUEST: &str = "10.0.2.100";

/// The three NAT datapaths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Datapath {
    /// weft's daemon.
    Weft,
    /// pasta (passt).
    Pasta,
    /// slirp4netns.
    Slirp,
}

impl Datapath {
    /// In run order.
    pub const ALL: [Datapath; 3] = [Datapath::Weft, Datapath::Pasta, Datapath::Slirp];

    pub(super) fn short(self) -> &'static str {
        match self {
            Datapath::Weft => "weft",
            Datapath::Pasta => "pasta",
            Datapath::Slirp => "slirp",
        }
    }

    pub(super) fn label(self) -> &'static str {
        match self {
            Datapath::Weft => "weft",
            Datapath::Pasta => "pasta",
            Datapath::Slirp => "slirp4netns",
        }
    }
}

/// What is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Case {
    /// Sandbox → the host's 127.0.0.1 through the gateway mapping.
    OutLoopback,
    /// Host 127.0.0.1 → sandbox through a published port.
    In,
    /// Sandbox → an address beyond the host.
    OutFar,
    /// pasta only: sandbox 127.0.0.1 → host 127.0.0.1 via its L4 splice.
    OutSplice,
}

impl Case {
    pub(super) fn label(self) -> &'static str {
        match self {
            Case::OutLoopback => "out → host 127.0.0.1 (gateway mapping; pasta: TAP)",
            Case::In => "in ← host 127.0.0.1, published port (pasta: splice)",
            Case::OutFar => "out → real address (10.238.0.2 across a veth)",
            Case::OutSplice => "out → host 127.0.0.1, pasta's L4 splice (`-T`)",
        }
    }

    pub(super) fn short(self) -> &'static str {
        match self {
            Case::OutLoopback => "out-lo",
            Case::In => "in",
            Case::OutFar => "out-far",
            Case::OutSplice => "out-splice",
        }
    }

    /// Which datapaths take part.
    pub(super) fn applies_to(self, datapath: Datapath) -> bool {
        self != Case::OutSplice || datapath == Datapath::Pasta
    }
}

/// Results keyed by (case, MTU, datapath).
pub(super) type Results = BTreeMap<(Case, u32, Datapath), Vec<TcpSample>>;
