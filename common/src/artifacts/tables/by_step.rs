//! `analysis/by_step.parquet`: per (run, method, split, step), descriptive
//! statistics of every measure over the probe images, joined with that
//! step's metrics (docs/DESIGN.md, "Tables"): `run, method, split, step,
//! epoch`, then per measure `<m>_mean, <m>_median, <m>_std, <m>_q25,
//! <m>_q75, <m>_n, <m>_n_null`, then every metric (null where the metrics
//! lack the step).

use std::path::Path;

use polars::prelude::{Column, DataFrame};

use super::metrics::Metric;
use super::{frame, TableReader};
use crate::artifacts::ArtifactError;
use crate::measures::Measure;

pub const RUN: &str = "run";
pub const SEED: &str = "seed";
pub const METHOD: &str = "method";
pub const SPLIT: &str = "split";
pub const STEP: &str = "step";
pub const EPOCH: &str = "epoch";

/// The probe images a statistic is taken over: one split, or both.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SplitSelection {
    Seen,
    Unseen,
    All,
}

impl SplitSelection {
    /// In output order.
    pub const ALL: [SplitSelection; 3] = [SplitSelection::Seen, SplitSelection::Unseen, SplitSelection::All];

    pub fn name(&self) -> &'static str {
        match self {
            SplitSelection::Seen => "seen",
            SplitSelection::Unseen => "unseen",
            SplitSelection::All => "all",
        }
    }

    pub fn parse(text: &str) -> Option<SplitSelection> {
        SplitSelection::ALL.into_iter().find(|s| s.name() == text)
    }

    /// Whether an image of `split` belongs to this selection.
    pub fn contains(&self, split: super::probe::Split) -> bool {
        use super::probe::Split;
        matches!(
            (self, split),
            (SplitSelection::All, _) | (SplitSelection::Seen, Split::Seen) | (SplitSelection::Unseen, Split::Unseen)
        )
    }
}

impl std::fmt::Display for SplitSelection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Statistics of one measure over the images of one step: `n` values,
/// `n_null` nulls, and of the values the mean, median, sample standard
/// deviation (n - 1; null for n < 2) and quartiles (numpy's default
/// linear interpolation). All null for n = 0.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct MeasureStats {
    pub n: usize,
    pub n_null: usize,
    pub mean: Option<f64>,
    pub median: Option<f64>,
    pub std: Option<f64>,
    pub q25: Option<f64>,
    pub q75: Option<f64>,
}

/// One row of the table.
#[derive(Clone, Debug, PartialEq)]
pub struct ByStepRow {
    pub run: String,
    pub seed: i64,
    pub method: String,
    pub split: SplitSelection,
    pub step: i64,
    pub epoch: f64,
    /// One per measure of the table, in its order.
    pub stats: Vec<MeasureStats>,
    /// One per [`Metric::ALL`], null where the metrics lack the step.
    pub metrics: Vec<Option<f64>>,
}

/// The whole table.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ByStepTable {
    pub measures: Vec<Measure>,
    pub rows: Vec<ByStepRow>,
}

/// The statistic columns of a measure: (suffix, value).
const STATS: [(&str, fn(&MeasureStats) -> Option<f64>); 5] =
    [("mean", |s| s.mean), ("median", |s| s.median), ("std", |s| s.std), ("q25", |s| s.q25), ("q75", |s| s.q75)];

fn column_name(measure: Measure, suffix: &str) -> String {
    format!("{}_{suffix}", measure.name())
}

impl ByStepTable {
    pub fn to_frame(&self) -> DataFrame {
        let rows = &self.rows;
        let text = |f: fn(&ByStepRow) -> &str| rows.iter().map(f).collect::<Vec<&str>>();
        let mut columns = vec![
            Column::new(RUN.into(), text(|r| &r.run)),
            Column::new(SEED.into(), rows.iter().map(|r| r.seed).collect::<Vec<i64>>()),
            Column::new(METHOD.into(), text(|r| &r.method)),
            Column::new(SPLIT.into(), text(|r| r.split.name())),
            Column::new(STEP.into(), rows.iter().map(|r| r.step).collect::<Vec<i64>>()),
            Column::new(EPOCH.into(), rows.iter().map(|r| r.epoch).collect::<Vec<f64>>()),
        ];
        for (i, &measure) in self.measures.iter().enumerate() {
            for (suffix, value) in STATS {
                columns.push(Column::new(
                    column_name(measure, suffix).into(),
                    rows.iter().map(|r| value(&r.stats[i])).collect::<Vec<_>>(),
                ));
            }
            columns.push(Column::new(
                column_name(measure, "n").into(),
                rows.iter().map(|r| r.stats[i].n as i64).collect::<Vec<_>>(),
            ));
            columns.push(Column::new(
                column_name(measure, "n_null").into(),
                rows.iter().map(|r| r.stats[i].n_null as i64).collect::<Vec<_>>(),
            ));
        }
        for (j, metric) in Metric::ALL.iter().enumerate() {
            columns.push(Column::new(metric.name().into(), rows.iter().map(|r| r.metrics[j]).collect::<Vec<_>>()));
        }
        frame(columns)
    }
}

fn count(table: &TableReader, name: &str) -> Result<Vec<usize>, ArtifactError> {
    table
        .i64(name)?
        .into_iter()
        .map(|v| usize::try_from(v).map_err(|_| table.error(format!("`{name}` = {v} is negative"))))
        .collect()
}

/// Reads the table with these measures' columns.
pub fn read_by_step(path: &Path, measures: &[Measure]) -> Result<ByStepTable, ArtifactError> {
    let table = TableReader::open(path, "a by-step table")?;
    let runs = table.strings(RUN)?;
    let seeds = table.i64(SEED)?;
    let methods = table.strings(METHOD)?;
    let splits = table.parsed(SPLIT, "\"seen\", \"unseen\" or \"all\"", SplitSelection::parse)?;
    let steps = table.i64(STEP)?;
    let epochs = table.f64(EPOCH)?;
    let mut stats = Vec::with_capacity(measures.len());
    for &measure in measures {
        let values: Vec<Vec<Option<f64>>> =
            STATS.iter().map(|(suffix, _)| table.optional_f64(&column_name(measure, suffix))).collect::<Result<_, _>>()?;
        let n = count(&table, &column_name(measure, "n"))?;
        let n_null = count(&table, &column_name(measure, "n_null"))?;
        stats.push((values, n, n_null));
    }
    let metrics: Vec<Vec<Option<f64>>> = Metric::ALL.iter().map(|m| table.optional_f64(m.name())).collect::<Result<_, _>>()?;
    let rows = (0..table.rows())
        .map(|i| ByStepRow {
            run: runs[i].clone(),
            seed: seeds[i],
            method: methods[i].clone(),
            split: splits[i],
            step: steps[i],
            epoch: epochs[i],
            stats: stats
                .iter()
                .map(|(v, n, n_null)| MeasureStats {
                    n: n[i],
                    n_null: n_null[i],
                    mean: v[0][i],
                    median: v[1][i],
                    std: v[2][i],
                    q25: v[3][i],
                    q75: v[4][i],
                })
                .collect(),
            metrics: metrics.iter().map(|m| m[i]).collect(),
        })
        .collect();
    Ok(ByStepTable { measures: measures.to_vec(), rows })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::artifacts::write_parquet;

    #[test]
    fn by_step_round_trips_and_has_the_contract_columns() {
        let stats =
            MeasureStats { n: 3, n_null: 1, mean: Some(2.0), median: Some(2.0), std: None, q25: Some(1.5), q75: Some(2.5) };
        let row = |split, step| ByStepRow {
            run: "r".into(),
            seed: 4,
            method: "lrp".into(),
            split,
            step,
            epoch: step as f64 / 10.0,
            stats: vec![stats],
            metrics: (0..Metric::ALL.len()).map(|j| (j != 3).then_some(j as f64)).collect(),
        };
        let table =
            ByStepTable { measures: vec![Measure::Gini], rows: vec![row(SplitSelection::Seen, 0), row(SplitSelection::All, 5)] };
        let mut frame = table.to_frame();
        let names: Vec<String> = frame.get_column_names().iter().map(|s| s.to_string()).collect();
        assert_eq!(
            names[..13],
            [
                "run",
                "seed",
                "method",
                "split",
                "step",
                "epoch",
                "gini_mean",
                "gini_median",
                "gini_std",
                "gini_q25",
                "gini_q75",
                "gini_n",
                "gini_n_null"
            ]
        );
        assert_eq!(names[13..], Metric::ALL.map(|m| m.name()));
        let scratch = crate::scratch::ScratchDir::new("by-step");
        let path = scratch.join("by_step.parquet");
        write_parquet(&path, &mut frame).unwrap();
        assert_eq!(read_by_step(&path, &[Measure::Gini]).unwrap(), table);
    }
}
