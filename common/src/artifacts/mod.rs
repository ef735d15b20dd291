//! Files shared between the stages: where they live, how they are written
//! (atomically), what produced them (fingerprints), and their formats
//! (safetensors for tensors, Parquet for [`tables`]). docs/DESIGN.md,
//! "Stages and files", describes every file.

mod atomic;
mod attribution;
mod checkpoint;
mod fingerprint;
mod layout;
mod parquet;
pub mod tables;
mod tensors;

pub use atomic::{process_is_running, remove_if_present, remove_stale_temporaries, write_atomic, TEMP_SUFFIX};
pub use attribution::{read_attributions, write_attributions, Attributions};
pub use checkpoint::{
    format_epoch, read_checkpoint_file, read_checkpoint_fingerprint, read_checkpoint_header, write_checkpoint_file,
    CheckpointFile, CheckpointHeader, CheckpointInfo, CheckpointModel, ExpectedCheckpoint, ModelLabel,
};
pub use fingerprint::{
    content_hash, fingerprint, read_stamp, stamp_path, verify_stamp, write_stamped, Divergence, Fingerprinter, Stamp,
};
pub use layout::{step_name, RunLayout};
pub use parquet::{encode_parquet, read_parquet, write_parquet, write_parquet_stamped};
pub use tables::probe::{read_probe, write_probe, Probe, ProbeEntry, Split};
pub use tensors::{read_metadata, read_tensors, read_verified_metadata, write_tensors, TensorData, TensorFile, CONTENT_KEY};

use std::path::{Path, PathBuf};

/// An artifact could not be read or written; the message names the file.
#[derive(Debug, thiserror::Error)]
#[error("{}: {problem}", path.display())]
pub struct ArtifactError {
    pub path: PathBuf,
    pub problem: String,
}

impl ArtifactError {
    pub fn new(path: &Path, problem: impl std::fmt::Display) -> Self {
        Self { path: path.to_path_buf(), problem: problem.to_string() }
    }
}
