//! The explainer stage end to end on a synthetic run: files, skipping,
//! per-method invalidation, dry runs, sharding, and a corrupt checkpoint.

use std::path::{Path, PathBuf};

use clap::Parser;
use common::architecture::ModelKind;
use common::artifacts::tables::metrics::{metrics_frame, MetricsRow};
use common::artifacts::{
    read_attributions, write_parquet_stamped, write_probe, CheckpointInfo, Probe, ProbeEntry, RunLayout, Split, Stamp,
};
use common::cli::{Shard, StageArgs};
use common::config::PipelineConfig;
use common::data::load_dataset;
use common::provenance::{checkpoint_fingerprint, run_fingerprint};
use common::scratch::ScratchDir;
use engine::{argmax, write_checkpoint, Model};
use explainer::{run, Cli};

const CONFIG: &str = r#"
[output]
dir = "OUTPUT"

[datasets.synth]
kind = "synthetic"
shape = "1x16x16"
train_size = 40
test_size = 20

[probe]
seen_per_class = 1
unseen_per_class = 1

[runs.a]
dataset = "synth"
model = "simple"
epochs = 1
checkpoints = { every = 10 }

[methods.cam]
kind = "gradcam"

[methods.egb]
kind = "lrp"
composite = "epsilon-gamma-box"

[methods.lrp]
kind = "lrp"
"#;

/// The model the fixture's checkpoint of `step` holds.
fn checkpoint_model(step: u64) -> Model {
    Model::initialized(
        &ModelKind::Simple.architecture(10),
        common::image::ImageShape { channels: 1, height: 16, width: 16 },
        step + 1,
    )
    .unwrap()
}

struct Fixture {
    dir: ScratchDir,
    config_path: PathBuf,
    layout: RunLayout,
}

impl Fixture {
    /// A config, a probe of 6 images and checkpoints at steps 0 and 10.
    fn new(name: &str) -> Fixture {
        let dir = ScratchDir::new(&format!("explainer-stage-{name}"));
        let fixture = Fixture { config_path: dir.join("pipeline.toml"), layout: RunLayout::new(&dir.join("runs"), "a"), dir };
        fixture.write_config(CONFIG);
        let config = fixture.config();
        let dataset = load_dataset(&config.datasets["synth"]).unwrap();
        let entries = (0..6)
            .map(|i| {
                let (split, set) = if i < 3 { (Split::Seen, &dataset.train) } else { (Split::Unseen, &dataset.test) };
                let source_index = 2 * i + 1;
                ProbeEntry { probe_id: 100 + i as i64, split, source_index, label: set.labels[source_index] }
            })
            .collect();
        write_probe(&fixture.layout.probe(), &Probe { entries }).unwrap();
        let pipeline = common::config::Pipeline::load(&fixture.config_path).unwrap();
        let run_fp = run_fingerprint(&pipeline.config, pipeline.instances(&[]).unwrap()[0]);
        let mut rows = Vec::new();
        for step in [0u64, 10] {
            let model = checkpoint_model(step);
            let info = CheckpointInfo {
                run: "a".into(),
                step,
                epoch: step as f64 / 20.0,
                dataset: "synth".into(),
                fingerprint: checkpoint_fingerprint(&run_fp, step),
            };
            write_checkpoint(&fixture.layout.checkpoint(step), &model, &info).unwrap();
            rows.push(MetricsRow::uniform(step, info.epoch, 2.0, 0.1));
        }
        // The trainer's record of the run: the explainer takes its units from it.
        write_parquet_stamped(&fixture.layout.metrics(), &mut metrics_frame(&rows), Stamp::new(run_fp)).unwrap();
        fixture
    }

    fn write_config(&self, text: &str) {
        let output = self.dir.join("runs");
        std::fs::write(&self.config_path, text.replace("OUTPUT", output.to_str().unwrap())).unwrap();
    }

    fn config(&self) -> PipelineConfig {
        PipelineConfig::load(&self.config_path).unwrap()
    }

    fn cli(&self, extra: &[&str]) -> Cli {
        let mut args = vec!["explainer", "--config", self.config_path.to_str().unwrap(), "--shard", "0/1"];
        args.extend_from_slice(extra);
        Cli::try_parse_from(args).unwrap()
    }

    fn fingerprint(&self, method: &str, step: u64) -> String {
        read_attributions(&self.layout.attribution(method, step)).unwrap().fingerprint
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn explains_every_unit_then_skips_and_redoes_only_what_changed() {
    let f = Fixture::new("cycle");
    let report = run(&f.cli(&[])).unwrap();
    assert_eq!((report.done, report.skipped, report.failed.len()), (6, 0, 0), "{:?}", report.failed);

    for step in [0u64, 10] {
        let model = checkpoint_model(step);
        for (method, side) in [("lrp", 16), ("egb", 16), ("cam", 8)] {
            let a = read_attributions(&f.layout.attribution(method, step)).unwrap();
            assert_eq!((a.run.as_str(), a.method.as_str(), a.step), ("a", method, step));
            assert_eq!((a.len(), a.height, a.width), (6, side, side), "{method}");
            assert_eq!(a.probe_id, (100..106).collect::<Vec<i64>>());
            assert_eq!(a.target, a.prediction, "explains the predicted class");
            assert!(a.maps.iter().all(|v| v.is_finite()) && a.maps.iter().any(|&v| v != 0.0));
            assert_eq!(a.epoch, step as f64 / 20.0);
            // The explained logit is the model's on the probe image.
            let config = f.config();
            let dataset = load_dataset(&config.datasets["synth"]).unwrap();
            let probe = common::artifacts::read_probe(&f.layout.probe()).unwrap();
            let images = probe.images(&dataset).unwrap();
            let x = config.datasets["synth"].normalization(1).batch(&images, &(0..6).collect::<Vec<_>>());
            let logits = model.forward(&x).unwrap();
            for i in 0..6 {
                let row = &logits[i * 10..(i + 1) * 10];
                assert_eq!(a.prediction[i], argmax(row) as i64);
                assert_eq!(a.logit[i], row[a.target[i] as usize]);
            }
        }
    }

    let again = run(&f.cli(&[])).unwrap();
    assert_eq!((again.done, again.skipped, again.failed.len()), (0, 6, 0));

    let before: Vec<String> = ["egb", "lrp"].iter().flat_map(|m| [0, 10].map(|s| f.fingerprint(m, s))).collect();
    let cam_before = f.fingerprint("cam", 0);
    f.write_config(&CONFIG.replace("kind = \"gradcam\"", "kind = \"gradcam\"\nrelu = true"));
    let dry = run(&f.cli(&["--dry-run"])).unwrap();
    assert_eq!((dry.done, dry.skipped), (0, 4));
    assert_eq!(f.fingerprint("cam", 0), cam_before, "a dry run writes nothing");

    let changed = run(&f.cli(&[])).unwrap();
    assert_eq!((changed.done, changed.skipped, changed.failed.len()), (2, 4, 0));
    assert_ne!(f.fingerprint("cam", 0), cam_before);
    let after: Vec<String> = ["egb", "lrp"].iter().flat_map(|m| [0, 10].map(|s| f.fingerprint(m, s))).collect();
    assert_eq!(before, after, "other methods untouched");

    let only = run(&f.cli(&["--method", "lrp", "--force"])).unwrap();
    assert_eq!((only.done, only.skipped), (2, 0));
    assert!(run(&f.cli(&["--method", "nope"])).unwrap_err().to_string().contains("no method `nope`"));
}

#[test]
fn shards_split_the_units_and_write_the_same_bytes() {
    let f = Fixture::new("shards");
    let whole = run(&f.cli(&[])).unwrap();
    assert_eq!(whole.done, 6);
    let bytes = |f: &Fixture| -> Vec<Vec<u8>> {
        ["cam", "egb", "lrp"]
            .iter()
            .flat_map(|m| [0u64, 10].map(|s| std::fs::read(f.layout.attribution(m, s)).unwrap()))
            .collect()
    };
    let expected = bytes(&f);
    std::fs::remove_dir_all(f.layout.dir.join("attributions")).unwrap();
    let mut done = 0;
    for index in 0..4 {
        let shard = format!("{index}/4");
        let args = vec!["explainer", "--config", f.config_path.to_str().unwrap(), "--shard", &shard];
        let report = run(&Cli::try_parse_from(args).unwrap()).unwrap();
        assert!(report.failed.is_empty());
        done += report.done;
    }
    assert_eq!(done, 6, "every unit in exactly one shard");
    assert_eq!(bytes(&f), expected);
}

#[test]
fn a_truncated_checkpoint_fails_its_units_by_name_and_the_others_still_run() {
    let f = Fixture::new("corrupt");
    let path = f.layout.checkpoint(10);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let report = run(&f.cli(&[])).unwrap();
    assert_eq!(report.done, 3, "step 0 of every method");
    assert_eq!(report.failed.len(), 3, "{:?}", report.failed);
    for message in &report.failed {
        assert!(message.contains("step-000010.safetensors"), "{message}");
    }
    assert!(!f.layout.attribution("lrp", 10).exists());

    // A header that is cut short fails at the fingerprint check already.
    std::fs::write(&path, &bytes[..5]).unwrap();
    let report = run(&f.cli(&[])).unwrap();
    assert_eq!((report.done, report.skipped, report.failed.len()), (0, 3, 3));
    assert!(report.failed[0].contains(&path.display().to_string()), "{}", report.failed[0]);
}

#[test]
fn bad_settings_and_missing_inputs_are_clear_errors() {
    let f = Fixture::new("errors");
    f.write_config(&CONFIG.replace("[methods.cam]\nkind = \"gradcam\"", "[methods.cam]\nkind = \"gradcam\"\nlayer = \"fc1\""));
    // A layer the model lacks stops the stage at start-up, before any unit.
    let err = run(&f.cli(&["--method", "cam"])).unwrap_err().to_string();
    assert!(err.contains("`methods.cam.layer`: `fc1` is not a conv or ReLU layer") && err.contains("features_conv.3"), "{err}");

    f.write_config(CONFIG);
    std::fs::remove_file(f.layout.probe()).unwrap();
    let report = run(&f.cli(&["--method", "lrp"])).unwrap();
    assert_eq!(report.failed.len(), 2);
    assert!(report.failed[0].contains("probe.parquet"), "{}", report.failed[0]);

    let missing = Cli::try_parse_from(["explainer", "--config", "/nonexistent/pipeline.toml"]).unwrap();
    assert!(run(&missing).unwrap_err().to_string().contains("/nonexistent/pipeline.toml"));
}

#[test]
fn the_command_line_parses_and_documents_itself() {
    use clap::CommandFactory;
    Cli::command().debug_assert();
    let cli = Cli::try_parse_from([
        "explainer",
        "--config",
        "p.toml",
        "--run",
        "a",
        "--method",
        "lrp",
        "--method",
        "cam",
        "--shard",
        "1/3",
        "--force",
        "--dry-run",
    ])
    .unwrap();
    assert_eq!(cli.method_filter.methods, vec!["lrp", "cam"]);
    assert_eq!(cli.stage.runs, vec!["a"]);
    assert_eq!(cli.stage.shard, Some(Shard { index: 1, count: 3 }));
    assert!(cli.stage.force && cli.stage.dry_run);
    assert_eq!(cli.stage.config, Path::new("p.toml"));
    let help = Cli::command().render_long_help().to_string();
    assert!(help.contains("--method") && help.contains("(run, method, step)"), "{help}");
    let _: Option<StageArgs> = None;
}
