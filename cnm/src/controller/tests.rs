use std::collections::BTreeMap;
use std::path::Path;

use weft_overlay::{ClusterNetworkId, Vni};

use super::records::{network_from_record, network_record};
use super::validation::{default_endpoint_name, validate_name, validate_options};
use crate::model::{DriverKind, Network, Scope, SubnetInfo, DEFAULT_OVERLAY_MTU};

#[test]
fn names() {
    assert!(validate_name("x", "n1").is_ok());
    assert!(validate_name("x", "my-net_2.a").is_ok());
    assert!(validate_name("x", "").is_err());
    assert!(validate_name("x", "-n").is_err());
    assert!(validate_name("x", "a b").is_err());
    assert!(validate_name("x", &"a".repeat(64)).is_err());
}

#[test]
fn default_names_of_sandboxes() {
    assert_eq!(
        default_endpoint_name(Path::new("/var/run/netns/web")),
        "web"
    );
    assert_eq!(
        default_endpoint_name(Path::new("/proc/1234/ns/net")),
        "pid1234"
    );
}

/// `--opt` pairs as a network's options.
fn opts(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn options_are_checked_against_the_driver() {
    assert!(validate_options(DriverKind::Bridge, &opts(&[])).is_ok());
    assert!(validate_options(DriverKind::Bridge, &opts(&[("host_loopback", "true")])).is_ok());
    assert!(validate_options(DriverKind::Bridge, &opts(&[("host_loopback", "false")])).is_ok());
    let bad_value =
        validate_options(DriverKind::Bridge, &opts(&[("host_loopback", "yes")])).unwrap_err();
    assert_eq!(crate::api::status_of(&bad_value), 400);
    assert_eq!(
        bad_value.to_string(),
        "--opt host_loopback: \"yes\" is not a value of host_loopback: use true or false"
    );
    let unknown = validate_options(DriverKind::Bridge, &opts(&[("k", "v")])).unwrap_err();
    assert_eq!(crate::api::status_of(&unknown), 400);
    assert!(
        unknown
            .to_string()
            .contains("known options are host_loopback=true|false"),
        "{unknown}"
    );
    let null = validate_options(DriverKind::Null, &opts(&[("host_loopback", "true")])).unwrap_err();
    assert!(null.to_string().contains("takes no options"), "{null}");
}

#[test]
fn overlay_options_are_a_vni_and_peers() {
    let check = |pairs: &[(&str, &str)]| validate_options(DriverKind::Overlay, &opts(pairs));
    assert!(check(&[]).is_ok());
    assert!(check(&[("vni", "4242"), ("peers", "192.0.2.4,2001:db8::4")]).is_ok());
    assert!(check(&[("vni", "16777215")]).is_ok());
    for bad in ["0", "16777216", "x", "-1"] {
        let e = check(&[("vni", bad)]).unwrap_err();
        assert_eq!(crate::api::status_of(&e), 400);
        assert!(e.to_string().contains("from 1 to 16777215"), "{e}");
    }
    let e = check(&[("peers", "192.0.2.4,nohost")]).unwrap_err();
    assert!(
        e.to_string().contains("\"nohost\" is not an IP address"),
        "{e}"
    );
    let e = check(&[("peers", ",")]).unwrap_err();
    assert!(e.to_string().contains("at least one"), "{e}");
    let e = check(&[("host_loopback", "true")]).unwrap_err();
    assert!(e.to_string().contains("known options are vni=N"), "{e}");
}

#[test]
fn overlay_networks_travel_as_records_and_come_back_the_same() {
    let network = Network {
        name: "ov".into(),
        id: "ab".repeat(32),
        driver: DriverKind::Overlay,
        scope: Scope::Cluster,
        subnets: vec![SubnetInfo {
            subnet: "10.232.0.0/24".parse().unwrap(),
            gateway: "10.232.0.1".parse().unwrap(),
            ip_range: None,
        }],
        internal: true,
        mtu: 1400,
        options: [("vni".to_owned(), "7".to_owned())].into(),
        labels: Default::default(),
        created: String::new(),
        aux_addresses: Default::default(),
        vni: Some(Vni::new(7).unwrap()),
    };
    let record = network_record(&network).expect("an overlay network has a record");
    assert_eq!(record.vni.get(), 7);
    assert_eq!(record.gateway, Some("10.232.0.1".parse().unwrap()));
    let id = ClusterNetworkId(network.id.clone());
    let back = network_from_record(&id, &record);
    assert_eq!(
        Network {
            subnets: network.subnets.clone(),
            created: String::new(),
            ..back
        },
        network
    );
    // A record without the reserved keys gets the overlay defaults.
    let mut bare = record.clone();
    bare.options.clear();
    let back = network_from_record(&id, &bare);
    assert_eq!((back.mtu, back.internal), (DEFAULT_OVERLAY_MTU, false));
    // Without a VNI or a subnet there is no record.
    assert!(network_record(&Network {
        vni: None,
        ..network.clone()
    })
    .is_none());
    assert!(network_record(&Network {
        subnets: Vec::new(),
        ..network
    })
    .is_none());
}
