//! Convolution kernels tuned for the explanation passes, and the forward
//! trace built on them.
//!
//! LRP and Grad-CAM spend nearly all their time in convolutions: the forward
//! pass, the gamma rule's forward pass on boosted weights, and the
//! backward-to-input passes. `common`'s kernels serve training first; these
//! are leaner for whole-batch inference: receptive fields are gathered with
//! contiguous row copies (no per-element bounds checks), several images
//! share one matrix product whose result is already in N·C·H·W order, and the
//! input gradient of a stride-1 convolution runs as a forward convolution of
//! the output gradient with the flipped, transposed kernel, so it reuses the
//! same fast path. Every product has the same shape whatever the batch (a
//! short last group is padded with zero images) and is computed by one
//! thread, so an image's result never depends on its batch or the thread
//! count.

use common::model::kernels::{conv2d_backward_input, dense_forward, maxpool2x2_forward, ConvGeometry};
use common::model::{Layer, Model, Trace};
use rayon::prelude::*;

use crate::error::ExplainError;

/// Columns (output positions of a group of images) per matrix product; the
/// group size is derived from it and the geometry only.
const COLUMNS_PER_PRODUCT: usize = 1024;
const MAX_IMAGES_PER_PRODUCT: usize = 16;

/// Below this many input channels the input gradient uses `common`'s
/// kernel: gathering the output gradient's receptive fields would move more
/// data than scattering the (few) input channels' rows.
const MIN_CHANNELS_FOR_TRANSPOSED_PASS: usize = 4;

thread_local! {
    /// Per-thread receptive fields and product of one group, reused across
    /// calls so that large buffers are not allocated and zeroed every time.
    static SCRATCH: std::cell::RefCell<(Vec<f32>, Vec<f32>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

fn images_per_product(g: &ConvGeometry) -> usize {
    let plane = (g.out_height() * g.out_width()).max(1);
    COLUMNS_PER_PRODUCT.div_ceil(plane).clamp(1, MAX_IMAGES_PER_PRODUCT)
}

/// `y = conv(x, weight) + bias` for a batch of images (N·C·H·W); the same
/// contract as `common::model::kernels::conv2d_forward`.
pub fn conv2d(x: &[f32], g: &ConvGeometry, weight: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    assert_eq!(x.len() % g.in_len().max(1), 0, "conv2d input is not a whole number of images");
    assert_eq!(weight.len(), g.weight_len(), "conv2d weight length");
    let group = images_per_product(g);
    let plane = g.out_height() * g.out_width();
    let (patch, channels, columns) = (g.patch_len(), g.out_channels, group * plane);
    let batch = x.len() / g.in_len().max(1);
    let mut y = vec![0.0f32; batch * g.out_len()];
    if batch == 0 || plane == 0 {
        return y;
    }
    y.par_chunks_mut(group * g.out_len()).zip(x.par_chunks(group * g.in_len())).for_each(|(out, images)| {
        SCRATCH.with(|scratch| {
            let (fields, product) = &mut *scratch.borrow_mut();
            // Every column is rewritten below, so stale contents are harmless.
            fields.resize(patch * columns, 0.0);
            product.resize(channels * columns, 0.0);
            let count = images.len() / g.in_len();
            for (i, image) in images.chunks_exact(g.in_len()).enumerate() {
                gather_fields(g, image, fields, i * plane, columns);
            }
            if count < group {
                for row in fields.chunks_exact_mut(columns) {
                    row[count * plane..].fill(0.0);
                }
            }
            matmul(product, weight, fields, channels, columns, patch);
            for (i, out_image) in out.chunks_exact_mut(g.out_len()).enumerate() {
                for (o, dst) in out_image.chunks_exact_mut(plane).enumerate() {
                    let src = &product[o * columns + i * plane..][..plane];
                    match bias {
                        Some(b) => dst.iter_mut().zip(src).for_each(|(d, &s)| *d = s + b[o]),
                        None => dst.copy_from_slice(src),
                    }
                }
            }
        })
    });
    y
}

/// The gradient of a convolution with respect to its input (N·C·H·W), given
/// the gradient at its output; the same contract as
/// `common::model::kernels::conv2d_backward_input`.
pub fn conv2d_input_gradient(dy: &[f32], g: &ConvGeometry, weight: &[f32]) -> Vec<f32> {
    if g.in_channels < MIN_CHANNELS_FOR_TRANSPOSED_PASS || g.padding >= g.kernel {
        return conv2d_backward_input(dy, g, weight);
    }
    let (transposed, flipped) = transposed_convolution(g, weight);
    conv2d(dy, &transposed, &flipped, None)
}

/// The convolution whose forward pass is `g`'s input gradient: channels
/// swapped, kernel flipped, padding `k - 1 - p`, on the output's plane.
fn transposed_convolution(g: &ConvGeometry, weight: &[f32]) -> (ConvGeometry, Vec<f32>) {
    let k = g.kernel;
    let transposed = ConvGeometry {
        in_channels: g.out_channels,
        out_channels: g.in_channels,
        kernel: k,
        padding: k - 1 - g.padding,
        height: g.out_height(),
        width: g.out_width(),
    };
    let mut flipped = vec![0.0f32; weight.len()];
    for o in 0..g.out_channels {
        for c in 0..g.in_channels {
            for ky in 0..k {
                for kx in 0..k {
                    flipped[((c * g.out_channels + o) * k + (k - 1 - ky)) * k + (k - 1 - kx)] =
                        weight[((o * g.in_channels + c) * k + ky) * k + kx];
                }
            }
        }
    }
    (transposed, flipped)
}

/// Writes one image's receptive fields into `fields` (rows `(c, ky, kx)`,
/// `columns` wide) at columns `offset..offset + plane`; outside the image
/// reads as zero.
fn gather_fields(g: &ConvGeometry, image: &[f32], fields: &mut [f32], offset: usize, columns: usize) {
    let (k, p) = (g.kernel, g.padding as isize);
    let (h, w) = (g.height as isize, g.width as isize);
    let (oh, ow) = (g.out_height(), g.out_width());
    let plane_in = g.height * g.width;
    for c in 0..g.in_channels {
        let channel = &image[c * plane_in..][..plane_in];
        for ky in 0..k {
            for kx in 0..k {
                let row = &mut fields[((c * k + ky) * k + kx) * columns + offset..][..oh * ow];
                let shift = kx as isize - p;
                // Output columns whose input column ox + shift lies inside the image.
                let lo = (-shift).clamp(0, ow as isize) as usize;
                let hi = (w - shift).clamp(lo as isize, ow as isize) as usize;
                for (oy, dst) in row.chunks_exact_mut(ow).enumerate() {
                    let iy = oy as isize + ky as isize - p;
                    if iy < 0 || iy >= h || lo == hi {
                        dst.fill(0.0);
                        continue;
                    }
                    let src = &channel[iy as usize * g.width..][..g.width];
                    dst[..lo].fill(0.0);
                    dst[lo..hi].copy_from_slice(&src[(lo as isize + shift) as usize..(hi as isize + shift) as usize]);
                    dst[hi..].fill(0.0);
                }
            }
        }
    }
}

/// `dst (m x n) = a (m x k) · b (k x n)`, all row-major, on this thread.
fn matmul(dst: &mut [f32], a: &[f32], b: &[f32], m: usize, n: usize, k: usize) {
    assert!(dst.len() >= m * n && a.len() >= m * k && b.len() >= k * n, "matmul operands too small");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        dst[..m * n].fill(0.0);
        return;
    }
    // SAFETY: the three row-major matrices were checked above to fit in
    // their slices for the given extents.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            1,
            n as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Runs the network on normalised images (N·C·H·W) and keeps every layer's
/// output, like `Model::forward_trace`, with this module's convolution.
pub fn forward_trace(model: &Model, x: &[f32]) -> Result<Trace, ExplainError> {
    let image_len = model.input.len();
    if x.is_empty() || image_len == 0 || x.len() % image_len != 0 {
        return Err(ExplainError::Shape(format!("input of {} floats is not a whole number of {} images", x.len(), model.input)));
    }
    let mut outputs: Vec<Vec<f32>> = Vec::with_capacity(model.layers.len());
    let mut argmax = Vec::with_capacity(model.layers.len());
    for layer in &model.layers {
        let input = outputs.last().map(Vec::as_slice).unwrap_or(x);
        let (output, winners) = match layer {
            Layer::Conv(c) => (conv2d(input, &c.geometry, &c.weight, Some(&c.bias)), None),
            Layer::Relu => (input.par_iter().with_min_len(1 << 14).map(|&v| v.max(0.0)).collect(), None),
            Layer::MaxPool(g) => {
                let (y, winners) = maxpool2x2_forward(input, g);
                (y, Some(winners))
            }
            Layer::Flatten => (input.to_vec(), None),
            Layer::Dense(d) => (dense_forward(input, d.inputs, &d.weight, Some(&d.bias)), None),
        };
        outputs.push(output);
        argmax.push(winners);
    }
    Ok(Trace { batch: x.len() / image_len, input: x.to_vec(), outputs, argmax })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{assert_close, random};
    use common::data::ImageShape;
    use common::model::kernels::conv2d_forward;
    use common::model::ModelKind;

    fn geometries() -> Vec<ConvGeometry> {
        vec![
            ConvGeometry { in_channels: 3, out_channels: 4, kernel: 3, padding: 1, height: 5, width: 6 },
            ConvGeometry { in_channels: 16, out_channels: 32, kernel: 5, padding: 2, height: 14, width: 14 },
            ConvGeometry { in_channels: 1, out_channels: 16, kernel: 5, padding: 2, height: 28, width: 28 },
            ConvGeometry { in_channels: 6, out_channels: 5, kernel: 3, padding: 0, height: 7, width: 5 },
            ConvGeometry { in_channels: 4, out_channels: 2, kernel: 2, padding: 0, height: 2, width: 2 },
            ConvGeometry { in_channels: 8, out_channels: 8, kernel: 3, padding: 1, height: 1, width: 1 },
        ]
    }

    #[test]
    fn matches_common_kernels() {
        for (i, g) in geometries().into_iter().enumerate() {
            let batch = 7;
            let x = random(batch * g.in_len(), 1 + i as u64, -1.0, 1.0);
            let w = random(g.weight_len(), 20 + i as u64, -1.0, 1.0);
            let b = random(g.out_channels, 40 + i as u64, -1.0, 1.0);
            let what = format!("{g:?}");
            assert_close(&conv2d(&x, &g, &w, Some(&b)), &conv2d_forward(&x, &g, &w, Some(&b)), 1e-5, &what);
            assert_close(&conv2d(&x, &g, &w, None), &conv2d_forward(&x, &g, &w, None), 1e-5, &what);
            let dy = random(batch * g.out_len(), 60 + i as u64, -1.0, 1.0);
            assert_close(&conv2d_input_gradient(&dy, &g, &w), &conv2d_backward_input(&dy, &g, &w), 1e-5, &what);
        }
    }

    #[test]
    fn results_do_not_depend_on_the_batch() {
        for (i, g) in geometries().into_iter().enumerate() {
            let batch = 2 * images_per_product(&g) + 3;
            let x = random(batch * g.in_len(), 80 + i as u64, -1.0, 1.0);
            let w = random(g.weight_len(), 90 + i as u64, -1.0, 1.0);
            let all = conv2d(&x, &g, &w, None);
            let dy = random(batch * g.out_len(), 100 + i as u64, -1.0, 1.0);
            let all_dx = conv2d_input_gradient(&dy, &g, &w);
            for n in [0, batch / 2, batch - 1] {
                let one = conv2d(&x[n * g.in_len()..(n + 1) * g.in_len()], &g, &w, None);
                assert_eq!(&all[n * g.out_len()..(n + 1) * g.out_len()], &one[..], "{g:?} image {n}");
                let one_dx = conv2d_input_gradient(&dy[n * g.out_len()..(n + 1) * g.out_len()], &g, &w);
                assert_eq!(&all_dx[n * g.in_len()..(n + 1) * g.in_len()], &one_dx[..], "{g:?} gradient {n}");
            }
        }
    }

    #[test]
    fn the_trace_matches_the_models_own() {
        let model = Model::initialized(ModelKind::Complex, ImageShape { channels: 3, height: 16, width: 16 }, 10, 3);
        let x = random(5 * model.input.len(), 4, -1.0, 1.0);
        let ours = forward_trace(&model, &x).unwrap();
        let theirs = model.forward_trace(&x).unwrap();
        assert_eq!((ours.batch, ours.outputs.len()), (theirs.batch, theirs.outputs.len()));
        for (a, b) in ours.outputs.iter().zip(&theirs.outputs) {
            assert_close(a, b, 1e-4, "layer output");
        }
        assert!(forward_trace(&model, &x[..100]).is_err());
    }
}
