//! One subnet of one network: its gateway, its allocation range and the
//! addresses handed out from it.
//!
//! Addresses are handled as `u128` offsets (IPv4 zero-extended), so a /64
//! costs no more than a /24: only allocated addresses are stored, in a
//! `BTreeSet`. `allocate` walks from a cursor (`next`) to the first address
//! that is neither allocated nor excluded (network address, IPv4 broadcast,
//! gateway), wrapping at the end of the range; it steps over at most
//! `allocated + 3` addresses, and a count of the range's used addresses
//! answers `Exhausted` before any walk.
//!
//! Deserializing re-validates everything (subnet, gateway, range, each
//! allocated address, the cursor), so a hand-edited state file cannot break
//! the rules above.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};

use crate::error::{AllocError, ReleaseError, SubnetError};

/// IPv4 prefixes longer than this leave no room for a gateway and a host.
const MAX_PREFIX_V4: u8 = 30;
/// IPv6 prefixes longer than this leave no room for a gateway and a host
/// (4 addresses: network, gateway, two hosts).
const MAX_PREFIX_V6: u8 = 126;

/// One subnet of one network and its allocations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SubnetAlloc {
    /// Normalized (host bits zero).
    subnet: IpNet,
    /// Inside `subnet`, neither its network nor its IPv4 broadcast address.
    gateway: IpAddr,
    /// Normalized, inside `subnet`.
    ip_range: Option<IpNet>,
    /// Addresses held by endpoints: inside `subnet`, never a reserved address.
    allocated: BTreeSet<IpAddr>,
    /// Where the next `allocate` starts looking; inside the allocation range.
    next: IpAddr,
}

/// The persisted form, validated into a [`SubnetAlloc`] on load.
#[derive(Deserialize)]
struct SubnetAllocRepr {
    subnet: IpNet,
    gateway: IpAddr,
    ip_range: Option<IpNet>,
    allocated: BTreeSet<IpAddr>,
    next: IpAddr,
}

impl SubnetAlloc {
    /// A subnet with no address allocated. `subnet` and `ip_range` may have
    /// host bits set (`10.1.2.3/24` is taken as `10.1.2.0/24`).
    ///
    /// `gateway`: `None` means the first usable address (network + 1).
    /// `ip_range`: `None` means the whole subnet.
    ///
    /// # Errors
    /// [`SubnetError::TooSmall`] for IPv4 prefixes over /30 or IPv6 over /126;
    /// [`SubnetError::GatewayOutside`] / [`SubnetError::GatewayReserved`] for a
    /// gateway outside the subnet or on its network or broadcast address;
    /// [`SubnetError::RangeOutside`] for an ip range not inside the subnet.
    pub fn new(
        subnet: IpNet,
        gateway: Option<IpAddr>,
        ip_range: Option<IpNet>,
    ) -> Result<Self, SubnetError> {
        let max = if is_v4(subnet) {
            MAX_PREFIX_V4
        } else {
            MAX_PREFIX_V6
        };
        if subnet.prefix_len() > max {
            return Err(SubnetError::TooSmall { subnet });
        }
        let subnet = subnet.trunc();
        if let Some((reserved, why)) = unusable(subnet) {
            return Err(SubnetError::Unusable {
                subnet,
                reserved,
                why,
            });
        }
        let first = bits(subnet.network()) + 1;
        let gateway = gateway.unwrap_or_else(|| addr_from(subnet, first));
        if !subnet.contains(&gateway) {
            return Err(SubnetError::GatewayOutside { gateway, subnet });
        }
        let ip_range = ip_range.map(|r| r.trunc());
        if let Some(r) = ip_range {
            if !subnet.contains(&r) {
                return Err(SubnetError::RangeOutside {
                    ip_range: r,
                    subnet,
                });
            }
        }
        let next = ip_range.unwrap_or(subnet).network();
        let alloc = SubnetAlloc {
            subnet,
            gateway,
            ip_range,
            allocated: BTreeSet::new(),
            next,
        };
        if alloc.is_network_or_broadcast(gateway) {
            return Err(SubnetError::GatewayReserved { gateway, subnet });
        }
        Ok(alloc)
    }

    /// The normalized subnet.
    pub fn subnet(&self) -> IpNet {
        self.subnet
    }

    /// The gateway address (never handed out).
    pub fn gateway(&self) -> IpAddr {
        self.gateway
    }

    /// The normalized range `allocate` draws from, if narrower than the subnet.
    pub fn ip_range(&self) -> Option<IpNet> {
        self.ip_range
    }

    /// The subnet's prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.subnet.prefix_len()
    }

    /// Whether this is an IPv4 subnet.
    pub fn is_ipv4(&self) -> bool {
        is_v4(self.subnet)
    }

    /// Whether `addr` is inside the subnet.
    pub fn contains(&self, addr: IpAddr) -> bool {
        self.subnet.contains(&addr)
    }

    /// Whether `addr` is held by an endpoint (the gateway is not).
    pub fn is_allocated(&self, addr: IpAddr) -> bool {
        self.allocated.contains(&addr)
    }

    /// The addresses held by endpoints, in ascending order.
    pub fn allocated(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.allocated.iter().copied()
    }

    /// Hands out the next free address of the ip range (or the subnet),
    /// round-robin: the search starts after the address handed out last, so
    /// a released address comes back only after the cursor has gone once
    /// around the range (stale ARP caches of other endpoints).
    ///
    /// # Errors
    /// [`AllocError::Exhausted`] when every address of the range is in use.
    pub fn allocate(&mut self) -> Result<IpAddr, AllocError> {
        let exhausted = AllocError::Exhausted {
            subnet: self.subnet,
        };
        let range = self.range();
        let (lo, hi) = (bits(range.network()), bits(range.broadcast()));
        let held = self
            .allocated
            .range(range.network()..=range.broadcast())
            .count();
        let special = [self.subnet.network(), self.subnet.broadcast(), self.gateway];
        let special = special
            .iter()
            .filter(|&&a| range.contains(&a) && self.is_special(a));
        let used = u128::try_from(held + special.count()).unwrap_or(u128::MAX);
        // The range holds hi - lo + 1 addresses; a free one exists iff that exceeds `used`.
        if hi - lo < used {
            return Err(exhausted);
        }
        let mut cand = bits(self.next).clamp(lo, hi);
        // At most `used` addresses are skipped before a free one: bounded loop.
        for _ in 0..=held + 3 {
            let addr = addr_from(self.subnet, cand);
            let after = if cand == hi { lo } else { cand + 1 };
            if !self.is_special(addr) && !self.allocated.contains(&addr) {
                self.allocated.insert(addr);
                self.next = addr_from(self.subnet, after);
                return Ok(addr);
            }
            cand = after;
        }
        Err(exhausted)
    }

    /// Reserves a static address (`--ip`). It may lie outside the ip range
    /// (as in Docker) but must be inside the subnet. The cursor does not move.
    ///
    /// # Errors
    /// [`AllocError::OutsideSubnet`], [`AllocError::NetworkAddress`],
    /// [`AllocError::BroadcastAddress`], [`AllocError::Gateway`] for an
    /// address that can never be an endpoint's; [`AllocError::InUse`] when
    /// an endpoint holds it already.
    pub fn reserve(&mut self, addr: IpAddr) -> Result<(), AllocError> {
        let subnet = self.subnet;
        if !self.contains(addr) {
            return Err(AllocError::OutsideSubnet { addr, subnet });
        }
        if addr == subnet.network() {
            return Err(AllocError::NetworkAddress { addr, subnet });
        }
        if addr == self.gateway {
            return Err(AllocError::Gateway { addr, subnet });
        }
        if self.is_special(addr) {
            return Err(AllocError::BroadcastAddress { addr, subnet });
        }
        if !self.allocated.insert(addr) {
            return Err(AllocError::InUse { addr });
        }
        Ok(())
    }

    /// Returns an address to the free pool.
    ///
    /// # Errors
    /// [`ReleaseError::NotAllocated`] when no endpoint holds `addr` here.
    pub fn release(&mut self, addr: IpAddr) -> Result<(), ReleaseError> {
        if self.allocated.remove(&addr) {
            Ok(())
        } else {
            Err(ReleaseError::NotAllocated {
                addr,
                subnet: self.subnet,
            })
        }
    }

    /// The range `allocate` draws from.
    fn range(&self) -> IpNet {
        self.ip_range.unwrap_or(self.subnet)
    }

    /// Network address, IPv4 broadcast address or gateway.
    fn is_special(&self, addr: IpAddr) -> bool {
        self.is_network_or_broadcast(addr) || addr == self.gateway
    }

    fn is_network_or_broadcast(&self, addr: IpAddr) -> bool {
        addr == self.subnet.network() || (self.is_ipv4() && addr == self.subnet.broadcast())
    }
}

impl<'de> Deserialize<'de> for SubnetAlloc {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let repr = SubnetAllocRepr::deserialize(deserializer)?;
        let mut alloc = SubnetAlloc::new(repr.subnet, Some(repr.gateway), repr.ip_range)
            .map_err(D::Error::custom)?;
        for addr in repr.allocated {
            alloc.reserve(addr).map_err(D::Error::custom)?;
        }
        if !alloc.range().contains(&repr.next) {
            let range = alloc.range();
            return Err(D::Error::custom(format!(
                "allocation cursor {} is outside {range}: the state file is corrupt",
                repr.next
            )));
        }
        alloc.next = repr.next;
        Ok(alloc)
    }
}

/// Ranges no network can use (RFC 6890's special-purpose registries,
/// those a host never routes to a neighbour): what an unusable subnet
/// overlaps, and what that range is.
const UNUSABLE: [(&str, &str); 9] = [
    ("0.0.0.0/8", "\"this network\", RFC 1122"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "IPv4 link-local"),
    ("224.0.0.0/4", "IPv4 multicast"),
    ("240.0.0.0/4", "reserved, with the broadcast address"),
    ("::/127", "the unspecified and loopback addresses"),
    ("::ffff:0:0/96", "IPv4-mapped addresses"),
    ("fe80::/10", "IPv6 link-local"),
    ("ff00::/8", "IPv6 multicast"),
];

/// The special-purpose range `subnet` overlaps, if any.
fn unusable(subnet: IpNet) -> Option<(IpNet, &'static str)> {
    UNUSABLE.iter().find_map(|(range, why)| {
        let range: IpNet = range.parse().ok()?;
        let overlap = match (range, subnet) {
            (IpNet::V4(r), IpNet::V4(s)) => r.contains(&s.network()) || s.contains(&r.network()),
            (IpNet::V6(r), IpNet::V6(s)) => r.contains(&s.network()) || s.contains(&r.network()),
            _ => false,
        };
        overlap.then_some((range, *why))
    })
}

fn is_v4(net: IpNet) -> bool {
    matches!(net, IpNet::V4(_))
}

/// An address as a number (IPv4 zero-extended).
pub(crate) fn bits(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u32::from(a).into(),
        IpAddr::V6(a) => a.into(),
    }
}

/// The address numbered `n` in the family of `net`. For IPv4, `n` comes
/// from IPv4 arithmetic inside a range and fits in 32 bits; were it ever
/// larger, the last IPv4 address is returned rather than panicking.
pub(crate) fn addr_from(net: IpNet, n: u128) -> IpAddr {
    match net {
        IpNet::V4(_) => Ipv4Addr::from(u32::try_from(n).unwrap_or(u32::MAX)).into(),
        IpNet::V6(_) => Ipv6Addr::from(n).into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn net(s: &str) -> IpNet {
        s.parse().expect("test literal")
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test literal")
    }
    fn alloc(subnet: &str, gateway: Option<&str>, range: Option<&str>) -> SubnetAlloc {
        SubnetAlloc::new(net(subnet), gateway.map(ip), range.map(net)).expect("valid test subnet")
    }

    #[test]
    fn normalizes_and_defaults_gateway() {
        let a = alloc("10.1.2.3/24", None, Some("10.1.2.130/25"));
        assert_eq!(a.subnet(), net("10.1.2.0/24"));
        assert_eq!(a.ip_range(), Some(net("10.1.2.128/25")));
        assert_eq!(a.gateway(), ip("10.1.2.1"));
        assert_eq!((a.prefix_len(), a.is_ipv4()), (24, true));
        assert!(a.contains(ip("10.1.2.255")) && !a.contains(ip("10.1.3.0")));
        let v6 = alloc("fd00::5/64", None, None);
        assert_eq!((v6.gateway(), v6.is_ipv4()), (ip("fd00::1"), false));
        alloc("10.0.0.0/30", None, None);
        alloc("fd00::/126", None, None);
    }

    #[test]
    fn rejects_bad_subnets() {
        use SubnetError::*;
        let new =
            |s, g: Option<&str>, r: Option<&str>| SubnetAlloc::new(net(s), g.map(ip), r.map(net));
        let (s24, s31) = (net("10.0.0.0/24"), net("10.0.0.0/31"));
        assert_eq!(
            new("10.0.0.0/31", None, None),
            Err(TooSmall { subnet: s31 })
        );
        assert!(matches!(
            new("fd00::/127", None, None),
            Err(TooSmall { .. })
        ));
        for (subnet, gateway, want) in [
            ("10.0.0.0/24", "10.0.1.1", "is outside subnet"),
            ("fd00::/64", "10.0.0.1", "is outside subnet"),
            ("10.0.0.0/24", "10.0.0.0", "is the network or broadcast"),
            ("10.0.0.0/24", "10.0.0.255", "is the network or broadcast"),
            ("fd00::/64", "fd00::", "is the network or broadcast"),
        ] {
            let err = new(subnet, Some(gateway), None).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("gateway {gateway} {want}")),
                "{err}"
            );
        }
        let (g, r) = (ip("10.0.1.1"), net("10.0.9.0/28"));
        assert_eq!(
            new("10.0.0.1/24", Some("10.0.1.1"), None),
            Err(GatewayOutside {
                gateway: g,
                subnet: s24
            })
        );
        assert_eq!(
            new("10.0.0.1/24", None, Some("10.0.9.9/28")),
            Err(RangeOutside {
                ip_range: r,
                subnet: s24
            })
        );
        assert!(matches!(
            new("10.0.0.0/24", None, Some("10.0.0.0/23")),
            Err(RangeOutside { .. })
        ));
        assert!(matches!(
            new("10.0.0.0/24", None, Some("fd00::/120")),
            Err(RangeOutside { .. })
        ));
    }

    #[test]
    fn allocates_round_robin_and_skips_reserved_addresses() {
        // Usable: .1 .2 .4 .5 .6 (gateway .3, network .0, broadcast .7).
        let mut a = alloc("10.0.0.0/29", Some("10.0.0.3"), None);
        let got: Vec<_> = (0..5).map(|_| a.allocate()).collect();
        let want = ["10.0.0.1", "10.0.0.2", "10.0.0.4", "10.0.0.5", "10.0.0.6"].map(|s| Ok(ip(s)));
        assert_eq!(got, want);
        assert!(matches!(a.allocate(), Err(AllocError::Exhausted { .. })));
        a.release(ip("10.0.0.5")).unwrap();
        a.release(ip("10.0.0.2")).unwrap();
        // The cursor wrapped after .6: .2 comes before .5, then .1 after .5.
        assert_eq!(a.allocate(), Ok(ip("10.0.0.2")));
        a.release(ip("10.0.0.1")).unwrap();
        assert_eq!(a.allocate(), Ok(ip("10.0.0.5")));
        assert_eq!(a.allocate(), Ok(ip("10.0.0.1")));
        // A fresh subnet does not hand a released address straight back.
        let mut a = alloc("10.0.0.0/24", None, None);
        let first = a.allocate().unwrap();
        a.release(first).unwrap();
        assert_eq!(a.allocate(), Ok(ip("10.0.0.3")));
    }

    #[test]
    fn allocate_stays_in_ip_range() {
        let mut a = alloc("10.0.0.0/24", None, Some("10.0.0.252/30"));
        let got: Vec<_> = (0..3).map(|_| a.allocate()).collect();
        assert_eq!(
            got,
            ["10.0.0.252", "10.0.0.253", "10.0.0.254"].map(|s| Ok(ip(s)))
        );
        assert!(
            matches!(a.allocate(), Err(AllocError::Exhausted { .. })),
            "no broadcast"
        );
    }

    #[test]
    fn ipv6_slash_64_without_enumerating() {
        let mut a = alloc("fd00:1::/64", None, None);
        assert_eq!(a.allocate(), Ok(ip("fd00:1::2")));
        a.reserve(ip("fd00:1::3")).unwrap();
        a.reserve(ip("fd00:1::ffff:ffff:ffff:ffff")).unwrap();
        assert_eq!(a.allocate(), Ok(ip("fd00:1::4")));
        // The last address of an IPv6 range is usable; the cursor then wraps.
        let mut a = alloc("fd00::/64", None, Some("fd00::ffff:ffff:ffff:fffe/127"));
        assert_eq!(a.allocate(), Ok(ip("fd00::ffff:ffff:ffff:fffe")));
        assert_eq!(a.allocate(), Ok(ip("fd00::ffff:ffff:ffff:ffff")));
        assert!(matches!(a.allocate(), Err(AllocError::Exhausted { .. })));
        a.release(ip("fd00::ffff:ffff:ffff:fffe")).unwrap();
        assert_eq!(a.allocate(), Ok(ip("fd00::ffff:ffff:ffff:fffe")));
    }

    #[test]
    fn reserve_rules() {
        use AllocError::*;
        let s = net("10.0.0.0/24");
        let mut a = alloc("10.0.0.0/24", None, Some("10.0.0.128/25"));
        assert_eq!(
            a.reserve(ip("10.0.0.5")),
            Ok(()),
            "outside ip_range but inside subnet"
        );
        assert!(a.is_allocated(ip("10.0.0.5")));
        let cases = [
            ("10.0.0.5", "address 10.0.0.5 is already in use"),
            ("10.0.1.5", "address 10.0.1.5 is outside subnet 10.0.0.0/24"),
            ("fd00::1", "address fd00::1 is outside subnet 10.0.0.0/24"),
            (
                "10.0.0.0",
                "address 10.0.0.0 is the network address of 10.0.0.0/24",
            ),
            (
                "10.0.0.255",
                "address 10.0.0.255 is the broadcast address of 10.0.0.0/24",
            ),
            ("10.0.0.1", "address 10.0.0.1 is the gateway of 10.0.0.0/24"),
        ];
        for (addr, want) in cases {
            let err = a.reserve(ip(addr)).unwrap_err().to_string();
            assert!(err.starts_with(want), "{err}");
        }
        assert_eq!(
            a.reserve(ip("10.0.0.1")),
            Err(Gateway {
                addr: ip("10.0.0.1"),
                subnet: s
            })
        );
        let mut v6 = alloc("fd00::/120", None, None);
        assert!(matches!(
            v6.reserve(ip("fd00::")),
            Err(NetworkAddress { .. })
        ));
        assert_eq!(v6.reserve(ip("fd00::ff")), Ok(()), "no broadcast in IPv6");
    }

    #[test]
    fn release_rules() {
        let mut a = alloc("10.0.0.0/24", None, None);
        let x = a.allocate().unwrap();
        assert_eq!(a.allocated().collect::<Vec<_>>(), [x]);
        assert_eq!(a.release(x), Ok(()));
        assert!(!a.is_allocated(x));
        let not_allocated = |addr| {
            Err(ReleaseError::NotAllocated {
                addr,
                subnet: a.subnet(),
            })
        };
        assert_eq!(a.clone().release(x), not_allocated(x));
        assert_eq!(a.clone().release(a.gateway()), not_allocated(a.gateway()));
    }

    #[test]
    fn serde_keeps_the_cursor_and_rejects_corrupt_state() {
        let mut a = alloc("10.0.0.0/24", None, None);
        a.allocate().unwrap();
        a.release(ip("10.0.0.2")).unwrap();
        let json = serde_json::to_string(&a).unwrap();
        let mut b: SubnetAlloc = serde_json::from_str(&json).unwrap();
        assert_eq!(a, b);
        assert_eq!(
            b.allocate(),
            Ok(ip("10.0.0.3")),
            "round-robin continues after restart"
        );
        let corrupt = [
            json.replace(r#""allocated":[]"#, r#""allocated":["10.0.0.1"]"#),
            json.replace(r#""allocated":[]"#, r#""allocated":["10.9.0.1"]"#),
            json.replace(r#""next":"10.0.0.3""#, r#""next":"10.0.1.3""#),
            json.replace("10.0.0.0/24", "10.0.0.0/31"),
        ];
        for bad in corrupt {
            assert_ne!(bad, json);
            assert!(serde_json::from_str::<SubnetAlloc>(&bad).is_err(), "{bad}");
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Allocate,
        Reserve(u8),
        Release(u8),
        ReleaseHeld(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => Just(Op::Allocate),
            1 => (0u8..16).prop_map(Op::Reserve),
            1 => (0u8..16).prop_map(Op::Release),
            2 => any::<usize>().prop_map(Op::ReleaseHeld),
        ]
    }

    /// 10.0.0.0/28 with gateways and ranges that cover the network address,
    /// the broadcast address, both or neither.
    fn config() -> impl Strategy<Value = SubnetAlloc> {
        let gateways = prop_oneof![Just(None), Just(Some("10.0.0.14")), Just(Some("10.0.0.9"))];
        let ranges = ["10.0.0.0/29", "10.0.0.8/29", "10.0.0.4/30"].map(|r| Just(Some(r)));
        let ranges = prop_oneof![Just(None), ranges[0], ranges[1], ranges[2]];
        (gateways, ranges).prop_map(|(g, r)| alloc("10.0.0.0/28", g, r))
    }

    /// The addresses `allocate` may hand out.
    fn usable(a: &SubnetAlloc) -> BTreeSet<IpAddr> {
        let base = bits(a.subnet().network());
        (0..16)
            .map(|i| addr_from(a.subnet(), base + i))
            .filter(|&x| a.range().contains(&x) && !a.is_special(x))
            .collect()
    }

    /// Applies `ops`, checking each result against a model; returns the
    /// addresses held at the end.
    fn apply(a: &mut SubnetAlloc, ops: &[Op]) -> Result<BTreeSet<IpAddr>, TestCaseError> {
        let usable = usable(a);
        let subnet = a.subnet();
        let nth = |i: u8| addr_from(subnet, bits(subnet.network()) + u128::from(i));
        let mut held = BTreeSet::new();
        // For each address handed out by allocate(): every address held at
        // some instant since. The cursor passes the whole range (handing out
        // or skipping held addresses) before it hands that address out again.
        let mut seen: BTreeMap<IpAddr, BTreeSet<IpAddr>> = BTreeMap::new();
        for op in ops {
            match *op {
                Op::Allocate => match a.allocate() {
                    Ok(x) => {
                        prop_assert!(usable.contains(&x), "{x} not usable");
                        prop_assert!(held.insert(x), "{x} handed out twice");
                        let since = seen
                            .insert(x, BTreeSet::new())
                            .unwrap_or_else(|| usable.clone());
                        let missed: Vec<_> = usable
                            .iter()
                            .filter(|&y| *y != x && !since.contains(y))
                            .collect();
                        prop_assert!(missed.is_empty(), "{x} again before {missed:?}");
                    }
                    Err(e) => {
                        prop_assert_eq!(e, AllocError::Exhausted { subnet: a.subnet() });
                        prop_assert!(usable.is_subset(&held), "exhausted with free addresses");
                    }
                },
                Op::Reserve(i) => {
                    let x = nth(i);
                    let ok = !a.is_special(x) && !held.contains(&x);
                    prop_assert_eq!(a.reserve(x).is_ok(), ok, "reserve {}", x);
                    held.extend(Some(x).filter(|_| ok));
                }
                Op::Release(i) => {
                    let x = nth(i);
                    prop_assert_eq!(a.release(x).is_ok(), held.remove(&x), "release {}", x);
                }
                Op::ReleaseHeld(i) => {
                    if let Some(&x) = held.iter().nth(i % held.len().max(1)) {
                        prop_assert_eq!(a.release(x), Ok(()));
                        held.remove(&x);
                    }
                }
            }
            prop_assert_eq!(&a.allocated().collect::<BTreeSet<_>>(), &held);
            seen.values_mut().for_each(|since| since.extend(&held));
        }
        Ok(held)
    }

    proptest! {
        #[test]
        fn random_operations_keep_the_rules(mut a in config(), ops in prop::collection::vec(op(), 0..120)) {
            let mut held = apply(&mut a, &ops)?;
            // Whatever happened, every free address of the range can be had again.
            while let Ok(x) = a.allocate() {
                prop_assert!(usable(&a).contains(&x) && held.insert(x));
            }
            prop_assert!(usable(&a).is_subset(&held));
        }

        #[test]
        fn serde_round_trip(mut a in config(), ops in prop::collection::vec(op(), 0..60)) {
            apply(&mut a, &ops)?;
            let json = serde_json::to_string(&a).expect("serialize");
            let mut b: SubnetAlloc = serde_json::from_str(&json).expect("deserialize");
            prop_assert_eq!(&a, &b);
            for _ in 0..17 {
                prop_assert_eq!(a.allocate(), b.allocate());
            }
        }
    }

    #[test]
    fn subnets_no_sandbox_could_use_are_refused_and_say_why() {
        for bad in [
            "0.0.0.0/0",
            "0.0.0.0/8",
            "224.1.0.0/24",
            "127.5.0.0/16",
            "169.254.0.0/16",
            "255.255.255.0/24",
            "::/0",
            "fe80::/64",
            "ff05::/64",
            "::ffff:0:0/96",
        ] {
            let subnet: IpNet = bad.parse().unwrap();
            match SubnetAlloc::new(subnet, None, None) {
                Err(SubnetError::Unusable { subnet: s, why, .. }) => {
                    assert_eq!(s, subnet.trunc());
                    assert!(!why.is_empty());
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
        for good in [
            "10.0.0.0/8",
            "172.17.0.0/16",
            "192.0.2.0/24",
            "100.64.0.0/10",
            "fd00::/64",
            "2001:db8::/64",
        ] {
            assert!(
                SubnetAlloc::new(good.parse().unwrap(), None, None).is_ok(),
                "{good}"
            );
        }
    }
}
