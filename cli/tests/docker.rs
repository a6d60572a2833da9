//! End-to-end tests of the Docker plugin (`weft daemon --docker-plugin
//! NAME`) with a real dockerd: `docker network create -d NAME
//! --ipam-driver NAME`, containers that reach each other by name, a
//! published port whose server sees the client's address, removal that
//! leaves nothing in weft, restarts of weft and of dockerd (with and
//! without `--live-restore`), the errors Docker shows, and two dockerds
//! on two weft hosts sharing an overlay network. Needs root, `ip`,
//! `ping`, `curl`, `nsenter`, Debian's `docker.io` (dockerd 20.10) and
//! `busybox-static`; skipped otherwise (fails under `CI=true`).
//!
//! Topology ([`DockerWorld`]): `common::World` (weft in a namespace HOST,
//! `--dns-upstream` a closed port on HOST's loopback) with
//! `--docker-plugin NAME` (a unique NAME per world; its socket in
//! `/run/docker/plugins`, where dockerd looks, removed by `Drop`); a
//! dockerd in HOST too (`nsenter --net`, not `ip netns exec`, which hides
//! the cgroup tree), with its data root, exec root and API socket in the
//! world's directory, `--storage-driver vfs --bridge none
//! --iptables=false`, and `--dns 192.0.2.53`, an address on HOST's own
//! loopback, so the containers' forwarded queries never leave HOST; the
//! image is a busybox rootfs made here and `docker import`ed. A namespace
//! CLIENT is joined to HOST by a veth made from inside HOST (HOST
//! 192.0.2.1/24, CLIENT 192.0.2.10/24) to reach published ports. Every
//! command runs under `timeout`; every wait is bounded. `Drop` removes
//! the containers, stops dockerd (SIGKILL after a bound), kills what is
//! left of its processes by pid, unmounts what it left under the world's
//! directory, removes the plugin socket; then `World` stops weft and
//! deletes the namespaces.
//!
//! Subnets: 10.238.N.0/24, a distinct N per test.

// A test drives real processes: it reads clocks (clippy.toml).
#![allow(clippy::disallowed_methods)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{
    has_tool, kill_group, require, run, show, spawn_background, stdout, World, CMD_TIMEOUT,
};
use serde_json::Value;

/// HOST's end of the veth to CLIENT: where published ports are reached.
const HOST_ADDR: &str = "192.0.2.1";
/// CLIENT's address, which a container behind a published port must see.
const CLIENT_ADDR: &str = "192.0.2.10";
/// dockerd's `--dns`: on HOST's loopback, so queries stay in HOST.
const DOCKER_DNS: &str = "192.0.2.53";

/// Where a root dockerd finds plugin sockets.
const PLUGIN_DIR: &str = "/run/docker/plugins";

/// Ceiling on dockerd's life if the test dies without `Drop`.
const DOCKERD_LIFETIME: &str = "900";

/// How long dockerd may take to answer after it starts.
const DOCKERD_READY: Duration = Duration::from_secs(60);

/// How long a `docker` command may take.
const DOCKER_TIMEOUT: &str = "90";

/// The image every container runs.
const IMAGE: &str = "weft-test/busybox:1";

static PLUGINS: AtomicUsize = AtomicUsize::new(0);

/// A plugin name no other test (or test run) uses.
fn unique_plugin() -> String {
    format!(
        "wtd{}n{}",
        std::process::id(),
        PLUGINS.fetch_add(1, Ordering::SeqCst)
    )
}

/// Whether the tools are here; skip (or fail under CI) otherwise.
fn docker_tools() -> bool {
    require(
        has_tool("dockerd", "--version"),
        "needs dockerd (apt-get install docker.io)",
    ) && require(
        has_tool("docker", "--version"),
        "needs the docker CLI (docker.io)",
    ) && require(
        Path::new("/bin/busybox").exists(),
        "needs /bin/busybox (busybox-static)",
    ) && require(has_tool("curl", "--version"), "needs curl")
        && require(
            has_tool("nsenter", "--version"),
            "needs nsenter (util-linux)",
        )
}

/// One dockerd inside a weft world's HOST namespace.
struct Dockerd {
    dir: PathBuf,
    host: String,
    live_restore: bool,
    child: Option<Child>,
    starts: usize,
}

impl Dockerd {
    fn socket(&self) -> PathBuf {
        self.dir.join("docker.sock")
    }

    fn pidfile(&self) -> PathBuf {
        self.dir.join("dockerd.pid")
    }

    /// Start dockerd (again) and wait until it answers.
    fn start(&mut self) {
        assert!(self.child.is_none(), "dockerd is already running");
        self.starts += 1;
        for sub in ["root", "exec"] {
            std::fs::create_dir_all(self.dir.join(sub)).expect("docker dirs");
        }
        let netns = format!("--net=/var/run/netns/{}", self.host);
        let mut cmd = Command::new("nsenter");
        cmd.args([
            netns.as_str(),
            "timeout",
            "-s",
            "KILL",
            DOCKERD_LIFETIME,
            "dockerd",
        ])
        .arg("--data-root")
        .arg(self.dir.join("root"))
        .arg("--exec-root")
        .arg(self.dir.join("exec"))
        .arg("-H")
        .arg(format!("unix://{}", self.socket().display()))
        .arg("--pidfile")
        .arg(self.pidfile())
        .args([
            "--storage-driver",
            "vfs",
            "--bridge",
            "none",
            "--iptables=false",
            "--ip6tables=false",
            "--ip-forward=false",
            "--userland-proxy=false",
            "--dns",
            DOCKER_DNS,
        ]);
        if self.live_restore {
            cmd.arg("--live-restore");
        }
        let log = self.dir.join(format!("dockerd-{}.log", self.starts));
        self.child = Some(spawn_background(&mut cmd, None, &log));
        let deadline = Instant::now() + DOCKERD_READY;
        loop {
            if self.socket().exists() && self.docker(&["version"]).status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "dockerd did not answer within {DOCKERD_READY:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// dockerd's pid (from its pidfile).
    fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.pidfile())
            .ok()
            .and_then(|t| t.trim().parse().ok())
    }

    /// Stop dockerd with SIGTERM (it stops its containers unless
    /// `--live-restore`), SIGKILL after a bound; wait for it.
    fn stop(&mut self) {
        if let Some(pid) = self.pid() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(40);
            while Instant::now() < deadline {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            kill_group(&mut child);
        }
    }

    /// `docker ARGS` against this dockerd, bounded.
    fn docker(&self, args: &[&str]) -> Output {
        run(Command::new("timeout")
            .args(["-k", "5", DOCKER_TIMEOUT, "docker", "-H"])
            .arg(format!("unix://{}", self.socket().display()))
            .args(args))
    }

    /// `docker ARGS`, which must succeed; its stdout, trimmed.
    fn ok(&self, args: &[&str], weft_log: impl FnOnce() -> String) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {args:?} failed: {}\n--- dockerd log (tail) ---\n{}\n--- weft log ---\n{}",
            show(&out),
            tail(&self.log(), 40),
            weft_log()
        );
        stdout(&out).trim().to_owned()
    }

    /// `docker ARGS`, which must fail; its stderr.
    fn err(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            !out.status.success(),
            "docker {args:?} should have failed: {}",
            show(&out)
        );
        common::stderr(&out)
    }

    fn log(&self) -> String {
        (1..=self.starts)
            .map(|n| {
                std::fs::read_to_string(self.dir.join(format!("dockerd-{n}.log")))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n[dockerd restart]\n")
    }

    /// Import the busybox image (a rootfs made here; a CGI script that
    /// answers the client's address for the published-port check).
    fn import_image(&self, rootfs_dir: &Path) {
        let r = rootfs_dir;
        common::busybox_rootfs(r);
        std::fs::create_dir_all(r.join("www/cgi-bin")).expect("rootfs dirs");
        common::write_script(
            &r.join("www/cgi-bin/who"),
            "#!/bin/sh\necho 'Content-Type: text/plain'\necho\necho \"$REMOTE_ADDR\"\n",
        );
        let out = run(Command::new("sh").arg("-c").arg(format!(
            "tar -C {} -c . | timeout {DOCKER_TIMEOUT} docker -H unix://{} import - {IMAGE}",
            r.display(),
            self.socket().display()
        )));
        assert!(out.status.success(), "docker import: {}", show(&out));
    }

    /// Remove every container, stop dockerd, kill what is left of its
    /// processes (by pid: those whose command line names our directory),
    /// unmount what it left. Never panics: it runs in `Drop`.
    fn teardown(&mut self) {
        if self.child.is_some() {
            let ids = self.docker(&["ps", "-aq"]);
            let ids: Vec<String> = stdout(&ids).split_whitespace().map(str::to_owned).collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f"];
                args.extend(ids.iter().map(String::as_str));
                let _ = self.docker(&args);
            }
            self.stop();
        }
        kill_processes_naming(&self.dir);
        unmount_under(&self.dir);
    }
}

/// SIGKILL every process whose command line names `dir` (containerd and
/// shims that outlived dockerd), by pid.
fn kill_processes_naming(dir: &Path) {
    let needle = dir.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == i32::try_from(std::process::id()).unwrap_or(0) {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&needle) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Lazily unmount every mount under `dir` (deepest first): the network
/// namespaces and overlay mounts a killed dockerd leaves.
fn unmount_under(dir: &Path) {
    let prefix = dir.to_string_lossy().into_owned();
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<&str> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(&prefix))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for point in points {
        let _ = run(Command::new("timeout").args([CMD_TIMEOUT, "umount", "-l", point]));
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A weft world serving the Docker plugin, a dockerd using it, a CLIENT.
struct DockerWorld {
    plugin: String,
    dockerd: Dockerd,
    client: String,
    w: World,
}

impl DockerWorld {
    /// None (skip) when a requirement is missing.
    fn new(live_restore: bool) -> Option<DockerWorld> {
        if !docker_tools() {
            return None;
        }
        let plugin = unique_plugin();
        let w = World::with_daemon_args(&["--docker-plugin", &plugin])?;
        Some(DockerWorld::around(w, plugin, live_restore))
    }

    /// A dockerd and a CLIENT around a world whose daemon serves `plugin`.
    fn around(w: World, plugin: String, live_restore: bool) -> DockerWorld {
        let dockerd = Dockerd {
            dir: w.dir.join("docker"),
            host: w.host.clone(),
            live_restore,
            child: None,
            starts: 0,
        };
        let mut dw = DockerWorld {
            plugin,
            dockerd,
            client: String::new(),
            w,
        };
        dw.client = dw.w.client_namespace();
        let host = dw.w.host.clone();
        let cmd = [
            "ip",
            "-n",
            &host,
            "addr",
            "add",
            "192.0.2.53/32",
            "dev",
            "lo",
        ];
        let out = run(Command::new("timeout").arg(CMD_TIMEOUT).args(cmd));
        assert!(out.status.success(), "{cmd:?}: {}", show(&out));
        dw.dockerd.start();
        dw.dockerd.import_image(&dw.w.dir.join("rootfs"));
        dw
    }

    fn docker_ok(&self, args: &[&str]) -> String {
        self.dockerd.ok(args, || self.w.daemon_log())
    }

    /// `docker network create -d PLUGIN --ipam-driver PLUGIN ARGS NAME`;
    /// Docker's network id.
    fn network(&self, name: &str, args: &[&str]) -> String {
        let mut all = vec![
            "network",
            "create",
            "-d",
            &self.plugin,
            "--ipam-driver",
            &self.plugin,
        ];
        all.extend_from_slice(args);
        all.push(name);
        self.docker_ok(&all)
    }

    /// The weft network that Docker network `docker_id` is (from `weft
    /// network ls` and `inspect`'s `docker_networks`).
    fn weft_network_of(&self, docker_id: &str) -> Value {
        for name in self.w.network_names() {
            let net = self.w.inspect(&name);
            let ids = net["docker_networks"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if ids.iter().any(|i| i.as_str() == Some(docker_id)) {
                return net;
            }
        }
        panic!(
            "no weft network is Docker network {docker_id}: {:?}",
            self.w.network_names()
        );
    }

    /// The state file's `docker` part (absent: Null).
    fn docker_state(&self) -> Value {
        let text = std::fs::read_to_string(self.w.state_dir.join("state.json")).unwrap_or_default();
        let state: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        state["docker"].clone()
    }

    /// curl from CLIENT; the body, or None when it failed. busybox httpd
    /// listens on IPv6 and writes an IPv4 client as `[::ffff:A.B.C.D]`:
    /// that is unwrapped.
    fn curl(&self, url: &str) -> Option<String> {
        let out = self.w.exec(&self.client, &["curl", "-s", "-m", "5", url]);
        let body = stdout(&out).trim().to_owned();
        let body = body
            .strip_prefix("[::ffff:")
            .and_then(|b| b.strip_suffix(']'))
            .map_or(body.clone(), str::to_owned);
        out.status.success().then_some(body)
    }

    /// A command in a running container must succeed.
    fn exec_ok(&self, container: &str, cmd: &[&str]) -> String {
        let mut args = vec!["exec", container];
        args.extend_from_slice(cmd);
        self.docker_ok(&args)
    }
}

impl Drop for DockerWorld {
    fn drop(&mut self) {
        // While weft still runs, so Docker's teardown calls are answered.
        self.dockerd.teardown();
        let _ = std::fs::remove_file(Path::new(PLUGIN_DIR).join(format!("{}.sock", self.plugin)));
        // Then `World` drops: weft, and every namespace.
    }
}

/// The "What a user does": a network, two containers that reach
/// each other by name, a published port whose server sees the client's
/// address; Docker's ids in `weft network ls`/`inspect`; removal leaves
/// nothing in weft.
#[test]
fn a_docker_network_is_a_weft_network_from_create_to_rm() {
    let Some(dw) = DockerWorld::new(false) else {
        return;
    };
    let id = dw.network("app", &["--subnet", "10.238.1.0/24"]);
    let net = dw.weft_network_of(&id);
    let weft_name = net["name"].as_str().unwrap_or_default().to_owned();
    assert_eq!(weft_name, format!("docker-{}", &id[..12]), "{net:#}");
    assert_eq!(net["subnets"][0]["subnet"], "10.238.1.0/24", "{net:#}");
    assert_eq!(net["subnets"][0]["gateway"], "10.238.1.1", "{net:#}");

    dw.docker_ok(&[
        "run",
        "-d",
        "--name",
        "db",
        "--network",
        "app",
        IMAGE,
        "sleep",
        "600",
    ]);
    let ping = dw.docker_ok(&[
        "run",
        "--rm",
        "--network",
        "app",
        IMAGE,
        "ping",
        "-c",
        "1",
        "-W",
        "3",
        "db",
    ]);
    assert!(ping.contains("1 packets received"), "{ping}");
    // The container's interface is weft's TAP with weft's address and MAC.
    let addr = dw.exec_ok("db", &["ip", "-o", "addr", "show", "eth0"]);
    assert!(addr.contains("10.238.1.2/24"), "{addr}");
    let endpoints = dw.w.endpoints(&weft_name);
    assert_eq!(endpoints.len(), 1, "{endpoints:#?}");
    let docker_ep = dw.docker_ok(&[
        "inspect",
        "-f",
        "{{range .NetworkSettings.Networks}}{{.EndpointID}}{{end}}",
        "db",
    ]);
    assert_eq!(
        endpoints[0]["docker"]["endpoint_id"],
        docker_ep.as_str(),
        "{endpoints:#?}"
    );
    assert_eq!(endpoints[0]["docker"]["network_id"], id.as_str());
    assert_eq!(endpoints[0]["mac"], "02:42:0a:ee:01:02", "{endpoints:#?}");
    let mac = dw.exec_ok("db", &["cat", "/sys/class/net/eth0/address"]);
    assert_eq!(mac, "02:42:0a:ee:01:02");

    // -p 8080:80: weft listens on HOST and the server sees CLIENT.
    dw.docker_ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "app",
        "-p",
        "8080:80",
        IMAGE,
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/www",
    ]);
    let url = format!("http://{HOST_ADDR}:8080/cgi-bin/who");
    let mut seen = None;
    for _ in 0..50 {
        seen = dw.curl(&url);
        if seen.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(seen.as_deref(), Some(CLIENT_ADDR), "{}", dw.w.daemon_log());
    let web =
        dw.w.endpoints(&weft_name)
            .into_iter()
            .find(|e| !e["ports"].as_array().is_none_or(Vec::is_empty))
            .unwrap_or_else(|| panic!("no endpoint with ports: {:#?}", dw.w.endpoints(&weft_name)));
    assert_eq!(web["ports"][0]["host_port"], 8080, "{web:#}");
    assert_eq!(web["ports"][0]["container_port"], 80, "{web:#}");
    // A range takes its first free port: 8080 is web's.
    dw.docker_ok(&[
        "run",
        "-d",
        "--name",
        "web2",
        "--network",
        "app",
        "-p",
        "8080-8082:80",
        IMAGE,
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/www",
    ]);
    let url2 = format!("http://{HOST_ADDR}:8081/cgi-bin/who");
    let mut seen = None;
    for _ in 0..50 {
        seen = dw.curl(&url2);
        if seen.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(seen.as_deref(), Some(CLIENT_ADDR), "{}", dw.w.daemon_log());
    dw.docker_ok(&["rm", "-f", "web2"]);

    // Removal: the containers, then the network; weft forgets it all.
    dw.docker_ok(&["rm", "-f", "web", "db"]);
    assert!(dw.curl(&url).is_none(), "port 8080 still answers after rm");
    assert!(dw.w.endpoints(&weft_name).is_empty());
    let err = dw.w.weft_err(&["network", "rm", &weft_name]);
    assert!(
        err.contains(&format!(
            "is Docker network {}: remove it with docker network rm",
            &id[..12]
        )),
        "{err}"
    );
    dw.docker_ok(&["network", "rm", "app"]);
    assert!(
        dw.w.network_names().is_empty(),
        "{:?}",
        dw.w.network_names()
    );
    assert_eq!(
        dw.docker_state(),
        Value::Null,
        "the plugin's state is not empty"
    );
    let links = dw.w.links(&dw.w.host);
    assert!(
        links.iter().all(|l| l == "lo" || l == "client0"),
        "TAPs left in HOST: {links:?}"
    );
}

/// Restart weft (SIGKILL) with containers running: they keep their
/// network and the published port. Restart dockerd with `--live-restore`:
/// containers keep running, weft has no duplicate. Then without it:
/// dockerd stops the containers and weft forgets their endpoints; a new
/// container works.
#[test]
fn restarts_of_weft_and_dockerd_keep_containers_and_duplicate_nothing() {
    let Some(mut dw) = DockerWorld::new(true) else {
        return;
    };
    let id = dw.network(
        "app",
        &["--subnet", "10.238.2.0/24", "-o", "weft.network=app"],
    );
    let net = dw.weft_network_of(&id);
    assert_eq!(net["name"], "app", "-o weft.network names the weft network");
    dw.docker_ok(&[
        "run",
        "-d",
        "--name",
        "db",
        "--network",
        "app",
        IMAGE,
        "sleep",
        "600",
    ]);
    dw.docker_ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "app",
        "-p",
        "8081:80",
        IMAGE,
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/www",
    ]);
    let url = format!("http://{HOST_ADDR}:8081/cgi-bin/who");
    let answered = |dw: &DockerWorld| {
        (0..50).any(|_| {
            let ok = dw.curl(&url).as_deref() == Some(CLIENT_ADDR);
            if !ok {
                std::thread::sleep(Duration::from_millis(200));
            }
            ok
        })
    };
    assert!(answered(&dw), "{}", dw.w.daemon_log());
    let before = dw.w.endpoints("app");
    assert_eq!(before.len(), 2);

    // weft restarts under running containers.
    dw.w.kill_daemon();
    dw.w.start_daemon();
    let ping = dw.exec_ok("web", &["ping", "-c", "1", "-W", "3", "db"]);
    assert!(ping.contains("1 packets received"), "{ping}");
    assert!(
        answered(&dw),
        "published port after a weft restart: {}",
        dw.w.daemon_log()
    );
    let ping = dw.docker_ok(&[
        "run",
        "--rm",
        "--network",
        "app",
        IMAGE,
        "ping",
        "-c",
        "1",
        "-W",
        "3",
        "web",
    ]);
    assert!(ping.contains("1 packets received"), "{ping}");
    assert_eq!(dw.w.endpoints("app").len(), 2);

    // dockerd restarts with --live-restore: containers keep running and
    // weft answers whatever it replays without a duplicate.
    dw.dockerd.stop();
    dw.dockerd.start();
    let ping = dw.exec_ok("web", &["ping", "-c", "1", "-W", "3", "db"]);
    assert!(ping.contains("1 packets received"), "{ping}");
    assert!(answered(&dw), "published port after a dockerd restart");
    let after = dw.w.endpoints("app");
    assert_eq!(after.len(), 2, "{after:#?}");
    assert_eq!(
        dw.docker_state()["endpoints"].as_array().map(Vec::len),
        Some(2),
        "{}",
        dw.docker_state()
    );
    assert_eq!(
        dw.docker_state()["networks"].as_array().map(Vec::len),
        Some(1)
    );
    assert_eq!(dw.docker_state()["pools"].as_array().map(Vec::len), Some(1));

    // Without --live-restore, stopping dockerd stops the containers: weft
    // forgets their endpoints and addresses, and a new container works.
    dw.dockerd.stop();
    dw.dockerd.live_restore = false;
    dw.dockerd.start();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !dw.w.endpoints("app").is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        dw.w.endpoints("app").is_empty(),
        "{:#?}",
        dw.w.endpoints("app")
    );
    assert_eq!(
        dw.docker_state()["endpoints"].as_array().map(Vec::len),
        Some(0)
    );
    let ping = dw.docker_ok(&[
        "run",
        "--rm",
        "--network",
        "app",
        IMAGE,
        "ping",
        "-c",
        "1",
        "-W",
        "3",
        "10.238.2.1",
    ]);
    assert!(ping.contains("1 packets received"), "{ping}");
}

/// What Docker shows the user is weft's message: an overlapping subnet, an
/// unknown option, an option of Docker's bridge, a bad `weft.driver`, a
/// joined network of another subnet; with weft down, Docker names the
/// plugin's socket.
#[test]
fn docker_shows_wefts_errors() {
    let Some(mut dw) = DockerWorld::new(false) else {
        return;
    };
    dw.network(
        "app",
        &["--subnet", "10.238.3.0/24", "-o", "weft.network=app"],
    );
    let cases: [(&[&str], &str); 5] = [
        (
            &["--subnet", "10.238.0.0/16"],
            "subnet 10.238.0.0/16 overlaps 10.238.3.0/24 of weft network \"app\": choose another --subnet",
        ),
        (
            &["--subnet", "10.238.4.0/24", "-o", "colour=blue"],
            "--opt colour: unknown option of the bridge driver: known options are host_loopback=true|false",
        ),
        (
            &["--subnet", "10.238.4.0/24", "-o", "com.docker.network.bridge.name=br9"],
            "an option of Docker's own drivers, not of weft",
        ),
        (
            &["--subnet", "10.238.4.0/24", "-o", "weft.driver=macvlan"],
            "use weft.driver=bridge or weft.driver=overlay",
        ),
        (
            &["--subnet", "10.238.5.0/24", "-o", "weft.network=app"],
            "weft network \"app\" has subnet 10.238.3.0/24, not 10.238.5.0/24",
        ),
    ];
    for (args, message) in cases {
        let mut all = vec![
            "network",
            "create",
            "-d",
            &dw.plugin,
            "--ipam-driver",
            &dw.plugin,
        ];
        all.extend_from_slice(args);
        all.push("bad");
        let err = dw.dockerd.err(&all);
        assert!(err.contains(message), "docker {args:?}: {err}");
    }
    // Nothing was left behind by the refusals.
    assert_eq!(dw.w.network_names(), vec!["app".to_owned()]);
    assert_eq!(
        dw.docker_state()["pools"].as_array().map(Vec::len),
        Some(1),
        "{}",
        dw.docker_state()
    );
    // A weft network's own subnet without weft.network: says how to join.
    let err = dw.dockerd.err(&[
        "network",
        "create",
        "-d",
        &dw.plugin,
        "--subnet",
        "10.238.3.0/24",
        "bad",
    ]);
    assert!(err.contains("add -o weft.network=app"), "{err}");

    // weft down: Docker retries, then names the plugin's socket.
    dw.w.kill_daemon();
    let started = Instant::now();
    let err = dw.dockerd.err(&[
        "network",
        "create",
        "-d",
        &dw.plugin,
        "--ipam-driver",
        &dw.plugin,
        "--subnet",
        "10.238.6.0/24",
        "down",
    ]);
    let socket = format!("{PLUGIN_DIR}/{}.sock", dw.plugin);
    assert!(err.contains(&socket), "{err}");
    eprintln!(
        "with weft down, docker failed after {:?}: {err}",
        started.elapsed()
    );
    dw.w.start_daemon();
    dw.network("up", &["--subnet", "10.238.6.0/24"]);
}

/// Two hosts, no swarm: weft daemons in a gossip cluster, a dockerd on
/// each. Host 1 makes an overlay network through Docker; host 2's
/// dockerd joins it by name (no `--subnet`: its pool is bound to the
/// cluster network's subnet); containers on the two hosts get distinct
/// addresses and reach each other.
#[test]
fn two_dockerds_on_two_weft_hosts_share_an_overlay_network() {
    if !docker_tools() {
        return;
    }
    let (p1, p2) = (unique_plugin(), unique_plugin());
    let Some(mut w1) = World::prepared_with_daemon_args(&[
        "--docker-plugin",
        &p1,
        "--listen",
        "198.51.100.1:7946",
        "--node-name",
        "h1",
    ]) else {
        return;
    };
    let Some(mut w2) = World::prepared_with_daemon_args(&[
        "--docker-plugin",
        &p2,
        "--listen",
        "198.51.100.2:7946",
        "--node-name",
        "h2",
        "--join",
        "198.51.100.1:7946",
    ]) else {
        return;
    };
    // The underlay: a veth between the two hosts, made from inside host 1.
    let (h1, h2) = (w1.host.clone(), w2.host.clone());
    for cmd in [
        vec![
            "ip", "-n", &h1, "link", "add", "under0", "type", "veth", "peer", "name", "under0",
            "netns", &h2,
        ],
        vec![
            "ip",
            "-n",
            &h1,
            "addr",
            "add",
            "198.51.100.1/24",
            "dev",
            "under0",
        ],
        vec![
            "ip",
            "-n",
            &h2,
            "addr",
            "add",
            "198.51.100.2/24",
            "dev",
            "under0",
        ],
        vec!["ip", "-n", &h1, "link", "set", "under0", "up"],
        vec!["ip", "-n", &h2, "link", "set", "under0", "up"],
    ] {
        let out = run(Command::new("timeout").arg(CMD_TIMEOUT).args(&cmd));
        assert!(out.status.success(), "{cmd:?}: {}", show(&out));
    }
    assert!(w1.ping_eventually(&h1, "198.51.100.2", Duration::from_secs(10)));
    w1.start_daemon();
    w2.start_daemon();
    let d1 = DockerWorld::around(w1, p1, false);
    let d2 = DockerWorld::around(w2, p2, false);

    d1.network(
        "ov",
        &[
            "-o",
            "weft.driver=overlay",
            "-o",
            "weft.network=ov",
            "--subnet",
            "10.238.7.0/24",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !d2.w.network_names().contains(&"ov".to_owned()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        d2.w.network_names().contains(&"ov".to_owned()),
        "ov never reached host 2: {}",
        d2.w.daemon_log()
    );
    let id2 = d2.network("ov", &["-o", "weft.network=ov"]);
    assert_eq!(d2.weft_network_of(&id2)["name"], "ov");

    d1.docker_ok(&[
        "run",
        "-d",
        "--name",
        "c1",
        "--network",
        "ov",
        IMAGE,
        "sleep",
        "600",
    ]);
    d2.docker_ok(&[
        "run",
        "-d",
        "--name",
        "c2",
        "--network",
        "ov",
        IMAGE,
        "sleep",
        "600",
    ]);
    let ip = |d: &DockerWorld, c: &str| {
        let text = d.exec_ok(c, &["ip", "-o", "-4", "addr", "show", "eth0"]);
        text.split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .and_then(|a| a.split('/').next())
            .unwrap_or_else(|| panic!("no address in {text}"))
            .to_owned()
    };
    let (ip1, ip2) = (ip(&d1, "c1"), ip(&d2, "c2"));
    assert_ne!(ip1, ip2, "the cluster handed out one address twice");
    assert!(
        ip1.starts_with("10.238.7.") && ip2.starts_with("10.238.7."),
        "{ip1} {ip2}"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut reached = false;
    while !reached && Instant::now() < deadline {
        reached = d2
            .dockerd
            .docker(&["exec", "c2", "ping", "-c", "1", "-W", "1", &ip1])
            .status
            .success();
    }
    assert!(
        reached,
        "c2 on host 2 cannot reach c1 ({ip1}) on host 1:\n{}\n{}",
        d1.w.daemon_log(),
        d2.w.daemon_log()
    );
    let ping = d2.docker_ok(&[
        "run",
        "--rm",
        "--network",
        "ov",
        IMAGE,
        "ping",
        "-c",
        "1",
        "-W",
        "3",
        &ip1,
    ]);
    assert!(ping.contains("1 packets received"), "{ping}");
    let ping = d1.exec_ok("c1", &["ping", "-c", "1", "-W", "3", &ip2]);
    assert!(ping.contains("1 packets received"), "{ping}");

    // Removal: host 2 leaves (its weft network stays: host 1 made it),
    // then host 1 removes it, on every host.
    d2.docker_ok(&["rm", "-f", "c2"]);
    d2.docker_ok(&["network", "rm", "ov"]);
    assert!(d2.w.network_names().contains(&"ov".to_owned()));
    d1.docker_ok(&["rm", "-f", "c1"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut removed = d1.dockerd.docker(&["network", "rm", "ov"]);
    // Host 1 sees host 2's endpoint leave by gossip: until then weft
    // refuses (the network is in use on another host).
    while !removed.status.success() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        removed = d1.dockerd.docker(&["network", "rm", "ov"]);
    }
    assert!(removed.status.success(), "{}", show(&removed));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !d2.w.network_names().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(d1.w.network_names().is_empty() && d2.w.network_names().is_empty());
    assert_eq!(d1.docker_state(), Value::Null);
    assert_eq!(d2.docker_state(), Value::Null);
}

/// `--internal`, `--ipv6` and the MTU option work as with Docker's bridge,
/// and weft's own driver options pass through.
#[test]
fn internal_ipv6_and_mtu_as_with_dockers_bridge() {
    let Some(dw) = DockerWorld::new(false) else {
        return;
    };
    let id = dw.network(
        "inner",
        &[
            "--internal",
            "--ipv6",
            "--subnet",
            "10.238.10.0/24",
            "--subnet",
            "fd00:238:10::/64",
            "-o",
            "com.docker.network.driver.mtu=1400",
            "-o",
            "host_loopback=true",
        ],
    );
    let net = dw.weft_network_of(&id);
    assert_eq!(net["internal"], true, "{net:#}");
    assert_eq!(net["mtu"], 1400, "{net:#}");
    assert_eq!(net["options"]["host_loopback"], "true", "{net:#}");
    assert_eq!(net["subnets"][1]["gateway"], "fd00:238:10::1", "{net:#}");
    dw.docker_ok(&[
        "run",
        "-d",
        "--name",
        "i1",
        "--network",
        "inner",
        IMAGE,
        "sleep",
        "600",
    ]);
    let link = dw.exec_ok("i1", &["ip", "link", "show", "eth0"]);
    assert!(link.contains("mtu 1400"), "{link}");
    let addr = dw.exec_ok("i1", &["ip", "addr", "show", "eth0"]);
    assert!(
        addr.contains("fd00:238:10::2/64") && addr.contains("10.238.10.2/24"),
        "{addr}"
    );
    let routes = dw.exec_ok("i1", &["ip", "route"]);
    assert!(
        !routes.contains("default"),
        "an internal network has no way out: {routes}"
    );
    let ping = dw.exec_ok("i1", &["ping", "-c", "1", "-W", "3", "fd00:238:10::1"]);
    assert!(ping.contains("1 packets received"), "{ping}");
}

/// Where addresses come from: Docker's own IPAM (weft reserves Docker's
/// choice in the weft network, so weft never hands it out again), weft's
/// IPAM with `--ip-range`, `--aux-address` and `--ip`, and Docker's null
/// IPAM (weft chooses the subnet and the addresses and answers them).
#[test]
fn addresses_from_dockers_ipam_wefts_or_none() {
    let Some(mut dw) = DockerWorld::new(false) else {
        return;
    };
    // Docker's IPAM: Docker chooses, weft reserves.
    let id = dw.docker_ok(&[
        "network",
        "create",
        "-d",
        &dw.plugin,
        "--subnet",
        "10.238.8.0/24",
        "dockeripam",
    ]);
    let weft_name = dw.weft_network_of(&id)["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    dw.docker_ok(&[
        "run",
        "-d",
        "--name",
        "d1",
        "--network",
        "dockeripam",
        IMAGE,
        "sleep",
        "600",
    ]);
    let addr = dw.exec_ok("d1", &["ip", "-o", "-4", "addr", "show", "eth0"]);
    assert!(addr.contains("10.238.8.2/24"), "{addr}");
    let sandbox = dw.w.sandbox("native");
    let err = dw.w.weft_err(&[
        "network",
        "connect",
        "--ip",
        "10.238.8.2",
        &weft_name,
        &sandbox,
    ]);
    assert!(err.contains("already in use"), "{err}");

    // weft's IPAM: the range, an auxiliary address kept out, a static --ip.
    dw.network(
        "ranged",
        &[
            "--subnet",
            "10.238.9.0/24",
            "--ip-range",
            "10.238.9.128/25",
            "--aux-address",
            "router=10.238.9.128",
        ],
    );
    dw.docker_ok(&[
        "run",
        "-d",
        "--name",
        "r1",
        "--network",
        "ranged",
        IMAGE,
        "sleep",
        "600",
    ]);
    let addr = dw.exec_ok("r1", &["ip", "-o", "-4", "addr", "show", "eth0"]);
    assert!(
        addr.contains("10.238.9.129/24"),
        "range and aux address: {addr}"
    );
    dw.docker_ok(&[
        "run",
        "-d",
        "--name",
        "r2",
        "--network",
        "ranged",
        "--ip",
        "10.238.9.200",
        IMAGE,
        "sleep",
        "600",
    ]);
    let ping = dw.exec_ok("r1", &["ping", "-c", "1", "-W", "3", "10.238.9.200"]);
    assert!(ping.contains("1 packets received"), "{ping}");
    // A running container joins a second network (eth1) and leaves it.
    dw.docker_ok(&["network", "connect", "ranged", "d1"]);
    let ping = dw.exec_ok("d1", &["ping", "-c", "1", "-W", "3", "10.238.9.200"]);
    assert!(ping.contains("1 packets received"), "{ping}");
    let ranged =
        dw.weft_network_of(&dw.docker_ok(&["network", "inspect", "-f", "{{.Id}}", "ranged"]));
    let ranged_name = ranged["name"].as_str().unwrap_or_default().to_owned();
    assert_eq!(dw.w.endpoints(&ranged_name).len(), 3);
    dw.docker_ok(&["network", "disconnect", "ranged", "d1"]);
    assert_eq!(dw.w.endpoints(&ranged_name).len(), 2);
    let links = dw.exec_ok("d1", &["ip", "-o", "link"]);
    assert!(!links.contains("eth1"), "{links}");
    let links = dw.w.links(&dw.w.host);
    assert!(
        links.iter().all(|l| l == "lo" || l == "client0"),
        "TAPs left in HOST: {links:?}"
    );

    // Docker's null IPAM: weft chooses the subnet and the addresses.
    let id = dw.docker_ok(&[
        "network",
        "create",
        "-d",
        &dw.plugin,
        "--ipam-driver",
        "null",
        "bare",
    ]);
    let net = dw.weft_network_of(&id);
    let subnet = net["subnets"][0]["subnet"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(!subnet.is_empty(), "weft chose no subnet: {net:#}");
    dw.docker_ok(&[
        "run",
        "-d",
        "--name",
        "b1",
        "--network",
        "bare",
        IMAGE,
        "sleep",
        "600",
    ]);
    let addr = dw.exec_ok("b1", &["ip", "-o", "-4", "addr", "show", "eth0"]);
    let gateway = net["subnets"][0]["gateway"].as_str().unwrap_or_default();
    let ping = dw.exec_ok("b1", &["ping", "-c", "1", "-W", "3", gateway]);
    assert!(ping.contains("1 packets received"), "{addr}\n{ping}");

    // All of it goes again.
    dw.docker_ok(&["rm", "-f", "d1", "r1", "r2", "b1"]);
    dw.docker_ok(&["network", "rm", "dockeripam", "ranged", "bare"]);
    assert!(
        dw.w.network_names().is_empty(),
        "{:?}",
        dw.w.network_names()
    );
    assert_eq!(dw.docker_state(), Value::Null);
}
