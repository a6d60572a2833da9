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
    pub network: String,
    /// Only this endpoint (its name in the network).
    #[arg(long, value_name = "NAME")]
    pub endpoint: Option<String>,
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
    let path = format!("/v1/networks/{}/capture", args.network);
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
