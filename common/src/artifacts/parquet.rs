//! Parquet tables through polars, written atomically.

use std::path::Path;

use polars::prelude::{DataFrame, ParquetCompression, ParquetReader, ParquetWriter, SerReader};

use super::{write_atomic, ArtifactError, Stamp};

/// The bytes of `df` as a Parquet file (zstd-compressed, statistics on);
/// `path` names it in errors.
pub fn encode_parquet(path: &Path, df: &mut DataFrame) -> Result<Vec<u8>, ArtifactError> {
    let mut bytes = Vec::new();
    ParquetWriter::new(&mut bytes)
        .with_compression(ParquetCompression::Zstd(None))
        .finish(df)
        .map_err(|e| ArtifactError::new(path, format!("cannot encode Parquet: {e}")))?;
    Ok(bytes)
}

/// Writes `df` to `path` (zstd-compressed, statistics on) atomically.
pub fn write_parquet(path: &Path, df: &mut DataFrame) -> Result<(), ArtifactError> {
    write_atomic(path, &encode_parquet(path, df)?)
}

/// Writes a table and then its stamp (see [`super::write_stamped`]).
pub fn write_parquet_stamped(path: &Path, df: &mut DataFrame, stamp: Stamp) -> Result<Stamp, ArtifactError> {
    super::write_stamped(path, &encode_parquet(path, df)?, stamp)
}

/// Reads a Parquet table; a missing or corrupt file is an error naming it.
///
/// A file with a stamp is parsed only after its bytes matched the stamp's
/// content hash: polars' reader can panic on damaged bytes (a byte flip in
/// a page, found by the fuzz test of the readers), so damaged bytes of our
/// own tables never reach it. A file without a stamp is parsed as it is,
/// with a panic of the reader turned into an error.
pub fn read_parquet(path: &Path) -> Result<DataFrame, ArtifactError> {
    let bytes = std::fs::read(path).map_err(|e| ArtifactError::new(path, format!("cannot read: {e}")))?;
    if let Some(stamp) = super::read_stamp(path) {
        if super::content_hash(&bytes) != stamp.content {
            return Err(ArtifactError::new(
                path,
                "its content does not match its stamp (altered or damaged); redo the stage that writes it",
            ));
        }
    }
    let parsed = std::panic::catch_unwind(|| ParquetReader::new(std::io::Cursor::new(bytes)).finish());
    match parsed {
        Ok(Ok(frame)) => Ok(frame),
        Ok(Err(e)) => Err(ArtifactError::new(path, format!("not a valid Parquet file ({e})"))),
        Err(_) => Err(ArtifactError::new(path, "not a valid Parquet file (the reader failed on its bytes)")),
    }
}
