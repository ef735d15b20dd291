//! What serde cannot check: ranges, cross references and combinations,
//! each failure naming the key and saying what is allowed. Every stage runs
//! these checks on the whole file at start-up, so a bad method setting
//! stops the trainer as it stops the explainer.

use super::schema::{Baseline, CompositeRules, CompositeSpec, DatasetKind, MethodConfig, PipelineConfig, RuleSpec};
use crate::architecture::{Architecture, ModelKind};

/// The folder under `[output].dir` that holds the analysis, beside the run
/// folders (docs/DESIGN.md, "Stages and files").
pub const ANALYSIS_FOLDER: &str = "analysis";

/// A failed check: the offending key and what is allowed.
pub(super) type Failure = (String, String);

fn fail<T>(key: impl Into<String>, message: impl Into<String>) -> Result<T, Failure> {
    Err((key.into(), message.into()))
}

impl RuleSpec {
    /// The rule's parameters are in range: epsilon and gamma finite and
    /// >= 0; alpha and beta finite, >= 0 and not both 0 (the rule would
    /// redistribute nothing).
    pub fn check(&self) -> Result<(), String> {
        let non_negative = |name: &str, value: f32| {
            if value.is_finite() && value >= 0.0 {
                Ok(())
            } else {
                Err(format!("`{name}` must be a finite number >= 0, got {value}"))
            }
        };
        match *self {
            RuleSpec::Epsilon { epsilon } => non_negative("epsilon", epsilon),
            RuleSpec::Gamma { gamma } => non_negative("gamma", gamma),
            RuleSpec::AlphaBeta { alpha, beta } => {
                non_negative("alpha", alpha)?;
                non_negative("beta", beta)?;
                // Zennit's condition: with alpha - beta = 1 the rule
                // conserves relevance wherever a layer's contributions do.
                if alpha - beta != 1.0 {
                    return Err(format!("`alpha - beta` must be 1 (Zennit's condition), got alpha {alpha}, beta {beta}"));
                }
                Ok(())
            }
            RuleSpec::Zero | RuleSpec::ZPlus | RuleSpec::ZBox | RuleSpec::Flat | RuleSpec::WSquare => Ok(()),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            RuleSpec::Zero => "zero",
            RuleSpec::Epsilon { .. } => "epsilon",
            RuleSpec::Gamma { .. } => "gamma",
            RuleSpec::ZPlus => "z-plus",
            RuleSpec::AlphaBeta { .. } => "alpha-beta",
            RuleSpec::ZBox => "z-box",
            RuleSpec::Flat => "flat",
            RuleSpec::WSquare => "w-square",
        }
    }
}

impl CompositeRules {
    /// Every rule in range, and z^B only for the first layer (it needs the
    /// input's value range, which only the first layer sees). Returns the
    /// position (`first`, `conv`, `dense`) at fault.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        for (position, spec) in [("first", &self.first), ("conv", &self.conv), ("dense", &self.dense)] {
            spec.check().map_err(|m| (position, format!("rule `{}`: {m}", spec.name())))?;
            if position != "first" && *spec == RuleSpec::ZBox {
                return Err((
                    position,
                    "rule `z-box` applies only to the first layer (it needs the input's value range)".to_string(),
                ));
            }
        }
        Ok(())
    }
}

impl PipelineConfig {
    /// Checks values serde cannot: ranges, cross references, required
    /// combinations. Returns the offending key and what is allowed.
    pub(super) fn check(&self) -> Result<(), Failure> {
        if self.datasets.is_empty() {
            return fail("datasets", "define at least one data set, e.g. [datasets.fmnist]");
        }
        if self.runs.is_empty() {
            return fail("runs", "define at least one run, e.g. [runs.good-fit]");
        }
        self.check_datasets()?;
        self.check_models()?;
        self.check_runs()?;
        self.check_methods()?;
        if self.summaries.measures.is_empty() {
            let known = crate::measures::Measure::known();
            return fail("summaries.measures", format!("name at least one measure; known: {known}"));
        }
        for (i, m) in self.summaries.measures.iter().enumerate() {
            if self.summaries.measures[..i].contains(m) {
                return fail(format!("summaries.measures[{i}]"), format!("`{m}` is listed twice"));
            }
        }
        if self.probe.seen_per_class + self.probe.unseen_per_class == 0 {
            return fail("probe", "seen_per_class + unseen_per_class must be at least 1");
        }
        Ok(())
    }

    fn check_datasets(&self) -> Result<(), Failure> {
        for (name, d) in &self.datasets {
            let key = |k: &str| format!("datasets.{name}.{k}");
            check_name(name).map_err(|m| (format!("datasets.{name}"), m))?;
            let shape = d.image_shape().map_err(|m| (key("shape"), m))?;
            if d.labels.is_some() && d.kind != DatasetKind::Cifar100 {
                return fail(key("labels"), "only allowed for kind = \"cifar100\"");
            }
            if d.classes.is_some() != (d.kind == DatasetKind::ImageFolder) {
                return fail(
                    key("classes"),
                    "required for kind = \"image-folder\" (the number of class folders), and only allowed there",
                );
            }
            match d.kind {
                DatasetKind::Idx | DatasetKind::Cifar10 | DatasetKind::Cifar100 | DatasetKind::ImageFolder => {
                    if d.path.is_none() {
                        return fail(key("path"), "required for this kind: the folder of the data files");
                    }
                    let synthetic_only = [
                        ("shape", d.shape.is_some() && d.kind != DatasetKind::ImageFolder),
                        ("train_size", d.train_size.is_some()),
                        ("test_size", d.test_size.is_some()),
                        ("seed", d.seed.is_some()),
                    ];
                    if let Some((k, _)) = synthetic_only.iter().find(|(_, set)| *set) {
                        let kinds = if *k == "shape" { "\"synthetic\" and \"image-folder\"" } else { "\"synthetic\"" };
                        return fail(key(k), format!("only allowed for kind = {kinds}"));
                    }
                    if d.kind == DatasetKind::ImageFolder {
                        if ![1, 3].contains(&shape.channels) {
                            return fail(key("shape"), "images have 1 (grey) or 3 (RGB) channels");
                        }
                        if !(2..=256).contains(&d.classes.unwrap_or(0)) {
                            return fail(key("classes"), "must be between 2 and 256");
                        }
                    }
                }
                DatasetKind::Synthetic => {
                    if d.path.is_some() {
                        return fail(key("path"), "not used by kind = \"synthetic\"; remove it");
                    }
                    if d.train_size.unwrap_or(crate::data::SYNTHETIC_TRAIN_SIZE) < 20
                        || d.test_size.unwrap_or(crate::data::SYNTHETIC_TEST_SIZE) < 20
                    {
                        return fail(key("train_size"), "train_size and test_size must be at least 20");
                    }
                }
            }
            for (k, values) in [("mean", &d.mean), ("std", &d.std)] {
                let Some(v) = values else { continue };
                if v.len() != shape.channels {
                    return fail(key(k), format!("needs one value per channel ({})", shape.channels));
                }
                if let Some(bad) = v.iter().find(|x| !x.is_finite()) {
                    return fail(key(k), format!("every value must be a finite number, got {bad}"));
                }
                if k == "std" && v.iter().any(|s| *s <= 0.0) {
                    return fail(key(k), "every std must be > 0");
                }
            }
        }
        Ok(())
    }

    fn check_models(&self) -> Result<(), Failure> {
        for (name, model) in &self.models {
            check_name(name).map_err(|m| (format!("models.{name}"), m))?;
            if ModelKind::parse(name).is_some() {
                return fail(format!("models.{name}"), format!("`{name}` is a built-in model; give yours another name"));
            }
            if model.layers.is_empty() {
                return fail(format!("models.{name}.layers"), "list the model's layers");
            }
        }
        Ok(())
    }

    /// The architecture of run `name`, checked against its data set's
    /// images and classes.
    fn check_run_model(&self, name: &str, run: &super::RunConfig) -> Result<Architecture, Failure> {
        let key = format!("runs.{name}.model");
        let dataset = &self.datasets[&run.dataset];
        let classes = dataset.classes();
        let Some(architecture) = self.architecture(&run.model, classes) else {
            let mut known: Vec<&str> = ModelKind::ALL.iter().map(|k| k.name()).collect();
            known.extend(self.models.keys().map(String::as_str));
            return fail(key, format!("no model `{}`; known: {}", run.model, known.join(", ")));
        };
        let shape = dataset.image_shape().expect("checked with the data sets");
        let layers_key = if self.models.contains_key(&run.model) { format!("models.{}.layers", run.model) } else { key };
        architecture.shapes(shape).map_err(|e| (layers_key.clone(), format!("{e} (on the {shape} images of run `{name}`)")))?;
        if architecture.classes() != classes {
            return fail(
                layers_key,
                format!(
                    "model `{}` ends in {} outputs, but data set `{}` of run `{name}` has {classes} classes",
                    run.model,
                    architecture.classes(),
                    run.dataset
                ),
            );
        }
        Ok(architecture)
    }

    fn check_runs(&self) -> Result<(), Failure> {
        for (name, r) in &self.runs {
            let key = |k: &str| format!("runs.{name}.{k}");
            check_name(name).map_err(|m| (format!("runs.{name}"), m))?;
            if name == ANALYSIS_FOLDER {
                return fail(
                    format!("runs.{name}"),
                    format!("`{ANALYSIS_FOLDER}` is the analyzer's output folder beside the runs; rename the run"),
                );
            }
            if !self.datasets.contains_key(&r.dataset) {
                let known: Vec<&str> = self.datasets.keys().map(|s| s.as_str()).collect();
                return fail(key("dataset"), format!("no data set `{}`; defined: {}", r.dataset, known.join(", ")));
            }
            self.check_run_model(name, r)?;
            if let Some(seeds) = &r.seeds {
                if seeds.is_empty() {
                    return fail(key("seeds"), "name at least one seed (or give `seed` instead)");
                }
                if let Some(i) = (1..seeds.len()).find(|&i| seeds[..i].contains(&seeds[i])) {
                    return fail(format!("runs.{name}.seeds[{i}]"), format!("seed {} is listed twice", seeds[i]));
                }
                if r.seed != 0 {
                    return fail(key("seed"), "give `seed` or `seeds`, not both");
                }
            }
            match (&r.external, r.epochs, &r.checkpoints) {
                (Some(_), None, None) => {
                    if r.seeds.is_some() {
                        return fail(key("seeds"), "an external run is one training; give it no `seeds`");
                    }
                }
                (Some(_), Some(_), _) => return fail(key("epochs"), "not used by an `external` run (it is trained already)"),
                (Some(_), None, Some(_)) => {
                    return fail(key("checkpoints"), "not used by an `external` run: its checkpoints are the files it names")
                }
                (None, None, _) => return fail(key("epochs"), "required (or `external` for a run trained elsewhere)"),
                (None, _, None) => return fail(key("checkpoints"), "required, e.g. { every = 100 }"),
                (None, Some(_), Some(_)) => {}
            }
            if r.epochs == Some(0) {
                return fail(key("epochs"), "must be at least 1");
            }
            if r.batch_size == 0 {
                return fail(key("batch_size"), "must be at least 1");
            }
            if !(r.learning_rate > 0.0 && r.learning_rate.is_finite()) {
                return fail(key("learning_rate"), "must be a positive number");
            }
            if r.train_subset == Some(0) {
                return fail(key("train_subset"), "must be at least 1 (or left out for the whole training set)");
            }
            if r.eval_size == Some(0) {
                return fail(key("eval_size"), "must be at least 1 (or left out for the whole test set)");
            }
            if r.train_eval_size == Some(0) {
                return fail(key("train_eval_size"), "must be at least 1 (or left out for 2000)");
            }
            if let Some(schedule) = &r.checkpoints {
                if schedule.every == 0 {
                    return fail(key("checkpoints.every"), "must be at least 1");
                }
                if schedule.dense_every == Some(0) {
                    return fail(key("checkpoints.dense_every"), "must be at least 1");
                }
            }
        }
        Ok(())
    }

    fn check_methods(&self) -> Result<(), Failure> {
        for (name, m) in &self.methods {
            let key = |k: &str| format!("methods.{name}.{k}");
            check_name(name).map_err(|msg| (format!("methods.{name}"), msg))?;
            match m {
                MethodConfig::Lrp { composite: CompositeSpec::Rules(rules), .. } => {
                    rules.check().map_err(|(position, message)| (key(&format!("composite.{position}")), message))?;
                }
                MethodConfig::Lrp { composite: CompositeSpec::Named(_), .. } => {}
                MethodConfig::Gradcam { layer: Some(layer), .. } => {
                    for (run_name, run) in &self.runs {
                        let architecture = self.check_run_model(run_name, run)?;
                        check_gradcam_layer(&architecture, layer)
                            .map_err(|message| (key("layer"), format!("{message} (run `{run_name}`)")))?;
                    }
                }
                MethodConfig::Gradcam { layer: None, .. } => {}
                MethodConfig::IntegratedGradients { steps, baseline, .. } => {
                    if *steps == 0 {
                        return fail(key("steps"), "must be at least 1");
                    }
                    check_baseline(baseline).map_err(|message| (key("baseline"), message))?;
                }
                MethodConfig::Smoothgrad { samples, noise, .. } => {
                    if *samples == 0 {
                        return fail(key("samples"), "must be at least 1");
                    }
                    if !(noise.is_finite() && *noise >= 0.0) {
                        return fail(key("noise"), "must be a finite number of at least 0 (a fraction of the input range)");
                    }
                }
                MethodConfig::Occlusion { window, stride, baseline, .. } => {
                    for (name, value) in [("window", window), ("stride", stride)] {
                        if *value == 0 {
                            return fail(key(name), "must be at least 1");
                        }
                    }
                    check_baseline(baseline).map_err(|message| (key("baseline"), message))?;
                }
                MethodConfig::Gradient { .. } | MethodConfig::GradientXInput { .. } | MethodConfig::GuidedBackprop { .. } => {}
            }
        }
        Ok(())
    }
}

fn check_baseline(baseline: &Baseline) -> Result<(), String> {
    match baseline {
        Baseline::Value(v) if !v.is_finite() => Err("must be \"zero\", \"black\" or a finite number".into()),
        _ => Ok(()),
    }
}

/// `layer` names a convolution or a ReLU before the flatten of the model.
fn check_gradcam_layer(architecture: &Architecture, layer: &str) -> Result<(), String> {
    let layers = architecture.gradcam_layers();
    if layers.contains(&layer) {
        Ok(())
    } else {
        Err(format!(
            "`{layer}` is not a conv or ReLU layer before the flatten of model `{}`; those are: {}",
            architecture.name,
            layers.join(", ")
        ))
    }
}

/// Names become folder and file names: keep them portable.
fn check_name(name: &str) -> Result<(), String> {
    if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        Ok(())
    } else {
        Err(format!("name `{name}` may only use letters, digits, '-' and '_'"))
    }
}
