//! The Markdown section `weft-bench nat` writes: throughput, CPU per GB
//! and stalls per path, MTU and datapath, the targets' ratios, and which
//! MTU serves weft better.

use std::fmt::Write as _;

use crate::measure::TcpSample;
use crate::report::{self, cell, ratio, RunHeader, Summary};

use super::cases::{
    Case, Datapath, Results, FAR_ADDRESS, FAR_NS, HOST_NS, MTUS, OUT_PORT, SECTION_HEADING,
    SLIRP_GATEWAY, SLIRP_GUEST,
};

/// What the report header says.
#[derive(Debug)]
pub(super) struct Header {
    /// When, where, how long, how.
    pub(super) run: RunHeader,
    pub(super) daemon_rss_kib: Option<u64>,
}

fn gbps(results: &Results, case: Case, mtu: u32, datapath: Datapath) -> Option<Summary> {
    results
        .get(&(case, mtu, datapath))
        .and_then(|samples| Summary::of(&samples.iter().map(|s| s.gbps).collect::<Vec<_>>()))
}

fn cpu_per_gb(results: &Results, case: Case, mtu: u32, datapath: Datapath) -> Option<Summary> {
    results.get(&(case, mtu, datapath)).and_then(|samples| {
        Summary::of(
            &samples
                .iter()
                .filter_map(TcpSample::cpu_seconds_per_gb)
                .collect::<Vec<_>>(),
        )
    })
}

fn cpu_seconds(results: &Results, case: Case, mtu: u32, datapath: Datapath) -> Option<Summary> {
    results.get(&(case, mtu, datapath)).and_then(|samples| {
        Summary::of(
            &samples
                .iter()
                .filter_map(|s| s.switch_cpu_seconds)
                .collect::<Vec<_>>(),
        )
    })
}

/// `stalled / total` 1-s intervals over all runs, `—` without runs.
fn stalls(results: &Results, case: Case, mtu: u32, datapath: Datapath) -> String {
    match results.get(&(case, mtu, datapath)) {
        Some(samples) if !samples.is_empty() => {
            let stalled: u32 = samples.iter().map(|s| s.stalled_intervals).sum();
            let total: u32 = samples.iter().map(|s| s.intervals).sum();
            format!("{stalled}/{total}")
        }
        _ => "—".to_owned(),
    }
}

/// One target of the issue: weft's median over a reference's median.
pub(super) struct Target {
    what: &'static str,
    case: Case,
    mtu: u32,
    reference: Datapath,
    reference_label: &'static str,
    needed: f64,
}

pub(super) const TARGETS: [Target; 4] = [
    Target {
        what: "out → host lo, MTU 1500",
        case: Case::OutLoopback,
        mtu: 1500,
        reference: Datapath::Slirp,
        reference_label: "slirp4netns",
        needed: 5.0,
    },
    Target {
        what: "out → host lo, MTU 65520",
        case: Case::OutLoopback,
        mtu: 65520,
        reference: Datapath::Pasta,
        reference_label: "pasta (TAP)",
        needed: 1.0,
    },
    Target {
        what: "in ← published port, weft at MTU 1500",
        case: Case::In,
        mtu: 1500,
        reference: Datapath::Pasta,
        reference_label: "pasta splice (`-t`)",
        needed: 1.0,
    },
    Target {
        what: "in ← published port, weft at MTU 65520",
        case: Case::In,
        mtu: 65520,
        reference: Datapath::Pasta,
        reference_label: "pasta splice (`-t`)",
        needed: 1.0,
    },
];

/// weft's median over the reference's, if both were measured.
pub(super) fn target_ratio(results: &Results, target: &Target) -> Option<f64> {
    let weft = gbps(results, target.case, target.mtu, Datapath::Weft)?;
    let reference = gbps(results, target.case, target.mtu, target.reference)?;
    (reference.median > 0.0).then(|| weft.median / reference.median)
}

/// The MTU at which weft's medians are higher on more of the measured
/// paths (ties: the larger sum of ratios); `None` without data.
pub(super) fn better_mtu(results: &Results, cases: &[Case]) -> Option<(u32, usize, usize)> {
    let (small, large) = (MTUS[0], MTUS[1]);
    let mut wins_large = 0;
    let mut compared = 0;
    let mut log_ratio_sum = 0.0;
    for &case in cases.iter().filter(|c| c.applies_to(Datapath::Weft)) {
        let (Some(a), Some(b)) = (
            gbps(results, case, small, Datapath::Weft),
            gbps(results, case, large, Datapath::Weft),
        ) else {
            continue;
        };
        if a.median <= 0.0 || b.median <= 0.0 {
            continue;
        }
        compared += 1;
        if b.median > a.median {
            wins_large += 1;
        }
        log_ratio_sum += (b.median / a.median).ln();
    }
    if compared == 0 {
        return None;
    }
    let wins_small = compared - wins_large;
    let large_better = wins_large > wins_small || (wins_large == wins_small && log_ratio_sum > 0.0);
    Some(if large_better {
        (large, wins_large, compared)
    } else {
        (small, wins_small, compared)
    })
}

pub(super) fn markdown(
    header: &Header,
    cases: &[Case],
    results: &Results,
    failures: &[String],
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{SECTION_HEADING}\n");
    header.run.write_lines(&mut out);
    let _ = writeln!(
        out,
        "- lab: `{HOST_NS}` plays the host (weft daemon, every pasta and slirp4netns \
         process, the servers of the outbound runs on its 127.0.0.1, the clients of the \
         inbound runs); `{FAR_NS}` is the real address {FAR_ADDRESS}, across a veth at MTU \
         1500 from the host; one sandbox namespace per datapath and MTU, all built once"
    );
    let _ = writeln!(
        out,
        "- weft: a network per MTU, `--opt host_loopback=true`, sandbox attached with \
         `-p 127.0.0.1:P:P`; out → host lo = TCP to the gateway address (10.237.x.1)"
    );
    let _ = writeln!(
        out,
        "- pasta: `--config-net -f -4 -a {SLIRP_GUEST} -n 24 -g {SLIRP_GATEWAY} --no-icmp \
         --runas 0 -m MTU -t 127.0.0.1/P -T {OUT_PORT}`; out → host lo = TCP to {SLIRP_GATEWAY} \
         through its TAP (anchors' e1), in = its `-t` splice (e3), plus its `-T` splice out (e2)"
    );
    let _ = writeln!(
        out,
        "- slirp4netns: `--configure --mtu=MTU --disable-dns`, `add_hostfwd` 127.0.0.1:P → \
         {SLIRP_GUEST}:P through the API socket; out → host lo = TCP to {SLIRP_GATEWAY}"
    );
    let _ = writeln!(
        out,
        "- method: each run measures every path at each MTU for weft, pasta, slirp4netns in \
         turn (alternating); `iperf3 -c DST -t S -J`, 1 stream, receiver Gbit/s, a fresh \
         `iperf3 -s -1` per measurement; CPU: utime+stime of the datapath process (weft \
         daemon / pasta / slirp4netns instance, /proc/PID/stat) during the client's run"
    );
    if let Some(rss) = header.daemon_rss_kib {
        let _ = writeln!(
            out,
            "- weft daemon VmRSS at the end (2 networks, 2 sandboxes): {:.1} MiB",
            rss as f64 / 1024.0
        );
    }
    let _ = writeln!(out, "\nCells: median (min–max) over the runs.\n");

    let _ = writeln!(out, "### Throughput, one TCP stream (Gbit/s)\n");
    let _ = writeln!(
        out,
        "| path | MTU | weft | pasta | slirp4netns | weft / pasta | weft / slirp4netns |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    for &case in cases {
        for &mtu in &MTUS {
            let w = gbps(results, case, mtu, Datapath::Weft);
            let p = gbps(results, case, mtu, Datapath::Pasta);
            let s = gbps(results, case, mtu, Datapath::Slirp);
            let (w_cell, s_cell) = if case.applies_to(Datapath::Weft) {
                (cell(w), cell(s))
            } else {
                ("n/a".to_owned(), "n/a".to_owned())
            };
            let mtu_cell = if case == Case::OutSplice {
                format!("(pasta -m {mtu}; L4, no TAP)")
            } else {
                mtu.to_string()
            };
            let _ = writeln!(
                out,
                "| {} | {mtu_cell} | {w_cell} | {} | {s_cell} | {} | {} |",
                case.label(),
                cell(p),
                ratio(w, p),
                ratio(w, s)
            );
        }
    }

    let _ = writeln!(
        out,
        "\n### Datapath CPU: CPU-s per GB received · CPU-s per run\n"
    );
    let _ = writeln!(out, "| path | MTU | weft daemon | pasta | slirp4netns |");
    let _ = writeln!(out, "|---|---|---|---|---|");
    for &case in cases {
        for &mtu in &MTUS {
            let cpu = |datapath: Datapath| {
                if !case.applies_to(datapath) {
                    return "n/a".to_owned();
                }
                match (
                    cpu_per_gb(results, case, mtu, datapath),
                    cpu_seconds(results, case, mtu, datapath),
                ) {
                    (Some(per_gb), Some(total)) => {
                        format!("{} · {}", per_gb.cell(), report::number(total.median))
                    }
                    _ => "—".to_owned(),
                }
            };
            let _ = writeln!(
                out,
                "| {} | {mtu} | {} | {} | {} |",
                case.label(),
                cpu(Datapath::Weft),
                cpu(Datapath::Pasta),
                cpu(Datapath::Slirp)
            );
        }
    }

    let _ = writeln!(
        out,
        "\n### Stalls: 1-s intervals below 10% of the run's best, over all runs\n"
    );
    let _ = writeln!(out, "| path | MTU | weft | pasta | slirp4netns |");
    let _ = writeln!(out, "|---|---|---|---|---|");
    for &case in cases {
        for &mtu in &MTUS {
            let stall = |datapath: Datapath| {
                if case.applies_to(datapath) {
                    stalls(results, case, mtu, datapath)
                } else {
                    "n/a".to_owned()
                }
            };
            let _ = writeln!(
                out,
                "| {} | {mtu} | {} | {} | {} |",
                case.label(),
                stall(Datapath::Weft),
                stall(Datapath::Pasta),
                stall(Datapath::Slirp)
            );
        }
    }

    let _ = writeln!(out, "\n### Targets (ratios of the medians, same run)\n");
    let _ = writeln!(
        out,
        "| target | weft Gbit/s | reference | reference Gbit/s | weft / reference | needed | met | weft median / reference's best run |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
    for target in &TARGETS {
        let ratio = target_ratio(results, target);
        let met = match ratio {
            Some(r) if r >= target.needed => "**yes**",
            Some(_) => "**no**",
            None => "—",
        };
        let weft = gbps(results, target.case, target.mtu, Datapath::Weft);
        let reference = gbps(results, target.case, target.mtu, target.reference);
        let against_best = match (weft, reference) {
            (Some(w), Some(r)) if r.max > 0.0 => format!("{:.2}×", w.median / r.max),
            _ => "—".to_owned(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | ≥ {:.1}× | {met} | {against_best} |",
            target.what,
            cell(weft),
            target.reference_label,
            cell(reference),
            ratio.map_or_else(|| "—".to_owned(), |r| format!("{r:.2}×")),
            target.needed
        );
    }
    let _ = writeln!(
        out,
        "\nThe issue's anchor figures (shared/anchors, machine's loopback): slirp4netns out \
         1.6 Gbit/s at MTU 1500, 4.9 at 65520; pasta out via TAP 0.15 at 1500, 14.5 at \
         65520; pasta's spliced forward in 12.1."
    );

    let _ = writeln!(out, "\n### Default MTU of local networks\n");
    let _ = writeln!(
        out,
        "| weft path | MTU {} | MTU {} | {} / {} |",
        MTUS[0], MTUS[1], MTUS[1], MTUS[0]
    );
    let _ = writeln!(out, "|---|---|---|---|");
    for &case in cases.iter().filter(|c| c.applies_to(Datapath::Weft)) {
        let a = gbps(results, case, MTUS[0], Datapath::Weft);
        let b = gbps(results, case, MTUS[1], Datapath::Weft);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            case.label(),
            cell(a),
            cell(b),
            ratio(b, a)
        );
    }
    match better_mtu(results, cases) {
        Some((mtu, wins, compared)) => {
            let _ = writeln!(
                out,
                "\nBy these measurements: **MTU {mtu}** (weft is faster at it on {wins} of \
                 {compared} paths)."
            );
        }
        None => {
            let _ = writeln!(out, "\nNo MTU choice: weft was not measured at both MTUs.");
        }
    }

    if !failures.is_empty() {
        let _ = writeln!(out, "\n### Failed measurements (left out of the medians)\n");
        for failure in failures {
            let _ = writeln!(out, "- {failure}");
        }
    }
    out
}
