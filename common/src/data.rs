//! Image data sets: MNIST, Fashion-MNIST and KMNIST IDX files, CIFAR-10 and
//! CIFAR-100 binary files, folders of PNG or JPEG images and a
//! deterministic synthetic set.
//!
//! Images stay as bytes (one `u8` per channel and pixel, C·H·W order) and are
//! normalised per batch: the whole CIFAR-10 training set is 150 MB as bytes
//! and would be 600 MB as `f32`.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::config::CifarLabels;
pub use crate::image::{ImageShape, Normalization};
use crate::rng::Rng;

/// Reading a data file failed; the message names the file and the problem.
#[derive(Debug, thiserror::Error)]
#[error("{}: {problem}", path.display())]
pub struct DataError {
    pub path: PathBuf,
    pub problem: String,
}

fn data_error(path: &Path, problem: impl Into<String>) -> DataError {
    DataError { path: path.to_path_buf(), problem: problem.into() }
}

/// A labelled set of byte images.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageSet {
    pub shape: ImageShape,
    pub pixels: Vec<u8>,
    pub labels: Vec<u8>,
}

impl ImageSet {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn image(&self, index: usize) -> &[u8] {
        let n = self.shape.len();
        &self.pixels[index * n..(index + 1) * n]
    }

    /// The images at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> ImageSet {
        let mut pixels = Vec::with_capacity(indices.len() * self.shape.len());
        for &i in indices {
            pixels.extend_from_slice(self.image(i));
        }
        ImageSet { shape: self.shape, pixels, labels: indices.iter().map(|&i| self.labels[i]).collect() }
    }
}

/// Training and test split of one data set.
#[derive(Clone, Debug)]
pub struct Dataset {
    pub train: ImageSet,
    pub test: ImageSet,
    pub classes: usize,
}

/// Normalisation of byte images into network inputs (here rather than in
/// `image`, which knows no image sets).
impl Normalization {
    /// Normalises the images `indices` of `set` into `out` (N·C·H·W floats).
    pub fn batch_into(&self, set: &ImageSet, indices: &[usize], out: &mut Vec<f32>) {
        let shape = set.shape;
        let plane = shape.height * shape.width;
        out.clear();
        out.reserve(indices.len() * shape.len());
        for &i in indices {
            let image = set.image(i);
            for c in 0..shape.channels {
                let scale = 1.0 / (255.0 * self.std[c]);
                let shift = self.mean[c] / self.std[c];
                out.extend(image[c * plane..(c + 1) * plane].iter().map(|&p| p as f32 * scale - shift));
            }
        }
    }

    pub fn batch(&self, set: &ImageSet, indices: &[usize]) -> Vec<f32> {
        let mut out = Vec::new();
        self.batch_into(set, indices, &mut out);
        out
    }
}

fn read_maybe_gzip(path: &Path) -> Result<Vec<u8>, DataError> {
    let raw = std::fs::read(path).map_err(|e| data_error(path, format!("cannot read: {e}")))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| data_error(path, format!("corrupt gzip stream: {e}")))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

fn be_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Parses an IDX file of unsigned bytes with `dims` dimensions; returns the
/// dimensions and the payload.
fn parse_idx(path: &Path, bytes: &[u8], dims: usize) -> Result<(Vec<usize>, Vec<u8>), DataError> {
    let header = 4 + 4 * dims;
    if bytes.len() < header {
        return Err(data_error(path, format!("truncated: {} bytes, the IDX header alone is {header}", bytes.len())));
    }
    let magic = be_u32(bytes, 0);
    let expected = 0x0800 + dims as u32;
    if magic != expected {
        return Err(data_error(
            path,
            format!("bad magic number 0x{magic:08x}, expected 0x{expected:08x} (unsigned bytes, {dims} dimensions)"),
        ));
    }
    let shape: Vec<usize> = (0..dims).map(|d| be_u32(bytes, 4 + 4 * d) as usize).collect();
    let payload: usize = shape.iter().product();
    if bytes.len() - header != payload {
        return Err(data_error(
            path,
            format!(
                "wrong size: header says {shape:?} ({payload} bytes of data), file has {} bytes of data",
                bytes.len() - header
            ),
        ));
    }
    Ok((shape, bytes[header..].to_vec()))
}

fn check_labels(path: &Path, labels: &[u8], classes: usize) -> Result<(), DataError> {
    if let Some((i, &l)) = labels.iter().enumerate().find(|(_, &l)| l as usize >= classes) {
        return Err(data_error(path, format!("label {l} of item {i} is out of range 0..{classes}")));
    }
    Ok(())
}

/// Reads an IDX image file and its label file (gzip or raw).
pub fn load_idx(images: &Path, labels: &Path) -> Result<ImageSet, DataError> {
    let (dims, pixels) = parse_idx(images, &read_maybe_gzip(images)?, 3)?;
    let (label_dims, label_bytes) = parse_idx(labels, &read_maybe_gzip(labels)?, 1)?;
    if label_dims[0] != dims[0] {
        return Err(data_error(labels, format!("{} labels for {} images in {}", label_dims[0], dims[0], images.display())));
    }
    check_labels(labels, &label_bytes, 10)?;
    Ok(ImageSet { shape: ImageShape { channels: 1, height: dims[1], width: dims[2] }, pixels, labels: label_bytes })
}

/// Finds `name` or `name.gz` in `dir`.
fn idx_file(dir: &Path, name: &str) -> Result<PathBuf, DataError> {
    for candidate in [dir.join(format!("{name}.gz")), dir.join(name)] {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(data_error(&dir.join(name), "missing (neither the file nor its .gz exists); run `make data`"))
}

/// The four official IDX files of MNIST, Fashion-MNIST or KMNIST.
const IDX_FILES: [&str; 4] =
    ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"];

/// MNIST, Fashion-MNIST or KMNIST: the four official IDX files in `dir`.
pub fn load_idx_dir(dir: &Path) -> Result<Dataset, DataError> {
    let [train_images, train_labels, test_images, test_labels] = IDX_FILES.map(|name| idx_file(dir, name));
    let train = load_idx(&train_images?, &train_labels?)?;
    let test = load_idx(&test_images?, &test_labels?)?;
    Ok(Dataset { train, test, classes: 10 })
}

const CIFAR_RECORD: usize = 1 + 3 * 32 * 32;

/// Reads CIFAR-10 binary batches (1 label byte + 3072 bytes R, G, B planes).
pub fn load_cifar_batches(paths: &[PathBuf]) -> Result<ImageSet, DataError> {
    let mut set = ImageSet { shape: ImageShape::RGB_32, pixels: Vec::new(), labels: Vec::new() };
    for path in paths {
        let bytes = std::fs::read(path).map_err(|e| data_error(path, format!("cannot read: {e}")))?;
        if bytes.is_empty() || bytes.len() % CIFAR_RECORD != 0 {
            return Err(data_error(
                path,
                format!("wrong size: {} bytes is not a whole number of {CIFAR_RECORD}-byte records", bytes.len()),
            ));
        }
        for (i, record) in bytes.chunks_exact(CIFAR_RECORD).enumerate() {
            if record[0] >= 10 {
                return Err(data_error(path, format!("label {} of record {i} is out of range 0..10", record[0])));
            }
            set.labels.push(record[0]);
            set.pixels.extend_from_slice(&record[1..]);
        }
    }
    Ok(set)
}

/// CIFAR-10: `data_batch_*.bin` and `test_batch.bin` in `dir`.
pub fn load_cifar_dir(dir: &Path) -> Result<Dataset, DataError> {
    let (train, test) = cifar_files(dir)?;
    Ok(Dataset { train: load_cifar_batches(&train)?, test: load_cifar_batches(&[test])?, classes: 10 })
}

/// CIFAR-10's training batches, in name order, and its test batch.
fn cifar_files(dir: &Path) -> Result<(Vec<PathBuf>, PathBuf), DataError> {
    let entries = std::fs::read_dir(dir).map_err(|e| data_error(dir, format!("cannot list: {e}; run `make data`")))?;
    let mut train: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.starts_with("data_batch_") && name.ends_with(".bin")
        })
        .collect();
    train.sort();
    if train.is_empty() {
        return Err(data_error(dir, "no data_batch_*.bin files"));
    }
    let test = dir.join("test_batch.bin");
    if !test.is_file() {
        return Err(data_error(&test, "missing"));
    }
    Ok((train, test))
}

const CIFAR100_RECORD: usize = 2 + 3 * 32 * 32;

/// Reads a CIFAR-100 binary file (coarse label byte, fine label byte, 3072
/// bytes R, G, B planes), keeping the `labels` asked for.
pub fn load_cifar100_file(path: &Path, labels: CifarLabels) -> Result<ImageSet, DataError> {
    let bytes = std::fs::read(path).map_err(|e| data_error(path, format!("cannot read: {e}; run `make data-cifar100`")))?;
    if bytes.is_empty() || bytes.len() % CIFAR100_RECORD != 0 {
        return Err(data_error(
            path,
            format!("wrong size: {} bytes is not a whole number of {CIFAR100_RECORD}-byte records", bytes.len()),
        ));
    }
    let (at, classes) = match labels {
        CifarLabels::Coarse => (0, 20),
        CifarLabels::Fine => (1, 100),
    };
    let mut set = ImageSet { shape: ImageShape::RGB_32, pixels: Vec::with_capacity(bytes.len()), labels: Vec::new() };
    for (i, record) in bytes.chunks_exact(CIFAR100_RECORD).enumerate() {
        if record[at] as usize >= classes {
            return Err(data_error(path, format!("label {} of record {i} is out of range 0..{classes}", record[at])));
        }
        set.labels.push(record[at]);
        set.pixels.extend_from_slice(&record[2..]);
    }
    Ok(set)
}

/// CIFAR-100: `train.bin` and `test.bin` in `dir`.
pub fn load_cifar100_dir(dir: &Path, labels: CifarLabels) -> Result<Dataset, DataError> {
    let classes = if labels == CifarLabels::Fine { 100 } else { 20 };
    let train = load_cifar100_file(&dir.join("train.bin"), labels)?;
    let test = load_cifar100_file(&dir.join("test.bin"), labels)?;
    Ok(Dataset { train, test, classes })
}

/// File name endings read as images in an image folder.
const IMAGE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// The entries of `dir`, sorted by name: its folders, or its image files.
fn sorted_entries(dir: &Path, folders: bool) -> Result<Vec<PathBuf>, DataError> {
    let entries = std::fs::read_dir(dir).map_err(|e| data_error(dir, format!("cannot list: {e}")))?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            if folders {
                p.is_dir()
            } else {
                let extension = p.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
                p.is_file() && extension.is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.as_str()))
            }
        })
        .collect();
    paths.sort();
    Ok(paths)
}

/// One image file as bytes in C·H·W order, of exactly `shape`: 1 channel
/// from a grey image, 3 from a colour one (an alpha channel is dropped).
fn read_image_file(path: &Path, shape: ImageShape) -> Result<Vec<u8>, DataError> {
    let image = image::open(path).map_err(|e| data_error(path, format!("cannot decode: {e}")))?;
    let channels = if image.color().has_color() { 3 } else { 1 };
    let found = ImageShape { channels, height: image.height() as usize, width: image.width() as usize };
    if found != shape {
        return Err(data_error(path, format!("image is {found}, the data set declares {shape}")));
    }
    let plane = shape.height * shape.width;
    Ok(match channels {
        1 => image.to_luma8().into_raw(),
        _ => {
            let interleaved = image.to_rgb8().into_raw();
            let mut planes = vec![0u8; 3 * plane];
            for (i, pixel) in interleaved.chunks_exact(3).enumerate() {
                for c in 0..3 {
                    planes[c * plane + i] = pixel[c];
                }
            }
            planes
        }
    })
}

/// An image folder's split: one folder per class (named as in `classes`),
/// each image labelled by its folder's position.
fn load_image_split(dir: &Path, classes: &[String], shape: ImageShape) -> Result<ImageSet, DataError> {
    let mut set = ImageSet { shape, pixels: Vec::new(), labels: Vec::new() };
    for (label, class) in classes.iter().enumerate() {
        let folder = dir.join(class);
        if !folder.is_dir() {
            return Err(data_error(&folder, "missing: every class of train/ needs a folder in test/ too"));
        }
        for file in sorted_entries(&folder, false)? {
            set.pixels.extend(read_image_file(&file, shape)?);
            set.labels.push(label as u8);
        }
    }
    if set.is_empty() {
        return Err(data_error(dir, "no PNG or JPEG images in its class folders"));
    }
    Ok(set)
}

/// An image folder: `dir/train/<class>/*.png|jpg` and `dir/test/<class>/...`,
/// the classes being train/'s folders in name order (`classes` of them).
pub fn load_image_folder(dir: &Path, shape: ImageShape, classes: usize) -> Result<Dataset, DataError> {
    let train_dir = dir.join("train");
    let names: Vec<String> = sorted_entries(&train_dir, true)?
        .iter()
        .map(|p| p.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string())
        .collect();
    if names.len() != classes {
        return Err(data_error(
            &train_dir,
            format!("has {} class folders, the config declares `classes = {classes}`", names.len()),
        ));
    }
    let train = load_image_split(&train_dir, &names, shape)?;
    let test = load_image_split(&dir.join("test"), &names, shape)?;
    Ok(Dataset { train, test, classes })
}

/// The files a data set is read from, in a fixed order: what its
/// fingerprint hashes (none for a synthetic one). Image folders list every
/// image of `train/` and `test/`, class folders in name order.
pub fn dataset_files(config: &crate::config::DatasetConfig) -> Result<Vec<PathBuf>, DataError> {
    use crate::config::DatasetKind;
    let Some(dir) = config.path.as_deref() else { return Ok(Vec::new()) };
    Ok(match config.kind {
        DatasetKind::Synthetic => Vec::new(),
        DatasetKind::Idx => IDX_FILES.iter().map(|name| idx_file(dir, name)).collect::<Result<_, _>>()?,
        DatasetKind::Cifar10 => {
            let (mut files, test) = cifar_files(dir)?;
            files.push(test);
            files
        }
        DatasetKind::Cifar100 => vec![dir.join("train.bin"), dir.join("test.bin")],
        DatasetKind::ImageFolder => {
            let mut files = Vec::new();
            for split in ["train", "test"] {
                for class in sorted_entries(&dir.join(split), true)? {
                    files.extend(sorted_entries(&class, false)?);
                }
            }
            files
        }
    })
}

/// Writes `dataset` as an image folder (the layout
/// [`load_image_folder`] reads): PNG files `<dir>/<split>/class-<k>/<i>.png`.
pub fn write_image_folder(dir: &Path, dataset: &Dataset) -> Result<(), DataError> {
    for (split, set) in [("train", &dataset.train), ("test", &dataset.test)] {
        let shape = set.shape;
        let plane = shape.height * shape.width;
        for class in 0..dataset.classes {
            let folder = dir.join(split).join(format!("class-{class:02}"));
            std::fs::create_dir_all(&folder).map_err(|e| data_error(&folder, format!("cannot create: {e}")))?;
        }
        for i in 0..set.len() {
            let path = dir.join(split).join(format!("class-{:02}", set.labels[i])).join(format!("{i:05}.png"));
            let pixels = set.image(i);
            let (w, h) = (shape.width as u32, shape.height as u32);
            let written = match shape.channels {
                1 => image::GrayImage::from_raw(w, h, pixels.to_vec()).map(|img| img.save(&path)),
                _ => {
                    let interleaved: Vec<u8> = (0..plane).flat_map(|p| (0..3).map(move |c| pixels[c * plane + p])).collect();
                    image::RgbImage::from_raw(w, h, interleaved).map(|img| img.save(&path))
                }
            };
            match written {
                Some(Ok(())) => {}
                Some(Err(e)) => return Err(data_error(&path, format!("cannot write: {e}"))),
                None => return Err(data_error(&path, "image buffer of the wrong size")),
            }
        }
    }
    Ok(())
}

/// Loads the data set a config entry describes, checking that its images
/// have the shape the config declares (the models are built for it).
pub fn load_dataset(config: &crate::config::DatasetConfig) -> Result<Dataset, DataError> {
    use crate::config::DatasetKind;
    let declared = config.image_shape().map_err(|m| data_error(Path::new("<config>"), m))?;
    let dir = || config.path.as_deref().ok_or_else(|| data_error(Path::new("<config>"), "data set has no `path`"));
    let dataset = match config.kind {
        DatasetKind::ImageFolder => load_image_folder(dir()?, declared, config.classes())?,
        DatasetKind::Idx | DatasetKind::Cifar10 | DatasetKind::Cifar100 => {
            let dir = dir()?;
            let dataset = match config.kind {
                DatasetKind::Idx => load_idx_dir(dir)?,
                DatasetKind::Cifar10 => load_cifar_dir(dir)?,
                _ => load_cifar100_dir(dir, config.labels.unwrap_or_default())?,
            };
            for (split, set) in [("training", &dataset.train), ("test", &dataset.test)] {
                if set.shape != declared {
                    return Err(data_error(dir, format!("{split} images are {}, expected {declared}", set.shape)));
                }
            }
            dataset
        }
        DatasetKind::Synthetic => {
            let seed = config.seed.unwrap_or(0);
            Dataset {
                train: synthetic(declared, config.train_size.unwrap_or(SYNTHETIC_TRAIN_SIZE), seed),
                test: synthetic(declared, config.test_size.unwrap_or(SYNTHETIC_TEST_SIZE), seed ^ 0x7e57_7e57),
                classes: 10,
            }
        }
    };
    Ok(dataset)
}

/// Default sizes of the synthetic training and test sets.
pub const SYNTHETIC_TRAIN_SIZE: usize = 2000;
pub const SYNTHETIC_TEST_SIZE: usize = 500;

/// A deterministic synthetic data set that a small CNN learns within a few
/// hundred steps: class `k` is a bright square at one of ten places on a 4x3
/// grid (jittered by up to 2 pixels), drawn in a class colour when the image
/// has three channels, over uniform noise.
pub fn synthetic(shape: ImageShape, len: usize, seed: u64) -> ImageSet {
    let mut rng = Rng::for_purpose(seed, "synthetic");
    let mut set = ImageSet { shape, pixels: Vec::with_capacity(len * shape.len()), labels: Vec::with_capacity(len) };
    let side = (shape.height.min(shape.width) / 4).max(2);
    for i in 0..len {
        let label = (i % 10) as u8;
        let (gx, gy) = ((label % 4) as usize, (label / 4) as usize);
        let cell_w = shape.width / 4;
        let cell_h = shape.height / 3;
        let jitter = |rng: &mut Rng| rng.below(5) as isize - 2;
        let x0 = (gx * cell_w + cell_w / 2) as isize - side as isize / 2 + jitter(&mut rng);
        let y0 = (gy * cell_h + cell_h / 2) as isize - side as isize / 2 + jitter(&mut rng);
        let brightness = 160.0 + 95.0 * rng.next_f32();
        for c in 0..shape.channels {
            let tint = if shape.channels == 3 { [1.0, 0.55, 0.3][(c + label as usize) % 3] } else { 1.0 };
            for y in 0..shape.height as isize {
                for x in 0..shape.width as isize {
                    let inside = x >= x0 && x < x0 + side as isize && y >= y0 && y < y0 + side as isize;
                    let noise = 60.0 * rng.next_f32();
                    let value = if inside { brightness * tint } else { 0.0 } + noise;
                    set.pixels.push(value.min(255.0) as u8);
                }
            }
        }
        set.labels.push(label);
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> crate::scratch::ScratchDir {
        crate::scratch::ScratchDir::new(&format!("common-data-{name}"))
    }

    fn idx_bytes(magic: u32, dims: &[u32], payload: &[u8]) -> Vec<u8> {
        let mut out = magic.to_be_bytes().to_vec();
        for d in dims {
            out.extend_from_slice(&d.to_be_bytes());
        }
        out.extend_from_slice(payload);
        out
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn reads_idx_raw_and_gzip() {
        let dir = temp_dir("idx");
        let pixels: Vec<u8> = (0..2 * 3 * 4).map(|i| i as u8).collect();
        std::fs::write(dir.join("img"), idx_bytes(0x803, &[2, 3, 4], &pixels)).unwrap();
        std::fs::write(dir.join("lab.gz"), gzip(&idx_bytes(0x801, &[2], &[7, 1]))).unwrap();
        let set = load_idx(&dir.join("img"), &dir.join("lab.gz")).unwrap();
        assert_eq!(set.shape, ImageShape { channels: 1, height: 3, width: 4 });
        assert_eq!(set.labels, vec![7, 1]);
        assert_eq!(set.image(1), &pixels[12..]);
    }

    #[test]
    fn malformed_idx_files_name_the_file_and_the_problem() {
        let dir = temp_dir("idx-bad");
        let labels = dir.join("lab");
        std::fs::write(&labels, idx_bytes(0x801, &[2], &[0, 1])).unwrap();
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("magic", idx_bytes(0x802, &[2, 2, 2], &[0; 8]), "bad magic"),
            ("short", idx_bytes(0x803, &[2, 2, 2], &[0; 7]), "wrong size"),
            ("header", vec![0, 0, 8], "truncated"),
        ];
        for (name, bytes, problem) in cases {
            let path = dir.join(name);
            std::fs::write(&path, bytes).unwrap();
            let err = load_idx(&path, &labels).unwrap_err().to_string();
            assert!(err.contains(name) && err.contains(problem), "{err}");
        }
        let good = dir.join("good");
        std::fs::write(&good, idx_bytes(0x803, &[2, 2, 2], &[0; 8])).unwrap();
        std::fs::write(&labels, idx_bytes(0x801, &[2], &[0, 12])).unwrap();
        let err = load_idx(&good, &labels).unwrap_err().to_string();
        assert!(err.contains("label 12 of item 1 is out of range"), "{err}");
        std::fs::write(&labels, gzip(&idx_bytes(0x801, &[2], &[0, 1]))[..10].to_vec()).unwrap();
        let err = load_idx(&good, &labels).unwrap_err().to_string();
        assert!(err.contains("corrupt gzip"), "{err}");
    }

    #[test]
    fn reads_cifar_records_and_rejects_bad_ones() {
        let dir = temp_dir("cifar");
        let mut record = vec![3u8];
        record.extend((0..3072).map(|i| (i % 251) as u8));
        let mut two = record.clone();
        two.extend_from_slice(&record);
        two[CIFAR_RECORD] = 9;
        let path = dir.join("data_batch_1.bin");
        std::fs::write(&path, &two).unwrap();
        let set = load_cifar_batches(&[path.clone()]).unwrap();
        assert_eq!(set.labels, vec![3, 9]);
        assert_eq!(set.image(1), &record[1..]);
        std::fs::write(&path, &two[..5000]).unwrap();
        let err = load_cifar_batches(&[path.clone()]).unwrap_err().to_string();
        assert!(err.contains("data_batch_1.bin") && err.contains("wrong size"), "{err}");
        two[0] = 10;
        std::fs::write(&path, &two).unwrap();
        let err = load_cifar_batches(&[path]).unwrap_err().to_string();
        assert!(err.contains("label 10 of record 0"), "{err}");
    }

    #[test]
    fn reads_cifar100_with_fine_or_coarse_labels() {
        let dir = temp_dir("cifar100");
        let record = |coarse: u8, fine: u8| {
            let mut r = vec![coarse, fine];
            r.extend((0..3072).map(|i| ((i + fine as usize) % 251) as u8));
            r
        };
        let mut bytes = record(3, 77);
        bytes.extend(record(19, 99));
        std::fs::write(dir.join("train.bin"), &bytes).unwrap();
        std::fs::write(dir.join("test.bin"), record(0, 5)).unwrap();
        let fine = load_cifar100_dir(&dir, CifarLabels::Fine).unwrap();
        assert_eq!((fine.classes, fine.train.labels.clone(), fine.test.labels.clone()), (100, vec![77, 99], vec![5]));
        assert_eq!(fine.train.image(1), &record(19, 99)[2..]);
        let coarse = load_cifar100_dir(&dir, CifarLabels::Coarse).unwrap();
        assert_eq!((coarse.classes, coarse.train.labels), (20, vec![3, 19]));
        bytes[0] = 20;
        std::fs::write(dir.join("train.bin"), &bytes[..CIFAR100_RECORD]).unwrap();
        let err = load_cifar100_dir(&dir, CifarLabels::Coarse).unwrap_err().to_string();
        assert!(err.contains("train.bin") && err.contains("label 20 of record 0 is out of range 0..20"), "{err}");
        std::fs::write(dir.join("train.bin"), &bytes[..100]).unwrap();
        assert!(load_cifar100_dir(&dir, CifarLabels::Fine).unwrap_err().to_string().contains("wrong size"));
    }

    #[test]
    fn reads_image_folders_of_png_and_jpeg_and_names_a_bad_file() {
        let dir = temp_dir("folder");
        let _ = std::fs::remove_dir_all(&dir);
        let shape = ImageShape { channels: 3, height: 4, width: 5 };
        let rgb = |seed: u8| image::RgbImage::from_fn(5, 4, |x, y| image::Rgb([seed, x as u8 * 10, y as u8 * 20]));
        for (split, class, name, seed) in [
            ("train", "cat", "b.png", 1),
            ("train", "cat", "a.png", 2),
            ("train", "dog", "x.png", 3),
            ("test", "cat", "t.png", 4),
            ("test", "dog", "u.png", 5),
        ] {
            std::fs::create_dir_all(dir.join(split).join(class)).unwrap();
            rgb(seed).save(dir.join(split).join(class).join(name)).unwrap();
        }
        let set = load_image_folder(&dir, shape, 2).unwrap();
        // Classes in name order, files in name order: a.png (seed 2) first.
        assert_eq!(set.train.labels, vec![0, 0, 1]);
        assert_eq!(set.test.labels, vec![0, 1]);
        let first = set.train.image(0);
        assert_eq!(&first[..5], &[2; 5], "red plane first");
        assert_eq!(&first[20..25], &[0, 10, 20, 30, 40], "then green");
        assert_eq!(first[40 + 5], 20, "then blue, row 1");

        // A grey JPEG in a grey data set reads (lossy, so only its size is checked).
        let grey = temp_dir("folder-grey");
        for split in ["train", "test"] {
            for class in ["a", "b"] {
                std::fs::create_dir_all(grey.join(split).join(class)).unwrap();
                image::GrayImage::from_pixel(8, 8, image::Luma([128])).save(grey.join(split).join(class).join("i.jpg")).unwrap();
            }
        }
        let grey_set = load_image_folder(&grey, ImageShape { channels: 1, height: 8, width: 8 }, 2).unwrap();
        assert_eq!(grey_set.train.pixels.len(), 2 * 64);

        let err = load_image_folder(&dir, shape, 3).unwrap_err().to_string();
        assert!(err.contains("has 2 class folders, the config declares `classes = 3`"), "{err}");
        image::RgbImage::new(6, 4).save(dir.join("test/dog/wide.png")).unwrap();
        let err = load_image_folder(&dir, shape, 2).unwrap_err().to_string();
        assert!(err.contains("wide.png") && err.contains("image is 3x4x6, the data set declares 3x4x5"), "{err}");
        std::fs::write(dir.join("test/dog/wide.png"), b"not a png").unwrap();
        let err = load_image_folder(&dir, shape, 2).unwrap_err().to_string();
        assert!(err.contains("wide.png") && err.contains("cannot decode"), "{err}");
        std::fs::remove_dir_all(dir.join("test/dog")).unwrap();
        let written = temp_dir("folder-written");
        let synthetic =
            Dataset { train: synthetic(ImageShape::RGB_32, 30, 1), test: synthetic(ImageShape::RGB_32, 20, 2), classes: 10 };
        write_image_folder(&written, &synthetic).unwrap();
        let back = load_image_folder(&written, ImageShape::RGB_32, 10).unwrap();
        let sorted = |set: &ImageSet| {
            let mut images: Vec<(u8, Vec<u8>)> = (0..set.len()).map(|i| (set.labels[i], set.image(i).to_vec())).collect();
            images.sort();
            images
        };
        assert_eq!(sorted(&back.train), sorted(&synthetic.train), "PNG round trip, grouped by class");
        assert_eq!(sorted(&back.test), sorted(&synthetic.test));
        let err = load_image_folder(&dir, shape, 2).unwrap_err().to_string();
        assert!(err.contains("test/dog") && err.contains("missing"), "{err}");
    }

    #[test]
    fn synthetic_is_deterministic_and_balanced() {
        let a = synthetic(ImageShape::RGB_32, 50, 3);
        assert_eq!(a, synthetic(ImageShape::RGB_32, 50, 3));
        assert_ne!(a.pixels, synthetic(ImageShape::RGB_32, 50, 4).pixels);
        assert_eq!(a.pixels.len(), 50 * 3072);
        for k in 0..10u8 {
            assert_eq!(a.labels.iter().filter(|&&l| l == k).count(), 5);
        }
    }

    #[test]
    fn normalisation_maps_bytes_to_the_configured_range() {
        let set = ImageSet { shape: ImageShape { channels: 1, height: 1, width: 3 }, pixels: vec![0, 255, 51], labels: vec![0] };
        let norm = Normalization { mean: vec![0.5], std: vec![0.5] };
        let x = norm.batch(&set, &[0]);
        assert!((x[0] + 1.0).abs() < 1e-6 && (x[1] - 1.0).abs() < 1e-6 && (x[2] + 0.6).abs() < 1e-6);
        assert_eq!(norm.bounds(), vec![(-1.0, 1.0)]);
    }
}
