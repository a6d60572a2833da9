//! One error enum per operation. Every message names the offending value
//! and says what to change, because the CLI shows it to the user as is.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use thiserror::Error;

/// An address family, as named in error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// IPv4.
    Ipv4,
    /// IPv6.
    Ipv6,
}

/// Why [`SubnetAlloc::new`](crate::SubnetAlloc::new) refused a subnet.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SubnetError {
    /// No room for a gateway and one host (IPv4 longer than /30, IPv6 longer than /126).
    #[error(
        "subnet {subnet} is too small: use a prefix of /30 or shorter for IPv4, /126 or shorter for IPv6"
    )]
    TooSmall { subnet: IpNet },
    /// The gateway is not inside the subnet (or is of the other family).
    #[error("gateway {gateway} is outside subnet {subnet}: choose a --gateway inside the subnet")]
    GatewayOutside { gateway: IpAddr, subnet: IpNet },
    /// The gateway is the subnet's network address or its IPv4 broadcast address.
    #[error(
        "gateway {gateway} is the network or broadcast address of {subnet}: choose another --gateway"
    )]
    GatewayReserved { gateway: IpAddr, subnet: IpNet },
    /// The subnet overlaps addresses that can never be a network's: the
    /// unspecified range, loopback, link-local, multicast, reserved or
    /// IPv4-mapped addresses.
    #[error(
        "subnet {subnet} overlaps {reserved} ({why}): no sandbox could use it; choose a private range such as 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16 or fd00::/8"
    )]
    Unusable {
        /// The subnet asked for.
        subnet: IpNet,
        /// The range it overlaps.
        reserved: IpNet,
        /// What that range is.
        why: &'static str,
    },
    /// The ip range is not inside the subnet (or is of the other family).
    #[error(
        "ip range {ip_range} is not inside subnet {subnet}: choose an --ip-range inside the --subnet"
    )]
    RangeOutside { ip_range: IpNet, subnet: IpNet },
}

/// Why an address could not be allocated or reserved.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AllocError {
    /// The static address is not inside the subnet.
    #[error("address {addr} is outside subnet {subnet}: choose an --ip inside the subnet")]
    OutsideSubnet { addr: IpAddr, subnet: IpNet },
    /// The static address is in none of the network's subnets.
    #[error("address {addr} is in no subnet of network {network}: choose an --ip inside one of its subnets")]
    OutsideNetwork { addr: IpAddr, network: String },
    /// The static address is the subnet's network address.
    #[error("address {addr} is the network address of {subnet}: choose another --ip")]
    NetworkAddress { addr: IpAddr, subnet: IpNet },
    /// The static address is the IPv4 subnet's broadcast address.
    #[error("address {addr} is the broadcast address of {subnet}: choose another --ip")]
    BroadcastAddress { addr: IpAddr, subnet: IpNet },
    /// The static address is the subnet's gateway.
    #[error("address {addr} is the gateway of {subnet}: choose another --ip")]
    Gateway { addr: IpAddr, subnet: IpNet },
    /// The static address is already allocated to an endpoint.
    #[error(
        "address {addr} is already in use: choose another --ip or remove the endpoint that has it"
    )]
    InUse { addr: IpAddr },
    /// Every address of the range is in use.
    #[error("no free address left in {subnet}: remove unused endpoints or use a larger --subnet or --ip-range")]
    Exhausted { subnet: IpNet },
    /// The network has no subnet of the requested family.
    #[error("network {network} has no {family} subnet: add one with --subnet")]
    NoSubnet { network: String, family: Family },
    /// IPAM knows no network of that id.
    #[error("network {network} has no address management state: create the network first")]
    UnknownNetwork { network: String },
}

/// Why an address could not be released.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ReleaseError {
    /// The address is not allocated in this subnet (the gateway never is).
    #[error("address {addr} is not allocated in {subnet}: nothing to release")]
    NotAllocated { addr: IpAddr, subnet: IpNet },
    /// The address is in none of the network's subnets.
    #[error("address {addr} is in no subnet of network {network}: nothing to release")]
    OutsideNetwork { addr: IpAddr, network: String },
    /// IPAM knows no network of that id.
    #[error("network {network} has no address management state: nothing to release")]
    UnknownNetwork { network: String },
}

/// Why a subnet could not be added to a network.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AddSubnetError {
    /// The subnet, gateway or ip range is invalid.
    #[error(transparent)]
    Subnet(#[from] SubnetError),
    /// The subnet overlaps a subnet of some network (possibly the same one).
    #[error("subnet {subnet} overlaps {existing} of network {network}: choose another --subnet")]
    Overlaps {
        /// The normalized new subnet.
        subnet: IpNet,
        /// The network that owns `existing`.
        network: String,
        /// The subnet already in use.
        existing: IpNet,
    },
    /// Every block of every IPv4 default pool is taken or overlaps a host route.
    #[error("no free subnet left in the default address pools: pass --subnet explicitly or remove unused networks")]
    PoolsExhausted,
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::Ipv4 => "IPv4",
            Family::Ipv6 => "IPv6",
        })
    }
}
