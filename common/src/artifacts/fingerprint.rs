//! Fingerprints: a hash of exactly what produced an artifact (its inputs'
//! fingerprints plus the config section that matters). A stage skips an
//! output whose stored fingerprint equals the one it would write.

use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{write_atomic, ArtifactError};

/// Bump when a change of code changes what a stage writes for the same
/// config, so that every cached artifact is redone.
const FORMAT_VERSION: &str = "attribution-trends/1";

/// Builds a fingerprint from labelled parts.
pub struct Fingerprinter {
    hasher: Sha256,
}

impl Default for Fingerprinter {
    fn default() -> Self {
        Self::new()
    }
}

impl Fingerprinter {
    pub fn new() -> Self {
        let mut hasher = Sha256::new();
        hasher.update(FORMAT_VERSION.as_bytes());
        Self { hasher }
    }

    /// Adds a labelled value, serialised as JSON (field order is the
    /// struct's, maps are sorted: the same config gives the same bytes).
    pub fn add(mut self, label: &str, value: &impl Serialize) -> Self {
        let json = serde_json::to_vec(value).expect("config values serialise to JSON");
        self.add_bytes(label, &json);
        self
    }

    /// Adds raw bytes (e.g. a data file's content).
    pub fn add_bytes(&mut self, label: &str, bytes: &[u8]) {
        self.hasher.update((label.len() as u64).to_le_bytes());
        self.hasher.update(label.as_bytes());
        self.hasher.update((bytes.len() as u64).to_le_bytes());
        self.hasher.update(bytes);
    }

    /// 32 hex digits (128 bits).
    pub fn finish(self) -> String {
        self.hasher.finalize().iter().take(16).map(|b| format!("{b:02x}")).collect()
    }
}

/// The fingerprint of one serialisable value.
pub fn fingerprint(value: &impl Serialize) -> String {
    Fingerprinter::new().add("value", value).finish()
}

/// Parquet files keep their fingerprint in a small file beside them
/// (`summaries/lrp.parquet.fingerprint`), written after the table.
pub fn stamp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".fingerprint");
    path.with_file_name(name)
}

pub fn write_stamp(path: &Path, fingerprint: &str) -> Result<(), ArtifactError> {
    write_atomic(&stamp_path(path), format!("{fingerprint}\n").as_bytes())
}

/// The stored fingerprint of `path`, if both the file and its stamp exist.
pub fn read_stamp(path: &Path) -> Option<String> {
    if !path.is_file() {
        return None;
    }
    std::fs::read_to_string(stamp_path(path)).ok().map(|s| s.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_stable_and_sensitive() {
        let a = Fingerprinter::new().add("x", &(1, "a")).finish();
        assert_eq!(a, Fingerprinter::new().add("x", &(1, "a")).finish());
        assert_ne!(a, Fingerprinter::new().add("x", &(2, "a")).finish());
        assert_ne!(a, Fingerprinter::new().add("y", &(1, "a")).finish());
        assert_eq!(a.len(), 32);
    }
}
