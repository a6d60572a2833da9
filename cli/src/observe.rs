//! `weft capture` (frames as pcapng, to a file or stdout) and `weft fdb`
//! (a network's forwarding table): the client side of
//! `weft_cnm::capture` and `GET /v1/networks/NAME/fdb`.

use std::fs::File;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use hyper::Method;
use serde_json::Value;
use weft_cnm::capture::CaptureRequest;

use crate::client::Client;

/// `weft capture` options.
#[derive(Debug, clap::Args)]
pub struct CaptureArgs {
    /// The network.
    #[arg(required_unless_present = "overlay")]
    pub network: Option<String>,
    /// Only this endpoint (its name in the network).
    #[arg(long, value_name = "NAME")]
    pub endpoint: Option<String>,
    /// The tunnel instead of a network: the encapsulated datagrams (VXLAN
    /// over UDP) between this host and the other hosts of the cluster.
    #[arg(long, conflicts_with_all = ["network", "endpoint"])]
    pub overlay: bool,
    /// Write the pcapng here (`-`: stdout, for `| tshark -r -`).
    #[arg(short = 'w', long = "write", value_name = "FILE", default_value = "-")]
    pub write: String,
    /// Stop after this many seconds.
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// Stop after this many frames.
    #[arg(short = 'c', long, value_name = "COUNT")]
    pub count: Option<u64>,
    /// Bytes kept of each frame [default: 262144, whole GSO segments].
    #[arg(long, value_name = "BYTES")]
    pub snap_len: Option<u32>,
    /// MiB of frames that may wait for this reader before frames are
    /// dropped (the switch never waits) [default: 16].
    #[arg(long, value_name = "MIB")]
    pub ring_mib: Option<u32>,
}

/// Capture until the daemon ends the session (duration, count) or this
/// process is stopped; say what was captured and dropped when writing to
/// a file.
pub async fn capture(client: &Client, args: CaptureArgs) -> Result<()> {
    let to_stdout = args.write == "-";
    if to_stdout && std::io::stdout().is_terminal() {
        bail!("pcapng is binary: give -w FILE, or pipe stdout (weft capture NET | tshark -r -)");
    }
    let request = CaptureRequest {
        endpoint: args.endpoint,
        duration_secs: args.duration,
        count: args.count,
        snap_len: args.snap_len,
        ring_mib: args.ring_mib,
    };
    let mut out: Box<dyn Write> = if to_stdout {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(File::create(&args.write).with_context(|| format!("creating {}", args.write))?)
    };
    let path = match &args.network {
        Some(network) if !args.overlay => format!("/v1/networks/{network}/capture"),
        _ => "/v1/capture/overlay".to_owned(),
    };
    client
        .stream(Method::POST, &path, &request, |chunk| {
            out.write_all(chunk)?;
            out.flush()?;
            Ok(())
        })
        .await?;
    drop(out);
    if !to_stdout {
        let (frames, dropped) = summary(&PathBuf::from(&args.write))?;
        eprintln!("{frames} frames captured, {dropped} dropped (the reader was behind)");
    }
    Ok(())
}

/// Frames and drops of a finished pcapng file (its statistics blocks).
fn summary(path: &PathBuf) -> Result<(u64, u64)> {
    use pcap_file::pcapng::blocks::interface_statistics::InterfaceStatisticsOption;
    use pcap_file::pcapng::{Block, PcapNgReader};
    let file = File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut reader = PcapNgReader::new(std::io::BufReader::new(file))
        .with_context(|| format!("{} is not pcapng", path.display()))?;
    let (mut frames, mut dropped) = (0, 0);
    while let Some(block) = reader.next_block() {
        match block? {
            Block::EnhancedPacket(_) => frames += 1,
            Block::InterfaceStatistics(isb) => {
                for option in &isb.options {
                    if let InterfaceStatisticsOption::IsbIfDrop(n) = option {
                        dropped = *n;
                    }
                }
            }
            _ => {}
        }
    }
    Ok((frames, dropped))
}

/// `weft fdb` options.
#[derive(Debug, clap::Args)]
pub struct FdbArgs {
    /// The network.
    pub network: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Print a network's forwarding table.
pub async fn fdb(client: &Client, args: FdbArgs) -> Result<()> {
    let path = format!("/v1/networks/{}/fdb", args.network);
    let rows: Vec<Value> = client.call(Method::GET, &path, None::<&()>).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let text = |v: &Value| v.as_str().unwrap_or("").to_owned();
    let mut table = vec![[
        "MAC".to_owned(),
        "KIND".to_owned(),
        "ENDPOINT/HOST".to_owned(),
        "AGE".to_owned(),
    ]];
    for row in &rows {
        let at = match (row["endpoint"].as_str(), row["host"].as_str()) {
            (Some(endpoint), _) => endpoint.to_owned(),
            (None, Some(host)) => host.to_owned(),
            (None, None) => "-".to_owned(),
        };
        let age = if text(&row["kind"]) == "learned" {
            format!("{:.0}s", row["age_seconds"].as_f64().unwrap_or(0.0))
        } else {
            "-".to_owned()
        };
        table.push([text(&row["mac"]), text(&row["kind"]), at, age]);
    }
    let widths: Vec<usize> = (0..4)
        .map(|i| table.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    for row in table {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
    Ok(())
}

/// `weft events` options.
#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    /// One JSON object per line, as the daemon sends them.
    #[arg(long)]
    pub json: bool,
    /// First show the kept events (the daemon keeps the last 1000) since
    /// this time: a duration ago (`10m`, `1h30m`), RFC 3339
    /// (`2026-12-03T15:00:00Z`) or Unix seconds.
    #[arg(long, value_name = "TIME", value_parser = parse_since)]
    pub since: Option<f64>,
}

/// `--since` as Unix seconds.
fn parse_since(text: &str) -> Result<f64, String> {
    let now = std::time::SystemTime::now();
    let at = if let Ok(seconds) = text.parse::<f64>() {
        return Ok(seconds);
    } else if let Ok(ago) = humantime::parse_duration(text) {
        now.checked_sub(ago).unwrap_or(std::time::UNIX_EPOCH)
    } else if let Ok(at) = humantime::parse_rfc3339_weak(text) {
        at
    } else {
        return Err(
            "give a duration ago (10m, 1h30m), RFC 3339 (2026-12-03T15:00:00Z) or Unix seconds"
                .into(),
        );
    };
    Ok(at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64()))
}

/// Print events as they happen, until stopped (like `docker events`).
pub async fn events(client: &Client, args: EventsArgs) -> Result<()> {
    let path = match args.since {
        Some(seconds) => format!("/v1/events?since={seconds:.3}"),
        None => "/v1/events".to_owned(),
    };
    let mut pending = Vec::new();
    client
        .stream(Method::GET, &path, &(), |chunk| {
            pending.extend_from_slice(chunk);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let mut out = std::io::stdout().lock();
                if args.json {
                    out.write_all(&line)?;
                } else if let Ok(event) = serde_json::from_slice::<Value>(&line) {
                    writeln!(out, "{}", event_line(&event))?;
                }
                out.flush()?;
            }
            Ok(())
        })
        .await
}

/// `TIME TYPE ACTION NETWORK [ENDPOINT SANDBOX ADDRESSES]`, as `docker
/// events` prints.
fn event_line(event: &Value) -> String {
    let text = |k: &str| event[k].as_str().unwrap_or("").to_owned();
    let mut line = format!(
        "{} {} {} {}",
        text("time"),
        text("type"),
        text("action"),
        text("network")
    );
    for key in ["endpoint", "sandbox", "peer"] {
        if let Some(v) = event[key].as_str() {
            line.push_str(&format!(" {key}={v}"));
        }
    }
    if let Some(addresses) = event["addresses"].as_array() {
        let list: Vec<&str> = addresses.iter().filter_map(Value::as_str).collect();
        if !list.is_empty() {
            line.push_str(&format!(" addresses={}", list.join(",")));
        }
    }
    line
}

/// `weft stats` options.
#[derive(Debug, clap::Args)]
pub struct StatsArgs {
    /// Print one sample (over one second) and exit.
    #[arg(long)]
    pub no_stream: bool,
    /// Only these networks (default: all).
    pub networks: Vec<String>,
}

/// One endpoint's counters at one moment.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    rx_frames: u64,
    rx_bytes: u64,
    tx_frames: u64,
    tx_bytes: u64,
    drops: u64,
}

async fn sample_all(client: &Client, only: &[String]) -> Result<Vec<((String, String), Sample)>> {
    let networks: Vec<Value> = client
        .call(Method::GET, "/v1/networks", None::<&()>)
        .await?;
    let mut samples = Vec::new();
    for network in networks {
        let name = network["name"].as_str().unwrap_or("").to_owned();
        if !only.is_empty() && !only.contains(&name) {
            continue;
        }
        let details: Value = client
            .call(Method::GET, &format!("/v1/networks/{name}"), None::<&()>)
            .await?;
        for e in details["endpoints"].as_array().cloned().unwrap_or_default() {
            let c = &e["counters"];
            let n = |k: &str| c[k].as_u64().unwrap_or(0);
            let drops = c["drops"]
                .as_object()
                .map(|d| d.values().filter_map(Value::as_u64).sum())
                .unwrap_or(0);
            let endpoint = e["name"].as_str().unwrap_or("").to_owned();
            samples.push((
                (name.clone(), endpoint),
                Sample {
                    rx_frames: n("rx_frames"),
                    rx_bytes: n("rx_bytes"),
                    tx_frames: n("tx_frames"),
                    tx_bytes: n("tx_bytes"),
                    drops,
                },
            ));
        }
    }
    Ok(samples)
}

/// `1.2 MB/s` style, bytes per second.
fn rate(bytes_per_second: f64) -> String {
    const UNITS: [&str; 4] = ["B", "kB", "MB", "GB"];
    let mut value = bytes_per_second;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    format!("{value:.1} {}/s", UNITS[unit])
}

/// Live per-endpoint rates, like `docker stats`: a sample each second
/// (`--no-stream`: one, then exit). "OUT" is what the sandbox sent (the
/// switch read it from its port), "IN" what it received.
pub async fn stats(client: &Client, args: StatsArgs) -> Result<()> {
    let mut before = sample_all(client, &args.networks).await?;
    let mut at = std::time::Instant::now();
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let now = sample_all(client, &args.networks).await?;
        let seconds = at.elapsed().as_secs_f64().max(0.001);
        at = std::time::Instant::now();
        let previous: std::collections::HashMap<_, _> = before.iter().cloned().collect();
        let mut rows = vec![[
            "NETWORK".to_owned(),
            "ENDPOINT".to_owned(),
            "OUT".to_owned(),
            "OUT FRAMES".to_owned(),
            "IN".to_owned(),
            "IN FRAMES".to_owned(),
            "DROPS".to_owned(),
        ]];
        for (key, s) in &now {
            let p = previous.get(key).copied().unwrap_or_default();
            let per = |a: u64, b: u64| a.saturating_sub(b) as f64 / seconds;
            rows.push([
                key.0.clone(),
                key.1.clone(),
                rate(per(s.rx_bytes, p.rx_bytes)),
                format!("{:.0}/s", per(s.rx_frames, p.rx_frames)),
                rate(per(s.tx_bytes, p.tx_bytes)),
                format!("{:.0}/s", per(s.tx_frames, p.tx_frames)),
                s.drops.to_string(),
            ]);
        }
        let widths: Vec<usize> = (0..7)
            .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
            .collect();
        let mut text = String::new();
        if !args.no_stream && std::io::stdout().is_terminal() {
            text.push_str("\x1b[2J\x1b[H");
        }
        for row in rows {
            let cells: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect();
            text.push_str(cells.join("  ").trim_end());
            text.push('\n');
        }
        print!("{text}");
        std::io::stdout().flush()?;
        if args.no_stream {
            return Ok(());
        }
        before = now;
    }
}
