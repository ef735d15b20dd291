//! Fingerprints: a hash of exactly what produced an artifact (its inputs'
//! fingerprints plus the config section that matters). A stage skips an
//! output whose stored fingerprint equals the one it would write.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
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

/// The content hash of a file's bytes (SHA-256, 64 hex digits): what an
/// artifact's stamp or metadata records of it, and what a stage checks
/// before it trusts the file.
pub fn content_hash(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// The fingerprint of one serialisable value.
pub fn fingerprint(value: &impl Serialize) -> String {
    Fingerprinter::new().add("value", value).finish()
}

/// Parquet tables and the report keep a stamp in a small file beside them
/// (`summaries/lrp.parquet.fingerprint`), written after the file.
pub fn stamp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".fingerprint");
    path.with_file_name(name)
}

/// Where a run stopped because its loss or weights left the finite range
/// (in the stamp of its metrics table).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Divergence {
    /// The first step whose loss or weights were not finite or past the bound.
    pub step: u64,
    pub why: String,
}

/// What a stamp records of the file beside it (docs/DESIGN.md,
/// "Fingerprints and caching"), as JSON.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    /// What produced the file: the config sections and the inputs'
    /// fingerprints that matter.
    pub fingerprint: String,
    /// The content hash of the file's bytes at write time.
    #[serde(default)]
    pub content: String,
    /// The content hashes of the files it was made from, by label.
    #[serde(default)]
    pub inputs: BTreeMap<String, String>,
    /// Metrics tables only: the run stopped at this step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diverged: Option<Divergence>,
}

impl Stamp {
    /// A stamp of this provenance; the content is filled in at write time.
    pub fn new(fingerprint: impl Into<String>) -> Self {
        Stamp { fingerprint: fingerprint.into(), ..Default::default() }
    }

    pub fn with_inputs(mut self, inputs: BTreeMap<String, String>) -> Self {
        self.inputs = inputs;
        self
    }
}

/// Writes `bytes` to `path` and then its stamp, with the content hash of
/// the bytes. The old stamp is removed first, so a kill between the two
/// writes leaves a file without a stamp (redone next time), never a new
/// file beside an old stamp.
pub fn write_stamped(path: &Path, bytes: &[u8], stamp: Stamp) -> Result<Stamp, ArtifactError> {
    super::remove_if_present(&stamp_path(path))?;
    write_atomic(path, bytes)?;
    let stamp = Stamp { content: content_hash(bytes), ..stamp };
    let text = serde_json::to_string(&stamp).expect("a stamp serialises to JSON");
    write_atomic(&stamp_path(path), format!("{text}\n").as_bytes())?;
    Ok(stamp)
}

/// The stamp of `path`, if both the file and a readable stamp exist
/// (unchecked: see [`verify_stamp`]).
pub fn read_stamp(path: &Path) -> Option<Stamp> {
    if !path.is_file() {
        return None;
    }
    let text = std::fs::read_to_string(stamp_path(path)).ok()?;
    serde_json::from_str(&text).ok()
}

/// The stamp of `path` after checking that the file's bytes are those it
/// was stamped with; otherwise why not, naming the file.
pub fn verify_stamp(path: &Path) -> Result<Stamp, String> {
    if !path.is_file() {
        return Err(format!("{}: missing", path.display()));
    }
    let stamp_file = stamp_path(path);
    let text =
        std::fs::read_to_string(&stamp_file).map_err(|_| format!("{}: has no stamp (written part-way?)", path.display()))?;
    let stamp: Stamp = serde_json::from_str(&text)
        .map_err(|_| format!("{}: unreadable stamp (written by an older version?)", stamp_file.display()))?;
    let bytes = std::fs::read(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    if content_hash(&bytes) != stamp.content {
        return Err(format!("{}: its content does not match its stamp (altered or damaged)", path.display()));
    }
    Ok(stamp)
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
