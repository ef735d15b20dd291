//! `analysis/across_seeds.parquet`: each correlation summarised over the
//! seeds of its run (docs/DESIGN.md, "Tables", "Trend statistics"): `run,
//! method, split, measure, metric, aggregate, grid, statistic, seeds,
//! rho_mean, rho_sd, rho_ci_low, rho_ci_high, same_sign, p_sign`.

use polars::prelude::{Column, DataFrame};

use super::by_step::SplitSelection;
use super::correlations::{Against, Aggregate, Grid, Statistic};
use super::frame;
use crate::measures::Measure;

pub const RUN: &str = "run";
pub const METHOD: &str = "method";
pub const SPLIT: &str = "split";
pub const MEASURE: &str = "measure";
pub const METRIC: &str = "metric";
pub const AGGREGATE: &str = "aggregate";
pub const GRID: &str = "grid";
pub const STATISTIC: &str = "statistic";
pub const SEEDS: &str = "seeds";
pub const RHO_MEAN: &str = "rho_mean";
pub const RHO_SD: &str = "rho_sd";
pub const RHO_CI_LOW: &str = "rho_ci_low";
pub const RHO_CI_HIGH: &str = "rho_ci_high";
pub const SAME_SIGN: &str = "same_sign";
pub const P_SIGN: &str = "p_sign";

/// One row: a correlation over the seeds that define it.
#[derive(Clone, Debug, PartialEq)]
pub struct AcrossSeedsRow {
    pub run: String,
    pub method: String,
    pub split: SplitSelection,
    pub measure: Measure,
    pub metric: Against,
    pub aggregate: Aggregate,
    pub grid: Grid,
    pub statistic: Statistic,
    /// Seeds with a defined rho.
    pub seeds: usize,
    /// `tanh` of the mean Fisher z over the seeds.
    pub rho_mean: Option<f64>,
    /// Sample standard deviation of rho over the seeds (null below 2).
    pub rho_sd: Option<f64>,
    /// 95% interval of the mean z by Student's t over the seeds, back in
    /// rho (null below 2 seeds).
    pub rho_ci_low: Option<f64>,
    pub rho_ci_high: Option<f64>,
    /// Seeds whose rho has the majority sign.
    pub same_sign: usize,
    /// Two-sided sign test of the signs (zeros left out).
    pub p_sign: Option<f64>,
}

pub fn across_seeds_frame(rows: &[AcrossSeedsRow]) -> DataFrame {
    let text = |f: fn(&AcrossSeedsRow) -> &str| rows.iter().map(f).collect::<Vec<&str>>();
    let value = |f: fn(&AcrossSeedsRow) -> Option<f64>| rows.iter().map(f).collect::<Vec<Option<f64>>>();
    frame(vec![
        Column::new(RUN.into(), text(|r| &r.run)),
        Column::new(METHOD.into(), text(|r| &r.method)),
        Column::new(SPLIT.into(), text(|r| r.split.name())),
        Column::new(MEASURE.into(), text(|r| r.measure.name())),
        Column::new(METRIC.into(), text(|r| r.metric.name())),
        Column::new(AGGREGATE.into(), text(|r| r.aggregate.name())),
        Column::new(GRID.into(), text(|r| r.grid.name())),
        Column::new(STATISTIC.into(), text(|r| r.statistic.name())),
        Column::new(SEEDS.into(), rows.iter().map(|r| r.seeds as i64).collect::<Vec<i64>>()),
        Column::new(RHO_MEAN.into(), value(|r| r.rho_mean)),
        Column::new(RHO_SD.into(), value(|r| r.rho_sd)),
        Column::new(RHO_CI_LOW.into(), value(|r| r.rho_ci_low)),
        Column::new(RHO_CI_HIGH.into(), value(|r| r.rho_ci_high)),
        Column::new(SAME_SIGN.into(), rows.iter().map(|r| r.same_sign as i64).collect::<Vec<i64>>()),
        Column::new(P_SIGN.into(), value(|r| r.p_sign)),
    ])
}
