//! Model checkpoints: the parameters under their PyTorch names (so that
//! `load_state_dict(safetensors.torch.load_file(path))` works on them) and
//! the metadata of docs/DESIGN.md, "Checkpoints". This module reads and
//! writes the file as named tensors; the engine turns them into a network.

use std::collections::BTreeMap;
use std::path::Path;

use super::{read_tensors, write_tensors, ArtifactError, TensorData, TensorFile};
use crate::architecture::Architecture;
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

/// The network a checkpoint holds: an architecture on images of one shape.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckpointModel {
    pub architecture: Architecture,
    pub input: ImageShape,
}

impl CheckpointModel {
    /// What a checkpoint of this network says of it in its header.
    pub fn label(&self) -> ModelLabel {
        ModelLabel { name: self.architecture.name.clone(), input: self.input, classes: self.architecture.classes() }
    }
}

/// What a checkpoint's header says of its network: the model's name, the
/// image shape and the number of classes. (The model's layers are part of
/// the run's fingerprint, which the header holds too.)
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelLabel {
    pub name: String,
    pub input: ImageShape,
    pub classes: usize,
}

/// What a checkpoint's header says: its metadata and its content hash.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckpointHeader {
    pub info: CheckpointInfo,
    pub model: ModelLabel,
    /// The content hash of its tensor data.
    pub content: String,
}

/// What a stage expects a checkpoint file to be, from the config.
#[derive(Clone, Debug, PartialEq)]
pub struct ExpectedCheckpoint<'a> {
    pub run: &'a str,
    pub step: u64,
    pub fingerprint: &'a str,
    pub model: &'a CheckpointModel,
}

impl CheckpointHeader {
    /// The header is that of the checkpoint `expected` describes: its run,
    /// step, architecture and fingerprint; otherwise what differs.
    pub fn check(&self, expected: &ExpectedCheckpoint) -> Result<(), String> {
        let info = &self.info;
        if info.step != expected.step {
            return Err(format!("its metadata says step {} but it is the checkpoint of step {}", info.step, expected.step));
        }
        if info.run != expected.run {
            return Err(format!("its metadata says run `{}`, not `{}`", info.run, expected.run));
        }
        let wanted = expected.model.label();
        if self.model != wanted {
            let describe = |m: &ModelLabel| format!("model `{}` on {} images, {} classes", m.name, m.input, m.classes);
            return Err(format!("it holds {}, the config asks for {}", describe(&self.model), describe(&wanted)));
        }
        if info.fingerprint != expected.fingerprint {
            return Err("it comes from another configuration of the run".into());
        }
        Ok(())
    }
}

/// A checkpoint as stored: metadata and parameters by name
/// (name -> (shape, values)).
#[derive(Clone, Debug, PartialEq)]
pub struct CheckpointFile {
    pub info: CheckpointInfo,
    pub model: ModelLabel,
    pub parameters: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    /// The content hash of its tensor data (checked on reading).
    pub content: String,
}

/// Writes a checkpoint of `model`'s architecture with these parameters
/// (name, shape, values) to `path` atomically.
pub fn write_checkpoint_file<'a>(
    path: &Path,
    info: &CheckpointInfo,
    model: &ModelLabel,
    parameters: impl IntoIterator<Item = (String, Vec<usize>, &'a [f32])>,
) -> Result<(), ArtifactError> {
    let mut file = TensorFile::default();
    for (key, value) in [
        ("run", info.run.clone()),
        ("step", info.step.to_string()),
        ("epoch", format_epoch(info.epoch)),
        ("model", model.name.clone()),
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

/// The header of a checkpoint file, reading only the header: its
/// metadata, parsed and range-checked, before anything is allocated for it.
pub fn read_checkpoint_header(path: &Path) -> Result<CheckpointHeader, ArtifactError> {
    let mut metadata = super::read_metadata(path)?;
    let content = metadata.remove(super::CONTENT_KEY).ok_or_else(|| {
        ArtifactError::new(path, format!("metadata `{}` is missing (not written by the trainer?)", super::CONTENT_KEY))
    })?;
    let (info, model) = parse_metadata(path, &metadata)?;
    Ok(CheckpointHeader { info, model, content })
}

fn parse_metadata(path: &Path, metadata: &BTreeMap<String, String>) -> Result<(CheckpointInfo, ModelLabel), ArtifactError> {
    let meta = |key: &str| {
        metadata.get(key).map(String::as_str).ok_or_else(|| ArtifactError::new(path, format!("metadata `{key}` is missing")))
    };
    let parse_err =
        |key: &str| ArtifactError::new(path, format!("metadata `{key}` = `{}` is not valid", meta(key).unwrap_or("")));
    let name = meta("model")?.to_string();
    let input =
        ImageShape::parse(meta("input_shape")?).map_err(|e| ArtifactError::new(path, format!("metadata `input_shape`: {e}")))?;
    let classes: usize = meta("classes")?.parse().map_err(|_| parse_err("classes"))?;
    if !(1..=100_000).contains(&classes) {
        return Err(parse_err("classes"));
    }
    let step: u64 = meta("step")?.parse().map_err(|_| parse_err("step"))?;
    let epoch: f64 = meta("epoch")?.parse().map_err(|_| parse_err("epoch"))?;
    let info = CheckpointInfo {
        run: meta("run")?.to_string(),
        step,
        epoch,
        dataset: meta("dataset")?.to_string(),
        fingerprint: meta("fingerprint")?.to_string(),
    };
    Ok((info, ModelLabel { name, input, classes }))
}

/// Reads a checkpoint file whose header is what `expected` describes
/// (checked before the tensors are read), with its content hash checked;
/// errors name the file and what is wrong.
pub fn read_checkpoint_file(path: &Path, expected: &ExpectedCheckpoint) -> Result<CheckpointFile, ArtifactError> {
    read_checkpoint_header(path)?.check(expected).map_err(|e| ArtifactError::new(path, e))?;
    let file = read_tensors(path)?;
    let content = file.content.clone().ok_or_else(|| ArtifactError::new(path, "its content hash is missing"))?;
    let (info, model) = parse_metadata(path, &file.metadata)?;
    let mut parameters = BTreeMap::new();
    for (name, tensor) in &file.tensors {
        match tensor {
            TensorData::F32 { shape, data } => {
                parameters.insert(name.clone(), (shape.clone(), data.clone()));
            }
            TensorData::I64 { .. } => return Err(ArtifactError::new(path, format!("tensor `{name}` is I64, expected F32"))),
        }
    }
    Ok(CheckpointFile { info, model, parameters, content })
}

/// Only the fingerprint a checkpoint stores, from its header.
pub fn read_checkpoint_fingerprint(path: &Path) -> Result<String, ArtifactError> {
    let meta = super::read_metadata(path)?;
    meta.get("fingerprint").cloned().ok_or_else(|| ArtifactError::new(path, "metadata `fingerprint` is missing"))
}
