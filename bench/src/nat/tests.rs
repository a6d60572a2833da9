use super::section::{better_mtu, target_ratio, TARGETS};
use super::*;

fn sample(gbps: f64) -> TcpSample {
    TcpSample {
        gbps,
        bytes_received: gbps * 1e9 / 8.0 * 5.0,
        switch_cpu_seconds: Some(2.5),
        intervals: 5,
        stalled_intervals: u32::from(gbps < 1.0),
        retransmits: None,
    }
}

#[test]
fn inbound_ports_are_distinct() {
    let mut ports: Vec<u16> = Datapath::ALL
        .iter()
        .flat_map(|d| MTUS.iter().map(|m| inbound_port(*d, *m)))
        .collect();
    ports.push(OUT_PORT);
    let count = ports.len();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), count);
}

#[test]
fn sandbox_names_are_the_harness_s_own() {
    for datapath in Datapath::ALL {
        for mtu in MTUS {
            let name = sandbox_name(datapath, mtu);
            assert!(name.starts_with("wb-nat-"), "{name}");
        }
    }
}

#[test]
fn targets_and_mtu_choice() {
    let mut results: Results = BTreeMap::new();
    let mut put = |case, mtu, datapath, values: &[f64]| {
        results.insert(
            (case, mtu, datapath),
            values.iter().map(|v| sample(*v)).collect(),
        );
    };
    put(Case::OutLoopback, 1500, Datapath::Weft, &[8.0, 9.0, 10.0]);
    put(Case::OutLoopback, 1500, Datapath::Slirp, &[1.5]);
    put(Case::OutLoopback, 65520, Datapath::Weft, &[12.0]);
    put(Case::OutLoopback, 65520, Datapath::Pasta, &[14.0]);
    put(Case::In, 1500, Datapath::Weft, &[2.0]);
    put(Case::In, 65520, Datapath::Weft, &[10.0]);
    put(Case::In, 1500, Datapath::Pasta, &[12.0]);
    let r = target_ratio(&results, &TARGETS[0]).unwrap();
    assert!((r - 6.0).abs() < 1e-9);
    assert!(target_ratio(&results, &TARGETS[1]).unwrap() < 1.0);
    assert!(target_ratio(&results, &TARGETS[3]).is_none());
    let cases = [Case::OutLoopback, Case::In, Case::OutSplice];
    assert_eq!(better_mtu(&results, &cases), Some((65520, 2, 2)));

    let header = Header {
        run: RunHeader {
            date_utc: "2026-01-01 00:00:00".into(),
            kernel: "6.1".into(),
            cpus: 2,
            runs: 3,
            seconds: 5,
            command: "weft-bench nat".into(),
            versions: vec![],
            placement: "x".into(),
            wall_seconds: 1.0,
        },
        daemon_rss_kib: Some(10240),
    };
    let text = markdown(&header, &cases, &results, &["boom".into()]);
    assert!(text.starts_with(SECTION_HEADING));
    assert!(text.contains(
        "| out → host 127.0.0.1 (gateway mapping; pasta: TAP) | 1500 | 9.00 (8.00–10.0) | — | 1.50 | — | 6.00× |"
    ));
    assert!(text.contains("| ≥ 5.0× | **yes** | 6.00× |"));
    assert!(text.contains("| 1500 | 0/15 | — | 0/5 |"));
    assert!(text.contains("| ≥ 1.0× | **no** |"));
    assert!(text.contains("**MTU 65520**"));
    assert!(text.contains("- boom"));
}
