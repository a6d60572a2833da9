//! One arbitrary frame at the gateway: parsing ARP, IPv4, IPv6, ICMP and
//! neighbour solicitations never panics, and a reply always fits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_vswitch::gateway::REPLY_HEADROOM;
use weft_vswitch::wire::vnet::VnetHeader;
use weft_vswitch::{Gateway, GatewayConfig, MacAddr};

fuzz_target!(|frame: &[u8]| {
    let gw = Gateway::new(GatewayConfig {
        mac: MacAddr([0x02, 0x42, 10, 0, 0, 1]),
        ipv4: vec!["10.0.0.1".parse().unwrap()],
        ipv6: vec!["fd00::1".parse().unwrap()],
        outbound: true,
        host_loopback: false,
        dhcp: true,
    });
    let _ = gw.wants_multicast(frame);
    let mut out = vec![0u8; frame.len() + REPLY_HEADROOM];
    if let Ok(len) = gw.handle_frame(frame, &mut out) {
        assert!(len <= out.len());
    }
    if let Ok(hdr) = VnetHeader::new_checked(frame) {
        let _ = (
            hdr.gso_size(),
            hdr.csum_start(),
            hdr.hdr_len(),
            hdr.is_gso(),
        );
    }
});
