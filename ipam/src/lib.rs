//! weft's IP address management (IPAM): which subnets each network owns,
//! their gateways, and which addresses endpoints hold.
//!
//! # Theory of operation
//!
//! Pure bookkeeping: no I/O, no clock, no randomness. The controller (`cnm`)
//! calls it while creating networks and endpoints and serializes the whole
//! [`Ipam`] value to JSON in its state file; loading re-validates every
//! subnet, so a corrupt file is refused rather than trusted.
//!
//! State: the default pools ([`DefaultPool`], Docker's
//! `default-address-pools`) and, per network id, a list of [`SubnetAlloc`]
//! (subnet, gateway, optional `--ip-range`, allocated addresses, cursor).
//!
//! Rules, as in Docker's built-in IPAM:
//! - subnets never overlap, across all networks and within one;
//! - a subnet is stored normalized (`10.1.2.3/24` becomes `10.1.2.0/24`);
//! - the network address (IPv4 and IPv6), the IPv4 broadcast address and the
//!   gateway are never handed out; the gateway defaults to network + 1;
//! - `allocate` draws from the ip range, round-robin from a persisted cursor,
//!   so a released address returns only after the cursor has gone round the
//!   range (other endpoints' ARP caches may still hold its old MAC);
//! - a static address (`--ip`) may lie anywhere in the subnet except on the
//!   addresses above, also outside the ip range;
//! - IPv4 prefixes longer than /30 and IPv6 longer than /126 are refused.
//!
//! Capacities: memory is one entry per allocated address; addresses are
//! `u128` numbers, so an IPv6 /64 is never enumerated. `allocate` costs
//! O(k log k) for k addresses held in the range. Choosing a default subnet
//! jumps over conflicting subnets instead of trying every block, so it costs
//! O(n²) in the number of subnets and avoided routes, whatever the pool size.
//!
//! Not implemented: IPv6 default pools (ULA generation), cluster-wide
//! coordination of overlay subnets, `--aux-address`, re-checking overlaps
//! between networks when loading a state file.

mod error;
mod subnet;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

pub use ipnet::IpNet;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

pub use error::{AddSubnetError, AllocError, Family, ReleaseError, SubnetError};
pub use subnet::SubnetAlloc;

use subnet::{addr_from, bits};

/// A default pool: `base` is carved into blocks of prefix length `size`
/// (Docker's `default-address-pools`). Pools that are not IPv4, or whose
/// `size` is shorter than the base prefix or longer than /30, are skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DefaultPool {
    /// The range blocks are taken from.
    pub base: IpNet,
    /// The prefix length of each block.
    pub size: u8,
}

/// All networks' subnets, keyed by network id (chosen by the controller).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ipam {
    /// Tried in order by [`Ipam::add_default_subnet`].
    pools: Vec<DefaultPool>,
    networks: BTreeMap<String, Vec<SubnetAlloc>>,
}

impl Ipam {
    /// Docker's local defaults: 172.17.0.0/16 to 172.31.0.0/16 as /16
    /// blocks, then 192.168.0.0/16 in /20 blocks (libnetwork `ipamutils`).
    pub fn with_docker_defaults() -> Self {
        let v4 = |a, b, prefix| IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(a, b, 0, 0), prefix));
        let mut pools: Vec<DefaultPool> = (17..=31)
            .map(|b| DefaultPool {
                base: v4(172, b, 16),
                size: 16,
            })
            .collect();
        pools.push(DefaultPool {
            base: v4(192, 168, 16),
            size: 20,
        });
        Self::with_pools(pools)
    }

    /// No network yet; `pools` are tried in order by [`Ipam::add_default_subnet`].
    pub fn with_pools(pools: Vec<DefaultPool>) -> Self {
        Ipam {
            pools,
            networks: BTreeMap::new(),
        }
    }

    /// Adds an explicit subnet to a network, creating the network's entry
    /// if needed.
    ///
    /// # Errors
    /// [`AddSubnetError::Subnet`] for an invalid subnet, gateway or range;
    /// [`AddSubnetError::Overlaps`] if it overlaps any subnet of any network,
    /// this one included.
    pub fn add_subnet(
        &mut self,
        network: &str,
        subnet: IpNet,
        gateway: Option<IpAddr>,
        ip_range: Option<IpNet>,
    ) -> Result<&SubnetAlloc, AddSubnetError> {
        let alloc = SubnetAlloc::new(subnet, gateway, ip_range)?;
        let subnet = alloc.subnet();
        for (name, allocs) in &self.networks {
            if let Some(existing) = allocs
                .iter()
                .map(SubnetAlloc::subnet)
                .find(|e| overlaps(*e, subnet))
            {
                return Err(AddSubnetError::Overlaps {
                    subnet,
                    network: name.clone(),
                    existing,
                });
            }
        }
        Ok(self.push(network, alloc))
    }

    /// Gives a network the first default-pool block that overlaps no
    /// existing subnet and none of `avoid` (the host's routes, read by the
    /// caller; a /0 entry, the default route, is ignored). IPv4 only. The
    /// gateway is the block's first address; there is no ip range.
    ///
    /// # Errors
    /// [`AddSubnetError::PoolsExhausted`] when no pool has a free block.
    pub fn add_default_subnet(
        &mut self,
        network: &str,
        avoid: &[IpNet],
    ) -> Result<&SubnetAlloc, AddSubnetError> {
        let taken: Vec<(u128, u128)> = self
            .networks
            .values()
            .flatten()
            .map(SubnetAlloc::subnet)
            .chain(avoid.iter().filter(|n| n.prefix_len() > 0).copied())
            .filter(|n| matches!(n, IpNet::V4(_)))
            .map(|n| (bits(n.network()), bits(n.broadcast())))
            .collect();
        let alloc = self
            .pools
            .iter()
            .find_map(|pool| free_block(*pool, &taken))
            .and_then(|block| SubnetAlloc::new(block, None, None).ok())
            .ok_or(AddSubnetError::PoolsExhausted)?;
        Ok(self.push(network, alloc))
    }

    /// Forgets a network and all its addresses; false if it was unknown.
    pub fn remove_network(&mut self, network: &str) -> bool {
        self.networks.remove(network).is_some()
    }

    /// The network's subnets in the order they were added (empty if unknown).
    pub fn subnets(&self, network: &str) -> &[SubnetAlloc] {
        self.networks.get(network).map_or(&[], Vec::as_slice)
    }

    /// Every network with its subnets, ordered by network id.
    pub fn networks(&self) -> impl Iterator<Item = (&str, &[SubnetAlloc])> {
        self.networks
            .iter()
            .map(|(n, s)| (n.as_str(), s.as_slice()))
    }

    /// Allocates an address of the given family (`v4` true for IPv4) from the
    /// network's first subnet of that family that has a free address (Docker
    /// moves on to the next pool in the same way).
    ///
    /// # Errors
    /// [`AllocError::UnknownNetwork`]; [`AllocError::NoSubnet`] when the
    /// network has no subnet of that family; [`AllocError::Exhausted`] (of
    /// the last such subnet) when all are full.
    pub fn allocate(&mut self, network: &str, v4: bool) -> Result<IpAddr, AllocError> {
        let family = if v4 { Family::Ipv4 } else { Family::Ipv6 };
        let allocs = self
            .allocs_mut(network)
            .ok_or_else(|| AllocError::UnknownNetwork {
                network: network.into(),
            })?;
        let mut result = Err(AllocError::NoSubnet {
            network: network.into(),
            family,
        });
        for alloc in allocs.iter_mut().filter(|a| a.is_ipv4() == v4) {
            result = alloc.allocate();
            if result.is_ok() {
                break;
            }
        }
        result
    }

    /// Reserves a static address in whichever subnet of the network contains it.
    ///
    /// # Errors
    /// [`AllocError::UnknownNetwork`]; [`AllocError::OutsideNetwork`] when no
    /// subnet contains `addr`; otherwise as [`SubnetAlloc::reserve`].
    pub fn reserve(&mut self, network: &str, addr: IpAddr) -> Result<(), AllocError> {
        let allocs = self
            .allocs_mut(network)
            .ok_or_else(|| AllocError::UnknownNetwork {
                network: network.into(),
            })?;
        let alloc = allocs
            .iter_mut()
            .find(|a| a.contains(addr))
            .ok_or_else(|| AllocError::OutsideNetwork {
                addr,
                network: network.into(),
            })?;
        alloc.reserve(addr)
    }

    /// Releases an address in whichever subnet of the network contains it.
    ///
    /// # Errors
    /// [`ReleaseError::UnknownNetwork`]; [`ReleaseError::OutsideNetwork`] when
    /// no subnet contains `addr`; [`ReleaseError::NotAllocated`] when it is free.
    pub fn release(&mut self, network: &str, addr: IpAddr) -> Result<(), ReleaseError> {
        let allocs = self
            .allocs_mut(network)
            .ok_or_else(|| ReleaseError::UnknownNetwork {
                network: network.into(),
            })?;
        let alloc = allocs
            .iter_mut()
            .find(|a| a.contains(addr))
            .ok_or_else(|| ReleaseError::OutsideNetwork {
                addr,
                network: network.into(),
            })?;
        alloc.release(addr)
    }

    fn allocs_mut(&mut self, network: &str) -> Option<&mut Vec<SubnetAlloc>> {
        self.networks.get_mut(network)
    }

    fn push(&mut self, network: &str, alloc: SubnetAlloc) -> &SubnetAlloc {
        let allocs = self.networks.entry(network.to_owned()).or_default();
        allocs.push(alloc);
        // Cannot underflow: the vector holds at least the element just pushed.
        &allocs[allocs.len() - 1]
    }
}

/// Two CIDR blocks overlap iff one contains the other's network address.
fn overlaps(a: IpNet, b: IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The first block of `pool` that overlaps no `taken` range (inclusive
/// bounds). After a conflict the search resumes at the first block past it,
/// so each conflicting range is met at most once.
fn free_block(pool: DefaultPool, taken: &[(u128, u128)]) -> Option<IpNet> {
    let base = pool.base.trunc();
    if !matches!(base, IpNet::V4(_)) || pool.size < base.prefix_len() || pool.size > 30 {
        return None;
    }
    let (lo, hi) = (bits(base.network()), bits(base.broadcast()));
    let block = 1u128 << (32 - pool.size);
    let mut start = lo;
    while start <= hi {
        let end = start + block - 1;
        match taken
            .iter()
            .filter(|&&(l, h)| l <= end && start <= h)
            .map(|&(_, h)| h)
            .max()
        {
            None => return IpNet::new(addr_from(base, start), pool.size).ok(),
            Some(h) => start = lo + (h.max(end) + 1 - lo).div_ceil(block) * block,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("test literal")
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test literal")
    }
    fn pool(base: &str, size: u8) -> DefaultPool {
        DefaultPool {
            base: net(base),
            size,
        }
    }
    /// add_subnet without gateway or range, as a result carrying the subnet.
    fn add(ipam: &mut Ipam, network: &str, subnet: &str) -> Result<IpNet, AddSubnetError> {
        ipam.add_subnet(network, net(subnet), None, None)
            .map(SubnetAlloc::subnet)
    }
    fn add_default(
        ipam: &mut Ipam,
        network: &str,
        avoid: &[IpNet],
    ) -> Result<IpNet, AddSubnetError> {
        ipam.add_default_subnet(network, avoid)
            .map(SubnetAlloc::subnet)
    }

    #[test]
    fn docker_defaults() {
        let pools = Ipam::with_docker_defaults().pools;
        assert_eq!(pools.len(), 16);
        assert_eq!(pools[0], pool("172.17.0.0/16", 16));
        assert_eq!(pools[14], pool("172.31.0.0/16", 16));
        assert_eq!(pools[15], pool("192.168.0.0/16", 20));
    }

    #[test]
    fn default_subnets_skip_taken_blocks_and_host_routes() {
        let mut ipam = Ipam::with_docker_defaults();
        assert_eq!(add_default(&mut ipam, "a", &[]), Ok(net("172.17.0.0/16")));
        add(&mut ipam, "b", "172.18.5.0/24").unwrap();
        let avoid = [net("0.0.0.0/0"), net("172.19.0.0/20"), net("fd00::/8")];
        let c = ipam.add_default_subnet("c", &avoid).unwrap();
        assert_eq!(
            (c.subnet(), c.gateway(), c.ip_range()),
            (net("172.20.0.0/16"), ip("172.20.0.1"), None)
        );
        // Invalid and IPv6 pools are skipped; then /28 blocks around a /26 and two /30s.
        let pools = [
            pool("fd00::/64", 80),
            pool("10.0.0.0/28", 24),
            pool("10.0.0.0/24", 31),
            pool("10.0.0.0/24", 28),
        ];
        let mut ipam = Ipam::with_pools(pools.into());
        add(&mut ipam, "x", "10.0.0.64/26").unwrap();
        let avoid = [net("10.0.0.4/30"), net("10.0.0.20/30")];
        for want in ["10.0.0.32/28", "10.0.0.48/28", "10.0.0.128/28"] {
            assert_eq!(add_default(&mut ipam, "n", &avoid), Ok(net(want)));
        }
        assert_eq!(ipam.subnets("n").len(), 3);
        for _ in 0..7 {
            add_default(&mut ipam, "m", &avoid).unwrap();
        }
        assert_eq!(
            add_default(&mut ipam, "m", &avoid),
            Err(AddSubnetError::PoolsExhausted)
        );
        assert_eq!(
            add_default(&mut Ipam::default(), "n", &[]),
            Err(AddSubnetError::PoolsExhausted)
        );
    }

    #[test]
    fn explicit_subnets_never_overlap() {
        let mut ipam = Ipam::with_docker_defaults();
        add(&mut ipam, "n1", "10.0.0.0/16").unwrap();
        let err = add(&mut ipam, "n2", "10.0.0.7/24").unwrap_err().to_string();
        assert_eq!(
            err,
            "subnet 10.0.0.0/24 overlaps 10.0.0.0/16 of network n1: choose another --subnet"
        );
        assert!(matches!(
            add(&mut ipam, "n1", "10.0.0.0/8"),
            Err(AddSubnetError::Overlaps { .. })
        ));
        let too_small = SubnetError::TooSmall {
            subnet: net("10.1.0.0/31"),
        };
        assert_eq!(
            add(&mut ipam, "n2", "10.1.0.0/31"),
            Err(AddSubnetError::Subnet(too_small))
        );
        ipam.add_subnet("n1", net("fd00::/64"), Some(ip("fd00::fe")), None)
            .unwrap();
        add(&mut ipam, "n2", "10.1.0.0/24").unwrap();
        let sizes: Vec<_> = ipam.networks().map(|(n, s)| (n, s.len())).collect();
        assert_eq!(sizes, [("n1", 2), ("n2", 1)]);
        assert!(ipam.remove_network("n1") && !ipam.remove_network("n1"));
        assert!(ipam.subnets("n1").is_empty());
        assert_eq!(add(&mut ipam, "n3", "10.0.0.0/24"), Ok(net("10.0.0.0/24")));
    }

    #[test]
    fn addresses_by_network_and_family() {
        let mut ipam = Ipam::default();
        for (network, subnet) in [
            ("n", "10.0.0.0/30"),
            ("n", "10.0.1.0/30"),
            ("v4", "10.0.2.0/24"),
        ] {
            add(&mut ipam, network, subnet).unwrap();
        }
        assert_eq!(ipam.allocate("n", true), Ok(ip("10.0.0.2")));
        assert_eq!(
            ipam.allocate("n", true),
            Ok(ip("10.0.1.2")),
            "first subnet full: next one"
        );
        let exhausted = AllocError::Exhausted {
            subnet: net("10.0.1.0/30"),
        };
        assert_eq!(ipam.allocate("n", true), Err(exhausted));
        let no_v6 = ipam.allocate("v4", false).unwrap_err();
        assert_eq!(
            no_v6.to_string(),
            "network v4 has no IPv6 subnet: add one with --subnet"
        );
        assert!(matches!(
            no_v6,
            AllocError::NoSubnet {
                family: Family::Ipv6,
                ..
            }
        ));
        assert!(matches!(
            ipam.allocate("nope", true),
            Err(AllocError::UnknownNetwork { .. })
        ));
        assert_eq!(ipam.reserve("v4", ip("10.0.2.9")), Ok(()));
        assert_eq!(
            ipam.reserve("v4", ip("10.0.2.9")),
            Err(AllocError::InUse {
                addr: ip("10.0.2.9")
            })
        );
        assert!(matches!(
            ipam.reserve("v4", ip("10.0.3.9")),
            Err(AllocError::OutsideNetwork { .. })
        ));
        assert!(matches!(
            ipam.reserve("nope", ip("10.0.3.9")),
            Err(AllocError::UnknownNetwork { .. })
        ));
        assert_eq!(ipam.release("n", ip("10.0.1.2")), Ok(()));
        assert!(matches!(
            ipam.release("n", ip("10.0.1.2")),
            Err(ReleaseError::NotAllocated { .. })
        ));
        assert!(matches!(
            ipam.release("n", ip("10.0.9.2")),
            Err(ReleaseError::OutsideNetwork { .. })
        ));
        assert!(matches!(
            ipam.release("nope", ip("10.0.9.2")),
            Err(ReleaseError::UnknownNetwork { .. })
        ));
        assert_eq!(ipam.allocate("n", true), Ok(ip("10.0.1.2")));
    }

    #[test]
    fn ipam_serde_round_trip() {
        let mut ipam = Ipam::with_docker_defaults();
        ipam.add_default_subnet("a", &[]).unwrap();
        ipam.add_subnet(
            "a",
            net("fd00::/64"),
            None,
            Some(net("fd00::8000:0:0:0/65")),
        )
        .unwrap();
        ipam.allocate("a", true).unwrap();
        ipam.allocate("a", false).unwrap();
        let json = serde_json::to_string(&ipam).unwrap();
        assert_eq!(serde_json::from_str::<Ipam>(&json).unwrap(), ipam);
        let corrupt = json.replace(r#""gateway":"172.17.0.1""#, r#""gateway":"172.17.0.0""#);
        assert_ne!(corrupt, json);
        let err = serde_json::from_str::<Ipam>(&corrupt)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("gateway 172.17.0.0 is the network or broadcast address"),
            "{err}"
        );
    }

    proptest! {
        #[test]
        fn default_subnets_are_disjoint_and_avoid_routes(
            existing in prop::collection::vec((0u32..16, 22u8..30), 0..6),
            avoid in prop::collection::vec((0u32..16, 21u8..33), 0..6),
            size in 24u8..29,
        ) {
            // Subnets of 10.0.0.0/20 (10.0.i.0 with prefix p).
            let mk = |(i, p): (u32, u8)| IpNet::new(Ipv4Addr::from(0x0a00_0000 | (i << 8)).into(), p).ok();
            let avoid: Vec<IpNet> = avoid.into_iter().filter_map(mk).map(|n| n.trunc()).collect();
            let mut ipam = Ipam::with_pools(vec![pool("10.0.0.0/20", size)]);
            for (k, subnet) in existing.into_iter().filter_map(mk).enumerate() {
                let _ = ipam.add_subnet(&format!("e{k}"), subnet, None, None);
            }
            let before: Vec<IpNet> = ipam.networks().flat_map(|(_, s)| s.iter().map(SubnetAlloc::subnet)).collect();
            let mut added = Vec::new();
            while let Ok(subnet) = add_default(&mut ipam, "d", &avoid) {
                added.push(subnet);
                prop_assert!(added.len() <= 256);
            }
            // Every block is either handed out or in conflict, never both.
            for block in net("10.0.0.0/20").subnets(size).expect("valid size") {
                let taken = before.iter().chain(&avoid).any(|t| overlaps(*t, block));
                prop_assert_eq!(added.contains(&block), !taken, "{}", block);
            }
            let json = serde_json::to_string(&ipam).expect("serialize");
            prop_assert_eq!(serde_json::from_str::<Ipam>(&json).expect("deserialize"), ipam);
        }
    }
}
