//! The analyzer end to end in a temporary folder: hand-made metrics, probe
//! and attribution files, summarised by the summarizer, then analysed.

mod support;

use clap::Parser;
use common::artifacts::{read_parquet, read_stamp};
use support::{analyze, setup, temp_dir, write_config, write_metrics};

#[test]
fn analyses_skips_and_redoes() {
    let dir = temp_dir("stage");
    let (config, layout) = setup(&dir);
    let report = analyze(&config, &[]);
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(report.done, 1);

    let analysis = dir.join("runs/analysis");
    let corr = read_parquet(&analysis.join("correlations.parquet")).unwrap();
    // 3 splits x 4 measures x 2 aggregates x 4 grids x (5 metrics x 2 statistics + the partial)
    assert_eq!(corr.height(), 3 * 4 * 2 * 4 * 11);
    let get = |split: &str, measure: &str, metric: &str| -> Option<f64> {
        let col = |n: &str| corr.column(n).unwrap().str().unwrap().into_no_null_iter().map(String::from).collect::<Vec<_>>();
        let (s, m, t, g, a, st) = (col("split"), col("measure"), col("metric"), col("grid"), col("aggregate"), col("statistic"));
        let rho = corr.column("rho").unwrap().f64().unwrap();
        (0..corr.height())
            .find(|&i| {
                s[i] == split && m[i] == measure && t[i] == metric && g[i] == "all" && a[i] == "mean" && st[i] == "spearman"
            })
            .and_then(|i| rho.get(i))
    };
    assert_eq!(get("all", "frobenius", "train_loss"), Some(-1.0));
    assert_eq!(get("seen", "frobenius", "step"), Some(1.0));
    assert_eq!(get("unseen", "entropy_abs", "step"), Some(-1.0));
    assert_eq!(get("all", "entropy_neg", "step"), None);

    let by_step = read_parquet(&analysis.join("by_step.parquet")).unwrap();
    assert_eq!(by_step.height(), 30);
    assert_eq!(by_step.column("entropy_neg_n_null").unwrap().i64().unwrap().get(0), Some(2));
    assert!(by_step.column("test_loss").unwrap().null_count() == 0);

    let text = std::fs::read_to_string(analysis.join("report.md")).unwrap();
    assert!(text.contains("| tiny (overfit) | |"), "{text}");
    assert!(text.contains("| test loss |") && text.contains("| train loss (fixed weights) | -1.000 (p_r=< 1e-15"), "{text}");
    assert!(text.contains("figures/tiny__lrp__evolution.png"), "{text}");
    for f in ["tiny__lrp__evolution.png", "tiny__lrp__evolution.svg", "tiny__lrp__heatmaps.png", "tiny__lrp__heatmaps.svg"] {
        let p = analysis.join("figures").join(f);
        assert!(std::fs::metadata(&p).map(|m| m.len() > 1000).unwrap_or(false), "{}", p.display());
    }
    let stamp = read_stamp(&analysis.join("report.md")).unwrap().fingerprint;

    // Nothing changed: skipped.
    let report = analyze(&config, &[]);
    assert_eq!((report.done, report.skipped), (0, 1));
    // New metrics (new stamp): redone, new fingerprint.
    write_metrics(&layout, &config, 2);
    let report = analyze(&config, &["--dry-run", "--no-figures"]);
    assert_eq!((report.done, report.skipped), (0, 0));
    let report = analyze(&config, &["--no-figures"]);
    assert_eq!(report.done, 1);
    assert_ne!(read_stamp(&analysis.join("report.md")).unwrap().fingerprint, stamp);
    // Shards other than 0 do nothing.
    let report = analyze(&config, &["--force", "--shard", "1/2"]);
    assert_eq!((report.done, report.skipped), (0, 0));
}

#[test]
fn a_run_named_analysis_is_refused() {
    let dir = temp_dir("named");
    let config = write_config(&dir, "analysis");
    let cli = analyzer::Cli::try_parse_from(["analyzer", "--config", config.to_str().unwrap()]).unwrap();
    let err = analyzer::run(&cli).unwrap_err().to_string();
    assert!(err.contains("`runs.analysis`: `analysis` is the analyzer's output folder"), "{err}");
}

#[test]
fn nothing_trained_is_an_error() {
    let dir = temp_dir("empty");
    let config = write_config(&dir, "tiny");
    let cli = analyzer::Cli::try_parse_from(["analyzer", "--config", config.to_str().unwrap()]).unwrap();
    let report = analyzer::run(&cli).unwrap();
    assert!(report.failed.len() == 1 && report.failed[0].contains("nothing to analyse"), "{:?}", report.failed);
}
