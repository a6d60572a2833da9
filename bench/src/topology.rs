//! The three end-to-end topologies, each two sandbox namespaces (A the
//! client, B the server) joined by a switch in a namespace of its own:
//!
//! | topology | switch | sandbox interface |
//! |---|---|---|
//! | weft | `weft daemon` in `wb-weft-host` | eth0, a TAP the daemon owns (`weft network connect`) |
//! | bridge | Linux bridge `br0` in `wb-br-sw` | eth0, a veth whose peer is a bridge port |
//! | vde | `vde_switch -t tapa -t tapb` in `wb-vde-sw` | the TAP itself, moved into the sandbox |
//!
//! All at MTU 1500 (vde_switch 2.3.2 drops frames above 1514 bytes, so a
//! larger MTU would not be a like-for-like comparison). Each has its own
//! /24 in 10.213.0.0/16, so the three can exist side by side: they are
//! built once and the measurements alternate between them. The kernel
//! bridge is the physical limit of same-host switching; vde_switch owning a
//! TAP per sandbox is the same shape as weft (one userspace process, a TAP
//! per sandbox) and its closest existing peer.
//!
//! The userspace switch's PID is kept for CPU accounting; the weft daemon
//! runs with `--no-default-network` and in its own namespace, so nothing
//! it does reaches the machine's namespace.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::lab::{Lab, VDE_PID_FILE};
use crate::process::{self, Captured};

/// Deadline for one weft CLI call.
pub const WEFT_CLI_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a daemon gets to come up.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);
/// Attempts (100 ms apart) at a first ping across a fresh topology: ARP,
/// bridge learning and TAP carrier take a moment.
const REACHABILITY_ATTEMPTS: u32 = 50;

/// Which switch joins the sandboxes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The weft daemon.
    Weft,
    /// Linux bridge + veth.
    Bridge,
    /// vde_switch with a TAP per sandbox.
    Vde,
}

impl Kind {
    /// Every topology, in run order.
    pub const ALL: [Kind; 3] = [Kind::Weft, Kind::Bridge, Kind::Vde];

    /// The row label in the report.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Weft => "weft (daemon, TAP per sandbox)",
            Kind::Bridge => "kernel bridge + veth",
            Kind::Vde => "vde_switch -t (TAP per sandbox)",
        }
    }

    /// A short name for progress lines.
    pub fn short(self) -> &'static str {
        match self {
            Kind::Weft => "weft",
            Kind::Bridge => "bridge",
            Kind::Vde => "vde",
        }
    }
}

/// A built topology.
#[derive(Debug)]
pub struct Testbed {
    /// Which one.
    pub kind: Kind,
    /// The client sandbox (iperf3 -c, ping).
    pub client_ns: String,
    /// The server sandbox (iperf3 -s).
    pub server_ns: String,
    /// The server's address.
    pub server_ip: Ipv4Addr,
    /// The userspace switch process whose CPU time is accounted; `None`
    /// for the kernel bridge.
    pub switch_pid: Option<u32>,
}

/// Where the weft binary is: $WEFT_BIN, else the workspace's
/// target/release/weft.
pub fn weft_binary() -> Result<PathBuf> {
    let path = match std::env::var_os("WEFT_BIN") {
        Some(path) => PathBuf::from(path),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/weft"),
    };
    if !process::is_executable(&path) {
        bail!(
            "no weft binary at {} (or set WEFT_BIN): build it first: cargo build --release -p weft",
            path.display()
        );
    }
    path.canonicalize()
        .with_context(|| format!("resolving {}", path.display()))
}

/// A running weft daemon in a namespace of the harness's.
#[derive(Debug)]
pub struct WeftDaemon {
    /// Its PID (the whole process: controller and data path).
    pub pid: u32,
    binary: String,
    socket: String,
}

impl WeftDaemon {
    /// Start `weft daemon` in `host_ns` with its socket and state under
    /// `dir`; wait until its API answers.
    pub fn start(lab: &mut Lab, binary: &Path, host_ns: &str, dir: &Path) -> Result<WeftDaemon> {
        WeftDaemon::start_with(lab, binary, host_ns, dir, &[])
    }

    /// Like [`WeftDaemon::start`], with `extra` daemon options appended
    /// (`--listen`, `--join`, `--node-name` for an overlay host).
    pub fn start_with(
        lab: &mut Lab,
        binary: &Path,
        host_ns: &str,
        dir: &Path,
        extra: &[&str],
    ) -> Result<WeftDaemon> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let binary = path_str(binary)?;
        let socket = path_str(&dir.join("api.sock"))?;
        let state_dir = path_str(&dir.join("state"))?;
        let mut argv: Vec<&str> = vec![
            &binary,
            "--socket",
            &socket,
            "daemon",
            "--state-dir",
            &state_dir,
            "--no-default-network",
            // Never the host's resolvers: a closed loopback port of the
            // daemon's own namespace.
            "--dns-upstream",
            "127.0.0.1:9",
        ];
        argv.extend_from_slice(extra);
        let pid = lab.spawn_in(host_ns, "weft-daemon", &argv)?;
        let daemon = WeftDaemon {
            pid,
            binary,
            socket,
        };
        let deadline = std::time::Instant::now() + STARTUP_TIMEOUT;
        loop {
            if !lab.is_running(pid) {
                bail!("the weft daemon exited at start: {}", lab.log_tail(pid));
            }
            let answer = lab.run(
                &[&daemon.binary, "--socket", &daemon.socket, "network", "ls"],
                Duration::from_secs(5),
            )?;
            if answer.status.success() {
                return Ok(daemon);
            }
            if std::time::Instant::now() >= deadline {
                bail!(
                    "the weft daemon did not answer `network ls` within {} s: {}",
                    STARTUP_TIMEOUT.as_secs(),
                    lab.log_tail(pid)
                );
            }
            process::pause(Duration::from_millis(50))?;
        }
    }

    /// Run `weft --socket SOCK ARGS...` (a client of the API; it touches no
    /// network itself), returning its result whatever its exit status.
    pub fn cli(&self, lab: &mut Lab, args: &[&str]) -> Result<Captured> {
        let mut argv = vec![self.binary.as_str(), "--socket", self.socket.as_str()];
        argv.extend_from_slice(args);
        lab.run(&argv, WEFT_CLI_TIMEOUT)
    }

    /// Like [`WeftDaemon::cli`], but it must succeed.
    pub fn cli_ok(&self, lab: &mut Lab, args: &[&str]) -> Result<Captured> {
        self.cli(lab, args)?.success()
    }
}

fn path_str(path: &Path) -> Result<String> {
    path.to_str()
        .map(str::to_owned)
        .with_context(|| format!("path {} is not UTF-8", path.display()))
}

/// Build one topology.
pub fn build(lab: &mut Lab, kind: Kind, weft: &Path) -> Result<Testbed> {
    let testbed = match kind {
        Kind::Weft => build_weft(lab, weft),
        Kind::Bridge => build_bridge(lab),
        Kind::Vde => build_vde(lab),
    }
    .with_context(|| format!("building the {} topology", kind.short()))?;
    wait_reachable(lab, &testbed.client_ns, testbed.server_ip)?;
    Ok(testbed)
}

/// weft: daemon in wb-weft-host, network `bench` 10.213.5.0/24, MTU 1500.
fn build_weft(lab: &mut Lab, weft: &Path) -> Result<Testbed> {
    let (host, a, b) = ("wb-weft-host", "wb-weft-a", "wb-weft-b");
    for ns in [host, a, b] {
        lab.add_netns(ns)?;
    }
    let dir = lab.work_dir().join("weft-e2e");
    let daemon = WeftDaemon::start(lab, weft, host, &dir)?;
    daemon.cli_ok(
        lab,
        &[
            "network",
            "create",
            "--subnet",
            "10.213.5.0/24",
            "--mtu",
            "1500",
            "bench",
        ],
    )?;
    daemon.cli_ok(
        lab,
        &["network", "connect", "--ip", "10.213.5.2", "bench", a],
    )?;
    daemon.cli_ok(
        lab,
        &["network", "connect", "--ip", "10.213.5.3", "bench", b],
    )?;
    Ok(Testbed {
        kind: Kind::Weft,
        client_ns: a.into(),
        server_ns: b.into(),
        server_ip: Ipv4Addr::new(10, 213, 5, 3),
        switch_pid: Some(daemon.pid),
    })
}

/// Kernel bridge br0 in wb-br-sw, a veth pair to each sandbox, 10.213.6.0/24.
fn build_bridge(lab: &mut Lab) -> Result<Testbed> {
    let (switch, a, b) = ("wb-br-sw", "wb-br-a", "wb-br-b");
    for ns in [switch, a, b] {
        lab.add_netns(ns)?;
    }
    lab.ip(switch, &["link", "add", "br0", "type", "bridge"])?;
    lab.ip(switch, &["link", "set", "br0", "up"])?;
    for (sandbox, port, address) in [(a, "vetha", "10.213.6.2/24"), (b, "vethb", "10.213.6.3/24")] {
        // Created inside the switch namespace, the peer directly in the
        // sandbox: no interface ever exists in the machine's namespace.
        lab.ip(
            switch,
            &[
                "link", "add", port, "mtu", "1500", "type", "veth", "peer", "name", "eth0", "mtu",
                "1500", "netns", sandbox,
            ],
        )?;
        lab.ip(switch, &["link", "set", port, "master", "br0"])?;
        lab.ip(switch, &["link", "set", port, "up"])?;
        lab.ip(sandbox, &["addr", "add", address, "dev", "eth0"])?;
        lab.ip(sandbox, &["link", "set", "eth0", "up"])?;
    }
    Ok(Testbed {
        kind: Kind::Bridge,
        client_ns: a.into(),
        server_ns: b.into(),
        server_ip: Ipv4Addr::new(10, 213, 6, 3),
        switch_pid: None,
    })
}

/// `vde_switch -t tapa -t tapb` daemonized in wb-vde-sw; each TAP moved
/// into its sandbox and addressed there, 10.213.7.0/24 (the anchors' "b1").
fn build_vde(lab: &mut Lab) -> Result<Testbed> {
    let (switch, a, b) = ("wb-vde-sw", "wb-vde-a", "wb-vde-b");
    for ns in [switch, a, b] {
        lab.add_netns(ns)?;
    }
    let dir = lab.work_dir().join("vde");
    let pid_file = lab.work_dir().join(VDE_PID_FILE);
    let control = path_str(&dir.join("ctl"))?;
    let management = path_str(&dir.join("mgmt"))?;
    let pid_file_arg = path_str(&pid_file)?;
    lab.run_in(
        switch,
        &[
            "vde_switch",
            "-t",
            "tapa",
            "-t",
            "tapb",
            "-s",
            &control,
            "-M",
            &management,
            "-d",
            "-p",
            &pid_file_arg,
        ],
        Duration::from_secs(10),
    )?
    .success()?;
    let pid = wait_for(
        || {
            std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|text| text.trim().parse::<u32>().ok())
        },
        "vde_switch's pid file",
    )?;
    lab.adopt("vde_switch", pid)?;
    for (sandbox, tap, address) in [(a, "tapa", "10.213.7.2/24"), (b, "tapb", "10.213.7.3/24")] {
        let mut appeared = false;
        for _ in 0..50 {
            if lab
                .run_in(switch, &["ip", "link", "show", tap], Duration::from_secs(5))?
                .status
                .success()
            {
                appeared = true;
                break;
            }
            process::pause(Duration::from_millis(100))?;
        }
        if !appeared {
            bail!("vde_switch did not create {tap} in {switch} within 5 s");
        }
        lab.ip(switch, &["link", "set", tap, "netns", sandbox])?;
        lab.ip(sandbox, &["link", "set", tap, "mtu", "1500"])?;
        lab.ip(sandbox, &["addr", "add", address, "dev", tap])?;
        lab.ip(sandbox, &["link", "set", tap, "up"])?;
    }
    Ok(Testbed {
        kind: Kind::Vde,
        client_ns: a.into(),
        server_ns: b.into(),
        server_ip: Ipv4Addr::new(10, 213, 7, 3),
        switch_pid: Some(pid),
    })
}

/// Poll `probe` every 100 ms for up to 5 s.
fn wait_for<T>(mut probe: impl FnMut() -> Option<T>, what: &str) -> Result<T> {
    for _ in 0..50 {
        if let Some(value) = probe() {
            return Ok(value);
        }
        process::pause(Duration::from_millis(100))?;
    }
    bail!("timed out after 5 s waiting for {what}");
}

/// Bounded wait until `target` answers a ping from `netns`.
pub fn wait_reachable(lab: &mut Lab, netns: &str, target: Ipv4Addr) -> Result<()> {
    let target = target.to_string();
    for _ in 0..REACHABILITY_ATTEMPTS {
        let answer = lab.run_in(
            netns,
            &["ping", "-n", "-q", "-c", "1", "-W", "1", &target],
            Duration::from_secs(5),
        )?;
        if answer.status.success() {
            return Ok(());
        }
        process::pause(Duration::from_millis(100))?;
    }
    bail!("{target} does not answer ping from {netns} after {REACHABILITY_ATTEMPTS} attempts");
}
