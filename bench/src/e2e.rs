//! `weft-bench e2e`: weft against the physical limit (kernel bridge +
//! veth) and its closest userspace peer (vde_switch owning a TAP per
//! sandbox), on the same machine in the same minute.
//!
//! The three topologies (see `topology`) are built once; then for each run
//! every topology is measured in turn (weft, bridge, vde; weft, bridge,
//! vde; ...), each measurement being one TCP stream, one 64-byte UDP flood
//! and one ping series (see `measure`). Alternating rather than doing all
//! runs of one topology back to back means a slow change in the machine's
//! background load (it is shared with compiles and tests) lands on all
//! three alike instead of biasing one; the report takes the median of the
//! runs and shows min–max beside it.
//!
//! A failed measurement is recorded in the report and left out of the
//! medians; the command then exits non-zero. A failure to build a topology,
//! or a stop signal, ends the run (after cleanup).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::lab::Lab;
use crate::measure::{self, Pinning};
use crate::process;
use crate::report::{self, RunHeader, TopologyResults};
use crate::topology::{self, Kind, Testbed};

/// `weft-bench e2e` options.
#[derive(Debug)]
pub struct E2eOptions {
    /// Runs per topology.
    pub runs: u32,
    /// Seconds per iperf3 run.
    pub seconds: u32,
    /// Where the Markdown report goes (overwritten).
    pub out: PathBuf,
    /// The command line, for the report.
    pub command: String,
}

/// Run the comparison and write the report.
pub fn run(options: &E2eOptions) -> Result<()> {
    process::require_tools(&["ip", "iperf3", "ping", "taskset", "vde_switch"])?;
    let weft = topology::weft_binary()?;
    let started = Instant::now();
    let date_utc = report::utc_now();
    let cpus = crate::cpu_count();
    let pin = Pinning::split(cpus);
    let mut lab = Lab::open()?;
    let versions = tool_versions(&mut lab, &weft, &["iperf3", "vde_switch"]);

    let mut testbeds: Vec<Testbed> = Vec::new();
    for kind in Kind::ALL {
        eprintln!("weft-bench: building the {} topology", kind.short());
        testbeds.push(topology::build(&mut lab, kind, &weft)?);
    }

    let mut results: Vec<(Kind, TopologyResults)> = Kind::ALL
        .iter()
        .map(|kind| (*kind, TopologyResults::default()))
        .collect();
    let mut failures: Vec<String> = Vec::new();
    for run in 1..=options.runs {
        for (testbed, (_, figures)) in testbeds.iter().zip(results.iter_mut()) {
            let name = testbed.kind.short();
            match measure::tcp(&mut lab, testbed, options.seconds, pin) {
                Ok(sample) => {
                    eprintln!(
                        "weft-bench: {name} run {run}: TCP {:.2} Gbit/s{}",
                        sample.gbps,
                        sample
                            .cpu_seconds_per_gb()
                            .map(|c| format!(", switch {c:.2} CPU-s/GB"))
                            .unwrap_or_default()
                    );
                    figures.tcp.push(sample);
                }
                Err(error) => testbed_failure(&lab, testbed, run, "TCP", &error, &mut failures)?,
            }
            match measure::udp64(&mut lab, testbed, options.seconds, pin) {
                Ok(sample) => {
                    eprintln!(
                        "weft-bench: {name} run {run}: UDP 64 B {:.0} kpps received, {:.1}% loss",
                        sample.kpps, sample.loss_pct
                    );
                    figures.udp.push(sample);
                }
                Err(error) => testbed_failure(&lab, testbed, run, "UDP", &error, &mut failures)?,
            }
            match measure::ping(&mut lab, testbed, pin) {
                Ok(sample) => {
                    eprintln!(
                        "weft-bench: {name} run {run}: ping p50 {:.0} µs, avg {:.0} µs, {}/{} replies",
                        sample.p50_us, sample.avg_us, sample.received, sample.sent
                    );
                    figures.ping.push(sample);
                }
                Err(error) => testbed_failure(&lab, testbed, run, "ping", &error, &mut failures)?,
            }
        }
    }
    lab.cleanup();

    let header = RunHeader {
        date_utc,
        kernel: kernel_release(),
        cpus,
        runs: options.runs,
        seconds: options.seconds,
        command: options.command.clone(),
        versions,
        placement: pin.describe(),
        wall_seconds: started.elapsed().as_secs_f64(),
    };
    let markdown = report::e2e_markdown(&header, &results, &failures);
    println!("{markdown}");
    if let Some(dir) = options.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&options.out, &markdown)
        .with_context(|| format!("writing {}", options.out.display()))?;
    eprintln!("weft-bench: report written to {}", options.out.display());
    if !failures.is_empty() {
        bail!(
            "{} measurement(s) failed (listed in the report)",
            failures.len()
        );
    }
    Ok(())
}

/// Note a failed measurement of `testbed` (see [`Lab::record_failure`]).
fn testbed_failure(
    lab: &Lab,
    testbed: &Testbed,
    run: u32,
    what: &str,
    error: &anyhow::Error,
    failures: &mut Vec<String>,
) -> Result<()> {
    let what = format!("{} run {run} {what}", testbed.kind.short());
    let switch: Vec<(&str, u32)> = testbed
        .switch_pid
        .map(|pid| ("switch process", pid))
        .into_iter()
        .collect();
    lab.record_failure(&what, error, &switch, failures)
}

/// `uname -r`.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// The first line of `--version` of weft and of each of `tools`, for the
/// report.
pub fn tool_versions(lab: &mut Lab, weft: &std::path::Path, tools: &[&str]) -> Vec<String> {
    let weft = weft.to_string_lossy().into_owned();
    std::iter::once(weft.as_str())
        .chain(tools.iter().copied())
        .map(|tool| vec![tool, "--version"])
        .collect::<Vec<_>>()
        .iter()
        .map(|argv| {
            let first_line = lab
                .run(argv, Duration::from_secs(5))
                .ok()
                .and_then(|output| {
                    format!("{}{}", output.stdout, output.stderr)
                        .lines()
                        .map(str::trim)
                        .find(|line| !line.is_empty())
                        .map(str::to_owned)
                })
                .unwrap_or_else(|| "version unknown".to_owned());
            let name = std::path::Path::new(argv[0])
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            format!("{name}: {first_line}")
        })
        .collect()
}
