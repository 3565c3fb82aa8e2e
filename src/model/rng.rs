//! A small, serialisable random number generator (xoshiro256++).
//!
//! Burn's backend RNG is one global per backend, shared by every thread of the process, so two
//! trainings running side by side (the test harness does that) would draw from each other's
//! stream. Weights init, dropout masks and shuffling use this generator instead: its whole state
//! is four integers, stored in checkpoints so that a resumed run draws exactly what an
//! uninterrupted one would have drawn.

use serde::{Deserialize, Serialize};

/// xoshiro256++ with a SplitMix64 seeding step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rng {
    s: [u64; 4],
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    /// A generator seeded from `seed` and a stream name, so that init, dropout and shuffling
    /// drawn from one user seed do not share a sequence.
    pub fn new(seed: u64, stream: &str) -> Self {
        let mut x = seed;
        for b in stream.bytes() {
            x = splitmix64(&mut x) ^ u64::from(b);
        }
        let mut st = x;
        let s = [
            splitmix64(&mut st),
            splitmix64(&mut st),
            splitmix64(&mut st),
            splitmix64(&mut st),
        ];
        Self { s }
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1) with 24 bits of precision.
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
    }

    /// Uniform in [-k, k).
    pub fn uniform(&mut self, k: f32) -> f32 {
        (self.next_f32() * 2.0 - 1.0) * k
    }

    /// Uniform integer in [0, n); `n` must be positive.
    pub fn below(&mut self, n: usize) -> usize {
        // Multiply-shift: bias is below 2^-32 for the sizes used here (n < 2^32).
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
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
    fn streams_differ_and_repeat() {
        let a: Vec<u64> = (0..4).map(|_| Rng::new(7, "a").next_u64()).collect();
        assert!(a.iter().all(|v| *v == a[0]));
        assert_ne!(Rng::new(7, "a").next_u64(), Rng::new(7, "b").next_u64());
        assert_ne!(Rng::new(7, "a").next_u64(), Rng::new(8, "a").next_u64());
    }

    #[test]
    fn uniform_is_in_range_and_centred() {
        let mut r = Rng::new(1, "u");
        let xs: Vec<f32> = (0..10_000).map(|_| r.uniform(0.5)).collect();
        assert!(xs.iter().all(|x| (-0.5..0.5).contains(x)));
        let mean = xs.iter().sum::<f32>() / xs.len() as f32;
        assert!(mean.abs() < 0.02, "mean {mean}");
    }

    #[test]
    fn shuffle_is_a_permutation() {
        let mut v: Vec<usize> = (0..100).collect();
        Rng::new(3, "s").shuffle(&mut v);
        assert_ne!(v, (0..100).collect::<Vec<_>>());
        v.sort_unstable();
        assert_eq!(v, (0..100).collect::<Vec<_>>());
    }
}
