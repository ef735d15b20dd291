//! Helpers for the end-to-end tests: the stage binaries, a scratch copy of
//! the smoke config, and byte-level snapshots of an output tree.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::scratch::ScratchDir;

/// The four stages, in pipeline order.
pub const STAGES: [&str; 4] = ["trainer", "explainer", "summarizer", "analyzer"];

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is inside the workspace").to_path_buf()
}

/// A stage binary of the same profile as the running test (`make test`
/// builds them before the tests run).
pub fn stage_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>");
    let path = profile_dir.join(name);
    assert!(path.is_file(), "{} is not built; run `make test` (it builds the stage binaries first)", path.display());
    path
}

/// A scratch folder with a copy of `configs/smoke.toml` whose outputs go
/// into the folder itself.
pub struct Scratch {
    pub dir: ScratchDir,
    pub config: PathBuf,
}

impl Scratch {
    pub fn new(name: &str) -> Self {
        Self::with_config(name, &smoke_config())
    }

    /// A scratch folder with this config text; `@OUT@` stands for the
    /// folder's `out/`.
    pub fn with_config(name: &str, text: &str) -> Self {
        let dir = ScratchDir::new(&format!("pipeline-e2e-{name}"));
        let config = dir.join("pipeline.toml");
        std::fs::write(&config, text.replace("@OUT@", &dir.join("out").display().to_string())).expect("config");
        Self { dir, config }
    }

    pub fn out(&self) -> PathBuf {
        self.dir.join("out")
    }

    /// Runs a stage on this scratch config with extra arguments.
    /// Runs a stage; whatever its input, it must end with an exit code of
    /// its own: a panic (message on stderr) or an abort (a signal) fails
    /// the test.
    pub fn stage(&self, name: &str, args: &[&str]) -> Output {
        let out = self.command(name, args).output().expect("stage runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{name} {args:?} panicked:\n{stderr}");
        assert!(out.status.code().is_some(), "{name} {args:?} was killed by a signal ({:?}):\n{stderr}", out.status);
        out
    }

    /// Runs a stage that must fail, returning its stderr.
    pub fn fails(&self, name: &str, args: &[&str]) -> String {
        let out = self.stage(name, args);
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(!out.status.success(), "{name} {args:?} succeeded:\n{text}");
        text
    }

    /// Rewrites the scratch config by a text replacement (which must match).
    pub fn edit_config(&self, from: &str, to: &str) {
        let text = std::fs::read_to_string(&self.config).expect("config");
        assert!(text.contains(from), "the config has no `{from}`");
        std::fs::write(&self.config, text.replacen(from, to, 1)).expect("config");
    }

    pub fn command(&self, name: &str, args: &[&str]) -> Command {
        let mut command = Command::new(stage_binary(name));
        command.arg("--config").arg(&self.config).args(args).current_dir(&self.dir);
        command.env_remove("SLURM_ARRAY_TASK_ID").env_remove("SLURM_ARRAY_TASK_COUNT");
        command
    }

    /// Runs a stage and panics with its output unless it succeeds.
    pub fn ok(&self, name: &str, args: &[&str]) -> String {
        let out = self.stage(name, args);
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{name} {args:?} failed:\n{text}");
        text
    }
}

/// The smoke config with its output folder replaced by `@OUT@`.
pub fn smoke_config() -> String {
    let text = std::fs::read_to_string(workspace_root().join("configs/smoke.toml")).expect("configs/smoke.toml");
    assert!(text.contains("dir = \"runs/smoke\""), "configs/smoke.toml sets [output] dir = \"runs/smoke\"");
    text.replace("dir = \"runs/smoke\"", "dir = \"@OUT@\"")
}

/// Every file under `dir` (relative path → bytes).
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let bytes = std::fs::read(&path).expect("readable file");
                files.insert(path.strip_prefix(dir).expect("below dir").to_path_buf(), bytes);
            }
        }
    }
    files
}

/// The modification time of every file under `dir`.
pub fn modification_times(dir: &Path) -> BTreeMap<PathBuf, std::time::SystemTime> {
    snapshot(dir)
        .into_keys()
        .map(|p| {
            let time = std::fs::metadata(dir.join(&p)).and_then(|m| m.modified()).expect("file metadata");
            (p, time)
        })
        .collect()
}

/// Runs every stage in order, panicking on the first failure.
pub fn run_pipeline(scratch: &Scratch) {
    for stage in STAGES {
        scratch.ok(stage, &[]);
    }
}

/// Asserts two snapshots hold the same files with the same bytes, naming
/// the first difference.
pub fn assert_same_files(a: &BTreeMap<PathBuf, Vec<u8>>, b: &BTreeMap<PathBuf, Vec<u8>>) {
    let names_a: Vec<&PathBuf> = a.keys().collect();
    let names_b: Vec<&PathBuf> = b.keys().collect();
    assert_eq!(names_a, names_b, "different files");
    for (path, bytes) in a {
        assert!(bytes == &b[path], "{} differs", path.display());
    }
}
