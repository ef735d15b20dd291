//! Runs trained elsewhere (docs/DESIGN.md, "Runs trained elsewhere"): a
//! folder of `step-<N>.safetensors` state_dicts and a metrics CSV or
//! Parquet table. This
//! module finds and reads their files; the trainer imports them, and the
//! run's fingerprint covers their content (not their paths' names alone),
//! so replacing a checkpoint re-imports the run and redoes what follows.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::artifacts::tables::TableReader;
use crate::config::ExternalRun;
use crate::content::file_hashes;

/// The checkpoint files of a run trained elsewhere, by step, ascending:
/// every `step-<N>.safetensors` in `dir` (other files are ignored; `N` is
/// a decimal number, leading zeros allowed).
pub fn external_checkpoints(dir: &Path) -> Result<Vec<(u64, PathBuf)>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: cannot list: {e}", dir.display()))?;
    let mut steps = BTreeMap::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        let Some(digits) = name.strip_prefix("step-").and_then(|n| n.strip_suffix(".safetensors")) else { continue };
        let Ok(step) = digits.parse::<u64>() else { continue };
        if let Some(other) = steps.insert(step, path.clone()) {
            return Err(format!("{} and {} are both step {step}", other.display(), path.display()));
        }
    }
    if steps.is_empty() {
        return Err(format!("{}: no step-<N>.safetensors files", dir.display()));
    }
    Ok(steps.into_iter().collect())
}

/// One row of a run's metrics file: the step and what the training loop
/// recorded (the rest the trainer measures itself on the data set).
#[derive(Clone, Debug, PartialEq)]
pub struct ExternalMetrics {
    pub step: u64,
    pub epoch: Option<f64>,
    pub train_loss: Option<f64>,
    pub train_acc: Option<f64>,
}

/// The columns of a metrics file the trainer reads; others are ignored.
const METRICS_COLUMNS: [&str; 4] = ["step", "epoch", "train_loss", "train_acc"];

/// Reads a metrics file: a Parquet table (by its `.parquet` ending) with
/// an int64 `step` column and any of the float64 columns `epoch`,
/// `train_loss`, `train_acc`; or a CSV with a header naming `step` and any
/// of those, then one row per step. No step twice.
pub fn read_external_metrics(path: &Path) -> Result<Vec<ExternalMetrics>, String> {
    let mut rows =
        if path.extension().is_some_and(|e| e == "parquet") { read_parquet_metrics(path)? } else { read_csv_metrics(path)? };
    rows.sort_by_key(|r| r.step);
    if let Some(pair) = rows.windows(2).find(|w| w[0].step == w[1].step) {
        return Err(format!("{}: step {} is listed twice", path.display(), pair[0].step));
    }
    Ok(rows)
}

fn read_parquet_metrics(path: &Path) -> Result<Vec<ExternalMetrics>, String> {
    let table = TableReader::open(path, "a metrics file").map_err(|e| e.to_string())?;
    let steps = table.i64("step").map_err(|e| e.to_string())?;
    let optional = |name: &str| -> Result<Vec<Option<f64>>, String> {
        if table.has(name) {
            table.optional_f64(name).map_err(|e| e.to_string())
        } else {
            Ok(vec![None; steps.len()])
        }
    };
    let (epoch, train_loss, train_acc) = (optional("epoch")?, optional("train_loss")?, optional("train_acc")?);
    steps
        .iter()
        .enumerate()
        .map(|(i, &step)| {
            let step = u64::try_from(step).map_err(|_| format!("{}: row {i}: step {step} is negative", path.display()))?;
            Ok(ExternalMetrics { step, epoch: epoch[i], train_loss: train_loss[i], train_acc: train_acc[i] })
        })
        .collect()
}

fn read_csv_metrics(path: &Path) -> Result<Vec<ExternalMetrics>, String> {
    let fail = |what: String| format!("{}: {what}", path.display());
    let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read: {e}")))?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> =
        lines.next().ok_or_else(|| fail("empty; expected a header with `step`".into()))?.split(',').map(str::trim).collect();
    let column = |name: &str| header.iter().position(|h| *h == name);
    let step_column =
        column("step").ok_or_else(|| fail(format!("no `step` column (columns read: {})", METRICS_COLUMNS.join(", "))))?;
    let mut rows: Vec<ExternalMetrics> = Vec::new();
    for (number, line) in lines.enumerate() {
        let cells: Vec<&str> = line.split(',').map(str::trim).collect();
        if cells.len() != header.len() {
            return Err(fail(format!("row {}: {} values for {} columns", number + 1, cells.len(), header.len())));
        }
        let value = |name: &str| -> Result<Option<f64>, String> {
            match column(name).map(|i| cells[i]) {
                None | Some("") => Ok(None),
                Some(text) => text
                    .parse::<f64>()
                    .map(Some)
                    .map_err(|_| fail(format!("row {}: `{name}` = `{text}` is not a number", number + 1))),
            }
        };
        let step = cells[step_column]
            .parse::<u64>()
            .map_err(|_| fail(format!("row {}: `step` = `{}` is not a whole number", number + 1, cells[step_column])))?;
        rows.push(ExternalMetrics {
            step,
            epoch: value("epoch")?,
            train_loss: value("train_loss")?,
            train_acc: value("train_acc")?,
        });
    }
    rows.sort_by_key(|r| r.step);
    Ok(rows)
}

/// The content of a run trained elsewhere as its fingerprint takes it: the
/// step and content hash of every checkpoint file and the metrics file's
/// hash. Files that cannot be listed or read enter as the reason, so no
/// stage finds such a run current and the trainer's import names the error.
/// `output` is the output folder (it holds the hash cache, see `content`).
pub fn external_content(output: &Path, external: &ExternalRun) -> Vec<(String, String)> {
    let (mut names, mut files) = match external_checkpoints(&external.checkpoints) {
        Ok(steps) => steps.into_iter().map(|(step, path)| (format!("step-{step}"), path)).unzip(),
        Err(e) => (vec![format!("checkpoints: {e}")], Vec::new()),
    };
    names.push("metrics".to_string());
    files.push(external.metrics.clone());
    // An unlistable folder has a name but no file: its error is its content.
    let hashes = file_hashes(output, &files);
    let offset = names.len() - hashes.len();
    names
        .into_iter()
        .enumerate()
        .map(|(i, name)| (name, if i < offset { String::new() } else { hashes[i - offset].clone() }))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> crate::scratch::ScratchDir {
        crate::scratch::ScratchDir::new(&format!("common-external-{name}"))
    }

    #[test]
    fn checkpoints_are_found_by_step_and_metrics_read_by_column() {
        let d = dir("files");
        for name in ["step-000010.safetensors", "step-2.safetensors", "notes.txt", "step-x.safetensors"] {
            std::fs::write(d.join(name), name).unwrap();
        }
        let steps: Vec<u64> = external_checkpoints(&d).unwrap().into_iter().map(|(s, _)| s).collect();
        assert_eq!(steps, [2, 10]);
        std::fs::write(d.join("step-02.safetensors"), "").unwrap();
        assert!(external_checkpoints(&d).unwrap_err().contains("are both step 2"));
        assert!(external_checkpoints(&dir("empty")).unwrap_err().contains("no step-<N>.safetensors"));

        let csv = d.join("metrics.csv");
        std::fs::write(&csv, "step,train_loss,other\n10,0.5,x\n0,2.3,y\n").unwrap();
        let rows = read_external_metrics(&csv).unwrap();
        assert_eq!(rows[0], ExternalMetrics { step: 0, epoch: None, train_loss: Some(2.3), train_acc: None });
        assert_eq!(rows[1].step, 10);
        for (text, message) in [
            ("loss\n1\n", "no `step` column"),
            ("step,train_loss\n1,abc\n", "row 1: `train_loss` = `abc` is not a number"),
            ("step\n1\n1\n", "step 1 is listed twice"),
            ("step,epoch\n1\n", "row 1: 1 values for 2 columns"),
        ] {
            std::fs::write(&csv, text).unwrap();
            let err = read_external_metrics(&csv).unwrap_err();
            assert!(err.contains("metrics.csv") && err.contains(message), "{err}");
        }
    }

    #[test]
    fn metrics_read_from_parquet_too() {
        use polars::prelude::*;
        let d = dir("parquet");
        let path = d.join("metrics.parquet");
        let mut frame = df!("step" => [10i64, 0], "train_loss" => [Some(0.5), None], "other" => ["a", "b"]).unwrap();
        crate::artifacts::write_parquet(&path, &mut frame).unwrap();
        let rows = read_external_metrics(&path).unwrap();
        assert_eq!(rows[0], ExternalMetrics { step: 0, epoch: None, train_loss: None, train_acc: None });
        assert_eq!(rows[1], ExternalMetrics { step: 10, epoch: None, train_loss: Some(0.5), train_acc: None });
        let mut steps_as_floats = df!("step" => [1.0f64]).unwrap();
        crate::artifacts::write_parquet(&path, &mut steps_as_floats).unwrap();
        assert!(read_external_metrics(&path).unwrap_err().contains("metrics.parquet"));
    }

    #[test]
    fn the_content_changes_with_a_file_and_names_what_is_missing() {
        let d = dir("content");
        std::fs::write(d.join("step-0.safetensors"), "a").unwrap();
        std::fs::write(d.join("m.csv"), "step\n0\n").unwrap();
        let external = ExternalRun { checkpoints: d.to_path_buf(), metrics: d.join("m.csv") };
        let before = external_content(&d, &external);
        std::fs::write(d.join("step-0.safetensors"), "bb").unwrap();
        assert_ne!(before, external_content(&d, &external));
        let missing = ExternalRun { metrics: d.join("gone.csv"), ..external.clone() };
        assert!(external_content(&d, &missing).last().unwrap().1.starts_with("missing:"));
        let unlisted = ExternalRun { checkpoints: d.join("nowhere"), ..external };
        assert!(external_content(&d, &unlisted)[0].0.contains("cannot list"));
    }
}
