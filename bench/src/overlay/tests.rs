use super::section::{markdown, Header};
use super::*;

fn tcp(gbps: f64) -> TcpSample {
    TcpSample {
        gbps,
        bytes_received: gbps * 1e9 / 8.0 * 5.0,
        switch_cpu_seconds: Some(5.0),
        intervals: 5,
        stalled_intervals: 0,
        retransmits: None,
    }
}

#[test]
fn every_namespace_is_the_harness_s_own() {
    for name in [UNDERLAY_NS]
        .iter()
        .chain(&WEFT_HOSTS)
        .chain(&WEFT_SANDBOXES)
        .chain(&WEFT_QUIC_SANDBOXES)
        .chain(&sides::WIREGUARD_HOSTS)
        .chain(&KERNEL_HOSTS)
        .chain(&KERNEL_SANDBOXES)
    {
        assert!(name.starts_with("wb-ov-"), "{name}");
    }
}

#[test]
fn report_has_the_ratio_and_the_verdict() {
    let mut results = BTreeMap::new();
    let mut weft = Figures {
        tcp: vec![tcp(4.0), tcp(5.0), tcp(6.0)],
        ..Figures::default()
    };
    for slot in &mut weft.daemons {
        slot.push(DaemonCpu {
            seconds: 4.5,
            top_thread: ("weft-datapath".into(), 4.4),
            wall: 5.0,
        });
    }
    weft.underlay = vec![UnderlayUdp {
        sent: 1_785_714,
        received: 2_000_000,
        rcvbuf_errors: 178_572,
    }];
    results.insert(Datapath::Weft, weft);
    let kernel = Figures {
        tcp: vec![tcp(10.0)],
        ..Figures::default()
    };
    results.insert(Datapath::Kernel, kernel);
    let quic = Figures {
        tcp: vec![tcp(3.5)],
        ..Figures::default()
    };
    results.insert(Datapath::WeftQuic, quic);
    let wireguard = Figures {
        tcp: vec![tcp(0.5)],
        ..Figures::default()
    };
    results.insert(Datapath::WireguardGo, wireguard);
    let header = Header {
        run: RunHeader {
            date_utc: "2026-01-01 00:00:00".into(),
            kernel: "6.1".into(),
            cpus: 2,
            runs: 3,
            seconds: 5,
            command: "weft-bench overlay".into(),
            versions: vec![],
            placement: "x".into(),
            wall_seconds: 1.0,
        },
        weft_ready_seconds: 2.0,
        sandbox_mtus: ["1450".into(), "1450".into()],
        quic_mtu: "1412".into(),
        quic_congestion: "none".into(),
        daemon_rss_kib: vec![Some(10240), None],
    };
    let text = markdown(&header, &results, &["boom".into()]);
    assert!(text.starts_with(SECTION_HEADING));
    assert!(text.contains("| 0.50× | ≥ 0.8× | ≥ 0.3× | **floor met, target not** |"));
    assert!(text.contains("| 5.00 (4.00–6.00) |"));
    assert!(text.contains("`weft-datapath` | 88.0 % |"), "{text}");
    assert!(text.contains("h1 10.0 MiB"));
    assert!(text.contains("| 1785714 | 1400 | 10.0 % |"), "{text}");
    assert!(text.contains("- boom"));
    assert!(
        text.contains(
            "| TCP Gbit/s, weft QUIC / weft VXLAN | 0.70× | ≥ 0.7× | ≥ 0.3× | **target met** |"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "| TCP Gbit/s, weft QUIC / wireguard-go | 7.00× | ≥ 6× | – | **target met** |"
        ),
        "{text}"
    );
}
