//! Stage 4 of the attribution-trends pipeline: per-step statistics of the
//! attribution summaries, their Spearman correlations with train/test loss,
//! a fit diagnosis per run, a Markdown report and figures.
//!
//! - [`inputs`]: reading metrics and summary tables;
//! - [`by_step`]: per-step descriptive statistics joined with the metrics;
//! - [`spearman`]: Spearman's rho, p-value, confidence interval;
//! - [`serial`]: rank correlations of serially dependent series (levels,
//!   differences, partial) with robust p-values, and q-values;
//! - [`calibration`]: their Monte Carlo calibration (`--calibrate`);
//! - [`correlations`]: measures against metrics over training steps;
//! - [`across_seeds`]: each correlation summarised over a run's seeds;
//! - [`fit`]: the fit-diagnosis rule;
//! - [`report`]: `report.md`;
//! - [`figures`]: PNG/SVG figures;
//! - [`stage`]: the command, fingerprints and the output files.

pub mod across_seeds;
pub mod by_step;
pub mod calibration;
pub mod correlations;
pub mod figures;
pub mod fit;
pub mod inputs;
pub mod report;
pub mod serial;
pub mod spearman;
pub mod stage;

pub use stage::{run, Cli};
