//! Seeing inside weft (issue 18): the topology page (`weft daemon --web`,
//! `cnm/src/web.html`) rendered by a real browser, and `weft graph`, which
//! draws the same picture as DOT or SVG from the command line.
//!
//! The daemon's web listener is on the loopback of HOST, the namespace the
//! test made for it, so headless Chromium runs inside HOST too (`ip netns
//! exec`): it can reach that listener and nothing else (HOST has only
//! `lo`), and the machine's own interfaces are never touched. Chromium gets
//! a fresh profile, HOME and cache inside the world's directory, no
//! sandbox (it runs as root), no GPU, no background traffic, and a
//! `timeout`; its process group is killed once it returns.
//!
//! Checked: the DOM after the page's script ran (`--dump-dom` with a
//! virtual-time budget, retried a few times with a bigger budget) holds
//! both networks' names and every endpoint's name, addresses and MAC; a
//! screenshot (`--screenshot`, 1280x800) is a PNG of reasonable size.
//! `WEFT_TOPOLOGY_PNG=PATH` copies that screenshot out of the world
//! before it is removed (how `docs/topology.png` was made).
//!
//! Needs root and Chromium (Debian's `chromium`, `/usr/bin/chromium`, or
//! `WEFT_CHROMIUM`); skipped otherwise, a failure under `CI=true`.
//!
//! Subnets: 10.240.5.0/24, 10.240.6.0/24.

#![allow(clippy::disallowed_methods)]

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{has_tool, require, show, World};
use serde_json::Value;

/// The page's listener, on HOST's loopback.
const WEB: &str = "127.0.0.1:8099";

/// Virtual-time budgets, in ms, of successive `--dump-dom` attempts: the
/// page fetches three API paths and draws; a budget lets that finish
/// before the DOM is dumped.
const DOM_BUDGETS_MS: [u32; 3] = [5_000, 10_000, 20_000];

fn chromium(w: &World, run: &str, args: &[String]) -> (String, String, bool) {
    common::headless_chromium(&w.host, &w.dir, run, args)
}

/// What the page must show of an endpoint: its name, MAC, and addresses
/// (without prefix length: the page prints them with it, either matches).
fn endpoint_facts(endpoint: &Value) -> Vec<String> {
    let mut facts = vec![
        endpoint["name"].as_str().unwrap_or_default().to_owned(),
        endpoint["mac"].as_str().unwrap_or_default().to_owned(),
    ];
    facts.extend(World::addresses(endpoint));
    assert!(
        facts.iter().all(|f| !f.is_empty()) && facts.len() >= 3,
        "endpoint without name, MAC or address: {endpoint:#}"
    );
    facts
}

#[test]
fn topology_page_renders_in_chromium_and_weft_graph_draws_it() {
    let browser = common::chromium_binary();
    if !require(
        has_tool(&browser, "--version"),
        "needs Chromium (apt-get install chromium, or WEFT_CHROMIUM=PATH)",
    ) {
        return;
    }
    let Some(mut w) = World::with_daemon_args(&["--web", WEB]) else {
        return;
    };
    let (web, db) = (w.sandbox("web"), w.sandbox("db"));
    w.weft_ok(&["network", "create", "--subnet", "10.240.5.0/24", "app"]);
    w.weft_ok(&["network", "create", "--subnet", "10.240.6.0/24", "backend"]);
    w.weft_ok(&["network", "connect", "--name", "web", "app", &web]);
    w.weft_ok(&["network", "connect", "--name", "db", "app", &db]);
    w.weft_ok(&["network", "connect", "--name", "db", "backend", &db]);
    // Some frames, so the counters the page shows are not all zero.
    let db_ip = World::address(&w.endpoint("app", &db), false);
    w.ping_ok(&web, &["-c", "2", "-i", "0.2", "-W", "2", &db_ip]);

    let mut expected: Vec<String> = vec!["app".into(), "backend".into()];
    for (network, ns) in [("app", &web), ("app", &db), ("backend", &db)] {
        expected.extend(endpoint_facts(&w.endpoint(network, ns)));
    }

    // The DOM once the script drew: retried with a bigger budget if the
    // page had not finished.
    let url = format!("http://{WEB}/");
    let mut last = String::new();
    let mut rendered = None;
    for (attempt, budget) in DOM_BUDGETS_MS.iter().enumerate() {
        let args = [
            format!("--virtual-time-budget={budget}"),
            "--dump-dom".to_owned(),
            url.clone(),
        ];
        let (dom, stderr, ok) = chromium(&w, &format!("dom-{attempt}"), &args);
        if ok && expected.iter().all(|f| dom.contains(f.as_str())) {
            rendered = Some(dom);
            break;
        }
        last = format!("ok={ok}\n--- DOM ---\n{dom}\n--- stderr ---\n{stderr}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let Some(dom) = rendered else {
        let missing: Vec<&String> = expected
            .iter()
            .filter(|f| !last.contains(f.as_str()))
            .collect();
        panic!(
            "the rendered page lacks {missing:?}:\n{last}\n--- daemon log ---\n{}",
            w.daemon_log()
        );
    };
    assert!(dom.contains("<svg") && dom.contains("<rect"), "{dom}");
    assert!(
        !dom.contains("/v1/networks: "),
        "the page reported an API error: {dom}"
    );

    // A screenshot of the same page.
    let png = w.dir.join("topology.png");
    let args = [
        "--virtual-time-budget=5000".to_owned(),
        "--window-size=1280,800".to_owned(),
        format!("--screenshot={}", png.display()),
        url.clone(),
    ];
    let (_, stderr, ok) = chromium(&w, "screenshot", &args);
    let bytes = std::fs::read(&png).unwrap_or_default();
    assert!(
        ok && bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 10_000,
        "no screenshot ({} bytes, ok={ok}):\n{stderr}",
        bytes.len()
    );
    if let Some(target) = std::env::var_os("WEFT_TOPOLOGY_PNG") {
        let target = PathBuf::from(target);
        std::fs::copy(&png, &target)
            .unwrap_or_else(|e| panic!("copying the screenshot to {}: {e}", target.display()));
    }

    // `weft graph`: the same nodes and labels, as DOT on stdout and as an
    // SVG file.
    let dot = w.weft_ok(&["graph"]);
    assert!(dot.starts_with("graph weft {"), "{dot}");
    for fact in &expected {
        assert!(
            dot.contains(fact.as_str()),
            "{fact} missing from DOT:\n{dot}"
        );
    }
    assert!(dot.contains("\"host\" -- \"net:app\""), "{dot}");
    let svg_path = w.dir.join("topology.svg");
    let svg_arg = svg_path.display().to_string();
    w.weft_ok(&["graph", "--format", "svg", "-o", &svg_arg]);
    let svg = std::fs::read_to_string(&svg_path).unwrap_or_default();
    assert!(svg.contains("<svg"), "{svg}");
    for fact in &expected {
        assert!(
            svg.contains(fact.as_str()),
            "{fact} missing from SVG:\n{svg}"
        );
    }
    let refused = w.weft(&["graph", "--format", "png"]);
    assert!(!refused.status.success(), "{}", show(&refused));
}
