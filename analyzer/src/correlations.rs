//! Spearman correlations of measures with metrics over training steps
//! (`analysis/correlations.parquet`, docs/DESIGN.md, "Tables").
//!
//! For each (run, method, split) and measure, the series correlated is the
//! **per-step mean of the measure over the split's probe images** (null
//! values left out of the mean), one value per checkpoint; it is paired
//! with the run's metric at the same step (`train_loss`, `test_loss`,
//! `test_acc`) or with the step itself (`step`: the measure's trend). A
//! step is dropped from a pair when the mean is null (every image's value
//! null) or the metric is missing; both are counted and reported.

use common::artifacts::tables::by_step::SplitSelection;
use common::artifacts::tables::correlations::{Against, CorrelationRow, Statistic};
use common::artifacts::tables::metrics::Metric;
use common::measures::Measure;

use crate::by_step::StepTable;
use crate::inputs::Metrics;
use crate::spearman::{spearman, Spearman};

/// What each measure is correlated with; `step` is the trend.
pub const CORRELATED: [Against; 4] =
    [Against::Metric(Metric::TrainLoss), Against::Metric(Metric::TestLoss), Against::Metric(Metric::TestAcc), Against::Step];

/// One correlation with what was left out of it.
#[derive(Clone, Debug, PartialEq)]
pub struct Correlation {
    pub run: String,
    pub method: String,
    pub split: SplitSelection,
    pub measure: Measure,
    pub metric: Against,
    /// None when n < 4 or a side is constant.
    pub result: Option<Spearman>,
    /// Pairs used.
    pub n: usize,
    /// Steps dropped because the measure's mean was null.
    pub dropped_null_measure: usize,
    /// Steps dropped because the metric was missing at that step.
    pub dropped_missing_metric: usize,
}

impl Correlation {
    /// The row of `correlations.parquet`.
    pub fn row(&self) -> CorrelationRow {
        let value = |f: fn(&Spearman) -> f64| self.result.as_ref().map(f);
        CorrelationRow {
            run: self.run.clone(),
            method: self.method.clone(),
            split: self.split,
            measure: self.measure,
            metric: self.metric,
            statistic: Statistic::Spearman,
            rho: value(|r| r.rho),
            p_value: value(|r| r.p_value),
            ci_low: value(|r| r.ci_low),
            ci_high: value(|r| r.ci_high),
            n: self.n,
        }
    }
}

/// The correlations of every measure of `table` with every metric.
pub fn correlate(table: &StepTable, metrics: &Metrics) -> Vec<Correlation> {
    let mut out = Vec::new();
    for &measure in &table.measures {
        let means = table.means(measure).expect("measure of the table");
        for against in CORRELATED {
            let (mut x, mut y) = (Vec::new(), Vec::new());
            let (mut null_measure, mut missing_metric) = (0, 0);
            for (k, &step) in table.steps.iter().enumerate() {
                let value = match against {
                    Against::Step => Some(step as f64),
                    Against::Metric(metric) => metrics.value(metric, step),
                };
                match (means[k], value) {
                    (None, _) => null_measure += 1,
                    (Some(_), None) => missing_metric += 1,
                    (Some(m), Some(v)) => {
                        x.push(m);
                        y.push(v);
                    }
                }
            }
            out.push(Correlation {
                run: table.run.clone(),
                method: table.method.clone(),
                split: table.split,
                measure,
                metric: against,
                result: spearman(&x, &y),
                n: x.len(),
                dropped_null_measure: null_measure,
                dropped_missing_metric: missing_metric,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::by_step::tests::metrics_row;
    use common::artifacts::tables::by_step::MeasureStats;
    use common::artifacts::tables::correlations::correlations_frame;

    #[test]
    fn pairs_means_with_metrics_and_counts_drops() {
        let mean = |m: Option<f64>| MeasureStats { mean: m, ..Default::default() };
        let table = StepTable {
            run: "r".into(),
            method: "lrp".into(),
            split: SplitSelection::All,
            steps: vec![0, 10, 20, 30, 40, 50],
            epochs: vec![0.0; 6],
            measures: vec![Measure::Frobenius],
            stats: vec![vec![mean(Some(1.0)), mean(Some(2.0)), mean(None), mean(Some(3.0)), mean(Some(5.0)), mean(Some(4.0))]],
        };
        // test loss falls except at step 50; step 30 has no metrics row
        let metrics = Metrics::new(
            [(0, 5.0), (10, 4.0), (20, 3.0), (40, 2.0), (50, 1.0)]
                .map(|(step, loss)| {
                    metrics_row(step, &[(Metric::TrainLoss, loss), (Metric::TestLoss, loss), (Metric::TestAcc, 0.1)])
                })
                .to_vec(),
        )
        .unwrap();
        let rows = correlate(&table, &metrics);
        assert_eq!(rows.len(), 4);
        let train = &rows[0];
        // pairs (1,5) (2,4) (5,2) (4,1): ranks x 1 2 4 3, y 4 3 2 1 -> rho = -0.8
        assert_eq!((train.n, train.dropped_null_measure, train.dropped_missing_metric), (4, 1, 1));
        assert!((train.result.unwrap().rho + 0.8).abs() < 1e-12);
        // constant test_acc: undefined
        assert_eq!(rows[2].metric, Against::Metric(Metric::TestAcc));
        assert_eq!(rows[2].result, None);
        // trend over steps 0 10 30 40 50: ranks of 1 2 3 5 4 -> rho = 0.9
        assert_eq!(rows[3].metric, Against::Step);
        assert_eq!((rows[3].n, rows[3].dropped_missing_metric), (5, 0));
        assert!((rows[3].result.unwrap().rho - 0.9).abs() < 1e-12);
        let df = correlations_frame(&rows.iter().map(Correlation::row).collect::<Vec<_>>());
        assert_eq!(df.column("rho").unwrap().null_count(), 1);
    }
}
