//! The trainer binary end to end on the smoke config: outputs, skipping,
//! determinism, resumption after kill -9, sharding and bad configs.

use std::time::Duration;

use pipeline_tests::{assert_same_files, snapshot, Scratch};

#[test]
fn trains_writes_the_contract_files_and_skips_when_done() {
    let s = Scratch::new("train-basic");
    s.ok("trainer", &["--run", "simple"]);
    let run = s.out().join("simple");
    for f in ["probe.parquet", "metrics.parquet", "checkpoints/step-000000.safetensors", "checkpoints/step-000024.safetensors"] {
        assert!(run.join(f).is_file(), "{f} missing");
    }
    let leftovers: Vec<_> = snapshot(&run).into_keys().filter(|p| p.to_string_lossy().contains("resume")).collect();
    assert!(leftovers.is_empty(), "resume state left behind: {leftovers:?}");
    let before = snapshot(&s.out());
    let log = s.ok("trainer", &["--run", "simple"]);
    assert!(log.contains("up to date"), "{log}");
    assert_same_files(&before, &snapshot(&s.out()));
    let dry = s.ok("trainer", &["--dry-run", "--force"]);
    assert!(dry.contains("trainer: run `simple`: would train (again: --force)") && dry.contains("2 unit(s) to do"), "{dry}");
    let dry = s.ok("trainer", &["--dry-run", "--run", "complex"]);
    assert!(dry.contains("trainer: run `complex`: would train (from the start)"), "{dry}");
    assert_same_files(&before, &snapshot(&s.out()));
}

#[test]
fn same_config_same_bytes_and_kill_9_then_resume_gives_the_same_bytes() {
    let reference = Scratch::new("train-reference");
    reference.ok("trainer", &[]);
    let expected = snapshot(&reference.out());

    let again = Scratch::new("train-again");
    again.ok("trainer", &[]);
    assert_same_files(&expected, &snapshot(&again.out()));

    let killed = Scratch::new("train-killed");
    for delay_ms in [40u64, 120, 250, 400, 700] {
        let mut child = killed.command("trainer", &[]).stderr(std::process::Stdio::null()).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        child.wait().unwrap();
    }
    killed.ok("trainer", &[]);
    let after = snapshot(&killed.out());
    assert!(after.keys().all(|p| !p.to_string_lossy().ends_with(".tmp")), "temporary files left");
    assert_same_files(&expected, &after);
}

#[test]
fn shards_in_parallel_give_the_bytes_of_one_process() {
    let whole = Scratch::new("train-whole");
    whole.ok("trainer", &[]);
    let sharded = Scratch::new("train-sharded");
    let children: Vec<_> = (0..2)
        .map(|i| {
            sharded
                .command("trainer", &[])
                .env("SLURM_ARRAY_TASK_ID", i.to_string())
                .env("SLURM_ARRAY_TASK_COUNT", "2")
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    assert_same_files(&snapshot(&whole.out()), &snapshot(&sharded.out()));
}

#[test]
fn changing_a_run_retrains_only_that_run() {
    let s = Scratch::new("train-change");
    s.ok("trainer", &[]);
    let before = snapshot(&s.out());
    std::fs::write(&s.config, std::fs::read_to_string(&s.config).unwrap().replace("epochs = 3", "epochs = 2")).unwrap();
    let log = s.ok("trainer", &[]);
    assert!(log.contains("run `simple`: trained to step 16") && log.contains("1 unit(s) done, 1 up to date"), "{log}");
    let after = snapshot(&s.out());
    for (path, bytes) in &after {
        if path.starts_with("complex") {
            assert_eq!(bytes, &before[path], "{} changed", path.display());
        }
    }
    assert!(!after.contains_key(std::path::Path::new("simple/checkpoints/step-000024.safetensors")), "old checkpoint kept");
    assert!(after.contains_key(std::path::Path::new("simple/checkpoints/step-000016.safetensors")));
}

#[test]
fn bad_configs_and_flags_are_named_errors() {
    let s = Scratch::with_config("train-bad", &pipeline_tests::smoke_config().replace("epochs = 3", "epochs = 0"));
    let out = s.stage("trainer", &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("runs.simple.epochs") && err.contains("at least 1"), "{err}");
    let s = Scratch::new("train-bad-flags");
    let out = s.stage("trainer", &["--shard", "2/2"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("need 0 <= I < N"));
    let out = s.stage("trainer", &["--run", "nope"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no run `nope`"));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
}
