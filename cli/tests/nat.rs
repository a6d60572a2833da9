//! End-to-end tests of the outbound NAT (UDP and ICMP echo through host
//! sockets of the daemon): ping and UDP request/response to an "internet"
//! beyond the host, the host's address as the source the far side sees,
//! 50 concurrent UDP flows, a refused UDP port (ICMP port unreachable back
//! to the sandbox), the same over IPv6 (ping through an ICMPv6 ping socket,
//! ICMPv6 port unreachable), `--internal` networks (no way out), and a host without
//! `net.ipv4.ping_group_range` (ICMP dropped, logged once). TCP: a
//! connection leaves with the host's address, 32 MiB go through an echo
//! server and back intact (half-close both ways), 50 concurrent
//! connections, a refused port is an immediate error. Needs root,
//! `ip`, `ping`, `socat` (and `tcpdump` for three tests); skipped otherwise
//! (fails under `CI=true`).
//!
//! Topology of each test ([`NatWorld`]): the daemon in a namespace HOST;
//! HOST joined by a veth to a namespace INET (HOST 198.51.100.1/24, INET
//! 198.51.100.10/24), where socat plays UDP servers of the internet. The
//! daemon's `--dns-upstream` is a closed port in INET, so nothing it sends
//! can leave the test's namespaces; the sandboxes' traffic "beyond the
//! gateway" can only go to INET (HOST has no other route). `common::World`
//! has no INET, so this file has its own small setup on the pattern of
//! `dns.rs`, and reuses the harness's free helpers.
//!
//! Subnets: 10.236.N.0/24, a distinct N per test.

#![allow(clippy::disallowed_methods)]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use common::{
    exec_in, expect_weft_ok, has_tool, kill_group, one_network, require, run, show,
    spawn_background, stderr, stdout, unique_name_with, wait_for_daemon, weft_in, World,
    CMD_TIMEOUT, WEFT,
};
use serde_json::Value;

/// HOST's end of the veth to INET: the source address INET must see.
const HOST_ADDR: &str = "198.51.100.1";
const HOST_CIDR: &str = "198.51.100.1/24";
/// INET's end of the veth, where the UDP servers listen.
const INET_ADDR: &str = "198.51.100.10";
const INET_CIDR: &str = "198.51.100.10/24";
/// The daemon's DNS upstream: a closed port in INET (never the machine's).
const DNS_UPSTREAM: &str = "198.51.100.10:9";
/// Names of the veth's ends.
const HOST_VETH: &str = "inet0";
const INET_VETH: &str = "host0";
/// A UDP echo server in INET (`cat`).
const ECHO_PORT: u16 = 7777;
/// A port of INET where nothing listens: the kernel answers port
/// unreachable.
const CLOSED_PORT: u16 = 7778;
/// A UDP server in INET that answers `PEERADDR PEERPORT LINE` (who asked,
/// from which port, what).
const WHO_PORT: u16 = 7779;

/// A TCP server in INET that answers `PEERADDR PEERPORT` and closes.
const TCP_WHO_PORT: u16 = 7780;
/// A TCP echo server in INET (`cat`): what comes in goes back, and the
/// server closes after the client's end of stream (half-close).
const TCP_ECHO_PORT: u16 = 7781;
/// A TCP port of INET where nothing listens.
const TCP_CLOSED_PORT: u16 = 7782;

/// Ceiling on the life of the daemon and of the servers.
const LIFETIME: &str = "600";

/// A unique namespace name `wtn-<pid>-<counter>-<role>`.
fn unique_name(role: &str) -> String {
    unique_name_with("wtn", role)
}

fn read_text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// A weft daemon in HOST whose only world beyond is INET, the UDP servers
/// in INET, and the test's sandboxes. Drop kills every process it started
/// and deletes everything.
struct NatWorld {
    dir: PathBuf,
    socket: PathBuf,
    state_dir: PathBuf,
    host: String,
    inet: String,
    namespaces: Vec<String>,
    daemon: Option<Child>,
    /// The servers and captures in INET.
    background: Vec<Child>,
    /// Whether the daemon keeps CAP_NET_RAW (raw ICMP sockets).
    net_raw: bool,
}

impl NatWorld {
    /// A world; `ping_allowed`: whether HOST's `net.ipv4.ping_group_range`
    /// lets the daemon open ping sockets (else it stays at the namespace's
    /// default "1 0"). None (skip) when a requirement is missing.
    fn new(ping_allowed: bool) -> Option<NatWorld> {
        Self::with_daemon_args(ping_allowed, &[])
    }

    /// A world whose daemon gets `extra` arguments.
    fn with_daemon_args(ping_allowed: bool, extra: &[&str]) -> Option<NatWorld> {
        Self::make(ping_allowed, extra, true)
    }

    /// A world whose daemon may open neither ping sockets (HOST's
    /// ping_group_range left at "1 0") nor raw ones (no CAP_NET_RAW).
    fn without_ping_or_raw_sockets() -> Option<NatWorld> {
        if !require(
            has_tool("setpriv", "--help"),
            "needs `setpriv` (util-linux)",
        ) {
            return None;
        }
        Self::make(false, &[], false)
    }

    fn make(ping_allowed: bool, extra: &[&str], net_raw: bool) -> Option<NatWorld> {
        if !require(
            nix::unistd::geteuid().is_root(),
            "needs root (network namespaces, TAPs)",
        ) || !require(has_tool("ip", "-V"), "needs `ip` (iproute2)")
            || !require(has_tool("ping", "-V"), "needs `ping` (iputils)")
            || !require(has_tool("socat", "-V"), "needs `socat`")
            || !require(has_tool("ss", "-V"), "needs `ss` (iproute2)")
        {
            return None;
        }
        let dir = std::env::temp_dir().join(unique_name("dir"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let mut w = NatWorld {
            socket: dir.join("weft.sock"),
            state_dir: dir.join("state"),
            dir,
            host: String::new(),
            inet: String::new(),
            namespaces: Vec::new(),
            daemon: None,
            background: Vec::new(),
            net_raw,
        };
        // From here on, Drop cleans up whatever was made.
        w.host = w.sandbox("host");
        w.inet = w.sandbox("inet");
        let (host, inet) = (w.host.clone(), w.inet.clone());
        for cmd in [
            vec!["ip", "-n", &host, "link", "set", "lo", "up"],
            vec!["ip", "-n", &inet, "link", "set", "lo", "up"],
            vec![
                "ip", "-n", &host, "link", "add", HOST_VETH, "type", "veth", "peer", "name",
                INET_VETH, "netns", &inet,
            ],
            vec![
                "ip", "-n", &host, "addr", "add", HOST_CIDR, "dev", HOST_VETH,
            ],
            vec![
                "ip", "-n", &inet, "addr", "add", INET_CIDR, "dev", INET_VETH,
            ],
            vec!["ip", "-n", &host, "link", "set", HOST_VETH, "up"],
            vec!["ip", "-n", &inet, "link", "set", INET_VETH, "up"],
        ] {
            let out = run(Command::new("timeout").arg(CMD_TIMEOUT).args(&cmd));
            assert!(out.status.success(), "{cmd:?}: {}", show(&out));
        }
        // INET's kernel answers a closed port with port unreachable, by
        // default at most ~6 at once and one a second after that (per
        // destination): without a limit, every refusal is answered.
        let out = w.exec(&inet, &["sysctl", "-qw", "net.ipv4.icmp_ratelimit=0"]);
        assert!(out.status.success(), "sysctl in INET: {}", show(&out));
        if ping_allowed {
            // Per network namespace: this is HOST's, not the machine's.
            let out = w.exec(
                &host,
                &["sysctl", "-qw", "net.ipv4.ping_group_range=0 2147483647"],
            );
            assert!(out.status.success(), "sysctl in HOST: {}", show(&out));
        }
        w.start_servers();
        w.start_daemon(extra);
        Some(w)
    }

    /// Make a fresh namespace; deleted by Drop.
    fn sandbox(&mut self, role: &str) -> String {
        let name = unique_name(role);
        let out = run(Command::new("timeout").args([CMD_TIMEOUT, "ip", "netns", "add", &name]));
        assert!(out.status.success(), "ip netns add {name}: {}", show(&out));
        self.namespaces.push(name.clone());
        name
    }

    /// Run a command inside a namespace, under `timeout`.
    fn exec(&self, ns: &str, cmd: &[&str]) -> Output {
        exec_in(ns, cmd)
    }

    /// Start a long-running command in a namespace (bounded by LIFETIME),
    /// stdout to `NAME.out` (when `keep_stdout`), stderr to `NAME.err`.
    fn background(&mut self, ns: &str, name: &str, keep_stdout: bool, cmd: &[&str]) {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", ns, "timeout", "-s", "KILL", LIFETIME])
            .args(cmd);
        let out = self.dir.join(format!("{name}.out"));
        let err = self.dir.join(format!("{name}.err"));
        let child = spawn_background(&mut command, keep_stdout.then_some(out.as_path()), &err);
        self.background.push(child);
    }

    /// The UDP servers in INET; waits until both listen.
    fn start_servers(&mut self) {
        let inet = self.inet.clone();
        let echo = format!("UDP4-RECVFROM:{ECHO_PORT},bind={INET_ADDR},fork");
        self.background(&inet, "echo", false, &["socat", &echo, "EXEC:cat"]);
        let who = format!("UDP4-RECVFROM:{WHO_PORT},bind={INET_ADDR},fork");
        self.background(
            &inet,
            "who",
            false,
            &[
                "socat",
                &who,
                r#"SYSTEM:read line; echo "$SOCAT_PEERADDR $SOCAT_PEERPORT $line""#,
            ],
        );
        let tcp_who = format!("TCP4-LISTEN:{TCP_WHO_PORT},bind={INET_ADDR},fork,reuseaddr");
        self.background(
            &inet,
            "tcp-who",
            false,
            &[
                "socat",
                &tcp_who,
                r#"SYSTEM:echo "$SOCAT_PEERADDR $SOCAT_PEERPORT""#,
            ],
        );
        let tcp_echo = format!("TCP4-LISTEN:{TCP_ECHO_PORT},bind={INET_ADDR},fork,reuseaddr");
        self.background(&inet, "tcp-echo", false, &["socat", &tcp_echo, "EXEC:cat"]);
        let want = [
            format!("{INET_ADDR}:{ECHO_PORT}"),
            format!("{INET_ADDR}:{WHO_PORT}"),
            format!("{INET_ADDR}:{TCP_WHO_PORT}"),
            format!("{INET_ADDR}:{TCP_ECHO_PORT}"),
        ];
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut listening = String::new();
        for _ in 0..100 {
            listening = stdout(&self.exec(&inet, &["ss", "-Hlunt"]));
            if want.iter().all(|w| listening.contains(w.as_str())) {
                return;
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "the UDP servers in INET do not listen: {listening}\n--- echo ---\n{}\n--- who ---\n{}",
            read_text(&self.dir.join("echo.err")),
            read_text(&self.dir.join("who.err"))
        );
    }

    /// Start the daemon in HOST (explicit `--dns-upstream` in INET, never
    /// the machine's resolvers); waits until it answers.
    fn start_daemon(&mut self, extra: &[&str]) {
        assert!(self.daemon.is_none(), "a daemon is already running");
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns", "exec", &self.host, "timeout", "-s", "KILL", LIFETIME,
        ]);
        if !self.net_raw {
            // Root without CAP_NET_RAW: no raw sockets.
            cmd.args(["setpriv", "--bounding-set=-net_raw", "--inh-caps=-net_raw"]);
        }
        cmd.arg(WEFT)
            .arg("--socket")
            .arg(&self.socket)
            .arg("daemon")
            .arg("--state-dir")
            .arg(&self.state_dir)
            .args(["--no-default-network", "--dns-upstream", DNS_UPSTREAM])
            .args(extra)
            .env("WEFT_LOG", "info")
            .env("NO_COLOR", "1");
        let log = self.dir.join("daemon.log");
        self.daemon = Some(spawn_background(&mut cmd, None, &log));
        wait_for_daemon(&mut self.daemon, &self.host, &self.socket, || {
            read_text(&log)
        });
    }

    fn daemon_log(&self) -> String {
        read_text(&self.dir.join("daemon.log"))
    }

    /// Run the weft CLI against this world's daemon (from inside HOST).
    fn weft(&self, args: &[&str]) -> Output {
        weft_in(&self.host, &self.socket, args)
    }

    /// The weft CLI, panicking with the daemon's log unless it succeeds.
    fn weft_ok(&self, args: &[&str]) -> String {
        expect_weft_ok(self.weft(args), args, || self.daemon_log())
    }

    /// `network inspect NAME`: the one network's JSON object.
    fn inspect(&self, network: &str) -> Value {
        one_network(&self.weft_ok(&["network", "inspect", network]))
    }

    /// Create a network (`--internal` when asked); returns its gateway.
    fn network(&self, name: &str, subnet: &str, internal: bool) -> String {
        let mut args = vec!["network", "create", "--subnet", subnet];
        if internal {
            args.push("--internal");
        }
        args.push(name);
        self.weft_ok(&args);
        let net = self.inspect(name);
        net["subnets"][0]["gateway"]
            .as_str()
            .unwrap_or_else(|| panic!("network without a gateway: {net:#}"))
            .to_owned()
    }

    /// Connect `ns` to `network`; returns its IPv4 address.
    fn connect(&self, network: &str, ns: &str) -> String {
        self.weft_ok(&["network", "connect", network, ns]);
        let path = World::netns_path(ns);
        let net = self.inspect(network);
        let endpoint = net["endpoints"]
            .as_array()
            .and_then(|eps| {
                eps.iter()
                    .find(|e| e["sandbox"].as_str() == Some(path.as_str()))
            })
            .cloned()
            .unwrap_or_else(|| panic!("no endpoint of {path} on {network}: {net:#}"));
        World::address(&endpoint, false)
    }

    /// A new sandbox on a new network `name` with `subnet`.
    fn sandbox_in(&mut self, name: &str, subnet: &str) -> String {
        let ns = self.sandbox(name);
        self.network(name, subnet, false);
        self.connect(name, &ns);
        ns
    }

    /// A new sandbox on a new network `name` with `subnet` and MTU 1500.
    fn sandbox_in_mtu_1500(&mut self, name: &str, subnet: &str) -> String {
        let ns = self.sandbox(name);
        self.weft_ok(&[
            "network", "create", "--subnet", subnet, "--mtu", "1500", name,
        ]);
        self.connect(name, &ns);
        ns
    }

    /// `ping ARGS` in `ns`.
    fn ping(&self, ns: &str, args: &[&str]) -> Output {
        let mut cmd = vec!["ping"];
        cmd.extend_from_slice(args);
        self.exec(ns, &cmd)
    }

    /// `ping -c COUNT -W 2 TARGET` in `ns`, panicking unless every echo is
    /// answered; returns ping's output.
    fn ping_all(&self, ns: &str, count: &str, target: &str) -> String {
        let out = self.ping(ns, &["-n", "-c", count, "-W", "2", target]);
        let text = stdout(&out);
        assert!(
            out.status.success() && text.contains(" 0% packet loss"),
            "in {ns}: ping -c {count} {target}: {}\n{}",
            show(&out),
            self.diagnostics(ns)
        );
        text
    }

    /// One UDP request from `ns` to INET:`port`: `PAYLOAD\n` sent by socat,
    /// which then waits `linger` seconds for answers. Returns socat's
    /// output and how long it took.
    fn udp(&self, ns: &str, port: u16, payload: &str, linger: &str) -> (Output, Duration) {
        let target = format!("UDP4:{INET_ADDR}:{port}");
        let start = Instant::now();
        let out = self.exec(
            ns,
            &[
                "sh",
                "-c",
                r#"printf '%s\n' "$1" | socat -t "$2" - "$3""#,
                "sh",
                payload,
                linger,
                &target,
            ],
        );
        (out, start.elapsed())
    }

    /// A TCP connection from `ns` to INET:`port` with socat: sends
    /// `input` (a file, or nothing), half-closes, and waits up to `linger`
    /// seconds for the server to finish; returns socat's output and how
    /// long it took.
    fn tcp(&self, ns: &str, port: u16, input: Option<&Path>, linger: &str) -> (Output, Duration) {
        let target = format!("TCP4:{INET_ADDR}:{port}");
        let input = input.map_or_else(|| "/dev/null".to_owned(), |p| p.display().to_string());
        let start = Instant::now();
        let out = self.exec(
            ns,
            &[
                "sh",
                "-c",
                r#"socat -t "$1" -T 30 - "$2" < "$3""#,
                "sh",
                linger,
                &target,
                &input,
            ],
        );
        (out, start.elapsed())
    }

    /// Start tcpdump in INET on its veth (`-c COUNT` when given), and wait
    /// until it is listening; its output goes to `NAME.out`.
    fn capture(&mut self, name: &str, count: Option<&str>, filter: &str) -> Capture {
        let inet = self.inet.clone();
        let mut cmd = vec!["tcpdump", "-n", "-l", "-p", "-i", INET_VETH];
        if let Some(count) = count {
            cmd.extend(["-c", count]);
        }
        cmd.push(filter);
        self.background(&inet, name, true, &cmd);
        let index = self.background.len() - 1;
        let capture = Capture {
            out: self.dir.join(format!("{name}.out")),
            err: self.dir.join(format!("{name}.err")),
            index,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        for _ in 0..200 {
            if read_text(&capture.err).contains("listening on") {
                return capture;
            }
            if let Ok(Some(status)) = self.background[index].try_wait() {
                panic!(
                    "tcpdump exited at start ({status}): {}",
                    read_text(&capture.err)
                );
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("tcpdump is not listening: {}", read_text(&capture.err));
    }

    /// Wait (at most `within`) until the capture exited (its `-c` count
    /// reached) or printed `pattern`; returns what it printed.
    fn capture_wait(
        &mut self,
        capture: &Capture,
        pattern: Option<&str>,
        within: Duration,
    ) -> String {
        let deadline = Instant::now() + within;
        for _ in 0..1000 {
            let exited = matches!(self.background[capture.index].try_wait(), Ok(Some(_)));
            let text = read_text(&capture.out);
            let found = pattern.is_some_and(|p| text.contains(p));
            if exited || found || Instant::now() >= deadline {
                return text;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        read_text(&capture.out)
    }

    /// What helps to understand a failure from `ns`.
    fn diagnostics(&self, ns: &str) -> String {
        let addr = stdout(&self.exec(ns, &["ip", "addr"]));
        let route = stdout(&self.exec(ns, &["ip", "route"]));
        let neigh = stdout(&self.exec(ns, &["ip", "neigh"]));
        format!(
            "--- ip addr ---\n{addr}--- ip route ---\n{route}--- ip neigh ---\n{neigh}--- daemon log ---\n{}",
            self.daemon_log()
        )
    }
}

/// A tcpdump in INET: its output files and its place in `background`.
struct Capture {
    out: PathBuf,
    err: PathBuf,
    index: usize,
}

impl Drop for NatWorld {
    fn drop(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            kill_group(&mut child);
        }
        for child in &mut self.background {
            kill_group(child);
        }
        common::remove_world(&self.namespaces, &self.dir);
    }
}

/// (1) ICMP echo from a sandbox to the internet is answered, and the far
/// side sees the host's address as the source, not the sandbox's.
#[test]
fn ping_leaves_with_the_hosts_address() {
    let Some(mut w) = NatWorld::new(true) else {
        return;
    };
    if !require(has_tool("tcpdump", "--version"), "needs `tcpdump`") {
        return;
    }
    let a = w.sandbox("a");
    w.network("pi", "10.236.1.0/24", false);
    let addr = w.connect("pi", &a);
    // The first request and its reply, as INET sees them.
    let capture = w.capture("icmp", Some("2"), "icmp");
    let start = Instant::now();
    let text = w.ping_all(&a, "3", INET_ADDR);
    eprintln!("ping -c 3 {INET_ADDR}: {:?}", start.elapsed());
    assert!(
        text.contains(&format!("bytes from {INET_ADDR}: icmp_seq=1")),
        "the answers come from {INET_ADDR}: {text}"
    );
    let seen = w.capture_wait(&capture, None, Duration::from_secs(5));
    let request = format!("IP {HOST_ADDR} > {INET_ADDR}: ICMP echo request");
    let reply = format!("IP {INET_ADDR} > {HOST_ADDR}: ICMP echo reply");
    assert!(
        seen.contains(&request) && seen.contains(&reply),
        "INET saw (wanted {request:?} and {reply:?}):\n{seen}\n--- daemon log ---\n{}",
        w.daemon_log()
    );
    assert!(
        !seen.contains(&addr),
        "the sandbox's address {addr} reached INET:\n{seen}"
    );
}

/// (1b) IPv6: a sandbox on a dual-stack network pings INET's IPv6 address
/// through an ICMPv6 ping socket of the daemon (INET sees HOST's IPv6
/// address, never the sandbox's), and UDP over IPv6 to a closed port of
/// INET is refused at once (ICMPv6 port unreachable back to the sandbox).
#[test]
fn ipv6_ping_and_refused_udp_leave_with_the_hosts_address() {
    const HOST_V6: &str = "2001:db8:236::1";
    const INET_V6: &str = "2001:db8:236::10";
    let Some(mut w) = NatWorld::new(true) else {
        return;
    };
    if !require(has_tool("tcpdump", "--version"), "needs `tcpdump`") {
        return;
    }
    let (host, inet) = (w.host.clone(), w.inet.clone());
    for (ns, cidr, dev) in [
        (&host, format!("{HOST_V6}/64"), HOST_VETH),
        (&inet, format!("{INET_V6}/64"), INET_VETH),
    ] {
        let out = w.exec(ns, &["ip", "addr", "add", &cidr, "dev", dev, "nodad"]);
        assert!(out.status.success(), "{}", show(&out));
    }
    let out = w.exec(&inet, &["sysctl", "-qw", "net.ipv6.icmp.ratelimit=0"]);
    assert!(out.status.success(), "{}", show(&out));
    let a = w.sandbox("a");
    w.weft_ok(&[
        "network",
        "create",
        "--subnet",
        "10.236.20.0/24",
        "--subnet",
        "fd00:236:20::/64",
        "p6",
    ]);
    w.connect("p6", &a);

    let capture = w.capture(
        "icmp6",
        Some("2"),
        "icmp6 and (ip6[40] == 128 or ip6[40] == 129)",
    );
    let text = w.ping_all(&a, "3", INET_V6);
    assert!(
        text.contains(&format!("bytes from {INET_V6}: icmp_seq=1")),
        "the answers come from {INET_V6}: {text}"
    );
    let seen = w.capture_wait(&capture, None, Duration::from_secs(5));
    let request = format!("IP6 {HOST_V6} > {INET_V6}: ICMP6, echo request");
    let reply = format!("IP6 {INET_V6} > {HOST_V6}: ICMP6, echo reply");
    assert!(
        seen.contains(&request) && seen.contains(&reply),
        "INET saw (wanted {request:?} and {reply:?}):\n{seen}\n--- daemon log ---\n{}",
        w.daemon_log()
    );
    assert!(
        !seen.contains("fd00:236:20"),
        "the sandbox's address reached INET:\n{seen}"
    );

    let target = format!("UDP6:[{INET_V6}]:{CLOSED_PORT}");
    let start = Instant::now();
    let out = w.exec(
        &a,
        &[
            "sh",
            "-c",
            r#"echo anyone | socat -t 5 - "$1""#,
            "sh",
            &target,
        ],
    );
    let elapsed = start.elapsed();
    assert!(
        !out.status.success() && stderr(&out).to_lowercase().contains("refused"),
        "UDP over IPv6 to a closed port: {}\n{}",
        show(&out),
        w.diagnostics(&a)
    );
    assert!(
        elapsed < Duration::from_secs(2),
        "\"refused\" after {elapsed:?}"
    );
}

/// (2) A UDP request from a sandbox gets its answer (the payload, byte for
/// byte, up to 1,200 bytes), and the server sees the host's address.
#[test]
fn udp_request_gets_its_answer_from_the_hosts_address() {
    let Some(mut w) = NatWorld::new(true) else {
        return;
    };
    let a = w.sandbox("a");
    w.network("ud", "10.236.2.0/24", false);
    let addr = w.connect("ud", &a);

    let large: String = (0..1200)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    for payload in ["hello from the sandbox", large.as_str()] {
        let (out, elapsed) = w.udp(&a, ECHO_PORT, payload, "2");
        assert!(
            out.status.success() && stdout(&out) == format!("{payload}\n"),
            "echo of {} bytes: {}\n{}",
            payload.len(),
            show(&out),
            w.diagnostics(&a)
        );
        eprintln!("UDP echo of {} bytes: {elapsed:?}", payload.len());
    }

    let (out, _) = w.udp(&a, WHO_PORT, "who-am-i", "2");
    let text = stdout(&out);
    let fields: Vec<&str> = text.split_whitespace().collect();
    assert!(
        out.status.success() && fields.len() == 3 && fields[2] == "who-am-i",
        "who: {}\n{}",
        show(&out),
        w.diagnostics(&a)
    );
    assert_eq!(
        fields[0], HOST_ADDR,
        "the server saw {} as the source (the sandbox is {addr})",
        fields[0]
    );
    assert!(
        fields[1].parse::<u16>().is_ok_and(|p| p > 0),
        "a source port: {text}"
    );
}

/// (2b) A UDP datagram larger than the sandbox's MTU: the sandbox's kernel
/// sends it in IP fragments, which the NAT reassembles before its host
/// socket sends the datagram; the echo (as large) comes back whole.
#[test]
fn a_udp_datagram_larger_than_the_mtu_goes_out_and_back() {
    let Some(mut w) = NatWorld::new(true) else {
        return;
    };
    let a = w.sandbox("a");
    w.network("fr", "10.236.21.0/24", false);
    w.connect("fr", &a);
    let large: String = (0..4000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let (out, elapsed) = w.udp(&a, ECHO_PORT, &large, "3");
    assert!(
        out.status.success() && stdout(&out) == format!("{large}\n"),
        "echo of {} bytes in fragments ({elapsed:?}): {} bytes back, {}\n{}",
        large.len(),
        stdout(&out).len(),
        stderr(&out),
        w.diagnostics(&a)
    );
    // ICMP too: a 3000-byte echo leaves in fragments and comes back.
    let out = w.ping(&a, &["-n", "-c", "2", "-W", "2", "-s", "3000", INET_ADDR]);
    let text = stdout(&out);
    assert!(
        out.status.success()
            && text.contains("3008 bytes from")
            && text.contains(" 0% packet loss"),
        "ping -s 3000: {}\n{}",
        show(&out),
        w.diagnostics(&a)
    );
}

/// (3) 50 concurrent UDP flows from one sandbox (50 source ports) each get
/// their own payload back, and leave the host from 50 distinct ports: flows
/// map one to one onto host sockets.
#[test]
fn fifty_concurrent_udp_flows_map_one_to_one() {
    const FLOWS: usize = 50;
    let Some(mut w) = NatWorld::new(true) else {
        return;
    };
    let a = w.sandbox("a");
    w.network("fl", "10.236.3.0/24", false);
    w.connect("fl", &a);
    // A first exchange, so that the gateway's neighbour entry is there.
    let (out, _) = w.udp(&a, ECHO_PORT, "warm-up", "2");
    assert_eq!(stdout(&out), "warm-up\n", "{}", show(&out));

    let flows = w.dir.join("flows");
    std::fs::create_dir_all(&flows).expect("creating the flows directory");
    let flows = flows.to_str().expect("UTF-8 path").to_owned();
    let target = format!("UDP4:{INET_ADDR}:{WHO_PORT}");
    let count = FLOWS.to_string();
    // Every client keeps its socket 4 s after sending: the 50 flows are
    // alive at once.
    let script = r#"i=1
while [ "$i" -le "$3" ]; do
  printf 'flow-%s\n' "$i" | socat -t 4 - "$2" >"$1/out-$i" 2>"$1/err-$i" &
  i=$((i + 1))
done
wait"#;
    let start = Instant::now();
    let out = w.exec(&a, &["sh", "-c", script, "sh", &flows, &target, &count]);
    let elapsed = start.elapsed();
    assert!(out.status.success(), "the clients: {}", show(&out));

    let mut ports = BTreeSet::new();
    let mut wrong = Vec::new();
    for i in 1..=FLOWS {
        let got = read_text(&Path::new(&flows).join(format!("out-{i}")));
        let fields: Vec<&str> = got.split_whitespace().collect();
        let flow = format!("flow-{i}");
        if got.lines().count() == 1
            && fields.len() == 3
            && fields[0] == HOST_ADDR
            && fields[2] == flow
        {
            ports.insert(fields[1].to_owned());
        } else {
            let err = read_text(&Path::new(&flows).join(format!("err-{i}")));
            wrong.push(format!("{flow}: got {got:?}, stderr {err:?}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {FLOWS} flows without their own answer:\n{}\n--- daemon log ---\n{}",
        wrong.len(),
        wrong.join("\n"),
        w.daemon_log()
    );
    assert_eq!(
        ports.len(),
        FLOWS,
        "{FLOWS} flows left the host from {} ports: {ports:?}",
        ports.len()
    );
    eprintln!("{FLOWS} concurrent UDP flows answered in {elapsed:?} (4 s linger included)");
}

/// (4) UDP to a closed port: the sandbox learns it at once (ICMP port
/// unreachable from the gateway), and the sandbox can go on.
#[test]
fn refused_udp_port_is_an_immediate_error() {
    let Some(mut w) = NatWorld::new(true) else {
        return;
    };
    let a = w.sandbox("a");
    w.network("rf", "10.236.4.0/24", false);
    w.connect("rf", &a);
    // socat would wait 5 s for an answer: an exit before 2 s is the error.
    let (out, elapsed) = w.udp(&a, CLOSED_PORT, "anyone?", "5");
    assert!(
        !out.status.success() && stderr(&out).to_lowercase().contains("refused"),
        "to a closed port: {}\n{}",
        show(&out),
        w.diagnostics(&a)
    );
    assert!(
        elapsed < Duration::from_secs(2),
        "\"refused\" after {elapsed:?}"
    );
    eprintln!("closed port: refused after {elapsed:?}");
    // Twice (a new flow; the old one may still be in the table), and an
    // open port still answers.
    let (out, elapsed) = w.udp(&a, CLOSED_PORT, "anyone? again", "5");
    assert!(
        !out.status.success()
            && stderr(&out).to_lowercase().contains("refused")
            && elapsed < Duration::from_secs(2),
        "to a closed port, again ({elapsed:?}): {}",
        show(&out)
    );
    let (out, _) = w.udp(&a, ECHO_PORT, "still there", "2");
    assert_eq!(stdout(&out), "still there\n", "{}", show(&out));
}

/// (7) A TCP connection from a sandbox reaches the internet, and the server
/// sees the host's address as its peer.
#[test]
fn tcp_connection_leaves_with_the_hosts_address() {
    let Some(mut w) = NatWorld::new(true) else {
        return;
    };
    let a = w.sandbox_in("tc", "10.236.8.0/24");
    let (out, _) = w.tcp(&a, TCP_WHO_PORT, None, "5");
    let text = stdout(&out);
    let mut fields = text.split_whitespace();
    assert_eq!(
        fields.next(),
        Some(HOST_ADDR),
        "the server's view of its peer: {}
{}",
        show(&out),
        w.diagnostics(&a)
    );
    let port: u16 = fields
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no peer port in {text:?}"));
    assert!(port > 0);
}

/// (8) 32 MiB through an echo server in INET come back intact: the
/// sandbox's end of stream reaches the server (which then ends its side),
/// and the server's end of stream reaches the sandbox. At MTU 1500, so the
/// sandbox's TSO segments go into the relay whole and the relay's 64 KiB
/// segments come back as GSO frames the sandbox's kernel cuts to its MSS.
#[test]
fn tcp_large_transfer_is_intact_both_ways() {
    let Some(mut w) = NatWorld::new(true) else {
        return;
    };
    let a = w.sandbox_in_mtu_1500("tl", "10.236.9.0/24");
    let input = w.dir.join("input");
    let data: Vec<u8> = (0..32u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(&input, &data).unwrap();
    let output = w.dir.join("output");
    let out = w.exec(
        &a,
        &[
            "sh",
            "-c",
            r#"socat -t 30 -T 30 - "$1" < "$2" > "$3""#,
            "sh",
            &format!("TCP4:{INET_ADDR}:{TCP_ECHO_PORT}"),
            &input.display().to_string(),
            &output.display().to_string(),
        ],
    );
    assert!(out.status.success(), "socat: {}", show(&out));
    let echoed = std::fs::read(&output).unwrap_or_default();
    assert_eq!(
        echoed.len(),
        data.len(),
        "echoed length
{}",
        w.daemon_log()
    );
    assert!(echoed == data, "the echoed bytes differ");
}

/// (9) 50 TCP connections at once each get their own answer, from 50
/// distinct host ports.
#[test]
fn fifty_concurrent_tcp_connections() {
    let Some(mut w) = NatWorld::new(true) else {
        return;
    };
    let a = w.sandbox_in("tf", "10.236.10.0/24");
    let out = w.exec(
        &a,
        &[
            "sh",
            "-c",
            r#"for i in $(seq 50); do socat -t 10 -T 20 - "$1" < /dev/null > "$2/tcp-$i" & done; wait"#,
            "sh",
            &format!("TCP4:{INET_ADDR}:{TCP_WHO_PORT}"),
            &w.dir.display().to_string(),
        ],
    );
    assert!(out.status.success(), "{}", show(&out));
    let mut ports = BTreeSet::new();
    for i in 1..=50 {
        let text = read_text(&w.dir.join(format!("tcp-{i}")));
        let mut fields = text.split_whitespace();
        assert_eq!(fields.next(), Some(HOST_ADDR), "connection {i}: {text:?}");
        ports.insert(fields.next().unwrap_or_default().to_owned());
    }
    assert_eq!(ports.len(), 50, "host ports: {ports:?}");
}

/// (10) A connection to a closed TCP port fails at once with "refused".
#[test]
fn refused_tcp_port_is_an_immediate_error() {
    let Some(mut w) = NatWorld::new(true) else {
        return;
    };
    let a = w.sandbox_in("tr", "10.236.11.0/24");
    let (out, elapsed) = w.tcp(&a, TCP_CLOSED_PORT, None, "5");
    assert!(
        !out.status.success() && stderr(&out).to_lowercase().contains("refused"),
        "to a closed TCP port: {}",
        show(&out)
    );
    assert!(
        elapsed < Duration::from_secs(2),
        "refused after {elapsed:?}"
    );
    // And the open port still works.
    let (out, _) = w.tcp(&a, TCP_WHO_PORT, None, "5");
    assert!(stdout(&out).starts_with(HOST_ADDR), "{}", show(&out));
}

/// (11) `--nat-max-flows` bounds the flow tables: with 2, a third UDP
/// flow at once gets no answer while the first two do, and TCP is bounded
/// the same way (a third connection is reset at once).
#[test]
fn the_flow_table_bound_is_configurable() {
    let Some(mut w) = NatWorld::with_daemon_args(true, &["--nat-max-flows", "2"]) else {
        return;
    };
    let a = w.sandbox_in("fb", "10.236.12.0/24");
    // Two UDP flows (two source ports) fill the table; each is answered.
    for i in 0..2 {
        let (out, _) = w.udp(&a, ECHO_PORT, &format!("flow {i}"), "1");
        assert_eq!(stdout(&out), format!("flow {i}\n"), "{}", show(&out));
    }
    let (out, _) = w.udp(&a, ECHO_PORT, "one too many", "1");
    assert!(
        !stdout(&out).contains("one too many"),
        "a third UDP flow was let through: {}",
        show(&out)
    );
    // TCP: two connections held open, a third is refused at once.
    let out = w.exec(
        &a,
        &[
            "sh",
            "-c",
            r#"for i in 1 2; do socat -T 5 TCP4:$1:$2 SYSTEM:'sleep 4' & done; sleep 1; socat -T 3 - TCP4:$1:$2 </dev/null; echo "third: $?""#,
            "sh",
            INET_ADDR,
            &TCP_ECHO_PORT.to_string(),
        ],
    );
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        text.contains("third: 1") && text.to_lowercase().contains("refused"),
        "a third TCP connection was not refused: {}",
        show(&out)
    );
}

/// (5) A sandbox of an `--internal` network cannot get out: ping and UDP to
/// the internet get nothing, and nothing reaches INET at all; its gateway
/// still answers ping. A sandbox of an ordinary network of the same daemon
/// gets out (the control).
#[test]
fn internal_network_has_no_way_out() {
    let Some(mut w) = NatWorld::new(true) else {
        return;
    };
    if !require(has_tool("tcpdump", "--version"), "needs `tcpdump`") {
        return;
    }
    let a = w.sandbox("open");
    let b = w.sandbox("inside");
    w.network("op", "10.236.5.0/24", false);
    let gw_b = w.network("in", "10.236.6.0/24", true);
    w.connect("op", &a);
    w.connect("in", &b);
    w.ping_all(&b, "2", &gw_b);
    // The sandbox's route to the internet goes to the gateway: what stops
    // it is the gateway.
    let route = stdout(&w.exec(&b, &["ip", "route", "get", INET_ADDR]));
    assert!(
        route.contains(&format!("via {gw_b}")),
        "B's route to {INET_ADDR}: {route}"
    );

    // Every IPv4 packet that reaches INET, for the whole test.
    let capture = w.capture("ipv4", None, "ip");
    let out = w.ping(&b, &["-n", "-c", "2", "-W", "1", INET_ADDR]);
    assert!(
        !out.status.success() && stdout(&out).contains("100% packet loss"),
        "ping from the internal network: {}",
        show(&out)
    );
    let (out, _) = w.udp(&b, ECHO_PORT, "let me out", "2");
    assert!(
        !stdout(&out).contains("let me out"),
        "UDP from the internal network was answered: {}",
        show(&out)
    );
    let (out, _) = w.udp(&b, CLOSED_PORT, "let me out", "2");
    assert!(
        !stderr(&out).to_lowercase().contains("refused"),
        "UDP from the internal network reached INET's closed port: {}",
        show(&out)
    );
    let (out, _) = w.tcp(&b, TCP_WHO_PORT, None, "2");
    assert!(
        !stdout(&out).contains(HOST_ADDR),
        "TCP from the internal network was answered: {}",
        show(&out)
    );
    // Half a second for a packet still on its way.
    std::thread::sleep(Duration::from_millis(500));
    let leaked = w.capture_wait(&capture, None, Duration::ZERO);
    assert!(
        leaked.trim().is_empty(),
        "packets from the internal network reached INET:\n{leaked}"
    );
    w.ping_all(&b, "1", &gw_b);

    // The control: the other network gets out, and the capture sees it.
    w.ping_all(&a, "1", INET_ADDR);
    let request = format!("IP {HOST_ADDR} > {INET_ADDR}: ICMP echo request");
    let seen = w.capture_wait(&capture, Some(&request), Duration::from_secs(5));
    assert!(
        seen.contains(&request),
        "the capture did not see the control's ping:\n{seen}"
    );
}

/// (6) Without `net.ipv4.ping_group_range` for the daemon's group (HOST
/// left at the default "1 0") and without CAP_NET_RAW, ICMP echo to the
/// internet is dropped, and the daemon says why once, at start, with the
/// sysctl that fixes it; `network inspect` says it too; the gateway still
/// answers and UDP still gets out.
#[test]
fn without_ping_or_raw_sockets_ping_is_dropped_and_said_once() {
    let Some(mut w) = NatWorld::without_ping_or_raw_sockets() else {
        return;
    };
    let range = stdout(&w.exec(&w.host, &["sysctl", "-n", "net.ipv4.ping_group_range"]));
    assert_eq!(
        range.split_whitespace().collect::<Vec<_>>(),
        ["1", "0"],
        "HOST's ping_group_range: {range:?}"
    );
    let a = w.sandbox("a");
    let gw = w.network("np", "10.236.7.0/24", false);
    w.connect("np", &a);
    w.ping_all(&a, "1", &gw);
    // Four pings (four processes, four echo identifiers: four flows).
    for round in 0..4 {
        let out = w.ping(&a, &["-n", "-c", "2", "-W", "1", INET_ADDR]);
        assert!(
            !out.status.success() && stdout(&out).contains("100% packet loss"),
            "ping {round} without ping_group_range: {}",
            show(&out)
        );
    }
    let (out, _) = w.udp(&a, ECHO_PORT, "udp is fine", "2");
    assert_eq!(stdout(&out), "udp is fine\n", "{}", show(&out));

    let log = w.daemon_log();
    let warning = "outbound ping from sandboxes will fail";
    let count = log.matches(warning).count();
    assert_eq!(
        count, 1,
        "{warning:?} in the daemon's log {count} times:\n{log}"
    );
    assert!(
        log.contains("sysctl -w net.ipv4.ping_group_range='0 2147483647'"),
        "the warning gives the fix:\n{log}"
    );
    let shown = w.inspect("np")["outbound_icmp_echo"].clone();
    assert!(
        shown
            .as_str()
            .is_some_and(|s| s.starts_with("unavailable") && s.contains("sysctl -w")),
        "inspect: {shown}"
    );
}

/// (6b) The same HOST without ping_group_range, but a daemon with
/// CAP_NET_RAW (root's default): pings leave through raw ICMP sockets, each
/// answered, INET sees HOST's address, and two sandboxes pinging at once
/// get their own replies; inspect says "raw socket".
#[test]
fn without_ping_group_range_a_daemon_with_net_raw_pings_through_raw_sockets() {
    let Some(mut w) = NatWorld::new(false) else {
        return;
    };
    let a = w.sandbox("a");
    let b = w.sandbox("b");
    w.network("nr", "10.236.8.0/24", false);
    w.connect("nr", &a);
    w.connect("nr", &b);
    let shown = w.inspect("nr")["outbound_icmp_echo"].clone();
    assert_eq!(shown, "raw socket (CAP_NET_RAW)", "inspect");
    let capture = w.capture("raw-icmp", Some("1"), "icmp[icmptype] == icmp-echo");
    // Both at once: each raw socket sees the other's replies too, and
    // must keep only its own.
    let (ra, rb) = std::thread::scope(|s| {
        let pa = s.spawn(|| w.ping(&a, &["-n", "-c", "5", "-i", "0.2", "-W", "2", INET_ADDR]));
        let pb = s.spawn(|| w.ping(&b, &["-n", "-c", "5", "-i", "0.2", "-W", "2", INET_ADDR]));
        (pa.join().expect("ping a"), pb.join().expect("ping b"))
    });
    for (who, out) in [("a", &ra), ("b", &rb)] {
        let text = stdout(out);
        assert!(
            out.status.success() && text.contains("5 received") && !text.contains("DUP"),
            "{who}: {}\n{}",
            show(out),
            w.diagnostics(&a)
        );
    }
    let seen = w.capture_wait(&capture, None, Duration::from_secs(5));
    assert!(
        seen.contains(&format!("{HOST_ADDR} > {INET_ADDR}")),
        "INET sees HOST's address:\n{seen}"
    );
    // IPv6: a raw ICMPv6 socket (the kernel computes that checksum).
    const HOST_V6: &str = "2001:db8:236:8::1";
    const INET_V6: &str = "2001:db8:236:8::10";
    let (host, inet) = (w.host.clone(), w.inet.clone());
    for (ns, cidr, dev) in [
        (&host, format!("{HOST_V6}/64"), HOST_VETH),
        (&inet, format!("{INET_V6}/64"), INET_VETH),
    ] {
        let out = w.exec(ns, &["ip", "addr", "add", &cidr, "dev", dev, "nodad"]);
        assert!(out.status.success(), "{}", show(&out));
    }
    let c = w.sandbox("c");
    w.weft_ok(&[
        "network",
        "create",
        "--subnet",
        "10.236.9.0/24",
        "--subnet",
        "fd00:236:9::/64",
        "nr6",
    ]);
    w.connect("nr6", &c);
    let text = w.ping_all(&c, "3", INET_V6);
    assert!(
        text.contains(&format!("bytes from {INET_V6}: icmp_seq=1")),
        "{text}"
    );
}
