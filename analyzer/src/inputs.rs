//! The analyzer's inputs: a run's `metrics.parquet` and its
//! `summaries/<method>.parquet` tables, read into plain columns.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context};
use common::artifacts::{read_parquet, Split};
use polars::prelude::{DataFrame, DataType};

/// The metric columns joined into `by_step.parquet`, in this order.
pub const METRIC_COLUMNS: &[&str] =
    &["train_loss", "train_loss_running", "train_acc_running", "test_loss", "test_acc", "probe_loss", "probe_acc"];

/// Metric columns the analysis cannot do without.
const REQUIRED_METRICS: &[&str] = &["train_loss", "test_loss", "test_acc"];

/// One run's metrics, one row per checkpoint step, sorted by step.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metrics {
    pub step: Vec<i64>,
    pub epoch: Vec<Option<f64>>,
    /// Column name -> values (NaN read as missing), for [`METRIC_COLUMNS`].
    pub columns: BTreeMap<String, Vec<Option<f64>>>,
}

impl Metrics {
    /// Builds metrics from columns (tests, or callers with their own data).
    pub fn new(step: Vec<i64>, columns: &[(&str, Vec<Option<f64>>)]) -> Self {
        let epoch = vec![None; step.len()];
        let columns = columns.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        Metrics { step, epoch, columns }
    }

    /// The row of `step`, if the metrics have it.
    pub fn row(&self, step: i64) -> Option<usize> {
        self.step.binary_search(&step).ok()
    }

    /// A column's values, or all-missing when the table lacks it.
    pub fn column(&self, name: &str) -> Vec<Option<f64>> {
        self.columns.get(name).cloned().unwrap_or_else(|| vec![None; self.step.len()])
    }

    /// The value of `name` at `step`.
    pub fn value(&self, name: &str, step: i64) -> Option<f64> {
        let row = self.row(step)?;
        self.columns.get(name).and_then(|c| c[row])
    }
}

/// Reads `metrics.parquet`; a missing required column is an error naming
/// the file, a missing optional one is left empty with a warning.
/// Duplicate steps keep their last row.
pub fn read_metrics(path: &Path) -> anyhow::Result<Metrics> {
    let df = read_parquet(path)?;
    let steps = int_column(&df, path, "step")?;
    let epoch = float_column(&df, path, "epoch").unwrap_or_else(|_| vec![None; steps.len()]);
    let mut raw = BTreeMap::new();
    for &name in METRIC_COLUMNS {
        match float_column(&df, path, name) {
            Ok(values) => {
                raw.insert(name.to_string(), values);
            }
            Err(e) if REQUIRED_METRICS.contains(&name) => return Err(e),
            Err(_) => tracing::warn!("{}: no column `{name}`; left empty", path.display()),
        }
    }
    // Sort by step; on duplicates (a resumed run) keep the last row.
    let mut order: Vec<usize> = (0..steps.len()).collect();
    order.sort_by_key(|&i| (steps[i], i));
    let mut keep: Vec<usize> = Vec::with_capacity(order.len());
    for i in order {
        match keep.last() {
            Some(&j) if steps[j] == steps[i] => *keep.last_mut().unwrap() = i,
            _ => keep.push(i),
        }
    }
    if keep.len() < steps.len() {
        tracing::warn!("{}: {} duplicate step row(s); kept the last of each", path.display(), steps.len() - keep.len());
    }
    let mut columns = BTreeMap::new();
    for (name, values) in raw {
        columns.insert(name, keep.iter().map(|&i| values[i]).collect());
    }
    Ok(Metrics { step: keep.iter().map(|&i| steps[i]).collect(), epoch: keep.iter().map(|&i| epoch[i]).collect(), columns })
}

/// One (run, method) summary table: a row per (checkpoint, probe image).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    pub step: Vec<i64>,
    pub epoch: Vec<f64>,
    pub probe_id: Vec<i64>,
    pub split: Vec<Split>,
    /// Measure name -> values, in the order asked for.
    pub measures: Vec<(String, Vec<Option<f64>>)>,
}

impl Summary {
    pub fn len(&self) -> usize {
        self.step.len()
    }

    pub fn is_empty(&self) -> bool {
        self.step.is_empty()
    }

    pub fn measure(&self, name: &str) -> Option<&[Option<f64>]> {
        self.measures.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice())
    }
}

/// Reads a summary table with the given measure columns; a missing measure
/// is an error that says to rerun the summarizer.
pub fn read_summary(path: &Path, measures: &[String]) -> anyhow::Result<Summary> {
    let df = read_parquet(path)?;
    let step = int_column(&df, path, "step")?;
    let epoch = float_column(&df, path, "epoch")?.into_iter().map(|v| v.unwrap_or(f64::NAN)).collect();
    let probe_id = int_column(&df, path, "probe_id")?;
    let splits = df
        .column("split")
        .and_then(|c| c.str().cloned())
        .map_err(|e| anyhow::anyhow!("{}: not a summary table: column `split`: {e}", path.display()))?;
    let mut split = Vec::with_capacity(step.len());
    for (i, s) in splits.into_iter().enumerate() {
        match s.and_then(Split::parse) {
            Some(s) => split.push(s),
            None => bail!("{}: row {i}: split must be \"seen\" or \"unseen\"", path.display()),
        }
    }
    let mut columns = Vec::with_capacity(measures.len());
    for m in measures {
        if df.column(m).is_err() {
            bail!("{}: no column `{m}` (a configured measure); rerun the summarizer", path.display());
        }
        columns.push((m.clone(), float_column(&df, path, m)?));
    }
    Ok(Summary { step, epoch, probe_id, split, measures: columns })
}

fn float_column(df: &DataFrame, path: &Path, name: &str) -> anyhow::Result<Vec<Option<f64>>> {
    let column = df.column(name).with_context(|| format!("{}: no column `{name}`", path.display()))?;
    let cast = column.cast(&DataType::Float64).with_context(|| format!("{}: column `{name}` is not numeric", path.display()))?;
    let values = cast.f64().with_context(|| format!("{}: column `{name}` is not numeric", path.display()))?;
    Ok(values.into_iter().map(|v| v.filter(|x| !x.is_nan())).collect())
}

fn int_column(df: &DataFrame, path: &Path, name: &str) -> anyhow::Result<Vec<i64>> {
    let column = df.column(name).with_context(|| format!("{}: no column `{name}`", path.display()))?;
    let cast = column.cast(&DataType::Int64).with_context(|| format!("{}: column `{name}` is not an integer", path.display()))?;
    let values = cast.i64().with_context(|| format!("{}: column `{name}` is not an integer", path.display()))?;
    values
        .into_iter()
        .enumerate()
        .map(|(i, v)| v.with_context(|| format!("{}: row {i}: `{name}` is null", path.display())))
        .collect()
}
