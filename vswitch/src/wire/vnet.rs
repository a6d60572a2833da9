//! `virtio_net_hdr` (virtio spec 1.2, section 5.1.6 "Device Operation"), the
//! header a TAP opened with `IFF_VNET_HDR` puts before every frame.
//!
//! It carries the offload metadata of the frame that follows: whether the
//! transport checksum still has to be completed (`NEEDS_CSUM`, with
//! `csum_start`/`csum_offset`) and whether the frame is a GSO super-segment
//! that the receiver must cut into `gso_size` pieces. Between two TAPs the
//! header passes through untouched; frames the gateway builds carry an
//! all-zero header (no offload: a complete, checksummed frame).
//!
//! weft sets the TAP's header byte order to little endian (`TUNSETVNETLE`),
//! so the fields are read as little endian on every host.

mod field {
    use std::ops::Range;
    pub const FLAGS: usize = 0;
    pub const GSO_TYPE: usize = 1;
    pub const HDR_LEN: Range<usize> = 2..4;
    pub const GSO_SIZE: Range<usize> = 4..6;
    pub const CSUM_START: Range<usize> = 6..8;
    pub const CSUM_OFFSET: Range<usize> = 8..10;
}

/// Length of the header weft uses (the legacy layout without `num_buffers`).
pub const VNET_HDR_LEN: usize = 10;

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the transport checksum is partial.
pub const FLAG_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_NONE`.
pub const GSO_NONE: u8 = 0;
/// `VIRTIO_NET_HDR_GSO_TCPV4`.
pub const GSO_TCPV4: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_UDP`.
pub const GSO_UDP: u8 = 3;
/// `VIRTIO_NET_HDR_GSO_TCPV6`.
pub const GSO_TCPV6: u8 = 4;
/// `VIRTIO_NET_HDR_GSO_UDP_L4` (USO).
pub const GSO_UDP_L4: u8 = 5;

/// A header that announces no offload.
pub const EMPTY: [u8; VNET_HDR_LEN] = [0; VNET_HDR_LEN];

/// A view of a `virtio_net_hdr`.
#[derive(Debug, Clone, Copy)]
pub struct VnetHeader<B: AsRef<[u8]>> {
    buffer: B,
}

/// A buffer shorter than the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Truncated;

impl<B: AsRef<[u8]>> VnetHeader<B> {
    /// Wrap a buffer after checking its length.
    ///
    /// # Errors
    ///
    /// [`Truncated`] when the buffer is shorter than [`VNET_HDR_LEN`].
    pub fn new_checked(buffer: B) -> Result<Self, Truncated> {
        if buffer.as_ref().len() < VNET_HDR_LEN {
            return Err(Truncated);
        }
        Ok(VnetHeader { buffer })
    }

    fn u16_at(&self, range: std::ops::Range<usize>) -> u16 {
        let b = &self.buffer.as_ref()[range];
        u16::from_le_bytes([b[0], b[1]])
    }

    /// The flags byte.
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// The GSO type (`GSO_*`).
    pub fn gso_type(&self) -> u8 {
        self.buffer.as_ref()[field::GSO_TYPE]
    }

    /// Length of the headers before the segmented payload.
    pub fn hdr_len(&self) -> u16 {
        self.u16_at(field::HDR_LEN)
    }

    /// Payload bytes per segment.
    pub fn gso_size(&self) -> u16 {
        self.u16_at(field::GSO_SIZE)
    }

    /// Where the checksummed region starts, from the Ethernet header.
    pub fn csum_start(&self) -> u16 {
        self.u16_at(field::CSUM_START)
    }

    /// Where the checksum goes, from `csum_start`.
    pub fn csum_offset(&self) -> u16 {
        self.u16_at(field::CSUM_OFFSET)
    }

    /// True when the frame is a GSO super-segment.
    pub fn is_gso(&self) -> bool {
        self.gso_type() != GSO_NONE
    }

    /// True when the transport checksum is partial.
    pub fn needs_csum(&self) -> bool {
        self.flags() & FLAG_NEEDS_CSUM != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Header the kernel put before a 64 KiB TCP segment read from a TAP with
    // TSO4 offload: NEEDS_CSUM, GSO_TCPV4, hdr_len 66, gso_size 1448,
    // csum_start 34, csum_offset 16.
    const TSO_HEADER: [u8; 10] = [0x01, 0x01, 0x42, 0x00, 0xa8, 0x05, 0x22, 0x00, 0x10, 0x00];

    #[test]
    fn deconstruct() {
        let hdr = VnetHeader::new_checked(&TSO_HEADER[..]).unwrap();
        assert!(hdr.needs_csum());
        assert!(hdr.is_gso());
        assert_eq!(hdr.gso_type(), GSO_TCPV4);
        assert_eq!(hdr.hdr_len(), 66);
        assert_eq!(hdr.gso_size(), 1448);
        assert_eq!(hdr.csum_start(), 34);
        assert_eq!(hdr.csum_offset(), 16);
        let empty = VnetHeader::new_checked(&EMPTY[..]).unwrap();
        assert!(!empty.is_gso() && !empty.needs_csum());
        assert_eq!(
            VnetHeader::new_checked(&TSO_HEADER[..9]).unwrap_err(),
            Truncated
        );
    }
}
