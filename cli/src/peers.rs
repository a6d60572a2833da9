//! `weft peers`: the cluster's members as this host sees them (name, the
//! first 8 hex digits of the node id that tells hosts of one name apart,
//! gossip address, SWIM state), and the tunnel's counters, among them VXLAN
//! dropped because its sender is neither a member nor a static peer, and
//! the QUIC connections of encrypted networks with their counters.

use anyhow::Result;
use hyper::Method;
use serde_json::Value;

use crate::client::Client;

/// `weft peers` options.
#[derive(Debug, clap::Args)]
pub struct PeersArgs {
    /// Output format.
    #[arg(long, default_value = "table", value_parser = ["table", "json"])]
    pub format: String,
    /// Same as `--format json`.
    #[arg(long)]
    pub json: bool,
}

/// Print the members and counters.
pub async fn run(client: &Client, args: PeersArgs) -> Result<()> {
    let report: Value = client.call(Method::GET, "/v1/peers", None::<&()>).await?;
    if args.json || args.format == "json" {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", table(&report));
    }
    Ok(())
}

/// The table: this host first, then every member; the counters below.
fn table(report: &Value) -> String {
    let text = |v: &Value| v.as_str().unwrap_or("").to_owned();
    let short = |v: &Value| v.as_str().unwrap_or("").chars().take(8).collect::<String>();
    let mut rows: Vec<[String; 4]> = vec![[
        format!("{} (this host)", text(&report["name"])),
        short(&report["id"]),
        text(&report["address"]),
        "alive".to_owned(),
    ]];
    for member in report["members"].as_array().into_iter().flatten() {
        rows.push([
            text(&member["name"]),
            short(&member["id"]),
            text(&member["address"]),
            text(&member["state"]),
        ]);
    }
    let header = ["NAME", "NODE ID", "ADDRESS", "STATE"].map(str::to_owned);
    let mut out = crate::network::render_table(&header, &rows);
    let count = |section: &str, key: &str| report[section][key].as_u64().unwrap_or(0);
    out.push_str(&format!(
        "\ntunnel: rx {} tx {} dropped: not a member {}, invalid {}, unencrypted {}\n",
        count("tunnel", "rx"),
        count("tunnel", "tx"),
        count("tunnel", "dropped_not_member"),
        count("tunnel", "dropped_invalid"),
        count("tunnel", "dropped_unencrypted"),
    ));
    if let Some(quic) = report.get("quic") {
        out.push_str(&quic_table(quic));
    }
    out.push_str(&format!(
        "gossip dropped: rejected {}, malformed {}, swim errors {}\n",
        count("gossip", "rejected"),
        count("gossip", "malformed"),
        count("gossip", "swim_errors"),
    ));
    out
}

/// The QUIC connections (encrypted networks), one row each.
fn quic_table(quic: &Value) -> String {
    let number = |v: &Value| v.as_u64().map_or_else(String::new, |n| n.to_string());
    let rows: Vec<[String; 8]> = quic["peers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|peer| {
            let rtt = peer["rtt_us"].as_u64().unwrap_or(0);
            [
                peer["remote"].as_str().unwrap_or("").to_owned(),
                peer["state"].as_str().unwrap_or("").to_owned(),
                number(&peer["tx_datagrams"]),
                number(&peer["rx_datagrams"]),
                number(&peer["lost_packets"]),
                format!("{}.{:03} ms", rtt / 1000, rtt % 1000),
                number(&peer["path_mtu"]),
                peer["opened_by"].as_str().unwrap_or("").to_owned(),
            ]
        })
        .collect();
    let count = |key: &str| quic["counters"][key].as_u64().unwrap_or(0);
    let mut out = format!(
        "\nquic (encrypted networks): {} established, {} failed handshakes\n",
        count("established"),
        count("handshake_failures"),
    );
    if !rows.is_empty() {
        let header = [
            "REMOTE",
            "STATE",
            "TX",
            "RX",
            "LOST",
            "RTT",
            "PATH MTU",
            "OPENED BY",
        ]
        .map(str::to_owned);
        out.push_str(&crate::network::render_table(&header, &rows));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_lists_this_host_members_and_counters() {
        let report = serde_json::json!({
            "name": "h1", "id": "0123456789abcdef0123456789abcdef", "address": "192.0.2.1:7946",
            "members": [
                {"name": "h2", "id": "1123456789abcdef0123456789abcdef", "address": "192.0.2.2:7946", "state": "alive"},
                {"name": "h3", "id": "2123456789abcdef0123456789abcdef", "address": "192.0.2.3:7946", "state": "dead"},
            ],
            "tunnel": {"rx": 5, "tx": 6, "dropped_not_member": 7, "dropped_invalid": 0},
            "gossip": {"rejected": 1, "malformed": 0, "swim_errors": 0},
        });
        let text = table(&report);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            ["NAME", "NODE", "ID", "ADDRESS", "STATE"]
        );
        assert!(lines[1].starts_with("h1 (this host)"), "{text}");
        assert!(lines[1].contains("01234567 "), "{text}");
        assert_eq!(
            lines[3].split_whitespace().collect::<Vec<_>>(),
            ["h3", "21234567", "192.0.2.3:7946", "dead"]
        );
        assert!(text.contains("not a member 7"), "{text}");
        assert!(text.contains("rejected 1"), "{text}");
        assert!(
            !text.contains("quic"),
            "no QUIC section without a key: {text}"
        );
    }

    #[test]
    fn quic_connections_are_listed() {
        let report = serde_json::json!({
            "name": "h1", "id": "0123456789abcdef0123456789abcdef", "address": "192.0.2.1:7946",
            "members": [], "tunnel": {}, "gossip": {},
            "quic": {"counters": {"established": 2, "handshake_failures": 1, "unreachable": 0},
                     "peers": [{"remote": "192.0.2.2:7947", "state": "established", "opened_by": "client",
                                "tx_datagrams": 10, "rx_datagrams": 9, "lost_packets": 1,
                                "rtt_us": 1250, "path_mtu": 1472}]},
        });
        let text = table(&report);
        assert!(
            text.contains("2 established, 1 failed handshakes"),
            "{text}"
        );
        let row = text
            .lines()
            .find(|l| l.starts_with("192.0.2.2:7947"))
            .expect(&text);
        assert_eq!(
            row.split_whitespace().collect::<Vec<_>>(),
            [
                "192.0.2.2:7947",
                "established",
                "10",
                "9",
                "1",
                "1.250",
                "ms",
                "1472",
                "client"
            ]
        );
    }
}
