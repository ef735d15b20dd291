//! `pipeline.toml`, read and checked once (docs/DESIGN.md, "Configuration").
//!
//! As in ripgrep's flags, the text is parsed into a low-level form
//! ([`PipelineConfig`], the serde schema: what fingerprints hash), checked
//! whole, and resolved into [`Pipeline`], which every stage takes: data
//! sets with their image shape and normalisation, the selected runs and
//! methods, the measures. A stage never re-derives or re-checks a setting.

mod check;
mod schema;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use check::ANALYSIS_FOLDER;
pub use schema::*;

use crate::architecture::Architecture;
use crate::image::{ImageShape, Normalization};
use crate::measures::Measure;

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

/// A data set as the stages use it: its section, its image shape and its
/// normalisation.
#[derive(Clone, Debug, PartialEq)]
pub struct DatasetSpec {
    pub name: String,
    pub config: DatasetConfig,
    pub shape: ImageShape,
    pub normalization: Normalization,
    pub classes: usize,
}

/// One training of a run: the run itself, or one seed of a run with
/// `seeds` (docs/DESIGN.md, "Trend statistics").
#[derive(Clone, Debug, PartialEq)]
pub struct RunInstance {
    /// The run's name in the config.
    pub run: String,
    /// This instance's seed: initialisation and batch order.
    pub seed: u64,
    /// The run's section with `seed` set to this instance's and no `seeds`.
    pub config: RunConfig,
    /// The seed of the training subset, and so of the probe set: the run's
    /// first seed, the same for every instance of the run.
    pub subset_seed: u64,
    /// The run lists `seeds`: its instances live in `<run>/seed-<s>/`.
    pub replicated: bool,
    /// The instance's folder under `[output].dir` (`<run>` or
    /// `<run>/seed-<s>`), and its name in logs.
    pub path: String,
}

impl std::fmt::Display for RunInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.path)
    }
}

/// The checked, resolved config every stage takes.
#[derive(Clone, Debug)]
pub struct Pipeline {
    /// The file it was read from (for messages).
    pub file: PathBuf,
    /// The sections as written and checked.
    pub config: PipelineConfig,
    datasets: BTreeMap<String, DatasetSpec>,
    /// Every run's instances, by run and seed.
    instances: Vec<RunInstance>,
}

impl PipelineConfig {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Self::parse(&text, path)
    }

    /// Parses and checks config text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: PipelineConfig =
            toml::from_str(text).map_err(|e| ConfigError::Parse { path: path.to_path_buf(), message: e.to_string() })?;
        config.check().map_err(|(key, message)| ConfigError::Invalid { path: path.to_path_buf(), key, message })?;
        Ok(config)
    }
}

impl Pipeline {
    /// Reads, checks and resolves a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Ok(Self::resolve(PipelineConfig::load(path)?, path))
    }

    /// Parses, checks and resolves config text; `path` names it in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        Ok(Self::resolve(PipelineConfig::parse(text, path)?, path))
    }

    fn resolve(config: PipelineConfig, path: &Path) -> Self {
        let datasets = config
            .datasets
            .iter()
            .map(|(name, d)| {
                let shape = d.image_shape().expect("checked: the shape parses");
                let spec = DatasetSpec {
                    name: name.clone(),
                    config: d.clone(),
                    shape,
                    normalization: d.normalization(shape.channels),
                    classes: d.classes(),
                };
                (name.clone(), spec)
            })
            .collect();
        let instances = run_instances(&config);
        Pipeline { file: path.to_path_buf(), config, datasets, instances }
    }

    /// The folder of all artifacts.
    pub fn output_dir(&self) -> &Path {
        &self.config.output.dir
    }

    /// The folder of the analysis, beside the run folders.
    pub fn analysis_dir(&self) -> PathBuf {
        self.output_dir().join(ANALYSIS_FOLDER)
    }

    /// The data set a run trains on (checked to exist).
    pub fn dataset_of(&self, run: &RunConfig) -> &DatasetSpec {
        &self.datasets[&run.dataset]
    }

    /// The architecture a run trains: its model for its data set's classes
    /// (checked to exist and to fit the data set's images).
    pub fn architecture_of(&self, run: &RunConfig) -> Architecture {
        self.config.architecture(&run.model, self.dataset_of(run).classes).expect("checked: the run's model exists")
    }

    pub fn measures(&self) -> &[Measure] {
        &self.config.summaries.measures
    }

    /// The runs named in `filter` (all when empty); unknown names are errors.
    pub fn select_runs(&self, filter: &[String]) -> Result<Vec<(&str, &RunConfig)>, String> {
        select(&self.config.runs, filter, "run")
    }

    /// The instances of the runs named in `filter` (all when empty), by
    /// run and seed; unknown names are errors.
    pub fn instances(&self, filter: &[String]) -> Result<Vec<&RunInstance>, String> {
        let runs = self.select_runs(filter)?;
        Ok(self.instances.iter().filter(|i| runs.iter().any(|(name, _)| *name == i.run)).collect())
    }

    /// The instance whose outputs live in `<output>/<path>` (`<run>` or
    /// `<run>/seed-<s>`).
    pub fn instance(&self, path: &str) -> Option<&RunInstance> {
        self.instances.iter().find(|i| i.path == path)
    }

    /// The methods named in `filter` (all when empty); unknown names are errors.
    pub fn select_methods(&self, filter: &[String]) -> Result<Vec<(&str, &MethodConfig)>, String> {
        select(&self.config.methods, filter, "method")
    }
}

/// The instances of every run: the run itself, or one per seed of
/// `seeds` (ascending), all sharing the first seed's training subset.
fn run_instances(config: &PipelineConfig) -> Vec<RunInstance> {
    let mut instances = Vec::new();
    for (run, section) in &config.runs {
        match &section.seeds {
            None => instances.push(RunInstance {
                run: run.clone(),
                seed: section.seed,
                config: section.clone(),
                subset_seed: section.seed,
                replicated: false,
                path: run.clone(),
            }),
            Some(seeds) => {
                let mut sorted = seeds.clone();
                sorted.sort_unstable();
                for seed in sorted {
                    instances.push(RunInstance {
                        run: run.clone(),
                        seed,
                        config: RunConfig { seed, seeds: None, ..section.clone() },
                        subset_seed: seeds[0],
                        replicated: true,
                        path: format!("{run}/seed-{seed}"),
                    });
                }
            }
        }
    }
    instances
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::architecture::ModelKind;

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

    fn parse(text: &str) -> Result<Pipeline, ConfigError> {
        Pipeline::parse(text, Path::new("test.toml"))
    }

    /// Six 2x2 pools: too many for 32x32 images.
    const DEEP: &str = r#"
        [models.deep]
        layers = [{ conv = 4, kernel = 3, padding = 1 }, "relu", "max_pool", "max_pool", "max_pool", "max_pool", "max_pool", "max_pool", "flatten", { dense = 10 }]
    "#;

    const WIDE: &str = r#"
        [models.wide]
        layers = [{ conv = 4, kernel = 3, stride = 2 }, "relu", "avg_pool", "flatten", { dropout = 0.5 }, { dense = 7 }]
    "#;

    #[test]
    fn data_sets_give_their_classes_to_the_presets() {
        let coarse = MINIMAL
            .replace("kind = \"synthetic\"", "kind = \"cifar100\"\npath = \"d\"\nlabels = \"coarse\"")
            .replace("shape = \"3x32x32\"", "");
        let p = parse(&coarse).unwrap();
        assert_eq!(p.dataset_of(&p.config.runs["a"]).classes, 20);
        assert_eq!(p.architecture_of(&p.config.runs["a"]).classes(), 20);
        let folder = MINIMAL.replace("kind = \"synthetic\"", "kind = \"image-folder\"\npath = \"d\"\nclasses = 3");
        let p = parse(&folder).unwrap();
        assert_eq!(p.architecture_of(&p.config.runs["a"]).classes(), 3);
        // Keys a data set does not set stay out of its fingerprint.
        let json = serde_json::to_string(&parse(MINIMAL).unwrap().config.datasets["synth"]).unwrap();
        assert!(!json.contains("labels") && !json.contains("classes"), "{json}");
    }

    #[test]
    fn models_of_the_config_resolve_with_their_names() {
        let text = MINIMAL.replace("model = \"simple\"", "model = \"wide\"") + &WIDE.replace("dense = 7", "dense = 10");
        let p = parse(&text).unwrap();
        let architecture = p.architecture_of(&p.config.runs["a"]);
        assert_eq!(architecture.name, "wide");
        assert_eq!(architecture.classes(), 10);
        assert_eq!(architecture.layers[0].name.as_deref(), Some("features_conv.0"));
        assert_eq!(architecture.layers[5].name.as_deref(), Some("fc1"));
        assert_eq!(p.architecture_of(&parse(MINIMAL).unwrap().config.runs["a"]), ModelKind::Simple.architecture(10));
    }

    #[test]
    fn parses_defaults_and_method_tables() {
        let p = parse(MINIMAL).unwrap();
        let c = &p.config;
        let run = &c.runs["a"];
        assert_eq!((run.batch_size, run.learning_rate), (100, 1e-3));
        assert_eq!(p.output_dir(), Path::new("runs"));
        assert_eq!(c.probe.seen_per_class, 10);
        assert_eq!(p.dataset_of(run).shape, ImageShape::RGB_32);
        assert_eq!(p.dataset_of(run).normalization, Normalization { mean: vec![0.5; 3], std: vec![0.5; 3] });
        assert_eq!(
            c.methods["lrp"],
            MethodConfig::Lrp { composite: CompositeSpec::Named(NamedComposite::Paper), target: ExplainedClass::Predicted }
        );
        let MethodConfig::Lrp { composite: CompositeSpec::Rules(rules), .. } = &c.methods["custom"] else { panic!() };
        assert_eq!(rules.conv, RuleSpec::Gamma { gamma: 0.5 });
        assert_eq!(rules.dense, RuleSpec::Epsilon { epsilon: 1e-6 });
        assert_eq!(rules.max_pool, MaxPoolRule::Average);
        assert_eq!(run.schedule().steps(13), vec![0, 2, 4, 6, 10, 13]);
        assert_eq!(p.measures(), Measure::ALL);
    }

    #[test]
    fn rules_and_methods_parse_by_their_names() {
        let rule = |text: &str| {
            toml::from_str::<CompositeRules>(&format!(
                "first = {text}\nconv = {{ rule = \"zero\" }}\ndense = {{ rule = \"zero\" }}"
            ))
            .map(|r| r.first)
        };
        assert_eq!(rule("{ rule = \"flat\" }").unwrap(), RuleSpec::Flat);
        assert_eq!(rule("{ rule = \"w-square\" }").unwrap(), RuleSpec::WSquare);
        let method = |text: &str| toml::from_str::<MethodConfig>(text).unwrap();
        assert_eq!(
            method("kind = \"integrated-gradients\"\nbaseline = 0"),
            MethodConfig::IntegratedGradients { steps: 32, baseline: Baseline::Value(0.0), target: ExplainedClass::Predicted }
        );
        assert_eq!(
            method("kind = \"occlusion\"\nbaseline = \"black\"\nwindow = 2"),
            MethodConfig::Occlusion { window: 2, stride: 4, baseline: Baseline::Black, target: ExplainedClass::Predicted }
        );
        assert_eq!(
            method("kind = \"gradient-x-input\"\ntarget = \"label\""),
            MethodConfig::GradientXInput { target: ExplainedClass::Label }
        );
    }

    /// Fingerprints hash the serde form: a named composite must serialise
    /// as its name, a measure as its column name, as before they were enums.
    #[test]
    fn enums_serialise_as_the_strings_they_replaced() {
        let p = parse(MINIMAL).unwrap();
        assert_eq!(
            serde_json::to_string(&p.config.methods["lrp"]).unwrap(),
            r#"{"kind":"lrp","composite":"paper","target":"predicted"}"#
        );
        assert_eq!(serde_json::to_string(&p.config.summaries.measures[..2]).unwrap(), r#"["frobenius","l1"]"#);
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let gradcam = "upsample = true";
        let custom = "conv = { rule = \"gamma\", gamma = 0.5 }";
        let cases = [
            ("misspelt key", MINIMAL.replace("epochs = 1", "epochs = 1\nepoch = 2"), "unknown field `epoch`"),
            ("zero epochs", MINIMAL.replace("epochs = 1", "epochs = 0"), "runs.a.epochs"),
            ("unknown model", MINIMAL.replace("model = \"simple\"", "model = \"huge\""), "`runs.a.model`: no model `huge`; known: simple, complex"),
            ("model too deep", MINIMAL.replace("model = \"simple\"", "model = \"deep\"") + DEEP, "`models.deep.layers`: model `deep`, layer 7 (`max_pool`): gets 4x1x1: a 2x2 pool needs planes of at least 2x2 (on the 3x32x32 images of run `a`)"),
            ("model of other classes", MINIMAL.replace("model = \"simple\"", "model = \"wide\"") + WIDE, "model `wide` ends in 7 outputs, but data set `synth` of run `a` has 10 classes"),
            ("preset redefined", format!("{MINIMAL}\n[models.simple]\nlayers = [\"flatten\", {{ dense = 10 }}]"), "`models.simple`: `simple` is a built-in model"),
            ("unknown layer", format!("{MINIMAL}\n[models.m]\nlayers = [\"flaten\"]"), "unknown layer `flaten`"),
            ("unknown data set", MINIMAL.replace("dataset = \"synth\"", "dataset = \"cifar\""), "no data set `cifar`"),
            ("bad shape", MINIMAL.replace("shape = \"3x32x32\"", "shape = \"3x32\""), "datasets.synth.shape"),
            ("unknown gradcam key", MINIMAL.replace("upsample = true", "upsample = true\nlayers = 3"), "unknown field `layers`"),
            (
                "misspelt composite",
                MINIMAL.replacen("kind = \"lrp\"\n", "kind = \"lrp\"\ncomposite = \"fancy\"\n", 1),
                "unknown composite `fancy`; use \"paper\", \"epsilon-gamma-box\", \"epsilon-plus\", \"epsilon-plus-flat\", \"epsilon-alpha2-beta1\", \"epsilon-alpha2-beta1-flat\" or a table of rules",
            ),
            ("zero checkpoint interval", MINIMAL.replace("every = 10", "every = 0"), "runs.a.checkpoints.every"),
            ("bad run name", MINIMAL.replace("[runs.a]", "[runs.\"a b\"]"), "may only use letters"),
            ("run named analysis", MINIMAL.replace("[runs.a]", "[runs.analysis]"), "`runs.analysis`: `analysis` is the analyzer's"),
            ("no measures", format!("{MINIMAL}\n[summaries]\nmeasures = []"), "summaries.measures"),
            ("unknown measure", format!("{MINIMAL}\n[summaries]\nmeasures = [\"norm\"]"), "unknown variant `norm`"),
            ("measure twice", format!("{MINIMAL}\n[summaries]\nmeasures = [\"gini\", \"gini\"]"), "summaries.measures[1]"),
            ("negative gamma", MINIMAL.replace(custom, "conv = { rule = \"gamma\", gamma = -1.0 }"), "`methods.custom.composite.conv`: rule `gamma`: `gamma` must be a finite number >= 0, got -1"),
            ("z-box past the first layer", MINIMAL.replace(custom, "conv = { rule = \"z-box\" }"), "`methods.custom.composite.conv`: rule `z-box` applies only to the first layer"),
            ("alpha and beta zero", MINIMAL.replace(custom, "conv = { rule = \"alpha-beta\", alpha = 0.0, beta = 0.0 }"), "`alpha - beta` must be 1"),
            ("alpha minus beta not 1", MINIMAL.replace(custom, "conv = { rule = \"alpha-beta\", alpha = 2.0, beta = 2.0 }"), "`alpha - beta` must be 1 (Zennit's condition), got alpha 2, beta 2"),
            ("no integration steps", format!("{MINIMAL}\n[methods.ig]\nkind = \"integrated-gradients\"\nsteps = 0"), "`methods.ig.steps`: must be at least 1"),
            ("unknown baseline", format!("{MINIMAL}\n[methods.ig]\nkind = \"integrated-gradients\"\nbaseline = \"grey\""), "unknown baseline `grey`"),
            ("no smoothgrad samples", format!("{MINIMAL}\n[methods.sg]\nkind = \"smoothgrad\"\nsamples = 0"), "`methods.sg.samples`: must be at least 1"),
            ("negative noise", format!("{MINIMAL}\n[methods.sg]\nkind = \"smoothgrad\"\nnoise = -0.1"), "`methods.sg.noise`"),
            ("zero occlusion window", format!("{MINIMAL}\n[methods.occ]\nkind = \"occlusion\"\nwindow = 0"), "`methods.occ.window`: must be at least 1"),
            ("unknown gradient key", format!("{MINIMAL}\n[methods.g]\nkind = \"gradient\"\nabsolute = true"), "unknown field `absolute`"),
            ("unknown rule", MINIMAL.replace(custom, "conv = { rule = \"gama\" }"), "unknown variant `gama`"),
            ("unknown gradcam layer", MINIMAL.replace(gradcam, "upsample = true\nlayer = \"features_conv.2\""), "`methods.cam.layer`: `features_conv.2` is not a conv or ReLU layer before the flatten of model `simple`; those are: features_conv.0, features_conv.1, features_conv.3, features_conv.4 (run `a`)"),
            ("image folder without classes", MINIMAL.replace("kind = \"synthetic\"", "kind = \"image-folder\"\npath = \"d\""), "`datasets.synth.classes`: required for kind = \"image-folder\""),
            ("labels outside CIFAR-100", MINIMAL.replace("kind = \"synthetic\"", "kind = \"synthetic\"\nlabels = \"coarse\""), "`datasets.synth.labels`: only allowed for kind = \"cifar100\""),
            ("image folder of 2 channels", MINIMAL.replace("kind = \"synthetic\"", "kind = \"image-folder\"\npath = \"d\"\nclasses = 10").replace("3x32x32", "2x32x32"), "images have 1 (grey) or 3 (RGB) channels"),
            ("external with epochs", MINIMAL.replace("epochs = 1", "epochs = 1\nexternal = { checkpoints = \"c\", metrics = \"m.csv\" }"), "`runs.a.epochs`: not used by an `external` run"),
            ("external with a schedule", MINIMAL.replace("epochs = 1", "external = { checkpoints = \"c\", metrics = \"m.csv\" }"), "`runs.a.checkpoints`: not used by an `external` run"),
            ("no epochs", MINIMAL.replace("epochs = 1\n", ""), "`runs.a.epochs`: required (or `external`"),
            ("NaN mean", MINIMAL.replace("shape = \"3x32x32\"", "shape = \"3x32x32\"\nmean = [nan, 0.5, 0.5]"), "datasets.synth.mean"),
            ("infinite std", MINIMAL.replace("shape = \"3x32x32\"", "shape = \"3x32x32\"\nstd = [inf, 0.5, 0.5]"), "datasets.synth.std"),
            ("no seeds", MINIMAL.replace("epochs = 1", "epochs = 1\nseeds = []"), "`runs.a.seeds`: name at least one seed"),
            ("a seed twice", MINIMAL.replace("epochs = 1", "epochs = 1\nseeds = [3, 1, 3]"), "`runs.a.seeds[2]`: seed 3 is listed twice"),
            ("seed and seeds", MINIMAL.replace("epochs = 1", "epochs = 1\nseed = 2\nseeds = [3]"), "give `seed` or `seeds`, not both"),
        ];
        for (name, text, expected) in cases {
            let err = match parse(&text) {
                Ok(_) => panic!("{name}: accepted"),
                Err(e) => e.to_string(),
            };
            assert!(err.contains(expected), "{name}: expected `{expected}` in: {err}");
            assert!(err.starts_with("test.toml"), "{name}: {err}");
        }
    }

    #[test]
    fn selecting_unknown_runs_is_an_error() {
        let p = parse(MINIMAL).unwrap();
        assert_eq!(p.select_runs(&[]).unwrap().len(), 1);
        assert!(p.select_runs(&["b".into()]).unwrap_err().contains("no run `b`"));
        assert_eq!(p.select_methods(&["cam".into()]).unwrap().len(), 1);
    }

    #[test]
    fn seeds_make_one_instance_each_with_the_first_seed_s_subset() {
        let p = parse(&MINIMAL.replace("epochs = 1", "epochs = 1\nseeds = [7, 2]")).unwrap();
        let instances = p.instances(&[]).unwrap();
        let paths: Vec<&str> = instances.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(paths, ["a/seed-2", "a/seed-7"]);
        assert!(instances.iter().all(|i| i.subset_seed == 7 && i.config.seeds.is_none() && i.config.seed == i.seed));
        let single = parse(MINIMAL).unwrap();
        let instance = &single.instances(&[]).unwrap()[0];
        assert_eq!((instance.path.as_str(), instance.replicated, &instance.config), ("a", false, &single.config.runs["a"]));
    }

    #[test]
    fn every_shipped_config_loads() {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut configs = vec![workspace.join("pipeline.toml")];
        for entry in std::fs::read_dir(workspace.join("configs")).expect("configs/") {
            let path = entry.expect("configs/ entry").path();
            if path.extension().is_some_and(|e| e == "toml") {
                configs.push(path);
            }
        }
        assert!(configs.len() > 5, "found {configs:?}");
        for path in configs {
            if let Err(e) = Pipeline::load(&path) {
                panic!("{e}");
            }
        }
    }
}
