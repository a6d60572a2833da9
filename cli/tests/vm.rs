//! End-to-end tests of virtual machines on a weft network: the gateway's
//! DHCP server with a real DHCP client (busybox `udhcpc`) in a sandbox
//! whose address was flushed, then real QEMU guests (TCG, a Debian
//! kernel, a busybox initramfs) on stream endpoints made by `weft vm`.
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
use std::path::Path;
use std::time::Duration;

use common::guest::{guest_init, Guest, GuestKit};
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

/// A QEMU guest (TCG, a Debian kernel, busybox) on a stream endpoint made
/// by `weft vm -p 0:8080`: the endpoint outlives a daemon restart (its
/// socket is bound again), the guest takes its lease by DHCP (address,
/// router, DNS, its name, the network's MTU), resolves a sandbox by name
/// and pings it, the sandbox pings the guest and resolves its name, and a
/// client outside reaches the guest's server through the published port.
/// `network inspect` shows the endpoint as a `stream`, and its counters
/// move.
#[test]
fn a_qemu_guest_on_a_stream_endpoint_takes_a_lease_and_reaches_a_sandbox() {
    let Some(mut w) = vm_world() else {
        return;
    };
    let Some(kit) = GuestKit::build(&w.dir.clone(), "guest", &guest_init("web.vmnet")) else {
        return;
    };
    w.weft_ok(&[
        "network",
        "create",
        "--subnet",
        "10.236.4.0/24",
        "--mtu",
        "1400",
        "vmnet",
    ]);
    let web = w.sandbox("web");
    w.weft_ok(&["network", "connect", "--name", "web", "vmnet", &web]);
    let socket = w.dir.join("vm1.sock");
    let socket = socket.to_str().expect("utf-8 path").to_owned();
    let printed = w.weft_ok(&["vm", "-p", "0:8080", "vmnet", &socket]);
    assert!(printed.contains("name vm1"), "{printed}");
    let host_port = printed
        .lines()
        .find_map(|l| l.strip_prefix("8080/tcp -> 0.0.0.0:"))
        .unwrap_or_else(|| panic!("no published port in: {printed}"))
        .trim()
        .to_owned();
    assert!(
        printed.contains(&format!("addr.path={socket}"))
            && printed.contains("-device virtio-net-pci"),
        "{printed}"
    );
    // The same socket twice, and a driver without ports: refused.
    let again = w.weft_err(&["vm", "vmnet", &socket]);
    assert!(again.contains("already connected"), "{again}");
    w.weft_ok(&["network", "create", "--driver", "null", "nothing"]);
    let null_net = w.weft_err(&["vm", "nothing", &format!("{}/other.sock", w.dir.display())]);
    assert!(null_net.contains("bridge or overlay"), "{null_net}");

    // A restart: the endpoint and its address stay, the socket is bound
    // again.
    let before = w.inspect("vmnet");
    w.kill_daemon();
    w.start_daemon();
    let after = w.inspect("vmnet");
    let vm_endpoint = |details: &serde_json::Value| {
        details["endpoints"]
            .as_array()
            .and_then(|list| list.iter().find(|e| e["name"] == "vm1"))
            .cloned()
            .unwrap_or_else(|| panic!("no vm1 endpoint: {details}"))
    };
    let endpoint = vm_endpoint(&after);
    assert_eq!(endpoint["kind"], "stream", "{endpoint}");
    assert_eq!(endpoint["addresses"], vm_endpoint(&before)["addresses"]);
    let address = World::address(&endpoint, false);
    let mac = endpoint["mac"].as_str().expect("a MAC").to_owned();

    let mut guest = Guest::boot(&kit, &socket, &mac);
    let lease = guest.wait_for("WEFT-LEASE");
    for part in [
        format!("ip={address} "),
        "mask=24 ".into(),
        "router=10.236.4.1 ".into(),
        "dns=10.236.4.1 ".into(),
        "hostname=vm1 ".into(),
        "domain=vmnet ".into(),
        "mtu=1400".into(),
    ] {
        assert!(lease.contains(&part), "{part:?} not in the lease: {lease}");
    }
    let web_address = World::address(&w.endpoint("vmnet", &web), false);
    let reached = guest.wait_for("WEFT-REACHED");
    assert_eq!(
        reached,
        format!("web.vmnet {web_address}"),
        "{}",
        guest.console()
    );
    guest.wait_for("WEFT-READY");
    w.ping_ok(&web, &["-c", "2", "-W", "3", &address]);
    let answer = w.exec_ok(
        &web,
        &["/bin/busybox", "nslookup", "vm1.vmnet", "10.236.4.1"],
    );
    assert!(answer.contains(&address), "{answer}");
    // The host name the guest asked for in its DHCP request names it too.
    let asked = w.exec_ok(
        &web,
        &["/bin/busybox", "nslookup", "guest.vmnet", "10.236.4.1"],
    );
    assert!(asked.contains(&address), "{asked}");
    // -p on weft vm: a client outside reaches the guest's server through
    // the published port (kept across the daemon's restart above).
    let client = w.client_namespace();
    let target = format!("TCP:{}:{host_port},connect-timeout=5", common::HOST_ADDR);
    let mut served = String::new();
    for _ in 0..20 {
        let out = w.exec(&client, &["socat", "-u", &target, "-"]);
        served = common::stdout(&out);
        if served.contains("weft-vm-hello") {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        served.contains("weft-vm-hello"),
        "the guest's server via -p: {served:?}"
    );
    let counters = vm_endpoint(&w.inspect("vmnet"))["counters"].clone();
    assert!(
        counters["rx_frames"].as_u64().unwrap_or(0) >= 4
            && counters["tx_frames"].as_u64().unwrap_or(0) >= 4,
        "{counters}"
    );

    w.weft_ok(&["network", "disconnect", "vmnet", &socket]);
    assert!(
        !Path::new(&socket).exists(),
        "the socket goes with the endpoint"
    );
}

/// Two guests on one network reach each other by name through weft; a
/// guest whose QEMU is restarted connects to the same endpoint again and
/// is reached again.
#[test]
fn two_qemu_guests_reach_each_other_and_a_restarted_one_reconnects() {
    let Some(w) = vm_world() else {
        return;
    };
    let dir = w.dir.clone();
    let (Some(kit1), Some(kit2)) = (
        GuestKit::build(&dir, "one", &guest_init("two.pair")),
        GuestKit::build(&dir, "two", &guest_init("one.pair")),
    ) else {
        return;
    };
    w.weft_ok(&["network", "create", "--subnet", "10.236.5.0/24", "pair"]);
    let mut guests = Vec::new();
    for (name, kit) in [("one", &kit1), ("two", &kit2)] {
        let socket = format!("{}/{name}.sock", dir.display());
        w.weft_ok(&["vm", "--name", name, "pair", &socket]);
        let endpoint = w
            .endpoints("pair")
            .into_iter()
            .find(|e| e["name"] == name)
            .expect("the VM's endpoint");
        let mac = endpoint["mac"].as_str().expect("a MAC").to_owned();
        guests.push((Guest::boot(kit, &socket, &mac), socket, mac));
    }
    let one_address = World::address(
        &w.endpoints("pair")
            .into_iter()
            .find(|e| e["name"] == "one")
            .expect("one"),
        false,
    );
    let two_address = World::address(
        &w.endpoints("pair")
            .into_iter()
            .find(|e| e["name"] == "two")
            .expect("two"),
        false,
    );
    assert_eq!(
        guests[0].0.wait_for("WEFT-REACHED"),
        format!("two.pair {two_address}")
    );
    assert_eq!(
        guests[1].0.wait_for("WEFT-REACHED"),
        format!("one.pair {one_address}")
    );

    // QEMU of "two" stops and starts again on the same endpoint.
    let (old, socket, mac) = guests.pop().expect("two guests");
    drop(old);
    let mut again = Guest::boot(&kit2, &socket, &mac);
    assert_eq!(
        again.wait_for("WEFT-REACHED"),
        format!("one.pair {one_address}")
    );
}

/// `weft vm --dgram`: the guest's NIC on a datagram socket (QEMU
/// `-netdev dgram`, a frame per datagram); it takes its lease and reaches a
/// sandbox by name, which pings it back; inspect shows the kind.
#[test]
fn a_qemu_guest_on_a_datagram_endpoint_reaches_a_sandbox() {
    let Some(mut w) = vm_world() else {
        return;
    };
    let Some(kit) = GuestKit::build(&w.dir.clone(), "dgram", &guest_init("web.dgnet")) else {
        return;
    };
    w.weft_ok(&["network", "create", "--subnet", "10.236.6.0/24", "dgnet"]);
    let web = w.sandbox("web");
    w.weft_ok(&["network", "connect", "--name", "web", "dgnet", &web]);
    let socket = format!("{}/dg.sock", w.dir.display());
    let printed = w.weft_ok(&["vm", "--dgram", "dgnet", &socket]);
    assert!(printed.contains("-netdev dgram,"), "{printed}");
    let endpoint = w
        .endpoints("dgnet")
        .into_iter()
        .find(|e| e["name"] == "dg")
        .expect("the VM's endpoint");
    assert_eq!(endpoint["kind"], "dgram", "{endpoint}");
    let mac = endpoint["mac"].as_str().expect("a MAC").to_owned();
    let address = World::address(&endpoint, false);
    let netdev = format!(
        "dgram,id=n0,local.type=unix,local.path={socket}.guest,remote.type=unix,remote.path={socket}"
    );
    let mut guest = Guest::boot_on(&kit, &netdev, &mac);
    let lease = guest.wait_for("WEFT-LEASE");
    assert!(lease.contains(&format!("ip={address} ")), "{lease}");
    let web_address = World::address(&w.endpoint("dgnet", &web), false);
    assert_eq!(
        guest.wait_for("WEFT-REACHED"),
        format!("web.dgnet {web_address}")
    );
    guest.wait_for("WEFT-READY");
    w.ping_ok(&web, &["-c", "2", "-W", "3", &address]);
    w.weft_ok(&["network", "disconnect", "dgnet", &socket]);
    assert!(
        !Path::new(&socket).exists(),
        "the socket goes with the endpoint"
    );
}
