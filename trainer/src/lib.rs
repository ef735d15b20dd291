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
///
/// A run with `external = { checkpoints, metrics }` is not trained but
/// imported: its checkpoints are checked against its model, evaluated on
/// the data set and written as the run's own.
///
/// With `--torch-module MODEL` it trains nothing and prints the PyTorch
/// module of that model instead.
#[derive(Parser, Debug, Clone)]
#[command(name = "trainer", version, about, long_about)]
pub struct Cli {
    #[command(flatten)]
    pub stage: StageArgs,

    /// Print Python code defining the `torch.nn.Module` of model MODEL (a
    /// preset or a `[models]` entry) on the images of the runs that train
    /// it, whose `load_state_dict(..., strict=True)` takes every checkpoint
    /// of those runs, and exit. With `--run`, of that run's images.
    #[arg(long, value_name = "MODEL")]
    pub torch_module: Option<String>,
}

/// The PyTorch module of `model` on the images of the (selected) runs that
/// train it: they must agree on the image shape and the classes.
pub fn torch_module(pipeline: &Pipeline, model: &str, runs: &[String]) -> anyhow::Result<String> {
    let selected = pipeline.select_runs(runs).map_err(anyhow::Error::msg)?;
    let mut users = selected.iter().filter(|(_, run)| run.model == model).peekable();
    let Some((first, run)) = users.peek().copied() else {
        anyhow::bail!("no selected run trains model `{model}`: the module's first dense layer depends on the images");
    };
    let (architecture, shape) = (pipeline.architecture_of(run), pipeline.dataset_of(run).shape);
    for (name, other) in users {
        let other_shape = pipeline.dataset_of(other).shape;
        if other_shape != shape || pipeline.architecture_of(other) != architecture {
            anyhow::bail!(
                "runs `{first}` ({shape} images) and `{name}` ({other_shape} images) train model `{model}` on different data; pick one with --run"
            );
        }
    }
    Ok(architecture.torch_module(shape)?)
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

/// The code `--torch-module` asks for, if it does.
pub fn requested_torch_module(cli: &Cli) -> Option<anyhow::Result<String>> {
    let model = cli.torch_module.as_ref()?;
    Some(Pipeline::load(&cli.stage.config).map_err(anyhow::Error::from).and_then(|p| torch_module(&p, model, &cli.stage.runs)))
}

/// Trains the selected runs of this shard, one after another.
pub fn run(cli: &Cli) -> anyhow::Result<StageReport> {
    let kernels = engine::instruction_set()?;
    tracing::info!("kernels: {kernels}");
    let pipeline = Pipeline::load(&cli.stage.config)?;
    let options = RunOptions::from_args(&cli.stage)?;
    run_stage(&mut Trainer { pipeline: &pipeline, runs: &cli.stage.runs }, options)
}
