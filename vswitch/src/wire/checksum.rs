//! The Internet checksum (RFC 1071): a ones'-complement sum of 16-bit words.
//!
//! [`sum`] adds the data as native-endian 32-bit words into a `u64`, which
//! the compiler turns into wide vector additions, then folds that once to
//! 16 bits and byte-swaps it into network order: the ones'-complement sum
//! is independent of byte order (RFC 1071 §2(B)), so no per-word swap is
//! needed. On a 64 KiB segment this is the cost that dominates software
//! segmentation, so it is written for speed but stays portable and safe.

/// Ones'-complement sum of `data` (as big-endian 16-bit words, an odd last
/// byte padded with zero) added to `initial`, not yet folded or inverted.
pub fn sum(initial: u64, data: &[u8]) -> u64 {
    // A u64 cannot overflow: 2^32 additions of < 2^32 each, far more
    // than any frame (< 64 KiB) holds.
    let mut native: u64 = 0;
    let mut blocks = data.chunks_exact(32);
    for block in &mut blocks {
        let mut lanes = [0u64; 8];
        for (lane, word) in lanes.iter_mut().zip(block.chunks_exact(4)) {
            *lane = u64::from(u32::from_ne_bytes([word[0], word[1], word[2], word[3]]));
        }
        native += lanes.iter().sum::<u64>();
    }
    let mut words = blocks.remainder().chunks_exact(4);
    for word in &mut words {
        native += u64::from(u32::from_ne_bytes([word[0], word[1], word[2], word[3]]));
    }
    let rest = words.remainder();
    let mut pairs = rest.chunks_exact(2);
    for pair in &mut pairs {
        native += u64::from(u16::from_ne_bytes([pair[0], pair[1]]));
    }
    // Folded, the native sum is the network-order sum with its bytes in
    // native order.
    let mut acc = initial + u64::from(u16::from_be(fold(native)));
    if let [last] = pairs.remainder() {
        acc += u64::from(*last) << 8;
    }
    acc
}

/// Fold a sum to 16 bits (with end-around carry).
pub fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    // The loop leaves acc <= 0xffff.
    u16::try_from(acc).unwrap_or(0xffff)
}

/// The checksum to store: the folded sum, inverted.
pub fn finish(acc: u64) -> u16 {
    !fold(acc)
}

/// Compute and store the checksum of an IPv4 header (`header`: the whole
/// header, options included, whose checksum field is overwritten).
pub fn fill_ipv4_header(header: &mut [u8]) {
    if header.len() < 12 {
        return;
    }
    header[10..12].copy_from_slice(&[0, 0]);
    let sum = finish(sum(0, header));
    header[10..12].copy_from_slice(&sum.to_be_bytes());
}

/// The sum of the IPv4 pseudo-header (RFC 793 §3.1).
pub fn pseudo_header_v4(src: [u8; 4], dst: [u8; 4], protocol: u8, length: u16) -> u64 {
    sum(0, &src) + sum(0, &dst) + u64::from(protocol) + u64::from(length)
}

/// The sum of the IPv6 pseudo-header (RFC 8200 §8.1).
pub fn pseudo_header_v6(src: [u8; 16], dst: [u8; 16], next_header: u8, length: u32) -> u64 {
    sum(0, &src) + sum(0, &dst) + u64::from(next_header) + u64::from(length)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(data: &[u8]) -> u16 {
        let mut acc: u32 = 0;
        for pair in data.chunks(2) {
            let hi = u32::from(pair[0]) << 8;
            let lo = pair.get(1).map_or(0, |b| u32::from(*b));
            acc += hi | lo;
        }
        while acc > 0xffff {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        !(acc as u16)
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(0, &data)), 0xddf2);
    }

    proptest::proptest! {
        #[test]
        fn matches_the_bytewise_reference(data in proptest::collection::vec(proptest::num::u8::ANY, 0..3000)) {
            proptest::prop_assert_eq!(finish(sum(0, &data)), reference(&data));
        }
    }
}
