//! `weft-cni` under a real runtime: podman 4.3 with its CNI backend (the
//! recipe of ENGINES.md: runc, `default_ulimits`, vfs storage and its
//! `--root`/`--runroot` in the test's directory, a busybox-static rootfs).
//! Podman calls VERSION (with libcni's `CNI_NETNS=dummy`), ADD and DEL
//! itself; the test checks what containers see and what weft holds.
//!
//! Podman and the weft daemon both run in the test's namespace HOST
//! (`nsenter --net`, not `ip netns exec`, which would hide the cgroup
//! tree runc needs); containers get the netns podman makes for them. The
//! guard removes every container, then `World` kills the daemon and
//! deletes HOST. Needs root, podman, runc and busybox-static; skipped
//! otherwise (fails under `CI=true`).
//!
//! Rootless: a user the test creates (with subordinate ids, for podman's
//! user namespace) runs the weft daemon and podman, both in HOST; the
//! plugin runs inside podman's rootless network namespace and must find
//! the user's daemon (`$XDG_RUNTIME_DIR/weft/weft.sock`) and hand it a
//! netns path it can open. `/dev/net/tun` is 0666 for the run and its
//! mode is put back in `Drop`, with the user, its pause process and its
//! daemon gone by pid.
//!
//! Subnets: 10.238.70.0/24 (root), 10.238.80.0/24 (rootless).

#![allow(clippy::disallowed_methods)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{has_tool, require, run, show, stdout, World};

const CNI: &str = env!("CARGO_BIN_EXE_weft-cni");

/// Seconds a podman command may take (the first run sets up storage).
const PODMAN_TIMEOUT: &str = "120";

/// Podman's files under the world's directory, and its containers.
struct Podman {
    dir: PathBuf,
    host: String,
    rootfs: PathBuf,
    /// Root's podman removes its containers in `Drop`; a user's podman is
    /// cleaned up by [`RootlessPodman`].
    rootful: bool,
}

impl Podman {
    /// Write the rootfs, containers.conf, the plugin directory and the
    /// conflist `wpod` for the daemon at `socket`.
    fn new(w: &World) -> Podman {
        Podman::in_dir(
            w.dir.join("podman"),
            &w.host,
            Some(&w.socket),
            "wpod",
            "10.238.70.0/24",
        )
    }

    /// The same in `dir`, with the conflist `network` on `subnet` and the
    /// daemon at `socket` (None: the plugin's default).
    fn in_dir(
        dir: PathBuf,
        host: &str,
        socket: Option<&Path>,
        network: &str,
        subnet: &str,
    ) -> Podman {
        let rootfs = dir.join("rootfs");
        for sub in ["cni-bin", "cni-conf"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap_or_else(|e| panic!("{sub}: {e}"));
        }
        common::busybox_rootfs(&rootfs);
        // A published port's server answers with the connections it sees.
        common::write_script(&rootfs.join("bin/peer.sh"), "#!/bin/sh\nnetstat -tn\n");
        let write = |path: PathBuf, text: String| {
            std::fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        };
        std::os::unix::fs::symlink(CNI, dir.join("cni-bin/weft-cni")).expect("plugin link");
        write(
            dir.join("containers.conf"),
            format!(
                "[containers]\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=1024:1024\"]\n\
                 [engine]\nruntime = \"runc\"\nenable_port_reservation = false\n\
                 [network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{}\", \"/usr/lib/cni\"]\nnetwork_config_dir = \"{}\"\n",
                dir.join("cni-bin").display(),
                dir.join("cni-conf").display()
            ),
        );
        let mut plugin = serde_json::json!({
            "type": "weft-cni",
            "subnet": subnet,
            "capabilities": {"portMappings": true, "aliases": true, "ips": true, "mac": true}
        });
        if let Some(socket) = socket {
            plugin["socket"] = serde_json::json!(socket);
        }
        let conflist =
            serde_json::json!({"cniVersion": "1.0.0", "name": network, "plugins": [plugin]});
        write(
            dir.join(format!("cni-conf/{network}.conflist")),
            conflist.to_string(),
        );
        Podman {
            dir,
            host: host.to_owned(),
            rootfs,
            rootful: true,
        }
    }

    /// `podman ARGS` in HOST's network namespace, bounded in time.
    fn podman(&self, args: &[&str]) -> Output {
        let netns = format!("--net=/var/run/netns/{}", self.host);
        let root = self.dir.join("root");
        let runroot = self.dir.join("run");
        run(Command::new("nsenter")
            .arg(&netns)
            .args(["timeout", "-k", "5", PODMAN_TIMEOUT, "podman", "--root"])
            .arg(&root)
            .arg("--runroot")
            .arg(&runroot)
            .args(["--storage-driver", "vfs"])
            .args(args)
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .current_dir(&self.dir))
    }

    /// `podman run ... --rootfs ROOTFS CMD`: the flags go before `--rootfs`.
    fn run(&self, flags: &[&str], cmd: &[&str]) -> Output {
        let rootfs = self.rootfs.to_string_lossy().into_owned();
        let mut args = vec!["run"];
        args.extend_from_slice(flags);
        args.extend_from_slice(&["--rootfs", &rootfs]);
        args.extend_from_slice(cmd);
        self.podman(&args)
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        if !self.rootful || !self.dir.exists() {
            return;
        }
        let _ = self.podman(&["rm", "-f", "-a", "-t", "0"]);
    }
}

fn endpoint_names(w: &World) -> Vec<String> {
    w.endpoints("wpod")
        .iter()
        .filter_map(|e| e["name"].as_str().map(str::to_owned))
        .collect()
}

/// Two podman containers on a weft network ping each other and resolve
/// each other's name through weft's DNS; `-p` reaches a container from a
/// client namespace with the client's address (podman's port reservation
/// off, as docs/podman.md says: weft's listener holds the port); `podman
/// rm` leaves nothing in weft and frees the port.
#[test]
fn podman_containers_talk_by_name_and_leave_nothing() {
    if !require(nix::unistd::geteuid().is_root(), "needs root")
        || !require(
            has_tool("podman", "--version"),
            "needs podman (4.3, CNI backend)",
        )
        || !require(has_tool("runc", "--version"), "needs runc")
        || !require(Path::new("/bin/busybox").exists(), "needs busybox-static")
        || !require(
            has_tool("nsenter", "--version"),
            "needs nsenter (util-linux)",
        )
        || !require(has_tool("socat", "-V"), "needs socat")
    {
        return;
    }
    let Some(mut w) = World::new() else {
        return;
    };
    let p = Podman::new(&w);
    let out = p.run(
        &["-d", "--name", "ctra", "--network", "wpod"],
        &["/bin/sleep", "300"],
    );
    assert!(
        out.status.success(),
        "podman run ctra: {}\n{}",
        show(&out),
        w.daemon_log()
    );
    assert_eq!(
        endpoint_names(&w),
        vec!["ctra"],
        "podman's name is the DNS name"
    );
    let ctra = w.endpoints("wpod")[0].clone();
    let ip = ctra["addresses"][0]
        .as_str()
        .and_then(|a| a.split('/').next())
        .unwrap_or_else(|| panic!("no address: {ctra:#}"))
        .to_owned();
    assert!(
        ctra["sandbox"]
            .as_str()
            .unwrap_or_default()
            .contains("netns-"),
        "{ctra:#}"
    );
    let script = format!("ip -o addr show eth0; ping -c1 -W2 {ip} && nslookup ctra 10.238.70.1");
    let out = p.run(
        &["--rm", "--name", "ctrb", "--network", "wpod"],
        &["/bin/sh", "-c", &script],
    );
    let text = stdout(&out);
    assert!(
        out.status.success(),
        "ctrb: {}\n{}",
        show(&out),
        w.daemon_log()
    );
    assert!(
        text.contains("inet 10.238.70."),
        "ctrb has a weft address: {text}"
    );
    assert!(
        text.contains("1 packets received"),
        "ctrb pings ctra: {text}"
    );
    assert!(
        text.contains(&format!("Address: {ip}")),
        "ctra resolves through weft's DNS: {text}"
    );
    assert_eq!(
        endpoint_names(&w),
        vec!["ctra"],
        "--rm took ctrb's endpoint away"
    );
    // `-p`: weft publishes the port (podman's own reservation is off in
    // containers.conf: weft's listener is the reservation), and the
    // container sees the client's own address.
    let client = w.client_namespace();
    let out = p.run(
        &["-d", "--name", "web", "-p", "18091:80", "--network", "wpod"],
        &["/bin/nc", "-ll", "-p", "80", "-e", "/bin/peer.sh"],
    );
    assert!(
        out.status.success(),
        "podman run -p: {}\n{}",
        show(&out),
        w.daemon_log()
    );
    let mut answer = String::new();
    for _ in 0..25 {
        let out = w.exec(&client, &["socat", "-T2", "-", "TCP:192.0.2.1:18091"]);
        answer = stdout(&out);
        if answer.contains(':') {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        answer.contains(&format!("{}:", common::CLIENT_ADDR)),
        "the container must see the client's address: {answer:?}\n{}",
        w.daemon_log()
    );
    let ss = w.exec_ok(&w.host, &["ss", "-Hltn"]);
    assert!(ss.contains(":18091"), "weft holds the port: {ss}");
    let out = p.podman(&["rm", "-f", "-t", "0", "ctra", "web"]);
    assert!(out.status.success(), "podman rm: {}", show(&out));
    assert!(
        endpoint_names(&w).is_empty(),
        "podman rm left {:?} in weft",
        endpoint_names(&w)
    );
    let ss = w.exec_ok(&w.host, &["ss", "-Hltn"]);
    assert!(!ss.contains(":18091"), "podman rm must free the port: {ss}");
}

const TUN: &str = "/dev/net/tun";

/// A user of the test's, its weft daemon (in HOST) and its podman.
struct RootlessPodman {
    user: String,
    home: PathBuf,
    daemon: Option<Child>,
    tun_mode: Option<u32>,
    podman: Option<Podman>,
}

impl RootlessPodman {
    /// `setpriv` to the user with a fresh environment, in HOST.
    fn as_user(&self, host: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/var/run/netns/{host}"));
        cmd.args([
            "setpriv",
            "--reuid",
            &self.user,
            "--regid",
            &self.user,
            "--init-groups",
        ]);
        cmd.args(["env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"]);
        cmd.arg(format!("HOME={}", self.home.display()));
        cmd.arg(format!("USER={}", self.user));
        cmd.arg(format!("XDG_RUNTIME_DIR={}", self.xdg().display()));
        if let Some(p) = &self.podman {
            cmd.arg(format!(
                "CONTAINERS_CONF={}",
                p.dir.join("containers.conf").display()
            ));
        }
        cmd
    }

    fn xdg(&self) -> PathBuf {
        self.home.join("xdg")
    }

    fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.home.join("daemon.log")).unwrap_or_default()
    }

    /// The weft API of the user's daemon, from root.
    fn endpoints(&self, network: &str) -> Vec<serde_json::Value> {
        let socket = self.xdg().join("weft/weft.sock");
        let out = run(Command::new("timeout")
            .args(["10", "curl", "-s", "--unix-socket"])
            .arg(&socket)
            .arg(format!("http://weft/v1/networks/{network}")));
        let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap_or_default();
        v["endpoints"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for RootlessPodman {
    fn drop(&mut self) {
        if let Some(p) = &self.podman {
            let host = p.host.clone();
            let mut rm = self.as_user(&host);
            rm.args(["timeout", "60", "podman", "--root"])
                .arg(p.dir.join("root"));
            rm.arg("--runroot").arg(p.dir.join("run"));
            rm.args(["--storage-driver", "vfs", "rm", "-f", "-a", "-t", "0"]);
            let _ = run(&mut rm);
        }
        // podman's pause process (it holds the rootless namespaces).
        let pause = self.xdg().join("libpod/tmp/pause.pid");
        if let Some(pid) = std::fs::read_to_string(pause)
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if let Some(mut daemon) = self.daemon.take() {
            common::kill_group(&mut daemon);
        }
        if let Some(mode) = self.tun_mode {
            let _ = std::fs::set_permissions(TUN, std::fs::Permissions::from_mode(mode));
        }
        // podman's vfs layers belong to subordinate ids: remove as root.
        let _ = Command::new("userdel")
            .args(["-r", &self.user])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

/// Rootless podman: the plugin runs in podman's rootless netns, finds the
/// user's daemon by `$XDG_RUNTIME_DIR`, and the container gets its TAP;
/// two containers ping each other; `--rm` leaves nothing; `-p` works
/// through podman's own port handler, and `podman rm` frees the port.
#[test]
fn rootless_podman_finds_the_users_daemon() {
    if !require(
        nix::unistd::geteuid().is_root(),
        "needs root to create a test user",
    ) || !require(
        has_tool("podman", "--version"),
        "needs podman (4.3, CNI backend)",
    ) || !require(has_tool("runc", "--version"), "needs runc")
        || !require(has_tool("newuidmap", "--help"), "needs newuidmap (uidmap)")
        || !require(Path::new("/bin/busybox").exists(), "needs busybox-static")
        || !require(has_tool("curl", "--version"), "needs curl")
        || !require(has_tool("socat", "-V"), "needs socat")
    {
        return;
    }
    let Some(mut w) = World::new() else {
        return;
    };
    let client = w.client_namespace();
    let user = format!("wcn{}", std::process::id() % 100_000);
    let home = std::env::temp_dir().join(format!("weft-cni-rootless-{}", std::process::id()));
    let mut r = RootlessPodman {
        user: user.clone(),
        home: home.clone(),
        daemon: None,
        tun_mode: None,
        podman: None,
    };
    // A login user (not --system): useradd gives it subordinate ids.
    let out = run(Command::new("useradd")
        .args(["--create-home", "--home-dir"])
        .arg(&home)
        .args(["--shell", "/bin/sh", &user]));
    assert!(out.status.success(), "useradd: {}", show(&out));
    let mode = std::fs::metadata(TUN)
        .expect("/dev/net/tun")
        .permissions()
        .mode()
        & 0o7777;
    r.tun_mode = Some(mode);
    std::fs::set_permissions(TUN, std::fs::Permissions::from_mode(0o666)).expect("chmod tun");
    std::fs::create_dir_all(r.xdg()).expect("xdg");
    std::fs::set_permissions(r.xdg(), std::fs::Permissions::from_mode(0o700)).expect("chmod xdg");
    let mut p = Podman::in_dir(home.join("podman"), &w.host, None, "wrl", "10.238.80.0/24");
    p.rootful = false;
    // The build tree may be closed to the user: its own copies.
    for exe in [common::WEFT, CNI] {
        let name = Path::new(exe).file_name().expect("name");
        std::fs::copy(exe, home.join(name)).expect("copy binary");
    }
    std::fs::remove_file(p.dir.join("cni-bin/weft-cni")).expect("plugin link");
    std::os::unix::fs::symlink(home.join("weft-cni"), p.dir.join("cni-bin/weft-cni"))
        .expect("plugin link");
    let out = run(Command::new("chown")
        .args(["-R", &format!("{user}:{user}")])
        .arg(&home));
    assert!(out.status.success(), "chown: {}", show(&out));
    r.podman = Some(p);
    // The user's daemon, in HOST, with its default (per-user) socket.
    let log = std::fs::File::create(home.join("daemon.log")).expect("log");
    let mut cmd = r.as_user(&w.host);
    cmd.args(["timeout", "-s", "KILL", "600"])
        .arg(home.join("weft"));
    cmd.args([
        "daemon",
        "--no-default-network",
        "--dns-upstream",
        "127.0.0.1:9",
        "--state-dir",
    ])
    .arg(home.join("state"));
    r.daemon = Some(common::spawn_background(
        &mut cmd,
        None,
        &home.join("daemon.log"),
    ));
    drop(log);
    let socket = r.xdg().join("weft/weft.sock");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        socket.exists(),
        "the user's daemon did not start:\n{}",
        r.daemon_log()
    );
    let podman = |args: &[&str]| {
        let p = r.podman.as_ref().expect("podman");
        let rootfs = p.rootfs.to_string_lossy().into_owned();
        let mut cmd = r.as_user(&w.host);
        cmd.args(["timeout", "-k", "5", PODMAN_TIMEOUT, "podman", "--root"])
            .arg(p.dir.join("root"));
        cmd.arg("--runroot").arg(p.dir.join("run"));
        cmd.args(["--storage-driver", "vfs", "run"]);
        cmd.args(args.iter().take_while(|a| **a != "--"));
        cmd.args(["--rootfs", &rootfs]);
        cmd.args(args.iter().skip_while(|a| **a != "--").skip(1));
        cmd.current_dir(&p.dir);
        run(&mut cmd)
    };
    let out = podman(&[
        "-d",
        "--name",
        "rla",
        "--network",
        "wrl",
        "--",
        "/bin/sleep",
        "300",
    ]);
    assert!(
        out.status.success(),
        "rootless podman run: {}\n{}",
        show(&out),
        r.daemon_log()
    );
    let endpoints = r.endpoints("wrl");
    assert_eq!(endpoints.len(), 1, "{endpoints:?}\n{}", r.daemon_log());
    let ip = endpoints[0]["addresses"][0]
        .as_str()
        .and_then(|a| a.split('/').next())
        .unwrap_or_default()
        .to_owned();
    let script = format!("ip -o addr show eth0; ping -c1 -W2 {ip}");
    let out = podman(&[
        "--rm",
        "--name",
        "rlb",
        "--network",
        "wrl",
        "--",
        "/bin/sh",
        "-c",
        &script,
    ]);
    let text = stdout(&out);
    assert!(
        out.status.success() && text.contains("1 packets received"),
        "rootless ping: {}\n{}",
        show(&out),
        r.daemon_log()
    );
    assert_eq!(r.endpoints("wrl").len(), 1, "--rm left an endpoint");
    // `-p`: rootless podman forwards the port itself (rootlessport, from
    // inside the container's netns), so weft-cni, in a user namespace,
    // leaves the host port to it.
    let out = podman(&[
        "-d",
        "-p",
        "18092:80",
        "--name",
        "rlw",
        "--network",
        "wrl",
        "--",
        "/bin/nc",
        "-ll",
        "-p",
        "80",
        "-e",
        "/bin/peer.sh",
    ]);
    assert!(
        out.status.success(),
        "rootless podman run -p: {}\n{}",
        show(&out),
        r.daemon_log()
    );
    let mut answer = String::new();
    for _ in 0..25 {
        let out = w.exec(&client, &["socat", "-T2", "-", "TCP:192.0.2.1:18092"]);
        answer = stdout(&out);
        if answer.contains(":80 ") {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        answer.contains(":80 "),
        "a client reaches the container through -p: {answer:?}\n{}",
        r.daemon_log()
    );
    let p = r.podman.as_ref().expect("podman");
    let mut rm = r.as_user(&w.host);
    rm.args(["timeout", "60", "podman", "--root"])
        .arg(p.dir.join("root"));
    rm.arg("--runroot").arg(p.dir.join("run"));
    rm.args(["--storage-driver", "vfs", "rm", "-f", "-t", "0", "rlw"]);
    let out = run(&mut rm);
    assert!(out.status.success(), "podman rm: {}", show(&out));
    assert_eq!(r.endpoints("wrl").len(), 1, "podman rm left rlw in weft");
    let ss = w.exec_ok(&w.host, &["ss", "-Hltn"]);
    assert!(!ss.contains(":18092"), "podman rm must free the port: {ss}");
}
