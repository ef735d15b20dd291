//! The gradient of a network's input, or of one layer's output, from a
//! gradient at its logits, through what a forward trace kept: what the
//! gradient family of attribution methods and Grad-CAM read. Parameter
//! gradients are training's (see `training`).
//!
//! The conv blocks (a conv with the ReLU and max-pool after it) go image
//! by image, as inference does (see `conv_stack`): an image's gradients
//! stay in its core's cache from one block to the next, where the layer by
//! layer kernels would write a batch-sized gradient between any two layers.
//! The other layers take the batch at once.

use rayon::prelude::*;

use crate::conv_stack::{ConvStack, KeptBlock};
use crate::isa::Isa;
use crate::kernels::{avgpool2x2_backward, conv2d_backward_input, dense_backward_input, maxpool2x2_backward};
use crate::layers::{Layer, ModelError};
use crate::microkernels::relu_gradient;
use crate::network::{Model, Step, Trace};

/// How a ReLU passes a gradient back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReluBackward {
    /// Where its input was positive: the gradient.
    Gradient,
    /// Where its input was positive and the gradient is positive: guided
    /// backpropagation.
    Guided,
}

impl ReluBackward {
    /// `gradient` through the ReLU whose output (positive where its input
    /// is) is `output`, in place.
    pub(crate) fn apply(self, isa: Isa, gradient: &mut [f32], output: &[f32]) {
        relu_gradient(isa, gradient, output);
        if self == ReluBackward::Guided {
            // Guided backpropagation also passes only positive gradients.
            gradient.iter_mut().for_each(|g| *g = if *g > 0.0 { *g } else { 0.0 });
        }
    }

    /// [`ReluBackward::apply`] over a batch, in parallel.
    fn apply_to_batch(self, gradient: &mut [f32], output: &[f32]) {
        assert_eq!(gradient.len(), output.len(), "ReLU gradient and output lengths");
        let isa = Isa::detected();
        gradient.par_chunks_mut(1 << 14).zip(output.par_chunks(1 << 14)).for_each(|(g, y)| self.apply(isa, g, y));
    }
}

impl Model {
    /// Back-propagates `gradient` (at the logits, N·classes) to the input
    /// of layer `first` (N·C·H·W of that layer's input), through that
    /// layer and those after it. The ReLUs pass it as `relu` says, from
    /// their outputs in `trace`, and the max-pools by the winners there: a
    /// trace that keeps the block outputs covers a backward pass to the
    /// input (see [`crate::TraceKeeps::BlockOutputs`]), one that keeps
    /// every layer's output from `first` on covers one to layer `first`.
    pub fn backpropagate(
        &self,
        trace: &Trace,
        first: usize,
        mut gradient: Vec<f32>,
        relu: ReluBackward,
    ) -> Result<Vec<f32>, ModelError> {
        let output = |index: usize| match &trace.outputs[index] {
            kept if !kept.is_empty() => Ok(kept.as_slice()),
            _ => Err(ModelError::Trace(format!("the output of layer {index}"))),
        };
        let argmax = |index: usize| {
            trace.argmax[index].as_deref().ok_or_else(|| ModelError::Trace(format!("the max-pool winners of layer {index}")))
        };
        for step in self.steps_from(first).into_iter().rev() {
            gradient = match step {
                Step::Blocks { first, blocks } => {
                    let mut kept = Vec::with_capacity(blocks.len());
                    let mut end = first;
                    for (block, _) in &blocks {
                        end += block.layer_count();
                        let argmax = block.pool.map(|_| argmax(end - 1)).transpose()?;
                        kept.push(KeptBlock { output: output(end - 1)?, argmax });
                    }
                    ConvStack::for_input_gradient(&blocks).input_gradient(&kept, &gradient, relu)
                }
                Step::Layer(index) => match &self.layers[index] {
                    Layer::Relu => {
                        relu.apply_to_batch(&mut gradient, output(index)?);
                        gradient
                    }
                    Layer::Flatten | Layer::Dropout { .. } => gradient,
                    Layer::AvgPool(geometry) => avgpool2x2_backward(&gradient, geometry),
                    Layer::MaxPool(geometry) => maxpool2x2_backward(&gradient, argmax(index)?, geometry),
                    Layer::Conv(conv) => conv2d_backward_input(&gradient, &conv.geometry, &conv.weight),
                    Layer::Dense(dense) => dense_backward_input(&gradient, dense.inputs, &dense.weight),
                },
            };
        }
        Ok(gradient)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::relu_backward;
    use crate::network::test_architectures;
    use crate::network::TraceKeeps;
    use crate::PooledConvGradient;
    use common::architecture::ModelKind;
    use common::image::ImageShape;
    use common::rng::Rng;

    /// The backward pass layer by layer over the batch, from a full trace:
    /// a `conv -> relu -> max_pool` block from the pool's winners (where
    /// that route applies), every other layer by its batch kernel.
    fn layer_by_layer(model: &Model, trace: &Trace, mut gradient: Vec<f32>, relu: ReluBackward) -> Vec<f32> {
        let guided = |gradient: &mut Vec<f32>| {
            if relu == ReluBackward::Guided {
                gradient.iter_mut().for_each(|g| *g = g.max(0.0));
            }
        };
        let mut index = model.layers.len();
        while index > 0 {
            index -= 1;
            let argmax = || trace.argmax[index].as_deref().expect("a full trace keeps the winners");
            if let (Layer::MaxPool(pool), true) = (&model.layers[index], index >= 2) {
                if let [Layer::Conv(conv), Layer::Relu] = &model.layers[index - 2..index] {
                    if PooledConvGradient::applies(&conv.geometry, pool) {
                        relu_backward(&mut gradient, &trace.outputs[index]);
                        guided(&mut gradient);
                        gradient =
                            PooledConvGradient::new(&conv.geometry, &conv.weight, pool).input_gradient(&gradient, argmax());
                        index -= 2;
                        continue;
                    }
                }
            }
            gradient = match &model.layers[index] {
                Layer::Relu => {
                    relu_backward(&mut gradient, &trace.outputs[index]);
                    guided(&mut gradient);
                    gradient
                }
                Layer::Flatten | Layer::Dropout { .. } => gradient,
                Layer::AvgPool(g) => avgpool2x2_backward(&gradient, g),
                Layer::MaxPool(g) => maxpool2x2_backward(&gradient, argmax(), g),
                Layer::Conv(c) => conv2d_backward_input(&gradient, &c.geometry, &c.weight),
                Layer::Dense(d) => dense_backward_input(&gradient, d.inputs, &d.weight),
            };
        }
        gradient
    }

    /// Through the conv blocks image by image, the input gradient has the
    /// bits of the layer-by-layer kernels, plain and guided, from a trace
    /// of the block outputs and from a full one: on both presets and on
    /// the layers they lack (`test_architectures`: a strided conv's block
    /// unpools, as the winners' route does not apply, and so does a conv
    /// straight into a pool).
    #[test]
    fn the_input_gradient_through_the_blocks_equals_the_layer_by_layer_kernels() {
        for (architecture, shape) in test_architectures() {
            let model = Model::initialized(&architecture, shape, 5).unwrap();
            let mut rng = Rng::new(12);
            let batch = 5;
            let x: Vec<f32> = (0..batch * shape.len()).map(|_| rng.uniform(-1.0, 1.0)).collect();
            let seed: Vec<f32> = (0..batch * model.classes).map(|_| rng.uniform(-1.0, 1.0)).collect();
            let full = model.forward_trace(&x).unwrap();
            let lean = model.forward_trace_keeping(&x, TraceKeeps::BlockOutputs).unwrap();
            for relu in [ReluBackward::Gradient, ReluBackward::Guided] {
                let want = layer_by_layer(&model, &full, seed.clone(), relu);
                assert!(want.iter().any(|&g| g != 0.0), "{}: a gradient to compare", architecture.name);
                for trace in [&full, &lean] {
                    let got = model.backpropagate(trace, 0, seed.clone(), relu).unwrap();
                    assert_eq!(got, want, "{}, {relu:?}, from a trace of {}", architecture.name, trace.keeps);
                }
            }
        }
    }

    /// A trace that lacks what a step reads is an error that names it.
    #[test]
    fn a_trace_without_what_the_pass_reads_is_an_error() {
        let model = Model::initialized(&ModelKind::Simple.architecture(10), ImageShape::GRAY_28, 1).unwrap();
        let x = vec![0.5; 2 * ImageShape::GRAY_28.len()];
        let trace = model.forward_trace_from(&x, 7).unwrap();
        let error = model.backpropagate(&trace, 0, vec![1.0; 2 * model.classes], ReluBackward::Gradient).unwrap_err();
        assert_eq!(error.to_string(), "the forward trace does not keep the max-pool winners of layer 2");
    }
}
