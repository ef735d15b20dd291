//! Summary measures of one attribution map.
//!
//! Each measure is a small pure function of the map's values (`&[f32]`,
//! any shape, read as a flat list of pixels) computed in `f64`. A measure
//! that is undefined for a map returns `None` (a null in the summary
//! table), never a silent 0:
//!
//! - the entropies of an all-zero part (no positive pixel for
//!   `entropy_pos`, no negative pixel for `entropy_neg`, an all-zero map
//!   for `entropy_abs`);
//! - the normalised entropies additionally of a one-pixel map (ln 1 = 0);
//! - `gini` of an all-zero map;
//! - every measure of an empty map, and every measure whose value is not
//!   finite (a map holding NaN or infinity);
//! - the per-logit norms when the explained logit is 0;
//! - `effective_complexity` of an all-zero map;
//! - the rank similarities (`rank_sim_*`) where the other checkpoint's map
//!   does not exist (`rank_sim_prev` at the first checkpoint,
//!   `rank_sim_init` in a run without step 0) or either map is constant.
//!
//! The rank similarities compare two maps of one image
//! ([`rank_similarity`] on their [`map_ranks`]); the stage pairs the maps.

pub use common::measures::{Measure, MeasureKind, Partner};
use common::ranks::{average_ranks, pearson};

/// Pixels whose magnitude exceeds this fraction of the map's largest count
/// towards `effective_complexity` (Quantus's default `eps` on a map
/// normalised by its largest magnitude).
pub const EFFECTIVE_COMPLEXITY_THRESHOLD: f64 = 1e-5;

/// A measure's value on one map.
pub trait Compute {
    /// The measure of one map that explains `logit`; `None` where
    /// undefined (see the module docs), and for the measures that compare
    /// two maps (`MeasureKind::Stability`), which this cannot compute.
    fn compute(&self, map: &[f32], logit: f32) -> Option<f64>;
}

impl Compute for Measure {
    fn compute(&self, map: &[f32], logit: f32) -> Option<f64> {
        if map.is_empty() {
            return None;
        }
        let per_logit = |norm: f64| (logit != 0.0).then(|| norm / (logit as f64).abs());
        let value = match self {
            Measure::Frobenius => Some(frobenius(map)),
            Measure::L1 => Some(l1(map)),
            Measure::EntropyPos => entropy_pos(map),
            Measure::EntropyNeg => entropy_neg(map),
            Measure::EntropyAbs => entropy_abs(map),
            Measure::EntropyPosNormalized => normalized(entropy_pos(map), map.len()),
            Measure::EntropyNegNormalized => normalized(entropy_neg(map), map.len()),
            Measure::EntropyAbsNormalized => normalized(entropy_abs(map), map.len()),
            Measure::PosFrac => Some(pos_frac(map)),
            Measure::NegFrac => Some(neg_frac(map)),
            Measure::PosNorm => Some(pos_norm(map)),
            Measure::NegNorm => Some(neg_norm(map)),
            Measure::Gini => gini(map),
            Measure::FrobeniusPerLogit => per_logit(frobenius(map)),
            Measure::L1PerLogit => per_logit(l1(map)),
            Measure::EffectiveComplexity => effective_complexity(map),
            Measure::RankSimPrev | Measure::RankSimFinal | Measure::RankSimInit => None,
        };
        value.filter(|v| v.is_finite())
    }
}

/// L2 norm `sqrt(sum x^2)`.
pub fn frobenius(map: &[f32]) -> f64 {
    l2(map.iter().map(|&x| x as f64))
}

/// L1 norm `sum |x|`.
pub fn l1(map: &[f32]) -> f64 {
    map.iter().map(|&x| (x as f64).abs()).sum()
}

/// L2 norm of the positive part.
pub fn pos_norm(map: &[f32]) -> f64 {
    l2(map.iter().map(|&x| (x as f64).max(0.0)))
}

/// L2 norm of the negative part.
pub fn neg_norm(map: &[f32]) -> f64 {
    l2(map.iter().map(|&x| (-(x as f64)).max(0.0)))
}

/// Fraction of pixels > 0 (0 for an empty map).
pub fn pos_frac(map: &[f32]) -> f64 {
    fraction(map, |x| x > 0.0)
}

/// Fraction of pixels < 0 (0 for an empty map).
pub fn neg_frac(map: &[f32]) -> f64 {
    fraction(map, |x| x < 0.0)
}

/// Entropy of the positive part; `None` when no pixel is positive.
pub fn entropy_pos(map: &[f32]) -> Option<f64> {
    entropy(map.iter().map(|&x| (x as f64).max(0.0)))
}

/// Entropy of the negative part's magnitudes; `None` when no pixel is negative.
pub fn entropy_neg(map: &[f32]) -> Option<f64> {
    entropy(map.iter().map(|&x| (-(x as f64)).max(0.0)))
}

/// Entropy of `|x|`; `None` for an all-zero map.
pub fn entropy_abs(map: &[f32]) -> Option<f64> {
    entropy(map.iter().map(|&x| (x as f64).abs()))
}

/// Hurley & Rickard's Gini index of `|x|` ("Comparing measures of sparsity",
/// IEEE Trans. Inf. Theory 2009): with the magnitudes sorted ascending,
/// `c_(1) <= ... <= c_(N)`,
/// `G = 1 - 2 * sum_k (c_(k) / ||c||_1) * (N - k + 1/2) / N`.
/// 0 for a uniform map, `1 - 1/N` for a single non-zero pixel; `None` for
/// an all-zero map.
pub fn gini(map: &[f32]) -> Option<f64> {
    let mut c: Vec<f64> = map.iter().map(|&x| (x as f64).abs()).collect();
    let total: f64 = c.iter().sum();
    if c.is_empty() || !(total > 0.0) {
        return None;
    }
    c.sort_by(|a, b| a.total_cmp(b));
    let n = c.len() as f64;
    let weighted: f64 = c.iter().enumerate().map(|(i, &v)| (v / total) * ((n - (i + 1) as f64 + 0.5) / n)).sum();
    Some(1.0 - 2.0 * weighted)
}

/// Pixels with `|x| > EFFECTIVE_COMPLEXITY_THRESHOLD · max |x|`; `None`
/// for an all-zero map.
pub fn effective_complexity(map: &[f32]) -> Option<f64> {
    let largest = map.iter().map(|&x| (x as f64).abs()).fold(0.0, f64::max);
    if !(largest > 0.0) {
        return None;
    }
    let threshold = EFFECTIVE_COMPLEXITY_THRESHOLD * largest;
    Some(map.iter().filter(|&&x| (x as f64).abs() > threshold).count() as f64)
}

/// A map's pixels ranked (ties sharing their mean rank), for
/// [`rank_similarity`]; `None` when a pixel is not finite.
pub fn map_ranks(map: &[f32]) -> Option<Vec<f64>> {
    map.iter().all(|x| x.is_finite()).then(|| average_ranks(&map.iter().map(|&x| x as f64).collect::<Vec<_>>()))
}

/// Spearman's rho between two maps of one image from their ranks; `None`
/// when either is constant or the maps differ in size.
pub fn rank_similarity(ranks: &[f64], other: &[f64]) -> Option<f64> {
    pearson(ranks, other)
}

/// Shannon entropy in nats of non-negative weights normalised to sum 1
/// (`0 ln 0 = 0`); `None` when the weights sum to 0.
fn entropy(weights: impl Iterator<Item = f64> + Clone) -> Option<f64> {
    let total: f64 = weights.clone().sum();
    if !(total > 0.0) {
        return None;
    }
    let h = weights.filter(|&w| w > 0.0).map(|w| {
        let p = w / total;
        -p * p.ln()
    });
    Some(h.sum::<f64>().max(0.0))
}

/// An entropy divided by `ln(pixels)`: `None` when the entropy is, or when the
/// map has one pixel (its maximal entropy is 0).
fn normalized(entropy: Option<f64>, pixels: usize) -> Option<f64> {
    if pixels < 2 {
        return None;
    }
    entropy.map(|h| h / (pixels as f64).ln())
}

fn l2(values: impl Iterator<Item = f64>) -> f64 {
    values.map(|v| v * v).sum::<f64>().sqrt()
}

fn fraction(map: &[f32], keep: impl Fn(f32) -> bool) -> f64 {
    if map.is_empty() {
        return 0.0;
    }
    map.iter().filter(|&&x| keep(x)).count() as f64 / map.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: Option<f64>, b: f64) {
        let a = a.unwrap_or_else(|| panic!("expected {b}, got None"));
        assert!((a - b).abs() < 1e-12, "expected {b}, got {a}");
    }

    fn all(map: &[f32]) -> Vec<(&'static str, Option<f64>)> {
        Measure::ALL.iter().filter(|m| m.kind() == MeasureKind::OneMap).map(|m| (m.name(), m.compute(map, 1.0))).collect()
    }

    #[test]
    fn mixed_map() {
        // map = [3, -4, 0, 1]  (4 pixels)
        // frobenius = sqrt(9 + 16 + 0 + 1) = sqrt(26)
        // l1 = 3 + 4 + 0 + 1 = 8
        // positive part [3, 0, 0, 1], sum 4: p = 3/4, 1/4
        //   entropy_pos = -(3/4 ln 3/4 + 1/4 ln 1/4) = 0.5623351446188083
        // negative part [0, 4, 0, 0]: one pixel, entropy_neg = 0
        // |map| = [3, 4, 0, 1], sum 8: p = 3/8, 4/8, 1/8
        //   entropy_abs = -(3/8 ln 3/8 + 1/2 ln 1/2 + 1/8 ln 1/8) = 0.9743147528693494
        // normalised: divided by ln 4 = 1.3862943611198906
        // pos_frac = 2/4, neg_frac = 1/4
        // pos_norm = sqrt(9 + 1) = sqrt(10), neg_norm = 4
        // gini: sorted |map| = [0, 1, 3, 4], ||c||_1 = 8, N = 4, weights (N-k+1/2)/N
        //   = 3.5/4, 2.5/4, 1.5/4, 0.5/4
        //   sum = (0*3.5 + 1*2.5 + 3*1.5 + 4*0.5) / (8*4) = 9/32
        //   G = 1 - 2 * 9/32 = 14/32 = 0.4375
        let map = [3.0, -4.0, 0.0, 1.0];
        let m = |measure: Measure| measure.compute(&map, 1.0);
        close(m(Measure::Frobenius), 26f64.sqrt());
        close(m(Measure::L1), 8.0);
        let h_pos = -(0.75f64 * 0.75f64.ln() + 0.25 * 0.25f64.ln());
        close(m(Measure::EntropyPos), h_pos);
        close(m(Measure::EntropyPos), 0.5623351446188083);
        close(m(Measure::EntropyNeg), 0.0);
        let h_abs = -(0.375f64 * 0.375f64.ln() + 0.5 * 0.5f64.ln() + 0.125 * 0.125f64.ln());
        close(m(Measure::EntropyAbs), h_abs);
        close(m(Measure::EntropyAbs), 0.9743147528693494);
        close(m(Measure::EntropyPosNormalized), h_pos / 4f64.ln());
        close(m(Measure::EntropyNegNormalized), 0.0);
        close(m(Measure::EntropyAbsNormalized), h_abs / 4f64.ln());
        close(m(Measure::PosFrac), 0.5);
        close(m(Measure::NegFrac), 0.25);
        close(m(Measure::PosNorm), 10f64.sqrt());
        close(m(Measure::NegNorm), 4.0);
        close(m(Measure::Gini), 0.4375);
    }

    #[test]
    fn uniform_map_has_maximal_entropy_and_zero_gini() {
        // map = [2, 2, 2, 2]: p = 1/4 each, entropy = ln 4, normalised 1;
        // gini: sum = 2*(3.5+2.5+1.5+0.5)/(8*4) = 16/32, G = 1 - 1 = 0
        // no negative pixel: entropy_neg undefined, neg_norm 0, neg_frac 0
        let map = [2.0; 4];
        close(Measure::EntropyAbs.compute(&map, 1.0), 4f64.ln());
        close(Measure::EntropyAbsNormalized.compute(&map, 1.0), 1.0);
        close(Measure::EntropyPosNormalized.compute(&map, 1.0), 1.0);
        close(Measure::Gini.compute(&map, 1.0), 0.0);
        assert_eq!(Measure::EntropyNeg.compute(&map, 1.0), None);
        assert_eq!(Measure::EntropyNegNormalized.compute(&map, 1.0), None);
        close(Measure::NegNorm.compute(&map, 1.0), 0.0);
        close(Measure::NegFrac.compute(&map, 1.0), 0.0);
        close(Measure::Frobenius.compute(&map, 1.0), 4.0);
    }

    #[test]
    fn all_zero_map() {
        // no mass anywhere: norms and fractions are 0; every entropy and gini
        // is undefined (null), never 0.
        let map = [0.0f32; 6];
        for (name, value) in all(&map) {
            match name {
                "frobenius"
                | "l1"
                | "pos_frac"
                | "neg_frac"
                | "pos_norm"
                | "neg_norm"
                | "frobenius_per_logit"
                | "l1_per_logit" => close(value, 0.0),
                _ => assert_eq!(value, None, "{name}"),
            }
        }
    }

    #[test]
    fn single_pixel_map() {
        // map = [-2.5]: frobenius = l1 = 2.5, neg_norm = 2.5, pos_norm = 0,
        // neg_frac = 1, pos_frac = 0; entropy_neg = entropy_abs = -1 ln 1 = 0;
        // entropy_pos undefined (no positive pixel); normalised entropies
        // undefined (ln 1 = 0); gini: 1 - 2 * 1 * (1 - 1 + 1/2)/1 = 0.
        let map = [-2.5f32];
        let expected: [(&str, Option<f64>); 16] = [
            ("frobenius", Some(2.5)),
            ("l1", Some(2.5)),
            ("entropy_pos", None),
            ("entropy_neg", Some(0.0)),
            ("entropy_abs", Some(0.0)),
            ("entropy_pos_normalized", None),
            ("entropy_neg_normalized", None),
            ("entropy_abs_normalized", None),
            ("pos_frac", Some(0.0)),
            ("neg_frac", Some(1.0)),
            ("pos_norm", Some(0.0)),
            ("neg_norm", Some(2.5)),
            ("gini", Some(0.0)),
            ("frobenius_per_logit", Some(2.5)),
            ("l1_per_logit", Some(2.5)),
            ("effective_complexity", Some(1.0)),
        ];
        assert_eq!(all(&map), expected);
    }

    #[test]
    fn effective_complexity_counts_pixels_above_a_fraction_of_the_largest() {
        // largest magnitude 2: the threshold is 2e-5; 1e-5 and 0 are below it,
        // -2e-5 is not above it, 3e-5 is.
        let map = [2.0f32, -1.0, 1e-5, 0.0, -2e-5, 3e-5];
        close(Measure::EffectiveComplexity.compute(&map, 1.0), 3.0);
        assert_eq!(Measure::EffectiveComplexity.compute(&[0.0f32; 4], 1.0), None);
        assert_eq!(Measure::RankSimFinal.compute(&map, 1.0), None, "stability measures need two maps");
    }

    /// Rank similarity is Spearman's rho with average ranks for ties:
    /// scipy 1.17.1, `scipy.stats.spearmanr([0, 1, 1, 3, -2, 5], [0, 2, 2, 1,
    /// -1, 4]).statistic` = 0.823529411764706 (ranks [2, 3.5, 3.5, 5, 1, 6]
    /// and [2, 4.5, 4.5, 3, 1, 6]).
    #[test]
    fn rank_similarity_is_spearman_between_the_maps() {
        let a = map_ranks(&[0.0, 1.0, 1.0, 3.0, -2.0, 5.0]).unwrap();
        let b = map_ranks(&[0.0, 2.0, 2.0, 1.0, -1.0, 4.0]).unwrap();
        assert_eq!(a, [2.0, 3.5, 3.5, 5.0, 1.0, 6.0]);
        let rho = rank_similarity(&a, &b).unwrap();
        assert!((rho - 0.823529411764706).abs() < 1e-12, "{rho}");
        assert!((rank_similarity(&a, &a).unwrap() - 1.0).abs() < 1e-12);
        // A constant map (an all-zero Grad-CAM) has no rank order.
        assert_eq!(rank_similarity(&a, &map_ranks(&[0.0; 6]).unwrap()), None);
        assert_eq!(map_ranks(&[0.0, f32::NAN]), None);
    }

    #[test]
    fn per_logit_norms_divide_by_the_magnitude_of_the_logit() {
        // map = [3, -4]: frobenius 5, l1 7; logit -2 -> 2.5 and 3.5; logit 0: undefined
        let map = [3.0f32, -4.0];
        close(Measure::FrobeniusPerLogit.compute(&map, -2.0), 2.5);
        close(Measure::L1PerLogit.compute(&map, -2.0), 3.5);
        assert_eq!(Measure::FrobeniusPerLogit.compute(&map, 0.0), None);
        assert_eq!(Measure::Frobenius.compute(&map, 0.0), Some(5.0), "the plain norm ignores the logit");
    }

    #[test]
    fn negative_only_map() {
        // map = [-1, -3, 0]: positive part empty -> entropy_pos null.
        // negative magnitudes [1, 3, 0], sum 4: p = 1/4, 3/4
        //   entropy_neg = entropy_abs = -(1/4 ln 1/4 + 3/4 ln 3/4) = 0.5623351446188083
        //   normalised by ln 3 = 1.0986122886681098 -> 0.5118595071429148
        // neg_frac = 2/3, pos_frac = 0, neg_norm = sqrt(10), pos_norm = 0
        // gini: sorted [0, 1, 3], N = 3, weights (3-k+1/2)/3 = 2.5/3, 1.5/3, 0.5/3
        //   sum = (0 + 1*1.5 + 3*0.5) / (4*3) = 3/12 = 0.25, G = 1 - 0.5 = 0.5
        let map = [-1.0f32, -3.0, 0.0];
        assert_eq!(Measure::EntropyPos.compute(&map, 1.0), None);
        assert_eq!(Measure::EntropyPosNormalized.compute(&map, 1.0), None);
        close(Measure::EntropyNeg.compute(&map, 1.0), 0.5623351446188083);
        close(Measure::EntropyAbs.compute(&map, 1.0), 0.5623351446188083);
        close(Measure::EntropyNegNormalized.compute(&map, 1.0), 0.5623351446188083 / 3f64.ln());
        close(Measure::EntropyAbsNormalized.compute(&map, 1.0), 0.5118595071429148);
        close(Measure::NegFrac.compute(&map, 1.0), 2.0 / 3.0);
        close(Measure::PosFrac.compute(&map, 1.0), 0.0);
        close(Measure::NegNorm.compute(&map, 1.0), 10f64.sqrt());
        close(Measure::PosNorm.compute(&map, 1.0), 0.0);
        close(Measure::Gini.compute(&map, 1.0), 0.5);
    }

    #[test]
    fn one_hot_map_is_maximally_sparse() {
        // map = [0, 0, 0, 5]: gini = 1 - 2 * 1 * (0.5/4) = 0.75 = 1 - 1/N;
        // entropy_abs = 0 (a single mass point), defined.
        let map = [0.0f32, 0.0, 0.0, 5.0];
        close(Measure::Gini.compute(&map, 1.0), 0.75);
        close(Measure::EntropyAbs.compute(&map, 1.0), 0.0);
        close(Measure::EntropyAbsNormalized.compute(&map, 1.0), 0.0);
    }

    #[test]
    fn empty_and_non_finite_maps_are_null() {
        for (name, value) in all(&[]) {
            assert_eq!(value, None, "{name}");
        }
        let map = [1.0f32, f32::NAN];
        assert_eq!(Measure::Frobenius.compute(&map, 1.0), None);
        assert_eq!(Measure::EntropyAbs.compute(&map, 1.0), None);
        let map = [1.0f32, f32::INFINITY];
        assert_eq!(Measure::L1.compute(&map, 1.0), None);
    }
}
