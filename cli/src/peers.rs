//! `weft peers`: the cluster's members as this host sees them (name, the
//! first 8 hex digits of the node id that tells hosts of one name apart,
//! gossip address, SWIM state), and the tunnel's counters, among them VXLAN
//! dropped because its sender is neither a member nor a static peer.

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
        "\nvxlan: rx {} tx {} dropped: not a member {}, invalid {}\n",
        count("tunnel", "rx"),
        count("tunnel", "tx"),
        count("tunnel", "dropped_not_member"),
        count("tunnel", "dropped_invalid"),
    ));
    out.push_str(&format!(
        "gossip dropped: rejected {}, malformed {}, swim errors {}\n",
        count("gossip", "rejected"),
        count("gossip", "malformed"),
        count("gossip", "swim_errors"),
    ));
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
    }
}
