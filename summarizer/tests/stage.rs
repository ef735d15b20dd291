//! The summarizer stage end to end in a temporary folder: hand-written
//! probe and attribution files in, a summary table out.

use std::path::{Path, PathBuf};

use clap::Parser;
use common::artifacts::tables::metrics::{metrics_frame, MetricsRow};
use common::artifacts::{
    read_parquet, read_stamp, write_attributions, write_parquet_stamped, write_probe, Attributions, Probe, ProbeEntry, RunLayout,
    Split, Stamp,
};
use common::config::Pipeline;
use common::provenance::{expected_attributions, run_fingerprint};
use common::scratch::ScratchDir;
use summarizer::Cli;

fn temp_dir(name: &str) -> ScratchDir {
    ScratchDir::new(&format!("summarizer-{name}"))
}

fn write_config(dir: &Path, measures: &[&str]) -> PathBuf {
    let list: Vec<String> = measures.iter().map(|m| format!("\"{m}\"")).collect();
    let text = format!(
        r#"
[output]
dir = "{}"

[datasets.synth]
kind = "synthetic"
shape = "1x8x8"
train_size = 20
test_size = 20

[runs.tiny]
dataset = "synth"
model = "simple"
epochs = 1
checkpoints = {{ every = 10 }}

[methods.lrp]
kind = "lrp"

[summaries]
measures = [{}]
"#,
        dir.join("runs").display(),
        list.join(", ")
    );
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn attributions(step: u64, maps: Vec<f32>, fingerprint: &str) -> Attributions {
    Attributions {
        run: "tiny".into(),
        method: "lrp".into(),
        step,
        epoch: step as f64 / 10.0,
        height: 2,
        width: 2,
        maps,
        probe_id: vec![0, 1, 2],
        target: vec![3, 1, 2],
        prediction: vec![3, 1, 7],
        logit: vec![1.0, 2.0, 3.0],
        method_fingerprint: "m".into(),
        checkpoint_fingerprint: format!("c{step}"),
        checkpoint_content: format!("c{step}"),
        fingerprint: fingerprint.into(),
        content: None,
    }
}

/// The trainer's record of the run: a stamped metrics table listing `steps`.
fn write_metrics(layout: &RunLayout, config: &Path, steps: &[u64]) {
    let pipeline = Pipeline::load(config).unwrap();
    let rows: Vec<MetricsRow> = steps.iter().map(|&step| MetricsRow::uniform(step, step as f64 / 10.0, 2.0, 0.1)).collect();
    let stamp = Stamp::new(run_fingerprint(&pipeline.config, pipeline.instances(&[]).unwrap()[0]));
    write_parquet_stamped(&layout.metrics(), &mut metrics_frame(&rows), stamp).unwrap();
}

/// The fingerprint the explainer gives the maps of checkpoint `step` with
/// the config's `lrp` method.
fn current(config: &Path, step: u64) -> String {
    let pipeline = Pipeline::load(config).unwrap();
    let run = pipeline.instances(&[]).unwrap()[0];
    expected_attributions(&pipeline.config, run, &pipeline.config.methods["lrp"], &[step])[0].1.clone()
}

fn setup(dir: &Path) -> RunLayout {
    let config = write_config(dir, &["frobenius"]);
    let layout = RunLayout::new(&dir.join("runs"), "tiny");
    let probe = Probe {
        entries: vec![
            ProbeEntry { probe_id: 0, split: Split::Seen, source_index: 3, label: 3 },
            ProbeEntry { probe_id: 1, split: Split::Seen, source_index: 1, label: 1 },
            ProbeEntry { probe_id: 2, split: Split::Unseen, source_index: 2, label: 2 },
        ],
    };
    write_probe(&layout.probe(), &probe).unwrap();
    // step 0: map 0 mixed, map 1 all zero, map 2 negative only
    let maps0 = vec![3.0, -4.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0, -3.0, 0.0, 0.0];
    write_metrics(&layout, &config, &[0, 10]);
    write_attributions(&layout.attribution("lrp", 0), &attributions(0, maps0, &current(&config, 0))).unwrap();
    let maps10 = vec![1.0; 12];
    write_attributions(&layout.attribution("lrp", 10), &attributions(10, maps10, &current(&config, 10))).unwrap();
    // The maps of a checkpoint that is gone (an earlier training) are not summarised.
    write_attributions(&layout.attribution("lrp", 5), &attributions(5, vec![9.0; 12], "old")).unwrap();
    layout
}

fn cli(config: &Path, extra: &[&str]) -> Cli {
    let mut args = vec!["summarizer", "--config", config.to_str().unwrap()];
    args.extend_from_slice(extra);
    Cli::try_parse_from(args).unwrap()
}

#[test]
fn summarizes_skips_and_redoes_on_measure_change() {
    let dir = temp_dir("stage");
    let layout = setup(&dir);
    let config = write_config(&dir, &["frobenius", "entropy_pos", "entropy_abs", "gini"]);

    let report = summarizer::run(&cli(&config, &[])).unwrap();
    assert_eq!((report.done, report.skipped, report.failed.len()), (1, 0, 0), "{:?}", report.failed);
    let out = layout.summaries("lrp");
    let df = read_parquet(&out).unwrap();
    let names: Vec<&str> = df.get_column_names().iter().map(|s| s.as_str()).collect();
    assert_eq!(
        names,
        [
            "step",
            "epoch",
            "probe_id",
            "split",
            "label",
            "target",
            "correct",
            "logit",
            "frobenius",
            "entropy_pos",
            "entropy_abs",
            "gini"
        ]
    );
    assert_eq!(df.height(), 6);
    let steps: Vec<i64> = df.column("step").unwrap().i64().unwrap().into_no_null_iter().collect();
    assert_eq!(steps, [0, 0, 0, 10, 10, 10]);
    let splits: Vec<&str> = df.column("split").unwrap().str().unwrap().into_no_null_iter().collect();
    assert_eq!(splits, ["seen", "seen", "unseen", "seen", "seen", "unseen"]);
    let correct: Vec<bool> = df.column("correct").unwrap().bool().unwrap().into_no_null_iter().collect();
    assert_eq!(correct, [true, true, false, true, true, false]);
    let epoch: Vec<f64> = df.column("epoch").unwrap().f64().unwrap().into_no_null_iter().collect();
    assert_eq!(epoch, [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]);
    let frob: Vec<Option<f64>> = df.column("frobenius").unwrap().f64().unwrap().into_iter().collect();
    assert_eq!(frob[0], Some(26f64.sqrt()));
    assert_eq!(frob[1], Some(0.0));
    assert_eq!(frob[3], Some(2.0));
    // all-zero map: entropies and gini null; negative-only map: entropy_pos null
    let pos: Vec<Option<f64>> = df.column("entropy_pos").unwrap().f64().unwrap().into_iter().collect();
    assert!(pos[0].is_some() && pos[1].is_none() && pos[2].is_none() && pos[3].is_some());
    let abs: Vec<Option<f64>> = df.column("entropy_abs").unwrap().f64().unwrap().into_iter().collect();
    assert!(abs[1].is_none() && abs[2].is_some());
    assert!((abs[3].unwrap() - 4f64.ln()).abs() < 1e-12);
    let gini: Vec<Option<f64>> = df.column("gini").unwrap().f64().unwrap().into_iter().collect();
    assert_eq!(gini[1], None);
    let stamp = read_stamp(&out).unwrap().fingerprint;

    // rerun: nothing to do
    let report = summarizer::run(&cli(&config, &[])).unwrap();
    assert_eq!((report.done, report.skipped), (0, 1));
    // --force redoes, same bytes of fingerprint
    let report = summarizer::run(&cli(&config, &["--force"])).unwrap();
    assert_eq!(report.done, 1);
    assert_eq!(read_stamp(&out).unwrap().fingerprint, stamp);

    // another measure list: redone, new columns, new stamp; dry run first changes nothing
    let config = write_config(&dir, &["l1", "pos_frac"]);
    let report = summarizer::run(&cli(&config, &["--dry-run"])).unwrap();
    assert_eq!((report.done, report.skipped), (0, 0));
    assert_eq!(read_stamp(&out).unwrap().fingerprint, stamp);
    let report = summarizer::run(&cli(&config, &[])).unwrap();
    assert_eq!(report.done, 1);
    let df = read_parquet(&out).unwrap();
    assert_eq!(df.width(), 10);
    assert!(df.column("l1").is_ok() && df.column("frobenius").is_err());
    assert_ne!(read_stamp(&out).unwrap().fingerprint, stamp);

    // a new checkpoint without its maps: the unit fails and says why
    write_metrics(&layout, &config, &[0, 10, 20]);
    let report = summarizer::run(&cli(&config, &[])).unwrap();
    assert!(report.failed[0].contains("step-000020.safetensors: missing; run the explainer"), "{:?}", report.failed);
    // stale maps (another method setting) fail it too
    write_attributions(&layout.attribution("lrp", 20), &attributions(20, vec![2.0; 12], "other settings")).unwrap();
    let report = summarizer::run(&cli(&config, &[])).unwrap();
    assert!(report.failed[0].contains("step-000020.safetensors: stale"), "{:?}", report.failed);
    // its current maps redo the unit
    write_attributions(&layout.attribution("lrp", 20), &attributions(20, vec![2.0; 12], &current(&config, 20))).unwrap();
    let report = summarizer::run(&cli(&config, &[])).unwrap();
    assert_eq!(report.done, 1);
    assert_eq!(read_parquet(&out).unwrap().height(), 9);
}

#[test]
fn corrupt_attribution_file_fails_the_unit_naming_it() {
    let dir = temp_dir("corrupt");
    let layout = setup(&dir);
    let config = write_config(&dir, &["frobenius"]);
    let bad = layout.attribution("lrp", 10);
    let bytes = std::fs::read(&bad).unwrap();
    std::fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();
    let report = summarizer::run(&cli(&config, &[])).unwrap();
    assert_eq!(report.done, 0);
    assert_eq!(report.failed.len(), 1);
    assert!(report.failed[0].contains("step-000010.safetensors"), "{}", report.failed[0]);
    assert!(!layout.summaries("lrp").exists());
}

#[test]
fn unknown_method_filter_is_an_error() {
    let dir = temp_dir("filter");
    let config = write_config(&dir, &["frobenius"]);
    let err = summarizer::run(&cli(&config, &["--method", "nope"])).unwrap_err().to_string();
    assert!(err.contains("no method `nope`"), "{err}");
}
