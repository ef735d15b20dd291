//! An explanation method as configured, resolved against a data set (LRP's
//! z^B bounds come from its normalisation), and run on a forward trace.
//!
//! Several methods can explain one trace: the stage runs the forward pass of
//! a checkpoint once and hands the trace to every method.

use common::config::{ExplainedClass, MethodConfig};
use common::data::Normalization;
use engine::{argmax, Model, Trace, TraceKeeps};

use crate::composite::Composite;
use crate::error::ExplainError;
use crate::gradcam::{gradcam, ActivationSite, GradCamSettings};
use crate::gradient::{baseline_values, GradientMethod};
use crate::lrp::{relevance, sum_over_channels};
use crate::occlusion::Occlusion;

/// A method ready to run.
#[derive(Clone, Debug, PartialEq)]
pub enum Method {
    Lrp {
        composite: Composite,
        target: ExplainedClass,
    },
    GradCam {
        settings: GradCamSettings,
        target: ExplainedClass,
    },
    /// A method of the gradient family (`gradient`, `gradient-x-input`,
    /// `integrated-gradients`, `smoothgrad`, `guided-backprop`).
    Gradient {
        method: GradientMethod,
        target: ExplainedClass,
    },
    Occlusion {
        occlusion: Occlusion,
        target: ExplainedClass,
    },
}

/// The maps of a batch and what they explain.
#[derive(Clone, Debug, PartialEq)]
pub struct Explanation {
    pub height: usize,
    pub width: usize,
    /// N·height·width; LRP and gradient maps are summed over the input
    /// channels.
    pub maps: Vec<f32>,
    /// The explained class of each image.
    pub targets: Vec<usize>,
    /// The predicted class (argmax of the logits) of each image.
    pub predictions: Vec<usize>,
    /// The explained logit of each image.
    pub logits: Vec<f32>,
}

impl Method {
    /// Resolves a config entry; `normalization` is that of the data set the
    /// explained images come from.
    pub fn from_config(config: &MethodConfig, normalization: &Normalization) -> Result<Method, ExplainError> {
        Ok(match config {
            MethodConfig::Lrp { composite, target } => {
                Method::Lrp { composite: Composite::resolve(composite, &normalization.bounds())?, target: *target }
            }
            MethodConfig::Gradcam { layer, relu, upsample, target } => Method::GradCam {
                settings: GradCamSettings { layer: layer.clone(), relu: *relu, upsample: *upsample },
                target: *target,
            },
            MethodConfig::Gradient { abs, target } => {
                Method::Gradient { method: GradientMethod::Gradient { abs: *abs }, target: *target }
            }
            MethodConfig::GradientXInput { target } => {
                Method::Gradient { method: GradientMethod::GradientXInput, target: *target }
            }
            MethodConfig::IntegratedGradients { steps, baseline, target } => Method::Gradient {
                method: GradientMethod::integrated_gradients(*steps, *baseline, normalization),
                target: *target,
            },
            MethodConfig::Smoothgrad { samples, noise, seed, target } => {
                Method::Gradient { method: GradientMethod::smoothgrad(*samples, *noise, *seed, normalization), target: *target }
            }
            MethodConfig::GuidedBackprop { target } => {
                Method::Gradient { method: GradientMethod::GuidedBackprop, target: *target }
            }
            MethodConfig::Occlusion { window, stride, baseline, target } => Method::Occlusion {
                occlusion: Occlusion { window: *window, stride: *stride, baseline: baseline_values(*baseline, normalization) },
                target: *target,
            },
        })
    }

    pub fn target(&self) -> ExplainedClass {
        match self {
            Method::Lrp { target, .. }
            | Method::GradCam { target, .. }
            | Method::Gradient { target, .. }
            | Method::Occlusion { target, .. } => *target,
        }
    }

    /// What of the forward pass this method reads (see
    /// `Model::forward_trace_keeping`): LRP every layer's output, Grad-CAM
    /// those from its layer on, the gradient family what the input
    /// gradient reads, occlusion only the logits (which every trace keeps).
    pub fn trace_keeps(&self, model: &Model) -> Result<TraceKeeps, ExplainError> {
        match self {
            Method::Lrp { .. } => Ok(TraceKeeps::LayersFrom(0)),
            Method::Gradient { .. } | Method::Occlusion { .. } => Ok(TraceKeeps::BlockOutputs),
            Method::GradCam { settings, .. } => {
                Ok(TraceKeeps::LayersFrom(ActivationSite::find(model, settings.layer.as_deref())?.activation))
            }
        }
    }

    /// Explains the images of `trace` (a forward trace of `model`); `labels`
    /// are their true classes, used when the method explains the label, and
    /// `probe_ids` their names in the probe set (which seed SmoothGrad's
    /// noise per image).
    pub fn explain(&self, model: &Model, trace: &Trace, labels: &[u8], probe_ids: &[i64]) -> Result<Explanation, ExplainError> {
        let classes = model.classes;
        let logits = trace.logits();
        if logits.len() != trace.batch * classes || labels.len() != trace.batch {
            return Err(ExplainError::Shape(format!(
                "{} logits and {} labels for a batch of {} images of {classes} classes",
                logits.len(),
                labels.len(),
                trace.batch
            )));
        }
        let predictions: Vec<usize> = logits.chunks_exact(classes).map(argmax).collect();
        let targets: Vec<usize> = match self.target() {
            ExplainedClass::Predicted => predictions.clone(),
            ExplainedClass::Label => {
                let targets: Vec<usize> = labels.iter().map(|&l| l as usize).collect();
                if let Some((image, &label)) = targets.iter().enumerate().find(|(_, &l)| l >= classes) {
                    return Err(ExplainError::LabelOutOfRange { image, label, classes });
                }
                targets
            }
        };
        let explained: Vec<f32> = targets.iter().enumerate().map(|(i, &t)| logits[i * classes + t]).collect();
        let (height, width, maps) = match self {
            Method::Lrp { composite, .. } => {
                let input = model.input;
                let r = relevance(model, trace, composite, &targets)?;
                (input.height, input.width, sum_over_channels(&r, input.channels, input.height * input.width))
            }
            Method::GradCam { settings, .. } => {
                let cam = gradcam(model, trace, &targets, settings)?;
                (cam.height, cam.width, cam.maps)
            }
            Method::Gradient { method, .. } => {
                (model.input.height, model.input.width, method.maps(model, trace, &targets, probe_ids)?)
            }
            Method::Occlusion { occlusion, .. } => {
                (model.input.height, model.input.width, occlusion.maps(model, &trace.input, logits, &targets)?)
            }
        };
        Ok(Explanation { height, width, maps, targets, predictions, logits: explained })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::random;
    use common::architecture::ModelKind;
    use common::config::{Baseline, CompositeSpec, NamedComposite};
    use common::image::ImageShape;

    fn methods(channels: usize) -> Vec<Method> {
        let normalization = Normalization { mean: vec![0.5; channels], std: vec![0.5; channels] };
        let configs = [
            MethodConfig::Lrp { composite: CompositeSpec::Named(NamedComposite::Paper), target: ExplainedClass::Predicted },
            MethodConfig::Lrp { composite: CompositeSpec::Named(NamedComposite::EpsilonGammaBox), target: ExplainedClass::Label },
            MethodConfig::Gradcam { layer: None, relu: false, upsample: false, target: ExplainedClass::Predicted },
            MethodConfig::Gradcam {
                layer: Some("features_conv.2".into()),
                relu: true,
                upsample: true,
                target: ExplainedClass::Label,
            },
            MethodConfig::Gradient { abs: true, target: ExplainedClass::Predicted },
            MethodConfig::GradientXInput { target: ExplainedClass::Label },
            MethodConfig::IntegratedGradients { steps: 5, baseline: Baseline::Black, target: ExplainedClass::Predicted },
            MethodConfig::Smoothgrad { samples: 3, noise: 0.1, seed: 7, target: ExplainedClass::Predicted },
            MethodConfig::GuidedBackprop { target: ExplainedClass::Predicted },
            MethodConfig::Occlusion { window: 3, stride: 2, baseline: Baseline::Zero, target: ExplainedClass::Label },
        ];
        configs.iter().map(|c| Method::from_config(c, &normalization).unwrap()).collect()
    }

    /// Every image is computed on its own: its map does not depend on which
    /// other images share the batch.
    #[test]
    fn a_map_is_the_same_alone_or_in_a_batch() {
        let shape = ImageShape { channels: 3, height: 8, width: 8 };
        let model = Model::initialized(&ModelKind::Complex.architecture(10), shape, 2).unwrap();
        let x = random(5 * shape.len(), 3, -1.0, 1.0);
        let labels = [3u8, 1, 4, 1, 5];
        let batch = model.forward_trace(&x).unwrap();
        let alone = model.forward_trace(&x[2 * shape.len()..3 * shape.len()]).unwrap();
        let ids = [10, 11, 12, 13, 14];
        for method in methods(3) {
            let all = method.explain(&model, &batch, &labels, &ids).unwrap();
            let one = method.explain(&model, &alone, &labels[2..3], &ids[2..3]).unwrap();
            let plane = all.height * all.width;
            assert_eq!(&all.maps[2 * plane..3 * plane], &one.maps[..], "{method:?}");
            assert_eq!((all.targets[2], all.predictions[2], all.logits[2]), (one.targets[0], one.predictions[0], one.logits[0]));
        }
    }

    #[test]
    fn explanations_report_targets_predictions_and_logits() {
        const IDS: [i64; 3] = [0, 1, 2];
        let shape = ImageShape { channels: 1, height: 8, width: 8 };
        let model = Model::initialized(&ModelKind::Simple.architecture(10), shape, 4).unwrap();
        let x = random(3 * shape.len(), 5, -1.0, 1.0);
        let labels = [7u8, 0, 2];
        let trace = model.forward_trace(&x).unwrap();
        let all = methods(1);
        let predicted = all[0].explain(&model, &trace, &labels, &IDS).unwrap();
        assert_eq!((predicted.height, predicted.width, predicted.maps.len()), (8, 8, 192));
        assert_eq!(predicted.targets, predicted.predictions);
        let by_label = all[1].explain(&model, &trace, &labels, &IDS).unwrap();
        assert_eq!(by_label.targets, vec![7, 0, 2]);
        for (i, &t) in by_label.targets.iter().enumerate() {
            assert_eq!(by_label.logits[i], trace.logits()[i * 10 + t]);
        }
        let cam = all[2].explain(&model, &trace, &labels, &IDS).unwrap();
        assert_eq!((cam.height, cam.width), (4, 4));
        let err = all[3].explain(&model, &trace, &labels, &IDS).unwrap_err().to_string();
        assert!(err.contains("features_conv.2") && err.contains("features_conv.3"), "{err}");
        assert!(matches!(all[1].explain(&model, &trace, &[1, 2, 10], &IDS), Err(ExplainError::LabelOutOfRange { image: 2, .. })));
    }

    /// Each method explains from the trace it asks for (`trace_keeps`) the
    /// same bits as from a full trace, on both presets and a custom model,
    /// and a method whose needs a trace does not cover says so instead of
    /// explaining.
    #[test]
    fn each_method_explains_the_same_from_the_trace_it_asks_for() {
        use common::architecture::{Architecture, LayerKind::*};
        let shape = ImageShape { channels: 3, height: 8, width: 8 };
        let labels = [3u8, 1, 4];
        let ids = [10, 11, 12];
        let conv = |channels, stride| Conv { channels, kernel: 3, padding: 1, stride };
        // A strided conv's ReLU and pool (which the pool's winners do not
        // serve), a pool without a ReLU, a ReLU after a dense layer.
        let custom = Architecture::new(
            "custom",
            vec![conv(8, 2), Relu, MaxPool, conv(6, 1), MaxPool, Flatten, Dense { outputs: 12 }, Relu, Dense { outputs: 10 }],
        );
        for architecture in [ModelKind::Simple.architecture(10), ModelKind::Complex.architecture(10), custom] {
            let (name, model) = (architecture.name.clone(), Model::initialized(&architecture, shape, 2).unwrap());
            let x = random(3 * shape.len(), 3, -1.0, 1.0);
            let full = model.forward_trace(&x).unwrap();
            let lean = model.forward_trace_keeping(&x, TraceKeeps::BlockOutputs).unwrap();
            for method in methods(3) {
                let Ok(keeps) = method.trace_keeps(&model) else {
                    continue; // A Grad-CAM layer this model lacks.
                };
                let asked = model.forward_trace_keeping(&x, keeps).unwrap();
                let want = method.explain(&model, &full, &labels, &ids).unwrap();
                let got = method.explain(&model, &asked, &labels, &ids).unwrap();
                let bits = |maps: &[f32]| maps.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got.maps), bits(&want.maps), "{name}, {method:?}");
                assert_eq!((got.targets, got.logits), (want.targets, want.logits), "{name}, {method:?}");
                if keeps != TraceKeeps::BlockOutputs {
                    let err = method.explain(&model, &lean, &labels, &ids).unwrap_err().to_string();
                    assert!(err.contains("needs"), "{name}, {method:?}: {err}");
                }
            }
        }
    }
}
