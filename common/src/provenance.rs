//! What produced each artifact, as fingerprints (see DESIGN: fingerprints).
//!
//! Each stage derives its outputs' fingerprints from the config sections
//! that matter and from its inputs' stored fingerprints, so a change ripples
//! exactly as far as it must: a method's settings reach only that method's
//! maps, summaries and analysis rows; a run's settings reach everything of
//! that run.

use crate::artifacts::tables::metrics::read_metrics;
use crate::artifacts::{verify_stamp, CheckpointModel, Fingerprinter, RunLayout, Stamp};
use crate::config::{DatasetConfig, MethodConfig, Pipeline, PipelineConfig, RunConfig, RunInstance};
use crate::measures::Measure;

/// Fingerprint of a run instance's training: its data set (for one read
/// from files, its section without the folder and the files' content), its training
/// settings (with its own seed), the probe set (whose loss the trainer
/// records) and, for a replicate, the seed of the training subset it
/// shares with the run's other seeds. `intended_fit` is only a label for
/// reports and is left out, so relabelling retrains nothing. A run without
/// `seeds` has the fingerprint it had before replicates existed. A model of
/// `[models]` adds its layers (a preset's name says them all, so a preset
/// run has the fingerprint it had before models were data).
pub fn run_fingerprint(config: &PipelineConfig, instance: &RunInstance) -> String {
    // A run trained elsewhere enters by the content of its files, not by
    // where they are: moving them imports nothing again.
    let training = RunConfig { intended_fit: None, external: None, ..instance.config.clone() };
    let output = &config.output.dir;
    let mut fingerprint = Fingerprinter::new();
    fingerprint = match config.datasets.get(&training.dataset) {
        // A data set read from files enters by their content, not by where
        // they are: moving the folder retrains nothing.
        Some(dataset) if dataset.path.is_some() => fingerprint
            .add("dataset", &DatasetConfig { path: None, ..dataset.clone() })
            .add("data", &data_content(output, dataset)),
        dataset => fingerprint.add("dataset", &dataset),
    };
    fingerprint = fingerprint.add("run", &training).add("probe", &config.probe);
    if let Some(model) = config.models.get(&training.model) {
        fingerprint = fingerprint.add("model", model);
    }
    if let Some(external) = &instance.config.external {
        fingerprint = fingerprint.add("external", &crate::external::external_content(output, external));
    }
    if instance.replicated {
        fingerprint.add("subset_seed", &instance.subset_seed).finish()
    } else {
        fingerprint.finish()
    }
}

/// The content of a data set's files as its runs' fingerprints take it:
/// each file's name within the data set's folder and its SHA-256 (see
/// `content`), or why the files cannot be listed.
fn data_content(output: &std::path::Path, dataset: &DatasetConfig) -> Vec<(String, String)> {
    let root = dataset.path.as_deref().unwrap_or(std::path::Path::new(""));
    let key = format!("{:?} {}", dataset.kind, root.display());
    match crate::content::remembered_listing(output, &key, || crate::data::dataset_files(dataset)) {
        Ok(files) => {
            let names = files.iter().map(|f| f.strip_prefix(root).unwrap_or(f).display().to_string());
            names.zip(crate::content::file_hashes(output, &files)).collect()
        }
        Err(e) => vec![("unreadable".to_string(), e.problem)],
    }
}

/// A trained run as its metrics table (written last) records it.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainedRun {
    /// The checkpoint steps, ascending.
    pub steps: Vec<u64>,
    /// The table's stamp (with the divergence, if the run stopped early).
    pub stamp: Stamp,
}

/// The steps of `run` as its metrics table lists them, after checking that
/// the table is intact and of the current configuration; otherwise why
/// not, naming the file. Later stages take their units from these steps:
/// a checkpoint file the table does not list belongs to no planned unit.
pub fn trained_run(config: &PipelineConfig, run: &RunInstance, layout: &RunLayout) -> Result<TrainedRun, String> {
    let path = layout.metrics();
    let stamp = verify_stamp(&path).map_err(|e| format!("{e}; run the trainer first"))?;
    if stamp.fingerprint != run_fingerprint(config, run) {
        return Err(format!("{}: written for another configuration of the run; run the trainer first", path.display()));
    }
    let rows = read_metrics(&path).map_err(|e| e.to_string())?;
    Ok(TrainedRun { steps: rows.iter().map(|r| r.step).collect(), stamp })
}

/// The architecture every checkpoint of `run` has: its model on its data
/// set's images.
pub fn checkpoint_model(pipeline: &Pipeline, run: &RunConfig) -> CheckpointModel {
    CheckpointModel { architecture: pipeline.architecture_of(run), input: pipeline.dataset_of(run).shape }
}

/// Fingerprint of the model checkpoint at `step` of a run.
pub fn checkpoint_fingerprint(run_fingerprint: &str, step: u64) -> String {
    Fingerprinter::new().add("run", &run_fingerprint).add("step", &step).finish()
}

/// Fingerprint of one explanation method's settings (SmoothGrad's with
/// the name of its noise stream).
pub fn method_fingerprint(method: &MethodConfig) -> String {
    let fingerprint = Fingerprinter::new().add("method", method);
    match method {
        // SmoothGrad's maps are of its noise too: maps another sampler drew
        // are not up to date.
        MethodConfig::Smoothgrad { .. } => fingerprint.add("noise", &crate::rng::NORMAL_PAIRS).finish(),
        _ => fingerprint.finish(),
    }
}

/// Fingerprint of the maps of one method at one checkpoint.
pub fn attribution_fingerprint(checkpoint_fingerprint: &str, method_fingerprint: &str) -> String {
    Fingerprinter::new().add("checkpoint", &checkpoint_fingerprint).add("method", &method_fingerprint).finish()
}

/// Fingerprint of a summary table from the ordered (step, attribution
/// fingerprint) list of the maps it summarises and the measure names.
pub fn summary_fingerprint(inputs: &[(u64, String)], measures: &[Measure]) -> String {
    let names: Vec<&str> = measures.iter().map(|m| m.name()).collect();
    Fingerprinter::new().add("attributions", &inputs).add("measures", &names).finish()
}

/// The (step, attribution fingerprint) list the current config gives the
/// maps of `method` at the checkpoints `steps` of `run`: what the
/// explainer writes and the summarizer and analyzer expect.
pub fn expected_attributions(
    config: &PipelineConfig,
    run: &RunInstance,
    method: &MethodConfig,
    steps: &[u64],
) -> Vec<(u64, String)> {
    let run = run_fingerprint(config, run);
    let method = method_fingerprint(method);
    steps.iter().map(|&step| (step, attribution_fingerprint(&checkpoint_fingerprint(&run, step), &method))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const CONFIG: &str = r#"
        [datasets.synth]
        kind = "synthetic"
        [runs.a]
        dataset = "synth"
        model = "simple"
        epochs = 1
        intended_fit = "good fit"
        checkpoints = { every = 10 }
        [methods.lrp]
        kind = "lrp"
        [methods.cam]
        kind = "gradcam"
    "#;

    #[test]
    fn labels_do_not_change_fingerprints_but_settings_do() {
        let fingerprints = |text: &str| {
            let p = Pipeline::parse(text, Path::new("t")).unwrap();
            p.instances(&[]).unwrap().into_iter().map(|i| run_fingerprint(&p.config, i)).collect::<Vec<_>>()
        };
        let base = fingerprints(CONFIG);
        assert_eq!(base, fingerprints(&CONFIG.replace("good fit", "overfit")));
        assert_ne!(base, fingerprints(&CONFIG.replace("epochs = 1", "epochs = 2")));
        assert_ne!(checkpoint_fingerprint(&base[0], 0), checkpoint_fingerprint(&base[0], 1));
        let p = Pipeline::parse(CONFIG, Path::new("t")).unwrap();
        assert_ne!(method_fingerprint(&p.config.methods["lrp"]), method_fingerprint(&p.config.methods["cam"]));
        // A model of the config: its layers count; a preset's name alone.
        let custom =
            CONFIG.replace("model = \"simple\"", "model = \"m\"") + "\n[models.m]\nlayers = [\"flatten\", { dense = 10 }]\n";
        let with_custom = fingerprints(&custom);
        assert_ne!(with_custom, base);
        assert_ne!(with_custom, fingerprints(&custom.replace("layers = [\"flatten\"", "layers = [\"relu\", \"flatten\"")));
        // Replicates: one fingerprint per seed, and the subset seed counts.
        let replicated = fingerprints(&CONFIG.replace("epochs = 1", "epochs = 1\nseeds = [1, 2]"));
        assert_eq!(replicated.len(), 2);
        assert_ne!(replicated[0], replicated[1]);
        assert_ne!(replicated[1], fingerprints(&CONFIG.replace("epochs = 1", "epochs = 1\nseeds = [2, 1]"))[1]);
    }

    #[test]
    fn smoothgrads_fingerprint_names_its_noise_stream() {
        let method = MethodConfig::Smoothgrad { samples: 4, noise: 0.1, seed: 0, target: Default::default() };
        let settings_alone = Fingerprinter::new().add("method", &method).finish();
        assert_ne!(method_fingerprint(&method), settings_alone);
        let with_stream = Fingerprinter::new().add("method", &method).add("noise", &crate::rng::NORMAL_PAIRS).finish();
        assert_eq!(method_fingerprint(&method), with_stream);
        let guided = MethodConfig::GuidedBackprop { target: Default::default() };
        assert_eq!(
            method_fingerprint(&guided),
            Fingerprinter::new().add("method", &guided).finish(),
            "other methods keep theirs"
        );
    }
}
