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
