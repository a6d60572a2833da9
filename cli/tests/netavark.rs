//! `weft-netavark` driven by a real netavark (1.6 or later: plugins), as
//! podman 5 drives it: podman calls the plugin's `create` itself, then
//! `netavark setup NETNS` and `netavark teardown NETNS` with the network
//! options on stdin; netavark finds the plugin named by the network's
//! `driver` in its `--plugin-directory` and runs it.
//!
//! Debian's netavark (1.4) predates plugins: `.ci/run` builds netavark
//! 1.17.2 from crates.io (`cargo install`, about 4 minutes on two cores).
//! The test takes `$WEFT_NETAVARK`, else `netavark` on PATH, and checks
//! its version; without one new enough it is skipped (fails under
//! `CI=true`).
//!
//! netavark, the plugin and the weft daemon run in the test's namespace
//! HOST; the two containers are namespaces the test made. Subnet:
//! 10.238.92.0/24.

#![allow(clippy::disallowed_methods)]

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{require, run, show, stdout, World, CMD_TIMEOUT};
use serde_json::{json, Value};

const PLUGIN: &str = env!("CARGO_BIN_EXE_weft-netavark");

/// A netavark with plugin support: `$WEFT_NETAVARK` or `netavark` on
/// PATH, version 1.6 or later.
fn netavark() -> Option<PathBuf> {
    let candidate = std::env::var_os("WEFT_NETAVARK")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("netavark"));
    let out = Command::new(&candidate).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let version = text.split_whitespace().nth(1)?;
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next()?, parts.next()?);
    (major > 1 || (major == 1 && minor >= 6)).then_some(candidate)
}

/// Run `exe ARGS` in HOST with `stdin`, the daemon's socket in the
/// environment; (success, stdout as JSON or Null, everything for messages).
fn call(w: &World, exe: &str, args: &[&str], stdin: &Value) -> (bool, Value, String) {
    let mut child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &w.host,
            "timeout",
            "-k",
            "5",
            CMD_TIMEOUT,
            exe,
        ])
        .args(args)
        .env("WEFT_SOCKET", &w.socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {exe}: {e}"));
    if let Some(mut pipe) = child.stdin.take() {
        let _ = pipe.write_all(stdin.to_string().as_bytes());
    }
    let out = child.wait_with_output().expect("waiting");
    let json = serde_json::from_str(stdout(&out).trim()).unwrap_or(Value::Null);
    (out.status.success(), json, show(&out))
}

/// Two containers on a weft network through netavark: setup gives each a
/// TAP with the address, MAC and DNS of the status block; they ping and
/// resolve each other; the port mapping is published by weft; teardown
/// removes everything, twice.
#[test]
fn netavark_runs_the_weft_plugin() {
    let found = netavark();
    if !require(
        found.is_some(),
        "needs netavark 1.6 or later (plugins): cargo install netavark, or WEFT_NETAVARK=PATH",
    ) {
        return;
    }
    let netavark = found.expect("checked").to_string_lossy().into_owned();
    let Some(mut w) = World::new() else {
        return;
    };
    let plugins = w.dir.join("netavark-plugins");
    std::fs::create_dir_all(&plugins).expect("plugin dir");
    // The network's driver names the plugin: "weft".
    std::os::unix::fs::symlink(PLUGIN, plugins.join("weft")).expect("plugin link");
    let config = w.dir.join("netavark-config");
    std::fs::create_dir_all(&config).expect("config dir");
    // podman's part: the plugin's `create` completes the network.
    let network = json!({
        "name": "nvr", "id": "3a59bab93aaaaa2542ba43ef33eb990d0999ee1b9924b557b7be53c0b7a1bb91",
        "driver": "weft", "network_interface": "",
        "subnets": [{"subnet": "10.238.92.0/24", "gateway": "10.238.92.1"}],
        "ipv6_enabled": false, "internal": false, "dns_enabled": true,
        "ipam_options": {"driver": "host-local"}, "options": {}
    });
    let (ok, created, text) = call(&w, PLUGIN, &["create"], &network);
    assert!(ok, "create: {text}");
    let netavark_args = |command: &'static str, netns: String| -> Vec<String> {
        vec![
            "--config".into(),
            config.to_string_lossy().into_owned(),
            "--plugin-directory".into(),
            plugins.to_string_lossy().into_owned(),
            command.into(),
            netns,
        ]
    };
    let mut containers = Vec::new();
    for (i, name) in ["nva", "nvb"].into_iter().enumerate() {
        let ns = w.sandbox(name);
        let ports = if i == 0 {
            json!([{"host_ip": "", "container_port": 80, "host_port": 18094, "range": 1, "protocol": "tcp"}])
        } else {
            json!([])
        };
        let options = json!({
            "container_id": format!("{name}{}", "0".repeat(61)),
            "container_name": name,
            "port_mappings": ports,
            "networks": {"nvr": {"interface_name": "eth0", "static_ips": [format!("10.238.92.{}", 10 + i)]}},
            "network_info": {"nvr": created},
        });
        let args = netavark_args("setup", World::netns_path(&ns));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, status, text) = call(&w, &netavark, &args, &options);
        assert!(ok, "netavark setup {name}: {text}\n{}", w.daemon_log());
        let iface = &status["nvr"]["interfaces"]["eth0"];
        assert_eq!(
            iface["subnets"][0]["ipnet"],
            format!("10.238.92.{}/24", 10 + i),
            "{text}"
        );
        assert_eq!(status["nvr"]["dns_server_ips"][0], "10.238.92.1", "{text}");
        let mac = iface["mac_address"].as_str().unwrap_or_default().to_owned();
        let link = w.exec_ok(&ns, &["cat", "/sys/class/net/eth0/address"]);
        assert_eq!(link.trim(), mac, "the status block's MAC is eth0's");
        containers.push((ns, options));
    }
    let (a, b) = (&containers[0].0, &containers[1].0);
    assert!(
        w.ping_eventually(b, "10.238.92.10", Duration::from_secs(10)),
        "nvb cannot reach nva\n{}",
        w.daemon_log()
    );
    let answer = w.exec_ok(
        b,
        &[
            "dig",
            "+short",
            "+time=2",
            "+tries=2",
            "@10.238.92.1",
            "nva",
        ],
    );
    assert_eq!(answer.trim(), "10.238.92.10", "nva by name through weft");
    let ss = w.exec_ok(&w.host, &["ss", "-Hltn"]);
    assert!(ss.contains(":18094"), "weft publishes the mapping: {ss}");
    assert!(w.exec_ok(a, &["ip", "-o", "link"]).contains("eth0"));
    for (ns, options) in &containers {
        for _ in 0..2 {
            let args = netavark_args("teardown", World::netns_path(ns));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let (ok, _, text) = call(&w, &netavark, &args, options);
            assert!(ok, "netavark teardown: {text}");
        }
        let links = run(Command::new("ip").args(["-n", ns, "-o", "link"]));
        assert!(!stdout(&links).contains("eth0"), "teardown left eth0");
    }
    assert!(w.endpoints("nvr").is_empty(), "teardown left endpoints");
    let ss = w.exec_ok(&w.host, &["ss", "-Hltn"]);
    assert!(!ss.contains(":18094"), "teardown freed the port: {ss}");
}
