//! The summarizer stage: one `summaries/<method>.parquet` per (run, method).
//!
//! A unit reads the run's probe table and every attribution file of the
//! method, and writes one row per (checkpoint, probe image):
//! `step, epoch, probe_id, split, label, target, correct` and one Float64
//! column per configured measure (in config order; null where undefined).
//!
//! Its fingerprint covers the ordered list of (step, attribution
//! fingerprint) and the measure list; a unit whose stored stamp equals it
//! is skipped (unless `--force`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Parser;
use common::artifacts::{
    read_attributions, read_checkpoint_fingerprint, read_metadata, read_probe, read_stamp, remove_stale_temporaries,
    write_parquet_stamped, Fingerprinter, Probe, RunLayout,
};
use common::cli::{progress_bar, MethodFilter, StageArgs, StageReport};
use common::config::PipelineConfig;
use common::provenance::attribution_fingerprint;
use polars::prelude::{Column, DataFrame};
use rayon::prelude::*;

use crate::measures::Measure;

/// Summarise every attribution map by the measures of `[summaries]`.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "summarizer",
    version,
    about = "Summarise every attribution map (norm, entropy, sparsity, ...) into <run>/summaries/<method>.parquet",
    long_about = "Summarise every attribution map (norm, entropy, sparsity, ...) into \
                  <run>/summaries/<method>.parquet, one row per (checkpoint, probe image) and one \
                  column per measure of [summaries].measures. Work units are (run, method) pairs in \
                  sorted order; a unit whose stored fingerprint is current is skipped."
)]
pub struct Cli {
    #[command(flatten)]
    pub stage: StageArgs,

    #[command(flatten)]
    pub method_filter: MethodFilter,
}

/// One work unit.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Unit {
    pub run: String,
    pub method: String,
}

/// The sorted (run, method) units the filters select (before sharding).
pub fn units(config: &PipelineConfig, runs: &[String], methods: &[String]) -> anyhow::Result<Vec<Unit>> {
    let runs = config.select_runs(runs).map_err(anyhow::Error::msg)?;
    let methods = config.select_methods(methods).map_err(anyhow::Error::msg)?;
    let mut units: Vec<Unit> = runs
        .iter()
        .flat_map(|(run, _)| methods.iter().map(|(method, _)| Unit { run: run.to_string(), method: method.to_string() }))
        .collect();
    units.sort();
    Ok(units)
}

/// The configured measures, checked.
pub fn configured_measures(config: &PipelineConfig) -> anyhow::Result<Vec<Measure>> {
    config
        .summaries
        .measures
        .iter()
        .map(|name| Measure::parse(name).with_context(|| format!("summaries.measures: unknown measure `{name}`")))
        .collect()
}

/// The fingerprint a summary file gets from the ordered (step, attribution
/// fingerprint) list and the measure names.
pub fn summary_fingerprint(inputs: &[(u64, String)], measures: &[Measure]) -> String {
    let names: Vec<&str> = measures.iter().map(|m| m.name()).collect();
    Fingerprinter::new().add("attributions", &inputs).add("measures", &names).finish()
}

/// The (step, fingerprint) list of a unit's attribution files: one per
/// checkpoint of the run, each holding the maps of that checkpoint with the
/// method's current settings (read from headers only). Maps of checkpoints
/// that are gone are not summarised; a missing or stale map is an error that
/// says to run the explainer.
pub fn attribution_inputs(layout: &RunLayout, method: &str, method_fingerprint: &str) -> anyhow::Result<Vec<(u64, String)>> {
    let dir = layout.checkpoints_dir();
    let steps = layout.checkpoint_steps().with_context(|| format!("{}: cannot list", dir.display()))?;
    let mut inputs = Vec::with_capacity(steps.len());
    for step in steps {
        let checkpoint = read_checkpoint_fingerprint(&layout.checkpoint(step))?;
        let expected = attribution_fingerprint(&checkpoint, method_fingerprint);
        let path = layout.attribution(method, step);
        if !path.is_file() {
            bail!("{}: missing; run the explainer first", path.display());
        }
        let meta = read_metadata(&path)?;
        if meta.get("fingerprint") != Some(&expected) {
            bail!("{}: stale (its checkpoint or the method's settings changed); run the explainer first", path.display());
        }
        inputs.push((step, expected));
    }
    Ok(inputs)
}

/// Runs the stage.
pub fn run(cli: &Cli) -> anyhow::Result<StageReport> {
    let config = PipelineConfig::load(&cli.stage.config)?;
    let measures = configured_measures(&config)?;
    let all = units(&config, &cli.stage.runs, &cli.method_filter.methods)?;
    let shard = cli.stage.shard().map_err(anyhow::Error::msg)?;
    let total = all.len();
    let mine = shard.select(all);
    tracing::info!(
        "summarizer: {} of {total} unit(s) in shard {shard}, measures: {}",
        mine.len(),
        config.summaries.measures.join(", ")
    );

    let mut report = StageReport::default();
    let bar = progress_bar(mine.len() as u64, "summarizing");
    for unit in &mine {
        let layout = RunLayout::new(&config.output.dir, &unit.run);
        let method_fingerprint = common::provenance::method_fingerprint(&config.methods[&unit.method]);
        match process_unit(&layout, unit, &method_fingerprint, &measures, cli.stage.force, cli.stage.dry_run) {
            Ok(Outcome::Done(rows)) => {
                tracing::info!("{}/{}: wrote {} ({rows} rows)", unit.run, unit.method, layout.summaries(&unit.method).display());
                report.done += 1;
            }
            Ok(Outcome::UpToDate) => {
                tracing::info!("{}/{}: up to date", unit.run, unit.method);
                report.skipped += 1;
            }
            Ok(Outcome::WouldDo(why)) => {
                println!("summarizer: {}/{}: would summarise ({why})", unit.run, unit.method);
                report.planned += 1;
            }
            Err(e) => report.failed.push(format!("{}/{}: {e:#}", unit.run, unit.method)),
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(report)
}

/// What happened to a unit.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// Written, with this many rows.
    Done(usize),
    UpToDate,
    /// Dry run: it would be redone, for this reason.
    WouldDo(String),
}

/// Summarises one (run, method) unless its stamp is current.
pub fn process_unit(
    layout: &RunLayout,
    unit: &Unit,
    method_fingerprint: &str,
    measures: &[Measure],
    force: bool,
    dry_run: bool,
) -> anyhow::Result<Outcome> {
    let out = layout.summaries(&unit.method);
    let inputs = match attribution_inputs(layout, &unit.method, method_fingerprint) {
        Ok(inputs) => inputs,
        // A dry run before the explainer has caught up: report, not fail.
        Err(e) if dry_run => return Ok(Outcome::WouldDo(format!("after the explainer: {e:#}"))),
        Err(e) => return Err(e),
    };
    if inputs.is_empty() {
        bail!("no checkpoints in {}; run the trainer first", layout.checkpoints_dir().display());
    }
    let expected = summary_fingerprint(&inputs, measures);
    let stored = read_stamp(&out);
    let reason = if force {
        "--force".to_string()
    } else if stored.as_deref() == Some(expected.as_str()) {
        return Ok(Outcome::UpToDate);
    } else if stored.is_none() {
        "no summary yet".to_string()
    } else {
        "attributions or measures changed".to_string()
    };
    if dry_run {
        return Ok(Outcome::WouldDo(reason));
    }
    if let Some(dir) = out.parent() {
        remove_stale_temporaries(dir).with_context(|| format!("{}: cannot clean temporaries", dir.display()))?;
    }
    let probe = read_probe(&layout.probe())?;
    let steps: Vec<u64> = inputs.iter().map(|(s, _)| *s).collect();
    let (mut frame, fingerprints) = summarize(layout, &unit.method, &steps, &probe, measures)?;
    // Fingerprint of what was actually read (a file rewritten since the
    // header check leaves a stamp that makes the next run redo the unit).
    let fingerprint = summary_fingerprint(&fingerprints, measures);
    let rows = frame.height();
    write_parquet_stamped(&out, &mut frame, &fingerprint)?;
    Ok(Outcome::Done(rows))
}

/// The rows of one step.
struct StepRows {
    step: i64,
    epoch: f64,
    probe_id: Vec<i64>,
    split: Vec<&'static str>,
    label: Vec<i64>,
    target: Vec<i64>,
    correct: Vec<bool>,
    /// `[measure][row]`.
    values: Vec<Vec<Option<f64>>>,
    non_finite_maps: usize,
    fingerprint: String,
}

/// Reads the attribution files of `steps` and builds the summary table;
/// returns it with the (step, fingerprint) list of the files read.
pub fn summarize(
    layout: &RunLayout,
    method: &str,
    steps: &[u64],
    probe: &Probe,
    measures: &[Measure],
) -> anyhow::Result<(DataFrame, Vec<(u64, String)>)> {
    let by_id: HashMap<i64, usize> = probe.entries.iter().enumerate().map(|(i, e)| (e.probe_id, i)).collect();
    let probe_path = layout.probe();
    let per_step: Vec<StepRows> = steps
        .par_iter()
        .map(|&step| summarize_step(&layout.attribution(method, step), step, probe, &by_id, &probe_path, measures))
        .collect::<anyhow::Result<_>>()?;

    let non_finite: usize = per_step.iter().map(|s| s.non_finite_maps).sum();
    if non_finite > 0 {
        tracing::warn!(
            "{}/{method}: {non_finite} map(s) hold NaN or infinite values; their measures may be null",
            layout.dir.display()
        );
    }
    let rows: usize = per_step.iter().map(|s| s.probe_id.len()).sum();
    let mut step = Vec::with_capacity(rows);
    let mut epoch = Vec::with_capacity(rows);
    let (mut probe_id, mut split, mut label, mut target, mut correct) = (
        Vec::with_capacity(rows),
        Vec::with_capacity(rows),
        Vec::with_capacity(rows),
        Vec::with_capacity(rows),
        Vec::with_capacity(rows),
    );
    let mut values: Vec<Vec<Option<f64>>> = measures.iter().map(|_| Vec::with_capacity(rows)).collect();
    let mut fingerprints = Vec::with_capacity(per_step.len());
    for s in per_step {
        step.extend(std::iter::repeat(s.step).take(s.probe_id.len()));
        epoch.extend(std::iter::repeat(s.epoch).take(s.probe_id.len()));
        probe_id.extend(s.probe_id);
        split.extend(s.split);
        label.extend(s.label);
        target.extend(s.target);
        correct.extend(s.correct);
        for (all, mine) in values.iter_mut().zip(s.values) {
            all.extend(mine);
        }
        fingerprints.push((s.step as u64, s.fingerprint));
    }
    let mut columns = vec![
        Column::new("step".into(), step),
        Column::new("epoch".into(), epoch),
        Column::new("probe_id".into(), probe_id),
        Column::new("split".into(), split),
        Column::new("label".into(), label),
        Column::new("target".into(), target),
        Column::new("correct".into(), correct),
    ];
    for (m, v) in measures.iter().zip(values) {
        columns.push(Column::new(m.name().into(), v));
    }
    let frame = DataFrame::new(columns).context("building the summary table")?;
    Ok((frame, fingerprints))
}

fn summarize_step(
    path: &Path,
    step: u64,
    probe: &Probe,
    by_id: &HashMap<i64, usize>,
    probe_path: &PathBuf,
    measures: &[Measure],
) -> anyhow::Result<StepRows> {
    let a = read_attributions(path)?;
    if a.step != step {
        bail!("{}: metadata says step {} but the file name says {step}", path.display(), a.step);
    }
    let n = a.len();
    let mut rows = StepRows {
        step: step as i64,
        epoch: a.epoch,
        probe_id: Vec::with_capacity(n),
        split: Vec::with_capacity(n),
        label: Vec::with_capacity(n),
        target: Vec::with_capacity(n),
        correct: Vec::with_capacity(n),
        values: measures.iter().map(|_| Vec::with_capacity(n)).collect(),
        non_finite_maps: 0,
        fingerprint: a.fingerprint.clone(),
    };
    for i in 0..n {
        let id = a.probe_id[i];
        let entry = by_id.get(&id).map(|&k| &probe.entries[k]).with_context(|| {
            format!("{}: probe_id {id} is not in {}; the maps and the probe set disagree", path.display(), probe_path.display())
        })?;
        let map = a.map(i);
        if map.iter().any(|v| !v.is_finite()) {
            rows.non_finite_maps += 1;
        }
        rows.probe_id.push(id);
        rows.split.push(entry.split.name());
        rows.label.push(entry.label as i64);
        rows.target.push(a.target[i]);
        rows.correct.push(a.prediction[i] == entry.label as i64);
        for (column, m) in rows.values.iter_mut().zip(measures) {
            column.push(m.compute(map));
        }
    }
    Ok(rows)
}
