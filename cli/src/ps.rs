//! `weft ps`: the sandboxes `weft run` started and that still run.
//!
//! `weft run` labels each endpoint it connects (`weft.run.pid`,
//! `weft.run.command`, `weft.run.started`: Unix seconds); `ps` asks the
//! daemon for every network's endpoints and groups those labelled ones by
//! sandbox. Nothing else is stored: a sandbox leaves the list when `weft
//! run` disconnects it, as its command ends.

use std::collections::BTreeMap;

use anyhow::Result;
use hyper::Method;
use serde_json::Value;
use weft_cnm::model::{Endpoint, Network};

use crate::client::Client;
use crate::network::{network_path, port_lines, render_table};

/// Label of a `weft run` endpoint: the sandbox process's pid.
pub const LABEL_PID: &str = "weft.run.pid";
/// Label of a `weft run` endpoint: its command line.
pub const LABEL_COMMAND: &str = "weft.run.command";
/// Label of a `weft run` endpoint: when it started, Unix seconds.
pub const LABEL_STARTED: &str = "weft.run.started";

/// `weft ps` options.
#[derive(Debug, clap::Args)]
pub struct PsArgs {
    /// Output format.
    #[arg(long, default_value = "table", value_parser = ["table", "json"])]
    pub format: String,
    /// Only the pids, one a line.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// One sandbox of `weft run`.
#[derive(Debug, serde::Serialize)]
struct Sandbox {
    pid: String,
    name: String,
    command: String,
    started: String,
    networks: Vec<String>,
    addresses: Vec<String>,
    ports: Vec<String>,
}

/// List them.
pub async fn run(client: &Client, args: PsArgs) -> Result<()> {
    let networks: Vec<Network> = client
        .call(Method::GET, "/v1/networks", None::<&()>)
        .await?;
    let mut sandboxes: BTreeMap<String, Sandbox> = BTreeMap::new();
    for network in networks {
        let details: Value = client
            .call(Method::GET, &network_path(&network.name, ""), None::<&()>)
            .await?;
        let endpoints: Vec<Endpoint> =
            serde_json::from_value(details["endpoints"].clone()).unwrap_or_default();
        for endpoint in endpoints {
            let Some(pid) = endpoint.labels.get(LABEL_PID).cloned() else {
                continue;
            };
            let label = |key: &str| endpoint.labels.get(key).cloned().unwrap_or_default();
            let entry = sandboxes.entry(pid.clone()).or_insert_with(|| Sandbox {
                pid,
                name: endpoint.name.clone(),
                command: label(LABEL_COMMAND),
                started: label(LABEL_STARTED),
                networks: Vec::new(),
                addresses: Vec::new(),
                ports: Vec::new(),
            });
            entry.networks.push(endpoint.network.clone());
            entry
                .addresses
                .extend(endpoint.addresses.iter().map(|a| a.addr().to_string()));
            entry.ports.extend(port_lines(&endpoint));
        }
    }
    let mut list: Vec<Sandbox> = sandboxes.into_values().collect();
    list.sort_by_key(|s| s.started.parse::<u64>().unwrap_or(0));
    if args.quiet {
        for s in &list {
            println!("{}", s.pid);
        }
    } else if args.format == "json" {
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let rows: Vec<[String; 7]> = list
            .iter()
            .map(|s| {
                let age = s.started.parse::<u64>().map_or_else(
                    |_| "?".to_owned(),
                    |t| format!("{}s", now.saturating_sub(t)),
                );
                [
                    s.pid.clone(),
                    s.name.clone(),
                    s.networks.join(","),
                    s.addresses.join(","),
                    s.ports.join(", "),
                    age,
                    s.command.clone(),
                ]
            })
            .collect();
        let header = [
            "PID",
            "NAME",
            "NETWORKS",
            "ADDRESSES",
            "PORTS",
            "UP",
            "COMMAND",
        ]
        .map(str::to_owned);
        print!("{}", render_table(&header, &rows));
    }
    Ok(())
}
