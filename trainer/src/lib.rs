//! The trainer stage: trains every configured run with Adam and writes its
//! probe set, checkpoints on a schedule and per-checkpoint metrics
//! (docs/DESIGN.md, "Stages and files", "Checkpoints", "Tables").
//!
//! A run is one work unit. A finished run whose fingerprint is unchanged is
//! skipped; an interrupted one resumes from its newest checkpoint and ends
//! with the same bytes as an uninterrupted run.

pub mod adam;
pub mod metrics;
pub mod probe_selection;
pub mod resume;
pub mod training;

use clap::Parser;
use common::artifacts::RunLayout;
use common::cli::StageArgs;
use common::config::{Pipeline, RunInstance};
use common::stage::{run_stage, Outcomes, RunOptions, Stage, StageReport, Status};

use training::{run_status, train_run, TrainOutcome, TrainPlan};

/// Train the configured CNNs and write checkpoints, metrics and the probe set.
///
/// Writes under `[output].dir` of the config, per run: `probe.parquet`,
/// `metrics.parquet` and `checkpoints/step-NNNNNN.safetensors` (with a
/// `.resume.safetensors` beside the newest one while training is under way).
/// Runs are the units of work, in name order; runs that are done and
/// unchanged are skipped, interrupted runs resume where they stopped, and a
/// run that fails is reported while the others still train (exit code 1).
#[derive(Parser, Debug, Clone)]
#[command(name = "trainer", version, about, long_about)]
pub struct Cli {
    #[command(flatten)]
    pub stage: StageArgs,
}

/// A run instance to train (a run, or one seed of a run with `seeds`).
pub struct RunUnit<'a>(pub &'a RunInstance);

impl std::fmt::Display for RunUnit<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "run `{}`", self.0)
    }
}

/// The trainer as the stage runner drives it.
pub struct Trainer<'a> {
    pipeline: &'a Pipeline,
    runs: &'a [String],
}

impl<'a> Stage for Trainer<'a> {
    type Unit = RunUnit<'a>;
    type Reason = TrainPlan;
    const NAME: &'static str = "trainer";
    const VERB: &'static str = "train";

    fn units(&mut self) -> anyhow::Result<Vec<RunUnit<'a>>> {
        let instances = self.pipeline.instances(self.runs).map_err(anyhow::Error::msg)?;
        Ok(instances.into_iter().map(RunUnit).collect())
    }

    fn status(&mut self, unit: &RunUnit<'a>) -> anyhow::Result<Status<TrainPlan>> {
        run_status(self.pipeline, unit.0, &RunLayout::new(self.pipeline.output_dir(), &unit.0.path))
    }

    fn forced(&mut self, _: &RunUnit<'a>) -> TrainPlan {
        TrainPlan::Forced
    }

    fn run(&mut self, pending: Vec<(RunUnit<'a>, TrainPlan)>, outcomes: &mut Outcomes) {
        for (unit, plan) in pending {
            tracing::info!("{unit}: train ({plan})");
            match train_run(self.pipeline, unit.0, plan) {
                Ok(TrainOutcome::Finished(steps)) => outcomes.done(&unit, format!("trained to step {steps}")),
                Ok(TrainOutcome::Diverged(d)) => outcomes.failed(
                    &unit,
                    &anyhow::anyhow!(
                        "diverged at step {} ({}); stopped there and kept the checkpoints before it. Lower the learning rate.",
                        d.step,
                        d.why
                    ),
                ),
                Err(e) => outcomes.failed(&unit, &e),
            }
        }
    }

    /// Each run shows a bar over its steps instead.
    fn unit_progress(&self) -> bool {
        false
    }
}

/// Trains the selected runs of this shard, one after another.
pub fn run(cli: &Cli) -> anyhow::Result<StageReport> {
    let pipeline = Pipeline::load(&cli.stage.config)?;
    let options = RunOptions::from_args(&cli.stage)?;
    run_stage(&mut Trainer { pipeline: &pipeline, runs: &cli.stage.runs }, options)
}
