//! End-to-end tests of the command line as a Docker or podman user meets
//! it (issue 20): what `weft run` and `network connect` print, the
//! arguments they take as Docker does, the refusals that say what to fix,
//! and the Docker-like commands (`network ls -q/--filter/--format`,
//! `prune`, `exists`, `version`, `info`, `ps`). Each test has its own
//! daemon in its own namespace (see `common`). Needs root; skipped
//! otherwise (fails under `CI=true`).
//!
//! Subnets: 10.233.N.0/24, a distinct N per test.

#![allow(clippy::disallowed_methods)]

mod common;

use common::{has_tool, require, show, stderr, stdout, World};

/// `weft run` without `--`, with `-p 0:80` and Docker's `-p 81`: the
/// command runs (its exit code passed on) and stderr says which host ports
/// the kernel gave.
#[test]
fn run_takes_the_command_without_dashes_and_says_its_ports() {
    let Some(w) = World::new() else {
        return;
    };
    w.weft_ok(&["network", "create", "--subnet", "10.233.1.0/24", "ux1"]);
    let out = w.weft(&[
        "run",
        "--network",
        "ux1",
        "-p",
        "0:80",
        "-p",
        "81",
        "sh",
        "-c",
        "exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    let err = stderr(&out);
    for container in ["80", "81"] {
        let prefix = format!("weft: published {container}/tcp -> 0.0.0.0:");
        let line = err
            .lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line: {err}"));
        let port: u16 = line[prefix.len()..]
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{line:?}: {e}"));
        assert_ne!(port, 0, "{line}");
    }
    // `--` still works, and a weft option after the command is the command's.
    let out = w.weft(&["run", "--network", "ux1", "--", "true"]);
    assert!(out.status.success(), "{}", show(&out));
    let out = w.weft(&["run", "--network", "ux1", "echo", "--network"]);
    assert_eq!(stdout(&out).trim(), "--network", "{}", show(&out));
}

/// Docker refuses a subnet with host bits set; so does weft, saying which
/// subnet was meant, over the API as well (400).
#[test]
fn a_subnet_with_host_bits_is_refused() {
    let Some(w) = World::new() else {
        return;
    };
    let err = w.weft_err(&["network", "create", "--subnet", "10.233.2.5/24", "hb"]);
    assert!(
        err.contains(
            "invalid --subnet 10.233.2.5/24: it has host bits set; it should be 10.233.2.0/24"
        ),
        "{err}"
    );
    let err = w.weft_err(&[
        "network",
        "create",
        "--subnet",
        "10.233.2.0/24",
        "--ip-range",
        "10.233.2.129/25",
        "hb",
    ]);
    assert!(err.contains("it should be 10.233.2.128/25"), "{err}");
    let answer = w.http(
        "POST",
        "/v1/networks",
        Some(r#"{"name": "hb", "subnets": [{"subnet": "10.233.2.5/24"}]}"#),
    );
    assert_eq!(answer.status, 400, "{answer:?}");
    assert!(w.network_names().is_empty(), "nothing was made");
}

/// `network connect` prints what the sandbox got: network, sandbox,
/// interface, name, address and MAC.
#[test]
fn connect_prints_what_the_sandbox_got() {
    let Some(mut w) = World::new() else {
        return;
    };
    w.weft_ok(&["network", "create", "--subnet", "10.233.3.0/24", "ux3"]);
    let a = w.sandbox("a");
    let printed = w.weft_ok(&["network", "connect", "--name", "web", "ux3", &a]);
    assert_eq!(
        printed.trim(),
        format!(
            "ux3: {} eth0 name web 10.233.3.2/24 mac 02:42:0a:e9:03:02",
            World::netns_path(&a)
        )
    );
}

/// A name one label under the asker's network's name that nobody has is
/// NXDOMAIN, answered by weft (the upstream, a closed port, would make it
/// SERVFAIL).
#[test]
fn unknown_names_in_a_networks_domain_are_nxdomain() {
    if !require(has_tool("dig", "-v"), "needs `dig` (bind9-dnsutils)") {
        return;
    }
    let Some(mut w) = World::new() else {
        return;
    };
    w.weft_ok(&["network", "create", "--subnet", "10.233.4.0/24", "ux4"]);
    let a = w.sandbox("a");
    w.weft_ok(&["network", "connect", "--name", "web", "ux4", &a]);
    let dig = |name: &str| w.exec_ok(&a, &["dig", "+time=2", "+tries=1", "@10.233.4.1", name]);
    let known = dig("web.ux4");
    assert!(
        known.contains("status: NOERROR") && known.contains("10.233.4.2"),
        "{known}"
    );
    let unknown = dig("nosuch.ux4");
    assert!(unknown.contains("status: NXDOMAIN"), "{unknown}");
    // Anything else still goes upstream (here: nowhere, so SERVFAIL).
    let elsewhere = dig("nosuch.example");
    assert!(elsewhere.contains("status: SERVFAIL"), "{elsewhere}");
}

/// `network ls -q`, `--filter` (driver, name, label, scope, bad keys),
/// `--format` (json, a template, a table template) and `--label` on
/// create, kept and shown by inspect.
#[test]
fn ls_filters_and_formats_like_docker() {
    let Some(w) = World::new() else {
        return;
    };
    w.weft_ok(&[
        "network",
        "create",
        "--subnet",
        "10.233.5.0/24",
        "--label",
        "env=prod",
        "--label",
        "tier",
        "front",
    ]);
    w.weft_ok(&["network", "create", "--subnet", "10.233.6.0/24", "back"]);
    w.weft_ok(&["network", "create", "--driver", "null", "nothing"]);
    let labels = &w.inspect("front")["labels"];
    assert_eq!(labels, &serde_json::json!({"env": "prod", "tier": ""}));
    let lines = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["network", "ls"];
        all.extend_from_slice(args);
        let mut v: Vec<String> = w.weft_ok(&all).lines().map(str::to_owned).collect();
        v.sort();
        v
    };
    assert_eq!(lines(&["-q"]), ["back", "front", "nothing"]);
    assert_eq!(
        lines(&["-q", "--filter", "driver=bridge"]),
        ["back", "front"]
    );
    assert_eq!(lines(&["-q", "--filter", "label=env=prod"]), ["front"]);
    assert_eq!(lines(&["-q", "--filter", "label=tier"]), ["front"]);
    assert_eq!(
        lines(&["-q", "-f", "name=ack", "-f", "name=oth"]),
        ["back", "nothing"]
    );
    assert_eq!(
        lines(&["-q", "--filter", "scope=cluster"]),
        Vec::<String>::new()
    );
    assert_eq!(
        lines(&["--format", "{{.Name}}:{{.Driver}}:{{.Label \"env\"}}"]),
        ["back:bridge:", "front:bridge:prod", "nothing:null:"]
    );
    let table = w.weft_ok(&[
        "network",
        "ls",
        "--filter",
        "name=front",
        "--format",
        "table {{.Name}}\\t{{.Subnet}}",
    ]);
    assert_eq!(table, "NAME    SUBNET\nfront   10.233.5.0/24\n");
    let json: serde_json::Value =
        serde_json::from_str(&w.weft_ok(&["network", "ls", "--format", "json"])).unwrap();
    assert_eq!(json.as_array().map(Vec::len), Some(3), "{json:#}");
    let err = w.weft_err(&["network", "ls", "--filter", "colour=red"]);
    assert!(err.contains("unknown key \"colour\""), "{err}");
    let err = w.weft_err(&["network", "ls", "--format", "{{.Colour}}"]);
    assert!(err.contains("unknown field {{.Colour}}"), "{err}");
    let err = w.weft_err(&["network", "create", "--label", "=x", "bad"]);
    assert!(err.contains("the key is empty"), "{err}");
}

/// `network prune` removes the networks without endpoints, never the
/// default `bridge`, and only with `-f` or a yes.
#[test]
fn prune_removes_unused_networks_and_exists_answers_by_exit_code() {
    let Some(mut w) = World::with_default_network() else {
        return;
    };
    w.weft_ok(&["network", "create", "--subnet", "10.233.7.0/24", "used"]);
    w.weft_ok(&["network", "create", "--subnet", "10.233.8.0/24", "unused"]);
    w.weft_ok(&[
        "network",
        "create",
        "--subnet",
        "10.233.9.0/24",
        "--label",
        "keep",
        "kept",
    ]);
    let a = w.sandbox("a");
    w.weft_ok(&["network", "connect", "used", &a]);
    // No answer on stdin (EOF): nothing goes.
    let out = w.weft(&["network", "prune"]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(stderr(&out).contains("nothing removed"), "{}", show(&out));
    assert_eq!(w.network_names().len(), 4);
    let printed = w.weft_ok(&["network", "prune", "-f", "--filter", "label!=keep"]);
    assert_eq!(printed, "Deleted Networks:\nunused\n");
    assert_eq!(w.network_names(), ["bridge", "kept", "used"]);
    for (name, code) in [("used", 0), ("unused", 1), ("bridge", 0)] {
        let out = w.weft(&["network", "exists", name]);
        assert_eq!(out.status.code(), Some(code), "{name}: {}", show(&out));
        assert!(
            out.stdout.is_empty() && out.stderr.is_empty(),
            "{}",
            show(&out)
        );
    }
}

/// `weft version` shows both versions (and fails, after the client's,
/// without a daemon); `weft info` shows the state directory and counts
/// that match what the test made.
#[test]
fn version_and_info_describe_client_and_daemon() {
    let Some(mut w) = World::new() else {
        return;
    };
    let version = env!("CARGO_PKG_VERSION");
    let out = w.weft_ok(&["version"]);
    assert!(
        out.starts_with(&format!(
            "Client:\n Version:  {version}\nServer:\n Version:  {version}\n"
        )),
        "{out}"
    );
    w.weft_ok(&["network", "create", "--subnet", "10.233.10.0/24", "i1"]);
    w.weft_ok(&["network", "create", "--subnet", "10.233.11.0/24", "i2"]);
    let a = w.sandbox("a");
    w.weft_ok(&["network", "connect", "i1", &a]);
    w.weft_ok(&["network", "connect", "i2", &a]);
    let text = w.weft_ok(&["info"]);
    for line in [
        format!("Server Version: {version}"),
        format!("State Dir: {}", w.state_dir.display()),
        format!("Socket: {}", w.socket.display()),
        "DNS Upstreams: 127.0.0.1:9".to_owned(),
        "Networks: 2".to_owned(),
        "Endpoints: 2".to_owned(),
        "Sandboxes: 1".to_owned(),
        "Cluster: none".to_owned(),
        // HOST keeps a new namespace's ping_group_range ("1 0"); the daemon
        // is root.
        "Outbound ICMP Echo: raw socket (CAP_NET_RAW)".to_owned(),
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(&line)),
            "no {line:?} in:\n{text}"
        );
    }
    let json: serde_json::Value = serde_json::from_str(&w.weft_ok(&["info", "--format", "json"]))
        .expect("info --format json");
    assert_eq!(json["endpoints"], 2, "{json:#}");
    assert!(json["uptime_seconds"].as_u64().is_some(), "{json:#}");
    w.kill_daemon();
    let out = w.weft(&["version"]);
    assert!(!out.status.success(), "{}", show(&out));
    assert!(stdout(&out).starts_with("Client:"), "{}", show(&out));
    assert!(
        stderr(&out).contains("is `weft daemon` running?"),
        "{}",
        show(&out)
    );
}

/// `weft ps` lists a running `weft run` sandbox (pid, name, network,
/// address, command) and forgets it when the command ends.
#[test]
fn ps_lists_the_sandboxes_of_weft_run() {
    let Some(w) = World::new() else {
        return;
    };
    w.weft_ok(&["network", "create", "--subnet", "10.233.12.0/24", "p1"]);
    let go = w.dir.join("go");
    let script = format!("until [ -e {} ]; do sleep 0.1; done", go.display());
    let log = w.dir.join("run.err");
    let mut command = std::process::Command::new("ip");
    command
        .args(["netns", "exec", &w.host, "timeout", "-s", "KILL", "60"])
        .arg(common::WEFT)
        .args(["run", "--name", "job", "--network", "p1", "-p", "8090:80"])
        .args(["sh", "-c", &script])
        .env("WEFT_SOCKET", &w.socket);
    let mut child = common::spawn_background(&mut command, None, &log);
    /// Kills the background `weft run` whatever happens.
    struct Group(std::process::Child);
    impl Drop for Group {
        fn drop(&mut self) {
            common::kill_group(&mut self.0);
        }
    }
    let ps = |w: &World| -> serde_json::Value {
        serde_json::from_str(&w.weft_ok(&["ps", "--format", "json"])).expect("ps json")
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let listed = loop {
        let list = ps(&w);
        if list.as_array().is_some_and(|a| !a.is_empty()) {
            break list;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "weft run ended early ({status}): {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        assert!(
            std::time::Instant::now() < deadline,
            "weft run never showed in ps"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let child_pid = child.id();
    let guard = Group(child);
    let s = &listed[0];
    assert_eq!(s["name"], "job", "{listed:#}");
    assert_eq!(s["networks"], serde_json::json!(["p1"]), "{listed:#}");
    assert_eq!(
        s["addresses"],
        serde_json::json!(["10.233.12.2"]),
        "{listed:#}"
    );
    assert_eq!(
        s["ports"],
        serde_json::json!(["80/tcp -> 0.0.0.0:8090"]),
        "{listed:#}"
    );
    assert_eq!(s["command"], format!("sh -c {script}"), "{listed:#}");
    let pid: u32 = s["pid"]
        .as_str()
        .and_then(|p| p.parse().ok())
        .expect("a pid");
    assert_ne!(pid, child_pid, "the sandbox's pid, not the client's");
    let table = w.weft_ok(&["ps"]);
    assert!(
        table.starts_with("PID ") && table.contains(" job "),
        "{table}"
    );
    assert_eq!(w.weft_ok(&["ps", "-q"]).trim(), pid.to_string());
    std::fs::write(&go, "").expect("writing the go file");
    let mut guard = guard;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        if let Ok(Some(status)) = guard.0.try_wait() {
            assert!(status.success(), "weft run: {status}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "weft run did not end");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(ps(&w), serde_json::json!([]));
}
