//! Rank correlations of measures with metrics over training steps
//! (`analysis/correlations.parquet`, docs/DESIGN.md, "Tables" and "Trend
//! statistics").
//!
//! For each (run, method, split) and measure, a series is the per-step
//! **mean** or **median** of the measure over the split's probe images
//! (null values left out), one value per checkpoint of a **grid**
//! (`uniform`: the multiples of the run's `every`; `all`; `before_min` and
//! `after_min`: up to and from the test-loss minimum). It is paired with
//! the run's metric at the same steps, or with the step itself (`step`:
//! the measure's trend), and correlated by each **statistic**
//! ([`crate::serial`]). A step is dropped from a pair when the series is
//! null there or the metric is missing; both are counted and reported.
//! q-values are Benjamini-Hochberg over `p_robust`, per method and
//! statistic.

use common::artifacts::tables::correlations::{Against, Aggregate, CorrelationKey, CorrelationRow, Grid, Statistic};
use common::artifacts::tables::metrics::Metric;

use crate::by_step::StepTable;
use crate::inputs::Metrics;
use crate::serial::{benjamini_hochberg, partial_spearman, spearman_levels, spearman_of_differences, Inference};

/// What each measure is correlated with; `step` is the trend.
pub const CORRELATED: [Against; 5] = [
    Against::Metric(Metric::TrainEvalLoss),
    Against::Metric(Metric::TrainLoss),
    Against::Metric(Metric::TestLoss),
    Against::Metric(Metric::TestAcc),
    Against::Step,
];

/// The metric the partial correlation holds fixed: the training loss on
/// fixed weights.
pub const PARTIAL_GIVEN: Metric = Metric::TrainEvalLoss;

/// One correlation with what was left out of it.
#[derive(Clone, Debug, PartialEq)]
pub struct Correlation {
    pub run: String,
    pub seed: i64,
    pub key: CorrelationKey,
    /// None when there are too few pairs or a side is constant.
    pub result: Option<Inference>,
    /// Pairs used.
    pub n: usize,
    /// Steps of the grid dropped because the series was null there.
    pub dropped_null_measure: usize,
    /// Steps of the grid dropped because the metric was missing there.
    pub dropped_missing_metric: usize,
    /// Filled in over the whole table by [`assign_q_values`].
    pub q_value: Option<f64>,
}

impl Correlation {
    /// The row of `correlations.parquet`.
    pub fn row(&self) -> CorrelationRow {
        let value = |f: fn(&Inference) -> f64| self.result.as_ref().map(f);
        CorrelationRow {
            run: crate::by_step::run_name(&self.run).to_string(),
            seed: self.seed,
            key: self.key.clone(),
            rho: value(|r| r.rho),
            p_value: value(|r| r.p_value),
            p_robust: value(|r| r.p_robust),
            n: self.n,
            n_eff: value(|r| r.n_eff),
            ci_low: value(|r| r.ci_low),
            ci_high: value(|r| r.ci_high),
            q_value: self.q_value,
        }
    }
}

/// What a run contributes beyond its tables: its seed, its checkpoint
/// interval and its metrics.
pub struct RunSeries<'a> {
    pub seed: i64,
    /// `checkpoints.every`: the uniform grid's spacing.
    pub every: u64,
    pub metrics: &'a Metrics,
}

/// The indices of `steps` on `grid`.
pub fn grid_indices(grid: Grid, steps: &[i64], every: u64, metrics: &Metrics) -> Vec<usize> {
    let minimum = || {
        steps
            .iter()
            .filter_map(|&s| metrics.value(Metric::TestLoss, s).map(|l| (s, l)))
            .min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)))
            .map(|(s, _)| s)
    };
    let keep: Box<dyn Fn(i64) -> bool> = match grid {
        Grid::All => Box::new(|_| true),
        Grid::Uniform => Box::new(move |s| s >= 0 && (s as u64).is_multiple_of(every.max(1))),
        Grid::BeforeMin => match minimum() {
            Some(m) => Box::new(move |s| s <= m),
            None => Box::new(|_| false),
        },
        Grid::AfterMin => match minimum() {
            Some(m) => Box::new(move |s| s >= m),
            None => Box::new(|_| false),
        },
    };
    (0..steps.len()).filter(|&k| keep(steps[k])).collect()
}

/// The correlations of every measure of `table` with every metric, on
/// every grid and aggregate, by every statistic (the partial only against
/// the test loss). q-values are left empty: see [`assign_q_values`].
pub fn correlate(table: &StepTable, run: &RunSeries) -> Vec<Correlation> {
    let metrics = run.metrics;
    let mut out = Vec::new();
    for (i, &measure) in table.measures.iter().enumerate() {
        for &aggregate in Aggregate::ALL {
            let series: Vec<Option<f64>> = table.stats[i]
                .iter()
                .map(|s| match aggregate {
                    Aggregate::Mean => s.mean,
                    Aggregate::Median => s.median,
                })
                .collect();
            for &grid in Grid::ALL {
                let on_grid = grid_indices(grid, &table.steps, run.every, metrics);
                for against in CORRELATED {
                    let value = |step: i64| match against {
                        Against::Step => Some(step as f64),
                        Against::Metric(metric) => metrics.value(metric, step),
                    };
                    for &statistic in Statistic::ALL {
                        if statistic == Statistic::PartialSpearman && against != Against::Metric(Metric::TestLoss) {
                            continue;
                        }
                        let (mut x, mut y, mut z) = (Vec::new(), Vec::new(), Vec::new());
                        let (mut null_measure, mut missing_metric) = (0, 0);
                        for &k in &on_grid {
                            let step = table.steps[k];
                            let given = match statistic {
                                Statistic::PartialSpearman => metrics.value(PARTIAL_GIVEN, step),
                                _ => Some(0.0),
                            };
                            match (series[k], value(step), given) {
                                (None, _, _) => null_measure += 1,
                                (Some(_), None, _) | (Some(_), Some(_), None) => missing_metric += 1,
                                (Some(m), Some(v), Some(g)) => {
                                    x.push(m);
                                    y.push(v);
                                    z.push(g);
                                }
                            }
                        }
                        let result = match statistic {
                            Statistic::Spearman => spearman_levels(&x, &y),
                            Statistic::SpearmanDiff => spearman_of_differences(&x, &y),
                            Statistic::PartialSpearman => partial_spearman(&x, &y, &z),
                        };
                        out.push(Correlation {
                            run: table.run.clone(),
                            seed: run.seed,
                            key: CorrelationKey {
                                method: table.method.clone(),
                                split: table.split,
                                measure,
                                metric: against,
                                aggregate,
                                grid,
                                statistic,
                            },
                            n: result.map_or(x.len(), |r| r.n),
                            result,
                            dropped_null_measure: null_measure,
                            dropped_missing_metric: missing_metric,
                            q_value: None,
                        });
                    }
                }
            }
        }
    }
    out
}

/// Benjamini-Hochberg q-values over the correlations' `p_robust`, one
/// family per (method, statistic): a method's rows then depend on that
/// method's maps alone, so that changing one method's settings leaves the
/// other methods' analysis rows as they were.
pub fn assign_q_values(correlations: &mut [Correlation]) {
    let mut families: Vec<(String, Statistic)> = correlations.iter().map(|c| (c.key.method.clone(), c.key.statistic)).collect();
    families.sort();
    families.dedup();
    for (method, statistic) in families {
        let members: Vec<usize> = (0..correlations.len())
            .filter(|&i| correlations[i].key.statistic == statistic && correlations[i].key.method == method)
            .collect();
        let p: Vec<Option<f64>> = members.iter().map(|&i| correlations[i].result.map(|r| r.p_robust)).collect();
        for (&i, q) in members.iter().zip(benjamini_hochberg(&p)) {
            correlations[i].q_value = q;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::by_step::tests::metrics_row;
    use common::artifacts::tables::by_step::{MeasureStats, SplitSelection};
    use common::artifacts::tables::correlations::correlations_frame;
    use common::measures::Measure;

    fn find(rows: &[Correlation], metric: Against, grid: Grid, statistic: Statistic) -> &Correlation {
        rows.iter()
            .find(|c| {
                c.key.metric == metric && c.key.grid == grid && c.key.statistic == statistic && c.key.aggregate == Aggregate::Mean
            })
            .unwrap()
    }

    #[test]
    fn pairs_series_with_metrics_on_each_grid_and_counts_drops() {
        let mean = |m: Option<f64>| MeasureStats { mean: m, median: m, ..Default::default() };
        let table = StepTable {
            run: "r".into(),
            seed: 3,
            method: "lrp".into(),
            split: SplitSelection::All,
            steps: vec![0, 10, 20, 30, 40, 50],
            epochs: vec![0.0; 6],
            measures: vec![Measure::Frobenius],
            stats: vec![vec![mean(Some(1.0)), mean(Some(2.0)), mean(None), mean(Some(3.0)), mean(Some(5.0)), mean(Some(4.0))]],
        };
        // test loss falls except at step 50 (its minimum is at 40); step 30
        // has no metrics row
        let metrics = Metrics::new(
            [(0, 5.0), (10, 4.0), (20, 3.0), (40, 1.0), (50, 2.0)]
                .map(|(step, loss)| {
                    metrics_row(
                        step,
                        &[
                            (Metric::TrainLoss, 6.0 - loss),
                            (Metric::TrainEvalLoss, 6.0 - loss),
                            (Metric::TestLoss, loss),
                            (Metric::TestAcc, 0.1),
                        ],
                    )
                })
                .to_vec(),
        )
        .unwrap();
        let rows = correlate(&table, &RunSeries { seed: 3, every: 20, metrics: &metrics });
        // 2 aggregates x 4 grids x (5 metrics x 2 statistics + the partial)
        assert_eq!(rows.len(), 2 * 4 * 11);
        let all = find(&rows, Against::Metric(Metric::TestLoss), Grid::All, Statistic::Spearman);
        // pairs (1,5) (2,4) (5,1) (4,2): ranks x 1 2 4 3, y 4 3 1 2:
        // sum d² = 9 + 1 + 9 + 1 = 20, rho = 1 - 6 * 20 / (4 * 15) = -1
        assert_eq!((all.n, all.dropped_null_measure, all.dropped_missing_metric, all.seed), (4, 1, 1, 3));
        assert!((all.result.unwrap().rho + 1.0).abs() < 1e-12);
        // constant test_acc: undefined
        assert_eq!(find(&rows, Against::Metric(Metric::TestAcc), Grid::All, Statistic::Spearman).result, None);
        // the uniform grid of every = 20 has steps 0, 20, 40: one null, two
        // pairs: too few
        let uniform = find(&rows, Against::Step, Grid::Uniform, Statistic::Spearman);
        assert_eq!((uniform.n, uniform.dropped_null_measure, uniform.result), (2, 1, None));
        // up to the minimum (step 40): steps 0 10 20 30 40, trend 1 2 3 5 rho = 1
        let before = find(&rows, Against::Step, Grid::BeforeMin, Statistic::Spearman);
        assert_eq!(before.n, 4);
        assert!((before.result.unwrap().rho - 1.0).abs() < 1e-12);
        assert!(find(&rows, Against::Step, Grid::AfterMin, Statistic::Spearman).result.is_none(), "two points after the minimum");
        let mut rows = rows;
        assign_q_values(&mut rows);
        let df = correlations_frame(&rows.iter().map(Correlation::row).collect::<Vec<_>>());
        assert_eq!(df.height(), rows.len());
        assert!(rows.iter().all(|c| c.result.is_some() == c.q_value.is_some()));
    }

    /// The schedule does not change the uniform grid: the same curves
    /// sampled with and without dense early checkpoints give the same
    /// uniform-grid rho (the paper's dense early checkpoints weighted the
    /// early transient).
    #[test]
    fn a_denser_early_schedule_leaves_the_uniform_grid_rho_unchanged() {
        // a rising measure and a U-shaped test loss
        let measure = |s: i64| (s as f64 / 100.0).sqrt();
        let loss = |s: i64| ((s as f64 - 600.0) / 300.0).powi(2) + 1.0;
        let series = |steps: Vec<i64>| {
            let stats =
                steps.iter().map(|&s| MeasureStats { mean: Some(measure(s)), median: Some(measure(s)), ..Default::default() });
            let table = StepTable {
                run: "r".into(),
                seed: 0,
                method: "m".into(),
                split: SplitSelection::All,
                epochs: vec![0.0; steps.len()],
                measures: vec![Measure::Frobenius],
                stats: vec![stats.collect()],
                steps: steps.clone(),
            };
            let rows = steps
                .iter()
                .map(|&s| metrics_row(s as u64, &[(Metric::TestLoss, loss(s)), (Metric::TrainEvalLoss, 1.0 / (1.0 + s as f64))]));
            (table, Metrics::new(rows.collect()).unwrap())
        };
        let uniform: Vec<i64> = (0..=20).map(|k| k * 100).collect();
        let mut dense = uniform.clone();
        dense.extend((1..100).filter(|s| s % 10 == 0).map(|s| s as i64));
        dense.sort();
        let rho = |steps: Vec<i64>, grid: Grid| {
            let (table, metrics) = series(steps);
            let rows = correlate(&table, &RunSeries { seed: 0, every: 100, metrics: &metrics });
            find(&rows, Against::Metric(Metric::TestLoss), grid, Statistic::Spearman).result.unwrap().rho
        };
        let on_uniform = rho(uniform.clone(), Grid::Uniform);
        assert_eq!(rho(dense.clone(), Grid::Uniform), on_uniform);
        assert!((rho(dense, Grid::All) - on_uniform).abs() > 0.1, "the dense schedule moves the all-checkpoint rho");
    }
}
