//! How a cluster network's subnet is cut into address blocks: the unit a
//! host leases ([`super`]). Blocks of [`BLOCK_LEN`] addresses, numbered
//! from the subnet's start; a block never hands out the subnet's own
//! address, the IPv4 broadcast address or the gateway. A huge IPv6 subnet
//! counts its first 2^40 blocks only.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// Addresses per block (a /28 of IPv4).
pub const BLOCK_LEN: u128 = 16;
/// Most blocks counted in a plan: the first 2^40 blocks of a huge IPv6
/// subnet are more than enough.
const MAX_BLOCKS: u128 = 1 << 40;

/// How a subnet is cut into blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockPlan {
    subnet: IpNet,
    gateway: Option<IpAddr>,
    block_len: u128,
    blocks: u64,
}

impl BlockPlan {
    /// The plan for `subnet`, never handing out `gateway`.
    pub fn new(subnet: IpNet, gateway: Option<IpAddr>) -> Self {
        let host_bits = u32::from(subnet.max_prefix_len() - subnet.prefix_len()).min(64);
        let size = 1u128 << host_bits;
        let block_len = BLOCK_LEN.min(size);
        let blocks = (size / block_len).min(MAX_BLOCKS);
        Self {
            subnet: subnet.trunc(),
            gateway,
            block_len,
            blocks: u64::try_from(blocks).unwrap_or(u64::MAX),
        }
    }

    /// How many blocks the subnet has.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// The assignable addresses of `block`: not the subnet's own address,
    /// not the IPv4 broadcast address, not the gateway.
    pub fn addresses(&self, block: u64) -> impl Iterator<Item = IpAddr> + '_ {
        let host_bits = u32::from(self.subnet.max_prefix_len() - self.subnet.prefix_len());
        let start = u128::from(block) * self.block_len;
        (start..start + self.block_len).filter_map(move |offset| {
            let last = host_bits <= 64 && offset == (1u128 << host_bits) - 1;
            let ip = match self.subnet {
                IpNet::V4(net) => {
                    if offset == 0 || (last && net.prefix_len() < 31) {
                        return None;
                    }
                    let base = u32::from(net.network());
                    IpAddr::V4(Ipv4Addr::from(
                        base.checked_add(u32::try_from(offset).ok()?)?,
                    ))
                }
                IpNet::V6(net) => {
                    if offset == 0 {
                        return None;
                    }
                    IpAddr::V6(Ipv6Addr::from(
                        u128::from(net.network()).checked_add(offset)?,
                    ))
                }
            };
            (Some(ip) != self.gateway).then_some(ip)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_of_an_ipv4_slash_24() {
        let plan = BlockPlan::new(
            "10.0.0.0/24".parse().unwrap(),
            Some("10.0.0.1".parse().unwrap()),
        );
        assert_eq!(plan.blocks(), 16);
        let first: Vec<IpAddr> = plan.addresses(0).collect();
        assert_eq!(first.len(), 14, "no .0, no gateway .1");
        assert_eq!(first[0], "10.0.0.2".parse::<IpAddr>().unwrap());
        let last: Vec<IpAddr> = plan.addresses(15).collect();
        assert_eq!(last.len(), 15, "no broadcast .255");
        assert_eq!(
            *last.last().unwrap(),
            "10.0.0.254".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            plan.addresses(16).count(),
            16,
            "beyond the plan, callers never ask"
        );
    }

    #[test]
    fn plan_of_small_and_ipv6_subnets() {
        let tiny = BlockPlan::new("10.0.0.0/30".parse().unwrap(), None);
        assert_eq!(tiny.blocks(), 1);
        assert_eq!(tiny.addresses(0).count(), 2);
        let v6 = BlockPlan::new("fd00::/64".parse().unwrap(), None);
        assert_eq!(v6.blocks(), MAX_BLOCKS as u64);
        assert_eq!(v6.addresses(0).count(), 15);
        assert_eq!(v6.addresses(1).next(), Some("fd00::10".parse().unwrap()));
    }
}
