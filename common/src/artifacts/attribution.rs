//! Attribution files: the maps of the whole probe set for one (run, method,
//! checkpoint), with what produced them (see DESIGN: attribution maps).

use std::path::Path;

use super::{read_tensors, write_tensors, ArtifactError, Probe, TensorData, TensorFile};

/// The maps of one method at one checkpoint, in probe order.
#[derive(Clone, Debug, PartialEq)]
pub struct Attributions {
    pub run: String,
    pub method: String,
    pub step: u64,
    pub epoch: f64,
    pub height: usize,
    pub width: usize,
    /// `[N, height, width]`, row-major.
    pub maps: Vec<f32>,
    pub probe_id: Vec<i64>,
    /// The explained class of each map.
    pub target: Vec<i64>,
    pub prediction: Vec<i64>,
    /// The explained logit of each map.
    pub logit: Vec<f32>,
    pub method_fingerprint: String,
    pub checkpoint_fingerprint: String,
    /// The content hash of the checkpoint the maps were computed from.
    pub checkpoint_content: String,
    /// Of this file: checkpoint and method together.
    pub fingerprint: String,
    /// Read from a file: its content hash (checked against its data).
    pub content: Option<String>,
}

impl Attributions {
    pub fn len(&self) -> usize {
        self.probe_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.probe_id.is_empty()
    }

    /// The map of the `i`-th probe image.
    pub fn map(&self, i: usize) -> &[f32] {
        let n = self.height * self.width;
        &self.maps[i * n..(i + 1) * n]
    }

    /// The file holds the maps of exactly this probe set, in its order,
    /// with classes below `classes` and finite values; otherwise what is
    /// wrong (the maps of another probe set, a damaged file, a diverged
    /// model).
    pub fn check_against(&self, probe: &Probe, classes: usize) -> Result<(), String> {
        if self.len() != probe.len() {
            return Err(format!("it holds {} map(s) but the probe set has {} image(s)", self.len(), probe.len()));
        }
        if let Some(i) = (0..self.len()).find(|&i| self.probe_id[i] != probe.entries[i].probe_id) {
            return Err(format!(
                "map {i} is of probe_id {}, but probe image {i} has id {}",
                self.probe_id[i], probe.entries[i].probe_id
            ));
        }
        for (name, values) in [("target", &self.target), ("prediction", &self.prediction)] {
            if let Some((i, v)) = values.iter().enumerate().find(|(_, &v)| !(0..classes as i64).contains(&v)) {
                return Err(format!("map {i}: {name} {v} is not a class of a model with {classes} classes"));
            }
        }
        if let Some(i) = (0..self.len()).find(|&i| self.map(i).iter().any(|v| !v.is_finite())) {
            return Err(format!("the map of probe_id {} holds NaN or infinite values", self.probe_id[i]));
        }
        if let Some(i) = self.logit.iter().position(|v| !v.is_finite()) {
            return Err(format!("the logit of probe_id {} is not finite", self.probe_id[i]));
        }
        Ok(())
    }
}

pub fn write_attributions(path: &Path, a: &Attributions) -> Result<(), ArtifactError> {
    let n = a.len();
    let mut file = TensorFile::default();
    for (key, value) in [
        ("run", a.run.clone()),
        ("method", a.method.clone()),
        ("step", a.step.to_string()),
        ("epoch", super::checkpoint::format_epoch(a.epoch)),
        ("method_fingerprint", a.method_fingerprint.clone()),
        ("checkpoint_fingerprint", a.checkpoint_fingerprint.clone()),
        ("checkpoint_content", a.checkpoint_content.clone()),
        ("fingerprint", a.fingerprint.clone()),
    ] {
        file.metadata.insert(key.into(), value);
    }
    file.tensors.insert("attribution".into(), TensorData::F32 { shape: vec![n, a.height, a.width], data: a.maps.clone() });
    file.tensors.insert("probe_id".into(), TensorData::I64 { shape: vec![n], data: a.probe_id.clone() });
    file.tensors.insert("target".into(), TensorData::I64 { shape: vec![n], data: a.target.clone() });
    file.tensors.insert("prediction".into(), TensorData::I64 { shape: vec![n], data: a.prediction.clone() });
    file.tensors.insert("logit".into(), TensorData::F32 { shape: vec![n], data: a.logit.clone() });
    write_tensors(path, &file)
}

/// Reads an attribution file, checking that every tensor is there with
/// consistent shapes; errors name the file and the tensor.
pub fn read_attributions(path: &Path) -> Result<Attributions, ArtifactError> {
    let file = read_tensors(path)?;
    let (shape, maps) = file.f32(path, "attribution", &[None, None, None])?;
    let (n, height, width) = (shape[0], shape[1], shape[2]);
    let ints = |name: &str| file.i64(path, name, &[Some(n)]).map(|(_, d)| d.to_vec());
    let number = |key: &str| -> Result<f64, ArtifactError> {
        let text = file.meta(path, key)?;
        text.parse().map_err(|_| ArtifactError::new(path, format!("metadata `{key}` = `{text}` is not a number")))
    };
    Ok(Attributions {
        run: file.meta(path, "run")?.to_string(),
        method: file.meta(path, "method")?.to_string(),
        step: file.meta(path, "step")?.parse().map_err(|_| ArtifactError::new(path, "metadata `step` is not a step number"))?,
        epoch: number("epoch")?,
        height,
        width,
        maps: maps.to_vec(),
        probe_id: ints("probe_id")?,
        target: ints("target")?,
        prediction: ints("prediction")?,
        logit: file.f32(path, "logit", &[Some(n)])?.1.to_vec(),
        method_fingerprint: file.meta(path, "method_fingerprint")?.to_string(),
        checkpoint_fingerprint: file.meta(path, "checkpoint_fingerprint")?.to_string(),
        checkpoint_content: file.meta(path, "checkpoint_content")?.to_string(),
        fingerprint: file.meta(path, "fingerprint")?.to_string(),
        content: file.content.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributions_round_trip_and_check_shapes() {
        let a = Attributions {
            run: "r".into(),
            method: "lrp".into(),
            step: 600,
            epoch: 1.5,
            height: 2,
            width: 3,
            maps: (0..12).map(|i| i as f32 - 4.0).collect(),
            probe_id: vec![0, 1],
            target: vec![3, 4],
            prediction: vec![3, 5],
            logit: vec![2.5, -1.0],
            method_fingerprint: "m".into(),
            checkpoint_fingerprint: "c".into(),
            checkpoint_content: "cc".into(),
            fingerprint: "f".into(),
            content: None,
        };
        let scratch = crate::scratch::ScratchDir::new("attr");
        let path = scratch.join("step-000600.safetensors");
        write_attributions(&path, &a).unwrap();
        let back = read_attributions(&path).unwrap();
        assert!(back.content.is_some());
        assert_eq!(Attributions { content: None, ..back.clone() }, a);
        assert_eq!(back.map(1), &[2.0, 3.0, 4.0, 5.0, 6.0, 7.0]);

        let mut file = read_tensors(&path).unwrap();
        file.tensors.insert("target".into(), TensorData::I64 { shape: vec![3], data: vec![0, 0, 0] });
        write_tensors(&path, &file).unwrap();
        let err = read_attributions(&path).unwrap_err().to_string();
        assert!(err.contains("tensor `target`") && err.contains("expected I64 [2]"), "{err}");
    }
}
