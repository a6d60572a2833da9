#![allow(clippy::disallowed_methods)]

use hickory_proto::op::Query;
use weft_vswitch::wire::ethernet::MacAddr;
use weft_vswitch::PortId;

use super::*;
use hickory_proto::rr::Name;
use proptest::prelude::*;

const FRONT: NetworkId = NetworkId(1);
const BACK: NetworkId = NetworkId(2);

fn upstream(i: u8) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, i], 53))
}

fn t0() -> Instant {
    Instant::now()
}

fn asker(network: NetworkId, transport: DnsTransport) -> Asker {
    Asker {
        network,
        port: PortId(7),
        mac: MacAddr([0x02, 0x42, 10, 0, 0, 9]),
        addr: SocketAddr::from(([10, 0, 0, 9], 40_000)),
        server: IpAddr::from([10, 0, 0, 1]),
        transport,
        connection: 0,
    }
}

fn udp(network: NetworkId) -> Asker {
    asker(network, DnsTransport::Udp)
}

fn query_with(id: u16, name: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}

fn query(id: u16, name: &str, qtype: RecordType) -> Vec<u8> {
    query_with(id, name, qtype, None)
}

fn entry(name: &str, aliases: &[&str], addresses: &[&str]) -> ZoneEntry {
    ZoneEntry {
        name: name.into(),
        aliases: aliases.iter().map(|a| (*a).into()).collect(),
        addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
    }
}

fn server_with(config: DnsConfig) -> DnsServer {
    let mut s = DnsServer::new(config);
    let mut front = vec![
        entry("web", &["www"], &["10.0.0.2", "fd00::2"]),
        entry("db", &[], &["10.0.0.3"]),
        entry("v6only", &[], &["fd00::4"]),
    ];
    for i in 0..6 {
        front.push(entry(
            &format!("pool{i}"),
            &["pool"],
            &[&format!("10.0.0.{}", 10 + i)],
        ));
    }
    let many: Vec<String> = (0..40).map(|i| format!("fd00::1:{i:x}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    front.push(entry("big", &[], &many));
    s.set_zone(
        FRONT,
        Zone {
            network_name: "frontnet".into(),
            entries: front,
        },
    );
    s.set_zone(
        BACK,
        Zone {
            network_name: "backnet".into(),
            entries: vec![entry("secret", &[], &["10.1.0.5", "fd01::5"])],
        },
    );
    s
}

fn config() -> DnsConfig {
    DnsConfig {
        upstreams: vec![upstream(1), upstream(2), upstream(3)],
        ..DnsConfig::default()
    }
}

fn server() -> DnsServer {
    server_with(config())
}

/// The one answer queued, parsed; checks its size against the limit.
fn answer(s: &mut DnsServer, limit: usize) -> Message {
    let (_, bytes) = s.poll_answer().expect("an answer");
    assert!(bytes.len() <= limit, "{} > {limit}", bytes.len());
    assert!(s.poll_answer().is_none(), "one answer only");
    Message::from_vec(&bytes).unwrap()
}

fn ask(s: &mut DnsServer, network: NetworkId, name: &str, qtype: RecordType) -> Message {
    s.handle_query(t0(), udp(network), &query(0xbeef, name, qtype), 1);
    let m = answer(s, 512);
    assert_eq!(m.metadata.id, 0xbeef);
    m
}

fn addresses(m: &Message) -> Vec<IpAddr> {
    m.answers
        .iter()
        .map(|r| match &r.data {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(a) => IpAddr::V6(a.0),
            other => panic!("unexpected record {other:?}"),
        })
        .collect()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn names_aliases_and_qualified_names_answer_locally() {
    let mut s = server();
    for name in [
        "web.",
        "web",
        "WEB.",
        "www.",
        "web.frontnet.",
        "Www.FrontNet",
        "web.frontnet",
    ] {
        let m = ask(&mut s, FRONT, name, RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{name}");
        assert_eq!(addresses(&m), vec![ip("10.0.0.2")], "{name}");
        assert!(m.metadata.authoritative);
        assert!(m.metadata.recursion_available);
        assert!(m.metadata.recursion_desired);
        assert_eq!(m.message_type, MessageType::Response);
        assert_eq!(m.answers[0].ttl, 10);
        // The question and owner name keep the client's spelling.
        assert!(m.queries[0]
            .name()
            .eq_case(&Name::from_ascii(name).unwrap().into_fqdn()));
        assert!(m.answers[0].name.eq_case(m.queries[0].name()));
        assert!(m.edns.is_none());
    }
    let m = ask(&mut s, FRONT, "web", RecordType::AAAA);
    assert_eq!(addresses(&m), vec![ip("fd00::2")]);
    assert!(s.poll_upstream().is_none(), "nothing forwarded");
    let c = s.counters();
    assert_eq!((c.queries, c.local_answers, c.forwarded), (8, 8, 0));
}

trait IntoFqdn {
    fn into_fqdn(self) -> Name;
}
impl IntoFqdn for Name {
    fn into_fqdn(mut self) -> Name {
        self.set_fqdn(true);
        self
    }
}

#[test]
fn names_of_other_networks_are_nxdomain_and_not_forwarded() {
    let mut s = server();
    let m = ask(&mut s, FRONT, "secret", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(m.answers.is_empty());
    let m = ask(&mut s, FRONT, "secret.backnet", RecordType::AAAA);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    let m = ask(&mut s, FRONT, "5.0.1.10.in-addr.arpa", RecordType::PTR);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    // The other way round, and from a network without a zone.
    let m = ask(&mut s, BACK, "web", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    let m = ask(&mut s, NetworkId(9), "db.frontnet", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(s.poll_upstream().is_none());
    assert_eq!(s.counters().nxdomain, 5);
    // Once the zone is gone the name is nobody's: forwarded.
    s.remove_zone(BACK);
    s.handle_query(t0(), udp(FRONT), &query(1, "secret", RecordType::A), 1);
    assert!(s.poll_upstream().is_some());
}

#[test]
fn other_families_and_types_are_nodata() {
    let mut s = server();
    for (name, qtype) in [
        ("db", RecordType::AAAA),
        ("v6only", RecordType::A),
        ("web", RecordType::MX),
        ("web", RecordType::TXT),
        ("web", RecordType::PTR),
        ("2.0.0.10.in-addr.arpa", RecordType::A),
    ] {
        let m = ask(&mut s, FRONT, name, qtype);
        assert_eq!(
            m.metadata.response_code,
            ResponseCode::NoError,
            "{name} {qtype}"
        );
        assert!(m.answers.is_empty(), "{name} {qtype}");
        assert!(m.metadata.authoritative);
    }
    let m = ask(&mut s, FRONT, "web", RecordType::ANY);
    assert_eq!(addresses(&m).len(), 2);
    assert!(s.poll_upstream().is_none());
}

#[test]
fn a_shared_alias_answers_every_address_shuffled_by_seed() {
    let mut s = server();
    let expected: Vec<IpAddr> = (10..16).map(|i| IpAddr::from([10, 0, 0, i])).collect();
    let mut orders = Vec::new();
    for seed in 0..16 {
        s.handle_query(t0(), udp(FRONT), &query(5, "pool", RecordType::A), seed);
        let got = addresses(&answer(&mut s, 512));
        let mut sorted = got.clone();
        sorted.sort();
        assert_eq!(sorted, expected);
        orders.push(got);
    }
    assert_ne!(orders[1], orders[2], "two seeds, two orders");
    orders.sort();
    orders.dedup();
    assert!(
        orders.len() > 8,
        "16 seeds gave only {} orders",
        orders.len()
    );
    // The same seed gives the same order.
    s.handle_query(t0(), udp(FRONT), &query(5, "pool", RecordType::A), 3);
    let a = addresses(&answer(&mut s, 512));
    s.handle_query(t0(), udp(FRONT), &query(5, "pool", RecordType::A), 3);
    assert_eq!(a, addresses(&answer(&mut s, 512)));
}

#[test]
fn ptr_answers_the_qualified_primary_name() {
    let mut s = server();
    let v6 = Name::from(ip("fd00::2")).to_ascii();
    for reverse in ["2.0.0.10.in-addr.arpa.", v6.as_str()] {
        let m = ask(&mut s, FRONT, reverse, RecordType::PTR);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        let [record] = m.answers.as_slice() else {
            panic!("one PTR for {reverse}: {m:?}");
        };
        let RData::PTR(target) = &record.data else {
            panic!("a PTR");
        };
        assert_eq!(target.0, Name::from_ascii("web.frontnet.").unwrap());
    }
    // Not an endpoint address: forwarded.
    s.handle_query(
        t0(),
        udp(FRONT),
        &query(9, "99.0.0.10.in-addr.arpa.", RecordType::PTR),
        1,
    );
    assert!(s.poll_answer().is_none());
    assert_eq!(s.poll_upstream().unwrap().0, upstream(1));
}

/// Parses the next upstream query and checks where it goes.
fn upstream_query_to(s: &mut DnsServer, to: SocketAddr) -> Message {
    let (addr, bytes) = s.poll_upstream().expect("an upstream query");
    assert_eq!(addr, to);
    Message::from_vec(&bytes).unwrap()
}

/// The upstream's answer to `q`, with one A record.
fn upstream_answer(q: &Message, rcode: ResponseCode, a: [u8; 4]) -> Vec<u8> {
    let mut m = Message::response(q.metadata.id, OpCode::Query);
    m.metadata.recursion_available = true;
    m.metadata.response_code = rcode;
    m.add_query(q.queries[0].clone());
    if rcode == ResponseCode::NoError {
        m.add_answer(Record::from_rdata(
            q.queries[0].name().clone(),
            300,
            RData::A(A(a.into())),
        ));
    }
    m.to_vec().unwrap()
}

#[test]
fn forwards_with_a_new_id_and_restores_the_askers() {
    let mut s = server();
    let now = t0();
    s.handle_query(
        now,
        udp(FRONT),
        &query(0x1234, "Example.COM", RecordType::A),
        99,
    );
    assert!(s.poll_answer().is_none());
    let q = upstream_query_to(&mut s, upstream(1));
    assert_ne!(q.metadata.id, 0x1234);
    assert!(q.metadata.recursion_desired);
    assert_eq!(q.queries[0].name().to_ascii(), "Example.COM.");
    assert_eq!(q.edns.as_ref().unwrap().max_payload(), 4096);
    assert_eq!(s.in_flight(), 1);
    assert_eq!(s.poll_timeout(), Some(now + Duration::from_millis(1500)));

    // The answer comes 30 ms later: that is the upstream's latency.
    s.handle_upstream(
        now + Duration::from_millis(30),
        upstream(1),
        &upstream_answer(&q, ResponseCode::NoError, [192, 0, 2, 80]),
    );
    let m = answer(&mut s, 512);
    assert_eq!(m.metadata.id, 0x1234);
    assert_eq!(addresses(&m), vec![ip("192.0.2.80")]);
    assert!(!m.metadata.authoritative);
    assert!(m.metadata.recursion_available);
    assert!(m.edns.is_none(), "the asker sent no OPT");
    assert_eq!(s.in_flight(), 0);
    assert_eq!(s.poll_timeout(), None);
    let c = s.counters();
    assert_eq!((c.forwarded, c.forwarded_answers, c.servfail), (1, 1, 0));
    let latency = c.upstream_latency;
    assert_eq!((latency.count, latency.sum_micros), (1, 30_000));
    let bucket = latency.buckets.iter().position(|n| *n == 1);
    assert_eq!(
        bucket.map(|i| crate::dns::UPSTREAM_LATENCY_BOUNDS_SECONDS[i]),
        Some(0.05),
        "30 ms is counted under the 50 ms bound"
    );
}

#[test]
fn upstream_ids_are_unique_in_flight() {
    let mut s = server_with(DnsConfig {
        max_in_flight: 4000,
        ..config()
    });
    let mut ids = Vec::new();
    // The same seed every time: the id still changes.
    for i in 0..4000u16 {
        s.handle_query(t0(), udp(FRONT), &query(i, "example.com", RecordType::A), 7);
        ids.push(upstream_query_to(&mut s, upstream(1)).metadata.id);
    }
    assert_eq!(s.in_flight(), 4000);
    let mut unique = ids.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "an id twice in flight");
    // Not a counter: consecutive ids are (almost) never +1 apart.
    let sequential = ids
        .windows(2)
        .filter(|w| w[1] == w[0].wrapping_add(1))
        .count();
    assert!(sequential < 5, "{sequential} sequential ids");
}

#[test]
fn servfail_and_refused_move_to_the_next_upstream() {
    let mut s = server();
    let now = t0();
    s.handle_query(now, udp(FRONT), &query(77, "example.com", RecordType::A), 1);
    let q = upstream_query_to(&mut s, upstream(1));
    s.handle_upstream(
        now,
        upstream(1),
        &upstream_answer(&q, ResponseCode::ServFail, [0; 4]),
    );
    assert!(s.poll_answer().is_none());
    let q2 = upstream_query_to(&mut s, upstream(2));
    assert_eq!(q2.metadata.id, q.metadata.id);
    s.handle_upstream(
        now,
        upstream(2),
        &upstream_answer(&q, ResponseCode::Refused, [0; 4]),
    );
    let q3 = upstream_query_to(&mut s, upstream(3));
    // A late failure from an earlier upstream is ignored.
    s.handle_upstream(
        now,
        upstream(1),
        &upstream_answer(&q, ResponseCode::ServFail, [0; 4]),
    );
    assert!(s.poll_upstream().is_none());
    s.handle_upstream(
        now,
        upstream(3),
        &upstream_answer(&q3, ResponseCode::NoError, [192, 0, 2, 3]),
    );
    let m = answer(&mut s, 512);
    assert_eq!(m.metadata.id, 77);
    assert_eq!(addresses(&m), vec![ip("192.0.2.3")]);
    let c = s.counters();
    assert_eq!((c.upstream_retries, c.dropped_responses), (2, 1));

    // Upstream 3 answered last: the next query starts there.
    s.handle_query(now, udp(FRONT), &query(78, "example.org", RecordType::A), 1);
    upstream_query_to(&mut s, upstream(3));
}

#[test]
fn all_upstreams_failing_is_servfail() {
    let mut s = server_with(DnsConfig {
        upstreams: vec![upstream(1), upstream(2)],
        ..config()
    });
    let now = t0();
    s.handle_query(
        now,
        udp(FRONT),
        &query_with(8, "example.com", RecordType::A, Some(1232)),
        1,
    );
    let q = upstream_query_to(&mut s, upstream(1));
    s.handle_upstream(
        now,
        upstream(1),
        &upstream_answer(&q, ResponseCode::ServFail, [0; 4]),
    );
    upstream_query_to(&mut s, upstream(2));
    s.handle_upstream(
        now,
        upstream(2),
        &upstream_answer(&q, ResponseCode::ServFail, [0; 4]),
    );
    let m = answer(&mut s, 1232);
    assert_eq!(m.metadata.id, 8);
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(m.queries.len(), 1);
    assert!(m.edns.is_some());
    assert_eq!(s.in_flight(), 0);
}

#[test]
fn timeouts_move_on_then_the_deadline_is_servfail() {
    let mut s = server();
    let now = t0();
    s.handle_query(now, udp(FRONT), &query(9, "example.com", RecordType::A), 1);
    let q = upstream_query_to(&mut s, upstream(1));
    s.handle_timeout(now + Duration::from_millis(1499));
    assert!(s.poll_upstream().is_none());
    let t1 = s.poll_timeout().unwrap();
    assert_eq!(t1, now + Duration::from_millis(1500));
    s.handle_timeout(t1);
    upstream_query_to(&mut s, upstream(2));
    let t2 = s.poll_timeout().unwrap();
    assert_eq!(t2, now + Duration::from_millis(3000));
    s.handle_timeout(t2);
    upstream_query_to(&mut s, upstream(3));
    // The third try is cut short by the 4 s deadline.
    let t3 = s.poll_timeout().unwrap();
    assert_eq!(t3, now + Duration::from_secs(4));
    s.handle_timeout(t3);
    assert!(s.poll_upstream().is_none());
    let m = answer(&mut s, 512);
    assert_eq!(m.metadata.id, 9);
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(s.poll_timeout(), None);
    // The answer arriving afterwards is dropped.
    s.handle_upstream(
        t3,
        upstream(1),
        &upstream_answer(&q, ResponseCode::NoError, [1, 2, 3, 4]),
    );
    assert!(s.poll_answer().is_none());
    assert_eq!(s.counters().dropped_responses, 1);
}

#[test]
fn a_late_answer_from_an_earlier_upstream_is_taken() {
    let mut s = server();
    let now = t0();
    s.handle_query(now, udp(FRONT), &query(10, "example.com", RecordType::A), 1);
    let q = upstream_query_to(&mut s, upstream(1));
    s.handle_timeout(now + Duration::from_millis(1500));
    upstream_query_to(&mut s, upstream(2));
    s.handle_upstream(
        now,
        upstream(1),
        &upstream_answer(&q, ResponseCode::NoError, [1, 2, 3, 4]),
    );
    assert_eq!(addresses(&answer(&mut s, 512)), vec![ip("1.2.3.4")]);
}

#[test]
fn spoofed_responses_are_dropped() {
    let mut s = server();
    let now = t0();
    s.handle_query(now, udp(FRONT), &query(11, "example.com", RecordType::A), 1);
    let q = upstream_query_to(&mut s, upstream(1));
    let good = upstream_answer(&q, ResponseCode::NoError, [1, 2, 3, 4]);

    // Wrong source: another upstream we did not ask, a random host.
    s.handle_upstream(now, upstream(2), &good);
    s.handle_upstream(now, SocketAddr::from(([203, 0, 113, 1], 53)), &good);
    s.handle_upstream(now, SocketAddr::from(([192, 0, 2, 1], 5353)), &good);
    // Wrong id.
    let mut wrong_id = good.clone();
    wrong_id[..2].copy_from_slice(&q.metadata.id.wrapping_add(1).to_be_bytes());
    s.handle_upstream(now, upstream(1), &wrong_id);
    // Wrong question: name, type, class.
    for question in [
        Query::query(Name::from_ascii("example.net.").unwrap(), RecordType::A),
        Query::query(q.queries[0].name().clone(), RecordType::AAAA),
        {
            let mut ch = q.queries[0].clone();
            ch.set_query_class(DNSClass::CH);
            ch
        },
    ] {
        let mut other = q.clone();
        other.queries = vec![question];
        s.handle_upstream(
            now,
            upstream(1),
            &upstream_answer(&other, ResponseCode::NoError, [6, 6, 6, 6]),
        );
    }
    // Not a response (QR clear), and garbage.
    let mut not_response = good.clone();
    not_response[2] &= 0x7f;
    s.handle_upstream(now, upstream(1), &not_response);
    s.handle_upstream(now, upstream(1), &good[..good.len() - 3]);
    assert!(s.poll_answer().is_none());
    assert_eq!(s.counters().dropped_responses, 9);
    assert_eq!(s.in_flight(), 1);

    // The real one, with the question's case changed: accepted.
    let mut upper = q.clone();
    upper.queries[0].set_name(Name::from_ascii("EXAMPLE.com.").unwrap());
    s.handle_upstream(
        now,
        upstream(1),
        &upstream_answer(&upper, ResponseCode::NoError, [1, 2, 3, 4]),
    );
    let m = answer(&mut s, 512);
    assert_eq!(m.metadata.id, 11);
    // The asker's own spelling of the question comes back.
    assert!(m.queries[0]
        .name()
        .eq_case(&Name::from_ascii("example.com.").unwrap()));
}

#[test]
fn the_in_flight_limit_answers_servfail_at_once() {
    let mut s = server_with(DnsConfig {
        max_in_flight: 2,
        ..config()
    });
    for id in 0..3 {
        s.handle_query(
            t0(),
            udp(FRONT),
            &query(id, "example.com", RecordType::A),
            1,
        );
    }
    assert_eq!(s.in_flight(), 2);
    let m = answer(&mut s, 512);
    assert_eq!(
        (m.metadata.id, m.metadata.response_code),
        (2, ResponseCode::ServFail)
    );
    let c = s.counters();
    assert_eq!((c.in_flight_full, c.servfail, c.forwarded), (1, 1, 2));
    // Local names still answer.
    assert_eq!(ask(&mut s, FRONT, "db", RecordType::A).answers.len(), 1);
}

#[test]
fn no_upstreams_is_servfail_at_once() {
    let mut s = server_with(DnsConfig::default());
    let m = ask(&mut s, FRONT, "example.com", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert!(s.poll_upstream().is_none());
    // Upstreams can come later.
    s.set_upstreams(vec![upstream(4)]);
    s.handle_query(t0(), udp(FRONT), &query(1, "example.com", RecordType::A), 1);
    upstream_query_to(&mut s, upstream(4));
}

#[test]
fn edns_size_and_truncation() {
    let mut s = server();
    // 40 AAAA records (28 bytes each compressed) do not fit 512 bytes.
    s.handle_query(t0(), udp(FRONT), &query(1, "big", RecordType::AAAA), 1);
    let m = answer(&mut s, 512);
    assert!(m.metadata.truncation);
    assert!(m.answers.is_empty());
    assert_eq!(m.queries.len(), 1);
    assert_eq!(s.counters().truncated, 1);

    // They fit 1232, and an OPT record comes back.
    s.handle_query(
        t0(),
        udp(FRONT),
        &query_with(2, "big", RecordType::AAAA, Some(1232)),
        1,
    );
    let m = answer(&mut s, 1232);
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 40);
    assert_eq!(m.edns.as_ref().unwrap().max_payload(), 4096);

    // An advertised size under 512 counts as 512: truncated, with OPT.
    s.handle_query(
        t0(),
        udp(FRONT),
        &query_with(3, "big", RecordType::AAAA, Some(100)),
        1,
    );
    let m = answer(&mut s, 512);
    assert!(m.metadata.truncation);
    assert!(m.edns.is_some());

    // Over TCP there is no UDP limit.
    s.handle_query(
        t0(),
        asker(FRONT, DnsTransport::Tcp),
        &query(4, "big", RecordType::AAAA),
        1,
    );
    let m = answer(&mut s, TCP_MAX_MESSAGE);
    assert_eq!(m.answers.len(), 40);

    // A forwarded answer is held to the same limit.
    s.handle_query(t0(), udp(FRONT), &query(5, "example.com", RecordType::A), 1);
    let q = upstream_query_to(&mut s, upstream(1));
    let mut big = Message::response(q.metadata.id, OpCode::Query);
    big.add_query(q.queries[0].clone());
    for i in 0..60u8 {
        big.add_answer(Record::from_rdata(
            q.queries[0].name().clone(),
            60,
            RData::A(A([192, 0, 2, i].into())),
        ));
    }
    s.handle_upstream(t0(), upstream(1), &big.to_vec().unwrap());
    let m = answer(&mut s, 512);
    assert!(m.metadata.truncation);
    assert_eq!(m.metadata.id, 5);
    assert_eq!(s.counters().truncated, 3);
}

#[test]
fn additional_records_go_before_tc() {
    let mut reply = Message::response(1, OpCode::Query);
    reply.add_query(Query::query(Name::from_ascii("x.").unwrap(), RecordType::A));
    reply.add_answer(Record::from_rdata(
        Name::from_ascii("x.").unwrap(),
        1,
        RData::A(A([1, 1, 1, 1].into())),
    ));
    for i in 0..40u8 {
        reply.add_additional(Record::from_rdata(
            Name::from_ascii(format!("glue{i}.example.")).unwrap(),
            1,
            RData::A(A([2, 2, 2, i].into())),
        ));
    }
    let (bytes, truncated) = encode_within(&mut reply, 512).unwrap();
    assert!(!truncated);
    let m = Message::from_vec(&bytes).unwrap();
    assert_eq!((m.answers.len(), m.additionals.len()), (1, 0));
    assert!(!m.metadata.truncation);
}

#[test]
fn malformed_queries() {
    let mut s = server();
    let id_only = |bytes: &[u8]| u16::from_be_bytes([bytes[0], bytes[1]]);

    // A readable header, garbage after it: FORMERR with the id.
    let mut garbage = query(0x4242, "web", RecordType::A);
    garbage.truncate(15);
    s.handle_query(t0(), udp(FRONT), &garbage, 1);
    let m = answer(&mut s, 512);
    assert_eq!(
        (m.metadata.id, m.metadata.response_code),
        (0x4242, ResponseCode::FormErr)
    );
    assert!(m.queries.is_empty());

    // No question; two questions; counts the bytes cannot hold.
    let mut none = Message::new(0x4243, MessageType::Query, OpCode::Query);
    let mut two = none.clone();
    two.metadata.id = 0x4244;
    two.add_query(Query::query(Name::from_ascii("a.").unwrap(), RecordType::A));
    two.add_query(Query::query(Name::from_ascii("b.").unwrap(), RecordType::A));
    s.handle_query(t0(), udp(FRONT), &none.to_vec().unwrap(), 1);
    assert_eq!(
        answer(&mut s, 512).metadata.response_code,
        ResponseCode::FormErr
    );
    s.handle_query(t0(), udp(FRONT), &two.to_vec().unwrap(), 1);
    assert_eq!(answer(&mut s, 512).metadata.id, 0x4244);
    let mut huge_counts = vec![
        0x42, 0x45, 0x01, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    ];
    huge_counts.extend_from_slice(&[0; 20]);
    s.handle_query(t0(), udp(FRONT), &huge_counts, 1);
    assert_eq!(id_only(&huge_counts), answer(&mut s, 512).metadata.id);

    // Opcode other than QUERY: NOTIMP.
    none.metadata.op_code = OpCode::Update;
    none.metadata.id = 0x4246;
    s.handle_query(t0(), udp(FRONT), &none.to_vec().unwrap(), 1);
    let m = answer(&mut s, 512);
    assert_eq!(
        (m.metadata.id, m.metadata.response_code),
        (0x4246, ResponseCode::NotImp)
    );

    // Too short for a header, or a response: not answered at all.
    s.handle_query(t0(), udp(FRONT), &[0x42, 0x47, 0], 1);
    let mut response = query(0x4248, "web", RecordType::A);
    response[2] |= 0x80;
    s.handle_query(t0(), udp(FRONT), &response, 1);
    assert!(s.poll_answer().is_none());

    let c = s.counters();
    assert_eq!((c.formerr, c.notimp, c.dropped_queries), (4, 1, 2));
}

#[test]
fn edns_version_other_than_zero_is_badvers() {
    let mut s = server();
    let mut m = Message::new(12, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(
        Name::from_ascii("web.").unwrap(),
        RecordType::A,
    ));
    let mut e = Edns::new();
    e.set_version(1);
    m.set_edns(e);
    s.handle_query(t0(), udp(FRONT), &m.to_vec().unwrap(), 1);
    let m = answer(&mut s, 512);
    // 16 is both BADVERS and BADSIG (RFC 6891, RFC 8945); hickory
    // decodes it as the latter.
    assert_eq!(u16::from(m.metadata.response_code), 16);
    assert_eq!(m.edns.as_ref().unwrap().version(), 0);
    assert_eq!(s.counters().badvers, 1);
}

#[test]
fn output_queues_are_bounded() {
    let mut s = server_with(DnsConfig {
        max_in_flight: 0,
        ..config()
    });
    for i in 0..(OUTPUT_SLACK + 10) {
        let id = u16::try_from(i).unwrap();
        s.handle_query(t0(), udp(FRONT), &query(id, "web", RecordType::A), 1);
    }
    assert_eq!(s.counters().dropped_outputs, 10);
    let mut n = 0;
    while s.poll_answer().is_some() {
        n += 1;
    }
    assert_eq!(n, OUTPUT_SLACK);
}

#[test]
fn invalid_zone_names_are_counted() {
    let mut s = server();
    s.set_zone(
        NetworkId(3),
        Zone {
            network_name: "third".into(),
            entries: vec![entry("ok", &["bad..alias"], &["10.3.0.2"])],
        },
    );
    assert_eq!(s.counters().invalid_names, 1);
    assert_eq!(
        ask(&mut s, NetworkId(3), "ok.third", RecordType::A)
            .answers
            .len(),
        1
    );
}

/// Drains both queues; every answer parses with `id`.
fn drain_checking(s: &mut DnsServer, id: Option<u16>) {
    while let Some((asker, bytes)) = s.poll_answer() {
        let limit = match asker.transport {
            DnsTransport::Udp => 4096,
            DnsTransport::Tcp => TCP_MAX_MESSAGE,
        };
        assert!(bytes.len() <= limit);
        let m = Message::from_vec(&bytes).expect("answers parse");
        assert_eq!(m.metadata.message_type, MessageType::Response);
        if let Some(id) = id {
            assert_eq!(m.metadata.id, id);
        }
    }
    while s.poll_upstream().is_some() {}
}

proptest! {
    #[test]
    fn random_bytes_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..600),
        seed in any::<u64>(),
        tcp in any::<bool>(),
    ) {
        let mut s = server();
        let transport = if tcp { DnsTransport::Tcp } else { DnsTransport::Udp };
        s.handle_query(t0(), asker(FRONT, transport), &bytes, seed);
        let id = (bytes.len() >= 2).then(|| u16::from_be_bytes([bytes[0], bytes[1]]));
        drain_checking(&mut s, id);
        s.handle_upstream(t0(), upstream(1), &bytes);
        s.handle_timeout(t0() + Duration::from_secs(10));
        drain_checking(&mut s, None);
    }

    #[test]
    fn mutated_queries_and_answers_never_panic(
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        seed in any::<u64>(),
    ) {
        let mut s = server();
        let mut q = query_with(0x5151, "example.com", RecordType::A, Some(1400));
        for (at, x) in &flips {
            let i = at % q.len();
            q[i] ^= x;
        }
        s.handle_query(t0(), udp(FRONT), &q, seed);
        let id = u16::from_be_bytes([q[0], q[1]]);
        while let Some((_, bytes)) = s.poll_answer() {
            prop_assert_eq!(Message::from_vec(&bytes).unwrap().metadata.id, id);
        }
        if let Some((to, sent)) = s.poll_upstream() {
            let sent = Message::from_vec(&sent).unwrap();
            let mut a = upstream_answer(&sent, ResponseCode::NoError, [1, 2, 3, 4]);
            for (at, x) in &flips {
                let i = at % a.len();
                a[i] ^= x;
            }
            s.handle_upstream(t0(), to, &a);
            s.handle_timeout(t0() + Duration::from_secs(10));
            let mut answers = 0;
            while let Some((_, bytes)) = s.poll_answer() {
                answers += 1;
                prop_assert_eq!(Message::from_vec(&bytes).unwrap().metadata.id, id);
            }
            prop_assert_eq!(answers, 1, "every forwarded query is answered once");
        }
    }
}
