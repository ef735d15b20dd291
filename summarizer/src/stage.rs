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

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context};
use clap::Parser;
use common::artifacts::tables::summaries::SummaryTable;
use common::artifacts::{
    read_attributions, read_metadata, read_probe, remove_stale_temporaries, step_name, verify_stamp, write_parquet_stamped,
    Attributions, Probe, RunLayout, Stamp, CONTENT_KEY,
};
use common::cli::{MethodFilter, StageArgs};
use common::config::{Pipeline, RunInstance};
use common::provenance::{expected_attributions, summary_fingerprint, trained_run};
use common::stage::{run_stage, Outcomes, RunOptions, Stage, StageReport, Status};
use rayon::prelude::*;

use crate::measures::{map_ranks, rank_similarity, Compute, Measure, MeasureKind, Partner};

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
    /// Why its stamp is not current.
    Changed(String),
    Forced,
    /// Its attribution files are not all there and current yet: a dry run
    /// reports this, a real run fails the unit with it.
    AfterExplainer(String),
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::NoSummary => write!(f, "no summary yet"),
            Reason::Changed(why) => write!(f, "{why}"),
            Reason::Forced => write!(f, "--force"),
            Reason::AfterExplainer(why) => write!(f, "after the explainer: {why}"),
        }
    }
}

/// The maps a unit summarises: per checkpoint the run's metrics table
/// lists, the attribution file's path, the fingerprint the current config
/// gives it and its content hash (read from its header).
#[derive(Clone, Debug, PartialEq)]
pub struct Inputs {
    pub steps: Vec<u64>,
    /// (step, attribution fingerprint): what the summary's fingerprint covers.
    pub fingerprints: Vec<(u64, String)>,
    /// Step name -> content hash: what the summary's stamp records.
    pub contents: BTreeMap<String, String>,
}

/// The unit's inputs, each attribution file present with the fingerprint
/// the current config gives it (headers only); otherwise why not, saying
/// which stage to run first.
pub fn attribution_inputs(pipeline: &Pipeline, layout: &RunLayout, run: &RunInstance, method: &str) -> anyhow::Result<Inputs> {
    let config = &pipeline.config;
    let trained = trained_run(config, run, layout).map_err(anyhow::Error::msg)?;
    let fingerprints = expected_attributions(config, run, &config.methods[method], &trained.steps);
    let mut contents = BTreeMap::new();
    for (step, expected) in &fingerprints {
        let path = layout.attribution(method, *step);
        if !path.is_file() {
            bail!("{}: missing; run the explainer first", path.display());
        }
        let meta = read_metadata(&path)?;
        if meta.get("fingerprint") != Some(expected) {
            bail!("{}: stale (its checkpoint or the method's settings changed); run the explainer first", path.display());
        }
        let content = meta.get(CONTENT_KEY).with_context(|| format!("{}: no content hash; run the explainer", path.display()))?;
        contents.insert(step_name(*step), content.clone());
    }
    Ok(Inputs { steps: trained.steps, fingerprints, contents })
}

/// The summarizer as the stage runner drives it.
pub struct Summarizer<'a> {
    pipeline: &'a Pipeline,
    units: Vec<Unit>,
}

impl<'a> Summarizer<'a> {
    /// The (run, method) units the filters select.
    pub fn new(pipeline: &'a Pipeline, runs: &[String], methods: &[String]) -> anyhow::Result<Self> {
        let runs = pipeline.instances(runs).map_err(anyhow::Error::msg)?;
        let methods = pipeline.select_methods(methods).map_err(anyhow::Error::msg)?;
        let mut units: Vec<Unit> = runs
            .iter()
            .flat_map(|run| methods.iter().map(|(method, _)| Unit { run: run.path.clone(), method: method.to_string() }))
            .collect();
        units.sort();
        Ok(Summarizer { pipeline, units })
    }

    fn layout(&self, unit: &Unit) -> RunLayout {
        RunLayout::new(self.pipeline.output_dir(), &unit.run)
    }

    /// The instance a unit summarises (units come from the instances).
    fn instance(&self, unit: &Unit) -> &'a RunInstance {
        self.pipeline.instance(&unit.run).expect("units come from the instances")
    }

    fn inputs(&self, unit: &Unit) -> anyhow::Result<Inputs> {
        attribution_inputs(self.pipeline, &self.layout(unit), self.instance(unit), &unit.method)
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
        let measures = self.pipeline.measures();
        let classes = self.pipeline.dataset_of(&self.instance(unit).config).classes;
        let (table, read) = summarize(&layout, &unit.method, &inputs.steps, &probe, classes, measures)?;
        // The fingerprints and contents of what was actually read (a file
        // rewritten since the header check leaves a stamp that makes the
        // next run redo the unit).
        let fingerprints: Vec<(u64, String)> = read.iter().map(|r| (r.step, r.fingerprint.clone())).collect();
        let contents = read.iter().map(|r| (step_name(r.step), r.content.clone())).collect();
        let stamp = Stamp::new(summary_fingerprint(&fingerprints, measures)).with_inputs(contents);
        write_parquet_stamped(&out, &mut table.to_frame(), stamp)?;
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
        let expected = summary_fingerprint(&inputs.fingerprints, self.pipeline.measures());
        let out = self.layout(unit).summaries(&unit.method);
        if !out.exists() {
            return Ok(Status::ToDo(Reason::NoSummary));
        }
        Ok(match verify_stamp(&out) {
            Ok(stamp) if stamp.fingerprint == expected && stamp.inputs == inputs.contents => Status::UpToDate,
            Ok(stamp) if stamp.fingerprint == expected => Status::ToDo(Reason::Changed("its maps were rewritten since".into())),
            Ok(_) => Status::ToDo(Reason::Changed("attributions or measures changed".into())),
            Err(why) => Status::ToDo(Reason::Changed(why)),
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
    let options = RunOptions::from_args(&cli.stage)?;
    let mut summarizer = Summarizer::new(&pipeline, &cli.stage.runs, &cli.method_filter.methods)?;
    run_stage(&mut summarizer, options)
}

/// What was read of one attribution file.
pub struct ReadAttribution {
    pub step: u64,
    pub fingerprint: String,
    pub content: String,
}

/// Reads the attribution files of `steps` (ascending; each checked against
/// the probe set and `classes`) and builds the summary table; returns it
/// with what was read of each file. All of the unit's maps are read first:
/// the stability measures compare each map with the same image's map at
/// the previous, the final and the step-0 checkpoint.
pub fn summarize(
    layout: &RunLayout,
    method: &str,
    steps: &[u64],
    probe: &Probe,
    classes: usize,
    measures: &[Measure],
) -> anyhow::Result<(SummaryTable, Vec<ReadAttribution>)> {
    if !steps.windows(2).all(|w| w[0] < w[1]) {
        bail!("{}: the checkpoints to summarise are not in ascending order of step", layout.metrics().display());
    }
    let files: Vec<(Attributions, ReadAttribution)> = steps
        .par_iter()
        .map(|&step| read_step(&layout.attribution(method, step), step, probe, classes))
        .collect::<anyhow::Result<_>>()?;
    let maps: Vec<&Attributions> = files.iter().map(|(a, _)| a).collect();
    let partners = Partners::new(&maps, steps, probe.entries.len(), measures);
    let per_step: Vec<SummaryTable> =
        (0..maps.len()).into_par_iter().map(|k| summarize_step(&maps, k, probe, measures, &partners)).collect();
    let mut table = SummaryTable::new(measures);
    for rows in per_step {
        table.append(rows);
    }
    Ok((table, files.into_iter().map(|(_, read)| read).collect()))
}

/// Reads and checks one attribution file.
fn read_step(path: &Path, step: u64, probe: &Probe, classes: usize) -> anyhow::Result<(Attributions, ReadAttribution)> {
    let a = read_attributions(path)?;
    if a.step != step {
        bail!("{}: metadata says step {} but the file name says {step}", path.display(), a.step);
    }
    a.check_against(probe, classes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let content = a.content.clone().with_context(|| format!("{}: no content hash; run the explainer", path.display()))?;
    let read = ReadAttribution { step, fingerprint: a.fingerprint.clone(), content };
    Ok((a, read))
}

/// The ranked maps that every checkpoint's stability measures compare
/// with: the final checkpoint's and the step-0 checkpoint's, per image,
/// where a requested measure needs them.
struct Partners {
    any: bool,
    final_ranks: Vec<Option<Vec<f64>>>,
    /// Empty when the unit has no step 0 (or no measure needs it).
    initial_ranks: Vec<Option<Vec<f64>>>,
}

impl Partners {
    fn new(maps: &[&Attributions], steps: &[u64], images: usize, measures: &[Measure]) -> Self {
        let needs = |p: Partner| measures.iter().any(|m| m.kind() == MeasureKind::Stability(p));
        let ranks_of = |a: &Attributions| (0..images).into_par_iter().map(|i| map_ranks(a.map(i))).collect();
        let final_ranks = match maps.last() {
            Some(last) if needs(Partner::Final) => ranks_of(last),
            _ => Vec::new(),
        };
        let initial_ranks = match (maps.first(), steps.first()) {
            (Some(first), Some(0)) if needs(Partner::Initial) => ranks_of(first),
            _ => Vec::new(),
        };
        let any = measures.iter().any(|m| matches!(m.kind(), MeasureKind::Stability(_)));
        Partners { any, final_ranks, initial_ranks }
    }
}

/// The rows of checkpoint `k` of `maps`.
fn summarize_step(maps: &[&Attributions], k: usize, probe: &Probe, measures: &[Measure], partners: &Partners) -> SummaryTable {
    let a = maps[k];
    let step = a.step;
    let mut rows = SummaryTable::new(measures);
    for (i, entry) in probe.entries.iter().enumerate() {
        let map = a.map(i);
        rows.step.push(step as i64);
        rows.epoch.push(a.epoch);
        rows.probe_id.push(entry.probe_id);
        rows.split.push(entry.split);
        rows.label.push(entry.label as i64);
        rows.target.push(a.target[i]);
        rows.correct.push(a.prediction[i] == entry.label as i64);
        rows.logit.push(a.logit[i] as f64);
        let ranks = if partners.any { map_ranks(map) } else { None };
        let previous = match (k.checked_sub(1), &ranks) {
            (Some(before), Some(_)) if measures.contains(&Measure::RankSimPrev) => map_ranks(maps[before].map(i)),
            _ => None,
        };
        for (column, m) in rows.values.iter_mut().zip(measures) {
            let value = match m.kind() {
                MeasureKind::OneMap => m.compute(map, a.logit[i]),
                MeasureKind::Stability(partner) => {
                    let other = match partner {
                        Partner::Previous => previous.as_deref(),
                        Partner::Final => partners.final_ranks.get(i).and_then(|r| r.as_deref()),
                        Partner::Initial => partners.initial_ranks.get(i).and_then(|r| r.as_deref()),
                    };
                    ranks.as_deref().zip(other).and_then(|(r, o)| rank_similarity(r, o))
                }
            };
            column.push(value);
        }
    }
    rows
}
