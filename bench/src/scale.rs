//! `weft-bench scale`: what attaching many sandboxes to one weft network
//! costs.
//!
//! One daemon (in `wb-scale-host`), one network 10.214.0.0/16, N sandbox
//! namespaces `wb-s1`..`wb-sN`, all created first so that only the attach
//! is timed. Each `weft network connect scale wb-sI` is timed by wall
//! clock from spawn to exit of the CLI (what a container runtime would
//! wait for: API round trip, TAP creation, configuration inside the
//! sandbox), the address coming from weft's IPAM as for a container
//! without `--ip`. The daemon's VmRSS is read just before the first attach
//! and just after the last; the difference over N is the memory one
//! endpoint costs. Finally a random sample of pairs must ping each other
//! (`ping -c 2 -W 1`, answered = at least one reply): attaching many must
//! not break forwarding. The sample's seed is printed so a failure can be
//! replayed.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::e2e::{kernel_release, tool_versions};
use crate::lab::Lab;
use crate::measure;
use crate::process;
use crate::report::{self, percentile_sorted};
use crate::topology::{self, WeftDaemon};

const NETWORK: &str = "scale";
const SUBNET: &str = "10.214.0.0/16";

/// `weft-bench scale` options.
#[derive(Debug)]
pub struct ScaleOptions {
    /// How many sandboxes.
    pub sandboxes: u32,
    /// How many random pairs must ping each other.
    pub pairs: u32,
    /// The Markdown section is appended here.
    pub out: PathBuf,
    /// The command line, for the report.
    pub command: String,
}

/// Run the scale test and append its section to the report.
pub fn run(options: &ScaleOptions) -> Result<()> {
    process::require_tools(&["ip", "ping"])?;
    let weft = topology::weft_binary()?;
    let started = Instant::now();
    let date_utc = report::utc_now();
    let mut lab = Lab::open()?;
    let versions = tool_versions(&mut lab, &weft, &["iperf3", "vde_switch"]);
    let host = "wb-scale-host";
    lab.add_netns(host)?;
    let dir = lab.work_dir().join("weft-scale");
    let daemon = WeftDaemon::start(&mut lab, &weft, host, &dir)?;
    daemon.cli_ok(
        &mut lab,
        &["network", "create", "--subnet", SUBNET, NETWORK],
    )?;

    let names: Vec<String> = (1..=options.sandboxes)
        .map(|i| format!("wb-s{i}"))
        .collect();
    eprintln!("weft-bench: creating {} sandbox namespaces", names.len());
    for name in &names {
        lab.add_netns(name)?;
    }

    let rss_before_kib = measure::process_rss_kib(daemon.pid)?;
    let mut attach_ms: Vec<f64> = Vec::with_capacity(names.len());
    for (index, name) in names.iter().enumerate() {
        let output = daemon
            .cli_ok(&mut lab, &["network", "connect", NETWORK, name])
            .with_context(|| format!("attaching sandbox {} of {}", index + 1, names.len()))?;
        attach_ms.push(output.elapsed.as_secs_f64() * 1e3);
        if (index + 1) % 50 == 0 {
            eprintln!("weft-bench: {} attached", index + 1);
        }
    }
    let rss_after_kib = measure::process_rss_kib(daemon.pid)?;

    let addresses = endpoint_addresses(
        &daemon
            .cli_ok(&mut lab, &["network", "inspect", NETWORK])?
            .stdout,
    )?;
    for name in &names {
        if !addresses.contains_key(name) {
            bail!("`network inspect {NETWORK}` shows no endpoint for {name}");
        }
    }
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    let pairs = sample_pairs(names.len(), options.pairs as usize, seed);
    let mut answered = 0usize;
    let mut unanswered: Vec<String> = Vec::new();
    for (from, to) in &pairs {
        let target = &addresses[&names[*to]];
        let output = lab.run_in(
            &names[*from],
            &[
                "ping", "-n", "-q", "-c", "2", "-i", "0.2", "-W", "1", target,
            ],
            Duration::from_secs(10),
        )?;
        if output.status.success() {
            answered += 1;
        } else {
            unanswered.push(format!("{} → {} ({target})", names[*from], names[*to]));
        }
    }
    lab.cleanup();

    attach_ms.sort_by(f64::total_cmp);
    let delta_kib = rss_after_kib as f64 - rss_before_kib as f64;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n## Scale: {} sandboxes on one weft network\n",
        names.len()
    );
    let _ = writeln!(out, "- date (UTC): {date_utc}");
    let _ = writeln!(
        out,
        "- kernel (`uname -r`): {}; CPUs (`nproc`): {}",
        kernel_release(),
        crate::cpu_count()
    );
    let _ = writeln!(out, "- command: `{}`", options.command);
    if let Some(version) = versions.first() {
        let _ = writeln!(out, "- {version}");
    }
    let _ = writeln!(
        out,
        "- method: one daemon, network {SUBNET}, each sandbox its own namespace attached with \
         `weft network connect {NETWORK} wb-sI` (address from weft's IPAM), timed by wall clock of the CLI; \
         VmRSS of the daemon before the first and after the last attach; wall time {:.0} s\n",
        started.elapsed().as_secs_f64()
    );
    let _ = writeln!(out, "| figure | value |");
    let _ = writeln!(out, "|---|---|");
    let _ = writeln!(
        out,
        "| attach latency, median | {} ms |",
        report::number(percentile_sorted(&attach_ms, 50.0))
    );
    let _ = writeln!(
        out,
        "| attach latency, p99 | {} ms |",
        report::number(percentile_sorted(&attach_ms, 99.0))
    );
    let _ = writeln!(
        out,
        "| attach latency, min / max | {} / {} ms |",
        report::number(attach_ms.first().copied().unwrap_or(f64::NAN)),
        report::number(attach_ms.last().copied().unwrap_or(f64::NAN))
    );
    let _ = writeln!(
        out,
        "| daemon RSS before the first attach | {} MiB |",
        report::number(rss_before_kib as f64 / 1024.0)
    );
    let _ = writeln!(
        out,
        "| daemon RSS after the last attach | {} MiB |",
        report::number(rss_after_kib as f64 / 1024.0)
    );
    let _ = writeln!(
        out,
        "| RSS per endpoint (delta / {}) | {} KiB |",
        names.len(),
        report::number(delta_kib / names.len() as f64)
    );
    let _ = writeln!(
        out,
        "| ping between random pairs (seed {seed}) | {answered}/{} answered |",
        pairs.len()
    );
    for pair in &unanswered {
        let _ = writeln!(out, "\nUnanswered: {pair}");
    }
    println!("{out}");
    if let Some(dir) = options.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&options.out)
        .with_context(|| format!("opening {}", options.out.display()))?;
    std::io::Write::write_all(&mut file, out.as_bytes())
        .with_context(|| format!("appending to {}", options.out.display()))?;
    eprintln!("weft-bench: section appended to {}", options.out.display());
    if answered < pairs.len() {
        bail!(
            "{} of {} sampled pairs did not answer ping",
            pairs.len() - answered,
            pairs.len()
        );
    }
    Ok(())
}

/// Namespace name → IPv4 address (without prefix length) of every endpoint
/// in `weft network inspect` output.
pub fn endpoint_addresses(inspect_json: &str) -> Result<HashMap<String, String>> {
    let networks: Value =
        serde_json::from_str(inspect_json).context("`network inspect` output is not JSON")?;
    let endpoints = networks
        .get(0)
        .and_then(|n| n.get("endpoints"))
        .and_then(Value::as_array)
        .context("`network inspect` output has no endpoints list")?;
    let mut map = HashMap::new();
    for endpoint in endpoints {
        let sandbox = endpoint
            .get("sandbox")
            .and_then(Value::as_str)
            .context("an endpoint without a sandbox")?;
        let name = sandbox.rsplit('/').next().unwrap_or(sandbox).to_owned();
        let address = endpoint
            .get("addresses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(|cidr| cidr.split('/').next().unwrap_or(cidr))
            .find(|addr| addr.parse::<std::net::Ipv4Addr>().is_ok())
            .with_context(|| format!("endpoint of {sandbox} has no IPv4 address"))?;
        map.insert(name, address.to_owned());
    }
    Ok(map)
}

/// SplitMix64: a small, seedable generator (no dependency for 20 draws).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }
}

/// `count` random ordered pairs of distinct indexes below `n` (none if
/// n < 2).
pub fn sample_pairs(n: usize, count: usize, seed: u64) -> Vec<(usize, usize)> {
    if n < 2 {
        return Vec::new();
    }
    let mut rng = SplitMix64(seed);
    (0..count)
        .map(|_| {
            let from = rng.below(n);
            let to = (from + 1 + rng.below(n - 1)) % n;
            (from, to)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_distinct_and_in_range() {
        let pairs = sample_pairs(5, 200, 42);
        assert_eq!(pairs.len(), 200);
        assert!(pairs.iter().all(|(a, b)| a != b && *a < 5 && *b < 5));
        assert_eq!(sample_pairs(5, 20, 7), sample_pairs(5, 20, 7));
        assert!(sample_pairs(1, 20, 7).is_empty());
        assert!(sample_pairs(2, 20, 7).iter().all(|&(a, b)| a + b == 1));
    }

    #[test]
    fn addresses_from_inspect() {
        let json = r#"[{"name":"scale","endpoints":[
            {"addresses":["10.214.0.2/16","fd00::2/64"],"sandbox":"/var/run/netns/wb-s1","name":"wb-s1"},
            {"addresses":["fd00::3/64","10.214.0.3/16"],"sandbox":"/var/run/netns/wb-s2"}]}]"#;
        let map = endpoint_addresses(json).unwrap();
        assert_eq!(map["wb-s1"], "10.214.0.2");
        assert_eq!(map["wb-s2"], "10.214.0.3");
        assert!(endpoint_addresses("[]").is_err());
        assert!(endpoint_addresses(r#"[{"endpoints":[{"sandbox":"/x"}]}]"#).is_err());
    }
}
