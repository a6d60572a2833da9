//! Rootless end to end: the whole of weft as an unprivileged user the test
//! creates. The daemon runs inside `unshare -Urn` (its own user and network
//! namespaces), so nothing it does can reach the host's network; two
//! `weft run` sandboxes of that user ping each other by name through it.
//! Two more daemons of the user, each in a host namespace root made on an
//! underlay bridge of the test, carry an overlay network between hosts.
//!
//! Needs root to create the user and to open `/dev/net/tun` to it: some
//! hosts ship the device 0600, so the test sets 0666 for its run and puts
//! the old mode back in `Drop`, even when an assertion fails.

#![allow(clippy::disallowed_methods)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{has_tool, require, show, stderr, stdout, CMD_TIMEOUT, WEFT};

const TUN: &str = "/dev/net/tun";

/// The tests of this file change the mode of one device: one at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The user, its files, the daemon, and the tun mode to restore.
struct RootlessWorld {
    _turn: std::sync::MutexGuard<'static, ()>,
    user: String,
    dir: PathBuf,
    daemon: Option<Child>,
    tun_mode: Option<u32>,
}

impl RootlessWorld {
    fn new() -> Option<RootlessWorld> {
        if !require(
            nix::unistd::geteuid().is_root(),
            "needs root to create a test user",
        ) {
            return None;
        }
        for (tool, arg, package) in [
            ("useradd", "--help", "passwd"),
            ("setpriv", "--help", "util-linux"),
            ("unshare", "--help", "util-linux"),
            ("ping", "-V", "iputils-ping"),
        ] {
            if !require(
                has_tool(tool, arg),
                &format!("{tool} missing (Debian package {package})"),
            ) {
                return None;
            }
        }
        let turn = ONE_AT_A_TIME
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let id = std::process::id();
        let user = format!("wtr{}", id % 100_000);
        let dir = std::env::temp_dir().join(format!("weft-rootless-{id}"));
        let mut world = RootlessWorld {
            _turn: turn,
            user: user.clone(),
            dir: dir.clone(),
            daemon: None,
            tun_mode: None,
        };
        run_ok(Command::new("useradd").args([
            "--system",
            "--no-create-home",
            "--shell",
            "/bin/sh",
            &user,
        ]));
        std::fs::create_dir_all(&dir).expect("temp dir");
        // The build tree may sit under a directory the user cannot enter:
        // give it its own copy of the binary.
        std::fs::copy(WEFT, dir.join("weft")).expect("copy weft");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).expect("chmod dir");
        std::fs::set_permissions(dir.join("weft"), std::fs::Permissions::from_mode(0o755))
            .expect("chmod weft");
        let mode = std::fs::metadata(TUN)
            .expect("/dev/net/tun exists")
            .permissions()
            .mode()
            & 0o7777;
        world.tun_mode = Some(mode);
        std::fs::set_permissions(TUN, std::fs::Permissions::from_mode(0o666)).expect("chmod tun");
        Some(world)
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("weft.sock")
    }

    /// `setpriv` to the test user, with a fresh environment.
    fn as_user(&self) -> Command {
        let mut cmd = Command::new("timeout");
        cmd.args([
            "-k",
            "5",
            CMD_TIMEOUT,
            "setpriv",
            "--reuid",
            &self.user,
            "--regid",
            &self.user,
            "--clear-groups",
        ]);
        cmd.arg("env").arg("-i");
        cmd.arg(format!("HOME={}", self.dir.display()));
        cmd.arg(format!("WEFT_SOCKET={}", self.socket().display()));
        cmd.arg("PATH=/usr/sbin:/usr/bin:/sbin:/bin");
        cmd
    }

    fn weft(&self, args: &[&str]) -> Output {
        let mut cmd = self.as_user();
        cmd.arg(self.dir.join("weft")).args(args);
        run(&mut cmd)
    }

    fn start_daemon(&mut self) {
        let log = std::fs::File::create(self.dir.join("daemon.log")).expect("log file");
        let mut cmd = Command::new("setpriv");
        cmd.args([
            "--reuid",
            &self.user,
            "--regid",
            &self.user,
            "--clear-groups",
        ]);
        cmd.args(["env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"]);
        cmd.arg(format!("HOME={}", self.dir.display()));
        // Its own user and network namespaces: nothing can reach the host's
        // network; its only upstream resolver is a closed loopback port.
        cmd.args(["timeout", "-s", "KILL", "300", "unshare", "-Urn"]);
        cmd.arg(self.dir.join("weft"));
        cmd.arg("--socket").arg(self.socket());
        cmd.args(["daemon", "--dns-upstream", "127.0.0.1:9"]);
        cmd.arg("--state-dir").arg(self.dir.join("state"));
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        self.daemon = Some(cmd.spawn().expect("start the daemon"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.weft(&["network", "ls"]).status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "the rootless daemon did not come up:\n{}",
            self.daemon_log()
        );
    }

    fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    /// The uid that owns a process.
    fn owner_of(pid: u32) -> Option<u32> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with("Uid:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }
}

impl Drop for RootlessWorld {
    fn drop(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            // Everything the user runs goes with it (unshare, weft, helpers).
            let _ = Command::new("pkill")
                .args(["-KILL", "-u", &self.user])
                .status();
            let _ = daemon.kill();
            let _ = daemon.wait();
        }
        if let Some(mode) = self.tun_mode {
            let _ = std::fs::set_permissions(TUN, std::fs::Permissions::from_mode(mode));
        }
        // SIGKILL is asynchronous and userdel refuses a user that still
        // has processes (the next test of this binary, same user name,
        // would then find it): wait, bounded, until they are gone.
        let deadline = Instant::now() + Duration::from_secs(5);
        for _ in 0..100 {
            let _ = Command::new("pkill")
                .args(["-KILL", "-u", &self.user])
                .status();
            let deleted = Command::new("userdel")
                .arg(&self.user)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                // 6: no such user (already gone, or never made).
                .is_ok_and(|s| s.success() || s.code() == Some(6));
            if deleted || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn run_ok(cmd: &mut Command) -> Output {
    let out = run(cmd);
    assert!(out.status.success(), "{cmd:?} failed:\n{}", show(&out));
    out
}

fn uid_of(user: &str) -> u32 {
    let out = run_ok(Command::new("id").args(["-u", user]));
    stdout(&out).trim().parse().expect("a uid")
}

#[test]
fn two_rootless_sandboxes_ping_each_other_by_name() {
    let Some(mut w) = RootlessWorld::new() else {
        return;
    };
    w.start_daemon();
    // The daemon (under setpriv/unshare) belongs to the user, not root.
    let uid = uid_of(&w.user);
    assert_ne!(uid, 0);
    let weft_pids = run(Command::new("pgrep").args(["-u", &w.user, "-f", "weft.*daemon"]));
    let pids: Vec<u32> = stdout(&weft_pids)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    assert!(
        !pids.is_empty(),
        "no daemon process of the user; log:\n{}",
        w.daemon_log()
    );
    for pid in &pids {
        assert_eq!(
            RootlessWorld::owner_of(*pid),
            Some(uid),
            "daemon {pid} not owned by the user"
        );
    }

    // A long-lived sandbox named srv, and a second that finds it by name.
    let mut server = w.as_user();
    server
        .arg(w.dir.join("weft"))
        .args(["run", "--name", "srv", "--", "sleep", "8"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut server = server.spawn().expect("start srv");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut answered = None;
    while Instant::now() < deadline {
        let out = w.weft(&[
            "run",
            "--name",
            "cli",
            "--",
            "sh",
            "-c",
            "id -u; getent hosts srv && ping -c 2 -W 2 srv",
        ]);
        if out.status.success() {
            answered = Some(out);
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = server.kill();
    let _ = server.wait();
    let out = answered.unwrap_or_else(|| {
        panic!(
            "cli never reached srv by name; daemon log:\n{}",
            w.daemon_log()
        )
    });
    let text = stdout(&out);
    assert!(
        text.starts_with("0\n"),
        "the command runs as root of its own user namespace:\n{text}"
    );
    assert!(text.contains(" srv"), "srv resolved:\n{text}");
    assert!(text.contains("2 received"), "both pings answered:\n{text}");
    // Exit codes come back, rootless too.
    assert_eq!(
        w.weft(&["run", "--", "sh", "-c", "exit 3"]).status.code(),
        Some(3)
    );

    // The user captures their own network (issue 18): two frames of a
    // sandbox's name lookup, into a file of theirs.
    let file = w.dir.join("rootless.pcapng");
    let mut capture = w.as_user();
    capture
        .arg(w.dir.join("weft"))
        .args(["capture", "bridge", "-c", "2", "--duration", "20", "-w"])
        .arg(&file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let capture = capture.spawn().expect("start weft capture");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::metadata(&file).map_or(0, |m| m.len()) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    w.weft(&[
        "run",
        "--",
        "sh",
        "-c",
        "getent hosts srv; getent hosts srv",
    ]);
    let out = capture.wait_with_output().expect("weft capture");
    assert!(
        out.status.success() && stderr(&out).contains("2 frames captured, 0 dropped"),
        "{}\n{}",
        show(&out),
        w.daemon_log()
    );
}

#[test]
fn a_closed_tun_device_is_a_clear_error() {
    let Some(mut w) = RootlessWorld::new() else {
        return;
    };
    // Put the host's mode back, or 0600 if it already was open: the user
    // cannot open it either way.
    std::fs::set_permissions(TUN, std::fs::Permissions::from_mode(0o600)).expect("chmod tun");
    w.start_daemon();
    let out = w.weft(&["run", "--", "true"]);
    assert_eq!(out.status.code(), Some(125), "{}", show(&out));
    let text = common::stderr(&out);
    assert!(
        text.contains("/dev/net/tun"),
        "the error names the device:\n{text}"
    );
    assert!(
        text.contains("chmod 0666"),
        "and says how to fix it:\n{text}"
    );
}

/// A port published by a rootless `weft run` reaches the server inside it:
/// the daemon's own network namespace (made by `unshare -Urn`) is where
/// the port listens, so the client connects from there.
#[test]
fn a_rootless_published_port_reaches_the_server_inside() {
    let Some(mut w) = RootlessWorld::new() else {
        return;
    };
    w.start_daemon();
    let pids = run(Command::new("pgrep").args(["-u", &w.user, "-f", "weft.*daemon"]));
    let daemon_pid: u32 = stdout(&pids)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .max()
        .unwrap_or_else(|| panic!("no daemon process; log:\n{}", w.daemon_log()));
    // `unshare -n` leaves the new namespace's loopback down; the client
    // below connects over it.
    run_ok(Command::new("nsenter").args([
        "-t",
        &daemon_pid.to_string(),
        "-n",
        "ip",
        "link",
        "set",
        "lo",
        "up",
    ]));
    let mut server = w.as_user();
    server
        .arg(w.dir.join("weft"))
        .args([
            "run",
            "--name",
            "web",
            "-p",
            "8080:80",
            "--",
            "timeout",
            "20",
            "socat",
            "TCP-LISTEN:80,fork,reuseaddr",
            "SYSTEM:echo hello-from-web",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut server = server.spawn().expect("start web");
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut reply = String::new();
    while Instant::now() < deadline {
        let out = run(Command::new("timeout").args([
            "5",
            "nsenter",
            "-t",
            &daemon_pid.to_string(),
            "-n",
            "socat",
            "-T",
            "3",
            "-",
            "TCP4:127.0.0.1:8080",
        ]));
        reply = stdout(&out);
        if reply.contains("hello-from-web") {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let listening =
        run(Command::new("nsenter").args(["-t", &daemon_pid.to_string(), "-n", "ss", "-ltnp"]));
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        reply.contains("hello-from-web"),
        "the published port did not reach the server: {reply:?}\nlistening in the daemon's namespace:\n{}\n{}",
        show(&listening),
        w.daemon_log()
    );
}

/// Namespaces made by root for a rootless overlay: deleted on drop, after
/// the user's processes are gone.
struct Underlay {
    namespaces: Vec<String>,
}

impl Drop for Underlay {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            common::delete_namespace(ns);
        }
    }
}

/// Overlay networks with rootless daemons: two hosts (network namespaces
/// root made, joined by an underlay bridge of the test's own) each run a
/// daemon as the test user, with no capability; a network created on one
/// appears on the other, and a `weft run` sandbox on the second pings one
/// on the first by name across the VXLAN tunnel.
#[test]
fn rootless_daemons_carry_an_overlay_across_hosts() {
    let Some(mut w) = RootlessWorld::new() else {
        return;
    };
    let id = std::process::id();
    let (under, h1, h2) = (
        format!("wtru-{id}"),
        format!("wtr1-{id}"),
        format!("wtr2-{id}"),
    );
    let mut underlay = Underlay {
        namespaces: Vec::new(),
    };
    for ns in [&under, &h1, &h2] {
        run_ok(Command::new("ip").args(["netns", "add", ns]));
        underlay.namespaces.push(ns.clone());
        run_ok(Command::new("ip").args(["-n", ns, "link", "set", "lo", "up"]));
    }
    run_ok(Command::new("ip").args(["-n", &under, "link", "add", "br0", "type", "bridge"]));
    run_ok(Command::new("ip").args(["-n", &under, "link", "set", "br0", "up"]));
    for (i, host) in [&h1, &h2].into_iter().enumerate() {
        let port = format!("p{i}");
        run_ok(Command::new("ip").args([
            "-n", host, "link", "add", "u0", "type", "veth", "peer", "name", &port, "netns", &under,
        ]));
        run_ok(
            Command::new("ip").args(["-n", &under, "link", "set", &port, "master", "br0", "up"]),
        );
        run_ok(Command::new("ip").args([
            "-n",
            host,
            "addr",
            "add",
            &format!("192.0.2.{}/24", i + 1),
            "dev",
            "u0",
        ]));
        run_ok(Command::new("ip").args(["-n", host, "link", "set", "u0", "up"]));
    }
    // A daemon per host, as the user, inside the host's namespace.
    let mut daemons = Vec::new();
    for (i, host) in [&h1, &h2].into_iter().enumerate() {
        let log = std::fs::File::create(w.dir.join(format!("h{i}.log"))).expect("log");
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns", "exec", host, "setpriv", "--reuid", &w.user, "--regid", &w.user,
        ]);
        cmd.args([
            "--clear-groups",
            "env",
            "-i",
            "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
        ]);
        cmd.arg(format!("HOME={}", w.dir.display()));
        cmd.args(["timeout", "-s", "KILL", "120"])
            .arg(w.dir.join("weft"));
        cmd.arg("--socket").arg(w.dir.join(format!("h{i}.sock")));
        cmd.args([
            "daemon",
            "--no-default-network",
            "--dns-upstream",
            "192.0.2.99:9",
        ]);
        cmd.arg("--state-dir").arg(w.dir.join(format!("h{i}")));
        cmd.args(["--node-name", &format!("h{i}")]);
        cmd.args(["--listen", &format!("192.0.2.{}:7946", i + 1)]);
        if i > 0 {
            cmd.args(["--join", "192.0.2.1:7946"]);
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        daemons.push(cmd.spawn().expect("start a daemon"));
    }
    let logs = |w: &RootlessWorld| {
        (0..2)
            .map(|i| std::fs::read_to_string(w.dir.join(format!("h{i}.log"))).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n---\n")
    };
    let weft_on = |w: &RootlessWorld, i: usize, args: &[&str]| {
        let mut cmd = w.as_user();
        cmd.arg(w.dir.join("weft"))
            .arg("--socket")
            .arg(w.dir.join(format!("h{i}.sock")))
            .args(args);
        run(&mut cmd)
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut created = false;
    while Instant::now() < deadline {
        let out = weft_on(
            &w,
            0,
            &[
                "network",
                "create",
                "--driver",
                "overlay",
                "--subnet",
                "10.240.9.0/24",
                "rov",
            ],
        );
        if out.status.success() {
            created = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        created,
        "the overlay network was not created:\n{}",
        logs(&w)
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline && !stdout(&weft_on(&w, 1, &["network", "ls"])).contains("rov")
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        stdout(&weft_on(&w, 1, &["network", "ls"])).contains("rov"),
        "the network did not reach h1:\n{}",
        logs(&w)
    );
    let mut server = w.as_user();
    server
        .arg(w.dir.join("weft"))
        .arg("--socket")
        .arg(w.dir.join("h0.sock"))
        .args([
            "run",
            "--network",
            "rov",
            "--name",
            "far",
            "--",
            "sleep",
            "15",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut server = server.spawn().expect("start far");
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut answer = None;
    while Instant::now() < deadline {
        let out = weft_on(
            &w,
            1,
            &[
                "run",
                "--network",
                "rov",
                "--",
                "sh",
                "-c",
                "ping -c 2 -W 2 far",
            ],
        );
        if out.status.success() {
            answer = Some(out);
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let _ = server.kill();
    let _ = server.wait();
    for mut daemon in daemons {
        let _ = Command::new("pkill")
            .args(["-KILL", "-u", &w.user])
            .status();
        let _ = daemon.kill();
        let _ = daemon.wait();
    }
    let out = answer.unwrap_or_else(|| {
        panic!(
            "a sandbox on h1 never pinged `far` on h0 across the overlay:\n{}",
            logs(&w)
        )
    });
    assert!(stdout(&out).contains("2 received"), "{}", show(&out));
    w.daemon = None;
    drop(underlay);
}

/// A namespace root made (`ip netns add`) is not a rootless daemon's to
/// attach: the refusal says why (whose namespace it is) and what to do,
/// not a bare EPERM.
#[test]
fn a_rootless_daemon_explains_a_namespace_it_may_not_enter() {
    let Some(mut w) = RootlessWorld::new() else {
        return;
    };
    if !require(has_tool("ip", "-V"), "needs `ip` (iproute2)") {
        return;
    }
    w.start_daemon();
    /// Deletes the root-made namespace, also when an assertion fails.
    struct Netns(String);
    impl Drop for Netns {
        fn drop(&mut self) {
            common::delete_namespace(&self.0);
        }
    }
    let ns = Netns(format!("wtr-{}-root", std::process::id()));
    run_ok(Command::new("timeout").args([CMD_TIMEOUT, "ip", "netns", "add", &ns.0]));
    let out = w.weft(&["network", "connect", "bridge", &ns.0]);
    assert!(!out.status.success(), "{}", show(&out));
    let text = common::stderr(&out);
    assert!(
        text.contains("Operation not permitted"),
        "the cause is kept:\n{text}"
    );
    assert!(
        text.contains("has no CAP_NET_ADMIN over the namespace")
            && text.contains("the host's")
            && text.contains("run the daemon as root"),
        "the refusal says why and what to do:\n{text}"
    );
}

/// A rootless daemon cannot put sandboxes on the host's LAN (its network
/// namespace has none of the host's interfaces, and it has no
/// `CAP_NET_RAW` on them): a macvlan network is refused with why and
/// what to do.
#[test]
fn a_rootless_daemon_refuses_a_macvlan_network_with_the_reason() {
    let Some(mut w) = RootlessWorld::new() else {
        return;
    };
    w.start_daemon();
    let out = w.weft(&[
        "network",
        "create",
        "-d",
        "macvlan",
        "--subnet",
        "10.237.8.0/24",
        "-o",
        "parent=eth0",
        "lan",
    ]);
    assert!(!out.status.success(), "{}", show(&out));
    let text = common::stderr(&out);
    assert!(
        text.contains("eth0") && text.contains("rootless") && text.contains("root"),
        "the refusal says why and what to do:\n{text}"
    );
}
