//! Rank correlations of two series observed at the same checkpoints, with
//! inference that allows for serial dependence (docs/DESIGN.md, "Trend
//! statistics").
//!
//! A rho over the checkpoints of one run correlates two trending,
//! autocorrelated series: the t-test of independent pairs rejects far too
//! often (two independent AR(1) series with phi = 0.8 and n = 25 pass it
//! about a quarter of the time). Three statistics, each with a nominal and
//! a robust p-value:
//!
//! - `spearman`: rho of the two series' levels;
//! - `spearman_diff`: rho of their first differences, which removes a
//!   common trend and most of the autocorrelation (the increments of a
//!   random walk are independent);
//! - `partial_spearman`: rho of the levels given a third series (the
//!   training loss), from the three pairwise rank correlations.
//!
//! The robust p-value is Student's t with `n_eff - 2` degrees of freedom
//! (`n_eff - 3` for the partial), where `n_eff` is the effective sample
//! size of Pyper & Peterman (1998, Can. J. Fish. Aquat. Sci. 55:2127),
//! the modified Chelton (1984) estimator:
//!
//! ```text
//! 1/n_eff = 1/n + (2/n) Σ_{j=1}^{n/5} ((n - j)/n) ρ_x(j) ρ_y(j)
//! ```
//!
//! with ρ the sample autocorrelations of the ranked series, n_eff kept in
//! [4, n]. The interval is Fisher's z with variance 1.06/(n_eff - 3)
//! (Fieller, Hartley & Pearson 1957). The Monte Carlo calibration
//! (`analyzer --calibrate`, [`crate::calibration`]) measures each one's
//! size under independent AR(1) series and random walks: `spearman_diff`
//! with `p_robust` holds its size and decides the report's significance
//! marks; the others are reported as they come.

use statrs::distribution::{ContinuousCDF, StudentsT};

use crate::spearman::{average_ranks, pearson};

/// Fewest pairs a rho is reported for.
pub const MIN_PAIRS: usize = 4;

/// A correlation with its nominal and serial-dependence-aware inference.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Inference {
    pub rho: f64,
    /// Two-sided, Student's t with n - 2 (partial: n - 3) df: valid for
    /// independent pairs only.
    pub p_value: f64,
    /// Two-sided, Student's t with n_eff - 2 (partial: n_eff - 3) df.
    pub p_robust: f64,
    pub n: usize,
    pub n_eff: f64,
    /// 95% interval by Fisher's z on n_eff.
    pub ci_low: f64,
    pub ci_high: f64,
}

impl Inference {
    /// The inference of a rho over `n` pairs with effective size `n_eff`,
    /// conditioned on `controls` further series: t with n - 2 - controls
    /// (robust: n_eff - 2 - controls) df, the interval on n_eff - controls.
    fn new(rho: f64, n: usize, n_eff: f64, controls: usize) -> Self {
        let controls = controls as f64;
        let lost = 2.0 + controls;
        let (ci_low, ci_high) = interval(rho, n_eff - controls);
        Self { rho, p_value: t_p_value(rho, n as f64 - lost), p_robust: t_p_value(rho, n_eff - lost), n, n_eff, ci_low, ci_high }
    }
}

/// Lag-`j` sample autocorrelation of `x` (mean removed, biased
/// denominator, as in the Pyper-Peterman estimator).
pub fn autocorrelation(x: &[f64], j: usize) -> f64 {
    let n = x.len();
    let mean = x.iter().sum::<f64>() / n as f64;
    let c0: f64 = x.iter().map(|v| (v - mean) * (v - mean)).sum();
    if c0 == 0.0 || j >= n {
        return 0.0;
    }
    let cj: f64 = (0..n - j).map(|t| (x[t] - mean) * (x[t + j] - mean)).sum();
    cj / c0
}

/// Pyper and Peterman's effective sample size of the pair (see the module
/// docs), in [4, n] (n when n < 4).
pub fn effective_size(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len();
    if n < MIN_PAIRS {
        return n as f64;
    }
    let nf = n as f64;
    let lags = n / 5;
    let sum: f64 = (1..=lags).map(|j| (nf - j as f64) / nf * autocorrelation(x, j) * autocorrelation(y, j)).sum();
    let inverse = 1.0 / nf + 2.0 / nf * sum;
    if inverse <= 0.0 {
        return nf;
    }
    (1.0 / inverse).clamp(MIN_PAIRS as f64, nf)
}

/// Two-sided p-value of a correlation `r` under H0: rho = 0, Student's t
/// with `df` degrees of freedom (the t form scipy uses for Spearman).
pub fn t_p_value(r: f64, df: f64) -> f64 {
    if r.abs() >= 1.0 {
        return 0.0;
    }
    let t = r * (df / ((1.0 - r) * (1.0 + r))).sqrt();
    let dist = StudentsT::new(0.0, 1.0, df).expect("df > 0");
    (2.0 * dist.sf(t.abs())).min(1.0)
}

fn interval(rho: f64, n_eff: f64) -> (f64, f64) {
    if n_eff <= 3.5 {
        return (-1.0, 1.0);
    }
    let z = rho.clamp(-0.999_999_999, 0.999_999_999).atanh();
    let half = 1.959_963_984_540_054 * (1.06 / (n_eff - 3.0)).sqrt();
    ((z - half).tanh(), (z + half).tanh())
}

/// Spearman's rho of the levels, with both inferences; None under
/// [`MIN_PAIRS`] pairs or when a side is constant.
pub fn spearman_levels(x: &[f64], y: &[f64]) -> Option<Inference> {
    assert_eq!(x.len(), y.len(), "paired series");
    let n = x.len();
    if n < MIN_PAIRS {
        return None;
    }
    let (rx, ry) = (average_ranks(x), average_ranks(y));
    let rho = pearson(&rx, &ry)?;
    let n_eff = effective_size(&rx, &ry);
    Some(Inference::new(rho, n, n_eff, 0))
}

/// Spearman's rho of the first differences (n - 1 pairs of increments).
pub fn spearman_of_differences(x: &[f64], y: &[f64]) -> Option<Inference> {
    assert_eq!(x.len(), y.len(), "paired series");
    if x.len() < 2 {
        return None;
    }
    let dx: Vec<f64> = x.windows(2).map(|w| w[1] - w[0]).collect();
    let dy: Vec<f64> = y.windows(2).map(|w| w[1] - w[0]).collect();
    spearman_levels(&dx, &dy)
}

/// Spearman's partial rho of `x` and `y` given `z`:
/// `(r_xy - r_xz r_yz) / sqrt((1 - r_xz²)(1 - r_yz²))` of the rank
/// correlations, tested with n - 3 (robust: n_eff - 3) df, n_eff from the
/// ranks of x and y.
pub fn partial_spearman(x: &[f64], y: &[f64], z: &[f64]) -> Option<Inference> {
    assert!(x.len() == y.len() && y.len() == z.len(), "paired series");
    let n = x.len();
    if n < MIN_PAIRS + 1 {
        return None;
    }
    let (rx, ry, rz) = (average_ranks(x), average_ranks(y), average_ranks(z));
    let (rxy, rxz, ryz) = (pearson(&rx, &ry)?, pearson(&rx, &rz)?, pearson(&ry, &rz)?);
    let denominator = ((1.0 - rxz * rxz) * (1.0 - ryz * ryz)).sqrt();
    if !(denominator > 0.0) {
        return None;
    }
    let rho = ((rxy - rxz * ryz) / denominator).clamp(-1.0, 1.0);
    let n_eff = effective_size(&rx, &ry).max(MIN_PAIRS as f64 + 0.5);
    Some(Inference::new(rho, n, n_eff, 1))
}

/// Benjamini-Hochberg adjusted p-values (q-values), in the order given;
/// `None`s stay `None` and do not count towards the number of tests.
pub fn benjamini_hochberg(p: &[Option<f64>]) -> Vec<Option<f64>> {
    let mut order: Vec<usize> = (0..p.len()).filter(|&i| p[i].is_some()).collect();
    let m = order.len() as f64;
    order.sort_by(|&a, &b| p[a].unwrap().total_cmp(&p[b].unwrap()));
    let mut q = vec![None; p.len()];
    let mut running = 1.0f64;
    for (rank, &i) in order.iter().enumerate().rev() {
        let value = (p[i].unwrap() * m / (rank + 1) as f64).min(1.0);
        running = running.min(value);
        q[i] = Some(running);
    }
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64, what: &str) {
        assert!((a - b).abs() <= tol * b.abs().max(1e-300), "{what}: expected {b:e}, got {a:e}");
    }

    /// By hand: x = 1 2 ... 10 (a pure trend): mean 5.5, c0 = 82.5.
    #[test]
    fn autocorrelation_of_a_trend_by_hand() {
        let x: Vec<f64> = (1..=10).map(|v| v as f64).collect();
        // c1 = Σ_{t=1}^{9} (t-5.5)(t-4.5) = Σ (t² - 10t + 24.75) for t = 1..9
        //    = 285 - 450 + 222.75 = 57.75; rho(1) = 57.75 / 82.5 = 0.7
        close(autocorrelation(&x, 1), 0.7, 1e-12, "lag 1");
        // c2 = Σ_{t=1}^{8} (t-5.5)(t-3.5) = Σ (t² - 9t + 19.25) = 204 - 324 + 154 = 34
        close(autocorrelation(&x, 2), 34.0 / 82.5, 1e-12, "lag 2");
        assert_eq!(autocorrelation(&[1.0; 5], 1), 0.0);
    }

    /// n = 10, lags 1..2: 1/n_eff = 0.1 + 0.2 (0.9 · 0.7² + 0.8 · (34/82.5)²)
    /// for two identical trends.
    #[test]
    fn effective_size_by_hand() {
        let x: Vec<f64> = (1..=10).map(|v| v as f64).collect();
        let r2 = 34.0f64 / 82.5;
        let expected = 1.0 / (0.1 + 0.2 * (0.9 * 0.49 + 0.8 * r2 * r2));
        close(effective_size(&x, &x), expected, 1e-12, "n_eff");
        // No autocorrelation shared: alternating signs against a trend give
        // a negative product, which is capped at n.
        let alternating: Vec<f64> = (0..10).map(|i| if i % 2 == 0 { 1.0 } else { -1.0 }).collect();
        assert_eq!(effective_size(&x, &alternating), 10.0);
    }

    #[test]
    fn benjamini_hochberg_by_hand() {
        // p = 0.01, 0.04, 0.03, None, 0.5 (m = 4): sorted 0.01 0.03 0.04 0.5,
        // raw q = 0.04, 0.06, 0.0533, 0.5, monotone from the top:
        // 0.04, 0.0533, 0.0533, 0.5.
        let q = benjamini_hochberg(&[Some(0.01), Some(0.04), Some(0.03), None, Some(0.5)]);
        let expect = [Some(0.04), Some(0.04 * 4.0 / 3.0), Some(0.04 * 4.0 / 3.0), None, Some(0.5)];
        for (a, b) in q.iter().zip(expect) {
            match (a, b) {
                (Some(a), Some(b)) => close(*a, b, 1e-12, "q"),
                _ => assert_eq!(*a, b),
            }
        }
    }

    /// The nominal values are scipy 1.17.1's `spearmanr(x, y)` and
    /// `spearmanr(np.diff(x), np.diff(y))`; the partial is the formula
    /// computed in numpy from `scipy.stats.rankdata` and `np.corrcoef`, its
    /// p-value from `scipy.stats.t.sf` with n - 3 df.
    #[test]
    fn nominal_values_match_scipy() {
        let x = [0.5, 1.2, 1.9, 3.3, 2.0, 2.8, 4.0, 7.1, 5.1, 4.4, 6.4, 9.0];
        let y = [9.0, 7.5, 8.0, 3.0, 5.0, 5.5, 6.5, 1.0, 4.0, 3.5, 2.5, 0.5];
        let z = [3.0, 2.0, 2.5, 1.0, 1.5, 1.2, 2.2, 0.5, 0.7, 0.9, 0.4, 0.1];
        let levels = spearman_levels(&x, &y).unwrap();
        close(levels.rho, SCIPY_LEVELS.0, 1e-12, "rho");
        close(levels.p_value, SCIPY_LEVELS.1, 1e-9, "p");
        let diff = spearman_of_differences(&x, &y).unwrap();
        close(diff.rho, SCIPY_DIFF.0, 1e-12, "diff rho");
        close(diff.p_value, SCIPY_DIFF.1, 1e-9, "diff p");
        assert_eq!(diff.n, 11);
        let partial = partial_spearman(&x, &y, &z).unwrap();
        close(partial.rho, SCIPY_PARTIAL.0, 1e-12, "partial rho");
        close(partial.p_value, SCIPY_PARTIAL.1, 1e-9, "partial p");
        assert!(levels.p_robust >= levels.p_value, "the robust p-value is never smaller here");
    }

    // (rho, p) from scipy; see `nominal_values_match_scipy`.
    const SCIPY_LEVELS: (f64, f64) = (-0.9020979020979022, 5.9978574465376914e-05);
    const SCIPY_DIFF: (f64, f64) = (-0.7785388127853882, 0.004759384879205859);
    const SCIPY_PARTIAL: (f64, f64) = (-0.2913340475671191, 0.3847312768853099);
}
