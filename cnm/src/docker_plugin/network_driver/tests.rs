use super::*;

fn options(json: &str) -> Result<NetworkOptions, String> {
    parse_network_options(&serde_json::from_str(json).unwrap())
}

#[test]
fn options_of_docker_network_create() {
    let o = options(
        r#"{"com.docker.network.enable_ipv6":true,"com.docker.network.internal":true,
        "com.docker.network.generic":{"weft.network":"ov","weft.driver":"overlay",
        "com.docker.network.driver.mtu":"1400","vni":"4242"}}"#,
    )
    .unwrap();
    assert_eq!(o.weft_network.as_deref(), Some("ov"));
    assert_eq!(o.driver, Some(DriverKind::Overlay));
    assert_eq!(o.mtu, Some(1400));
    assert!(o.ipv6 && o.internal);
    assert_eq!(
        o.driver_options.get("vni").map(String::as_str),
        Some("4242")
    );
    assert_eq!(options("{}").unwrap(), NetworkOptions::default());
}

#[test]
fn bad_options_say_what_to_write() {
    let e = options(r#"{"com.docker.network.generic":{"weft.driver":"macvlan"}}"#).unwrap_err();
    assert!(
        e.contains("weft.driver=bridge or weft.driver=overlay"),
        "{e}"
    );
    let e = options(r#"{"com.docker.network.generic":{"com.docker.network.driver.mtu":"big"}}"#)
        .unwrap_err();
    assert!(e.contains("is a number"), "{e}");
    let e = options(r#"{"com.docker.network.generic":{"com.docker.network.bridge.name":"br9"}}"#)
        .unwrap_err();
    assert!(e.contains("not of weft"), "{e}");
}

#[test]
fn ports_from_docker() {
    let tcp = PortBinding {
        proto: 6,
        port: 80,
        host_ip: Some(String::new()),
        host_port: 8080,
        host_port_end: 8080,
    };
    let m = port_mapping(&tcp).unwrap();
    assert_eq!(
        (m.host_ip, m.host_port, m.container_port, m.proto),
        (None, 8080, 80, PortProto::Tcp)
    );
    let sctp = PortBinding {
        proto: 132,
        ..tcp.clone()
    };
    assert!(port_mapping(&sctp)
        .unwrap_err()
        .contains("TCP and UDP ports only"));
    let udp = PortBinding {
        proto: 17,
        host_ip: Some("127.0.0.1".into()),
        ..tcp
    };
    let m = port_mapping(&udp).unwrap();
    assert_eq!(m.host_ip, Some("127.0.0.1".parse().unwrap()));
    assert_eq!(m.proto, PortProto::Udp);
}

#[test]
fn tap_names_fit_the_kernel() {
    let name = src_name("3f4c9d0e5a6b7c8d9e0f1a2b3c4d5e6f");
    assert_eq!(name, "wft3f4c9d0e5a6b");
    assert!(name.len() <= 15);
}
