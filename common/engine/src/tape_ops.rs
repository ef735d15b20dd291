//! The project's convolution and max-pool kernels as operations on dfdx's
//! autodiff tape.
//!
//! dfdx 0.13 gates its own Conv2D and pooling behind the `nightly` feature,
//! which does not build on a stable toolchain. These ops run our kernels in
//! the forward pass and register the matching backward pass with the public
//! `Tape::add_backward_op` and `Gradients::get_or_alloc_mut`.

use dfdx::prelude::{Cpu, HasShape, PutTape, Shape, SplitTape, Tape, Tensor, TensorFromVec};

use rayon::prelude::*;

use crate::conv_stack::ConvStack;
use crate::geometry::PoolGeometry;
use crate::kernels;
use crate::layers::Dense;

/// Activations of a batch of images: (batch, channels, height, width).
pub(crate) type Planes<T> = Tensor<(usize, usize, usize, usize), f32, Cpu, T>;
/// Activations of a batch of row vectors: (batch, features).
pub(crate) type Rows<T> = Tensor<(usize, usize), f32, Cpu, T>;
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

/// The blocks of `stack` applied to `x` as one tape op, image by image (see
/// [`ConvStack`]); `params` are the blocks' weight and bias tensors, in
/// order. Gradients flow to every parameter, and to `x` when the stack
/// passes them.
pub(crate) fn conv_stack<T: Tape<f32, Cpu>>(dev: &Cpu, x: Planes<T>, stack: ConvStack, params: &[(Flat, Flat)]) -> Planes<T> {
    let (x, mut tape) = x.split_tape();
    let batch = x.shape().0;
    let (y, saved) = stack.forward(&data_of(&x));
    let (channels, height, width) = stack.output_shape();
    let out = dev.tensor_from_vec(y, (batch, channels, height, width));
    let param_ghosts: Vec<_> = params.iter().map(|(w, b)| (w.ghost(), b.ghost())).collect();
    let (x_ghost, out_ghost) = (x.ghost(), out.ghost());
    tape.add_backward_op(move |grads| {
        // The output gradient is moved out while the others are written,
        // then put back.
        let dy = std::mem::take(&mut **grads.get_or_alloc_mut(&out_ghost)?);
        let (param_grads, dx) = stack.backward(&saved, &dy);
        for ((w_ghost, b_ghost), (dw, db)) in param_ghosts.iter().zip(param_grads) {
            add_into(grads.get_or_alloc_mut(w_ghost)?, &dw);
            add_into(grads.get_or_alloc_mut(b_ghost)?, &db);
        }
        if let Some(dx) = dx {
            add_into(grads.get_or_alloc_mut(&x_ghost)?, &dx);
        }
        **grads.get_or_alloc_mut(&out_ghost)? = dy;
        stack.recycle(saved);
        Ok(())
    });
    out.put_tape(tape)
}

/// The dense `layer` on rows `x`, with its flat `weight` and `bias`
/// tensors (holding the layer's values), as one tape op through gemm.
/// Gradients flow to the weight, the bias and `x`.
pub(crate) fn dense<T: Tape<f32, Cpu>>(dev: &Cpu, x: Rows<T>, layer: &Dense, weight: &Flat, bias: &Flat) -> Rows<T> {
    let (x, mut tape) = x.split_tape();
    let x_data = data_of(&x);
    let y = kernels::dense_batch_forward(&x_data, layer.inputs, &layer.weight, &layer.bias);
    let out = dev.tensor_from_vec(y, (x.shape().0, layer.outputs));
    let (inputs, w_data) = (layer.inputs, layer.weight.clone());
    let (x_ghost, w_ghost, b_ghost, out_ghost) = (x.ghost(), weight.ghost(), bias.ghost(), out.ghost());
    tape.add_backward_op(move |grads| {
        let dy = std::mem::take(&mut **grads.get_or_alloc_mut(&out_ghost)?);
        let (dw, db, dx) = kernels::dense_batch_backward(&x_data, &dy, inputs, &w_data);
        add_into(grads.get_or_alloc_mut(&w_ghost)?, &dw);
        add_into(grads.get_or_alloc_mut(&b_ghost)?, &db);
        add_into(grads.get_or_alloc_mut(&x_ghost)?, &dx);
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

/// 2x2, stride-2 average pool.
pub(crate) fn avgpool2x2<T: Tape<f32, Cpu>>(dev: &Cpu, x: Planes<T>, geometry: PoolGeometry) -> Planes<T> {
    let (x, mut tape) = x.split_tape();
    let batch = x.shape().0;
    let y = kernels::avgpool2x2_forward(&data_of(&x), &geometry);
    let out = dev.tensor_from_vec(y, (batch, geometry.channels, geometry.out_height(), geometry.out_width()));
    let (x_ghost, out_ghost) = (x.ghost(), out.ghost());
    tape.add_backward_op(move |grads| {
        let dy = std::mem::take(&mut **grads.get_or_alloc_mut(&out_ghost)?);
        add_into(grads.get_or_alloc_mut(&x_ghost)?, &kernels::avgpool2x2_backward(&dy, &geometry));
        **grads.get_or_alloc_mut(&out_ghost)? = dy;
        Ok(())
    });
    out.put_tape(tape)
}

/// `x` times `scale` (a dropout mask: 0 or `1 / (1 - rate)` per value),
/// whose gradient is the output's times the same mask.
pub(crate) fn scaled<S: Shape, T: Tape<f32, Cpu>>(
    dev: &Cpu,
    x: Tensor<S, f32, Cpu, T>,
    scale: Vec<f32>,
) -> Tensor<S, f32, Cpu, T> {
    let (x, mut tape) = x.split_tape();
    let y: Vec<f32> = data_of(&x).iter().zip(&scale).map(|(v, s)| v * s).collect();
    let out = dev.tensor_from_vec(y, *x.shape());
    let (x_ghost, out_ghost) = (x.ghost(), out.ghost());
    tape.add_backward_op(move |grads| {
        let dy = std::mem::take(&mut **grads.get_or_alloc_mut(&out_ghost)?);
        let dx: Vec<f32> = dy.iter().zip(&scale).map(|(d, s)| d * s).collect();
        add_into(grads.get_or_alloc_mut(&x_ghost)?, &dx);
        **grads.get_or_alloc_mut(&out_ghost)? = dy;
        Ok(())
    });
    out.put_tape(tape)
}
