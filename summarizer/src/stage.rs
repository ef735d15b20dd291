//! The summarizer stage: one `summaries/<method>.parquet` per (run, method)
//! (docs/DESIGN.md, "Tables", "Fingerprints and caching").
//!
//! A unit reads the run's probe table and every attribution file of the
//! method, and writes one row per (checkpoint, probe image) of the summary
//! table (`common::artifacts::tables::summaries`).
//!
//! Its fingerprint covers the ordered list of (step, attribution
//! fingerprint) and the measure list; a unit whose stored stamp equals it
//! is skipped (unless `--force`).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context};
use clap::Parser;
use common::artifacts::tables::summaries::SummaryTable;
use common::artifacts::{
    read_attributions, read_checkpoint_fingerprint, read_metadata, read_probe, read_stamp, remove_stale_temporaries,
    write_parquet_stamped, Fingerprinter, Probe, RunLayout,
};
use common::cli::{MethodFilter, StageArgs};
use common::config::Pipeline;
use common::provenance::{attribution_fingerprint, method_fingerprint};
use common::stage::{run_stage, Outcomes, Stage, StageReport, Status};
use rayon::prelude::*;

use crate::measures::{Compute, Measure};

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

impl std::fmt::Display for Unit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.run, self.method)
    }
}

/// Why a unit is (re)done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    NoSummary,
    Changed,
    Forced,
    /// Its attribution files are not all there and current yet: a dry run
    /// reports this, a real run fails the unit with it.
    AfterExplainer(String),
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::NoSummary => write!(f, "no summary yet"),
            Reason::Changed => write!(f, "attributions or measures changed"),
            Reason::Forced => write!(f, "--force"),
            Reason::AfterExplainer(why) => write!(f, "after the explainer: {why}"),
        }
    }
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
    if inputs.is_empty() {
        bail!("no checkpoints in {}; run the trainer first", layout.checkpoints_dir().display());
    }
    Ok(inputs)
}

/// The summarizer as the stage runner drives it.
pub struct Summarizer<'a> {
    pipeline: &'a Pipeline,
    units: Vec<Unit>,
}

impl<'a> Summarizer<'a> {
    /// The (run, method) units the filters select.
    pub fn new(pipeline: &'a Pipeline, runs: &[String], methods: &[String]) -> anyhow::Result<Self> {
        let runs = pipeline.select_runs(runs).map_err(anyhow::Error::msg)?;
        let methods = pipeline.select_methods(methods).map_err(anyhow::Error::msg)?;
        let mut units: Vec<Unit> = runs
            .iter()
            .flat_map(|(run, _)| methods.iter().map(|(method, _)| Unit { run: run.to_string(), method: method.to_string() }))
            .collect();
        units.sort();
        Ok(Summarizer { pipeline, units })
    }

    fn layout(&self, unit: &Unit) -> RunLayout {
        RunLayout::new(self.pipeline.output_dir(), &unit.run)
    }

    fn inputs(&self, unit: &Unit) -> anyhow::Result<Vec<(u64, String)>> {
        let method = method_fingerprint(&self.pipeline.config.methods[&unit.method]);
        attribution_inputs(&self.layout(unit), &unit.method, &method)
    }

    /// Summarises one unit; returns the rows written.
    fn summarize_unit(&self, unit: &Unit) -> anyhow::Result<usize> {
        let layout = self.layout(unit);
        let out = layout.summaries(&unit.method);
        let inputs = self.inputs(unit)?;
        if let Some(dir) = out.parent() {
            remove_stale_temporaries(dir).with_context(|| format!("{}: cannot clean temporaries", dir.display()))?;
        }
        let probe = read_probe(&layout.probe())?;
        let steps: Vec<u64> = inputs.iter().map(|(s, _)| *s).collect();
        let measures = self.pipeline.measures();
        let (table, fingerprints) = summarize(&layout, &unit.method, &steps, &probe, measures)?;
        // Fingerprint of what was actually read (a file rewritten since the
        // header check leaves a stamp that makes the next run redo the unit).
        let fingerprint = summary_fingerprint(&fingerprints, measures);
        write_parquet_stamped(&out, &mut table.to_frame(), &fingerprint)?;
        Ok(table.len())
    }
}

impl Stage for Summarizer<'_> {
    type Unit = Unit;
    type Reason = Reason;
    const NAME: &'static str = "summarizer";
    const VERB: &'static str = "summarise";

    fn units(&mut self) -> anyhow::Result<Vec<Unit>> {
        tracing::info!(
            "summarizer: measures {}",
            self.pipeline.measures().iter().map(|m| m.name()).collect::<Vec<_>>().join(", ")
        );
        Ok(self.units.clone())
    }

    fn status(&mut self, unit: &Unit) -> anyhow::Result<Status<Reason>> {
        let inputs = match self.inputs(unit) {
            Ok(inputs) => inputs,
            Err(e) => return Ok(Status::ToDo(Reason::AfterExplainer(format!("{e:#}")))),
        };
        let expected = summary_fingerprint(&inputs, self.pipeline.measures());
        Ok(match read_stamp(&self.layout(unit).summaries(&unit.method)) {
            Some(stored) if stored == expected => Status::UpToDate,
            Some(_) => Status::ToDo(Reason::Changed),
            None => Status::ToDo(Reason::NoSummary),
        })
    }

    fn forced(&mut self, _: &Unit) -> Reason {
        Reason::Forced
    }

    fn run(&mut self, pending: Vec<(Unit, Reason)>, outcomes: &mut Outcomes) {
        for (unit, _) in pending {
            match self.summarize_unit(&unit) {
                Ok(rows) => {
                    let path = self.layout(&unit).summaries(&unit.method);
                    outcomes.done(&unit, format!("wrote {} ({rows} rows)", path.display()));
                }
                Err(e) => outcomes.failed(&unit, &e),
            }
        }
    }
}

/// Runs the stage.
pub fn run(cli: &Cli) -> anyhow::Result<StageReport> {
    let pipeline = Pipeline::load(&cli.stage.config)?;
    let options = cli.stage.options()?;
    let mut summarizer = Summarizer::new(&pipeline, &cli.stage.runs, &cli.method_filter.methods)?;
    run_stage(&mut summarizer, options)
}

/// Reads the attribution files of `steps` and builds the summary table;
/// returns it with the (step, fingerprint) list of the files read.
pub fn summarize(
    layout: &RunLayout,
    method: &str,
    steps: &[u64],
    probe: &Probe,
    measures: &[Measure],
) -> anyhow::Result<(SummaryTable, Vec<(u64, String)>)> {
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
    let mut table = SummaryTable::new(measures);
    let mut fingerprints = Vec::with_capacity(per_step.len());
    for s in per_step {
        table.append(s.rows);
        fingerprints.push((s.step, s.fingerprint));
    }
    Ok((table, fingerprints))
}

/// The rows of one step.
struct StepRows {
    step: u64,
    rows: SummaryTable,
    non_finite_maps: usize,
    fingerprint: String,
}

fn summarize_step(
    path: &Path,
    step: u64,
    probe: &Probe,
    by_id: &HashMap<i64, usize>,
    probe_path: &Path,
    measures: &[Measure],
) -> anyhow::Result<StepRows> {
    let a = read_attributions(path)?;
    if a.step != step {
        bail!("{}: metadata says step {} but the file name says {step}", path.display(), a.step);
    }
    let mut rows = SummaryTable::new(measures);
    let mut non_finite_maps = 0;
    for i in 0..a.len() {
        let id = a.probe_id[i];
        let entry = by_id.get(&id).map(|&k| &probe.entries[k]).with_context(|| {
            format!("{}: probe_id {id} is not in {}; the maps and the probe set disagree", path.display(), probe_path.display())
        })?;
        let map = a.map(i);
        if map.iter().any(|v| !v.is_finite()) {
            non_finite_maps += 1;
        }
        rows.step.push(step as i64);
        rows.epoch.push(a.epoch);
        rows.probe_id.push(id);
        rows.split.push(entry.split);
        rows.label.push(entry.label as i64);
        rows.target.push(a.target[i]);
        rows.correct.push(a.prediction[i] == entry.label as i64);
        for (column, m) in rows.values.iter_mut().zip(measures) {
            column.push(m.compute(map));
        }
    }
    Ok(StepRows { step, rows, non_finite_maps, fingerprint: a.fingerprint })
}
