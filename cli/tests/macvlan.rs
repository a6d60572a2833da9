//! End-to-end tests of the macvlan driver: sandboxes as hosts of a LAN the
//! test makes itself.
//!
//! The LAN is a kernel bridge in namespace LAN, with a ROUTER namespace
//! (10.237.N.1) and a LANHOST namespace (10.237.N.10) on it, and the
//! weft host's parent `lan0`, a veth from HOST into the bridge, where the
//! host's own stack has 10.237.N.5. Nothing of it is in the machine's own
//! namespace; every namespace goes with the world.
//!
//! Needs root, `ip` and `ping`; skipped otherwise, failed under `CI=true`.
//!
//! Subnets: 10.237.N.0/24, a distinct N per test.

#![allow(clippy::disallowed_methods)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::{run, show, World, CMD_TIMEOUT};

/// The LAN of one test.
struct Lan {
    /// The namespace of the LAN's bridge `br0`.
    bridge: String,
    router: String,
    lanhost: String,
    prefix: String,
}

/// Run `ip ARGS`, which must succeed.
fn ip(args: &[&str]) {
    let out = run(Command::new("timeout")
        .arg(CMD_TIMEOUT)
        .arg("ip")
        .args(args));
    assert!(out.status.success(), "ip {args:?}: {}", show(&out));
}

/// Build the LAN of 10.237.`n`.0/24 around `w`'s HOST (see the module
/// header).
fn lan(w: &mut World, n: u8) -> Lan {
    let prefix = format!("10.237.{n}");
    let lan = w.sandbox("lan");
    let router = w.sandbox("router");
    let lanhost = w.sandbox("lanhost");
    let host = w.host.clone();
    ip(&["-n", &lan, "link", "add", "br0", "type", "bridge"]);
    ip(&["-n", &lan, "link", "set", "br0", "up"]);
    for (ns, port, address) in [
        (router.as_str(), "r0", format!("{prefix}.1/24")),
        (lanhost.as_str(), "h0", format!("{prefix}.10/24")),
        (host.as_str(), "w0", format!("{prefix}.5/24")),
    ] {
        let inside = if ns == host { "lan0" } else { "eth0" };
        ip(&[
            "-n", &lan, "link", "add", port, "type", "veth", "peer", "name", inside, "netns", ns,
        ]);
        ip(&["-n", &lan, "link", "set", port, "master", "br0", "up"]);
        ip(&["-n", ns, "addr", "add", &address, "dev", inside]);
        ip(&["-n", ns, "link", "set", inside, "up"]);
        ip(&["-n", ns, "link", "set", "lo", "up"]);
    }
    let lan = Lan {
        bridge: lan,
        router,
        lanhost,
        prefix,
    };
    assert!(
        w.ping_eventually(
            &lan.lanhost,
            &format!("{}.1", lan.prefix),
            Duration::from_secs(10)
        ),
        "the test's LAN does not work"
    );
    lan
}

/// Wait (bounded) for a child to exit by itself, else stop it; what it
/// printed.
fn finish(child: &mut std::process::Child, within: Duration) -> String {
    let deadline = std::time::Instant::now() + within;
    while child.try_wait().ok().flatten().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    common::kill_group(child);
    let mut text = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = std::io::Read::read_to_string(&mut out, &mut text);
    }
    text
}

/// `weft network create -d DRIVER --subnet P.0/24 [--gateway P.1]
/// EXTRA... NAME` on `w`, which must succeed.
fn create_lan_network(w: &World, driver: &str, p: &str, gateway: bool, extra: &[&str], name: &str) {
    let subnet = format!("{p}.0/24");
    let router = format!("{p}.1");
    let mut args = vec!["network", "create", "-d", driver, "--subnet", &subnet];
    if gateway {
        args.extend(["--gateway", &router]);
    }
    args.extend_from_slice(extra);
    args.push(name);
    w.weft_ok(&args);
}

/// The endpoint's address without its prefix length.
fn address_of(w: &World, network: &str, ns: &str) -> String {
    World::address(&w.endpoint(network, ns), false)
}

/// A sandbox on a macvlan network is a host of the LAN: it gets an
/// address of the `--ip-range` (never the aux address, nor one another
/// LAN host answers ARP probes for; a static one of those is refused),
/// reaches the
/// router and another LAN host, which reach it and hold its own MAC in
/// their neighbour tables; a second sandbox is reached through weft
/// (bridge mode); names resolve at weft's DNS address; the parent host
/// itself does not reach its sandboxes (as with the kernel's macvlan) but
/// keeps its own traffic on the parent.
#[test]
fn sandboxes_are_hosts_of_the_lan() {
    let Some(mut w) = World::with_daemon_args(&["--dns-upstream", "192.0.2.53"]) else {
        return;
    };
    let lan = lan(&mut w, 1);
    let p = &lan.prefix;
    let aux = format!("router2={p}.193");
    let range = format!("{p}.192/27");
    let extra = [
        "--ip-range",
        &range,
        "--aux-address",
        &aux,
        "-o",
        "parent=lan0",
    ];
    create_lan_network(&w, "macvlan", p, true, &extra, "lan");
    let details = w.inspect("lan");
    assert_eq!(details["driver"], "macvlan", "{details}");
    assert_eq!(details["aux_addresses"]["router2"], format!("{p}.193"));
    let dns = details["options"]["dns_address"]
        .as_str()
        .expect("a DNS address")
        .to_owned();
    // LANHOST already uses three addresses of the range: weft's probes
    // (RFC 5227) find them, and no sandbox gets one.
    let taken: Vec<String> = [192, 194, 195].iter().map(|n| format!("{p}.{n}")).collect();
    let static_taken = format!("{p}.220");
    for address in taken.iter().chain([&static_taken]) {
        w.exec_ok(
            &lan.lanhost,
            &["ip", "addr", "add", &format!("{address}/24"), "dev", "eth0"],
        );
    }
    let (a, b) = (w.sandbox("a"), w.sandbox("b"));
    w.weft_ok(&["network", "connect", "--name", "alpha", "lan", &a]);
    w.weft_ok(&["network", "connect", "--name", "beta", "lan", &b]);
    let (a_ip, b_ip) = (address_of(&w, "lan", &a), address_of(&w, "lan", &b));
    let c = w.sandbox("c");
    let refused = w.weft_err(&["network", "connect", "--ip", &static_taken, "lan", &c]);
    assert!(refused.contains("in use on the LAN"), "{refused}");
    for address in [&a_ip, &b_ip] {
        assert!(!taken.contains(address), "{address} is LANHOST's");
        let last: u8 = address.rsplit('.').next().unwrap().parse().unwrap();
        assert!((192..224).contains(&last), "{address} outside the ip-range");
        assert_ne!(
            address,
            &format!("{p}.193"),
            "the aux address was handed out"
        );
        assert_ne!(address, &dns);
    }
    let route = w.exec_ok(&a, &["ip", "route", "show", "default"]);
    assert!(route.contains(&format!("via {p}.1")), "{route}");

    w.ping_ok(&a, &["-c", "2", "-W", "3", &format!("{p}.1")]);
    w.ping_ok(&a, &["-c", "2", "-W", "3", &format!("{p}.10")]);
    w.ping_ok(&lan.lanhost, &["-c", "2", "-W", "3", &a_ip]);
    w.ping_ok(&lan.router, &["-c", "1", "-W", "3", &b_ip]);
    let a_mac = w.endpoint("lan", &a)["mac"].as_str().unwrap().to_owned();
    let neighbours = w.exec_ok(&lan.lanhost, &["ip", "neigh", "show", &a_ip]);
    assert!(
        neighbours.to_lowercase().contains(&a_mac.to_lowercase()),
        "LANHOST's neighbour entry for {a_ip} is not {a_mac}: {neighbours}"
    );
    // Bridge mode: sandbox to sandbox through weft.
    w.ping_ok(&a, &["-c", "2", "-W", "3", &b_ip]);
    // weft's DNS on its own address of the LAN.
    let resolv = w.exec_ok(&a, &["cat", &format!("/etc/netns/{a}/resolv.conf")]);
    assert!(resolv.contains(&format!("nameserver {dns}")), "{resolv}");
    let answer = w.exec_ok(&a, &["/bin/busybox", "nslookup", "beta.lan", &dns]);
    assert!(answer.contains(&b_ip), "{answer}");
    // The parent host: its own traffic on the LAN works, its sandboxes
    // are not reached from it (the kernel's macvlan does the same).
    w.ping_ok(&w.host, &["-c", "1", "-W", "3", &format!("{p}.1")]);
    // Inspect shows the parent's port: what it took from and put on the
    // LAN, and the LAN's other traffic (the host's ping) as not ours.
    let uplink = w.inspect("lan")["uplink"].clone();
    assert_eq!(uplink["parent"], "lan0", "{uplink}");
    let counters = &uplink["counters"];
    assert!(
        counters["rx_frames"].as_u64().unwrap_or(0) > 0
            && counters["tx_frames"].as_u64().unwrap_or(0) > 0
            && counters["drops"]["not_ours"].as_u64().unwrap_or(0) > 0,
        "{uplink}"
    );
    assert!(
        !w.ping(&w.host, &["-c", "1", "-W", "1", &a_ip]),
        "the parent host reached its macvlan sandbox"
    );
    // Inspect shows the uplink's traffic was counted per endpoint.
    let counters = &w.endpoint("lan", &a)["counters"];
    assert!(
        counters["rx_frames"].as_u64().unwrap_or(0) > 0,
        "{counters}"
    );
    // The parent goes down and up again (a cable): the network comes back
    // with it, without a reconnect.
    ip(&["-n", &w.host, "link", "set", "lan0", "down"]);
    assert!(!w.ping(&a, &["-c", "1", "-W", "1", &format!("{p}.10")]));
    ip(&["-n", &w.host, "link", "set", "lan0", "up"]);
    assert!(
        w.ping_eventually(&a, &format!("{p}.10"), Duration::from_secs(10)),
        "the network did not come back with its parent"
    );
}

/// `macvlan_mode=private`: sandboxes reach the LAN but never each other.
#[test]
fn private_mode_isolates_the_sandboxes() {
    let Some(mut w) = World::with_daemon_args(&["--dns-upstream", "192.0.2.53"]) else {
        return;
    };
    let lan = lan(&mut w, 2);
    let p = &lan.prefix;
    let range = format!("{p}.64/26");
    let extra = [
        "--ip-range",
        &range,
        "-o",
        "parent=lan0",
        "-o",
        "macvlan_mode=private",
    ];
    create_lan_network(&w, "macvlan", p, true, &extra, "priv");
    let (a, b) = (w.sandbox("a"), w.sandbox("b"));
    w.weft_ok(&["network", "connect", "priv", &a]);
    w.weft_ok(&["network", "connect", "priv", &b]);
    let b_ip = address_of(&w, "priv", &b);
    w.ping_ok(&a, &["-c", "1", "-W", "3", &format!("{p}.10")]);
    w.ping_ok(&b, &["-c", "1", "-W", "3", &format!("{p}.1")]);
    assert!(
        !w.ping(&a, &["-c", "2", "-W", "1", &b_ip]),
        "private sandboxes reached each other"
    );
    // Even knowing b's MAC (its ARP never reaches a: broadcasts go to the
    // LAN alone), a's unicast frames to b are dropped by weft.
    let b_mac = w.endpoint("priv", &b)["mac"].as_str().unwrap().to_owned();
    w.exec_ok(
        &a,
        &[
            "ip", "neigh", "replace", &b_ip, "lladdr", &b_mac, "dev", "eth0",
        ],
    );
    assert!(!w.ping(&a, &["-c", "2", "-W", "1", &b_ip]));
    let drops = &w.endpoint("priv", &a)["counters"]["drops"];
    assert!(drops["isolated"].as_u64().unwrap_or(0) > 0, "{drops}");
}

/// Bad parents are refused with what to fix: one that does not exist,
/// none at all, an out-of-range VLAN, an unknown mode.
#[test]
fn bad_parents_are_refused_with_a_message() {
    let Some(w) = World::with_daemon_args(&["--dns-upstream", "192.0.2.53"]) else {
        return;
    };
    let create = |opts: &[&str]| {
        let mut args = vec![
            "network",
            "create",
            "-d",
            "macvlan",
            "--subnet",
            "10.237.9.0/24",
        ];
        args.extend_from_slice(opts);
        args.push("bad");
        w.weft_err(&args)
    };
    let missing = create(&["-o", "parent=nosuch0"]);
    assert!(missing.contains("nosuch0"), "{missing}");
    let none = create(&[]);
    assert!(none.contains("parent"), "{none}");
    let vlan = create(&["-o", "parent=lo.5000"]);
    assert!(vlan.contains("out of range"), "{vlan}");
    let mode = create(&["-o", "parent=lo", "-o", "macvlan_mode=passthru"]);
    assert!(mode.contains("bridge or private"), "{mode}");
    assert!(!w.network_names().contains(&"bad".to_owned()));
}

/// `parent=lan0.50`: weft tags its frames with VLAN 50 itself (no kernel
/// VLAN device: this machine's kernel has none). Two weft hosts on one LAN,
/// each with a VLAN-50 network: their sandboxes reach each other across
/// the LAN, the frames on the wire carry the tag (tcpdump on the LAN's
/// bridge), and the untagged router does not reach them.
#[test]
fn vlan_50_is_tagged_on_the_wire_and_spans_two_weft_hosts() {
    if !common::require(common::has_tool("tcpdump", "--version"), "needs tcpdump") {
        return;
    }
    let Some(mut w1) = World::with_daemon_args(&["--dns-upstream", "192.0.2.53"]) else {
        return;
    };
    let Some(w2) = World::with_daemon_args(&["--dns-upstream", "192.0.2.53"]) else {
        return;
    };
    let lan = lan(&mut w1, 3);
    let p = lan.prefix.clone();
    // The second host's parent, into the same bridge.
    let lan_ns = lan.bridge.clone();
    ip(&[
        "-n", &lan_ns, "link", "add", "w1", "type", "veth", "peer", "name", "lan0", "netns",
        &w2.host,
    ]);
    ip(&["-n", &lan_ns, "link", "set", "w1", "master", "br0", "up"]);
    ip(&["-n", &w2.host, "link", "set", "lan0", "up"]);
    for (w, range) in [(&w1, "64/27"), (&w2, "96/27")] {
        let range = format!("{p}.{range}");
        let extra = ["--ip-range", &range, "-o", "parent=lan0.50"];
        create_lan_network(w, "macvlan", &p, false, &extra, "v50");
    }
    let mut w2 = w2;
    let a = w1.sandbox("a");
    let b = w2.sandbox("b");
    w1.weft_ok(&["network", "connect", "v50", &a]);
    w2.weft_ok(&["network", "connect", "v50", &b]);
    let b_ip = address_of(&w2, "v50", &b);
    let a_ip = address_of(&w1, "v50", &a);

    let mut capture = w1.spawn_in(
        &lan_ns,
        "20",
        &[
            "tcpdump",
            "-i",
            "br0",
            "-e",
            "-nn",
            "-l",
            "-c",
            "2",
            "vlan 50 and icmp",
        ],
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        w1.ping_eventually(&a, &b_ip, Duration::from_secs(10)),
        "VLAN 50 sandboxes on two hosts do not reach each other"
    );
    w2.ping_ok(&b, &["-c", "1", "-W", "3", &a_ip]);
    // tcpdump may have started late on a loaded machine: ping on (bounded)
    // until it has its two frames.
    for _ in 0..20 {
        if capture.try_wait().ok().flatten().is_some() {
            break;
        }
        w1.ping_ok(&a, &["-c", "1", "-W", "3", &b_ip]);
        std::thread::sleep(Duration::from_millis(250));
    }
    let seen = finish(&mut capture, Duration::from_secs(15));
    assert!(
        seen.contains("vlan 50") && seen.contains(&a_ip),
        "no VLAN-50 tagged ICMP on the wire: {seen}"
    );
    // The untagged LAN does not reach VLAN 50.
    assert!(!w1.ping(&lan.router, &["-c", "1", "-W", "1", &a_ip]));
}

/// ipvlan (L2): every sandbox shows the parent's MAC on the LAN (what a
/// Wi-Fi parent needs). Sandboxes reach the router and a LAN host and are
/// reached back; the LAN host's neighbour table holds the *parent's* MAC
/// for a sandbox's address; sandboxes reach each other; the parent host's
/// own traffic on the same MAC still works; names resolve at weft's DNS
/// address; IPv6 too (neighbour discovery translated: the LAN host's IPv6
/// neighbour entry is the parent's MAC). Routed modes (l3) are refused
/// with a message.
#[test]
fn ipvlan_sandboxes_share_the_parents_mac() {
    let Some(mut w) = World::with_daemon_args(&["--dns-upstream", "192.0.2.53"]) else {
        return;
    };
    let lan = lan(&mut w, 4);
    let p = &lan.prefix;
    let l3 = w.weft_err(&[
        "network",
        "create",
        "-d",
        "ipvlan",
        "--subnet",
        &format!("{p}.0/24"),
        "-o",
        "parent=lan0",
        "-o",
        "ipvlan_mode=l3",
        "routed",
    ]);
    assert!(l3.contains("l2"), "{l3}");
    // IPv6 on the same LAN: the router and the LAN host get addresses of
    // fd00:237:4::/64 too.
    for (ns, host) in [(&lan.router, "1"), (&lan.lanhost, "10")] {
        let address = format!("fd00:237:4::{host}/64");
        ip(&["-n", ns, "addr", "add", &address, "dev", "eth0", "nodad"]);
    }
    let range = format!("{p}.128/26");
    let extra = [
        "--ip-range",
        &range,
        "--subnet",
        "fd00:237:4::/64",
        "--gateway",
        "fd00:237:4::1",
        "-o",
        "parent=lan0",
    ];
    create_lan_network(&w, "ipvlan", p, true, &extra, "wifi");
    let dns = w.inspect("wifi")["options"]["dns_address"]
        .as_str()
        .expect("a DNS address")
        .to_owned();
    let (a, b) = (w.sandbox("a"), w.sandbox("b"));
    w.weft_ok(&["network", "connect", "--name", "alpha", "wifi", &a]);
    w.weft_ok(&["network", "connect", "--name", "beta", "wifi", &b]);
    let (a_ip, b_ip) = (address_of(&w, "wifi", &a), address_of(&w, "wifi", &b));
    w.ping_ok(&a, &["-c", "2", "-W", "3", &format!("{p}.1")]);
    w.ping_ok(&b, &["-c", "2", "-W", "3", &format!("{p}.10")]);
    w.ping_ok(&lan.lanhost, &["-c", "2", "-W", "3", &a_ip]);
    let link = w.exec_ok(&w.host, &["cat", "/sys/class/net/lan0/address"]);
    let parent_mac = link.trim().to_lowercase();
    let neighbours = w
        .exec_ok(&lan.lanhost, &["ip", "neigh", "show", &a_ip])
        .to_lowercase();
    assert!(
        neighbours.contains(&parent_mac),
        "LANHOST's neighbour entry for {a_ip} is not the parent's MAC {parent_mac}: {neighbours}"
    );
    let a_mac = w.endpoint("wifi", &a)["mac"]
        .as_str()
        .unwrap()
        .to_lowercase();
    assert!(
        !neighbours.contains(&a_mac),
        "the sandbox's own MAC reached the LAN"
    );
    w.ping_ok(&a, &["-c", "1", "-W", "3", &b_ip]);
    let answer = w.exec_ok(&a, &["/bin/busybox", "nslookup", "beta.wifi", &dns]);
    assert!(answer.contains(&b_ip), "{answer}");
    // IPv6: neighbour discovery is translated too.
    let a_ip6 = World::address(&w.endpoint("wifi", &a), true);
    w.ping_ok(&a, &["-6", "-c", "2", "-W", "3", "fd00:237:4::10"]);
    w.ping_ok(&lan.lanhost, &["-6", "-c", "2", "-W", "3", &a_ip6]);
    w.ping_ok(&b, &["-6", "-c", "1", "-W", "3", "fd00:237:4::1"]);
    let neighbours6 = w
        .exec_ok(&lan.lanhost, &["ip", "-6", "neigh", "show", &a_ip6])
        .to_lowercase();
    assert!(
        neighbours6.contains(&parent_mac) && !neighbours6.contains(&a_mac),
        "LANHOST's IPv6 neighbour entry for {a_ip6} is not the parent's MAC {parent_mac}: {neighbours6}"
    );
    // The parent host shares the MAC and keeps its own traffic.
    w.ping_ok(&w.host, &["-c", "1", "-W", "3", &format!("{p}.10")]);
}
