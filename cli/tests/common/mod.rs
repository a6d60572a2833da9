//! End-to-end test harness: a [`World`] is one weft daemon running inside a
//! network namespace the test made ("HOST"), plus the sandbox namespaces
//! the test makes for it.
//!
//! Network safety (DESIGN.md, "Testing"):
//! - the daemon only ever runs under `ip netns exec HOST`, and so do the
//!   `weft` clients (so that `weft run`, even if it failed to unshare, could
//!   only reach HOST);
//! - every sandbox is a namespace made here; nothing is configured in the
//!   machine's own namespace;
//! - every external command runs under `timeout`, every loop is bounded in
//!   count and time, so a hang fails the test instead of blocking CI;
//! - [`Drop`] kills the daemon and deletes every namespace it made, also
//!   when the test panicked.
//!
//! Without root (or without `ip`/`ping`) a [`World`] is not made: the test
//! is skipped with a message, unless `CI=true`, where that is a failure.

#![allow(dead_code)] // each test binary uses its own part of the harness

pub mod cluster;
pub mod guest;

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The weft binary under test.
pub const WEFT: &str = env!("CARGO_BIN_EXE_weft");

/// HOST's end of the veth to a client namespace
/// ([`World::client_namespace`]): where clients connect.
pub const HOST_ADDR: &str = "192.0.2.1";
/// The client's end: the source address a sandbox must see.
pub const CLIENT_ADDR: &str = "192.0.2.10";
/// The veth's names, in HOST and in CLIENT.
pub const HOST_VETH: &str = "client0";
pub const CLIENT_VETH: &str = "host0";

/// Seconds any one external command may take (`timeout`).
pub const CMD_TIMEOUT: &str = "20";

/// Ceiling on a daemon's life: if the test process dies without running
/// `Drop`, the daemon still goes away.
const DAEMON_LIFETIME: &str = "900";

/// How long a daemon may take to answer after it starts.
const DAEMON_READY: Duration = Duration::from_secs(10);

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn next_id() -> usize {
    COUNTER.fetch_add(1, Ordering::SeqCst)
}

/// A unique namespace name `wte-<pid>-<counter>-<role>` (short).
fn unique_name(role: &str) -> String {
    unique_name_with("wte", role)
}

/// A unique namespace name `<prefix>-<pid>-<counter>-<role>` (short): each
/// test file has its own prefix, so leftovers say where they came from.
pub fn unique_name_with(prefix: &str, role: &str) -> String {
    let role: String = role
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(12)
        .collect();
    format!("{prefix}-{}-{}-{role}", std::process::id(), next_id())
}

/// Whether a tool runs at all (`tool ARG` exits, whatever its status).
pub fn has_tool(tool: &str, arg: &str) -> bool {
    Command::new("timeout")
        .args(["5", tool, arg])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.code() != Some(127) && s.code() != Some(126))
        .unwrap_or(false)
}

/// Skip (return false) or, under CI, fail, when a requirement is missing.
pub fn require(ok: bool, what: &str) -> bool {
    if ok {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("end-to-end test cannot run: {what} (CI=true, so this is a failure)");
    }
    eprintln!("skipping: {what}");
    false
}

/// Text of an output, for messages.
pub fn show(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Stdout as a string.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Stderr as a string.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Run a command to completion (the caller put a `timeout` in front).
pub fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Start `weft capture ARGS -w FILE` in namespace `ns` against the
/// daemon at `socket` (at most 30 s), and wait (bounded) until FILE holds
/// the section header, which the daemon sends once the session is on.
/// Its stderr is piped (the summary line).
#[allow(dead_code)]
pub fn start_capture(ns: &str, socket: &Path, file: &Path, args: &[&str]) -> Child {
    let child = Command::new("ip")
        .args([
            "netns", "exec", ns, "timeout", "-k", "2", "30", WEFT, "--socket",
        ])
        .arg(socket)
        .arg("capture")
        .args(args)
        .arg("-w")
        .arg(file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("starting weft capture");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::metadata(file).map_or(0, |m| m.len()) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// Run a command inside a namespace, under `timeout`.
pub fn exec_in(ns: &str, cmd: &[&str]) -> Output {
    run(Command::new("ip")
        .args(["netns", "exec", ns, "timeout", "-k", "5", CMD_TIMEOUT])
        .args(cmd))
}

/// Run the weft CLI against the daemon on `socket`, from inside `host`
/// (so that even a `weft run` that failed to unshare could only reach it).
pub fn weft_in(host: &str, socket: &Path, args: &[&str]) -> Output {
    run(Command::new("ip")
        .args([
            "netns",
            "exec",
            host,
            "timeout",
            "-k",
            "5",
            CMD_TIMEOUT,
            WEFT,
        ])
        .args(args)
        .env("WEFT_SOCKET", socket)
        .env_remove("WEFT_LOG"))
}

/// The stdout of a weft command that must have succeeded; otherwise panic
/// with its output and the daemon's log.
pub fn expect_weft_ok(out: Output, args: &[&str], daemon_log: impl FnOnce() -> String) -> String {
    assert!(
        out.status.success(),
        "weft {args:?} failed: {}\n--- daemon log ---\n{}",
        show(&out),
        daemon_log()
    );
    stdout(&out)
}

/// The one network of `weft network inspect NAME`'s output.
pub fn one_network(text: &str) -> Value {
    let all: Value =
        serde_json::from_str(text).unwrap_or_else(|e| panic!("inspect is not JSON ({e}): {text}"));
    let list = all.as_array().expect("inspect prints a JSON array");
    assert_eq!(list.len(), 1, "inspect of one network: {text}");
    list[0].clone()
}

/// Spawn `cmd` in its own process group with SIGTERM on our death
/// (`timeout` passes it on), stdout to `out` (or null), stderr to `err`.
pub fn spawn_background(cmd: &mut Command, out: Option<&Path>, err: &Path) -> Child {
    let create =
        |p: &Path| File::create(p).unwrap_or_else(|e| panic!("creating {}: {e}", p.display()));
    let stdout = match out {
        Some(path) => Stdio::from(create(path)),
        None => Stdio::null(),
    };
    cmd.stdin(Stdio::null())
        .stdout(stdout)
        .stderr(create(err))
        .process_group(0);
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches only
    // the child's own attributes.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"))
}

/// SIGKILL a child's process group and reap it.
pub fn kill_group(child: &mut Child) {
    let group = i32::try_from(child.id())
        .ok()
        .map(nix::unistd::Pid::from_raw);
    if let Some(group) = group {
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
    }
    let _ = child.kill();
    let _ = child.wait();
    // The group's other processes (what `timeout` ran) may still be dying
    // with their sockets and ports: wait, bounded, until none is left.
    if let Some(group) = group {
        let deadline = Instant::now() + Duration::from_secs(10);
        while nix::sys::signal::killpg(group, None).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The logs of every start of a daemon, `daemon-N.log` in `dir`.
pub fn daemon_logs(dir: &Path, starts: usize) -> String {
    let mut all = String::new();
    for n in 1..=starts {
        let text = std::fs::read_to_string(dir.join(format!("daemon-{n}.log"))).unwrap_or_default();
        all.push_str(&format!("[daemon start {n}]\n{text}"));
    }
    all
}

/// Wait (bounded by [`DAEMON_READY`]) until the daemon just started as
/// `daemon` answers `weft network ls` on `socket`; panic with its log if it
/// exits or stays silent.
pub fn wait_for_daemon(
    daemon: &mut Option<Child>,
    host: &str,
    socket: &Path,
    daemon_log: impl Fn() -> String,
) {
    let deadline = Instant::now() + DAEMON_READY;
    for _ in 0..200 {
        if let Some(Ok(Some(status))) = daemon.as_mut().map(Child::try_wait) {
            *daemon = None;
            panic!("the daemon exited at start ({status}):\n{}", daemon_log());
        }
        if socket.exists() && weft_in(host, socket, &["network", "ls"]).status.success() {
            return;
        }
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "the daemon did not answer within {DAEMON_READY:?}:\n{}",
        daemon_log()
    );
}

/// The end of a test world, once its processes are gone: its namespaces,
/// last made first (sandboxes before the hosts they hang off), and its
/// directory unless `WEFT_TEST_KEEP` asks to keep it.
pub fn remove_world(namespaces: &[String], dir: &Path) {
    for name in namespaces.iter().rev() {
        delete_namespace(name);
    }
    if std::env::var_os("WEFT_TEST_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Delete a namespace the test made, and its `/etc/netns/NAME` (weft
/// writes a resolv.conf there for named sandboxes; with the daemon killed,
/// nobody else removes it). Never panics: it runs in `Drop`.
pub fn delete_namespace(name: &str) {
    let deleted = Command::new("timeout")
        .args([CMD_TIMEOUT, "ip", "netns", "del", name])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !matches!(deleted, Ok(s) if s.success()) {
        eprintln!("warning: could not delete namespace {name}: {deleted:?}");
    }
    let etc = World::etc_netns(name);
    if etc.exists() {
        let _ = std::fs::remove_dir_all(&etc);
    }
}

/// An HTTP answer from the daemon's API.
#[derive(Debug)]
pub struct HttpAnswer {
    /// Status code.
    pub status: u16,
    /// Body (de-chunked).
    pub body: String,
}

impl HttpAnswer {
    /// The body as JSON (panics with the body if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("answer is not JSON ({e}): {:?}", self.body))
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..10_000 {
        let Some(eol) = find(body, b"\r\n") else {
            break;
        };
        let size_text = String::from_utf8_lossy(&body[..eol]);
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let Ok(size) = usize::from_str_radix(size_text, 16) else {
            break;
        };
        if size == 0 {
            break;
        }
        let start = eol + 2;
        let end = (start + size).min(body.len());
        out.extend_from_slice(&body[start..end]);
        body = body.get(end + 2..).unwrap_or(&[]);
    }
    out
}

/// One weft daemon in a namespace of its own, and the test's sandboxes.
pub struct World {
    /// Fresh temporary directory of this world.
    pub dir: PathBuf,
    /// The daemon's API socket.
    pub socket: PathBuf,
    /// The daemon's state directory.
    pub state_dir: PathBuf,
    /// The namespace the daemon runs in.
    pub host: String,
    default_network: bool,
    /// More arguments of `weft daemon` (e.g. `--docker-plugin NAME`).
    extra_daemon_args: Vec<String>,
    daemon: Option<Child>,
    starts: usize,
    namespaces: Vec<String>,
}

impl World {
    /// A world whose daemon has no default network (`--no-default-network`);
    /// None (skip) when not root or `ip`/`ping` are missing.
    pub fn new() -> Option<World> {
        World::make(false)
    }

    /// A world whose daemon makes the default network `bridge`.
    pub fn with_default_network() -> Option<World> {
        World::make(true)
    }

    /// A world whose daemon (no default network) also gets `args`.
    pub fn with_daemon_args(args: &[&str]) -> Option<World> {
        World::make_with(false, args.iter().map(|a| (*a).to_owned()).collect(), true)
    }

    /// Like [`World::with_daemon_args`], but the daemon is not started:
    /// the test prepares HOST (an underlay address for `--listen`, say)
    /// and calls [`World::start_daemon`].
    pub fn prepared_with_daemon_args(args: &[&str]) -> Option<World> {
        World::make_with(false, args.iter().map(|a| (*a).to_owned()).collect(), false)
    }

    fn make(default_network: bool) -> Option<World> {
        World::make_with(default_network, Vec::new(), true)
    }

    fn make_with(
        default_network: bool,
        extra_daemon_args: Vec<String>,
        start: bool,
    ) -> Option<World> {
        if !require(
            nix::unistd::geteuid().is_root(),
            "needs root (network namespaces, TAPs)",
        ) || !require(has_tool("ip", "-V"), "needs `ip` (iproute2)")
            || !require(has_tool("ping", "-V"), "needs `ping` (iputils)")
        {
            return None;
        }
        let dir = std::env::temp_dir().join(format!("wte-{}-{}", std::process::id(), next_id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let mut world = World {
            socket: dir.join("weft.sock"),
            state_dir: dir.join("state"),
            dir,
            host: String::new(),
            default_network,
            extra_daemon_args,
            daemon: None,
            starts: 0,
            namespaces: Vec::new(),
        };
        // From here on, Drop cleans up whatever was made.
        world.host = world.sandbox("host");
        let out = world.exec(&world.host, &["ip", "link", "set", "lo", "up"]);
        assert!(out.status.success(), "lo up in HOST: {}", show(&out));
        if start {
            world.start_daemon();
        }
        Some(world)
    }

    /// Make a fresh namespace (untouched: even `lo` stays down, weft is
    /// the one to bring it up) and return its name; deleted by Drop.
    pub fn sandbox(&mut self, role: &str) -> String {
        let name = unique_name(role);
        let out = run(Command::new("timeout").args([CMD_TIMEOUT, "ip", "netns", "add", &name]));
        assert!(out.status.success(), "ip netns add {name}: {}", show(&out));
        self.namespaces.push(name.clone());
        name
    }

    /// A CLIENT namespace joined to HOST by a veth made inside HOST
    /// (HOST's end [`HOST_VETH`] with [`HOST_ADDR`]/24, CLIENT's end
    /// [`CLIENT_VETH`] with [`CLIENT_ADDR`]/24), up and answering: where
    /// a published port's clients come from, with an address of their own
    /// that the sandbox must see. Deleted with the world.
    pub fn client_namespace(&mut self) -> String {
        let client = self.sandbox("client");
        let host = self.host.clone();
        let (host_cidr, client_cidr) = (format!("{HOST_ADDR}/24"), format!("{CLIENT_ADDR}/24"));
        for cmd in [
            vec!["ip", "-n", &client, "link", "set", "lo", "up"],
            // Made from inside HOST, the peer goes straight into CLIENT.
            vec![
                "ip",
                "-n",
                &host,
                "link",
                "add",
                HOST_VETH,
                "type",
                "veth",
                "peer",
                "name",
                CLIENT_VETH,
                "netns",
                &client,
            ],
            vec![
                "ip", "-n", &host, "addr", "add", &host_cidr, "dev", HOST_VETH,
            ],
            vec![
                "ip",
                "-n",
                &client,
                "addr",
                "add",
                &client_cidr,
                "dev",
                CLIENT_VETH,
            ],
            vec!["ip", "-n", &host, "link", "set", HOST_VETH, "up"],
            vec!["ip", "-n", &client, "link", "set", CLIENT_VETH, "up"],
        ] {
            let out = run(Command::new("timeout").arg(CMD_TIMEOUT).args(&cmd));
            assert!(out.status.success(), "{cmd:?}: {}", show(&out));
        }
        // The link takes a moment to come up: a bounded wait for a ping.
        assert!(
            self.ping_eventually(&client, HOST_ADDR, Duration::from_secs(10)),
            "CLIENT cannot reach HOST over the veth"
        );
        client
    }

    /// A name that looks like ours but is never created.
    pub fn missing_namespace(&self) -> String {
        unique_name("missing")
    }

    /// `/var/run/netns/NAME`, the path weft stores for a named namespace.
    pub fn netns_path(name: &str) -> String {
        format!("/var/run/netns/{name}")
    }

    /// Run a command inside a namespace, under `timeout`.
    pub fn exec(&self, ns: &str, cmd: &[&str]) -> Output {
        exec_in(ns, cmd)
    }

    /// Like [`World::exec`], panicking (with the daemon's log) on failure;
    /// returns stdout.
    pub fn exec_ok(&self, ns: &str, cmd: &[&str]) -> String {
        let out = self.exec(ns, cmd);
        assert!(
            out.status.success(),
            "in {ns}: {cmd:?} failed: {}\n--- daemon log ---\n{}",
            show(&out),
            self.daemon_log()
        );
        stdout(&out)
    }

    /// Start a command inside a namespace in the background, bounded by
    /// `timeout SECS`, stdout and stderr piped, in a process group of its
    /// own: stop it with [`kill_group`], which takes the command's own
    /// children with it (killing the child alone would only kill
    /// `timeout` and orphan the command).
    pub fn spawn_in(&self, ns: &str, secs: &str, cmd: &[&str]) -> Child {
        Command::new("ip")
            .args(["netns", "exec", ns, "timeout", "-k", "2", secs])
            .args(cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {cmd:?} in {ns}: {e}"))
    }

    /// Run the weft CLI against this world's daemon (from inside HOST).
    pub fn weft(&self, args: &[&str]) -> Output {
        weft_in(&self.host, &self.socket, args)
    }

    /// Run the weft CLI; panics with its stderr and the daemon's log unless
    /// it succeeds; returns stdout.
    pub fn weft_ok(&self, args: &[&str]) -> String {
        expect_weft_ok(self.weft(args), args, || self.daemon_log())
    }

    /// Run the weft CLI, expecting failure; returns stderr.
    pub fn weft_err(&self, args: &[&str]) -> String {
        let out = self.weft(args);
        assert!(
            !out.status.success(),
            "weft {args:?} should have failed: {}",
            show(&out)
        );
        stderr(&out)
    }

    /// `network inspect NAME`: the one network's JSON object.
    pub fn inspect(&self, network: &str) -> Value {
        one_network(&self.weft_ok(&["network", "inspect", network]))
    }

    /// The endpoints of a network (inspect).
    pub fn endpoints(&self, network: &str) -> Vec<Value> {
        self.inspect(network)["endpoints"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The endpoint of namespace `ns` on `network` (panics if absent).
    pub fn endpoint(&self, network: &str, ns: &str) -> Value {
        let path = World::netns_path(ns);
        let endpoints = self.endpoints(network);
        endpoints
            .iter()
            .find(|e| e["sandbox"].as_str() == Some(path.as_str()))
            .cloned()
            .unwrap_or_else(|| panic!("no endpoint of {path} on {network}: {endpoints:#?}"))
    }

    /// The addresses (`a.b.c.d/len`) of an endpoint.
    pub fn addresses(endpoint: &Value) -> Vec<String> {
        endpoint["addresses"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The address of one family of an endpoint, without the prefix length.
    pub fn address(endpoint: &Value, v6: bool) -> String {
        World::addresses(endpoint)
            .iter()
            .map(|a| a.split('/').next().unwrap_or("").to_owned())
            .find(|a| a.contains(':') == v6)
            .unwrap_or_else(|| {
                panic!(
                    "endpoint has no IPv{} address: {endpoint:#}",
                    if v6 { 6 } else { 4 }
                )
            })
    }

    /// `network ls --format json`: the network names.
    pub fn network_names(&self) -> Vec<String> {
        let text = self.weft_ok(&["network", "ls", "--format", "json"]);
        let all: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("ls is not JSON ({e}): {text}"));
        let mut names: Vec<String> = all
            .as_array()
            .expect("ls --format json prints an array")
            .iter()
            .filter_map(|n| n["name"].as_str().map(str::to_owned))
            .collect();
        names.sort();
        names
    }

    /// Interface names in a namespace (`ip -o link`).
    pub fn links(&self, ns: &str) -> Vec<String> {
        let text = self.exec_ok(ns, &["ip", "-o", "link", "show"]);
        text.lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|n| n.trim().split('@').next().unwrap_or("").to_owned())
            .collect()
    }

    /// Ping from a namespace; true when it got answers.
    pub fn ping(&self, ns: &str, args: &[&str]) -> bool {
        let mut cmd = vec!["ping"];
        cmd.extend_from_slice(args);
        self.exec(ns, &cmd).status.success()
    }

    /// Ping from a namespace, panicking with everything useful on failure.
    pub fn ping_ok(&self, ns: &str, args: &[&str]) {
        let mut cmd = vec!["ping"];
        cmd.extend_from_slice(args);
        let out = self.exec(ns, &cmd);
        if !out.status.success() {
            let addr = self.exec(ns, &["ip", "addr"]);
            let neigh = self.exec(ns, &["ip", "neigh"]);
            panic!(
                "in {ns}: {cmd:?} failed: {}\n--- ip addr ---\n{}\n--- ip neigh ---\n{}\n--- daemon log ---\n{}",
                show(&out),
                stdout(&addr),
                stdout(&neigh),
                self.daemon_log()
            );
        }
    }

    /// Retry a ping until it answers, at most `within`; true on success.
    pub fn ping_eventually(&self, ns: &str, target: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        for _ in 0..100 {
            if self.ping(ns, &["-c", "1", "-W", "1", target]) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    }

    /// Start the daemon (again) in HOST with this world's socket and state
    /// directory; waits until it answers.
    pub fn start_daemon(&mut self) {
        assert!(self.daemon.is_none(), "a daemon is already running");
        self.starts += 1;
        let log_path = self.dir.join(format!("daemon-{}.log", self.starts));
        let log = File::create(&log_path)
            .unwrap_or_else(|e| panic!("creating {}: {e}", log_path.display()));
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &self.host,
            "timeout",
            "-s",
            "KILL",
            DAEMON_LIFETIME,
            WEFT,
        ])
        .arg("--socket")
        .arg(&self.socket)
        .arg("daemon")
        .arg("--state-dir")
        .arg(&self.state_dir)
        // Never the host's resolvers: a closed port on the loopback of the
        // daemon's own namespace.
        .args(["--dns-upstream", "127.0.0.1:9"]);
        if !self.default_network {
            cmd.arg("--no-default-network");
        }
        cmd.args(&self.extra_daemon_args);
        cmd.env("WEFT_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            // Its own process group: `kill_daemon` kills `timeout`, the
            // daemon and any attach helper at once.
            .process_group(0);
        // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches
        // only the child's own attributes; if the test process dies,
        // `timeout` gets SIGTERM and passes it on to the daemon.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting the daemon: {e}"));
        self.daemon = Some(child);
        let (dir, starts) = (self.dir.clone(), self.starts);
        wait_for_daemon(&mut self.daemon, &self.host, &self.socket, || {
            daemon_logs(&dir, starts)
        });
    }

    /// SIGKILL the daemon (and its process group) and reap it.
    pub fn kill_daemon(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let group = i32::try_from(child.id())
                .ok()
                .map(nix::unistd::Pid::from_raw);
            if let Some(group) = group {
                let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
            }
            let _ = child.kill();
            let _ = child.wait();
            // `timeout` is reaped; the daemon under it may still be dying
            // with its socket open (a new daemon would find it "live"):
            // wait, bounded, until no process of the group is left.
            if let Some(group) = group {
                let deadline = Instant::now() + Duration::from_secs(10);
                while nix::sys::signal::killpg(group, None).is_ok() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }

    /// Everything the daemon(s) of this world wrote on stderr.
    pub fn daemon_log(&self) -> String {
        daemon_logs(&self.dir, self.starts)
    }

    /// Raw HTTP/1.1 request to the API socket (no curl needed); bounded by
    /// socket timeouts.
    pub fn http(&self, method: &str, path: &str, body: Option<&str>) -> HttpAnswer {
        let mut stream = UnixStream::connect(&self.socket)
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", self.socket.display()));
        let timeout = Some(Duration::from_secs(10));
        stream.set_read_timeout(timeout).expect("read timeout");
        stream.set_write_timeout(timeout).expect("write timeout");
        let body = body.unwrap_or("");
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: weft\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).expect("sending");
        let mut raw = Vec::new();
        stream
            .read_to_end(&mut raw)
            .unwrap_or_else(|e| panic!("reading the answer to {method} {path}: {e}"));
        let head_end = find(&raw, b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no HTTP head: {:?}", String::from_utf8_lossy(&raw)));
        let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line: {head}"));
        let rest = &raw[head_end + 4..];
        let body = if head.contains("transfer-encoding: chunked") {
            dechunk(rest)
        } else {
            rest.to_vec()
        };
        HttpAnswer {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    /// Path of the per-namespace configuration `ip netns exec` binds.
    pub fn etc_netns(name: &str) -> PathBuf {
        Path::new("/etc/netns").join(name)
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.kill_daemon();
        remove_world(&self.namespaces, &self.dir);
    }
}

/// A busybox-static root filesystem at `root` for the container engines'
/// tests (Docker, podman, containerd): every applet linked in `/bin`, the
/// usual directories, `/etc/passwd`, `group`, `hosts` and an empty
/// `resolv.conf`.
pub fn busybox_rootfs(root: &Path) {
    for dir in [
        "bin", "etc", "proc", "sys", "dev", "tmp", "run", "var", "root",
    ] {
        std::fs::create_dir_all(root.join(dir))
            .unwrap_or_else(|e| panic!("{}: {e}", root.join(dir).display()));
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("copying busybox");
    // The original, not the fresh copy: a copy still open in a child
    // another test thread forked meanwhile is "text file busy".
    let list = run(Command::new("/bin/busybox").arg("--list"));
    for applet in stdout(&list)
        .lines()
        .filter(|a| *a != "busybox" && !a.is_empty())
    {
        let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
    }
    for (file, text) in [
        ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
        ("etc/group", "root:x:0:\n"),
        ("etc/hosts", ""),
        ("etc/resolv.conf", ""),
    ] {
        std::fs::write(root.join(file), text).unwrap_or_else(|e| panic!("{file}: {e}"));
    }
}

/// Write an executable script at `path`.
pub fn write_script(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// Seconds a headless Chromium run may take (its start on two cores is
/// the slow part).
#[allow(dead_code)]
pub const CHROMIUM_TIMEOUT: &str = "90";

/// The browser for page tests: $WEFT_CHROMIUM, else Debian's.
#[allow(dead_code)]
pub fn chromium_binary() -> String {
    std::env::var("WEFT_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned())
}

/// One headless Chromium run inside namespace `ns`, with `args` after the
/// common flags (no background networking, a fresh profile under
/// `dir/chromium-RUN`); returns (stdout, stderr, success).
#[allow(dead_code)]
pub fn headless_chromium(
    ns: &str,
    dir: &Path,
    run: &str,
    args: &[String],
) -> (String, String, bool) {
    let dir = dir.join(format!("chromium-{run}"));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let profile = dir.join("profile");
    let (out, err) = (dir.join("stdout"), dir.join("stderr"));
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, "timeout", "-k", "5", CHROMIUM_TIMEOUT])
        .arg(chromium_binary())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .env("HOME", &dir)
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .env("XDG_CACHE_HOME", dir.join("cache"));
    let mut child = spawn_background(&mut cmd, Some(&out), &err);
    let status = child.wait();
    // Whatever Chromium left behind (zygote, renderer) goes with its group.
    kill_group(&mut child);
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let ok = matches!(status, Ok(s) if s.success());
    (read(&out), read(&err), ok)
}
