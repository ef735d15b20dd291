//! Model checkpoints: the parameters under their PyTorch names (so that
//! `load_state_dict(safetensors.torch.load_file(path))` works on them) and
//! the metadata of docs/DESIGN.md, "Checkpoints". This module reads and
//! writes the file as named tensors; the engine turns them into a network.

use std::collections::BTreeMap;
use std::path::Path;

use super::{read_tensors, write_tensors, ArtifactError, TensorData, TensorFile};
use crate::architecture::ModelKind;
use crate::image::ImageShape;

/// What a checkpoint says about itself (its `__metadata__`).
#[derive(Clone, Debug, PartialEq)]
pub struct CheckpointInfo {
    pub run: String,
    pub step: u64,
    /// Fractional epochs completed at this step.
    pub epoch: f64,
    pub dataset: String,
    pub fingerprint: String,
}

/// The architecture a checkpoint's parameters belong to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckpointModel {
    pub kind: ModelKind,
    pub input: ImageShape,
    pub classes: usize,
}

/// A checkpoint as stored: metadata and parameters by name
/// (name -> (shape, values)).
#[derive(Clone, Debug, PartialEq)]
pub struct CheckpointFile {
    pub info: CheckpointInfo,
    pub model: CheckpointModel,
    pub parameters: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
}

/// Writes a checkpoint of `model`'s architecture with these parameters
/// (name, shape, values) to `path` atomically.
pub fn write_checkpoint_file<'a>(
    path: &Path,
    info: &CheckpointInfo,
    model: CheckpointModel,
    parameters: impl IntoIterator<Item = (String, Vec<usize>, &'a [f32])>,
) -> Result<(), ArtifactError> {
    let mut file = TensorFile::default();
    for (key, value) in [
        ("run", info.run.clone()),
        ("step", info.step.to_string()),
        ("epoch", format_epoch(info.epoch)),
        ("model", model.kind.name().to_string()),
        ("dataset", info.dataset.clone()),
        ("fingerprint", info.fingerprint.clone()),
        ("input_shape", model.input.to_string()),
        ("classes", model.classes.to_string()),
    ] {
        file.metadata.insert(key.to_string(), value);
    }
    for (name, shape, data) in parameters {
        file.tensors.insert(name, TensorData::F32 { shape, data: data.to_vec() });
    }
    write_tensors(path, &file)
}

/// Epochs as text with enough digits to round-trip, and no more.
pub fn format_epoch(epoch: f64) -> String {
    format!("{epoch}")
}

/// Reads a checkpoint file; a missing, corrupt or inconsistent file is an
/// error naming it and what is wrong.
pub fn read_checkpoint_file(path: &Path) -> Result<CheckpointFile, ArtifactError> {
    let file = read_tensors(path)?;
    let meta = |key: &str| file.meta(path, key);
    let parse_err = |key: &str, value: &str| ArtifactError::new(path, format!("metadata `{key}` = `{value}` is not valid"));
    let kind = ModelKind::parse(meta("model")?).ok_or_else(|| {
        let names: Vec<&str> = ModelKind::ALL.iter().map(|k| k.name()).collect();
        ArtifactError::new(
            path,
            format!("metadata `model` = `{}`; expected one of {}", meta("model").unwrap_or(""), names.join(", ")),
        )
    })?;
    let input =
        ImageShape::parse(meta("input_shape")?).map_err(|e| ArtifactError::new(path, format!("metadata `input_shape`: {e}")))?;
    let classes: usize = meta("classes")?.parse().map_err(|_| parse_err("classes", meta("classes").unwrap_or("")))?;
    if !(1..=100_000).contains(&classes) {
        return Err(parse_err("classes", meta("classes")?));
    }
    let step: u64 = meta("step")?.parse().map_err(|_| parse_err("step", meta("step").unwrap_or("")))?;
    let epoch: f64 = meta("epoch")?.parse().map_err(|_| parse_err("epoch", meta("epoch").unwrap_or("")))?;
    let mut parameters = BTreeMap::new();
    for (name, tensor) in &file.tensors {
        match tensor {
            TensorData::F32 { shape, data } => {
                parameters.insert(name.clone(), (shape.clone(), data.clone()));
            }
            TensorData::I64 { .. } => return Err(ArtifactError::new(path, format!("tensor `{name}` is I64, expected F32"))),
        }
    }
    let info = CheckpointInfo {
        run: meta("run")?.to_string(),
        step,
        epoch,
        dataset: meta("dataset")?.to_string(),
        fingerprint: meta("fingerprint")?.to_string(),
    };
    Ok(CheckpointFile { info, model: CheckpointModel { kind, input, classes }, parameters })
}

/// Only the fingerprint a checkpoint stores, from its header.
pub fn read_checkpoint_fingerprint(path: &Path) -> Result<String, ArtifactError> {
    let meta = super::read_metadata(path)?;
    meta.get("fingerprint").cloned().ok_or_else(|| ArtifactError::new(path, "metadata `fingerprint` is missing"))
}
