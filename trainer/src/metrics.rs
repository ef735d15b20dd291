//! `metrics.parquet`: one row per checkpoint step (see DESIGN: Parquet tables).

use polars::prelude::{Column, DataFrame};
use serde::{Deserialize, Serialize};

/// What was measured at one checkpoint.
///
/// `train_loss` is the loss of the training batch of that step, taken in
/// the forward pass of its update (for step 0: the first batch on the
/// untrained model). The running values average the updates since the
/// previous checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricsRow {
    pub step: u64,
    pub epoch: f64,
    pub train_loss: f64,
    pub train_loss_running: f64,
    pub train_acc_running: f64,
    pub test_loss: f64,
    pub test_acc: f64,
    pub probe_loss: f64,
    pub probe_acc: f64,
}

/// Training loss and accuracy accumulated between two checkpoints.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunningMean {
    pub loss_sum: f64,
    pub batches: u64,
    pub correct: u64,
    pub images: u64,
}

impl RunningMean {
    pub fn add(&mut self, loss: f64, correct: usize, images: usize) {
        self.loss_sum += loss;
        self.batches += 1;
        self.correct += correct as u64;
        self.images += images as u64;
    }

    /// Mean loss and accuracy, then a fresh start.
    pub fn take(&mut self) -> (f64, f64) {
        let means = (self.loss_sum / self.batches.max(1) as f64, self.correct as f64 / self.images.max(1) as f64);
        *self = Self::default();
        means
    }
}

pub fn metrics_frame(rows: &[MetricsRow]) -> DataFrame {
    let f = |get: fn(&MetricsRow) -> f64| rows.iter().map(get).collect::<Vec<f64>>();
    DataFrame::new(vec![
        Column::new("step".into(), rows.iter().map(|r| r.step as i64).collect::<Vec<i64>>()),
        Column::new("epoch".into(), f(|r| r.epoch)),
        Column::new("train_loss".into(), f(|r| r.train_loss)),
        Column::new("train_loss_running".into(), f(|r| r.train_loss_running)),
        Column::new("train_acc_running".into(), f(|r| r.train_acc_running)),
        Column::new("test_loss".into(), f(|r| r.test_loss)),
        Column::new("test_acc".into(), f(|r| r.test_acc)),
        Column::new("probe_loss".into(), f(|r| r.probe_loss)),
        Column::new("probe_acc".into(), f(|r| r.probe_acc)),
    ])
    .expect("columns of equal length")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_mean_averages_and_resets() {
        let mut r = RunningMean::default();
        r.add(1.0, 3, 4);
        r.add(2.0, 1, 4);
        assert_eq!(r.take(), (1.5, 0.5));
        assert_eq!(r, RunningMean::default());
    }

    #[test]
    fn metrics_table_has_the_contract_columns() {
        let row = MetricsRow {
            step: 3,
            epoch: 0.5,
            train_loss: 1.0,
            train_loss_running: 1.1,
            train_acc_running: 0.2,
            test_loss: 1.2,
            test_acc: 0.3,
            probe_loss: 1.3,
            probe_acc: 0.4,
        };
        let df = metrics_frame(&[row.clone(), row]);
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
                "probe_acc"
            ]
        );
        assert_eq!(df.height(), 2);
    }
}
