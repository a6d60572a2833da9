//! `weft-bench nat`: weft's NAT and published ports against pasta and
//! slirp4netns, the two userspace NAT datapaths of rootless containers, on
//! the same machine in the same run.
//!
//! # The lab
//!
//! | namespace | role |
//! |---|---|
//! | `wb-nat-host` | plays "the host": the weft daemon, every pasta and slirp4netns process, the iperf3 servers of the outbound runs on 127.0.0.1, the clients of the inbound runs |
//! | `wb-nat-far` | "a real address" beyond the host: 10.238.0.2, across a veth from `wb-nat-host` (whose default route points there) |
//! | `wb-nat-{weft,pasta,slirp}-{1500,65520}` | one sandbox per datapath and MTU |
//!
//! Nothing runs in the machine's own namespace, and pasta and slirp4netns
//! map their 10.0.2.2 onto the loopback of `wb-nat-host`, not the
//! machine's: all traffic stays between namespaces the harness made.
//!
//! # The datapaths
//!
//! - weft: one daemon, a network per MTU (`--opt host_loopback=true`, so
//!   the sandbox's TCP to the gateway's address reaches the daemon
//!   namespace's 127.0.0.1, like slirp4netns's and pasta's 10.0.2.2), the
//!   sandbox attached with `-p 127.0.0.1:P:P`.
//! - pasta (the `passt` package), as `shared/anchors/pasta.sh` runs it:
//!   `--config-net -f -4 -a 10.0.2.100 -n 24 -g 10.0.2.2 --no-icmp
//!   --runas 0 -m MTU`, with `-t 127.0.0.1/P` (host → sandbox, spliced at
//!   L4) and `-T OUT` (the sandbox's own 127.0.0.1:OUT spliced to the
//!   host's: the "e2" path, no TAP).
//! - slirp4netns, as `shared/anchors/slirp4netns.sh` runs it: `--configure
//!   --mtu=MTU --disable-dns`, the published port added through its API
//!   socket (`add_hostfwd`, host_addr 127.0.0.1).
//!
//! # The paths measured (one iperf3 TCP stream each, receiver Gbit/s)
//!
//! - out → host loopback: sandbox → gateway mapping (weft 10.237.x.1,
//!   pasta/slirp4netns 10.0.2.2) → 127.0.0.1 of `wb-nat-host`. For pasta
//!   this is its TAP path ("e1" in the anchors).
//! - in ← published port: client on 127.0.0.1 of `wb-nat-host` → the
//!   published/forwarded port → the server in the sandbox.
//! - out → real address: sandbox → 10.238.0.2 in `wb-nat-far` (the NAT
//!   path towards the internet: each datapath's host socket crosses the
//!   veth).
//! - pasta only: out through its L4 splice (`-T`).
//!
//! Every sandbox exists for the whole run; each run measures, for each MTU
//! and path, weft, pasta, slirp4netns in turn (alternating, as `e2e`
//! does), and the report takes medians. The CPU figure is the utime+stime
//! of the datapath process (the weft daemon, the pasta or slirp4netns
//! instance) during the client's run, per GB received.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::e2e::{kernel_release, tool_versions};
use crate::lab::Lab;
use crate::measure::{self, Pinning, TcpFlow, TcpSample};
use crate::process;
use crate::report::{self, RunHeader};
use crate::topology::{self, WeftDaemon};
use cases::Results;
pub use cases::{Case, Datapath, MTUS, SECTION_HEADING};
use cases::{FAR_ADDRESS, FAR_NS, HOST_NS, HOST_UPLINK, OUT_PORT, SLIRP_GATEWAY, SLIRP_GUEST};
use section::{markdown, Header};

/// Bounded waits while building.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
const POLL_STEP: Duration = Duration::from_millis(50);

/// `weft-bench nat` options.
#[derive(Debug)]
pub struct NatOptions {
    /// Runs per datapath, path and MTU.
    pub runs: u32,
    /// Seconds per iperf3 run.
    pub seconds: u32,
    /// Skip the "out → real address" runs.
    pub no_far: bool,
    /// The Markdown file whose NAT section is replaced (or appended).
    pub out: PathBuf,
    /// The command line, for the report.
    pub command: String,
}

/// One sandbox and what carries its traffic.
#[derive(Debug)]
struct Sandbox {
    datapath: Datapath,
    mtu: u32,
    netns: String,
    /// The address that leads to the host's 127.0.0.1.
    gateway: String,
    /// Host port published to the same port in the sandbox.
    inbound_port: u16,
    /// The process whose CPU is accounted.
    cpu_pid: u32,
}

/// Run the comparison and write the report section.
pub fn run(options: &NatOptions) -> Result<()> {
    process::require_tools(&["ip", "ss", "iperf3", "taskset", "pasta", "slirp4netns"])?;
    let weft = topology::weft_binary()?;
    let started = Instant::now();
    let date_utc = report::utc_now();
    let cpus = crate::cpu_count();
    let pin = Pinning::split(cpus);
    let mut lab = Lab::open()?;
    let mut versions = tool_versions(&mut lab, &weft, &["iperf3", "slirp4netns"]);
    versions.push(format!("pasta: {}", pasta_version(&mut lab)));

    eprintln!("weft-bench: building the NAT lab");
    let (daemon, sandboxes) = build(&mut lab, &weft)?;

    let mut cases = vec![Case::OutLoopback, Case::In];
    if !options.no_far {
        cases.push(Case::OutFar);
    }
    cases.push(Case::OutSplice);
    let mut results: Results = BTreeMap::new();
    let mut failures: Vec<String> = Vec::new();
    for run in 1..=options.runs {
        for &mtu in &MTUS {
            for &case in &cases {
                for sandbox in sandboxes
                    .iter()
                    .filter(|s| s.mtu == mtu && case.applies_to(s.datapath))
                {
                    let what = format!(
                        "{} {} MTU {} run {run}",
                        sandbox.datapath.short(),
                        case.short(),
                        mtu
                    );
                    match measure_one(&mut lab, sandbox, case, options.seconds, pin) {
                        Ok(sample) => {
                            eprintln!(
                                "weft-bench: {what}: {:.2} Gbit/s{}",
                                sample.gbps,
                                sample
                                    .cpu_seconds_per_gb()
                                    .map(|c| format!(
                                        ", {} {c:.2} CPU-s/GB",
                                        sandbox.datapath.label()
                                    ))
                                    .unwrap_or_default()
                            );
                            results
                                .entry((case, mtu, sandbox.datapath))
                                .or_default()
                                .push(sample);
                        }
                        Err(error) => {
                            let label = format!("{} process", sandbox.datapath.label());
                            lab.record_failure(
                                &what,
                                &error,
                                &[(&label, sandbox.cpu_pid)],
                                &mut failures,
                            )?;
                        }
                    }
                }
            }
        }
    }
    let daemon_rss_kib = measure::process_rss_kib(daemon.pid).ok();
    lab.cleanup();

    let header = Header {
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
        daemon_rss_kib,
    };
    let markdown = markdown(&header, &cases, &results, &failures);
    println!("{markdown}");
    report::write_section(&options.out, SECTION_HEADING, &markdown)?;
    eprintln!(
        "weft-bench: NAT section written to {}",
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

/// `dpkg-query`'s version of passt (pasta itself says "unknown version" on
/// Debian), else pasta's own first line.
fn pasta_version(lab: &mut Lab) -> String {
    let from_dpkg = lab
        .run(
            &["dpkg-query", "-W", "-f", "${Version}", "passt"],
            Duration::from_secs(5),
        )
        .ok()
        .filter(|output| output.status.success())
        .map(|output| output.stdout.trim().to_owned())
        .filter(|version| !version.is_empty());
    if let Some(version) = from_dpkg {
        return format!("passt {version} (Debian package)");
    }
    lab.run(&["pasta", "--version"], Duration::from_secs(5))
        .ok()
        .and_then(|output| output.stdout.lines().next().map(str::to_owned))
        .unwrap_or_else(|| "version unknown".to_owned())
}

/// The inbound (published) host port of a sandbox: distinct per datapath
/// and MTU, since all of them listen on the host's loopback at once.
fn inbound_port(datapath: Datapath, mtu: u32) -> u16 {
    let base = match datapath {
        Datapath::Weft => 47310,
        Datapath::Pasta => 47320,
        Datapath::Slirp => 47330,
    };
    base + u16::from(mtu != MTUS[0])
}

fn sandbox_name(datapath: Datapath, mtu: u32) -> String {
    format!("wb-nat-{}-{mtu}", datapath.short())
}

/// Build the host, the far end, the daemon and the six sandboxes.
fn build(lab: &mut Lab, weft: &Path) -> Result<(WeftDaemon, Vec<Sandbox>)> {
    lab.add_netns(HOST_NS)?;
    lab.add_netns(FAR_NS)?;
    // The uplink: created inside the host namespace, its peer directly in
    // the far one; nothing ever exists in the machine's namespace.
    lab.ip(
        HOST_NS,
        &[
            "link", "add", "uplink0", "type", "veth", "peer", "name", "eth0", "netns", FAR_NS,
        ],
    )?;
    lab.ip(
        HOST_NS,
        &[
            "addr",
            "add",
            &format!("{HOST_UPLINK}/24"),
            "dev",
            "uplink0",
        ],
    )?;
    lab.ip(HOST_NS, &["link", "set", "uplink0", "up"])?;
    lab.ip(
        FAR_NS,
        &["addr", "add", &format!("{FAR_ADDRESS}/24"), "dev", "eth0"],
    )?;
    lab.ip(FAR_NS, &["link", "set", "eth0", "up"])?;
    // A default route, so that pasta finds a template interface and every
    // NAT's host sockets have a way out, which ends in wb-nat-far (no
    // forwarding there).
    lab.ip(HOST_NS, &["route", "add", "default", "via", FAR_ADDRESS])?;

    let daemon = WeftDaemon::start(lab, weft, HOST_NS, &lab.work_dir().join("weft-nat"))?;
    let mut sandboxes = Vec::new();
    for (index, &mtu) in MTUS.iter().enumerate() {
        for datapath in Datapath::ALL {
            eprintln!(
                "weft-bench: attaching the {} sandbox, MTU {mtu}",
                datapath.label()
            );
            let sandbox = match datapath {
                Datapath::Weft => attach_weft(lab, &daemon, mtu, index),
                Datapath::Pasta => start_pasta(lab, mtu),
                Datapath::Slirp => start_slirp(lab, mtu),
            }
            .with_context(|| format!("attaching the {} sandbox, MTU {mtu}", datapath.label()))?;
            // The published port must be listening on the host's loopback.
            wait_listener(lab, HOST_NS, sandbox.inbound_port)?;
            sandboxes.push(sandbox);
        }
    }
    Ok((daemon, sandboxes))
}

/// A weft network for `mtu` (10.237.INDEX.0/24, host_loopback=true) and a
/// sandbox attached with its inbound port published on 127.0.0.1.
fn attach_weft(lab: &mut Lab, daemon: &WeftDaemon, mtu: u32, index: usize) -> Result<Sandbox> {
    let netns = sandbox_name(Datapath::Weft, mtu);
    let network = format!("nat{mtu}");
    let subnet = format!("10.237.{index}.0/24");
    let gateway = format!("10.237.{index}.1");
    let address = format!("10.237.{index}.2");
    let port = inbound_port(Datapath::Weft, mtu);
    let mtu_text = mtu.to_string();
    lab.add_netns(&netns)?;
    daemon.cli_ok(
        lab,
        &[
            "network",
            "create",
            "--subnet",
            &subnet,
            "--mtu",
            &mtu_text,
            "--opt",
            "host_loopback=true",
            &network,
        ],
    )?;
    let publish = format!("127.0.0.1:{port}:{port}");
    daemon.cli_ok(
        lab,
        &[
            "network", "connect", "--ip", &address, "-p", &publish, &network, &netns,
        ],
    )?;
    let gateway_ip = gateway.parse().context("gateway address")?;
    topology::wait_reachable(lab, &netns, gateway_ip)?;
    Ok(Sandbox {
        datapath: Datapath::Weft,
        mtu,
        netns,
        gateway,
        inbound_port: port,
        cpu_pid: daemon.pid,
    })
}

/// pasta in the host namespace attached to a fresh sandbox, as the anchors
/// run it, with `-t 127.0.0.1/P` in and `-T OUT_PORT` (splice) out.
fn start_pasta(lab: &mut Lab, mtu: u32) -> Result<Sandbox> {
    let netns = sandbox_name(Datapath::Pasta, mtu);
    let port = inbound_port(Datapath::Pasta, mtu);
    lab.add_netns(&netns)?;
    let mtu_text = mtu.to_string();
    let inbound = format!("127.0.0.1/{port}");
    let splice = OUT_PORT.to_string();
    let pid = lab.spawn_in(
        HOST_NS,
        &format!("pasta-{mtu}"),
        &[
            "pasta",
            "--config-net",
            "-f",
            "-4",
            "-a",
            SLIRP_GUEST,
            "-n",
            "24",
            "-g",
            SLIRP_GATEWAY,
            "-I",
            "bap0",
            // The 2023 pasta relays ICMP echo to the real destination.
            "--no-icmp",
            "--runas",
            "0",
            "-m",
            &mtu_text,
            "-t",
            &inbound,
            "-u",
            "none",
            "-T",
            &splice,
            "-U",
            "none",
            "--netns",
            &netns,
        ],
    )?;
    wait_guest_address(lab, &netns, "bap0", pid, "pasta")?;
    wait_listener(lab, &netns, OUT_PORT)?;
    Ok(Sandbox {
        datapath: Datapath::Pasta,
        mtu,
        netns,
        gateway: SLIRP_GATEWAY.to_owned(),
        inbound_port: port,
        cpu_pid: pid,
    })
}

/// slirp4netns in the host namespace attached to a fresh sandbox, as the
/// anchors run it; the inbound port added through its API socket.
fn start_slirp(lab: &mut Lab, mtu: u32) -> Result<Sandbox> {
    let netns = sandbox_name(Datapath::Slirp, mtu);
    let port = inbound_port(Datapath::Slirp, mtu);
    lab.add_netns(&netns)?;
    let api = lab.work_dir().join(format!("slirp4netns-{mtu}.sock"));
    let api_text = api.to_str().context("API socket path")?.to_owned();
    let mtu_flag = format!("--mtu={mtu}");
    let netns_path = format!("/var/run/netns/{netns}");
    let pid = lab.spawn_in(
        HOST_NS,
        &format!("slirp4netns-{mtu}"),
        &[
            "slirp4netns",
            "--configure",
            &mtu_flag,
            // Nothing is ever relayed to a resolver.
            "--disable-dns",
            "--netns-type=path",
            "--api-socket",
            &api_text,
            &netns_path,
            "tap0",
        ],
    )?;
    let deadline = Instant::now() + READY_TIMEOUT;
    while !api.exists() {
        if !lab.is_running(pid) {
            bail!("slirp4netns exited at start: {}", lab.log_tail(pid));
        }
        if Instant::now() >= deadline {
            bail!("slirp4netns made no API socket within {READY_TIMEOUT:?}");
        }
        process::pause(POLL_STEP)?;
    }
    wait_guest_address(lab, &netns, "tap0", pid, "slirp4netns")?;
    let request = format!(
        r#"{{"execute": "add_hostfwd", "arguments": {{"proto": "tcp", "host_addr": "127.0.0.1", "host_port": {port}, "guest_addr": "{SLIRP_GUEST}", "guest_port": {port}}}}}"#
    );
    let reply = slirp_api(&api, &request)?;
    if !reply.contains("\"return\"") {
        bail!("slirp4netns add_hostfwd answered {reply:?}");
    }
    Ok(Sandbox {
        datapath: Datapath::Slirp,
        mtu,
        netns,
        gateway: SLIRP_GATEWAY.to_owned(),
        inbound_port: port,
        cpu_pid: pid,
    })
}

/// One request on slirp4netns's API socket (it answers and closes).
fn slirp_api(socket: &Path, request: &str) -> Result<String> {
    let mut stream = UnixStream::connect(socket)
        .with_context(|| format!("connecting to {}", socket.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(request.as_bytes())?;
    stream.shutdown(std::net::Shutdown::Write)?;
    let mut reply = String::new();
    stream
        .take(64 * 1024)
        .read_to_string(&mut reply)
        .context("reading slirp4netns's API reply")?;
    Ok(reply)
}

/// Bounded wait until `interface` in `netns` has the guest address, the
/// sign that pasta / slirp4netns configured it.
fn wait_guest_address(
    lab: &mut Lab,
    netns: &str,
    interface: &str,
    pid: u32,
    what: &str,
) -> Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if !lab.is_running(pid) {
            bail!("{what} exited at start: {}", lab.log_tail(pid));
        }
        let shown = lab.run_in(
            netns,
            &["ip", "-4", "-br", "addr", "show", "dev", interface],
            Duration::from_secs(5),
        )?;
        if shown.status.success() && shown.stdout.contains(SLIRP_GUEST) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "{what} did not configure {interface} in {netns} within {READY_TIMEOUT:?}: {}",
                lab.log_tail(pid)
            );
        }
        process::pause(POLL_STEP)?;
    }
}

/// Bounded wait until something in `netns` listens on TCP `port`.
fn wait_listener(lab: &mut Lab, netns: &str, port: u16) -> Result<()> {
    let filter = format!("sport = :{port}");
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let shown = lab.run_in(netns, &["ss", "-Hltn", &filter], Duration::from_secs(5))?;
        if shown.status.success() && !shown.stdout.trim().is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("nothing listens on TCP port {port} in {netns} after {READY_TIMEOUT:?}");
        }
        process::pause(POLL_STEP)?;
    }
}

/// One TCP stream along `case` for `sandbox`.
fn measure_one(
    lab: &mut Lab,
    sandbox: &Sandbox,
    case: Case,
    seconds: u32,
    pin: Pinning,
) -> Result<TcpSample> {
    let pids = [sandbox.cpu_pid];
    let flow = match case {
        Case::OutLoopback => TcpFlow {
            client_ns: &sandbox.netns,
            server_ns: HOST_NS,
            server_bind: Some("127.0.0.1"),
            destination: &sandbox.gateway,
            port: OUT_PORT,
            cpu_pids: &pids,
        },
        Case::In => TcpFlow {
            client_ns: HOST_NS,
            server_ns: &sandbox.netns,
            server_bind: None,
            destination: "127.0.0.1",
            port: sandbox.inbound_port,
            cpu_pids: &pids,
        },
        Case::OutFar => TcpFlow {
            client_ns: &sandbox.netns,
            server_ns: FAR_NS,
            server_bind: Some(FAR_ADDRESS),
            destination: FAR_ADDRESS,
            port: OUT_PORT,
            cpu_pids: &pids,
        },
        Case::OutSplice => TcpFlow {
            client_ns: &sandbox.netns,
            server_ns: HOST_NS,
            server_bind: Some("127.0.0.1"),
            destination: "127.0.0.1",
            port: OUT_PORT,
            cpu_pids: &pids,
        },
    };
    measure::tcp_flow(lab, &flow, seconds, pin)
}

// ------------------------------------------------------------------ report

mod cases;
mod section;
#[cfg(test)]
mod tests;
