//! The overlay tests' world: several weft hosts joined by gossip.
//!
//! Topology ([`Cluster`]): a namespace UNDERLAY holding a Linux bridge
//! `br0`; hosts H1, H2, ... (namespaces) each with a veth into `br0`,
//! addressed 192.0.2.N/24; a weft daemon in each host namespace
//! (`--listen 192.0.2.N:7946`, the others `--join 192.0.2.1:7946`,
//! `--dns-upstream` a closed port on the host's own loopback, its own
//! state directory), and sandboxes attached to each host's daemon. A
//! "plain Linux" host (no weft) is a namespace with a veth into `br0` too.
//! Nothing is configured outside namespaces the test made; every daemon
//! runs inside one.

use std::path::PathBuf;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use super::{
    daemon_logs, exec_in, expect_weft_ok, has_tool, kill_group, one_network, require, run, show,
    spawn_background, stdout, unique_name_with, wait_for_daemon, weft_in, CMD_TIMEOUT, WEFT,
};
use serde_json::Value;

/// Every host's topology page (`--web`), on its namespace's loopback.
pub const WEB: &str = "127.0.0.1:8099";

/// Gossip port of every host.
pub const GOSSIP_PORT: u16 = 7946;

/// Ceiling on the life of a daemon or a capture.
pub const LIFETIME: &str = "600";

/// Bound on waiting for the cluster to converge on something.
pub const CONVERGE: Duration = Duration::from_secs(15);

/// The failure-detection target of the issue.
pub const DEAD_WITHIN: Duration = Duration::from_secs(5);

/// The block of a /27 overlay subnet (16 addresses each: 0 or 1) that
/// holds IPv4 address `addr`.
pub fn block_of(addr: &str) -> u8 {
    addr.rsplit('.')
        .next()
        .and_then(|o| o.parse::<u8>().ok())
        .unwrap_or(0)
        / 16
}

/// A unique namespace name `wto-<pid>-<counter>-<role>`.
pub fn unique_name(role: &str) -> String {
    unique_name_with("wto", role)
}

/// The underlay address of host `n` (1-based).
pub fn host_ip(n: usize) -> String {
    format!("192.0.2.{n}")
}

/// One weft host of the cluster.
pub struct Host {
    /// `hN`: its `--node-name` unless `node_name` says otherwise, and its
    /// label in the logs.
    pub name: String,
    /// Its `--node-name`; None: none given (the daemon takes the hostname,
    /// which every host of a test shares: they run in one UTS namespace).
    pub node_name: Option<String>,
    /// Its namespace.
    pub ns: String,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub log: PathBuf,
    pub daemon: Option<Child>,
    /// Its `--listen` when not 192.0.2.N:7946 (0.0.0.0:7946: roaming).
    pub listen: Option<String>,
    pub starts: usize,
    pub dir: PathBuf,
}

/// The cluster world. Drop kills every daemon and capture and deletes
/// every namespace.
pub struct Cluster {
    pub dir: PathBuf,
    pub underlay: String,
    pub hosts: Vec<Host>,
    pub namespaces: Vec<String>,
    pub captures: Vec<Child>,
    /// More `weft daemon` arguments, for every host started from now on.
    pub daemon_args: Vec<String>,
}

impl Host {
    pub fn log_text(&self) -> String {
        format!("[{}]\n{}", self.name, daemon_logs(&self.dir, self.starts))
    }

    pub fn weft(&self, args: &[&str]) -> Output {
        weft_in(&self.ns, &self.socket, args)
    }

    pub fn weft_ok(&self, args: &[&str]) -> String {
        expect_weft_ok(self.weft(args), args, || self.log_text())
    }

    /// `weft peers --json`.
    pub fn peers(&self) -> Value {
        let text = self.weft_ok(&["peers", "--json"]);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("peers is not JSON ({e}): {text}"))
    }

    /// The state of member `name` as this host sees it (None: unknown).
    pub fn member_state(&self, name: &str) -> Option<String> {
        self.peers()["members"]
            .as_array()?
            .iter()
            .find(|m| m["name"] == name)
            .and_then(|m| m["state"].as_str().map(str::to_owned))
    }

    /// `network ls --format json`, the network named `name`.
    pub fn listed_network(&self, name: &str) -> Option<Value> {
        let text = self.weft_ok(&["network", "ls", "--format", "json"]);
        let all: Value = serde_json::from_str(&text).ok()?;
        all.as_array()?.iter().find(|n| n["name"] == name).cloned()
    }

    pub fn inspect(&self, network: &str) -> Value {
        one_network(&self.weft_ok(&["network", "inspect", network]))
    }

    /// Connect `sandbox` to `network` as `name`; its IPv4 address.
    pub fn connect(&self, network: &str, sandbox: &str, name: &str) -> String {
        self.weft_ok(&["network", "connect", "--name", name, network, sandbox]);
        let details = self.inspect(network);
        let endpoint = details["endpoints"]
            .as_array()
            .and_then(|eps| eps.iter().find(|e| e["name"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("endpoint {name} not in inspect: {details:#}"));
        endpoint["addresses"][0]
            .as_str()
            .and_then(|a| a.split('/').next())
            .unwrap_or_else(|| panic!("endpoint {name} has no address: {endpoint:#}"))
            .to_owned()
    }
}

impl Cluster {
    /// The underlay and `hosts` weft hosts, H1 first; H2.. join H1.
    /// `key(n)`: the cluster-key contents of host n, if any. None (skip)
    /// when a requirement is missing.
    pub fn new(hosts: usize, key: impl Fn(usize) -> Option<&'static str>) -> Option<Cluster> {
        Self::with_names(hosts, key, |n| Some(format!("h{n}")))
    }

    /// As [`Cluster::new`], host n's `--node-name` from `node_name(n)`.
    pub fn with_names(
        hosts: usize,
        key: impl Fn(usize) -> Option<&'static str>,
        node_name: impl Fn(usize) -> Option<String>,
    ) -> Option<Cluster> {
        if !require(
            nix::unistd::geteuid().is_root(),
            "needs root (network namespaces, TAPs)",
        ) || !require(has_tool("ip", "-V"), "needs `ip` (iproute2)")
            || !require(has_tool("bridge", "-V"), "needs `bridge` (iproute2)")
            || !require(has_tool("ping", "-V"), "needs `ping` (iputils)")
            || !require(has_tool("tcpdump", "--version"), "needs `tcpdump`")
        {
            return None;
        }
        let dir = std::env::temp_dir().join(unique_name("dir"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let mut c = Cluster {
            dir,
            underlay: String::new(),
            hosts: Vec::new(),
            namespaces: Vec::new(),
            captures: Vec::new(),
            daemon_args: Vec::new(),
        };
        // From here on, Drop cleans up whatever was made.
        c.underlay = c.namespace("underlay");
        let u = c.underlay.clone();
        c.sh(&["ip", "-n", &u, "link", "set", "lo", "up"]);
        c.sh(&["ip", "-n", &u, "link", "add", "br0", "type", "bridge"]);
        c.sh(&["ip", "-n", &u, "link", "set", "br0", "up"]);
        for n in 1..=hosts {
            let key_file = c.add_host(n, key(n), node_name(n));
            c.start_daemon(n - 1, key_file.as_deref());
        }
        Some(c)
    }

    /// Host n (1-based): its namespace and directory; its key file. The
    /// daemon is not started.
    pub fn add_host(
        &mut self,
        n: usize,
        key: Option<&str>,
        node_name: Option<String>,
    ) -> Option<PathBuf> {
        let c = self;
        {
            let ns = c.plain_host(n);
            let name = format!("h{n}");
            let host_dir = c.dir.join(&name);
            std::fs::create_dir_all(&host_dir).expect("host directory");
            let key_file = key.map(|secret| {
                let path = host_dir.join("cluster.key");
                std::fs::write(&path, format!("  {secret}\n")).expect("key file");
                path
            });
            c.hosts.push(Host {
                name,
                node_name,
                ns,
                socket: host_dir.join("weft.sock"),
                state_dir: host_dir.join("state"),
                log: host_dir.join("daemon-1.log"),
                daemon: None,
                listen: None,
                starts: 0,
                dir: host_dir,
            });
            key_file
        }
    }

    /// Run a command (under `timeout`) that must succeed.
    pub fn sh(&self, cmd: &[&str]) -> String {
        let out = run(Command::new("timeout").arg(CMD_TIMEOUT).args(cmd));
        assert!(out.status.success(), "{cmd:?}: {}", show(&out));
        stdout(&out)
    }

    /// Make a fresh namespace; deleted by Drop.
    pub fn namespace(&mut self, role: &str) -> String {
        let name = unique_name(role);
        let out = run(Command::new("timeout").args([CMD_TIMEOUT, "ip", "netns", "add", &name]));
        assert!(out.status.success(), "ip netns add {name}: {}", show(&out));
        self.namespaces.push(name.clone());
        name
    }

    /// A namespace with `v0` = 192.0.2.N/24 in the underlay bridge.
    pub fn plain_host(&mut self, n: usize) -> String {
        let ns = self.namespace(&format!("h{n}"));
        let u = self.underlay.clone();
        let port = format!("p{n}");
        let cidr = format!("{}/24", host_ip(n));
        self.sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        self.sh(&[
            "ip", "-n", &ns, "link", "add", "v0", "type", "veth", "peer", "name", &port, "netns",
            &u,
        ]);
        self.sh(&["ip", "-n", &u, "link", "set", &port, "master", "br0", "up"]);
        self.sh(&["ip", "-n", &ns, "addr", "add", &cidr, "dev", "v0"]);
        self.sh(&["ip", "-n", &ns, "link", "set", "v0", "up"]);
        ns
    }

    /// Send `bytes` of patterned data by TCP from namespace `from` to a
    /// socat server in namespace `to` at `to_addr`, and assert they land
    /// byte for byte (within 20 s).
    pub fn bulk_transfer(&self, from: &str, to: &str, to_addr: &str, bytes: u32, tag: &str) {
        let input = self.dir.join(format!("{tag}-in"));
        let output = self.dir.join(format!("{tag}-out"));
        let data: Vec<u8> = (0..bytes)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        std::fs::write(&input, &data).expect("bulk input");
        let out_path = output.display().to_string();
        let v6 = to_addr.contains(':');
        let (listen, target) = if v6 {
            (
                "TCP6-LISTEN:7000,reuseaddr",
                format!("TCP6:[{to_addr}]:7000"),
            )
        } else {
            ("TCP4-LISTEN:7000,reuseaddr", format!("TCP4:{to_addr}:7000"))
        };
        let started = exec_in(
            to,
            &[
                "sh",
                "-c",
                r#"timeout 60 socat -u "$2" "OPEN:$1,creat,trunc" </dev/null >/dev/null 2>&1 &"#,
                "sh",
                &out_path,
                listen,
            ],
        );
        assert!(started.status.success(), "{}", show(&started));
        self.wait_for(&format!("{tag}: the server listens"), CONVERGE, || {
            stdout(&exec_in(to, &["ss", "-Hltn"])).contains(":7000")
        });
        let sent = exec_in(
            from,
            &[
                "timeout",
                "30",
                "socat",
                "-u",
                &format!("OPEN:{}", input.display()),
                &target,
            ],
        );
        assert!(sent.status.success(), "{tag}: send: {}", show(&sent));
        self.wait_for(
            &format!("{tag}: the bytes land"),
            Duration::from_secs(20),
            || std::fs::metadata(&output).is_ok_and(|m| m.len() == data.len() as u64),
        );
        let received = std::fs::read(&output).unwrap_or_default();
        assert!(
            received == data,
            "{tag}: the bytes across the overlay differ ({} of {} received)",
            received.len(),
            data.len()
        );
    }

    /// Start (again) the daemon of host index `i` and wait until it answers.
    pub fn start_daemon(&mut self, i: usize, key_file: Option<&std::path::Path>) {
        self.spawn_daemon(i, key_file);
        let host = &mut self.hosts[i];
        let (dir, starts, ns, socket) = (
            host.dir.clone(),
            host.starts,
            host.ns.clone(),
            host.socket.clone(),
        );
        wait_for_daemon(&mut host.daemon, &ns, &socket, || daemon_logs(&dir, starts));
    }

    /// Start (again) the daemon of host index `i`; do not wait for it.
    pub fn spawn_daemon(&mut self, i: usize, key_file: Option<&std::path::Path>) {
        let seed = format!("{}:{GOSSIP_PORT}", host_ip(1));
        let host = &mut self.hosts[i];
        let listen = host
            .listen
            .clone()
            .unwrap_or_else(|| format!("{}:{GOSSIP_PORT}", host_ip(i + 1)));
        host.starts += 1;
        host.log = host.dir.join(format!("daemon-{}.log", host.starts));
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns", "exec", &host.ns, "timeout", "-s", "KILL", LIFETIME, WEFT,
        ])
        .arg("--socket")
        .arg(&host.socket)
        .arg("daemon")
        .arg("--state-dir")
        .arg(&host.state_dir)
        // A closed port on the host namespace's own loopback.
        .args(["--dns-upstream", "127.0.0.1:9", "--no-default-network"])
        .args(["--listen", &listen])
        // The topology page, on the host namespace's own loopback.
        .args(["--web", WEB]);
        if let Some(name) = &host.node_name {
            cmd.args(["--node-name", name]);
        }
        if i > 0 {
            cmd.args(["--join", &seed]);
        }
        if let Some(path) = key_file {
            cmd.arg("--cluster-key").arg(path);
        }
        cmd.args(&self.daemon_args);
        cmd.env("WEFT_LOG", "info,weft_overlay=info")
            .env("NO_COLOR", "1");
        let log = host.log.clone();
        host.daemon = Some(spawn_background(&mut cmd, None, &log));
    }

    /// Wait (at most [`CONVERGE`]) for host index `i`'s daemon to exit of
    /// itself (`what` it is, for the failure); its status.
    pub fn wait_exit(&mut self, i: usize, what: &str) -> std::process::ExitStatus {
        let started = Instant::now();
        loop {
            let child = self.hosts[i].daemon.as_mut().expect("a running daemon");
            if let Ok(Some(status)) = child.try_wait() {
                self.hosts[i].daemon = None;
                eprintln!("{what} exited ({status}) after {:?}", started.elapsed());
                return status;
            }
            assert!(
                started.elapsed() < CONVERGE,
                "{what} did not exit:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Send `signal` to host index `i`'s daemon (its whole process group).
    pub fn signal(&self, i: usize, signal: nix::sys::signal::Signal) {
        let child = self.hosts[i].daemon.as_ref().expect("a running daemon");
        let group = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("a pid"));
        nix::sys::signal::killpg(group, signal).expect("signalling the daemon's group");
    }

    /// SIGKILL host index `i`'s daemon.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.hosts[i].daemon.take() {
            kill_group(&mut child);
        }
    }

    pub fn logs(&self) -> String {
        self.hosts
            .iter()
            .map(Host::log_text)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// A sandbox namespace (lo down: weft brings it up).
    pub fn sandbox(&mut self, role: &str) -> String {
        self.namespace(role)
    }

    /// Wait until every host sees every other alive; the time it took.
    pub fn wait_converged(&self) -> Duration {
        let start = Instant::now();
        for _ in 0..300 {
            let all = self.hosts.iter().all(|h| {
                self.hosts
                    .iter()
                    .filter(|o| o.name != h.name)
                    .all(|o| h.member_state(&o.name).as_deref() == Some("alive"))
            });
            if all {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < CONVERGE,
                "members did not all see each other alive within {CONVERGE:?}:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("convergence loop ran out:\n{}", self.logs());
    }

    /// Create overlay network `name` on host 1 with `subnet` and `opts`
    /// (`--opt` values), and wait until every other host lists it.
    pub fn create_overlay(&self, name: &str, subnet: &str, opts: &[&str]) {
        let mut args = vec![
            "network", "create", "--driver", "overlay", "--subnet", subnet,
        ];
        for opt in opts {
            args.extend(["--opt", opt]);
        }
        args.push(name);
        self.hosts[0].weft_ok(&args);
        for host in &self.hosts[1..] {
            self.wait_for(&format!("{name} reaches {}", host.name), CONVERGE, || {
                host.listed_network(name).is_some()
            });
        }
    }

    /// Poll `check` every 100 ms until true, at most `within`; the time it
    /// took, or a panic saying `what` with every log.
    pub fn wait_for(
        &self,
        what: &str,
        within: Duration,
        mut check: impl FnMut() -> bool,
    ) -> Duration {
        let start = Instant::now();
        for _ in 0..1000 {
            if check() {
                return start.elapsed();
            }
            if start.elapsed() >= within {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("{what}: not within {within:?}\n{}", self.logs());
    }

    /// Ping until it answers (bounded); panics with the logs otherwise.
    pub fn ping_ok(&self, ns: &str, target: &str) {
        let mut last = None;
        let start = Instant::now();
        for _ in 0..30 {
            let out = exec_in(ns, &["ping", "-c", "1", "-W", "1", target]);
            if out.status.success() {
                return;
            }
            last = Some(out);
            if start.elapsed() > Duration::from_secs(15) {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let neigh = exec_in(ns, &["ip", "neigh"]);
        panic!(
            "in {ns}: ping {target} failed: {}\n--- ip neigh ---\n{}\n{}",
            last.map(|o| show(&o)).unwrap_or_default(),
            stdout(&neigh),
            self.logs()
        );
    }

    /// Start `tcpdump -v` on the underlay bridge for `filter`, `count`
    /// packets at most; read with [`Cluster::capture_output`].
    pub fn capture(&mut self, filter: &str, count: &str) -> (usize, PathBuf) {
        let path = self
            .dir
            .join(format!("capture-{}.txt", self.captures.len()));
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &self.underlay,
            "timeout",
            "20",
            "tcpdump",
            "-l",
            "-n",
            "-v",
            "-i",
            "br0",
            "-c",
            count,
            filter,
        ]);
        let child = spawn_background(&mut cmd, Some(&path), &path.with_extension("err"));
        self.captures.push(child);
        // tcpdump says "listening on" once it captures.
        let err = path.with_extension("err");
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if std::fs::read_to_string(&err).is_ok_and(|t| t.contains("listening on")) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        (self.captures.len() - 1, path)
    }

    /// Wait (bounded) for capture `index` to end; its text.
    pub fn capture_output(&mut self, index: usize, path: &PathBuf) -> String {
        let started = Instant::now();
        let child = &mut self.captures[index];
        while started.elapsed() < Duration::from_secs(20) {
            if matches!(child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        kill_group(child);
        std::fs::read_to_string(path).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for host in &mut self.hosts {
            if let Some(mut child) = host.daemon.take() {
                kill_group(&mut child);
            }
        }
        for child in &mut self.captures {
            kill_group(child);
        }
        super::remove_world(&self.namespaces, &self.dir);
    }
}
