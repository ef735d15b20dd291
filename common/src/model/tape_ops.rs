//! The project's convolution and max-pool kernels as operations on dfdx's
//! autodiff tape.
//!
//! dfdx 0.13 gates its own Conv2D and pooling behind the `nightly` feature,
//! which does not build on a stable toolchain. These ops run our kernels in
//! the forward pass and register the matching backward pass with the public
//! `Tape::add_backward_op` and `Gradients::get_or_alloc_mut`.

use dfdx::prelude::{Cpu, HasShape, PutTape, Shape, SplitTape, Tape, Tensor, TensorFromVec};

use rayon::prelude::*;

use super::kernels::{self, ConvGeometry, PoolGeometry};

/// Activations of a batch of images: (batch, channels, height, width).
pub(crate) type Planes<T> = Tensor<(usize, usize, usize, usize), f32, Cpu, T>;
/// A flat parameter tensor.
pub(crate) type Flat = Tensor<(usize,), f32, Cpu>;

fn add_into(dst: &mut [f32], delta: &[f32]) {
    dst.par_iter_mut().with_min_len(1 << 14).zip(delta.par_iter()).for_each(|(a, b)| *a += b);
}

/// The data of a contiguous tensor (dfdx's `as_vec` walks it element by
/// element; this is one copy).
pub(crate) fn data_of<S: Shape, T>(t: &Tensor<S, f32, Cpu, T>) -> Vec<f32> {
    let mut out = vec![0.0f32; t.shape().num_elements()];
    t.copy_into(&mut out);
    out
}

/// What follows a convolution inside one tape op: an optional ReLU and an
/// optional 2x2 max-pool after it. Fusing them keeps the convolution's
/// output out of dfdx's tensors (no copy into and out of the tape, no
/// zeroed gradient buffer of its size).
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConvBlock {
    pub geometry: ConvGeometry,
    pub relu: bool,
    pub pool: Option<PoolGeometry>,
    /// Whether gradients flow to the block's input (the first layer's
    /// input, the image, needs none).
    pub input_gradient: bool,
}

/// The block's convolution of `x` with the flat `weight` and `bias`
/// tensors, then its ReLU and max-pool. Gradients flow to the weight and
/// bias, and to `x` when the block asks for them.
pub(crate) fn conv_block<T: Tape<f32, Cpu>>(dev: &Cpu, x: Planes<T>, block: ConvBlock, weight: &Flat, bias: &Flat) -> Planes<T> {
    let (x, mut tape) = x.split_tape();
    let batch = x.shape().0;
    let geometry = block.geometry;
    let x_data = data_of(&x);
    let w_data = data_of(weight);
    let bias_data = data_of(bias);
    let (y, argmax, shape) = match block.pool {
        Some(pool) => {
            let (pooled, argmax) =
                kernels::conv2d_forward_pooled(&x_data, &geometry, &w_data, Some(&bias_data), block.relu, &pool);
            (pooled, Some(argmax), (batch, pool.channels, pool.out_height(), pool.out_width()))
        }
        None => {
            let y = kernels::conv2d_forward_with(&x_data, &geometry, &w_data, Some(&bias_data), block.relu);
            (y, None, (batch, geometry.out_channels, geometry.out_height(), geometry.out_width()))
        }
    };
    // The ReLU passes gradient where its output is positive; after a pool,
    // that is where the window's winner (the pooled value) is.
    let active: Option<Vec<bool>> = block.relu.then(|| y.par_iter().with_min_len(1 << 14).map(|&v| v > 0.0).collect());
    let out = dev.tensor_from_vec(y, shape);
    let (x_ghost, w_ghost, b_ghost, out_ghost) = (x.ghost(), weight.ghost(), bias.ghost(), out.ghost());
    tape.add_backward_op(move |grads| {
        // The output gradient is moved out while input gradients are
        // written, then put back. It goes back masked by the ReLU: nothing
        // reads it after this op, and a copy of it would cost a pass.
        let mut dy = std::mem::take(&mut **grads.get_or_alloc_mut(&out_ghost)?);
        if let Some(active) = &active {
            dy.par_iter_mut().with_min_len(1 << 14).zip(active.par_iter()).for_each(|(d, &a)| {
                if !a {
                    *d = 0.0
                }
            });
        }
        let unpooled = match (&block.pool, &argmax) {
            (Some(pool), Some(argmax)) => Some(kernels::maxpool2x2_backward(&dy, argmax, pool)),
            _ => None,
        };
        let dconv = unpooled.as_deref().unwrap_or(&dy);
        let (dw, db) = kernels::conv2d_backward_params(&x_data, dconv, &geometry);
        add_into(grads.get_or_alloc_mut(&w_ghost)?, &dw);
        add_into(grads.get_or_alloc_mut(&b_ghost)?, &db);
        if block.input_gradient {
            let dx = kernels::conv2d_backward_input(dconv, &geometry, &w_data);
            add_into(grads.get_or_alloc_mut(&x_ghost)?, &dx);
        }
        **grads.get_or_alloc_mut(&out_ghost)? = dy;
        Ok(())
    });
    out.put_tape(tape)
}

/// 2x2, stride-2 max-pool.
pub(crate) fn maxpool2x2<T: Tape<f32, Cpu>>(dev: &Cpu, x: Planes<T>, geometry: PoolGeometry) -> Planes<T> {
    let (x, mut tape) = x.split_tape();
    let batch = x.shape().0;
    let (y, argmax) = kernels::maxpool2x2_forward(&data_of(&x), &geometry);
    let out = dev.tensor_from_vec(y, (batch, geometry.channels, geometry.out_height(), geometry.out_width()));
    let (x_ghost, out_ghost) = (x.ghost(), out.ghost());
    tape.add_backward_op(move |grads| {
        let dy = std::mem::take(&mut **grads.get_or_alloc_mut(&out_ghost)?);
        let dx = kernels::maxpool2x2_backward(&dy, &argmax, &geometry);
        add_into(grads.get_or_alloc_mut(&x_ghost)?, &dx);
        **grads.get_or_alloc_mut(&out_ghost)? = dy;
        Ok(())
    });
    out.put_tape(tape)
}
