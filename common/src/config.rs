//! `pipeline.toml`: data sets, training runs, the probe set, explanation
//! methods, measures and the output folder.
//!
//! Unknown keys are errors (serde's `deny_unknown_fields` names the key and
//! lists the allowed ones); values are checked in [`PipelineConfig::validate`]
//! with messages that name the key and say what is allowed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data::{ImageShape, Normalization};
use crate::model::ModelKind;

/// The config could not be read or is invalid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("{}: `{key}`: {message}", path.display())]
    Invalid { path: PathBuf, key: String, message: String },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    #[serde(default)]
    pub output: OutputConfig,
    pub datasets: BTreeMap<String, DatasetConfig>,
    #[serde(default)]
    pub probe: ProbeConfig,
    pub runs: BTreeMap<String, RunConfig>,
    #[serde(default)]
    pub methods: BTreeMap<String, MethodConfig>,
    #[serde(default)]
    pub summaries: SummaryConfig,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    /// Folder of all artifacts; relative paths are taken from the working directory.
    #[serde(default = "default_output_dir")]
    pub dir: PathBuf,
}

fn default_output_dir() -> PathBuf {
    PathBuf::from("runs")
}

impl Default for OutputConfig {
    fn default() -> Self {
        Self { dir: default_output_dir() }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetKind {
    /// Four IDX files (`train-images-idx3-ubyte[.gz]`, ...) in `path`.
    Idx,
    /// CIFAR-10 binary batches (`data_batch_*.bin`, `test_batch.bin`) in `path`.
    Cifar10,
    /// Generated images (see `data::synthetic`).
    Synthetic,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetConfig {
    pub kind: DatasetKind,
    /// Folder of the files (kinds `idx`, `cifar10`).
    pub path: Option<PathBuf>,
    /// Per-channel mean and std of the normalisation; default 0.5 / 0.5.
    pub mean: Option<Vec<f32>>,
    pub std: Option<Vec<f32>>,
    /// Synthetic only: `"1x28x28"` or `"3x32x32"` (any CxHxW with H, W >= 8).
    pub shape: Option<String>,
    pub train_size: Option<usize>,
    pub test_size: Option<usize>,
    pub seed: Option<u64>,
}

impl DatasetConfig {
    /// The image shape this data set is declared to have (synthetic) or
    /// conventionally has (IDX: 1x28x28, CIFAR-10: 3x32x32).
    pub fn image_shape(&self) -> Result<ImageShape, String> {
        match self.kind {
            DatasetKind::Idx => Ok(ImageShape::GRAY_28),
            DatasetKind::Cifar10 => Ok(ImageShape::RGB_32),
            DatasetKind::Synthetic => parse_shape(self.shape.as_deref().unwrap_or("1x28x28")),
        }
    }

    pub fn normalization(&self, channels: usize) -> Normalization {
        Normalization {
            mean: self.mean.clone().unwrap_or_else(|| vec![0.5; channels]),
            std: self.std.clone().unwrap_or_else(|| vec![0.5; channels]),
        }
    }
}

/// Parses `CxHxW` (C >= 1, H and W >= 8: the simple model pools twice and
/// the complex one three times).
pub fn parse_shape(text: &str) -> Result<ImageShape, String> {
    let parts: Vec<usize> = text
        .split('x')
        .map(|p| p.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("`{text}` is not a shape; write CxHxW, e.g. \"1x28x28\" or \"3x32x32\""))?;
    match parts[..] {
        [channels, height, width] if channels >= 1 && height >= 8 && width >= 8 => Ok(ImageShape { channels, height, width }),
        _ => Err(format!("`{text}`: need CxHxW with C >= 1 and H, W >= 8")),
    }
}

/// Which images are explained: per class, this many from the training
/// subset ("seen") and from the test set ("unseen").
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeConfig {
    #[serde(default = "ten")]
    pub seen_per_class: usize,
    #[serde(default = "ten")]
    pub unseen_per_class: usize,
    #[serde(default)]
    pub seed: u64,
}

fn ten() -> usize {
    10
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self { seen_per_class: 10, unseen_per_class: 10, seed: 0 }
    }
}

/// When checkpoints are written: step 0, every `every` steps, every
/// `dense_every` steps up to `dense_until`, and the last step.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CheckpointSchedule {
    pub every: u64,
    pub dense_every: Option<u64>,
    #[serde(default)]
    pub dense_until: u64,
}

impl CheckpointSchedule {
    pub fn is_checkpoint(&self, step: u64, last_step: u64) -> bool {
        step == 0
            || step == last_step
            || step % self.every == 0
            || matches!(self.dense_every, Some(d) if step <= self.dense_until && step % d == 0)
    }

    pub fn steps(&self, last_step: u64) -> Vec<u64> {
        (0..=last_step).filter(|&s| self.is_checkpoint(s, last_step)).collect()
    }
}

/// One training run.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Name of an entry in `[datasets]`.
    pub dataset: String,
    pub model: ModelKind,
    pub epochs: u32,
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    #[serde(default = "default_learning_rate")]
    pub learning_rate: f64,
    #[serde(default)]
    pub seed: u64,
    /// Train on the first N images of a seeded shuffle of the training set.
    pub train_subset: Option<usize>,
    /// Test loss and accuracy on the first N test images (default: all).
    pub eval_size: Option<usize>,
    pub checkpoints: CheckpointSchedule,
    /// The fit regime this run is meant to show (a label for reports only).
    pub intended_fit: Option<String>,
}

fn default_batch_size() -> usize {
    100
}

fn default_learning_rate() -> f64 {
    1e-3
}

/// The class each map explains.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExplainedClass {
    #[default]
    Predicted,
    Label,
}

/// An explanation method: `kind = "lrp"` or `kind = "gradcam"` and its settings.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum MethodConfig {
    Lrp {
        /// A named composite (`paper`, `epsilon-gamma-box`) or a table of
        /// rules (`first`, `conv`, `dense`, `max_pool`).
        #[serde(default = "default_composite")]
        composite: CompositeSpec,
        #[serde(default)]
        target: ExplainedClass,
    },
    Gradcam {
        /// Name of the conv layer (e.g. `features_conv.3`); default the last.
        layer: Option<String>,
        #[serde(default)]
        relu: bool,
        #[serde(default)]
        upsample: bool,
        #[serde(default)]
        target: ExplainedClass,
    },
}

fn default_composite() -> CompositeSpec {
    CompositeSpec::Named("paper".into())
}

/// An LRP composite: a name, or rules given per layer kind.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum CompositeSpec {
    Named(String),
    Rules(CompositeRules),
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CompositeRules {
    pub first: RuleSpec,
    pub conv: RuleSpec,
    pub dense: RuleSpec,
    #[serde(default)]
    pub max_pool: MaxPoolRule,
}

/// An LRP rule and its parameter.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "rule", rename_all = "kebab-case", deny_unknown_fields)]
pub enum RuleSpec {
    /// LRP-0 with a 1e-9 stabiliser.
    Zero,
    Epsilon {
        #[serde(default = "default_epsilon")]
        epsilon: f32,
    },
    Gamma {
        #[serde(default = "default_gamma")]
        gamma: f32,
    },
    ZPlus,
    AlphaBeta {
        alpha: f32,
        beta: f32,
    },
    /// z^B with bounds from the data normalisation.
    ZBox,
}

fn default_epsilon() -> f32 {
    1e-6
}

fn default_gamma() -> f32 {
    0.25
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum MaxPoolRule {
    #[default]
    WinnerTakeAll,
    Average,
}

/// Which measures the summarizer computes.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SummaryConfig {
    #[serde(default = "default_measures")]
    pub measures: Vec<String>,
}

pub const ALL_MEASURES: &[&str] = &[
    "frobenius",
    "l1",
    "entropy_pos",
    "entropy_neg",
    "entropy_abs",
    "entropy_pos_normalized",
    "entropy_neg_normalized",
    "entropy_abs_normalized",
    "pos_frac",
    "neg_frac",
    "pos_norm",
    "neg_norm",
    "gini",
];

fn default_measures() -> Vec<String> {
    ALL_MEASURES.iter().map(|s| s.to_string()).collect()
}

impl Default for SummaryConfig {
    fn default() -> Self {
        Self { measures: default_measures() }
    }
}

impl PipelineConfig {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Self::parse(&text, path)
    }

    /// Parses and validates config text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: PipelineConfig =
            toml::from_str(text).map_err(|e| ConfigError::Parse { path: path.to_path_buf(), message: e.to_string() })?;
        config.validate().map_err(|(key, message)| ConfigError::Invalid { path: path.to_path_buf(), key, message })?;
        Ok(config)
    }

    /// Checks values serde cannot: ranges, cross references, required
    /// combinations. Returns the offending key and what is allowed.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |key: String, message: &str| Err((key, message.to_string()));
        if self.datasets.is_empty() {
            return err("datasets".into(), "define at least one data set, e.g. [datasets.fmnist]");
        }
        if self.runs.is_empty() {
            return err("runs".into(), "define at least one run, e.g. [runs.good-fit]");
        }
        for (name, d) in &self.datasets {
            let key = |k: &str| format!("datasets.{name}.{k}");
            check_name(name).map_err(|m| (format!("datasets.{name}"), m))?;
            let shape = d.image_shape().map_err(|m| (key("shape"), m))?;
            match d.kind {
                DatasetKind::Idx | DatasetKind::Cifar10 => {
                    if d.path.is_none() {
                        return err(key("path"), "required for kinds \"idx\" and \"cifar10\": the folder of the data files");
                    }
                    for k in ["shape", "train_size", "test_size", "seed"] {
                        let set = match k {
                            "shape" => d.shape.is_some(),
                            "train_size" => d.train_size.is_some(),
                            "test_size" => d.test_size.is_some(),
                            _ => d.seed.is_some(),
                        };
                        if set {
                            return err(key(k), "only allowed for kind = \"synthetic\"");
                        }
                    }
                }
                DatasetKind::Synthetic => {
                    if d.path.is_some() {
                        return err(key("path"), "not used by kind = \"synthetic\"; remove it");
                    }
                    if d.train_size.unwrap_or(crate::data::SYNTHETIC_TRAIN_SIZE) < 20
                        || d.test_size.unwrap_or(crate::data::SYNTHETIC_TEST_SIZE) < 20
                    {
                        return err(key("train_size"), "train_size and test_size must be at least 20");
                    }
                }
            }
            for (k, values) in [("mean", &d.mean), ("std", &d.std)] {
                if let Some(v) = values {
                    if v.len() != shape.channels {
                        return err(key(k), &format!("needs one value per channel ({})", shape.channels));
                    }
                    if k == "std" && v.iter().any(|s| !(*s > 0.0)) {
                        return err(key(k), "every std must be > 0");
                    }
                }
            }
        }
        for (name, r) in &self.runs {
            let key = |k: &str| format!("runs.{name}.{k}");
            check_name(name).map_err(|m| (format!("runs.{name}"), m))?;
            if !self.datasets.contains_key(&r.dataset) {
                let known: Vec<&str> = self.datasets.keys().map(|s| s.as_str()).collect();
                return err(key("dataset"), &format!("no data set `{}`; defined: {}", r.dataset, known.join(", ")));
            }
            if r.epochs == 0 {
                return err(key("epochs"), "must be at least 1");
            }
            if r.batch_size == 0 {
                return err(key("batch_size"), "must be at least 1");
            }
            if !(r.learning_rate > 0.0 && r.learning_rate.is_finite()) {
                return err(key("learning_rate"), "must be a positive number");
            }
            if r.train_subset == Some(0) {
                return err(key("train_subset"), "must be at least 1 (or left out for the whole training set)");
            }
            if r.eval_size == Some(0) {
                return err(key("eval_size"), "must be at least 1 (or left out for the whole test set)");
            }
            if r.checkpoints.every == 0 {
                return err(key("checkpoints.every"), "must be at least 1");
            }
            if r.checkpoints.dense_every == Some(0) {
                return err(key("checkpoints.dense_every"), "must be at least 1");
            }
        }
        for (name, m) in &self.methods {
            check_name(name).map_err(|msg| (format!("methods.{name}"), msg))?;
            if let MethodConfig::Lrp { composite: CompositeSpec::Named(c), .. } = m {
                if !["paper", "epsilon-gamma-box"].contains(&c.as_str()) {
                    return err(
                        format!("methods.{name}.composite"),
                        &format!("unknown composite `{c}`; use \"paper\", \"epsilon-gamma-box\" or a table of rules"),
                    );
                }
            }
        }
        if self.summaries.measures.is_empty() {
            return err("summaries.measures".into(), &format!("name at least one measure; known: {}", ALL_MEASURES.join(", ")));
        }
        for (i, m) in self.summaries.measures.iter().enumerate() {
            if !ALL_MEASURES.contains(&m.as_str()) {
                return err(
                    format!("summaries.measures[{i}]"),
                    &format!("unknown measure `{m}`; known: {}", ALL_MEASURES.join(", ")),
                );
            }
        }
        if self.probe.seen_per_class + self.probe.unseen_per_class == 0 {
            return err("probe".into(), "seen_per_class + unseen_per_class must be at least 1");
        }
        Ok(())
    }

    /// The runs named in `filter` (all when empty); unknown names are errors.
    pub fn select_runs(&self, filter: &[String]) -> Result<Vec<(&str, &RunConfig)>, String> {
        select(&self.runs, filter, "run")
    }

    /// The methods named in `filter` (all when empty); unknown names are errors.
    pub fn select_methods(&self, filter: &[String]) -> Result<Vec<(&str, &MethodConfig)>, String> {
        select(&self.methods, filter, "method")
    }
}

fn select<'a, T>(all: &'a BTreeMap<String, T>, filter: &[String], what: &str) -> Result<Vec<(&'a str, &'a T)>, String> {
    for name in filter {
        if !all.contains_key(name) {
            let known: Vec<&str> = all.keys().map(|s| s.as_str()).collect();
            return Err(format!("no {what} `{name}` in the config; defined: {}", known.join(", ")));
        }
    }
    Ok(all.iter().filter(|(k, _)| filter.is_empty() || filter.contains(k)).map(|(k, v)| (k.as_str(), v)).collect())
}

/// Names become folder and file names: keep them portable.
fn check_name(name: &str) -> Result<(), String> {
    if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        Ok(())
    } else {
        Err(format!("name `{name}` may only use letters, digits, '-' and '_'"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [datasets.synth]
        kind = "synthetic"
        shape = "3x32x32"

        [runs.a]
        dataset = "synth"
        model = "simple"
        epochs = 1
        checkpoints = { every = 10, dense_every = 2, dense_until = 6 }

        [methods.lrp]
        kind = "lrp"

        [methods.custom]
        kind = "lrp"
        composite = { first = { rule = "z-box" }, conv = { rule = "gamma", gamma = 0.5 }, dense = { rule = "epsilon" }, max_pool = "average" }

        [methods.cam]
        kind = "gradcam"
        upsample = true
    "#;

    fn parse(text: &str) -> Result<PipelineConfig, ConfigError> {
        PipelineConfig::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn parses_defaults_and_method_tables() {
        let c = parse(MINIMAL).unwrap();
        let run = &c.runs["a"];
        assert_eq!((run.batch_size, run.learning_rate), (100, 1e-3));
        assert_eq!(c.output.dir, PathBuf::from("runs"));
        assert_eq!(c.probe.seen_per_class, 10);
        assert_eq!(c.datasets["synth"].image_shape().unwrap(), ImageShape::RGB_32);
        assert_eq!(
            c.methods["lrp"],
            MethodConfig::Lrp { composite: CompositeSpec::Named("paper".into()), target: ExplainedClass::Predicted }
        );
        let MethodConfig::Lrp { composite: CompositeSpec::Rules(rules), .. } = &c.methods["custom"] else { panic!() };
        assert_eq!(rules.conv, RuleSpec::Gamma { gamma: 0.5 });
        assert_eq!(rules.dense, RuleSpec::Epsilon { epsilon: 1e-6 });
        assert_eq!(rules.max_pool, MaxPoolRule::Average);
        assert_eq!(run.checkpoints.steps(13), vec![0, 2, 4, 6, 10, 13]);
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let cases = [
            (MINIMAL.replace("epochs = 1", "epochs = 1\nepoch = 2"), "unknown field `epoch`"),
            (MINIMAL.replace("epochs = 1", "epochs = 0"), "runs.a.epochs"),
            (MINIMAL.replace("model = \"simple\"", "model = \"huge\""), "unknown variant `huge`"),
            (MINIMAL.replace("dataset = \"synth\"", "dataset = \"cifar\""), "no data set `cifar`"),
            (MINIMAL.replace("shape = \"3x32x32\"", "shape = \"3x32\""), "datasets.synth.shape"),
            (MINIMAL.replace("upsample = true", "upsample = true\nlayers = 3"), "unknown field `layers`"),
            (MINIMAL.replacen("kind = \"lrp\"\n", "kind = \"lrp\"\ncomposite = \"fancy\"\n", 1), "unknown composite `fancy`"),
            (MINIMAL.replace("every = 10", "every = 0"), "runs.a.checkpoints.every"),
            (MINIMAL.replace("[runs.a]", "[runs.\"a b\"]"), "may only use letters"),
            (format!("{MINIMAL}\n[summaries]\nmeasures = []"), "summaries.measures"),
        ];
        for (text, expected) in cases {
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains(expected), "expected `{expected}` in: {err}");
            assert!(err.starts_with("test.toml"), "{err}");
        }
    }

    #[test]
    fn selecting_unknown_runs_is_an_error() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.select_runs(&[]).unwrap().len(), 1);
        assert!(c.select_runs(&["b".into()]).unwrap_err().contains("no run `b`"));
        assert_eq!(c.select_methods(&["cam".into()]).unwrap().len(), 1);
    }
}
