//! The TOML schema of `pipeline.toml` as serde types (docs/DESIGN.md,
//! "Configuration"). Unknown keys are errors: serde's `deny_unknown_fields`
//! names the key and lists the allowed ones. Values are checked in
//! `check`; the stages take the checked, resolved form `Pipeline`.
//!
//! Fingerprints hash these types as JSON, so a field's name, order and
//! serde form are part of every cached artifact's identity: changing them
//! redoes everything.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::architecture::{Architecture, LayerKind, ModelKind};
use crate::image::{ImageShape, Normalization};
use crate::measures::Measure;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    #[serde(default)]
    pub output: OutputConfig,
    pub datasets: BTreeMap<String, DatasetConfig>,
    #[serde(default)]
    pub probe: ProbeConfig,
    pub runs: BTreeMap<String, RunConfig>,
    /// Architectures beside the presets `simple` and `complex`.
    #[serde(default)]
    pub models: BTreeMap<String, ModelConfig>,
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
    /// CIFAR-100 binary version (`train.bin`, `test.bin`) in `path`, with
    /// its `labels` fine (100 classes) or coarse (20).
    Cifar100,
    /// PNG or JPEG images in `path/train/<class>/` and `path/test/<class>/`,
    /// classes in name order, every image of the declared `shape`.
    ImageFolder,
    /// Generated images (see `data::synthetic`).
    Synthetic,
}

/// Which of CIFAR-100's two labels a data set uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CifarLabels {
    /// The 100 classes.
    #[default]
    Fine,
    /// The 20 superclasses.
    Coarse,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetConfig {
    pub kind: DatasetKind,
    /// Folder of the files (every kind but `synthetic`).
    pub path: Option<PathBuf>,
    /// Per-channel mean and std of the normalisation; default 0.5 / 0.5.
    pub mean: Option<Vec<f32>>,
    pub std: Option<Vec<f32>>,
    /// Synthetic and image folders: `"1x28x28"` or `"3x32x32"` (any CxHxW
    /// with C 1 or 3 for images, H, W >= 8).
    pub shape: Option<String>,
    /// CIFAR-100 only: `"fine"` (default) or `"coarse"`. (New keys are left
    /// out of the serialised form when unset, so the fingerprints of data
    /// sets without them stay as they were.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<CifarLabels>,
    /// Image folders only: the number of class folders (which the models'
    /// last layer must match before any file is read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classes: Option<usize>,
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
            DatasetKind::Cifar10 | DatasetKind::Cifar100 => Ok(ImageShape::RGB_32),
            DatasetKind::Synthetic => ImageShape::parse(self.shape.as_deref().unwrap_or("1x28x28")),
            DatasetKind::ImageFolder => match self.shape.as_deref() {
                Some(shape) => ImageShape::parse(shape),
                None => Err("required for kind = \"image-folder\": the shape of every image, e.g. \"3x64x64\"".into()),
            },
        }
    }

    /// The number of classes of the data set.
    pub fn classes(&self) -> usize {
        match self.kind {
            DatasetKind::Cifar100 => match self.labels.unwrap_or_default() {
                CifarLabels::Fine => 100,
                CifarLabels::Coarse => 20,
            },
            DatasetKind::ImageFolder => self.classes.unwrap_or(0),
            DatasetKind::Idx | DatasetKind::Cifar10 | DatasetKind::Synthetic => 10,
        }
    }

    pub fn normalization(&self, channels: usize) -> Normalization {
        Normalization {
            mean: self.mean.clone().unwrap_or_else(|| vec![0.5; channels]),
            std: self.std.clone().unwrap_or_else(|| vec![0.5; channels]),
        }
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

/// A model defined in the config: its layers, in order (docs/DESIGN.md,
/// "Models as data").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub layers: Vec<LayerKind>,
}

impl PipelineConfig {
    /// The architecture a run's `model` names, for a data set of `classes`
    /// classes: a preset, or a model of `[models]`. `None` when it names
    /// neither (the config check refuses that).
    pub fn architecture(&self, model: &str, classes: usize) -> Option<Architecture> {
        match ModelKind::parse(model) {
            Some(preset) => Some(preset.architecture(classes)),
            None => self.models.get(model).map(|m| Architecture::new(model, m.layers.clone())),
        }
    }
}

/// One training run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Name of an entry in `[datasets]`.
    pub dataset: String,
    /// A preset (`simple`, `complex`) or a model of `[models]`.
    pub model: String,
    /// Required for a run the trainer trains; not for an `external` one.
    /// (Optional keys are left out of the serialised form when unset, so
    /// runs that set them keep their fingerprints.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epochs: Option<u32>,
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    #[serde(default = "default_learning_rate")]
    pub learning_rate: f64,
    #[serde(default)]
    pub seed: u64,
    /// Replicates: one training per seed (initialisation and batch order),
    /// each in `<run>/seed-<s>/`, all with the training subset and probe
    /// set of the first seed. Instead of `seed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seeds: Option<Vec<u64>>,
    /// Train on the first N images of a seeded shuffle of the training set.
    pub train_subset: Option<usize>,
    /// Test loss and accuracy on the first N test images (default: all).
    pub eval_size: Option<usize>,
    /// Loss and accuracy on fixed weights on the first N of the run's
    /// training images (`train_eval_loss`; default 2000, or all of them if
    /// fewer).
    pub train_eval_size: Option<usize>,
    /// Required for a run the trainer trains; not for an `external` one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoints: Option<CheckpointSchedule>,
    /// The fit regime this run is meant to show (a label for reports only).
    pub intended_fit: Option<String>,
    /// A run trained elsewhere: its checkpoints and metrics, imported by
    /// the trainer instead of training.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalRun>,
}

/// Where a run trained elsewhere keeps its files (docs/DESIGN.md, "Runs
/// trained elsewhere").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalRun {
    /// A folder of `step-<N>.safetensors` files, each a state_dict of the
    /// run's model.
    pub checkpoints: PathBuf,
    /// A CSV file (or a `.parquet` table) with a `step` column and
    /// optionally `epoch`, `train_loss` and `train_acc`.
    pub metrics: PathBuf,
}

impl RunConfig {
    /// The checkpoint schedule of a trained run (checked to be there).
    pub fn schedule(&self) -> &CheckpointSchedule {
        self.checkpoints.as_ref().expect("checked: a trained run has a checkpoint schedule")
    }

    /// The epochs of a trained run (checked to be there).
    pub fn epoch_count(&self) -> u32 {
        self.epochs.expect("checked: a trained run has epochs")
    }
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

/// An explanation method: its `kind` (`lrp`, `gradcam`, `gradient`,
/// `gradient-x-input`, `integrated-gradients`, `smoothgrad`,
/// `guided-backprop`, `occlusion`) and its settings.
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
        /// Name of a conv or ReLU layer before the flatten (e.g.
        /// `features_conv.3`); default the last conv.
        layer: Option<String>,
        #[serde(default)]
        relu: bool,
        #[serde(default)]
        upsample: bool,
        #[serde(default)]
        target: ExplainedClass,
    },
    /// The gradient of the explained logit with respect to the input
    /// (Simonyan et al.), summed over the input channels; with `abs`, the
    /// sum of the absolute values.
    Gradient {
        #[serde(default)]
        abs: bool,
        #[serde(default)]
        target: ExplainedClass,
    },
    /// Input times gradient (Shrikumar et al.), summed over the channels.
    GradientXInput {
        #[serde(default)]
        target: ExplainedClass,
    },
    /// Integrated gradients (Sundararajan et al.) from `baseline` to the
    /// input, by Gauss-Legendre quadrature with `steps` nodes.
    IntegratedGradients {
        #[serde(default = "default_integration_steps")]
        steps: usize,
        #[serde(default)]
        baseline: Baseline,
        #[serde(default)]
        target: ExplainedClass,
    },
    /// SmoothGrad (Smilkov et al.): the mean gradient over `samples` noisy
    /// copies of the input, Gaussian noise of standard deviation `noise`
    /// times the normalised input range, drawn per probe image from `seed`.
    Smoothgrad {
        #[serde(default = "default_smoothgrad_samples")]
        samples: usize,
        #[serde(default = "default_smoothgrad_noise")]
        noise: f64,
        #[serde(default)]
        seed: u64,
        #[serde(default)]
        target: ExplainedClass,
    },
    /// Guided backpropagation (Springenberg et al.): the gradient with only
    /// positive gradients passed back through each ReLU.
    GuidedBackprop {
        #[serde(default)]
        target: ExplainedClass,
    },
    /// Occlusion (Zeiler and Fergus): the mean fall of the explained logit
    /// when a `window x window` patch of every channel, at positions
    /// `stride` apart, is set to `baseline`.
    Occlusion {
        #[serde(default = "default_occlusion_window")]
        window: usize,
        #[serde(default = "default_occlusion_window")]
        stride: usize,
        #[serde(default)]
        baseline: Baseline,
        #[serde(default)]
        target: ExplainedClass,
    },
}

fn default_occlusion_window() -> usize {
    4
}

fn default_integration_steps() -> usize {
    32
}

fn default_smoothgrad_samples() -> usize {
    16
}

/// 0.075 of the range: a standard deviation of 0.15 for inputs normalised
/// to [-1, 1] (mean 0.5, std 0.5), the peer benchmark's setting.
fn default_smoothgrad_noise() -> f64 {
    0.075
}

/// Where integrated gradients start, and what occludes: `"zero"` (every normalised input 0,
/// the data set's mean image for mean/std normalisation), `"black"` (the
/// normalised value of a 0 pixel, per channel) or a number (one normalised
/// value for every input).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Baseline {
    #[default]
    Zero,
    Black,
    Value(f32),
}

impl Serialize for Baseline {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Baseline::Zero => s.serialize_str("zero"),
            Baseline::Black => s.serialize_str("black"),
            Baseline::Value(v) => s.serialize_f32(*v),
        }
    }
}

impl<'de> Deserialize<'de> for Baseline {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct BaselineVisitor;
        impl serde::de::Visitor<'_> for BaselineVisitor {
            type Value = Baseline;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("\"zero\", \"black\" or a number")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Baseline, E> {
                match v {
                    "zero" => Ok(Baseline::Zero),
                    "black" => Ok(Baseline::Black),
                    _ => Err(E::custom(format!("unknown baseline `{v}`: expected \"zero\", \"black\" or a number"))),
                }
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Baseline, E> {
                Ok(Baseline::Value(v as f32))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Baseline, E> {
                Ok(Baseline::Value(v as f32))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Baseline, E> {
                Ok(Baseline::Value(v as f32))
            }
        }
        d.deserialize_any(BaselineVisitor)
    }
}

fn default_composite() -> CompositeSpec {
    CompositeSpec::Named(NamedComposite::Paper)
}

/// The composites known by name (docs/DESIGN.md, "LRP").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NamedComposite {
    /// z^B first layer, gamma 0.25 convolutions, LRP-0 dense layers,
    /// max-pools redistributed as average pooling.
    Paper,
    /// z^B first layer, gamma 0.25 convolutions, epsilon 1e-6 dense layers,
    /// winner-take-all max-pools (Zennit's `EpsilonGammaBox`).
    EpsilonGammaBox,
    /// z+ on every convolution (the first too), epsilon 1e-6 dense layers,
    /// winner-take-all max-pools (Zennit's `EpsilonPlus`).
    EpsilonPlus,
    /// `EpsilonPlus` with the flat rule on the first layer (Zennit's
    /// `EpsilonPlusFlat`).
    EpsilonPlusFlat,
    /// alpha 2, beta 1 on every convolution, epsilon 1e-6 dense layers
    /// (Zennit's `EpsilonAlpha2Beta1`).
    EpsilonAlpha2Beta1,
    /// `EpsilonAlpha2Beta1` with the flat rule on the first layer (Zennit's
    /// `EpsilonAlpha2Beta1Flat`).
    EpsilonAlpha2Beta1Flat,
}

impl NamedComposite {
    pub const ALL: [NamedComposite; 6] = [
        NamedComposite::Paper,
        NamedComposite::EpsilonGammaBox,
        NamedComposite::EpsilonPlus,
        NamedComposite::EpsilonPlusFlat,
        NamedComposite::EpsilonAlpha2Beta1,
        NamedComposite::EpsilonAlpha2Beta1Flat,
    ];

    pub fn name(&self) -> &'static str {
        match self {
            NamedComposite::Paper => "paper",
            NamedComposite::EpsilonGammaBox => "epsilon-gamma-box",
            NamedComposite::EpsilonPlus => "epsilon-plus",
            NamedComposite::EpsilonPlusFlat => "epsilon-plus-flat",
            NamedComposite::EpsilonAlpha2Beta1 => "epsilon-alpha2-beta1",
            NamedComposite::EpsilonAlpha2Beta1Flat => "epsilon-alpha2-beta1-flat",
        }
    }

    pub fn parse(name: &str) -> Option<NamedComposite> {
        NamedComposite::ALL.into_iter().find(|c| c.name() == name)
    }

    /// The rules of the composite.
    pub fn rules(&self) -> CompositeRules {
        let epsilon = RuleSpec::Epsilon { epsilon: 1e-6 };
        let alpha_beta = RuleSpec::AlphaBeta { alpha: 2.0, beta: 1.0 };
        let (first, conv, dense, max_pool) = match self {
            NamedComposite::Paper => (RuleSpec::ZBox, RuleSpec::Gamma { gamma: 0.25 }, RuleSpec::Zero, MaxPoolRule::Average),
            NamedComposite::EpsilonGammaBox => {
                (RuleSpec::ZBox, RuleSpec::Gamma { gamma: 0.25 }, epsilon, MaxPoolRule::WinnerTakeAll)
            }
            NamedComposite::EpsilonPlus => (RuleSpec::ZPlus, RuleSpec::ZPlus, epsilon, MaxPoolRule::WinnerTakeAll),
            NamedComposite::EpsilonPlusFlat => (RuleSpec::Flat, RuleSpec::ZPlus, epsilon, MaxPoolRule::WinnerTakeAll),
            NamedComposite::EpsilonAlpha2Beta1 => (alpha_beta.clone(), alpha_beta, epsilon, MaxPoolRule::WinnerTakeAll),
            NamedComposite::EpsilonAlpha2Beta1Flat => (RuleSpec::Flat, alpha_beta, epsilon, MaxPoolRule::WinnerTakeAll),
        };
        CompositeRules { first, conv, dense, max_pool }
    }
}

/// An LRP composite: a name, or rules given per layer kind. Serialised as
/// the name or the table (what fingerprints hash); read by hand so that a
/// misspelt name or a bad table says what is wrong.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(untagged)]
pub enum CompositeSpec {
    Named(NamedComposite),
    Rules(CompositeRules),
}

impl<'de> Deserialize<'de> for CompositeSpec {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = CompositeSpec;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a composite name or a table of rules { first, conv, dense, max_pool }")
            }

            fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<CompositeSpec, E> {
                NamedComposite::parse(name).map(CompositeSpec::Named).ok_or_else(|| {
                    let names: Vec<String> = NamedComposite::ALL.iter().map(|c| format!("\"{}\"", c.name())).collect();
                    E::custom(format!(
                        "unknown composite `{name}`; use {} or a table of rules {{ first, conv, dense, max_pool }}",
                        names.join(", ")
                    ))
                })
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<CompositeSpec, A::Error> {
                CompositeRules::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(CompositeSpec::Rules)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
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
    /// Flat: every input of an output's receptive field gets an equal
    /// share, whatever the input and the weights (Zennit's `Flat`: unit
    /// inputs and weights, bias zero).
    Flat,
    /// w²: shares in proportion to the squared weights (Zennit's
    /// `WSquare`: unit inputs, squared weights and bias).
    WSquare,
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
    pub measures: Vec<Measure>,
}

fn default_measures() -> Vec<Measure> {
    Measure::ALL.to_vec()
}

impl Default for SummaryConfig {
    fn default() -> Self {
        Self { measures: default_measures() }
    }
}
