//! Scratch folders for tests: one per test and process under the system's
//! temporary folder, removed when the test passes.
//!
//! A test that passes leaves nothing behind, so that repeated test runs do
//! not fill the temporary folder (the end-to-end tests alone write several
//! hundred megabytes a run). A test that fails keeps its folder, and says
//! where, so that its files can be looked at.

use std::ops::Deref;
use std::path::{Path, PathBuf};

/// The folder `<temporary folder>/<name>-<process id>`, empty when made,
/// removed with everything in it when dropped, unless the thread is
/// panicking (a failing test). It derefs to its path.
#[derive(Debug)]
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    /// Makes the folder, emptying what an earlier process of the same id
    /// left there.
    pub fn new(name: &str) -> ScratchDir {
        let path = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap_or_else(|err| panic!("cannot make the scratch folder {}: {err}", path.display()));
        ScratchDir { path }
    }
}

impl Deref for ScratchDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<Path> for ScratchDir {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("the failing test's files are kept in {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_passing_test_leaves_nothing_and_a_failing_one_keeps_its_files() {
        let scratch = ScratchDir::new("common-scratch-failing");
        std::fs::write(scratch.join("file"), b"x").unwrap();
        let kept = scratch.to_path_buf();
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _scratch = scratch;
            panic!("a failing test");
        }))
        .unwrap_err();
        assert!(kept.join("file").is_file(), "a failing test keeps its files");
        std::fs::remove_dir_all(&kept).unwrap();

        let scratch = ScratchDir::new("common-scratch-passing");
        std::fs::create_dir_all(scratch.join("sub")).unwrap();
        std::fs::write(scratch.join("sub/file"), b"x").unwrap();
        let path = scratch.to_path_buf();
        drop(scratch);
        assert!(!path.exists(), "a passing test leaves nothing");
    }
}
