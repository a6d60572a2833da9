//! End-to-end tests of published ports (`-p [HOSTIP:]HOSTPORT:PORT[/udp]`)
//! and of `--opt host_loopback=true`: a client outside reaches a server in
//! a sandbox through the daemon's host socket and the server sees the
//! client's own address and port; a port in use fails the connect and
//! leaves nothing; disconnect frees the host port; inspect shows the
//! mapping (with the port the kernel chose for host port 0); a restart
//! publishes again; a sandbox reaches the daemon's 127.0.0.1 through its
//! gateway only with `host_loopback=true`. Needs root, `ip`, `ping`,
//! `socat` and `ss`; skipped otherwise (fails under `CI=true`).
//!
//! Topology ([`PublishWorld`]): `common::World` (the daemon in a namespace
//! HOST, with `--dns-upstream` on HOST's own loopback), plus a namespace
//! CLIENT joined to HOST by a veth pair made from inside HOST (HOST
//! 192.0.2.1/24, CLIENT 192.0.2.10/24). Every packet stays in these
//! namespaces; nothing is configured in the machine's own namespace.
//! Servers are socat processes started here, each bounded in time, killed
//! by `Drop` (which then lets `World` delete the namespaces).
//!
//! Subnets: 10.237.N.0/24, a distinct N per test.

#![allow(clippy::disallowed_methods)]

mod common;

use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

// HOST's and CLIENT's ends of their veth: `World::client_namespace`.
use common::{
    has_tool, require, show, spawn_background, stdout, World, CLIENT_ADDR, CLIENT_VETH, HOST_ADDR,
    HOST_VETH,
};
use serde_json::Value;

/// Ceiling on the life of every server this file starts.
const SERVER_LIFETIME: &str = "300";

/// A shell command for socat's SYSTEM address that answers with who
/// asked: `PEERADDR PEERPORT` (no ':' or ',', which socat would parse).
const WHO_ASKED: &str = r#"SYSTEM:echo "$SOCAT_PEERADDR $SOCAT_PEERPORT""#;

/// A `World` with a CLIENT namespace, and the servers this test started.
struct PublishWorld {
    w: World,
    client: String,
    servers: Vec<Child>,
}

impl PublishWorld {
    /// None (skip) when a requirement is missing.
    fn new() -> Option<PublishWorld> {
        // Check the tools before World starts a daemon.
        if !require(has_tool("socat", "-V"), "needs `socat`")
            || !require(has_tool("ss", "-V"), "needs `ss` (iproute2)")
        {
            return None;
        }
        let mut w = World::new()?;
        let client = w.client_namespace();
        let p = PublishWorld {
            w,
            client,
            servers: Vec::new(),
        };
        Some(p)
    }

    /// Create a bridge network with `extra` arguments; returns its gateway.
    fn network(&self, name: &str, subnet: &str, extra: &[&str]) -> String {
        let mut args = vec!["network", "create", "--subnet", subnet];
        args.extend_from_slice(extra);
        args.push(name);
        self.w.weft_ok(&args);
        let net = self.w.inspect(name);
        net["subnets"][0]["gateway"]
            .as_str()
            .unwrap_or_else(|| panic!("network without a gateway: {net:#}"))
            .to_owned()
    }

    /// Start a server in `ns` (bounded by SERVER_LIFETIME) and wait until
    /// `ss -Hl{t|u}n` there shows `listen` (bounded: 10 s).
    fn server(&mut self, ns: &str, udp: bool, listen: &str, cmd: &[&str]) {
        let n = self.servers.len();
        let err = self.w.dir.join(format!("server-{n}.err"));
        let mut command = Command::new("ip");
        command
            .args([
                "netns",
                "exec",
                ns,
                "timeout",
                "-s",
                "KILL",
                SERVER_LIFETIME,
            ])
            .args(cmd);
        self.servers
            .push(spawn_background(&mut command, None, &err));
        let flags = if udp { "-Hlun" } else { "-Hltn" };
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut listening = String::new();
        for _ in 0..100 {
            listening = stdout(&self.w.exec(ns, &["ss", flags]));
            if listening.contains(listen) {
                return;
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "server {cmd:?} in {ns} does not listen on {listen}: {listening}\n{}",
            std::fs::read_to_string(&err).unwrap_or_default()
        );
    }

    /// A sandbox with a TCP (and a UDP) server on port 80 that answers
    /// with who asked.
    fn sandbox_with_servers(&mut self, role: &str) -> String {
        let s = self.w.sandbox(role);
        self.server(
            &s,
            false,
            ":80 ",
            &["socat", "TCP4-LISTEN:80,reuseaddr,fork", WHO_ASKED],
        );
        self.server(
            &s,
            true,
            ":80 ",
            &["socat", "UDP4-RECVFROM:80,fork", WHO_ASKED],
        );
        s
    }

    /// TCP from CLIENT (source port `source_port`) to HOST:`port`; what
    /// came back, and socat's output for messages.
    fn tcp_from_client(&self, port: u16, source_port: u16) -> Output {
        let target =
            format!("TCP4:{HOST_ADDR}:{port},bind={CLIENT_ADDR}:{source_port},connect-timeout=5");
        self.w
            .exec(&self.client, &["socat", "-T", "5", "-u", &target, "STDOUT"])
    }

    /// One UDP datagram from CLIENT (source port `source_port`) to
    /// HOST:`port`, waiting up to 3 s for the answer.
    fn udp_from_client(&self, port: u16, source_port: u16) -> Output {
        let target = format!("UDP4:{HOST_ADDR}:{port},bind={CLIENT_ADDR}:{source_port}");
        self.w.exec(
            &self.client,
            &[
                "sh",
                "-c",
                r#"printf 'hello\n' | socat -t 3 - "$1""#,
                "sh",
                &target,
            ],
        )
    }

    /// The host sockets listening in HOST (`ss -Hl{t|u}n`).
    fn host_sockets(&self, udp: bool) -> String {
        stdout(
            &self
                .w
                .exec(&self.w.host, &["ss", if udp { "-Hlun" } else { "-Hltn" }]),
        )
    }

    /// `network inspect` of every network (endpoints with their counters).
    fn networks_json(&self) -> String {
        let names = self.w.network_names();
        if names.is_empty() {
            return String::new();
        }
        let mut args = vec!["network", "inspect"];
        args.extend(names.iter().map(String::as_str));
        stdout(&self.w.weft(&args))
    }

    /// What helps to understand a failure.
    fn diagnostics(&self, ns: &str) -> String {
        let addr = stdout(&self.w.exec(ns, &["ip", "addr"]));
        let route = stdout(&self.w.exec(ns, &["ip", "route"]));
        format!(
            "--- ip addr ({ns}) ---\n{addr}--- ip route ---\n{route}--- HOST tcp ---\n{}--- HOST udp ---\n{}--- networks ---\n{}--- daemon log ---\n{}",
            self.host_sockets(false),
            self.host_sockets(true),
            self.networks_json(),
            self.w.daemon_log()
        )
    }
}

impl Drop for PublishWorld {
    fn drop(&mut self) {
        for child in &mut self.servers {
            common::kill_group(child);
        }
        // Then `World` drops: the daemon, and every namespace.
    }
}

/// Whether `ss` output has a socket bound to port `port` (any address).
fn has_port(ss: &str, port: u16) -> bool {
    let suffix = format!(":{port}");
    ss.lines().any(|l| {
        l.split_whitespace()
            .nth(3)
            .is_some_and(|local| local.ends_with(&suffix))
    })
}

/// The `ports` of an endpoint's JSON.
fn ports_of(endpoint: &Value) -> Vec<Value> {
    endpoint["ports"].as_array().cloned().unwrap_or_default()
}

/// (1) TCP: a client outside reaches the sandbox's server through
/// HOST:8080, and the server sees the client's own address and port.
#[test]
fn published_tcp_port_shows_the_real_client_address() {
    let Some(mut p) = PublishWorld::new() else {
        return;
    };
    p.network("pt", "10.237.1.0/24", &[]);
    let s = p.sandbox_with_servers("web");
    let printed =
        p.w.weft_ok(&["network", "connect", "-p", "8080:80", "pt", &s]);
    // First what the sandbox got, then the port as `docker port` shows it.
    assert!(
        printed
            .lines()
            .next()
            .is_some_and(|l| l.contains("10.237.1.")),
        "{printed}"
    );
    assert_eq!(
        printed.lines().nth(1),
        Some("80/tcp -> 0.0.0.0:8080"),
        "{printed}"
    );
    assert!(
        has_port(&p.host_sockets(false), 8080),
        "HOST does not listen on 8080: {}",
        p.host_sockets(false)
    );
    let mut answers = Vec::new();
    for source_port in [40001u16, 40002, 40003] {
        let out = p.tcp_from_client(8080, source_port);
        let answer = stdout(&out).trim().to_owned();
        if answer == format!("{CLIENT_ADDR} {source_port}") {
            return;
        }
        answers.push(format!("from port {source_port}: {}", show(&out)));
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!(
        "the sandbox did not answer with the client's address {CLIENT_ADDR}:\n{}\n{}",
        answers.join("\n"),
        p.diagnostics(&s)
    );
}

/// (2) UDP: the same through a published UDP port; the answer comes back
/// from the published port.
#[test]
fn published_udp_port_shows_the_real_client_address() {
    let Some(mut p) = PublishWorld::new() else {
        return;
    };
    p.network("pu", "10.237.2.0/24", &[]);
    let s = p.sandbox_with_servers("dns");
    let printed =
        p.w.weft_ok(&["network", "connect", "--publish", "5353:80/udp", "pu", &s]);
    assert_eq!(
        printed.lines().nth(1),
        Some("80/udp -> 0.0.0.0:5353"),
        "{printed}"
    );
    assert!(
        has_port(&p.host_sockets(true), 5353),
        "HOST has no UDP socket on 5353: {}",
        p.host_sockets(true)
    );
    let mut answers = Vec::new();
    for source_port in [41001u16, 41002, 41003] {
        let out = p.udp_from_client(5353, source_port);
        let answer = stdout(&out).trim().to_owned();
        if answer == format!("{CLIENT_ADDR} {source_port}") {
            return;
        }
        answers.push(format!("from port {source_port}: {}", show(&out)));
    }
    panic!(
        "the sandbox did not answer with the client's address {CLIENT_ADDR}:\n{}\n{}",
        answers.join("\n"),
        p.diagnostics(&s)
    );
}

/// (3) A host port in use is a clear error at connect time (409 from the
/// API), and nothing is left: no endpoint, no eth0, and the other port of
/// the same request is free again.
#[test]
fn port_in_use_fails_the_connect_and_leaves_nothing() {
    let Some(mut p) = PublishWorld::new() else {
        return;
    };
    p.network("pi", "10.237.3.0/24", &[]);
    let first = p.w.sandbox("first");
    let second = p.w.sandbox("second");
    p.w.weft_ok(&["network", "connect", "-p", "8081:80", "pi", &first]);
    let err = p.w.weft_err(&[
        "network", "connect", "-p", "8082:80", "-p", "8081:80", "pi", &second,
    ]);
    assert!(
        err.contains("host port 0.0.0.0:8081/tcp is already in use"),
        "the error should name the port in use: {err}"
    );
    let endpoints = p.w.endpoints("pi");
    assert_eq!(
        endpoints.len(),
        1,
        "only the first endpoint: {endpoints:#?}"
    );
    assert!(
        !p.w.links(&second).iter().any(|l| l == "eth0"),
        "the failed connect left an eth0: {:?}",
        p.w.links(&second)
    );
    let tcp = p.host_sockets(false);
    assert!(
        !has_port(&tcp, 8082),
        "8082 of the failed request is still bound: {tcp}"
    );
    assert!(has_port(&tcp, 8081), "the first endpoint's 8081: {tcp}");
    // The same through the API: 409 and the message.
    let answer = p.w.http(
        "POST",
        "/v1/networks/pi/connect",
        Some(&format!(r#"{{"sandbox":"{second}","ports":["8081:80"]}}"#)),
    );
    assert_eq!(answer.status, 409, "{answer:?}");
    assert!(
        answer.json()["message"]
            .as_str()
            .is_some_and(|m| m.contains("already in use")),
        "{answer:?}"
    );
    // A port another program holds is refused the same way.
    p.server(
        &p.w.host.clone(),
        true,
        ":8083 ",
        &["socat", "UDP4-RECVFROM:8083,fork", "SYSTEM:true"],
    );
    let err =
        p.w.weft_err(&["network", "connect", "-p", "8083:80/udp", "pi", &second]);
    assert!(
        err.contains("host port 0.0.0.0:8083/udp is already in use"),
        "{err}"
    );
    // And the sandbox still connects without the busy port.
    p.w.weft_ok(&["network", "connect", "-p", "8082:80", "pi", &second]);
    assert_eq!(p.w.endpoints("pi").len(), 2);
}

/// (4) Bad requests are 400s that say what to fix: bad syntax, container
/// port 0, a driver without interfaces, an IPv6 host address on an
/// IPv4-only network.
#[test]
fn bad_port_requests_are_refused_with_reasons() {
    let Some(mut p) = PublishWorld::new() else {
        return;
    };
    p.network("pb", "10.237.4.0/24", &[]);
    let s = p.w.sandbox("s");
    let err =
        p.w.weft_err(&["network", "connect", "-p", "80x:80", "pb", &s]);
    assert!(
        err.contains("-p 80x:80: host port must be a number"),
        "{err}"
    );
    let answer = p.w.http(
        "POST",
        "/v1/networks/pb/connect",
        Some(&format!(r#"{{"sandbox":"{s}","ports":["8080:0"]}}"#)),
    );
    assert_eq!(answer.status, 400, "{answer:?}");
    assert!(
        answer
            .body
            .contains("container port must be a number 1-65535"),
        "{answer:?}"
    );
    let err =
        p.w.weft_err(&["network", "connect", "-p", "[::1]:8080:80", "pb", &s]);
    assert!(
        err.contains("no address of the host address's family"),
        "{err}"
    );
    p.w.weft_ok(&["network", "create", "--driver", "host", "hostnet"]);
    let answer = p.w.http(
        "POST",
        "/v1/networks/hostnet/connect",
        Some(&format!(r#"{{"sandbox":"{s}","ports":["8080:80"]}}"#)),
    );
    assert_eq!(answer.status, 400, "{answer:?}");
    assert!(
        answer.body.contains("no interfaces to publish ports to"),
        "{answer:?}"
    );
    assert!(p.w.endpoints("pb").is_empty());
    assert!(p.w.endpoints("hostnet").is_empty());
    assert!(!has_port(&p.host_sockets(false), 8080));
}

/// (5) Disconnect releases the host port: it can be published again.
#[test]
fn disconnect_releases_the_host_port() {
    let Some(mut p) = PublishWorld::new() else {
        return;
    };
    p.network("pr", "10.237.5.0/24", &[]);
    let s = p.w.sandbox("s");
    for round in 0..3 {
        p.w.weft_ok(&[
            "network",
            "connect",
            "-p",
            "8084:80",
            "-p",
            "8084:80/udp",
            "pr",
            &s,
        ]);
        assert!(
            has_port(&p.host_sockets(false), 8084) && has_port(&p.host_sockets(true), 8084),
            "round {round}: not listening: {}",
            p.diagnostics(&s)
        );
        p.w.weft_ok(&["network", "disconnect", "pr", &s]);
        let (tcp, udp) = (p.host_sockets(false), p.host_sockets(true));
        assert!(
            !has_port(&tcp, 8084) && !has_port(&udp, 8084),
            "round {round}: still bound after disconnect:\n{tcp}\n{udp}"
        );
    }
}

/// (6) Inspect shows each mapping, with the port the kernel chose for
/// host port 0; a daemon restart binds the same ports again, and the
/// relay works after it.
#[test]
fn inspect_shows_mappings_and_a_restart_publishes_them_again() {
    let Some(mut p) = PublishWorld::new() else {
        return;
    };
    p.network("pm", "10.237.6.0/24", &[]);
    let s = p.sandbox_with_servers("web");
    let printed = p.w.weft_ok(&[
        "network",
        "connect",
        "-p",
        "192.0.2.1:8085:80",
        "-p",
        "0:80/udp",
        "pm",
        &s,
    ]);
    let endpoint = p.w.endpoint("pm", &s);
    let ports = ports_of(&endpoint);
    assert_eq!(ports.len(), 2, "{endpoint:#}");
    assert_eq!(
        ports[0],
        serde_json::json!({"host_ip": HOST_ADDR, "host_port": 8085, "container_port": 80, "proto": "tcp"}),
        "{endpoint:#}"
    );
    assert_eq!(ports[1]["container_port"], 80, "{endpoint:#}");
    assert_eq!(ports[1]["proto"], "udp", "{endpoint:#}");
    let chosen = ports[1]["host_port"].as_u64().expect("host_port") as u16;
    assert_ne!(chosen, 0, "the kernel's port is stored: {endpoint:#}");
    assert_eq!(
        printed.lines().skip(1).collect::<Vec<_>>(),
        [
            format!("80/tcp -> {HOST_ADDR}:8085"),
            format!("80/udp -> 0.0.0.0:{chosen}")
        ],
        "{printed}"
    );
    assert!(has_port(&p.host_sockets(true), chosen));

    p.w.kill_daemon();
    // SIGKILL is delivered at once, but the process's sockets close as it
    // exits: a moment later.
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut gone = false;
    while !gone && Instant::now() < deadline {
        gone = !has_port(&p.host_sockets(false), 8085) && !has_port(&p.host_sockets(true), chosen);
        if !gone {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    assert!(gone, "the killed daemon's sockets are gone");
    p.w.start_daemon();
    let again = ports_of(&p.w.endpoint("pm", &s));
    assert_eq!(again, ports, "the restored endpoint keeps its ports");
    assert!(
        has_port(&p.host_sockets(false), 8085) && has_port(&p.host_sockets(true), chosen),
        "not published again after the restart: {}",
        p.diagnostics(&s)
    );
    let out = p.tcp_from_client(8085, 40101);
    assert_eq!(
        stdout(&out).trim(),
        format!("{CLIENT_ADDR} 40101"),
        "relay after the restart: {}\n{}",
        show(&out),
        p.diagnostics(&s)
    );
}

/// (7) `weft run -p` publishes on the first network for the command's
/// life: a client reaches a server the command runs.
#[test]
fn weft_run_publishes_for_the_commands_life() {
    let Some(p) = PublishWorld::new() else {
        return;
    };
    p.network("pw", "10.237.7.0/24", &[]);
    let host = p.w.host.clone();
    let log = p.w.dir.join("run.err");
    let mut command = Command::new("ip");
    command
        .args(["netns", "exec", &host, "timeout", "-s", "KILL", "60"])
        .arg(common::WEFT)
        .args(["run", "--network", "pw", "-p", "8086:80", "--"])
        .args(["socat", "TCP4-LISTEN:80,reuseaddr", WHO_ASKED])
        .env("WEFT_SOCKET", &p.w.socket);
    let mut child = spawn_background(&mut command, None, &log);
    // Bounded: until the host port listens and the sandbox's server is up
    // (a refused relay retries), at most 15 s.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = String::new();
    for attempt in 0..60u16 {
        if has_port(&p.host_sockets(false), 8086) {
            let out = p.tcp_from_client(8086, 40200 + attempt);
            let answer = stdout(&out).trim().to_owned();
            if answer == format!("{CLIENT_ADDR} {}", 40200 + attempt) {
                last.clear();
                break;
            }
            last = show(&out);
        }
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let status = {
        let wait_until = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                break Some(status);
            }
            if Instant::now() >= wait_until {
                common::kill_group(&mut child);
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    assert!(
        last.is_empty(),
        "no answer with the client's address through weft run -p: {last}\n--- weft run ---\n{}\n--- daemon log ---\n{}",
        std::fs::read_to_string(&log).unwrap_or_default(),
        p.w.daemon_log()
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "weft run: {status:?}: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(
        !has_port(&p.host_sockets(false), 8086),
        "8086 is released when weft run ends"
    );
}

/// (8) `--opt host_loopback=true`: a sandbox reaches a server on the
/// daemon's 127.0.0.1 through its gateway's address; without it the same
/// connection fails within the timeout. Bad options are refused.
#[test]
fn host_loopback_reaches_the_daemons_loopback_only_when_asked() {
    let Some(mut p) = PublishWorld::new() else {
        return;
    };
    let err =
        p.w.weft_err(&["network", "create", "--opt", "host_loopback=yes", "bad1"]);
    assert!(
        err.contains(
            "--opt host_loopback: \"yes\" is not a value of host_loopback: use true or false"
        ),
        "{err}"
    );
    let err =
        p.w.weft_err(&["network", "create", "--opt", "bogus=1", "bad2"]);
    assert!(
        err.contains("--opt bogus: unknown option of the bridge driver: known options are host_loopback=true|false"),
        "{err}"
    );
    let err = p.w.weft_err(&[
        "network",
        "create",
        "--driver",
        "null",
        "--opt",
        "host_loopback=true",
        "bad3",
    ]);
    assert!(err.contains("the null driver takes no options"), "{err}");
    assert!(p.w.network_names().is_empty(), "{:?}", p.w.network_names());

    let host = p.w.host.clone();
    p.server(
        &host,
        false,
        "127.0.0.1:9090 ",
        &[
            "socat",
            "TCP4-LISTEN:9090,bind=127.0.0.1,reuseaddr,fork",
            "SYSTEM:echo loopback",
        ],
    );
    let with = p.network("lb", "10.237.8.0/24", &["--opt", "host_loopback=true"]);
    assert_eq!(p.w.inspect("lb")["options"]["host_loopback"], "true");
    let without = p.network("nolb", "10.237.9.0/24", &["--opt", "host_loopback=false"]);
    let a = p.w.sandbox("a");
    let b = p.w.sandbox("b");
    p.w.weft_ok(&["network", "connect", "lb", &a]);
    p.w.weft_ok(&["network", "connect", "nolb", &b]);
    let reach = |ns: &str, gateway: &str| -> (Output, Duration) {
        let target = format!("TCP4:{gateway}:9090,connect-timeout=4");
        let start = Instant::now();
        let out = p.w.exec(
            ns,
            &["timeout", "5", "socat", "-T", "4", "-u", &target, "STDOUT"],
        );
        (out, start.elapsed())
    };
    let (out, _) = reach(&a, &with);
    assert_eq!(
        stdout(&out).trim(),
        "loopback",
        "with host_loopback=true: {}\n{}",
        show(&out),
        p.diagnostics(&a)
    );
    let (out, took) = reach(&b, &without);
    assert!(
        !out.status.success() && !stdout(&out).contains("loopback"),
        "without host_loopback the daemon's loopback must not be reachable: {}",
        show(&out)
    );
    assert!(took < Duration::from_secs(7), "bounded: {took:?}");
}

/// (9) A daemon without the right to bind low ports (a rootless one; here
/// root without CAP_NET_BIND_SERVICE, in HOST whose
/// `net.ipv4.ip_unprivileged_port_start` is 2000) refuses a host port
/// below that with a message naming the sysctl, and leaves nothing; a
/// port above it works.
#[test]
fn privileged_host_port_is_a_clear_error() {
    let Some(mut p) = PublishWorld::new() else {
        return;
    };
    if !require(
        has_tool("setpriv", "--version"),
        "needs `setpriv` (util-linux)",
    ) {
        return;
    }
    let host = p.w.host.clone();
    // Per network namespace: HOST's, not the machine's.
    p.w.exec_ok(
        &host,
        &["sysctl", "-qw", "net.ipv4.ip_unprivileged_port_start=2000"],
    );
    // The same socket and state directory, a daemon without the capability.
    p.w.kill_daemon();
    let log = p.w.dir.join("daemon-nocap.log");
    let mut command = Command::new("ip");
    command
        .args(["netns", "exec", &host])
        .args(["setpriv", "--bounding-set", "-net_bind_service"])
        .args(["--inh-caps", "-net_bind_service"])
        .args(["timeout", "-s", "KILL", SERVER_LIFETIME, common::WEFT])
        .arg("--socket")
        .arg(&p.w.socket)
        .arg("daemon")
        .arg("--state-dir")
        .arg(&p.w.state_dir)
        .args(["--no-default-network", "--dns-upstream", "127.0.0.1:9"])
        .env("WEFT_LOG", "info")
        .env("NO_COLOR", "1");
    let mut daemon = Some(spawn_background(&mut command, None, &log));
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let ready = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        common::wait_for_daemon(&mut daemon, &host, &p.w.socket, read_log);
    }));
    // Killed by Drop from here on, even if it did not answer.
    p.servers.extend(daemon.take());
    if let Err(panic) = ready {
        std::panic::resume_unwind(panic);
    }

    p.network("pp", "10.237.10.0/24", &[]);
    let s = p.w.sandbox("s");
    let err =
        p.w.weft_err(&["network", "connect", "-p", "1500:80", "pp", &s]);
    assert!(
        err.contains(
            "host port 0.0.0.0:1500/tcp is privileged: this daemon may bind ports from 2000 up \
             (net.ipv4.ip_unprivileged_port_start); choose a higher host port"
        ),
        "{err}\n--- daemon log ---\n{}",
        read_log()
    );
    assert!(p.w.endpoints("pp").is_empty());
    assert!(!p.w.links(&s).iter().any(|l| l == "eth0"));
    let out = p.w.weft(&["network", "connect", "-p", "2500:80", "pp", &s]);
    assert!(
        out.status.success(),
        "a port above the limit: {}\n--- daemon log ---\n{}",
        show(&out),
        read_log()
    );
    assert!(has_port(&p.host_sockets(false), 2500));
}

/// (10) A restart when one stored host port is taken meanwhile: the
/// endpoint comes back with its other ports, the taken one is logged and
/// dropped from it (inspect shows what is really published).
#[test]
fn restart_with_a_taken_port_keeps_the_endpoint_and_the_rest() {
    let Some(mut p) = PublishWorld::new() else {
        return;
    };
    p.network("pk", "10.237.11.0/24", &[]);
    let s = p.w.sandbox("s");
    p.w.weft_ok(&[
        "network", "connect", "-p", "8087:80", "-p", "8088:80", "pk", &s,
    ]);
    p.w.kill_daemon();
    let host = p.w.host.clone();
    p.server(
        &host,
        false,
        ":8087 ",
        &["socat", "TCP4-LISTEN:8087,reuseaddr,fork", "SYSTEM:true"],
    );
    p.w.start_daemon();
    let endpoint = p.w.endpoint("pk", &s);
    assert_eq!(
        ports_of(&endpoint),
        [serde_json::json!({"host_port": 8088, "container_port": 80, "proto": "tcp"})],
        "{endpoint:#}"
    );
    assert!(p.w.links(&s).iter().any(|l| l == "eth0"));
    assert!(has_port(&p.host_sockets(false), 8088));
    let log = p.w.daemon_log();
    assert!(
        log.contains("published port dropped") && log.contains("8087"),
        "the dropped port is logged: {log}"
    );
}

/// A port published without a host address on a dual-stack network
/// listens on `0.0.0.0` and `[::]` with one port (`-p 80`: the kernel's
/// choice, printed for both families); an IPv6 client reaches the sandbox's
/// IPv6 address and is seen there as itself.
#[test]
fn dual_stack_published_port_listens_on_both_families() {
    let Some(mut p) = PublishWorld::new() else {
        return;
    };
    let (host, client) = (p.w.host.clone(), p.client.clone());
    for (ns, dev, cidr) in [
        (&host, HOST_VETH, "fd00:99::1/64"),
        (&client, CLIENT_VETH, "fd00:99::10/64"),
    ] {
        let out =
            p.w.exec(ns, &["ip", "addr", "add", cidr, "dev", dev, "nodad"]);
        assert!(out.status.success(), "{}", show(&out));
    }
    p.w.weft_ok(&[
        "network",
        "create",
        "--subnet",
        "10.237.9.0/24",
        "--subnet",
        "fd00:237:9::/64",
        "pd",
    ]);
    let s = p.w.sandbox("web");
    p.server(
        &s,
        false,
        ":80 ",
        &[
            "socat",
            "TCP6-LISTEN:80,reuseaddr,fork,ipv6only=0",
            WHO_ASKED,
        ],
    );
    let printed = p.w.weft_ok(&["network", "connect", "-p", "80", "pd", &s]);
    let lines: Vec<&str> = printed.lines().skip(1).collect();
    assert_eq!(lines.len(), 2, "one line per family: {printed}");
    let port = lines[0]
        .strip_prefix("80/tcp -> 0.0.0.0:")
        .unwrap_or_else(|| panic!("IPv4 first: {printed}"));
    assert_ne!(port, "0", "the kernel's port is printed: {printed}");
    assert_eq!(lines[1], format!("80/tcp -> [::]:{port}"), "{printed}");
    let ss = p.host_sockets(false);
    assert!(
        ss.contains(&format!("0.0.0.0:{port} ")) && ss.contains(&format!("[::]:{port} ")),
        "HOST listens on both families: {ss}"
    );
    let mut tries = Vec::new();
    for attempt in 0..3u16 {
        let target = format!("TCP6:[fd00:99::1]:{port},connect-timeout=5");
        let out =
            p.w.exec(&client, &["socat", "-T", "5", "-u", &target, "STDOUT"]);
        // socat writes IPv6 peers in full: [fd00:0099:...:0010].
        let answer = stdout(&out);
        if answer.starts_with("[fd00:0099:0000:0000:0000:0000:0000:0010] ") {
            return;
        }
        tries.push(format!("try {attempt}: {}", show(&out)));
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!(
        "the IPv6 client was not seen as itself:\n{}\n{}",
        tries.join("\n"),
        p.diagnostics(&s)
    );
}
