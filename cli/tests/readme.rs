//! README.md's tour, run as the README gives it: every fenced block whose
//! info string is `sh tour`, in order, as one `bash -euo pipefail` script,
//! so the README's commands can never drift from what weft does.
//!
//! Isolation (the tour uses plain names like `a`, `b` and `n1`, and the
//! paths root's weft uses): the whole run is one process tree under
//! `unshare --mount --propagation private`, with tmpfs over `/run/netns`
//! and `/etc/netns`, so its `ip netns add a` and weft's
//! `/etc/netns/a/resolv.conf` are private to it; the daemon and the script
//! run in a network namespace made there ("tourhost", entered with
//! `nsenter --net`, which keeps the private mounts), the daemon with an
//! explicit `--dns-upstream` on that namespace's closed loopback port and
//! its own `WEFT_SOCKET` and state directory, so nothing reaches the
//! machine's network or files. `weft` is put on `PATH` as the README's
//! install would. When the tree is killed (always, whole process group,
//! also on failure), the mount namespace and with it every namespace and
//! TAP of the tour goes away.
//!
//! Needs root and the tour's tools (`ip`, `ping`, `dig`, `socat`, `curl`,
//! `unshare`, `nsenter`); skipped otherwise, a failure under `CI=true`.

#![allow(clippy::disallowed_methods)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{has_tool, require, WEFT};

/// Ceiling on the whole tour.
const TOUR_LIFETIME: &str = "180";

/// The `sh tour` blocks of a markdown text, in order.
fn tour_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match &mut current {
            None if line.trim_end() == "```sh tour" => current = Some(String::new()),
            None => {}
            Some(_) if line.trim_end() == "```" => blocks.extend(current.take()),
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
        }
    }
    assert!(current.is_none(), "an unclosed ```sh tour block");
    blocks
}

#[test]
fn readme_keeps_the_main_commands() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .expect("README.md");
    for command in [
        "cargo run --release -p weft -- daemon",
        "cargo test --workspace",
        "cargo install --path cli",
    ] {
        assert!(
            readme.contains(&format!("\n{command}")),
            "README.md lost {command:?}"
        );
    }
    let blocks = tour_blocks(&readme);
    assert!(blocks.len() >= 4, "the tour has {} blocks", blocks.len());
    let prereq = readme
        .find("## Prerequisites")
        .expect("a Prerequisites section");
    let quick = readme
        .find("## Quick start")
        .expect("a Quick start section");
    assert!(prereq < quick, "prerequisites come first");
}

#[test]
fn readme_tour_runs_top_to_bottom() {
    if !require(
        nix::unistd::geteuid().is_root(),
        "needs root (namespaces, mounts)",
    ) {
        return;
    }
    for (tool, arg, package) in [
        ("ip", "-V", "iproute2"),
        ("ping", "-V", "iputils-ping"),
        ("dig", "-v", "bind9-dnsutils"),
        ("socat", "-V", "socat"),
        ("curl", "--version", "curl"),
        ("unshare", "--help", "util-linux"),
        ("nsenter", "--help", "util-linux"),
    ] {
        if !require(has_tool(tool, arg), &format!("needs {tool} ({package})")) {
            return;
        }
    }
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .expect("README.md");
    let dir = std::env::temp_dir().join(common::unique_name_with("wtt", "tour"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("bin")).expect("temp dir");
    /// Removes the directory at the end.
    struct Dir(std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            if std::env::var_os("WEFT_TEST_KEEP").is_none() {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }
    let _cleanup = Dir(dir.clone());
    std::os::unix::fs::symlink(WEFT, dir.join("bin/weft")).expect("weft on PATH");
    let tour = format!("set -x\n{}", tour_blocks(&readme).join(""));
    std::fs::write(dir.join("tour.sh"), &tour).expect("tour.sh");
    let driver = r#"
set -euo pipefail
mkdir -p /run/netns /etc/netns
mount -t tmpfs -o mode=0755 weft-tour /run/netns
mount -t tmpfs -o mode=0755 weft-tour /etc/netns
ip netns add tourhost
in_host() { nsenter --net=/run/netns/tourhost "$@"; }
in_host ip link set lo up
export PATH="$DIR/bin:$PATH" WEFT_SOCKET="$DIR/weft.sock"
in_host weft daemon --state-dir "$DIR/state" --dns-upstream 127.0.0.1:9 2>"$DIR/daemon.log" &
for _ in $(seq 100); do
  in_host weft network ls >/dev/null 2>&1 && break
  sleep 0.1
done
in_host bash -euo pipefail "$DIR/tour.sh"
echo "TOUR DONE"
"#;
    std::fs::write(dir.join("driver.sh"), driver).expect("driver.sh");
    let out = dir.join("tour.out");
    let err = dir.join("tour.err");
    let mut cmd = Command::new("timeout");
    cmd.args(["-s", "KILL", TOUR_LIFETIME])
        .args(["unshare", "--mount", "--propagation", "private", "bash"])
        .arg(dir.join("driver.sh"))
        .env("DIR", &dir)
        .env_remove("WEFT_LOG");
    let child = common::spawn_background(&mut cmd, Some(&out), &err);
    /// Kills the whole tour (daemon, servers, sandboxes' processes).
    struct Group(std::process::Child);
    impl Drop for Group {
        fn drop(&mut self) {
            common::kill_group(&mut self.0);
        }
    }
    let mut tour_run = Group(child);
    let deadline = Instant::now() + Duration::from_secs(170);
    let status = loop {
        if let Ok(Some(status)) = tour_run.0.try_wait() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // The background servers, the daemon and the last `weft run` outlive
    // the script: they go now, and with them the private namespaces.
    drop(tour_run);
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let (stdout, stderr) = (read(&out), read(&err));
    let report = format!(
        "status {status:?}\n--- stdout ---\n{stdout}\n--- stderr (set -x) ---\n{stderr}\n--- daemon log ---\n{}",
        read(&dir.join("daemon.log"))
    );
    assert!(
        status.is_some_and(|s| s.success()) && stdout.contains("TOUR DONE"),
        "the tour stopped:\n{report}"
    );
    for expected in [
        "n1: /var/run/netns/a eth0 name a 10.231.0.2/24 mac 02:42:0a:e7:00:02",
        "10.231.0.4      web",
        "hello 10.232.0.1",
        "scratch exists",
        "Deleted Networks:",
    ] {
        assert!(
            stdout.contains(expected),
            "no {expected:?} in the tour's output:\n{report}"
        );
    }
}
