//! The analyzer's inputs: a run's metrics and its summary tables, read
//! through `common::artifacts::tables` and held as the analysis uses them.

use std::path::Path;

use common::artifacts::tables::metrics::{read_metrics as read_metrics_table, Metric, MetricsRow};
use common::artifacts::ArtifactError;

/// One run's metrics, one row per checkpoint step, sorted by step.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metrics {
    pub step: Vec<i64>,
    rows: Vec<MetricsRow>,
}

impl Metrics {
    /// The metrics of `rows`, sorted by step; a step listed twice is an
    /// error naming it.
    pub fn new(mut rows: Vec<MetricsRow>) -> Result<Self, String> {
        rows.sort_by_key(|r| r.step);
        if let Some(pair) = rows.windows(2).find(|w| w[0].step == w[1].step) {
            return Err(format!("step {} is listed twice", pair[0].step));
        }
        Ok(Metrics { step: rows.iter().map(|r| r.step as i64).collect(), rows })
    }

    /// The row of `step`, if the metrics have it.
    pub fn row(&self, step: i64) -> Option<usize> {
        self.step.binary_search(&step).ok()
    }

    /// A metric over the steps; NaN reads as missing.
    pub fn column(&self, metric: Metric) -> Vec<Option<f64>> {
        self.rows.iter().map(|r| Some(metric.of(r)).filter(|v| !v.is_nan())).collect()
    }

    /// The value of `metric` at `step` (NaN reads as missing).
    pub fn value(&self, metric: Metric, step: i64) -> Option<f64> {
        let row = self.row(step)?;
        Some(metric.of(&self.rows[row])).filter(|v| !v.is_nan())
    }
}

/// Reads a run's `metrics.parquet`.
pub fn read_metrics(path: &Path) -> Result<Metrics, ArtifactError> {
    Metrics::new(read_metrics_table(path)?).map_err(|e| ArtifactError::new(path, e))
}
