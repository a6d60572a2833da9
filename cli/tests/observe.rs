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
    if !require(has_tool("curl", "--version"), "needs curl") {
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

    // Metrics on the API socket.
    let answer = w.http("GET", "/metrics", None);
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
        Some(2.0)
    );
    assert_eq!(
        sample(
            &text,
            "weft_network_endpoints{network=\"obs\",driver=\"bridge\"}"
        ),
        Some(2.0)
    );
    assert!(sample(&text, "weft_process_resident_memory_bytes").is_some_and(|b| b > 0.0));
    assert!(sample(&text, "weft_datapath_cpu_seconds_total").is_some());

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
