//! Seeing inside weft (issue 18): the forwarding table of a network
//! (`GET /v1/networks/NAME/fdb`) and Prometheus metrics (`GET /metrics` on
//! the API socket, and on `--metrics ADDR:PORT`, here HOST's own loopback).
//! Needs root; skipped otherwise (fails under `CI=true`).
//!
//! Subnets: 10.240.N.0/24.

#![allow(clippy::disallowed_methods)]

mod common;

use common::{has_tool, require, stdout, World};
use serde_json::Value;

const METRICS: &str = "127.0.0.1:9464";

/// The value of the sample `line_start` (`name{labels}`) in `text`.
fn sample(text: &str, line_start: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|rest| rest.trim().parse().ok())
}

#[test]
fn fdb_and_metrics_show_the_network() {
    if !require(has_tool("curl", "--version"), "needs curl")
        || !require(has_tool("dig", "-v"), "needs dig (bind9-dnsutils)")
    {
        return;
    }
    let Some(mut w) = World::with_daemon_args(&["--metrics", METRICS]) else {
        return;
    };
    let (a, b) = (w.sandbox("a"), w.sandbox("b"));
    w.weft_ok(&["network", "create", "--subnet", "10.240.1.0/24", "obs"]);
    w.weft_ok(&["network", "connect", "--name", "alpha", "obs", &a]);
    w.weft_ok(&["network", "connect", "--name", "beta", "obs", &b]);
    let b_ip = World::address(&w.endpoint("obs", &b), false);
    w.ping_ok(&a, &["-c", "3", "-i", "0.2", "-W", "2", &b_ip]);

    // The forwarding table: both endpoints' MACs, pinned to their ports.
    let answer = w.http("GET", "/v1/networks/obs/fdb", None);
    assert_eq!(answer.status, 200, "{}", answer.body);
    let rows: Vec<Value> = serde_json::from_str(&answer.body).expect("fdb JSON");
    for (name, ns) in [("alpha", &a), ("beta", &b)] {
        let mac = w.endpoint("obs", ns)["mac"].clone();
        assert!(
            rows.iter()
                .any(|r| r["mac"] == mac && r["endpoint"] == name && r["kind"] == "static"),
            "{name} ({mac}) missing from {rows:#?}"
        );
    }
    assert_eq!(w.http("GET", "/v1/networks/nosuch/fdb", None).status, 404);

    // A name asked of the gateway's DNS, for the DNS families.
    let dig = w.exec(
        &a,
        &[
            "dig",
            "+short",
            "+time=2",
            "+tries=2",
            "@10.240.1.1",
            "beta",
        ],
    );
    assert_eq!(stdout(&dig).trim(), b_ip, "{}", common::show(&dig));

    // A published port of each kind, and a client of each from HOST.
    let c = w.sandbox("c");
    w.weft_ok(&[
        "network",
        "connect",
        "--name",
        "gamma",
        "-p",
        "18080:80",
        "-p",
        "18053:53/udp",
        "obs",
        &c,
    ]);
    w.exec(
        &w.host,
        &["curl", "-s", "--max-time", "3", "http://127.0.0.1:18080/"],
    );
    w.exec(
        &w.host,
        &["bash", "-c", "echo hello > /dev/udp/127.0.0.1/18053"],
    );

    // Metrics on the API socket.
    let published = |text: &str, family: &str, protocol: &str| -> f64 {
        let start = format!("{family}{{network=\"obs\",endpoint=\"gamma\",protocol=\"{protocol}\"");
        text.lines()
            .filter(|l| l.starts_with(&start))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut answer = w.http("GET", "/metrics", None);
    while (published(&answer.body, "weft_published_connections_total", "tcp") < 1.0
        || published(&answer.body, "weft_published_datagrams_total", "udp") < 1.0)
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(100));
        answer = w.http("GET", "/metrics", None);
    }
    assert!(
        published(&answer.body, "weft_published_connections_total", "tcp") >= 1.0
            && published(&answer.body, "weft_published_datagrams_total", "udp") >= 1.0,
        "the published ports' client and datagram are counted:\n{}",
        answer.body
    );
    assert_eq!(answer.status, 200);
    let text = answer.body;
    let rx = sample(
        &text,
        "weft_port_rx_frames_total{network=\"obs\",endpoint=\"alpha\"}",
    );
    assert!(
        rx.is_some_and(|n| n >= 3.0),
        "alpha's pings counted: {rx:?}\n{text}"
    );
    let tx = sample(
        &text,
        "weft_port_tx_frames_total{network=\"obs\",endpoint=\"beta\"}",
    );
    assert!(tx.is_some_and(|n| n >= 3.0), "beta received them: {tx:?}");
    assert_eq!(
        sample(
            &text,
            "weft_network_fdb_entries{network=\"obs\",kind=\"static\"}"
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &text,
            "weft_network_endpoints{network=\"obs\",driver=\"bridge\"}"
        ),
        Some(3.0)
    );
    // The first ping's ARP request was a broadcast: flooded.
    assert!(
        sample(
            &text,
            "weft_network_floods_total{network=\"obs\",kind=\"multicast\"}"
        )
        .is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert!(sample(&text, "weft_process_resident_memory_bytes").is_some_and(|b| b > 0.0));
    assert!(sample(&text, "weft_dns_queries_total").is_some_and(|n| n >= 1.0));
    assert!(
        sample(&text, "weft_dns_answers_total{kind=\"local\"}").is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert!(sample(&text, "weft_datapath_cpu_seconds_total").is_some());

    // Prometheus' own parser (Python's prometheus_client) reads all of it;
    // Debian's python3-prometheus-client is for Debian's python3, which
    // another python3 earlier in PATH (pyenv's) may hide.
    let python = if std::path::Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    };
    if require(
        std::process::Command::new(python)
            .args(["-c", "import prometheus_client"])
            .status()
            .is_ok_and(|s| s.success()),
        "needs python3-prometheus-client",
    ) {
        let script = w.dir.join("parse.py");
        std::fs::write(
            &script,
            "import sys\n\
             from prometheus_client.parser import text_string_to_metric_families\n\
             for f in text_string_to_metric_families(sys.stdin.read()):\n\
             \x20   for s in f.samples:\n\
             \x20       labels = ','.join(f'{k}={v}' for k, v in sorted(s.labels.items()))\n\
             \x20       print(f.type, s.name, labels, s.value)\n",
        )
        .expect("writing the parser script");
        let mut parse = std::process::Command::new(python)
            .arg(&script)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("python3");
        use std::io::Write as _;
        parse
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("feeding the parser");
        let parsed = parse.wait_with_output().expect("python3");
        assert!(parsed.status.success(), "{}", common::show(&parsed));
        let parsed = stdout(&parsed);
        for line in [
            "counter weft_port_rx_frames_total endpoint=alpha,network=obs ",
            "gauge weft_network_endpoints driver=bridge,network=obs 3.0",
            "counter weft_published_connections_total endpoint=gamma,host=",
            "histogram weft_dns_upstream_latency_seconds_count  ",
        ] {
            assert!(
                parsed.lines().any(|l| l.starts_with(line)),
                "{line:?} not parsed from the metrics:\n{parsed}"
            );
        }
    }

    // And on --metrics, for Prometheus: the same families, nothing else.
    let url = format!("http://{METRICS}/metrics");
    let out = w.exec(&w.host, &["curl", "-sf", "--max-time", "5", &url]);
    assert!(
        stdout(&out).contains("weft_port_rx_frames_total{network=\"obs\",endpoint=\"alpha\"}"),
        "{}",
        common::show(&out)
    );
    let api = format!("http://{METRICS}/v1/networks");
    let out = w.exec(
        &w.host,
        &[
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
            &api,
        ],
    );
    assert_eq!(stdout(&out), "404", "the metrics port serves no API");
}

/// `weft capture`: a file that tcpdump reads with both directions of a
/// ping between two sandboxes, a count and an endpoint filter that end the
/// capture, a clear error for an endpoint that is not there.
#[test]
fn capture_writes_pcapng_that_tcpdump_reads() {
    if !require(has_tool("tcpdump", "--version"), "needs tcpdump") {
        return;
    }
    let Some(mut w) = World::new() else {
        return;
    };
    let (a, b) = (w.sandbox("a"), w.sandbox("b"));
    w.weft_ok(&["network", "create", "--subnet", "10.240.2.0/24", "cap"]);
    w.weft_ok(&["network", "connect", "--name", "alpha", "cap", &a]);
    w.weft_ok(&["network", "connect", "--name", "beta", "cap", &b]);
    let (a_ip, b_ip) = (
        World::address(&w.endpoint("cap", &a), false),
        World::address(&w.endpoint("cap", &b), false),
    );
    w.ping_ok(&a, &["-c", "1", "-W", "2", &b_ip]);

    let file = w.dir.join("cap.pcapng");
    let file_arg = file.to_string_lossy().into_owned();
    let socket = w.socket.to_string_lossy().into_owned();
    let capture = common::start_capture(&w.host, &w.socket, &file, &["cap", "--duration", "4"]);
    w.ping_ok(&a, &["-c", "3", "-i", "0.2", "-W", "2", &b_ip]);
    let out = capture.wait_with_output().expect("weft capture");
    let err = common::stderr(&out);
    assert!(
        out.status.success(),
        "weft capture: {err}\n{}",
        w.daemon_log()
    );
    assert!(err.contains("frames captured, 0 dropped"), "{err}");
    let read = w.exec(&w.host, &["tcpdump", "-n", "-r", &file_arg]);
    let text = stdout(&read);
    let requests = text
        .lines()
        .filter(|l| l.contains(&format!("{a_ip} > {b_ip}: ICMP echo request")))
        .count();
    let replies = text
        .lines()
        .filter(|l| l.contains(&format!("{b_ip} > {a_ip}: ICMP echo reply")))
        .count();
    // Each frame crosses two ports (in at one, out at the other).
    assert!(
        requests >= 6 && replies >= 6,
        "{requests} requests, {replies} replies:\n{text}"
    );

    // tshark reads the same file: each echo request in at alpha's port
    // (inbound: the sandbox sent it) and out at beta's (outbound).
    if require(has_tool("tshark", "--version"), "needs tshark") {
        let fields = [
            "-T",
            "fields",
            "-e",
            "frame.interface_name",
            "-e",
            "frame.packet_flags_direction",
            "-e",
            "icmp.type",
        ];
        let read = w.exec(
            &w.host,
            &[&["tshark", "-n", "-r", &file_arg][..], &fields[..]].concat(),
        );
        let text = stdout(&read);
        // The direction is 1 (inbound) or 2 (outbound), printed in hex by
        // some tshark versions.
        let rows = |row: &str| {
            text.lines()
                .filter(|l| {
                    let mut f = l.trim().split('\t');
                    let (name, dir, icmp) = (f.next(), f.next(), f.next());
                    let dir = dir.and_then(|d| match d.strip_prefix("0x") {
                        Some(hex) => u32::from_str_radix(hex, 16).ok(),
                        None => d.parse().ok(),
                    });
                    format!(
                        "{}\t{}\t{}",
                        name.unwrap_or(""),
                        dir.unwrap_or(0),
                        icmp.unwrap_or("")
                    ) == row
                })
                .count()
        };
        assert!(
            rows("alpha\t1\t8") >= 3 && rows("beta\t2\t8") >= 3,
            "requests in at alpha, out at beta:\n{text}\n{}",
            common::show(&read)
        );
        assert!(
            rows("beta\t1\t0") >= 3 && rows("alpha\t2\t0") >= 3,
            "replies in at beta, out at alpha:\n{text}"
        );

        // Live, to tshark on a pipe: it decodes the frames as they come.
        let mut pinger = w.spawn_in(&a, "20", &["ping", "-i", "0.2", &b_ip]);
        let live = format!(
            "{} --socket {socket} capture cap --endpoint beta -c 12 -w - | tshark -n -r - -T fields -e ip.src -e ip.dst -e icmp.type",
            common::WEFT
        );
        let out = w.exec(&w.host, &["timeout", "30", "bash", "-c", &live]);
        common::kill_group(&mut pinger);
        let text = stdout(&out);
        // Twelve frames through the pipe (ARP among them, before the
        // pings' own).
        assert_eq!(
            text.lines().count(),
            12,
            "twelve frames through the pipe:\n{}",
            common::show(&out)
        );
        assert!(
            text.lines().any(|l| l == format!("{a_ip}\t{b_ip}\t8"))
                && text.lines().any(|l| l == format!("{b_ip}\t{a_ip}\t0")),
            "{}",
            common::show(&out)
        );
    }

    // One endpoint, two frames: the capture ends by itself.
    let mut pinger = w.spawn_in(&a, "20", &["ping", "-i", "0.2", &b_ip]);
    let out = w.weft(&[
        "capture",
        "cap",
        "--endpoint",
        "beta",
        "-c",
        "2",
        "-w",
        &file_arg,
    ]);
    common::kill_group(&mut pinger);
    assert!(out.status.success(), "{}", common::show(&out));
    assert!(
        common::stderr(&out).contains("2 frames captured"),
        "{}",
        common::show(&out)
    );

    let out = w.weft(&["capture", "cap", "--endpoint", "nosuch", "-w", &file_arg]);
    assert!(!out.status.success());
    assert!(
        common::stderr(&out).contains("no endpoint named \"nosuch\""),
        "{}",
        common::show(&out)
    );
    // The tunnel of a daemon without a cluster: refused, saying why
    // (tests/overlay.rs captures a real one).
    let out = w.weft(&["capture", "--overlay", "-w", &file_arg]);
    assert!(!out.status.success());
    assert!(
        common::stderr(&out).contains("start it with --listen"),
        "{}",
        common::show(&out)
    );
}

/// An event as `TYPE ACTION NETWORK ENDPOINT`.
fn event_summary(v: &Value) -> String {
    let text = |key: &str| v[key].as_str().unwrap_or("").to_owned();
    format!(
        "{} {} {} {}",
        text("type"),
        text("action"),
        text("network"),
        text("endpoint")
    )
}

/// `weft events --json`: network and endpoint changes, in order, as they
/// happen; `weft stats --no-stream`: a row per endpoint with its rates.
#[test]
fn events_and_stats_follow_the_network() {
    let Some(mut w) = World::new() else {
        return;
    };
    let socket = w.socket.to_string_lossy().into_owned();
    let mut events = w.spawn_in(
        &w.host,
        "60",
        &[common::WEFT, "--socket", &socket, "events", "--json"],
    );
    let stdout_pipe = events.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout_pipe)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The subscription is on once a first event gets through: create
    // throwaway networks until one is seen (bounded).
    let mut seen = Vec::new();
    for i in 0..50 {
        let name = format!("probe{i}");
        w.weft_ok(&[
            "network",
            "create",
            "--subnet",
            &format!("10.240.{}.0/24", 100 + i),
            &name,
        ]);
        w.weft_ok(&["network", "rm", &name]);
        if let Ok(line) = rx.recv_timeout(std::time::Duration::from_millis(200)) {
            seen.push(line);
            break;
        }
    }
    assert!(!seen.is_empty(), "weft events printed nothing");
    while rx
        .recv_timeout(std::time::Duration::from_millis(300))
        .is_ok()
    {}
    let a = w.sandbox("a");
    let b = w.sandbox("b");
    w.weft_ok(&["network", "create", "--subnet", "10.240.3.0/24", "ev"]);
    w.weft_ok(&["network", "connect", "--name", "alpha", "ev", &a]);
    w.weft_ok(&["network", "connect", "--name", "beta", "ev", &b]);
    let b_ip = World::address(&w.endpoint("ev", &b), false);

    let mut pinger = w.spawn_in(&a, "20", &["ping", "-i", "0.05", &b_ip]);
    let out = w.weft_ok(&["stats", "--no-stream", "ev"]);
    common::kill_group(&mut pinger);
    let alpha = out
        .lines()
        .find(|l| l.starts_with("ev") && l.contains("alpha"))
        .unwrap_or_else(|| panic!("no row for alpha:\n{out}"));
    let frames: f64 = alpha
        .split_whitespace()
        .nth(4)
        .and_then(|f| f.trim_end_matches("/s").parse().ok())
        .unwrap_or(0.0);
    assert!(
        frames >= 5.0,
        "alpha's OUT FRAMES while pinging: {alpha}\n{out}"
    );

    w.weft_ok(&["network", "disconnect", "ev", &a]);
    w.weft_ok(&["network", "disconnect", "ev", &b]);
    w.weft_ok(&["network", "rm", "ev"]);
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while got.len() < 6 && std::time::Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(std::time::Duration::from_millis(200)) {
            let v: Value = serde_json::from_str(&line).expect("a JSON line");
            got.push(event_summary(&v));
        }
    }
    common::kill_group(&mut events);
    assert_eq!(
        got,
        [
            "network create ev ",
            "endpoint connect ev alpha",
            "endpoint connect ev beta",
            "endpoint disconnect ev alpha",
            "endpoint disconnect ev beta",
            "network remove ev ",
        ]
    );

    // The daemon keeps them: `--since` replays them first, in order.
    let replay = w.exec(
        &w.host,
        &[
            "timeout",
            "3",
            common::WEFT,
            "--socket",
            &socket,
            "events",
            "--json",
            "--since",
            "1h",
        ],
    );
    let replayed: Vec<String> = stdout(&replay)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["network"] == "ev")
        .map(|v| event_summary(&v))
        .collect();
    assert_eq!(replayed, got, "{}", common::show(&replay));
    // A bad time is refused, saying why.
    let answer = w.http("GET", "/v1/events?since=yesterday", None);
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert!(answer.body.contains("RFC 3339"), "{}", answer.body);
    let bad = w.weft(&["events", "--since", "yesterday"]);
    assert!(!bad.status.success());
    assert!(
        common::stderr(&bad).contains("duration ago"),
        "{}",
        common::show(&bad)
    );
}

/// `--log-format json`: the daemon's log is one JSON object per line; a
/// bad `--log-level` is refused with a hint.
#[test]
fn the_daemon_logs_json_when_asked() {
    let Some(w) = World::with_daemon_args(&["--log-format", "json"]) else {
        return;
    };
    w.weft_ok(&["network", "create", "--subnet", "10.240.4.0/24", "logs"]);
    let log = w.daemon_log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| !l.starts_with("[daemon start"))
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert!(!lines.is_empty(), "no log at all");
    for line in &lines {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}\n{log}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string() && v["fields"].is_object(),
            "{line}"
        );
    }
    let bad = std::process::Command::new(common::WEFT)
        .args(["daemon", "--log-level", "info,=x=y"])
        .env_remove("WEFT_LOG")
        .output()
        .expect("weft daemon");
    assert!(!bad.status.success());
    assert!(
        common::stderr(&bad).contains("--log-level"),
        "{}",
        common::show(&bad)
    );
}

/// `--web IP:PORT`: the topology page, and beside it only the read-only
/// API it reads (no way to change anything from there).
#[test]
fn the_topology_page_and_its_read_only_api() {
    if !require(has_tool("curl", "--version"), "needs curl") {
        return;
    }
    let Some(mut w) = World::with_daemon_args(&["--web", "127.0.0.1:8099"]) else {
        return;
    };
    let a = w.sandbox("a");
    w.weft_ok(&["network", "create", "--subnet", "10.240.4.0/24", "topo"]);
    w.weft_ok(&["network", "connect", "--name", "alpha", "topo", &a]);
    let get = |path: &str| {
        let url = format!("http://127.0.0.1:8099{path}");
        let out = w.exec(
            &w.host,
            &[
                "curl",
                "-s",
                "--max-time",
                "5",
                "-w",
                "\n%{http_code}",
                &url,
            ],
        );
        let text = stdout(&out);
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", ""));
        (body.to_owned(), code.to_owned())
    };
    let (page, code) = get("/");
    assert_eq!(code, "200");
    assert!(
        page.contains("<svg") && page.contains("/v1/networks"),
        "{page}"
    );
    let (list, code) = get("/v1/networks");
    assert_eq!(code, "200");
    assert!(list.contains("\"topo\""), "{list}");
    let (details, _) = get("/v1/networks/topo");
    assert!(details.contains("\"alpha\""), "{details}");
    let url = "http://127.0.0.1:8099/v1/networks/topo/disconnect";
    let out = w.exec(
        &w.host,
        &[
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
            "-X",
            "POST",
            "-d",
            "{}",
            url,
        ],
    );
    assert_eq!(stdout(&out), "404", "the page's listener changes nothing");
    assert_eq!(w.endpoints("topo").len(), 1);
}

/// iperf3 from `client` to `ip` (server in `server_ns`) for `secs` at
/// `rate` (iperf3's `-b`, "0" for as fast as it goes); the receiver's
/// Mbit/s.
fn iperf_mbits(w: &World, server_ns: &str, client: &str, ip: &str, secs: &str, rate: &str) -> f64 {
    let mut server = w.spawn_in(server_ns, "60", &["iperf3", "-s", "-1"]);
    let mut result = None;
    // The server takes a moment to listen: bounded retries of the client.
    for _ in 0..25 {
        let out = w.exec(client, &["iperf3", "-c", ip, "-t", secs, "-b", rate, "-J"]);
        let json: Value = serde_json::from_str(&stdout(&out)).unwrap_or(Value::Null);
        if let Some(bps) = json["end"]["sum_received"]["bits_per_second"].as_f64() {
            result = Some(bps / 1e6);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    common::kill_group(&mut server);
    result.unwrap_or_else(|| panic!("iperf3 from {client} to {ip} never ran"))
}

/// Frames and drops (the statistics blocks' `isb_ifdrop`) of a pcapng.
fn pcapng_frames_and_drops(path: &std::path::Path) -> (u64, u64) {
    use pcap_file::pcapng::blocks::interface_statistics::InterfaceStatisticsOption;
    use pcap_file::pcapng::{Block, PcapNgReader};
    let file = std::fs::File::open(path).expect("the capture file");
    let mut reader = PcapNgReader::new(std::io::BufReader::new(file)).expect("pcapng");
    let (mut frames, mut dropped) = (0, 0);
    while let Some(block) = reader.next_block() {
        match block.expect("a whole block") {
            Block::EnhancedPacket(_) => frames += 1,
            Block::InterfaceStatistics(isb) => {
                for option in &isb.options {
                    if let InterfaceStatisticsOption::IsbIfDrop(n) = option {
                        dropped = *n;
                    }
                }
            }
            _ => {}
        }
    }
    (frames, dropped)
}

/// A capture under load: below what the reader takes, nothing is lost;
/// with a reader that stops reading, the switch goes on at full speed and
/// the capture counts what it dropped.
#[test]
fn a_capture_under_load_counts_its_drops_and_never_slows_the_switch() {
    if !require(has_tool("iperf3", "--version"), "needs iperf3") {
        return;
    }
    let Some(mut w) = World::new() else {
        return;
    };
    let (a, b) = (w.sandbox("a"), w.sandbox("b"));
    w.weft_ok(&["network", "create", "--subnet", "10.240.5.0/24", "load"]);
    w.weft_ok(&["network", "connect", "--name", "alpha", "load", &a]);
    w.weft_ok(&["network", "connect", "--name", "beta", "load", &b]);
    let b_ip = World::address(&w.endpoint("load", &b), false);
    w.ping_ok(&a, &["-c", "1", "-W", "2", &b_ip]);
    let socket = w.socket.to_string_lossy().into_owned();

    // 20 Mbit/s into a 16 MiB ring drained to a file: nothing dropped.
    let file = w.dir.join("steady.pcapng");
    let capture = common::start_capture(&w.host, &w.socket, &file, &["load", "--duration", "6"]);
    let steady = iperf_mbits(&w, &b, &a, &b_ip, "2", "20M");
    let out = capture.wait_with_output().expect("weft capture");
    assert!(out.status.success(), "{}", common::show(&out));
    let (frames, dropped) = pcapng_frames_and_drops(&file);
    eprintln!("steady: {steady:.1} Mbit/s, {frames} frames captured, {dropped} dropped");
    assert_eq!(dropped, 0, "{}", common::show(&out));
    assert!(frames > 200, "{frames} frames of 2 s of iperf3");

    // Full speed into a 1 MiB ring whose reader stops for 4 s: drops,
    // counted, and the flow keeps its speed.
    let baseline = iperf_mbits(&w, &b, &a, &b_ip, "2", "0");
    let file = w.dir.join("stalled.pcapng");
    let pipeline = format!(
        "{} --socket {socket} capture load --ring-mib 1 --duration 6 -w - | (sleep 4; cat > {})",
        common::WEFT,
        file.display()
    );
    let capture = w.spawn_in(&w.host, "30", &["bash", "-c", &pipeline]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let loaded = iperf_mbits(&w, &b, &a, &b_ip, "3", "0");
    let out = capture.wait_with_output().expect("the capture pipeline");
    assert!(out.status.success(), "{}", common::show(&out));
    let (frames, dropped) = pcapng_frames_and_drops(&file);
    eprintln!(
        "stalled reader: {loaded:.0} Mbit/s (without a capture {baseline:.0}), {frames} frames captured, {dropped} dropped"
    );
    assert!(
        dropped > 0,
        "a stalled reader must cost frames: {frames} captured"
    );
    assert!(frames > 0);
    // The switch never waits for the reader: the flow is not held to what
    // the capture could take (a 1 MiB ring over 3 s would be ~3 Mbit/s).
    assert!(
        loaded > 100.0,
        "{loaded:.0} Mbit/s with a stalled capture, {baseline:.0} without"
    );
}
