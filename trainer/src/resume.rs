//! The state beside a checkpoint that lets a killed run continue exactly:
//! Adam's moments, the metrics rows so far and the running means
//! (`step-000600.resume.safetensors`, kept apart from the model's tensors so
//! that the checkpoint loads into PyTorch as it is).

use std::path::Path;

use common::artifacts::{read_tensors, write_tensors, ArtifactError, TensorData, TensorFile};
use engine::Model;

use crate::adam::Adam;
use common::artifacts::tables::metrics::MetricsRow;

use crate::metrics::RunningMean;

/// Everything besides the model that the loop carries from step to step.
#[derive(Clone, Debug, PartialEq)]
pub struct ResumeState {
    pub step: u64,
    pub fingerprint: String,
    pub adam: Adam,
    pub rows: Vec<MetricsRow>,
    pub running: RunningMean,
}

pub fn write_resume_state(path: &Path, model: &Model, state: &ResumeState) -> Result<(), ArtifactError> {
    let mut file = TensorFile::default();
    file.metadata.insert("step".into(), state.step.to_string());
    file.metadata.insert("fingerprint".into(), state.fingerprint.clone());
    file.metadata.insert("adam_steps".into(), state.adam.steps.to_string());
    file.metadata.insert("adam_learning_rate".into(), json(&state.adam.learning_rate));
    file.metadata.insert("metrics".into(), json(&state.rows));
    file.metadata.insert("running".into(), json(&state.running));
    for (p, (m, v)) in model.parameters().iter().zip(state.adam.first_moments.iter().zip(&state.adam.second_moments)) {
        file.tensors.insert(format!("adam.m.{}", p.name), TensorData::F32 { shape: p.shape.clone(), data: m.clone() });
        file.tensors.insert(format!("adam.v.{}", p.name), TensorData::F32 { shape: p.shape.clone(), data: v.clone() });
    }
    write_tensors(path, &file)
}

/// Reads the state for `model`'s parameters; any inconsistency is an error
/// naming the file (the caller then falls back to an older checkpoint).
pub fn read_resume_state(path: &Path, model: &Model) -> Result<ResumeState, ArtifactError> {
    let file = read_tensors(path)?;
    let bad = |what: &str, e: &dyn std::fmt::Display| ArtifactError::new(path, format!("metadata `{what}`: {e}"));
    let parse_json = |key: &str| -> Result<serde_json::Value, ArtifactError> {
        serde_json::from_str(file.meta(path, key)?).map_err(|e| bad(key, &e))
    };
    let step: u64 = file.meta(path, "step")?.parse().map_err(|e| bad("step", &e))?;
    let learning_rate: f64 =
        serde_json::from_value(parse_json("adam_learning_rate")?).map_err(|e| bad("adam_learning_rate", &e))?;
    let mut adam = Adam::new(learning_rate, &model.parameters().iter().map(|p| p.data.len()).collect::<Vec<_>>());
    adam.steps = file.meta(path, "adam_steps")?.parse().map_err(|e| bad("adam_steps", &e))?;
    for (i, p) in model.parameters().iter().enumerate() {
        let shape: Vec<Option<usize>> = p.shape.iter().map(|&s| Some(s)).collect();
        adam.first_moments[i] = file.f32(path, &format!("adam.m.{}", p.name), &shape)?.1.to_vec();
        adam.second_moments[i] = file.f32(path, &format!("adam.v.{}", p.name), &shape)?.1.to_vec();
        for (kind, moments) in [("m", &adam.first_moments[i]), ("v", &adam.second_moments[i])] {
            if moments.iter().any(|v| !v.is_finite()) {
                return Err(ArtifactError::new(path, format!("tensor `adam.{kind}.{}` holds NaN or infinite values", p.name)));
            }
        }
    }
    Ok(ResumeState {
        step,
        fingerprint: file.meta(path, "fingerprint")?.to_string(),
        adam,
        rows: serde_json::from_value(parse_json("metrics")?).map_err(|e| bad("metrics", &e))?,
        running: serde_json::from_value(parse_json("running")?).map_err(|e| bad("running", &e))?,
    })
}

/// JSON text of plain data: serde_json writes the shortest float text that
/// reads back to the same bits, and reads it back to them with its
/// `float_roundtrip` feature (the workspace enables it).
fn json(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).expect("plain data serialises to JSON")
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::architecture::ModelKind;
    use common::image::ImageShape;

    /// Metrics and running sums are f64 in JSON text: every value must read
    /// back to its bits, or a resumed run ends with other bytes (seen with
    /// serde_json's default float parser, which can miss by one ulp).
    #[test]
    fn json_floats_read_back_to_the_same_bits() {
        let mut rng = common::rng::Rng::new(3);
        let values: Vec<f64> =
            (0..20_000).map(|_| (rng.uniform(0.0, 1.0) as f64 + 1e-9 * rng.uniform(0.0, 1.0) as f64) * 3.0).collect();
        let mut observed =
            vec![2.2597166299819946, 1.9718149169984627, 0.45313529046284573, 1.3452006578445435, 1.5261950492858887];
        observed.extend(values);
        for v in observed {
            let back: f64 = serde_json::from_str(&json(&v)).unwrap();
            assert_eq!(back.to_bits(), v.to_bits(), "{v} read back as {back}");
        }
    }

    #[test]
    fn resume_state_round_trips_bit_exactly() {
        let model = Model::initialized(&ModelKind::Simple.architecture(10), ImageShape::GRAY_28, 1).unwrap();
        let lengths: Vec<usize> = model.parameters().iter().map(|p| p.data.len()).collect();
        let mut adam = Adam::new(1e-3, &lengths);
        let grads: Vec<Vec<f32>> = lengths.iter().map(|&n| (0..n).map(|i| (i as f32 * 0.37).sin() / 3.0).collect()).collect();
        let mut params = model.clone();
        adam.step(params.parameters_mut(), &grads);
        let row = MetricsRow {
            step: 0,
            epoch: 1.0 / 3.0,
            train_loss: 2.302585092994046,
            train_loss_running: 0.1 + 0.2,
            train_acc_running: 0.1,
            test_loss: 1e-300,
            test_acc: 0.5,
            probe_loss: 2.0,
            probe_acc: 0.25,
            train_eval_loss: 0.5,
            train_eval_acc: 0.75,
        };
        let state = ResumeState {
            step: 7,
            fingerprint: "abc".into(),
            adam,
            rows: vec![row],
            running: RunningMean { loss_sum: 0.7, batches: 3, correct: 11, images: 300 },
        };
        let scratch = common::scratch::ScratchDir::new("resume");
        let path = scratch.join("step-000007.resume.safetensors");
        write_resume_state(&path, &model, &state).unwrap();
        assert_eq!(read_resume_state(&path, &model).unwrap(), state);
        // NaN moments (a damaged or diverged state) are an error naming the tensor.
        let mut poisoned = state.clone();
        poisoned.adam.second_moments[2][7] = f32::NAN;
        write_resume_state(&path, &model, &poisoned).unwrap();
        let err = read_resume_state(&path, &model).unwrap_err().to_string();
        assert!(err.contains("tensor `adam.v.features_conv.3.weight` holds NaN"), "{err}");
        write_resume_state(&path, &model, &state).unwrap();
        let other = Model::initialized(&ModelKind::Complex.architecture(10), ImageShape::GRAY_28, 1).unwrap();
        assert!(read_resume_state(&path, &other).unwrap_err().to_string().contains("adam.m.features_conv.0.weight"));
    }
}
