//! The four stage binaries together on the smoke config: outputs, caching,
//! partial reruns, sharding, kill -9 and corrupt inputs.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::artifacts::read_parquet;
use pipeline_tests::{assert_same_files, modification_times, run_pipeline, snapshot, Scratch, STAGES};
use polars::prelude::*;

const METHODS: [&str; 3] = ["gradcam", "lrp", "lrp-egb"];

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn smoke_pipeline_writes_every_artifact_and_a_rerun_does_nothing() {
    let s = Scratch::new("pipe-basic");
    run_pipeline(&s);
    let out = s.out();
    for run in ["simple", "complex"] {
        let steps: Vec<PathBuf> =
            std::fs::read_dir(out.join(run).join("checkpoints")).unwrap().map(|e| e.unwrap().path()).collect();
        for method in METHODS {
            for ckpt in &steps {
                let attribution = out.join(run).join("attributions").join(method).join(ckpt.file_name().unwrap());
                assert!(attribution.is_file(), "{} missing", attribution.display());
            }
            assert!(out.join(run).join("summaries").join(format!("{method}.parquet")).is_file());
        }
    }
    for f in ["analysis/correlations.parquet", "analysis/by_step.parquet", "analysis/report.md"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let pngs = std::fs::read_dir(out.join("analysis/figures"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().unwrap() == "png")
        .count();
    assert!(pngs >= 2 * METHODS.len(), "{pngs} figures");

    let summary = read_parquet(&out.join("simple/summaries/lrp.parquet")).unwrap();
    for column in [
        "step",
        "epoch",
        "probe_id",
        "split",
        "label",
        "target",
        "correct",
        "logit",
        "frobenius",
        "entropy_abs",
        "frobenius_per_logit",
    ] {
        assert!(summary.column(column).is_ok(), "summaries lack `{column}`");
    }
    let correlations = read_parquet(&out.join("analysis/correlations.parquet")).unwrap();
    let names: Vec<String> = correlations.get_column_names().iter().map(|s| s.to_string()).collect();
    assert_eq!(
        names,
        [
            "run",
            "seed",
            "method",
            "split",
            "measure",
            "metric",
            "aggregate",
            "grid",
            "statistic",
            "rho",
            "p_value",
            "p_robust",
            "n",
            "n_eff",
            "ci_low",
            "ci_high",
            "q_value"
        ]
    );

    let bytes = snapshot(&out);
    let times = modification_times(&out);
    for stage in STAGES {
        let log = s.ok(stage, &[]);
        assert!(log.contains("nothing to do") || log.contains("up to date"), "{stage} did work on a rerun:\n{log}");
    }
    assert_same_files(&bytes, &snapshot(&out));
    assert_eq!(times, modification_times(&out), "a rerun touched files");
}

fn correlation_rows_without(path: &Path, method: &str) -> DataFrame {
    let df = read_parquet(path).unwrap();
    let keep = df.column("method").unwrap().str().unwrap().into_iter().map(|m| m != Some(method)).collect::<BooleanChunked>();
    df.filter(&keep).unwrap()
}

#[test]
fn changing_one_method_redoes_only_that_method() {
    let s = Scratch::new("pipe-partial");
    run_pipeline(&s);
    let out = s.out();
    let bytes = snapshot(&out);
    let times = modification_times(&out);
    let correlations = out.join("analysis/correlations.parquet");
    let others_before = correlation_rows_without(&correlations, "gradcam");

    let config = std::fs::read_to_string(&s.config).unwrap();
    let changed = config.replace("kind = \"gradcam\"\nupsample = true", "kind = \"gradcam\"\nupsample = true\nrelu = true");
    assert_ne!(config, changed, "the smoke config's gradcam section changed shape");
    std::fs::write(&s.config, changed).unwrap();
    run_pipeline(&s);

    let after = snapshot(&out);
    let times_after = modification_times(&out);
    let mut rewritten = 0;
    for (path, old) in &bytes {
        let text = path.to_string_lossy();
        let is_gradcam = text.contains("attributions/gradcam/") || text.contains("summaries/gradcam.parquet");
        if text.starts_with("analysis") {
            continue;
        }
        if is_gradcam {
            rewritten += 1;
            assert!(times_after[path] != times[path], "{text} was not redone");
        } else {
            assert_eq!(&after[path], old, "{text} changed");
            assert_eq!(times_after[path], times[path], "{text} was rewritten");
        }
    }
    assert!(rewritten > 0);
    assert!(
        correlation_rows_without(&correlations, "gradcam").equals_missing(&others_before),
        "other methods' analysis rows changed"
    );
}

#[test]
fn sharded_stages_in_parallel_give_the_bytes_of_one_process() {
    let whole = Scratch::new("pipe-whole");
    run_pipeline(&whole);
    let sharded = Scratch::new("pipe-sharded");
    for stage in STAGES {
        let children: Vec<_> = (0..3)
            .map(|i| {
                sharded
                    .command(stage, &[])
                    .env("SLURM_ARRAY_TASK_ID", i.to_string())
                    .env("SLURM_ARRAY_TASK_COUNT", "3")
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for mut child in children {
            assert!(child.wait().unwrap().success(), "a shard of {stage} failed");
        }
    }
    assert_same_files(&snapshot(&whole.out()), &snapshot(&sharded.out()));
}

#[test]
fn kill_9_at_random_moments_then_rerun_gives_complete_identical_results() {
    let reference = Scratch::new("pipe-reference");
    run_pipeline(&reference);
    let killed = Scratch::new("pipe-killed");
    let mut rng = common::rng::Rng::new(20261126);
    for stage in STAGES {
        for _ in 0..3 {
            let mut child = killed.command(stage, &[]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
            std::thread::sleep(Duration::from_millis(20 + rng.below(600) as u64));
            let _ = child.kill();
            child.wait().unwrap();
        }
        killed.ok(stage, &[]);
    }
    let after = snapshot(&killed.out());
    let temporaries: Vec<&PathBuf> = after.keys().filter(|p| p.to_string_lossy().contains(".tmp")).collect();
    assert!(temporaries.is_empty(), "temporary files left: {temporaries:?}");
    assert_same_files(&snapshot(&reference.out()), &after);
}

#[test]
fn two_processes_on_the_same_outputs_do_not_corrupt_them() {
    let reference = Scratch::new("pipe-alone");
    run_pipeline(&reference);
    let twice = Scratch::new("pipe-twice");
    for stage in STAGES {
        let children: Vec<_> = (0..2).map(|_| twice.command(stage, &[]).stderr(Stdio::null()).spawn().unwrap()).collect();
        for mut child in children {
            assert!(child.wait().unwrap().success(), "{stage} failed beside a twin");
        }
    }
    assert_same_files(&snapshot(&reference.out()), &snapshot(&twice.out()));
}

#[test]
fn corrupt_inputs_are_named_errors_and_the_other_units_still_complete() {
    let s = Scratch::new("pipe-corrupt");
    s.ok("trainer", &[]);
    let checkpoint = s.out().join("simple/checkpoints/step-000004.safetensors");
    let bytes = std::fs::read(&checkpoint).unwrap();
    std::fs::write(&checkpoint, &bytes[..bytes.len() / 3]).unwrap();
    let out = s.stage("explainer", &[]);
    let err = stderr_of(&out);
    assert!(!out.status.success(), "explainer succeeded on a truncated checkpoint");
    assert!(err.contains("step-000004.safetensors") && !err.contains("panicked"), "{err}");
    assert!(s.out().join("simple/attributions/lrp/step-000008.safetensors").is_file(), "other units were not done");
    assert!(s.out().join("complex/attributions/gradcam/step-000004.safetensors").is_file(), "other runs were not done");

    let attribution = s.out().join("complex/attributions/lrp/step-000004.safetensors");
    std::fs::write(&attribution, b"not a safetensors file").unwrap();
    let out = s.stage("summarizer", &[]);
    let err = stderr_of(&out);
    assert!(!out.status.success() && err.contains("complex/attributions/lrp/step-000004.safetensors"), "{err}");
    assert!(s.out().join("complex/summaries/gradcam.parquet").is_file(), "other units were not done");

    let probe = s.out().join("complex/probe.parquet");
    std::fs::write(&probe, b"PAR1 garbage").unwrap();
    let out = s.stage("explainer", &["--run", "complex", "--force"]);
    let err = stderr_of(&out);
    assert!(!out.status.success() && err.contains("complex/probe.parquet") && !err.contains("panicked"), "{err}");

    let bad_data = Scratch::with_config(
        "pipe-bad-idx",
        &pipeline_tests::smoke_config().replace(
            "kind = \"synthetic\"\nshape = \"1x28x28\"\ntrain_size = 400\ntest_size = 200\nseed = 7",
            "kind = \"idx\"\npath = \"idx\"",
        ),
    );
    std::fs::create_dir_all(bad_data.dir.join("idx")).unwrap();
    for name in ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"] {
        std::fs::write(bad_data.dir.join("idx").join(name), [0u8, 0, 8, 3, 0, 0]).unwrap();
    }
    let out = bad_data.stage("trainer", &[]);
    let err = stderr_of(&out);
    assert!(!out.status.success() && err.contains("train-images-idx3-ubyte") && err.contains("truncated"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    std::fs::write(&s.config, "[datasets.x]\nkind = \"synthetic\"\n[runs.a]\ndataset = \"x\"\nmodel = \"simple\"\n").unwrap();
    for stage in STAGES {
        let out = s.stage(stage, &[]);
        let err = stderr_of(&out);
        assert!(
            !out.status.success() && err.contains("pipeline.toml") && err.contains("`runs.a.epochs`: required"),
            "{stage}: {err}"
        );
    }
}

#[test]
fn a_run_with_seeds_gives_one_instance_per_seed_and_a_summary_across_them() {
    let config = pipeline_tests::smoke_config();
    assert!(config.contains("seed = 1\n"), "the smoke config's simple run has `seed = 1`");
    let s = Scratch::with_config("pipe-seeds", &config.replacen("seed = 1\n", "seeds = [1, 3]\n", 1));
    run_pipeline(&s);
    let out = s.out();
    assert!(!out.join("simple/metrics.parquet").exists(), "a replicated run has no top-level instance");
    let instance = |seed: u64| out.join(format!("simple/seed-{seed}"));
    for seed in [1, 3] {
        for file in ["metrics.parquet", "probe.parquet", "summaries/lrp.parquet"] {
            assert!(instance(seed).join(file).is_file(), "seed {seed}: {file} missing");
        }
    }
    // The seed changes the initialisation and the batch order, not the probe set.
    let read = |seed: u64, file: &str| std::fs::read(instance(seed).join(file)).unwrap();
    assert_eq!(read(1, "probe.parquet"), read(3, "probe.parquet"), "the seeds' probe sets differ");
    assert_ne!(read(1, "metrics.parquet"), read(3, "metrics.parquet"), "two seeds trained alike");

    let correlations = read_parquet(&out.join("analysis/correlations.parquet")).unwrap();
    let runs: Vec<&str> = correlations.column("run").unwrap().str().unwrap().into_iter().map(Option::unwrap).collect();
    let seeds: Vec<i64> = correlations.column("seed").unwrap().i64().unwrap().into_iter().map(Option::unwrap).collect();
    let mut pairs: Vec<(&str, i64)> = runs.iter().copied().zip(seeds.iter().copied()).collect();
    pairs.sort();
    pairs.dedup();
    assert_eq!(pairs, [("complex", 2), ("simple", 1), ("simple", 3)]);

    let across = read_parquet(&out.join("analysis/across_seeds.parquet")).unwrap();
    let names: Vec<String> = across.get_column_names().iter().map(|s| s.to_string()).collect();
    assert_eq!(
        names,
        [
            "run",
            "method",
            "split",
            "measure",
            "metric",
            "aggregate",
            "grid",
            "statistic",
            "seeds",
            "rho_mean",
            "rho_sd",
            "rho_ci_low",
            "rho_ci_high",
            "same_sign",
            "p_sign"
        ]
    );
    // One row per correlation key: the simple run's rows pool two seeds.
    let simple_rows = runs.iter().filter(|r| **r == "simple").count();
    let complex_rows = runs.len() - simple_rows;
    assert_eq!(across.height(), simple_rows / 2 + complex_rows);

    // The first row of the frobenius-against-step key, recomputed from the two
    // seeds' correlations: rho_mean is tanh of the mean Fisher z.
    let key_columns = ["run", "method", "split", "measure", "metric", "aggregate", "grid", "statistic"];
    let wanted = ["simple", "lrp", "all", "frobenius", "step", "mean", "uniform", "spearman"];
    let matching = |df: &DataFrame| -> Vec<usize> {
        (0..df.height())
            .filter(|&row| key_columns.iter().zip(wanted).all(|(c, w)| df.column(c).unwrap().str().unwrap().get(row) == Some(w)))
            .collect()
    };
    let rhos: Vec<f64> = matching(&correlations)
        .into_iter()
        .map(|row| correlations.column("rho").unwrap().f64().unwrap().get(row).unwrap())
        .collect();
    assert_eq!(rhos.len(), 2, "one correlation per seed");
    let row = matching(&across);
    assert_eq!(row.len(), 1);
    let f = |name: &str| across.column(name).unwrap().f64().unwrap().get(row[0]);
    // (a rho of exactly +-1 has an infinite z; the table clamps rho to +-0.999)
    let z = |rho: f64| rho.clamp(-0.999, 0.999).atanh();
    let expected = ((z(rhos[0]) + z(rhos[1])) / 2.0).tanh();
    assert!((f("rho_mean").unwrap() - expected).abs() < 1e-12, "rho_mean {:?} vs {expected}", f("rho_mean"));
    assert_eq!(across.column("seeds").unwrap().i64().unwrap().get(row[0]), Some(2));
    let report = std::fs::read_to_string(out.join("analysis/report.md")).unwrap();
    let section = report.split("### Across seeds").nth(1).expect("the report has an across-seeds table");
    assert!(section.contains("| simple | test loss |"), "{section}");
    assert!(!section.split("###").next().unwrap().contains("| complex |"), "a one-seed run in the across-seeds table");

    let bytes = snapshot(&out);
    for stage in STAGES {
        let log = s.ok(stage, &[]);
        assert!(log.contains("nothing to do") || log.contains("up to date"), "{stage} did work on a rerun:\n{log}");
    }
    assert_same_files(&bytes, &snapshot(&out));
}

/// `configs/methods.toml` end to end, on synthetic data of its shape
/// instead of Fashion-MNIST and with a shorter run: every method writes a
/// map per probe image at every checkpoint, the summaries and the report
/// cover every method, and a second pass does nothing.
#[test]
fn the_methods_config_explains_with_every_method_end_to_end() {
    let root = pipeline_tests::workspace_root();
    let text = std::fs::read_to_string(root.join("configs/methods.toml")).expect("configs/methods.toml");
    let replacements = [
        ("dir = \"runs/methods\"", "dir = \"@OUT@\""),
        (
            "kind = \"idx\"\npath = \"data/fashion-mnist\"",
            "kind = \"synthetic\"\nshape = \"1x28x28\"\ntrain_size = 300\ntest_size = 100\nseed = 7",
        ),
        ("seen_per_class = 5\nunseen_per_class = 5", "seen_per_class = 1\nunseen_per_class = 1"),
        ("epochs = 1\n", "epochs = 1\nbatch_size = 50\n"),
        ("checkpoints = { every = 50, dense_every = 10, dense_until = 50 }", "checkpoints = { every = 3 }"),
    ];
    let mut config = text.clone();
    for (from, to) in replacements {
        assert!(config.contains(from), "configs/methods.toml has no `{from}`");
        config = config.replacen(from, to, 1);
    }
    let methods: Vec<String> =
        text.lines().filter_map(|l| l.strip_prefix("[methods.").and_then(|m| m.strip_suffix(']')).map(str::to_string)).collect();
    assert_eq!(methods.len(), 8, "{methods:?}");
    let s = Scratch::with_config("methods", &config);
    run_pipeline(&s);
    let run = s.out().join("good-fit");
    // 300 images in batches of 50: steps 0, 3, 6 and the last, 6.
    let steps = [0, 3, 6];
    for method in &methods {
        for step in steps {
            let file = run.join(format!("attributions/{method}/step-{step:06}.safetensors"));
            let attributions = common::artifacts::read_attributions(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            assert_eq!(attributions.probe_id.len(), 20, "{method} at step {step}: one map per probe image");
            let expected_plane = if method == "gradcam" { 14 * 14 } else { 28 * 28 };
            assert_eq!(attributions.height * attributions.width, expected_plane, "{method}");
            assert!(attributions.maps.iter().all(|v| v.is_finite()), "{method} at step {step}: finite maps");
            assert!(attributions.maps.iter().any(|&v| v != 0.0), "{method} at step {step}: a map that is not all zero");
        }
        assert!(run.join(format!("summaries/{method}.parquet")).is_file(), "{method}: summaries");
    }
    // The stability measures pair each map with the same image's map at the
    // previous, the last and the step-0 checkpoint.
    let summary = read_parquet(&run.join("summaries/gradient.parquet")).unwrap();
    let column = |name: &str| summary.column(name).unwrap().f64().unwrap().into_iter().collect::<Vec<Option<f64>>>();
    let (previous, last, initial) = (column("rank_sim_prev"), column("rank_sim_final"), column("rank_sim_init"));
    let row_steps: Vec<i64> = summary.column("step").unwrap().i64().unwrap().into_iter().map(Option::unwrap).collect();
    let maps: Vec<common::artifacts::Attributions> = steps
        .iter()
        .map(|step| {
            common::artifacts::read_attributions(&run.join(format!("attributions/gradient/step-{step:06}.safetensors"))).unwrap()
        })
        .collect();
    let similarity = |a: &common::artifacts::Attributions, b: &common::artifacts::Attributions, image: usize| {
        let ranks = |m: &common::artifacts::Attributions| {
            common::ranks::average_ranks(&m.map(image).iter().map(|&v| v as f64).collect::<Vec<_>>())
        };
        common::ranks::pearson(&ranks(a), &ranks(b))
    };
    for (row, &step) in row_steps.iter().enumerate() {
        let k = steps.iter().position(|&s| s == step).unwrap();
        let image = row % 20;
        let close = |got: Option<f64>, want: Option<f64>, what: &str| match (got, want) {
            (Some(g), Some(w)) => assert!((g - w).abs() < 1e-12, "{what} at step {step}, image {image}: {g} vs {w}"),
            _ => assert_eq!(got, want, "{what} at step {step}, image {image}"),
        };
        close(previous[row], if k == 0 { None } else { similarity(&maps[k], &maps[k - 1], image) }, "rank_sim_prev");
        close(last[row], similarity(&maps[k], &maps[steps.len() - 1], image), "rank_sim_final");
        close(initial[row], similarity(&maps[k], &maps[0], image), "rank_sim_init");
    }
    assert!(previous[20..].iter().all(Option::is_some), "every map after the first has a previous one");

    let report = std::fs::read_to_string(s.out().join("analysis/report.md")).unwrap();
    for method in &methods {
        assert!(report.contains(&format!("## Method `{method}`")), "the report has no section for {method}");
    }
    let before = snapshot(&s.out());
    for stage in STAGES {
        let log = s.ok(stage, &[]);
        assert!(log.contains("nothing to do") || log.contains("up to date"), "{stage} did work on a rerun:\n{log}");
    }
    assert_same_files(&before, &snapshot(&s.out()));
}
