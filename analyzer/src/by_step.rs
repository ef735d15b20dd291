//! Per-step descriptive statistics of each measure over the probe images
//! of a split, joined with that step's metrics (`analysis/by_step.parquet`).
//!
//! For each (run, method, split, step) and measure: `n` (images with a
//! value), `n_null` (images whose value is null), `mean`, `median`, `std`
//! (sample standard deviation, n - 1 in the denominator; null for n < 2),
//! `q25`, `q75` (linear interpolation between order statistics, numpy's
//! default). The split `all` pools seen and unseen images.

use std::collections::BTreeMap;

use common::artifacts::tables::by_step::{ByStepRow, ByStepTable, MeasureStats, SplitSelection};
use common::artifacts::tables::metrics::Metric;
use common::artifacts::tables::summaries::SummaryTable;
use common::measures::Measure;

use crate::inputs::Metrics;

/// The run's name in the config, from an instance's path (`<run>` or
/// `<run>/seed-<s>`; run names have no `/`).
pub fn run_name(instance: &str) -> &str {
    instance.split('/').next().unwrap_or(instance)
}

/// Describes a sample with missing values.
pub fn describe(values: &[Option<f64>]) -> MeasureStats {
    let mut v: Vec<f64> = values.iter().flatten().copied().filter(|x| x.is_finite()).collect();
    let n_null = values.len() - v.len();
    let n = v.len();
    if n == 0 {
        return MeasureStats { n, n_null, ..Default::default() };
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let mean = v.iter().sum::<f64>() / n as f64;
    let std = (n >= 2).then(|| (v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1) as f64).sqrt());
    MeasureStats {
        n,
        n_null,
        mean: Some(mean),
        median: Some(quantile(&v, 0.5)),
        std,
        q25: Some(quantile(&v, 0.25)),
        q75: Some(quantile(&v, 0.75)),
    }
}

/// The `q` quantile of sorted values, linear interpolation (numpy's
/// default, Hyndman & Fan type 7).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// One (run, method, split): per step, per measure statistics.
#[derive(Clone, Debug, PartialEq)]
pub struct StepTable {
    /// The run instance: `<run>` or `<run>/seed-<s>`.
    pub run: String,
    /// Its seed.
    pub seed: i64,
    pub method: String,
    pub split: SplitSelection,
    pub steps: Vec<i64>,
    pub epochs: Vec<f64>,
    pub measures: Vec<Measure>,
    /// `[measure][step]`.
    pub stats: Vec<Vec<MeasureStats>>,
}

impl StepTable {
    /// The per-step means of `measure`.
    pub fn means(&self, measure: Measure) -> Option<Vec<Option<f64>>> {
        let i = self.measures.iter().position(|m| *m == measure)?;
        Some(self.stats[i].iter().map(|d| d.mean).collect())
    }
}

/// The three split tables (seen, unseen, all) of one summary.
pub fn aggregate(run: &str, seed: i64, method: &str, summary: &SummaryTable) -> Vec<StepTable> {
    SplitSelection::ALL
        .iter()
        .map(|&split| {
            // step -> (epoch, row indices)
            let mut groups: BTreeMap<i64, (f64, Vec<usize>)> = BTreeMap::new();
            for i in (0..summary.len()).filter(|&i| split.contains(summary.split[i])) {
                groups.entry(summary.step[i]).or_insert_with(|| (summary.epoch[i], Vec::new())).1.push(i);
            }
            let steps: Vec<i64> = groups.keys().copied().collect();
            let epochs: Vec<f64> = groups.values().map(|(e, _)| *e).collect();
            let stats = summary
                .values
                .iter()
                .map(|values| {
                    groups.values().map(|(_, rows)| describe(&rows.iter().map(|&i| values[i]).collect::<Vec<_>>())).collect()
                })
                .collect();
            StepTable {
                run: run.to_string(),
                seed,
                method: method.to_string(),
                split,
                steps,
                epochs,
                measures: summary.measures.clone(),
                stats,
            }
        })
        .filter(|t| !t.steps.is_empty())
        .collect()
}

/// `by_step.parquet`'s rows: every step of every table, with the run's
/// metrics at that step (null where the metrics lack the step). All tables
/// must share `measures`.
pub fn by_step_table(
    tables: &[StepTable],
    metrics: &BTreeMap<String, Metrics>,
    measures: &[Measure],
) -> anyhow::Result<ByStepTable> {
    let mut rows = Vec::new();
    for t in tables {
        anyhow::ensure!(t.measures == measures, "{}/{}: measures differ from the others", t.run, t.method);
        let m = metrics.get(&t.run);
        for (k, &step) in t.steps.iter().enumerate() {
            rows.push(ByStepRow {
                run: run_name(&t.run).to_string(),
                seed: t.seed,
                method: t.method.clone(),
                split: t.split,
                step,
                epoch: t.epochs[k],
                stats: t.stats.iter().map(|s| s[k]).collect(),
                metrics: Metric::ALL.iter().map(|&metric| m.and_then(|m| m.value(metric, step))).collect(),
            });
        }
    }
    Ok(ByStepTable { measures: measures.to_vec(), rows })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn describe_matches_hand_computation() {
        // values 4, 1, 3, 2 and a null: sorted 1 2 3 4; mean 2.5;
        // sample std = sqrt(((1.5^2 + 0.5^2) * 2) / 3) = sqrt(5/3);
        // q25: position 0.25 * 3 = 0.75 -> 1 + 0.75 * (2 - 1) = 1.75;
        // median: position 1.5 -> 2.5; q75: position 2.25 -> 3.25
        let d = describe(&[Some(4.0), Some(1.0), None, Some(3.0), Some(2.0)]);
        assert_eq!((d.n, d.n_null), (4, 1));
        assert_eq!(d.mean, Some(2.5));
        assert!((d.std.unwrap() - (5.0f64 / 3.0).sqrt()).abs() < 1e-15);
        assert_eq!((d.q25, d.median, d.q75), (Some(1.75), Some(2.5), Some(3.25)));
        let one = describe(&[Some(7.0)]);
        assert_eq!((one.mean, one.std, one.q25, one.q75), (Some(7.0), None, Some(7.0), Some(7.0)));
        let none = describe(&[None, None]);
        assert_eq!((none.n, none.n_null, none.mean), (0, 2, None));
    }

    /// A metrics row whose unlisted values are missing (NaN).
    pub(crate) fn metrics_row(step: u64, values: &[(Metric, f64)]) -> common::artifacts::tables::metrics::MetricsRow {
        let value = |m: Metric| values.iter().find(|(k, _)| *k == m).map_or(f64::NAN, |(_, v)| *v);
        common::artifacts::tables::metrics::MetricsRow {
            step,
            epoch: step as f64,
            train_loss: value(Metric::TrainLoss),
            train_loss_running: value(Metric::TrainLossRunning),
            train_acc_running: value(Metric::TrainAccRunning),
            test_loss: value(Metric::TestLoss),
            test_acc: value(Metric::TestAcc),
            probe_loss: value(Metric::ProbeLoss),
            probe_acc: value(Metric::ProbeAcc),
            train_eval_loss: value(Metric::TrainEvalLoss),
            train_eval_acc: value(Metric::TrainEvalAcc),
        }
    }

    /// Two steps, three images (two seen, one unseen); metrics know step 0
    /// and step 10 but not step 5, and have an extra step 20.
    #[test]
    fn by_step_join_on_a_hand_made_case() {
        use common::artifacts::Split;
        let summary = SummaryTable {
            measures: vec![Measure::Frobenius],
            step: vec![0, 0, 0, 5, 5, 5],
            epoch: vec![0.0, 0.0, 0.0, 0.5, 0.5, 0.5],
            probe_id: vec![0, 1, 2, 0, 1, 2],
            split: vec![Split::Seen, Split::Seen, Split::Unseen, Split::Seen, Split::Seen, Split::Unseen],
            label: vec![0; 6],
            target: vec![0; 6],
            correct: vec![true; 6],
            logit: vec![1.0; 6],
            values: vec![vec![Some(1.0), Some(3.0), Some(5.0), Some(2.0), None, Some(6.0)]],
        };
        let tables = aggregate("r", 1, "lrp", &summary);
        assert_eq!(tables.iter().map(|t| t.split).collect::<Vec<_>>(), SplitSelection::ALL);
        // seen: step 0 mean (1+3)/2 = 2; step 5 mean 2 (one null)
        assert_eq!(tables[0].means(Measure::Frobenius).unwrap(), [Some(2.0), Some(2.0)]);
        assert_eq!(tables[0].stats[0][1].n_null, 1);
        // unseen: 5, 6; all: (1+3+5)/3 = 3, (2+6)/2 = 4
        assert_eq!(tables[1].means(Measure::Frobenius).unwrap(), [Some(5.0), Some(6.0)]);
        assert_eq!(tables[2].means(Measure::Frobenius).unwrap(), [Some(3.0), Some(4.0)]);

        let metrics = Metrics::new(vec![
            metrics_row(0, &[(Metric::TrainLoss, 2.3), (Metric::TestLoss, 2.4)]),
            metrics_row(10, &[(Metric::TrainLoss, 1.0)]),
            metrics_row(20, &[(Metric::TrainLoss, 0.5), (Metric::TestLoss, 0.9)]),
        ])
        .unwrap();
        let all_metrics = BTreeMap::from([("r".to_string(), metrics)]);
        let table = by_step_table(&tables, &all_metrics, &[Measure::Frobenius]).unwrap();
        let df = table.to_frame();
        assert_eq!(df.height(), 6);
        let names: Vec<String> = df.get_column_names().iter().map(|s| s.to_string()).collect();
        assert_eq!(&names[..7], ["run", "seed", "method", "split", "step", "epoch", "frobenius_mean"]);
        assert_eq!(names.len(), 6 + 7 + Metric::ALL.len());
        let col = |n: &str| df.column(n).unwrap().f64().unwrap().into_iter().collect::<Vec<_>>();
        assert_eq!(col("frobenius_mean"), [Some(2.0), Some(2.0), Some(5.0), Some(6.0), Some(3.0), Some(4.0)]);
        assert_eq!(col("train_loss"), [Some(2.3), None, Some(2.3), None, Some(2.3), None]);
        assert_eq!(col("test_loss"), [Some(2.4), None, Some(2.4), None, Some(2.4), None]);
        assert_eq!(col("probe_acc"), [None; 6]);
        let n_null: Vec<i64> = df.column("frobenius_n_null").unwrap().i64().unwrap().into_no_null_iter().collect();
        assert_eq!(n_null, [0, 1, 0, 0, 0, 1]);
        let splits: Vec<&str> = df.column("split").unwrap().str().unwrap().into_no_null_iter().collect();
        assert_eq!(splits, ["seen", "seen", "unseen", "unseen", "all", "all"]);
        assert!(Metrics::new(vec![metrics_row(5, &[]), metrics_row(5, &[])]).unwrap_err().contains("step 5 is listed twice"));
    }
}
