//! A seeded random number generator for the Monte Carlo simulations that check the methods
//! (the `aa_simulation` binary, the origin's decision simulation). No statistical function
//! of the crate draws random numbers; simulations with the same seed print the same table.

/// SplitMix64, used only to expand the seed into xoshiro's 256-bit state (the seeding
/// procedure recommended by xoshiro's authors).
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// xoshiro256** (Blackman & Vigna): fast, small, and statistically strong enough for Monte
/// Carlo work at this scale.
pub struct Xoshiro256 {
    s: [u64; 4],
}

impl Xoshiro256 {
    pub fn new(seed: u64) -> Self {
        let mut state = seed;
        Self {
            s: [(); 4].map(|()| splitmix64(&mut state)),
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Number of successes in `n` Bernoulli trials whose success probability is
    /// `threshold / 2⁶⁴`, drawn trial by trial so the distribution is exactly binomial.
    pub fn binomial(&mut self, n: u64, threshold: u64) -> u64 {
        (0..n).map(|_| u64::from(self.next_u64() < threshold)).sum()
    }

    /// A uniform draw in [0, 1) with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / 9_007_199_254_740_992.0
    }
}

/// Converts a probability into the comparison threshold used by `Xoshiro256::binomial`.
pub fn threshold(p: f64) -> u64 {
    // The float-to-int cast saturates, so p = 1 maps to u64::MAX rather than overflowing.
    (p.clamp(0.0, 1.0) * 18_446_744_073_709_551_616.0) as u64
}
