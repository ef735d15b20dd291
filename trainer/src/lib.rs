//! The trainer stage: trains every configured run with Adam and writes its
//! probe set, checkpoints on a schedule and per-checkpoint metrics (see
//! DESIGN: layout, checkpoints, Parquet tables).
//!
//! A run is one work unit. A finished run whose fingerprint is unchanged is
//! skipped; an interrupted one resumes from its newest checkpoint and ends
//! with the same bytes as an uninterrupted run.

pub mod adam;
pub mod metrics;
pub mod probe_selection;
pub mod resume;
pub mod training;

use anyhow::Context;
use clap::Parser;
use common::artifacts::RunLayout;
use common::cli::{StageArgs, StageReport};
use common::config::PipelineConfig;

use training::{run_status, train_run, RunStatus};

/// Train the configured CNNs and write checkpoints, metrics and the probe set.
///
/// Writes under `[output].dir` of the config, per run: `probe.parquet`,
/// `metrics.parquet` and `checkpoints/step-NNNNNN.safetensors` (with a
/// `.resume.safetensors` beside the newest one while training is under way).
/// Runs that are done and unchanged are skipped; interrupted runs resume.
#[derive(Parser, Debug, Clone)]
#[command(name = "trainer", version, about, long_about)]
pub struct Cli {
    #[command(flatten)]
    pub stage: StageArgs,
}

/// Trains the selected runs of this shard, one after another; a failing run
/// is reported and the others still train.
pub fn run(cli: &Cli) -> anyhow::Result<StageReport> {
    let config = PipelineConfig::load(&cli.stage.config)?;
    let shard = cli.stage.shard().map_err(anyhow::Error::msg)?;
    let runs = shard.select(config.select_runs(&cli.stage.runs).map_err(anyhow::Error::msg)?);
    let mut report = StageReport::default();
    for (name, run) in runs {
        let layout = RunLayout::new(&config.output.dir, name);
        let status = if cli.stage.force { RunStatus::Stale } else { run_status(&config, run, &layout) };
        let what = match &status {
            RunStatus::UpToDate => {
                tracing::info!("run `{name}`: up to date");
                report.skipped += 1;
                continue;
            }
            RunStatus::Fresh => "train from the start".to_string(),
            RunStatus::Stale if cli.stage.force => "retrain (--force)".to_string(),
            RunStatus::Stale => "retrain: its checkpoints come from another configuration".to_string(),
            RunStatus::Resume(step) => format!("resume from step {step}"),
        };
        if cli.stage.dry_run {
            println!("trainer: run `{name}`: would {what}");
            report.planned += 1;
            continue;
        }
        tracing::info!("run `{name}`: {what}");
        match train_run(&config, name, run, status).with_context(|| format!("run `{name}`")) {
            Ok(()) => report.done += 1,
            Err(e) => report.failed.push(format!("{e:#}")),
        }
    }
    Ok(report)
}
