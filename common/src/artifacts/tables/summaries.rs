//! `<run>/summaries/<method>.parquet`: one row per (checkpoint, probe
//! image) (docs/DESIGN.md, "Tables"): `step, epoch, probe_id, split,
//! label, target, correct, logit`, then one Float64 column per measure,
//! null where the measure is undefined for the map.

use std::path::Path;

use polars::prelude::{Column, DataFrame};

use super::probe::{Split, LABEL, PROBE_ID, SPLIT};
use super::{frame, TableReader};
use crate::artifacts::ArtifactError;
use crate::measures::Measure;

pub const STEP: &str = "step";
pub const EPOCH: &str = "epoch";
pub const TARGET: &str = "target";
pub const CORRECT: &str = "correct";
pub const LOGIT: &str = "logit";

/// A summary table, by column.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SummaryTable {
    /// The measure columns, in order.
    pub measures: Vec<Measure>,
    pub step: Vec<i64>,
    pub epoch: Vec<f64>,
    pub probe_id: Vec<i64>,
    pub split: Vec<Split>,
    pub label: Vec<i64>,
    /// The explained class.
    pub target: Vec<i64>,
    /// Whether the model's prediction was the label.
    pub correct: Vec<bool>,
    /// The explained logit (where LRP's relevance starts).
    pub logit: Vec<f64>,
    /// `[measure][row]`.
    pub values: Vec<Vec<Option<f64>>>,
}

impl SummaryTable {
    /// An empty table with these measure columns.
    pub fn new(measures: &[Measure]) -> Self {
        SummaryTable { measures: measures.to_vec(), values: vec![Vec::new(); measures.len()], ..Default::default() }
    }

    pub fn len(&self) -> usize {
        self.step.len()
    }

    pub fn is_empty(&self) -> bool {
        self.step.is_empty()
    }

    /// The values of `measure`, if the table has its column.
    pub fn measure(&self, measure: Measure) -> Option<&[Option<f64>]> {
        self.measures.iter().position(|m| *m == measure).map(|i| self.values[i].as_slice())
    }

    /// Appends `other`'s rows (same measures).
    pub fn append(&mut self, other: SummaryTable) {
        assert_eq!(self.measures, other.measures, "appending a summary table with other measures");
        self.step.extend(other.step);
        self.epoch.extend(other.epoch);
        self.probe_id.extend(other.probe_id);
        self.split.extend(other.split);
        self.label.extend(other.label);
        self.target.extend(other.target);
        self.correct.extend(other.correct);
        self.logit.extend(other.logit);
        for (all, mine) in self.values.iter_mut().zip(other.values) {
            all.extend(mine);
        }
    }

    pub fn to_frame(&self) -> DataFrame {
        let mut columns = vec![
            Column::new(STEP.into(), self.step.clone()),
            Column::new(EPOCH.into(), self.epoch.clone()),
            Column::new(PROBE_ID.into(), self.probe_id.clone()),
            Column::new(SPLIT.into(), self.split.iter().map(|s| s.name()).collect::<Vec<&str>>()),
            Column::new(LABEL.into(), self.label.clone()),
            Column::new(TARGET.into(), self.target.clone()),
            Column::new(CORRECT.into(), self.correct.clone()),
            Column::new(LOGIT.into(), self.logit.clone()),
        ];
        for (m, v) in self.measures.iter().zip(&self.values) {
            columns.push(Column::new(m.name().into(), v.clone()));
        }
        frame(columns)
    }
}

/// Reads a summary table with the given measure columns; a missing measure
/// column is an error that says to rerun the summarizer.
pub fn read_summaries(path: &Path, measures: &[Measure]) -> Result<SummaryTable, ArtifactError> {
    let table = TableReader::open(path, "a summary table")?;
    table.require_rows()?;
    let mut values = Vec::with_capacity(measures.len());
    for m in measures {
        if !table.has(m.name()) {
            return Err(ArtifactError::new(path, format!("no column `{m}` (a configured measure); rerun the summarizer")));
        }
        values.push(table.optional_f64(m.name())?);
    }
    let (step, probe_id) = (table.i64(STEP)?, table.i64(PROBE_ID)?);
    table.unique(step.iter().zip(&probe_id), |(s, id)| format!("(step {s}, probe_id {id})"))?;
    Ok(SummaryTable {
        measures: measures.to_vec(),
        step,
        epoch: table.f64(EPOCH)?,
        probe_id,
        split: table.parsed(SPLIT, Split::ALLOWED, Split::parse)?,
        label: table.i64(LABEL)?,
        target: table.i64(TARGET)?,
        correct: table.bool(CORRECT)?,
        logit: table.f64(LOGIT)?,
        values,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::artifacts::write_parquet;

    #[test]
    fn summaries_round_trip_with_nulls_and_name_bad_columns() {
        let table = SummaryTable {
            measures: vec![Measure::Frobenius, Measure::EntropyNeg],
            step: vec![0, 0, 5],
            epoch: vec![0.0, 0.0, 0.5],
            probe_id: vec![0, 1, 0],
            split: vec![Split::Seen, Split::Unseen, Split::Seen],
            label: vec![3, 4, 3],
            target: vec![3, 1, 3],
            correct: vec![true, false, true],
            logit: vec![2.0, -1.0, 0.5],
            values: vec![vec![Some(1.0), Some(2.0), Some(3.0)], vec![None, Some(0.5), None]],
        };
        let scratch = crate::scratch::ScratchDir::new("summaries");
        let path = scratch.join("lrp.parquet");
        write_parquet(&path, &mut table.to_frame()).unwrap();
        assert_eq!(read_summaries(&path, &table.measures).unwrap(), table);
        assert_eq!(
            read_summaries(&path, &[Measure::EntropyNeg]).unwrap().measure(Measure::EntropyNeg),
            Some(&table.values[1][..])
        );
        let err = read_summaries(&path, &[Measure::Gini]).unwrap_err().to_string();
        assert!(err.contains("lrp.parquet") && err.contains("no column `gini`") && err.contains("rerun the summarizer"), "{err}");
        let mut frame = table.to_frame();
        frame.replace("frobenius", Column::new("frobenius".into(), ["a", "b", "c"]).as_materialized_series().clone()).unwrap();
        write_parquet(&path, &mut frame).unwrap();
        let err = read_summaries(&path, &table.measures).unwrap_err().to_string();
        assert!(err.contains("column `frobenius` is str, expected f64"), "{err}");
    }
}
