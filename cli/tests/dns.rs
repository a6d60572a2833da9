//! End-to-end tests of the embedded DNS: local names, aliases, scoping
//! between networks, NODATA, PTR, TCP, forwarding to upstreams (and their
//! failure), truncation, names following connect/disconnect, a burst of
//! queries, and the resolv.conf of `weft run`. Needs root, `dig` and
//! `dnsmasq` (`dnsperf` for the burst); skipped otherwise (fails under
//! `CI=true`).
//!
//! Topology of each test ([`DnsWorld`]): the daemon in a namespace HOST;
//! HOST joined by a veth to a namespace UP (192.0.2.1/24 and
//! 192.0.2.53/24), where dnsmasq plays the upstream world. The daemon
//! always gets explicit `--dns-upstream` addresses in UP, so nothing it
//! forwards can leave the test's namespaces. `common::World` starts its
//! daemon without `--dns-upstream` (it would then take the machine's
//! resolvers), so this file has its own small setup on the same pattern,
//! and reuses the harness's free helpers.
//!
//! Subnets: 10.233.N.0/24, a distinct N per test.

#![allow(clippy::disallowed_methods)]

mod common;

use std::collections::{BTreeSet, HashSet};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use common::{
    daemon_logs, exec_in, expect_weft_ok, has_tool, kill_group, one_network, require, run, show,
    spawn_background, stdout, unique_name_with, wait_for_daemon, weft_in, World, CMD_TIMEOUT, WEFT,
};
use serde_json::Value;

/// HOST's end of the veth to UP.
const HOST_ADDR: &str = "192.0.2.1/24";
/// UP's end of the veth, where dnsmasq listens.
const UPSTREAM: &str = "192.0.2.53";
/// UP's end with a prefix length.
const UPSTREAM_CIDR: &str = "192.0.2.53/24";
/// An address in UP's subnet that nobody has: queries to it vanish.
const DEAD: &str = "192.0.2.54";
/// More dead addresses, for "every upstream is dead".
const DEAD2: &str = "192.0.2.55";
const DEAD3: &str = "192.0.2.56";
/// A name only dnsmasq knows, and its address.
const FORWARDED: &str = "www.example.test";
const FORWARDED_ADDR: &str = "198.51.100.7";
/// A domain for which dnsmasq answers NXDOMAIN.
const UPSTREAM_NXDOMAIN: &str = "nothing.invalid.test";

/// Ceiling on the life of the daemon and of dnsmasq.
const LIFETIME: &str = "600";

/// A unique namespace name `wtd-<pid>-<counter>-<role>`.
fn unique_name(role: &str) -> String {
    unique_name_with("wtd", role)
}

/// The per-namespace resolv.conf weft writes for a named namespace.
fn netns_resolv_conf(ns: &str) -> PathBuf {
    World::etc_netns(ns).join("resolv.conf")
}

/// One resource record of dig's answer section.
#[derive(Debug, Clone)]
struct Rr {
    rtype: String,
    data: String,
}

/// What dig printed, parsed.
#[derive(Debug)]
struct Dig {
    text: String,
    /// `NOERROR`, `NXDOMAIN`, ...; empty when no answer came.
    status: String,
    flags: Vec<String>,
    /// The `ANSWER: N` count of the header.
    answer_count: Option<usize>,
    answers: Vec<Rr>,
    /// The (last) answer came over TCP.
    tcp: bool,
    elapsed: Duration,
}

impl Dig {
    fn parse(text: String, elapsed: Duration) -> Dig {
        let status = text
            .split("status: ")
            .nth(1)
            .and_then(|s| s.split(',').next())
            .unwrap_or("")
            .trim()
            .to_owned();
        let flags = text
            .lines()
            .find(|l| l.starts_with(";; flags:"))
            .and_then(|l| l.trim_start_matches(";; flags:").split(';').next())
            .map(|f| f.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default();
        let answer_count = text
            .split("ANSWER: ")
            .nth(1)
            .and_then(|s| s.split(',').next())
            .and_then(|n| n.trim().parse().ok());
        let mut answers = Vec::new();
        let mut in_answer = false;
        for line in text.lines() {
            if line.starts_with(";; ANSWER SECTION:") {
                in_answer = true;
                continue;
            }
            if in_answer {
                if line.trim().is_empty() {
                    break;
                }
                // NAME TTL CLASS TYPE DATA
                let fields: Vec<&str> = line.split_whitespace().collect();
                if fields.len() >= 5 {
                    answers.push(Rr {
                        rtype: fields[3].to_owned(),
                        data: fields[4..].join(" "),
                    });
                }
            }
        }
        let tcp = text
            .lines()
            .rfind(|l| l.starts_with(";; SERVER:"))
            .is_some_and(|l| l.trim_end().ends_with("(TCP)"));
        Dig {
            text,
            status,
            flags,
            answer_count,
            answers,
            tcp,
            elapsed,
        }
    }

    /// The data of the records of one type, sorted.
    fn data(&self, rtype: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .answers
            .iter()
            .filter(|r| r.rtype == rtype)
            .map(|r| r.data.clone())
            .collect();
        v.sort();
        v
    }

    fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }
}

/// Sorted owned strings.
fn sorted(items: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = items.iter().map(|s| (*s).to_owned()).collect();
    v.sort();
    v
}

/// A weft daemon in HOST whose only upstream world is UP (dnsmasq), and
/// the test's sandboxes. Drop kills both servers and deletes everything.
struct DnsWorld {
    dir: PathBuf,
    socket: PathBuf,
    state_dir: PathBuf,
    host: String,
    up: String,
    namespaces: Vec<String>,
    daemon: Option<Child>,
    dnsmasq: Option<Child>,
    starts: usize,
}

impl DnsWorld {
    /// A world whose daemon forwards to `upstreams` (each IP or IP:PORT,
    /// all in UP); None (skip) when a requirement is missing.
    fn new(upstreams: &[&str]) -> Option<DnsWorld> {
        if !require(
            nix::unistd::geteuid().is_root(),
            "needs root (network namespaces, TAPs)",
        ) || !require(has_tool("ip", "-V"), "needs `ip` (iproute2)")
            || !require(has_tool("dig", "-v"), "needs `dig` (bind9-dnsutils)")
            || !require(
                has_tool("dnsmasq", "--version"),
                "needs `dnsmasq` (dnsmasq-base)",
            )
        {
            return None;
        }
        let dir = std::env::temp_dir().join(unique_name("dir"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let mut w = DnsWorld {
            socket: dir.join("weft.sock"),
            state_dir: dir.join("state"),
            dir,
            host: String::new(),
            up: String::new(),
            namespaces: Vec::new(),
            daemon: None,
            dnsmasq: None,
            starts: 0,
        };
        // From here on, Drop cleans up whatever was made.
        w.host = w.sandbox("host");
        w.up = w.sandbox("up");
        let (host, up) = (w.host.clone(), w.up.clone());
        for cmd in [
            vec!["ip", "-n", &host, "link", "set", "lo", "up"],
            vec!["ip", "-n", &up, "link", "set", "lo", "up"],
            vec![
                "ip", "-n", &host, "link", "add", "up0", "type", "veth", "peer", "name", "host0",
                "netns", &up,
            ],
            vec!["ip", "-n", &host, "addr", "add", HOST_ADDR, "dev", "up0"],
            vec![
                "ip",
                "-n",
                &up,
                "addr",
                "add",
                UPSTREAM_CIDR,
                "dev",
                "host0",
            ],
            vec!["ip", "-n", &host, "link", "set", "up0", "up"],
            vec!["ip", "-n", &up, "link", "set", "host0", "up"],
        ] {
            let out = run(Command::new("timeout").arg(CMD_TIMEOUT).args(&cmd));
            assert!(out.status.success(), "{cmd:?}: {}", show(&out));
        }
        w.start_dnsmasq();
        w.start_daemon(upstreams);
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

    /// Run the weft CLI against this world's daemon (from inside HOST).
    fn weft(&self, args: &[&str]) -> Output {
        weft_in(&self.host, &self.socket, args)
    }

    /// The weft CLI, panicking with the daemon's log unless it succeeds.
    fn weft_ok(&self, args: &[&str]) -> String {
        expect_weft_ok(self.weft(args), args, || self.daemon_log())
    }

    /// dnsmasq in UP, answering `www.example.test` and NXDOMAIN for
    /// `invalid.test`, REFUSED for the rest (no upstream of its own);
    /// waits until it answers from HOST.
    fn start_dnsmasq(&mut self) {
        assert!(self.dnsmasq.is_none(), "dnsmasq is already running");
        let listen = format!("--listen-address={UPSTREAM}");
        let address = format!("--address=/example.test/{FORWARDED_ADDR}");
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &self.up,
            "timeout",
            "-s",
            "KILL",
            LIFETIME,
            "dnsmasq",
            "--no-daemon",
            "--conf-file=/dev/null",
            "--pid-file=",
            "--user=root",
            "--log-facility=-",
            "--log-queries",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            &listen,
            &address,
            "--address=/invalid.test/",
        ]);
        self.dnsmasq = Some(spawn_background(
            &mut cmd,
            None,
            &self.dir.join("dnsmasq.log"),
        ));
        let server = format!("@{UPSTREAM}");
        let deadline = Instant::now() + Duration::from_secs(10);
        for _ in 0..100 {
            if let Some(Ok(Some(status))) = self.dnsmasq.as_mut().map(Child::try_wait) {
                self.dnsmasq = None;
                panic!(
                    "dnsmasq exited at start ({status}):\n{}",
                    self.dnsmasq_log()
                );
            }
            let out = self.exec(
                &self.host,
                &["dig", "+time=1", "+tries=1", "+short", &server, FORWARDED],
            );
            if stdout(&out).contains(FORWARDED_ADDR) {
                return;
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("dnsmasq did not answer:\n{}", self.dnsmasq_log());
    }

    fn kill_dnsmasq(&mut self) {
        if let Some(mut child) = self.dnsmasq.take() {
            kill_group(&mut child);
        }
    }

    /// Start the daemon in HOST with explicit upstreams (never the
    /// machine's resolvers); waits until it answers.
    fn start_daemon(&mut self, upstreams: &[&str]) {
        assert!(self.daemon.is_none(), "a daemon is already running");
        assert!(
            !upstreams.is_empty(),
            "the daemon must get --dns-upstream (else it takes the machine's resolvers)"
        );
        self.starts += 1;
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns", "exec", &self.host, "timeout", "-s", "KILL", LIFETIME, WEFT,
        ])
        .arg("--socket")
        .arg(&self.socket)
        .arg("daemon")
        .arg("--state-dir")
        .arg(&self.state_dir)
        .arg("--no-default-network");
        for upstream in upstreams {
            cmd.args(["--dns-upstream", upstream]);
        }
        cmd.env("WEFT_LOG", "info").env("NO_COLOR", "1");
        let log = self.dir.join(format!("daemon-{}.log", self.starts));
        self.daemon = Some(spawn_background(&mut cmd, None, &log));
        let (dir, starts) = (self.dir.clone(), self.starts);
        wait_for_daemon(&mut self.daemon, &self.host, &self.socket, || {
            daemon_logs(&dir, starts)
        });
    }

    fn daemon_log(&self) -> String {
        daemon_logs(&self.dir, self.starts)
    }

    fn dnsmasq_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dnsmasq.log")).unwrap_or_default()
    }

    /// `network inspect NAME`: the one network's JSON object.
    fn inspect(&self, network: &str) -> Value {
        one_network(&self.weft_ok(&["network", "inspect", network]))
    }

    /// Create a bridge network; returns its (first) gateway.
    fn network(&self, name: &str, subnet: &str) -> String {
        self.weft_ok(&["network", "create", "--subnet", subnet, name]);
        let net = self.inspect(name);
        net["subnets"][0]["gateway"]
            .as_str()
            .unwrap_or_else(|| panic!("network without a gateway: {net:#}"))
            .to_owned()
    }

    /// Connect `ns` to `network` with a name (None: the default, the
    /// namespace's name) and aliases; returns its IPv4 address.
    fn connect(&self, network: &str, ns: &str, name: Option<&str>, aliases: &[&str]) -> String {
        let mut args = vec!["network", "connect"];
        if let Some(name) = name {
            args.extend(["--name", name]);
        }
        for alias in aliases {
            args.extend(["--alias", alias]);
        }
        args.extend([network, ns]);
        self.weft_ok(&args);
        self.address_of(network, ns)
    }

    /// The IPv4 address of `ns`'s endpoint on `network`.
    fn address_of(&self, network: &str, ns: &str) -> String {
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

    /// `dig +time=2 +tries=2 @server ARGS` inside `ns`.
    fn dig(&self, ns: &str, server: &str, args: &[&str]) -> Dig {
        let mut cmd = vec!["dig", "+time=2", "+tries=2"];
        let at = format!("@{server}");
        cmd.push(&at);
        cmd.extend_from_slice(args);
        self.dig_raw(ns, &cmd)
    }

    /// Run a full dig command line inside `ns`, timed.
    fn dig_raw(&self, ns: &str, cmd: &[&str]) -> Dig {
        let start = Instant::now();
        let out = self.exec(ns, cmd);
        let elapsed = start.elapsed();
        Dig::parse(
            format!("{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr)),
            elapsed,
        )
    }

    /// dig, panicking unless the status is `status`.
    fn dig_status(&self, ns: &str, server: &str, args: &[&str], status: &str) -> Dig {
        let d = self.dig(ns, server, args);
        assert_eq!(
            d.status,
            status,
            "dig {args:?} from {ns}:\n{}\n--- daemon log ---\n{}",
            d.text,
            self.daemon_log()
        );
        d
    }

    /// dig for A records: NOERROR, authoritative, exactly `expected`.
    fn expect_a(&self, ns: &str, server: &str, name: &str, expected: &[&str]) {
        let d = self.dig_status(ns, server, &[name, "A"], "NOERROR");
        assert_eq!(d.data("A"), sorted(expected), "A {name}:\n{}", d.text);
        assert!(
            d.has_flag("aa"),
            "a local answer is authoritative:\n{}",
            d.text
        );
    }
}

impl Drop for DnsWorld {
    fn drop(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            kill_group(&mut child);
        }
        self.kill_dnsmasq();
        common::remove_world(&self.namespaces, &self.dir);
    }
}

/// (1) Names, aliases, NAME.NETWORK, any case, from dig and from getent
/// (through the per-namespace resolv.conf), and that file's life.
#[test]
fn local_names_aliases_and_fqdn_resolve() {
    let Some(mut w) = DnsWorld::new(&[UPSTREAM]) else {
        return;
    };
    let a = w.sandbox("a");
    let b = w.sandbox("b");
    let c = w.sandbox("c");
    let d = w.sandbox("d");
    let gw = w.network("dn", "10.233.1.0/24");
    // D brings its own resolv.conf: weft must leave it alone.
    let own = netns_resolv_conf(&d);
    std::fs::create_dir_all(own.parent().expect("a directory")).expect("mkdir /etc/netns/D");
    let own_text = "# the test's own\nnameserver 192.0.2.99\n";
    std::fs::write(&own, own_text).expect("writing D's resolv.conf");

    let alpha = w.connect("dn", &a, Some("alpha"), &["web"]);
    let beta = w.connect("dn", &b, Some("beta"), &["web", "db"]);
    let gamma = w.connect("dn", &c, None, &[]);
    w.connect("dn", &d, Some("delta"), &[]);

    let conf = netns_resolv_conf(&a);
    let text = std::fs::read_to_string(&conf)
        .unwrap_or_else(|e| panic!("{} after connect: {e}", conf.display()));
    assert!(
        text.lines().any(|l| l.trim() == format!("nameserver {gw}")),
        "{}: {text}",
        conf.display()
    );
    assert_eq!(
        std::fs::read_to_string(&own).expect("D's resolv.conf"),
        own_text,
        "weft overwrote a resolv.conf it did not write"
    );

    for (name, addr) in [
        ("beta", &beta),
        ("alpha", &alpha),
        ("db", &beta),
        ("beta.dn", &beta),
        ("beta.dn.", &beta),
        ("BETA.DN.", &beta),
        ("Alpha", &alpha),
        ("aLpHa.Dn", &alpha),
        (c.as_str(), &gamma), // the default name: the namespace's
    ] {
        w.expect_a(&a, &gw, name, &[addr]);
    }
    w.expect_a(&a, &gw, "web", &[&alpha, &beta]);
    w.expect_a(&b, &gw, "alpha", &[&alpha]);
    w.expect_a(&c, &gw, "WEB.dn", &[&alpha, &beta]);
    // Aliases are qualified with the network's name too.
    w.expect_a(&a, &gw, "web.dn.", &[&alpha, &beta]);
    w.expect_a(&a, &gw, "DB.dn", &[&beta]);

    // getent through the resolv.conf `ip netns exec` binds (only the dns
    // service of nsswitch, so nothing but that file is consulted).
    for (name, addr) in [("beta", &beta), ("beta.dn", &beta), ("web", &alpha)] {
        let out = w.exec(&a, &["getent", "-s", "dns", "hosts", name]);
        let text = stdout(&out);
        if name == "web" {
            assert!(
                text.starts_with(alpha.as_str()) || text.starts_with(beta.as_str()),
                "getent hosts web: {}",
                show(&out)
            );
        } else {
            assert!(
                out.status.success() && text.split_whitespace().next() == Some(addr.as_str()),
                "getent hosts {name} in A: {}",
                show(&out)
            );
        }
    }

    w.weft_ok(&["network", "disconnect", "dn", &a]);
    assert!(
        !conf.exists(),
        "{} still there after disconnect",
        conf.display()
    );
    w.weft_ok(&["network", "disconnect", "dn", &d]);
    assert_eq!(
        std::fs::read_to_string(&own).expect("D's resolv.conf after disconnect"),
        own_text,
        "weft removed or changed a resolv.conf it did not write"
    );
}

/// (2) A name (or address) of another network is NXDOMAIN for the asker,
/// and is not asked upstream.
#[test]
fn names_of_other_networks_are_nxdomain() {
    let Some(mut w) = DnsWorld::new(&[UPSTREAM]) else {
        return;
    };
    let a = w.sandbox("a");
    let b = w.sandbox("b");
    let c = w.sandbox("c");
    let gw1 = w.network("n1", "10.233.2.0/24");
    let gw2 = w.network("n2", "10.233.3.0/24");
    w.connect("n1", &a, Some("alpha"), &[]);
    let beta = w.connect("n1", &b, Some("beta"), &[]);
    let gamma = w.connect("n2", &c, Some("gamma"), &["gammaalias"]);

    w.expect_a(&a, &gw1, "beta", &[&beta]);
    for args in [
        vec!["gamma", "A"],
        vec!["gamma.n2", "A"],
        vec!["GAMMA.N2.", "A"],
        vec!["gammaalias", "A"],
        vec!["gammaalias.n2", "A"],
        vec!["gamma", "AAAA"],
        vec!["-x", gamma.as_str()],
    ] {
        let d = w.dig_status(&a, &gw1, &args, "NXDOMAIN");
        assert!(d.answers.is_empty(), "{args:?}:\n{}", d.text);
    }
    w.dig_status(&c, &gw2, &["beta", "A"], "NXDOMAIN");
    w.dig_status(&c, &gw2, &["alpha.n1", "A"], "NXDOMAIN");
    w.expect_a(&c, &gw2, "gamma", &[&gamma]);

    // A forwarded name shows in dnsmasq's query log; the names of n2 must
    // not (not leaked upstream).
    let d = w.dig_status(&a, &gw1, &[FORWARDED, "A"], "NOERROR");
    assert_eq!(d.data("A"), vec![FORWARDED_ADDR.to_owned()], "{}", d.text);
    let deadline = Instant::now() + Duration::from_secs(3);
    while !w.dnsmasq_log().contains(FORWARDED) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = w.dnsmasq_log();
    assert!(log.contains(FORWARDED), "dnsmasq logs queries:\n{log}");
    assert!(
        !log.contains("gamma") && !log.contains("beta") && !log.contains("alpha"),
        "a local name reached the upstream:\n{log}"
    );
}

/// (3) AAAA (and MX) for a name with only an IPv4 address: NODATA.
#[test]
fn aaaa_of_a_v4_only_name_is_nodata() {
    let Some(mut w) = DnsWorld::new(&[UPSTREAM]) else {
        return;
    };
    let a = w.sandbox("a");
    let b = w.sandbox("b");
    let gw = w.network("nd", "10.233.4.0/24");
    w.connect("nd", &a, Some("alpha"), &["web"]);
    w.connect("nd", &b, Some("beta"), &["web"]);
    for args in [
        ["beta", "AAAA"],
        ["beta.nd", "AAAA"],
        ["web", "AAAA"],
        ["beta", "MX"],
        ["beta", "TXT"],
    ] {
        let d = w.dig_status(&a, &gw, &args, "NOERROR");
        assert_eq!(d.answer_count, Some(0), "{args:?}: NODATA:\n{}", d.text);
        assert!(d.has_flag("aa"), "{args:?}: authoritative:\n{}", d.text);
    }
}

/// (4) A shared alias answers every address, in shuffled orders.
#[test]
fn shared_alias_answers_every_address_shuffled() {
    let Some(mut w) = DnsWorld::new(&[UPSTREAM]) else {
        return;
    };
    let gw = w.network("sh", "10.233.5.0/24");
    let mut addrs = Vec::new();
    for name in ["s1", "s2", "s3"] {
        let ns = w.sandbox(name);
        addrs.push(w.connect("sh", &ns, Some(name), &["web"]));
    }
    let asker = w.sandbox("asker");
    w.connect("sh", &asker, Some("asker"), &[]);
    let expected: BTreeSet<String> = addrs.iter().cloned().collect();
    let mut orders = HashSet::new();
    for _ in 0..20 {
        let out = w.exec(
            &asker,
            &[
                "dig",
                "+time=2",
                "+tries=2",
                "+short",
                &format!("@{gw}"),
                "web",
            ],
        );
        let order: Vec<String> = stdout(&out).lines().map(str::to_owned).collect();
        let got: BTreeSet<String> = order.iter().cloned().collect();
        assert!(
            order.len() == 3 && got == expected,
            "dig +short web: {}",
            show(&out)
        );
        orders.insert(order);
    }
    assert!(
        orders.len() >= 2,
        "20 answers, always in the same order: {orders:?}"
    );
}

/// (5) PTR of an endpoint's address: NAME.NETWORK.
#[test]
fn ptr_answers_name_dot_network() {
    let Some(mut w) = DnsWorld::new(&[UPSTREAM]) else {
        return;
    };
    let a = w.sandbox("a");
    let b = w.sandbox("b");
    let gw = w.network("pn", "10.233.6.0/24");
    let alpha = w.connect("pn", &a, Some("alpha"), &[]);
    let beta = w.connect("pn", &b, Some("beta"), &["web", "db"]);
    let d = w.dig_status(&a, &gw, &["-x", &beta], "NOERROR");
    assert_eq!(d.data("PTR"), vec!["beta.pn.".to_owned()], "{}", d.text);
    assert_eq!(
        d.answers.len(),
        1,
        "one PTR, not one per alias:\n{}",
        d.text
    );
    assert!(d.has_flag("aa"), "{}", d.text);
    let d = w.dig_status(&b, &gw, &["-x", &alpha], "NOERROR");
    assert_eq!(d.data("PTR"), vec!["alpha.pn.".to_owned()], "{}", d.text);
}

/// (6) DNS over TCP: a local name, several queries on one connection, and a
/// forwarded name.
#[test]
fn tcp_answers_local_and_forwarded_names() {
    let Some(mut w) = DnsWorld::new(&[UPSTREAM]) else {
        return;
    };
    let a = w.sandbox("a");
    let b = w.sandbox("b");
    let gw = w.network("tn", "10.233.7.0/24");
    let alpha = w.connect("tn", &a, Some("alpha"), &["web"]);
    let beta = w.connect("tn", &b, Some("beta"), &["web"]);

    let d = w.dig_status(&a, &gw, &["+tcp", "beta", "A"], "NOERROR");
    assert!(d.tcp, "answered over TCP:\n{}", d.text);
    assert_eq!(d.data("A"), vec![beta.clone()], "{}", d.text);

    let d = w.dig_status(&a, &gw, &["+tcp", FORWARDED, "A"], "NOERROR");
    assert!(d.tcp, "answered over TCP:\n{}", d.text);
    assert_eq!(d.data("A"), vec![FORWARDED_ADDR.to_owned()], "{}", d.text);

    let d = w.dig_status(&a, &gw, &["+tcp", "-x", &beta], "NOERROR");
    assert_eq!(d.data("PTR"), vec!["beta.tn.".to_owned()], "{}", d.text);

    // Three queries on one connection (+keepopen).
    let at = format!("@{gw}");
    let out = w.exec(
        &a,
        &[
            "dig",
            "+time=2",
            "+tries=1",
            "+tcp",
            "+keepopen",
            "+short",
            &at,
            "alpha",
            "beta",
            "web",
        ],
    );
    let mut lines: Vec<String> = stdout(&out).lines().map(str::to_owned).collect();
    lines.sort();
    assert_eq!(
        lines,
        sorted(&[&alpha, &beta, &alpha, &beta]),
        "+keepopen: {}\n--- daemon log ---\n{}",
        show(&out),
        w.daemon_log()
    );
}

/// (7a) Forwarding: an upstream's answer, and its NXDOMAIN, pass through.
#[test]
fn forwards_to_the_upstream_and_passes_nxdomain_through() {
    let Some(mut w) = DnsWorld::new(&[UPSTREAM]) else {
        return;
    };
    let a = w.sandbox("a");
    let gw = w.network("fw", "10.233.8.0/24");
    w.connect("fw", &a, Some("alpha"), &[]);
    let d = w.dig_status(&a, &gw, &[FORWARDED, "A"], "NOERROR");
    assert_eq!(d.data("A"), vec![FORWARDED_ADDR.to_owned()], "{}", d.text);
    assert!(
        !d.has_flag("aa"),
        "a relayed answer is not ours:\n{}",
        d.text
    );
    let d = w.dig_status(&a, &gw, &["WWW.Example.TEST", "A"], "NOERROR");
    assert_eq!(d.data("A"), vec![FORWARDED_ADDR.to_owned()], "{}", d.text);
    let d = w.dig_status(&a, &gw, &[UPSTREAM_NXDOMAIN, "A"], "NXDOMAIN");
    assert!(d.answers.is_empty(), "{}", d.text);
    // The three relayed answers are in the upstream latency histogram
    // (Prometheus metrics, issue 18).
    let metrics = std::process::Command::new("curl")
        .args(["-sf", "--max-time", "10", "--unix-socket"])
        .arg(&w.socket)
        .arg("http://weft/metrics")
        .output()
        .expect("curl");
    let text = stdout(&metrics);
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
    };
    let relayed = value("weft_dns_upstream_latency_seconds_count");
    assert!(relayed >= 3.0, "{relayed} upstream answers timed:\n{text}");
    assert_eq!(
        value("weft_dns_upstream_latency_seconds_bucket{le=\"+Inf\"}"),
        relayed
    );
    assert!(value("weft_dns_upstream_latency_seconds_sum") > 0.0);
    assert!(value("weft_dns_answers_total{kind=\"forwarded\"}") >= 3.0);
    // dnsmasq without upstreams refuses the rest: the asker gets SERVFAIL.
    w.dig_status(&a, &gw, &["unknown.example.org", "A"], "SERVFAIL");
    // The upstream stopped (port unreachable): SERVFAIL, in bounded time.
    w.kill_dnsmasq();
    let d = w.dig(&a, &gw, &["+time=8", "+tries=1", FORWARDED, "A"]);
    assert_eq!(d.status, "SERVFAIL", "{}", d.text);
    assert!(
        d.elapsed < Duration::from_secs(6),
        "SERVFAIL after {:?}",
        d.elapsed
    );
    eprintln!("dnsmasq stopped: SERVFAIL after {:?}", d.elapsed);
    // Local names do not depend on the upstream.
    w.expect_a(&a, &gw, "alpha", &[&w.address_of("fw", &a)]);
}

/// (7b) The only upstream is dead (its address is nobody's): SERVFAIL
/// within 6 s; with three dead upstreams as well (the 4 s deadline).
#[test]
fn dead_upstreams_give_servfail_within_6_seconds() {
    for upstreams in [vec![DEAD], vec![DEAD, DEAD2, DEAD3]] {
        let Some(mut w) = DnsWorld::new(&upstreams) else {
            return;
        };
        let a = w.sandbox("a");
        let gw = w.network("dd", "10.233.9.0/24");
        let alpha = w.connect("dd", &a, Some("alpha"), &[]);
        let d = w.dig(&a, &gw, &["+time=8", "+tries=1", FORWARDED, "A"]);
        assert_eq!(
            d.status,
            "SERVFAIL",
            "upstreams {upstreams:?}:\n{}\n--- daemon log ---\n{}",
            d.text,
            w.daemon_log()
        );
        assert!(
            d.elapsed < Duration::from_secs(6),
            "upstreams {upstreams:?}: SERVFAIL after {:?}",
            d.elapsed
        );
        eprintln!("upstreams {upstreams:?}: SERVFAIL after {:?}", d.elapsed);
        w.expect_a(&a, &gw, "alpha", &[&alpha]);
    }
}

/// (7c) The first upstream is dead, the second answers: the asker gets the
/// answer (the next upstream is tried).
#[test]
fn next_upstream_is_tried_when_the_first_is_dead() {
    let Some(mut w) = DnsWorld::new(&[DEAD, UPSTREAM]) else {
        return;
    };
    let a = w.sandbox("a");
    let gw = w.network("nu", "10.233.10.0/24");
    w.connect("nu", &a, Some("alpha"), &[]);
    let d = w.dig(&a, &gw, &["+time=8", "+tries=1", FORWARDED, "A"]);
    assert_eq!(
        d.status,
        "NOERROR",
        "{}\n--- daemon log ---\n{}",
        d.text,
        w.daemon_log()
    );
    assert_eq!(d.data("A"), vec![FORWARDED_ADDR.to_owned()], "{}", d.text);
    assert!(
        d.elapsed < Duration::from_secs(6),
        "answer after {:?}",
        d.elapsed
    );
    let d = w.dig_status(&a, &gw, &[UPSTREAM_NXDOMAIN, "A"], "NXDOMAIN");
    assert!(d.answers.is_empty(), "{}", d.text);
}

/// (8) An answer too large for 512 bytes (no EDNS) comes with TC and no
/// records; dig then retries over TCP and gets all of them.
#[test]
fn large_answers_are_truncated_and_retried_over_tcp() {
    /// 40 A records of 16 bytes (compressed names) exceed 512 bytes.
    const ENDPOINTS: usize = 40;
    let Some(mut w) = DnsWorld::new(&[UPSTREAM]) else {
        return;
    };
    let gw = w.network("tc", "10.233.11.0/24");
    let asker = w.sandbox("asker");
    w.connect("tc", &asker, Some("asker"), &[]);
    let start = Instant::now();
    let mut expected = BTreeSet::new();
    for i in 0..ENDPOINTS {
        let ns = w.sandbox(&format!("m{i}"));
        let name = format!("m{i}");
        expected.insert(w.connect("tc", &ns, Some(&name), &["many"]));
    }
    eprintln!("{ENDPOINTS} endpoints attached in {:?}", start.elapsed());

    let d = w.dig_status(&asker, &gw, &["+noedns", "+ignore", "many", "A"], "NOERROR");
    assert!(d.has_flag("tc"), "TC without EDNS:\n{}", d.text);
    assert!(!d.tcp, "+ignore stays on UDP:\n{}", d.text);

    let d = w.dig_status(&asker, &gw, &["+noedns", "many", "A"], "NOERROR");
    assert!(
        d.text.contains("Truncated, retrying in TCP mode"),
        "{}",
        d.text
    );
    assert!(d.tcp, "the retry went over TCP:\n{}", d.text);
    assert!(!d.has_flag("tc"), "{}", d.text);
    let got: BTreeSet<String> = d.data("A").into_iter().collect();
    assert_eq!(got, expected, "{}", d.text);

    // With EDNS (dig advertises 1232) the same answer fits in UDP.
    let d = w.dig_status(&asker, &gw, &["many", "A"], "NOERROR");
    assert!(!d.has_flag("tc") && !d.tcp, "{}", d.text);
    assert_eq!(d.answers.len(), ENDPOINTS, "{}", d.text);
}

/// (9) Names follow connect and disconnect at once.
#[test]
fn names_appear_and_disappear_at_once() {
    let Some(mut w) = DnsWorld::new(&[UPSTREAM]) else {
        return;
    };
    let a = w.sandbox("a");
    let b = w.sandbox("b");
    let gw = w.network("cd", "10.233.12.0/24");
    let alpha = w.connect("cd", &a, Some("alpha"), &["web"]);
    let beta = w.connect("cd", &b, Some("beta"), &["web"]);
    w.expect_a(&a, &gw, "beta", &[&beta]);
    w.expect_a(&a, &gw, "web", &[&alpha, &beta]);

    w.weft_ok(&["network", "disconnect", "cd", &b]);
    // No pause: the zone changed before disconnect returned. Not local
    // any more, the name is forwarded; dnsmasq refuses it (SERVFAIL).
    for name in ["beta", "beta.cd", "BETA"] {
        let d = w.dig(&a, &gw, &[name, "A"]);
        assert!(
            !d.status.is_empty() && d.status != "NOERROR" && d.answers.is_empty(),
            "{name} after disconnect:\n{}",
            d.text
        );
    }
    let d = w.dig(&a, &gw, &["-x", &beta]);
    assert!(
        d.data("PTR").is_empty(),
        "PTR after disconnect:\n{}",
        d.text
    );
    w.expect_a(&a, &gw, "web", &[&alpha]);

    // Back under another name: the new name at once, the old one not.
    let beta2 = w.connect("cd", &b, Some("bravo"), &["web"]);
    w.expect_a(&a, &gw, "bravo", &[&beta2]);
    w.expect_a(&a, &gw, "web", &[&alpha, &beta2]);
    let d = w.dig(&a, &gw, &["beta", "A"]);
    assert!(d.answers.is_empty(), "beta after rename:\n{}", d.text);
}

/// (10) A burst of 1,000 queries is all answered: with dnsperf (100 in
/// flight) when it is installed, else (CI installs no dnsperf) with one
/// `dig -f` batch of 1,000 queries, one after the other.
///
/// Not more in flight: with 500, when the test machine is busy, dnsperf's
/// own socket buffer overflows (`UdpRcvbufErrors` in the asker) although
/// weft answered every query.
#[test]
fn a_burst_of_1000_queries_is_all_answered() {
    let Some(mut w) = DnsWorld::new(&[UPSTREAM]) else {
        return;
    };
    let a = w.sandbox("a");
    let b = w.sandbox("b");
    let gw = w.network("bu", "10.233.13.0/24");
    let alpha = w.connect("bu", &a, Some("alpha"), &["web"]);
    let beta = w.connect("bu", &b, Some("beta"), &["web"]);
    if has_tool("dnsperf", "-h") {
        burst_with_dnsperf(&w, &a, &gw);
    } else {
        eprintln!("no dnsperf: 1,000 queries with dig -f instead");
        burst_with_dig(&w, &a, &gw, &alpha, &beta);
    }
}

fn burst_with_dnsperf(w: &DnsWorld, a: &str, gw: &str) {
    let names = ["alpha A", "beta A", "web A", "BETA.BU. A", "alpha.bu AAAA"];
    let queries: String = (0..1000)
        .map(|i| format!("{}\n", names[i % names.len()]))
        .collect();
    let file = w.dir.join("queries.txt");
    std::fs::write(&file, queries).expect("writing the query file");
    let file = file.to_str().expect("UTF-8 path").to_owned();
    let start = Instant::now();
    let out = w.exec(
        a,
        &[
            "dnsperf", "-s", gw, "-d", &file, "-n", "1", "-q", "100", "-t", "5",
        ],
    );
    let elapsed = start.elapsed();
    let text = stdout(&out);
    let field = |label: &str| -> Option<u64> {
        text.lines()
            .find(|l| l.trim_start().starts_with(label))
            .and_then(|l| l.split(':').nth(1))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    let complete = out.status.success()
        && field("Queries sent:") == Some(1000)
        && field("Queries completed:") == Some(1000)
        && field("Queries lost:") == Some(0);
    if !complete {
        // Where the queries went: the asker's UDP counters, its TAP, the
        // switch's port counters.
        let udp = stdout(&w.exec(a, &["nstat", "-az"]));
        let udp: String = udp
            .lines()
            .filter(|l| l.starts_with("Udp") && !l.starts_with("Udp6") && !l.contains("Lite"))
            .map(|l| format!("{l}\n"))
            .collect();
        let link = stdout(&w.exec(a, &["ip", "-s", "-s", "link", "show", "eth0"]));
        let net = w.inspect("bu");
        let softnet = std::fs::read_to_string("/proc/net/softnet_stat").unwrap_or_default();
        panic!(
            "dnsperf: {}\n--- asker's nstat ---\n{udp}--- asker's eth0 ---\n{link}\n--- softnet_stat ---\n{softnet}--- network ---\n{net:#}\n--- daemon log ---\n{}",
            show(&out),
            w.daemon_log()
        );
    }
    assert!(
        text.contains("NOERROR 1000 (100.00%)"),
        "every answer NOERROR: {text}"
    );
    eprintln!("dnsperf: 1000 queries answered in {elapsed:?} (with dnsperf's start)");
}

fn burst_with_dig(w: &DnsWorld, a: &str, gw: &str, alpha: &str, beta: &str) {
    // Names with one address each, so that every query prints one line.
    let names = [("alpha", alpha), ("beta", beta), ("BETA.BU.", beta)];
    let queries: String = (0..1000)
        .map(|i| format!("{} A\n", names[i % names.len()].0))
        .collect();
    let file = w.dir.join("queries.txt");
    std::fs::write(&file, queries).expect("writing the query file");
    let file = file.to_str().expect("UTF-8 path").to_owned();
    let at = format!("@{gw}");
    let start = Instant::now();
    let out = w.exec(
        a,
        &["dig", "+time=2", "+tries=2", "+short", &at, "-f", &file],
    );
    let elapsed = start.elapsed();
    let lines: Vec<String> = stdout(&out).lines().map(str::to_owned).collect();
    let expected: Vec<String> = (0..1000)
        .map(|i| names[i % names.len()].1.to_owned())
        .collect();
    assert!(
        out.status.success() && lines == expected,
        "dig -f: {} of 1000 answers, first difference at {:?}: {}\n--- daemon log ---\n{}",
        lines.len(),
        lines.iter().zip(&expected).position(|(x, y)| x != y),
        show(&out),
        w.daemon_log()
    );
    eprintln!("dig -f: 1000 queries answered in {elapsed:?}");
}

/// (11) `weft run` resolves through its own resolv.conf (the gateway), and
/// the host's /etc/resolv.conf is untouched.
#[test]
fn weft_run_resolves_names_through_the_gateway() {
    let Some(mut w) = DnsWorld::new(&[UPSTREAM]) else {
        return;
    };
    let b = w.sandbox("b");
    let gw = w.network("rn", "10.233.14.0/24");
    let beta = w.connect("rn", &b, Some("beta"), &[]);
    let host_conf = std::fs::read("/etc/resolv.conf").unwrap_or_default();

    let run = |cmd: &[&str]| -> Output {
        let mut args = vec!["run", "--network", "rn", "--name", "gamma", "--"];
        args.extend_from_slice(cmd);
        w.weft(&args)
    };
    let out = run(&["getent", "-s", "dns", "hosts", "beta"]);
    assert!(
        out.status.code() == Some(0)
            && stdout(&out).split_whitespace().next() == Some(beta.as_str()),
        "weft run getent hosts beta: {}\n--- daemon log ---\n{}",
        show(&out),
        w.daemon_log()
    );
    let out = run(&["cat", "/etc/resolv.conf"]);
    let text = stdout(&out);
    let nameservers: Vec<&str> = text
        .lines()
        .filter(|l| l.trim_start().starts_with("nameserver"))
        .collect();
    assert!(
        out.status.success() && nameservers == [format!("nameserver {gw}").as_str()],
        "weft run cat /etc/resolv.conf: {}",
        show(&out)
    );
    // The command's own name, and a forwarded one, from inside.
    let out = run(&[
        "sh",
        "-c",
        "getent -s dns hosts gamma && getent -s dns hosts www.example.test",
    ]);
    let text = stdout(&out);
    assert!(
        out.status.success()
            && text
                .lines()
                .any(|l| l.starts_with("10.233.14.") && l.contains("gamma"))
            && text.contains(FORWARDED_ADDR),
        "weft run getent gamma, www.example.test: {}",
        show(&out)
    );

    assert_eq!(
        std::fs::read("/etc/resolv.conf").unwrap_or_default(),
        host_conf,
        "the host's /etc/resolv.conf changed"
    );
    // The run's endpoint (and with it its name) is gone.
    let d = w.dig(&b, &gw, &["gamma", "A"]);
    assert!(d.answers.is_empty(), "gamma after weft run:\n{}", d.text);
    let endpoints = w.inspect("rn")["endpoints"].as_array().map_or(0, Vec::len);
    assert_eq!(endpoints, 1, "only B is left on rn");
}

/// DNS over TCP under slow clients: one sandbox keeps opening connections
/// that send one byte of a message and then stall (more than every slot of
/// the network); another sandbox's TCP queries are answered all along
/// (the per-client share, the per-message deadline and eviction of idle
/// connections, `weft_services::dns::tcp`).
#[test]
fn slow_tcp_clients_cannot_starve_the_others() {
    if !require(has_tool("socat", "-V"), "needs `socat`") {
        return;
    }
    let Some(mut w) = DnsWorld::new(&[UPSTREAM]) else {
        return;
    };
    let a = w.sandbox("a");
    let b = w.sandbox("b");
    let gw = w.network("slow", "10.233.15.0/24");
    w.connect("slow", &a, Some("slowpoke"), &[]);
    let beta = w.connect("slow", &b, Some("beta"), &[]);
    // 24 stalled connections a second, for 15 s (bounded by timeout).
    let flood = format!(
        "for round in $(seq 15); do for i in $(seq 24); do \
           (printf '\\000'; sleep 4) | socat -u - TCP:{gw}:53,connect-timeout=1 2>/dev/null & \
         done; sleep 1; done; wait"
    );
    let mut slow = Command::new("ip")
        .args([
            "netns", "exec", &a, "timeout", "-k", "2", "25", "sh", "-c", &flood,
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .expect("starting the slow clients");
    std::thread::sleep(Duration::from_secs(2));
    let mut answered = 0;
    for _ in 0..5 {
        let d = w.dig(&b, &gw, &["+tcp", "beta", "A"]);
        if d.status == "NOERROR" && d.data("A") == vec![beta.clone()] {
            answered += 1;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    kill_group(&mut slow);
    assert_eq!(
        answered,
        5,
        "TCP queries answered while another sandbox stalls connections\n--- daemon log ---\n{}",
        w.daemon_log()
    );
}
