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
//! The text is written by `prometheus-client`, the Prometheus project's
//! own Rust library (escaping, `_total` suffixes, histogram buckets, the
//! 0.0.4 encoder), through a `Collector` that reads the snapshot: the
//! figures already live in the data path, so there are no live metric
//! objects to keep in step.
//!
//! Names follow Prometheus' conventions: `weft_` prefix, base units in
//! the name (`_bytes`, `_seconds`), `_total` for counters, what varies in
//! labels (`network`, `endpoint`, `reason`, `host`, `state`). "rx" is what
//! the switch read from a port (the sandbox sent it), "tx" what it wrote
//! to the port (the sandbox received it).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use weft_datapath::published::PublishCounters;
use weft_services::dns::{LatencyHistogram, UPSTREAM_LATENCY_BOUNDS_SECONDS};
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
    /// Frames it flooded: multicast and broadcast, unknown unicast.
    pub floods: Option<weft_vswitch::FloodCounts>,
}

/// One published port's figures.
#[derive(Debug, Clone)]
pub struct PublishedFigure {
    /// Its endpoint's network.
    pub network: String,
    /// Its endpoint.
    pub endpoint: String,
    /// `tcp` or `udp`.
    pub protocol: &'static str,
    /// The host address it listens on.
    pub host: String,
    /// What it carried.
    pub counters: PublishCounters,
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
    /// How long its upstreams took to answer.
    pub dns_upstream_latency: Option<LatencyHistogram>,
    /// DHCP messages the gateways' server took, by outcome.
    pub dhcp: Vec<(String, u64)>,
    /// Published ports and what they carried.
    pub published: Vec<PublishedFigure>,
    /// Resident memory of the daemon, bytes.
    pub resident_bytes: Option<u64>,
    /// CPU time of the data-path thread, seconds.
    pub datapath_cpu_seconds: Option<f64>,
}

/// Gather a scrape's figures from the controller.
pub async fn collect(controller: &Controller) -> Snapshot {
    let mut snapshot = Snapshot::default();
    let published = controller.published_figures().await.unwrap_or_default();
    for network in controller.networks().await {
        let Ok(details) = controller.inspect(&network.name).await else {
            continue;
        };
        for e in &details.endpoints {
            for (_, p) in published.iter().filter(|(id, _)| *id == e.endpoint.id) {
                snapshot.published.push(PublishedFigure {
                    network: network.name.clone(),
                    endpoint: e.endpoint.name.clone(),
                    protocol: p.proto.as_str(),
                    host: p.host.map(|a| a.to_string()).unwrap_or_default(),
                    counters: p.counters,
                });
            }
        }
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
            figures.floods = controller.floods(&network.name).await.ok().flatten();
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
        snapshot.dns_upstream_latency = Some(c.upstream_latency);
    }
    if let Ok(c) = controller.dhcp_counters().await {
        snapshot.dhcp = vec![
            ("offer".into(), c.offers),
            ("ack".into(), c.acks),
            ("nak".into(), c.naks),
            ("ignored".into(), c.ignored),
            ("oversized".into(), c.oversized),
            ("malformed".into(), c.malformed),
            ("spoofed".into(), c.spoofed),
        ];
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

/// A sample's labels, in order.
type Labels<'a> = Vec<(&'static str, &'a str)>;

/// One sample's value.
#[derive(Debug, Clone, Copy)]
enum Value {
    Count(u64),
    Seconds(f64),
}

/// The snapshot as a prometheus-client collector: each family is written
/// from the figures the scrape gathered (so every value is a constant of
/// this scrape, not a live metric object).
#[derive(Debug)]
struct Exposition(Snapshot);

/// Write one family: its descriptor, then one sample per label set. A
/// counter's `name` is given without `_total`, which the encoder adds.
fn family<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (Labels<'a>, Value)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in samples {
        let sample = metric.encode_family(&labels)?;
        match (kind, value) {
            (MetricType::Counter, Value::Count(n)) => ConstCounter::new(n).encode(sample)?,
            (MetricType::Counter, Value::Seconds(s)) => ConstCounter::new(s).encode(sample)?,
            (_, Value::Count(n)) => ConstGauge::new(n).encode(sample)?,
            (_, Value::Seconds(s)) => ConstGauge::new(s).encode(sample)?,
        }
    }
    Ok(())
}

/// `(labels, count)` as a sample.
fn count<'a, N: TryInto<u64>>(labels: Labels<'a>, n: N) -> (Labels<'a>, Value) {
    (labels, Value::Count(n.try_into().unwrap_or(u64::MAX)))
}

type Pick = fn(&PortCountersSnapshot) -> u64;

impl Collector for Exposition {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use MetricType::{Counter, Gauge};
        let s = &self.0;
        family(
            &mut e,
            "weft_build_info",
            "The daemon's version.",
            Gauge,
            [count(vec![("version", env!("CARGO_PKG_VERSION"))], 1u64)],
        )?;
        family(
            &mut e,
            "weft_network_endpoints",
            "Endpoints attached to a network on this host.",
            Gauge,
            s.networks.iter().map(|n| {
                count(
                    vec![("network", &n.name), ("driver", &n.driver)],
                    n.endpoints.len(),
                )
            }),
        )?;
        family(
            &mut e,
            "weft_network_fdb_entries",
            "Entries of a network's forwarding table, by kind (static: endpoints' own MACs; learned; remote: overlay endpoints on other hosts).",
            Gauge,
            s.networks.iter().flat_map(|n| {
                n.fdb
                    .iter()
                    .map(|(kind, c)| count(vec![("network", &n.name), ("kind", kind)], *c))
            }),
        )?;
        family(
            &mut e,
            "weft_network_floods",
            "Frames a network flooded to its ports, by kind (multicast: multicast and broadcast; unknown_unicast: to a MAC no port had).",
            Counter,
            s.networks.iter().flat_map(|n| {
                n.floods.iter().flat_map(|f| {
                    [
                        count(vec![("network", &n.name), ("kind", "multicast")], f.multicast),
                        count(
                            vec![("network", &n.name), ("kind", "unknown_unicast")],
                            f.unknown_unicast,
                        ),
                    ]
                })
            }),
        )?;
        let ports: [(&str, &str, Pick); 4] = [
            (
                "weft_port_rx_frames",
                "Frames the switch read from an endpoint's port (the sandbox sent them).",
                |c| c.rx_frames,
            ),
            (
                "weft_port_rx_bytes",
                "Bytes the switch read from an endpoint's port.",
                |c| c.rx_bytes,
            ),
            (
                "weft_port_tx_frames",
                "Frames the switch wrote to an endpoint's port (the sandbox received them).",
                |c| c.tx_frames,
            ),
            (
                "weft_port_tx_bytes",
                "Bytes the switch wrote to an endpoint's port.",
                |c| c.tx_bytes,
            ),
        ];
        for (name, help, pick) in ports {
            family(
                &mut e,
                name,
                help,
                Counter,
                s.networks.iter().flat_map(|n| {
                    n.endpoints.iter().filter_map(move |(endpoint, c)| {
                        let c = c.as_ref()?;
                        Some(count(
                            vec![("network", &n.name), ("endpoint", endpoint)],
                            pick(c),
                        ))
                    })
                }),
            )?;
        }
        family(
            &mut e,
            "weft_port_drops",
            "Frames dropped at an endpoint's port, by reason.",
            Counter,
            s.networks.iter().flat_map(|n| {
                n.endpoints.iter().flat_map(move |(endpoint, c)| {
                    c.iter()
                        .flat_map(|c| c.drops.iter())
                        .map(move |(reason, n2)| {
                            count(
                                vec![
                                    ("network", &n.name),
                                    ("endpoint", endpoint),
                                    ("reason", reason),
                                ],
                                *n2,
                            )
                        })
                })
            }),
        )?;
        let tunnels: [(&str, &str, Pick); 4] = [
            (
                "weft_tunnel_rx_frames",
                "Frames received from another host of an overlay network.",
                |c| c.rx_frames,
            ),
            (
                "weft_tunnel_rx_bytes",
                "Bytes received from another host of an overlay network.",
                |c| c.rx_bytes,
            ),
            (
                "weft_tunnel_tx_frames",
                "Frames sent to another host of an overlay network.",
                |c| c.tx_frames,
            ),
            (
                "weft_tunnel_tx_bytes",
                "Bytes sent to another host of an overlay network.",
                |c| c.tx_bytes,
            ),
        ];
        for (name, help, pick) in tunnels {
            family(
                &mut e,
                name,
                help,
                Counter,
                s.networks.iter().flat_map(|n| {
                    n.tunnel.iter().map(move |(host, c)| {
                        count(vec![("network", &n.name), ("host", host)], pick(c))
                    })
                }),
            )?;
        }
        family(
            &mut e,
            "weft_nat_flows",
            "NAT flows open now, by protocol (udp: UDP and ICMP echo).",
            Gauge,
            s.networks.iter().flat_map(|n| {
                n.nat_flows
                    .iter()
                    .map(|(proto, c)| count(vec![("network", &n.name), ("protocol", proto)], *c))
            }),
        )?;
        family(
            &mut e,
            "weft_nat_refused",
            "New NAT flows refused, by protocol and reason (table_full, network_share, sandbox_share).",
            Counter,
            s.networks.iter().flat_map(|n| {
                n.nat_refused.iter().map(|(proto, reason, c)| {
                    count(
                        vec![("network", &n.name), ("protocol", proto), ("reason", reason)],
                        *c,
                    )
                })
            }),
        )?;
        type PickPublished = fn(&PublishCounters) -> u64;
        let published: [(&str, &str, &str, PickPublished); 3] = [
            (
                "weft_published_connections",
                "tcp",
                "TCP connections a published port accepted and relayed into its sandbox.",
                |c| c.connections,
            ),
            (
                "weft_published_refused",
                "tcp",
                "TCP connections a published port accepted and closed at once (the relay was full).",
                |c| c.refused,
            ),
            (
                "weft_published_datagrams",
                "udp",
                "UDP datagrams a published port carried into its sandbox.",
                |c| c.datagrams,
            ),
        ];
        for (name, protocol, help, pick) in published {
            family(
                &mut e,
                name,
                help,
                Counter,
                s.published
                    .iter()
                    .filter(|p| p.protocol == protocol)
                    .map(|p| {
                        count(
                            vec![
                                ("network", &p.network),
                                ("endpoint", &p.endpoint),
                                ("protocol", p.protocol),
                                ("host", &p.host),
                            ],
                            pick(&p.counters),
                        )
                    }),
            )?;
        }
        if let Some(queries) = s.dns_queries {
            family(
                &mut e,
                "weft_dns_queries",
                "Queries the embedded DNS server was asked (UDP and TCP, every network).",
                Counter,
                [count(vec![], queries)],
            )?;
        }
        family(
            &mut e,
            "weft_dns_answers",
            "The embedded DNS server's answers by kind (local: from the networks' names; forwarded: an upstream's answer relayed; dropped: no answer).",
            Counter,
            s.dns.iter().map(|(kind, c)| count(vec![("kind", kind)], *c)),
        )?;
        family(
            &mut e,
            "weft_dhcp_messages",
            "DHCP messages the gateways' server took, by outcome (offer, ack, nak: answered; ignored: not for it; oversized, malformed, spoofed: dropped).",
            Counter,
            s.dhcp.iter().map(|(outcome, c)| count(vec![("outcome", outcome)], *c)),
        )?;
        if let Some(retries) = s.dns_upstream_retries {
            family(
                &mut e,
                "weft_dns_upstream_retries",
                "Queries tried again at the next upstream resolver.",
                Counter,
                [count(vec![], retries)],
            )?;
        }
        if let Some(latency) = &s.dns_upstream_latency {
            let mut metric = e.encode_descriptor(
                "weft_dns_upstream_latency_seconds",
                "How long upstream resolvers took to answer a forwarded query, from its first try.",
                None,
                MetricType::Histogram,
            )?;
            let bounds = UPSTREAM_LATENCY_BOUNDS_SECONDS
                .iter()
                .copied()
                .chain([f64::INFINITY]);
            let buckets: Vec<(f64, u64)> = bounds.zip(latency.buckets.iter().copied()).collect();
            metric.encode_histogram::<NoLabelSet>(
                latency.sum_micros as f64 / 1e6,
                latency.count,
                &buckets,
                None,
            )?;
        }
        family(
            &mut e,
            "weft_cluster_members",
            "Other members of the cluster, by state.",
            Gauge,
            s.members
                .iter()
                .map(|(state, c)| count(vec![("state", state)], *c)),
        )?;
        family(
            &mut e,
            "weft_gossip_dropped",
            "Gossip datagrams dropped, by reason (rejected: wrong key or format; malformed).",
            Counter,
            [
                count(vec![("reason", "rejected")], s.gossip_rejected),
                count(vec![("reason", "malformed")], s.gossip_malformed),
            ],
        )?;
        if let Some(bytes) = s.resident_bytes {
            family(
                &mut e,
                "weft_process_resident_memory_bytes",
                "The daemon's resident memory.",
                Gauge,
                [count(vec![], bytes)],
            )?;
        }
        if let Some(seconds) = s.datapath_cpu_seconds {
            family(
                &mut e,
                "weft_datapath_cpu_seconds",
                "CPU time of the data-path thread.",
                Counter,
                [(vec![], Value::Seconds(seconds))],
            )?;
        }
        Ok(())
    }
}

/// The exposition text (Prometheus text format 0.0.4) of a snapshot.
pub fn render(snapshot: Snapshot) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Exposition(snapshot)));
    let mut out = String::new();
    // Writing to a String cannot fail; the encoder only returns fmt's
    // error type.
    let _ = prometheus_text::encode(&mut out, &registry);
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
                floods: Some(weft_vswitch::FloodCounts {
                    multicast: 7,
                    unknown_unicast: 2,
                }),
            }],
            members: vec![("alive".into(), 2)],
            dhcp: vec![("offer".into(), 3), ("malformed".into(), 1)],
            resident_bytes: Some(4096),
            published: vec![PublishedFigure {
                network: "n\"1".into(),
                endpoint: "web".into(),
                protocol: "tcp",
                host: "0.0.0.0:8080".into(),
                counters: PublishCounters {
                    connections: 5,
                    refused: 1,
                    datagrams: 0,
                },
            }],
            dns_upstream_latency: Some({
                let mut h = LatencyHistogram::default();
                h.observe(std::time::Duration::from_millis(3));
                h.observe(std::time::Duration::from_secs(9));
                h
            }),
            ..Snapshot::default()
        };
        let text = render(snapshot);
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
            "weft_network_floods_total{network=\"n\\\"1\",kind=\"multicast\"} 7",
            "weft_network_floods_total{network=\"n\\\"1\",kind=\"unknown_unicast\"} 2",
            "weft_dhcp_messages_total{outcome=\"offer\"} 3",
            "weft_dhcp_messages_total{outcome=\"malformed\"} 1",
            "weft_published_connections_total{network=\"n\\\"1\",endpoint=\"web\",protocol=\"tcp\",host=\"0.0.0.0:8080\"} 5",
            "# TYPE weft_dns_upstream_latency_seconds histogram",
            "weft_dns_upstream_latency_seconds_bucket{le=\"0.0025\"} 0",
            "weft_dns_upstream_latency_seconds_bucket{le=\"0.005\"} 1",
            "weft_dns_upstream_latency_seconds_bucket{le=\"5\"} 1",
            "weft_dns_upstream_latency_seconds_bucket{le=\"+Inf\"} 2",
            "weft_dns_upstream_latency_seconds_count 2",
            "weft_dns_upstream_latency_seconds_sum 9.003",
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
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| name.strip_suffix(suffix))
                    .filter(|f| declared.contains(*f))
                    .unwrap_or(name);
                assert!(declared.contains(family), "{name} has no TYPE line");
            }
        }
    }

    #[test]
    fn this_process_has_memory_and_threads_can_be_read() {
        assert!(resident_bytes().is_some_and(|b| b > 0));
        assert!(thread_cpu_seconds("no-such-thread").is_none());
    }
}
