//! `weft-bench macvlan`: a LAN host to a sandbox on a macvlan network,
//! weft's userspace macvlan against the kernel's, on one LAN in one run.
//!
//! The LAN is a kernel bridge in `wb-mv-lan`; `wb-mv-lanhost` (the
//! client, 10.238.0.10) and the weft host `wb-mv-host` (its parent
//! `lan0`) hang off it by veths. weft's sandbox `wb-mv-weft` is on a weft
//! macvlan network on `lan0` (10.238.0.21); the kernel's sandbox
//! `wb-mv-kernel` has a kernel macvlan device on the same `lan0`, bridge
//! mode (10.238.0.22); and `wb-mv-ipvlan` is on a weft ipvlan network on
//! the same parent (10.238.1.23, a second subnet of the LAN, which the LAN
//! host also has; this machine's kernel has no ipvlan to compare with). Runs alternate between the three: TCP (iperf3, LAN host
//! → sandbox), 64-byte UDP packets per second and ping.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Result;

use crate::lab::Lab;
use crate::measure::{self, Pinning, TcpFlow};
use crate::process;
use crate::report::{self, Summary};
use crate::topology::{self, WeftDaemon};

const LAN: &str = "wb-mv-lan";
const LANHOST: &str = "wb-mv-lanhost";
const HOST: &str = "wb-mv-host";
const WEFT_SANDBOX: &str = "wb-mv-weft";
const KERNEL_SANDBOX: &str = "wb-mv-kernel";
const IPVLAN_SANDBOX: &str = "wb-mv-ipvlan";
const HEADING: &str = "## macvlan: weft's userspace macvlan vs the kernel's";
const IPERF_PORT: u16 = 5211;

/// `weft-bench macvlan` options.
#[derive(Debug)]
pub struct MacvlanOptions {
    /// Runs per side.
    pub runs: u32,
    /// Seconds per iperf3 run.
    pub seconds: u32,
    /// The Markdown file whose macvlan section is replaced.
    pub out: PathBuf,
    /// The command line, for the report.
    pub command: String,
}

/// One side's samples.
#[derive(Default)]
struct Side {
    gbps: Vec<f64>,
    kpps: Vec<f64>,
    ping_us: Vec<f64>,
}

/// Build the LAN and both sandboxes (see the module header).
fn build(lab: &mut Lab, daemon: &WeftDaemon) -> Result<()> {
    lab.ip(LAN, &["link", "add", "br0", "type", "bridge"])?;
    lab.ip(LAN, &["link", "set", "br0", "up"])?;
    for (ns, port, inside) in [(LANHOST, "p-client", "eth0"), (HOST, "p-host", "lan0")] {
        lab.ip(
            LAN,
            &[
                "link", "add", port, "type", "veth", "peer", "name", inside, "netns", ns,
            ],
        )?;
        lab.ip(LAN, &["link", "set", port, "master", "br0", "up"])?;
        lab.ip(ns, &["link", "set", inside, "up"])?;
    }
    lab.ip(LANHOST, &["addr", "add", "10.238.0.10/24", "dev", "eth0"])?;
    // The ipvlan network's subnet (a second one on the same LAN: one
    // subnet belongs to one weft network).
    lab.ip(LANHOST, &["addr", "add", "10.238.1.10/24", "dev", "eth0"])?;
    // The kernel's macvlan on the same parent.
    lab.ip(
        HOST,
        &[
            "link", "add", "mvk", "link", "lan0", "type", "macvlan", "mode", "bridge",
        ],
    )?;
    lab.ip(HOST, &["link", "set", "mvk", "netns", KERNEL_SANDBOX])?;
    lab.ip(
        KERNEL_SANDBOX,
        &["addr", "add", "10.238.0.22/24", "dev", "mvk"],
    )?;
    lab.ip(KERNEL_SANDBOX, &["link", "set", "mvk", "up"])?;
    // weft's.
    daemon.cli_ok(
        lab,
        &[
            "network",
            "create",
            "-d",
            "macvlan",
            "--subnet",
            "10.238.0.0/24",
            "--gateway",
            "10.238.0.1",
            "-o",
            "parent=lan0",
            "mv",
        ],
    )?;
    daemon.cli_ok(
        lab,
        &[
            "network",
            "connect",
            "--ip",
            "10.238.0.21",
            "mv",
            WEFT_SANDBOX,
        ],
    )?;
    // weft's ipvlan on the same parent (no kernel ipvlan here to compare),
    // on a second subnet of the LAN.
    daemon.cli_ok(
        lab,
        &[
            "network",
            "create",
            "-d",
            "ipvlan",
            "--subnet",
            "10.238.1.0/24",
            "--gateway",
            "10.238.1.1",
            "-o",
            "parent=lan0",
            "iv",
        ],
    )?;
    daemon.cli_ok(
        lab,
        &[
            "network",
            "connect",
            "--ip",
            "10.238.1.23",
            "iv",
            IPVLAN_SANDBOX,
        ],
    )?;
    for target in ["10.238.0.21", "10.238.0.22", "10.238.1.23"] {
        topology::wait_reachable(lab, LANHOST, target.parse()?)?;
    }
    Ok(())
}

/// Run the benchmark and write its section.
pub fn run(options: &MacvlanOptions) -> Result<()> {
    process::require_tools(&["ip", "iperf3", "ping", "taskset"])?;
    let weft = topology::weft_binary()?;
    let date_utc = report::utc_now();
    let mut lab = Lab::open()?;
    for ns in [
        LAN,
        LANHOST,
        HOST,
        WEFT_SANDBOX,
        KERNEL_SANDBOX,
        IPVLAN_SANDBOX,
    ] {
        lab.add_netns(ns)?;
    }
    let dir = lab.work_dir().join("weft-macvlan");
    let daemon = WeftDaemon::start(&mut lab, &weft, HOST, &dir)?;
    build(&mut lab, &daemon)?;
    let pin = Pinning::split(crate::cpu_count());
    let sides = [
        ("weft macvlan (userspace)", WEFT_SANDBOX, "10.238.0.21"),
        ("kernel macvlan", KERNEL_SANDBOX, "10.238.0.22"),
        ("weft ipvlan L2 (userspace)", IPVLAN_SANDBOX, "10.238.1.23"),
    ];
    let mut results: Vec<Side> = sides.iter().map(|_| Side::default()).collect();
    for run in 0..options.runs {
        for (i, (label, ns, address)) in sides.iter().enumerate() {
            process::check_interrupted()?;
            let pids: Vec<u32> = if i == 1 { Vec::new() } else { vec![daemon.pid] };
            let tcp = measure::tcp_flow(
                &mut lab,
                &TcpFlow {
                    client_ns: LANHOST,
                    server_ns: ns,
                    server_bind: Some(address),
                    destination: address,
                    port: IPERF_PORT,
                    cpu_pids: &pids,
                },
                options.seconds,
                pin,
            )?;
            let udp = measure::udp64_between(&mut lab, LANHOST, ns, address, options.seconds, pin)?;
            let ping = measure::ping_from(&mut lab, LANHOST, address, pin)?;
            eprintln!(
                "weft-bench macvlan: run {}/{} {label}: {:.2} Gbit/s, {:.0} kpps, ping {:.0} µs",
                run + 1,
                options.runs,
                tcp.gbps,
                udp.kpps,
                ping.avg_us
            );
            results[i].gbps.push(tcp.gbps);
            results[i].kpps.push(udp.kpps);
            results[i].ping_us.push(ping.avg_us);
        }
    }
    drop(daemon);
    lab.cleanup();
    let mut section = String::new();
    writeln!(section, "{HEADING}\n")?;
    writeln!(
        section,
        "{date_utc}, `{}`. A LAN host (a veth on a kernel bridge) to a sandbox on the same parent: weft's macvlan network against a kernel macvlan device (bridge mode), {} alternating run(s) of {} s each; median (min–max). {}.\n",
        options.command,
        options.runs,
        options.seconds,
        pin.describe()
    )?;
    writeln!(section, "| side | TCP Gbit/s | UDP 64 B kpps | ping µs |")?;
    writeln!(section, "|---|---|---|---|")?;
    let cell = report::cell;
    for ((label, _, _), side) in sides.iter().zip(&results) {
        writeln!(
            section,
            "| {label} | {} | {} | {} |",
            cell(Summary::of(&side.gbps)),
            cell(Summary::of(&side.kpps)),
            cell(Summary::of(&side.ping_us))
        )?;
    }
    for (i, what) in [(0, "weft macvlan"), (2, "weft ipvlan")] {
        writeln!(
            section,
            "\n{what} ÷ kernel macvlan: TCP {}, UDP 64 B {}, ping {}.",
            report::ratio(Summary::of(&results[i].gbps), Summary::of(&results[1].gbps)),
            report::ratio(Summary::of(&results[i].kpps), Summary::of(&results[1].kpps)),
            report::ratio(
                Summary::of(&results[i].ping_us),
                Summary::of(&results[1].ping_us)
            ),
        )?;
    }
    print!("{section}");
    report::write_section(&options.out, HEADING, &section)
}
