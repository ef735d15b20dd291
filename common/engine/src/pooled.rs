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

use crate::geometry::{ConvGeometry, PoolGeometry, RowLayout};
use crate::isa::Isa;
use crate::kernels::sum_in_order;
use crate::microkernels::{relu_gradient, transpose, Lanes};

/// A receptive field's row is rounded up to a multiple of this many
/// floats: whole vectors of AVX2 and of the portable code (AVX-512 takes
/// sixteen where the rows allow it).
const CHUNK: usize = 8;

/// A stride-1 convolution and the 2x2 max-pool over its whole output, its
/// kernel laid out for scattering.
pub struct PooledConvGradient {
    conv: ConvGeometry,
    pool: PoolGeometry,
    /// Per output channel, per kernel row: the row's taps channels-last
    /// (`kernel · in_channels` floats, column then input channel), zeros
    /// up to `row` floats.
    kernel_rows: LineAligned,
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
        let mut kernel_rows = LineAligned::default();
        kernel_rows.zeroed(conv.out_channels * k * row);
        for (o, rows) in kernel_rows.as_mut_slice().chunks_exact_mut(k * row).enumerate() {
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
        dx.par_chunks_mut(self.conv.in_len()).zip(windows.par_chunks(per_image).zip(argmax.par_chunks(per_image))).for_each_init(
            PooledScratch::default,
            |scratch, (dx, (gradients, argmax))| {
                self.image(isa, Winners { gradients, argmax }, scratch, dx, BeforeInput::Nothing)
            },
        );
        dx
    }

    /// The max-pool over the convolution's output.
    pub(crate) fn pool(&self) -> &PoolGeometry {
        &self.pool
    }

    /// Adds one image's weight and bias gradients to the sums in
    /// `scratch`, which [`PooledConvGradient::take_param_gradients`] hands
    /// over. `input` is the image's convolution input, its rows where
    /// `layout` places them.
    ///
    /// Only the winners' gradients are not zero, so each output channel's
    /// weight gradient is the sum over its winners of the gradient times
    /// the receptive field: summed in registers, a block of a kernel row at
    /// a time, and added to the channel's sums once.
    pub(crate) fn add_param_gradients(
        &self,
        isa: Isa,
        winners: Winners,
        (input, layout): (&[f32], RowLayout),
        scratch: &mut PooledScratch,
    ) {
        let g = &self.conv;
        // The input channels-last into the padded buffer's interior.
        let (pitch, padded_rows, p, cin) = (self.pitch(), g.height + 2 * g.padding, g.padding, g.in_channels);
        if scratch.input.len() != padded_rows * pitch {
            scratch.input.zeroed(padded_rows * pitch);
        }
        let (plane, row, first) = layout;
        for y in 0..g.height {
            let dst = &mut scratch.input.as_mut_slice()[(y + p) * pitch + p * cin..][..g.width * cin];
            transpose(isa, &input[y * row + first..], (cin, plane), g.width, (dst, cin));
        }
        let kernel_len = g.kernel * self.row;
        if scratch.weight_sums.is_empty() {
            // Room for the biases, which the partial sum takes after them.
            scratch.weight_sums.reserve_exact(self.partial_len());
            scratch.weight_sums.resize(g.out_channels * kernel_len, 0.0);
        }
        scratch.bias_sums.resize(g.out_channels, 0.0);
        let Winners { gradients, argmax } = winners;
        let (width, pooled_plane) = (self.pool.width, self.pool.out_len() / g.out_channels);
        for o in 0..g.out_channels {
            // The channel's winners with a gradient, in window order.
            scratch.fields.clear();
            let mut bias = 0.0f32;
            for window in 0..pooled_plane {
                let at = o * pooled_plane + window;
                let gradient = gradients[at];
                if gradient == 0.0 {
                    continue;
                }
                let position = argmax[at] as usize - o * g.out_plane();
                let (y, x) = (position / width, position % width);
                scratch.fields.push((y * pitch + x * cin, gradient));
                bias += gradient;
            }
            let sums = &mut scratch.weight_sums[o * kernel_len..][..kernel_len];
            add_field_sums(isa, self, &scratch.fields, scratch.input.as_slice(), sums);
            scratch.bias_sums[o] += bias;
        }
    }

    /// Floats of a partial sum: every output channel's kernel rows (as
    /// `kernel_rows` lays them out), then the biases.
    fn partial_len(&self) -> usize {
        self.conv.out_channels * (self.conv.kernel * self.row + 1)
    }

    /// Hands over the sums [`PooledConvGradient::add_param_gradients`]
    /// gathered in `scratch` (zeros where no image was added) as a partial
    /// sum that [`PooledConvGradient::finish`] reads, and starts them
    /// again from zero. The sums keep their own layout, per output channel
    /// its kernel rows, until the partial sums are added: one reordering
    /// per step, not one per group of images.
    pub(crate) fn take_param_gradients(&self, scratch: &mut PooledScratch) -> Vec<f32> {
        let mut partial = std::mem::take(&mut scratch.weight_sums);
        if partial.is_empty() {
            // No image was added.
            return vec![0.0; self.partial_len()];
        }
        partial.extend_from_slice(&scratch.bias_sums);
        assert_eq!(partial.len(), self.partial_len(), "a partial sum of every kernel row and the biases");
        scratch.bias_sums.fill(0.0);
        partial
    }

    /// The weight `[out][in][ky][kx]` and bias gradients from the partial
    /// sums of the groups of images, added in their order.
    pub(crate) fn finish(&self, partials: &[Vec<f32>]) -> (Vec<f32>, Vec<f32>) {
        let g = &self.conv;
        let total = sum_in_order(partials, self.partial_len());
        let (k, cin, kernel_len) = (g.kernel, g.in_channels, g.kernel * self.row);
        // A kernel row's float `kx·cin + c` is tap `(c·k + ky)·k + kx`.
        let mut dw = Vec::with_capacity(g.weight_len());
        for sums in total.chunks_exact(kernel_len).take(g.out_channels) {
            for c in 0..cin {
                for ky in 0..k {
                    dw.extend((0..k).map(|kx| sums[ky * self.row + kx * cin + c]));
                }
            }
        }
        (dw, total[g.out_channels * kernel_len..].to_vec())
    }

    /// Floats from one row of the channels-last padded input gradient to
    /// the next: the padded width's pixels and a chunk's slack, into which
    /// the rightmost receptive fields' zero-padded rows reach.
    fn pitch(&self) -> usize {
        ((self.conv.width + 2 * self.conv.padding) * self.conv.in_channels + CHUNK).next_multiple_of(LINE_FLOATS)
    }

    /// One image's input gradient into `dx`, accumulated in `scratch`,
    /// and then passed back through what lies before the input.
    pub(crate) fn image(&self, isa: Isa, winners: Winners, scratch: &mut PooledScratch, dx: &mut [f32], before: BeforeInput) {
        let g = &self.conv;
        let (pitch, padded_rows) = (self.pitch(), g.height + 2 * g.padding);
        if before == BeforeInput::ReluOfAddedInput {
            assert_eq!(scratch.input.len(), padded_rows * pitch, "a ReLU's mask from an added input of this convolution");
        }
        scratch.group(&self.pool, winners);
        scratch.accumulated.zeroed(padded_rows * pitch);
        scatter_kernels(isa, self, &scratch.groups, scratch.accumulated.as_mut_slice());
        // Channels-last and padded to channels-first and unpadded: each
        // row's pixels (rows of `cin` floats) into every channel's plane.
        // The ReLU's mask goes on the row while it is in the core's first
        // cache: the input is laid out as the gradient.
        let (cin, plane, p) = (g.in_channels, g.height * g.width, g.padding);
        for y in 0..g.height {
            let at = (y + p) * pitch + p * cin;
            let row = &mut scratch.accumulated.as_mut_slice()[at..][..g.width * cin];
            if before == BeforeInput::ReluOfAddedInput {
                relu_gradient(isa, row, &scratch.input.as_slice()[at..][..g.width * cin]);
            }
            transpose(isa, row, (g.width, cin), cin, (&mut dx[y * g.width..], plane));
        }
    }
}

/// What lies between a pooled convolution's input and the layer before
/// it, for [`PooledConvGradient::image`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BeforeInput {
    /// Nothing the gradient passes through here.
    Nothing,
    /// A ReLU, whose output is the input that
    /// [`PooledConvGradient::add_param_gradients`] took last with the same
    /// scratch: the gradient passes where that input is positive. Masking
    /// one image's gradient as it is written saves a pass over it (a
    /// block's whole output where no pool comes between).
    ReluOfAddedInput,
}

/// Floats in a cache line.
const LINE_FLOATS: usize = 16;

/// Floats used from the first cache-line boundary of their allocation:
/// a receptive field's row (`x · in_channels` floats into a row of
/// [`PooledConvGradient::pitch`], a multiple of a line) and a kernel row
/// then start on a line where the channels fill whole lines, so that no
/// vector load or store straddles two lines.
#[derive(Default)]
struct LineAligned {
    values: Vec<f32>,
    len: usize,
}

impl LineAligned {
    /// Makes it `len` zeros.
    fn zeroed(&mut self, len: usize) {
        self.values.clear();
        self.values.resize(len + LINE_FLOATS - 1, 0.0);
        self.len = len;
    }

    fn len(&self) -> usize {
        self.len
    }

    fn start(&self) -> usize {
        self.values.as_ptr().align_offset(LINE_FLOATS * std::mem::size_of::<f32>())
    }

    fn as_slice(&self) -> &[f32] {
        &self.values[self.start()..][..self.len]
    }

    fn as_mut_slice(&mut self) -> &mut [f32] {
        let start = self.start();
        &mut self.values[start..][..self.len]
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
    accumulated: LineAligned,
    /// The convolution's input laid out as `accumulated`, for the weight
    /// gradient; its border stays zero from one image to the next.
    input: LineAligned,
    /// One output channel's winners: where each receptive field starts in
    /// `input`, and its gradient.
    fields: Vec<(usize, f32)>,
    /// Per output channel, the weight gradient laid out as its kernel's
    /// rows in `kernel_rows`, and the bias gradient, summed over the images
    /// added since they were last taken.
    weight_sums: Vec<f32>,
    bias_sums: Vec<f32>,
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
        // Each window's group (4 · window + corner) and the groups' sizes,
        // a row of windows at a time (slices rather than pushes: the loop
        // is short and runs for every window of every image).
        keys.clear();
        keys.resize(gradients.len(), NONE);
        starts.clear();
        starts.resize(groups + 1, 0);
        if pooled_plane == 0 {
            entries.clear();
            return;
        }
        let sizes = &mut starts[1..];
        let window_rows =
            keys.chunks_exact_mut(pooled_width).zip(gradients.chunks_exact(pooled_width).zip(argmax.chunks_exact(pooled_width)));
        for (at, (keys, (gradients, argmax))) in window_rows.enumerate() {
            let (o, window_row) = (at / pooled_rows, at % pooled_rows);
            let top_left = o * plane + 2 * window_row * width;
            let first_group = 4 * window_row * pooled_width;
            for (window_column, (key, (&gradient, &winner))) in keys.iter_mut().zip(gradients.iter().zip(argmax)).enumerate() {
                if gradient != 0.0 {
                    // The winner is the window's top left input plus 0,
                    // 1, `width` or `width + 1`.
                    let offset = winner as usize - (top_left + 2 * window_column);
                    let corner = if offset >= width { 2 + offset - width } else { offset };
                    let group = first_group + 4 * window_column + corner;
                    sizes[group] += 1;
                    *key = group as u32;
                }
            }
        }
        for group in 0..groups {
            starts[group + 1] += starts[group];
        }
        entries.resize(starts[groups] as usize, (0, 0.0));
        cursors.clear();
        cursors.extend_from_slice(&starts[..groups]);
        let (entries, cursors) = (&mut entries[..], &mut cursors[..]);
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

/// Vectors of a receptive field's row that the kernels below sum in
/// registers at a time: twelve (with the kernel's vector and the
/// gradient, fourteen of AVX2's sixteen vector registers).
const BLOCK_CHUNKS: usize = 12;

/// Floats of a kernel row that [`scatter_kernels`] scatters at a time,
/// whatever the vector width: the receptive fields of neighbouring
/// winners overlap, so the partition of a row into blocks sets the order
/// in which their sums reach an input's gradient, and with it the bits.
/// AVX2's twelve vectors.
const SCATTER_BLOCK: usize = BLOCK_CHUNKS * CHUNK;

/// Calls `$f::<$lanes, N>(args)` for `N = $chunks` (1 to
/// [`BLOCK_CHUNKS`]), so that each block width's sums have a fixed number
/// of registers.
macro_rules! with_chunks {
    ($chunks:expr, $f:ident::<$lanes:ty>($($arg:expr),*)) => {
        match $chunks {
            1 => $f::<$lanes, 1>($($arg),*),
            2 => $f::<$lanes, 2>($($arg),*),
            3 => $f::<$lanes, 3>($($arg),*),
            4 => $f::<$lanes, 4>($($arg),*),
            5 => $f::<$lanes, 5>($($arg),*),
            6 => $f::<$lanes, 6>($($arg),*),
            7 => $f::<$lanes, 7>($($arg),*),
            8 => $f::<$lanes, 8>($($arg),*),
            9 => $f::<$lanes, 9>($($arg),*),
            10 => $f::<$lanes, 10>($($arg),*),
            11 => $f::<$lanes, 11>($($arg),*),
            _ => $f::<$lanes, BLOCK_CHUNKS>($($arg),*),
        }
    };
}

/// Defines `$name(isa, pass, args)`, running `$body::<V>(pass, args)`
/// with the vectors of `isa`: AVX-512's sixteen floats where the kernel
/// rows (`pass.row` floats, a multiple of [`CHUNK`]) are whole vectors of
/// them, AVX2's eight otherwise and on AVX2, and eight portable floats
/// elsewhere. Products and sums round separately in every variant, so the
/// width does not change the bits.
///
/// (Written out with explicit vectors: left to the compiler, the
/// eight-float chunks compiled for AVX-512 came out as pairs of halves
/// inserted into and extracted from 512-bit registers, 2.4 times slower
/// than the AVX2 build of the same code on an Intel Xeon.)
macro_rules! for_each_lanes {
    ($(#[$doc:meta])* fn $name:ident(pass: &PooledConvGradient, $($arg:ident: $ty:ty),*) = $body:ident) => {
        $(#[$doc])*
        fn $name(isa: Isa, pass: &PooledConvGradient, $($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            use crate::microkernels::x86::{Avx2, Avx512};
            use crate::microkernels::Portable8;
            /// # Safety
            /// The CPU must run AVX-512F (and with it AVX2): callers hold
            /// the `Isa` token that detection makes only where it does.
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx2")]
            unsafe fn avx512(pass: &PooledConvGradient, $($arg: $ty),*) {
                if pass.row % 16 == 0 {
                    $body::<Avx512>(pass, $($arg),*)
                } else {
                    $body::<Avx2>(pass, $($arg),*)
                }
            }
            /// # Safety
            /// The CPU must run AVX2: as for `avx512`.
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2")]
            unsafe fn avx2(pass: &PooledConvGradient, $($arg: $ty),*) {
                $body::<Avx2>(pass, $($arg),*)
            }
            // SAFETY: a vector variant runs only under its `Isa` variant,
            // whose token only detection of its features makes; the
            // bodies bound every load and store by slicing first.
            unsafe {
                match isa {
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx512(_) => avx512(pass, $($arg),*),
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx2(_) => avx2(pass, $($arg),*),
                    Isa::Portable => $body::<Portable8>(pass, $($arg),*),
                }
            }
        }
    };
}

for_each_lanes! {
    /// Adds, for every kept winner in `groups`, its gradient times the
    /// kernel of its output channel into `accumulated` (channels-last,
    /// padded, rows of `pass.pitch()`) at its receptive field.
    fn scatter_kernels(pass: &PooledConvGradient, groups: &WinnerGroups, accumulated: &mut [f32]) = scatter_kernels_body
}

/// # Safety
/// `V`'s instructions must run on this CPU, and `V::WIDTH` divide
/// `pass.row`.
#[inline(always)]
unsafe fn scatter_kernels_body<V: Lanes>(pass: &PooledConvGradient, groups: &WinnerGroups, accumulated: &mut [f32]) {
    // A block of a kernel row at a time, so that the winners sharing a
    // receptive field sum their products in registers and add them to the
    // input gradient once.
    for ky in 0..pass.conv.kernel {
        for first in (0..pass.row).step_by(SCATTER_BLOCK) {
            let block = Block { ky, first };
            let chunks = (pass.row - first).min(SCATTER_BLOCK) / V::WIDTH;
            with_chunks!(chunks, scatter_block::<V>(pass, groups, block, accumulated));
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

/// [`scatter_kernels`] for `CHUNKS` vectors of every kernel's row
/// `block.ky` from float `block.first` on.
///
/// # Safety
/// `V`'s instructions must run on this CPU.
#[inline(always)]
unsafe fn scatter_block<V: Lanes, const CHUNKS: usize>(
    pass: &PooledConvGradient,
    groups: &WinnerGroups,
    block: Block,
    accumulated: &mut [f32],
) {
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
        let mut sums = [V::zero(); CHUNKS];
        for &(o, gradient) in entries {
            let taps = &pass.kernel_rows.as_slice()[(o as usize * k + block.ky) * row + block.first..][..CHUNKS * V::WIDTH];
            let gradient = V::splat(gradient);
            for (c, sum) in sums.iter_mut().enumerate() {
                *sum = sum.add(gradient.mul(V::load(taps.as_ptr().add(c * V::WIDTH))));
            }
        }
        // The winner's output position is its receptive field's top left
        // corner in the padded input.
        let dst = &mut accumulated[(y + block.ky) * pitch + x * cin + block.first..][..CHUNKS * V::WIDTH];
        for (c, sum) in sums.iter().enumerate() {
            let at = dst.as_mut_ptr().add(c * V::WIDTH);
            V::load(at).add(*sum).store(at);
        }
    }
}

for_each_lanes! {
    /// Adds, per kernel row, the sum over `fields` (start in `input`,
    /// gradient) of the gradient times the receptive field's row
    /// (`pass.row` floats a row, channels-last) to `sums`: one output
    /// channel's weight gradient in the layout of `pass.kernel_rows`.
    fn add_field_sums(pass: &PooledConvGradient, fields: &[(usize, f32)], input: &[f32], sums: &mut [f32]) = add_field_sums_body
}

/// # Safety
/// `V`'s instructions must run on this CPU, and `V::WIDTH` divide
/// `pass.row`.
#[inline(always)]
unsafe fn add_field_sums_body<V: Lanes>(pass: &PooledConvGradient, fields: &[(usize, f32)], input: &[f32], sums: &mut [f32]) {
    let pitch = pass.pitch();
    for (ky, sums) in sums.chunks_exact_mut(pass.row).enumerate() {
        for first in (0..pass.row).step_by(BLOCK_CHUNKS * V::WIDTH) {
            let chunks = (pass.row - first).min(BLOCK_CHUNKS * V::WIDTH) / V::WIDTH;
            let offset = ky * pitch + first;
            with_chunks!(chunks, add_fields::<V>(fields, input, offset, &mut sums[first..]));
        }
    }
}

/// Adds to `out[..CHUNKS · V::WIDTH]` the sum over `fields` of the
/// gradient times `input` from the field's start plus `offset`.
///
/// # Safety
/// `V`'s instructions must run on this CPU.
#[inline(always)]
unsafe fn add_fields<V: Lanes, const CHUNKS: usize>(fields: &[(usize, f32)], input: &[f32], offset: usize, out: &mut [f32]) {
    let mut sums = [V::zero(); CHUNKS];
    for &(start, gradient) in fields {
        let values = &input[start + offset..][..CHUNKS * V::WIDTH];
        let gradient = V::splat(gradient);
        for (c, sum) in sums.iter_mut().enumerate() {
            *sum = sum.add(gradient.mul(V::load(values.as_ptr().add(c * V::WIDTH))));
        }
    }
    let out = &mut out[..CHUNKS * V::WIDTH];
    for (c, sum) in sums.iter().enumerate() {
        let at = out.as_mut_ptr().add(c * V::WIDTH);
        V::load(at).add(*sum).store(at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isa::TestedIsas;
    use crate::kernels::{
        conv2d_backward_input, conv2d_backward_params, conv2d_forward, maxpool2x2_backward, maxpool2x2_forward, relu_backward,
    };
    use common::rng::Rng;

    /// A `conv -> relu -> max_pool` block on a batch, and a gradient at
    /// the pool's output through the ReLU (zero where a window's output is
    /// not positive).
    struct Case {
        conv: ConvGeometry,
        pool: PoolGeometry,
        x: Vec<f32>,
        weight: Vec<f32>,
        windows: Vec<f32>,
        argmax: Vec<u32>,
    }

    const BATCH: usize = 3;

    impl Case {
        fn new((cin, cout, kernel, padding, height, width): (usize, usize, usize, usize, usize, usize)) -> Self {
            let conv = ConvGeometry { in_channels: cin, out_channels: cout, kernel, padding, height, width, stride: 1 };
            let pool = PoolGeometry { channels: cout, height: conv.out_height(), width: conv.out_width() };
            let mut rng = Rng::new((cin * 31 + cout * 7 + kernel) as u64);
            let x: Vec<f32> = (0..BATCH * conv.in_len()).map(|_| rng.uniform(-1.0, 1.0)).collect();
            let weight: Vec<f32> = (0..conv.weight_len()).map(|_| rng.uniform(-0.5, 0.5)).collect();
            let activated: Vec<f32> = conv2d_forward(&x, &conv, &weight, None).iter().map(|v| v.max(0.0)).collect();
            let (pooled, argmax) = maxpool2x2_forward(&activated, &pool);
            let mut windows: Vec<f32> = (0..argmax.len()).map(|_| rng.uniform(-1.0, 1.0)).collect();
            relu_backward(&mut windows, &pooled);
            Case { conv, pool, x, weight, windows, argmax }
        }

        /// The gradient at the convolution's output: unpooled.
        fn unpooled(&self) -> Vec<f32> {
            maxpool2x2_backward(&self.windows, &self.argmax, &self.pool)
        }

        /// Image `i`'s winners.
        fn winners(&self, i: usize) -> Winners<'_> {
            let per_image = self.pool.out_len();
            Winners { gradients: &self.windows[i * per_image..][..per_image], argmax: &self.argmax[i * per_image..][..per_image] }
        }

        fn name(&self, isa: Isa) -> String {
            let g = &self.conv;
            format!("{}->{} {}x{} pad {} on {}", g.in_channels, g.out_channels, g.kernel, g.kernel, g.padding, isa.name())
        }
    }

    /// The presets' blocks, a block wider than the registers' (64 x 3
    /// floats a kernel row), odd sizes (a pool row and column left over),
    /// no padding: (in, out, kernel, padding, height, width).
    const SHAPES: [(usize, usize, usize, usize, usize, usize); 5] =
        [(1, 16, 5, 2, 28, 28), (16, 32, 5, 2, 14, 14), (64, 8, 3, 1, 6, 6), (3, 8, 3, 1, 9, 11), (5, 4, 3, 0, 10, 7)];

    /// `got` is `want` up to 1e-5 of `want`'s largest magnitude.
    fn assert_close(got: &[f32], want: &[f32], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: lengths");
        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let worst = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(worst <= 1e-5 * scale, "{what}: {worst} of {scale}");
    }

    /// Runs `compute` on every instruction set; the results must be the
    /// same bits.
    fn same_on_every_instruction_set(test: &'static str, mut compute: impl FnMut(Isa) -> Vec<f32>) -> Vec<f32> {
        let mut reference: Option<Vec<f32>> = None;
        TestedIsas::new(test).each(|isa| {
            let got = compute(isa);
            match &reference {
                None => reference = Some(got),
                Some(first) => assert_eq!(first, &got, "{} differs from the first instruction set", isa.name()),
            }
        });
        reference.expect("the portable variant runs everywhere")
    }

    #[test]
    fn scattering_matches_unpooling_and_the_transposed_convolution_on_every_instruction_set() {
        for case in SHAPES.map(Case::new) {
            let want = conv2d_backward_input(&case.unpooled(), &case.conv, &case.weight);
            let route = PooledConvGradient::new(&case.conv, &case.weight, &case.pool);
            let got = same_on_every_instruction_set("scattering_matches_unpooling_and_the_transposed_convolution", |isa| {
                let mut got = vec![0.0f32; BATCH * case.conv.in_len()];
                for (i, dx) in got.chunks_exact_mut(case.conv.in_len()).enumerate() {
                    route.image(isa, case.winners(i), &mut PooledScratch::default(), dx, BeforeInput::Nothing);
                }
                assert_close(&got, &want, &case.name(isa));
                got
            });
            assert_eq!(route.input_gradient(&case.windows, &case.argmax), got, "the batch's images as each alone");
        }
    }

    #[test]
    fn parameter_gradients_from_the_winners_match_the_dense_ones_on_every_instruction_set() {
        for case in SHAPES.map(Case::new) {
            let (want_weight, want_bias) = conv2d_backward_params(&case.x, &case.unpooled(), &case.conv);
            let route = PooledConvGradient::new(&case.conv, &case.weight, &case.pool);
            same_on_every_instruction_set("parameter_gradients_from_the_winners_match_the_dense_ones", |isa| {
                let mut scratch = PooledScratch::default();
                let (height, width) = (case.conv.height, case.conv.width);
                // Taken after every second image and after the last, and
                // once more with nothing added since (zeros).
                let mut partials = Vec::new();
                for (i, image) in case.x.chunks_exact(case.conv.in_len()).enumerate() {
                    route.add_param_gradients(isa, case.winners(i), (image, (height * width, width, 0)), &mut scratch);
                    if i % 2 == 1 || i + 1 == BATCH {
                        partials.push(route.take_param_gradients(&mut scratch));
                    }
                }
                let untouched = route.take_param_gradients(&mut scratch);
                assert!(untouched.iter().all(|&v| v == 0.0), "nothing added since the last take: zeros");
                partials.push(untouched);
                let (weight, bias) = route.finish(&partials);
                assert_close(&weight, &want_weight, &format!("weight gradient, {}", case.name(isa)));
                assert_close(&bias, &want_bias, &format!("bias gradient, {}", case.name(isa)));
                [weight, bias].concat()
            });
        }
    }
}
