//! `weft version` and `weft info`: what is installed and what the daemon
//! is doing, as `docker version` and `docker info` show it.
//!
//! `version` prints the client's version, then asks the daemon for its own
//! (`GET /v1/version`); a daemon that does not answer is an error after
//! the client's part, so a script still learns which client it has.
//! `info` prints `GET /v1/info`: version, uptime, socket, state directory,
//! DNS upstreams, counts of networks, endpoints and sandboxes, and the
//! cluster (this host's name and address, members alive of all).

use anyhow::{Context, Result};
use hyper::Method;
use serde_json::Value;

use crate::client::Client;

/// `--format` of `version` and `info`.
#[derive(Debug, clap::Args)]
pub struct InfoArgs {
    /// Output format.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    pub format: String,
}

/// `weft version`.
pub async fn version(client: &Client, args: InfoArgs) -> Result<()> {
    let client_version = env!("CARGO_PKG_VERSION");
    let server = client
        .call::<(), Value>(Method::GET, "/v1/version", None)
        .await;
    if args.format == "json" {
        let server = server.as_ref().ok().cloned().unwrap_or(Value::Null);
        let all = serde_json::json!({"client": {"version": client_version}, "server": server});
        println!("{}", serde_json::to_string_pretty(&all)?);
    } else {
        println!("Client:\n Version:  {client_version}");
    }
    let server = server.context("asking the daemon for its version")?;
    if args.format != "json" {
        println!(
            "Server:\n Version:  {}\n PID:      {}",
            server["version"].as_str().unwrap_or("?"),
            server["pid"]
        );
    }
    Ok(())
}

/// `weft info`.
pub async fn info(client: &Client, socket: &std::path::Path, args: InfoArgs) -> Result<()> {
    let info: Value = client.call(Method::GET, "/v1/info", None::<&()>).await?;
    if args.format == "json" {
        println!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(());
    }
    print!("{}", render(&info, socket));
    Ok(())
}

/// The text form of `GET /v1/info`.
fn render(info: &Value, socket: &std::path::Path) -> String {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let upstreams: Vec<String> = info["dns_upstreams"]
        .as_array()
        .map(|a| a.iter().map(text).collect())
        .unwrap_or_default();
    let mut out = format!(
        "Server Version: {}\nPID: {}\nUptime: {}\nSocket: {}\nState Dir: {}\nDNS Upstreams: {}\nNetworks: {}\nEndpoints: {}\nSandboxes: {}\n",
        text(&info["version"]),
        text(&info["pid"]),
        uptime(info["uptime_seconds"].as_u64().unwrap_or(0)),
        socket.display(),
        text(&info["state_dir"]),
        if upstreams.is_empty() { "none".to_owned() } else { upstreams.join(", ") },
        text(&info["networks"]),
        text(&info["endpoints"]),
        text(&info["sandboxes"]),
    );
    match info.get("cluster").filter(|c| !c.is_null()) {
        Some(c) => out.push_str(&format!(
            "Cluster: {} at {}, {} of {} other members alive\n",
            text(&c["name"]),
            text(&c["address"]),
            text(&c["alive"]),
            text(&c["members"])
        )),
        None => {
            out.push_str("Cluster: none (start the daemon with --listen for overlay networks)\n")
        }
    }
    if let Some(icmp) = info.get("icmp_echo").and_then(Value::as_str) {
        out.push_str(&format!("Outbound ICMP Echo: {icmp}\n"));
    }
    out
}

/// `1d 2h 3m 4s`, leading zero units left out.
fn uptime(mut secs: u64) -> String {
    let mut parts = Vec::new();
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if secs >= size || !parts.is_empty() {
            parts.push(format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    parts.push(format!("{secs}s"));
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_reads_like_a_clock() {
        assert_eq!(uptime(5), "5s");
        assert_eq!(uptime(3_600), "1h 0m 0s");
        assert_eq!(uptime(90_061), "1d 1h 1m 1s");
    }

    #[test]
    fn info_shows_counts_and_the_cluster() {
        let info = serde_json::json!({
            "version": "0.1.0", "pid": 7, "uptime_seconds": 61, "state_dir": "/var/lib/weft",
            "dns_upstreams": ["10.0.0.53:53"], "networks": 2, "endpoints": 3, "sandboxes": 2,
            "cluster": {"name": "h1", "address": "192.0.2.1:7946", "members": 2, "alive": 1},
        });
        let text = render(&info, std::path::Path::new("/run/weft/weft.sock"));
        assert!(text.contains("Uptime: 1m 1s\n"), "{text}");
        assert!(
            text.contains("Networks: 2\nEndpoints: 3\nSandboxes: 2\n"),
            "{text}"
        );
        assert!(
            text.contains("Cluster: h1 at 192.0.2.1:7946, 1 of 2 other members alive"),
            "{text}"
        );
    }
}
