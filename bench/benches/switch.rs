//! Criterion micro-benchmarks of the switch core: ns per frame for the
//! forwarding decision (with and without port security), MAC table lookups at 1k and 1M entries, and the
//! gateway's ARP answer, a DNS answer for a local name.

#![allow(clippy::disallowed_methods)]

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use weft_vswitch::gateway::REPLY_HEADROOM;
use weft_vswitch::mac_table::MacTable;
use weft_vswitch::wire::packet::GatewayFrame;
use weft_vswitch::{GatewayConfig, MacAddr, NetworkId, PortId, Switch};

fn mac(n: u32) -> MacAddr {
    let [a, b, c, d] = n.to_be_bytes();
    MacAddr([0x02, 0x42, a, b, c, d])
}

fn frame(dst: MacAddr, src: MacAddr, len: usize) -> Vec<u8> {
    let mut f = dst.0.to_vec();
    f.extend_from_slice(&src.0);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    f.resize(len, 0);
    f
}

fn switch_decision(c: &mut Criterion) {
    let mut sw = Switch::new();
    sw.add_network(
        NetworkId(1),
        GatewayConfig {
            mac: MacAddr([0x02, 0x42, 10, 0, 0, 1]),
            ipv4: vec![Ipv4Addr::new(10, 0, 0, 1)],
            ipv6: vec![],
            outbound: true,
            host_loopback: false,
            dhcp: true,
        },
    )
    .expect("fresh switch");
    sw.add_port(PortId(1), NetworkId(1)).expect("fresh port");
    sw.add_port(PortId(2), NetworkId(1)).expect("fresh port");
    let now = Instant::now();
    let a_to_b = frame(mac(2), mac(1), 1514);
    let b_to_a = frame(mac(1), mac(2), 1514);
    sw.handle_frame(now, PortId(2), &b_to_a);
    let mut group = c.benchmark_group("switch");
    group.throughput(Throughput::Elements(1));
    group.bench_function("known_unicast_decision", |b| {
        b.iter(|| black_box(sw.handle_frame(now, PortId(1), black_box(&a_to_b))))
    });
    let arp = {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&mac(1).0);
        f.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
        f.extend_from_slice(&mac(1).0);
        f.extend_from_slice(&[10, 0, 0, 2, 0, 0, 0, 0, 0, 0, 10, 0, 0, 1]);
        f
    };
    // The same decision for a port with port security on: its MAC pinned
    // and every frame's source MAC and IPv4 address checked.
    let mut secured = frame(mac(4), mac(3), 1514);
    secured[14] = 0x45;
    secured[26..30].copy_from_slice(&[10, 0, 0, 3]);
    for (port, n) in [(PortId(3), 3u8), (PortId(4), 4)] {
        sw.add_port(port, NetworkId(1)).expect("fresh port");
        let identity = weft_vswitch::PortIdentity {
            mac: mac(u32::from(n)),
            ipv4: vec![Ipv4Addr::new(10, 0, 0, n)],
            ipv6: vec![],
            enforce: true,
        };
        sw.set_port_identity(port, identity, now);
    }
    assert_eq!(
        sw.handle_frame(now, PortId(3), &secured),
        weft_vswitch::Decision::Forward(PortId(4))
    );
    group.bench_function("known_unicast_decision_port_security", |b| {
        b.iter(|| black_box(sw.handle_frame(now, PortId(3), black_box(&secured))))
    });
    let mut out = vec![0u8; arp.len() + REPLY_HEADROOM];
    group.bench_function("gateway_arp_reply", |b| {
        b.iter(|| {
            let decision = sw.handle_frame(now, PortId(1), black_box(&arp));
            black_box(decision);
            // The driver parses a gateway frame once, then answers it.
            let parsed = GatewayFrame::parse(black_box(&arp)).expect("an Ethernet frame");
            black_box(sw.gateway_reply(PortId(1), &parsed, &mut out))
        })
    });
    group.finish();
}

fn mac_table(c: &mut Criterion) {
    let mut group = c.benchmark_group("mac_table_lookup");
    for entries in [1_000u32, 1_000_000] {
        let now = Instant::now();
        let mut table = MacTable::new(entries as usize, Duration::from_secs(300));
        for i in 0..entries {
            table.learn(mac(i), PortId(i % 64), now);
        }
        let mut i = 0u32;
        group.bench_function(format!("{entries}"), |b| {
            b.iter(|| {
                i = (i + 7919) % entries;
                black_box(table.lookup(mac(i), now))
            })
        });
    }
    group.finish();
    c.bench_function("mac_table_learn_refresh", |b| {
        let now = Instant::now();
        b.iter_batched_ref(
            || MacTable::new(1024, Duration::from_secs(300)),
            |table| {
                for i in 0..64 {
                    black_box(table.learn(mac(i), PortId(1), now));
                }
            },
            BatchSize::SmallInput,
        )
    });
}

fn segmentation(c: &mut Criterion) {
    use weft_vswitch::gso;
    use weft_vswitch::wire::vnet::VnetHeader;
    // A 64 KiB TCPv4 super-segment: Ethernet + IPv4 + TCP headers, 65000
    // bytes of payload, as a sandbox's kernel hands it over with TSO.
    let payload_len = 65_000usize;
    let mut frame = frame(mac(2), mac(1), 14);
    let total = u16::try_from(20 + 20 + payload_len).expect("fits");
    frame.extend_from_slice(&[
        0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
    ]);
    frame[16..18].copy_from_slice(&total.to_be_bytes());
    frame.extend_from_slice(&[
        0x9c, 0x40, 0x14, 0x51, 0, 0, 0, 1, 0, 0, 0, 1, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0,
    ]);
    frame.resize(frame.len() + payload_len, 0x5a);
    let mut header = [0u8; 10];
    header[0] = 1;
    header[1] = 1;
    header[4..6].copy_from_slice(&1448u16.to_le_bytes());
    header[6..8].copy_from_slice(&34u16.to_le_bytes());
    header[8..10].copy_from_slice(&16u16.to_le_bytes());
    let header = VnetHeader::new_checked(&header[..]).expect("10 bytes");
    let mut scratch = vec![0u8; 2048];
    let mut group = c.benchmark_group("gso");
    group.throughput(Throughput::Bytes(payload_len as u64));
    group.bench_function("segment_64k_tcpv4_mss1448", |b| {
        b.iter(|| {
            let mut bytes = 0usize;
            let n = gso::segment(&header, black_box(&frame), &mut scratch, |f| {
                bytes += f.len()
            });
            black_box((n, bytes))
        })
    });
    group.finish();
}

fn internet_checksum(c: &mut Criterion) {
    use weft_vswitch::wire::checksum;
    // One 64 KiB segment's payload: what segmenting it must read once.
    let data: Vec<u8> = (0..65_000u32).map(|i| (i * 7) as u8).collect();
    let mut group = c.benchmark_group("checksum");
    group.throughput(Throughput::Bytes(data.len() as u64));
    group.bench_function("sum_65000", |b| {
        b.iter(|| checksum::finish(checksum::sum(0, black_box(&data))))
    });
    group.finish();
}

fn dns_answer(c: &mut Criterion) {
    use std::net::{IpAddr, SocketAddr};
    use weft_services::dns::{Asker, DnsConfig, DnsServer, DnsTransport, Zone, ZoneEntry};
    let mut server = DnsServer::new(DnsConfig::default());
    let entries = (0..100u8)
        .map(|i| ZoneEntry {
            name: format!("sandbox{i}"),
            aliases: vec!["web".into()],
            addresses: vec![IpAddr::from([10, 0, 0, i + 2])],
        })
        .collect();
    server.set_zone(
        NetworkId(1),
        Zone {
            network_name: "n1".into(),
            entries,
        },
    );
    // A query for sandbox42 A IN, recursion desired, as dig sends it
    // (without EDNS).
    let mut query = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    query.push(9);
    query.extend_from_slice(b"sandbox42");
    query.extend_from_slice(&[0, 0, 1, 0, 1]);
    let asker = Asker {
        network: NetworkId(1),
        port: PortId(1),
        mac: mac(1),
        addr: SocketAddr::from(([10, 0, 0, 1], 40000)),
        server: IpAddr::from([10, 0, 0, 1]),
        transport: DnsTransport::Udp,
        connection: 0,
    };
    let now = Instant::now();
    let mut seed = 0u64;
    c.bench_function("dns_local_answer", |b| {
        b.iter(|| {
            seed += 1;
            server.handle_query(now, asker.clone(), black_box(&query), seed);
            black_box(server.poll_answer())
        })
    });
}

criterion_group!(
    benches,
    switch_decision,
    mac_table,
    internet_checksum,
    segmentation,
    dns_answer
);
criterion_main!(benches);
