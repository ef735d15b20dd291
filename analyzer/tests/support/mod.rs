#![allow(dead_code)]

//! Shared setup of the analyzer's stage tests: hand-made metrics, probe and
//! attribution files, summarised by the summarizer.

use std::path::{Path, PathBuf};

use clap::Parser;
use common::architecture::ModelKind;
use common::artifacts::tables::metrics::{metrics_frame, MetricsRow};
use common::artifacts::{
    write_attributions, write_checkpoint_file, write_parquet_stamped, Attributions, CheckpointInfo, ModelLabel, Probe,
    ProbeEntry, RunLayout, Split, Stamp,
};
use common::config::Pipeline;
use common::image::ImageShape;
use common::provenance::{expected_attributions, run_fingerprint};
use common::scratch::ScratchDir;

pub fn temp_dir(name: &str) -> ScratchDir {
    ScratchDir::new(&format!("analyzer-{name}"))
}

pub fn write_config(dir: &Path, run_name: &str) -> PathBuf {
    let text = format!(
        r#"
[output]
dir = "{}"

[datasets.synth]
kind = "synthetic"
shape = "1x28x28"
train_size = 40
test_size = 40

[runs.{run_name}]
dataset = "synth"
model = "simple"
epochs = 1
checkpoints = {{ every = 10 }}
intended_fit = "overfit"

[methods.lrp]
kind = "lrp"

[summaries]
measures = ["frobenius", "entropy_abs", "entropy_neg", "gini"]
"#,
        dir.join("runs").display()
    );
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, text).unwrap();
    path
}

pub const STEPS: [u64; 10] = [0, 10, 20, 30, 40, 50, 60, 70, 80, 90];

/// The fingerprint the trainer gives the test run's tables.
fn run_stamp(config: &Path) -> Stamp {
    let pipeline = Pipeline::load(config).unwrap();
    Stamp::new(run_fingerprint(&pipeline.config, pipeline.instances(&[]).unwrap()[0]))
}

/// The run's metrics, as the trainer would stamp them; `variant` 2 has a
/// test loss that ends higher.
pub fn write_metrics(layout: &RunLayout, config: &Path, variant: u32) {
    let n = STEPS.len();
    let train: Vec<f64> = (0..n).map(|i| 2.3 / (1.0 + i as f64)).collect();
    // test loss falls to 1.0 at step 40, then climbs to 2.0: overfit (rise 1.0)
    let mut test = vec![2.3, 1.8, 1.4, 1.1, 1.0, 1.2, 1.4, 1.6, 1.8, 2.0];
    if variant == 2 {
        test[9] = 2.1;
    }
    let acc: Vec<f64> = (0..n).map(|i| 0.1 + 0.05 * i as f64).collect();
    let rows: Vec<MetricsRow> = (0..n)
        .map(|i| MetricsRow {
            step: STEPS[i],
            epoch: STEPS[i] as f64 / 90.0,
            train_loss: train[i],
            train_loss_running: train[i],
            train_acc_running: acc[i],
            test_loss: test[i],
            test_acc: acc[i],
            probe_loss: test[i],
            probe_acc: acc[i],
            train_eval_loss: train[i],
            train_eval_acc: acc[i],
        })
        .collect();
    write_parquet_stamped(&layout.metrics(), &mut metrics_frame(&rows), run_stamp(config)).unwrap();
}

/// Maps of a blob that sharpens and grows over training: norm rises,
/// entropy falls. No negative values: entropy_neg is null everywhere.
pub fn write_maps(layout: &RunLayout, probe: &Probe, config: &Path) {
    let pipeline = Pipeline::load(config).unwrap();
    let run = pipeline.instances(&[]).unwrap()[0];
    let fingerprints = expected_attributions(&pipeline.config, run, &pipeline.config.methods["lrp"], &STEPS);
    for (k, &step) in STEPS.iter().enumerate() {
        // The analyzer reads only which checkpoints exist: no parameters needed.
        let model = ModelLabel { name: ModelKind::Simple.name().into(), input: ImageShape::GRAY_28, classes: 10 };
        let info =
            CheckpointInfo { run: "tiny".into(), step, epoch: 0.0, dataset: "synth".into(), fingerprint: format!("c{step}") };
        write_checkpoint_file(&layout.checkpoint(step), &info, &model, []).unwrap();
        let width = 8.0 - 0.6 * k as f32;
        let amplitude = 2f32.powi(k as i32);
        let mut maps = Vec::new();
        for (i, _) in probe.entries.iter().enumerate() {
            let (cx, cy) = (8.0 + 3.0 * i as f32, 14.0);
            for y in 0..28 {
                for x in 0..28 {
                    let d2 = (x as f32 - cx).powi(2) + (y as f32 - cy).powi(2);
                    maps.push(amplitude * (-d2 / (2.0 * width * width)).exp());
                }
            }
        }
        let n = probe.len();
        let a = Attributions {
            run: "tiny".into(),
            method: "lrp".into(),
            step,
            epoch: step as f64 / 90.0,
            height: 28,
            width: 28,
            maps,
            probe_id: probe.entries.iter().map(|e| e.probe_id).collect(),
            target: probe.entries.iter().map(|e| e.label as i64).collect(),
            prediction: probe.entries.iter().map(|e| if k > 3 { e.label as i64 } else { 0 }).collect(),
            logit: vec![1.0; n],
            method_fingerprint: "m".into(),
            checkpoint_fingerprint: format!("c{step}"),
            checkpoint_content: format!("c{step}"),
            fingerprint: fingerprints[k].1.clone(),
            content: None,
        };
        write_attributions(&layout.attribution("lrp", step), &a).unwrap();
    }
}

pub fn setup(dir: &Path) -> (PathBuf, RunLayout) {
    let config = write_config(dir, "tiny");
    let layout = RunLayout::new(&dir.join("runs"), "tiny");
    // synthetic labels are index % 10
    let probe = Probe {
        entries: vec![
            ProbeEntry { probe_id: 0, split: Split::Seen, source_index: 1, label: 1 },
            ProbeEntry { probe_id: 1, split: Split::Seen, source_index: 12, label: 2 },
            ProbeEntry { probe_id: 2, split: Split::Unseen, source_index: 3, label: 3 },
            ProbeEntry { probe_id: 3, split: Split::Unseen, source_index: 24, label: 4 },
        ],
    };
    write_parquet_stamped(&layout.probe(), &mut probe.to_frame(), run_stamp(&config)).unwrap();
    write_metrics(&layout, &config, 1);
    write_maps(&layout, &probe, &config);
    let cli = summarizer::Cli::try_parse_from(["summarizer", "--config", config.to_str().unwrap()]).unwrap();
    let report = summarizer::run(&cli).unwrap();
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    (config, layout)
}

pub fn analyze(config: &Path, extra: &[&str]) -> common::stage::StageReport {
    let mut args = vec!["analyzer", "--config", config.to_str().unwrap()];
    args.extend_from_slice(extra);
    analyzer::run(&analyzer::Cli::try_parse_from(args).unwrap()).unwrap()
}
