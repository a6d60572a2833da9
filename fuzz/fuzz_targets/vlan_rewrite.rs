//! 802.1Q tagging by weft and the LAN frames a macvlan or ipvlan network
//! reads and writes: arbitrary frames and virtio headers, tagged and
//! untagged; ipvlan's MAC translation; ARP probe answers. Invariants:
//! nothing panics; a tag pushed onto any frame pops back to the same frame
//! and header; classification of a frame whose tag was pushed finds that
//! tag; a frame translated to the LAN carries the parent's MAC and one
//! taken from it carries a sandbox's or is left unchanged; `claimant`
//! never names the prober itself.
#![no_main]

use std::net::Ipv4Addr;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use rustc_hash::FxHashMap;
use weft_vswitch::wire::arp_probe::{claimant, probe_frame};
use weft_vswitch::wire::ipvlan::{self, FromLan};
use weft_vswitch::wire::ethernet::MacAddr;
use weft_vswitch::wire::vlan::{self, Tagging};
use weft_vswitch::wire::vnet::VNET_HDR_LEN;

#[derive(Debug, Arbitrary)]
struct Input {
    header: [u8; VNET_HDR_LEN],
    frame: Vec<u8>,
    vid: u16,
    out_of_band: Option<u16>,
    want: Option<u16>,
    address: [u8; 4],
    prober: [u8; 6],
}

fuzz_target!(|input: Input| {
    let vid = input.vid % 4095;
    // Whatever the LAN sends: classified, and popped when said tagged.
    let mut buf = input.header.to_vec();
    buf.extend_from_slice(&input.frame);
    let len = buf.len();
    if vlan::classify(&input.frame, input.out_of_band, input.want) == Tagging::OursTagged {
        let _ = vlan::pop_tag(&mut buf, len);
    }
    // Push, then pop: the same bytes back.
    let mut out = vec![0u8; VNET_HDR_LEN + input.frame.len() + vlan::TAG_LEN];
    if let Ok(tagged_len) = vlan::push_tag(&input.header, &input.frame, vid, &mut out) {
        assert_eq!(tagged_len, out.len());
        let tagged = &out[VNET_HDR_LEN..tagged_len];
        assert_eq!(vlan::in_band_vid(tagged), Some(vid));
        assert_eq!(vlan::classify(tagged, None, Some(vid)), Tagging::OursTagged);
        let popped = vlan::pop_tag(&mut out, tagged_len).expect("a pushed tag pops");
        assert_eq!(out[..VNET_HDR_LEN], input.header);
        assert_eq!(out[VNET_HDR_LEN..popped], input.frame[..]);
    }
    // ARP claims: never the prober's own frames.
    let address = Ipv4Addr::from(input.address);
    let prober = MacAddr(input.prober);
    if let Some(holder) = claimant(&input.frame, address, prober) {
        assert_ne!(holder, prober);
    }
    assert_eq!(claimant(&probe_frame(prober, address), address, prober), None);
    // ipvlan: out with the parent's MAC, in with the sandbox's.
    let parent = MacAddr([0x02, 0xaa, 0, 0, 0, 1]);
    let sandboxes: FxHashMap<std::net::IpAddr, MacAddr> =
        [(std::net::IpAddr::V4(address), prober)].into_iter().collect();
    let mut out = input.frame.clone();
    ipvlan::to_lan(&mut out, parent);
    if out.len() >= 14 {
        assert_eq!(out[6..12], parent.0);
    }
    let mut back = input.frame.clone();
    let verdict = ipvlan::from_lan(&mut back, parent, &sandboxes);
    assert_eq!(back.len(), input.frame.len());
    if verdict == FromLan::NotOurs || input.frame.get(..6) != Some(&parent.0[..]) {
        assert_eq!(back, input.frame);
    } else {
        assert_eq!(back[..6], prober.0);
    }
});
