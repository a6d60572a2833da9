//! Overlay networks as the cluster directory carries them: the record
//! of a network made here, a network made from another host's record,
//! and a VNI no cluster network uses.

use std::collections::BTreeMap;
use std::time::SystemTime;

use weft_overlay::driver::gossip::Cluster;
use weft_overlay::{ClusterNetworkId, NetworkRecord, Vni};

use crate::model::{DriverKind, Network, Scope, DEFAULT_OVERLAY_MTU, MAX_MTU, MIN_MTU};

/// Lowest VNI chosen at random (Docker's overlay starts at 4096 too,
/// leaving the low ones to hand-made Linux `vxlan` devices).
pub(super) const RANDOM_VNI_MIN: u32 = 4096;

/// Keys of the network record's options that carry the network's MTU and
/// `--internal` to the other hosts (not user options).
pub(super) const RECORD_MTU: &str = "weft.mtu";

pub(super) const RECORD_INTERNAL: &str = "weft.internal";

/// A VNI no live cluster network uses, at random from [`RANDOM_VNI_MIN`].
pub(super) fn random_vni(cluster: &Cluster) -> Vni {
    let mut vni = Vni::from_low_bits(RANDOM_VNI_MIN);
    // 2^24 - 4096 values for at most a few thousand networks: a free one
    // comes in a few draws; the bound only guards against a full space.
    for _ in 0..1000 {
        vni = Vni::from_low_bits(rand::random_range(RANDOM_VNI_MIN..=Vni::MAX));
        if cluster.network_by_vni(vni).is_none() {
            break;
        }
    }
    vni
}

/// The directory's record of an overlay network (its MTU and `--internal`
/// ride in the options under reserved keys).
pub(super) fn network_record(network: &Network) -> Option<NetworkRecord> {
    let subnet = network.subnets.first()?;
    let vni = network.vni?;
    let mut options = network.options.clone();
    options.insert(RECORD_MTU.into(), network.mtu.to_string());
    options.insert(RECORD_INTERNAL.into(), network.internal.to_string());
    Some(NetworkRecord {
        name: network.name.clone(),
        subnet: subnet.subnet,
        gateway: Some(subnet.gateway),
        vni,
        options,
    })
}

/// A cluster network made here from the directory's record (subnets are
/// filled in once the local IPAM took the subnet).
pub(super) fn network_from_record(id: &ClusterNetworkId, record: &NetworkRecord) -> Network {
    let mut options = record.options.clone();
    let mtu = options
        .remove(RECORD_MTU)
        .and_then(|m| m.parse().ok())
        .filter(|m| (MIN_MTU..=MAX_MTU).contains(m))
        .unwrap_or(DEFAULT_OVERLAY_MTU);
    let internal = options.remove(RECORD_INTERNAL).is_some_and(|v| v == "true");
    Network {
        name: record.name.clone(),
        id: id.0.clone(),
        driver: DriverKind::Overlay,
        scope: Scope::Cluster,
        subnets: Vec::new(),
        internal,
        mtu,
        options,
        labels: BTreeMap::new(),
        created: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        vni: Some(record.vni),
        aux_addresses: BTreeMap::new(),
    }
}
