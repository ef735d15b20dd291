//! Spearman correlations of measures with metrics over training steps
//! (`analysis/correlations.parquet`).
//!
//! For each (run, method, split) and measure, the series correlated is the
//! **per-step mean of the measure over the split's probe images** (null
//! values left out of the mean), one value per checkpoint; it is paired
//! with the run's metric at the same step (`train_loss`, `test_loss`,
//! `test_acc`) or with the step itself (`step`: the measure's trend). A
//! step is dropped from a pair when the mean is null (every image's value
//! null) or the metric is missing; both are counted and reported.

use polars::prelude::{Column, DataFrame};

use crate::by_step::StepTable;
use crate::inputs::Metrics;
use crate::spearman::{spearman, Spearman};

/// The metrics each measure is correlated with; `step` is the trend.
pub const CORRELATED_METRICS: &[&str] = &["train_loss", "test_loss", "test_acc", "step"];

/// One row of `correlations.parquet`.
#[derive(Clone, Debug, PartialEq)]
pub struct Correlation {
    pub run: String,
    pub method: String,
    pub split: String,
    pub measure: String,
    pub metric: String,
    /// None when n < 4 or a side is constant.
    pub result: Option<Spearman>,
    /// Pairs used.
    pub n: usize,
    /// Steps dropped because the measure's mean was null.
    pub dropped_null_measure: usize,
    /// Steps dropped because the metric was missing at that step.
    pub dropped_missing_metric: usize,
}

/// The correlations of every measure of `table` with every metric.
pub fn correlate(table: &StepTable, metrics: &Metrics) -> Vec<Correlation> {
    let mut out = Vec::new();
    for measure in &table.measures {
        let means = table.means(measure).expect("measure of the table");
        for &metric in CORRELATED_METRICS {
            let (mut x, mut y) = (Vec::new(), Vec::new());
            let (mut null_measure, mut missing_metric) = (0, 0);
            for (k, &step) in table.steps.iter().enumerate() {
                let value = if metric == "step" { Some(step as f64) } else { metrics.value(metric, step) };
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
                split: table.split.to_string(),
                measure: measure.clone(),
                metric: metric.to_string(),
                result: spearman(&x, &y),
                n: x.len(),
                dropped_null_measure: null_measure,
                dropped_missing_metric: missing_metric,
            });
        }
    }
    out
}

/// The Parquet table: `run, method, split, measure, metric, statistic,
/// rho, p_value, ci_low, ci_high, n`.
pub fn correlations_frame(rows: &[Correlation]) -> anyhow::Result<DataFrame> {
    let s = |f: fn(&Correlation) -> &str| rows.iter().map(f).collect::<Vec<&str>>();
    let v = |f: fn(&Spearman) -> f64| rows.iter().map(|r| r.result.as_ref().map(f)).collect::<Vec<Option<f64>>>();
    Ok(DataFrame::new(vec![
        Column::new("run".into(), s(|r| &r.run)),
        Column::new("method".into(), s(|r| &r.method)),
        Column::new("split".into(), s(|r| &r.split)),
        Column::new("measure".into(), s(|r| &r.measure)),
        Column::new("metric".into(), s(|r| &r.metric)),
        Column::new("statistic".into(), vec!["spearman"; rows.len()]),
        Column::new("rho".into(), v(|r| r.rho)),
        Column::new("p_value".into(), v(|r| r.p_value)),
        Column::new("ci_low".into(), v(|r| r.ci_low)),
        Column::new("ci_high".into(), v(|r| r.ci_high)),
        Column::new("n".into(), rows.iter().map(|r| r.n as i64).collect::<Vec<i64>>()),
    ])?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::by_step::Describe;

    #[test]
    fn pairs_means_with_metrics_and_counts_drops() {
        let mean = |m: Option<f64>| Describe { mean: m, ..Default::default() };
        let table = StepTable {
            run: "r".into(),
            method: "lrp".into(),
            split: "all",
            steps: vec![0, 10, 20, 30, 40, 50],
            epochs: vec![0.0; 6],
            measures: vec!["frobenius".into()],
            stats: vec![vec![mean(Some(1.0)), mean(Some(2.0)), mean(None), mean(Some(3.0)), mean(Some(5.0)), mean(Some(4.0))]],
        };
        // test loss falls except at step 50; step 30 has no metrics row
        let metrics = Metrics::new(
            vec![0, 10, 20, 40, 50],
            &[
                ("train_loss", vec![Some(5.0), Some(4.0), Some(3.0), Some(2.0), Some(1.0)]),
                ("test_loss", vec![Some(5.0), Some(4.0), Some(3.0), Some(2.0), Some(1.0)]),
                ("test_acc", vec![Some(0.1), Some(0.1), Some(0.1), Some(0.1), Some(0.1)]),
            ],
        );
        let rows = correlate(&table, &metrics);
        assert_eq!(rows.len(), 4);
        let train = &rows[0];
        // pairs (1,5) (2,4) (5,2) (4,1): ranks x 1 2 4 3, y 4 3 2 1 -> rho = -0.8
        assert_eq!((train.n, train.dropped_null_measure, train.dropped_missing_metric), (4, 1, 1));
        assert!((train.result.unwrap().rho + 0.8).abs() < 1e-12);
        // constant test_acc: undefined
        assert_eq!(rows[2].metric, "test_acc");
        assert_eq!(rows[2].result, None);
        // trend over steps 0 10 30 40 50: ranks of 1 2 3 5 4 -> rho = 0.9
        assert_eq!(rows[3].metric, "step");
        assert_eq!((rows[3].n, rows[3].dropped_missing_metric), (5, 0));
        assert!((rows[3].result.unwrap().rho - 0.9).abs() < 1e-12);
        let df = correlations_frame(&rows).unwrap();
        let names: Vec<&str> = df.get_column_names().iter().map(|s| s.as_str()).collect();
        assert_eq!(
            names,
            ["run", "method", "split", "measure", "metric", "statistic", "rho", "p_value", "ci_low", "ci_high", "n"]
        );
        assert_eq!(df.column("rho").unwrap().null_count(), 1);
    }
}
