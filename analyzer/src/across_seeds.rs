//! Each correlation over the seeds of its run (`analysis/across_seeds.parquet`,
//! docs/DESIGN.md, "Trend statistics"): a run trained with several seeds
//! gives one rho per seed, and the variation between them is what a claim
//! about the run's regime has to beat.
//!
//! Per (run, method, split, measure, metric, aggregate, grid, statistic),
//! over the k seeds with a defined rho: `rho_mean = tanh(mean atanh(rho))`
//! (Fisher's z, rho clamped to [`RHO_LIMIT`]); `rho_sd`, the sample
//! standard deviation of rho; the 95% interval
//! `tanh(z̄ ± t_{k-1, 0.975} sd(z) / sqrt(k))`; `same_sign`, the
//! seeds with the majority sign; `p_sign`, the two-sided sign test of the
//! positive against the negative rhos (exact binomial, zeros left out).

use std::collections::BTreeMap;

use common::artifacts::tables::across_seeds::AcrossSeedsRow;
use common::artifacts::tables::correlations::CorrelationKey;
use statrs::distribution::{ContinuousCDF, StudentsT};

use crate::by_step::run_name;
use crate::correlations::Correlation;

/// A rho of +-1 (common with few checkpoints) has an infinite Fisher z;
/// it enters the mean as +-0.999 (z = 3.80), so one perfect seed cannot
/// outweigh the others without bound.
pub const RHO_LIMIT: f64 = 0.999;

/// Two-sided exact sign test: P(at least as unbalanced as `positive` of
/// `n` under p = 1/2), capped at 1.
pub fn sign_test(positive: usize, n: usize) -> f64 {
    if n == 0 {
        return 1.0;
    }
    let k = positive.min(n - positive);
    // sum_{i <= k} C(n, i) / 2^n, in floating point (n is a handful of seeds)
    let mut term = 1.0f64;
    let mut tail = 0.0;
    for i in 0..=k {
        if i > 0 {
            term *= (n - i + 1) as f64 / i as f64;
        }
        tail += term;
    }
    (2.0 * tail / 2f64.powi(n as i32)).min(1.0)
}

/// The rows of `across_seeds.parquet`, in the order of the first seed's
/// correlations.
pub fn across_seeds(correlations: &[Correlation]) -> Vec<AcrossSeedsRow> {
    // (run name, key) -> the rhos of its seeds, in first-seen order
    let mut order: Vec<(&str, &CorrelationKey)> = Vec::new();
    let mut rhos: BTreeMap<(&str, &CorrelationKey), Vec<f64>> = BTreeMap::new();
    for c in correlations {
        let group = (run_name(&c.run), &c.key);
        let seeds = rhos.entry(group).or_insert_with(|| {
            order.push(group);
            Vec::new()
        });
        seeds.extend(c.result.map(|r| r.rho));
    }
    order.into_iter().map(|group| summarise(group.0, group.1, &rhos[&group])).collect()
}

fn summarise(run: &str, key: &CorrelationKey, rhos: &[f64]) -> AcrossSeedsRow {
    let k = rhos.len();
    let z: Vec<f64> = rhos.iter().map(|r| r.clamp(-RHO_LIMIT, RHO_LIMIT).atanh()).collect();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let sd = |v: &[f64]| {
        let m = mean(v);
        (v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (v.len() - 1) as f64).sqrt()
    };
    let z_mean = (k > 0).then(|| mean(&z));
    let (ci_low, ci_high) = match (k >= 2, z_mean) {
        (true, Some(zm)) => {
            let t = StudentsT::new(0.0, 1.0, (k - 1) as f64).expect("df > 0").inverse_cdf(0.975);
            let half = t * sd(&z) / (k as f64).sqrt();
            (Some((zm - half).tanh()), Some((zm + half).tanh()))
        }
        _ => (None, None),
    };
    let positive = rhos.iter().filter(|&&r| r > 0.0).count();
    let negative = rhos.iter().filter(|&&r| r < 0.0).count();
    AcrossSeedsRow {
        run: run.to_string(),
        key: key.clone(),
        seeds: k,
        rho_mean: z_mean.map(f64::tanh),
        rho_sd: (k >= 2).then(|| sd(rhos)),
        rho_ci_low: ci_low,
        rho_ci_high: ci_high,
        same_sign: positive.max(negative),
        p_sign: (k > 0).then(|| sign_test(positive, positive + negative)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serial::Inference;
    use common::artifacts::tables::by_step::SplitSelection;
    use common::artifacts::tables::correlations::{Against, Aggregate, Grid, Statistic};
    use common::measures::Measure;

    fn correlation(run: &str, rho: Option<f64>) -> Correlation {
        let result = rho.map(|rho| Inference { rho, p_value: 0.5, p_robust: 0.5, n: 10, n_eff: 8.0, ci_low: -1.0, ci_high: 1.0 });
        Correlation {
            run: run.into(),
            seed: 0,
            key: CorrelationKey {
                method: "lrp".into(),
                split: SplitSelection::All,
                measure: Measure::Frobenius,
                metric: Against::Step,
                aggregate: Aggregate::Mean,
                grid: Grid::Uniform,
                statistic: Statistic::Spearman,
            },
            result,
            n: 10,
            dropped_null_measure: 0,
            dropped_missing_metric: 0,
            q_value: None,
        }
    }

    #[test]
    fn sign_test_by_hand() {
        // 3 of 3 positive: 2 * (1/8) = 0.25; 2 of 4: 2 * (1 + 4 + 6)/16 > 1 -> 1
        assert!((sign_test(3, 3) - 0.25).abs() < 1e-15);
        assert_eq!(sign_test(2, 4), 1.0);
        // 9 of 10: 2 * (1 + 10) / 1024
        assert!((sign_test(9, 10) - 22.0 / 1024.0).abs() < 1e-15);
    }

    #[test]
    fn three_seeds_by_hand() {
        // rhos 0.5, 0.6, 0.7 (and a seed whose rho is undefined)
        let rows = across_seeds(&[
            correlation("r/seed-1", Some(0.5)),
            correlation("r/seed-2", Some(0.6)),
            correlation("r/seed-3", Some(0.7)),
            correlation("r/seed-4", None),
        ]);
        assert_eq!(rows.len(), 1);
        let row = &rows[0];
        assert_eq!((row.run.as_str(), row.seeds, row.same_sign), ("r", 3, 3));
        let z: Vec<f64> = [0.5f64, 0.6, 0.7].iter().map(|r| r.atanh()).collect();
        let zm = z.iter().sum::<f64>() / 3.0;
        assert!((row.rho_mean.unwrap() - zm.tanh()).abs() < 1e-12);
        assert!((row.rho_sd.unwrap() - 0.1).abs() < 1e-12, "sd of 0.5, 0.6, 0.7");
        // t(2, 0.975) = 4.302652729911275 (scipy.stats.t.ppf)
        let sz = (z.iter().map(|v| (v - zm) * (v - zm)).sum::<f64>() / 2.0).sqrt();
        let half = 4.302652729911275 * sz / 3f64.sqrt();
        assert!((row.rho_ci_low.unwrap() - (zm - half).tanh()).abs() < 1e-9);
        assert!((row.rho_ci_high.unwrap() - (zm + half).tanh()).abs() < 1e-9);
        assert!((row.p_sign.unwrap() - 0.25).abs() < 1e-15);
    }

    #[test]
    fn a_perfect_rho_enters_as_the_limit() {
        // tanh((atanh(0.999) + atanh(0.6)) / 2), by Python's math module
        let rows = across_seeds(&[correlation("r/seed-1", Some(1.0)), correlation("r/seed-2", Some(0.6))]);
        assert!((rows[0].rho_mean.unwrap() - 0.977881086773125).abs() < 1e-12, "{:?}", rows[0].rho_mean);
        assert!(rows[0].rho_ci_low.unwrap().is_finite() && rows[0].rho_ci_high.unwrap() <= 1.0);
    }
}
