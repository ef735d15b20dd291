//! safetensors files: checkpoints, resume state and attribution maps.
//!
//! Files are encoded here rather than with `safetensors::serialize`, whose
//! header writes `__metadata__` from a `HashMap` in random order; the same
//! content must give the same bytes. Reading goes through the safetensors
//! crate, which validates the header and offsets.
//!
//! Every file this project writes carries a content hash of its tensor
//! data in its metadata ([`CONTENT_KEY`]; docs/DESIGN.md, "Fingerprints
//! and caching"): a reader recomputes it, so a file altered after it was
//! written (a poisoned weight, a truncated payload) is an error, never a
//! silent input. Files from elsewhere (a PyTorch `save_file`) have none.

use std::collections::BTreeMap;
use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use super::{content_hash, write_atomic, ArtifactError};

/// The metadata key of the content hash: of the tensor data (every byte
/// after the header), as [`content_hash`] writes it.
pub const CONTENT_KEY: &str = "content_sha256";

/// Headers longer than this are not ours (ours are a few kilobytes).
const MAX_HEADER: u64 = 100_000_000;

/// One tensor's values.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    F32 { shape: Vec<usize>, data: Vec<f32> },
    I64 { shape: Vec<usize>, data: Vec<i64> },
}

impl TensorData {
    pub fn shape(&self) -> &[usize] {
        match self {
            TensorData::F32 { shape, .. } | TensorData::I64 { shape, .. } => shape,
        }
    }

    fn dtype_name(&self) -> &'static str {
        match self {
            TensorData::F32 { .. } => "F32",
            TensorData::I64 { .. } => "I64",
        }
    }

    fn bytes(&self) -> Vec<u8> {
        match self {
            TensorData::F32 { data, .. } => data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            TensorData::I64 { data, .. } => data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }
}

/// The content of a safetensors file.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TensorFile {
    pub metadata: BTreeMap<String, String>,
    pub tensors: BTreeMap<String, TensorData>,
    /// Read from a file: the content hash it carried (checked against its
    /// data). Ignored when writing, which computes the hash afresh.
    pub content: Option<String>,
}

impl TensorFile {
    /// A metadata value, or an error naming the file and the key.
    pub fn meta(&self, path: &Path, key: &str) -> Result<&str, ArtifactError> {
        self.metadata.get(key).map(|s| s.as_str()).ok_or_else(|| ArtifactError::new(path, format!("metadata `{key}` is missing")))
    }

    /// An f32 tensor with the expected shape (`None` in `expected` matches any
    /// extent), or an error naming the tensor and the shape.
    pub fn f32(&self, path: &Path, name: &str, expected: &[Option<usize>]) -> Result<(&[usize], &[f32]), ArtifactError> {
        match self.tensors.get(name) {
            Some(TensorData::F32 { shape, data }) if shape_matches(shape, expected) => Ok((shape, data)),
            Some(other) => Err(shape_error(path, name, "F32", other, expected)),
            None => Err(ArtifactError::new(path, format!("tensor `{name}` is missing"))),
        }
    }

    pub fn i64(&self, path: &Path, name: &str, expected: &[Option<usize>]) -> Result<(&[usize], &[i64]), ArtifactError> {
        match self.tensors.get(name) {
            Some(TensorData::I64 { shape, data }) if shape_matches(shape, expected) => Ok((shape, data)),
            Some(other) => Err(shape_error(path, name, "I64", other, expected)),
            None => Err(ArtifactError::new(path, format!("tensor `{name}` is missing"))),
        }
    }
}

fn shape_matches(shape: &[usize], expected: &[Option<usize>]) -> bool {
    shape.len() == expected.len() && shape.iter().zip(expected).all(|(s, e)| e.map_or(true, |e| e == *s))
}

fn shape_error(path: &Path, name: &str, dtype: &str, found: &TensorData, expected: &[Option<usize>]) -> ArtifactError {
    let want: Vec<String> = expected.iter().map(|e| e.map_or("*".to_string(), |v| v.to_string())).collect();
    ArtifactError::new(
        path,
        format!("tensor `{name}` is {} {:?}, expected {dtype} [{}]", found.dtype_name(), found.shape(), want.join(", ")),
    )
}

/// Encodes tensors and metadata, with the content hash of the tensor data
/// in the metadata; tensors are laid out in name order.
pub fn encode(file: &TensorFile) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut payload = Vec::new();
    for (name, tensor) in &file.tensors {
        let bytes = tensor.bytes();
        let info = serde_json::json!({
            "dtype": tensor.dtype_name(),
            "shape": tensor.shape(),
            "data_offsets": [payload.len(), payload.len() + bytes.len()],
        });
        header.insert(name.clone(), info);
        payload.extend_from_slice(&bytes);
    }
    let mut meta: serde_json::Map<String, serde_json::Value> =
        file.metadata.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect();
    meta.insert(CONTENT_KEY.into(), serde_json::Value::String(content_hash(&payload)));
    header.insert("__metadata__".into(), serde_json::Value::Object(meta));
    // serde_json's Map is a BTreeMap here (no `preserve_order`): keys sorted.
    let mut header_bytes = serde_json::to_vec(&serde_json::Value::Object(header)).expect("JSON header");
    while header_bytes.len() % 8 != 0 {
        header_bytes.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + header_bytes.len() + payload.len());
    out.extend_from_slice(&(header_bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(&header_bytes);
    out.extend_from_slice(&payload);
    out
}

/// Writes a safetensors file atomically.
pub fn write_tensors(path: &Path, file: &TensorFile) -> Result<(), ArtifactError> {
    write_atomic(path, &encode(file))
}

/// The safetensors crate's error in words (its `Debug` names such as
/// `MetadataIncompleteBuffer` mean nothing to a user).
fn explain(e: &safetensors::SafeTensorError) -> String {
    use safetensors::SafeTensorError as E;
    match e {
        E::HeaderTooSmall => "the file is shorter than a header".into(),
        E::HeaderTooLarge => "its header length is implausible (not a safetensors file?)".into(),
        E::InvalidHeaderLength => "its header length runs past the end of the file (truncated?)".into(),
        E::InvalidHeader | E::InvalidHeaderStart | E::InvalidHeaderDeserialization => "its header is not valid JSON".into(),
        E::MetadataIncompleteBuffer => "its tensor data is cut short (truncated?)".into(),
        E::InvalidOffset(name) => format!("tensor `{name}` has data offsets outside the file"),
        E::TensorInvalidInfo => "a tensor's shape does not match its data length".into(),
        E::ValidationOverflow => "a tensor's shape overflows".into(),
        other => other.to_string(),
    }
}

/// Decodes safetensors bytes, checking the content hash where the file
/// has one; errors name `path`.
pub fn decode(path: &Path, bytes: &[u8]) -> Result<TensorFile, ArtifactError> {
    let bad =
        |e: &safetensors::SafeTensorError| ArtifactError::new(path, format!("not a valid safetensors file: {}", explain(e)));
    let (header_len, header) = SafeTensors::read_metadata(bytes).map_err(|e| bad(&e))?;
    let tensors = SafeTensors::deserialize(bytes).map_err(|e| bad(&e))?;
    let mut file = TensorFile {
        metadata: header.metadata().clone().unwrap_or_default().into_iter().collect(),
        tensors: BTreeMap::new(),
        content: None,
    };
    if let Some(stored) = file.metadata.remove(CONTENT_KEY) {
        if stored != content_hash(&bytes[8 + header_len..]) {
            return Err(ArtifactError::new(
                path,
                "its tensor data does not match the content hash it was written with (altered or damaged)",
            ));
        }
        file.content = Some(stored);
    }
    for (name, view) in tensors.tensors() {
        let shape = view.shape().to_vec();
        let data = view.data();
        let tensor = match view.dtype() {
            Dtype::F32 => TensorData::F32 {
                shape,
                data: data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            },
            Dtype::I64 => TensorData::I64 {
                shape,
                data: data.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes"))).collect(),
            },
            other => return Err(ArtifactError::new(path, format!("tensor `{name}` has unsupported dtype {other:?}"))),
        };
        file.tensors.insert(name, tensor);
    }
    Ok(file)
}

/// Reads a safetensors file; a missing, truncated, corrupt or altered
/// file is an error naming it.
pub fn read_tensors(path: &Path) -> Result<TensorFile, ArtifactError> {
    let bytes = std::fs::read(path).map_err(|e| ArtifactError::new(path, format!("cannot read: {e}")))?;
    decode(path, &bytes)
}

/// Only the `__metadata__` of a safetensors file (the content hash among
/// it), reading just its header: cheap checks on large files.
pub fn read_metadata(path: &Path) -> Result<BTreeMap<String, String>, ArtifactError> {
    let mut file = std::fs::File::open(path).map_err(|e| ArtifactError::new(path, format!("cannot read: {e}")))?;
    Ok(read_header(path, &mut file)?.0)
}

/// The metadata of an open file, and the header's length.
fn read_header(path: &Path, file: &mut std::fs::File) -> Result<(BTreeMap<String, String>, u64), ArtifactError> {
    use std::io::Read;
    let bad = |e: &dyn std::fmt::Display| ArtifactError::new(path, format!("not a valid safetensors file: {e}"));
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(|_| bad(&"the file is shorter than a header"))?;
    let len = u64::from_le_bytes(len);
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    if len > MAX_HEADER || len > size.saturating_sub(8) {
        return Err(bad(&format!("its header length {len} runs past the end of the file (truncated?)")));
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header).map_err(|_| bad(&"its header is cut short (truncated?)"))?;
    let value: serde_json::Value = serde_json::from_slice(&header).map_err(|_| bad(&"its header is not valid JSON"))?;
    let mut out = BTreeMap::new();
    if let Some(meta) = value.get("__metadata__").and_then(|m| m.as_object()) {
        for (k, v) in meta {
            out.insert(k.clone(), v.as_str().ok_or_else(|| bad(&format!("metadata `{k}` is not a string")))?.to_string());
        }
    }
    Ok((out, len))
}

/// The metadata of a file this project wrote, after checking that its
/// tensor data still matches the content hash in it (reads the whole file
/// but decodes nothing: the check of a cached output). A file without a
/// content hash is an error too.
pub fn read_verified_metadata(path: &Path) -> Result<BTreeMap<String, String>, ArtifactError> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(|e| ArtifactError::new(path, format!("cannot read: {e}")))?;
    let (metadata, _) = read_header(path, &mut file)?;
    let stored = metadata
        .get(CONTENT_KEY)
        .ok_or_else(|| ArtifactError::new(path, format!("metadata `{CONTENT_KEY}` is missing (written by an older version?)")))?;
    let mut payload = Vec::new();
    file.read_to_end(&mut payload).map_err(|e| ArtifactError::new(path, format!("cannot read: {e}")))?;
    if *stored != content_hash(&payload) {
        return Err(ArtifactError::new(
            path,
            "its tensor data does not match the content hash it was written with (altered or damaged)",
        ));
    }
    Ok(metadata)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> TensorFile {
        let mut file = TensorFile::default();
        for (k, v) in [("run", "a"), ("step", "3"), ("model", "simple"), ("fingerprint", "ff")] {
            file.metadata.insert(k.into(), v.into());
        }
        file.tensors.insert("w".into(), TensorData::F32 { shape: vec![2, 3], data: vec![1.0, -2.0, 3.5, 0.0, 5.0, 6.0] });
        file.tensors.insert("ids".into(), TensorData::I64 { shape: vec![2], data: vec![7, -1] });
        file
    }

    #[test]
    fn round_trips_and_is_byte_stable() {
        let file = sample();
        let bytes = encode(&file);
        assert_eq!(bytes, encode(&file.clone()));
        let back = decode(Path::new("x"), &bytes).unwrap();
        assert_eq!((&back.metadata, &back.tensors), (&file.metadata, &file.tensors));
        assert_eq!(back.content, Some(content_hash(&bytes[bytes.len() - 6 * 4 - 2 * 8..])), "the hash of the tensor data");
    }

    #[test]
    fn truncated_or_garbage_files_are_named_errors() {
        let bytes = encode(&sample());
        for bad in [&bytes[..bytes.len() - 3], &bytes[..5], b"garbage garbage garbage"] {
            let err = decode(Path::new("ckpt.safetensors"), bad).unwrap_err().to_string();
            assert!(err.starts_with("ckpt.safetensors: not a valid safetensors file"), "{err}");
        }
        let file = sample();
        let err = file.f32(Path::new("f"), "w", &[Some(3), None]).unwrap_err().to_string();
        assert!(err.contains("tensor `w` is F32 [2, 3], expected F32 [3, *]"), "{err}");
        assert!(file.meta(Path::new("f"), "epoch").unwrap_err().to_string().contains("`epoch` is missing"));
        let scratch = crate::scratch::ScratchDir::new("tensors-meta");
        let path = scratch.join("file.safetensors");
        std::fs::write(&path, encode(&file)).unwrap();
        let mut stored = read_metadata(&path).unwrap();
        assert!(stored.remove(CONTENT_KEY).is_some(), "written with a content hash");
        assert_eq!(stored, file.metadata);
        assert!(read_verified_metadata(&path).is_ok());
        // One flipped bit of tensor data: the read and the check both fail.
        let mut flipped = encode(&file);
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        let err = read_tensors(&path).unwrap_err().to_string();
        assert!(err.contains("does not match the content hash"), "{err}");
        assert!(read_verified_metadata(&path).unwrap_err().to_string().contains("does not match the content hash"));
        std::fs::write(&path, &bytes[..20]).unwrap();
        assert!(read_metadata(&path).is_err());
    }
}
