//! Atomic file writes: a temporary file in the same folder, synced, then
//! renamed over the target. A stage killed at any moment leaves either the
//! old file or the new one, never half of one.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::ArtifactError;

/// Every temporary file name ends with this.
pub const TEMP_SUFFIX: &str = ".tmp";

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// This machine's name: temporary files carry it, so that a stage cleaning
/// up after killed processes leaves alone the files of processes on other
/// nodes of a cluster writing to the same shared folder.
fn host_name() -> &'static str {
    static HOST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HOST.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().replace(['@', '/'], "_"))
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into())
    })
}

/// `.<name>.<pid>-<n>@<host>.tmp` beside `path`.
fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("artifact");
    let unique = COUNTER.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}.{}-{unique}@{}{TEMP_SUFFIX}", std::process::id(), host_name()))
}

/// Writes `bytes` to `path` atomically, creating parent folders.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ArtifactError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| ArtifactError::new(parent, format!("cannot create folder: {e}")))?;
    }
    let temp = temp_path(path);
    let result = (|| -> std::io::Result<()> {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&temp);
        return Err(ArtifactError::new(path, format!("cannot write: {e}")));
    }
    Ok(())
}

/// Removes `path`; a file that is already gone is not an error.
pub fn remove_if_present(path: &Path) -> Result<(), ArtifactError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ArtifactError::new(path, format!("cannot remove: {e}"))),
        _ => Ok(()),
    }
}

/// Whether process `pid` is this one or still runs (temporary files of a
/// live process must be left alone).
pub fn process_is_running(pid: u32) -> bool {
    pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes temporary files left in `dir` by processes that no longer run
/// (a killed stage). Files of live processes are left alone, so two stages
/// working in one folder do not disturb each other.
pub fn remove_stale_temporaries(dir: &Path) -> std::io::Result<usize> {
    let mut removed = 0;
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(stem) = name.strip_prefix('.').and_then(|n| n.strip_suffix(TEMP_SUFFIX)) else { continue };
        let (stem, host) = stem.rsplit_once('@').unwrap_or((stem, host_name()));
        if host != host_name() {
            continue;
        }
        let pid = stem.rsplit('.').next().and_then(|tail| tail.split('-').next()).and_then(|p| p.parse::<u32>().ok());
        if !pid.is_some_and(process_is_running) {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => removed += 1,
                // Another process cleaning the same folder got there first.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_replace_and_clean_up() {
        let dir = crate::scratch::ScratchDir::new("atomic");
        let path = dir.join("sub/file.bin");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let leftovers: Vec<_> = std::fs::read_dir(dir.join("sub")).unwrap().collect();
        assert_eq!(leftovers.len(), 1);
        let stale = dir.join("sub/.file.bin.999999999-0.tmp");
        std::fs::write(&stale, b"half").unwrap();
        let stale_here = dir.join(format!("sub/.file.bin.999999999-1@{}.tmp", host_name()));
        std::fs::write(&stale_here, b"half").unwrap();
        let elsewhere = dir.join("sub/.file.bin.999999999-2@another-node.tmp");
        std::fs::write(&elsewhere, b"in progress on another node").unwrap();
        let live = dir.join(format!("sub/.file.bin.{}-3@{}.tmp", std::process::id(), host_name()));
        std::fs::write(&live, b"in progress here").unwrap();
        assert_eq!(remove_stale_temporaries(&dir.join("sub")).unwrap(), 2);
        assert!(!stale.exists() && !stale_here.exists());
        assert!(elsewhere.exists() && live.exists());
        assert!(path.exists());
    }
}
