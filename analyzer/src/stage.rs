//! The analyzer stage: one task over everything present.
//!
//! Reads every selected run's `metrics.parquet` and every (run, method)
//! `summaries/<method>.parquet` present, and writes under
//! `<output.dir>/analysis/`: `by_step.parquet`, `correlations.parquet`,
//! `across_seeds.parquet`, `figures/*.png|svg` and `report.md`. (The
//! analysis folder sits beside the run folders, so a run may not be named
//! `analysis`; the analyzer refuses such a config.)
//!
//! The fingerprint covers the fingerprints of all inputs (metrics, probe
//! and summary stamps, or the files' content where a stamp is missing),
//! the measure list, each run's data set section and `intended_fit`, the
//! filters and `--no-figures`. The Parquet tables and `report.md` carry it
//! in their stamps; when all three are current the analyzer skips and
//! says so. A failure (an unreadable input, a figure that cannot be
//! drawn) leaves the report unstamped so that the next run redoes it.
//!
//! `--shard I/N` (or SLURM's array variables): the analyzer is one unit;
//! shard 0 does it, the others have nothing to do.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Parser;
use common::artifacts::encode_parquet;
use common::artifacts::tables::across_seeds::across_seeds_frame;
use common::artifacts::tables::correlations::correlations_frame;
use common::artifacts::tables::summaries::{read_summaries, SummaryTable};
use common::artifacts::{
    read_attributions, read_metadata, read_probe, remove_if_present, remove_stale_temporaries, stamp_path, step_name,
    verify_stamp, write_atomic, write_stamped, Divergence, Fingerprinter, Probe, RunLayout, Split, Stamp, CONTENT_KEY,
};
use common::cli::{MethodFilter, StageArgs};
use common::config::{DatasetConfig, Pipeline, RunInstance};
use common::data::{load_dataset, Dataset};
use common::measures::Measure;
use common::provenance::{expected_attributions, summary_fingerprint, trained_run};
use common::stage::{run_stage, Outcomes, RunOptions, Stage, StageReport, Status};

use crate::by_step::{aggregate, by_step_table, StepTable};
use crate::correlations::{assign_q_values, correlate, Correlation, RunSeries};
use crate::figures::{self, Evolution, HeatmapCell, HeatmapRow, Heatmaps};
use crate::fit::diagnose;
use crate::inputs::{read_metrics, Metrics};
use crate::report::{self, FigureLinks, ReportInput, RunInfo};

/// Bump when the analysis output changes for the same inputs.
const ANALYSIS_VERSION: &str = "analyzer/2";

/// How many probe images and checkpoints the heatmap strips show.
pub const HEATMAP_IMAGES: usize = 4;
pub const HEATMAP_STEPS: usize = 5;

/// Correlate attribution summaries with train/test loss; write tables,
/// figures and a report.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "analyzer",
    version,
    about = "Correlate attribution summaries with train/test loss (Spearman); write <output.dir>/analysis/",
    long_about = "Reads every run's metrics.parquet and every summaries/<method>.parquet present and writes \
                  <output.dir>/analysis/: by_step.parquet (per-step statistics of each measure joined with the \
                  metrics), correlations.parquet (Spearman's rho of each measure's per-step mean with \
                  train_loss, test_loss, test_acc and step), across_seeds.parquet (each correlation \
                  summarised over a run's seeds), figures/*.png|svg and report.md (fit diagnosis, \
                  the paper's table, descriptive statistics, figures). One task: with --shard I/N only shard 0 \
                  works. Skips when nothing changed since the last analysis."
)]
pub struct Cli {
    #[command(flatten)]
    pub stage: StageArgs,

    #[command(flatten)]
    pub method_filter: MethodFilter,

    /// Write the tables and the report but no figures.
    #[arg(long)]
    pub no_figures: bool,

    /// Instead of analysing: the Monte Carlo calibration of the trend
    /// statistics, one line per (null or alternative, length, statistic):
    /// how often each test rejects at nominal 0.05 when the two series are
    /// independent AR(1) or random walks, and how often when they share a
    /// trend. Reads no config.
    #[arg(long)]
    pub calibrate: bool,

    /// Draws per case of --calibrate.
    #[arg(long, default_value_t = 2000, value_name = "N")]
    pub calibration_pairs: usize,

    /// Seed of --calibrate.
    #[arg(long, default_value_t = 1, value_name = "SEED")]
    pub calibration_seed: u64,
}

/// What the analysis reads, found on disk and checked.
#[derive(Debug, Default)]
struct Inputs {
    /// Runs with current metrics, in config order.
    runs: Vec<String>,
    /// Runs that stopped at a divergence.
    diverged: BTreeMap<String, Divergence>,
    /// (run, method) pairs with a current summary.
    units: Vec<(String, String)>,
    /// (label, content hash) of every input, in a fixed order.
    fingerprints: Vec<(String, String)>,
    /// Inputs left out because they are stale or damaged: each names the
    /// file and why.
    refused: Vec<String>,
}

/// Finds the selected runs' metrics, probe tables and summaries, and
/// checks each: its bytes are those it was stamped with, it belongs to the
/// current configuration, and a summary summarises the maps of the current
/// checkpoints and method settings, as they are on disk now.
/// The run instance at `path` (`<run>` or `<run>/seed-<s>`).
fn instance_of<'p>(pipeline: &'p Pipeline, path: &str) -> &'p RunInstance {
    pipeline.instance(path).expect("analysed runs come from the instances")
}

fn find_inputs(pipeline: &Pipeline, runs: &[&str], methods: &[&str]) -> Inputs {
    let config = &pipeline.config;
    let mut inputs = Inputs::default();
    for &run in runs {
        let layout = RunLayout::new(pipeline.output_dir(), run);
        if !layout.metrics().is_file() {
            tracing::warn!("{run}: no {}; run left out (train it first)", layout.metrics().display());
            continue;
        }
        let trained = match trained_run(config, instance_of(pipeline, run), &layout) {
            Ok(trained) => trained,
            Err(why) => {
                inputs.refused.push(why);
                continue;
            }
        };
        let probe = match verify_stamp(&layout.probe()) {
            Ok(stamp) if stamp.fingerprint == trained.stamp.fingerprint => stamp,
            Ok(_) => {
                inputs
                    .refused
                    .push(format!("{}: of another configuration of the run; run the trainer", layout.probe().display()));
                continue;
            }
            Err(why) => {
                inputs.refused.push(why);
                continue;
            }
        };
        inputs.runs.push(run.to_string());
        inputs.fingerprints.push((format!("{run}/metrics"), trained.stamp.content.clone()));
        inputs.fingerprints.push((format!("{run}/probe"), probe.content));
        if let Some(d) = &trained.stamp.diverged {
            inputs.diverged.insert(run.to_string(), d.clone());
        }
        for &method in methods {
            let summary = layout.summaries(method);
            if !summary.is_file() {
                tracing::warn!("{run}/{method}: no {}; left out (run the summarizer)", summary.display());
                continue;
            }
            match check_summary(pipeline, &layout, run, method, &trained.steps) {
                Ok(content) => {
                    inputs.units.push((run.to_string(), method.to_string()));
                    inputs.fingerprints.push((format!("{run}/{method}"), content));
                }
                Err(why) => inputs.refused.push(why),
            }
        }
    }
    inputs
}

/// A summary's content hash once it is checked to summarise the maps the
/// current config gives `method` at the run's current checkpoints, with
/// the configured measures, and to be unaltered; otherwise why not.
fn check_summary(pipeline: &Pipeline, layout: &RunLayout, run: &str, method: &str, steps: &[u64]) -> Result<String, String> {
    let config = &pipeline.config;
    let path = layout.summaries(method);
    let stamp = verify_stamp(&path)?;
    let attributions = expected_attributions(config, instance_of(pipeline, run), &config.methods[method], steps);
    if stamp.fingerprint != summary_fingerprint(&attributions, pipeline.measures()) {
        return Err(format!(
            "{}: stale: it does not summarise the maps of the current checkpoints and settings of `{run}`/`{method}` \
             with the configured measures; run the explainer and the summarizer",
            path.display()
        ));
    }
    for &step in steps {
        let attribution = layout.attribution(method, step);
        let content = read_metadata(&attribution).ok().and_then(|m| m.get(CONTENT_KEY).cloned());
        if content.is_none() || stamp.inputs.get(&step_name(step)) != content.as_ref() {
            return Err(format!(
                "{}: stale: {} was rewritten after it was summarised; run the summarizer",
                path.display(),
                attribution.display()
            ));
        }
    }
    Ok(stamp.content)
}

/// The analysis: the one unit of the analyzer.
pub struct Analysis {
    dir: PathBuf,
}

impl std::fmt::Display for Analysis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "analysis in {}", self.dir.display())
    }
}

/// Why the analysis is redone.
pub enum Reason {
    Changed,
    /// An output's bytes are not those it was stamped with.
    Damaged(String),
    Forced,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Changed => write!(f, "inputs or settings changed since the last analysis"),
            Reason::Damaged(why) => write!(f, "{why}"),
            Reason::Forced => write!(f, "--force"),
        }
    }
}

/// The analyzer as the stage runner drives it.
pub struct Analyzer<'a> {
    pipeline: &'a Pipeline,
    cli: &'a Cli,
    runs: Vec<&'a str>,
    methods: Vec<&'a str>,
    /// Found by `status`, used by `run`.
    inputs: Option<(Inputs, String)>,
}

impl Analyzer<'_> {
    fn by_step_path(&self) -> PathBuf {
        self.pipeline.analysis_dir().join("by_step.parquet")
    }

    fn correlations_path(&self) -> PathBuf {
        self.pipeline.analysis_dir().join("correlations.parquet")
    }

    fn across_seeds_path(&self) -> PathBuf {
        self.pipeline.analysis_dir().join("across_seeds.parquet")
    }

    fn report_path(&self) -> PathBuf {
        self.pipeline.analysis_dir().join("report.md")
    }

    /// The inputs on disk and the fingerprint the analysis of them gets.
    fn inputs(&mut self) -> anyhow::Result<&(Inputs, String)> {
        if self.inputs.is_none() {
            let inputs = find_inputs(self.pipeline, &self.runs, &self.methods);
            if inputs.runs.is_empty() && !inputs.refused.is_empty() {
                bail!("nothing to analyse: {}", inputs.refused.join("; "));
            }
            if inputs.runs.is_empty() {
                bail!(
                    "nothing to analyse: no metrics.parquet of the selected runs under {}",
                    self.pipeline.output_dir().display()
                );
            }
            let config = &self.pipeline.config;
            let run_settings: Vec<(String, Option<String>, Option<&DatasetConfig>)> = inputs
                .runs
                .iter()
                .map(|r| {
                    let run = &instance_of(self.pipeline, r).config;
                    (r.clone(), run.intended_fit.clone(), config.datasets.get(&run.dataset))
                })
                .collect();
            let fingerprint = Fingerprinter::new()
                .add("version", &ANALYSIS_VERSION)
                .add("measures", &self.pipeline.measures())
                .add("runs", &run_settings)
                .add("methods", &self.methods)
                .add("inputs", &inputs.fingerprints)
                .add("figures", &!self.cli.no_figures)
                .finish();
            self.inputs = Some((inputs, fingerprint));
        }
        Ok(self.inputs.as_ref().expect("filled above"))
    }
}

impl Stage for Analyzer<'_> {
    type Unit = Analysis;
    type Reason = Reason;
    const NAME: &'static str = "analyzer";
    const VERB: &'static str = "analyse";

    fn units(&mut self) -> anyhow::Result<Vec<Analysis>> {
        Ok(vec![Analysis { dir: self.pipeline.analysis_dir() }])
    }

    fn status(&mut self, _: &Analysis) -> anyhow::Result<Status<Reason>> {
        let fingerprint = self.inputs()?.1.clone();
        for path in [self.by_step_path(), self.correlations_path(), self.across_seeds_path(), self.report_path()] {
            match verify_stamp(&path) {
                Ok(stamp) if stamp.fingerprint == fingerprint => {}
                Ok(_) => return Ok(Status::ToDo(Reason::Changed)),
                Err(why) if path.exists() => return Ok(Status::ToDo(Reason::Damaged(why))),
                Err(_) => return Ok(Status::ToDo(Reason::Changed)),
            }
        }
        Ok(Status::UpToDate)
    }

    fn forced(&mut self, _: &Analysis) -> Reason {
        Reason::Forced
    }

    fn run(&mut self, pending: Vec<(Analysis, Reason)>, outcomes: &mut Outcomes) {
        for (unit, _) in pending {
            match self.analyse(outcomes) {
                Ok(()) => outcomes.done(&unit, format!("wrote {}", self.report_path().display())),
                Err(e) => outcomes.failed(&unit, &e),
            }
        }
    }
}

/// Runs the stage.
pub fn run(cli: &Cli) -> anyhow::Result<StageReport> {
    let pipeline = Pipeline::load(&cli.stage.config)?;
    let options = RunOptions::from_args(&cli.stage)?;
    let runs = pipeline.instances(&cli.stage.runs).map_err(anyhow::Error::msg)?.into_iter().map(|i| i.path.as_str()).collect();
    let methods =
        pipeline.select_methods(&cli.method_filter.methods).map_err(anyhow::Error::msg)?.into_iter().map(|(n, _)| n).collect();
    let mut analyzer = Analyzer { pipeline: &pipeline, cli, runs, methods, inputs: None };
    run_stage(&mut analyzer, options)
}

impl Analyzer<'_> {
    /// Reads every input and writes the tables, the figures and the
    /// report; stamps them only when all of it succeeded. Failures of one
    /// input or figure are reported to `outcomes` and the rest is written.
    fn analyse(&mut self, outcomes: &mut Outcomes) -> anyhow::Result<()> {
        let pipeline = self.pipeline;
        let measures = pipeline.measures().to_vec();
        let (by_step_path, correlations_path, report_path) = (self.by_step_path(), self.correlations_path(), self.report_path());
        let across_seeds_path = self.across_seeds_path();
        self.inputs()?;
        let (inputs, fingerprint) = self.inputs.take().expect("found above");
        let dir = pipeline.analysis_dir();
        remove_stale_temporaries(&dir).with_context(|| format!("{}: cannot clean temporaries", dir.display()))?;
        // The stamps are written last, and only when everything succeeded: drop
        // the old ones first so that a failure part-way leaves the analysis
        // stale, not current.
        for path in [&by_step_path, &correlations_path, &across_seeds_path, &report_path] {
            remove_if_present(&stamp_path(path))?;
        }
        let mut failed: Vec<anyhow::Error> = inputs.refused.iter().map(|why| anyhow::anyhow!("left out: {why}")).collect();

        // Read.
        let mut metrics: BTreeMap<String, Metrics> = BTreeMap::new();
        let mut run_infos = Vec::new();
        for run in &inputs.runs {
            let path = RunLayout::new(pipeline.output_dir(), run).metrics();
            match read_metrics(&path) {
                Ok(m) => {
                    let diagnosis = diagnose(&m);
                    tracing::info!(
                        "{run}: diagnosed {} (rise {:?}, gap {:?})",
                        diagnosis.fit.label(),
                        diagnosis.rise,
                        diagnosis.gap
                    );
                    run_infos.push(RunInfo {
                        name: run.clone(),
                        intended_fit: instance_of(pipeline, run).config.intended_fit.clone(),
                        diagnosis,
                        diverged: inputs.diverged.get(run).cloned(),
                    });
                    metrics.insert(run.clone(), m);
                }
                Err(e) => failed.push(anyhow::Error::from(e).context(run.clone())),
            }
        }
        let mut tables: Vec<StepTable> = Vec::new();
        let mut summaries: BTreeMap<(String, String), SummaryTable> = BTreeMap::new();
        for (run, method) in &inputs.units {
            if !metrics.contains_key(run) {
                continue;
            }
            let path = RunLayout::new(pipeline.output_dir(), run).summaries(method);
            match read_summaries(&path, &measures) {
                Ok(s) => {
                    let per: Vec<String> = s
                        .measures
                        .iter()
                        .zip(&s.values)
                        .map(|(m, v)| (m, v.iter().filter(|x| x.is_none()).count()))
                        .filter(|(_, n)| *n > 0)
                        .map(|(m, n)| format!("{m}: {n}"))
                        .collect();
                    if !per.is_empty() {
                        tracing::info!("{run}/{method}: null values left out of the per-step statistics ({})", per.join(", "));
                    }
                    tables.extend(aggregate(run, instance_of(pipeline, run).seed as i64, method, &s));
                    summaries.insert((run.clone(), method.clone()), s);
                }
                Err(e) => failed.push(anyhow::Error::from(e).context(format!("{run}/{method}"))),
            }
        }

        // Tables.
        let mut correlations: Vec<Correlation> = Vec::new();
        for t in &tables {
            let run = instance_of(pipeline, &t.run);
            let run_metrics = &metrics[&t.run];
            let every = run.config.checkpoints.as_ref().map_or_else(|| widest_gap(&run_metrics.step), |c| c.every);
            let series = RunSeries { seed: run.seed as i64, every, metrics: run_metrics };
            correlations.extend(correlate(t, &series));
        }
        let dropped_null: usize = correlations.iter().map(|c| c.dropped_null_measure).sum();
        let dropped_metric: usize = correlations.iter().map(|c| c.dropped_missing_metric).sum();
        if dropped_null + dropped_metric > 0 {
            tracing::warn!(
                "correlations: {dropped_null} (step, pair) value(s) dropped for a null measure mean, {dropped_metric} for a missing metric (see report.md)"
            );
        }
        let by_step = encode_parquet(&by_step_path, &mut by_step_table(&tables, &metrics, &measures)?.to_frame())?;
        assign_q_values(&mut correlations);
        let correlation_rows: Vec<_> = correlations.iter().map(Correlation::row).collect();
        let correlation_bytes = encode_parquet(&correlations_path, &mut correlations_frame(&correlation_rows))?;
        let across_seeds = crate::across_seeds::across_seeds(&correlations);
        let across_seeds_bytes = encode_parquet(&across_seeds_path, &mut across_seeds_frame(&across_seeds))?;
        tracing::info!(
            "wrote {} and {} ({} correlations)",
            by_step_path.display(),
            correlations_path.display(),
            correlations.len()
        );

        // Figures.
        let mut links = Vec::new();
        let mut figure_error = None;
        if !self.cli.no_figures {
            let figures_dir = dir.join("figures");
            remove_stale_temporaries(&figures_dir)
                .with_context(|| format!("{}: cannot clean temporaries", figures_dir.display()))?;
            match draw_figures(pipeline, &figures_dir, &tables, &metrics, &run_infos, &summaries) {
                Ok((l, errors)) => {
                    links = l;
                    if !errors.is_empty() {
                        figure_error = Some(errors.join("; "));
                        failed.extend(errors.into_iter().map(anyhow::Error::msg));
                    }
                }
                Err(e) => {
                    figure_error = Some(format!("{e:#}"));
                    failed.push(e.context("figures"));
                }
            }
        }

        // Report.
        let method_names: Vec<String> = self.methods.iter().map(|m| m.to_string()).collect();
        let config = &self.cli.stage.config;
        let text = report::render(&ReportInput {
            // The file name only: the same config gives the same report wherever it lives.
            config: config.file_name().map_or_else(|| config.display().to_string(), |n| n.to_string_lossy().into_owned()),
            runs: &run_infos,
            methods: &method_names,
            measures: &measures,
            tables: &tables,
            correlations: &correlations,
            across_seeds: &across_seeds,
            figures: &links,
            figure_error,
            left_out: &inputs.refused,
        });
        let outputs = [
            (&by_step_path, by_step),
            (&correlations_path, correlation_bytes),
            (&across_seeds_path, across_seeds_bytes),
            (&report_path, text.into_bytes()),
        ];
        if failed.is_empty() {
            // Each with a stamp of the analysis's fingerprint: only a
            // complete analysis is ever current.
            for (path, bytes) in outputs {
                write_stamped(path, &bytes, Stamp::new(&fingerprint))?;
            }
            Ok(())
        } else {
            for (path, bytes) in outputs {
                write_atomic(path, &bytes)?;
            }
            tracing::warn!("analysis written with failures and left unstamped: the next run redoes it");
            let analysis = Analysis { dir };
            let (last, rest) = failed.split_last().expect("not empty");
            for e in rest {
                outcomes.failed(&analysis, e);
            }
            Err(anyhow::anyhow!("{last:#}"))
        }
    }
}

/// Draws the evolution and heatmap figures of every (run, method); a
/// failing figure is reported and the others are still drawn.
fn draw_figures(
    pipeline: &Pipeline,
    dir: &Path,
    tables: &[StepTable],
    metrics: &BTreeMap<String, Metrics>,
    runs: &[RunInfo],
    summaries: &BTreeMap<(String, String), SummaryTable>,
) -> anyhow::Result<(Vec<FigureLinks>, Vec<String>)> {
    figures::ensure_font()?;
    let mut links = Vec::new();
    let mut errors = Vec::new();
    let mut datasets: BTreeMap<String, Dataset> = BTreeMap::new();
    let rel = |[png, svg]: [PathBuf; 2]| {
        let name = |p: &Path| format!("figures/{}", p.file_name().unwrap_or_default().to_string_lossy());
        (name(&png), name(&svg))
    };
    for (run, method) in summaries.keys() {
        let fit = runs.iter().find(|r| &r.name == run).map(|r| r.diagnosis.fit.label()).unwrap_or("unknown");
        let mut link = FigureLinks { run: run.clone(), method: method.clone(), evolution: None, heatmaps: None };
        let mine: Vec<&StepTable> = tables.iter().filter(|t| &t.run == run && &t.method == method).collect();
        if mine.is_empty() {
            continue;
        }
        let measures = &mine[0].measures;
        // The paper's two measures, then map stability: how much each map
        // still changes from one checkpoint to the next, and how close it
        // is to the final map.
        let mut panels: Vec<(Measure, String)> = [
            (report::NORM, "norm (frobenius)"),
            (report::ENTROPY, "entropy (entropy_abs)"),
            (Measure::RankSimPrev, "rank similarity to the previous checkpoint"),
            (Measure::RankSimFinal, "rank similarity to the final checkpoint"),
        ]
        .iter()
        .filter(|(m, _)| measures.contains(m))
        .map(|(m, t)| (*m, t.to_string()))
        .collect();
        if panels.is_empty() {
            panels.push((measures[0], measures[0].to_string()));
        }
        let evolution = Evolution {
            title: format!("{run} ({fit}), {method}: attribution measures over training"),
            tables: mine,
            measures: panels,
            metrics: &metrics[run],
        };
        let stem = format!("{}__{method}__evolution", run.replace('/', "__"));
        match figures::save(&evolution, dir, &stem) {
            Ok(paths) => link.evolution = Some(rel(paths)),
            Err(e) => errors.push(format!("{run}/{method}: evolution figure: {e:#}")),
        }

        match heatmap_figure(pipeline, run, method, fit, &mut datasets) {
            Ok(Some(h)) => match figures::save(&h, dir, &format!("{}__{method}__heatmaps", run.replace('/', "__"))) {
                Ok(paths) => link.heatmaps = Some(rel(paths)),
                Err(e) => errors.push(format!("{run}/{method}: heatmap figure: {e:#}")),
            },
            Ok(None) => tracing::warn!("{run}/{method}: no attribution files or probe; heatmaps left out"),
            Err(e) => errors.push(format!("{run}/{method}: heatmap figure: {e:#}")),
        }
        links.push(link);
    }
    Ok((links, errors))
}

/// Up to `k` probe entries (indices), half seen and half unseen where both
/// exist, preferring distinct labels, in probe order.
pub fn pick_probes(probe: &Probe, k: usize) -> Vec<usize> {
    let mut picked: Vec<usize> = Vec::new();
    let mut labels = Vec::new();
    let quotas = [(Split::Seen, k - k / 2), (Split::Unseen, k / 2)];
    for (split, quota) in quotas {
        let candidates: Vec<usize> = (0..probe.len()).filter(|&i| probe.entries[i].split == split).collect();
        let mut taken = 0;
        for &i in &candidates {
            if taken < quota && !labels.contains(&probe.entries[i].label) {
                picked.push(i);
                labels.push(probe.entries[i].label);
                taken += 1;
            }
        }
        for &i in &candidates {
            if taken < quota && !picked.contains(&i) {
                picked.push(i);
                taken += 1;
            }
        }
    }
    // Fill from anywhere when a split is short.
    for i in 0..probe.len() {
        if picked.len() >= k {
            break;
        }
        if !picked.contains(&i) {
            picked.push(i);
        }
    }
    picked.sort_unstable();
    picked
}

fn heatmap_figure(
    pipeline: &Pipeline,
    run: &str,
    method: &str,
    fit: &str,
    datasets: &mut BTreeMap<String, Dataset>,
) -> anyhow::Result<Option<Heatmaps>> {
    let layout = RunLayout::new(pipeline.output_dir(), run);
    let mut steps = layout
        .attribution_steps(method)
        .with_context(|| format!("{}: cannot list", layout.attributions_dir(method).display()))?;
    // Maps left from checkpoints of an earlier training are not shown.
    let checkpoints =
        layout.checkpoint_steps().with_context(|| format!("{}: cannot list", layout.checkpoints_dir().display()))?;
    steps.retain(|s| checkpoints.contains(s));
    if steps.is_empty() || !layout.probe().is_file() {
        return Ok(None);
    }
    let probe = read_probe(&layout.probe())?;
    let dataset_name = &instance_of(pipeline, run).config.dataset;
    if !datasets.contains_key(dataset_name) {
        let d = load_dataset(&pipeline.config.datasets[dataset_name]).with_context(|| format!("data set `{dataset_name}`"))?;
        datasets.insert(dataset_name.clone(), d);
    }
    let dataset = &datasets[dataset_name];
    let picks = pick_probes(&probe, HEATMAP_IMAGES);
    let selected = Probe { entries: picks.iter().map(|&i| probe.entries[i].clone()).collect() };
    let images = selected.images(dataset).map_err(|e| anyhow::anyhow!("{}: {e}", layout.probe().display()))?;
    let mut rows: Vec<HeatmapRow> = selected
        .entries
        .iter()
        .enumerate()
        .map(|(i, e)| HeatmapRow {
            probe_id: e.probe_id,
            split: e.split.name().to_string(),
            label: e.label as i64,
            image: images.image(i).to_vec(),
            shape: images.shape,
            cells: Vec::new(),
        })
        .collect();
    for k in figures::spread(steps.len(), HEATMAP_STEPS) {
        let path = layout.attribution(method, steps[k]);
        let a = read_attributions(&path)?;
        for row in rows.iter_mut() {
            let i = a
                .probe_id
                .iter()
                .position(|&id| id == row.probe_id)
                .with_context(|| format!("{}: no map of probe image {}", path.display(), row.probe_id))?;
            row.cells.push(HeatmapCell {
                step: steps[k] as i64,
                epoch: a.epoch,
                height: a.height,
                width: a.width,
                map: a.map(i).to_vec(),
                prediction: a.prediction[i],
            });
        }
    }
    Ok(Some(Heatmaps {
        title: format!("{run} ({fit}), {method}: attribution maps of {} probe images over training", rows.len()),
        rows,
    }))
}

/// The uniform grid's spacing of a run trained elsewhere, which has no
/// schedule: the widest gap between its checkpoint steps (a schedule's
/// coarse interval; the denser early steps and a short last one are
/// narrower).
fn widest_gap(steps: &[i64]) -> u64 {
    steps.windows(2).map(|w| (w[1] - w[0]).max(0) as u64).max().unwrap_or(1).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grid_of_a_run_without_schedule_is_its_widest_gap() {
        assert_eq!(widest_gap(&[0, 10, 20, 30, 130, 230, 250]), 100);
        assert_eq!(widest_gap(&[0]), 1);
    }
    use common::artifacts::ProbeEntry;

    #[test]
    fn picks_seen_and_unseen_with_distinct_labels() {
        let e = |id: i64, split: Split, label: u8| ProbeEntry { probe_id: id, split, source_index: id as usize, label };
        let probe = Probe {
            entries: vec![
                e(0, Split::Seen, 0),
                e(1, Split::Seen, 0),
                e(2, Split::Seen, 1),
                e(3, Split::Unseen, 1),
                e(4, Split::Unseen, 2),
                e(5, Split::Unseen, 3),
            ],
        };
        assert_eq!(pick_probes(&probe, 4), [0, 2, 4, 5]);
        let seen_only = Probe { entries: probe.entries[..3].to_vec() };
        assert_eq!(pick_probes(&seen_only, 4), [0, 1, 2]);
    }
}
