//! IEEE 802.1Q tags, added and removed by weft itself: a macvlan or ipvlan
//! network on `parent=eth0.50` puts its frames on the parent's LAN tagged
//! with VLAN 50, with no kernel VLAN device (this machine's kernel has
//! none, and a rootless daemon could not make one).
//!
//! # Theory of operation
//!
//! A tag is four bytes after the two MACs: the TPID `0x8100`, then the TCI
//! (priority 3 bits, DEI 1 bit, VLAN id 12 bits):
//!
//! ```text
//! | dst MAC (6) | src MAC (6) | 0x8100 | TCI | ethertype | payload ...
//! ```
//!
//! Frames in the data path carry a `virtio_net_hdr` whose offsets count
//! from the start of the frame: a partial checksum's `csum_start` and a
//! GSO frame's `hdr_len` move by the tag's four bytes when a tag is pushed
//! ([`push_tag`]) or popped ([`pop_tag`]); nothing else in the header
//! depends on where the IP header starts.
//!
//! A frame on the LAN may come tagged in its bytes, or (the usual case on
//! Linux, whose NICs and veths strip the tag on receive) with the tag
//! beside it in the packet socket's `PACKET_AUXDATA`: the driver
//! (`weft-datapath`'s packet port) gives [`classify`] whichever it has.

use crate::wire::vnet::VNET_HDR_LEN;

/// The 802.1Q tag protocol identifier.
pub const TPID_8021Q: u16 = 0x8100;
/// The 802.1ad (QinQ) service tag's identifier: such frames are not ours.
pub const TPID_8021AD: u16 = 0x88a8;
/// Bytes of a tag.
pub const TAG_LEN: usize = 4;
/// Where the tag (or the ethertype) starts: after the two MACs.
const TAG_AT: usize = 12;
/// The highest VLAN id (4095 is reserved).
pub const MAX_VID: u16 = 4094;

/// Why a frame could not be tagged or untagged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VlanError {
    /// Shorter than two MACs and an ethertype (or its tag).
    #[error("frame too short for an 802.1Q tag")]
    Truncated,
    /// The output buffer has no room for the tagged frame.
    #[error("no room for the tagged frame")]
    NoRoom,
    /// Offsets in the virtio header that point before the tag or past
    /// 16 bits once moved.
    #[error("virtio header offsets do not fit the tagged frame")]
    BadOffsets,
}

/// What a frame read from the LAN is, for a network on VLAN `want` (None:
/// the untagged LAN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tagging {
    /// Ours, as it is (untagged on an untagged network, or tagged out of
    /// band with our VLAN).
    Ours,
    /// Ours once its in-band tag is popped ([`pop_tag`]).
    OursTagged,
    /// Another VLAN's, or untagged on a VLAN network: not ours.
    NotOurs,
}

/// Classify a frame from the LAN: `frame` is the Ethernet frame as read,
/// `out_of_band` the VLAN id the kernel stripped from it (its auxdata), if
/// any.
pub fn classify(frame: &[u8], out_of_band: Option<u16>, want: Option<u16>) -> Tagging {
    let in_band = in_band_vid(frame);
    match (want, out_of_band, in_band) {
        // A second tag (QinQ) or both kinds at once: not a frame of ours.
        (_, Some(_), Some(_)) => Tagging::NotOurs,
        (None, None, None) => Tagging::Ours,
        (Some(want), Some(vid), None) if vid == want => Tagging::Ours,
        (Some(want), None, Some(vid)) if vid == want => Tagging::OursTagged,
        _ => Tagging::NotOurs,
    }
}

/// The VLAN id of an in-band 802.1Q (or 802.1ad) tag, if the frame has
/// one.
pub fn in_band_vid(frame: &[u8]) -> Option<u16> {
    let tpid = u16::from_be_bytes([*frame.get(TAG_AT)?, *frame.get(TAG_AT + 1)?]);
    if tpid != TPID_8021Q && tpid != TPID_8021AD {
        return None;
    }
    let tci = u16::from_be_bytes([*frame.get(TAG_AT + 2)?, *frame.get(TAG_AT + 3)?]);
    Some(tci & 0x0fff)
}

/// Write `frame` with an 802.1Q tag for `vid` (priority 0) into `out`,
/// behind `header` adjusted for the tag: `out` gets the header, then the
/// tagged frame; returns the bytes written.
///
/// # Errors
///
/// [`VlanError`] when the frame is too short, `out` too small, or the
/// header's offsets do not survive the move.
pub fn push_tag(
    header: &[u8; VNET_HDR_LEN],
    frame: &[u8],
    vid: u16,
    out: &mut [u8],
) -> Result<usize, VlanError> {
    if frame.len() < TAG_AT + 2 {
        return Err(VlanError::Truncated);
    }
    let len = VNET_HDR_LEN + frame.len() + TAG_LEN;
    let out = out.get_mut(..len).ok_or(VlanError::NoRoom)?;
    let moved = shift_offsets(header, true)?;
    out[..VNET_HDR_LEN].copy_from_slice(&moved);
    let body = &mut out[VNET_HDR_LEN..];
    body[..TAG_AT].copy_from_slice(&frame[..TAG_AT]);
    body[TAG_AT..TAG_AT + 2].copy_from_slice(&TPID_8021Q.to_be_bytes());
    body[TAG_AT + 2..TAG_AT + 4].copy_from_slice(&(vid & 0x0fff).to_be_bytes());
    body[TAG_AT + TAG_LEN..].copy_from_slice(&frame[TAG_AT..]);
    Ok(len)
}

/// Remove the in-band tag of the frame in `buf[..len]` (its virtio header
/// first) in place; returns the new length.
///
/// # Errors
///
/// [`VlanError`] when the frame has no room for a tag or the header's
/// offsets point into it.
pub fn pop_tag(buf: &mut [u8], len: usize) -> Result<usize, VlanError> {
    if len > buf.len() || len < VNET_HDR_LEN + TAG_AT + TAG_LEN + 2 {
        return Err(VlanError::Truncated);
    }
    let mut header = [0u8; VNET_HDR_LEN];
    header.copy_from_slice(&buf[..VNET_HDR_LEN]);
    let moved = shift_offsets(&header, false)?;
    buf[..VNET_HDR_LEN].copy_from_slice(&moved);
    let tag = VNET_HDR_LEN + TAG_AT;
    buf.copy_within(tag + TAG_LEN..len, tag);
    Ok(len - TAG_LEN)
}

/// The header with `csum_start` (when a checksum is partial) and `hdr_len`
/// (when it is GSO) moved by a tag's length.
fn shift_offsets(header: &[u8; VNET_HDR_LEN], grow: bool) -> Result<[u8; VNET_HDR_LEN], VlanError> {
    use crate::wire::vnet::field;
    let mut out = *header;
    let flags = header[field::FLAGS];
    let gso_type = header[field::GSO_TYPE];
    let shift = |range: std::ops::Range<usize>, out: &mut [u8; VNET_HDR_LEN]| {
        let value = u16::from_le_bytes([header[range.start], header[range.start + 1]]);
        // An offset into the MACs (or the tag) points at no header that
        // moves with the tag: refused both ways, so a tag that could be
        // pushed can always be popped.
        let moved = if usize::from(value) < TAG_AT {
            None
        } else if grow {
            value.checked_add(TAG_LEN as u16)
        } else {
            value
                .checked_sub(TAG_LEN as u16)
                .filter(|v| usize::from(*v) >= TAG_AT)
        };
        let moved = moved.ok_or(VlanError::BadOffsets)?;
        out[range].copy_from_slice(&moved.to_le_bytes());
        Ok(())
    };
    if flags & crate::wire::vnet::FLAG_NEEDS_CSUM != 0 {
        shift(field::CSUM_START, &mut out)?;
    }
    if gso_type != crate::wire::vnet::GSO_NONE && header[field::HDR_LEN] != [0, 0] {
        shift(field::HDR_LEN, &mut out)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::vnet;

    fn frame() -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&[2, 0, 0, 0, 0, 1]);
        f.extend_from_slice(&0x0800u16.to_be_bytes());
        f.extend_from_slice(&[0x45; 46]);
        f
    }

    #[test]
    fn a_pushed_tag_pops_back_to_the_same_frame_and_header() {
        let f = frame();
        let mut header = vnet::EMPTY;
        header[vnet::field::FLAGS] = vnet::FLAG_NEEDS_CSUM;
        header[vnet::field::CSUM_START].copy_from_slice(&34u16.to_le_bytes());
        header[vnet::field::CSUM_OFFSET].copy_from_slice(&16u16.to_le_bytes());
        let mut out = vec![0; 200];
        let len = push_tag(&header, &f, 50, &mut out).unwrap();
        assert_eq!(len, VNET_HDR_LEN + f.len() + 4);
        let tagged = &out[VNET_HDR_LEN..len];
        assert_eq!(tagged[12..16], [0x81, 0x00, 0x00, 50]);
        assert_eq!(tagged[16..18], [0x08, 0x00]);
        assert_eq!(in_band_vid(tagged), Some(50));
        assert_eq!(
            u16::from_le_bytes([out[6], out[7]]),
            38,
            "csum_start moved by the tag"
        );
        assert_eq!(classify(tagged, None, Some(50)), Tagging::OursTagged);
        assert_eq!(classify(tagged, None, Some(51)), Tagging::NotOurs);
        assert_eq!(classify(tagged, None, None), Tagging::NotOurs);
        let popped = pop_tag(&mut out, len).unwrap();
        assert_eq!(out[..VNET_HDR_LEN], header);
        assert_eq!(out[VNET_HDR_LEN..popped], f[..]);
    }

    #[test]
    fn frames_are_classified_by_where_their_tag_is() {
        let f = frame();
        assert_eq!(classify(&f, None, None), Tagging::Ours);
        assert_eq!(classify(&f, Some(50), Some(50)), Tagging::Ours);
        assert_eq!(classify(&f, Some(50), None), Tagging::NotOurs);
        assert_eq!(classify(&f, None, Some(50)), Tagging::NotOurs);
        assert_eq!(classify(&f, Some(7), Some(50)), Tagging::NotOurs);
    }

    #[test]
    fn short_frames_and_bad_offsets_are_errors_not_panics() {
        let mut out = vec![0; 64];
        assert_eq!(
            push_tag(&vnet::EMPTY, &[0; 5], 1, &mut out),
            Err(VlanError::Truncated)
        );
        assert_eq!(
            push_tag(&vnet::EMPTY, &frame(), 1, &mut out[..20]),
            Err(VlanError::NoRoom)
        );
        let mut buf = vec![0; 40];
        buf[vnet::field::FLAGS] = vnet::FLAG_NEEDS_CSUM;
        buf[vnet::field::CSUM_START].copy_from_slice(&2u16.to_le_bytes());
        assert_eq!(pop_tag(&mut buf, 40), Err(VlanError::BadOffsets));
        assert_eq!(pop_tag(&mut buf, 10), Err(VlanError::Truncated));
        assert_eq!(pop_tag(&mut buf, 400), Err(VlanError::Truncated));
    }
}
