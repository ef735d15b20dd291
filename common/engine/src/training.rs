//! One training step's forward and backward pass on dfdx's tape.

use dfdx::prelude::{
    cross_entropy_with_logits_loss, Backward, Cpu, Gradients, HasShape, OwnedTape, ReshapeTo, Shape, TensorFromVec, Trace,
};

/// The dfdx device a training step runs on.
pub use dfdx::prelude::Cpu as Device;

use common::rng::Rng;

use crate::conv_stack::ConvStack;
use crate::layers::{Layer, ModelError};
use crate::network::{argmax, Model};
use crate::tape_ops::{self, ParameterGradients, ParameterSlot, Planes, Rows};

type Taped = OwnedTape<f32, Cpu>;

/// The result of one forward and backward pass over a batch.
pub struct StepResult {
    /// Mean cross-entropy over the batch.
    pub loss: f32,
    /// Correct argmax predictions in the batch.
    pub correct: usize,
    /// Gradients of the loss in the order of [`Model::parameters`].
    pub gradients: Vec<Vec<f32>>,
}

enum Activation {
    Planes(Planes<Taped>),
    Rows(Rows<Taped>),
}

/// A dropout mask for `len` values: each 0 with probability `rate`, else
/// `1 / (1 - rate)`, drawn in order from `rng` (so a step's masks do not
/// depend on the thread count).
fn dropout_mask(rng: &mut Rng, rate: f32, len: usize) -> Vec<f32> {
    let kept = 1.0 / (1.0 - rate);
    (0..len).map(|_| if rng.next_f32() < rate { 0.0 } else { kept }).collect()
}

/// Mean cross-entropy of `model` on the normalised images `x` (N·C·H·W) with
/// `labels`, and its gradients with respect to every parameter. Dropout
/// layers draw their masks from `dropout_seed` (one per training step).
pub fn loss_and_gradients(
    dev: &Cpu,
    model: &Model,
    x: Vec<f32>,
    labels: &[u8],
    dropout_seed: u64,
) -> Result<StepResult, ModelError> {
    let n = model.input.len();
    if x.is_empty() || x.len() % n != 0 || x.len() / n != labels.len() {
        return Err(ModelError::Input { found: x.len(), shape: model.input });
    }
    let batch = labels.len();
    let image = dev.tensor_from_vec(x, (batch, model.input.channels, model.input.height, model.input.width));
    let mut act = Activation::Planes(image.traced(Gradients::leaky()));
    let lengths: Vec<usize> = model.parameters().iter().map(|p| p.data.len()).collect();
    let parameters = ParameterGradients::new(lengths.len());
    // The next layer's weight slot: the layers' parameters in order.
    let mut slot = 0;
    let mut first_conv = true;
    let mut dropout = Rng::for_purpose(dropout_seed, "dropout");
    let mut index = 0;
    while let Some(layer) = model.layers.get(index) {
        let mut next = index + 1;
        act = match (layer, act) {
            (Layer::Conv(_), Activation::Planes(x)) => {
                let (blocks, after) = model.conv_blocks(index, model.layers.len());
                next = after;
                let stack = ConvStack::for_training(&blocks, !first_conv);
                first_conv = false;
                let y = tape_ops::conv_stack(dev, x, stack, (parameters.clone(), ParameterSlot(slot)));
                slot += 2 * blocks.len();
                Activation::Planes(y)
            }
            (Layer::Relu, Activation::Planes(x)) => Activation::Planes(x.relu()),
            (Layer::Relu, Activation::Rows(x)) => Activation::Rows(x.relu()),
            (Layer::MaxPool(g), Activation::Planes(x)) => Activation::Planes(tape_ops::maxpool2x2(dev, x, *g)),
            (Layer::AvgPool(g), Activation::Planes(x)) => Activation::Planes(tape_ops::avgpool2x2(dev, x, *g)),
            (Layer::Dropout { rate }, Activation::Planes(x)) => {
                let mask = dropout_mask(&mut dropout, *rate, x.shape().num_elements());
                Activation::Planes(tape_ops::scaled(dev, x, mask))
            }
            (Layer::Dropout { rate }, Activation::Rows(x)) => {
                let mask = dropout_mask(&mut dropout, *rate, x.shape().num_elements());
                Activation::Rows(tape_ops::scaled(dev, x, mask))
            }
            (Layer::Flatten, Activation::Planes(x)) => {
                let (b, c, h, w) = *x.shape();
                Activation::Rows(x.reshape_like(&(b, c * h * w)))
            }
            (Layer::Dense(d), Activation::Rows(x)) => {
                let y = tape_ops::dense(dev, x, d, (parameters.clone(), ParameterSlot(slot)));
                slot += 2;
                Activation::Rows(y)
            }
            (layer, _) => unreachable!("layer {} got an activation of the wrong rank", layer.kind_name()),
        };
        index = next;
    }
    let Activation::Rows(logits) = act else { unreachable!("the network ends in a dense layer") };
    let logit_values = tape_ops::data_of(&logits);
    let classes = model.classes;
    let mut onehot = vec![0.0f32; batch * classes];
    for (i, &l) in labels.iter().enumerate() {
        onehot[i * classes + l as usize] = 1.0;
    }
    let target = dev.tensor_from_vec(onehot, (batch, classes));
    let loss = cross_entropy_with_logits_loss(logits, target);
    let loss_value = loss.retaped::<dfdx::prelude::NoneTape>().as_vec()[0];
    // The parameters' gradients are in `parameters` once this returns.
    drop(loss.backward());
    let correct = logit_values.chunks(classes).zip(labels).filter(|(row, &l)| argmax(row) == l as usize).count();
    let gradients = parameters.into_gradients(&lengths);
    Ok(StepResult { loss: loss_value, correct, gradients })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::cross_entropy_and_correct;
    use common::architecture::{Architecture, LayerKind, ModelKind};
    use common::image::ImageShape;

    fn batch(shape: ImageShape, n: usize, seed: u64) -> (Vec<f32>, Vec<u8>) {
        let mut rng = Rng::new(seed);
        ((0..n * shape.len()).map(|_| rng.uniform(-1.0, 1.0)).collect(), (0..n).map(|_| rng.below(10) as u8).collect())
    }

    #[test]
    fn tape_loss_matches_plain_forward() {
        let dev = Cpu::default();
        for kind in [ModelKind::Simple, ModelKind::Complex] {
            let model = Model::initialized(&kind.architecture(10), ImageShape::GRAY_28, 4).unwrap();
            let (x, y) = batch(ImageShape::GRAY_28, 3, 5);
            let step = loss_and_gradients(&dev, &model, x.clone(), &y, 0).unwrap();
            let (loss, correct) = cross_entropy_and_correct(&model.forward(&x).unwrap(), &y, 10);
            assert!((step.loss as f64 - loss).abs() < 1e-5, "{kind:?}: {} vs {loss}", step.loss);
            assert_eq!(step.correct, correct);
            let shapes: Vec<usize> = model.parameters().iter().map(|p| p.data.len()).collect();
            assert_eq!(step.gradients.iter().map(|g| g.len()).collect::<Vec<_>>(), shapes);
        }
    }

    /// Every parameter's gradient from the tape against central finite
    /// differences of the plain forward pass (in f64 around f32 weights).
    #[test]
    fn tape_gradients_match_finite_differences() {
        for kind in [ModelKind::Simple, ModelKind::Complex] {
            check_gradients_by_finite_differences(&kind.architecture(10));
        }
        check_gradients_by_finite_differences(&strided_model(0.0));
    }

    /// A model of every layer kind the presets lack: a strided convolution
    /// first (no input gradient) and after another, padding other than
    /// kernel / 2, an average pool, dropout on planes and on rows.
    fn strided_model(dropout: f32) -> Architecture {
        use LayerKind::*;
        let conv = |channels, kernel, padding, stride| Conv { channels, kernel, padding, stride };
        let layers = vec![
            conv(3, 3, 1, 2),
            Relu,
            conv(4, 3, 0, 1),
            Relu,
            Dropout { rate: dropout },
            conv(5, 2, 1, 2),
            AvgPool,
            Flatten,
            Dense { outputs: 6 },
            Relu,
            Dropout { rate: dropout },
            Dense { outputs: 10 },
        ];
        Architecture::new("strided", layers)
    }

    #[test]
    fn dropout_masks_follow_the_seed_and_act_only_in_training() {
        let dev = Cpu::default();
        let shape = ImageShape { channels: 2, height: 12, width: 12 };
        let (x, y) = batch(shape, 4, 3);
        let plain = Model::initialized(&strided_model(0.0), shape, 8).unwrap();
        let dropping = Model::initialized(&strided_model(0.5), shape, 8).unwrap();
        assert_eq!(plain.forward(&x).unwrap(), dropping.forward(&x).unwrap(), "no dropout outside training");
        let step = |seed| loss_and_gradients(&dev, &dropping, x.clone(), &y, seed).unwrap();
        let (a, b, other) = (step(1), step(1), step(2));
        assert_eq!((a.loss, &a.gradients), (b.loss, &b.gradients), "the same seed, the same masks");
        assert_ne!(a.loss, other.loss, "another seed, other masks");
        let without = loss_and_gradients(&dev, &plain, x.clone(), &y, 1).unwrap();
        assert_ne!(a.loss, without.loss);

        let mut rng = Rng::new(4);
        let mask = dropout_mask(&mut rng, 0.25, 40_000);
        let dropped = mask.iter().filter(|&&m| m == 0.0).count() as f64 / mask.len() as f64;
        assert!((dropped - 0.25).abs() < 0.01, "dropped {dropped}");
        assert!(mask.iter().all(|&m| m == 0.0 || m == 1.0 / 0.75));
    }

    fn check_gradients_by_finite_differences(architecture: &Architecture) {
        let dev = Cpu::default();
        let shape = ImageShape { channels: 2, height: 8, width: 8 };
        let model = Model::initialized(architecture, shape, 6).unwrap();
        let kind = &architecture.name;
        let (x, y) = batch(shape, 2, 7);
        let step = loss_and_gradients(&dev, &model, x.clone(), &y, 0).unwrap();
        let loss_of = |m: &Model| cross_entropy_and_correct(&m.forward(&x).unwrap(), &y, 10).0;
        let h = 1e-3f32;
        for (p, grad) in step.gradients.iter().enumerate() {
            let len = grad.len();
            for i in (0..len).step_by((len / 6).max(1)) {
                let mut plus = model.clone();
                plus.parameters_mut()[p][i] += h;
                let mut minus = model.clone();
                minus.parameters_mut()[p][i] -= h;
                let numeric = ((loss_of(&plus) - loss_of(&minus)) / (2.0 * h as f64)) as f32;
                assert!(
                    (grad[i] - numeric).abs() < 2e-3 + 0.02 * numeric.abs(),
                    "{kind:?} param {p} index {i}: {} vs {numeric}",
                    grad[i]
                );
            }
        }
    }
}
