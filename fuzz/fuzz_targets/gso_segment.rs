//! Software segmentation of an arbitrary frame with an arbitrary
//! `virtio_net_hdr`: never panics, every segment fits the scratch buffer
//! and is no longer than headers plus `gso_size`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_vswitch::gso;
use weft_vswitch::wire::vnet::{VnetHeader, VNET_HDR_LEN};

fuzz_target!(|data: &[u8]| {
    let Ok(header) = VnetHeader::new_checked(data) else {
        return;
    };
    let frame = &data[VNET_HDR_LEN..];
    let mut scratch = vec![0u8; 4096];
    let limit = scratch.len();
    let _ = gso::segment(&header, frame, &mut scratch, |segment| {
        assert!(segment.len() <= limit);
    });
    let mut copy = frame.to_vec();
    let _ = gso::complete_checksum(
        &mut copy,
        usize::from(header.csum_start()),
        usize::from(header.csum_offset()),
    );
});
