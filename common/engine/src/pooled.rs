//! The input gradient of a convolution whose output a 2x2 max-pool reads,
//! from the gradients of the pool's windows (`conv -> relu -> max_pool`,
//! every block of the presets: the ReLU between them passes a window's
//! gradient where the window's output is positive, which the caller
//! applies to the window gradients first).
//!
//! Of the convolution's outputs only the windows' winners receive a
//! gradient: a quarter of them, fewer where the ReLU stopped some. The
//! dense route (unpool, then the transposed convolution over every output)
//! multiplies the other three quarters' zeros as well. Here each winner's
//! gradient adds the convolution's kernel, scaled, into the input gradient
//! at the winner's receptive field: a quarter of the products or fewer, in
//! rows of whole vectors.
//!
//! The input gradient is accumulated channels-last (a receptive field's row
//! is then `kernel · in_channels` consecutive floats) and put back in the
//! engine's channels-first layout at the end. The winners of a window whose
//! same corner won share a receptive field: their products are summed in
//! registers (in channel order) and added to the input gradient once.
//! Every image is computed on its own, in a fixed order, and products and
//! sums are rounded as separate operations (no fused multiply-adds), so the
//! result has the same bits whatever the batch, the thread count or the
//! instruction set.

use rayon::prelude::*;

use crate::geometry::{ConvGeometry, PoolGeometry};
use crate::isa::{for_each_isa, Isa};

/// Floats in one vector of the accumulation (eight: a row of a receptive
/// field is rounded up to whole eight-float chunks, which every instruction
/// set's vectors divide or fill).
const CHUNK: usize = 8;

/// A stride-1 convolution and the 2x2 max-pool over its whole output, its
/// kernel laid out for scattering.
pub struct PooledConvGradient {
    conv: ConvGeometry,
    pool: PoolGeometry,
    /// Per output channel, per kernel row: the row's taps channels-last
    /// (`kernel · in_channels` floats, column then input channel), zeros
    /// up to `row` floats.
    kernel_rows: Vec<f32>,
    /// Floats of one kernel row in `kernel_rows`: a multiple of [`CHUNK`].
    row: usize,
}

impl PooledConvGradient {
    /// Whether this route applies: a stride-1 convolution whose whole
    /// output the pool reads.
    pub fn applies(conv: &ConvGeometry, pool: &PoolGeometry) -> bool {
        conv.stride == 1
            && pool.channels == conv.out_channels
            && pool.height == conv.out_height()
            && pool.width == conv.out_width()
    }

    /// The route for `conv` (with `weight`, out · in · k · k) and `pool`;
    /// panics where it does not apply (see [`PooledConvGradient::applies`]).
    pub fn new(conv: &ConvGeometry, weight: &[f32], pool: &PoolGeometry) -> Self {
        assert!(
            PooledConvGradient::applies(conv, pool),
            "conv -> relu -> max_pool gradient: the pool must read the whole output of a stride-1 convolution"
        );
        assert_eq!(weight.len(), conv.weight_len(), "conv2d weight length");
        let (k, cin) = (conv.kernel, conv.in_channels);
        let row = (k * cin).next_multiple_of(CHUNK);
        let mut kernel_rows = vec![0.0f32; conv.out_channels * k * row];
        for (o, rows) in kernel_rows.chunks_exact_mut(k * row).enumerate() {
            for (ky, dst) in rows.chunks_exact_mut(row).enumerate() {
                for kx in 0..k {
                    for c in 0..cin {
                        dst[kx * cin + c] = weight[((o * cin + c) * k + ky) * k + kx];
                    }
                }
            }
        }
        PooledConvGradient { conv: *conv, pool: *pool, kernel_rows, row }
    }

    /// The gradient at the convolution's input (N · in · H · W) from the
    /// gradient of each pool window `windows` (N · out · H/2 · W/2, after
    /// any ReLU between convolution and pool) and the pool's winners
    /// `argmax` (indices within an image of the pool's input, as
    /// [`crate::kernels::maxpool2x2_forward`] gives them).
    pub fn input_gradient(&self, windows: &[f32], argmax: &[u32]) -> Vec<f32> {
        let per_image = self.pool.out_len();
        assert_eq!(windows.len(), argmax.len(), "max-pool gradient and winner lengths");
        assert_eq!(windows.len() % per_image, 0, "max-pool gradient is not a whole number of images");
        let isa = Isa::detected();
        let mut dx = vec![0.0f32; windows.len() / per_image * self.conv.in_len()];
        dx.par_chunks_mut(self.conv.in_len())
            .zip(windows.par_chunks(per_image).zip(argmax.par_chunks(per_image)))
            .for_each_init(PooledScratch::default, |scratch, (dx, (gradients, argmax))| {
                self.image(isa, Winners { gradients, argmax }, scratch, dx)
            });
        dx
    }

    /// Floats from one row of the channels-last padded input gradient to
    /// the next: the padded width's pixels and a chunk's slack, into which
    /// the rightmost receptive fields' zero-padded rows reach.
    fn pitch(&self) -> usize {
        (self.conv.width + 2 * self.conv.padding) * self.conv.in_channels + CHUNK
    }

    /// One image's input gradient into `dx`, accumulated in `scratch`.
    pub(crate) fn image(&self, isa: Isa, winners: Winners, scratch: &mut PooledScratch, dx: &mut [f32]) {
        let g = &self.conv;
        let (pitch, padded_rows) = (self.pitch(), g.height + 2 * g.padding);
        scratch.group(&self.pool, winners);
        scratch.accumulated.clear();
        scratch.accumulated.resize(padded_rows * pitch, 0.0);
        scatter_kernels(isa, self, &scratch.groups, &mut scratch.accumulated);
        // Channels-last and padded to channels-first and unpadded.
        let (cin, plane, p) = (g.in_channels, g.height * g.width, g.padding);
        for y in 0..g.height {
            let row = &scratch.accumulated[(y + p) * pitch + p * cin..][..g.width * cin];
            for (x, pixel) in row.chunks_exact(cin).enumerate() {
                for (c, &value) in pixel.iter().enumerate() {
                    dx[c * plane + y * g.width + x] = value;
                }
            }
        }
    }
}

/// A thread's reusable buffers for one image.
#[derive(Default)]
pub(crate) struct PooledScratch {
    groups: WinnerGroups,
    /// Per window of every channel, its group in `groups`.
    keys: Vec<u32>,
    /// Per group, where its next entry goes.
    cursors: Vec<u32>,
    /// The input gradient, channels-last and padded (rows of
    /// [`PooledConvGradient::pitch`]).
    accumulated: Vec<f32>,
}

/// The kept winners of one image, grouped by window and, within a window,
/// by the corner that won (the four corners' receptive fields differ):
/// `entries[starts[4 w + c]..starts[4 w + c + 1]]` are the output channels
/// and gradients of window `w` (row-major over the pool's output) whose
/// corner `c` (row-major in the window) won, in channel order.
#[derive(Default)]
struct WinnerGroups {
    entries: Vec<(u32, f32)>,
    starts: Vec<u32>,
}

impl PooledScratch {
    /// Groups the winners of `winners` with a gradient: a counting sort
    /// by window and corner, taking the channels in order.
    fn group(&mut self, pool: &PoolGeometry, winners: Winners) {
        /// The group of a window that passes nothing.
        const NONE: u32 = u32::MAX;
        let Winners { gradients, argmax } = winners;
        let (width, plane) = (pool.width, pool.height * pool.width);
        let (pooled_rows, pooled_width) = (pool.out_height(), pool.out_width());
        let pooled_plane = pooled_rows * pooled_width;
        let groups = 4 * pooled_plane;
        let PooledScratch { groups: WinnerGroups { entries, starts }, keys, cursors, .. } = self;
        // Each window's group (4 · window + corner) and the groups' sizes.
        keys.clear();
        starts.clear();
        starts.resize(groups + 1, 0);
        let mut at = 0;
        for o in 0..pool.channels {
            for window_row in 0..pooled_rows {
                for window_column in 0..pooled_width {
                    let key = if gradients[at] == 0.0 {
                        NONE
                    } else {
                        // The winner is the window's top left input plus 0,
                        // 1, `width` or `width + 1`.
                        let top_left = o * plane + 2 * (window_row * width + window_column);
                        let offset = argmax[at] as usize - top_left;
                        let corner = if offset >= width { 2 + offset - width } else { offset };
                        let group = 4 * (window_row * pooled_width + window_column) + corner;
                        starts[group + 1] += 1;
                        group as u32
                    };
                    keys.push(key);
                    at += 1;
                }
            }
        }
        for group in 0..groups {
            starts[group + 1] += starts[group];
        }
        entries.resize(starts[groups] as usize, (0, 0.0));
        cursors.clear();
        cursors.extend_from_slice(&starts[..groups]);
        let channels = keys.chunks_exact(pooled_plane).zip(gradients.chunks_exact(pooled_plane));
        for (o, (keys, dpool)) in channels.enumerate() {
            for (&key, &gradient) in keys.iter().zip(dpool) {
                if key != NONE {
                    let cursor = &mut cursors[key as usize];
                    entries[*cursor as usize] = (o as u32, gradient);
                    *cursor += 1;
                }
            }
        }
    }
}

/// One image's window gradients and winners, window by window.
#[derive(Clone, Copy)]
pub(crate) struct Winners<'a> {
    pub gradients: &'a [f32],
    pub argmax: &'a [u32],
}

/// Floats of a receptive field's row that [`scatter_kernels`] sums in
/// registers at a time: twelve eight-float chunks (with the kernel's
/// chunk and the gradient, fourteen of AVX2's sixteen vector registers).
const BLOCK_CHUNKS: usize = 12;

for_each_isa! {
    /// Adds, for every kept winner in `groups`, its gradient times the
    /// kernel of its output channel into `accumulated` (channels-last,
    /// padded, rows of `pass.pitch()`) at its receptive field.
    fn scatter_kernels(pass: &PooledConvGradient, groups: &WinnerGroups, accumulated: &mut [f32]) = scatter_kernels_body
}

#[inline(always)]
fn scatter_kernels_body(pass: &PooledConvGradient, groups: &WinnerGroups, accumulated: &mut [f32]) {
    // A block of a kernel row at a time, so that the winners sharing a
    // receptive field sum their products in registers and add them to the
    // input gradient once.
    for ky in 0..pass.conv.kernel {
        for first in (0..pass.row).step_by(BLOCK_CHUNKS * CHUNK) {
            let block = Block { ky, first };
            match (pass.row - first).min(BLOCK_CHUNKS * CHUNK) / CHUNK {
                1 => scatter_block::<1>(pass, groups, block, accumulated),
                2 => scatter_block::<2>(pass, groups, block, accumulated),
                3 => scatter_block::<3>(pass, groups, block, accumulated),
                4 => scatter_block::<4>(pass, groups, block, accumulated),
                5 => scatter_block::<5>(pass, groups, block, accumulated),
                6 => scatter_block::<6>(pass, groups, block, accumulated),
                7 => scatter_block::<7>(pass, groups, block, accumulated),
                8 => scatter_block::<8>(pass, groups, block, accumulated),
                9 => scatter_block::<9>(pass, groups, block, accumulated),
                10 => scatter_block::<10>(pass, groups, block, accumulated),
                11 => scatter_block::<11>(pass, groups, block, accumulated),
                _ => scatter_block::<BLOCK_CHUNKS>(pass, groups, block, accumulated),
            }
        }
    }
}

/// Which part of the kernel [`scatter_block`] scatters: kernel row `ky`,
/// from float `first` of the row.
#[derive(Clone, Copy)]
struct Block {
    ky: usize,
    first: usize,
}

/// [`scatter_kernels`] for `CHUNKS` chunks of every kernel's row
/// `block.ky` from float `block.first` on.
#[inline(always)]
fn scatter_block<const CHUNKS: usize>(pass: &PooledConvGradient, groups: &WinnerGroups, block: Block, accumulated: &mut [f32]) {
    let g = &pass.conv;
    let (k, cin, row, pitch) = (g.kernel, g.in_channels, pass.row, pass.pitch());
    let pooled_width = pass.pool.out_width();
    for (group, bounds) in groups.starts.windows(2).enumerate() {
        let entries = &groups.entries[bounds[0] as usize..bounds[1] as usize];
        if entries.is_empty() {
            continue;
        }
        let (window, corner) = (group / 4, group % 4);
        let y = 2 * (window / pooled_width) + corner / 2;
        let x = 2 * (window % pooled_width) + corner % 2;
        let mut sums = [[0.0f32; CHUNK]; CHUNKS];
        for &(o, gradient) in entries {
            let taps = &pass.kernel_rows[(o as usize * k + block.ky) * row + block.first..][..CHUNKS * CHUNK];
            for (sum, taps) in sums.iter_mut().zip(taps.chunks_exact(CHUNK)) {
                for (s, &t) in sum.iter_mut().zip(taps) {
                    *s += gradient * t;
                }
            }
        }
        // The winner's output position is its receptive field's top left
        // corner in the padded input.
        let dst = &mut accumulated[(y + block.ky) * pitch + x * cin + block.first..][..CHUNKS * CHUNK];
        for (dst, sum) in dst.chunks_exact_mut(CHUNK).zip(&sums) {
            for (d, &s) in dst.iter_mut().zip(sum) {
                *d += s;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isa::TestedIsas;
    use crate::kernels::{conv2d_backward_input, conv2d_forward, maxpool2x2_backward, maxpool2x2_forward, relu_backward};
    use common::rng::Rng;

    #[test]
    fn scattering_matches_unpooling_and_the_transposed_convolution_on_every_instruction_set() {
        let shapes = [
            // (in, out, kernel, padding, height, width): the presets' blocks,
            // a block wider than the registers' (64 x 3 floats a kernel
            // row), odd sizes (a pool row and column left over), no padding.
            (1, 16, 5, 2, 28, 28),
            (16, 32, 5, 2, 14, 14),
            (64, 8, 3, 1, 6, 6),
            (3, 8, 3, 1, 9, 11),
            (5, 4, 3, 0, 10, 7),
        ];
        let isas = TestedIsas::new("scattering_matches_unpooling_and_the_transposed_convolution_on_every_instruction_set");
        for (cin, cout, kernel, padding, height, width) in shapes {
            let conv = ConvGeometry { in_channels: cin, out_channels: cout, kernel, padding, height, width, stride: 1 };
            let pool = PoolGeometry { channels: cout, height: conv.out_height(), width: conv.out_width() };
            let mut rng = Rng::new(cin as u64 * 31 + kernel as u64);
            let batch = 3;
            let x: Vec<f32> = (0..batch * conv.in_len()).map(|_| rng.uniform(-1.0, 1.0)).collect();
            let weight: Vec<f32> = (0..conv.weight_len()).map(|_| rng.uniform(-0.5, 0.5)).collect();
            // conv -> relu -> max_pool, and a gradient at the pool's output
            // through the ReLU (zero where a window's output is not positive).
            let activated: Vec<f32> = conv2d_forward(&x, &conv, &weight, None).iter().map(|v| v.max(0.0)).collect();
            let (pooled, argmax) = maxpool2x2_forward(&activated, &pool);
            let mut windows: Vec<f32> = (0..argmax.len()).map(|_| rng.uniform(-1.0, 1.0)).collect();
            relu_backward(&mut windows, &pooled);
            let want = conv2d_backward_input(&maxpool2x2_backward(&windows, &argmax, &pool), &conv, &weight);
            let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let route = PooledConvGradient::new(&conv, &weight, &pool);
            let per_image = pool.out_len();
            let mut reference: Option<Vec<f32>> = None;
            isas.each(|isa| {
                let mut got = vec![0.0f32; batch * conv.in_len()];
                for (i, dx) in got.chunks_exact_mut(conv.in_len()).enumerate() {
                    let winners = Winners {
                        gradients: &windows[i * per_image..][..per_image],
                        argmax: &argmax[i * per_image..][..per_image],
                    };
                    route.image(isa, winners, &mut PooledScratch::default(), dx);
                }
                let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
                assert!(
                    worst <= 1e-5 * scale,
                    "{cin}->{cout} {kernel}x{kernel} pad {padding} on {}: {worst} of {scale}",
                    isa.name()
                );
                // The same bits on every instruction set.
                match &reference {
                    None => reference = Some(got),
                    Some(first) => assert_eq!(first, &got, "{} differs from the first instruction set", isa.name()),
                }
            });
            assert_eq!(route.input_gradient(&windows, &argmax), reference.unwrap(), "the batch's images as each alone");
        }
    }
}
