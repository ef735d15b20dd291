//! Spearman's rank correlation with its p-value and confidence interval.
//!
//! - rho: Pearson's correlation of the ranks, ties given their average rank
//!   (as `scipy.stats.spearmanr`);
//! - p-value: two-sided, from `t = rho * sqrt((n - 2) / (1 - rho^2))` under
//!   Student's t with n - 2 degrees of freedom (as `scipy.stats.spearmanr`);
//!   0 when |rho| = 1;
//! - 95% confidence interval: Fisher's z = atanh(rho) with the variance
//!   1.06 / (n - 3) that Fieller, Hartley & Pearson (1957, Biometrika 44)
//!   give for Spearman's rho, i.e. `tanh(z ± 1.959964 * sqrt(1.06 / (n - 3)))`.
//!
//! Everything is undefined (None) when n < 4 (the interval needs n > 3)
//! or when either side is constant (rho is 0/0).

/// The 97.5% quantile of the standard normal distribution.
const Z_975: f64 = 1.959_963_984_540_054;

/// A Spearman correlation over `n` pairs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spearman {
    pub rho: f64,
    pub p_value: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    pub n: usize,
}

pub use common::ranks::{average_ranks, pearson};

/// Spearman's rho of paired samples (the caller drops pairs with a missing
/// side); None when n < 4 or either side is constant.
pub fn spearman(x: &[f64], y: &[f64]) -> Option<Spearman> {
    assert_eq!(x.len(), y.len(), "paired samples");
    let n = x.len();
    if n < 4 {
        return None;
    }
    let rho = pearson(&average_ranks(x), &average_ranks(y))?;
    let (ci_low, ci_high) = fisher_interval(rho, n);
    Some(Spearman { rho, p_value: p_value(rho, n), ci_low, ci_high, n })
}

/// Two-sided p-value of rho under H0: rho = 0, by the t approximation
/// with n - 2 degrees of freedom; 0 when |rho| = 1.
pub fn p_value(rho: f64, n: usize) -> f64 {
    crate::serial::t_p_value(rho, (n - 2) as f64)
}

/// 95% interval by Fisher's z with Fieller et al.'s variance 1.06/(n-3).
pub fn fisher_interval(rho: f64, n: usize) -> (f64, f64) {
    let z = rho.atanh();
    let half = Z_975 * (1.06 / (n as f64 - 3.0)).sqrt();
    ((z - half).tanh(), (z + half).tanh())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) {
        assert!((a - b).abs() <= tol * b.abs().max(1e-300), "expected {b:e}, got {a:e}");
    }

    // Reference values: scipy 1.17.1, `scipy.stats.spearmanr(x, y)` (statistic,
    // pvalue: average ranks for ties, t distribution with n-2 df); the
    // intervals: `np.tanh(np.arctanh(r) + np.array([-1, 1]) *
    // scipy.stats.norm.ppf(0.975) * np.sqrt(1.06 / (n - 3)))`.
    #[test]
    fn matches_scipy_without_ties() {
        // x = [1..10], y = [2, 1, 4, 3, 7, 5, 6, 9, 10, 8]
        let x: Vec<f64> = (1..=10).map(|v| v as f64).collect();
        let y = [2.0, 1.0, 4.0, 3.0, 7.0, 5.0, 6.0, 9.0, 10.0, 8.0];
        let s = spearman(&x, &y).unwrap();
        close(s.rho, REF_A.0, 1e-12);
        close(s.p_value, REF_A.1, 1e-9);
        close(s.ci_low, REF_A.2, 1e-9);
        close(s.ci_high, REF_A.3, 1e-9);
        assert_eq!(s.n, 10);
    }

    #[test]
    fn matches_scipy_with_ties_and_negative_trend() {
        // x = [0.5, 1.2, 1.2, 3.3, 2.0, 2.0, 2.0, 7.1, 0.1, 4.4, 4.4, 9.0]
        // y = [9.0, 7.5, 8.0, 3.0, 5.0, 5.0, 6.5, 1.0, 9.0, 3.0, 2.5, 0.5]
        let x = [0.5, 1.2, 1.2, 3.3, 2.0, 2.0, 2.0, 7.1, 0.1, 4.4, 4.4, 9.0];
        let y = [9.0, 7.5, 8.0, 3.0, 5.0, 5.0, 6.5, 1.0, 9.0, 3.0, 2.5, 0.5];
        let s = spearman(&x, &y).unwrap();
        close(s.rho, REF_B.0, 1e-12);
        close(s.p_value, REF_B.1, 1e-8);
        close(s.ci_low, REF_B.2, 1e-9);
        close(s.ci_high, REF_B.3, 1e-9);
    }

    #[test]
    fn matches_scipy_weak_correlation() {
        // x = [3, 1, 4, 1, 5, 9, 2, 6], y = [2, 7, 1, 8, 2, 8, 1, 8]
        let x = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0];
        let y = [2.0, 7.0, 1.0, 8.0, 2.0, 8.0, 1.0, 8.0];
        let s = spearman(&x, &y).unwrap();
        close(s.rho, REF_C.0, 1e-12);
        close(s.p_value, REF_C.1, 1e-9);
        close(s.ci_low, REF_C.2, 1e-9);
        close(s.ci_high, REF_C.3, 1e-9);
    }

    #[test]
    fn perfect_small_and_constant_cases() {
        let x = [1.0, 2.0, 3.0, 4.0, 5.0];
        let s = spearman(&x, &[10.0, 20.0, 30.0, 40.0, 50.0]).unwrap();
        assert_eq!((s.rho, s.p_value, s.ci_low, s.ci_high), (1.0, 0.0, 1.0, 1.0));
        let s = spearman(&x, &[5.0, 4.0, 3.0, 2.0, 1.0]).unwrap();
        assert_eq!(s.rho, -1.0);
        assert_eq!(spearman(&x, &[1.0; 5]), None);
        assert_eq!(spearman(&x[..3], &x[..3]), None);
    }

    // From scipy 1.17.1 / numpy (see above): (rho, p_value, ci_low, ci_high).
    const REF_A: (f64, f64, f64, f64) = (0.9030303030303028, 0.0003436121977632824, 0.6204307973574966, 0.9780738344681417);
    const REF_B: (f64, f64, f64, f64) = (-0.9858044040625691, 4.4331836493527565e-09, -0.9962829747478507, -0.9465764940709135);
    const REF_C: (f64, f64, f64, f64) = (0.19885368120992467, 0.6368617833253286, -0.6049364699250919, 0.8019219341747119);
}
