//! End-to-end tests of what the daemon owns and refuses (issue 19's
//! lifecycle, files and API-input items): one daemon per state directory
//! and per socket, refused before anything is restored; a socket path that
//! is an ordinary file is kept; the socket and the state file have their
//! modes whatever the umask; sandbox paths that are not network namespaces
//! (or are the daemon's own) and subnets no sandbox could use are 400s
//! that say what to give instead. Needs root; skipped otherwise (fails
//! under `CI=true`).
//!
//! Subnets: 10.239.N.0/24, a distinct N per test.

#![allow(clippy::disallowed_methods)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Output};

use common::{kill_group, run, show, stderr, World, WEFT};

/// Run a second daemon in the world's HOST namespace with these socket and
/// state paths; it must exit by itself (bounded by `timeout`).
fn second_daemon(w: &World, socket: &Path, state_dir: &Path) -> Output {
    run(Command::new("ip")
        .args([
            "netns", "exec", &w.host, "timeout", "-s", "KILL", "20", WEFT,
        ])
        .arg("--socket")
        .arg(socket)
        .arg("daemon")
        .arg("--state-dir")
        .arg(state_dir)
        .args(["--no-default-network", "--dns-upstream", "127.0.0.1:9"])
        .env("NO_COLOR", "1"))
}

/// A background process group, killed (and reaped) when dropped, on a
/// failed assertion too.
struct GroupGuard(Child);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        kill_group(&mut self.0);
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn a_second_daemon_on_the_same_state_dir_exits_at_once_and_touches_nothing() {
    let Some(w) = World::new() else { return };
    w.weft_ok(&["network", "create", "--subnet", "10.239.1.0/24", "kept"]);
    let state = std::fs::read(w.state_dir.join("state.json")).expect("state file");

    let out = second_daemon(&w, &w.dir.join("other.sock"), &w.state_dir);
    assert!(
        !out.status.success(),
        "second daemon started: {}",
        show(&out)
    );
    assert_ne!(
        out.status.code(),
        Some(137),
        "second daemon had to be killed"
    );
    let err = stderr(&out);
    assert!(
        err.contains("another weft daemon") && err.contains("state directory"),
        "{err}"
    );
    assert!(
        !err.contains("re-attached"),
        "it restored endpoints first: {err}"
    );
    assert!(!w.dir.join("other.sock").exists(), "it bound a socket");
    assert_eq!(
        std::fs::read(w.state_dir.join("state.json")).unwrap(),
        state,
        "the state file changed"
    );
    // The first daemon still serves, with its network.
    assert!(w.weft_ok(&["network", "ls"]).contains("kept"));
}

#[test]
fn a_second_daemon_on_the_same_socket_says_so_before_anything_else() {
    let Some(w) = World::new() else { return };
    let other_state = w.dir.join("other-state");
    let out = second_daemon(&w, &w.socket, &other_state);
    assert!(
        !out.status.success(),
        "second daemon started: {}",
        show(&out)
    );
    let err = stderr(&out);
    assert!(err.contains("another weft daemon is listening"), "{err}");
    assert!(!other_state.exists(), "it made a state directory first");
    assert!(w.weft(&["network", "ls"]).status.success());
}

#[test]
fn an_ordinary_file_given_as_socket_is_kept() {
    let Some(w) = World::new() else { return };
    let file = w.dir.join("precious.txt");
    std::fs::write(&file, b"do not delete").unwrap();
    let out = second_daemon(&w, &file, &w.dir.join("state-2"));
    assert!(
        !out.status.success(),
        "daemon started on a file: {}",
        show(&out)
    );
    assert!(stderr(&out).contains("is not a socket"), "{}", show(&out));
    assert_eq!(std::fs::read(&file).unwrap(), b"do not delete");
}

#[test]
fn the_socket_and_the_state_file_have_their_modes_whatever_the_umask() {
    let Some(w) = World::new() else { return };
    // The test process's umask (022) would leave the socket 0755 and the
    // state file 0644: weft sets them.
    assert_eq!(mode(&w.socket), 0o660, "socket mode");
    w.weft_ok(&["network", "create", "--subnet", "10.239.2.0/24", "m"]);
    assert_eq!(mode(&w.state_dir.join("state.json")), 0o600, "state file");
    assert_eq!(mode(&w.state_dir.join("daemon.lock")), 0o600, "lock file");

    // A daemon started with umask 000 (as some service managers do).
    let socket = w.dir.join("run-umask/weft.sock");
    let state = w.dir.join("state-umask");
    let script = format!(
        "umask 000; exec timeout -s KILL 20 {WEFT} --socket {} daemon --state-dir {} --no-default-network --dns-upstream 127.0.0.1:9",
        socket.display(),
        state.display()
    );
    // Its own process group, killed whole when the test ends (killing the
    // child alone would kill `timeout` and orphan the daemon).
    let daemon = GroupGuard(
        Command::new("ip")
            .args(["netns", "exec", &w.host, "sh", "-c", &script])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .spawn()
            .expect("starting a daemon with umask 000"),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !socket.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let socket_mode = socket.exists().then(|| mode(&socket));
    let dir_mode = mode(socket.parent().unwrap());
    drop(daemon);
    assert_eq!(socket_mode, Some(0o660), "socket under umask 000");
    assert_eq!(dir_mode, 0o750, "socket directory under umask 000");
}

#[test]
fn connect_refuses_what_is_not_a_sandbox_with_a_400() {
    let Some(w) = World::new() else { return };
    w.weft_ok(&["network", "create", "--subnet", "10.239.3.0/24", "n"]);
    for path in ["/etc/passwd", "/tmp", "/dev/null", "/proc/self/ns/mnt"] {
        let answer = w.http(
            "POST",
            "/v1/networks/n/connect",
            Some(&format!(r#"{{"sandbox": "{path}"}}"#)),
        );
        assert_eq!(answer.status, 400, "{path}: {}", answer.body);
        assert!(
            answer.body.contains("is not a network namespace"),
            "{path}: {}",
            answer.body
        );
    }
    // /proc/self/ns/net, as the daemon opens it, is its own namespace.
    let err = w.weft_err(&["network", "connect", "n", "/proc/self/ns/net"]);
    assert!(err.contains("daemon's own network namespace"), "{err}");
    assert!(
        w.endpoints("n").is_empty(),
        "an endpoint was made: {:?}",
        w.endpoints("n")
    );
    // Nothing was added to the daemon's namespace.
    let links = w.links(&w.host);
    assert!(!links.iter().any(|l| l == "eth0"), "{links:?}");
}

#[test]
fn subnets_no_sandbox_could_use_are_400s_that_say_why() {
    let Some(w) = World::new() else { return };
    for (subnet, why) in [
        ("0.0.0.0/0", "this network"),
        ("224.1.0.0/24", "multicast"),
        ("127.5.0.0/16", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("fe80::/64", "link-local"),
        ("::ffff:0:0/96", "IPv4-mapped"),
    ] {
        let answer = w.http(
            "POST",
            "/v1/networks",
            Some(&format!(
                r#"{{"name": "bad", "subnets": [{{"subnet": "{subnet}"}}]}}"#
            )),
        );
        assert_eq!(answer.status, 400, "{subnet}: {}", answer.body);
        assert!(answer.body.contains(why), "{subnet}: {}", answer.body);
    }
    assert!(!w.weft_ok(&["network", "ls"]).contains("bad"));
}

#[test]
fn a_state_file_with_overlapping_networks_is_refused_and_kept() {
    let Some(w) = World::new() else { return };
    w.weft_ok(&["network", "create", "--subnet", "10.239.7.0/24", "a"]);
    let text = std::fs::read_to_string(w.state_dir.join("state.json")).expect("state file");
    let mut state: serde_json::Value = serde_json::from_str(&text).expect("state JSON");
    // A hand edit: a second network on part of the first one's subnet.
    let mut b = state["networks"][0].clone();
    b["name"] = "b".into();
    b["id"] = "b".repeat(64).into();
    b["subnets"][0]["subnet"] = "10.239.7.0/25".into();
    state["networks"].as_array_mut().expect("networks").push(b);
    let edited = w.dir.join("edited-state");
    std::fs::create_dir_all(&edited).unwrap();
    std::fs::set_permissions(&edited, std::fs::Permissions::from_mode(0o700)).unwrap();
    let bytes = serde_json::to_vec_pretty(&state).unwrap();
    std::fs::write(edited.join("state.json"), &bytes).unwrap();

    let out = second_daemon(&w, &w.dir.join("edited.sock"), &edited);
    assert!(!out.status.success(), "daemon started: {}", show(&out));
    let err = stderr(&out);
    assert!(
        err.contains("inconsistent") && err.contains("overlap") && err.contains("\"b\""),
        "{err}"
    );
    assert_eq!(
        std::fs::read(edited.join("state.json")).unwrap(),
        bytes,
        "the refused state file was changed"
    );
}

/// Port security: a sandbox that takes another's address or MAC, or the
/// gateway's, poisons no neighbour cache and hijacks nothing (the frames
/// are counted `spoofed` on its port); the others keep talking. With
/// `-o port_security=false` the same sandbox may use an extra address.
#[test]
fn a_sandbox_cannot_send_as_another() {
    let Some(mut w) = World::new() else { return };
    let ping = |w: &World, ns: &str, args: &[&str]| w.ping(ns, args);
    for (net, subnet, opt) in [
        ("sec", "10.239.8.0/24", "port_security=true"),
        ("open", "10.239.9.0/24", "port_security=false"),
    ] {
        w.weft_ok(&["network", "create", "--subnet", subnet, "-o", opt, net]);
    }
    let (a, b, c) = (w.sandbox("a"), w.sandbox("b"), w.sandbox("c"));
    for ns in [&a, &b, &c] {
        w.weft_ok(&["network", "connect", "sec", ns]);
    }
    let endpoint = |w: &World, ns: &str| {
        let e = w.endpoint("sec", ns);
        let mac = e["mac"].as_str().unwrap_or_default().to_owned();
        (World::address(&e, false), mac)
    };
    let ((a_ip, a_mac), (c_ip, _)) = (endpoint(&w, &a), endpoint(&w, &c));
    let gateway = "10.239.8.1";
    assert!(w.ping_eventually(&c, &a_ip, std::time::Duration::from_secs(10)));
    assert!(ping(&w, &c, &["-c", "1", "-W", "2", gateway]));
    assert!(w.ping_eventually(&b, &c_ip, std::time::Duration::from_secs(10)));
    let neighbour = |ip: &str| w.exec_ok(&c, &["ip", "neigh", "show", ip]);
    let gateway_mac = neighbour(gateway);
    assert!(neighbour(&a_ip).contains(&a_mac), "{}", neighbour(&a_ip));

    // b claims a's address and the gateway's: with its neighbour cache
    // flushed, its ARP requests carry them. (c's kernel takes such a claim
    // once its entry is older than `locktime`, 1 s.)
    std::thread::sleep(std::time::Duration::from_millis(1500));
    for spoof in [a_ip.as_str(), gateway] {
        w.exec_ok(&b, &["ip", "neigh", "flush", "dev", "eth0"]);
        w.exec_ok(
            &b,
            &["ip", "addr", "add", &format!("{spoof}/32"), "dev", "eth0"],
        );
        assert!(
            !ping(&w, &b, &["-c", "2", "-W", "1", "-I", spoof, &c_ip]),
            "b reached c as {spoof}"
        );
        w.exec_ok(
            &b,
            &["ip", "addr", "del", &format!("{spoof}/32"), "dev", "eth0"],
        );
    }
    assert!(
        neighbour(&a_ip).contains(&a_mac),
        "c's entry for a was poisoned: {}",
        neighbour(&a_ip)
    );
    assert_eq!(
        neighbour(gateway).split_whitespace().nth(4),
        gateway_mac.split_whitespace().nth(4),
        "c's gateway entry was poisoned"
    );
    // b takes a's MAC: its frames go nowhere, and a keeps its traffic.
    w.exec_ok(&b, &["ip", "link", "set", "eth0", "address", &a_mac]);
    assert!(
        !ping(&w, &b, &["-c", "2", "-W", "1", &c_ip]),
        "b reached c with a's MAC"
    );
    assert!(
        ping(&w, &c, &["-c", "1", "-W", "2", &a_ip]),
        "c lost a to b"
    );
    let drops = &w.endpoint("sec", &b)["counters"]["drops"]["spoofed"];
    assert!(
        drops.as_u64().unwrap_or(0) > 0,
        "spoofed frames counted: {drops}"
    );

    // port_security=false: an extra address of b2's own works.
    let (b2, c2) = (w.sandbox("b2"), w.sandbox("c2"));
    for ns in [&b2, &c2] {
        w.weft_ok(&["network", "connect", "open", ns]);
    }
    let c2_ip = World::address(&w.endpoint("open", &c2), false);
    w.exec_ok(
        &b2,
        &["ip", "addr", "add", "10.239.9.200/32", "dev", "eth0"],
    );
    assert!(
        w.ping_eventually(&b2, &c2_ip, std::time::Duration::from_secs(10)),
        "b2 cannot reach c2"
    );
    assert!(
        ping(
            &w,
            &b2,
            &["-c", "1", "-W", "2", "-I", "10.239.9.200", &c2_ip]
        ),
        "with port_security=false an extra address is the sandbox's business"
    );
}

/// `kill -9` of the daemon (and its attach helper) at any moment of a
/// `network connect` leaves a clean sandbox: after a restart the sandbox
/// holds either the recorded endpoint's interface or none, and connecting
/// again gives it `eth0` and a working network (the attach journal).
#[test]
fn a_connect_killed_at_any_moment_leaves_a_clean_sandbox() {
    let Some(mut w) = World::new() else { return };
    w.weft_ok(&["network", "create", "--subnet", "10.239.10.0/24", "crash"]);
    let mut cut_short = 0;
    for delay_ms in [0u64, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 15, 20, 30] {
        let ns = w.sandbox("k");
        let mut client = Command::new("ip")
            .args(["netns", "exec", &w.host, "timeout", "-k", "2", "20", WEFT])
            .args(["network", "connect", "crash", &ns])
            .env("WEFT_SOCKET", &w.socket)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .spawn()
            .expect("starting the connect");
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        w.kill_daemon();
        let _ = client.wait();
        w.start_daemon();
        let recorded = w
            .endpoints("crash")
            .iter()
            .any(|e| e["sandbox"].as_str().is_some_and(|s| s.ends_with(&ns)));
        let links = w.links(&ns);
        if recorded {
            assert_eq!(links, ["lo", "eth0"], "delay {delay_ms} ms: {links:?}");
        } else {
            cut_short += 1;
            assert_eq!(
                links,
                ["lo"],
                "delay {delay_ms} ms: an interface the daemon does not know stayed\n{}",
                w.daemon_log()
            );
            w.weft_ok(&["network", "connect", "crash", &ns]);
        }
        assert_eq!(w.links(&ns), ["lo", "eth0"], "delay {delay_ms} ms");
        assert!(
            w.ping(&ns, &["-c", "1", "-W", "2", "10.239.10.1"]),
            "delay {delay_ms} ms: the sandbox cannot reach its gateway"
        );
    }
    eprintln!("connects cut short: {cut_short} of 14");
}

/// A MAC flood (a guest on a `port_security=false` network sending from
/// thousands of made-up MACs) fills only the flooder's share of the MAC
/// table: its extra frames are dropped and counted `mac_limit`, and the
/// other sandboxes' unicast keeps going to its one port, not flooded.
#[test]
fn a_mac_flood_degrades_only_the_flooder() {
    if !common::require(common::has_tool("python3", "--version"), "needs python3") {
        return;
    }
    let Some(mut w) = World::new() else { return };
    w.weft_ok(&[
        "network",
        "create",
        "--subnet",
        "10.239.11.0/24",
        "-o",
        "port_security=false",
        "flood",
    ]);
    let (f, a, b, c) = (
        w.sandbox("f"),
        w.sandbox("a"),
        w.sandbox("b"),
        w.sandbox("c"),
    );
    for ns in [&f, &a, &b, &c] {
        // Quiet sandboxes: no IPv6 (no MLD or router solicitations).
        w.exec_ok(
            ns,
            &[
                "sysctl",
                "-qw",
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            ],
        );
        w.weft_ok(&["network", "connect", "flood", ns]);
    }
    let b_ip = World::address(&w.endpoint("flood", &b), false);
    w.ping_ok(&a, &["-c", "1", "-W", "2", &b_ip]);
    // 3,000 frames from 3,000 source MACs, through an AF_PACKET socket.
    let script = r#"
import socket, struct
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
for i in range(3000):
    src = bytes([0x02, 0xee, 0, (i >> 16) & 255, (i >> 8) & 255, i & 255])
    s.send(b"\xff" * 6 + src + b"\x88\xb5" + bytes(46))
"#;
    let rx = |w: &World| {
        w.endpoint("flood", &f)["counters"]["rx_frames"]
            .as_u64()
            .unwrap_or(0)
    };
    let rx_before = rx(&w);
    w.exec_ok(&f, &["python3", "-c", script]);
    let fdb: Vec<serde_json::Value> =
        serde_json::from_str(&w.http("GET", "/v1/networks/flood/fdb", None).body).expect("fdb");
    let learned = fdb.iter().filter(|r| r["kind"] == "learned").count();
    assert!(
        learned <= 256,
        "{learned} MACs learned from the flood (the share is 256)"
    );
    // (The sandbox's own queue drops some of the burst: count what the
    // switch read.)
    let read = rx(&w) - rx_before;
    let limited = w.endpoint("flood", &f)["counters"]["drops"]["mac_limit"]
        .as_u64()
        .unwrap_or(0);
    assert!(read > 300, "the switch read only {read} of the flood");
    assert!(
        limited + 256 >= read && limited > 0,
        "{limited} of {read} frames counted mac_limit"
    );
    // a → b is known unicast still: c sees none of it.
    let before = w.endpoint("flood", &c)["counters"]["tx_frames"]
        .as_u64()
        .unwrap_or(0);
    w.ping_ok(&a, &["-c", "5", "-i", "0.2", "-W", "2", &b_ip]);
    let after = w.endpoint("flood", &c)["counters"]["tx_frames"]
        .as_u64()
        .unwrap_or(0);
    assert_eq!(
        after, before,
        "a's unicast to b was flooded to c after the MAC flood"
    );
}
