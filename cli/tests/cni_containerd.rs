//! `weft-cni` under containerd's `ctr run --cni` (Debian's containerd
//! 1.6): ctr itself calls the plugin (ADD after the task starts, DEL when
//! a `--rm` container exits), with `CNI_NETNS=/proc/PID/ns/net`.
//!
//! ctr reads its CNI configuration from the fixed paths `/etc/cni/net.d`
//! and `/opt/cni/bin`. The test never writes there: each ctr runs in a
//! private mount namespace (`unshare -m`) where the test's own directories
//! are bind-mounted over those paths (and a tmpfs over `/opt`), so the
//! machine's files stay untouched.
//!
//! containerd runs in the test's namespace HOST with its root, state and
//! socket in the test's directory and its CRI plugin off; containers use
//! `--rootfs` (a busybox-static tree), so no image or snapshotter is
//! involved. The guard deletes every task and container, stops
//! containerd and kills its shims (found by their `-address`); `World`
//! then kills weft's daemon and deletes HOST. Needs root, containerd,
//! ctr, runc, busybox-static, nsenter and unshare; skipped otherwise
//! (fails under `CI=true`).
//!
//! Subnet: 10.238.91.0/24.

#![allow(clippy::disallowed_methods)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{has_tool, require, run, show, stdout, World};
use serde_json::Value;

const CNI: &str = env!("CARGO_BIN_EXE_weft-cni");
const NETWORK: &str = "wctr";
const GATEWAY: &str = "10.238.91.1";
/// Seconds one ctr command may take.
const CTR_TIMEOUT: &str = "60";

/// containerd for one test, and what it made.
struct Containerd {
    dir: PathBuf,
    host: String,
    daemon: Option<Child>,
}

impl Containerd {
    fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    /// Write the config, the rootfs, the CNI directories; start
    /// containerd in HOST and wait for its socket.
    fn start(w: &World) -> Containerd {
        let dir = w.dir.join("containerd");
        for sub in ["cni-bin", "cni-conf"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap_or_else(|e| panic!("{sub}: {e}"));
        }
        common::busybox_rootfs(&dir.join("rootfs"));
        std::os::unix::fs::symlink(CNI, dir.join("cni-bin/weft-cni")).expect("plugin link");
        std::os::unix::fs::symlink("/usr/lib/cni/loopback", dir.join("cni-bin/loopback"))
            .expect("loopback link");
        let conflist = serde_json::json!({"cniVersion": "1.0.0", "name": NETWORK, "plugins": [
            {"type": "weft-cni", "subnet": "10.238.91.0/24", "socket": w.socket}
        ]});
        std::fs::write(dir.join("cni-conf/10-weft.conflist"), conflist.to_string())
            .expect("conflist");
        let config = format!(
            "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{0}/containerd.sock\"\n",
            dir.display()
        );
        std::fs::write(dir.join("config.toml"), config).expect("config.toml");
        let mut c = Containerd {
            dir: dir.clone(),
            host: w.host.clone(),
            daemon: None,
        };
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/var/run/netns/{}", w.host))
            .args(["timeout", "-s", "KILL", "600", "containerd", "-c"])
            .arg(dir.join("config.toml"));
        c.daemon = Some(common::spawn_background(
            &mut cmd,
            None,
            &dir.join("containerd.log"),
        ));
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if c.socket().exists() && c.ctr(&["version"]).status.success() {
                return c;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("containerd did not start:\n{}", c.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// `ctr ARGS` in HOST, in a mount namespace of its own where the
    /// test's CNI directories are `/etc/cni/net.d` and `/opt/cni/bin`.
    fn command(&self, args: &[&str]) -> Command {
        let mounts = format!(
            "mount -t tmpfs tmpfs /opt && mkdir -p /opt/cni/bin /etc/cni/net.d && \
             mount --bind {0}/cni-bin /opt/cni/bin && \
             mount --bind {0}/cni-conf /etc/cni/net.d && exec \"$@\"",
            self.dir.display()
        );
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/var/run/netns/{}", self.host))
            .args(["unshare", "-m", "--propagation", "private", "sh", "-c"])
            .arg(mounts)
            .args(["sh", "timeout", "-k", "5", CTR_TIMEOUT, "ctr", "-a"])
            .arg(self.socket())
            .args(args);
        cmd
    }

    fn ctr(&self, args: &[&str]) -> Output {
        run(&mut self.command(args))
    }

    /// `ctr run --cni FLAGS --rootfs ROOTFS ID CMD`.
    fn run_args<'a>(
        &self,
        rootfs: &'a str,
        flags: &[&'a str],
        id: &'a str,
        cmd: &[&'a str],
    ) -> Vec<&'a str> {
        // `--rootfs` is a switch: the rootfs is the first argument after
        // the flags, then the id.
        let mut args = vec!["run", "--cni"];
        args.extend_from_slice(flags);
        args.extend_from_slice(&["--rootfs", rootfs, id]);
        args.extend_from_slice(cmd);
        args
    }

    fn rootfs(&self) -> String {
        self.dir.join("rootfs").to_string_lossy().into_owned()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            let tasks = self.ctr(&["task", "ls", "-q"]);
            for id in stdout(&tasks).lines().filter(|l| !l.is_empty()) {
                let _ = self.ctr(&["task", "kill", "-s", "KILL", id]);
                let _ = self.ctr(&["task", "rm", "-f", id]);
            }
            let containers = self.ctr(&["container", "ls", "-q"]);
            for id in stdout(&containers).lines().filter(|l| !l.is_empty()) {
                let _ = self.ctr(&["container", "rm", id]);
            }
            common::kill_group(&mut daemon);
        }
        // Shims outlive containerd: kill ours, named by our socket.
        let _ = Command::new("pkill")
            .args(["-KILL", "-f"])
            .arg(format!("containerd-shim.*{}", self.socket().display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Weft's endpoints on the network (none before the first ADD made it):
/// (container id label, address, sandbox).
fn attachments(w: &World) -> Vec<(String, String, String)> {
    let out = w.weft(&["network", "inspect", NETWORK]);
    if !out.status.success() {
        return Vec::new();
    }
    let network = common::one_network(&stdout(&out));
    network["endpoints"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|e: &Value| {
            let label = |k: &str| e["labels"][k].as_str().unwrap_or_default().to_owned();
            let address = World::address(e, false);
            (
                label("weft.cni.container_id"),
                address,
                e["sandbox"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn has_requirements() -> bool {
    require(nix::unistd::geteuid().is_root(), "needs root")
        && require(has_tool("containerd", "--version"), "needs containerd")
        && require(has_tool("ctr", "--version"), "needs ctr (containerd)")
        && require(has_tool("runc", "--version"), "needs runc")
        && require(
            has_tool("containerd-shim-runc-v2", "-v"),
            "needs containerd-shim-runc-v2 (containerd)",
        )
        && require(Path::new("/bin/busybox").exists(), "needs busybox-static")
        && require(
            Path::new("/usr/lib/cni/loopback").exists(),
            "needs containernetworking-plugins",
        )
        && require(
            has_tool("unshare", "--version"),
            "needs unshare (util-linux)",
        )
        && require(
            has_tool("nsenter", "--version"),
            "needs nsenter (util-linux)",
        )
}

/// Two `ctr run --cni` containers on a weft network: the second pings the
/// first, resolves its name through weft's DNS and sends it a line over
/// TCP; each `--rm` exit leaves nothing in weft. A detached container
/// whose task is deleted gets no DEL from ctr; when its id is used again,
/// weft-cni's ADD removes the stale attachment.
#[test]
fn ctr_run_cni_containers_talk_and_leave_nothing() {
    if !has_requirements() {
        return;
    }
    let Some(w) = World::new() else {
        return;
    };
    let c = Containerd::start(&w);
    let rootfs = c.rootfs();
    // ctra: a TCP server that prints one connection's line and exits.
    let log = c.dir.join("ctra.out");
    let mut ctra = common::spawn_background(
        &mut c.command(&c.run_args(&rootfs, &["--rm"], "ctra", &["/bin/nc", "-l", "-p", "7000"])),
        Some(&log),
        &c.dir.join("ctra.err"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let ip = loop {
        if let Some((_, ip, _)) = attachments(&w).into_iter().find(|a| a.0 == "default-ctra") {
            break ip;
        }
        assert!(
            Instant::now() < deadline,
            "ctra never attached:\n{}\n{}\n{}",
            std::fs::read_to_string(c.dir.join("ctra.err")).unwrap_or_default(),
            w.daemon_log(),
            c.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(ip.starts_with("10.238.91."), "{ip}");
    let script = format!(
        "ping -c1 -W2 {ip} && nslookup default-ctra {GATEWAY} && echo hi-from-ctrb | nc {ip} 7000"
    );
    let out = c.ctr(&c.run_args(&rootfs, &["--rm"], "ctrb", &["/bin/sh", "-c", &script]));
    let text = stdout(&out);
    assert!(
        out.status.success(),
        "ctrb: {}\n{}",
        show(&out),
        w.daemon_log()
    );
    assert!(
        text.contains("1 packets received"),
        "ctrb pings ctra: {text}"
    );
    assert!(
        text.contains(&format!("Address: {ip}")),
        "ctra's name resolves through weft: {text}"
    );
    // ctra got the line and exited; ctr's DEL followed.
    let deadline = Instant::now() + Duration::from_secs(30);
    while ctra.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    common::kill_group(&mut ctra);
    let got = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(got.contains("hi-from-ctrb"), "ctra received {got:?}");
    assert!(
        attachments(&w).is_empty(),
        "--rm left {:?} in weft",
        attachments(&w)
    );

    // Detached, then deleted without a DEL (ctr's way): stale in weft.
    let out = c.ctr(&c.run_args(&rootfs, &["-d"], "ctrc", &["/bin/sleep", "300"]));
    assert!(out.status.success(), "ctr run -d: {}", show(&out));
    let stale = attachments(&w);
    assert_eq!(stale.len(), 1, "{stale:?}");
    for args in [
        &["task", "kill", "-s", "KILL", "ctrc"][..],
        &["task", "rm", "-f", "ctrc"],
        &["container", "rm", "ctrc"],
    ] {
        let out = c.ctr(args);
        assert!(out.status.success(), "ctr {args:?}: {}", show(&out));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&stale[0].2).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(attachments(&w).len(), 1, "ctr sent no DEL: still there");
    // The id again: ADD removes the stale attachment, DEL the new one.
    let out = c.ctr(&c.run_args(&rootfs, &["--rm"], "ctrc", &["/bin/true"]));
    assert!(
        out.status.success(),
        "ctrc again: {}\n{}",
        show(&out),
        w.daemon_log()
    );
    assert!(
        attachments(&w).is_empty(),
        "the stale attachment stayed: {:?}",
        attachments(&w)
    );
}
