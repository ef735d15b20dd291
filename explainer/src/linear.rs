//! A convolution or dense layer seen as "a linear map with a weight and a
//! bias": the one shape every LRP rule works on.
//!
//! LRP rules differ only in which weights and inputs they push through the
//! layer (positive parts, gamma-boosted weights, the input bounds, ...). With
//! this view a rule is written once, as data, and runs on both layer kinds
//! through the project's batched kernels (forward and backward-to-input).

use common::model::kernels::dense_forward;
use common::model::{Conv2d, ConvGeometry, Dense, Layer};

use crate::conv::{conv2d, conv2d_input_gradient};

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
            LinearLayer::Conv(c) => conv2d(x, &c.geometry, weight, bias),
            LinearLayer::Dense(d) => dense_forward(x, d.inputs, weight, bias),
        }
    }

    /// `weightᵀ · dy`: the gradient with respect to the input for a batch.
    pub fn backward_input(&self, dy: &[f32], weight: &[f32]) -> Vec<f32> {
        match self {
            LinearLayer::Conv(c) => conv2d_input_gradient(dy, &c.geometry, weight),
            LinearLayer::Dense(d) => dense_input_gradient(dy, d.inputs, weight),
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
                conv2d_input_gradient(dy, &geometry, &stacked)
            }
            LinearLayer::Dense(d) => dense_input_gradient(dy, d.inputs * weights.len(), &stacked),
        }
    }
}

/// `dx = dy · weight` for a batch of rows (`weight` is `[out, in]`), with
/// every row's result independent of the batch it is in.
///
/// `common`'s `dense_backward_input` hands gemm the weight row-major, and
/// gemm then sums a lone row in another order than rows of a larger block,
/// so a map would change in its last bits with the batch around it. The
/// forward kernel (weight read transposed) has no such dependence, so the
/// backward pass runs as a forward pass through the transposed weight.
pub fn dense_input_gradient(dy: &[f32], inputs: usize, weight: &[f32]) -> Vec<f32> {
    let outputs = weight.len() / inputs.max(1);
    let mut transposed = vec![0.0f32; weight.len()];
    for (o, row) in weight.chunks_exact(inputs).enumerate() {
        for (i, &w) in row.iter().enumerate() {
            transposed[i * outputs + o] = w;
        }
    }
    dense_forward(dy, outputs, &transposed, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::random;

    #[test]
    fn dense_input_gradient_is_the_transpose_and_batch_independent() {
        for (inputs, outputs) in [(3usize, 2usize), (128, 1024), (2048, 10), (37, 5)] {
            let weight = random(inputs * outputs, 1, -1.0, 1.0);
            let dy = random(21 * outputs, 2, -1.0, 1.0);
            let all = dense_input_gradient(&dy, inputs, &weight);
            for n in [0, 1, 15, 16, 20] {
                let row = &dy[n * outputs..(n + 1) * outputs];
                for i in (0..inputs).step_by(7) {
                    let expected: f32 = (0..outputs).map(|o| row[o] * weight[o * inputs + i]).sum();
                    assert!((all[n * inputs + i] - expected).abs() < 1e-4 * (1.0 + expected.abs()));
                }
            }
            for batch in 1..=21 {
                let part = dense_input_gradient(&dy[..batch * outputs], inputs, &weight);
                assert_eq!(&all[..batch * inputs], &part[..], "{inputs}x{outputs}, batch {batch}");
                let last = dense_input_gradient(&dy[(batch - 1) * outputs..batch * outputs], inputs, &weight);
                assert_eq!(&all[(batch - 1) * inputs..batch * inputs], &last[..], "{inputs}x{outputs}, row {batch} alone");
            }
        }
    }
}
