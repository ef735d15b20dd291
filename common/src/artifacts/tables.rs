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

/// Reads a Parquet table; a missing or corrupt file is an error naming it.
pub fn read_parquet(path: &Path) -> Result<DataFrame, ArtifactError> {
    let file = std::fs::File::open(path).map_err(|e| ArtifactError::new(path, format!("cannot read: {e}")))?;
    ParquetReader::new(file).finish().map_err(|e| ArtifactError::new(path, format!("not a valid Parquet file ({e})")))
}
