//! Where each artifact lives under `[output].dir` (see DESIGN: layout).

use std::path::{Path, PathBuf};

/// `step-000600`: zero-padded to six digits, wider when needed, so that
/// names sort by step.
pub fn step_name(step: u64) -> String {
    format!("step-{step:06}")
}

/// Parses `step-000600.safetensors` back to 600.
fn parse_step_file(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("step-")?.strip_suffix(".safetensors")?;
    if digits.len() >= 6 && digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse().ok()
    } else {
        None
    }
}

/// The files of one run.
#[derive(Clone, Debug)]
pub struct RunLayout {
    pub dir: PathBuf,
}

impl RunLayout {
    pub fn new(output_dir: &Path, run: &str) -> Self {
        Self { dir: output_dir.join(run) }
    }

    pub fn probe(&self) -> PathBuf {
        self.dir.join("probe.parquet")
    }

    pub fn metrics(&self) -> PathBuf {
        self.dir.join("metrics.parquet")
    }

    pub fn checkpoints_dir(&self) -> PathBuf {
        self.dir.join("checkpoints")
    }

    pub fn checkpoint(&self, step: u64) -> PathBuf {
        self.checkpoints_dir().join(format!("{}.safetensors", step_name(step)))
    }

    /// Optimizer and data-order state needed to resume exactly from `step`,
    /// kept out of the model file so that it loads into PyTorch as is.
    pub fn resume_state(&self, step: u64) -> PathBuf {
        self.checkpoints_dir().join(format!("{}.resume.safetensors", step_name(step)))
    }

    pub fn attributions_dir(&self, method: &str) -> PathBuf {
        self.dir.join("attributions").join(method)
    }

    pub fn attribution(&self, method: &str, step: u64) -> PathBuf {
        self.attributions_dir(method).join(format!("{}.safetensors", step_name(step)))
    }

    pub fn summaries(&self, method: &str) -> PathBuf {
        self.dir.join("summaries").join(format!("{method}.parquet"))
    }

    /// Steps of the model checkpoints present, ascending.
    pub fn checkpoint_steps(&self) -> std::io::Result<Vec<u64>> {
        list_steps(&self.checkpoints_dir())
    }

    /// Steps of the attribution files of `method` present, ascending.
    pub fn attribution_steps(&self, method: &str) -> std::io::Result<Vec<u64>> {
        list_steps(&self.attributions_dir(method))
    }
}

fn list_steps(dir: &Path) -> std::io::Result<Vec<u64>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut steps = Vec::new();
    for entry in entries {
        if let Some(step) = entry?.file_name().to_str().and_then(parse_step_file) {
            steps.push(step);
        }
    }
    steps.sort_unstable();
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_names_sort_and_parse_back() {
        assert_eq!(step_name(600), "step-000600");
        assert_eq!(step_name(12_345_678), "step-12345678");
        assert_eq!(parse_step_file("step-000600.safetensors"), Some(600));
        assert_eq!(parse_step_file("step-000600.resume.safetensors"), None);
        assert_eq!(parse_step_file("step-12.safetensors"), None);
        let layout = RunLayout::new(Path::new("runs"), "good");
        assert_eq!(layout.attribution("lrp", 0), PathBuf::from("runs/good/attributions/lrp/step-000000.safetensors"));
        assert_eq!(layout.summaries("lrp"), PathBuf::from("runs/good/summaries/lrp.parquet"));
    }
}
