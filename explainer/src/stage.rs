//! The explainer stage: one unit per (run, method, checkpoint), each writing
//! one attribution file (docs/DESIGN.md, "Work units and sharding",
//! "Fingerprints and caching").
//!
//! Units are listed in (run, method, step) order, which is what `--shard`
//! slices; a shard then works through its units checkpoint by checkpoint,
//! so that each checkpoint is read and run forward once for all of its
//! methods, and only one checkpoint is in memory at a time. A unit whose
//! stored fingerprint is current is skipped; a unit that fails (a corrupt
//! checkpoint) is reported and the others still run.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::rc::Rc;
use std::time::Instant;

use anyhow::Context;
use common::artifacts::{
    read_checkpoint_header, read_probe, read_verified_metadata, remove_stale_temporaries, step_name, write_attributions,
    Attributions, CheckpointModel, ExpectedCheckpoint, RunLayout,
};
use common::cli::{MethodFilter, StageArgs};
use common::config::{DatasetSpec, MethodConfig, Pipeline};
use common::data::{load_dataset, ImageShape};
use common::provenance::{
    attribution_fingerprint, checkpoint_fingerprint, checkpoint_model, method_fingerprint, run_fingerprint, trained_run,
};
use common::stage::{run_stage, Outcomes, RunOptions, Stage, StageReport, Status};
use engine::{read_checkpoint, Checkpoint, Trace, TraceKeeps};

use crate::method::Method;

/// Explain the probe set of every checkpoint with every configured method.
#[derive(clap::Parser, Clone, Debug)]
#[command(
    name = "explainer",
    version,
    about = "Explain the probe set at every checkpoint with LRP, Grad-CAM and the gradient family",
    long_about = "Explain the probe set at every checkpoint with the configured methods (LRP, Grad-CAM, \
        gradient, gradient-x-input, integrated-gradients, smoothgrad, guided-backprop).\n\n\
        One unit of work is one (run, method, checkpoint): it writes \
        <output>/<run>/attributions/<method>/step-NNNNNN.safetensors with the maps of all probe images. \
        Units whose stored fingerprint matches the checkpoint and the method's settings are skipped, so \
        changing one method's settings redoes only that method. Units are sorted by (run, method, step) \
        before --shard takes its slice. A unit that fails (e.g. a corrupt checkpoint) is reported, the \
        others still run, and the exit code is 1."
)]
pub struct Cli {
    #[command(flatten)]
    pub stage: StageArgs,

    #[command(flatten)]
    pub method_filter: MethodFilter,
}

/// One unit of work.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Unit<'a> {
    run: &'a str,
    method: &'a str,
    step: u64,
}

impl std::fmt::Display for Unit<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.run, self.method, step_name(self.step))
    }
}

/// Why a unit is (re)done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    Missing,
    /// Which of its inputs changed.
    Stale(&'static str),
    Unreadable(String),
    Forced,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Missing => write!(f, "missing"),
            Reason::Stale(why) => write!(f, "stale: {why}"),
            Reason::Unreadable(e) => write!(f, "existing file unreadable: {e}"),
            Reason::Forced => write!(f, "--force"),
        }
    }
}

/// A method resolved for one run's data set.
struct PlannedMethod<'a> {
    name: &'a str,
    method: Method,
    fingerprint: String,
}

/// A selected run with what its units need.
struct RunPlan<'a> {
    name: &'a str,
    dataset: &'a DatasetSpec,
    layout: RunLayout,
    methods: Vec<PlannedMethod<'a>>,
    /// The run's fingerprint and the architecture of its checkpoints.
    fingerprint: String,
    model: CheckpointModel,
    /// The checkpoint steps its metrics table lists (none when the run is
    /// not trained under the current config).
    steps: Vec<u64>,
}

impl RunPlan<'_> {
    /// The plan of the method a unit names (units come from the plans).
    fn method(&self, name: &str) -> &PlannedMethod<'_> {
        self.methods.iter().find(|m| m.name == name).expect("units come from the plans")
    }

    /// What the checkpoint of `step` must be.
    fn expected_fingerprint(&self, step: u64) -> String {
        checkpoint_fingerprint(&self.fingerprint, step)
    }
}

/// The probe images of a run, normalised, in probe order.
struct ProbeBatch {
    shape: ImageShape,
    images: Vec<f32>,
    labels: Vec<u8>,
    probe_ids: Vec<i64>,
    entries: common::artifacts::Probe,
}

/// The explainer as the stage runner drives it.
pub struct Explainer<'a> {
    plans: Vec<RunPlan<'a>>,
    /// The content hash of each checkpoint, from its header (checked to be
    /// the checkpoint the config describes), read once per checkpoint.
    checkpoint_contents: HashMap<(&'a str, u64), Result<String, String>>,
    /// The probe batch of the run last explained.
    probe: Option<(&'a str, Result<Rc<ProbeBatch>, String>)>,
    /// Attribution folders already cleared of a killed run's temporaries.
    cleaned: HashSet<(&'a str, &'a str)>,
}

impl<'a> Explainer<'a> {
    /// Resolves the selected methods for each selected run's data set.
    pub fn new(pipeline: &'a Pipeline, runs: &[String], methods: &[String]) -> anyhow::Result<Self> {
        let instances = pipeline.instances(runs).map_err(anyhow::Error::msg)?;
        let methods = pipeline.select_methods(methods).map_err(anyhow::Error::msg)?;
        if methods.is_empty() {
            tracing::warn!("no methods in {}; add e.g. [methods.lrp] kind = \"lrp\"", pipeline.file.display());
        }
        let mut plans = Vec::with_capacity(instances.len());
        for instance in instances {
            let (name, run) = (instance.path.as_str(), &instance.config);
            let dataset = pipeline.dataset_of(run);
            let planned = methods
                .iter()
                .map(|&(method_name, config): &(&'a str, &'a MethodConfig)| {
                    let method =
                        Method::from_config(config, &dataset.normalization).with_context(|| format!("methods.{method_name}"))?;
                    Ok(PlannedMethod { name: method_name, method, fingerprint: method_fingerprint(config) })
                })
                .collect::<anyhow::Result<_>>()?;
            let layout = RunLayout::new(pipeline.output_dir(), name);
            let steps = match trained_run(&pipeline.config, instance, &layout) {
                Ok(trained) => trained.steps,
                Err(why) => {
                    tracing::warn!("run `{name}` is not trained under this config ({why}); its units are left out");
                    Vec::new()
                }
            };
            warn_of_stray_checkpoints(name, &layout, &steps);
            plans.push(RunPlan {
                name,
                dataset,
                layout,
                methods: planned,
                fingerprint: run_fingerprint(&pipeline.config, instance),
                model: checkpoint_model(pipeline, run),
                steps,
            });
        }
        Ok(Explainer { plans, checkpoint_contents: HashMap::new(), probe: None, cleaned: HashSet::new() })
    }

    fn plan(&self, run: &str) -> &RunPlan<'a> {
        self.plans.iter().find(|p| p.name == run).expect("units come from the plans")
    }

    /// The probe batch of `run`, loaded once while its units run.
    fn probe_batch(&mut self, run: &'a str) -> Result<Rc<ProbeBatch>, String> {
        if self.probe.as_ref().map(|(r, _)| *r) != Some(run) {
            let loaded = load_probe_batch(self.plan(run)).map(Rc::new).map_err(|e| format!("{e:#}"));
            self.probe = Some((run, loaded));
        }
        self.probe.as_ref().expect("filled above").1.clone()
    }

    /// Explains the units of one checkpoint, reading and tracing it once.
    fn explain_checkpoint(&mut self, group: &[(Unit<'a>, Reason)], outcomes: &mut Outcomes) {
        let (run, step) = (group[0].0.run, group[0].0.step);
        let units = || group.iter().map(|(u, _)| u);
        let probe = match self.probe_batch(run) {
            Ok(probe) => probe,
            Err(e) => return outcomes.fail_all(units(), &anyhow::anyhow!(e)),
        };
        let plan = self.plans.iter().find(|p| p.name == run).expect("units come from the plans");
        let checkpoint = plan.layout.checkpoint(step);
        let started = Instant::now();
        let methods: Vec<&Method> = group.iter().map(|(u, _)| &plan.method(u.method).method).collect();
        let fingerprint = plan.expected_fingerprint(step);
        let expected = ExpectedCheckpoint { run, step, fingerprint: &fingerprint, model: &plan.model };
        let (loaded, trace) = match load_and_trace(&checkpoint, &expected, &probe, &methods) {
            Ok(loaded) => loaded,
            Err(e) => return outcomes.fail_all(units(), &e),
        };
        let (model, info) = (&loaded.model, &loaded.info);
        let forward_seconds = started.elapsed().as_secs_f64();
        for (unit, reason) in group {
            let started = Instant::now();
            let planned = plan.method(unit.method);
            let out = plan.layout.attribution(unit.method, step);
            if self.cleaned.insert((unit.run, unit.method)) {
                if let Some(dir) = out.parent() {
                    if let Err(e) = remove_stale_temporaries(dir) {
                        tracing::warn!("{}: cannot remove stale temporary files: {e}", dir.display());
                    }
                }
            }
            let result = planned
                .method
                .explain(model, &trace, &probe.labels, &probe.probe_ids)
                .map_err(|e| anyhow::anyhow!("{}: {e}", checkpoint.display()))
                .and_then(|explanation| {
                    let attributions = Attributions {
                        run: unit.run.to_string(),
                        method: unit.method.to_string(),
                        step,
                        epoch: info.epoch,
                        height: explanation.height,
                        width: explanation.width,
                        maps: explanation.maps,
                        probe_id: probe.probe_ids.clone(),
                        target: explanation.targets.iter().map(|&t| t as i64).collect(),
                        prediction: explanation.predictions.iter().map(|&p| p as i64).collect(),
                        logit: explanation.logits,
                        method_fingerprint: planned.fingerprint.clone(),
                        checkpoint_fingerprint: info.fingerprint.clone(),
                        checkpoint_content: loaded.content.clone(),
                        fingerprint: attribution_fingerprint(&info.fingerprint, &planned.fingerprint),
                        content: None,
                    };
                    // NaN or infinite maps (a model that went wrong) are never
                    // written: later stages would average them away.
                    attributions
                        .check_against(&probe.entries, model.classes)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", checkpoint.display()))?;
                    write_attributions(&out, &attributions).map_err(anyhow::Error::from)
                });
            match result {
                Ok(()) => outcomes.done(
                    unit,
                    format!(
                        "explained {} image(s) in {:.2}s (+{forward_seconds:.2}s forward) [{reason}]",
                        probe.labels.len(),
                        started.elapsed().as_secs_f64()
                    ),
                ),
                Err(e) => outcomes.failed(unit, &e),
            }
        }
    }
}

impl<'a> Stage for Explainer<'a> {
    type Unit = Unit<'a>;
    type Reason = Reason;
    const NAME: &'static str = "explainer";
    const VERB: &'static str = "explain";

    fn units(&mut self) -> anyhow::Result<Vec<Unit<'a>>> {
        let mut units = Vec::new();
        for plan in &self.plans {
            for method in &plan.methods {
                units.extend(plan.steps.iter().map(|&step| Unit { run: plan.name, method: method.name, step }));
            }
        }
        units.sort();
        Ok(units)
    }

    /// Whether the unit's file holds the maps of this checkpoint and method
    /// settings, computed from this very checkpoint file and unaltered
    /// since; if not, why. Reads the checkpoint's header and the whole
    /// attribution file (to check its content hash).
    fn status(&mut self, unit: &Unit<'a>) -> anyhow::Result<Status<Reason>> {
        let plan = self.plans.iter().find(|p| p.name == unit.run).expect("units come from the plans");
        let checkpoint_fingerprint = plan.expected_fingerprint(unit.step);
        let checkpoint_content = self
            .checkpoint_contents
            .entry((unit.run, unit.step))
            .or_insert_with(|| {
                let path = plan.layout.checkpoint(unit.step);
                let header = read_checkpoint_header(&path).map_err(|e| format!("{e}; run the trainer"))?;
                let expected = ExpectedCheckpoint {
                    run: unit.run,
                    step: unit.step,
                    fingerprint: &checkpoint_fingerprint,
                    model: &plan.model,
                };
                header.check(&expected).map_err(|e| format!("{}: {e}; run the trainer", path.display()))?;
                Ok(header.content)
            })
            .clone()
            .map_err(anyhow::Error::msg)?;
        let method_fingerprint = &plan.method(unit.method).fingerprint;
        let out = plan.layout.attribution(unit.method, unit.step);
        if !out.exists() {
            return Ok(Status::ToDo(Reason::Missing));
        }
        let meta = match read_verified_metadata(&out) {
            Ok(meta) => meta,
            Err(e) => return Ok(Status::ToDo(Reason::Unreadable(e.problem))),
        };
        let same = |key: &str, value: &str| meta.get(key).map(String::as_str) == Some(value);
        let expected = attribution_fingerprint(&checkpoint_fingerprint, method_fingerprint);
        if same("fingerprint", &expected) && same("checkpoint_content", &checkpoint_content) {
            return Ok(Status::UpToDate);
        }
        Ok(Status::ToDo(Reason::Stale(
            match (same("checkpoint_fingerprint", &checkpoint_fingerprint), same("method_fingerprint", method_fingerprint)) {
                (true, true) if !same("checkpoint_content", &checkpoint_content) => {
                    "computed from another file of this checkpoint"
                }
                (true, false) => "the method's settings changed",
                (false, true) => "the checkpoint changed (its run was retrained)",
                (false, false) => "the checkpoint and the method's settings changed",
                (true, true) => "written by another version of the explainer",
            },
        )))
    }

    fn forced(&mut self, _: &Unit<'a>) -> Reason {
        Reason::Forced
    }

    /// Works checkpoint by checkpoint: each is read and run forward once
    /// for all its methods.
    fn run(&mut self, mut pending: Vec<(Unit<'a>, Reason)>, outcomes: &mut Outcomes) {
        pending.sort_by(|(a, _), (b, _)| (a.run, a.step, a.method).cmp(&(b.run, b.step, b.method)));
        for group in pending.chunk_by(|(a, _), (b, _)| (a.run, a.step) == (b.run, b.step)) {
            self.explain_checkpoint(group, outcomes);
        }
    }
}

/// Runs the stage; the report counts done, up-to-date and failed units.
pub fn run(cli: &Cli) -> anyhow::Result<StageReport> {
    let kernels = engine::instruction_set()?;
    tracing::info!("kernels: {kernels}");
    let pipeline = Pipeline::load(&cli.stage.config)?;
    let options = RunOptions::from_args(&cli.stage).context("--shard")?;
    let mut explainer = Explainer::new(&pipeline, &cli.stage.runs, &cli.method_filter.methods)?;
    run_stage(&mut explainer, options)
}

/// Loads the run's data set and probe table and normalises the probe images.
fn load_probe_batch(plan: &RunPlan) -> anyhow::Result<ProbeBatch> {
    let dataset = load_dataset(&plan.dataset.config).with_context(|| format!("data set `{}`", plan.dataset.name))?;
    let probe_path = plan.layout.probe();
    let probe = read_probe(&probe_path)?;
    if probe.is_empty() {
        anyhow::bail!("{}: the probe set is empty", probe_path.display());
    }
    let set = probe.images(&dataset).map_err(|e| anyhow::anyhow!("{}: {e}", probe_path.display()))?;
    let indices: Vec<usize> = (0..set.len()).collect();
    let images = plan.dataset.normalization.batch(&set, &indices);
    let probe_ids = probe.entries.iter().map(|e| e.probe_id).collect();
    Ok(ProbeBatch { shape: set.shape, images, labels: set.labels, probe_ids, entries: probe })
}

/// Reads the checkpoint `expected` describes and runs the probe batch
/// through it, keeping the layer outputs that the pending methods read
/// (all of them for LRP, the top of the network for Grad-CAM alone).
fn load_and_trace(
    checkpoint: &Path,
    expected: &ExpectedCheckpoint,
    probe: &ProbeBatch,
    methods: &[&Method],
) -> anyhow::Result<(Checkpoint, Trace)> {
    let loaded = read_checkpoint(checkpoint, expected)?;
    let model = &loaded.model;
    if model.input != probe.shape {
        anyhow::bail!(
            "{}: the model takes {} images but the run's data set has {}",
            checkpoint.display(),
            model.input,
            probe.shape
        );
    }
    // A method that cannot say (an unknown layer) gets a full trace and
    // reports its own error when it explains.
    let keeps = methods
        .iter()
        .map(|m| m.trace_keeps(model).unwrap_or(TraceKeeps::LayersFrom(0)))
        .reduce(TraceKeeps::and)
        .unwrap_or(TraceKeeps::LayersFrom(0));
    let trace =
        model.forward_trace_keeping(&probe.images, keeps).map_err(|e| anyhow::anyhow!("{}: {e}", checkpoint.display()))?;
    Ok((loaded, trace))
}

/// Checkpoint files that the run's metrics table does not list belong to
/// no unit: say so, and leave them alone.
fn warn_of_stray_checkpoints(run: &str, layout: &RunLayout, steps: &[u64]) {
    if steps.is_empty() {
        return;
    }
    let stray: Vec<String> =
        layout.checkpoint_steps().unwrap_or_default().into_iter().filter(|s| !steps.contains(s)).map(step_name).collect();
    if !stray.is_empty() {
        tracing::warn!(
            "run `{run}`: ignoring checkpoint file(s) its metrics table does not list: {} (in {})",
            stray.join(", "),
            layout.checkpoints_dir().display()
        );
    }
}
