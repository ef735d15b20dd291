//! The probe set: the fixed images explained at every checkpoint
//! (`<run>/probe.parquet`: `probe_id, split, source_index, label`).

use std::path::Path;

use polars::prelude::{Column, DataFrame};

use super::{frame, TableReader};
use crate::artifacts::{write_parquet, ArtifactError};
use crate::data::{Dataset, ImageSet};

pub const PROBE_ID: &str = "probe_id";
pub const SPLIT: &str = "split";
pub const SOURCE_INDEX: &str = "source_index";
pub const LABEL: &str = "label";

/// Whether a probe image comes from the training data the run saw, or from
/// the test set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Split {
    Seen,
    Unseen,
}

impl Split {
    pub fn name(&self) -> &'static str {
        match self {
            Split::Seen => "seen",
            Split::Unseen => "unseen",
        }
    }

    pub fn parse(text: &str) -> Option<Split> {
        match text {
            "seen" => Some(Split::Seen),
            "unseen" => Some(Split::Unseen),
            _ => None,
        }
    }

    /// The accepted values, for messages.
    pub const ALLOWED: &'static str = "\"seen\" or \"unseen\"";
}

/// One probe image: `source_index` indexes the training set (seen) or the
/// test set (unseen) of the run's data set.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeEntry {
    pub probe_id: i64,
    pub split: Split,
    pub source_index: usize,
    pub label: u8,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Probe {
    pub entries: Vec<ProbeEntry>,
}

impl Probe {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The probe images in probe order.
    pub fn images(&self, dataset: &Dataset) -> Result<ImageSet, String> {
        let mut set = ImageSet { shape: dataset.train.shape, pixels: Vec::new(), labels: Vec::new() };
        for e in &self.entries {
            let source = match e.split {
                Split::Seen => &dataset.train,
                Split::Unseen => &dataset.test,
            };
            if e.source_index >= source.len() {
                return Err(format!(
                    "probe {} refers to {} image {} but the data set has {}",
                    e.probe_id,
                    e.split.name(),
                    e.source_index,
                    source.len()
                ));
            }
            if source.labels[e.source_index] != e.label {
                return Err(format!(
                    "probe {} has label {} but its source image is labelled {}",
                    e.probe_id, e.label, source.labels[e.source_index]
                ));
            }
            set.pixels.extend_from_slice(source.image(e.source_index));
            set.labels.push(e.label);
        }
        Ok(set)
    }

    pub fn to_frame(&self) -> DataFrame {
        let e = &self.entries;
        frame(vec![
            Column::new(PROBE_ID.into(), e.iter().map(|e| e.probe_id).collect::<Vec<i64>>()),
            Column::new(SPLIT.into(), e.iter().map(|e| e.split.name()).collect::<Vec<&str>>()),
            Column::new(SOURCE_INDEX.into(), e.iter().map(|e| e.source_index as i64).collect::<Vec<i64>>()),
            Column::new(LABEL.into(), e.iter().map(|e| e.label as i64).collect::<Vec<i64>>()),
        ])
    }
}

pub fn write_probe(path: &Path, probe: &Probe) -> Result<(), ArtifactError> {
    write_parquet(path, &mut probe.to_frame())
}

pub fn read_probe(path: &Path) -> Result<Probe, ArtifactError> {
    let table = TableReader::open(path, "a probe table")?;
    table.require_rows()?;
    let ids = table.i64(PROBE_ID)?;
    table.unique(ids.iter().copied(), |id| format!("probe_id {id}"))?;
    let splits = table.parsed(SPLIT, Split::ALLOWED, Split::parse)?;
    let sources = table.i64(SOURCE_INDEX)?;
    let labels = table.i64(LABEL)?;
    let mut entries = Vec::with_capacity(ids.len());
    for (i, split) in splits.into_iter().enumerate() {
        if sources[i] < 0 || !(0..256).contains(&labels[i]) {
            return Err(table.error(format!("row {i}: negative source_index or label out of range")));
        }
        entries.push(ProbeEntry { probe_id: ids[i], split, source_index: sources[i] as usize, label: labels[i] as u8 });
    }
    Ok(Probe { entries })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{synthetic, ImageShape};

    #[test]
    fn probe_round_trips_and_selects_its_images() {
        let dataset =
            Dataset { train: synthetic(ImageShape::GRAY_28, 30, 1), test: synthetic(ImageShape::GRAY_28, 20, 2), classes: 10 };
        let probe = Probe {
            entries: vec![
                ProbeEntry { probe_id: 0, split: Split::Seen, source_index: 13, label: dataset.train.labels[13] },
                ProbeEntry { probe_id: 1, split: Split::Unseen, source_index: 4, label: dataset.test.labels[4] },
            ],
        };
        let scratch = crate::scratch::ScratchDir::new("probe");
        let path = scratch.join("probe.parquet");
        write_probe(&path, &probe).unwrap();
        assert_eq!(read_probe(&path).unwrap(), probe);
        let images = probe.images(&dataset).unwrap();
        assert_eq!(images.image(1), dataset.test.image(4));
        let mut wrong = probe.clone();
        wrong.entries[0].source_index = 99;
        assert!(wrong.images(&dataset).unwrap_err().contains("seen image 99"));
    }
}
