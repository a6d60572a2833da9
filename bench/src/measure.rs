//! One measurement each of TCP throughput, 64-byte UDP packet rate and
//! ping round trip across a [`Testbed`], plus the /proc readings (CPU
//! ticks, RSS) and the parsers of iperf3 and ping output.
//!
//! - TCP: `iperf3 -c B -t S -J`, one stream, receiver-side Gbit/s
//!   (`end.sum_received`): what arrived, not what was queued.
//! - UDP: `iperf3 -c B -u -l 64 -b 0 -t S -J`: packets received per second
//!   = (`end.sum.packets` − `end.sum.lost_packets`) / `end.sum.seconds`,
//!   and the loss %. With `-b 0` the sender floods, so this is the switch's
//!   small-packet forwarding rate under overload, not a loss-free rate.
//! - ping: `ping -c 200 -i 0.01`, the median of the per-reply `time=`
//!   values (robust to the odd scheduler hiccup) and the summary's avg.
//! - CPU: utime+stime of the switch process (all its threads) from
//!   /proc/PID/stat around the TCP client run, divided by the GB received.
//!
//! Placement, as the anchors do: the client (iperf3 -c, ping) pinned to
//! CPU 0, the iperf3 server to CPU 1, the switch left to the scheduler. On
//! this kind of VM a cross-CPU wake-up costs ~30 µs, and where the scheduler
//! happens to put client and server swings latency 10× and throughput 2–5×;
//! pinning makes runs comparable. A fresh one-shot server (`iperf3 -s -1`)
//! per measurement, so no state carries over between runs.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::lab::Lab;
use crate::process;
use crate::topology::Testbed;

/// The iperf3 port, inside the sandbox namespaces only.
pub const IPERF_PORT: u16 = 5201;
/// Echo requests per ping measurement, and their interval.
pub const PING_COUNT: u32 = 200;
const PING_INTERVAL: &str = "0.01";
/// Slack on top of the test length for iperf3's connect and exchange.
const IPERF_SLACK: Duration = Duration::from_secs(20);

/// Which CPUs the load generators run on.
#[derive(Debug, Clone, Copy)]
pub struct Pinning {
    /// `taskset -c` for clients; `None` when there are fewer than 2 CPUs.
    pub client_cpu: Option<u32>,
    /// `taskset -c` for servers.
    pub server_cpu: Option<u32>,
}

impl Pinning {
    /// Client on CPU 0, server on CPU 1 when there are at least 2 CPUs.
    pub fn split(cpus: usize) -> Pinning {
        if cpus >= 2 {
            Pinning {
                client_cpu: Some(0),
                server_cpu: Some(1),
            }
        } else {
            Pinning {
                client_cpu: None,
                server_cpu: None,
            }
        }
    }

    /// How the report describes it.
    pub fn describe(&self) -> String {
        match (self.client_cpu, self.server_cpu) {
            (Some(client), Some(server)) => format!(
                "clients (iperf3 -c, ping) on CPU {client}, iperf3 server on CPU {server} (taskset); the switch processes unpinned"
            ),
            _ => "unpinned (fewer than 2 CPUs)".to_owned(),
        }
    }
}

/// `taskset -c CPU` in front of `argv` when pinned.
fn pinned(cpu: Option<u32>, argv: &[&str]) -> Vec<String> {
    let mut full: Vec<String> = Vec::new();
    if let Some(cpu) = cpu {
        full.extend(["taskset".to_owned(), "-c".to_owned(), cpu.to_string()]);
    }
    full.extend(argv.iter().map(|s| (*s).to_owned()));
    full
}

fn as_strs(argv: &[String]) -> Vec<&str> {
    argv.iter().map(String::as_str).collect()
}

/// One TCP run.
#[derive(Debug, Clone, Copy)]
pub struct TcpSample {
    /// Receiver-side Gbit/s.
    pub gbps: f64,
    /// Bytes the receiver got.
    pub bytes_received: f64,
    /// CPU seconds the switch process used during the run.
    pub switch_cpu_seconds: Option<f64>,
    /// 1-s intervals of the run, and how many of them stalled (below 10%
    /// of the run's best interval).
    pub intervals: u32,
    /// See `intervals`.
    pub stalled_intervals: u32,
    /// The sender's TCP retransmissions (`end.sum_sent.retransmits`).
    pub retransmits: Option<u64>,
}

impl TcpSample {
    /// Switch CPU seconds per GB (1e9 bytes) received.
    pub fn cpu_seconds_per_gb(&self) -> Option<f64> {
        let cpu = self.switch_cpu_seconds?;
        (self.bytes_received > 0.0).then(|| cpu / (self.bytes_received / 1e9))
    }
}

/// One UDP 64-byte run.
#[derive(Debug, Clone, Copy)]
pub struct UdpSample {
    /// Packets received per second, in thousands.
    pub kpps: f64,
    /// Lost packets, % of sent.
    pub loss_pct: f64,
}

/// One ping run.
#[derive(Debug, Clone, PartialEq)]
pub struct PingSample {
    /// Median of the per-reply round trips, µs.
    pub p50_us: f64,
    /// The summary's avg, µs.
    pub avg_us: f64,
    /// Requests sent.
    pub sent: u32,
    /// Replies received.
    pub received: u32,
}

/// One iperf3 TCP measurement between any two namespaces: where the
/// one-shot server runs and binds, where the client runs and what it
/// connects to, and which userspace processes carry the traffic (their CPU
/// time is summed).
#[derive(Debug, Clone, Copy)]
pub struct TcpFlow<'a> {
    /// Namespace of `iperf3 -c`.
    pub client_ns: &'a str,
    /// Namespace of `iperf3 -s -1`.
    pub server_ns: &'a str,
    /// `-B` of the server; `None` = every address of its namespace.
    pub server_bind: Option<&'a str>,
    /// The address the client connects to.
    pub destination: &'a str,
    /// The port the server listens on and the client connects to.
    pub port: u16,
    /// Processes whose utime+stime during the client run is accounted.
    pub cpu_pids: &'a [u32],
}

/// TCP throughput from A to B, with the switch's CPU time.
pub fn tcp(lab: &mut Lab, testbed: &Testbed, seconds: u32, pin: Pinning) -> Result<TcpSample> {
    let server_ip = testbed.server_ip.to_string();
    let pids: Vec<u32> = testbed.switch_pid.into_iter().collect();
    tcp_flow(
        lab,
        &TcpFlow {
            client_ns: &testbed.client_ns,
            server_ns: &testbed.server_ns,
            server_bind: Some(&server_ip),
            destination: &server_ip,
            port: IPERF_PORT,
            cpu_pids: &pids,
        },
        seconds,
        pin,
    )
}

/// One TCP stream along `flow`, receiver-side throughput, with the CPU
/// time of `flow.cpu_pids` (summed) during the client's run.
pub fn tcp_flow(
    lab: &mut Lab,
    flow: &TcpFlow<'_>,
    seconds: u32,
    pin: Pinning,
) -> Result<TcpSample> {
    let ticks_per_second = clock_ticks_per_second()?;
    let seconds_text = seconds.to_string();
    let port_text = flow.port.to_string();
    let cpu_ticks = |pids: &[u32]| -> Result<Option<u64>> {
        if pids.is_empty() {
            return Ok(None);
        }
        let mut sum = 0;
        for pid in pids {
            sum += process_cpu_ticks(*pid)?;
        }
        Ok(Some(sum))
    };
    let output = with_iperf_server(
        lab,
        flow.server_ns,
        flow.server_bind,
        flow.port,
        pin,
        |lab| {
            let cpu_before = cpu_ticks(flow.cpu_pids)?;
            let argv = pinned(
                pin.client_cpu,
                &[
                    "iperf3",
                    "-c",
                    flow.destination,
                    "-p",
                    &port_text,
                    "-t",
                    &seconds_text,
                    "-J",
                ],
            );
            let output = lab.run_in(
                flow.client_ns,
                &as_strs(&argv),
                Duration::from_secs(u64::from(seconds)) + IPERF_SLACK,
            )?;
            let cpu_after = cpu_ticks(flow.cpu_pids)?;
            let cpu_seconds = match (cpu_before, cpu_after) {
                (Some(before), Some(after)) => {
                    Some(after.saturating_sub(before) as f64 / ticks_per_second)
                }
                _ => None,
            };
            Ok((output, cpu_seconds))
        },
    )?;
    let (output, switch_cpu_seconds) = output;
    let result = parse_iperf_tcp(&output.stdout).with_context(|| {
        format!(
            "TCP run `{}`: {}",
            output.command,
            process::tail(&output.stderr, 300)
        )
    })?;
    Ok(TcpSample {
        gbps: result.bits_per_second / 1e9,
        bytes_received: result.bytes,
        switch_cpu_seconds,
        intervals: result.intervals,
        stalled_intervals: result.stalled_intervals,
        retransmits: result.retransmits,
    })
}

/// 64-byte UDP flood from A to B.
pub fn udp64(lab: &mut Lab, testbed: &Testbed, seconds: u32, pin: Pinning) -> Result<UdpSample> {
    let server_ip = testbed.server_ip.to_string();
    udp64_between(
        lab,
        &testbed.client_ns,
        &testbed.server_ns,
        &server_ip,
        seconds,
        pin,
    )
}

/// 64-byte UDP flood from `client_ns` to the server at `server_ip` in
/// `server_ns` (bound to that address).
pub fn udp64_between(
    lab: &mut Lab,
    client_ns: &str,
    server_ns: &str,
    server_ip: &str,
    seconds: u32,
    pin: Pinning,
) -> Result<UdpSample> {
    let seconds_text = seconds.to_string();
    let port_text = IPERF_PORT.to_string();
    let output = with_iperf_server(lab, server_ns, Some(server_ip), IPERF_PORT, pin, |lab| {
        let argv = pinned(
            pin.client_cpu,
            &[
                "iperf3",
                "-c",
                server_ip,
                "-p",
                &port_text,
                "-u",
                "-l",
                "64",
                "-b",
                "0",
                "-t",
                &seconds_text,
                "-J",
            ],
        );
        lab.run_in(
            client_ns,
            &as_strs(&argv),
            Duration::from_secs(u64::from(seconds)) + IPERF_SLACK,
        )
    })?;
    let result = parse_iperf_udp(&output.stdout).with_context(|| {
        format!(
            "UDP run `{}`: {}",
            output.command,
            process::tail(&output.stderr, 300)
        )
    })?;
    Ok(UdpSample {
        kpps: result.received_packets / result.seconds / 1e3,
        loss_pct: result.lost_percent,
    })
}

/// ICMP echo from A to B.
pub fn ping(lab: &mut Lab, testbed: &Testbed, pin: Pinning) -> Result<PingSample> {
    ping_from(lab, &testbed.client_ns, &testbed.server_ip.to_string(), pin)
}

/// ICMP echo from `client_ns` to `target`.
pub fn ping_from(lab: &mut Lab, client_ns: &str, target: &str, pin: Pinning) -> Result<PingSample> {
    let count = PING_COUNT.to_string();
    let argv = pinned(
        pin.client_cpu,
        &[
            "ping",
            "-n",
            "-c",
            &count,
            "-i",
            PING_INTERVAL,
            "-W",
            "1",
            target,
        ],
    );
    let output = lab.run_in(client_ns, &as_strs(&argv), Duration::from_secs(60))?;
    parse_ping(&output.stdout).with_context(|| {
        format!(
            "ping `{}` ({}): {}",
            output.command,
            output.status,
            process::tail(&format!("{}{}", output.stderr, output.stdout), 300)
        )
    })
}

/// Start a one-shot iperf3 server in `server_ns` (bound to `bind`, or to
/// every address), wait until it listens on `port`, run `client`, then
/// give the server 5 s to exit by itself (stop it if not).
fn with_iperf_server<T>(
    lab: &mut Lab,
    server_ns: &str,
    bind: Option<&str>,
    port: u16,
    pin: Pinning,
    client: impl FnOnce(&mut Lab) -> Result<T>,
) -> Result<T> {
    let port_text = port.to_string();
    let mut server = vec!["iperf3", "-s", "-1", "-p", &port_text];
    if let Some(bind) = bind {
        server.extend(["-B", bind]);
    }
    let argv = pinned(pin.server_cpu, &server);
    let pid = lab.spawn_in(server_ns, "iperf3-server", &as_strs(&argv))?;
    let result = wait_listening(lab, pid, port).and_then(|()| client(lab));
    let stopped = lab.wait_or_stop(pid, Duration::from_secs(5));
    let value = result?;
    stopped?;
    Ok(value)
}

/// Bounded wait until process `pid` listens on `port`, read from
/// /proc/PID/net/tcp{,6}: the socket table of that process's namespace.
fn wait_listening(lab: &Lab, pid: u32, port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if !lab.is_running(pid) {
            bail!("the iperf3 server exited at start: {}", lab.log_tail(pid));
        }
        if process_listens(pid, port) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("the iperf3 server did not listen on port {port} within 5 s");
        }
        process::pause(Duration::from_millis(20))?;
    }
}

/// Whether some socket in LISTEN on `port` is in the namespace of process
/// `pid` (its /proc/PID/net/tcp{,6}).
pub fn process_listens(pid: u32, port: u16) -> bool {
    ["tcp", "tcp6"].iter().any(|table| {
        std::fs::read_to_string(format!("/proc/{pid}/net/{table}"))
            .is_ok_and(|text| table_has_listener(&text, port))
    })
}

/// Whether a /proc/net/tcp table has a socket in LISTEN (0A) on `port`.
pub fn table_has_listener(text: &str, port: u16) -> bool {
    text.lines().skip(1).any(|line| {
        let mut fields = line.split_whitespace();
        let local = fields.nth(1);
        let state = fields.nth(1);
        let local_port = local
            .and_then(|l| l.rsplit_once(':'))
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
        local_port == Some(port) && state == Some("0A")
    })
}

/// `sysconf(_SC_CLK_TCK)`: the unit of utime/stime in /proc/PID/stat.
pub fn clock_ticks_per_second() -> Result<f64> {
    // SAFETY: sysconf takes an integer name and touches no memory of ours.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks <= 0 {
        bail!("sysconf(_SC_CLK_TCK) failed");
    }
    Ok(ticks as f64)
}

/// utime + stime (clock ticks) of process `pid`, all threads.
pub fn process_cpu_ticks(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_stat_cpu_ticks(&text).with_context(|| format!("parsing {path}"))
}

/// utime + stime (clock ticks) and name (`comm`) of every thread of
/// process `pid`, by thread id (/proc/PID/task/TID/stat); threads that
/// exit while being read are skipped.
pub fn thread_cpu_ticks(pid: u32) -> Result<std::collections::BTreeMap<u32, (String, u64)>> {
    let dir = format!("/proc/{pid}/task");
    let mut threads = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let Ok(entry) = entry else { continue };
        let Some(tid) = entry
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let name = std::fs::read_to_string(entry.path().join("comm"))
            .map(|c| c.trim().to_owned())
            .unwrap_or_default();
        threads.insert(tid, (name, parse_stat_cpu_ticks(&stat)?));
    }
    Ok(threads)
}

/// The `Udp:` counters of the network namespace of process `pid`
/// (/proc/PID/net/snmp), by name (InDatagrams, RcvbufErrors, ...).
pub fn udp_counters(pid: u32) -> Result<std::collections::BTreeMap<String, u64>> {
    let path = format!("/proc/{pid}/net/snmp");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_snmp_udp(&text).with_context(|| format!("parsing {path}"))
}

/// The `Udp:` header and value lines of /proc/net/snmp as a map.
pub fn parse_snmp_udp(text: &str) -> Result<std::collections::BTreeMap<String, u64>> {
    let mut lines = text.lines().filter(|line| line.starts_with("Udp:"));
    let names = lines.next().context("no Udp: header line")?;
    let values = lines.next().context("no Udp: value line")?;
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .skip(1)
        .map(|(name, value)| {
            let value = value
                .parse::<u64>()
                .with_context(|| format!("Udp {name} = {value:?}"))?;
            Ok((name.to_owned(), value))
        })
        .collect()
}

/// utime + stime from the text of /proc/PID/stat. The command name
/// (field 2) may hold spaces and parentheses, so fields are counted from
/// the last `)`: utime and stime are fields 14 and 15.
pub fn parse_stat_cpu_ticks(text: &str) -> Result<u64> {
    let (_, after_name) = text
        .rsplit_once(')')
        .context("no `)` after the command name")?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |index: usize, name: &str| -> Result<u64> {
        fields
            .get(index)
            .with_context(|| format!("no {name} field"))?
            .parse::<u64>()
            .with_context(|| format!("{name} is not a number"))
    };
    // fields[0] is field 3 (state).
    Ok(field(11, "utime")? + field(12, "stime")?)
}

/// VmRSS of process `pid`, in KiB.
pub fn process_rss_kib(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_vm_rss_kib(&text).with_context(|| format!("parsing {path}"))
}

/// The `VmRSS:   1234 kB` line of /proc/PID/status.
pub fn parse_vm_rss_kib(text: &str) -> Result<u64> {
    let line = text
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .context("no VmRSS line")?;
    let mut words = line.split_whitespace().skip(1);
    let value = words.next().context("VmRSS has no value")?;
    if words.next() != Some("kB") {
        bail!("VmRSS is not in kB: {line:?}");
    }
    value
        .parse::<u64>()
        .with_context(|| format!("VmRSS value {value:?}"))
}

/// The receiver side of an iperf3 TCP run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IperfTcp {
    /// `end.sum_received.bits_per_second`.
    pub bits_per_second: f64,
    /// `end.sum_received.bytes`.
    pub bytes: f64,
    /// Reporting intervals (1 s each by default) in `intervals`.
    pub intervals: u32,
    /// Of those, how many carried less than 10% of the best interval:
    /// the run stalled (pasta's TAP path does this now and then).
    pub stalled_intervals: u32,
    /// `end.sum_sent.retransmits`, when iperf3 reports it.
    pub retransmits: Option<u64>,
}

/// The packet counts of an iperf3 UDP run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IperfUdp {
    /// `end.sum.packets − end.sum.lost_packets`.
    pub received_packets: f64,
    /// `end.sum.seconds`.
    pub seconds: f64,
    /// `end.sum.lost_percent`.
    pub lost_percent: f64,
}

/// Parse iperf3's `-J` output, failing on its `error` field.
fn iperf_json(text: &str) -> Result<Value> {
    let start = text
        .find('{')
        .context("no JSON object in iperf3's output")?;
    let json: Value =
        serde_json::from_str(&text[start..]).context("iperf3's output is not valid JSON")?;
    if let Some(error) = json.get("error").and_then(Value::as_str) {
        bail!("iperf3 reported: {error}");
    }
    Ok(json)
}

fn number(json: &Value, path: &[&str]) -> Result<f64> {
    let mut node = json;
    for key in path {
        node = node
            .get(key)
            .with_context(|| format!("iperf3 JSON has no {}", path.join(".")))?;
    }
    node.as_f64()
        .with_context(|| format!("iperf3 JSON {} is not a number", path.join(".")))
}

/// Receiver Gbit/s and bytes of `iperf3 -J` TCP output.
pub fn parse_iperf_tcp(text: &str) -> Result<IperfTcp> {
    let json = iperf_json(text)?;
    let rates: Vec<f64> = json
        .get("intervals")
        .and_then(Value::as_array)
        .map(|intervals| {
            intervals
                .iter()
                .filter_map(|i| i.get("sum")?.get("bits_per_second")?.as_f64())
                .collect()
        })
        .unwrap_or_default();
    let best = rates.iter().copied().fold(0.0, f64::max);
    let stalled = rates.iter().filter(|rate| **rate < best * 0.1).count();
    Ok(IperfTcp {
        bits_per_second: number(&json, &["end", "sum_received", "bits_per_second"])?,
        bytes: number(&json, &["end", "sum_received", "bytes"])?,
        intervals: u32::try_from(rates.len()).unwrap_or(u32::MAX),
        stalled_intervals: u32::try_from(stalled).unwrap_or(u32::MAX),
        retransmits: json
            .get("end")
            .and_then(|end| end.get("sum_sent"))
            .and_then(|sent| sent.get("retransmits"))
            .and_then(Value::as_u64),
    })
}

/// Received packets, duration and loss of `iperf3 -u -J` output (iperf3
/// 3.12: `end.sum` holds the sender's packet count and the receiver's loss
/// count, `end.sum.seconds` the test length).
pub fn parse_iperf_udp(text: &str) -> Result<IperfUdp> {
    let json = iperf_json(text)?;
    let packets = number(&json, &["end", "sum", "packets"])?;
    let lost = number(&json, &["end", "sum", "lost_packets"])?;
    let seconds = number(&json, &["end", "sum", "seconds"])?;
    if seconds <= 0.0 {
        bail!("iperf3 UDP run of {seconds} s");
    }
    Ok(IperfUdp {
        received_packets: packets - lost,
        seconds,
        lost_percent: number(&json, &["end", "sum", "lost_percent"])?,
    })
}

/// Per-reply times and the summary of `ping` (iputils) output.
pub fn parse_ping(text: &str) -> Result<PingSample> {
    let mut times_us: Vec<f64> = Vec::new();
    for line in text.lines() {
        let Some((_, rest)) = line.split_once("time=") else {
            continue;
        };
        let value = rest.split_whitespace().next().unwrap_or_default();
        let unit = rest.split_whitespace().nth(1).unwrap_or("ms");
        let value: f64 = value
            .parse()
            .with_context(|| format!("reply time in {line:?}"))?;
        let scale = match unit {
            "ms" => 1e3,
            "s" => 1e6,
            "us" | "µs" => 1.0,
            other => bail!("unknown time unit {other:?} in {line:?}"),
        };
        times_us.push(value * scale);
    }
    let (sent, received) = text
        .lines()
        .find_map(|line| {
            let (sent, rest) = line.split_once(" packets transmitted, ")?;
            let received = rest.split_whitespace().next()?;
            Some((sent.trim().parse().ok()?, received.parse().ok()?))
        })
        .context("no `N packets transmitted, M received` line")?;
    let avg_ms = text
        .lines()
        .find_map(|line| {
            let (label, values) = line.split_once(" = ")?;
            if !label.starts_with("rtt") && !label.starts_with("round-trip") {
                return None;
            }
            values.split('/').nth(1)?.parse::<f64>().ok()
        })
        .context("no `rtt min/avg/max/mdev` summary (no reply at all?)")?;
    if times_us.is_empty() {
        bail!("no per-reply times");
    }
    times_us.sort_by(f64::total_cmp);
    Ok(PingSample {
        p50_us: crate::report::percentile_sorted(&times_us, 50.0),
        avg_us: avg_ms * 1e3,
        sent,
        received,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snmp_udp_counters() {
        let text = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
            Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors\n\
            Udp: 625905 0 67343 125354 67343\n\
            UdpLite: InDatagrams NoPorts\nUdpLite: 0 0\n";
        let udp = parse_snmp_udp(text).unwrap();
        assert_eq!(udp["RcvbufErrors"], 67343);
        assert_eq!(udp["OutDatagrams"], 125354);
        assert_eq!(udp.len(), 5);
    }

    const TCP_JSON: &str = r#"{"start":{"connected":[]},"intervals":[],
        "end":{"sum_sent":{"bytes":5000000000,"bits_per_second":8.0e9,"retransmits":3},
               "sum_received":{"seconds":5.0,"bytes":4900000000,"bits_per_second":7.84e9}}}"#;

    const UDP_JSON: &str = r#"{"end":{"sum":{"start":0,"end":1.004216,"seconds":1.004216,
        "bytes":24281600,"bits_per_second":194232017.2,"jitter_ms":0.004,
        "lost_packets":257340,"packets":379400,"lost_percent":67.83,"sender":true}}}"#;

    #[test]
    fn tcp_reads_the_receiver_side() {
        let r = parse_iperf_tcp(TCP_JSON).unwrap();
        assert_eq!(r.bits_per_second, 7.84e9);
        assert_eq!(r.bytes, 4.9e9);
        assert_eq!((r.intervals, r.stalled_intervals), (0, 0));
        let stalling = r#"{"intervals":[{"sum":{"bits_per_second":1.2e10}},
            {"sum":{"bits_per_second":0.0}},{"sum":{"bits_per_second":1.1e9}},
            {"sum":{"bits_per_second":1.3e10}}],
            "end":{"sum_received":{"bytes":1,"bits_per_second":1.0}}}"#;
        let r = parse_iperf_tcp(stalling).unwrap();
        assert_eq!((r.intervals, r.stalled_intervals), (4, 2));
    }

    #[test]
    fn udp_counts_received_packets() {
        let r = parse_iperf_udp(UDP_JSON).unwrap();
        assert_eq!(r.received_packets, 122060.0);
        assert!((r.received_packets / r.seconds - 121547.6).abs() < 1.0);
        assert_eq!(r.lost_percent, 67.83);
    }

    #[test]
    fn iperf_errors_are_reported() {
        let error =
            parse_iperf_tcp(r#"{"start":{},"error":"unable to connect to server"}"#).unwrap_err();
        assert!(format!("{error:#}").contains("unable to connect"));
        assert!(parse_iperf_tcp("not json").is_err());
        assert!(parse_iperf_udp(TCP_JSON).is_err());
    }

    #[test]
    fn ping_median_and_summary() {
        let text = "PING 10.213.5.3 (10.213.5.3) 56(84) bytes of data.\n\
            64 bytes from 10.213.5.3: icmp_seq=1 ttl=64 time=0.214 ms\n\
            64 bytes from 10.213.5.3: icmp_seq=2 ttl=64 time=0.174 ms\n\
            64 bytes from 10.213.5.3: icmp_seq=3 ttl=64 time=0.143 ms\n\
            \n--- 10.213.5.3 ping statistics ---\n\
            4 packets transmitted, 3 received, 25% packet loss, time 408ms\n\
            rtt min/avg/max/mdev = 0.143/0.177/0.214/0.029 ms\n";
        let sample = parse_ping(text).unwrap();
        assert!((sample.p50_us - 174.0).abs() < 1e-9);
        assert!((sample.avg_us - 177.0).abs() < 1e-9);
        assert_eq!((sample.sent, sample.received), (4, 3));
    }

    #[test]
    fn ping_without_replies_is_an_error() {
        let text = "--- 10.0.0.9 ping statistics ---\n\
            3 packets transmitted, 0 received, 100% packet loss, time 2030ms\n";
        assert!(parse_ping(text).is_err());
    }

    #[test]
    fn stat_fields_after_the_command_name() {
        let text =
            "4242 (weft (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 5 0 1234 0 0";
        assert_eq!(parse_stat_cpu_ticks(text).unwrap(), 325);
        assert!(parse_stat_cpu_ticks("4242 (x) S 1").is_err());
    }

    #[test]
    fn rss_in_kib() {
        let text = "Name:\tweft\nVmPeak:\t  300000 kB\nVmRSS:\t   17916 kB\nThreads:\t6\n";
        assert_eq!(parse_vm_rss_kib(text).unwrap(), 17916);
        assert!(parse_vm_rss_kib("Name:\tx\n").is_err());
    }

    #[test]
    fn listening_sockets_from_proc() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
            0: 0305D50A:1451 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1060 1\n\
            1: 0305D50A:1452 0205D50A:9C40 01 00000000:00000000 00:00000000 00000000     0        0 1061 1\n";
        assert!(table_has_listener(text, 5201));
        assert!(!table_has_listener(text, 5202));
        assert!(!table_has_listener(text, 80));
    }

    #[test]
    fn cpu_per_gb() {
        let sample = TcpSample {
            gbps: 8.0,
            bytes_received: 5e9,
            switch_cpu_seconds: Some(4.0),
            intervals: 5,
            stalled_intervals: 0,
            retransmits: None,
        };
        assert_eq!(sample.cpu_seconds_per_gb(), Some(0.8));
        let kernel = TcpSample {
            switch_cpu_seconds: None,
            ..sample
        };
        assert_eq!(kernel.cpu_seconds_per_gb(), None);
    }
}
