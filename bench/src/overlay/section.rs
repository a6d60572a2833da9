//! `weft-bench overlay`'s report: the Markdown section of bench/RESULTS.md.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::{
    sides, Datapath, Figures, GOSSIP_PORT, KERNEL_UNDERLAY, KERNEL_VNI, QUIC_FLOOR,
    QUIC_OVER_WIREGUARD_TARGET, QUIC_TARGET, SECTION_HEADING, TCP_FLOOR, TCP_TARGET, UNDERLAY_NS,
    WEFT_NETWORK, WEFT_QUIC_NETWORK, WEFT_QUIC_SUBNET, WEFT_SUBNET, WEFT_UNDERLAY,
};
use crate::measure;
use crate::report::{cell, ratio, RunHeader, Summary};

/// What the report header says.
#[derive(Debug)]
pub(super) struct Header {
    /// When, where, how long, how.
    pub(super) run: RunHeader,
    /// From the first daemon's start to the sandboxes pinging.
    pub(super) weft_ready_seconds: f64,
    /// eth0's MTU in the client sandbox: weft, kernel.
    pub(super) sandbox_mtus: [String; 2],
    /// eth0's MTU in the encrypted network's client sandbox.
    pub(super) quic_mtu: String,
    /// The daemons' `--quic-congestion`.
    pub(super) quic_congestion: String,
    /// VmRSS of each weft daemon at the end.
    pub(super) daemon_rss_kib: Vec<Option<u64>>,
}

/// `median (min–max)` of a per-run percentage.
fn percent_cell(values: &[f64]) -> String {
    Summary::of(values).map_or_else(|| "—".to_owned(), |s| format!("{} %", s.cell()))
}

pub(super) fn markdown(
    header: &Header,
    results: &BTreeMap<Datapath, Figures>,
    failures: &[String],
) -> String {
    let empty = Figures::default();
    let weft = results.get(&Datapath::Weft).unwrap_or(&empty);
    let kernel = results.get(&Datapath::Kernel).unwrap_or(&empty);
    let mut out = String::new();
    let _ = writeln!(out, "{SECTION_HEADING}\n");
    header.run.write_lines(&mut out);
    let _ = writeln!(
        out,
        "- lab: `{UNDERLAY_NS}` holds a Linux bridge (the wire); four host namespaces \
         with a veth into it at MTU 1500 (weft {} and {}, kernel {} and {}); a sandbox \
         behind each host; everything built once",
        WEFT_UNDERLAY[0], WEFT_UNDERLAY[1], KERNEL_UNDERLAY[0], KERNEL_UNDERLAY[1]
    );
    let _ = writeln!(
        out,
        "- weft: `weft daemon --listen 192.0.2.N:{GOSSIP_PORT} --node-name hN` (h2 `--join` h1), \
         `weft network create --driver overlay --subnet {WEFT_SUBNET} {WEFT_NETWORK}` on h1, \
         `weft network connect {WEFT_NETWORK} SANDBOX` on each host; sandbox eth0 MTU {} \
         (weft's default); ready {:.1} s after the first daemon started",
        header.sandbox_mtus[0], header.weft_ready_seconds
    );
    let _ = writeln!(
        out,
        "- weft encrypted: the same daemons with `--cluster-key FILE --quic-congestion {}`, \
         `weft network create --driver overlay --subnet {WEFT_QUIC_SUBNET} --opt encrypted=true \
         {WEFT_QUIC_NETWORK}`, a sandbox on it per host; sandbox eth0 MTU {}",
        header.quic_congestion, header.quic_mtu
    );
    let _ = writeln!(
        out,
        "- wireguard-go (as `shared/anchors/wireguard-go.sh`): two more hosts on the same \
         underlay, `wireguard-go -f` in each, one peer each, L3 host to host, MTU {}",
        sides::WIREGUARD_MTU
    );
    let _ = writeln!(
        out,
        "- kernel (as `shared/anchors/vxlan.sh`): `vxlan id {KERNEL_VNI} dstport 4789 local \
         SELF remote PEER dev v0` (learning on) and a veth to the sandbox in a bridge on \
         each host; sandbox eth0 MTU {}",
        header.sandbox_mtus[1]
    );
    let _ = writeln!(
        out,
        "- method: each run measures weft, then the kernel (alternating); sandbox 1 → \
         sandbox 2: `iperf3 -c -t S -J`, 1 stream, receiver Gbit/s; `iperf3 -u -l 64 -b 0`, \
         received packets/s; `ping -c {} -i 0.01`, p50; a fresh `iperf3 -s -1` per \
         measurement; weft CPU: utime+stime of both daemons (/proc/PID/stat, summed) \
         during the TCP run / GB received, and per daemon its share of one core and its \
         busiest thread (/proc/PID/task) over the run",
        measure::PING_COUNT
    );
    let rss: Vec<String> = header
        .daemon_rss_kib
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.map(|kib| format!("h{} {:.1} MiB", i + 1, kib as f64 / 1024.0)))
        .collect();
    if !rss.is_empty() {
        let _ = writeln!(out, "- weft daemons' VmRSS at the end: {}", rss.join(", "));
    }
    let _ = writeln!(out, "\nCells: median (min–max) over the runs.\n");
    let _ = writeln!(
        out,
        "| datapath | TCP Gbit/s | TCP retransmits per run | UDP 64 B kpps received | UDP 64 B loss % | ping p50 µs | datapath CPU-s per GB (TCP) |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    for datapath in Datapath::ALL {
        let r = results.get(&datapath).unwrap_or(&empty);
        let cpu = match datapath {
            Datapath::Weft | Datapath::WeftQuic => {
                format!("{} (2 daemons)", cell(r.cpu_per_gb()))
            }
            Datapath::Kernel => "n/a (kernel)".to_owned(),
            Datapath::WireguardGo => "not measured".to_owned(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {cpu} |",
            datapath.label(),
            cell(r.tcp_gbps()),
            cell(r.retransmits()),
            cell(r.udp_kpps()),
            cell(r.udp_loss()),
            cell(r.ping_p50()),
        );
    }

    let _ = writeln!(out, "\n### weft's daemons during the TCP runs\n");
    let _ = writeln!(
        out,
        "| network | daemon | CPU-s per run | share of one core | busiest thread | its share of one core |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    let quic = results.get(&Datapath::WeftQuic).unwrap_or(&empty);
    let daemons = weft
        .daemons
        .iter()
        .map(|runs| ("plain (VXLAN)", runs))
        .chain(quic.daemons.iter().map(|runs| ("encrypted (QUIC)", runs)));
    for (index, (network, runs)) in daemons.enumerate() {
        let role = if index % 2 == 0 {
            "h1 (sender's host: encapsulates)"
        } else {
            "h2 (receiver's host: decapsulates)"
        };
        let seconds: Vec<f64> = runs.iter().map(|d| d.seconds).collect();
        let share: Vec<f64> = runs.iter().map(|d| 100.0 * d.seconds / d.wall).collect();
        let top_share: Vec<f64> = runs
            .iter()
            .map(|d| 100.0 * d.top_thread.1 / d.wall)
            .collect();
        let mut names: Vec<&str> = runs.iter().map(|d| d.top_thread.0.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        let _ = writeln!(
            out,
            "| {network} | {role} | {} | {} | `{}` | {} |",
            cell(Summary::of(&seconds)),
            percent_cell(&share),
            names.join("`, `"),
            percent_cell(&top_share)
        );
    }

    if !weft.underlay.is_empty() {
        let sent: Vec<f64> = weft.underlay.iter().map(|u| u.sent as f64).collect();
        let per_datagram: Vec<f64> = weft
            .underlay
            .iter()
            .zip(&weft.tcp)
            .filter(|(u, _)| u.sent > 0)
            .map(|(u, t)| t.bytes_received / u.sent as f64)
            .collect();
        let dropped: Vec<f64> = weft
            .underlay
            .iter()
            .filter(|u| u.sent > 0)
            .map(|u| 100.0 * u.rcvbuf_errors as f64 / u.sent as f64)
            .collect();
        let _ = writeln!(
            out,
            "\n### weft's underlay during the TCP runs (UDP counters of the host namespaces)\n"
        );
        let _ = writeln!(
            out,
            "| VXLAN datagrams h1 sent per run | TCP payload bytes per datagram | h2 drops for a full socket receive buffer (% of sent) |"
        );
        let _ = writeln!(out, "|---|---|---|");
        let _ = writeln!(
            out,
            "| {} | {} | {} |",
            cell(Summary::of(&sent)),
            cell(Summary::of(&per_datagram)),
            percent_cell(&dropped)
        );
    }

    let _ = writeln!(out, "\n### Target (ratio of the medians, same run)\n");
    let _ = writeln!(
        out,
        "| figure | weft / kernel vxlan | target | floor | verdict |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|");
    let tcp_ratio = match (weft.tcp_gbps(), kernel.tcp_gbps()) {
        (Some(w), Some(k)) if k.median > 0.0 => Some(w.median / k.median),
        _ => None,
    };
    let verdict = match tcp_ratio {
        Some(r) if r >= TCP_TARGET => "**target met**",
        Some(r) if r >= TCP_FLOOR => "**floor met, target not**",
        Some(_) => "**below the floor**",
        None => "—",
    };
    let _ = writeln!(
        out,
        "| TCP Gbit/s, 1 stream | {} | ≥ {TCP_TARGET:.1}× | ≥ {TCP_FLOOR:.1}× | {verdict} |",
        tcp_ratio.map_or_else(|| "—".to_owned(), |r| format!("{r:.2}×"))
    );
    let _ = writeln!(
        out,
        "| UDP 64 B kpps received | {} | – | – | (for information) |",
        ratio(weft.udp_kpps(), kernel.udp_kpps())
    );
    let _ = writeln!(
        out,
        "| ping p50 round trip | {} | – | – | (lower is better) |",
        ratio(weft.ping_p50(), kernel.ping_p50())
    );

    let wireguard = results.get(&Datapath::WireguardGo).unwrap_or(&empty);
    let _ = writeln!(
        out,
        "\n### Encrypted overlay targets (issue 15; ratio of the medians, same run)\n"
    );
    let _ = writeln!(out, "| figure | ratio | target | floor | verdict |");
    let _ = writeln!(out, "|---|---|---|---|---|");
    let over = |a: Option<Summary>, b: Option<Summary>| match (a, b) {
        (Some(a), Some(b)) if b.median > 0.0 => Some(a.median / b.median),
        _ => None,
    };
    let quic_plain = over(quic.tcp_gbps(), weft.tcp_gbps());
    let verdict = match quic_plain {
        Some(r) if r >= QUIC_TARGET => "**target met**",
        Some(r) if r >= QUIC_FLOOR => "**floor met, target not**",
        Some(_) => "**below the floor**",
        None => "—",
    };
    let shown = |r: Option<f64>| r.map_or_else(|| "—".to_owned(), |r| format!("{r:.2}×"));
    let _ = writeln!(
        out,
        "| TCP Gbit/s, weft QUIC / weft VXLAN | {} | ≥ {QUIC_TARGET:.1}× | ≥ {QUIC_FLOOR:.1}× | {verdict} |",
        shown(quic_plain)
    );
    let quic_wireguard = over(quic.tcp_gbps(), wireguard.tcp_gbps());
    let verdict = match quic_wireguard {
        Some(r) if r >= QUIC_OVER_WIREGUARD_TARGET => "**target met**",
        Some(_) => "**target not met**",
        None => "—",
    };
    let _ = writeln!(
        out,
        "| TCP Gbit/s, weft QUIC / wireguard-go | {} | ≥ {QUIC_OVER_WIREGUARD_TARGET:.0}× | – | {verdict} |",
        shown(quic_wireguard)
    );
    let _ = writeln!(
        out,
        "| UDP 64 B kpps, weft QUIC / weft VXLAN | {} | – | – | (for information) |",
        ratio(quic.udp_kpps(), weft.udp_kpps())
    );
    let _ = writeln!(
        out,
        "| UDP 64 B kpps, weft QUIC / wireguard-go | {} | – | – | (for information) |",
        ratio(quic.udp_kpps(), wireguard.udp_kpps())
    );
    let _ = writeln!(
        out,
        "| ping p50, weft QUIC / weft VXLAN | {} | – | – | (lower is better) |",
        ratio(quic.ping_p50(), weft.ping_p50())
    );

    if !failures.is_empty() {
        let _ = writeln!(out, "\n### Failed measurements (left out of the medians)\n");
        for failure in failures {
            let _ = writeln!(out, "- {failure}");
        }
    }
    out
}
