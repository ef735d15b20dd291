//! Networks to and from checkpoint files (docs/DESIGN.md, "Checkpoints"):
//! `common::artifacts` stores named tensors, this module checks them
//! against the architecture.

use std::path::Path;

use common::artifacts::{
    read_checkpoint_file, write_checkpoint_file, ArtifactError, CheckpointInfo, ExpectedCheckpoint, ModelLabel,
};

use crate::network::Model;

/// Writes `model` and `info` to `path` atomically.
pub fn write_checkpoint(path: &Path, model: &Model, info: &CheckpointInfo) -> Result<(), ArtifactError> {
    let label = ModelLabel { name: model.architecture.name.clone(), input: model.input, classes: model.classes };
    write_checkpoint_file(path, info, &label, model.parameters().into_iter().map(|p| (p.name, p.shape, p.data)))
}

/// Reads the checkpoint `expected` describes back into a model; a missing,
/// corrupt, altered or mismatched file is an error naming it and what is
/// wrong. The header is checked against `expected` before anything is
/// allocated, so no header can make this allocate more than the model the
/// config names.
pub fn read_checkpoint(path: &Path, expected: &ExpectedCheckpoint) -> Result<Checkpoint, ArtifactError> {
    let file = read_checkpoint_file(path, expected)?;
    let mut model = Model::zeros(&expected.model.architecture, expected.model.input).map_err(|e| ArtifactError::new(path, e))?;
    model.load_parameters(&file.parameters).map_err(|e| ArtifactError::new(path, e))?;
    Ok(Checkpoint { model, info: file.info, content: file.content })
}

/// A checkpoint read into a network.
#[derive(Debug)]
pub struct Checkpoint {
    pub model: Model,
    pub info: CheckpointInfo,
    /// The content hash of its tensor data.
    pub content: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::architecture::ModelKind;
    use common::artifacts::{read_checkpoint_fingerprint, read_tensors, CheckpointModel};
    use common::image::ImageShape;

    #[test]
    fn checkpoints_reload_to_the_same_logits() {
        let dir = common::scratch::ScratchDir::new("ckpt");
        let path = dir.join("step-000003.safetensors");
        let model = Model::initialized(&ModelKind::Simple.architecture(10), ImageShape::RGB_32, 9).unwrap();
        let info = CheckpointInfo { run: "r".into(), step: 3, epoch: 0.25, dataset: "d".into(), fingerprint: "f".into() };
        write_checkpoint(&path, &model, &info).unwrap();
        let architecture = CheckpointModel { architecture: ModelKind::Simple.architecture(10), input: ImageShape::RGB_32 };
        let expected = ExpectedCheckpoint { run: "r", step: 3, fingerprint: "f", model: &architecture };
        let back = read_checkpoint(&path, &expected).unwrap();
        let (back, back_info) = (back.model, back.info);
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

        // Another step, model or configuration than expected: named, before
        // any tensor is read.
        for (what, other, message) in [
            ("step", ExpectedCheckpoint { step: 4, ..expected.clone() }, "says step 3 but it is the checkpoint of step 4"),
            (
                "model",
                ExpectedCheckpoint {
                    model: &CheckpointModel { input: ImageShape::GRAY_28, ..architecture.clone() },
                    ..expected.clone()
                },
                "the config asks for model `simple` on 1x28x28 images",
            ),
            ("fingerprint", ExpectedCheckpoint { fingerprint: "g", ..expected.clone() }, "another configuration"),
        ] {
            let err = read_checkpoint(&path, &other).unwrap_err().to_string();
            assert!(err.contains(message), "{what}: {err}");
        }

        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let err = read_checkpoint(&path, &expected).unwrap_err().to_string();
        assert!(err.contains("step-000003.safetensors") && err.contains("not a valid safetensors"), "{err}");
    }
}
