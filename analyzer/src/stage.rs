//! The analyzer stage: one task over everything present.
//!
//! Reads every selected run's `metrics.parquet` and every (run, method)
//! `summaries/<method>.parquet` present, and writes under
//! `<output.dir>/analysis/`: `by_step.parquet`, `correlations.parquet`,
//! `figures/*.png|svg` and `report.md`. (The analysis folder sits beside
//! the run folders, so a run may not be named `analysis`; the analyzer
//! refuses such a config.)
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
use common::artifacts::{
    read_attributions, read_probe, read_stamp, remove_stale_temporaries, stamp_path, write_atomic, write_parquet, write_stamp,
    Fingerprinter, Probe, RunLayout, Split,
};
use common::cli::{MethodFilter, StageArgs, StageReport};
use common::config::PipelineConfig;
use common::data::{load_dataset, Dataset};

use crate::by_step::{aggregate, by_step_frame, StepTable};
use crate::correlations::{correlate, correlations_frame, Correlation};
use crate::figures::{self, Evolution, HeatmapCell, HeatmapRow, Heatmaps};
use crate::fit::diagnose;
use crate::inputs::{read_metrics, read_summary, Metrics, Summary};
use crate::report::{self, FigureLinks, ReportInput, RunInfo};

/// Bump when the analysis output changes for the same inputs.
const ANALYSIS_VERSION: &str = "analyzer/1";

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
                  train_loss, test_loss, test_acc and step), figures/*.png|svg and report.md (fit diagnosis, \
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
}

/// The folder of the analysis: `<output.dir>/analysis`.
pub fn analysis_dir(config: &PipelineConfig) -> PathBuf {
    config.output.dir.join("analysis")
}

/// A stamp's fingerprint, else a hash of the file's content.
fn input_fingerprint(path: &Path) -> anyhow::Result<String> {
    if let Some(stamp) = read_stamp(path) {
        return Ok(stamp);
    }
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let mut f = Fingerprinter::new();
    f.add_bytes("content", &bytes);
    Ok(f.finish())
}

/// What the analysis reads, found on disk.
#[derive(Debug, Default)]
struct Inputs {
    /// Runs with metrics, in config order: (run, metrics path).
    runs: Vec<String>,
    /// (run, method) pairs with a summary.
    units: Vec<(String, String)>,
    /// (label, fingerprint) of every input, in a fixed order.
    fingerprints: Vec<(String, String)>,
}

fn find_inputs(config: &PipelineConfig, runs: &[&str], methods: &[&str]) -> anyhow::Result<Inputs> {
    let mut inputs = Inputs::default();
    for &run in runs {
        let layout = RunLayout::new(&config.output.dir, run);
        let metrics = layout.metrics();
        if !metrics.is_file() {
            tracing::warn!("{run}: no {}; run left out (train it first)", metrics.display());
            continue;
        }
        inputs.runs.push(run.to_string());
        inputs.fingerprints.push((format!("{run}/metrics"), input_fingerprint(&metrics)?));
        if layout.probe().is_file() {
            inputs.fingerprints.push((format!("{run}/probe"), input_fingerprint(&layout.probe())?));
        }
        for &method in methods {
            let summary = layout.summaries(method);
            if summary.is_file() {
                inputs.units.push((run.to_string(), method.to_string()));
                inputs.fingerprints.push((format!("{run}/{method}"), input_fingerprint(&summary)?));
            } else {
                tracing::warn!("{run}/{method}: no {}; left out (run the summarizer)", summary.display());
            }
        }
    }
    Ok(inputs)
}

/// Runs the stage.
pub fn run(cli: &Cli) -> anyhow::Result<StageReport> {
    let config = PipelineConfig::load(&cli.stage.config)?;
    if config.runs.contains_key("analysis") {
        bail!(
            "{}: a run is named `analysis`, which is the analyzer's output folder `{}`; rename the run",
            cli.stage.config.display(),
            analysis_dir(&config).display()
        );
    }
    let shard = cli.stage.shard().map_err(anyhow::Error::msg)?;
    let mut report = StageReport::default();
    if shard.index != 0 {
        tracing::info!("analyzer: one task; shard {shard} has nothing to do (shard 0 analyses)");
        return Ok(report);
    }
    let runs: Vec<&str> = config.select_runs(&cli.stage.runs).map_err(anyhow::Error::msg)?.into_iter().map(|(n, _)| n).collect();
    let methods: Vec<&str> =
        config.select_methods(&cli.method_filter.methods).map_err(anyhow::Error::msg)?.into_iter().map(|(n, _)| n).collect();
    let measures = config.summaries.measures.clone();
    let inputs = find_inputs(&config, &runs, &methods)?;
    if inputs.runs.is_empty() {
        bail!("nothing to analyse: no metrics.parquet of the selected runs under {}", config.output.dir.display());
    }

    let run_settings: Vec<(String, Option<String>, Option<&common::config::DatasetConfig>)> = inputs
        .runs
        .iter()
        .map(|r| (r.clone(), config.runs[r].intended_fit.clone(), config.datasets.get(&config.runs[r].dataset)))
        .collect();
    let fingerprint = Fingerprinter::new()
        .add("version", &ANALYSIS_VERSION)
        .add("measures", &measures)
        .add("runs", &run_settings)
        .add("methods", &methods)
        .add("inputs", &inputs.fingerprints)
        .add("figures", &!cli.no_figures)
        .finish();

    let dir = analysis_dir(&config);
    let by_step_path = dir.join("by_step.parquet");
    let correlations_path = dir.join("correlations.parquet");
    let report_path = dir.join("report.md");
    let current =
        [&by_step_path, &correlations_path, &report_path].iter().all(|p| read_stamp(p).as_deref() == Some(fingerprint.as_str()));
    if current && !cli.stage.force {
        tracing::info!("analysis in {} is up to date (inputs and settings unchanged); nothing to do", dir.display());
        report.skipped = 1;
        return Ok(report);
    }
    if cli.stage.dry_run {
        let why = if cli.stage.force { "--force" } else { "inputs or settings changed since the last analysis" };
        println!(
            "analyzer: would analyse {} run(s), {} (run, method) summaries into {} ({why})",
            inputs.runs.len(),
            inputs.units.len(),
            dir.display()
        );
        report.planned = 1;
        return Ok(report);
    }
    remove_stale_temporaries(&dir).with_context(|| format!("{}: cannot clean temporaries", dir.display()))?;
    // The stamps are written last, and only when everything succeeded: drop
    // the old ones first so that a failure part-way leaves the analysis
    // stale, not current.
    for path in [&by_step_path, &correlations_path, &report_path] {
        let stamp = stamp_path(path);
        if stamp.exists() {
            std::fs::remove_file(&stamp).with_context(|| format!("{}: cannot remove", stamp.display()))?;
        }
    }

    // Read.
    let mut metrics: BTreeMap<String, Metrics> = BTreeMap::new();
    let mut run_infos = Vec::new();
    for run in &inputs.runs {
        let path = RunLayout::new(&config.output.dir, run).metrics();
        match read_metrics(&path) {
            Ok(m) => {
                let diagnosis = diagnose(&m);
                tracing::info!("{run}: diagnosed {} (rise {:?}, gap {:?})", diagnosis.fit.label(), diagnosis.rise, diagnosis.gap);
                run_infos.push(RunInfo { name: run.clone(), intended_fit: config.runs[run].intended_fit.clone(), diagnosis });
                metrics.insert(run.clone(), m);
            }
            Err(e) => report.failed.push(format!("{run}: {e:#}")),
        }
    }
    let mut tables: Vec<StepTable> = Vec::new();
    let mut summaries: BTreeMap<(String, String), Summary> = BTreeMap::new();
    for (run, method) in &inputs.units {
        if !metrics.contains_key(run) {
            continue;
        }
        let path = RunLayout::new(&config.output.dir, run).summaries(method);
        match read_summary(&path, &measures) {
            Ok(s) => {
                let nulls: usize = s.measures.iter().map(|(_, v)| v.iter().filter(|x| x.is_none()).count()).sum();
                if nulls > 0 {
                    let per: Vec<String> = s
                        .measures
                        .iter()
                        .map(|(m, v)| (m, v.iter().filter(|x| x.is_none()).count()))
                        .filter(|(_, n)| *n > 0)
                        .map(|(m, n)| format!("{m}: {n}"))
                        .collect();
                    tracing::info!("{run}/{method}: null values left out of the per-step statistics ({})", per.join(", "));
                }
                tables.extend(aggregate(run, method, &s));
                summaries.insert((run.clone(), method.clone()), s);
            }
            Err(e) => report.failed.push(format!("{run}/{method}: {e:#}")),
        }
    }

    // Tables.
    let mut correlations: Vec<Correlation> = Vec::new();
    for t in &tables {
        correlations.extend(correlate(t, &metrics[&t.run]));
    }
    let dropped_null: usize = correlations.iter().map(|c| c.dropped_null_measure).sum();
    let dropped_metric: usize = correlations.iter().map(|c| c.dropped_missing_metric).sum();
    if dropped_null + dropped_metric > 0 {
        tracing::warn!(
            "correlations: {dropped_null} (step, pair) value(s) dropped for a null measure mean, {dropped_metric} for a missing metric (see report.md)"
        );
    }
    write_parquet(&by_step_path, &mut by_step_frame(&tables, &metrics, &measures)?)?;
    write_parquet(&correlations_path, &mut correlations_frame(&correlations)?)?;
    tracing::info!("wrote {} and {} ({} correlations)", by_step_path.display(), correlations_path.display(), correlations.len());

    // Figures.
    let mut links = Vec::new();
    let mut figure_error = None;
    if !cli.no_figures {
        let figures_dir = dir.join("figures");
        remove_stale_temporaries(&figures_dir).with_context(|| format!("{}: cannot clean temporaries", figures_dir.display()))?;
        match draw_figures(&config, &figures_dir, &tables, &metrics, &run_infos, &summaries) {
            Ok((l, errors)) => {
                links = l;
                if !errors.is_empty() {
                    figure_error = Some(errors.join("; "));
                    report.failed.extend(errors);
                }
            }
            Err(e) => {
                figure_error = Some(format!("{e:#}"));
                report.failed.push(format!("figures: {e:#}"));
            }
        }
    }

    // Report.
    let method_names: Vec<String> = methods.iter().map(|m| m.to_string()).collect();
    let text = report::render(&ReportInput {
        // The file name only: the same config gives the same report wherever it lives.
        config: cli
            .stage
            .config
            .file_name()
            .map_or_else(|| cli.stage.config.display().to_string(), |n| n.to_string_lossy().into_owned()),
        runs: &run_infos,
        methods: &method_names,
        measures: &measures,
        tables: &tables,
        correlations: &correlations,
        figures: &links,
        figure_error,
    });
    write_atomic(&report_path, text.as_bytes())?;
    if report.failed.is_empty() {
        for path in [&by_step_path, &correlations_path, &report_path] {
            write_stamp(path, &fingerprint)?;
        }
    } else {
        tracing::warn!("analysis written with failures and left unstamped: the next run redoes it");
    }
    tracing::info!("wrote {}", report_path.display());
    report.done = 1;
    Ok(report)
}

/// Draws the evolution and heatmap figures of every (run, method); a
/// failing figure is reported and the others are still drawn.
fn draw_figures(
    config: &PipelineConfig,
    dir: &Path,
    tables: &[StepTable],
    metrics: &BTreeMap<String, Metrics>,
    runs: &[RunInfo],
    summaries: &BTreeMap<(String, String), Summary>,
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
        let mut panels: Vec<(String, String)> = [(report::NORM, "norm (frobenius)"), (report::ENTROPY, "entropy (entropy_abs)")]
            .iter()
            .filter(|(m, _)| measures.iter().any(|x| x == m))
            .map(|(m, t)| (m.to_string(), t.to_string()))
            .collect();
        if panels.is_empty() {
            panels.push((measures[0].clone(), measures[0].clone()));
        }
        let evolution = Evolution {
            title: format!("{run} ({fit}), {method}: attribution measures over training"),
            tables: mine,
            measures: panels,
            metrics: &metrics[run],
        };
        let stem = format!("{run}__{method}__evolution");
        match figures::save(&evolution, dir, &stem) {
            Ok(paths) => link.evolution = Some(rel(paths)),
            Err(e) => errors.push(format!("{run}/{method}: evolution figure: {e:#}")),
        }

        match heatmap_figure(config, run, method, fit, &mut datasets) {
            Ok(Some(h)) => match figures::save(&h, dir, &format!("{run}__{method}__heatmaps")) {
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
    config: &PipelineConfig,
    run: &str,
    method: &str,
    fit: &str,
    datasets: &mut BTreeMap<String, Dataset>,
) -> anyhow::Result<Option<Heatmaps>> {
    let layout = RunLayout::new(&config.output.dir, run);
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
    let dataset_name = &config.runs[run].dataset;
    if !datasets.contains_key(dataset_name) {
        let d = load_dataset(&config.datasets[dataset_name]).with_context(|| format!("data set `{dataset_name}`"))?;
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

#[cfg(test)]
mod tests {
    use super::*;
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
