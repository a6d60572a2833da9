//! VXLAN decapsulation of arbitrary UDP payloads. Invariants: decap never
//! panics; what it accepts has the I flag, a 24-bit VNI and an inner frame
//! of at least an Ethernet header, which is exactly the bytes after the
//! 8-byte header; re-encapsulating gives back the same VNI and frame; the
//! outer source port of any frame is in Linux's ephemeral range. The
//! header the data path gives an inner frame for its TAP
//! (`wire_frame_header`) never panics, and announces a partial checksum
//! only inside the frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_overlay::vxlan::{
    decap, encap_header, source_port, Vni, ETHERNET_HEADER_LEN, HEADER_LEN, SOURCE_PORT_MAX,
    SOURCE_PORT_MIN,
};
use weft_vswitch::wire::vnet::{wire_frame_header, VnetHeader};

fuzz_target!(|datagram: &[u8]| {
    let port = source_port(datagram);
    assert!((SOURCE_PORT_MIN..=SOURCE_PORT_MAX).contains(&port));
    assert_eq!(port, source_port(datagram));

    if let Ok((vni, inner)) = decap(datagram) {
        assert!(vni.get() <= Vni::MAX);
        assert_eq!(datagram[0] & 0x08, 0x08);
        assert!(inner.len() >= ETHERNET_HEADER_LEN);
        assert_eq!(inner, &datagram[HEADER_LEN..]);

        let mut again = encap_header(vni).to_vec();
        again.extend_from_slice(inner);
        assert_eq!(decap(&again), Ok((vni, inner)));

        let header = wire_frame_header(inner);
        let vnet = VnetHeader::new_checked(&header[..]).expect("10 bytes");
        assert!(!vnet.is_gso());
        if vnet.needs_csum() {
            let field = usize::from(vnet.csum_start()) + usize::from(vnet.csum_offset());
            assert!(field + 2 <= inner.len());
        }
    }
});
