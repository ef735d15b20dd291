//! The Parquet tables of the pipeline, one definition each (docs/DESIGN.md,
//! "Tables"): its column names, a typed form, its writer and its reader.
//! Every stage and test goes through these, so a column's name and type
//! live in one place. A reader checks each column's type exactly (no
//! casting) and names the file and the column when one is missing, has
//! the wrong type or holds a null where none is allowed.

pub mod across_seeds;
pub mod by_step;
pub mod correlations;
pub mod metrics;
pub mod probe;
pub mod summaries;

use std::path::Path;

use polars::prelude::{Column, DataFrame, DataType};

use super::{read_parquet, ArtifactError};

/// Typed access to the columns of a table read from `path`.
pub(crate) struct TableReader<'a> {
    path: &'a Path,
    frame: DataFrame,
    /// What the file should be, for messages ("a metrics table").
    what: &'static str,
}

impl<'a> TableReader<'a> {
    pub(crate) fn open(path: &'a Path, what: &'static str) -> Result<Self, ArtifactError> {
        Ok(Self { path, frame: read_parquet(path)?, what })
    }

    pub(crate) fn rows(&self) -> usize {
        self.frame.height()
    }

    /// A table that must have rows: none is an error.
    pub(crate) fn require_rows(&self) -> Result<(), ArtifactError> {
        if self.rows() == 0 {
            return Err(self.error("it has no rows"));
        }
        Ok(())
    }

    /// Each row's key (from `key`) appears once; otherwise the first
    /// repeated one, described by `describe`.
    pub(crate) fn unique<K: Ord + Clone>(
        &self,
        keys: impl Iterator<Item = K>,
        describe: impl Fn(&K) -> String,
    ) -> Result<(), ArtifactError> {
        let mut seen = std::collections::BTreeSet::new();
        for (row, key) in keys.enumerate() {
            if !seen.insert(key.clone()) {
                return Err(self.error(format!("row {row}: {} appears twice", describe(&key))));
            }
        }
        Ok(())
    }

    pub(crate) fn has(&self, name: &str) -> bool {
        self.frame.column(name).is_ok()
    }

    pub(crate) fn error(&self, problem: impl std::fmt::Display) -> ArtifactError {
        ArtifactError::new(self.path, format!("not {}: {problem}", self.what))
    }

    fn column(&self, name: &str, dtype: DataType) -> Result<&Column, ArtifactError> {
        let column = self.frame.column(name).map_err(|_| self.error(format!("column `{name}` is missing")))?;
        if column.dtype() != &dtype {
            return Err(self.error(format!("column `{name}` is {}, expected {dtype}", column.dtype())));
        }
        Ok(column)
    }

    fn no_nulls<T>(&self, name: &str, values: impl Iterator<Item = Option<T>>) -> Result<Vec<T>, ArtifactError> {
        values.enumerate().map(|(row, v)| v.ok_or_else(|| self.error(format!("row {row}: `{name}` is null")))).collect()
    }

    /// An Int64 column without nulls.
    pub(crate) fn i64(&self, name: &str) -> Result<Vec<i64>, ArtifactError> {
        let column = self.column(name, DataType::Int64)?;
        self.no_nulls(name, column.i64().expect("checked dtype").into_iter())
    }

    /// A Float64 column without nulls (NaN allowed).
    pub(crate) fn f64(&self, name: &str) -> Result<Vec<f64>, ArtifactError> {
        let column = self.column(name, DataType::Float64)?;
        self.no_nulls(name, column.f64().expect("checked dtype").into_iter())
    }

    /// A Float64 column whose nulls mean "undefined".
    pub(crate) fn optional_f64(&self, name: &str) -> Result<Vec<Option<f64>>, ArtifactError> {
        let column = self.column(name, DataType::Float64)?;
        Ok(column.f64().expect("checked dtype").into_iter().collect())
    }

    /// A Boolean column without nulls.
    pub(crate) fn bool(&self, name: &str) -> Result<Vec<bool>, ArtifactError> {
        let column = self.column(name, DataType::Boolean)?;
        self.no_nulls(name, column.bool().expect("checked dtype").into_iter())
    }

    /// A String column without nulls, each value parsed by `parse`
    /// (`allowed` lists the accepted values for the message).
    pub(crate) fn parsed<T>(
        &self,
        name: &str,
        allowed: &str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<Vec<T>, ArtifactError> {
        let column = self.column(name, DataType::String)?;
        let values = column.str().expect("checked dtype");
        values
            .into_iter()
            .enumerate()
            .map(|(row, v)| match v {
                None => Err(self.error(format!("row {row}: `{name}` is null"))),
                Some(text) => {
                    parse(text).ok_or_else(|| self.error(format!("row {row}: `{name}` = `{text}`; expected {allowed}")))
                }
            })
            .collect()
    }

    /// A String column without nulls.
    pub(crate) fn strings(&self, name: &str) -> Result<Vec<String>, ArtifactError> {
        self.parsed(name, "a string", |s| Some(s.to_string()))
    }
}

/// Builds a frame from columns of equal length (the writers make them so).
pub(crate) fn frame(columns: Vec<Column>) -> DataFrame {
    DataFrame::new(columns).expect("the table's columns have equal lengths")
}
