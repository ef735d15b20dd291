//! The project's convolution and max-pool kernels as operations on dfdx's
//! autodiff tape.
//!
//! dfdx 0.13 gates its own Conv2D and pooling behind the `nightly` feature,
//! which does not build on a stable toolchain. These ops run our kernels in
//! the forward pass and register the matching backward pass with the public
//! `Tape::add_backward_op` and `Gradients::get_or_alloc_mut`.

use dfdx::prelude::{Cpu, HasShape, PutTape, Shape, SplitTape, Tape, Tensor, TensorFromVec};

use std::sync::{Arc, Mutex, PoisonError};

use rayon::prelude::*;

use crate::conv_stack::ConvStack;
use crate::geometry::PoolGeometry;
use crate::kernels;
use crate::layers::Dense;

/// Activations of a batch of images: (batch, channels, height, width).
pub(crate) type Planes<T> = Tensor<(usize, usize, usize, usize), f32, Cpu, T>;
/// Activations of a batch of row vectors: (batch, features).
pub(crate) type Rows<T> = Tensor<(usize, usize), f32, Cpu, T>;

/// Where the ops put the gradients of the model's parameters, one slot per
/// parameter in the order of [`crate::network::Model::parameters`]. Every
/// parameter is used once, so its gradient is written once and moved
/// here, where dfdx's store would allocate a zeroed buffer for it and add
/// the gradient in (and every parameter would need a tensor, a copy of
/// its values, for its place in that store: together about a twentieth of
/// a complex model's step, most of it on one thread).
#[derive(Clone)]
pub(crate) struct ParameterGradients(Arc<Mutex<Vec<Option<Vec<f32>>>>>);

/// The slot of a layer's weight; its bias's is the next.
#[derive(Clone, Copy)]
pub(crate) struct ParameterSlot(pub(crate) usize);

impl ParameterGradients {
    pub(crate) fn new(parameters: usize) -> Self {
        ParameterGradients(Arc::new(Mutex::new(vec![None; parameters])))
    }

    /// The gradients of a layer's weight and bias, from its backward op.
    fn put(&self, ParameterSlot(weight): ParameterSlot, (dw, db): (Vec<f32>, Vec<f32>)) {
        // A panic elsewhere while the lock was held leaves whole slots.
        let mut slots = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        assert!(slots[weight].is_none() && slots[weight + 1].is_none(), "a parameter's gradient is written once");
        (slots[weight], slots[weight + 1]) = (Some(dw), Some(db));
    }

    /// Every parameter's gradient, zeros where no gradient reached it
    /// (`lengths` gives each parameter's).
    pub(crate) fn into_gradients(self, lengths: &[usize]) -> Vec<Vec<f32>> {
        let slots = std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner));
        assert_eq!(slots.len(), lengths.len(), "a gradient slot per parameter");
        slots.into_iter().zip(lengths).map(|(slot, &len)| slot.unwrap_or_else(|| vec![0.0; len])).collect()
    }
}

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
/// [`ConvStack`]). The blocks' weight and bias gradients go to
/// `parameters`, from slot `first` on in block order; `x` receives one
/// where the stack passes it.
pub(crate) fn conv_stack<T: Tape<f32, Cpu>>(
    dev: &Cpu,
    x: Planes<T>,
    stack: ConvStack,
    (parameters, ParameterSlot(first)): (ParameterGradients, ParameterSlot),
) -> Planes<T> {
    let (x, mut tape) = x.split_tape();
    let batch = x.shape().0;
    let (y, saved) = stack.forward(&data_of(&x));
    let (channels, height, width) = stack.output_shape();
    let out = dev.tensor_from_vec(y, (batch, channels, height, width));
    let (x_ghost, out_ghost) = (x.ghost(), out.ghost());
    tape.add_backward_op(move |grads| {
        // The output gradient is moved out while the others are written,
        // then put back.
        let dy = std::mem::take(&mut **grads.get_or_alloc_mut(&out_ghost)?);
        let (param_grads, dx) = stack.backward(&saved, &dy);
        for (block, gradients) in param_grads.into_iter().enumerate() {
            parameters.put(ParameterSlot(first + 2 * block), gradients);
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

/// The dense `layer` on rows `x` as one tape op through gemm. Its weight
/// and bias gradients go to `parameters` at `slot`, and `x` receives one.
pub(crate) fn dense<T: Tape<f32, Cpu>>(
    dev: &Cpu,
    x: Rows<T>,
    layer: &Dense,
    (parameters, slot): (ParameterGradients, ParameterSlot),
) -> Rows<T> {
    let (x, mut tape) = x.split_tape();
    let x_data = data_of(&x);
    let y = kernels::dense_batch_forward(&x_data, layer.inputs, &layer.weight, &layer.bias);
    let out = dev.tensor_from_vec(y, (x.shape().0, layer.outputs));
    let (inputs, weight) = (layer.inputs, Arc::clone(&layer.weight));
    let (x_ghost, out_ghost) = (x.ghost(), out.ghost());
    tape.add_backward_op(move |grads| {
        let dy = std::mem::take(&mut **grads.get_or_alloc_mut(&out_ghost)?);
        let (dw, db, dx) = kernels::dense_batch_backward(&x_data, &dy, inputs, &weight);
        parameters.put(slot, (dw, db));
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
