//! `analysis/report.md`: the fit diagnosis of each run, then per method the
//! paper's table (Spearman's rho of norm and entropy with test and train
//! loss), descriptive statistics, all correlations, and the figures.

use std::fmt::Write;

use common::artifacts::tables::across_seeds::AcrossSeedsRow;
use common::artifacts::tables::by_step::{MeasureStats, SplitSelection};
use common::artifacts::tables::correlations::Against;
use common::artifacts::tables::metrics::Metric;
use common::measures::Measure;

use common::artifacts::tables::correlations::{Aggregate, CorrelationKey, Grid, Statistic};

use crate::by_step::StepTable;
use crate::calibration::PRIMARY;
use crate::correlations::{Correlation, CORRELATED};
use crate::fit::FitDiagnosis;

/// The measure the paper calls "norm".
pub const NORM: Measure = Measure::NORM;
/// The measure the paper calls "entropy".
pub const ENTROPY: Measure = Measure::ENTROPY;
/// The split of the paper's table and of the descriptive statistics.
pub const MAIN_SPLIT: SplitSelection = SplitSelection::All;

/// A run as the report shows it.
#[derive(Clone, Debug)]
pub struct RunInfo {
    pub name: String,
    pub intended_fit: Option<String>,
    pub diagnosis: FitDiagnosis,
    /// Where training stopped because the loss or the weights diverged.
    pub diverged: Option<common::artifacts::Divergence>,
}

/// The figures of one (run, method), as paths relative to the report.
#[derive(Clone, Debug)]
pub struct FigureLinks {
    pub run: String,
    pub method: String,
    pub evolution: Option<(String, String)>,
    pub heatmaps: Option<(String, String)>,
}

/// Everything the report shows.
pub struct ReportInput<'a> {
    pub config: String,
    pub runs: &'a [RunInfo],
    pub methods: &'a [String],
    pub measures: &'a [Measure],
    pub tables: &'a [StepTable],
    pub correlations: &'a [Correlation],
    /// The correlations over each run's seeds.
    pub across_seeds: &'a [AcrossSeedsRow],
    pub figures: &'a [FigureLinks],
    /// Why figures are missing, if they are.
    pub figure_error: Option<String>,
    /// Inputs left out as stale or damaged, each naming the file and why.
    pub left_out: &'a [String],
}

fn num(v: Option<f64>) -> String {
    match v {
        Some(v) if v != 0.0 && (v.abs() >= 1e4 || v.abs() < 1e-3) => format!("{v:.3e}"),
        Some(v) => format!("{v:.4}"),
        None => "–".into(),
    }
}

/// A p-value as text; below what a double resolves, `< 1e-15`, never 0.
pub fn p_text(p: f64) -> String {
    if p < 1e-15 {
        "< 1e-15".into()
    } else if p < 1e-3 {
        format!("{p:.1e}")
    } else {
        format!("{p:.3}")
    }
}

/// The grid and aggregate of the report's tables (every combination is
/// in `correlations.parquet`).
pub const TABLE_GRID: Grid = Grid::Uniform;
pub const TABLE_AGGREGATE: Aggregate = Aggregate::Mean;

/// A rho with its robust p-value, and the primary statistic's rho of the
/// differences with its q-value, starred when q < 0.05:
/// `-0.875 (p_r=0.012; Δ -0.41, q=0.03 *)`; `n/a (n=3)` when undefined.
pub fn rho_cell(c: Option<&Correlation>, primary: Option<&Correlation>) -> String {
    let levels = match c {
        None => return "not computed".into(),
        Some(Correlation { result: Some(r), .. }) => format!("{:.3} (p_r={}", r.rho, p_text(r.p_robust)),
        Some(c) => return format!("n/a (n={})", c.n),
    };
    match primary {
        Some(Correlation { result: Some(d), q_value: Some(q), .. }) => {
            let mark = if *q < 0.05 { " *" } else { "" };
            format!("{levels}; Δ {:.2}, q={}{mark})", d.rho, p_text(*q))
        }
        _ => format!("{levels}; Δ n/a)"),
    }
}

/// The key of a cell of the report's tables: on [`TABLE_GRID`], of the
/// [`TABLE_AGGREGATE`] over the [`MAIN_SPLIT`]'s images.
fn table_key(method: &str, measure: Measure, metric: Against, statistic: Statistic) -> CorrelationKey {
    CorrelationKey {
        method: method.to_string(),
        split: MAIN_SPLIT,
        measure,
        metric,
        aggregate: TABLE_AGGREGATE,
        grid: TABLE_GRID,
        statistic,
    }
}

/// The table's correlation of one cell.
fn find<'a>(all: &'a [Correlation], run: &str, key: &CorrelationKey) -> Option<&'a Correlation> {
    all.iter().find(|c| c.run == run && &c.key == key)
}

/// The cell of the report's tables: the rho of the levels with the
/// primary statistic beside it.
fn cell(all: &[Correlation], run: &str, method: &str, measure: Measure, metric: Against) -> String {
    let levels = find(all, run, &table_key(method, measure, metric, Statistic::Spearman));
    match (metric, levels) {
        (Against::Step, Some(Correlation { result: Some(r), .. })) => format!("{:.3} (p_r={})", r.rho, p_text(r.p_robust)),
        _ => rho_cell(levels, find(all, run, &table_key(method, measure, metric, PRIMARY))),
    }
}

/// The rows of the paper's table: the loss each rho is taken against.
const PAPER_ROWS: [(&str, Metric); 2] = [("test loss", Metric::TestLoss), ("train loss (fixed weights)", Metric::TrainEvalLoss)];

/// A cell of the across-seeds table: `-0.61 ± 0.08 [-0.75, -0.43], 3/3 negative`.
fn across_seeds_cell(row: Option<&AcrossSeedsRow>) -> String {
    let Some(row) = row else { return "not computed".into() };
    let (Some(mean), Some(sd), Some(low), Some(high)) = (row.rho_mean, row.rho_sd, row.rho_ci_low, row.rho_ci_high) else {
        return format!("n/a ({} seed(s) with a rho)", row.seeds);
    };
    let sign = if mean < 0.0 { "negative" } else { "positive" };
    format!("{mean:.3} ± {sd:.3} [{low:.3}, {high:.3}], {}/{} {sign}", row.same_sign, row.seeds)
}

/// The paper's table over the seeds of each replicated run: rho of the
/// levels (uniform grid, mean over images, split `all`) as mean ± sd over
/// the seeds with its t interval. Nothing when no run has two seeds.
fn render_across_seeds(w: &mut String, rows: &[AcrossSeedsRow], method: &str, measures: &[Measure]) {
    let table_row = |run: &str, measure: Measure, metric: Metric| {
        let key = table_key(method, measure, Against::Metric(metric), Statistic::Spearman);
        rows.iter().find(|r| r.run == run && r.key == key)
    };
    let mut runs: Vec<&str> = Vec::new();
    for row in rows.iter().filter(|r| r.key.method == method && r.seeds >= 2) {
        if !runs.contains(&row.run.as_str()) {
            runs.push(&row.run);
        }
    }
    if runs.is_empty() {
        return;
    }
    let _ = writeln!(
        w,
        "### Across seeds
"
    );
    let _ = writeln!(w, "| run | loss | norm | entropy |\n|---|---|---|---|");
    for run in runs {
        for (label, metric) in PAPER_ROWS {
            let mut line = format!("| {run} | {label} |");
            for measure in [NORM, ENTROPY] {
                let text = if measures.contains(&measure) {
                    across_seeds_cell(table_row(run, measure, metric))
                } else {
                    "not configured".into()
                };
                let _ = write!(line, " {text} |");
            }
            let _ = writeln!(w, "{line}");
        }
    }
    let _ = writeln!(
        w,
        "\nSpearman's rho of the levels per seed, as `tanh` of the mean Fisher z ± the sd of rho over the seeds, \
         the 95% t interval over seeds, and how many seeds share the majority sign (`across_seeds.parquet`). \
         The interval treats seeds as independent replicates of the run's regime; it cannot speak for \
         regimes or architectures not trained.\n"
    );
}

/// The paper's table (Terzieva et al., LRP, rho over training steps): per
/// fit regime, (test loss: norm, entropy), (train loss: norm, entropy).
pub const PAPER: [(&str, [(f64, f64); 2]); 4] = [
    ("good fit", [(-0.875, 0.806), (-0.657, 0.591)]),
    ("slight overfit", [(0.226, -0.141), (-0.836, 0.783)]),
    ("overfit", [(-0.363, 0.391), (-0.832, 0.808)]),
    ("strong overfit", [(0.345, -0.296), (-0.940, 0.884)]),
];

/// The paper's value for a run of this intended fit, row (0: test loss,
/// 1: train loss) and measure.
fn paper_value(intended: Option<&str>, row: usize, measure: Measure) -> Option<f64> {
    let (_, values) = PAPER.iter().find(|(regime, _)| Some(*regime) == intended)?;
    let (norm, entropy) = values[row];
    match measure {
        m if m == NORM => Some(norm),
        m if m == ENTROPY => Some(entropy),
        _ => None,
    }
}

/// The run's column header: name and diagnosed fit.
fn run_header(r: &RunInfo) -> String {
    if let Some(d) = &r.diverged {
        return format!("{} (diverged at step {})", r.name, d.step);
    }
    match &r.intended_fit {
        Some(intended) if intended != r.diagnosis.fit.label() => {
            format!("{} ({}; intended: {intended})", r.name, r.diagnosis.fit.label())
        }
        _ => format!("{} ({})", r.name, r.diagnosis.fit.label()),
    }
}

pub fn render(input: &ReportInput) -> String {
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(w, "# Attribution trends: analysis\n");
    let _ = writeln!(
        w,
        "Config: `{}`. Spearman's rho is computed over the checkpoints of a run, between the **per-step \
         mean of a measure over the probe images** of a split and the run's metric at that step (`step` \
         itself for the trend), on the **uniform grid** (the multiples of the run's `every`, so that dense \
         early checkpoints do not weight the early transient). Norm = `{NORM}`, entropy = `{ENTROPY}`; the \
         tables use split `{MAIN_SPLIT}`; every split, grid (`all`, `before_min`, `after_min`), aggregate \
         (`median`) and statistic is in `correlations.parquet`.\n",
        input.config
    );
    let _ = writeln!(
        w,
        "**How to read a cell.** `-0.875 (p_r=0.012; Δ -0.41, q=0.03 *)`: rho of the levels with its robust \
         p-value, then rho of the first differences (`spearman_diff`) with its Benjamini-Hochberg q-value over \
         the method's rows; `*` marks q < 0.05 of the differences (the trend against `step` shows the levels \
         only: the steps of a grid have constant differences). Two series that both trend during training \
         correlate strongly whether or not they are related, so the rho of the levels (and its nominal \
         t-test p-value, in the table) says little on its own: two independent random walks pass that test \
         about half the time. The robust p-values use the effective sample size of Pyper & Peterman (1998) \
         from the series' autocorrelations; the calibration (`analyzer --calibrate`) shows that only the \
         differences' test holds its size under every null tried (independent AR(1) series with phi 0.5, \
         0.8, 0.95 and random walks, n = 20, 30, 60), so only it marks significance. It asks a narrower \
         question: do the measure's step-to-step changes follow the metric's? LRP relevance starts from the \
         explained logit, so norms grow with the logit; `frobenius_per_logit` and `l1_per_logit`, where \
         configured, control for it. One seed per run: the rho of one training run, not of a population of \
         runs.\n"
    );

    // Fit diagnosis.
    let _ = writeln!(w, "## Fit diagnosis\n");
    let _ = writeln!(
        w,
        "Rule: rise = final test loss / minimum test loss - 1; gap = final test loss - mean batch train loss \
         over the last 5 checkpoints; fall = test loss at the start of the last fifth of training / final test \
         loss - 1. Underfit: rise < 0.10 and fall > 0.05 (still improving when training stopped); good fit: \
         rise < 0.10 and gap < 0.5 x final test loss; slight overfit: rise < 0.10 with a larger gap, or \
         0.10 <= rise < 0.50; overfit: 0.50 <= rise < 1.50; strong overfit: rise >= 1.50. acc gap = \
         train_eval_acc - test_acc at the last checkpoint.\n"
    );
    let _ = writeln!(
        w,
        "| run | intended fit | diagnosed fit | final step | final test loss | min test loss (step) | rise | fall (last fifth) | final train loss | gap | final test acc | acc gap |"
    );
    let _ = writeln!(w, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in input.runs {
        let d = &r.diagnosis;
        let _ = writeln!(
            w,
            "| {} | {} | **{}**{} | {} | {} | {} ({}) | {} | {} | {} | {} | {} | {} |",
            r.name,
            r.intended_fit.as_deref().unwrap_or("–"),
            match &r.diverged {
                Some(divergence) => format!("diverged at step {}", divergence.step),
                None => d.fit.label().to_string(),
            },
            match (&r.diverged, &d.note) {
                (Some(divergence), _) => format!(" ({}; the checkpoints before it are analysed)", divergence.why),
                (None, Some(n)) => format!(" ({n})"),
                (None, None) => String::new(),
            },
            d.final_step.map(|s| s.to_string()).unwrap_or("–".into()),
            num(d.final_test_loss),
            num(d.min_test_loss),
            d.min_test_loss_step.map(|s| s.to_string()).unwrap_or("–".into()),
            num(d.rise),
            num(d.fall),
            num(d.final_train_loss),
            num(d.gap),
            num(d.final_test_acc),
            num(d.acc_gap),
        );
    }
    let _ = writeln!(w);
    if !input.left_out.is_empty() {
        let _ = writeln!(
            w,
            "**Left out of this analysis** (stale or damaged inputs; the analysis is not current until they are redone):\n"
        );
        for why in input.left_out {
            let _ = writeln!(w, "- {why}");
        }
        let _ = writeln!(w);
    }

    for method in input.methods {
        let runs: Vec<&RunInfo> =
            input.runs.iter().filter(|r| input.tables.iter().any(|t| &t.run == &r.name && &t.method == method)).collect();
        let _ = writeln!(w, "## Method `{method}`\n");
        if runs.is_empty() {
            let _ = writeln!(w, "No summaries for this method.\n");
            continue;
        }

        // The paper's table.
        let _ = writeln!(w, "### Spearman's rho with the loss (the paper's table)\n");
        let mut header = String::from("| |");
        let mut sub = String::from("| |");
        let mut rule = String::from("|---|");
        for r in &runs {
            let _ = write!(header, " {} | |", run_header(r));
            sub.push_str(" norm | entropy |");
            rule.push_str("---|---|");
        }
        let _ = writeln!(w, "{header}\n{rule}\n{sub}");
        for (row, (label, metric)) in PAPER_ROWS.into_iter().enumerate() {
            let mut line = format!("| {label} |");
            for r in &runs {
                for measure in [NORM, ENTROPY] {
                    let mut text = if input.measures.contains(&measure) {
                        cell(input.correlations, &r.name, method, measure, Against::Metric(metric))
                    } else {
                        "not configured".into()
                    };
                    if let Some(paper) = paper_value(r.intended_fit.as_deref(), row, measure) {
                        let _ = write!(text, " [paper {paper:.3}]");
                    }
                    let _ = write!(line, " {text} |");
                }
            }
            let _ = writeln!(w, "{line}");
        }
        let _ = writeln!(
            w,
            "\n`[paper x]`: the value of the paper's table (LRP, all its checkpoints, one seed) for the regime the \
             run is meant to show (`intended_fit`). Our train loss is `train_eval_loss`, the checkpoint's weights on a \
             fixed training subset; the paper's was the batch loss (`train_loss`, in `correlations.parquet`)."
        );
        let _ = writeln!(w);
        render_across_seeds(w, input.across_seeds, method, input.measures);

        // Descriptive statistics.
        let _ = writeln!(w, "### Descriptive statistics (split `{MAIN_SPLIT}`)\n");
        let _ = writeln!(
            w,
            "Per-step mean over the probe images: at the first and the last checkpoint (with the std over \
             images), its smallest and largest value over training, and its trend (rho with step). \
             Null values are maps where the measure is undefined (e.g. the entropy of an all-zero part).\n"
        );
        for r in &runs {
            let Some(t) = input.tables.iter().find(|t| t.run == r.name && &t.method == method && t.split == MAIN_SPLIT) else {
                continue;
            };
            let _ = writeln!(
                w,
                "**{}**: {} checkpoints (steps {}–{}), {} probe images per step.\n",
                r.name,
                t.steps.len(),
                t.steps.first().copied().unwrap_or(0),
                t.steps.last().copied().unwrap_or(0),
                t.stats.first().and_then(|s| s.first()).map(|d| d.n + d.n_null).unwrap_or(0)
            );
            let _ = writeln!(w, "| measure | first: mean ± std | last: mean ± std | min of mean (step) | max of mean (step) | trend rho (p) | null values |");
            let _ = writeln!(w, "|---|---|---|---|---|---|---|");
            for (i, measure) in t.measures.iter().enumerate() {
                let stats = &t.stats[i];
                let first = stats.first();
                let last = stats.last();
                let pm = |d: Option<&MeasureStats>| match d {
                    Some(d) => format!("{} ± {}", num(d.mean), num(d.std)),
                    None => "–".into(),
                };
                let means: Vec<(i64, f64)> = t.steps.iter().zip(stats).filter_map(|(&s, d)| d.mean.map(|m| (s, m))).collect();
                let min = means.iter().min_by(|a, b| a.1.total_cmp(&b.1));
                let max = means.iter().max_by(|a, b| a.1.total_cmp(&b.1));
                let at = |x: Option<&(i64, f64)>| x.map(|(s, m)| format!("{} ({s})", num(Some(*m)))).unwrap_or("–".into());
                let nulls: usize = stats.iter().map(|d| d.n_null).sum();
                let total: usize = stats.iter().map(|d| d.n + d.n_null).sum();
                let _ = writeln!(
                    w,
                    "| {measure} | {} | {} | {} | {} | {} | {nulls} of {total} |",
                    pm(first),
                    pm(last),
                    at(min),
                    at(max),
                    cell(input.correlations, &r.name, method, *measure, Against::Step),
                );
            }
            let _ = writeln!(w);
        }

        // All correlations.
        let _ = writeln!(w, "### All correlations (split `{MAIN_SPLIT}`)\n");
        let names: Vec<&str> = CORRELATED.iter().map(|c| c.name()).collect();
        let _ = writeln!(w, "| run | measure | {} | n |", names.join(" | "));
        let _ = writeln!(w, "|---|---|{}---|", "---|".repeat(names.len()));
        for r in &runs {
            for &measure in input.measures {
                let cells: Vec<String> =
                    CORRELATED.iter().map(|&metric| cell(input.correlations, &r.name, method, measure, metric)).collect();
                let key = table_key(method, measure, Against::Metric(Metric::TestLoss), Statistic::Spearman);
                let n = find(input.correlations, &r.name, &key).map(|c| c.n).unwrap_or(0);
                let _ = writeln!(w, "| {} | {measure} | {} | {n} |", r.name, cells.join(" | "));
            }
        }
        let _ = writeln!(w);
        // Steps left out of correlations, one row per (run, split, measure).
        let mut dropped: Vec<(String, SplitSelection, Measure, usize, Vec<String>)> = Vec::new();
        for c in input.correlations.iter().filter(|c| {
            c.key.method == *method
                && c.key.grid == TABLE_GRID
                && c.key.aggregate == TABLE_AGGREGATE
                && c.key.statistic == Statistic::Spearman
        }) {
            if c.dropped_null_measure == 0 && c.dropped_missing_metric == 0 {
                continue;
            }
            let key = (c.run.clone(), c.key.split, c.key.measure);
            let i = match dropped.iter().position(|d| (&d.0, &d.1, &d.2) == (&key.0, &key.1, &key.2)) {
                Some(i) => i,
                None => {
                    dropped.push((key.0, key.1, key.2, c.dropped_null_measure, Vec::new()));
                    dropped.len() - 1
                }
            };
            if c.dropped_missing_metric > 0 {
                dropped[i].4.push(format!("{}: {}", c.key.metric, c.dropped_missing_metric));
            }
        }
        if !dropped.is_empty() {
            let _ = writeln!(w, "Steps left out of the correlations: where every probe image's value is null (so the mean is), or the metrics lack the step.\n");
            let _ = writeln!(w, "| run | split | measure | steps with a null mean | steps without the metric |");
            let _ = writeln!(w, "|---|---|---|---|---|");
            for (run, split, measure, null_mean, missing) in dropped {
                let missing = if missing.is_empty() { "0".to_string() } else { missing.join(", ") };
                let _ = writeln!(w, "| {run} | {split} | {measure} | {null_mean} | {missing} |");
            }
            let _ = writeln!(w);
        }

        // Figures.
        let _ = writeln!(w, "### Figures\n");
        if let Some(e) = &input.figure_error {
            let _ = writeln!(w, "Figures could not be drawn: {e}\n");
        }
        for f in input.figures.iter().filter(|f| &f.method == method) {
            if let Some((png, svg)) = &f.evolution {
                let _ = writeln!(w, "**{}**: evolution of norm and entropy beside the loss ([SVG]({svg}))\n", f.run);
                let _ = writeln!(w, "![{} {method} evolution]({png})\n", f.run);
            }
            if let Some((png, svg)) = &f.heatmaps {
                let _ = writeln!(w, "**{}**: attribution maps over training ([SVG]({svg}))\n", f.run);
                let _ = writeln!(w, "![{} {method} heatmaps]({png})\n", f.run);
            }
        }
    }
    out
}
