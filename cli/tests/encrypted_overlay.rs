//! End-to-end tests of encrypted overlay networks (QUIC between hosts):
//! ping and 4 MiB of TCP both ways, an underlay capture with neither VXLAN
//! nor the sandboxes' marker in it, a host with another key that gets no
//! connection, encrypted and plain networks side by side on the same
//! hosts, `--transport quic` as the default with its MTU. The world is
//! the overlay tests' ([`common::cluster`]): hosts in namespaces on a
//! bridge of the test's own. Needs root, `ip`, `ping`, `bridge`,
//! `tcpdump` and `socat`; skipped otherwise (fails under `CI=true`).
//!
//! Subnets: 10.232.40.0/24 to 10.232.49.0/24.

#![allow(clippy::disallowed_methods)]

mod common;

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::cluster::{host_ip, Cluster, Host, CONVERGE};
use common::{exec_in, has_tool, kill_group, require, run, show, spawn_background, stdout};
use serde_json::Value;

/// The QUIC transport's default port.
const QUIC_PORT: u16 = 7947;

/// Bytes of the TCP transfers (the issue's 4 MiB).
const BULK: u32 = 4 << 20;

/// What the sandboxes put in their pings: "WEFTSECRETMARKER" as ping's
/// `-p` pattern (16 bytes, hex).
const MARKER_HEX: &str = "57454654534543524554";
const MARKER: &[u8] = b"WEFTSECRET";

fn needs_socat() -> bool {
    require(has_tool("socat", "-V"), "needs `socat`")
}

/// A raw capture of the underlay bridge into a pcap file, until stopped.
struct RawCapture {
    child: Child,
    path: std::path::PathBuf,
}

impl RawCapture {
    fn start(c: &Cluster, name: &str, filter: &str) -> RawCapture {
        let path = c.dir.join(format!("{name}.pcap"));
        let err = c.dir.join(format!("{name}.err"));
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &c.underlay, "timeout", "120", "tcpdump"])
            .args(["-U", "--immediate-mode", "-n", "-i", "br0", "-s", "0", "-w"])
            .arg(&path)
            .arg(filter);
        let child = spawn_background(&mut cmd, None, &err);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if std::fs::read_to_string(&err).is_ok_and(|t| t.contains("listening on")) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        RawCapture { child, path }
    }

    /// Stop it; the pcap's bytes.
    fn stop(mut self) -> Vec<u8> {
        // tcpdump writes each packet as it comes (--immediate-mode, -U);
        // give the last a moment, then let it finish the file (SIGINT).
        std::thread::sleep(Duration::from_millis(300));
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(0)),
            nix::sys::signal::Signal::SIGINT,
        );
        std::thread::sleep(Duration::from_millis(300));
        kill_group(&mut self.child);
        std::fs::read(&self.path).unwrap_or_default()
    }
}

/// Packets of `pcap` that `filter` matches (tcpdump -r).
fn count_packets(pcap: &[u8], dir: &Path, filter: &str) -> usize {
    let path = dir.join("count.pcap");
    std::fs::write(&path, pcap).expect("pcap copy");
    let out = run(Command::new("timeout")
        .args(["20", "tcpdump", "-n", "-r"])
        .arg(&path)
        .arg(filter));
    stdout(&out).lines().count()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The `weft peers --json` QUIC connection to host `n`, if any.
fn quic_peer(host: &Host, n: usize) -> Option<Value> {
    let peers = host.peers();
    let want = format!("{}:{QUIC_PORT}", host_ip(n));
    peers["quic"]["peers"]
        .as_array()?
        .iter()
        .find(|p| p["remote"] == want.as_str() && p["state"] == "established")
        .cloned()
}

/// Issue 15: on the same two hosts (daemons on the default `--transport
/// vxlan`, with a cluster key), `secure` made with `-o encrypted=true` and
/// `plain` without. On `secure`: ping and 4 MiB of TCP both ways; the
/// underlay carries QUIC on 7947 and no VXLAN, and the marker the pings
/// carry never appears on it; `weft peers` and `network inspect` show the
/// connection with its counters. On `plain`: VXLAN on 4789, with the
/// marker in clear (so the capture would have seen it).
#[test]
fn an_encrypted_and_a_plain_network_side_by_side() {
    if !needs_socat() {
        return;
    }
    let Some(mut c) = Cluster::new(2, |_| Some("encrypted overlay secret")) else {
        return;
    };
    c.wait_converged();
    c.create_overlay("secure", "10.232.40.0/24", &["encrypted=true"]);
    c.create_overlay("plain", "10.232.41.0/24", &[]);
    let secure = c.hosts[1].inspect("secure");
    assert_eq!(secure["options"]["encrypted"], "true", "{secure:#}");
    assert_eq!(secure["mtu"], 1412, "{secure:#}");
    let plain = c.hosts[1].inspect("plain");
    assert_eq!(plain["options"]["encrypted"], "false", "{plain:#}");
    assert_eq!(plain["mtu"], 1450, "{plain:#}");

    let (s1, s2) = (c.sandbox("s1"), c.sandbox("s2"));
    let a1 = c.hosts[0].connect("secure", &s1, "one");
    let a2 = c.hosts[1].connect("secure", &s2, "two");
    let (p1, p2) = (c.sandbox("p1"), c.sandbox("p2"));
    let b1 = c.hosts[0].connect("plain", &p1, "pone");
    let b2 = c.hosts[1].connect("plain", &p2, "ptwo");
    let mtu = stdout(&exec_in(&s1, &["cat", "/sys/class/net/eth0/mtu"]));
    assert_eq!(mtu.trim(), "1412", "the encrypted network's sandbox MTU");

    // Encrypted: everything on the underlay while it runs.
    let capture = RawCapture::start(&c, "secure", "udp");
    c.ping_ok(&s1, &a2);
    c.ping_ok(&s2, &a1);
    let marked = exec_in(
        &s1,
        &[
            "ping", "-c", "5", "-i", "0.2", "-W", "2", "-p", MARKER_HEX, &a2,
        ],
    );
    assert!(marked.status.success(), "{}", show(&marked));
    // Full-size datagrams without fragments: the MTU holds end to end.
    let full = exec_in(
        &s1,
        &["ping", "-c", "2", "-W", "2", "-M", "do", "-s", "1384", &a2],
    );
    assert!(full.status.success(), "a 1412-byte packet: {}", show(&full));
    c.bulk_transfer(&s1, &s2, &a2, BULK, "one-to-two");
    c.bulk_transfer(&s2, &s1, &a1, BULK, "two-to-one");
    let pcap = capture.stop();
    let quic = count_packets(&pcap, &c.dir, &format!("udp port {QUIC_PORT}"));
    // The plain network's own chatter (neighbour discovery) is VXLAN of
    // its VNI: only the encrypted network's VNI must never appear.
    let vni = secure["vni"].as_u64().expect("the network's VNI");
    let vxlan = count_packets(
        &pcap,
        &c.dir,
        &format!("udp port 4789 and (udp[12:4] >> 8) = {vni}"),
    );
    eprintln!("encrypted network: {quic} QUIC sends (GSO runs count once), {vxlan} VXLAN of its VNI on the underlay");
    // 8 MiB in GSO runs of up to 44 datagrams: at least 130 sends.
    assert!(
        quic > 130,
        "4 MiB both ways is thousands of datagrams: {quic}"
    );
    assert_eq!(vxlan, 0, "VXLAN on the underlay for an encrypted network");
    assert!(
        !contains(&pcap, MARKER),
        "the sandboxes' marker crossed the underlay in clear"
    );

    // Counters: the connection, established, with datagrams both ways.
    let peer = quic_peer(&c.hosts[0], 2).unwrap_or_else(|| {
        panic!(
            "no established QUIC connection to h2 in peers: {:#}",
            c.hosts[0].peers()
        )
    });
    for key in ["tx_datagrams", "rx_datagrams"] {
        assert!(peer[key].as_u64().unwrap_or(0) > 1000, "{key}: {peer:#}");
    }
    assert!(peer["rtt_us"].as_u64().is_some(), "{peer:#}");
    assert_eq!(peer["path_mtu"], 1472, "{peer:#}");
    let inspected = c.hosts[0].inspect("secure");
    let tunnel = &inspected["tunnel"][0];
    assert_eq!(tunnel["quic"]["state"], "established", "{inspected:#}");
    assert!(
        c.hosts[0].inspect("plain")["tunnel"][0]["quic"].is_null(),
        "a plain network has no QUIC connection to show"
    );

    // Plain, on the same hosts: VXLAN, and the marker is visible.
    let capture = RawCapture::start(&c, "plain", "udp");
    c.ping_ok(&p1, &b2);
    let marked = exec_in(
        &p1,
        &[
            "ping", "-c", "3", "-i", "0.2", "-W", "2", "-p", MARKER_HEX, &b2,
        ],
    );
    assert!(marked.status.success(), "{}", show(&marked));
    c.ping_ok(&p2, &b1);
    let pcap = capture.stop();
    eprintln!(
        "plain network: {} bytes of capture, {} UDP, {} VXLAN, {} QUIC",
        pcap.len(),
        count_packets(&pcap, &c.dir, "udp"),
        count_packets(&pcap, &c.dir, "udp port 4789"),
        count_packets(&pcap, &c.dir, &format!("udp port {QUIC_PORT}"))
    );
    assert!(
        count_packets(&pcap, &c.dir, "udp port 4789") > 0,
        "no VXLAN for the plain network"
    );
    assert!(
        contains(&pcap, MARKER),
        "the plain network's capture saw no marker: the check above proves nothing"
    );
    // The two networks stay apart.
    let across = exec_in(&s1, &["ping", "-c", "1", "-W", "1", &b2]);
    assert!(
        !across.status.success(),
        "an encrypted sandbox reached a plain one"
    );
}

/// Issue 15: `--transport quic` makes new overlay networks encrypted by
/// default (`-o encrypted=false` still gives a plain one), and a daemon
/// that has the network's VNI but another cluster key gets no QUIC
/// connection and none of its frames through: both sides count failed
/// handshakes.
#[test]
fn transport_quic_is_the_default_and_another_key_gets_no_connection() {
    if !needs_socat() {
        return;
    }
    let Some(mut c) = Cluster::new(0, |_| None) else {
        return;
    };
    c.daemon_args = vec!["--transport".into(), "quic".into()];
    for n in 1..=2 {
        let key = c.add_host(n, Some("the right key"), Some(format!("h{n}")));
        c.start_daemon(n - 1, key.as_deref());
    }
    c.wait_converged();
    c.create_overlay("dflt", "10.232.42.0/24", &["vni=4242"]);
    c.create_overlay("clear", "10.232.43.0/24", &["encrypted=false"]);
    assert_eq!(c.hosts[1].inspect("dflt")["options"]["encrypted"], "true");
    assert_eq!(c.hosts[1].inspect("clear")["options"]["encrypted"], "false");
    assert_eq!(c.hosts[1].inspect("clear")["mtu"], 1450);
    let (s1, s2) = (c.sandbox("s1"), c.sandbox("s2"));
    let a1 = c.hosts[0].connect("dflt", &s1, "one");
    let a2 = c.hosts[1].connect("dflt", &s2, "two");
    c.ping_ok(&s2, &a1);
    let resolved = exec_in(&s2, &["getent", "hosts", "one"]);
    assert!(stdout(&resolved).contains(&a1), "{}", show(&resolved));

    // Host 3: another key (gossip refuses it, so it stays alone), the
    // same VNI, and host 1 as a static peer: its frames go to host 1 by
    // QUIC, whose handshake it cannot complete.
    let key = c.add_host(3, Some("a wrong key"), Some("h3".into()));
    c.start_daemon(2, key.as_deref());
    let h3 = &c.hosts[2];
    h3.weft_ok(&[
        "network",
        "create",
        "--driver",
        "overlay",
        "--subnet",
        "10.232.42.0/24",
        "--opt",
        "vni=4242",
        "--opt",
        &format!("peers={}", host_ip(1)),
        "dflt",
    ]);
    let s3 = c.sandbox("s3");
    c.hosts[2].connect("dflt", &s3, "intruder");
    let tried = exec_in(&s3, &["ping", "-c", "3", "-i", "0.3", "-W", "1", &a1]);
    assert!(
        !tried.status.success(),
        "a host with another key reached a sandbox: {}",
        show(&tried)
    );
    c.wait_for("both sides count a failed handshake", CONVERGE, || {
        let failed = |host: &Host| {
            host.peers()["quic"]["counters"]["handshake_failures"]
                .as_u64()
                .unwrap_or(0)
        };
        failed(&c.hosts[0]) > 0 && failed(&c.hosts[2]) > 0
    });
    assert_eq!(
        c.hosts[2].peers()["quic"]["counters"]["established"],
        0,
        "the host with another key established a connection"
    );
    // The cluster still works.
    c.ping_ok(&s1, &a2);
}

/// A daemon refuses `--transport quic` without a cluster key, and a
/// network with `-o encrypted=true` where there is none, saying what to
/// give.
#[test]
fn encryption_without_a_cluster_key_is_refused() {
    let Some(mut c) = Cluster::new(1, |_| None) else {
        return;
    };
    let out = c.hosts[0].weft(&[
        "network",
        "create",
        "--driver",
        "overlay",
        "--subnet",
        "10.232.44.0/24",
        "--opt",
        "encrypted=true",
        "nokey",
    ]);
    assert!(!out.status.success(), "{}", show(&out));
    assert!(show(&out).contains("--cluster-key"), "{}", show(&out));
    let bad = c.hosts[0].weft(&[
        "network",
        "create",
        "--driver",
        "overlay",
        "--subnet",
        "10.232.44.0/24",
        "--opt",
        "encrypted=maybe",
        "nokey",
    ]);
    assert!(show(&bad).contains("use true or false"), "{}", show(&bad));
    // The daemon itself: --transport quic and no key.
    c.daemon_args = vec!["--transport".into(), "quic".into()];
    c.kill(0);
    c.spawn_daemon(0, None);
    let status = c.wait_exit(0, "the daemon with --transport quic and no key");
    assert!(!status.success());
    let log = c.hosts[0].log_text();
    assert!(log.contains("give --cluster-key FILE"), "{log}");
}

/// Issue 15, roaming: host 2 listens on every address (`--listen
/// 0.0.0.0:7946 --join h1`) and finds its own; mid-ping its underlay
/// address changes (192.0.2.2 → 192.0.2.102, as a laptop on another
/// network). It tells the cluster, the tunnels follow (QUIC on the
/// encrypted network, VXLAN on the plain one), and the sandboxes, never
/// reattached, talk again within seconds; h1 shows h2 at its new address.
#[test]
fn a_host_whose_address_changes_keeps_its_sandboxes_talking() {
    let Some(mut c) = Cluster::new(1, |_| Some("roaming secret")) else {
        return;
    };
    let key = c.add_host(2, Some("roaming secret"), Some("h2".into()));
    c.hosts[1].listen = Some("0.0.0.0:7946".into());
    c.start_daemon(1, key.as_deref());
    c.wait_converged();
    let h2_seen = |c: &Cluster| {
        c.hosts[0].peers()["members"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["name"] == "h2").cloned())
            .unwrap_or(Value::Null)
    };
    assert_eq!(
        h2_seen(&c)["address"],
        "192.0.2.2:7946",
        "h2 found its own address"
    );
    c.create_overlay("roam", "10.232.45.0/24", &["encrypted=true"]);
    c.create_overlay("roamplain", "10.232.46.0/24", &[]);
    let (s1, s2) = (c.sandbox("s1"), c.sandbox("s2"));
    let a1 = c.hosts[0].connect("roam", &s1, "one");
    let a2 = c.hosts[1].connect("roam", &s2, "two");
    let (p1, p2) = (c.sandbox("p1"), c.sandbox("p2"));
    c.hosts[0].connect("roamplain", &p1, "pone");
    let b2 = c.hosts[1].connect("roamplain", &p2, "ptwo");
    c.ping_ok(&s1, &a2);
    c.ping_ok(&s2, &a1);
    c.ping_ok(&p1, &b2);

    // The address changes under the daemon.
    let ns = c.hosts[1].ns.clone();
    // (Deleted first: deleting a primary address takes its secondaries.)
    c.sh(&["ip", "-n", &ns, "addr", "del", "192.0.2.2/24", "dev", "v0"]);
    c.sh(&[
        "ip",
        "-n",
        &ns,
        "addr",
        "add",
        "192.0.2.102/24",
        "dev",
        "v0",
    ]);
    let moved = Instant::now();
    let back = c.wait_for("s1 reaches s2 again", Duration::from_secs(20), || {
        exec_in(&s1, &["ping", "-c", "1", "-W", "1", &a2])
            .status
            .success()
    });
    eprintln!(
        "encrypted network: s1 reaches s2 {:?} after the move",
        moved.elapsed()
    );
    assert!(back < Duration::from_secs(15), "{back:?}");
    c.ping_ok(&s2, &a1);
    c.ping_ok(&p1, &b2);
    c.wait_for("h1 shows h2 at its new address", CONVERGE, || {
        h2_seen(&c)["address"] == "192.0.2.102:7946"
    });
    c.wait_for("the QUIC connection to the new address", CONVERGE, || {
        quic_peer(&c.hosts[0], 102).is_some()
    });
    // 4 MiB both ways after the move.
    c.bulk_transfer(&s1, &s2, &a2, BULK, "after-move");
    c.bulk_transfer(&s2, &s1, &a1, BULK, "after-move-back");
}

/// Issue 15, path MTU: the underlay's MTU drops from 1500 to 1300 under an
/// encrypted network (sandboxes at 1412): QUIC finds the smaller path
/// (quinn's black-hole detection and PMTUD), the transport cuts TCP to
/// what fits now, and 4 MiB still cross both ways, without the sandboxes
/// being told anything.
#[test]
fn tcp_goes_on_when_the_underlay_mtu_shrinks() {
    if !needs_socat() {
        return;
    }
    let Some(mut c) = Cluster::new(2, |_| Some("mtu secret")) else {
        return;
    };
    c.wait_converged();
    c.create_overlay("shrink", "10.232.47.0/24", &["encrypted=true"]);
    let (s1, s2) = (c.sandbox("s1"), c.sandbox("s2"));
    let a1 = c.hosts[0].connect("shrink", &s1, "one");
    let a2 = c.hosts[1].connect("shrink", &s2, "two");
    c.ping_ok(&s1, &a2);
    c.bulk_transfer(&s1, &s2, &a2, BULK, "before");
    let underlay = c.underlay.clone();
    for n in 1..=2 {
        let ns = c.hosts[n - 1].ns.clone();
        c.sh(&["ip", "-n", &ns, "link", "set", "v0", "mtu", "1300"]);
        c.sh(&[
            "ip",
            "-n",
            &underlay,
            "link",
            "set",
            &format!("p{n}"),
            "mtu",
            "1300",
        ]);
    }
    let shrunk = Instant::now();
    c.bulk_transfer(&s1, &s2, &a2, BULK, "after-shrink");
    c.bulk_transfer(&s2, &s1, &a1, BULK, "after-shrink-back");
    eprintln!(
        "4 MiB both ways {:?} after the underlay shrank",
        shrunk.elapsed()
    );
    let peer = quic_peer(&c.hosts[0], 2).expect("the connection");
    let mtu = peer["path_mtu"].as_u64().unwrap_or(0);
    assert!(
        (1200..=1272).contains(&mtu),
        "the path's MTU as QUIC sees it now: {peer:#}"
    );
}
