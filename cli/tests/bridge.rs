//! End-to-end tests of the `bridge` driver (and a few neighbours: `null`,
//! `weft run`, the API, restarts), each with its own daemon in its own
//! namespace (see `common`). Needs root; skipped otherwise (fails under
//! `CI=true`).
//!
//! Subnets: 10.231.N.0/24, a distinct N per test.

#![allow(clippy::disallowed_methods)]

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::Child;
use std::sync::mpsc;
use std::time::Duration;

use common::{has_tool, require, show, stderr, World};
use serde_json::Value;

/// The MAC weft derives from an IPv4 address: 02:42 + its four bytes.
fn mac_of(ip: &str) -> String {
    let bytes: Vec<u8> = ip
        .split('.')
        .map(|b| b.parse().expect("IPv4 byte"))
        .collect();
    assert_eq!(bytes.len(), 4, "{ip} is not IPv4");
    format!(
        "02:42:{:02x}:{:02x}:{:02x}:{:02x}",
        bytes[0], bytes[1], bytes[2], bytes[3]
    )
}

/// `tx_frames` of an endpoint (frames the switch wrote to its TAP).
fn tx_frames(endpoint: &Value) -> u64 {
    endpoint["counters"]["tx_frames"]
        .as_u64()
        .unwrap_or_else(|| panic!("endpoint has no counters.tx_frames: {endpoint:#}"))
}

/// A tcpdump running in a sandbox.
struct Capture {
    child: Child,
    stderr: mpsc::Receiver<String>,
    early: Vec<String>,
}

/// Start `tcpdump -i eth0 -n -l -c 1 FILTER` in `ns` for at most `secs`
/// seconds; returns once it is listening (bounded: 5 s).
fn start_capture(w: &World, ns: &str, secs: &str, filter: &str) -> Capture {
    let mut child = w.spawn_in(
        ns,
        secs,
        &["tcpdump", "-i", "eth0", "-n", "-l", "-c", "1", filter],
    );
    let err = child.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut early = Vec::new();
    for _ in 0..50 {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                let listening = line.contains("listening on");
                early.push(line);
                if listening {
                    // tcpdump prints this just before its capture loop.
                    std::thread::sleep(Duration::from_millis(200));
                    return Capture {
                        child,
                        stderr: rx,
                        early,
                    };
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("tcpdump in {ns} did not start listening: {early:?}");
}

impl Capture {
    /// Wait for tcpdump to end (by `-c 1` or its timeout); its stdout (the
    /// packets, one per line) and stderr.
    fn finish(mut self) -> (String, String) {
        let mut out = String::new();
        if let Some(mut s) = self.child.stdout.take() {
            let _ = s.read_to_string(&mut out);
        }
        let _ = self.child.wait();
        let mut err = self.early;
        while let Ok(line) = self.stderr.recv_timeout(Duration::from_millis(500)) {
            err.push(line);
        }
        (out, err.join("\n"))
    }
}

/// Whether `ip -o link show lo` in `ns` says UP.
fn lo_is_up(w: &World, ns: &str) -> bool {
    let text = w.exec_ok(ns, &["ip", "-o", "link", "show", "lo"]);
    text.split('<')
        .nth(1)
        .and_then(|flags| flags.split('>').next())
        .is_some_and(|flags| flags.split(',').any(|f| f == "UP"))
}

#[test]
fn two_sandboxes_ping_each_other_and_the_gateway() {
    let Some(mut w) = World::new() else { return };
    let a = w.sandbox("a");
    let b = w.sandbox("b");
    let id = w.weft_ok(&["network", "create", "--subnet", "10.231.1.0/24", "n1"]);
    let id = id.trim();
    assert!(
        id.len() == 64 && id.chars().all(|c| c.is_ascii_hexdigit()),
        "create prints a 64-hex-digit id, got {id:?}"
    );
    w.weft_ok(&["network", "connect", "n1", &a]);
    w.weft_ok(&["network", "connect", "--ip", "10.231.1.50", "n1", &b]);

    // The interface as the sandbox sees it.
    let addr = w.exec_ok(&a, &["ip", "-o", "-4", "addr", "show", "dev", "eth0"]);
    assert!(addr.contains("10.231.1.2/24"), "A's eth0: {addr}");
    let link = w.exec_ok(&a, &["ip", "-o", "link", "show", "eth0"]);
    assert!(link.contains("02:42:0a:e7:01:02"), "A's MAC: {link}");
    assert!(
        link.contains(",UP") || link.contains("<UP"),
        "A's eth0 is up: {link}"
    );
    let route = w.exec_ok(&a, &["ip", "-4", "route", "show", "default"]);
    assert!(
        route.contains("default via 10.231.1.1 dev eth0"),
        "A's default route: {route}"
    );
    assert!(lo_is_up(&w, &a), "weft brings lo up in the sandbox");

    w.ping_ok(&a, &["-c", "3", "-W", "2", "10.231.1.50"]);
    w.ping_ok(&b, &["-c", "3", "-W", "2", "10.231.1.2"]);
    w.ping_ok(&a, &["-c", "3", "-W", "2", "10.231.1.1"]);
    w.ping_ok(&b, &["-c", "3", "-W", "2", "10.231.1.1"]);
    // The gateway's ARP answer landed in the neighbour table.
    let neigh = w.exec_ok(&a, &["ip", "neigh", "show", "10.231.1.1"]);
    assert!(
        neigh.contains("lladdr"),
        "A learned the gateway's MAC: {neigh}"
    );

    let net = w.inspect("n1");
    assert_eq!(net["name"], "n1");
    assert_eq!(net["id"], id);
    assert_eq!(net["driver"], "bridge");
    let subnets = net["subnets"].as_array().expect("subnets");
    assert_eq!(subnets.len(), 1, "{net:#}");
    assert_eq!(subnets[0]["subnet"], "10.231.1.0/24");
    assert_eq!(subnets[0]["gateway"], "10.231.1.1");
    let endpoints = net["endpoints"].as_array().expect("endpoints");
    assert_eq!(endpoints.len(), 2, "{net:#}");
    for (ns, ip) in [(&a, "10.231.1.2"), (&b, "10.231.1.50")] {
        let e = w.endpoint("n1", ns);
        assert_eq!(World::addresses(&e), vec![format!("{ip}/24")], "{e:#}");
        assert_eq!(e["mac"].as_str(), Some(mac_of(ip).as_str()), "{e:#}");
        assert_eq!(e["ifname"], "eth0", "{e:#}");
        assert_eq!(e["name"].as_str(), Some(ns.as_str()), "{e:#}");
        assert_eq!(e["network"], "n1", "{e:#}");
        // The pings above went through this port, both ways.
        let c = &e["counters"];
        assert!(
            c["rx_frames"].as_u64().unwrap_or(0) >= 6 && c["tx_frames"].as_u64().unwrap_or(0) >= 6,
            "counters count the pings: {e:#}"
        );
    }
}

#[test]
fn networks_are_isolated_at_layer_2() {
    let Some(mut w) = World::new() else { return };
    let x = w.sandbox("x");
    let y = w.sandbox("y");
    let z = w.sandbox("z");
    // Port security off on iso1: the test gives X and Y addresses of
    // their own choosing (which port security would rightly drop).
    w.weft_ok(&[
        "network",
        "create",
        "--subnet",
        "10.231.2.0/24",
        "-o",
        "port_security=false",
        "iso1",
    ]);
    w.weft_ok(&["network", "create", "--subnet", "10.231.3.0/24", "iso2"]);
    w.weft_ok(&["network", "connect", "--ip", "10.231.2.10", "iso1", &x]);
    w.weft_ok(&["network", "connect", "--ip", "10.231.2.11", "iso1", &y]);
    w.weft_ok(&["network", "connect", "--ip", "10.231.3.50", "iso2", &z]);

    // X and Y (network 1) both get an address from network 2's subnet, so
    // that X's ARP and ICMP for 10.231.3.x go out on eth0 at layer 2.
    w.exec_ok(&x, &["ip", "addr", "add", "10.231.3.99/24", "dev", "eth0"]);
    w.exec_ok(&y, &["ip", "addr", "add", "10.231.3.98/24", "dev", "eth0"]);
    // Control: foreign-subnet traffic does cross the switch inside network 1.
    w.ping_ok(&x, &["-c", "2", "-W", "2", "10.231.3.98"]);
    w.ping_ok(&x, &["-c", "1", "-W", "2", "10.231.2.11"]);

    let before = tx_frames(&w.endpoint("iso2", &z));
    assert!(
        !w.ping(&x, &["-c", "3", "-i", "0.3", "-W", "1", "10.231.3.50"]),
        "X (iso1) reached Z (iso2) at layer 2: the switch leaks between networks"
    );
    let after = tx_frames(&w.endpoint("iso2", &z));
    assert_eq!(
        after, before,
        "X's ARP broadcasts for 10.231.3.50 reached Z's port on another network"
    );

    // And the other way round.
    w.exec_ok(&z, &["ip", "addr", "add", "10.231.2.99/24", "dev", "eth0"]);
    assert!(
        !w.ping(&z, &["-c", "2", "-i", "0.3", "-W", "1", "10.231.2.10"]),
        "Z (iso2) reached X (iso1) at layer 2"
    );
    // Network 1 still works.
    w.ping_ok(&y, &["-c", "1", "-W", "2", "10.231.2.10"]);
}

#[test]
fn known_unicast_is_not_flooded() {
    let Some(mut w) = World::new() else { return };
    if !require(has_tool("tcpdump", "--version"), "needs tcpdump") {
        return;
    }
    let a = w.sandbox("a");
    let b = w.sandbox("b");
    let c = w.sandbox("c");
    w.weft_ok(&["network", "create", "--subnet", "10.231.4.0/24", "uni"]);
    for ns in [&a, &b, &c] {
        // Quiet sandboxes: without IPv6 the kernel sends no MLD reports and
        // router solicitations (multicast, rightly flooded) when eth0 comes
        // up, so C's counters only move for what the switch sends it.
        w.exec_ok(
            ns,
            &[
                "sysctl",
                "-qw",
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            ],
        );
        w.weft_ok(&["network", "connect", "uni", ns]);
    }
    let b_ip = World::address(&w.endpoint("uni", &b), false);
    let c_ip = World::address(&w.endpoint("uni", &c), false);
    // Warm up: the switch learns A's and B's MACs, they learn each other's.
    w.ping_ok(&a, &["-c", "2", "-W", "2", &b_ip]);

    let before = tx_frames(&w.endpoint("uni", &c));
    let capture = start_capture(&w, &c, "5", "icmp");
    w.ping_ok(&a, &["-c", "5", "-i", "0.2", "-W", "2", &b_ip]);
    let (packets, log) = capture.finish();
    let after = tx_frames(&w.endpoint("uni", &c));
    assert!(
        packets.trim().is_empty() && log.contains("0 packets captured"),
        "C saw unicast ICMP between A and B (flooded):\n{packets}\n{log}"
    );
    assert!(
        after.saturating_sub(before) <= 3,
        "C's port got {} frames during A->B unicast (flooding?)",
        after.saturating_sub(before)
    );

    // Control: the same capture does see ICMP addressed to C.
    let capture = start_capture(&w, &c, "5", "icmp");
    w.ping_ok(&a, &["-c", "2", "-i", "0.2", "-W", "2", &c_ip]);
    let (packets, log) = capture.finish();
    assert!(
        packets.contains("ICMP echo request") && log.contains("1 packet captured"),
        "C's capture did not see a ping to C:\n{packets}\n{log}"
    );
}

#[test]
fn errors_leave_nothing_half_made() {
    let Some(mut w) = World::new() else { return };
    let a = w.sandbox("a");
    let s = w.sandbox("s");
    // Invalid subnets: refused by the CLI or the daemon.
    for bad in ["10.231.5.0/33", "banana"] {
        w.weft_err(&["network", "create", "--subnet", bad, "bad"]);
    }
    w.weft_ok(&["network", "create", "--subnet", "10.231.5.0/24", "e1"]);
    let err = w.weft_err(&["network", "create", "--subnet", "10.231.5.128/25", "e2"]);
    assert!(err.contains("overlaps"), "overlap error: {err}");
    assert!(
        err.starts_with("weft: "),
        "errors start with `weft: `: {err}"
    );
    let err = w.weft_err(&["network", "create", "--subnet", "10.231.15.0/24", "e1"]);
    assert!(
        err.contains("already exists"),
        "duplicate name error: {err}"
    );

    w.weft_ok(&["network", "connect", "e1", &a]);
    let a_ip = World::address(&w.endpoint("e1", &a), false);
    let err = w.weft_err(&["network", "rm", "e1"]);
    assert!(err.contains("disconnect"), "rm of a network in use: {err}");
    let missing = w.missing_namespace();
    let err = w.weft_err(&["network", "connect", "e1", &missing]);
    assert!(err.contains("no network namespace"), "missing netns: {err}");
    let err = w.weft_err(&["network", "connect", "--ip", &a_ip, "e1", &s]);
    assert!(!err.trim().is_empty(), "--ip in use says why");
    assert!(
        !w.links(&s).iter().any(|l| l == "eth0"),
        "a refused connect left an interface in the sandbox: {:?}",
        w.links(&s)
    );
    let err = w.weft_err(&["network", "connect", "--ip", "10.231.99.5", "e1", &s]);
    assert!(!err.trim().is_empty(), "--ip outside the subnet says why");
    let err = w.weft_err(&["network", "connect", "nosuchnet", &s]);
    assert!(err.contains("not found"), "unknown network: {err}");
    w.weft_err(&["network", "inspect", "nosuchnet"]);

    assert_eq!(w.network_names(), vec!["e1".to_owned()]);
    let endpoints = w.endpoints("e1");
    assert_eq!(endpoints.len(), 1, "only A's endpoint: {endpoints:#?}");
    assert!(w.links(&s).iter().all(|l| l != "eth0"));
    // The refused connects did not take an address: S gets the next one.
    w.weft_ok(&["network", "connect", "e1", &s]);
    let s_ip = World::address(&w.endpoint("e1", &s), false);
    assert_ne!(s_ip, a_ip);
    w.ping_ok(&s, &["-c", "1", "-W", "2", &a_ip]);
}

#[test]
fn sandboxes_survive_a_daemon_restart() {
    let Some(mut w) = World::new() else { return };
    let a = w.sandbox("a");
    let b = w.sandbox("b");
    let c = w.sandbox("c");
    w.weft_ok(&["network", "create", "--subnet", "10.231.6.0/24", "rs"]);
    w.weft_ok(&["network", "connect", "rs", &a]);
    w.weft_ok(&["network", "connect", "rs", &b]);
    let a_ip = World::address(&w.endpoint("rs", &a), false);
    let b_ip = World::address(&w.endpoint("rs", &b), false);
    w.ping_ok(&a, &["-c", "1", "-W", "2", &b_ip]);

    w.kill_daemon();
    for ns in [&a, &b] {
        assert!(
            w.links(ns).iter().any(|l| l == "eth0"),
            "eth0 of {ns} went away with the daemon"
        );
    }
    // No switch, no traffic: the data path really is the daemon.
    assert!(
        !w.ping(&a, &["-c", "1", "-W", "1", &b_ip]),
        "A reached B with the daemon dead"
    );

    w.start_daemon();
    assert!(
        w.ping_eventually(&a, &b_ip, Duration::from_secs(10)),
        "A cannot ping B within 10 s of the restart:\n{}",
        w.daemon_log()
    );
    assert_eq!(World::address(&w.endpoint("rs", &a), false), a_ip);
    assert_eq!(World::address(&w.endpoint("rs", &b), false), b_ip);

    w.weft_ok(&["network", "connect", "rs", &c]);
    let c_ip = World::address(&w.endpoint("rs", &c), false);
    assert!(
        c_ip != a_ip && c_ip != b_ip,
        "after a restart C got an address already in use: {c_ip} (A {a_ip}, B {b_ip})"
    );
    w.ping_ok(&a, &["-c", "2", "-W", "2", &c_ip]);
    w.ping_ok(&c, &["-c", "1", "-W", "2", &b_ip]);
}

#[test]
fn disconnect_removes_the_interface() {
    let Some(mut w) = World::new() else { return };
    let a = w.sandbox("a");
    let b = w.sandbox("b");
    w.weft_ok(&["network", "create", "--subnet", "10.231.7.0/24", "dc"]);
    w.weft_ok(&["network", "connect", "dc", &a]);
    w.weft_ok(&["network", "connect", "dc", &b]);
    let b_ip = World::address(&w.endpoint("dc", &b), false);
    w.ping_ok(&a, &["-c", "1", "-W", "2", &b_ip]);

    w.weft_ok(&["network", "disconnect", "dc", &b]);
    let links = w.links(&b);
    assert!(
        !links.iter().any(|l| l == "eth0"),
        "eth0 still in B: {links:?}"
    );
    let endpoints = w.endpoints("dc");
    assert_eq!(endpoints.len(), 1, "{endpoints:#?}");
    assert_eq!(
        endpoints[0]["sandbox"].as_str(),
        Some(World::netns_path(&a).as_str())
    );
    // Disconnecting again is an error, and changes nothing.
    w.weft_err(&["network", "disconnect", "dc", &b]);
    assert_eq!(w.endpoints("dc").len(), 1);

    w.weft_err(&["network", "rm", "dc"]);
    w.weft_ok(&["network", "disconnect", "dc", &a]);
    assert!(!w.links(&a).iter().any(|l| l == "eth0"), "eth0 still in A");
    let out = w.weft(&["network", "rm", "dc"]);
    assert_eq!(out.status.code(), Some(0), "rm: {}", show(&out));
    assert!(
        w.network_names().is_empty(),
        "dc still listed: {:?}",
        w.network_names()
    );
    // The subnet is free again.
    w.weft_ok(&["network", "create", "--subnet", "10.231.7.0/24", "dc2"]);
}

#[test]
fn weft_run_passes_on_the_exit_code_and_cleans_up() {
    let Some(mut w) = World::new() else { return };
    let a = w.sandbox("a");
    let b = w.sandbox("b");
    w.weft_ok(&["network", "create", "--subnet", "10.231.8.0/24", "rn"]);
    w.weft_ok(&["network", "connect", "rn", &a]);
    w.weft_ok(&["network", "connect", "--ip", "10.231.8.20", "rn", &b]);

    let out = w.weft(&[
        "run",
        "--network",
        "rn",
        "--",
        "ping",
        "-c1",
        "-W2",
        "10.231.8.20",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "weft run ping: {}\n{}",
        show(&out),
        w.daemon_log()
    );
    let out = w.weft(&["run", "--network", "rn", "--", "sh", "-c", "exit 7"]);
    assert_eq!(
        out.status.code(),
        Some(7),
        "weft run exit 7: {}",
        show(&out)
    );
    // The command runs in a sandbox of its own: eth0 with an address of rn.
    let out = w.weft(&[
        "run",
        "--network",
        "rn",
        "--",
        "ip",
        "-o",
        "-4",
        "addr",
        "show",
        "dev",
        "eth0",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let text = common::stdout(&out);
    assert!(
        text.contains("10.231.8.")
            && !text.contains("10.231.8.20/")
            && !text.contains("10.231.8.2/"),
        "the run sandbox has its own address: {text}"
    );
    // An unknown network: weft's own failure (125), not the command's.
    let out = w.weft(&["run", "--network", "nosuchnet", "--", "true"]);
    assert_eq!(out.status.code(), Some(125), "{}", show(&out));

    let mut sandboxes: Vec<String> = w
        .endpoints("rn")
        .iter()
        .filter_map(|e| e["sandbox"].as_str().map(str::to_owned))
        .collect();
    sandboxes.sort();
    let mut expected = vec![World::netns_path(&a), World::netns_path(&b)];
    expected.sort();
    assert_eq!(sandboxes, expected, "run endpoints left behind");
    w.ping_ok(&a, &["-c", "1", "-W", "2", "10.231.8.20"]);
}

#[test]
fn api_rejects_bad_requests_with_a_message() {
    let Some(w) = World::new() else { return };
    let bad_subnet = w.http(
        "POST",
        "/v1/networks",
        Some(r#"{"name":"x","subnets":[{"subnet":"nonsense"}]}"#),
    );
    assert!(
        (400..500).contains(&bad_subnet.status),
        "bad subnet: {bad_subnet:?}"
    );
    let message = bad_subnet.json()["message"].as_str().map(str::to_owned);
    assert!(
        message.is_some_and(|m| !m.is_empty()),
        "bad subnet: {bad_subnet:?}"
    );

    let unknown = w.http("POST", "/v1/networks", Some(r#"{"name":"y","bogus":1}"#));
    assert!(
        (400..500).contains(&unknown.status),
        "unknown field: {unknown:?}"
    );
    assert!(unknown.json()["message"].is_string(), "{unknown:?}");

    let not_json = w.http("POST", "/v1/networks", Some("{"));
    assert!(
        (400..500).contains(&not_json.status),
        "not JSON: {not_json:?}"
    );

    let missing = w.http("GET", "/v1/networks/doesnotexist", None);
    assert_eq!(missing.status, 404, "{missing:?}");
    assert!(
        missing.json()["message"]
            .as_str()
            .is_some_and(|m| m.contains("doesnotexist")),
        "{missing:?}"
    );

    // A good request works on the same API, and the bad ones made nothing.
    let good = w.http(
        "POST",
        "/v1/networks",
        Some(r#"{"name":"z","driver":"bridge","subnets":[{"subnet":"10.231.10.0/24","gateway":"10.231.10.254","ip_range":"10.231.10.128/25"}],"internal":true,"mtu":1400,"options":{"host_loopback":"false"}}"#),
    );
    assert_eq!(good.status, 201, "{good:?}");
    let net = good.json();
    assert_eq!(net["subnets"][0]["gateway"], "10.231.10.254", "{net:#}");
    assert_eq!(net["subnets"][0]["ip_range"], "10.231.10.128/25", "{net:#}");
    assert_eq!(net["mtu"], 1400, "{net:#}");
    assert_eq!(net["internal"], true, "{net:#}");
    let list = w.http("GET", "/v1/networks", None);
    assert_eq!(list.status, 200, "{list:?}");
    let names: Vec<String> = list
        .json()
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|n| n["name"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(names, vec!["z".to_owned()]);
    let gone = w.http("DELETE", "/v1/networks/z", None);
    assert_eq!(gone.status, 204, "{gone:?}");
    assert_eq!(w.http("GET", "/v1/networks/z", None).status, 404);
}

#[test]
fn default_network_bridge_reaches_its_gateway() {
    let Some(w) = World::with_default_network() else {
        return;
    };
    let text = w.weft_ok(&["network", "ls", "--format", "json"]);
    let all: Value = serde_json::from_str(&text).expect("ls json");
    let bridge = all
        .as_array()
        .expect("array")
        .iter()
        .find(|n| n["name"] == "bridge")
        .cloned()
        .unwrap_or_else(|| panic!("no `bridge` network: {text}"));
    assert_eq!(bridge["driver"], "bridge");
    let subnet = bridge["subnets"][0]["subnet"].as_str().expect("subnet");
    let gateway = bridge["subnets"][0]["gateway"].as_str().expect("gateway");
    assert!(
        (subnet.starts_with("172.") && subnet.ends_with(".0.0/16"))
            || (subnet.starts_with("192.168.") && subnet.ends_with("/20")),
        "default subnet {subnet}"
    );
    let table = w.weft_ok(&["network", "ls"]);
    assert!(
        table
            .lines()
            .any(|l| l.contains(" bridge ") && l.contains(subnet)),
        "table lists bridge: {table}"
    );
    let out = w.weft(&["run", "--", "ping", "-c1", "-W2", gateway]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "weft run ping {gateway}: {}\n{}",
        show(&out),
        w.daemon_log()
    );
}

#[test]
fn null_driver_gives_only_loopback() {
    let Some(mut w) = World::new() else { return };
    let s = w.sandbox("s");
    assert!(!lo_is_up(&w, &s), "a fresh namespace has lo down");
    w.weft_ok(&["network", "create", "--driver", "null", "none0"]);
    let err = w.weft_err(&[
        "network",
        "create",
        "--driver",
        "null",
        "--subnet",
        "10.231.11.0/24",
        "none1",
    ]);
    assert!(err.contains("no addresses"), "{err}");
    w.weft_ok(&["network", "connect", "none0", &s]);
    assert!(
        lo_is_up(&w, &s),
        "lo is up after connecting to a null network"
    );
    assert_eq!(w.links(&s), vec!["lo".to_owned()]);
    let net = w.inspect("none0");
    assert_eq!(net["driver"], "null");
    let e = w.endpoint("none0", &s);
    assert!(World::addresses(&e).is_empty(), "{e:#}");
    // No interface of its own: the endpoint names none, or loopback.
    assert!(
        matches!(e["ifname"].as_str(), Some("" | "lo") | None),
        "no interface: {e:#}"
    );
    assert!(e["mac"].is_null(), "no MAC: {e:#}");
    w.weft_ok(&["network", "disconnect", "none0", &s]);
    w.weft_ok(&["network", "rm", "none0"]);
}

#[test]
fn ipv6_pings_sandbox_and_gateway() {
    let Some(mut w) = World::new() else { return };
    let a = w.sandbox("a");
    let b = w.sandbox("b");
    w.weft_ok(&[
        "network",
        "create",
        "--subnet",
        "10.231.9.0/24",
        "--subnet",
        "fd00:231:9::/64",
        "v6",
    ]);
    w.weft_ok(&["network", "connect", "v6", &a]);
    w.weft_ok(&["network", "connect", "v6", &b]);
    let net = w.inspect("v6");
    let gateways: Vec<&str> = net["subnets"]
        .as_array()
        .expect("subnets")
        .iter()
        .filter_map(|s| s["gateway"].as_str())
        .collect();
    assert!(gateways.contains(&"fd00:231:9::1"), "{net:#}");
    let ea = w.endpoint("v6", &a);
    let eb = w.endpoint("v6", &b);
    assert_eq!(World::addresses(&ea).len(), 2, "{ea:#}");
    let a6 = World::address(&ea, true);
    let b6 = World::address(&eb, true);
    assert!(b6.starts_with("fd00:231:9::") && a6 != b6, "{a6} {b6}");
    let addr = w.exec_ok(&b, &["ip", "-o", "-6", "addr", "show", "dev", "eth0"]);
    assert!(addr.contains(&format!("{b6}/64")), "B's eth0: {addr}");

    w.ping_ok(&a, &["-6", "-c", "2", "-W", "2", &b6]);
    w.ping_ok(&b, &["-6", "-c", "1", "-W", "2", &a6]);
    w.ping_ok(&a, &["-6", "-c", "2", "-W", "2", "fd00:231:9::1"]);
    // IPv4 on the same interface still works.
    let b4 = World::address(&eb, false);
    w.ping_ok(&a, &["-c", "1", "-W", "2", &b4]);
    let err = stderr(&w.weft(&["network", "inspect", "v6"]));
    assert!(err.is_empty(), "{err}");
}
