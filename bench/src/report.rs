//! Summaries and Markdown: every figure is shown as median (min–max) over
//! the runs. The median, because one run disturbed by the other tenant of a
//! shared 2-core machine must not move the headline; min–max, so that such
//! a disturbance stays visible. Ratios are taken between medians.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::measure::{PingSample, TcpSample, UdpSample};
use crate::topology::Kind;

/// The `p`-th percentile of sorted values, linear interpolation between
/// closest ranks (as numpy's default); NaN for no values.
pub fn percentile_sorted(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (sorted.len() - 1) as f64 * p / 100.0;
    let low = rank.floor() as usize;
    let high = (low + 1).min(sorted.len() - 1);
    sorted[low] + (sorted[high] - sorted[low]) * (rank - low as f64)
}

/// Median, min and max of some runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// The median.
    pub median: f64,
    /// The smallest.
    pub min: f64,
    /// The largest.
    pub max: f64,
    /// How many values.
    pub count: usize,
}

impl Summary {
    /// `None` for no values.
    pub fn of(values: &[f64]) -> Option<Summary> {
        let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(f64::total_cmp);
        Some(Summary {
            median: percentile_sorted(&sorted, 50.0),
            min: sorted[0],
            max: sorted[sorted.len() - 1],
            count: sorted.len(),
        })
    }

    /// `median (min–max)`, or just the value for a single run.
    pub fn cell(&self) -> String {
        if self.count == 1 {
            return number(self.median);
        }
        format!(
            "{} ({}–{})",
            number(self.median),
            number(self.min),
            number(self.max)
        )
    }
}

/// Three significant-ish digits: 1234 → "1234", 12.34 → "12.3", 1.234 → "1.23".
pub fn number(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude >= 100.0 {
        format!("{value:.0}")
    } else if magnitude >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

/// A ratio of two medians, `—` when either is missing.
pub fn ratio(numerator: Option<Summary>, denominator: Option<Summary>) -> String {
    match (numerator, denominator) {
        (Some(n), Some(d)) if d.median != 0.0 => format!("{:.2}×", n.median / d.median),
        _ => "—".to_owned(),
    }
}

/// The current time in UTC as `YYYY-MM-DD HH:MM:SS`.
pub fn utc_now() -> String {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    utc_from_unix(seconds)
}

/// `YYYY-MM-DD HH:MM:SS` of a Unix time (civil-from-days, H. Hinnant).
pub fn utc_from_unix(seconds: u64) -> String {
    let days = (seconds / 86_400) as i64;
    let second_of_day = seconds % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60
    )
}

/// Replace (or append) the section under `heading` in the results file
/// `out`, keeping every other section; the file and its directory are
/// made if missing.
///
/// # Errors
///
/// Reading or writing the file.
pub fn write_section(out: &std::path::Path, heading: &str, section: &str) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let previous = match std::fs::read_to_string(out) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(error) => return Err(error).with_context(|| format!("reading {}", out.display())),
    };
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let updated = replace_section(&previous, heading, section);
    std::fs::write(out, updated).with_context(|| format!("writing {}", out.display()))
}

/// `document` with the section that starts at the line `heading` (up to
/// the next `## ` heading or the end) replaced by `section`, or with
/// `section` appended (after a blank line) if there is none. Other
/// sections are kept as they are.
pub fn replace_section(document: &str, heading: &str, section: &str) -> String {
    let section = section.trim_end();
    let mut start = None;
    let mut offset = 0;
    for line in document.split_inclusive('\n') {
        if line.trim_end() == heading {
            start = Some(offset);
            break;
        }
        offset += line.len();
    }
    let Some(start) = start else {
        let body = document.trim_end();
        return if body.is_empty() {
            format!("{section}\n")
        } else {
            format!("{body}\n\n{section}\n")
        };
    };
    let after_heading = start + heading.len();
    let end = document[after_heading..]
        .match_indices("\n## ")
        .next()
        .map_or(document.len(), |(index, _)| after_heading + index + 1);
    let rest = &document[end..];
    if rest.is_empty() {
        format!("{}{section}\n", &document[..start])
    } else {
        format!("{}{section}\n\n{rest}", &document[..start])
    }
}

/// The figures of one topology over all runs.
#[derive(Debug, Default)]
pub struct TopologyResults {
    /// TCP runs.
    pub tcp: Vec<TcpSample>,
    /// UDP 64 B runs.
    pub udp: Vec<UdpSample>,
    /// ping runs.
    pub ping: Vec<PingSample>,
}

impl TopologyResults {
    fn tcp_gbps(&self) -> Option<Summary> {
        Summary::of(&self.tcp.iter().map(|s| s.gbps).collect::<Vec<_>>())
    }
    fn udp_kpps(&self) -> Option<Summary> {
        Summary::of(&self.udp.iter().map(|s| s.kpps).collect::<Vec<_>>())
    }
    fn udp_loss(&self) -> Option<Summary> {
        Summary::of(&self.udp.iter().map(|s| s.loss_pct).collect::<Vec<_>>())
    }
    fn ping_p50(&self) -> Option<Summary> {
        Summary::of(&self.ping.iter().map(|s| s.p50_us).collect::<Vec<_>>())
    }
    fn ping_avg(&self) -> Option<Summary> {
        Summary::of(&self.ping.iter().map(|s| s.avg_us).collect::<Vec<_>>())
    }
    fn cpu_per_gb(&self) -> Option<Summary> {
        Summary::of(
            &self
                .tcp
                .iter()
                .filter_map(TcpSample::cpu_seconds_per_gb)
                .collect::<Vec<_>>(),
        )
    }
}

/// What every run's report says first: when, where, how long, how, with
/// what (the e2e, nat and overlay sections share it).
#[derive(Debug)]
pub struct RunHeader {
    /// When the run started (UTC).
    pub date_utc: String,
    /// `uname -r`.
    pub kernel: String,
    /// `nproc`.
    pub cpus: usize,
    /// Runs per datapath.
    pub runs: u32,
    /// Seconds per iperf3 run.
    pub seconds: u32,
    /// The command line as given.
    pub command: String,
    /// Versions of weft and the tools compared.
    pub versions: Vec<String>,
    /// CPU placement.
    pub placement: String,
    /// Wall time of the whole run, seconds.
    pub wall_seconds: f64,
}

impl RunHeader {
    /// Its lines of a report: date, kernel and CPUs, runs, command,
    /// versions, placement.
    pub fn write_lines(&self, out: &mut String) {
        let _ = writeln!(out, "- date (UTC): {}", self.date_utc);
        let _ = writeln!(
            out,
            "- kernel (`uname -r`): {}; CPUs (`nproc`): {}",
            self.kernel, self.cpus
        );
        let _ = writeln!(
            out,
            "- runs: {}; seconds per iperf3 run: {}; wall time: {:.0} s",
            self.runs, self.seconds, self.wall_seconds
        );
        let _ = writeln!(out, "- command: `{}`", self.command);
        for version in &self.versions {
            let _ = writeln!(out, "- {version}");
        }
        let _ = writeln!(out, "- placement: {}", self.placement);
    }
}

/// A table cell of a summary (`median (min–max)`), `—` when there is none.
pub fn cell(summary: Option<Summary>) -> String {
    summary.map_or_else(|| "—".to_owned(), |s| s.cell())
}

/// The e2e section: header, the figures table, the ratios table, failures.
pub fn e2e_markdown(
    header: &RunHeader,
    results: &[(Kind, TopologyResults)],
    failures: &[String],
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## End to end: weft vs kernel bridge vs vde_switch\n");
    header.write_lines(&mut out);
    let _ = writeln!(
        out,
        "- method: two sandbox namespaces per topology (A client, B server), MTU 1500; \
         the three topologies are built once and measured in turn, \
         run 1: weft, bridge, vde; run 2: weft, bridge, vde; ... \
         (alternating, so slow drift in the machine's load hits all three alike); \
         a fresh `iperf3 -s -1` per measurement"
    );
    let _ = writeln!(
        out,
        "- TCP: `iperf3 -c B -t S -J`, 1 stream, receiver Gbit/s; \
         UDP: `iperf3 -u -l 64 -b 0 -t S`, received packets/s = (packets − lost) / s; \
         ping: `ping -c {} -i 0.01`, p50 of the per-reply times and the summary avg; \
         switch CPU: utime+stime of the switch process (/proc/PID/stat) during the TCP run / GB received\n",
        crate::measure::PING_COUNT
    );
    let _ = writeln!(out, "Cells: median (min–max) over the runs.\n");
    let _ = writeln!(
        out,
        "| topology | TCP Gbit/s | UDP 64 B kpps received | UDP 64 B loss % | ping p50 µs | ping avg µs | switch CPU-s per GB (TCP) |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    for (kind, r) in results {
        let cpu = if *kind == Kind::Bridge {
            "n/a (kernel)".to_owned()
        } else {
            cell(r.cpu_per_gb())
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} |",
            kind.label(),
            cell(r.tcp_gbps()),
            cell(r.udp_kpps()),
            cell(r.udp_loss()),
            cell(r.ping_p50()),
            cell(r.ping_avg()),
            cpu
        );
    }
    let find = |kind: Kind| results.iter().find(|(k, _)| *k == kind).map(|(_, r)| r);
    let empty = TopologyResults::default();
    let weft = find(Kind::Weft).unwrap_or(&empty);
    let bridge = find(Kind::Bridge).unwrap_or(&empty);
    let vde = find(Kind::Vde).unwrap_or(&empty);
    let _ = writeln!(out, "\n### Ratios of the medians\n");
    let _ = writeln!(
        out,
        "| figure | weft / bridge | weft / vde_switch | better |"
    );
    let _ = writeln!(out, "|---|---|---|---|");
    let _ = writeln!(
        out,
        "| TCP Gbit/s | {} | {} | higher (1.00× = as fast) |",
        ratio(weft.tcp_gbps(), bridge.tcp_gbps()),
        ratio(weft.tcp_gbps(), vde.tcp_gbps())
    );
    let _ = writeln!(
        out,
        "| UDP 64 B kpps received | {} | {} | higher |",
        ratio(weft.udp_kpps(), bridge.udp_kpps()),
        ratio(weft.udp_kpps(), vde.udp_kpps())
    );
    let _ = writeln!(
        out,
        "| ping p50 round trip | {} | {} | **lower** (2.00× = twice the latency) |",
        ratio(weft.ping_p50(), bridge.ping_p50()),
        ratio(weft.ping_p50(), vde.ping_p50())
    );
    let _ = writeln!(
        out,
        "| switch CPU-s per GB | n/a (kernel) | {} | **lower** |",
        ratio(weft.cpu_per_gb(), vde.cpu_per_gb())
    );
    if !failures.is_empty() {
        let _ = writeln!(out, "\n### Failed measurements (left out of the medians)\n");
        for failure in failures {
            let _ = writeln!(out, "- {failure}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile_sorted(&v, 50.0), 2.5);
        assert_eq!(percentile_sorted(&v, 0.0), 1.0);
        assert_eq!(percentile_sorted(&v, 100.0), 4.0);
        assert!((percentile_sorted(&v, 99.0) - 3.97).abs() < 1e-9);
        assert!(percentile_sorted(&[], 50.0).is_nan());
    }

    #[test]
    fn summaries_and_cells() {
        let s = Summary::of(&[9.5, 8.0, 10.26]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.count), (9.5, 8.0, 10.26, 3));
        assert_eq!(s.cell(), "9.50 (8.00–10.3)");
        assert_eq!(Summary::of(&[412.4]).unwrap().cell(), "412");
        assert!(Summary::of(&[]).is_none());
    }

    #[test]
    fn ratios_of_medians() {
        let a = Summary::of(&[9.0]);
        let b = Summary::of(&[18.0]);
        assert_eq!(ratio(a, b), "0.50×");
        assert_eq!(ratio(a, None), "—");
    }

    #[test]
    fn sections_are_replaced_or_appended() {
        let doc = "# R\n\n## A\n\nold a\n\n## B\n\nb\n";
        assert_eq!(
            replace_section(doc, "## A", "## A\n\nnew a\n"),
            "# R\n\n## A\n\nnew a\n\n## B\n\nb\n"
        );
        assert_eq!(
            replace_section(doc, "## B", "## B\n\nnew b"),
            "# R\n\n## A\n\nold a\n\n## B\n\nnew b\n"
        );
        assert_eq!(
            replace_section(doc, "## C", "## C\n\nc\n"),
            "# R\n\n## A\n\nold a\n\n## B\n\nb\n\n## C\n\nc\n"
        );
        assert_eq!(replace_section("", "## C", "## C\n"), "## C\n");
        // A subsection (###) belongs to its section.
        let doc = "## A\n\n### a1\n\nx\n## B\n";
        assert_eq!(replace_section(doc, "## A", "## A\ny"), "## A\ny\n\n## B\n");
    }

    #[test]
    fn dates_in_utc() {
        assert_eq!(utc_from_unix(0), "1970-01-01 00:00:00");
        assert_eq!(utc_from_unix(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(utc_from_unix(1_700_000_000), "2023-11-14 22:13:20");
    }

    #[test]
    fn markdown_has_both_tables() {
        let mut weft = TopologyResults::default();
        weft.tcp.push(TcpSample {
            gbps: 9.0,
            bytes_received: 5.6e9,
            switch_cpu_seconds: Some(5.0),
            intervals: 2,
            stalled_intervals: 0,
            retransmits: None,
        });
        let mut bridge = TopologyResults::default();
        bridge.tcp.push(TcpSample {
            gbps: 18.0,
            bytes_received: 11e9,
            switch_cpu_seconds: None,
            intervals: 2,
            stalled_intervals: 0,
            retransmits: None,
        });
        let header = RunHeader {
            date_utc: "2026-01-01 00:00:00".into(),
            kernel: "6.1".into(),
            cpus: 2,
            runs: 1,
            seconds: 2,
            command: "weft-bench e2e".into(),
            versions: vec![],
            placement: "x".into(),
            wall_seconds: 1.0,
        };
        let text = e2e_markdown(
            &header,
            &[
                (Kind::Weft, weft),
                (Kind::Bridge, bridge),
                (Kind::Vde, TopologyResults::default()),
            ],
            &["vde run 1 UDP: boom".into()],
        );
        assert!(text.contains("| kernel bridge + veth | 18.0 |"));
        assert!(text.contains("| TCP Gbit/s | 0.50× | — |"));
        assert!(text.contains("n/a (kernel)"));
        assert!(text.contains("vde run 1 UDP: boom"));
    }
}
