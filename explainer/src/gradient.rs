//! The gradient family: plain gradients (Simonyan et al., 2014), input
//! times gradient (Shrikumar et al., 2016), integrated gradients
//! (Sundararajan et al., 2017), SmoothGrad (Smilkov et al., 2017) and
//! guided backpropagation (Springenberg et al., 2015).
//!
//! Every map is the attribution to each input value summed over the input
//! channels (LRP's maps are too), so a map is `height x width` whatever the
//! input's channels. Each image's map is the gradient of its own explained
//! logit, and every image is computed on its own: a map does not depend on
//! the batch or the shard it is computed in. SmoothGrad's noise is drawn
//! per probe image (from the method's seed and the image's `probe_id`) for
//! the same reason.

use common::config::Baseline;
use common::image::Normalization;
use common::rng::Rng;
pub use engine::ReluBackward;
use engine::{Model, Trace, TraceKeeps};
use rayon::prelude::*;

use crate::error::ExplainError;
use crate::lrp::check_trace;

/// Inputs run forward and back in one pass by the methods that explain
/// many perturbed copies of each image (integrated gradients, SmoothGrad):
/// whole images' copies at a time, about this many, to bound the memory of
/// a pass's trace.
const INPUTS_PER_PASS: usize = 256;

/// A gradient-family method, resolved against the data set's normalisation.
#[derive(Clone, Debug, PartialEq)]
pub enum GradientMethod {
    Gradient { abs: bool },
    GradientXInput,
    IntegratedGradients { steps: usize, baseline: Vec<f32> },
    SmoothGrad { samples: usize, sigma: f32, seed: u64 },
    GuidedBackprop,
}

impl GradientMethod {
    /// Integrated gradients from `baseline` (per channel of the normalised
    /// input, see [`baseline_values`]).
    pub fn integrated_gradients(steps: usize, baseline: Baseline, normalization: &Normalization) -> Self {
        GradientMethod::IntegratedGradients { steps, baseline: baseline_values(baseline, normalization) }
    }

    /// SmoothGrad with noise of standard deviation `noise` times the
    /// normalised input range (from the lowest channel's 0 pixel to the
    /// highest channel's 1 pixel).
    pub fn smoothgrad(samples: usize, noise: f64, seed: u64, normalization: &Normalization) -> Self {
        let bounds = normalization.bounds();
        let low = bounds.iter().map(|b| b.0).fold(f32::INFINITY, f32::min);
        let high = bounds.iter().map(|b| b.1).fold(f32::NEG_INFINITY, f32::max);
        GradientMethod::SmoothGrad { samples, sigma: (noise * (high - low) as f64) as f32, seed }
    }

    /// The maps (N·H·W) of the images of `trace` (a trace of `model` that
    /// keeps at least its block outputs, see `engine::TraceKeeps`) for
    /// `targets`; `probe_ids` name the images (SmoothGrad's noise).
    pub fn maps(&self, model: &Model, trace: &Trace, targets: &[usize], probe_ids: &[i64]) -> Result<Vec<f32>, ExplainError> {
        check_trace(model, trace, TraceKeeps::BlockOutputs)?;
        if probe_ids.len() != trace.batch {
            return Err(ExplainError::Shape(format!("{} probe id(s) for a batch of {} images", probe_ids.len(), trace.batch)));
        }
        let x = &trace.input;
        let attributions = match self {
            GradientMethod::Gradient { abs } => {
                let mut g = input_gradient(model, trace, targets, ReluBackward::Gradient)?;
                if *abs {
                    g.iter_mut().for_each(|v| *v = v.abs());
                }
                g
            }
            GradientMethod::GuidedBackprop => input_gradient(model, trace, targets, ReluBackward::Guided)?,
            GradientMethod::GradientXInput => {
                let mut g = input_gradient(model, trace, targets, ReluBackward::Gradient)?;
                g.iter_mut().zip(x).for_each(|(g, x)| *g *= x);
                g
            }
            GradientMethod::IntegratedGradients { steps, baseline } => integrated_gradients(model, x, targets, *steps, baseline)?,
            GradientMethod::SmoothGrad { samples, sigma, seed } => {
                smoothgrad(model, x, targets, probe_ids, (*samples, *sigma, *seed))?
            }
        };
        let input = model.input;
        Ok(sum_over_channels(&attributions, input.channels, input.height * input.width))
    }
}

/// The baseline of integrated gradients per input channel: 0 (`zero`), the
/// normalised 0 pixel (`black`), or the one value given.
pub fn baseline_values(baseline: Baseline, normalization: &Normalization) -> Vec<f32> {
    match baseline {
        Baseline::Zero => vec![0.0; normalization.mean.len()],
        Baseline::Black => normalization.bounds().iter().map(|b| b.0).collect(),
        Baseline::Value(v) => vec![v; normalization.mean.len()],
    }
}

/// Sums `values` (N·C·plane, in that order) over the channels.
fn sum_over_channels(values: &[f32], channels: usize, plane: usize) -> Vec<f32> {
    values
        .chunks_exact(channels * plane)
        .flat_map(|image| (0..plane).map(move |p| (0..channels).map(|c| image[c * plane + p]).sum::<f32>()))
        .collect()
}

/// The gradient at the logits that picks each image's explained logit.
pub fn logit_seed(targets: &[usize], batch: usize, classes: usize) -> Result<Vec<f32>, ExplainError> {
    if targets.len() != batch {
        return Err(ExplainError::Shape(format!("{} target(s) for a batch of {batch} images", targets.len())));
    }
    let mut seed = vec![0.0f32; batch * classes];
    for (image, &target) in targets.iter().enumerate() {
        if target >= classes {
            return Err(ExplainError::LabelOutOfRange { image, label: target, classes });
        }
        seed[image * classes + target] = 1.0;
    }
    Ok(seed)
}

/// The gradient of each image's explained logit with respect to its input
/// (N·C·H·W).
pub fn input_gradient(model: &Model, trace: &Trace, targets: &[usize], relu: ReluBackward) -> Result<Vec<f32>, ExplainError> {
    let seed = logit_seed(targets, trace.batch, model.classes)?;
    backpropagate(model, trace, 0, seed, relu)
}

/// Back-propagates `gradient` (at the logits) to the input of layer
/// `first`, through that layer and those after it (see
/// `engine::Model::backpropagate`): the ReLU and max-pool derivatives come
/// from the trace. Through a `conv -> relu -> max_pool` block the gradient
/// goes from the pool's output to the conv's input in one step, from the
/// pool's winners alone (see [`engine::pooled`]): the ReLU passes a
/// window's gradient where the window's output is positive.
pub fn backpropagate(
    model: &Model,
    trace: &Trace,
    first: usize,
    gradient: Vec<f32>,
    relu: ReluBackward,
) -> Result<Vec<f32>, ExplainError> {
    model.backpropagate(trace, first, gradient, relu).map_err(|e| ExplainError::Shape(e.to_string()))
}

/// Gauss-Legendre nodes and weights on [0, 1] (Captum's default
/// quadrature for integrated gradients): the roots of the Legendre
/// polynomial `P_n` by Newton's method from Chebyshev-like starting points,
/// mapped from [-1, 1], in increasing order.
pub fn gauss_legendre(n: usize) -> Vec<(f64, f64)> {
    assert!(n >= 1, "Gauss-Legendre quadrature needs at least one node");
    let mut nodes = Vec::with_capacity(n);
    for i in 0..n {
        // Root i of P_n, counted from the top.
        let mut x = (std::f64::consts::PI * (i as f64 + 0.75) / (n as f64 + 0.5)).cos();
        let mut derivative = 1.0;
        for _ in 0..100 {
            // P_n(x) (`p`) and P_{n-1}(x) (`below`) by Bonnet's recurrence.
            let (mut below, mut p) = (1.0, x);
            for k in 2..=n {
                let k = k as f64;
                (below, p) = (p, ((2.0 * k - 1.0) * x * p - (k - 1.0) * below) / k);
            }
            derivative = n as f64 * (x * p - below) / (x * x - 1.0);
            let step = p / derivative;
            x -= step;
            if step.abs() < 1e-15 {
                break;
            }
        }
        let weight = 2.0 / ((1.0 - x * x) * derivative * derivative);
        nodes.push((0.5 * (x + 1.0), 0.5 * weight));
    }
    nodes.reverse();
    nodes
}

/// `(x - x') · Σ_k w_k ∇f(x' + α_k (x - x'))` per input value, for
/// Gauss-Legendre nodes `α_k` and weights `w_k`, of each image's explained
/// logit.
fn integrated_gradients(
    model: &Model,
    x: &[f32],
    targets: &[usize],
    steps: usize,
    baseline: &[f32],
) -> Result<Vec<f32>, ExplainError> {
    let image_len = model.input.len();
    let plane = model.input.height * model.input.width;
    let nodes = gauss_legendre(steps);
    let path = |image: &[f32], inputs: &mut [f32]| {
        for (&(alpha, _), copy) in nodes.iter().zip(inputs.chunks_exact_mut(image_len)) {
            let alpha = alpha as f32;
            for ((c, v), &b) in copy.chunks_exact_mut(plane).zip(image.chunks_exact(plane)).zip(baseline) {
                c.iter_mut().zip(v).for_each(|(c, &v)| *c = b + alpha * (v - b));
            }
        }
    };
    let integrate = |image: usize, gradients: &[f32], out: &mut [f32]| {
        for (&(_, weight), gradient) in nodes.iter().zip(gradients.chunks_exact(image_len)) {
            out.iter_mut().zip(gradient).for_each(|(o, g)| *o += weight as f32 * g);
        }
        let original = &x[image * image_len..][..image_len];
        out.iter_mut().zip(original).enumerate().for_each(|(i, (o, &v))| *o *= v - baseline[i / plane]);
    };
    gradients_of_copies(model, x, targets, steps, |_, image, inputs| path(image, inputs), integrate)
}

/// The mean gradient of each image's explained logit over `samples` copies
/// of it with Gaussian noise of standard deviation `sigma`, drawn from
/// `seed` and the image's probe id.
fn smoothgrad(
    model: &Model,
    x: &[f32],
    targets: &[usize],
    probe_ids: &[i64],
    (samples, sigma, seed): (usize, f32, u64),
) -> Result<Vec<f32>, ExplainError> {
    let noisy = |image: usize, pixels: &[f32], inputs: &mut [f32]| {
        // The image's copies' noise, in copy order, then the pixels.
        Rng::for_purpose(seed, &format!("smoothgrad-probe-{}", probe_ids[image])).fill_normal(inputs);
        for copy in inputs.chunks_exact_mut(pixels.len()) {
            copy.iter_mut().zip(pixels).for_each(|(c, &v)| *c = v + sigma * *c);
        }
    };
    let image_len = model.input.len();
    let mean = |_: usize, gradients: &[f32], out: &mut [f32]| {
        for gradient in gradients.chunks_exact(image_len) {
            out.iter_mut().zip(gradient).for_each(|(o, g)| *o += g);
        }
        out.iter_mut().for_each(|o| *o /= samples as f32);
    };
    gradients_of_copies(model, x, targets, samples, noisy, mean)
}

/// What integrated gradients and SmoothGrad share: `copies` perturbed
/// copies of each image of `x` (`perturb(image, pixels, inputs)` writes
/// those of image `image`, on the image's own thread: SmoothGrad's noise
/// drawn on one thread took about a tenth of its time) run forward and
/// back for the image's target, whole images' copies at a time (about
/// [`INPUTS_PER_PASS`] inputs per pass), and `reduce(image, gradients,
/// out)` turning an image's copies' gradients into its attributions
/// (`out` starts at 0).
fn gradients_of_copies(
    model: &Model,
    x: &[f32],
    targets: &[usize],
    copies: usize,
    perturb: impl Fn(usize, &[f32], &mut [f32]) + Sync,
    reduce: impl Fn(usize, &[f32], &mut [f32]) + Sync,
) -> Result<Vec<f32>, ExplainError> {
    let image_len = model.input.len();
    let mut attributions = vec![0.0f32; x.len()];
    let per_pass = (INPUTS_PER_PASS / copies).max(1);
    for (chunk, images) in x.chunks(per_pass * image_len).enumerate() {
        let (first, count) = (chunk * per_pass, images.len() / image_len);
        let mut inputs = vec![0.0f32; count * copies * image_len];
        inputs
            .par_chunks_mut(copies * image_len)
            .zip(images.par_chunks_exact(image_len))
            .enumerate()
            .for_each(|(i, (inputs, pixels))| perturb(first + i, pixels, inputs));
        let chunk_targets: Vec<usize> = (0..count).flat_map(|i| std::iter::repeat_n(targets[first + i], copies)).collect();
        let trace =
            model.forward_trace_keeping(&inputs, TraceKeeps::BlockOutputs).map_err(|e| ExplainError::Shape(e.to_string()))?;
        let gradients = input_gradient(model, &trace, &chunk_targets, ReluBackward::Gradient)?;
        let out = &mut attributions[first * image_len..][..count * image_len];
        out.par_chunks_mut(image_len)
            .zip(gradients.par_chunks(copies * image_len))
            .enumerate()
            .for_each(|(i, (out, gradients))| reduce(first + i, gradients, out));
    }
    Ok(attributions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{dense_model, forward_from, random, tiny_model};
    use common::architecture::ModelKind;
    use common::image::ImageShape;
    use engine::argmax;

    fn logit(model: &Model, x: &[f32], target: usize) -> f32 {
        forward_from(model, 0, x)[target]
    }

    /// Each image's predicted class.
    fn predicted(model: &Model, x: &[f32]) -> Vec<usize> {
        model.forward(x).unwrap().chunks(model.classes).map(argmax).collect()
    }

    /// The input gradient against central differences of the network run
    /// by the kernels directly, on every input of two images of the tiny
    /// model and a few inputs of the complex model with two channels.
    #[test]
    fn the_input_gradient_matches_finite_differences() {
        let complex =
            Model::initialized(&ModelKind::Complex.architecture(10), ImageShape { channels: 2, height: 8, width: 8 }, 6).unwrap();
        for (model, probes) in [(tiny_model(3, true), 36), (complex, 12)] {
            let images = 2;
            let x = random(images * model.input.len(), 11, -1.0, 1.0);
            let trace = model.forward_trace(&x).unwrap();
            let targets = predicted(&model, &x);
            let g = input_gradient(&model, &trace, &targets, ReluBackward::Gradient).unwrap();
            let len = model.input.len();
            let h = 1e-3f32;
            let (mut compared, mut kinks) = (0, 0);
            for image in 0..images {
                let one = &x[image * len..][..len];
                for i in (0..len).step_by(len.div_ceil(probes)) {
                    let shifted = |delta: f32| {
                        let mut v = one.to_vec();
                        v[i] += delta;
                        logit(&model, &v, targets[image])
                    };
                    let (left, centre, right) = (shifted(-h), shifted(0.0), shifted(h));
                    // A ReLU or a max-pool winner that switches within ±h
                    // makes the one-sided slopes differ: no derivative there.
                    let (backward, forward) = ((centre - left) / h, (right - centre) / h);
                    if (backward - forward).abs() > 1e-3 + 1e-2 * forward.abs() {
                        kinks += 1;
                        continue;
                    }
                    let numeric = (right - left) / (2.0 * h);
                    let analytic = g[image * len + i];
                    assert!(
                        (numeric - analytic).abs() < 2e-3 + 2e-2 * analytic.abs(),
                        "image {image}, input {i}: {numeric} vs {analytic}"
                    );
                    compared += 1;
                }
            }
            assert!(kinks * 10 <= compared, "{kinks} kinks among {compared} inputs compared");
        }
    }

    /// Integrated gradients are complete: the attributions of an image sum
    /// to `f(x) - f(baseline)` up to the quadrature's error, which shrinks
    /// as the nodes grow (a ReLU network is piecewise linear along the path,
    /// so the integrand is piecewise constant and the error falls slowly).
    #[test]
    fn integrated_gradients_are_complete_up_to_a_shrinking_quadrature_error() {
        let model =
            Model::initialized(&ModelKind::Simple.architecture(10), ImageShape { channels: 1, height: 8, width: 8 }, 2).unwrap();
        let x = random(3 * model.input.len(), 4, -1.0, 1.0);
        let targets = predicted(&model, &x);
        let baseline = vec![-1.0f32];
        let len = model.input.len();
        let errors: Vec<f32> = [4, 16, 256]
            .iter()
            .map(|&steps| {
                let attributions = integrated_gradients(&model, &x, &targets, steps, &baseline).unwrap();
                (0..3)
                    .map(|image| {
                        let sum: f32 = attributions[image * len..][..len].iter().sum();
                        let gap = logit(&model, &x[image * len..][..len], targets[image])
                            - logit(&model, &vec![-1.0; len], targets[image]);
                        (sum - gap).abs() / gap.abs().max(1e-3)
                    })
                    .fold(0.0, f32::max)
            })
            .collect();
        assert!(errors[2] < 0.02, "relative completeness error with 256 steps: {errors:?}");
        assert!(errors[2] < errors[0], "the error shrinks with the steps: {errors:?}");
    }

    /// For a network without ReLU kinks on the path (a linear model: one
    /// dense layer), integrated gradients are exactly `(x - x') · w`, and
    /// one node suffices.
    #[test]
    fn integrated_gradients_of_a_linear_model_are_input_minus_baseline_times_weight() {
        let weights = vec![1.0, -2.0, 0.5, 3.0, 0.0, 1.0, 1.0, 1.0];
        let model = dense_model(ImageShape { channels: 1, height: 2, width: 2 }, &[("fc", 2, weights)]);
        let x = [1.0f32, 2.0, -1.0, 0.5];
        let ig = integrated_gradients(&model, &x, &[0], 1, &[0.5]).unwrap();
        let expected: Vec<f32> = [1.0f32, -2.0, 0.5, 3.0].iter().zip(&x).map(|(w, x)| (x - 0.5) * w).collect();
        assert_eq!(ig, expected);
    }

    #[test]
    fn gauss_legendre_matches_the_tabulated_rule_and_integrates_polynomials() {
        // The 3-node rule on [-1, 1]: 0, ±sqrt(3/5) with weights 8/9, 5/9.
        let three = gauss_legendre(3);
        let expected = [(0.5 - 0.5 * 0.6f64.sqrt(), 5.0 / 18.0), (0.5, 8.0 / 18.0), (0.5 + 0.5 * 0.6f64.sqrt(), 5.0 / 18.0)];
        for ((a, w), (ea, ew)) in three.iter().zip(expected) {
            assert!((a - ea).abs() < 1e-14 && (w - ew).abs() < 1e-14, "{three:?}");
        }
        // n nodes integrate x^k exactly for k < 2n: ∫_0^1 x^k = 1/(k+1).
        for n in [1, 2, 5, 32] {
            let rule = gauss_legendre(n);
            for k in 0..2 * n {
                let integral: f64 = rule.iter().map(|(a, w)| w * a.powi(k as i32)).sum();
                assert!((integral - 1.0 / (k as f64 + 1.0)).abs() < 1e-12, "{n} nodes, x^{k}: {integral}");
            }
        }
    }

    /// With no noise, SmoothGrad is the gradient; with noise, each image's
    /// samples come from its probe id, so reordering the batch reorders the
    /// maps and nothing else.
    #[test]
    fn smoothgrad_without_noise_is_the_gradient_and_its_noise_follows_the_image() {
        let model = tiny_model(5, true);
        let len = model.input.len();
        let x = random(3 * len, 6, -1.0, 1.0);
        let targets = predicted(&model, &x);
        let trace = model.forward_trace(&x).unwrap();
        let gradient = input_gradient(&model, &trace, &targets, ReluBackward::Gradient).unwrap();
        let noiseless = smoothgrad(&model, &x, &targets, &[7, 8, 9], (4, 0.0, 1)).unwrap();
        assert_eq!(noiseless, gradient);
        let noisy = smoothgrad(&model, &x, &targets, &[7, 8, 9], (4, 0.3, 1)).unwrap();
        assert_ne!(noisy, gradient);
        let swapped: Vec<f32> = [&x[2 * len..], &x[len..2 * len], &x[..len]].concat();
        let swapped_noisy = smoothgrad(&model, &swapped, &[targets[2], targets[1], targets[0]], &[9, 8, 7], (4, 0.3, 1)).unwrap();
        assert_eq!(&swapped_noisy[..len], &noisy[2 * len..]);
        assert_eq!(&swapped_noisy[2 * len..], &noisy[..len]);
        let other_seed = smoothgrad(&model, &x, &targets, &[7, 8, 9], (4, 0.3, 2)).unwrap();
        assert_ne!(other_seed, noisy);
    }

    /// Guided backpropagation by hand: one hidden ReLU unit whose gradient
    /// is negative is cut, one whose input is negative is cut, and one with
    /// positive input and gradient passes.
    #[test]
    fn guided_backprop_passes_only_positive_gradients_through_relus() {
        // x (1x1x3) -> dense 3->3 (identity) -> ReLU -> dense 3->1 with
        // weights (2, -1, 3).
        let identity = vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0];
        let shape = ImageShape { channels: 1, height: 1, width: 3 };
        let model = dense_model(shape, &[("hidden", 3, identity), ("out", 1, vec![2.0, -1.0, 3.0])]);
        // Unit 0: input 1 > 0, gradient 2 > 0: passes. Unit 1: input 1,
        // gradient -1: guided cuts it, the gradient keeps it. Unit 2: input
        // -1: both cut it.
        let x = [1.0f32, 1.0, -1.0];
        let trace = model.forward_trace(&x).unwrap();
        assert_eq!(input_gradient(&model, &trace, &[0], ReluBackward::Gradient).unwrap(), vec![2.0, -1.0, 0.0]);
        assert_eq!(input_gradient(&model, &trace, &[0], ReluBackward::Guided).unwrap(), vec![2.0, 0.0, 0.0]);
    }

    /// The maps are the per-input attributions summed over the channels:
    /// gradient, |gradient|, input x gradient by hand on two channels.
    #[test]
    fn maps_sum_the_attributions_over_the_channels() {
        let model =
            Model::initialized(&ModelKind::Simple.architecture(10), ImageShape { channels: 2, height: 4, width: 4 }, 9).unwrap();
        let x = random(2 * model.input.len(), 10, -1.0, 1.0);
        let targets = predicted(&model, &x);
        let trace = model.forward_trace(&x).unwrap();
        let g = input_gradient(&model, &trace, &targets, ReluBackward::Gradient).unwrap();
        let by_hand = |f: &dyn Fn(usize) -> f32| -> Vec<f32> {
            (0..2).flat_map(|n| (0..16).map(move |p| (n, p))).map(|(n, p)| f(n * 32 + p) + f(n * 32 + 16 + p)).collect()
        };
        let ids = [0, 1];
        let maps = |method: GradientMethod| method.maps(&model, &trace, &targets, &ids).unwrap();
        assert_eq!(maps(GradientMethod::Gradient { abs: false }), by_hand(&|i| g[i]));
        assert_eq!(maps(GradientMethod::Gradient { abs: true }), by_hand(&|i| g[i].abs()));
        assert_eq!(maps(GradientMethod::GradientXInput), by_hand(&|i| g[i] * x[i]));
    }

    #[test]
    fn baselines_and_noise_follow_the_normalisation() {
        let normalization = Normalization { mean: vec![0.5, 0.25], std: vec![0.5, 0.25] };
        assert_eq!(baseline_values(Baseline::Zero, &normalization), vec![0.0, 0.0]);
        assert_eq!(baseline_values(Baseline::Black, &normalization), vec![-1.0, -1.0]);
        assert_eq!(baseline_values(Baseline::Value(0.3), &normalization), vec![0.3, 0.3]);
        // Range: from -1 (both channels' 0 pixel) to 3 (channel 1's 1 pixel).
        let GradientMethod::SmoothGrad { sigma, .. } = GradientMethod::smoothgrad(4, 0.1, 0, &normalization) else { panic!() };
        assert!((sigma - 0.4).abs() < 1e-6, "{sigma}");
    }
}
