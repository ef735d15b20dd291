//! "Up to date" means verified: inputs that lie, caches that were
//! tampered with, and runs that diverge, each against the four binaries on
//! the smoke config. Every stage run here must end with an exit code of
//! its own: `Scratch::stage` fails the test on a panic or an abort.

use std::path::{Path, PathBuf};

use common::artifacts::tables::metrics::{metrics_frame, read_metrics};
use common::artifacts::{
    read_attributions, read_stamp, read_tensors, write_attributions, write_parquet_stamped, write_tensors, Stamp,
};
use pipeline_tests::{assert_same_files, run_pipeline, snapshot, Scratch, STAGES};
use polars::prelude::{Column, DataFrame};

fn path(s: &Scratch, relative: &str) -> PathBuf {
    s.out().join(relative)
}

/// Rewrites a safetensors file through `edit` (its content hash is
/// recomputed on writing: the file stays valid, only its content lies).
fn rewrite(file: &Path, edit: impl FnOnce(&mut common::artifacts::TensorFile)) {
    let mut tensors = read_tensors(file).unwrap();
    edit(&mut tensors);
    write_tensors(file, &tensors).unwrap();
}

/// A table rewritten as a buggy writer would: with a valid stamp of the
/// same fingerprint, so that only its content is at fault.
fn restamp_table(file: &Path, frame: &mut DataFrame) {
    let stamp = read_stamp(file).unwrap();
    write_parquet_stamped(file, frame, Stamp { content: String::new(), ..stamp }).unwrap();
}

/// 1. Summaries of an earlier training are never analysed against new
/// metrics, and the analysis is not "up to date" while they are stale.
#[test]
fn stale_summaries_are_refused_against_new_metrics() {
    let s = Scratch::new("integrity-stale");
    run_pipeline(&s);
    s.edit_config("seed = 1", "seed = 5");
    s.ok("trainer", &[]);
    let err = s.fails("analyzer", &[]);
    assert!(err.contains("simple/summaries/lrp.parquet: stale"), "{err}");
    let report = std::fs::read_to_string(path(&s, "analysis/report.md")).unwrap();
    assert!(report.contains("Left out of this analysis") && report.contains("simple/summaries/lrp.parquet"), "{report}");
    let err = s.fails("analyzer", &[]);
    assert!(!err.contains("up to date") || err.contains("0 up to date"), "{err}");
    // The explainer and summarizer bring everything back to current.
    for stage in ["explainer", "summarizer", "analyzer"] {
        s.ok(stage, &[]);
    }
    assert!(s.ok("analyzer", &[]).contains("nothing to do"));
}

/// 2. A file altered after it was written is never "up to date": each
/// stage redoes what it owns, and the tree ends as an untouched run's.
#[test]
fn poisoned_truncated_and_garbage_files_are_redone() {
    let reference = Scratch::new("integrity-reference");
    run_pipeline(&reference);
    let s = Scratch::new("integrity-poisoned");
    run_pipeline(&s);

    // NaN into a weight, the file otherwise intact (same size, old hash).
    let checkpoint = path(&s, "simple/checkpoints/step-000004.safetensors");
    let mut bytes = std::fs::read(&checkpoint).unwrap();
    let last = bytes.len() - 4;
    bytes[last..].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&checkpoint, &bytes).unwrap();
    let err = s.fails("explainer", &["--force", "--run", "simple"]);
    assert!(err.contains("step-000004.safetensors") && err.contains("does not match the content hash"), "{err}");
    let dry = s.ok("trainer", &["--dry-run"]);
    assert!(dry.contains("run `simple`: would train") && dry.contains("does not match the content hash"), "{dry}");

    // Garbage in the other stages' outputs, and a broken probe table.
    std::fs::write(path(&s, "complex/checkpoints/step-000008.safetensors"), b"garbage").unwrap();
    std::fs::write(path(&s, "simple/attributions/gradcam/step-000012.safetensors"), b"garbage").unwrap();
    let summary = path(&s, "complex/summaries/lrp.parquet");
    let mut table = std::fs::read(&summary).unwrap();
    let middle = table.len() / 2;
    table[middle] ^= 0x55;
    std::fs::write(&summary, &table).unwrap();
    let probe = path(&s, "complex/probe.parquet");
    let length = std::fs::metadata(&probe).unwrap().len();
    std::fs::write(&probe, &std::fs::read(&probe).unwrap()[..length as usize / 2]).unwrap();
    std::fs::write(path(&s, "analysis/by_step.parquet"), b"PAR1 garbage").unwrap();

    for stage in STAGES {
        let log = s.ok(stage, &[]);
        assert!(!log.contains("nothing to do"), "{stage} called tampered files up to date:\n{log}");
    }
    assert_same_files(&snapshot(&reference.out()), &snapshot(&s.out()));
    for stage in STAGES {
        assert!(s.ok(stage, &[]).contains("nothing to do"), "{stage} is not settled");
    }
}

/// 3. A checkpoint file is checked against its name and the config: one
/// copied over another fails its units by name, a stray step is ignored.
#[test]
fn copied_and_stray_checkpoints_are_named_or_ignored() {
    let s = Scratch::new("integrity-identity");
    run_pipeline(&s);
    let before = std::fs::read(path(&s, "simple/attributions/lrp/step-000004.safetensors")).unwrap();
    let six = path(&s, "simple/checkpoints/step-000006.safetensors");
    std::fs::copy(&six, path(&s, "simple/checkpoints/step-000004.safetensors")).unwrap();
    std::fs::copy(&six, path(&s, "simple/checkpoints/step-000005.safetensors")).unwrap();
    let err = s.fails("explainer", &["--force"]);
    assert!(err.contains("step-000004.safetensors: its metadata says step 6 but it is the checkpoint of step 4"), "{err}");
    assert!(err.contains("ignoring checkpoint file(s) its metrics table does not list: step-000005"), "{err}");
    assert!(!path(&s, "simple/attributions/lrp/step-000005.safetensors").exists(), "a stray step was explained");
    assert_eq!(std::fs::read(path(&s, "simple/attributions/lrp/step-000004.safetensors")).unwrap(), before);
    let dry = s.ok("trainer", &["--dry-run"]);
    assert!(dry.contains("says step 6 but it is the checkpoint of step 4"), "{dry}");
}

/// 4. Sizes in a header are checked against the config's model before
/// anything is allocated; the rest of the shard still runs.
#[test]
fn an_implausible_header_is_a_named_error_not_an_abort() {
    let s = Scratch::new("integrity-header");
    run_pipeline(&s);
    let checkpoint = path(&s, "simple/checkpoints/step-000004.safetensors");
    rewrite(&checkpoint, |f| {
        f.metadata.insert("input_shape".into(), "1x60000x60000".into());
    });
    let err = s.fails("explainer", &["--force"]);
    assert!(
        err.contains("step-000004.safetensors: it holds model `simple` on 1x60000x60000 images, 10 classes, the config asks for model `simple` on 1x28x28"),
        "{err}"
    );
    assert!(err.contains("3 unit(s) failed"), "{err}");
}

/// 5. Empty data sets are named errors before anything is written.
#[test]
fn empty_data_sets_are_named_errors() {
    let s = Scratch::with_config(
        "integrity-empty",
        &pipeline_tests::smoke_config()
            .replace(
                "kind = \"synthetic\"\nshape = \"1x28x28\"\ntrain_size = 400\ntest_size = 200\nseed = 7",
                "kind = \"idx\"\npath = \"idx\"",
            )
            .replace("\nseen_per_class = 2", "\nseen_per_class = 0"),
    );
    let idx = |magic: u32, dims: &[u32]| {
        let mut bytes = magic.to_be_bytes().to_vec();
        dims.iter().for_each(|d| bytes.extend_from_slice(&d.to_be_bytes()));
        bytes
    };
    std::fs::create_dir_all(s.dir.join("idx")).unwrap();
    for (name, bytes) in [
        ("train-images-idx3-ubyte", idx(0x803, &[0, 28, 28])),
        ("train-labels-idx1-ubyte", idx(0x801, &[0])),
        ("t10k-images-idx3-ubyte", idx(0x803, &[1, 28, 28])),
        ("t10k-labels-idx1-ubyte", idx(0x801, &[1])),
    ] {
        let mut bytes = bytes;
        if name.starts_with("t10k-images") {
            bytes.extend_from_slice(&[0; 784]);
        } else if name.starts_with("t10k-labels") {
            bytes.push(3);
        }
        std::fs::write(s.dir.join("idx").join(name), bytes).unwrap();
    }
    let err = s.fails("trainer", &[]);
    assert!(err.contains("data set `synth`: its training set has no images"), "{err}");
    assert!(!path(&s, "simple/probe.parquet").exists(), "a probe table was written for an empty data set");
}

/// 6. A run whose loss or weights leave the finite range is stopped with
/// an error naming the step; the checkpoints before it are kept and the
/// report says it diverged.
#[test]
fn divergence_stops_the_run_and_the_report_says_so() {
    let s = Scratch::new("integrity-diverged");
    s.edit_config("seed = 1", "seed = 1\nlearning_rate = 1e30");
    let err = s.fails("trainer", &["--run", "simple"]);
    assert!(err.contains("run `simple`: diverged at step"), "{err}");
    assert!(path(&s, "simple/checkpoints/step-000000.safetensors").is_file(), "the untrained checkpoint is kept");
    let rows = read_metrics(&path(&s, "simple/metrics.parquet")).unwrap();
    assert!(rows.iter().all(|r| r.train_loss.is_finite() && r.test_loss.is_finite()), "NaN rows recorded");
    // Not retrained, and still an error.
    let err = s.fails("trainer", &["--run", "simple"]);
    assert!(err.contains("diverged at step"), "{err}");
    for stage in ["explainer", "summarizer"] {
        s.ok(stage, &["--run", "simple"]);
    }
    s.ok("analyzer", &["--run", "simple", "--no-figures"]);
    let report = std::fs::read_to_string(path(&s, "analysis/report.md")).unwrap();
    assert!(report.contains("diverged at step"), "{report}");

    let s = Scratch::new("integrity-huge-loss");
    s.edit_config("seed = 1", "seed = 1\nlearning_rate = 1e6");
    let err = s.fails("trainer", &["--run", "simple"]);
    assert!(err.contains("diverged at step"), "{err}");
}

/// 7. Tables are read by their typed schema: a wrong type, no rows or a
/// repeated key is a named error, never an all-null column.
#[test]
fn wrong_typed_empty_and_duplicated_tables_are_named_errors() {
    let s = Scratch::new("integrity-tables");
    run_pipeline(&s);
    let metrics = path(&s, "simple/metrics.parquet");
    let rows = read_metrics(&metrics).unwrap();
    let mut frame = metrics_frame(&rows);
    let text: Vec<String> = rows.iter().map(|r| r.test_loss.to_string()).collect();
    frame.replace("test_loss", Column::new("test_loss".into(), text).as_materialized_series().clone()).unwrap();
    restamp_table(&metrics, &mut frame);
    let err = s.fails("analyzer", &[]);
    assert!(err.contains("simple/metrics.parquet: not a metrics table: column `test_loss` is str, expected f64"), "{err}");

    restamp_table(&metrics, &mut metrics_frame(&[]));
    assert!(s.fails("analyzer", &[]).contains("simple/metrics.parquet: not a metrics table: it has no rows"));

    let mut doubled = rows.clone();
    doubled.push(rows[1].clone());
    doubled.sort_by_key(|r| r.step);
    restamp_table(&metrics, &mut metrics_frame(&doubled));
    assert!(s.fails("analyzer", &[]).contains("appears twice"));
}

/// 8. The summarizer checks every attribution file against the probe set
/// and the number of classes.
#[test]
fn attribution_files_that_do_not_fit_the_probe_set_are_named_errors() {
    let s = Scratch::new("integrity-maps");
    run_pipeline(&s);
    let file = path(&s, "simple/attributions/lrp/step-000004.safetensors");
    let good = read_attributions(&file).unwrap();
    let plane = good.height * good.width;
    let cases: Vec<(&str, Box<dyn Fn(&mut common::artifacts::Attributions)>)> = vec![
        (
            "it holds 39 map(s) but the probe set has 40",
            Box::new(move |a| {
                a.maps.truncate(39 * plane);
                for v in [&mut a.probe_id, &mut a.target, &mut a.prediction] {
                    v.truncate(39);
                }
                a.logit.truncate(39);
            }),
        ),
        ("map 1 is of probe_id 0", Box::new(|a| a.probe_id[1] = 0)),
        ("map 0: target 57 is not a class", Box::new(|a| a.target[0] = 57)),
        ("map 2: prediction -3 is not a class", Box::new(|a| a.prediction[2] = -3)),
        ("holds NaN or infinite values", Box::new(|a| a.maps[5] = f32::NAN)),
    ];
    for (expected, edit) in cases {
        let mut a = good.clone();
        edit(&mut a);
        write_attributions(&file, &a).unwrap();
        let err = s.fails("summarizer", &["--run", "simple", "--method", "lrp"]);
        assert!(err.contains("step-000004.safetensors") && err.contains(expected), "{expected}: {err}");
    }
}

/// 9. The small ones: every stage refuses the bad setting at start-up with
/// the key, and flags and file errors read as sentences.
#[test]
fn small_bad_inputs_are_clear_errors() {
    let s = Scratch::new("integrity-small");
    let config = std::fs::read_to_string(&s.config).unwrap();
    let cases = [
        ("a run named analysis", config.replace("[runs.simple]", "[runs.analysis]"), "`runs.analysis`: `analysis` is the analyzer's"),
        ("NaN mean", config.replace("seed = 7", "seed = 7\nmean = [nan]"), "`datasets.synth.mean`"),
        ("infinite std", config.replace("seed = 7", "seed = 7\nstd = [inf]"), "`datasets.synth.std`"),
        (
            "alpha = beta = 0",
            config.replace(
                "composite = \"paper\"",
                "composite = { first = { rule = \"z-box\" }, conv = { rule = \"alpha-beta\", alpha = 0.0, beta = 0.0 }, dense = { rule = \"zero\" } }",
            ),
            "`methods.lrp.composite.conv`: rule `alpha-beta`",
        ),
        (
            "a misspelt composite",
            config.replace("composite = \"paper\"", "composite = \"papr\""),
            "unknown composite `papr`; use \"paper\", \"epsilon-gamma-box\"",
        ),
        ("a negative gamma", config.replace("composite = \"paper\"", "composite = { first = { rule = \"z-box\" }, conv = { rule = \"gamma\", gamma = -1.0 }, dense = { rule = \"zero\" } }"), "`methods.lrp.composite.conv`: rule `gamma`"),
    ];
    for (name, text, expected) in cases {
        std::fs::write(&s.config, text).unwrap();
        for stage in STAGES {
            let out = s.stage(stage, &[]);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{name}: {stage} did not refuse the config: {err}");
            assert!(err.contains(expected), "{name}: {stage}: {err}");
        }
    }
    std::fs::write(&s.config, &config).unwrap();
    let out = s.stage("trainer", &["--shard", "-1/2"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("`-1` in `-1/2` is not a number"), "{err}");

    s.ok("trainer", &["--run", "simple"]);
    let checkpoint = path(&s, "simple/checkpoints/step-000004.safetensors");
    let bytes = std::fs::read(&checkpoint).unwrap();
    std::fs::write(&checkpoint, &bytes[..bytes.len() - 10]).unwrap();
    let dry = s.ok("trainer", &["--dry-run"]);
    assert!(dry.contains("step-000004.safetensors") && !dry.contains("MetadataIncompleteBuffer"), "{dry}");
    let err = read_tensors(&checkpoint).unwrap_err().to_string();
    assert!(err.contains("its tensor data is cut short") && !err.contains("MetadataIncompleteBuffer"), "{err}");
}

/// Truncations and flipped bytes of real artifacts through the readers: a
/// named error or a correct read, never a panic; a few thousand inputs.
/// Tables are damaged beside their stamp, as on disk: the stamp's content
/// hash stops them before the Parquet parser sees them.
#[test]
fn readers_survive_truncations_and_byte_flips() {
    let s = Scratch::new("integrity-fuzz");
    run_pipeline(&s);
    let started = std::time::Instant::now();
    let mut rng = common::rng::Rng::new(20261201);
    let mut inputs = 0;
    let files = [
        ("simple/checkpoints/step-000004.safetensors", true),
        ("simple/attributions/lrp/step-000004.safetensors", true),
        ("simple/metrics.parquet", false),
        ("simple/probe.parquet", false),
        ("complex/summaries/gradcam.parquet", false),
        ("analysis/correlations.parquet", false),
    ];
    let scratch = s.dir.join("fuzz");
    std::fs::create_dir_all(&scratch).unwrap();
    for (relative, tensors) in files {
        let original = std::fs::read(path(&s, relative)).unwrap();
        let target = scratch.join(Path::new(relative).file_name().unwrap());
        if !tensors {
            let stamp = common::artifacts::stamp_path(&path(&s, relative));
            std::fs::copy(&stamp, common::artifacts::stamp_path(&target)).unwrap();
        }
        for trial in 0..600 {
            let mut bytes = original.clone();
            if trial % 3 == 0 {
                bytes.truncate(rng.below(original.len()));
            } else {
                for _ in 0..1 + rng.below(4) {
                    let at = rng.below(bytes.len());
                    bytes[at] ^= 1 << rng.below(8);
                }
            }
            std::fs::write(&target, &bytes).unwrap();
            let read_ok = if tensors {
                let _ = common::artifacts::read_metadata(&target);
                let _ = common::artifacts::read_verified_metadata(&target);
                read_tensors(&target).is_ok()
            } else {
                let _ = common::artifacts::tables::probe::read_probe(&target);
                let _ = common::artifacts::tables::summaries::read_summaries(&target, &common::measures::Measure::ALL);
                let _ = common::artifacts::tables::correlations::read_correlations(&target);
                read_metrics(&target).is_ok()
            };
            // A changed byte of tensor data can only read if it was not one
            // (the content hash covers all of it).
            let _ = read_ok;
            inputs += 1;
        }
    }
    assert!(inputs >= 3000, "{inputs} inputs");
    assert!(started.elapsed().as_secs() < 120, "the readers took {:?}", started.elapsed());
}
