//! `analysis/across_seeds.parquet`: each correlation summarised over the
//! seeds of its run (docs/DESIGN.md, "Tables", "Trend statistics"): `run,
//! method, split, measure, metric, aggregate, grid, statistic, seeds,
//! rho_mean, rho_sd, rho_ci_low, rho_ci_high, same_sign, p_sign`.

use polars::prelude::{Column, DataFrame};

use super::correlations::{key_columns, CorrelationKey, RUN};
use super::frame;

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
    pub key: CorrelationKey,
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
    let value = |f: fn(&AcrossSeedsRow) -> Option<f64>| rows.iter().map(f).collect::<Vec<Option<f64>>>();
    let mut columns = vec![Column::new(RUN.into(), rows.iter().map(|r| r.run.as_str()).collect::<Vec<&str>>())];
    columns.extend(key_columns(rows.iter().map(|r| &r.key)));
    columns.extend([
        Column::new(SEEDS.into(), rows.iter().map(|r| r.seeds as i64).collect::<Vec<i64>>()),
        Column::new(RHO_MEAN.into(), value(|r| r.rho_mean)),
        Column::new(RHO_SD.into(), value(|r| r.rho_sd)),
        Column::new(RHO_CI_LOW.into(), value(|r| r.rho_ci_low)),
        Column::new(RHO_CI_HIGH.into(), value(|r| r.rho_ci_high)),
        Column::new(SAME_SIGN.into(), rows.iter().map(|r| r.same_sign as i64).collect::<Vec<i64>>()),
        Column::new(P_SIGN.into(), value(|r| r.p_sign)),
    ]);
    frame(columns)
}
