//! IPv4 reassembly (RFC 791 §3.2, RFC 815) for the NAT: a datagram larger
//! than the sandbox's MTU leaves the sandbox's kernel as IP fragments, and
//! a host socket can only send it whole.
//!
//! # Theory of operation
//!
//! Fragments of one datagram share (network, source, destination, protocol,
//! identification). The first fragment of a key opens a pending
//! datagram: a payload buffer and the byte ranges received so far. Each
//! fragment's payload is copied at its offset; the one without "more
//! fragments" fixes the length; the one at offset 0 gives the Ethernet and
//! IP headers. When the ranges cover the whole length, the datagram is
//! rebuilt as one unfragmented frame (total length, flags and checksum
//! rewritten) and handed back, and the NAT takes it like any other frame.
//!
//! Untrusted input, so everything is bounded and checked:
//! - a fragment that overlaps one already received drops the whole
//!   datagram (RFC 5722's rule for IPv6; overlapping IPv4 fragments are an
//!   attack, not a network's doing), as do a length past 65535, a second
//!   last fragment that disagrees, and fragments past the known end;
//! - at most [`MAX_PENDING`] datagrams wait at once (a new one beyond that
//!   is dropped, not an old one evicted), each for at most [`TIMEOUT`]
//!   (Linux's `ipfrag_time`), and a datagram's buffer grows only as far as
//!   its fragments reach.
//!
//! IPv6 fragments are not reassembled here (dropped, as before).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use weft_vswitch::wire::checksum;
use weft_vswitch::wire::ip::IpLayout;
use weft_vswitch::NetworkId;

/// Datagrams being reassembled at once, all networks together.
pub const MAX_PENDING: usize = 64;
/// How long fragments wait for the rest of their datagram.
pub const TIMEOUT: Duration = Duration::from_secs(30);

const ETH: usize = 14;
/// Largest IPv4 datagram: the total length field's range.
const MAX_DATAGRAM: usize = 65_535;

/// What one fragment did.
#[derive(Debug, PartialEq, Eq)]
pub enum Fragment {
    /// Kept; the datagram is not complete yet.
    Held,
    /// The datagram is complete: the whole frame (Ethernet header, IPv4
    /// header without fragmentation, payload).
    Complete(Vec<u8>),
    /// Dropped: malformed, overlapping, too large, or no room.
    Dropped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    network: NetworkId,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    protocol: u8,
    id: u16,
}

#[derive(Debug)]
struct Pending {
    /// Ethernet and IPv4 header of the fragment at offset 0, once seen.
    headers: Option<Vec<u8>>,
    payload: Vec<u8>,
    /// Byte ranges of `payload` received, sorted, disjoint.
    received: Vec<(usize, usize)>,
    /// The payload's length, once the last fragment came.
    total: Option<usize>,
    deadline: Instant,
}

/// The datagrams being reassembled.
#[derive(Debug, Default)]
pub struct Reassembly {
    pending: BTreeMap<Key, Pending>,
}

impl Reassembly {
    /// Take one IPv4 fragment (an Ethernet frame whose IPv4 header has "more
    /// fragments" set or a non-zero offset) of `network`.
    pub fn push(&mut self, now: Instant, network: NetworkId, frame: &[u8]) -> Fragment {
        let Some(parsed) = parse(frame) else {
            return Fragment::Dropped;
        };
        let key = Key {
            network,
            src: parsed.src,
            dst: parsed.dst,
            protocol: parsed.protocol,
            id: parsed.id,
        };
        if !self.pending.contains_key(&key) && self.pending.len() >= MAX_PENDING {
            return Fragment::Dropped;
        }
        let pending = self.pending.entry(key).or_insert_with(|| Pending {
            headers: None,
            payload: Vec::new(),
            received: Vec::new(),
            total: None,
            deadline: now + TIMEOUT,
        });
        if pending.add(&parsed, frame).is_err() {
            self.pending.remove(&key);
            return Fragment::Dropped;
        }
        if !pending.is_complete() {
            return Fragment::Held;
        }
        match self.pending.remove(&key).and_then(Pending::into_frame) {
            Some(frame) => Fragment::Complete(frame),
            None => Fragment::Dropped,
        }
    }

    /// Datagrams waiting for more fragments.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Drop the datagrams whose fragments waited too long.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.pending.retain(|_, pending| pending.deadline > now);
    }

    /// When the next datagram times out.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.pending.values().map(|pending| pending.deadline).min()
    }
}

/// The parts of a fragment reassembly needs.
struct Parsed {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    protocol: u8,
    id: u16,
    header_len: usize,
    offset: usize,
    more: bool,
    payload_len: usize,
}

fn parse(frame: &[u8]) -> Option<Parsed> {
    let layout = IpLayout::parse(frame)?;
    let ip = frame.get(ETH..)?;
    let (header_len, total) = (layout.header_len, layout.total_len);
    if !layout.v4 || total < header_len || total > ip.len() {
        return None;
    }
    let flags_offset = u16::from_be_bytes([ip[6], ip[7]]);
    let src: [u8; 4] = ip.get(12..16)?.try_into().ok()?;
    let dst: [u8; 4] = ip.get(16..20)?.try_into().ok()?;
    Some(Parsed {
        src: Ipv4Addr::from(src),
        dst: Ipv4Addr::from(dst),
        protocol: layout.protocol,
        id: u16::from_be_bytes([ip[4], ip[5]]),
        header_len,
        offset: usize::from(flags_offset & 0x1fff) * 8,
        more: flags_offset & 0x2000 != 0,
        payload_len: total - header_len,
    })
}

/// Why a fragment ends its datagram.
struct Invalid;

impl Pending {
    fn add(&mut self, fragment: &Parsed, frame: &[u8]) -> Result<(), Invalid> {
        let start = fragment.offset;
        let end = start + fragment.payload_len;
        if end > MAX_DATAGRAM - 20 || (fragment.more && !fragment.payload_len.is_multiple_of(8)) {
            return Err(Invalid);
        }
        if fragment.payload_len == 0 && fragment.more {
            return Err(Invalid);
        }
        if !fragment.more {
            if self.total.is_some_and(|total| total != end) {
                return Err(Invalid);
            }
            self.total = Some(end);
        }
        if self.total.is_some_and(|total| end > total) {
            return Err(Invalid);
        }
        if self
            .received
            .iter()
            .any(|&(from, to)| start < to && from < end)
        {
            return Err(Invalid);
        }
        let ip_start = ETH;
        let payload_start = ip_start + fragment.header_len;
        let data = frame
            .get(payload_start..payload_start + fragment.payload_len)
            .ok_or(Invalid)?;
        if self.payload.len() < end {
            self.payload.resize(end, 0);
        }
        self.payload[start..end].copy_from_slice(data);
        if start == 0 {
            self.headers = Some(frame[..payload_start].to_vec());
        }
        let at = self.received.partition_point(|&(from, _)| from < start);
        self.received.insert(at, (start, end));
        Ok(())
    }

    fn is_complete(&self) -> bool {
        let Some(total) = self.total else {
            return false;
        };
        if self.headers.is_none() {
            return false;
        }
        let mut reached = 0;
        for &(from, to) in &self.received {
            if from != reached {
                return false;
            }
            reached = to;
        }
        reached == total
    }

    /// The whole datagram as one frame, its IPv4 header rewritten: total
    /// length, no fragmentation, checksum.
    fn into_frame(self) -> Option<Vec<u8>> {
        let mut frame = self.headers?;
        let header_len = frame.len() - ETH;
        let total = u16::try_from(header_len + self.payload.len()).ok()?;
        // The frame holds the headers only, so far.
        let ip = &mut frame[ETH..];
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        // Keep DF as it was; clear MF and the offset.
        ip[6] &= 0x40;
        ip[7] = 0;
        checksum::fill_ipv4_header(ip);
        frame.extend_from_slice(&self.payload);
        Some(frame)
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    /// An Ethernet frame with an IPv4 UDP datagram of `payload`.
    fn datagram(id: u16, payload: &[u8]) -> Vec<u8> {
        let mut frame = Vec::new();
        etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([10, 0, 0, 2], [192, 0, 2, 9], 64)
            .udp(4000, 7)
            .write(&mut frame, payload)
            .unwrap();
        frame[ETH + 4..ETH + 6].copy_from_slice(&id.to_be_bytes());
        // A datagram that gets fragmented does not say "don't fragment".
        frame[ETH + 6] = 0;
        checksum::fill_ipv4_header(&mut frame[ETH..ETH + 20]);
        frame
    }

    /// Cut `whole` (as `datagram` made it) into fragments of `size` payload
    /// bytes (a multiple of 8), as a sender's IP layer does.
    fn fragments(whole: &[u8], size: usize) -> Vec<Vec<u8>> {
        let headers = &whole[..ETH + 20];
        let body = &whole[ETH + 20..];
        let pieces = body.len().div_ceil(size);
        body.chunks(size)
            .enumerate()
            .map(|(i, piece)| {
                let mut frame = headers.to_vec();
                let total = u16::try_from(20 + piece.len()).unwrap();
                frame[ETH + 2..ETH + 4].copy_from_slice(&total.to_be_bytes());
                let mut flags_offset = u16::try_from(i * size / 8).unwrap();
                if i + 1 < pieces {
                    flags_offset |= 0x2000;
                }
                frame[ETH + 6..ETH + 8].copy_from_slice(&flags_offset.to_be_bytes());
                frame.extend_from_slice(piece);
                frame
            })
            .collect()
    }

    fn payload(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + 3) as u8).collect()
    }

    #[test]
    fn fragments_in_any_order_give_back_the_datagram() {
        let whole = datagram(77, &payload(4000));
        let mut pieces = fragments(&whole, 1480);
        assert_eq!(pieces.len(), 3);
        pieces.swap(0, 2);
        let t0 = Instant::now();
        let mut r = Reassembly::default();
        assert_eq!(r.push(t0, NetworkId(1), &pieces[0]), Fragment::Held);
        assert_eq!(r.push(t0, NetworkId(1), &pieces[1]), Fragment::Held);
        assert_eq!(r.pending(), 1);
        assert_eq!(
            r.push(t0, NetworkId(1), &pieces[2]),
            Fragment::Complete(whole)
        );
        assert_eq!(r.pending(), 0);
    }

    #[test]
    fn overlaps_duplicates_and_bad_lengths_drop_the_datagram() {
        let t0 = Instant::now();
        let whole = datagram(5, &payload(3000));
        let pieces = fragments(&whole, 1480);
        let mut r = Reassembly::default();
        assert_eq!(r.push(t0, NetworkId(1), &pieces[0]), Fragment::Held);
        // The same fragment again overlaps itself.
        assert_eq!(r.push(t0, NetworkId(1), &pieces[0]), Fragment::Dropped);
        assert_eq!(r.pending(), 0);
        // A "more fragments" piece whose length is not a multiple of 8.
        let mut odd = pieces[0].clone();
        odd.pop();
        let total = u16::try_from(odd.len() - ETH).unwrap();
        odd[ETH + 2..ETH + 4].copy_from_slice(&total.to_be_bytes());
        assert_eq!(r.push(t0, NetworkId(1), &odd), Fragment::Dropped);
        // A length field longer than the frame.
        let mut short = pieces[1].clone();
        short.truncate(ETH + 30);
        assert_eq!(r.push(t0, NetworkId(1), &short), Fragment::Dropped);
        // Beyond 65535 bytes.
        let mut far = pieces[2].clone();
        far[ETH + 6..ETH + 8].copy_from_slice(&0x1fffu16.to_be_bytes());
        assert_eq!(r.push(t0, NetworkId(1), &far), Fragment::Dropped);
        assert_eq!(r.pending(), 0);
    }

    #[test]
    fn waiting_is_bounded_in_count_and_time() {
        let t0 = Instant::now();
        let mut r = Reassembly::default();
        for id in 0..u16::try_from(MAX_PENDING).unwrap() {
            let first = fragments(&datagram(id, &payload(2000)), 1480).remove(0);
            assert_eq!(r.push(t0, NetworkId(1), &first), Fragment::Held);
        }
        let one_more = fragments(&datagram(999, &payload(2000)), 1480).remove(0);
        assert_eq!(r.push(t0, NetworkId(1), &one_more), Fragment::Dropped);
        assert_eq!(r.poll_timeout(), Some(t0 + TIMEOUT));
        r.handle_timeout(t0 + TIMEOUT - Duration::from_secs(1));
        assert_eq!(r.pending(), MAX_PENDING);
        r.handle_timeout(t0 + TIMEOUT);
        assert_eq!(r.pending(), 0);
        assert_eq!(
            r.push(t0 + TIMEOUT, NetworkId(1), &one_more),
            Fragment::Held
        );
    }

    #[test]
    fn networks_and_identifications_do_not_mix() {
        let t0 = Instant::now();
        let a = fragments(&datagram(1, &payload(2000)), 1480);
        let b = fragments(&datagram(2, &payload(2000)), 1480);
        let mut r = Reassembly::default();
        assert_eq!(r.push(t0, NetworkId(1), &a[0]), Fragment::Held);
        assert_eq!(r.push(t0, NetworkId(2), &a[1]), Fragment::Held);
        assert_eq!(r.push(t0, NetworkId(1), &b[1]), Fragment::Held);
        assert_eq!(r.pending(), 3);
        assert!(matches!(
            r.push(t0, NetworkId(1), &a[1]),
            Fragment::Complete(_)
        ));
    }

    proptest::proptest! {
        /// Any datagram cut into any 8-byte-aligned size and delivered in
        /// any order comes back byte for byte, once.
        #[test]
        fn any_order_reassembles_exactly(
            len in 1usize..9000,
            size_in_8 in 1usize..200,
            order in proptest::collection::vec(proptest::num::usize::ANY, 0..64),
        ) {
            let whole = datagram(9, &payload(len));
            let mut pieces = fragments(&whole, size_in_8 * 8);
            for (i, pick) in order.iter().enumerate() {
                let n = pieces.len();
                pieces.swap(i % n, pick % n);
            }
            let t0 = Instant::now();
            let mut r = Reassembly::default();
            let last = pieces.len() - 1;
            for (i, piece) in pieces.iter().enumerate() {
                let got = r.push(t0, NetworkId(1), piece);
                if pieces.len() == 1 {
                    // One "fragment" with neither flag: complete at once.
                    proptest::prop_assert_eq!(got, Fragment::Complete(whole.clone()));
                } else if i == last {
                    proptest::prop_assert_eq!(got, Fragment::Complete(whole.clone()));
                } else {
                    proptest::prop_assert_eq!(got, Fragment::Held);
                }
            }
            proptest::prop_assert_eq!(r.pending(), 0);
        }
    }
}
