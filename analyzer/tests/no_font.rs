//! Without a usable font the figure step fails with a message saying what
//! to install, the tables and the report are still written, and the
//! analysis stays unstamped so that the next run redoes it. (Its own test
//! binary: the font is registered once per process.)

mod support;

use common::artifacts::read_stamp;
use support::{analyze, setup, temp_dir};

#[test]
fn missing_font_fails_the_figures_and_leaves_the_analysis_stale() {
    std::env::set_var(analyzer::figures::FONT_ENV, "/nonexistent/font.ttf");
    let dir = temp_dir("nofont");
    let (config, _) = setup(&dir);
    let report = analyze(&config, &[]);
    assert_eq!(report.failed.len(), 1, "{:?}", report.failed);
    assert!(
        report.failed[0].contains("fonts-dejavu-core") && report.failed[0].contains("/nonexistent/font.ttf"),
        "{}",
        report.failed[0]
    );
    let analysis = dir.join("runs/analysis");
    assert!(analysis.join("by_step.parquet").is_file() && analysis.join("correlations.parquet").is_file());
    let text = std::fs::read_to_string(analysis.join("report.md")).unwrap();
    assert!(text.contains("Figures could not be drawn"), "{text}");
    assert_eq!(read_stamp(&analysis.join("report.md")), None);
    // not skipped the next time: redone (and failing again)
    let report = analyze(&config, &[]);
    assert_eq!((report.done, report.skipped, report.failed.len()), (0, 0, 1));
    // without figures it succeeds, is stamped, and then skipped
    let report = analyze(&config, &["--no-figures"]);
    assert_eq!((report.done, report.skipped, report.failed.len()), (1, 0, 0));
    let report = analyze(&config, &["--no-figures"]);
    assert_eq!((report.done, report.skipped), (0, 1));
}
