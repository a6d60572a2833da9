//! The tunnel port's view of an encapsulation: what the data path needs to
//! carry frames of overlay networks to other hosts inside UDP datagrams.
//!
//! # Theory of operation
//!
//! An overlay network spans hosts. On each host it is an ordinary network
//! of the switch whose extra ports are tunnels, one per remote host (a
//! VTEP, in VXLAN's words). A frame the switch forwards or floods to a
//! tunnel port leaves as one UDP datagram: the encapsulation's header
//! ([`TunnelCodec::write_header`], carrying the network's identifier, the
//! VNI) followed by the Ethernet frame. A datagram that arrives is opened
//! ([`TunnelCodec::decap`]); its VNI names the network, its source the
//! tunnel port it entered by.
//!
//! The codec itself (VXLAN, RFC 7348) lives in the `weft-overlay` crate,
//! which implements this trait: the dependency runs from the overlay to
//! the switch, never back.

/// An encapsulation the data path can send and receive.
pub trait TunnelCodec: Send + std::fmt::Debug {
    /// Bytes of header before the inner frame.
    fn header_len(&self) -> usize;

    /// Write the header for `vni` into `out` (exactly
    /// [`TunnelCodec::header_len`] bytes).
    fn write_header(&self, vni: u32, out: &mut [u8]);

    /// The VNI and inner frame of a received datagram; None when it is not
    /// a valid one (it is dropped and counted).
    fn decap<'a>(&self, datagram: &'a [u8]) -> Option<(u32, &'a [u8])>;

    /// A hash of the inner frame's flow, so that one flow keeps one outer
    /// source port (ECMP in the underlay keeps its packets in order) and
    /// different flows spread.
    fn flow_hash(&self, inner: &[u8]) -> u16;
}
