//! What produced each artifact, as fingerprints (see DESIGN: fingerprints).
//!
//! Each stage derives its outputs' fingerprints from the config sections
//! that matter and from its inputs' stored fingerprints, so a change ripples
//! exactly as far as it must: a method's settings reach only that method's
//! maps, summaries and analysis rows; a run's settings reach everything of
//! that run.

use crate::artifacts::Fingerprinter;
use crate::config::{MethodConfig, PipelineConfig, RunConfig};

/// Fingerprint of a run's training: its data set, its training settings and
/// the probe set (whose loss the trainer records). `intended_fit` is only a
/// label for reports and is left out, so relabelling retrains nothing.
pub fn run_fingerprint(config: &PipelineConfig, run: &RunConfig) -> String {
    let training = RunConfig { intended_fit: None, ..run.clone() };
    Fingerprinter::new()
        .add("dataset", &config.datasets.get(&run.dataset))
        .add("run", &training)
        .add("probe", &config.probe)
        .finish()
}

/// Fingerprint of the model checkpoint at `step` of a run.
pub fn checkpoint_fingerprint(run_fingerprint: &str, step: u64) -> String {
    Fingerprinter::new().add("run", &run_fingerprint).add("step", &step).finish()
}

/// Fingerprint of one explanation method's settings.
pub fn method_fingerprint(method: &MethodConfig) -> String {
    Fingerprinter::new().add("method", method).finish()
}

/// Fingerprint of the maps of one method at one checkpoint.
pub fn attribution_fingerprint(checkpoint_fingerprint: &str, method_fingerprint: &str) -> String {
    Fingerprinter::new().add("checkpoint", &checkpoint_fingerprint).add("method", &method_fingerprint).finish()
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
        let base = PipelineConfig::parse(CONFIG, Path::new("t")).unwrap();
        let relabelled = PipelineConfig::parse(&CONFIG.replace("good fit", "overfit"), Path::new("t")).unwrap();
        let longer = PipelineConfig::parse(&CONFIG.replace("epochs = 1", "epochs = 2"), Path::new("t")).unwrap();
        let fp = |c: &PipelineConfig| run_fingerprint(c, &c.runs["a"]);
        assert_eq!(fp(&base), fp(&relabelled));
        assert_ne!(fp(&base), fp(&longer));
        assert_ne!(checkpoint_fingerprint(&fp(&base), 0), checkpoint_fingerprint(&fp(&base), 1));
        assert_ne!(method_fingerprint(&base.methods["lrp"]), method_fingerprint(&base.methods["cam"]));
    }
}
