//! `analysis/correlations.parquet`: one row per (run, seed, method, split,
//! measure, metric, aggregate, grid, statistic) (docs/DESIGN.md, "Tables"):
//! `run, seed, method, split, measure, metric, aggregate, grid, statistic,
//! rho, p_value, p_robust, n, n_eff, ci_low, ci_high, q_value`.

use std::path::Path;

use polars::prelude::{Column, DataFrame};

use super::by_step::SplitSelection;
use super::metrics::Metric;
use super::{frame, TableReader};
use crate::artifacts::ArtifactError;
use crate::measures::Measure;

pub const RUN: &str = "run";
pub const SEED: &str = "seed";
pub const METHOD: &str = "method";
pub const SPLIT: &str = "split";
pub const MEASURE: &str = "measure";
pub const METRIC: &str = "metric";
pub const AGGREGATE: &str = "aggregate";
pub const GRID: &str = "grid";
pub const STATISTIC: &str = "statistic";
pub const RHO: &str = "rho";
pub const P_VALUE: &str = "p_value";
pub const P_ROBUST: &str = "p_robust";
pub const N: &str = "n";
pub const N_EFF: &str = "n_eff";
pub const CI_LOW: &str = "ci_low";
pub const CI_HIGH: &str = "ci_high";
pub const Q_VALUE: &str = "q_value";

/// Defines a small enum whose values are table strings.
macro_rules! named {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($(#[$vdoc])* $variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn name(&self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            pub fn parse(text: &str) -> Option<$name> {
                Self::ALL.iter().copied().find(|v| v.name() == text)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

named! {
    /// How the maps of one step are summarised into one value of a series.
    Aggregate {
        /// The mean of the measure over the split's probe images.
        Mean => "mean",
        /// Their median.
        Median => "median",
    }
}

named! {
    /// Which checkpoints a series runs over.
    Grid {
        /// The checkpoints of the regular `every` schedule (multiples of
        /// `every`): equally spaced, so that dense early checkpoints do
        /// not weight the early transient.
        Uniform => "uniform",
        /// Every checkpoint.
        All => "all",
        /// Every checkpoint up to the test-loss minimum.
        BeforeMin => "before_min",
        /// Every checkpoint from the test-loss minimum on.
        AfterMin => "after_min",
    }
}

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

named! {
    /// The correlation statistic of a row.
    Statistic {
        /// Spearman's rank correlation of the two series' levels.
        Spearman => "spearman",
        /// Spearman's rank correlation of their first differences.
        SpearmanDiff => "spearman_diff",
        /// The measure against the test loss given the training loss on
        /// fixed weights (`train_eval_loss`).
        PartialSpearman => "partial_spearman",
    }
}

/// What a correlation is of, within one run: the key columns of
/// `correlations.parquet` after `run` and `seed`, shared with
/// `across_seeds.parquet`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CorrelationKey {
    pub method: String,
    pub split: SplitSelection,
    pub measure: Measure,
    pub metric: Against,
    pub aggregate: Aggregate,
    pub grid: Grid,
    pub statistic: Statistic,
}

/// The key columns of the rows' keys, in table order.
pub(crate) fn key_columns<'a>(keys: impl Iterator<Item = &'a CorrelationKey> + Clone) -> Vec<Column> {
    let text = |f: fn(&'a CorrelationKey) -> &'a str| keys.clone().map(f).collect::<Vec<&str>>();
    vec![
        Column::new(METHOD.into(), text(|k| &k.method)),
        Column::new(SPLIT.into(), text(|k| k.split.name())),
        Column::new(MEASURE.into(), text(|k| k.measure.name())),
        Column::new(METRIC.into(), text(|k| k.metric.name())),
        Column::new(AGGREGATE.into(), text(|k| k.aggregate.name())),
        Column::new(GRID.into(), text(|k| k.grid.name())),
        Column::new(STATISTIC.into(), text(|k| k.statistic.name())),
    ]
}

/// One row: the correlation and its inference, null where undefined.
#[derive(Clone, Debug, PartialEq)]
pub struct CorrelationRow {
    pub run: String,
    pub seed: i64,
    pub key: CorrelationKey,
    pub rho: Option<f64>,
    /// Nominal: valid for independent pairs only.
    pub p_value: Option<f64>,
    /// Valid under serial dependence (effective sample size).
    pub p_robust: Option<f64>,
    /// Pairs used.
    pub n: usize,
    pub n_eff: Option<f64>,
    pub ci_low: Option<f64>,
    pub ci_high: Option<f64>,
    /// Benjamini-Hochberg over the `p_robust` of the method's rows, per
    /// statistic.
    pub q_value: Option<f64>,
}

pub fn correlations_frame(rows: &[CorrelationRow]) -> DataFrame {
    let text = |f: fn(&CorrelationRow) -> &str| rows.iter().map(f).collect::<Vec<&str>>();
    let value = |f: fn(&CorrelationRow) -> Option<f64>| rows.iter().map(f).collect::<Vec<Option<f64>>>();
    let mut columns = vec![
        Column::new(RUN.into(), text(|r| &r.run)),
        Column::new(SEED.into(), rows.iter().map(|r| r.seed).collect::<Vec<i64>>()),
    ];
    columns.extend(key_columns(rows.iter().map(|r| &r.key)));
    columns.extend([
        Column::new(RHO.into(), value(|r| r.rho)),
        Column::new(P_VALUE.into(), value(|r| r.p_value)),
        Column::new(P_ROBUST.into(), value(|r| r.p_robust)),
        Column::new(N.into(), rows.iter().map(|r| r.n as i64).collect::<Vec<i64>>()),
        Column::new(N_EFF.into(), value(|r| r.n_eff)),
        Column::new(CI_LOW.into(), value(|r| r.ci_low)),
        Column::new(CI_HIGH.into(), value(|r| r.ci_high)),
        Column::new(Q_VALUE.into(), value(|r| r.q_value)),
    ]);
    frame(columns)
}

pub fn read_correlations(path: &Path) -> Result<Vec<CorrelationRow>, ArtifactError> {
    let table = TableReader::open(path, "a correlations table")?;
    let runs = table.strings(RUN)?;
    let seeds = table.i64(SEED)?;
    let methods = table.strings(METHOD)?;
    let splits = table.parsed(SPLIT, "\"seen\", \"unseen\" or \"all\"", SplitSelection::parse)?;
    let measures = table.parsed(MEASURE, "a measure name", Measure::parse)?;
    let metrics = table.parsed(METRIC, "a metric name or \"step\"", Against::parse)?;
    let aggregates = table.parsed(AGGREGATE, "\"mean\" or \"median\"", Aggregate::parse)?;
    let grids = table.parsed(GRID, "a grid name", Grid::parse)?;
    let statistics = table.parsed(STATISTIC, "a statistic name", Statistic::parse)?;
    let [rho, p_value, p_robust, n_eff, ci_low, ci_high, q_value] =
        [RHO, P_VALUE, P_ROBUST, N_EFF, CI_LOW, CI_HIGH, Q_VALUE].map(|c| table.optional_f64(c));
    let (rho, p_value, p_robust, n_eff, ci_low, ci_high, q_value) =
        (rho?, p_value?, p_robust?, n_eff?, ci_low?, ci_high?, q_value?);
    let n = table.i64(N)?;
    (0..table.rows())
        .map(|i| {
            Ok(CorrelationRow {
                run: runs[i].clone(),
                seed: seeds[i],
                key: CorrelationKey {
                    method: methods[i].clone(),
                    split: splits[i],
                    measure: measures[i],
                    metric: metrics[i],
                    aggregate: aggregates[i],
                    grid: grids[i],
                    statistic: statistics[i],
                },
                rho: rho[i],
                p_value: p_value[i],
                p_robust: p_robust[i],
                n: usize::try_from(n[i]).map_err(|_| table.error(format!("row {i}: n = {} is negative", n[i])))?,
                n_eff: n_eff[i],
                ci_low: ci_low[i],
                ci_high: ci_high[i],
                q_value: q_value[i],
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
            seed: 1,
            key: CorrelationKey {
                method: "lrp".into(),
                split: SplitSelection::All,
                measure: Measure::Frobenius,
                metric: Against::Metric(Metric::TestLoss),
                aggregate: Aggregate::Median,
                grid: Grid::BeforeMin,
                statistic: Statistic::SpearmanDiff,
            },
            rho: Some(-0.5),
            p_value: Some(0.01),
            p_robust: Some(0.04),
            n: 20,
            n_eff: Some(11.5),
            ci_low: Some(-0.8),
            ci_high: Some(-0.1),
            q_value: Some(0.2),
        };
        let undefined = CorrelationRow {
            key: CorrelationKey { metric: Against::Step, ..row.key.clone() },
            rho: None,
            p_value: None,
            p_robust: None,
            n_eff: None,
            ci_low: None,
            ci_high: None,
            q_value: None,
            n: 3,
            ..row.clone()
        };
        let rows = vec![row, undefined];
        let mut frame = correlations_frame(&rows);
        let names: Vec<&str> = frame.get_column_names().iter().map(|s| s.as_str()).collect();
        assert_eq!(
            names,
            [
                "run",
                "seed",
                "method",
                "split",
                "measure",
                "metric",
                "aggregate",
                "grid",
                "statistic",
                "rho",
                "p_value",
                "p_robust",
                "n",
                "n_eff",
                "ci_low",
                "ci_high",
                "q_value"
            ]
        );
        let scratch = crate::scratch::ScratchDir::new("correlations");
        let path = scratch.join("correlations.parquet");
        write_parquet(&path, &mut frame).unwrap();
        assert_eq!(read_correlations(&path).unwrap(), rows);
    }
}
