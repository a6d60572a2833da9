//! Stateful: random allocate/reserve/release on one small subnet. Invariant:
//! an address is never handed out while it is held, and never the network,
//! broadcast or gateway address.
#![no_main]

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use weft_ipam::Ipam;

#[derive(Debug, Arbitrary)]
enum Op {
    Allocate,
    Reserve(u8),
    Release(u8),
}

fuzz_target!(|ops: Vec<Op>| {
    let mut ipam = Ipam::with_docker_defaults();
    ipam.add_subnet("n", "10.0.0.0/28".parse().unwrap(), None, None)
        .unwrap();
    let mut held = BTreeSet::new();
    let addr = |b: u8| IpAddr::V4(Ipv4Addr::new(10, 0, 0, b % 16));
    for op in ops.iter().take(512) {
        match op {
            Op::Allocate => {
                if let Ok(a) = ipam.allocate("n", true) {
                    assert!(held.insert(a), "{a} handed out twice");
                    assert!(![addr(0), addr(15), addr(1)].contains(&a));
                }
            }
            Op::Reserve(b) => {
                if ipam.reserve("n", addr(*b)).is_ok() {
                    assert!(held.insert(addr(*b)));
                }
            }
            Op::Release(b) => {
                if ipam.release("n", addr(*b)).is_ok() {
                    assert!(held.remove(&addr(*b)));
                }
            }
        }
    }
});
