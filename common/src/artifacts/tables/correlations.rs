//! `analysis/correlations.parquet`: one row per (run, method, split,
//! measure, metric, statistic) (docs/DESIGN.md, "Tables"): `run, method,
//! split, measure, metric, statistic, rho, p_value, ci_low, ci_high, n`.

use std::path::Path;

use polars::prelude::{Column, DataFrame};

use super::by_step::SplitSelection;
use super::metrics::Metric;
use super::{frame, TableReader};
use crate::artifacts::ArtifactError;
use crate::measures::Measure;

pub const RUN: &str = "run";
pub const METHOD: &str = "method";
pub const SPLIT: &str = "split";
pub const MEASURE: &str = "measure";
pub const METRIC: &str = "metric";
pub const STATISTIC: &str = "statistic";
pub const RHO: &str = "rho";
pub const P_VALUE: &str = "p_value";
pub const CI_LOW: &str = "ci_low";
pub const CI_HIGH: &str = "ci_high";
pub const N: &str = "n";

/// What a measure's series is correlated with: a metric at the same
/// checkpoints, or the step itself (the measure's trend).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Against {
    Metric(Metric),
    Step,
}

impl Against {
    pub fn name(&self) -> &'static str {
        match self {
            Against::Metric(m) => m.name(),
            Against::Step => "step",
        }
    }

    pub fn parse(text: &str) -> Option<Against> {
        if text == "step" {
            Some(Against::Step)
        } else {
            Metric::parse(text).map(Against::Metric)
        }
    }
}

impl std::fmt::Display for Against {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The correlation statistic of a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Statistic {
    /// Spearman's rank correlation of the two series.
    Spearman,
}

impl Statistic {
    pub const ALL: [Statistic; 1] = [Statistic::Spearman];

    pub fn name(&self) -> &'static str {
        match self {
            Statistic::Spearman => "spearman",
        }
    }

    pub fn parse(text: &str) -> Option<Statistic> {
        Statistic::ALL.into_iter().find(|s| s.name() == text)
    }
}

/// One row: the correlation and its inference, null where undefined.
#[derive(Clone, Debug, PartialEq)]
pub struct CorrelationRow {
    pub run: String,
    pub method: String,
    pub split: SplitSelection,
    pub measure: Measure,
    pub metric: Against,
    pub statistic: Statistic,
    pub rho: Option<f64>,
    pub p_value: Option<f64>,
    pub ci_low: Option<f64>,
    pub ci_high: Option<f64>,
    /// Pairs used.
    pub n: usize,
}

pub fn correlations_frame(rows: &[CorrelationRow]) -> DataFrame {
    let text = |f: fn(&CorrelationRow) -> &str| rows.iter().map(f).collect::<Vec<&str>>();
    let value = |f: fn(&CorrelationRow) -> Option<f64>| rows.iter().map(f).collect::<Vec<Option<f64>>>();
    frame(vec![
        Column::new(RUN.into(), text(|r| &r.run)),
        Column::new(METHOD.into(), text(|r| &r.method)),
        Column::new(SPLIT.into(), text(|r| r.split.name())),
        Column::new(MEASURE.into(), text(|r| r.measure.name())),
        Column::new(METRIC.into(), text(|r| r.metric.name())),
        Column::new(STATISTIC.into(), text(|r| r.statistic.name())),
        Column::new(RHO.into(), value(|r| r.rho)),
        Column::new(P_VALUE.into(), value(|r| r.p_value)),
        Column::new(CI_LOW.into(), value(|r| r.ci_low)),
        Column::new(CI_HIGH.into(), value(|r| r.ci_high)),
        Column::new(N.into(), rows.iter().map(|r| r.n as i64).collect::<Vec<i64>>()),
    ])
}

pub fn read_correlations(path: &Path) -> Result<Vec<CorrelationRow>, ArtifactError> {
    let table = TableReader::open(path, "a correlations table")?;
    let runs = table.strings(RUN)?;
    let methods = table.strings(METHOD)?;
    let splits = table.parsed(SPLIT, "\"seen\", \"unseen\" or \"all\"", SplitSelection::parse)?;
    let measures = table.parsed(MEASURE, "a measure name", Measure::parse)?;
    let metrics = table.parsed(METRIC, "a metric name or \"step\"", Against::parse)?;
    let statistics = table.parsed(STATISTIC, "\"spearman\"", Statistic::parse)?;
    let [rho, p_value, ci_low, ci_high] = [RHO, P_VALUE, CI_LOW, CI_HIGH].map(|c| table.optional_f64(c));
    let (rho, p_value, ci_low, ci_high) = (rho?, p_value?, ci_low?, ci_high?);
    let n = table.i64(N)?;
    (0..table.rows())
        .map(|i| {
            Ok(CorrelationRow {
                run: runs[i].clone(),
                method: methods[i].clone(),
                split: splits[i],
                measure: measures[i],
                metric: metrics[i],
                statistic: statistics[i],
                rho: rho[i],
                p_value: p_value[i],
                ci_low: ci_low[i],
                ci_high: ci_high[i],
                n: usize::try_from(n[i]).map_err(|_| table.error(format!("row {i}: n = {} is negative", n[i])))?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::artifacts::write_parquet;

    #[test]
    fn correlations_round_trip_with_the_contract_columns() {
        let row = CorrelationRow {
            run: "r".into(),
            method: "lrp".into(),
            split: SplitSelection::All,
            measure: Measure::Frobenius,
            metric: Against::Metric(Metric::TestLoss),
            statistic: Statistic::Spearman,
            rho: Some(-0.5),
            p_value: Some(0.01),
            ci_low: Some(-0.8),
            ci_high: Some(-0.1),
            n: 20,
        };
        let undefined =
            CorrelationRow { metric: Against::Step, rho: None, p_value: None, ci_low: None, ci_high: None, n: 3, ..row.clone() };
        let rows = vec![row, undefined];
        let mut frame = correlations_frame(&rows);
        let names: Vec<&str> = frame.get_column_names().iter().map(|s| s.as_str()).collect();
        assert_eq!(
            names,
            ["run", "method", "split", "measure", "metric", "statistic", "rho", "p_value", "ci_low", "ci_high", "n"]
        );
        let path = std::env::temp_dir().join(format!("correlations-{}/correlations.parquet", std::process::id()));
        write_parquet(&path, &mut frame).unwrap();
        assert_eq!(read_correlations(&path).unwrap(), rows);
    }
}
