//! `<run>/metrics.parquet`: one row per checkpoint step (docs/DESIGN.md,
//! "Tables"): `step, epoch`, then every [`Metric`] in order.

use std::path::Path;

use polars::prelude::{Column, DataFrame};
use serde::{Deserialize, Serialize};

use super::{frame, TableReader};
use crate::artifacts::ArtifactError;

pub const STEP: &str = "step";
pub const EPOCH: &str = "epoch";

/// A metric column of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// The loss of that step's training batch, in the forward pass of its
    /// update (step 0: the first batch on the untrained model).
    TrainLoss,
    /// The mean batch loss of the updates since the previous checkpoint.
    TrainLossRunning,
    /// The accuracy over those updates' batches.
    TrainAccRunning,
    /// Mean cross-entropy on the first `eval_size` test images.
    TestLoss,
    TestAcc,
    /// Mean cross-entropy on the probe images.
    ProbeLoss,
    ProbeAcc,
    /// Mean cross-entropy of the checkpoint's weights on a fixed subset of
    /// the run's training images (`train_eval_size`), computed as
    /// `test_loss` is: the training loss the paper's table means.
    TrainEvalLoss,
    TrainEvalAcc,
}

impl Metric {
    /// Every metric, in column order.
    pub const ALL: [Metric; 9] = [
        Metric::TrainLoss,
        Metric::TrainLossRunning,
        Metric::TrainAccRunning,
        Metric::TestLoss,
        Metric::TestAcc,
        Metric::ProbeLoss,
        Metric::ProbeAcc,
        Metric::TrainEvalLoss,
        Metric::TrainEvalAcc,
    ];

    /// The column name.
    pub fn name(&self) -> &'static str {
        match self {
            Metric::TrainLoss => "train_loss",
            Metric::TrainLossRunning => "train_loss_running",
            Metric::TrainAccRunning => "train_acc_running",
            Metric::TestLoss => "test_loss",
            Metric::TestAcc => "test_acc",
            Metric::ProbeLoss => "probe_loss",
            Metric::ProbeAcc => "probe_acc",
            Metric::TrainEvalLoss => "train_eval_loss",
            Metric::TrainEvalAcc => "train_eval_acc",
        }
    }

    pub fn parse(name: &str) -> Option<Metric> {
        Metric::ALL.into_iter().find(|m| m.name() == name)
    }

    /// This metric's value in `row`.
    pub fn of(&self, row: &MetricsRow) -> f64 {
        match self {
            Metric::TrainLoss => row.train_loss,
            Metric::TrainLossRunning => row.train_loss_running,
            Metric::TrainAccRunning => row.train_acc_running,
            Metric::TestLoss => row.test_loss,
            Metric::TestAcc => row.test_acc,
            Metric::ProbeLoss => row.probe_loss,
            Metric::ProbeAcc => row.probe_acc,
            Metric::TrainEvalLoss => row.train_eval_loss,
            Metric::TrainEvalAcc => row.train_eval_acc,
        }
    }
}

impl std::fmt::Display for Metric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What was measured at one checkpoint (see [`Metric`] for each value).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricsRow {
    pub step: u64,
    /// Fractional epochs completed at this step.
    pub epoch: f64,
    pub train_loss: f64,
    pub train_loss_running: f64,
    pub train_acc_running: f64,
    pub test_loss: f64,
    pub test_acc: f64,
    pub probe_loss: f64,
    pub probe_acc: f64,
    pub train_eval_loss: f64,
    pub train_eval_acc: f64,
}

impl MetricsRow {
    /// A row whose losses are all `loss` and accuracies all `acc`: the
    /// stand-in record of a run in fixtures that need the table's steps,
    /// not its values.
    pub fn uniform(step: u64, epoch: f64, loss: f64, acc: f64) -> Self {
        MetricsRow {
            step,
            epoch,
            train_loss: loss,
            train_loss_running: loss,
            train_acc_running: acc,
            test_loss: loss,
            test_acc: acc,
            probe_loss: loss,
            probe_acc: acc,
            train_eval_loss: loss,
            train_eval_acc: acc,
        }
    }
}

/// The table of `rows`, in their order.
pub fn metrics_frame(rows: &[MetricsRow]) -> DataFrame {
    let mut columns = vec![
        Column::new(STEP.into(), rows.iter().map(|r| r.step as i64).collect::<Vec<i64>>()),
        Column::new(EPOCH.into(), rows.iter().map(|r| r.epoch).collect::<Vec<f64>>()),
    ];
    for metric in Metric::ALL {
        columns.push(Column::new(metric.name().into(), rows.iter().map(|r| metric.of(r)).collect::<Vec<f64>>()));
    }
    frame(columns)
}

/// Reads a metrics table: every column present with its type, no nulls,
/// at least one row, steps that are not negative and each listed once.
pub fn read_metrics(path: &Path) -> Result<Vec<MetricsRow>, ArtifactError> {
    let table = TableReader::open(path, "a metrics table")?;
    table.require_rows()?;
    let steps = table.i64(STEP)?;
    table.unique(steps.iter().copied(), |step| format!("step {step}"))?;
    let epochs = table.f64(EPOCH)?;
    let values: Vec<Vec<f64>> = Metric::ALL.iter().map(|m| table.f64(m.name())).collect::<Result<_, _>>()?;
    let mut rows = Vec::with_capacity(steps.len());
    for (i, &step) in steps.iter().enumerate() {
        let step = u64::try_from(step).map_err(|_| table.error(format!("row {i}: step {step} is negative")))?;
        let v = |m: Metric| values[m as usize][i];
        rows.push(MetricsRow {
            step,
            epoch: epochs[i],
            train_loss: v(Metric::TrainLoss),
            train_loss_running: v(Metric::TrainLossRunning),
            train_acc_running: v(Metric::TrainAccRunning),
            test_loss: v(Metric::TestLoss),
            test_acc: v(Metric::TestAcc),
            probe_loss: v(Metric::ProbeLoss),
            probe_acc: v(Metric::ProbeAcc),
            train_eval_loss: v(Metric::TrainEvalLoss),
            train_eval_acc: v(Metric::TrainEvalAcc),
        });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::artifacts::write_parquet;

    fn row(step: u64) -> MetricsRow {
        MetricsRow {
            step,
            epoch: 0.5,
            train_loss: 1.0,
            train_loss_running: 1.1,
            train_acc_running: 0.2,
            test_loss: 1.2,
            test_acc: 0.3,
            probe_loss: 1.3,
            probe_acc: 0.4,
            train_eval_loss: 1.4,
            train_eval_acc: 0.5,
        }
    }

    #[test]
    fn the_table_has_the_contract_columns_and_reads_back() {
        let rows = vec![row(0), row(3)];
        let mut df = metrics_frame(&rows);
        let names: Vec<&str> = df.get_column_names().iter().map(|s| s.as_str()).collect();
        assert_eq!(
            names,
            [
                "step",
                "epoch",
                "train_loss",
                "train_loss_running",
                "train_acc_running",
                "test_loss",
                "test_acc",
                "probe_loss",
                "probe_acc",
                "train_eval_loss",
                "train_eval_acc"
            ]
        );
        let scratch = crate::scratch::ScratchDir::new("metrics");
        let path = scratch.join("metrics.parquet");
        write_parquet(&path, &mut df).unwrap();
        assert_eq!(read_metrics(&path).unwrap(), rows);
        for (i, m) in Metric::ALL.iter().enumerate() {
            assert_eq!(*m as usize, i, "Metric::ALL is in declaration order");
        }
    }

    #[test]
    fn wrong_types_and_missing_columns_name_the_file_and_column() {
        let dir = crate::scratch::ScratchDir::new("metrics-bad");
        let path = dir.join("metrics.parquet");
        let mut df = metrics_frame(&[row(0)]);
        df.replace("test_loss", Column::new("test_loss".into(), ["1.2"]).as_materialized_series().clone()).unwrap();
        write_parquet(&path, &mut df).unwrap();
        let err = read_metrics(&path).unwrap_err().to_string();
        assert!(err.contains("metrics.parquet") && err.contains("column `test_loss` is str, expected f64"), "{err}");
        let mut df = metrics_frame(&[row(0)]);
        let _ = df.drop_in_place("probe_acc").unwrap();
        write_parquet(&path, &mut df).unwrap();
        let err = read_metrics(&path).unwrap_err().to_string();
        assert!(err.contains("column `probe_acc` is missing"), "{err}");
    }
}
