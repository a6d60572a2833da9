//! SplitMix64, the small seeded generator behind the DNS core's two uses of
//! randomness: the order of a multi-address answer and the id of a query
//! sent upstream.
//!
//! The core reads no global RNG: the caller passes a random `u64` with every
//! query and this generator stretches it. SplitMix64 (Steele, Lea and Flood,
//! "Fast splittable pseudorandom number generators", OOPSLA 2014; the
//! constants are the published ones) passes BigCrush and needs one `u64` of
//! state. It is not a cryptographic generator: the unpredictability of
//! upstream ids comes from the caller's seed, not from this mixer.

/// A SplitMix64 generator. See the module header.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator whose sequence is fixed by `seed`.
    pub(crate) fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// The next 16 random bits (the top ones, the best mixed).
    pub(crate) fn next_u16(&mut self) -> u16 {
        let [a, b, ..] = self.next_u64().to_be_bytes();
        u16::from_be_bytes([a, b])
    }

    /// A number in `0..n`, by Lemire's multiply-shift (bias below 2^-40 for
    /// the list lengths a DNS answer has). `n == 0` gives 0.
    pub(crate) fn below(&mut self, n: usize) -> usize {
        let n64 = u64::try_from(n).unwrap_or(u64::MAX);
        let wide = u128::from(self.next_u64()) * u128::from(n64);
        let [hi @ .., _, _, _, _, _, _, _, _] = wide.to_be_bytes();
        let high = u64::from_be_bytes(hi);
        // high < n64 <= usize::MAX, so the conversion cannot fail.
        usize::try_from(high).unwrap_or(0)
    }

    /// Fisher–Yates shuffle of `items` in place.
    pub(crate) fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_values() {
        // First outputs for seed 1234567, from the reference C implementation
        // (https://prng.di.unimi.it/splitmix64.c).
        let mut g = SplitMix64::new(1_234_567);
        assert_eq!(g.next_u64(), 6_457_827_717_110_365_317);
        assert_eq!(g.next_u64(), 3_203_168_211_198_807_973);
    }

    #[test]
    fn below_stays_in_range() {
        let mut g = SplitMix64::new(7);
        for n in [1usize, 2, 3, 5, 100, 65_536] {
            for _ in 0..1000 {
                assert!(g.below(n) < n);
            }
        }
        assert_eq!(g.below(0), 0);
    }

    #[test]
    fn shuffle_is_a_permutation() {
        let mut g = SplitMix64::new(42);
        let mut v: Vec<u32> = (0..50).collect();
        g.shuffle(&mut v);
        let mut sorted = v.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert_ne!(v, sorted, "50 elements almost never stay in order");
    }
}
