//! End-to-end tests of what virtual machines use on a weft network: the
//! gateway's DHCP server, checked first with a real DHCP client (busybox
//! `udhcpc`) in a sandbox whose address was flushed.
//!
//! Every test runs in a [`World`]: the daemon inside the test's own HOST
//! namespace with `--dns-upstream` at an address inside that world that
//! nobody answers, so nothing leaves the test's namespaces. Every command
//! runs under `timeout`. Needs root, `ip`, `ping` and busybox (with
//! `udhcpc`); skipped otherwise, failed under `CI=true`.
//!
//! Subnets: 10.236.N.0/24, a distinct N per test.

#![allow(clippy::disallowed_methods)]

mod common;

use std::collections::BTreeMap;

use common::{has_tool, require, write_script, World};

/// An upstream resolver inside HOST's own world that nobody answers.
const DEAD_UPSTREAM: &str = "192.0.2.53";

/// A world for these tests, or None (skip) when something is missing.
fn vm_world() -> Option<World> {
    if !require(
        has_tool("busybox", "--help") && has_tool("/bin/busybox", "udhcpc"),
        "needs busybox with udhcpc (busybox-static)",
    ) {
        return None;
    }
    World::with_daemon_args(&["--dns-upstream", DEAD_UPSTREAM])
}

/// A udhcpc script that applies the lease to the interface and writes
/// every variable udhcpc gave it to `record` as `KEY=VALUE` lines.
fn udhcpc_script(world: &World, record: &std::path::Path) -> std::path::PathBuf {
    let path = world.dir.join("udhcpc.sh");
    let script = format!(
        r#"#!/bin/sh
case "$1" in
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/$mask" dev "$interface"
    [ -n "$mtu" ] && ip link set dev "$interface" mtu "$mtu"
    [ -n "$router" ] && ip route replace default via "$router" dev "$interface"
    {{
      echo "ip=$ip"; echo "mask=$mask"; echo "router=$router"; echo "dns=$dns"
      echo "domain=$domain"; echo "mtu=$mtu"; echo "hostname=$hostname"
      echo "lease=$lease"; echo "serverid=$serverid"; echo "staticroutes=$staticroutes"
    }} > {record}
    ;;
esac
exit 0
"#,
        record = record.display()
    );
    write_script(&path, &script);
    path
}

/// busybox's udhcpc on `ns`'s eth0: `tries` DISCOVERs a second apart,
/// `script` run with the lease; exits non-zero without one.
fn udhcpc(w: &World, ns: &str, tries: &str, script: &str) -> std::process::Output {
    w.exec(
        ns,
        &[
            "/bin/busybox",
            "udhcpc",
            "-i",
            "eth0",
            "-f",
            "-q",
            "-n",
            "-t",
            tries,
            "-T",
            "1",
            "-s",
            script,
        ],
    )
}

/// [`udhcpc`], which must get a lease.
fn udhcpc_ok(w: &World, ns: &str, tries: &str, script: &str) {
    let out = udhcpc(w, ns, tries, script);
    assert!(
        out.status.success(),
        "udhcpc in {ns}: {}",
        common::show(&out)
    );
}

fn parse_record(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect()
}

/// A sandbox whose address is flushed gets it back from the gateway's DHCP
/// server with busybox's udhcpc: address, prefix, router, DNS, domain,
/// MTU, host name, lease time and the classless default route; then it
/// reaches the gateway and resolves a peer by name. A MAC the network does
/// not know gets no lease.
#[test]
fn sandbox_takes_its_lease_with_udhcpc() {
    let Some(mut w) = vm_world() else {
        return;
    };
    w.weft_ok(&[
        "network",
        "create",
        "--subnet",
        "10.236.1.0/24",
        "--mtu",
        "1400",
        "--opt",
        "port_security=false",
        "dhcpnet",
    ]);
    let (a, b) = (w.sandbox("a"), w.sandbox("b"));
    w.weft_ok(&["network", "connect", "--name", "alpha", "dhcpnet", &a]);
    w.weft_ok(&["network", "connect", "--name", "beta", "dhcpnet", &b]);
    let endpoint = World::address(&w.endpoint("dhcpnet", &a), false);

    w.exec_ok(&a, &["ip", "addr", "flush", "dev", "eth0"]);
    assert!(!w.exec_ok(&a, &["ip", "-4", "addr"]).contains(&endpoint));
    let record = w.dir.join("lease.txt");
    let script = udhcpc_script(&w, &record);
    let script = script.to_str().expect("utf-8 path");
    udhcpc_ok(&w, &a, "5", script);
    let lease = parse_record(&std::fs::read_to_string(&record).expect("udhcpc ran the script"));
    assert_eq!(lease["ip"], endpoint, "{lease:?}");
    assert_eq!(lease["mask"], "24", "{lease:?}");
    assert_eq!(lease["router"], "10.236.1.1", "{lease:?}");
    assert_eq!(lease["dns"], "10.236.1.1", "{lease:?}");
    assert_eq!(lease["serverid"], "10.236.1.1", "{lease:?}");
    assert_eq!(lease["domain"], "dhcpnet", "{lease:?}");
    assert_eq!(lease["mtu"], "1400", "{lease:?}");
    assert_eq!(lease["hostname"], "alpha", "{lease:?}");
    assert_eq!(lease["lease"], "3600", "{lease:?}");
    assert_eq!(lease["staticroutes"], "0.0.0.0/0 10.236.1.1", "{lease:?}");
    assert!(w
        .exec_ok(&a, &["ip", "-4", "addr"])
        .contains(&format!("{endpoint}/24")));
    w.ping_ok(&a, &["-c", "1", "-W", "2", "10.236.1.1"]);
    let beta = World::address(&w.endpoint("dhcpnet", &b), false);
    let answer = w.exec_ok(
        &a,
        &["/bin/busybox", "nslookup", "beta.dhcpnet", "10.236.1.1"],
    );
    assert!(answer.contains(&beta), "{answer}");

    // Another MAC (port security is off, so its frames pass): no offer.
    w.exec_ok(
        &b,
        &[
            "ip",
            "link",
            "set",
            "dev",
            "eth0",
            "address",
            "02:00:5e:10:00:01",
        ],
    );
    let stranger = w.dir.join("stranger.txt");
    let script = udhcpc_script(&w, &stranger);
    let out = udhcpc(&w, &b, "2", script.to_str().expect("utf-8 path"));
    assert!(!out.status.success(), "{}", common::show(&out));
    assert!(!stranger.exists());
}

/// `--opt dhcp=false`: the gateway leaves DHCP alone and the client's
/// broadcast is flooded like any other, so a DHCP server inside another
/// sandbox sees it (here a socat listening on port 67); the gateway offers
/// nothing.
#[test]
fn dhcp_false_floods_the_broadcast_to_the_sandboxes() {
    if !require(has_tool("socat", "-V"), "needs socat") {
        return;
    }
    let Some(mut w) = vm_world() else {
        return;
    };
    w.weft_ok(&[
        "network",
        "create",
        "--subnet",
        "10.236.2.0/24",
        "--opt",
        "dhcp=false",
        "nodhcp",
    ]);
    let bad = w.weft(&[
        "network",
        "create",
        "--subnet",
        "10.236.3.0/24",
        "--opt",
        "dhcp=maybe",
        "baddhcp",
    ]);
    assert!(
        !bad.status.success() && common::stderr(&bad).contains("dhcp"),
        "{}",
        common::show(&bad)
    );
    let (a, b) = (w.sandbox("a"), w.sandbox("b"));
    w.weft_ok(&["network", "connect", "--name", "alpha", "nodhcp", &a]);
    w.weft_ok(&["network", "connect", "--name", "server", "nodhcp", &b]);
    let heard = w.dir.join("heard.bin");
    let heard_arg = format!("OPEN:{},creat", heard.display());
    let mut listener = w.spawn_in(
        &b,
        "20",
        &["socat", "-u", "UDP4-RECV:67,reuseaddr", &heard_arg],
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    w.exec_ok(&a, &["ip", "addr", "flush", "dev", "eth0"]);
    let record = w.dir.join("nolease.txt");
    let script = udhcpc_script(&w, &record);
    let out = udhcpc(&w, &a, "3", script.to_str().expect("utf-8 path"));
    common::kill_group(&mut listener);
    assert!(
        !out.status.success(),
        "the gateway offered: {}",
        common::show(&out)
    );
    assert!(!record.exists());
    let heard = std::fs::metadata(&heard).map_or(0, |m| m.len());
    assert!(
        heard >= 240,
        "the other sandbox heard {heard} bytes of DHCP"
    );
}
