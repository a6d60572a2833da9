//! `weft-bench overlay`: sandbox-to-sandbox traffic across two hosts,
//! weft's overlay (VXLAN over UDP, encapsulated in the daemon) against the
//! kernel's `vxlan` device + Linux bridge on the same topology, in one run.
//!
//! # The lab (every namespace `wb-ov-*`)
//!
//! ```text
//!                       wb-ov-under: Linux bridge br0 (the "wire")
//!          ┌──────────────┬───────────┴──┬──────────────┐
//!   wb-ov-wh1        wb-ov-wh2       wb-ov-kh1        wb-ov-kh2
//!   192.0.2.1        192.0.2.2       192.0.2.11       192.0.2.12
//!   weft daemon      weft daemon     vx0+br0          vx0+br0
//!   │ TAP            │ TAP           │ veth           │ veth
//!   wb-ov-ws1        wb-ov-ws2       wb-ov-ks1        wb-ov-ks2
//!   (client)         (server)        (client)         (server)
//! ```
//!
//! - Underlay: the namespace `wb-ov-under` holds a bridge `br0`; each host
//!   namespace has a veth `v0` (MTU 1500) into it, created from inside the
//!   host namespace with its peer put straight into the underlay, so no
//!   interface ever exists in the machine's own namespace.
//! - weft (as `cli/tests/overlay.rs` builds it): `weft daemon --listen
//!   192.0.2.N:7946 --node-name hN` (host 2 also `--join 192.0.2.1:7946`),
//!   `--no-default-network`, `--dns-upstream` a closed port of its own
//!   namespace; once the two see each other alive, `weft network create
//!   --driver overlay --subnet 10.240.0.0/24 ov` on host 1, and when it is
//!   listed on host 2, `weft network connect ov wb-ov-wsN` on each host.
//!   The sandbox MTU is weft's overlay default (1450).
//! - kernel (as `shared/anchors/vxlan.sh` builds it): in each host `vx0`
//!   (`vxlan id 4242 dstport 4789 local 192.0.2.1N remote 192.0.2.1M dev
//!   v0`, learning on, kernel defaults otherwise) and a veth `vs0` to the
//!   sandbox enslaved to a bridge `br0`; sandbox `eth0` 10.241.0.N/24 at
//!   MTU 1450 (vs0 too; vx0 gets 1450 from the kernel on a 1500 underlay).
//!
//! # The measurements
//!
//! Both sides are built once; each run measures weft then the kernel
//! (alternating, as `e2e` does): one TCP stream (`iperf3 -c`, receiver
//! Gbit/s) sandbox 1 → sandbox 2, a 64-byte UDP flood (received packets/s)
//! and 200 pings; client pinned to CPU 0, server to CPU 1, daemons and the
//! kernel's softirq work unpinned. weft's CPU figure is the utime+stime of
//! the two daemons (summed) during the TCP run per GB received; the report
//! also shows each daemon's CPU share and its busiest thread, which says
//! whether a daemon (and which thread of it) is the limit. The ratio of
//! the TCP medians is checked against the issue's target (≥ 0.8× kernel
//! vxlan; must reach ≥ 0.3×).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::e2e::{kernel_release, tool_versions};
use crate::lab::Lab;
use crate::measure::{self, PingSample, Pinning, TcpFlow, TcpSample, UdpSample};
use crate::process;
use crate::report::{self, RunHeader, Summary};
use crate::topology::{self, WeftDaemon};

/// The underlay ("the wire between the hosts").
const UNDERLAY_NS: &str = "wb-ov-under";
/// weft's hosts and sandboxes (plain network, encrypted network).
const WEFT_HOSTS: [&str; 2] = ["wb-ov-wh1", "wb-ov-wh2"];
const WEFT_SANDBOXES: [&str; 2] = ["wb-ov-ws1", "wb-ov-ws2"];
const WEFT_QUIC_SANDBOXES: [&str; 2] = ["wb-ov-wq1", "wb-ov-wq2"];
/// Their underlay addresses.
const WEFT_UNDERLAY: [&str; 2] = ["192.0.2.1", "192.0.2.2"];
/// The kernel's hosts and sandboxes.
const KERNEL_HOSTS: [&str; 2] = ["wb-ov-kh1", "wb-ov-kh2"];
const KERNEL_SANDBOXES: [&str; 2] = ["wb-ov-ks1", "wb-ov-ks2"];
const KERNEL_UNDERLAY: [&str; 2] = ["192.0.2.11", "192.0.2.12"];
/// The kernel sandboxes' addresses.
const KERNEL_SANDBOX_IPS: [&str; 2] = ["10.241.0.1", "10.241.0.2"];
/// weft's gossip port.
const GOSSIP_PORT: u16 = 7946;
/// weft's overlay networks: plain and encrypted.
const WEFT_NETWORK: &str = "ov";
const WEFT_SUBNET: &str = "10.240.0.0/24";
const WEFT_QUIC_NETWORK: &str = "sec";
const WEFT_QUIC_SUBNET: &str = "10.240.1.0/24";
/// The kernel's VNI (as the anchor).
const KERNEL_VNI: &str = "4242";
/// The MTU of the kernel sandboxes: weft's overlay default, and what the
/// kernel gives a vxlan device on a 1500-byte underlay.
const OVERLAY_MTU: &str = "1450";
/// Bounded waits while building.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(20);
const POLL_STEP: Duration = Duration::from_millis(100);

/// The title of the RESULTS.md section this command owns.
pub const SECTION_HEADING: &str = "## Overlay across two hosts: weft vs kernel vxlan + bridge";

/// The issue's target and floor for TCP, weft / kernel vxlan.
const TCP_TARGET: f64 = 0.8;
const TCP_FLOOR: f64 = 0.3;
/// Issue 15's: weft QUIC / weft VXLAN (target, floor), and weft QUIC /
/// wireguard-go (target).
const QUIC_TARGET: f64 = 0.7;
const QUIC_FLOOR: f64 = 0.3;
const QUIC_OVER_WIREGUARD_TARGET: f64 = 6.0;

/// `weft-bench overlay` options.
#[derive(Debug)]
pub struct OverlayOptions {
    /// Runs per datapath.
    pub runs: u32,
    /// Seconds per iperf3 run.
    pub seconds: u32,
    /// The Markdown file whose overlay section is replaced (or appended).
    pub out: PathBuf,
    /// The command line, for the report.
    pub command: String,
    /// The daemons' `--quic-congestion` (`none` or `cubic`).
    pub quic_congestion: String,
    /// Leave wireguard-go out (where it is not installed).
    pub no_wireguard: bool,
}

/// The datapaths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Datapath {
    /// weft's daemons, a plain network (VXLAN over UDP).
    Weft,
    /// The same daemons, an encrypted network (QUIC).
    WeftQuic,
    /// Linux vxlan + bridge.
    Kernel,
    /// wireguard-go between two hosts.
    WireguardGo,
}

impl Datapath {
    /// In run order.
    pub const ALL: [Datapath; 4] = [
        Datapath::Weft,
        Datapath::WeftQuic,
        Datapath::Kernel,
        Datapath::WireguardGo,
    ];

    fn short(self) -> &'static str {
        match self {
            Datapath::Weft => "weft",
            Datapath::WeftQuic => "weft-quic",
            Datapath::Kernel => "kernel",
            Datapath::WireguardGo => "wireguard-go",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Datapath::Weft => "weft overlay (2 daemons, VXLAN in userspace, TAP per sandbox)",
            Datapath::WeftQuic => {
                "weft encrypted overlay (the same daemons, QUIC datagrams, AES-128-GCM)"
            }
            Datapath::Kernel => "kernel vxlan + bridge + veth",
            Datapath::WireguardGo => "wireguard-go (Debian's), host to host, L3",
        }
    }
}

/// One side, built.
#[derive(Debug)]
struct Side {
    datapath: Datapath,
    client_ns: &'static str,
    server_ns: &'static str,
    server_ip: String,
    /// The daemons (weft only): CPU accounted.
    daemon_pids: Vec<u32>,
    /// `eth0`'s MTU in the client sandbox, as found.
    sandbox_mtu: String,
}

/// CPU of one daemon during one TCP run.
#[derive(Debug, Clone)]
struct DaemonCpu {
    /// CPU seconds of the whole process.
    seconds: f64,
    /// Its busiest thread: name and CPU seconds.
    top_thread: (String, f64),
    /// Wall time of the window, seconds.
    wall: f64,
}

/// Everything measured for one datapath.
#[derive(Debug, Default)]
struct Figures {
    tcp: Vec<TcpSample>,
    udp: Vec<UdpSample>,
    ping: Vec<PingSample>,
    /// Per daemon (index = host), per TCP run.
    daemons: [Vec<DaemonCpu>; 2],
    /// weft: the hosts' UDP counters during each TCP run.
    underlay: Vec<UnderlayUdp>,
}

/// The UDP counters of weft's host namespaces during one TCP run
/// (/proc/PID/net/snmp of each daemon): every VXLAN datagram is one UDP
/// datagram of the daemon's socket.
#[derive(Debug, Clone, Copy)]
struct UnderlayUdp {
    /// Datagrams host 1 sent (`OutDatagrams`).
    sent: u64,
    /// Datagrams host 2's sockets took in (`InDatagrams`).
    received: u64,
    /// Datagrams host 2 dropped for a full socket receive buffer
    /// (`RcvbufErrors`).
    rcvbuf_errors: u64,
}

impl Figures {
    fn tcp_gbps(&self) -> Option<Summary> {
        Summary::of(&self.tcp.iter().map(|s| s.gbps).collect::<Vec<_>>())
    }
    fn udp_kpps(&self) -> Option<Summary> {
        Summary::of(&self.udp.iter().map(|s| s.kpps).collect::<Vec<_>>())
    }
    fn udp_loss(&self) -> Option<Summary> {
        Summary::of(&self.udp.iter().map(|s| s.loss_pct).collect::<Vec<_>>())
    }
    fn ping_p50(&self) -> Option<Summary> {
        Summary::of(&self.ping.iter().map(|s| s.p50_us).collect::<Vec<_>>())
    }
    fn retransmits(&self) -> Option<Summary> {
        Summary::of(
            &self
                .tcp
                .iter()
                .filter_map(|s| s.retransmits.map(|r| r as f64))
                .collect::<Vec<_>>(),
        )
    }
    fn cpu_per_gb(&self) -> Option<Summary> {
        Summary::of(
            &self
                .tcp
                .iter()
                .filter_map(TcpSample::cpu_seconds_per_gb)
                .collect::<Vec<_>>(),
        )
    }
}

/// Run the comparison and write the report section.
pub fn run(options: &OverlayOptions) -> Result<()> {
    process::require_tools(&["ip", "iperf3", "ping", "taskset"])?;
    let weft = topology::weft_binary()?;
    let started = Instant::now();
    let date_utc = report::utc_now();
    let cpus = crate::cpu_count();
    let pin = Pinning::split(cpus);
    let mut lab = Lab::open()?;
    let versions = tool_versions(&mut lab, &weft, &["iperf3"]);

    eprintln!("weft-bench: building the overlay lab");
    build_underlay(&mut lab)?;
    let built = Instant::now();
    let [weft_side, quic_side] =
        build_weft(&mut lab, &weft, &options.quic_congestion).context("building weft's overlay")?;
    let weft_ready = built.elapsed();
    let kernel_side = sides::build_kernel(&mut lab).context("building the kernel vxlan overlay")?;
    let mut sides = vec![weft_side, quic_side, kernel_side];
    if !options.no_wireguard {
        sides.push(sides::build_wireguard(&mut lab).context("building wireguard-go")?);
    }

    let mut results: BTreeMap<Datapath, Figures> = BTreeMap::new();
    let mut failures: Vec<String> = Vec::new();
    for run in 1..=options.runs {
        for side in &sides {
            let figures = results.entry(side.datapath).or_default();
            let what = format!("{} run {run}", side.datapath.short());
            match measure_tcp(&mut lab, side, options.seconds, pin) {
                Ok((sample, daemons, underlay)) => {
                    let cpu = sample
                        .cpu_seconds_per_gb()
                        .map(|c| format!(", daemons {c:.2} CPU-s/GB"))
                        .unwrap_or_default();
                    let threads: Vec<String> = daemons
                        .iter()
                        .enumerate()
                        .map(|(i, d)| {
                            format!(
                                "h{} {:.0}% (thread {} {:.0}%)",
                                i + 1,
                                100.0 * d.seconds / d.wall,
                                d.top_thread.0,
                                100.0 * d.top_thread.1 / d.wall
                            )
                        })
                        .collect();
                    eprintln!(
                        "weft-bench: {what}: TCP {:.2} Gbit/s{cpu}{}",
                        sample.gbps,
                        if threads.is_empty() {
                            String::new()
                        } else {
                            format!("; {}", threads.join(", "))
                        }
                    );
                    if let Some(udp) = underlay {
                        eprintln!(
                            "weft-bench: {what}: underlay {} datagrams sent, {} received, {} dropped (receive buffer full), {} TCP retransmits",
                            udp.sent,
                            udp.received,
                            udp.rcvbuf_errors,
                            sample.retransmits.unwrap_or(0)
                        );
                        figures.underlay.push(udp);
                    }
                    figures.tcp.push(sample);
                    for (slot, daemon) in figures.daemons.iter_mut().zip(daemons) {
                        slot.push(daemon);
                    }
                }
                Err(error) => side_failure(&lab, side, &what, "TCP", &error, &mut failures)?,
            }
            match measure::udp64_between(
                &mut lab,
                side.client_ns,
                side.server_ns,
                &side.server_ip,
                options.seconds,
                pin,
            ) {
                Ok(sample) => {
                    eprintln!(
                        "weft-bench: {what}: UDP 64 B {:.0} kpps received, {:.1}% loss",
                        sample.kpps, sample.loss_pct
                    );
                    figures.udp.push(sample);
                }
                Err(error) => side_failure(&lab, side, &what, "UDP", &error, &mut failures)?,
            }
            match measure::ping_from(&mut lab, side.client_ns, &side.server_ip, pin) {
                Ok(sample) => {
                    eprintln!(
                        "weft-bench: {what}: ping p50 {:.0} µs, {}/{} replies",
                        sample.p50_us, sample.received, sample.sent
                    );
                    figures.ping.push(sample);
                }
                Err(error) => side_failure(&lab, side, &what, "ping", &error, &mut failures)?,
            }
        }
    }
    let daemon_rss_kib: Vec<Option<u64>> = sides[0]
        .daemon_pids
        .iter()
        .map(|pid| measure::process_rss_kib(*pid).ok())
        .collect();
    lab.cleanup();

    let header = section::Header {
        run: RunHeader {
            date_utc,
            kernel: kernel_release(),
            cpus,
            runs: options.runs,
            seconds: options.seconds,
            command: options.command.clone(),
            versions,
            placement: pin.describe(),
            wall_seconds: started.elapsed().as_secs_f64(),
        },
        weft_ready_seconds: weft_ready.as_secs_f64(),
        sandbox_mtus: [sides[0].sandbox_mtu.clone(), sides[2].sandbox_mtu.clone()],
        quic_mtu: sides[1].sandbox_mtu.clone(),
        quic_congestion: options.quic_congestion.clone(),
        daemon_rss_kib,
    };
    let markdown = section::markdown(&header, &results, &failures);
    println!("{markdown}");
    report::write_section(&options.out, SECTION_HEADING, &markdown)?;
    eprintln!(
        "weft-bench: overlay section written to {}",
        options.out.display()
    );
    if !failures.is_empty() {
        bail!(
            "{} measurement(s) failed (listed in the report)",
            failures.len()
        );
    }
    Ok(())
}

/// Note a failed measurement of `side` (see [`Lab::record_failure`]).
fn side_failure(
    lab: &Lab,
    side: &Side,
    what: &str,
    figure: &str,
    error: &anyhow::Error,
    failures: &mut Vec<String>,
) -> Result<()> {
    let daemons: Vec<(&str, u32)> = side
        .daemon_pids
        .iter()
        .map(|pid| ("weft daemon", *pid))
        .collect();
    lab.record_failure(&format!("{what} {figure}"), error, &daemons, failures)
}

/// The underlay namespace and its bridge.
fn build_underlay(lab: &mut Lab) -> Result<()> {
    lab.add_netns(UNDERLAY_NS)?;
    lab.ip(UNDERLAY_NS, &["link", "add", "br0", "type", "bridge"])?;
    lab.ip(UNDERLAY_NS, &["link", "set", "br0", "up"])
}

/// A host namespace with `v0` = `address`/24, a veth into the underlay
/// bridge (port `port`), created from inside the host namespace.
fn add_host(lab: &mut Lab, host: &str, port: &str, address: &str) -> Result<()> {
    lab.add_netns(host)?;
    lab.ip(
        host,
        &[
            "link",
            "add",
            "v0",
            "type",
            "veth",
            "peer",
            "name",
            port,
            "netns",
            UNDERLAY_NS,
        ],
    )?;
    lab.ip(UNDERLAY_NS, &["link", "set", port, "master", "br0", "up"])?;
    lab.ip(
        host,
        &["addr", "add", &format!("{address}/24"), "dev", "v0"],
    )?;
    lab.ip(host, &["link", "set", "v0", "up"])
}

/// Run `weft ARGS` against `daemon`, which must succeed; its stdout.
fn weft_ok(lab: &mut Lab, daemon: &WeftDaemon, args: &[&str]) -> Result<String> {
    Ok(daemon.cli_ok(lab, args)?.stdout)
}

/// Poll `check` every 100 ms until it is true, at most `limit`.
fn wait_until(
    lab: &mut Lab,
    what: &str,
    limit: Duration,
    mut check: impl FnMut(&mut Lab) -> Result<bool>,
) -> Result<Duration> {
    let started = Instant::now();
    loop {
        if check(lab)? {
            return Ok(started.elapsed());
        }
        if started.elapsed() >= limit {
            bail!("{what}: not within {} s", limit.as_secs());
        }
        process::pause(POLL_STEP)?;
    }
}

/// Whether `weft peers --json` of `daemon` lists `name` as alive.
fn sees_alive(lab: &mut Lab, daemon: &WeftDaemon, name: &str) -> Result<bool> {
    let answer = daemon.cli(lab, &["peers", "--json"])?;
    if !answer.status.success() {
        return Ok(false);
    }
    let peers: Value = serde_json::from_str(&answer.stdout).unwrap_or(Value::Null);
    Ok(peers["members"].as_array().is_some_and(|members| {
        members
            .iter()
            .any(|m| m["name"] == name && m["state"] == "alive")
    }))
}

/// Whether `network ls --format json` of `daemon` lists `network`.
fn lists_network(lab: &mut Lab, daemon: &WeftDaemon, network: &str) -> Result<bool> {
    let answer = daemon.cli(lab, &["network", "ls", "--format", "json"])?;
    if !answer.status.success() {
        return Ok(false);
    }
    let all: Value = serde_json::from_str(&answer.stdout).unwrap_or(Value::Null);
    Ok(all
        .as_array()
        .is_some_and(|networks| networks.iter().any(|n| n["name"] == network)))
}

/// The IPv4 address and MTU of `eth0` in `netns`.
fn sandbox_interface(lab: &mut Lab, netns: &str) -> Result<(String, String)> {
    let shown = lab
        .run_in(
            netns,
            &["ip", "-j", "addr", "show", "dev", "eth0"],
            Duration::from_secs(5),
        )?
        .success()?;
    let json: Value = serde_json::from_str(&shown.stdout)
        .with_context(|| format!("`ip -j addr` in {netns}: {}", shown.stdout))?;
    let link = &json[0];
    let address = link["addr_info"]
        .as_array()
        .and_then(|infos| {
            infos
                .iter()
                .find(|i| i["family"] == "inet")
                .and_then(|i| i["local"].as_str())
        })
        .with_context(|| format!("no IPv4 address on eth0 in {netns}"))?;
    let mtu = link["mtu"]
        .as_u64()
        .map_or_else(|| "?".to_owned(), |m| m.to_string());
    Ok((address.to_owned(), mtu))
}

/// Two weft hosts joined by gossip (with a cluster key, so the QUIC
/// transport runs too), a plain and an encrypted overlay network, one
/// sandbox on each per host.
fn build_weft(lab: &mut Lab, weft: &Path, congestion: &str) -> Result<[Side; 2]> {
    let mut daemons = Vec::new();
    let seed = format!("{}:{GOSSIP_PORT}", WEFT_UNDERLAY[0]);
    let key = lab.work_dir().join("cluster.key");
    std::fs::write(&key, "weft-bench overlay cluster secret\n")
        .context("writing the cluster key")?;
    let key = key.display().to_string();
    for (index, host) in WEFT_HOSTS.iter().enumerate() {
        add_host(lab, host, &format!("pw{}", index + 1), WEFT_UNDERLAY[index])?;
        let listen = format!("{}:{GOSSIP_PORT}", WEFT_UNDERLAY[index]);
        let name = format!("h{}", index + 1);
        let mut extra = vec![
            "--listen",
            &listen,
            "--node-name",
            &name,
            "--cluster-key",
            &key,
            "--quic-congestion",
            congestion,
        ];
        if index > 0 {
            extra.extend(["--join", &seed]);
        }
        let dir = lab.work_dir().join(format!("weft-ov-h{}", index + 1));
        daemons.push(WeftDaemon::start_with(lab, weft, host, &dir, &extra)?);
    }
    let took = wait_until(
        lab,
        "the two weft hosts see each other alive",
        CONVERGE_TIMEOUT,
        |lab| Ok(sees_alive(lab, &daemons[0], "h2")? && sees_alive(lab, &daemons[1], "h1")?),
    )?;
    eprintln!(
        "weft-bench: gossip converged in {:.1} s",
        took.as_secs_f64()
    );
    let networks = [
        (
            WEFT_NETWORK,
            WEFT_SUBNET,
            "encrypted=false",
            WEFT_SANDBOXES,
            Datapath::Weft,
        ),
        (
            WEFT_QUIC_NETWORK,
            WEFT_QUIC_SUBNET,
            "encrypted=true",
            WEFT_QUIC_SANDBOXES,
            Datapath::WeftQuic,
        ),
    ];
    let mut sides = Vec::new();
    for (network, subnet, encrypted, sandboxes, datapath) in networks {
        weft_ok(
            lab,
            &daemons[0],
            &[
                "network", "create", "--driver", "overlay", "--subnet", subnet, "--opt", encrypted,
                network,
            ],
        )?;
        let took = wait_until(
            lab,
            "the overlay network appears on host 2",
            CONVERGE_TIMEOUT,
            |lab| lists_network(lab, &daemons[1], network),
        )?;
        eprintln!(
            "weft-bench: network `{network}` on host 2 after {:.1} s",
            took.as_secs_f64()
        );
        for (daemon, sandbox) in daemons.iter().zip(sandboxes) {
            lab.add_netns(sandbox)?;
            weft_ok(lab, daemon, &["network", "connect", network, sandbox])?;
        }
        let (_, client_mtu) = sandbox_interface(lab, sandboxes[0])?;
        let (server_ip, _) = sandbox_interface(lab, sandboxes[1])?;
        // The first frames wait for the directory to carry the remote
        // endpoint (and, encrypted, for the QUIC handshake); bounded.
        wait_until(
            lab,
            "the weft sandboxes reach each other across the overlay",
            CONVERGE_TIMEOUT,
            |lab| {
                Ok(lab
                    .run_in(
                        sandboxes[0],
                        &["ping", "-n", "-q", "-c", "1", "-W", "1", &server_ip],
                        Duration::from_secs(5),
                    )?
                    .status
                    .success())
            },
        )?;
        sides.push(Side {
            datapath,
            client_ns: sandboxes[0],
            server_ns: sandboxes[1],
            server_ip,
            daemon_pids: daemons.iter().map(|d| d.pid).collect(),
            sandbox_mtu: client_mtu,
        });
    }
    let quic = sides.pop().context("the encrypted side")?;
    let plain = sides.pop().context("the plain side")?;
    Ok([plain, quic])
}

/// Per-thread CPU ticks of every daemon of `side`.
type ThreadTicks = Vec<BTreeMap<u32, (String, u64)>>;

fn thread_ticks(side: &Side) -> Result<ThreadTicks> {
    side.daemon_pids
        .iter()
        .map(|pid| measure::thread_cpu_ticks(*pid))
        .collect()
}

/// One TCP stream sandbox 1 → sandbox 2, with the daemons' CPU (summed in
/// the sample; each daemon and its busiest thread on the side).
fn measure_tcp(
    lab: &mut Lab,
    side: &Side,
    seconds: u32,
    pin: Pinning,
) -> Result<(TcpSample, Vec<DaemonCpu>, Option<UnderlayUdp>)> {
    let ticks_per_second = measure::clock_ticks_per_second()?;
    let udp_before = udp_counters(side)?;
    let before = thread_ticks(side)?;
    let window = Instant::now();
    let sample = measure::tcp_flow(
        lab,
        &TcpFlow {
            client_ns: side.client_ns,
            server_ns: side.server_ns,
            server_bind: Some(&side.server_ip),
            destination: &side.server_ip,
            port: measure::IPERF_PORT,
            cpu_pids: &side.daemon_pids,
        },
        seconds,
        pin,
    )?;
    let wall = window.elapsed().as_secs_f64();
    let after = thread_ticks(side)?;
    let udp_after = udp_counters(side)?;
    let underlay = match (udp_before.as_slice(), udp_after.as_slice()) {
        ([h1_before, h2_before], [h1_after, h2_after]) => {
            let delta = |after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>, name| {
                after
                    .get(name)
                    .copied()
                    .unwrap_or(0)
                    .saturating_sub(before.get(name).copied().unwrap_or(0))
            };
            Some(UnderlayUdp {
                sent: delta(h1_after, h1_before, "OutDatagrams"),
                received: delta(h2_after, h2_before, "InDatagrams"),
                rcvbuf_errors: delta(h2_after, h2_before, "RcvbufErrors"),
            })
        }
        _ => None,
    };
    let daemons = before
        .iter()
        .zip(&after)
        .map(|(before, after)| {
            let mut total = 0;
            let mut top = (String::new(), 0);
            for (tid, (name, ticks)) in after {
                let used = ticks.saturating_sub(before.get(tid).map_or(0, |(_, t)| *t));
                total += used;
                if used > top.1 {
                    top = (name.clone(), used);
                }
            }
            DaemonCpu {
                seconds: total as f64 / ticks_per_second,
                top_thread: (top.0, top.1 as f64 / ticks_per_second),
                wall,
            }
        })
        .collect();
    Ok((sample, daemons, underlay))
}

/// The UDP counters of each daemon's namespace.
fn udp_counters(side: &Side) -> Result<Vec<BTreeMap<String, u64>>> {
    side.daemon_pids
        .iter()
        .map(|pid| measure::udp_counters(*pid))
        .collect()
}

mod section;
mod sides;
#[cfg(test)]
mod tests;
