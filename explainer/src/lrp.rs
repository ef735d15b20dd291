//! The batched LRP backward pass.
//!
//! Relevance starts as the explained logit alone (one-hot of the explained
//! class times that logit) and flows from the output to the input, layer by
//! layer: conv and dense layers apply their composite rule (see `rules`),
//! max-pools pass it to the winner or redistribute it like average pooling,
//! average pools redistribute it in proportion to their inputs (Zennit's
//! `Norm` rule for them), ReLU, flatten and dropout pass it unchanged. The whole batch moves through each
//! layer at once, so every step is one batched kernel call.

use engine::kernels::{maxpool2x2_backward, pool2x2_redistribute};
use engine::{Layer, Model, Trace, TraceKeeps};

use crate::composite::{first_linear_layer, Composite, PoolTreatment};
use crate::error::ExplainError;
use crate::linear::LinearLayer;
use crate::rules::{InputRange, Rule};

/// The relevance of every input value (N·C·H·W) for the classes `targets`
/// (one per image of the trace), under `composite`.
pub fn relevance(model: &Model, trace: &Trace, composite: &Composite, targets: &[usize]) -> Result<Vec<f32>, ExplainError> {
    check_trace(model, trace, TraceKeeps::LayersFrom(0))?;
    if targets.len() != trace.batch {
        return Err(ExplainError::Shape(format!("{} target(s) for a batch of {} images", targets.len(), trace.batch)));
    }
    let first = first_linear_layer(&model.layers).ok_or(ExplainError::MissingLayer("conv or dense layer to apply LRP to"))?;
    if let Rule::ZBox { bounds } = &composite.first {
        if bounds.len() != model.input.channels {
            return Err(ExplainError::BoundsChannels { bounds: bounds.len(), channels: model.input.channels });
        }
    }
    let through_linear = |linear: LinearLayer, index: usize, relevance: &[f32]| {
        let rule = composite.rule_for(linear, index == first);
        rule.relevance(linear, trace.layer_input(index), input_range(model, index), &trace.outputs[index], relevance)
    };
    let mut relevance = explained_logit_only(trace.logits(), model.classes, targets)?;
    for (index, layer) in model.layers.iter().enumerate().rev() {
        relevance = match layer {
            Layer::Relu | Layer::Flatten | Layer::Dropout { .. } => relevance,
            Layer::AvgPool(geometry) => pool2x2_redistribute(&relevance, trace.layer_input(index), geometry),
            Layer::MaxPool(geometry) => match composite.max_pool {
                PoolTreatment::WinnerTakeAll => {
                    let argmax = trace.argmax[index].as_deref().ok_or_else(|| missing_argmax(index))?;
                    maxpool2x2_backward(&relevance, argmax, geometry)
                }
                PoolTreatment::Average => pool2x2_redistribute(&relevance, trace.layer_input(index), geometry),
            },
            Layer::Conv(conv) => through_linear(LinearLayer::Conv(conv), index, &relevance)?,
            Layer::Dense(dense) => through_linear(LinearLayer::Dense(dense), index, &relevance)?,
        };
    }
    Ok(relevance)
}

/// What the layers before layer `index` guarantee of its input: never
/// negative when the nearest layer before it that changes values (past
/// pools, flattens and dropouts, which keep a non-negative input so) is a
/// ReLU.
fn input_range(model: &Model, index: usize) -> InputRange {
    let before = model.layers[..index]
        .iter()
        .rev()
        .find(|l| !matches!(l, Layer::MaxPool(_) | Layer::AvgPool(_) | Layer::Flatten | Layer::Dropout { .. }));
    match before {
        Some(Layer::Relu) => InputRange::NonNegative,
        _ => InputRange::Any,
    }
}

/// One-hot of each image's target class times its logit: the relevance the
/// backward pass starts from.
pub fn explained_logit_only(logits: &[f32], classes: usize, targets: &[usize]) -> Result<Vec<f32>, ExplainError> {
    if logits.len() != targets.len() * classes {
        return Err(ExplainError::Shape(format!("{} logits for {} images of {classes} classes", logits.len(), targets.len())));
    }
    let mut start = vec![0.0f32; logits.len()];
    for (image, &target) in targets.iter().enumerate() {
        if target >= classes {
            return Err(ExplainError::LabelOutOfRange { image, label: target, classes });
        }
        let at = image * classes + target;
        start[at] = logits[at];
    }
    Ok(start)
}

/// Sums an N·C·H·W tensor over its channels: N·H·W maps.
pub fn sum_over_channels(values: &[f32], channels: usize, plane: usize) -> Vec<f32> {
    let image_len = channels * plane;
    let mut maps = Vec::with_capacity(values.len() / image_len.max(1) * plane);
    for image in values.chunks_exact(image_len) {
        let mut map = image[..plane].to_vec();
        for channel in image[plane..].chunks_exact(plane) {
            map.iter_mut().zip(channel).for_each(|(m, v)| *m += v);
        }
        maps.extend_from_slice(&map);
    }
    maps
}

/// A trace must come from this model (one output per layer, those it keeps
/// of the layer's size for the trace's batch) and keep what `needs` says.
pub(crate) fn check_trace(model: &Model, trace: &Trace, needs: TraceKeeps) -> Result<(), ExplainError> {
    let shapes = model.activation_shapes();
    // From here on every output is kept (a trace that keeps layers from
    // `first` on keeps the output of the layer before it too: that is
    // layer `first`'s input); before, an output is kept or empty.
    let kept_from = match trace.keeps {
        TraceKeeps::LayersFrom(first) => first.saturating_sub(1),
        TraceKeeps::BlockOutputs => model.layers.len(),
    };
    let consistent = trace.input.len() == trace.batch * model.input.len()
        && trace.outputs.len() == model.layers.len()
        && trace.argmax.len() == model.layers.len()
        && trace
            .outputs
            .iter()
            .zip(&shapes)
            .enumerate()
            .all(|(i, (out, shape))| out.len() == trace.batch * shape.len() || (i < kept_from && out.is_empty()));
    if !consistent {
        return Err(ExplainError::Shape("the forward trace does not belong to this model (layer outputs of other sizes)".into()));
    }
    if !trace.keeps.covers(needs) {
        return Err(ExplainError::Shape(format!("the forward trace keeps {}, this method needs {needs}", trace.keeps)));
    }
    Ok(())
}

fn missing_argmax(index: usize) -> ExplainError {
    ExplainError::Shape(format!("the forward trace has no max-pool winners for layer {index}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcam::gradient_at;
    use crate::rules::Rule;
    use crate::test_support::{assert_close, forward_from, random, tiny_model, without_biases};
    use common::architecture::ModelKind;
    use common::image::ImageShape;
    use engine::kernels::{conv2d_backward_input, ConvGeometry};
    use engine::{argmax, Conv2d, Dense};

    fn uniform_composite(rule: Rule, max_pool: PoolTreatment) -> Composite {
        Composite { first: rule.clone(), conv: rule.clone(), dense: rule, max_pool }
    }

    fn predicted(model: &Model, trace: &Trace) -> Vec<usize> {
        trace.logits().chunks(model.classes).map(argmax).collect()
    }

    /// On a bias-free ReLU network with winner-take-all pooling, LRP-0 is
    /// gradient × input. The gradient comes from the backward kernels (and is
    /// itself checked against finite differences of the network).
    #[test]
    fn lrp0_equals_gradient_times_input_without_biases() {
        let model = tiny_model(11, false);
        let x = random(3 * 36, 12, -1.0, 1.0);
        let trace = model.forward_trace(&x).unwrap();
        let targets = predicted(&model, &trace);
        let composite = uniform_composite(Rule::Zero, PoolTreatment::WinnerTakeAll);
        let r = relevance(&model, &trace, &composite, &targets).unwrap();

        let mut seed = vec![0.0f32; 3 * model.classes];
        for (i, &t) in targets.iter().enumerate() {
            seed[i * model.classes + t] = 1.0;
        }
        let at_conv_output = gradient_at(&model, &trace, 0, seed).unwrap();
        let Layer::Conv(conv) = &model.layers[0] else { unreachable!() };
        let gradient = conv2d_backward_input(&at_conv_output, &conv.geometry, &conv.weight);
        let gradient_times_input: Vec<f32> = gradient.iter().zip(&x).map(|(g, x)| g * x).collect();
        assert_close(&r, &gradient_times_input, 1e-5, "LRP-0 vs gradient x input");

        // The gradient against central differences of the explained logit.
        let h = 1e-3f32;
        for i in (0..x.len()).step_by(5) {
            let image = i / 36;
            let logit = |x: &[f32]| forward_from(&model, 0, x)[image * model.classes + targets[image]];
            let (mut plus, mut minus) = (x.clone(), x.clone());
            plus[i] += h;
            minus[i] -= h;
            let numeric = (logit(&plus) - logit(&minus)) / (2.0 * h);
            assert!((numeric - gradient[i]).abs() < 2e-3, "d logit / d x[{i}]: {numeric} vs {}", gradient[i]);
        }
    }

    fn assert_conserves(model: &Model, x: &[f32], composite: &Composite, what: &str) {
        let trace = model.forward_trace(x).unwrap();
        let targets = predicted(model, &trace);
        let r = relevance(model, &trace, composite, &targets).unwrap();
        let image_len = model.input.len();
        for (i, (image, &t)) in r.chunks(image_len).zip(&targets).enumerate() {
            let logit = trace.logits()[i * model.classes + t];
            let total: f32 = image.iter().sum();
            assert!(
                (total - logit).abs() <= 1e-3 * (1.0 + logit.abs()),
                "{what}, image {i}: relevance sums to {total}, logit {logit}"
            );
        }
    }

    /// With zero biases nothing absorbs relevance: the input relevance sums
    /// to the explained logit, for both max-pool treatments, both presets
    /// and a model of the layers the presets lack (a stride-2 convolution,
    /// padding 0, an average pool, dropout).
    #[test]
    fn conservation_without_biases() {
        use common::architecture::{Architecture, LayerKind::*};
        let strided = Architecture::new(
            "strided",
            vec![
                Conv { channels: 4, kernel: 3, padding: 1, stride: 2 },
                Relu,
                Conv { channels: 6, kernel: 2, padding: 0, stride: 1 },
                Relu,
                Dropout { rate: 0.5 },
                AvgPool,
                MaxPool,
                Flatten,
                Dense { outputs: 10 },
            ],
        );
        let cases = [
            (ModelKind::Simple.architecture(10), ImageShape { channels: 2, height: 12, width: 12 }),
            (ModelKind::Complex.architecture(10), ImageShape { channels: 1, height: 8, width: 8 }),
            (strided, ImageShape { channels: 3, height: 18, width: 18 }),
        ];
        for (architecture, shape) in cases {
            let kind = &architecture.name;
            let model = without_biases(Model::initialized(&architecture, shape, 5).unwrap());
            let x = random(4 * shape.len(), 6, -1.0, 1.0);
            let x_non_negative: Vec<f32> = x.iter().map(|v| v.abs()).collect();
            for pool in [PoolTreatment::WinnerTakeAll, PoolTreatment::Average] {
                for rule in [Rule::Zero, Rule::Epsilon { epsilon: 1e-7 }, Rule::Gamma { gamma: 0.25 }] {
                    let what = format!("{kind:?} {} {pool:?}", rule.name());
                    assert_conserves(&model, &x, &uniform_composite(rule, pool), &what);
                }
                let mixed = Composite {
                    first: Rule::Zero,
                    conv: Rule::Gamma { gamma: 0.25 },
                    dense: Rule::Epsilon { epsilon: 1e-7 },
                    max_pool: pool,
                };
                assert_conserves(&model, &x, &mixed, &format!("{kind:?} mixed {pool:?}"));
                let z_plus = Composite { first: Rule::ZPlus, conv: Rule::ZPlus, dense: Rule::Zero, max_pool: pool };
                assert_conserves(&model, &x_non_negative, &z_plus, &format!("{kind:?} z-plus {pool:?}"));
            }
        }
    }

    #[test]
    fn gamma_zero_equals_lrp0() {
        let model = tiny_model(21, true);
        let x = random(4 * 36, 22, -1.0, 1.0);
        let trace = model.forward_trace(&x).unwrap();
        let targets = predicted(&model, &trace);
        for pool in [PoolTreatment::WinnerTakeAll, PoolTreatment::Average] {
            let zero = relevance(&model, &trace, &uniform_composite(Rule::Zero, pool), &targets).unwrap();
            let gamma = relevance(&model, &trace, &uniform_composite(Rule::Gamma { gamma: 0.0 }, pool), &targets).unwrap();
            assert_close(&gamma, &zero, 1e-4, "gamma 0 vs LRP-0");
        }
    }

    /// Average redistribution through the pool conserves relevance (checked in
    /// `conservation_without_biases`) and differs from winner-take-all, which
    /// leaves the losers of every window without relevance.
    #[test]
    fn average_redistribution_spreads_over_windows() {
        let model = tiny_model(31, false);
        let x: Vec<f32> = random(36, 32, 0.1, 1.0);
        let trace = model.forward_trace(&x).unwrap();
        let targets = predicted(&model, &trace);
        let winner = relevance(&model, &trace, &uniform_composite(Rule::Zero, PoolTreatment::WinnerTakeAll), &targets).unwrap();
        let average = relevance(&model, &trace, &uniform_composite(Rule::Zero, PoolTreatment::Average), &targets).unwrap();
        assert_ne!(winner, average);
        let logit = trace.logits()[targets[0]];
        assert!((average.iter().sum::<f32>() - logit).abs() < 1e-3 * (1.0 + logit.abs()));
    }

    /// z^B on a 1-channel 2x2 convolution with one output, by hand:
    /// x = [0.5, -1, 1, 0.25], w = [1, -2, 0.5, 3], bounds [-1, 1].
    /// z = x·w = 3.75 is the logit (dense weight 1, LRP-0). The z^B
    /// contributions x_i w_i - l w_i⁺ - h w_i⁻ are [1.5, 4, 1, 3.75] (sum
    /// 10.25), so R = 3.75 / 10.25 · [1.5, 4, 1, 3.75].
    #[test]
    fn z_box_by_hand() {
        let geometry = ConvGeometry { in_channels: 1, out_channels: 1, kernel: 2, padding: 0, height: 2, width: 2, stride: 1 };
        let model = Model::from_layers(
            ImageShape { channels: 1, height: 2, width: 2 },
            vec![
                Layer::Conv(Conv2d { name: "c".into(), geometry, weight: vec![1.0, -2.0, 0.5, 3.0], bias: vec![0.0] }),
                Layer::Flatten,
                Layer::Dense(Dense {
                    name: "fc".into(),
                    inputs: 1,
                    outputs: 2,
                    weight: vec![1.0, -1.0].into(),
                    bias: vec![0.0, 0.0],
                }),
            ],
        );
        let trace = model.forward_trace(&[0.5, -1.0, 1.0, 0.25]).unwrap();
        assert_eq!(trace.logits(), &[3.75, -3.75]);
        let composite = Composite {
            first: Rule::ZBox { bounds: vec![(-1.0, 1.0)] },
            conv: Rule::Zero,
            dense: Rule::Zero,
            max_pool: PoolTreatment::Average,
        };
        // The dense layer is not first here: the conv is.
        let r = relevance(&model, &trace, &composite, &[0]).unwrap();
        let k = 3.75 / 10.25;
        assert_close(&r, &[1.5 * k, 4.0 * k, 1.0 * k, 3.75 * k], 1e-5, "z-box");
        assert_close(&r, &[0.548_780_5, 1.463_414_6, 0.365_853_7, 1.371_951_2], 1e-5, "z-box (numbers)");

        let wrong = Composite { first: Rule::ZBox { bounds: vec![(-1.0, 1.0); 3] }, ..composite };
        assert_eq!(relevance(&model, &trace, &wrong, &[0]).unwrap_err(), ExplainError::BoundsChannels { bounds: 3, channels: 1 });
    }

    #[test]
    fn relevance_starts_from_the_explained_logit_only() {
        let start = explained_logit_only(&[1.0, -2.0, 3.0, 4.0, 5.0, -6.0], 3, &[1, 2]).unwrap();
        assert_eq!(start, vec![0.0, -2.0, 0.0, 0.0, 0.0, -6.0]);
        assert!(matches!(explained_logit_only(&[1.0, 2.0], 2, &[2]), Err(ExplainError::LabelOutOfRange { .. })));
        assert_eq!(sum_over_channels(&[1.0, 2.0, 10.0, 20.0, 3.0, 4.0, 30.0, 40.0], 2, 2), vec![11.0, 22.0, 33.0, 44.0]);
    }

    #[test]
    fn a_trace_of_another_model_is_an_error() {
        let model = tiny_model(1, true);
        let other = Model::initialized(&ModelKind::Simple.architecture(10), ImageShape::GRAY_28, 1).unwrap();
        let trace = other.forward_trace(&random(784, 2, -1.0, 1.0)).unwrap();
        let composite = uniform_composite(Rule::Zero, PoolTreatment::Average);
        assert!(matches!(relevance(&model, &trace, &composite, &[0]), Err(ExplainError::Shape(_))));
    }
}

/// The named Zennit composites against Zennit itself.
#[cfg(test)]
mod zennit_reference {
    use super::*;
    use common::config::{CompositeRules, CompositeSpec, MaxPoolRule, NamedComposite, RuleSpec};
    use common::image::ImageShape;
    use engine::kernels::{ConvGeometry, PoolGeometry};
    use engine::{argmax, Conv2d, Dense};

    /// conv(1→2, 3x3, padding 1) + ReLU + 2x2 max-pool + flatten +
    /// dense(8→3) on one 1x4x4 image, with weights `0.5 sin(k + 1)` (conv),
    /// `0.5 cos(2k + 1)` (dense), biases [0.1, -0.2] and [0.05, -0.1, 0.2],
    /// input `0.8 cos(i)`: the network of the reference script.
    fn network() -> (Model, Vec<f32>) {
        let geometry = ConvGeometry { in_channels: 1, out_channels: 2, kernel: 3, padding: 1, height: 4, width: 4, stride: 1 };
        let model = Model::from_layers(
            ImageShape { channels: 1, height: 4, width: 4 },
            vec![
                Layer::Conv(Conv2d {
                    name: "c".into(),
                    geometry,
                    weight: (0..18).map(|k| 0.5 * ((k + 1) as f32).sin()).collect(),
                    bias: vec![0.1, -0.2],
                }),
                Layer::Relu,
                Layer::MaxPool(PoolGeometry { channels: 2, height: 4, width: 4 }),
                Layer::Flatten,
                Layer::Dense(Dense {
                    name: "fc".into(),
                    inputs: 8,
                    outputs: 3,
                    weight: (0..24).map(|k| 0.5 * ((2 * k + 1) as f32).cos()).collect::<Vec<_>>().into(),
                    bias: vec![0.05, -0.1, 0.2],
                }),
            ],
        );
        (model, (0..16).map(|i| 0.8 * (i as f32).cos()).collect())
    }

    /// Reference maps: Zennit (the peer environment's release), float64,
    /// `zennit.attribution.Gradient(model, Composite())(x, one_hot)` for the
    /// predicted class (2, logit 0.4165536824798979), on the network above
    /// built in PyTorch with the same weights. Zennit starts from relevance
    /// 1 at the class, ours from the logit: ours / logit is compared.
    #[test]
    fn named_composites_match_zennit() {
        let flat = [
            -0.150353546026,
            -0.0680362300856,
            -0.23127223215,
            -0.23127223215,
            -0.0351952592529,
            0.0951941345894,
            -0.0680418674746,
            -0.183200154248,
            0.209782197793,
            0.272271335766,
            0.273613853076,
            0.0624891379724,
            0.211124715104,
            0.191296537136,
            0.191296537136,
            -0.019828177968,
        ];
        let references: [(NamedComposite, [f64; 16]); 4] = [
            (
                NamedComposite::EpsilonPlus,
                [
                    -0.303594869639,
                    -0.106614911003,
                    -0.0504577072386,
                    -0.301879544759,
                    -0.192807507534,
                    0.131963773093,
                    0.0672295632853,
                    -0.209625690053,
                    0.0502403478175,
                    0.483227469839,
                    0.241945556396,
                    0.0,
                    0.243850772075,
                    0.44801500421,
                    0.0217673350466,
                    -0.0,
                ],
            ),
            (NamedComposite::EpsilonPlusFlat, flat),
            (
                NamedComposite::EpsilonAlpha2Beta1,
                [
                    -0.607189739278,
                    -0.486369797618,
                    -0.100915414477,
                    -0.603759089519,
                    -1.42203500037,
                    0.443069844686,
                    0.134459126571,
                    -0.419251380106,
                    0.102417444315,
                    0.971506891063,
                    0.483891112792,
                    -0.003819671857,
                    0.487701544151,
                    0.896030008419,
                    0.0435346700932,
                    -0.228951756881,
                ],
            ),
            (NamedComposite::EpsilonAlpha2Beta1Flat, flat),
        ];
        for (name, reference) in references {
            assert_matches_zennit(&CompositeSpec::Named(name), &reference, name.name());
        }
    }

    /// Our map of the network above, divided by the explained logit,
    /// against Zennit's.
    fn assert_matches_zennit(spec: &CompositeSpec, reference: &[f64; 16], what: &str) {
        let (model, x) = network();
        let trace = model.forward_trace(&x).unwrap();
        let target = argmax(trace.logits());
        assert_eq!(target, 2);
        let logit = trace.logits()[target];
        assert!((logit as f64 - 0.4165536824798979).abs() < 1e-6, "{logit}");
        let composite = Composite::resolve(spec, &[(-1.0, 1.0)]).unwrap();
        let map = relevance(&model, &trace, &composite, &[target]).unwrap();
        for (i, (&ours, &theirs)) in map.iter().zip(reference).enumerate() {
            let ours = ours as f64 / logit as f64;
            assert!((ours - theirs).abs() < 2e-5 * (1.0 + theirs.abs()), "{what} pixel {i}: {ours} vs Zennit {theirs}");
        }
    }

    /// Gamma 0.25 on the convolution, whose inputs (`0.8 cos(i)`) are of
    /// both signs and whose outputs too: Zennit's generalised `Gamma`
    /// (`LayerMapComposite` of `ReLU: Pass()`, `Conv2d: Gamma(0.25)`,
    /// `Linear: Epsilon(1e-6)`, the max-pool by its gradient), float64, in
    /// the peer environment this session.
    #[test]
    fn gamma_on_inputs_of_both_signs_matches_zennit_s_generalised_rule() {
        let reference = [
            -0.427056313959,
            -0.209308941138,
            -0.0317536664963,
            -0.278004015887,
            -0.426837218263,
            0.224202024574,
            0.123707570105,
            -0.186680399693,
            0.0587450997928,
            0.492200225919,
            0.171968099165,
            -6.04962226003e-05,
            0.281766956225,
            0.462368374595,
            0.00608207074409,
            0.121229424872,
        ];
        let gamma = RuleSpec::Gamma { gamma: 0.25 };
        let spec = CompositeSpec::Rules(CompositeRules {
            first: gamma.clone(),
            conv: gamma,
            dense: RuleSpec::Epsilon { epsilon: 1e-6 },
            max_pool: MaxPoolRule::WinnerTakeAll,
        });
        assert_matches_zennit(&spec, &reference, "gamma");
    }
}
