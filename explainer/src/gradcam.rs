//! Grad-CAM (Selvaraju et al.) on a conv layer's activations.
//!
//! For the explained class `c` of each image and the activations `A` of the
//! chosen conv layer (after its ReLU, when one follows), the channel weights
//! are `α_k = mean over positions of ∂y_c/∂A_k` and the map is
//! `Σ_k α_k A_k`. Every image uses the gradient of its own logit (the
//! paper's reference code averaged gradients over the batch; DESIGN says not
//! to). The gradient only needs the layers after `A`, so only those are
//! back-propagated.

use engine::{ActivationShape, Layer, Model, Trace, TraceKeeps};
use rayon::prelude::*;

use crate::error::ExplainError;
use crate::gradient::{backpropagate, logit_seed, ReluBackward};
use crate::lrp::check_trace;

/// Grad-CAM's settings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GradCamSettings {
    /// Name of the conv layer (e.g. `features_conv.3`); `None`: the last.
    pub layer: Option<String>,
    /// Keep only the positive part of the map.
    pub relu: bool,
    /// Resize the map to the input's height and width (bilinear,
    /// `align_corners = false`, like PyTorch's `F.interpolate`).
    pub upsample: bool,
}

/// Grad-CAM maps of a batch: `maps` is N·height·width.
#[derive(Clone, Debug, PartialEq)]
pub struct GradCamMaps {
    pub height: usize,
    pub width: usize,
    pub maps: Vec<f32>,
}

/// Where Grad-CAM reads its activations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ActivationSite {
    /// Index of the layer named (a conv, or a ReLU before the flatten).
    pub conv: usize,
    /// Index of the layer whose output is `A`: the ReLU right after the conv
    /// when there is one, else the conv itself.
    pub activation: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl ActivationSite {
    /// The site of the layer called `name` (a convolution, read after the
    /// ReLU right after it where there is one, or a ReLU before the
    /// flatten), or of the last conv layer.
    pub fn find(model: &Model, name: Option<&str>) -> Result<ActivationSite, ExplainError> {
        let readable = model.architecture.gradcam_layers();
        let index_of = |wanted: &str| model.architecture.layers.iter().position(|l| l.name.as_deref() == Some(wanted));
        let conv = match name {
            None => model.layers.iter().rposition(|l| matches!(l, Layer::Conv(_))),
            Some(name) if readable.contains(&name) => index_of(name),
            Some(name) => {
                return Err(ExplainError::UnknownLayer { name: name.to_string(), known: readable.join(", ") });
            }
        }
        .ok_or(ExplainError::MissingLayer("conv layer for Grad-CAM"))?;
        let follows_conv =
            matches!(model.layers[conv], Layer::Conv(_)) && matches!(model.layers.get(conv + 1), Some(Layer::Relu));
        let activation = if follows_conv { conv + 1 } else { conv };
        let ActivationShape::Planes { channels, height, width } = model.activation_shapes()[activation] else {
            return Err(ExplainError::Shape(format!("layer {activation} of the model is not a stack of planes")));
        };
        Ok(ActivationSite { conv, activation, channels, height, width })
    }
}

/// Grad-CAM maps for the classes `targets` (one per image of the trace).
pub fn gradcam(model: &Model, trace: &Trace, targets: &[usize], settings: &GradCamSettings) -> Result<GradCamMaps, ExplainError> {
    let site = ActivationSite::find(model, settings.layer.as_deref())?;
    check_trace(model, trace, TraceKeeps::LayersFrom(site.activation))?;
    let alphas = channel_weights(model, trace, targets, &site)?;
    let activations = &trace.outputs[site.activation];
    let plane = site.height * site.width;
    let image_len = site.channels * plane;
    let mut maps = vec![0.0f32; trace.batch * plane];
    maps.par_chunks_mut(plane).zip(activations.par_chunks(image_len).zip(alphas.par_chunks(site.channels))).for_each(
        |(map, (image, alphas))| {
            for (channel, &alpha) in image.chunks_exact(plane).zip(alphas) {
                map.iter_mut().zip(channel).for_each(|(m, &a)| *m += alpha * a);
            }
        },
    );
    if settings.relu {
        maps.iter_mut().for_each(|v| *v = v.max(0.0));
    }
    let (height, width) = (site.height, site.width);
    if settings.upsample && (height, width) != (model.input.height, model.input.width) {
        let (out_h, out_w) = (model.input.height, model.input.width);
        let maps = maps.par_chunks(plane).flat_map_iter(|map| upsample_bilinear(map, height, width, out_h, out_w)).collect();
        return Ok(GradCamMaps { height: out_h, width: out_w, maps });
    }
    Ok(GradCamMaps { height, width, maps })
}

/// `α` (N·K): per image and channel of the site's activations, the spatial
/// mean of the gradient of that image's explained logit.
pub fn channel_weights(model: &Model, trace: &Trace, targets: &[usize], site: &ActivationSite) -> Result<Vec<f32>, ExplainError> {
    let seed = logit_seed(targets, trace.batch, model.classes)?;
    let gradient = gradient_at(model, trace, site.activation, seed)?;
    let plane = site.height * site.width;
    Ok(gradient.chunks_exact(plane).map(|g| g.iter().sum::<f32>() / plane as f32).collect())
}

/// Back-propagates `output_gradient` (the gradient at the logits) to the
/// output of layer `layer`, through the layers after it only.
pub fn gradient_at(model: &Model, trace: &Trace, layer: usize, output_gradient: Vec<f32>) -> Result<Vec<f32>, ExplainError> {
    backpropagate(model, trace, layer + 1, output_gradient, ReluBackward::Gradient)
}

/// Resizes one `in_h x in_w` map to `out_h x out_w` by bilinear
/// interpolation with `align_corners = false` (PyTorch's `F.interpolate(...,
/// mode="bilinear")`): output pixel centres are mapped onto the input grid,
/// source coordinates below zero clamp to zero and the right/bottom
/// neighbour clamps to the last row/column.
pub fn upsample_bilinear(map: &[f32], in_h: usize, in_w: usize, out_h: usize, out_w: usize) -> Vec<f32> {
    let taps = |out: usize, input: usize| -> Vec<(usize, usize, f32)> {
        let scale = input as f32 / out as f32;
        (0..out)
            .map(|o| {
                let source = (scale * (o as f32 + 0.5) - 0.5).max(0.0);
                let low = (source as usize).min(input - 1);
                let high = if low + 1 < input { low + 1 } else { low };
                (low, high, source - low as f32)
            })
            .collect()
    };
    let (rows, cols) = (taps(out_h, in_h), taps(out_w, in_w));
    let mut out = Vec::with_capacity(out_h * out_w);
    for &(y0, y1, ly) in &rows {
        for &(x0, x1, lx) in &cols {
            let at = |y: usize, x: usize| map[y * in_w + x];
            let top = (1.0 - lx) * at(y0, x0) + lx * at(y0, x1);
            let bottom = (1.0 - lx) * at(y1, x0) + lx * at(y1, x1);
            out.push((1.0 - ly) * top + ly * bottom);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{assert_close, forward_from, random, tiny_model};
    use common::architecture::ModelKind;
    use common::image::ImageShape;
    use engine::argmax;

    /// α_k is the mean over positions of ∂y_c/∂A_k, i.e. the derivative of
    /// y_c along "add t to every position of channel k", divided by the
    /// number of positions: compare with central differences of the
    /// network's tail run on perturbed activations.
    fn check_alphas_against_finite_differences(model: &Model, layer: Option<&str>, images: usize, seed: u64) {
        let x = random(images * model.input.len(), seed, -1.0, 1.0);
        let trace = model.forward_trace(&x).unwrap();
        let targets: Vec<usize> = trace.logits().chunks(model.classes).map(argmax).collect();
        let site = ActivationSite::find(model, layer).unwrap();
        let alphas = channel_weights(model, &trace, &targets, &site).unwrap();
        let activations = &trace.outputs[site.activation];
        let plane = site.height * site.width;
        let image_len = site.channels * plane;
        let h = 1e-2f32;
        for image in 0..images {
            let a = &activations[image * image_len..(image + 1) * image_len];
            let logit = |a: &[f32]| forward_from(model, site.activation + 1, a)[targets[image]];
            for k in 0..site.channels {
                let shifted = |delta: f32| {
                    let mut a = a.to_vec();
                    a[k * plane..(k + 1) * plane].iter_mut().for_each(|v| *v += delta);
                    a
                };
                let numeric = (logit(&shifted(h)) - logit(&shifted(-h))) / (2.0 * h * plane as f32);
                let analytic = alphas[image * site.channels + k];
                assert!(
                    (numeric - analytic).abs() < 1e-3 + 2e-2 * analytic.abs(),
                    "image {image}, channel {k}: {numeric} vs {analytic}"
                );
            }
        }
    }

    #[test]
    fn alphas_match_finite_differences() {
        let simple =
            Model::initialized(&ModelKind::Simple.architecture(10), ImageShape { channels: 1, height: 12, width: 12 }, 3)
                .unwrap();
        check_alphas_against_finite_differences(&simple, None, 3, 4);
        check_alphas_against_finite_differences(&simple, Some("features_conv.0"), 2, 5);
        let complex =
            Model::initialized(&ModelKind::Complex.architecture(10), ImageShape { channels: 2, height: 8, width: 8 }, 6).unwrap();
        check_alphas_against_finite_differences(&complex, Some("features_conv.7"), 2, 7);
        check_alphas_against_finite_differences(&tiny_model(8, true), None, 2, 9);
    }

    #[test]
    fn the_default_layer_is_the_last_conv_after_its_relu() {
        let model = Model::zeros(&ModelKind::Simple.architecture(10), ImageShape::GRAY_28).unwrap();
        let site = ActivationSite::find(&model, None).unwrap();
        assert_eq!(site, ActivationSite { conv: 3, activation: 4, channels: 32, height: 14, width: 14 });
        let complex = Model::zeros(&ModelKind::Complex.architecture(10), ImageShape::RGB_32).unwrap();
        let site = ActivationSite::find(&complex, None).unwrap();
        assert_eq!((site.conv, site.activation, site.channels, site.height), (12, 13, 128, 8));
        let err = ActivationSite::find(&model, Some("fc1")).unwrap_err().to_string();
        assert!(
            err.contains("`fc1`") && err.contains("features_conv.0, features_conv.1, features_conv.3, features_conv.4"),
            "{err}"
        );
        let relu = ActivationSite::find(&model, Some("features_conv.4")).unwrap();
        assert_eq!((relu.conv, relu.activation), (4, 4), "a ReLU is read where it is");
        let conv = ActivationSite::find(&model, Some("features_conv.3")).unwrap();
        assert_eq!((conv.activation, conv.channels), (4, 32), "a conv is read after its ReLU");
    }

    /// The map is Σ_k α_k A_k with each image's own α (not batch-averaged);
    /// ReLU and upsampling apply on top.
    #[test]
    fn maps_combine_activations_with_per_image_weights() {
        let model =
            Model::initialized(&ModelKind::Simple.architecture(10), ImageShape { channels: 1, height: 8, width: 8 }, 12).unwrap();
        let x = random(3 * 64, 13, -1.0, 1.0);
        let trace = model.forward_trace(&x).unwrap();
        let targets = vec![0, 5, 9];
        let plain = gradcam(&model, &trace, &targets, &GradCamSettings::default()).unwrap();
        assert_eq!((plain.height, plain.width, plain.maps.len()), (4, 4, 48));
        let site = ActivationSite::find(&model, None).unwrap();
        let alphas = channel_weights(&model, &trace, &targets, &site).unwrap();
        let a = &trace.outputs[site.activation];
        for n in 0..3 {
            for p in 0..16 {
                let expected: f32 = (0..32).map(|k| alphas[n * 32 + k] * a[n * 512 + k * 16 + p]).sum();
                assert!((plain.maps[n * 16 + p] - expected).abs() < 1e-5);
            }
        }
        let relu = gradcam(&model, &trace, &targets, &GradCamSettings { relu: true, ..Default::default() }).unwrap();
        let clipped: Vec<f32> = plain.maps.iter().map(|v| v.max(0.0)).collect();
        assert_eq!(relu.maps, clipped);
        let up = gradcam(&model, &trace, &targets, &GradCamSettings { upsample: true, ..Default::default() }).unwrap();
        assert_eq!((up.height, up.width, up.maps.len()), (8, 8, 192));
        assert_close(&up.maps[64..128], &upsample_bilinear(&plain.maps[16..32], 4, 4, 8, 8), 0.0, "upsampled image 1");
        assert!(matches!(
            gradcam(&model, &trace, &[0, 1, 10], &GradCamSettings::default()),
            Err(ExplainError::LabelOutOfRange { .. })
        ));
    }

    /// [[1, 2], [3, 4]] to 4x4 with align_corners = false: source
    /// coordinates -0.25 (clamped to 0), 0.25, 0.75, 1.25 (right neighbour
    /// clamped), so each row is [a, 0.75a + 0.25b, 0.25a + 0.75b, b].
    #[test]
    fn bilinear_upsampling_by_hand() {
        let up = upsample_bilinear(&[1.0, 2.0, 3.0, 4.0], 2, 2, 4, 4);
        #[rustfmt::skip]
        let expected = [
            1.0, 1.25, 1.75, 2.0,
            1.5, 1.75, 2.25, 2.5,
            2.5, 2.75, 3.25, 3.5,
            3.0, 3.25, 3.75, 4.0,
        ];
        assert_close(&up, &expected, 1e-6, "2x2 -> 4x4");
        // 1x3 -> 1x2: scale 1.5, sources 0.25 and 1.75.
        assert_close(&upsample_bilinear(&[0.0, 4.0, 8.0], 1, 3, 1, 2), &[1.0, 7.0], 1e-6, "1x3 -> 1x2");
        let same = [1.0, -2.0, 3.5, 0.0, 7.0, 1.0];
        assert_eq!(upsample_bilinear(&same, 2, 3, 2, 3), same.to_vec());
    }
}
