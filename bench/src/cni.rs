//! `weft-bench cni`: what a runtime waits for when it attaches pods through
//! `weft-cni`, against the reference `bridge` + `host-local` plugins
//! (Debian's containernetworking-plugins), and pod-to-pod TCP on each.
//!
//! One namespace `wb-cni-host` plays the node: the weft daemon runs there,
//! and every plugin is executed there (`nsenter --net`, as a runtime on
//! the node would), so the reference bridge, its veths' host ends and
//! host-local's files all live in the harness's namespace and directory.
//! N pod namespaces `wb-p1`..`wb-pN` are made first; then, for each
//! plugin in turn: N ADDs (each timed from spawn to exit, the way a
//! runtime waits for it: process start, stdin, the work, the result),
//! `--runs` iperf3 runs from pod 1 to pod 2, and N DELs, timed the same
//! way. The pods are empty again after the DELs, so both plugins see the
//! same namespaces.
//!
//! Compared like for like: both attach a pod to an L2 network with an
//! address from an allocator and a default route; the bridge plugin has
//! `ipMasq` off (no iptables), `isGateway` on.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::lab::Lab;
use crate::measure::{self, Pinning, TcpFlow};
use crate::process;
use crate::report::{self, percentile_sorted};
use crate::topology::{self, WeftDaemon};

const HOST: &str = "wb-cni-host";
const REFERENCE_PLUGINS: &str = "/usr/lib/cni";
/// Longest one plugin call may take before the run is abandoned.
const PLUGIN_TIMEOUT: &str = "30";
const HEADING: &str = "## CNI: weft-cni vs bridge + host-local";

/// `weft-bench cni` options.
#[derive(Debug)]
pub struct CniOptions {
    /// ADDs (and DELs) per plugin.
    pub iterations: u32,
    /// iperf3 runs per plugin.
    pub runs: u32,
    /// Seconds per iperf3 run.
    pub seconds: u32,
    /// The Markdown file whose CNI section is replaced.
    pub out: PathBuf,
    /// The command line, for the report.
    pub command: String,
}

/// One plugin's numbers.
struct PluginRun {
    label: &'static str,
    add_ms: Vec<f64>,
    del_ms: Vec<f64>,
    gbps: Vec<f64>,
}

/// Run a plugin in HOST with the CNI environment and `conf` on stdin; the
/// elapsed wall time and its stdout as JSON.
fn call(exe: &Path, command: &str, pod: &str, conf: &Value) -> Result<(Duration, Value)> {
    let netns = format!("/var/run/netns/{pod}");
    let started = Instant::now();
    let mut child = Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{HOST}"))
        .args(["timeout", "-k", "2", PLUGIN_TIMEOUT])
        .arg(exe)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", pod)
        .env("CNI_NETNS", &netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", REFERENCE_PLUGINS)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(conf.to_string().as_bytes())?;
    }
    let output = child.wait_with_output()?;
    let elapsed = started.elapsed();
    if !output.status.success() {
        bail!(
            "{} {command} for {pod} failed: {}{}",
            exe.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let answer = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
    Ok((elapsed, answer))
}

/// The first IPv4 address of a result.
fn first_ipv4(result: &Value) -> Option<String> {
    result["ips"]
        .as_array()?
        .iter()
        .filter_map(|ip| ip["address"].as_str())
        .find(|a| !a.contains(':'))
        .and_then(|a| a.split('/').next())
        .map(str::to_owned)
}

fn bench_plugin(
    lab: &mut Lab,
    label: &'static str,
    exe: &Path,
    conf: &Value,
    pods: &[String],
    options: &CniOptions,
    cpu_pids: &[u32],
) -> Result<PluginRun> {
    let mut run = PluginRun {
        label,
        add_ms: Vec::with_capacity(pods.len()),
        del_ms: Vec::with_capacity(pods.len()),
        gbps: Vec::new(),
    };
    let mut server_ip = None;
    for (i, pod) in pods.iter().enumerate() {
        process::check_interrupted()?;
        let (elapsed, result) = call(exe, "ADD", pod, conf)?;
        run.add_ms.push(elapsed.as_secs_f64() * 1e3);
        if i == 1 {
            server_ip = first_ipv4(&result);
        }
    }
    let server_ip = server_ip.context("no IPv4 address in the second pod's ADD result")?;
    let pin = Pinning::split(crate::cpu_count());
    for _ in 0..options.runs {
        let sample = measure::tcp_flow(
            lab,
            &TcpFlow {
                client_ns: &pods[0],
                server_ns: &pods[1],
                server_bind: Some(&server_ip),
                destination: &server_ip,
                port: measure::IPERF_PORT,
                cpu_pids,
            },
            options.seconds,
            pin,
        )?;
        run.gbps.push(sample.gbps);
    }
    for pod in pods {
        process::check_interrupted()?;
        let (elapsed, _) = call(exe, "DEL", pod, conf)?;
        run.del_ms.push(elapsed.as_secs_f64() * 1e3);
    }
    Ok(run)
}

fn stats(values: &[f64]) -> (f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    (
        percentile_sorted(&sorted, 50.0),
        percentile_sorted(&sorted, 99.0),
    )
}

/// Run the comparison and replace the CNI section of the report.
pub fn run(options: &CniOptions) -> Result<()> {
    process::require_tools(&["ip", "iperf3", "nsenter"])?;
    let weft = topology::weft_binary()?;
    let weft_cni = weft.with_file_name("weft-cni");
    let bridge = Path::new(REFERENCE_PLUGINS).join("bridge");
    if !process::is_executable(&weft_cni) {
        bail!(
            "no weft-cni next to {}: cargo build --release -p weft",
            weft.display()
        );
    }
    if !process::is_executable(&bridge) {
        bail!(
            "no reference bridge plugin at {}: apt-get install containernetworking-plugins",
            bridge.display()
        );
    }
    let date_utc = report::utc_now();
    let mut lab = Lab::open()?;
    lab.add_netns(HOST)?;
    lab.ip(HOST, &["link", "set", "lo", "up"])?;
    let dir = lab.work_dir().join("weft-cni");
    let daemon = WeftDaemon::start(&mut lab, &weft, HOST, &dir)?;
    let pods: Vec<String> = (1..=options.iterations)
        .map(|i| format!("wb-p{i}"))
        .collect();
    eprintln!("weft-bench: creating {} pod namespaces", pods.len());
    for pod in &pods {
        lab.add_netns(pod)?;
    }
    let weft_conf = json!({
        "cniVersion": "1.0.0", "name": "wbcni", "type": "weft-cni",
        "socket": dir.join("api.sock"), "subnet": "10.215.0.0/16",
    });
    let bridge_conf = json!({
        "cniVersion": "1.0.0", "name": "wbref", "type": "bridge", "bridge": "wbcni0",
        "isGateway": true, "ipMasq": false,
        "ipam": {"type": "host-local", "subnet": "10.216.0.0/16", "dataDir": dir.join("host-local")},
    });
    eprintln!("weft-bench: weft-cni, {} ADD/DEL", pods.len());
    let weft_run = bench_plugin(
        &mut lab,
        "weft-cni",
        &weft_cni,
        &weft_conf,
        &pods,
        options,
        &[daemon.pid],
    )?;
    eprintln!("weft-bench: bridge + host-local, {} ADD/DEL", pods.len());
    let bridge_run = bench_plugin(
        &mut lab,
        "bridge + host-local",
        &bridge,
        &bridge_conf,
        &pods,
        options,
        &[],
    )?;
    let mut section = String::new();
    let _ = writeln!(section, "{HEADING}\n");
    let _ = writeln!(
        section,
        "{date_utc}, `{}`: {} ADD then {} DEL per plugin, each timed from spawn to exit of the plugin run in the node namespace (nsenter); pod 1 → pod 2 TCP, {} run(s) x {} s, iperf3 medians.\n",
        options.command, options.iterations, options.iterations, options.runs, options.seconds
    );
    let _ = writeln!(
        section,
        "| plugin | ADD p50 | ADD p99 | DEL p50 | DEL p99 | pod-to-pod TCP |"
    );
    let _ = writeln!(section, "|---|---|---|---|---|---|");
    for run in [&weft_run, &bridge_run] {
        let (add50, add99) = stats(&run.add_ms);
        let (del50, del99) = stats(&run.del_ms);
        let (gbps, _) = stats(&run.gbps);
        let _ = writeln!(
            section,
            "| {} | {add50:.1} ms | {add99:.1} ms | {del50:.1} ms | {del99:.1} ms | {gbps:.2} Gbit/s |",
            run.label
        );
    }
    print!("{section}");
    report::write_section(&options.out, HEADING, &section)?;
    lab.cleanup();
    Ok(())
}
