//! Prometheus metrics: `GET /metrics` on the API socket, and on
//! `--metrics ADDR:PORT` when the daemon is asked to listen there.
//!
//! # Theory of operation
//!
//! Nothing is counted for metrics' sake: a scrape reads the counters the
//! data path keeps anyway (per port, per tunnel port, the tunnel's own),
//! the forwarding tables' sizes, the cluster's members, and the process's
//! memory and data-path CPU time from `/proc`, and writes them in the
//! Prometheus text exposition format (version 0.0.4). [`collect`] gathers
//! a [`Snapshot`] from the controller; [`render`] is a pure function of
//! it, so the format is tested without a daemon.
//!
//! Names follow Prometheus' conventions: `weft_` prefix, base units in
//! the name (`_bytes`, `_seconds`), `_total` for counters, what varies in
//! labels (`network`, `endpoint`, `reason`, `host`, `state`). "rx" is what
//! the switch read from a port (the sandbox sent it), "tx" what it wrote
//! to the port (the sandbox received it).

use std::fmt::Write as _;

use weft_vswitch::counters::PortCountersSnapshot;

use crate::controller::Controller;

/// One network's figures.
#[derive(Debug, Clone, Default)]
pub struct NetworkFigures {
    /// Its name.
    pub name: String,
    /// Its driver.
    pub driver: String,
    /// Its endpoints' names and counters.
    pub endpoints: Vec<(String, Option<PortCountersSnapshot>)>,
    /// Entries of its forwarding table, by kind (`static`, `learned`,
    /// `remote`).
    pub fdb: Vec<(String, usize)>,
    /// Its tunnel ports' counters, by remote host.
    pub tunnel: Vec<(String, PortCountersSnapshot)>,
    /// Its NAT flows open now, by protocol (`udp` for UDP and ICMP echo).
    pub nat_flows: Vec<(String, usize)>,
    /// New NAT flows refused, by protocol and reason.
    pub nat_refused: Vec<(String, String, u64)>,
}

/// Everything one scrape shows.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The networks.
    pub networks: Vec<NetworkFigures>,
    /// Cluster members by state (`alive`, `suspect`, `dead`).
    pub members: Vec<(String, usize)>,
    /// Gossip datagrams rejected (bad key or format), malformed.
    pub gossip_rejected: u64,
    /// Gossip datagrams that opened but did not decode.
    pub gossip_malformed: u64,
    /// The embedded DNS server's answers, by kind.
    pub dns: Vec<(String, u64)>,
    /// Queries it was asked.
    pub dns_queries: Option<u64>,
    /// Queries it tried again at the next upstream.
    pub dns_upstream_retries: Option<u64>,
    /// Resident memory of the daemon, bytes.
    pub resident_bytes: Option<u64>,
    /// CPU time of the data-path thread, seconds.
    pub datapath_cpu_seconds: Option<f64>,
}

/// Gather a scrape's figures from the controller.
pub async fn collect(controller: &Controller) -> Snapshot {
    let mut snapshot = Snapshot::default();
    for network in controller.networks().await {
        let Ok(details) = controller.inspect(&network.name).await else {
            continue;
        };
        let mut figures = NetworkFigures {
            name: network.name.clone(),
            driver: network.driver.to_string(),
            ..NetworkFigures::default()
        };
        figures.endpoints = details
            .endpoints
            .iter()
            .map(|e| (e.endpoint.name.clone(), e.counters.clone()))
            .collect();
        if let Some(nat) = &details.nat {
            figures.nat_flows = vec![("udp".into(), nat.udp_flows), ("tcp".into(), nat.tcp_flows)];
            for (proto, refused) in [("udp", nat.udp_refused), ("tcp", nat.tcp_refused)] {
                for (reason, count) in [
                    ("table_full", refused.table_full),
                    ("network_share", refused.network_share),
                    ("sandbox_share", refused.sandbox_share),
                ] {
                    figures
                        .nat_refused
                        .push((proto.into(), reason.into(), count));
                }
            }
        }
        figures.tunnel = details
            .tunnel
            .iter()
            .map(|t| (t.host.to_string(), t.counters.clone()))
            .collect();
        if network.driver.has_interfaces() {
            if let Ok(rows) = controller.fdb(&network.name).await {
                for kind in ["static", "learned", "remote"] {
                    let count = rows.iter().filter(|r| r.kind == kind).count();
                    figures.fdb.push((kind.to_owned(), count));
                }
            }
        }
        snapshot.networks.push(figures);
    }
    if let Ok(peers) = controller.peers() {
        for state in ["alive", "suspect", "dead"] {
            let count = peers.members.iter().filter(|m| m.state == state).count();
            snapshot.members.push((state.to_owned(), count));
        }
        snapshot.gossip_rejected = peers.gossip.rejected;
        snapshot.gossip_malformed = peers.gossip.malformed;
    }
    if let Ok(c) = controller.dns_counters().await {
        snapshot.dns = vec![
            ("local".into(), c.local_answers.saturating_sub(c.nxdomain)),
            ("nxdomain".into(), c.nxdomain),
            ("forwarded".into(), c.forwarded_answers),
            ("servfail".into(), c.servfail),
            ("formerr".into(), c.formerr),
            ("notimp".into(), c.notimp),
            ("dropped".into(), c.dropped_queries),
        ];
        snapshot.dns_queries = Some(c.queries);
        snapshot.dns_upstream_retries = Some(c.upstream_retries);
    }
    snapshot.resident_bytes = resident_bytes();
    snapshot.datapath_cpu_seconds = thread_cpu_seconds("weft-datapath");
    snapshot
}

/// The daemon's resident memory (`VmRSS` of `/proc/self/status`).
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// User and system CPU time of this process's thread named `name`.
fn thread_cpu_seconds(name: &str) -> Option<f64> {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = u64::try_from(ticks).ok().filter(|t| *t > 0)?;
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
        // Fields after the command (which may hold spaces) are counted
        // from the closing parenthesis: utime and stime are the 12th and
        // 13th after it.
        let rest = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        return Some((utime + stime) as f64 / ticks as f64);
    }
    None
}

/// A label value, escaped as the exposition format wants.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// One metric family: its HELP and TYPE lines, then its samples.
struct Family<'a> {
    out: &'a mut String,
}

impl<'a> Family<'a> {
    fn new(out: &'a mut String, name: &str, kind: &str, help: &str) -> Self {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        Family { out }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", label(v)))
            .collect();
        if labels.is_empty() {
            let _ = writeln!(self.out, "{name} {value}");
        } else {
            let _ = writeln!(self.out, "{name}{{{}}} {value}", labels.join(","));
        }
    }
}

/// The exposition text of a snapshot.
pub fn render(s: &Snapshot) -> String {
    let mut out = String::new();
    let mut f = Family::new(
        &mut out,
        "weft_build_info",
        "gauge",
        "The daemon's version.",
    );
    f.sample(
        "weft_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1,
    );
    let mut f = Family::new(
        &mut out,
        "weft_network_endpoints",
        "gauge",
        "Endpoints attached to a network on this host.",
    );
    for n in &s.networks {
        f.sample(
            "weft_network_endpoints",
            &[("network", &n.name), ("driver", &n.driver)],
            n.endpoints.len(),
        );
    }
    let mut f = Family::new(&mut out, "weft_network_fdb_entries", "gauge", "Entries of a network's forwarding table, by kind (static: endpoints' own MACs; learned; remote: overlay endpoints on other hosts).");
    for n in &s.networks {
        for (kind, count) in &n.fdb {
            f.sample(
                "weft_network_fdb_entries",
                &[("network", &n.name), ("kind", kind)],
                count,
            );
        }
    }
    type Pick = fn(&PortCountersSnapshot) -> u64;
    let port_families: [(&str, &str, Pick); 4] = [
        (
            "weft_port_rx_frames_total",
            "Frames the switch read from an endpoint's port (the sandbox sent them).",
            |c| c.rx_frames,
        ),
        (
            "weft_port_rx_bytes_total",
            "Bytes the switch read from an endpoint's port.",
            |c| c.rx_bytes,
        ),
        (
            "weft_port_tx_frames_total",
            "Frames the switch wrote to an endpoint's port (the sandbox received them).",
            |c| c.tx_frames,
        ),
        (
            "weft_port_tx_bytes_total",
            "Bytes the switch wrote to an endpoint's port.",
            |c| c.tx_bytes,
        ),
    ];
    for (name, help, pick) in port_families {
        let mut f = Family::new(&mut out, name, "counter", help);
        for n in &s.networks {
            for (endpoint, counters) in &n.endpoints {
                if let Some(c) = counters {
                    f.sample(
                        name,
                        &[("network", &n.name), ("endpoint", endpoint)],
                        pick(c),
                    );
                }
            }
        }
    }
    let mut f = Family::new(
        &mut out,
        "weft_port_drops_total",
        "counter",
        "Frames dropped at an endpoint's port, by reason.",
    );
    for n in &s.networks {
        for (endpoint, counters) in &n.endpoints {
            for (reason, count) in counters.iter().flat_map(|c| c.drops.iter()) {
                f.sample(
                    "weft_port_drops_total",
                    &[
                        ("network", &n.name),
                        ("endpoint", endpoint),
                        ("reason", reason),
                    ],
                    count,
                );
            }
        }
    }
    let tunnel_families: [(&str, &str, Pick); 4] = [
        (
            "weft_tunnel_rx_frames_total",
            "Frames received from another host of an overlay network.",
            |c| c.rx_frames,
        ),
        (
            "weft_tunnel_rx_bytes_total",
            "Bytes received from another host of an overlay network.",
            |c| c.rx_bytes,
        ),
        (
            "weft_tunnel_tx_frames_total",
            "Frames sent to another host of an overlay network.",
            |c| c.tx_frames,
        ),
        (
            "weft_tunnel_tx_bytes_total",
            "Bytes sent to another host of an overlay network.",
            |c| c.tx_bytes,
        ),
    ];
    for (name, help, pick) in tunnel_families {
        let mut f = Family::new(&mut out, name, "counter", help);
        for n in &s.networks {
            for (host, c) in &n.tunnel {
                f.sample(name, &[("network", &n.name), ("host", host)], pick(c));
            }
        }
    }
    let mut f = Family::new(
        &mut out,
        "weft_nat_flows",
        "gauge",
        "NAT flows open now, by protocol (udp: UDP and ICMP echo).",
    );
    for n in &s.networks {
        for (proto, count) in &n.nat_flows {
            f.sample(
                "weft_nat_flows",
                &[("network", &n.name), ("protocol", proto)],
                count,
            );
        }
    }
    let mut f = Family::new(
        &mut out,
        "weft_nat_refused_total",
        "counter",
        "New NAT flows refused, by protocol and reason (table_full, network_share, sandbox_share).",
    );
    for n in &s.networks {
        for (proto, reason, count) in &n.nat_refused {
            f.sample(
                "weft_nat_refused_total",
                &[
                    ("network", &n.name),
                    ("protocol", proto),
                    ("reason", reason),
                ],
                count,
            );
        }
    }
    if let Some(queries) = s.dns_queries {
        let mut f = Family::new(
            &mut out,
            "weft_dns_queries_total",
            "counter",
            "Queries the embedded DNS server was asked (UDP and TCP, every network).",
        );
        f.sample("weft_dns_queries_total", &[], queries);
    }
    let mut f = Family::new(
        &mut out,
        "weft_dns_answers_total",
        "counter",
        "The embedded DNS server's answers by kind (local: from the networks' names; forwarded: an upstream's answer relayed; dropped: no answer).",
    );
    for (kind, count) in &s.dns {
        f.sample("weft_dns_answers_total", &[("kind", kind)], count);
    }
    if let Some(retries) = s.dns_upstream_retries {
        let mut f = Family::new(
            &mut out,
            "weft_dns_upstream_retries_total",
            "counter",
            "Queries tried again at the next upstream resolver.",
        );
        f.sample("weft_dns_upstream_retries_total", &[], retries);
    }
    let mut f = Family::new(
        &mut out,
        "weft_cluster_members",
        "gauge",
        "Other members of the cluster, by state.",
    );
    for (state, count) in &s.members {
        f.sample("weft_cluster_members", &[("state", state)], count);
    }
    let mut f = Family::new(
        &mut out,
        "weft_gossip_dropped_total",
        "counter",
        "Gossip datagrams dropped, by reason (rejected: wrong key or format; malformed).",
    );
    f.sample(
        "weft_gossip_dropped_total",
        &[("reason", "rejected")],
        s.gossip_rejected,
    );
    f.sample(
        "weft_gossip_dropped_total",
        &[("reason", "malformed")],
        s.gossip_malformed,
    );
    if let Some(bytes) = s.resident_bytes {
        let mut f = Family::new(
            &mut out,
            "weft_process_resident_memory_bytes",
            "gauge",
            "The daemon's resident memory.",
        );
        f.sample("weft_process_resident_memory_bytes", &[], bytes);
    }
    if let Some(seconds) = s.datapath_cpu_seconds {
        let mut f = Family::new(
            &mut out,
            "weft_datapath_cpu_seconds_total",
            "counter",
            "CPU time of the data-path thread.",
        );
        f.sample("weft_datapath_cpu_seconds_total", &[], seconds);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_is_the_exposition_format() {
        let mut drops = std::collections::BTreeMap::new();
        drops.insert("spoofed", 3);
        let snapshot = Snapshot {
            networks: vec![NetworkFigures {
                name: "n\"1".into(),
                driver: "bridge".into(),
                endpoints: vec![(
                    "web".into(),
                    Some(PortCountersSnapshot {
                        rx_frames: 10,
                        rx_bytes: 1000,
                        tx_frames: 20,
                        tx_bytes: 2000,
                        drops,
                    }),
                )],
                fdb: vec![("static".into(), 1), ("learned".into(), 2)],
                tunnel: vec![],
                nat_flows: vec![("tcp".into(), 4)],
                nat_refused: vec![("udp".into(), "sandbox_share".into(), 9)],
            }],
            members: vec![("alive".into(), 2)],
            resident_bytes: Some(4096),
            ..Snapshot::default()
        };
        let text = render(&snapshot);
        for line in [
            "# TYPE weft_port_rx_frames_total counter",
            "weft_port_rx_frames_total{network=\"n\\\"1\",endpoint=\"web\"} 10",
            "weft_port_tx_bytes_total{network=\"n\\\"1\",endpoint=\"web\"} 2000",
            "weft_port_drops_total{network=\"n\\\"1\",endpoint=\"web\",reason=\"spoofed\"} 3",
            "weft_network_fdb_entries{network=\"n\\\"1\",kind=\"learned\"} 2",
            "weft_network_endpoints{network=\"n\\\"1\",driver=\"bridge\"} 1",
            "weft_cluster_members{state=\"alive\"} 2",
            "weft_nat_flows{network=\"n\\\"1\",protocol=\"tcp\"} 4",
            "weft_nat_refused_total{network=\"n\\\"1\",protocol=\"udp\",reason=\"sandbox_share\"} 9",
            "weft_process_resident_memory_bytes 4096",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        // Every sample belongs to a family declared before it.
        let mut declared = std::collections::HashSet::new();
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                declared.insert(rest.split_whitespace().next().unwrap().to_owned());
            } else if !l.starts_with('#') {
                let name = l.split(['{', ' ']).next().unwrap();
                assert!(declared.contains(name), "{name} has no TYPE line");
            }
        }
    }

    #[test]
    fn this_process_has_memory_and_threads_can_be_read() {
        assert!(resident_bytes().is_some_and(|b| b > 0));
        assert!(thread_cpu_seconds("no-such-thread").is_none());
    }
}
