//! Rootless end to end: the whole of weft as an unprivileged user the test
//! creates. The daemon runs inside `unshare -Urn` (its own user and network
//! namespaces), so nothing it does can reach the host's network; two
//! `weft run` sandboxes of that user ping each other by name through it.
//!
//! Needs root to create the user and to open `/dev/net/tun` to it: some
//! hosts ship the device 0600, so the test sets 0666 for its run and puts
//! the old mode back in `Drop`, even when an assertion fails.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{has_tool, require, show, stdout, CMD_TIMEOUT, WEFT};

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
        let _ = Command::new("userdel")
            .arg(&self.user)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
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
