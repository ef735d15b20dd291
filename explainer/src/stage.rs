//! The explainer stage: one unit per (run, method, checkpoint), each writing
//! one attribution file (see DESIGN: work units, fingerprints and caching).
//!
//! Units are listed in (run, method, step) order, which is what `--shard`
//! slices; a shard then works through its units checkpoint by checkpoint,
//! so that each checkpoint is read and run forward once for all of its
//! methods, and only one checkpoint is in memory at a time. A unit whose
//! stored fingerprint is current is skipped; a unit that fails (a corrupt
//! checkpoint, a bad layer name) is reported and the others still run.

use std::collections::HashSet;
use std::path::Path;
use std::rc::Rc;
use std::time::Instant;

use anyhow::Context;
use common::artifacts::{
    read_checkpoint, read_checkpoint_fingerprint, read_metadata, read_probe, remove_stale_temporaries, step_name,
    write_attributions, Attributions, RunLayout,
};
use common::cli::{progress_bar, MethodFilter, StageArgs, StageReport};
use common::config::{MethodConfig, PipelineConfig, RunConfig};
use common::data::{load_dataset, ImageShape};
use common::provenance::{attribution_fingerprint, method_fingerprint};

use crate::method::Method;

/// Explain the probe set of every checkpoint with every configured method.
///
/// Writes `<output>/<run>/attributions/<method>/step-NNNNNN.safetensors`
/// for each (run, method, checkpoint) whose stored fingerprint is not the
/// current one, and skips the others.
#[derive(clap::Parser, Clone, Debug)]
#[command(
    name = "explainer",
    version,
    about = "Explain the probe set at every checkpoint with LRP and Grad-CAM",
    long_about = "Explain the probe set at every checkpoint with LRP and Grad-CAM.\n\n\
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
struct Unit<'a> {
    run: &'a str,
    method: &'a str,
    step: u64,
}

impl std::fmt::Display for Unit<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.run, self.method, step_name(self.step))
    }
}

/// Why a unit is (re)done, or that it is not.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Status {
    UpToDate,
    Missing,
    /// Which of its inputs changed.
    Stale(&'static str),
    Unreadable(String),
    Forced,
}

impl Status {
    fn reason(&self) -> String {
        match self {
            Status::UpToDate => "up to date".into(),
            Status::Missing => "missing".into(),
            Status::Stale(why) => format!("stale: {why}"),
            Status::Unreadable(e) => format!("existing file unreadable: {e}"),
            Status::Forced => "--force".into(),
        }
    }
}

/// A selected run with what its units need.
struct RunPlan<'a> {
    name: &'a str,
    config: &'a RunConfig,
    layout: RunLayout,
    /// (name, config, resolved method, fingerprint of its settings).
    methods: Vec<(&'a str, &'a MethodConfig, Method, String)>,
}

impl RunPlan<'_> {
    /// The plan of the method a unit names (units come from the plans).
    fn method(&self, name: &str) -> &(&str, &MethodConfig, Method, String) {
        self.methods.iter().find(|m| m.0 == name).expect("units come from the plans")
    }
}

/// The probe images of a run, normalised, in probe order.
struct ProbeBatch {
    shape: ImageShape,
    images: Vec<f32>,
    labels: Vec<u8>,
    probe_ids: Vec<i64>,
}

/// Runs the stage; the report counts done, up-to-date and failed units.
pub fn run(cli: &Cli) -> anyhow::Result<StageReport> {
    let args = &cli.stage;
    let config = PipelineConfig::load(&args.config)?;
    let runs = config.select_runs(&args.runs).map_err(anyhow::Error::msg)?;
    let methods = config.select_methods(&cli.method_filter.methods).map_err(anyhow::Error::msg)?;
    let shard = args.shard().map_err(anyhow::Error::msg).context("--shard")?;
    if methods.is_empty() {
        tracing::warn!("no methods in {}; add e.g. [methods.lrp] kind = \"lrp\"", args.config.display());
    }

    let mut plans = Vec::with_capacity(runs.len());
    let mut units = Vec::new();
    for &(name, run_config) in &runs {
        let dataset = &config.datasets[&run_config.dataset];
        let shape =
            dataset.image_shape().map_err(anyhow::Error::msg).with_context(|| format!("datasets.{}", run_config.dataset))?;
        let normalization = dataset.normalization(shape.channels);
        let mut resolved = Vec::with_capacity(methods.len());
        for &(method_name, method_config) in &methods {
            let method = Method::from_config(method_config, &normalization).with_context(|| format!("methods.{method_name}"))?;
            resolved.push((method_name, method_config, method, method_fingerprint(method_config)));
        }
        let layout = RunLayout::new(&config.output.dir, name);
        let steps = layout
            .checkpoint_steps()
            .with_context(|| format!("{}: cannot list checkpoints", layout.checkpoints_dir().display()))?;
        if steps.is_empty() {
            tracing::warn!("run `{name}` has no checkpoints in {}; run the trainer first", layout.checkpoints_dir().display());
        }
        for &(method_name, _) in &methods {
            units.extend(steps.iter().map(|&step| Unit { run: name, method: method_name, step }));
        }
        plans.push(RunPlan { name, config: run_config, layout, methods: resolved });
    }
    units.sort();
    let total = units.len();
    let mut units = shard.select(units);
    if shard != common::cli::Shard::ALL {
        tracing::info!("shard {shard}: {} of {total} unit(s)", units.len());
    }
    // Work checkpoint by checkpoint: read and run each one once for all its methods.
    units.sort_by(|a, b| (a.run, a.step, a.method).cmp(&(b.run, b.step, b.method)));

    let mut report = StageReport::default();
    let bar = progress_bar(units.len() as u64, "explaining");
    let mut probe_cache: Option<(&str, Result<Rc<ProbeBatch>, String>)> = None;
    let mut cleaned: HashSet<(&str, &str)> = HashSet::new();
    let mut start = 0;
    while start < units.len() {
        let (run_name, step) = (units[start].run, units[start].step);
        let end = start + units[start..].iter().take_while(|u| u.run == run_name && u.step == step).count();
        let group = &units[start..end];
        start = end;
        let plan = plans.iter().find(|p| p.name == run_name).expect("units come from the plans");
        let checkpoint = plan.layout.checkpoint(step);

        let checkpoint_fingerprint = match read_checkpoint_fingerprint(&checkpoint) {
            Ok(fp) => fp,
            Err(e) => {
                for unit in group {
                    report.failed.push(format!("{unit}: {e}"));
                    bar.inc(1);
                }
                continue;
            }
        };
        let mut pending = Vec::new();
        for unit in group {
            let (_, _, _, method_fp) = plan.method(unit.method);
            let status = unit_status(&plan.layout.attribution(unit.method, step), &checkpoint_fingerprint, method_fp, args.force);
            match status {
                Status::UpToDate => {
                    tracing::debug!("{unit}: up to date");
                    report.skipped += 1;
                    bar.inc(1);
                }
                _ if args.dry_run => {
                    println!("explainer: {unit}: would explain ({})", status.reason());
                    report.planned += 1;
                    bar.inc(1);
                }
                _ => pending.push((unit, status)),
            }
        }
        if pending.is_empty() {
            continue;
        }

        if probe_cache.as_ref().map(|(run, _)| *run) != Some(run_name) {
            probe_cache = Some((run_name, load_probe_batch(&config, plan).map(Rc::new).map_err(|e| format!("{e:#}"))));
        }
        let probe = match &probe_cache {
            Some((_, Ok(probe))) => Rc::clone(probe),
            Some((_, Err(e))) => {
                for (unit, _) in &pending {
                    report.failed.push(format!("{unit}: {e}"));
                    bar.inc(1);
                }
                continue;
            }
            None => unreachable!("filled above"),
        };

        let started = Instant::now();
        let pending_methods: Vec<&Method> = pending.iter().map(|(unit, _)| &plan.method(unit.method).2).collect();
        let forward = load_and_trace(&checkpoint, &probe, &pending_methods);
        let (model, info, trace) = match forward {
            Ok(loaded) => loaded,
            Err(e) => {
                for (unit, _) in &pending {
                    report.failed.push(format!("{unit}: {e:#}"));
                    bar.inc(1);
                }
                continue;
            }
        };
        let forward_seconds = started.elapsed().as_secs_f64();

        for (unit, status) in pending {
            let started = Instant::now();
            let (_, _, method, method_fp) = plan.method(unit.method);
            let out = plan.layout.attribution(unit.method, step);
            if cleaned.insert((unit.run, unit.method)) {
                if let Some(dir) = out.parent() {
                    if let Err(e) = remove_stale_temporaries(dir) {
                        tracing::warn!("{}: cannot remove stale temporary files: {e}", dir.display());
                    }
                }
            }
            let result = method
                .explain(&model, &trace, &probe.labels)
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
                        method_fingerprint: method_fp.clone(),
                        checkpoint_fingerprint: info.fingerprint.clone(),
                        fingerprint: attribution_fingerprint(&info.fingerprint, method_fp),
                    };
                    write_attributions(&out, &attributions).map_err(anyhow::Error::from)
                });
            match result {
                Ok(()) => {
                    report.done += 1;
                    tracing::info!(
                        "{unit}: explained {} image(s) in {:.2}s (+{:.2}s forward) [{}]",
                        probe.labels.len(),
                        started.elapsed().as_secs_f64(),
                        forward_seconds,
                        status.reason()
                    );
                }
                Err(e) => report.failed.push(format!("{unit}: {e:#}")),
            }
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    Ok(report)
}

/// Whether the file at `out` holds the maps of this checkpoint and method
/// settings, and if not, which of the two changed; reads only the file's
/// header.
fn unit_status(out: &Path, checkpoint_fingerprint: &str, method_fingerprint: &str, force: bool) -> Status {
    if force {
        return Status::Forced;
    }
    if !out.exists() {
        return Status::Missing;
    }
    let expected = attribution_fingerprint(checkpoint_fingerprint, method_fingerprint);
    match read_metadata(out) {
        Ok(meta) if meta.get("fingerprint").map(String::as_str) == Some(expected.as_str()) => Status::UpToDate,
        Ok(meta) => Status::Stale(
            match (
                meta.get("checkpoint_fingerprint").map(String::as_str) == Some(checkpoint_fingerprint),
                meta.get("method_fingerprint").map(String::as_str) == Some(method_fingerprint),
            ) {
                (true, false) => "the method's settings changed",
                (false, true) => "the checkpoint changed (its run was retrained)",
                (false, false) => "the checkpoint and the method's settings changed",
                (true, true) => "written by another version of the explainer",
            },
        ),
        Err(e) => Status::Unreadable(e.problem),
    }
}

/// Loads the run's data set and probe table and normalises the probe images.
fn load_probe_batch(config: &PipelineConfig, plan: &RunPlan) -> anyhow::Result<ProbeBatch> {
    let dataset_config = &config.datasets[&plan.config.dataset];
    let dataset = load_dataset(dataset_config).with_context(|| format!("data set `{}`", plan.config.dataset))?;
    let probe_path = plan.layout.probe();
    let probe = read_probe(&probe_path)?;
    if probe.is_empty() {
        anyhow::bail!("{}: the probe set is empty", probe_path.display());
    }
    let set = probe.images(&dataset).map_err(|e| anyhow::anyhow!("{}: {e}", probe_path.display()))?;
    let shape = set.shape;
    let indices: Vec<usize> = (0..set.len()).collect();
    let images = dataset_config.normalization(shape.channels).batch(&set, &indices);
    Ok(ProbeBatch { shape, images, labels: set.labels, probe_ids: probe.entries.iter().map(|e| e.probe_id).collect() })
}

/// Reads a checkpoint and runs the probe batch through it, keeping the
/// layer outputs that the pending methods read (all of them for LRP, the
/// top of the network for Grad-CAM alone).
fn load_and_trace(
    checkpoint: &Path,
    probe: &ProbeBatch,
    methods: &[&Method],
) -> anyhow::Result<(common::model::Model, common::artifacts::CheckpointInfo, common::model::Trace)> {
    let (model, info) = read_checkpoint(checkpoint)?;
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
    let first_kept = methods.iter().map(|m| m.first_traced_layer(&model).unwrap_or(0)).min().unwrap_or(0);
    let trace =
        model.forward_trace_from(&probe.images, first_kept).map_err(|e| anyhow::anyhow!("{}: {e}", checkpoint.display()))?;
    Ok((model, info, trace))
}
