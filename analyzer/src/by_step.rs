//! Per-step descriptive statistics of each measure over the probe images
//! of a split, joined with that step's metrics (`analysis/by_step.parquet`).
//!
//! For each (run, method, split, step) and measure: `n` (images with a
//! value), `n_null` (images whose value is null), `mean`, `median`, `std`
//! (sample standard deviation, n - 1 in the denominator; null for n < 2),
//! `q25`, `q75` (linear interpolation between order statistics, numpy's
//! default). The split `all` pools seen and unseen images.

use std::collections::BTreeMap;

use common::artifacts::Split;
use polars::prelude::{Column, DataFrame};

use crate::inputs::{Metrics, Summary, METRIC_COLUMNS};

/// The splits of the analysis, in output order.
pub const SPLITS: [&str; 3] = ["seen", "unseen", "all"];

/// Statistics of one measure over the images of one step.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Describe {
    pub n: usize,
    pub n_null: usize,
    pub mean: Option<f64>,
    pub median: Option<f64>,
    pub std: Option<f64>,
    pub q25: Option<f64>,
    pub q75: Option<f64>,
}

/// Describes a sample with missing values.
pub fn describe(values: &[Option<f64>]) -> Describe {
    let mut v: Vec<f64> = values.iter().flatten().copied().filter(|x| x.is_finite()).collect();
    let n_null = values.len() - v.len();
    let n = v.len();
    if n == 0 {
        return Describe { n, n_null, ..Default::default() };
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let mean = v.iter().sum::<f64>() / n as f64;
    let std = (n >= 2).then(|| (v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1) as f64).sqrt());
    Describe {
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
    pub run: String,
    pub method: String,
    pub split: &'static str,
    pub steps: Vec<i64>,
    pub epochs: Vec<f64>,
    pub measures: Vec<String>,
    /// `[measure][step]`.
    pub stats: Vec<Vec<Describe>>,
}

impl StepTable {
    /// The per-step means of `measure`.
    pub fn means(&self, measure: &str) -> Option<Vec<Option<f64>>> {
        let i = self.measures.iter().position(|m| m == measure)?;
        Some(self.stats[i].iter().map(|d| d.mean).collect())
    }
}

/// The three split tables (seen, unseen, all) of one summary.
pub fn aggregate(run: &str, method: &str, summary: &Summary) -> Vec<StepTable> {
    SPLITS
        .iter()
        .map(|&split| {
            let keep = |i: usize| match split {
                "seen" => summary.split[i] == Split::Seen,
                "unseen" => summary.split[i] == Split::Unseen,
                _ => true,
            };
            // step -> (epoch, row indices)
            let mut groups: BTreeMap<i64, (f64, Vec<usize>)> = BTreeMap::new();
            for i in (0..summary.len()).filter(|&i| keep(i)) {
                groups.entry(summary.step[i]).or_insert_with(|| (summary.epoch[i], Vec::new())).1.push(i);
            }
            let steps: Vec<i64> = groups.keys().copied().collect();
            let epochs: Vec<f64> = groups.values().map(|(e, _)| *e).collect();
            let stats = summary
                .measures
                .iter()
                .map(|(_, values)| {
                    groups.values().map(|(_, rows)| describe(&rows.iter().map(|&i| values[i]).collect::<Vec<_>>())).collect()
                })
                .collect();
            StepTable {
                run: run.to_string(),
                method: method.to_string(),
                split,
                steps,
                epochs,
                measures: summary.measures.iter().map(|(m, _)| m.clone()).collect(),
                stats,
            }
        })
        .filter(|t| !t.steps.is_empty())
        .collect()
}

/// `by_step.parquet`: `run, method, split, step, epoch`, then for each
/// measure `<m>_mean, <m>_median, <m>_std, <m>_q25, <m>_q75, <m>_n,
/// <m>_n_null`, then the run's metrics at that step ([`METRIC_COLUMNS`],
/// null where the metrics lack the step). All tables must share `measures`.
pub fn by_step_frame(
    tables: &[StepTable],
    metrics: &BTreeMap<String, Metrics>,
    measures: &[String],
) -> anyhow::Result<DataFrame> {
    let mut run = Vec::new();
    let mut method = Vec::new();
    let mut split = Vec::new();
    let mut step = Vec::new();
    let mut epoch = Vec::new();
    let mut stats: Vec<Vec<Describe>> = vec![Vec::new(); measures.len()];
    let mut joined: Vec<Vec<Option<f64>>> = vec![Vec::new(); METRIC_COLUMNS.len()];
    for t in tables {
        anyhow::ensure!(t.measures == measures, "{}/{}: measures differ from the others", t.run, t.method);
        let m = metrics.get(&t.run);
        for (k, &s) in t.steps.iter().enumerate() {
            run.push(t.run.as_str());
            method.push(t.method.as_str());
            split.push(t.split);
            step.push(s);
            epoch.push(t.epochs[k]);
            for (j, column) in stats.iter_mut().enumerate() {
                column.push(t.stats[j][k]);
            }
            for (j, name) in METRIC_COLUMNS.iter().enumerate() {
                joined[j].push(m.and_then(|m| m.value(name, s)));
            }
        }
    }
    let mut columns = vec![
        Column::new("run".into(), run),
        Column::new("method".into(), method),
        Column::new("split".into(), split),
        Column::new("step".into(), step),
        Column::new("epoch".into(), epoch),
    ];
    for (name, s) in measures.iter().zip(&stats) {
        let f = |get: fn(&Describe) -> Option<f64>| s.iter().map(get).collect::<Vec<_>>();
        columns.push(Column::new(format!("{name}_mean").into(), f(|d| d.mean)));
        columns.push(Column::new(format!("{name}_median").into(), f(|d| d.median)));
        columns.push(Column::new(format!("{name}_std").into(), f(|d| d.std)));
        columns.push(Column::new(format!("{name}_q25").into(), f(|d| d.q25)));
        columns.push(Column::new(format!("{name}_q75").into(), f(|d| d.q75)));
        columns.push(Column::new(format!("{name}_n").into(), s.iter().map(|d| d.n as i64).collect::<Vec<_>>()));
        columns.push(Column::new(format!("{name}_n_null").into(), s.iter().map(|d| d.n_null as i64).collect::<Vec<_>>()));
    }
    for (name, values) in METRIC_COLUMNS.iter().zip(joined) {
        columns.push(Column::new((*name).into(), values));
    }
    Ok(DataFrame::new(columns)?)
}

#[cfg(test)]
mod tests {
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

    /// Two steps, three images (two seen, one unseen); metrics know step 0
    /// and step 10 but not step 5, and have an extra step 20.
    #[test]
    fn by_step_join_on_a_hand_made_case() {
        let summary = Summary {
            step: vec![0, 0, 0, 5, 5, 5],
            epoch: vec![0.0, 0.0, 0.0, 0.5, 0.5, 0.5],
            probe_id: vec![0, 1, 2, 0, 1, 2],
            split: vec![Split::Seen, Split::Seen, Split::Unseen, Split::Seen, Split::Seen, Split::Unseen],
            measures: vec![("frobenius".into(), vec![Some(1.0), Some(3.0), Some(5.0), Some(2.0), None, Some(6.0)])],
        };
        let tables = aggregate("r", "lrp", &summary);
        assert_eq!(tables.iter().map(|t| t.split).collect::<Vec<_>>(), SPLITS);
        // seen: step 0 mean (1+3)/2 = 2; step 5 mean 2 (one null)
        assert_eq!(tables[0].means("frobenius").unwrap(), [Some(2.0), Some(2.0)]);
        assert_eq!(tables[0].stats[0][1].n_null, 1);
        // unseen: 5, 6; all: (1+3+5)/3 = 3, (2+6)/2 = 4
        assert_eq!(tables[1].means("frobenius").unwrap(), [Some(5.0), Some(6.0)]);
        assert_eq!(tables[2].means("frobenius").unwrap(), [Some(3.0), Some(4.0)]);

        let metrics = Metrics::new(
            vec![0, 10, 20],
            &[("train_loss", vec![Some(2.3), Some(1.0), Some(0.5)]), ("test_loss", vec![Some(2.4), None, Some(0.9)])],
        );
        let all_metrics = BTreeMap::from([("r".to_string(), metrics)]);
        let df = by_step_frame(&tables, &all_metrics, &["frobenius".into()]).unwrap();
        assert_eq!(df.height(), 6);
        let names: Vec<String> = df.get_column_names().iter().map(|s| s.to_string()).collect();
        assert_eq!(&names[..6], ["run", "method", "split", "step", "epoch", "frobenius_mean"]);
        assert_eq!(names.len(), 5 + 7 + METRIC_COLUMNS.len());
        let col = |n: &str| df.column(n).unwrap().f64().unwrap().into_iter().collect::<Vec<_>>();
        assert_eq!(col("frobenius_mean"), [Some(2.0), Some(2.0), Some(5.0), Some(6.0), Some(3.0), Some(4.0)]);
        assert_eq!(col("train_loss"), [Some(2.3), None, Some(2.3), None, Some(2.3), None]);
        assert_eq!(col("test_loss"), [Some(2.4), None, Some(2.4), None, Some(2.4), None]);
        assert_eq!(col("probe_acc"), [None; 6]);
        let n_null: Vec<i64> = df.column("frobenius_n_null").unwrap().i64().unwrap().into_no_null_iter().collect();
        assert_eq!(n_null, [0, 1, 0, 0, 0, 1]);
        let splits: Vec<&str> = df.column("split").unwrap().str().unwrap().into_no_null_iter().collect();
        assert_eq!(splits, ["seen", "seen", "unseen", "unseen", "all", "all"]);
    }
}
