//! Model checkpoints: the parameters under their PyTorch names (so that
//! `load_state_dict(safetensors.torch.load_file(path))` works on them) and
//! the metadata DESIGN names.

use std::collections::BTreeMap;
use std::path::Path;

use super::{read_tensors, write_tensors, ArtifactError, TensorData, TensorFile};
use crate::model::{Model, ModelKind};

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

/// Writes `model` and `info` to `path` atomically.
pub fn write_checkpoint(path: &Path, model: &Model, info: &CheckpointInfo) -> Result<(), ArtifactError> {
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
    for p in model.parameters() {
        file.tensors.insert(p.name, TensorData::F32 { shape: p.shape, data: p.data.to_vec() });
    }
    write_tensors(path, &file)
}

/// Epochs as text with enough digits to round-trip, and no more.
pub fn format_epoch(epoch: f64) -> String {
    format!("{epoch}")
}

/// Reads a checkpoint back into a model; a missing, corrupt or mismatched
/// file is an error naming it and what is wrong.
pub fn read_checkpoint(path: &Path) -> Result<(Model, CheckpointInfo), ArtifactError> {
    let file = read_tensors(path)?;
    read_checkpoint_from(path, &file)
}

/// Only the fingerprint a checkpoint stores, from its header.
pub fn read_checkpoint_fingerprint(path: &Path) -> Result<String, ArtifactError> {
    let meta = super::read_metadata(path)?;
    meta.get("fingerprint").cloned().ok_or_else(|| ArtifactError::new(path, "metadata `fingerprint` is missing"))
}

fn read_checkpoint_from(path: &Path, file: &TensorFile) -> Result<(Model, CheckpointInfo), ArtifactError> {
    let meta = |key: &str| file.meta(path, key);
    let parse_err = |key: &str, value: &str| ArtifactError::new(path, format!("metadata `{key}` = `{value}` is not valid"));
    let kind = match meta("model")? {
        "simple" => ModelKind::Simple,
        "complex" => ModelKind::Complex,
        other => {
            return Err(ArtifactError::new(path, format!("metadata `model` = `{other}`; expected \"simple\" or \"complex\"")))
        }
    };
    let input = crate::config::parse_shape(meta("input_shape")?)
        .map_err(|e| ArtifactError::new(path, format!("metadata `input_shape`: {e}")))?;
    let classes: usize = meta("classes")?.parse().map_err(|_| parse_err("classes", meta("classes").unwrap_or("")))?;
    if !(1..=100_000).contains(&classes) {
        return Err(parse_err("classes", meta("classes")?));
    }
    let step: u64 = meta("step")?.parse().map_err(|_| parse_err("step", meta("step").unwrap_or("")))?;
    let epoch: f64 = meta("epoch")?.parse().map_err(|_| parse_err("epoch", meta("epoch").unwrap_or("")))?;
    let mut tensors = BTreeMap::new();
    for (name, tensor) in &file.tensors {
        match tensor {
            TensorData::F32 { shape, data } => {
                tensors.insert(name.clone(), (shape.clone(), data.clone()));
            }
            TensorData::I64 { .. } => return Err(ArtifactError::new(path, format!("tensor `{name}` is I64, expected F32"))),
        }
    }
    let mut model = Model::zeros(kind, input, classes);
    model.load_parameters(&tensors).map_err(|e| ArtifactError::new(path, e))?;
    let info = CheckpointInfo {
        run: meta("run")?.to_string(),
        step,
        epoch,
        dataset: meta("dataset")?.to_string(),
        fingerprint: meta("fingerprint")?.to_string(),
    };
    Ok((model, info))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::ImageShape;

    #[test]
    fn checkpoints_reload_to_the_same_logits() {
        let dir = std::env::temp_dir().join(format!("ckpt-{}", std::process::id()));
        let path = dir.join("step-000003.safetensors");
        let model = Model::initialized(ModelKind::Simple, ImageShape::RGB_32, 10, 9);
        let info = CheckpointInfo { run: "r".into(), step: 3, epoch: 0.25, dataset: "d".into(), fingerprint: "f".into() };
        write_checkpoint(&path, &model, &info).unwrap();
        let (back, back_info) = read_checkpoint(&path).unwrap();
        assert_eq!(back_info, info);
        assert_eq!(read_checkpoint_fingerprint(&path).unwrap(), "f");
        let x: Vec<f32> = (0..2 * 3072).map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0).collect();
        assert_eq!(back.forward(&x).unwrap(), model.forward(&x).unwrap());

        let file = read_tensors(&path).unwrap();
        assert_eq!(file.tensors["features_conv.0.weight"].shape(), &[16, 3, 5, 5]);
        assert_eq!(file.tensors["fc1.weight"].shape(), &[10, 32 * 8 * 8]);
        for key in ["run", "step", "epoch", "model", "dataset", "fingerprint"] {
            assert!(file.metadata.contains_key(key), "{key}");
        }

        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let err = read_checkpoint(&path).unwrap_err().to_string();
        assert!(err.contains("step-000003.safetensors") && err.contains("not a valid safetensors"), "{err}");
    }
}
