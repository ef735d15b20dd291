//! A small deterministic random number generator.
//!
//! Every random choice of the pipeline (initial weights, data order, probe
//! selection, synthetic images) goes through this generator so that the same
//! config and seed give the same bytes on every machine and thread count.

/// SplitMix64: tiny, fast, and good enough for shuffles and initialisation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rng {
    state: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// An independent stream for one purpose (`"init"`, `"epoch-3"`, ...), so
    /// that adding a random choice in one place does not shift another.
    pub fn for_purpose(seed: u64, purpose: &str) -> Self {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in purpose.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        let mut rng = Self::new(seed ^ h.rotate_left(17));
        rng.next_u64();
        rng
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 24 bits of precision.
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
    }

    /// Uniform in [low, high).
    pub fn uniform(&mut self, low: f32, high: f32) -> f32 {
        low + (high - low) * self.next_f32()
    }

    /// Uniform integer in [0, n), without modulo bias.
    pub fn below(&mut self, n: usize) -> usize {
        assert!(n > 0, "Rng::below(0)");
        let n = n as u64;
        let zone = u64::MAX - (u64::MAX % n);
        loop {
            let x = self.next_u64();
            if x < zone {
                return (x % n) as usize;
            }
        }
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }

    /// One standard normal sample: the first of a pair
    /// ([`Rng::normal_pair`]), so that every normal sample of the pipeline
    /// has the same bits on every machine. Many samples at once:
    /// [`Rng::fill_normal`], which keeps both of each pair.
    pub fn normal(&mut self) -> f32 {
        self.normal_pair()[0]
    }

    /// Fills `out` with independent standard normal samples, two from each
    /// 64-bit draw ([`Rng::normal_pair`], in order); an odd length ends
    /// with the first sample of one more pair. The draws of a block are
    /// taken first, then turned into samples in a loop the compiler
    /// vectorises (the same operations, so the same bits).
    pub fn fill_normal(&mut self, out: &mut [f32]) {
        const PAIRS: usize = 64;
        let mut draws = [PairBits::default(); PAIRS];
        let (mut first, mut second) = ([0.0f32; PAIRS], [0.0f32; PAIRS]);
        for block in out.chunks_mut(2 * PAIRS) {
            for bits in &mut draws[..block.len().div_ceil(2)] {
                *bits = PairBits::of(self.next_u64());
            }
            for ((bits, first), second) in draws.iter().zip(&mut first).zip(&mut second) {
                [*first, *second] = bits.normal_pair();
            }
            for (i, value) in block.iter_mut().enumerate() {
                *value = if i % 2 == 0 { first[i / 2] } else { second[i / 2] };
            }
        }
    }

    /// Two independent standard normal samples from one 64-bit draw (see
    /// [`PairBits`]): the same bits on every machine, since no C library
    /// function (whose last bits differ between systems) takes part.
    pub fn normal_pair(&mut self) -> [f32; 2] {
        PairBits::of(self.next_u64()).normal_pair()
    }
}

/// The bits of one 64-bit draw that make a pair of standard normal
/// samples by Box-Muller: 23 for the radius `sqrt(-2 ln u1)`, `u1 = (2a +
/// 1) / 2^24` (never 0, so the radius stays below 5.8), and 24 for the
/// angle `2 pi u2`. Every operation is a basic `f32` or integer operation
/// (a series for `ln`, and for `sin` and `cos` after taking out whole
/// quarter turns), which IEEE 754 rounds alike everywhere.
#[derive(Clone, Copy, Default)]
struct PairBits {
    radius: u32,
    angle: u32,
}

impl PairBits {
    fn of(draw: u64) -> Self {
        PairBits { radius: (draw >> 41) as u32, angle: ((draw >> 16) & 0xFF_FFFF) as u32 }
    }

    #[inline(always)]
    fn normal_pair(self) -> [f32; 2] {
        let u1 = (self.radius * 2 + 1) as i32 as f32 * (1.0 / (1u32 << 24) as f32);
        let radius = (-2.0 * ln_of_positive(u1)).sqrt();
        // The angle is `angle / 2^22` quarter turns: the nearest whole
        // quarter `k` and the rest, within half a quarter.
        let k = (self.angle + (1 << 21)) >> 22;
        let rest = self.angle as i32 - (k << 22) as i32;
        let (sin, cos) = sin_cos_within_eighth_turn(rest as f32 * (std::f32::consts::FRAC_PI_2 / (1u32 << 22) as f32));
        // Turning by k quarters: (sin, cos) becomes (cos, -sin), (-sin,
        // -cos), (-cos, sin); a sign is flipped by its bit.
        let (sin, cos) = if k % 2 == 0 { (sin, cos) } else { (cos, sin) };
        let sin = f32::from_bits(sin.to_bits() ^ ((k & 2) << 30));
        let cos = f32::from_bits(cos.to_bits() ^ (((k + 1) & 2) << 30));
        [radius * cos, radius * sin]
    }
}

/// The name of the normal samples [`PairBits`] makes (what
/// [`Rng::fill_normal`], [`Rng::normal_pair`] and [`Rng::normal`] draw):
/// stored results drawn from them put it in their fingerprints, so that a
/// different sampler must take a new name and what the old one drew is no
/// longer up to date.
pub const NORMAL_PAIRS: &str = "box-muller-pairs-f32";

/// `ln x` for a positive normal `x`, within a few units in the last place
/// of `f32`: `x = m 2^e` with `m` in (1/sqrt 2, sqrt 2], and `ln m =
/// 2 atanh s` with `s = (m - 1) / (m + 1)`, `|s| < 0.172`, by its series
/// to `s^9` (the next term is below 1e-9).
#[inline(always)]
fn ln_of_positive(x: f32) -> f32 {
    let bits = x.to_bits();
    let exponent = (bits >> 23) as i32 - 127;
    let mantissa = f32::from_bits((bits & 0x007F_FFFF) | 0x3F80_0000);
    let (m, exponent) = if mantissa > std::f32::consts::SQRT_2 { (mantissa * 0.5, exponent + 1) } else { (mantissa, exponent) };
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let series = s * (2.0 + s2 * (2.0 / 3.0 + s2 * (2.0 / 5.0 + s2 * (2.0 / 7.0 + s2 * (2.0 / 9.0)))));
    exponent as f32 * std::f32::consts::LN_2 + series
}

/// `(sin x, cos x)` for `|x| <= pi / 4`, by their Taylor series to `x^9`
/// and `x^10` (the next terms are below 2e-9).
#[inline(always)]
fn sin_cos_within_eighth_turn(x: f32) -> (f32, f32) {
    let x2 = x * x;
    let sin = x * (1.0 + x2 * (-1.0 / 6.0 + x2 * (1.0 / 120.0 + x2 * (-1.0 / 5040.0 + x2 * (1.0 / 362_880.0)))));
    let cos = 1.0 + x2 * (-0.5 + x2 * (1.0 / 24.0 + x2 * (-1.0 / 720.0 + x2 * (1.0 / 40_320.0 + x2 * (-1.0 / 3_628_800.0)))));
    (sin, cos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_purposes_differ() {
        let a: Vec<u64> = (0..4).map(|_| Rng::new(5).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        let mut x = Rng::for_purpose(5, "init");
        let mut y = Rng::for_purpose(5, "epoch-0");
        assert_ne!(x.next_u64(), y.next_u64());
    }

    #[test]
    fn the_series_match_the_c_librarys_functions() {
        // ln from the smallest u1 to 1, 1.0001 apart (every binade, and
        // both sides of each sqrt 2 within it).
        let mut x = 1.0f32 / (1u64 << 24) as f32;
        while x <= 1.0 {
            let (ours, exact) = (ln_of_positive(x) as f64, (x as f64).ln());
            assert!((ours - exact).abs() <= 3e-7 * exact.abs().max(1.0), "ln {x}: {ours} against {exact}");
            x *= 1.000_1;
        }
        for i in 0..=4096 {
            let x = (i as f32 / 4096.0 - 0.5) * std::f32::consts::FRAC_PI_2;
            let (sin, cos) = sin_cos_within_eighth_turn(x);
            assert!((sin as f64 - (x as f64).sin()).abs() < 2e-7, "sin {x}");
            assert!((cos as f64 - (x as f64).cos()).abs() < 2e-7, "cos {x}");
        }
    }

    /// A million pairs against the standard normal: mean, variance and
    /// fourth moment, the correlation within a pair, and a chi-square test
    /// on bins between normal quantiles (scipy.stats.norm.ppf at 0.001,
    /// 0.1, ..., 0.9, 0.999).
    #[test]
    fn normal_pairs_are_standard_normal() {
        const QUANTILES: [f64; 11] = [
            -3.090232306167813,
            -1.2815515655446004,
            -0.8416212335729143,
            -0.5244005127080407,
            -0.2533471031357997,
            0.0,
            0.2533471031357997,
            0.5244005127080407,
            0.8416212335729143,
            1.2815515655446004,
            3.090232306167813,
        ];
        const PROBABILITIES: [f64; 12] = [0.001, 0.099, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.099, 0.001];
        let mut rng = Rng::for_purpose(11, "normal-pairs-test");
        let mut samples = vec![0.0f32; 1 << 21];
        rng.fill_normal(&mut samples);
        let n = samples.len() as f64;
        let moment = |k: i32| samples.iter().map(|&z| (z as f64).powi(k)).sum::<f64>() / n;
        // Five standard errors: sd of the mean 1/sqrt(n), of the second
        // moment sqrt(2/n), of the fourth sqrt(96/n).
        assert!(moment(1).abs() < 5.0 / n.sqrt(), "mean {}", moment(1));
        assert!((moment(2) - 1.0).abs() < 5.0 * (2.0 / n).sqrt(), "variance {}", moment(2));
        assert!((moment(4) - 3.0).abs() < 5.0 * (96.0 / n).sqrt(), "fourth moment {}", moment(4));
        let within_pairs = samples.chunks_exact(2).map(|p| p[0] as f64 * p[1] as f64).sum::<f64>() / (n / 2.0);
        assert!(within_pairs.abs() < 5.0 / (n / 2.0).sqrt(), "correlation within pairs {within_pairs}");
        let mut counts = [0usize; 12];
        for &z in &samples {
            counts[QUANTILES.iter().filter(|&&q| (z as f64) >= q).count()] += 1;
        }
        let chi_square: f64 = counts.iter().zip(PROBABILITIES).map(|(&c, p)| (c as f64 - n * p).powi(2) / (n * p)).sum();
        // scipy.stats.chi2.ppf(0.999, 11)
        assert!(chi_square < 31.264, "chi-square {chi_square} on 11 degrees of freedom, counts {counts:?}");
        assert!(samples.iter().all(|z| z.abs() < 5.8), "the radius stays below sqrt(-2 ln 2^-24)");
    }

    #[test]
    fn fill_normal_takes_pairs_in_order_and_ends_an_odd_length_with_a_first_sample() {
        let mut pairs = Rng::new(3);
        let expected: Vec<f32> = (0..3).flat_map(|_| pairs.normal_pair()).collect();
        let mut odd = vec![0.0f32; 5];
        Rng::new(3).fill_normal(&mut odd);
        assert_eq!(odd, expected[..5]);
    }

    #[test]
    fn shuffle_is_a_permutation_and_below_stays_in_range() {
        let mut rng = Rng::new(1);
        let mut v: Vec<usize> = (0..100).collect();
        rng.shuffle(&mut v);
        let mut sorted = v.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_ne!(v, sorted);
        for _ in 0..1000 {
            assert!(rng.below(7) < 7);
            let f = rng.next_f32();
            assert!((0.0..1.0).contains(&f));
        }
    }
}
