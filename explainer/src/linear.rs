//! A convolution or dense layer seen as "a linear map with a weight and a
//! bias": the one shape every LRP rule works on.
//!
//! LRP rules differ only in which weights and inputs they push through the
//! layer (positive parts, gamma-boosted weights, the input bounds, ...). With
//! this view a rule is written once, as data, and runs on both layer kinds
//! through the project's batched kernels (forward and backward-to-input).

use engine::kernels::{conv2d_backward_input, conv2d_forward, dense_backward_input, dense_forward};
use engine::{Conv2d, ConvGeometry, Dense, Layer};

/// A conv or dense layer of a model, borrowed.
#[derive(Clone, Copy, Debug)]
pub enum LinearLayer<'a> {
    Conv(&'a Conv2d),
    Dense(&'a Dense),
}

impl<'a> LinearLayer<'a> {
    /// The layer as a linear map, or `None` for layers without parameters.
    pub fn of(layer: &'a Layer) -> Option<Self> {
        match layer {
            Layer::Conv(c) => Some(LinearLayer::Conv(c)),
            Layer::Dense(d) => Some(LinearLayer::Dense(d)),
            _ => None,
        }
    }

    pub fn weight(&self) -> &'a [f32] {
        match self {
            LinearLayer::Conv(c) => &c.weight,
            LinearLayer::Dense(d) => &d.weight,
        }
    }

    pub fn bias(&self) -> &'a [f32] {
        match self {
            LinearLayer::Conv(c) => &c.bias,
            LinearLayer::Dense(d) => &d.bias,
        }
    }

    /// Floats of one image's input.
    pub fn input_len(&self) -> usize {
        match self {
            LinearLayer::Conv(c) => c.geometry.in_len(),
            LinearLayer::Dense(d) => d.inputs,
        }
    }

    /// Floats of one image's output.
    pub fn output_len(&self) -> usize {
        match self {
            LinearLayer::Conv(c) => c.geometry.out_len(),
            LinearLayer::Dense(d) => d.outputs,
        }
    }

    /// `weight · x (+ bias)` for a batch, with any weight of the layer's shape.
    pub fn forward(&self, x: &[f32], weight: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
        match self {
            LinearLayer::Conv(c) => conv2d_forward(x, &c.geometry, weight, bias),
            LinearLayer::Dense(d) => dense_forward(x, d.inputs, weight, bias),
        }
    }

    /// `weightᵀ · dy`: the gradient with respect to the input for a batch.
    pub fn backward_input(&self, dy: &[f32], weight: &[f32]) -> Vec<f32> {
        match self {
            LinearLayer::Conv(c) => conv2d_backward_input(dy, &c.geometry, weight),
            LinearLayer::Dense(d) => dense_backward_input(dy, d.inputs, weight),
        }
    }

    /// The input gradients of several weights of the layer's shape at once,
    /// for one `dy`: one kernel call on the weights stacked along the input
    /// axis. Per image, the result holds the gradient of `weights[t]` at
    /// floats `t·in..(t+1)·in`.
    pub fn backward_input_stacked(&self, dy: &[f32], weights: &[&[f32]]) -> Vec<f32> {
        if let [weight] = weights {
            return self.backward_input(dy, weight);
        }
        let outputs = match self {
            LinearLayer::Conv(c) => c.geometry.out_channels,
            LinearLayer::Dense(d) => d.outputs,
        };
        let per_output = self.weight().len() / outputs.max(1);
        let mut stacked = Vec::with_capacity(per_output * outputs * weights.len());
        for o in 0..outputs {
            for weight in weights {
                stacked.extend_from_slice(&weight[o * per_output..(o + 1) * per_output]);
            }
        }
        match self {
            LinearLayer::Conv(c) => {
                let geometry = ConvGeometry { in_channels: c.geometry.in_channels * weights.len(), ..c.geometry };
                conv2d_backward_input(dy, &geometry, &stacked)
            }
            LinearLayer::Dense(d) => dense_backward_input(dy, d.inputs * weights.len(), &stacked),
        }
    }
}
