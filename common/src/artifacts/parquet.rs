//! Parquet tables through polars, written atomically.

use std::path::Path;

use polars::prelude::{DataFrame, ParquetCompression, ParquetReader, ParquetWriter, SerReader};

use super::{write_atomic, ArtifactError};

/// Writes `df` to `path` (zstd-compressed, statistics on) atomically.
pub fn write_parquet(path: &Path, df: &mut DataFrame) -> Result<(), ArtifactError> {
    let mut bytes = Vec::new();
    ParquetWriter::new(&mut bytes)
        .with_compression(ParquetCompression::Zstd(None))
        .finish(df)
        .map_err(|e| ArtifactError::new(path, format!("cannot encode Parquet: {e}")))?;
    write_atomic(path, &bytes)
}

/// Writes a table and then its fingerprint stamp. The old stamp is removed
/// first, so a kill between the two writes leaves a table without a stamp
/// (redone next time), never a new table beside an old stamp.
pub fn write_parquet_stamped(path: &Path, df: &mut DataFrame, fingerprint: &str) -> Result<(), ArtifactError> {
    super::remove_if_present(&super::stamp_path(path))?;
    write_parquet(path, df)?;
    super::write_stamp(path, fingerprint)
}

/// Reads a Parquet table; a missing or corrupt file is an error naming it.
pub fn read_parquet(path: &Path) -> Result<DataFrame, ArtifactError> {
    let file = std::fs::File::open(path).map_err(|e| ArtifactError::new(path, format!("cannot read: {e}")))?;
    ParquetReader::new(file).finish().map_err(|e| ArtifactError::new(path, format!("not a valid Parquet file ({e})")))
}
