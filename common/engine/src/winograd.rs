//! 3x3 convolutions with stride 1 and padding 1 by Winograd's minimal
//! filtering F(2x2, 3x3) (Lavin and Gray, 2016), and 5x5 ones with padding
//! 2 by F(2x2, 5x5) (its transforms in [`f2x5`]).
//!
//! The output is cut into 2x2 tiles; each reads a 4x4 patch of the padded
//! input. With `V = Bᵀ d B` (the patch), `U = G g Gᵀ` (the kernel) and
//! `Y = Aᵀ M A`, where `M[ξ] = Σ_c U[ξ][o][c] · V[ξ][c]` for each of the 16
//! elements ξ of a transformed tile, a tile costs 16 multiply-adds per
//! channel pair instead of 36. The 16 sums over channels are the direct
//! convolution's microkernel with the channels as its taps and the tiles as
//! its positions, so they run at the same speed, and a tile's outputs do
//! not depend on any other image: the transforms and products are per image
//! and in a fixed order. The results differ from the direct convolution's
//! by rounding (the transforms add and subtract inputs before the products).
//! The weight gradient ([`WinogradGradient`]) runs on the same tiles.
//! F(2x2, 5x5) does the same with 6x6 patches: 36 multiply-adds per tile
//! and channel pair instead of 100.

use crate::geometry::{copy_rows, ConvGeometry, RowLayout};
use crate::isa::Isa;
use crate::microkernels::{tap_products_of_real, transpose_planes, weight_gradient, Rows, POSITION_BLOCK};

mod f2x5;

pub(crate) use f2x5::MIN_CHANNELS as MIN_CHANNELS_5X5;

/// Elements of a transformed tile of F(2x2, 3x3).
const ELEMENTS: usize = 16;

/// Fewest input channels for which [`Winograd::applies`] to a 3x3 kernel.
pub(crate) const MIN_INPUT_CHANNELS: usize = 32;

/// Which of Winograd's minimal filterings computes a convolution; both cut
/// the output into 2x2 tiles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Algorithm {
    /// F(2x2, 3x3): 4x4 patches, 16 elements per transformed tile.
    F2x3,
    /// F(2x2, 5x5): 6x6 patches, 36 elements.
    F2x5,
}

impl Algorithm {
    /// The algorithm for a stride-1 convolution, where one serves: 3x3 with
    /// padding 1 and enough input channels, or 5x5 with padding 2 and
    /// enough input and output channels, that the transforms cost little
    /// next to the products.
    fn of(g: &ConvGeometry) -> Option<Algorithm> {
        match (g.kernel, g.padding) {
            (3, 1) if g.in_channels >= MIN_INPUT_CHANNELS => Some(Algorithm::F2x3),
            (5, 2) if g.in_channels.min(g.out_channels) >= MIN_CHANNELS_5X5 => Some(Algorithm::F2x5),
            _ => None,
        }
    }

    fn elements(self) -> usize {
        match self {
            Algorithm::F2x3 => ELEMENTS,
            Algorithm::F2x5 => f2x5::ELEMENTS,
        }
    }
}

/// The most elements a transformed tile has.
const MAX_ELEMENTS: usize = f2x5::ELEMENTS;

/// An image cut into 2x2 output tiles, and the transform of its input
/// patches: what the convolution and its weight gradient share.
pub(crate) struct Tiling {
    isa: Isa,
    algorithm: Algorithm,
    g: ConvGeometry,
    tiles_y: usize,
    tiles_x: usize,
    /// Tiles rounded up to whole vectors; the extra tiles are zero.
    positions: usize,
    /// Floats from one element's plane to the next in the transformed
    /// input (`[ξ][channel][tile]`).
    in_stride: usize,
}

impl Tiling {
    fn new(isa: Isa, g: &ConvGeometry) -> Self {
        let algorithm =
            Algorithm::of(g).expect("Winograd's method needs a 3x3 kernel with padding 1 or a 5x5 one with padding 2");
        let (tiles_y, tiles_x) = (g.height.div_ceil(2), g.width.div_ceil(2));
        let positions = (tiles_y * tiles_x).next_multiple_of(POSITION_BLOCK);
        Tiling { isa, algorithm, g: *g, tiles_y, tiles_x, positions, in_stride: plane_stride(g.in_channels * positions) }
    }

    /// Elements of a transformed tile.
    fn elements(&self) -> usize {
        self.algorithm.elements()
    }

    fn tiles(&self) -> usize {
        self.tiles_y * self.tiles_x
    }

    /// Padded plane: the convolution's padding (as many zero rows and
    /// columns) before the image and enough after it for whole tiles.
    fn padded_shape(&self) -> (usize, usize) {
        let border = self.g.kernel - 1;
        (2 * self.tiles_y + border, 2 * self.tiles_x + border)
    }

    /// Where the image's rows lie in the padded layout.
    pub(crate) fn padded_layout(&self) -> RowLayout {
        let (rows, cols) = self.padded_shape();
        let padding = self.g.padding;
        (rows * cols, cols, padding * cols + padding)
    }

    /// Copies one image (C·H·W) into the padded layout the transforms read.
    /// As with the direct convolution's padding, a reused buffer keeps its
    /// zero border: only the interior is written.
    pub(crate) fn pad(&self, image: &[f32], padded: &mut Vec<f32>) {
        let g = &self.g;
        assert_eq!(image.len(), g.in_len(), "conv2d input of one image");
        let (rows, cols) = self.padded_shape();
        if padded.len() != g.in_channels * rows * cols {
            padded.clear();
            padded.resize(g.in_channels * rows * cols, 0.0);
        }
        copy_rows(image, (g.height, g.width), self.padded_layout(), padded);
    }

    /// One image's transformed input alone: `[ξ][channel][position]`.
    fn image_layout(&self) -> TileLayout {
        TileLayout { element: self.in_stride, channel: self.positions, first: 0 }
    }

    /// `V = Bᵀ d B` for every channel and tile of one image, stored as
    /// `layout` says; `transformed` must already hold the whole layout.
    fn transform_input(&self, padded: &[f32], layout: TileLayout, transformed: &mut [f32], rows: &mut Vec<f32>) {
        let (plane_rows, cols) = self.padded_shape();
        assert_eq!(padded.len(), self.g.in_channels * plane_rows * cols, "Winograd padded input");
        // Every variant writes the real tiles only, and padding tiles must
        // stay zero: the buffer is kept for one layout.
        let last =
            (self.elements() - 1) * layout.element + (self.g.in_channels - 1) * layout.channel + layout.first + self.tiles();
        assert!(layout.channel >= self.tiles() && transformed.len() >= last, "Winograd transformed input layout");
        if self.algorithm == Algorithm::F2x5 {
            return f2x5::transform_input(self.isa, self, padded, layout, transformed, rows);
        }
        // SAFETY: a vector variant runs only under its `Isa` variant, whose
        // token only detection of its features makes; the bodies assert their
        // bounds.
        unsafe {
            match self.isa {
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512(_) => x86::transform_input(self, padded, layout, transformed),
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2(_) => x86::transform_input_avx2(self, padded, layout, transformed),
                Isa::Portable => transform_input_body(self, padded, layout, transformed, rows),
            }
        }
    }
}

/// Where [`Tiling::transform_input`] puts tile `t` of channel `c` of
/// element `ξ`: at `ξ·element + c·channel + first + t`.
#[derive(Clone, Copy)]
struct TileLayout {
    element: usize,
    channel: usize,
    first: usize,
}

/// A 3x3, padding-1 or 5x5, padding-2 convolution prepared for Winograd's
/// method.
pub(crate) struct Winograd {
    tiling: Tiling,
    block: usize,
    /// Output channels rounded up to whole blocks of `block`.
    cout_padded: usize,
    /// Floats from one element's plane to the next in the products
    /// (`[ξ][out][tile]`).
    out_stride: usize,
    /// `U[ξ]` packed per element as the microkernel reads weights.
    packed: Vec<f32>,
    /// Where channel `c` of a transformed element starts: `c · positions`.
    offsets: Vec<usize>,
}

/// A thread's buffers for [`Winograd::padded_image`] and
/// [`WinogradGradient::group`].
#[derive(Default)]
pub(crate) struct WinogradBuffers {
    transformed: Vec<f32>,
    products: Vec<f32>,
    rows: Vec<f32>,
    /// Whole output planes, where the output transform makes them.
    planes: Vec<f32>,
    /// The gradient's sums `dU`.
    sums: Vec<f32>,
}

impl Winograd {
    /// Whether Winograd's method serves this convolution (see
    /// `Algorithm::of`). For F(2x2, 3x3), measured on whole training steps
    /// of the complex model:
    /// from 32 input channels on, about 3% faster than the direct
    /// convolution for its 32-channel layers (on 28- and 32-wide planes);
    /// with 64 and more, as fast on 7- and 14-wide planes and 1.4x faster
    /// on 8- and 16-wide ones, which need no padding tiles.
    pub(crate) fn applies(g: &ConvGeometry) -> bool {
        Algorithm::of(g).is_some()
    }

    /// Where Winograd's method serves `g`, the elements of a transformed
    /// tile: the multiply-adds per 2x2 output tile and channel pair.
    pub(crate) fn tile_elements(g: &ConvGeometry) -> Option<usize> {
        Algorithm::of(g).map(Algorithm::elements)
    }

    pub(crate) fn new(isa: Isa, g: &ConvGeometry, weight: &[f32]) -> Self {
        assert_eq!(weight.len(), g.weight_len(), "conv2d weight length");
        let tiling = Tiling::new(isa, g);
        let positions = tiling.positions;
        let block = isa.channel_block(g.out_channels, positions);
        let (cin, cout) = (g.in_channels, g.out_channels);
        let cout_padded = cout.div_ceil(block) * block;
        let (per_element, elements, taps) = (cout_padded * cin, tiling.elements(), g.kernel * g.kernel);
        let mut packed = vec![0.0f32; elements * per_element];
        // A block of output channels' kernels for one input channel at a
        // time, so that each element's values are written as one run (one
        // value per element and kernel, written alone, scattered the
        // stores over 16 planes).
        let mut transformed = vec![[0.0f32; MAX_ELEMENTS]; block];
        for first in (0..cout).step_by(block) {
            let outputs = (cout - first).min(block);
            for c in 0..cin {
                for (o, u) in transformed.iter_mut().enumerate().take(outputs) {
                    let kernel = &weight[((first + o) * cin + c) * taps..][..taps];
                    match tiling.algorithm {
                        Algorithm::F2x3 => {
                            u[..ELEMENTS].copy_from_slice(&transform_kernel(kernel.try_into().expect("3x3 kernel")))
                        }
                        Algorithm::F2x5 => *u = f2x5::transform_kernel(kernel),
                    }
                }
                let run = ((first / block) * cin + c) * block;
                for xi in 0..elements {
                    let values = &mut packed[xi * per_element + run..][..outputs];
                    values.iter_mut().zip(&transformed).for_each(|(v, u)| *v = u[xi]);
                }
            }
        }
        let offsets = (0..cin).map(|c| c * positions).collect();
        let out_stride = plane_stride(cout_padded * positions);
        Winograd { tiling, block, cout_padded, out_stride, packed, offsets }
    }

    pub(crate) fn tiling(&self) -> &Tiling {
        &self.tiling
    }

    /// One image, padded by [`Tiling::pad`], convolved (without bias), the
    /// output handed over as `store(channel, first row, values)`, `values`
    /// holding one or more whole rows.
    pub(crate) fn padded_image(
        &self,
        buffers: &mut WinogradBuffers,
        padded: &[f32],
        mut store: impl FnMut(usize, usize, &[f32]),
    ) {
        let t = &self.tiling;
        let (cin, cout_padded, positions) = (t.g.in_channels, self.cout_padded, t.positions);
        let (in_stride, out_stride, elements) = (t.in_stride, self.out_stride, t.elements());
        buffers.transformed.resize(elements * in_stride, 0.0);
        t.transform_input(padded, t.image_layout(), &mut buffers.transformed, &mut buffers.rows);
        buffers.products.resize(elements * out_stride, 0.0);
        let per_element = self.packed.len() / elements;
        // The transforms read the products of real tiles only.
        for xi in 0..elements {
            tap_products_of_real(
                t.isa,
                self.block,
                &buffers.transformed[xi * in_stride..][..cin * positions],
                &self.offsets,
                &self.packed[xi * per_element..][..per_element],
                (t.tiles(), positions),
                &mut buffers.products[xi * out_stride..][..cout_padded * positions],
            );
        }
        self.transform_output(&buffers.products, (&mut buffers.rows, &mut buffers.planes), &mut store);
    }

    /// `Y = Aᵀ M A` for every output channel and tile, handed over a plane
    /// (F(2x2, 5x5), and F(2x2, 3x3) with AVX-512) or a row of the output at
    /// a time (tiles past the edge cropped), through the scratch buffers
    /// `(rows, planes)`.
    fn transform_output(
        &self,
        products: &[f32],
        (rows, planes): (&mut Vec<f32>, &mut Vec<f32>),
        store: &mut impl FnMut(usize, usize, &[f32]),
    ) {
        let t = &self.tiling;
        let g = &t.g;
        if t.algorithm == Algorithm::F2x5 {
            let plane = g.height * g.width;
            planes.resize(g.out_channels * plane, 0.0);
            f2x5::transform_output(t.isa, self, products, planes, rows);
            for (o, plane) in planes.chunks_exact(plane).enumerate() {
                store(o, 0, plane);
            }
            return;
        }
        let (positions, tiles_x, out_stride) = (t.positions, t.tiles_x, self.out_stride);
        #[cfg(target_arch = "x86_64")]
        if matches!(t.isa, Isa::Avx512(_)) {
            let plane = g.height * g.width;
            rows.resize(g.out_channels * plane, 0.0);
            // SAFETY: `Isa::Avx512` holds a token that only detection of
            // AVX-512F and FMA makes; the stores and scatters are masked to the
            // output plane (checked inside).
            unsafe { x86::transform_output(self, products, rows) };
            for o in 0..g.out_channels {
                store(o, 0, &rows[o * plane..][..plane]);
            }
            return;
        }
        rows.resize(8 * tiles_x + 4 * tiles_x, 0.0);
        for o in 0..g.out_channels {
            for ty in 0..t.tiles_y {
                let row: [&[f32]; ELEMENTS] =
                    std::array::from_fn(|xi| &products[xi * out_stride + o * positions + ty * tiles_x..][..tiles_x]);
                let (top, bottom) = output_rows(t.isa, &row, rows);
                store(o, 2 * ty, &top[..g.width]);
                if 2 * ty + 1 < g.height {
                    store(o, 2 * ty + 1, &bottom[..g.width]);
                }
            }
        }
    }
}

/// The weight and bias gradients of a 3x3, padding-1 convolution by the
/// same transforms. With `U = G g Gᵀ` and `Y = Aᵀ (U ⊙ V) A` per tile, the
/// gradient of `U` is the sum of `(A dY Aᵀ) ⊙ V` over tiles and images:
/// per pair of channels, 16 sums over the tiles instead of the direct
/// gradient's 9 sums over four times as many positions. The tiles of a
/// group of images are summed in one sweep (a 7x7 plane has only 16), and
/// `dg = Gᵀ dU G` is taken once per group. Like the convolution, this
/// differs from the direct gradient by rounding.
pub(crate) struct WinogradGradient {
    tiling: Tiling,
    /// Output channels padded to whole vectors of the weight-gradient
    /// kernel.
    channels: usize,
}

impl WinogradGradient {
    pub(crate) fn new(isa: Isa, g: &ConvGeometry, channels: usize) -> Self {
        assert!(channels >= g.out_channels && channels.is_multiple_of(16), "gradient channels must be whole blocks of sixteen");
        WinogradGradient { tiling: Tiling::new(isa, g), channels }
    }

    pub(crate) fn tiling(&self) -> &Tiling {
        &self.tiling
    }

    /// A group of images' weight and bias gradients as `[tap][channel]`
    /// (taps in the kernel's order, then one for the bias), the layout of
    /// the direct gradient's partial sums: `padded` holds the images'
    /// inputs as [`Tiling::pad`] lays them out, `douts` the gradients of
    /// their outputs.
    pub(crate) fn group(
        &self,
        padded: &[&[f32]],
        douts: &[&[f32]],
        transposed: &mut Vec<f32>,
        buffers: &mut WinogradBuffers,
    ) -> Vec<f32> {
        let t = &self.tiling;
        let (cin, cout, channels, tiles, elements) = (t.g.in_channels, t.g.out_channels, self.channels, t.tiles(), t.elements());
        assert_eq!(padded.len(), douts.len(), "one output gradient per image");
        let mut bias = vec![0.0f32; channels];
        // dU, `[ξ][in][out]`, summed over sweeps of a few images each: the
        // images' tiles one after the other in each channel, about 64 per
        // sweep.
        let du = &mut buffers.sums;
        let du_stride = plane_stride(cin * channels);
        du.resize(elements * du_stride, 0.0);
        let per_sweep = (64 / tiles).max(1);
        let row = 2 * t.tiles_x;
        for (sweep, (padded, douts)) in padded.chunks(per_sweep).zip(douts.chunks(per_sweep)).enumerate() {
            // Each channel holds the sweep's `sums` tiles.
            let sums = padded.len() * tiles;
            let element = plane_stride(cin * sums);
            buffers.transformed.resize(elements * element, 0.0);
            buffers.products.resize(elements * sums * channels, 0.0);
            for (k, (padded, dout)) in padded.iter().zip(douts).enumerate() {
                assert_eq!(dout.len(), t.g.out_len(), "conv2d output gradient of one image");
                let layout = TileLayout { element, channel: sums, first: k * tiles };
                t.transform_input(padded, layout, &mut buffers.transformed, &mut buffers.rows);
                transpose_planes(t.isa, dout, (cout, t.g.height, t.g.width), row, 2 * t.tiles_y * row, channels, transposed);
                transform_gradient(t, transposed, channels, (k * tiles, sums), &mut buffers.products, &mut bias);
            }
            let offsets: Vec<usize> = (0..cin).map(|c| c * sums).collect();
            for (xi, du) in du.chunks_exact_mut(du_stride).enumerate() {
                let (transformed, gradient) = (&buffers.transformed[xi * element..], &buffers.products[xi * sums * channels..]);
                weight_gradient(
                    t.isa,
                    &transformed[..cin * sums],
                    &offsets,
                    &gradient[..sums * channels],
                    (sums, Rows::flat(sums)),
                    &mut du[..cin * channels],
                    sweep > 0,
                );
            }
        }
        let mut partial = Vec::with_capacity((t.g.kernel * t.g.kernel * cin + 1) * channels);
        let shape = (cin, channels, du_stride);
        match t.algorithm {
            Algorithm::F2x3 => untransform_gradient(t.isa, du, shape, &mut buffers.rows, &mut partial),
            Algorithm::F2x5 => f2x5::untransform_gradient(t.isa, du, shape, &mut buffers.rows, &mut partial),
        }
        partial.extend_from_slice(&bias);
        partial
    }
}

/// `A dY Aᵀ` of every tile of one image from its output gradient
/// transposed to `[y·2·tiles_x + x][channel]`, stored `[ξ][sum][channel]`
/// where `sums = (first, count)` places tile `t` at sum `first + t` of
/// `count` per element.
/// The bias gradient, the sum of `dY` over positions, is added to `bias`.
fn transform_gradient(t: &Tiling, transposed: &[f32], channels: usize, sums: (usize, usize), out: &mut [f32], bias: &mut [f32]) {
    if t.algorithm == Algorithm::F2x5 {
        return f2x5::transform_gradient(t.isa, t, transposed, channels, sums, out, bias);
    }
    // SAFETY: as in `Tiling::transform_input`.
    unsafe {
        match t.isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512(_) => transform_gradient_avx512(t, transposed, channels, sums, out, bias),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2(_) => transform_gradient_avx2(t, transposed, channels, sums, out, bias),
            Isa::Portable => transform_gradient_body(t, transposed, channels, sums, out, bias),
        }
    }
}

/// The body of [`transform_gradient`], sixteen channels at a time so that
/// it vectorises. With `A` of `Y = Aᵀ M A`, a pair `(p, q)` of a tile's
/// rows or columns becomes `(p, p + q, p - q, -q)`.
#[inline(always)]
fn transform_gradient_body(
    t: &Tiling,
    transposed: &[f32],
    channels: usize,
    sums: (usize, usize),
    out: &mut [f32],
    bias: &mut [f32],
) {
    // Plain loops, as in `untransform_kernels`.
    #[inline(always)]
    fn spread(p: &Lanes, q: &Lanes) -> [Lanes; 4] {
        let mut out = [*p; 4];
        for l in 0..16 {
            out[1][l] = p[l] + q[l];
            out[2][l] = p[l] - q[l];
            out[3][l] = -q[l];
        }
        out
    }
    transform_gradient_with(t, transposed, channels, sums, out, bias, spread)
}

/// The body of both algorithms' `transform_gradient`, sixteen channels at
/// a time so that it vectorises: `spread` takes a pair `(p, q)` of a 2x2
/// tile's rows or columns to the `P` values of `A (p, q)ᵀ`.
#[inline(always)]
fn transform_gradient_with<const P: usize>(
    t: &Tiling,
    transposed: &[f32],
    channels: usize,
    (first_sum, sums): (usize, usize),
    out: &mut [f32],
    bias: &mut [f32],
    spread: impl Fn(&Lanes, &Lanes) -> [Lanes; P],
) {
    let (tiles, row) = (t.tiles(), 2 * t.tiles_x);
    assert!(first_sum + tiles <= sums && out.len() >= P * P * sums * channels, "Winograd transformed gradient layout");
    assert_eq!(bias.len(), channels, "bias gradient channels");
    for tile in 0..tiles {
        let first = 2 * (tile / t.tiles_x) * row + 2 * (tile % t.tiles_x);
        for k in (0..channels).step_by(16) {
            let d = |dy: usize, dx: usize| lanes(&transposed[(first + dy * row + dx) * channels + k..]);
            let (left, right) = (spread(&d(0, 0), &d(1, 0)), spread(&d(0, 1), &d(1, 1)));
            for i in 0..P {
                for (j, values) in spread(&left[i], &right[i]).iter().enumerate() {
                    out[((P * i + j) * sums + first_sum + tile) * channels + k..][..16].copy_from_slice(values);
                }
            }
        }
    }
    for position in transposed.chunks_exact(channels) {
        bias.iter_mut().zip(position).for_each(|(b, &d)| *b += d);
    }
}

/// # Safety
/// The CPU must run the features enabled here: callers hold the `Isa` token
/// that detection makes only where it does.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transform_gradient_avx512(
    t: &Tiling,
    transposed: &[f32],
    channels: usize,
    sums: (usize, usize),
    out: &mut [f32],
    bias: &mut [f32],
) {
    transform_gradient_body(t, transposed, channels, sums, out, bias)
}

/// # Safety
/// The CPU must run the features enabled here: callers hold the `Isa` token
/// that detection makes only where it does.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn transform_gradient_avx2(
    t: &Tiling,
    transposed: &[f32],
    channels: usize,
    sums: (usize, usize),
    out: &mut [f32],
    bias: &mut [f32],
) {
    transform_gradient_body(t, transposed, channels, sums, out, bias)
}

/// The portable [`Tiling::transform_input`]: `Bᵀ d` on whole padded rows,
/// split into even and odd columns, then `(Bᵀ d) B` along the tiles. The
/// vector variants do the same arithmetic in the same order, so all give
/// the same bytes.
fn transform_input_body(w: &Tiling, padded: &[f32], layout: TileLayout, transformed: &mut [f32], rows: &mut Vec<f32>) {
    let (cin, tiles_x) = (w.g.in_channels, w.tiles_x);
    let (plane_rows, cols) = w.padded_shape();
    let n = tiles_x + 1;
    // The four rows of `Bᵀ d`, then each split into even and odd columns.
    rows.resize(4 * cols + 8 * n, 0.0);
    let (combined, split) = rows.split_at_mut(4 * cols);
    let (even, odd) = split.split_at_mut(4 * n);
    for c in 0..cin {
        for ty in 0..w.tiles_y {
            let base = (c * plane_rows + 2 * ty) * cols;
            let d = &padded[base..][..4 * cols];
            let (d0, rest) = d.split_at(cols);
            let (d1, rest) = rest.split_at(cols);
            let (d2, d3) = rest.split_at(cols);
            let (r0, rest) = combined.split_at_mut(cols);
            let (r1, rest) = rest.split_at_mut(cols);
            let (r2, r3) = rest.split_at_mut(cols);
            for (((((a, b), c2), d), (r0, r1)), (r2, r3)) in
                d0.iter().zip(d1).zip(d2).zip(d3).zip(r0.iter_mut().zip(r1.iter_mut())).zip(r2.iter_mut().zip(r3.iter_mut()))
            {
                *r0 = a - c2;
                *r1 = b + c2;
                *r2 = c2 - b;
                *r3 = b - d;
            }
            for ((r, e), o) in combined.chunks_exact(cols).zip(even.chunks_exact_mut(n)).zip(odd.chunks_exact_mut(n)) {
                for ((pair, e), o) in r.chunks_exact(2).zip(e.iter_mut()).zip(o.iter_mut()) {
                    *e = pair[0];
                    *o = pair[1];
                }
            }
            let first_tile = ty * tiles_x;
            for i in 0..4 {
                let (e, o) = (&even[i * n..][..n], &odd[i * n..][..n]);
                let at = |j: usize| (4 * i + j) * layout.element + c * layout.channel + layout.first + first_tile;
                let pairs = || e.iter().zip(&e[1..]).zip(o.iter().zip(&o[1..]));
                let out = &mut transformed[at(0)..][..tiles_x];
                out.iter_mut().zip(pairs()).for_each(|(v, ((e0, e1), _))| *v = e0 - e1);
                let out = &mut transformed[at(1)..][..tiles_x];
                out.iter_mut().zip(pairs()).for_each(|(v, ((_, e1), (o0, _)))| *v = o0 + e1);
                let out = &mut transformed[at(2)..][..tiles_x];
                out.iter_mut().zip(pairs()).for_each(|(v, ((_, e1), (o0, _)))| *v = e1 - o0);
                let out = &mut transformed[at(3)..][..tiles_x];
                out.iter_mut().zip(pairs()).for_each(|(v, (_, (o0, o1)))| *v = o0 - o1);
            }
        }
    }
}

/// The two output rows of a row of tiles from its 16 product rows.
fn output_rows<'a>(isa: Isa, m: &[&[f32]; ELEMENTS], rows: &'a mut [f32]) -> (&'a [f32], &'a [f32]) {
    // SAFETY: as in `transform_input`.
    unsafe {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2(_) | Isa::Avx512(_) => x86::output_rows_avx2(m, rows),
            Isa::Portable => output_rows_body(m, rows),
        }
    }
}

/// The portable [`output_rows`]: the column sums `Aᵀ M` for whole rows of
/// tiles, then `(Aᵀ M) A` into interleaved pairs of outputs. The AVX2
/// variant does the same arithmetic in the same order.
fn output_rows_body<'a>(m: &[&[f32]; ELEMENTS], rows: &'a mut [f32]) -> (&'a [f32], &'a [f32]) {
    let tiles = m[0].len();
    let (s, out) = rows.split_at_mut(8 * tiles);
    // s0[j] = M rows 0 + 1 + 2, s1[j] = rows 1 - 2 - 3, for column j.
    for j in 0..4 {
        let (s0, s1) = s[2 * j * tiles..][..2 * tiles].split_at_mut(tiles);
        for ((((s0, s1), a), (b, c)), d) in
            s0.iter_mut().zip(s1.iter_mut()).zip(m[j]).zip(m[4 + j].iter().zip(m[8 + j])).zip(m[12 + j])
        {
            *s0 = a + b + c;
            *s1 = b - c - d;
        }
    }
    let column = |k: usize, j: usize| &s[(2 * j + k) * tiles..][..tiles];
    let (top, bottom) = out.split_at_mut(2 * tiles);
    for (k, row) in [top, bottom].into_iter().enumerate() {
        let (c0, c1, c2, c3) = (column(k, 0), column(k, 1), column(k, 2), column(k, 3));
        for ((pair, (a, b)), (c, d)) in row.chunks_exact_mut(2).zip(c0.iter().zip(c1)).zip(c2.iter().zip(c3)) {
            pair[0] = a + b + c;
            pair[1] = b - c - d;
        }
    }
    let (top, bottom) = out.split_at(2 * tiles);
    (top, &bottom[..2 * tiles])
}

/// Floats from one transformed element's plane to the next: its length
/// and one cache line more, so that the 16 planes, written and read
/// together, do not fall on the same cache sets (their lengths are
/// multiples of 4 KiB).
fn plane_stride(len: usize) -> usize {
    len + 16
}

/// Sixteen channels, one per lane.
type Lanes = [f32; 16];

/// The first sixteen values of `values`.
fn lanes(values: &[f32]) -> Lanes {
    values[..16].try_into().expect("sixteen lanes")
}

/// `dg = Gᵀ dU G` for every pair of channels, from `du` (`[ξ][in][channel]`
/// for `(in, channels, element stride)`) appended to `partial` as
/// `[in][tap][channel]`, one input channel at a time through `scratch`.
fn untransform_gradient(isa: Isa, du: &[f32], shape: (usize, usize, usize), scratch: &mut Vec<f32>, partial: &mut Vec<f32>) {
    // SAFETY: as in `Tiling::transform_input`.
    unsafe {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512(_) => untransform_gradient_avx512(du, shape, scratch, partial),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2(_) => untransform_gradient_avx2(du, shape, scratch, partial),
            Isa::Portable => untransform_gradient_body(du, shape, scratch, partial),
        }
    }
}

#[inline(always)]
fn untransform_gradient_body(du: &[f32], shape: (usize, usize, usize), scratch: &mut Vec<f32>, partial: &mut Vec<f32>) {
    untransform_gradient_with(du, shape, scratch, partial, untransform_kernels)
}

/// The body of both algorithms' `untransform_gradient`, with `untransform`
/// taking sixteen channel pairs' `E` sums to their kernel's `T` taps.
#[inline(always)]
fn untransform_gradient_with<const E: usize, const T: usize>(
    du: &[f32],
    (cin, channels, stride): (usize, usize, usize),
    scratch: &mut Vec<f32>,
    partial: &mut Vec<f32>,
    untransform: impl Fn(&[Lanes; E]) -> [Lanes; T],
) {
    assert!(cin * channels <= stride && du.len() >= E * stride, "Winograd kernel gradient sums");
    scratch.resize(T * channels, 0.0);
    for c in 0..cin {
        for k in (0..channels).step_by(16) {
            let mut sums = [[0.0f32; 16]; E];
            for (xi, sums) in sums.iter_mut().enumerate() {
                *sums = lanes(&du[xi * stride + c * channels + k..]);
            }
            for (tap, values) in untransform(&sums).iter().enumerate() {
                scratch[tap * channels + k..][..16].copy_from_slice(values);
            }
        }
        partial.extend_from_slice(scratch);
    }
}

/// # Safety
/// The CPU must run the features enabled here: callers hold the `Isa` token
/// that detection makes only where it does.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn untransform_gradient_avx512(du: &[f32], shape: (usize, usize, usize), scratch: &mut Vec<f32>, partial: &mut Vec<f32>) {
    untransform_gradient_body(du, shape, scratch, partial)
}

/// # Safety
/// The CPU must run the features enabled here: callers hold the `Isa` token
/// that detection makes only where it does.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn untransform_gradient_avx2(du: &[f32], shape: (usize, usize, usize), scratch: &mut Vec<f32>, partial: &mut Vec<f32>) {
    untransform_gradient_body(du, shape, scratch, partial)
}

/// `Gᵀ dU G`, sixteen at a time: the gradients of 3x3 kernels (row-major,
/// tap-major) from those of their transforms [`transform_kernel`].
#[inline(always)]
fn untransform_kernels(du: &[Lanes; ELEMENTS]) -> [Lanes; 9] {
    // Plain loops, not `array::from_fn`: its closures are not inlined into
    // the callers compiled for AVX, so they would run without it.
    #[inline(always)]
    fn combine(z: [&Lanes; 4], out: &mut [Lanes]) {
        for l in 0..16 {
            out[0][l] = z[0][l] + 0.5 * (z[1][l] + z[2][l]);
            out[1][l] = 0.5 * (z[1][l] - z[2][l]);
            out[2][l] = 0.5 * (z[1][l] + z[2][l]) + z[3][l];
        }
    }
    // Gᵀ dU: three rows of four.
    let mut columns = [[[0.0f32; 16]; 3]; 4];
    for (j, column) in columns.iter_mut().enumerate() {
        combine([&du[j], &du[4 + j], &du[8 + j], &du[12 + j]], column);
    }
    let mut dg = [[0.0f32; 16]; 9];
    for ky in 0..3 {
        combine([&columns[0][ky], &columns[1][ky], &columns[2][ky], &columns[3][ky]], &mut dg[3 * ky..3 * ky + 3]);
    }
    dg
}

/// `U = G g Gᵀ` of one 3x3 kernel (row-major), as 16 elements.
fn transform_kernel(k: &[f32; 9]) -> [f32; ELEMENTS] {
    let combine = |a: f32, b: f32, c: f32| [a, 0.5 * (a + b + c), 0.5 * (a - b + c), c];
    // G g: four rows of three.
    let columns: [[f32; 4]; 3] = std::array::from_fn(|x| combine(k[x], k[3 + x], k[6 + x]));
    let mut u = [0.0f32; ELEMENTS];
    for i in 0..4 {
        let row = combine(columns[0][i], columns[1][i], columns[2][i]);
        u[4 * i..4 * i + 4].copy_from_slice(&row);
    }
    u
}

/// The transforms with AVX-512, with permutes between whole padded rows
/// and whole vectors of tiles: up to 16 tiles per pass on wide planes, and
/// two or four rows of tiles per vector where rows have 7 tiles or fewer,
/// so that short rows do not leave most lanes empty. Only outputs of
/// planes wider than 16 tiles are scattered. The arithmetic per tile is
/// that of the portable bodies, in the same order.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{TileLayout, Tiling, Winograd, ELEMENTS};
    use crate::microkernels::x86::{deinterleave, floats_below, interleave, lanes_below, store_first};

    /// Per tile of a 16-tile chunk: (first output, lanes that are real
    /// tiles, lanes whose second output row exists, lanes whose second
    /// output column exists).
    ///
    /// # Safety
    /// AVX-512F must run on this CPU: these helpers inline into the AVX-512
    /// transforms below, whose callers hold the `Isa` token that proves it.
    unsafe fn chunk(w: &Tiling, first: usize) -> (__m512i, __mmask16, __mmask16, __mmask16) {
        let tiles = w.tiles_y * w.tiles_x;
        let mut output = [0i32; 16];
        let (mut real, mut second_row, mut second_column) = (0u16, 0u16, 0u16);
        for lane in 0..16 {
            let t = first + lane;
            if t < tiles {
                let (ty, tx) = (t / w.tiles_x, t % w.tiles_x);
                output[lane] = (2 * ty * w.g.width + 2 * tx) as i32;
                real |= 1 << lane;
                second_row |= ((2 * ty + 1 < w.g.height) as u16) << lane;
                second_column |= ((2 * tx + 1 < w.g.width) as u16) << lane;
            }
        }
        (_mm512_loadu_si512(output.as_ptr().cast()), real, second_row, second_column)
    }

    /// `Bᵀ` on four rows (or columns) of a patch: `(d0 - d2, d1 + d2,
    /// d2 - d1, d1 - d3)`, in the order of the portable body.
    ///
    /// # Safety
    /// AVX-512F must run on this CPU: these helpers inline into the AVX-512
    /// transforms below, whose callers hold the `Isa` token that proves it.
    #[inline(always)]
    unsafe fn input_combination(d0: __m512, d1: __m512, d2: __m512, d3: __m512) -> [__m512; 4] {
        [_mm512_sub_ps(d0, d2), _mm512_add_ps(d1, d2), _mm512_sub_ps(d2, d1), _mm512_sub_ps(d1, d3)]
    }

    /// The two output rows of `Aᵀ M A`, each as its (left, right) columns,
    /// from `m(ξ)`, the products of element `ξ`: the sums of the portable
    /// `output_rows_body`, in its order.
    ///
    /// # Safety
    /// AVX-512F must run on this CPU: these helpers inline into the AVX-512
    /// transforms below, whose callers hold the `Isa` token that proves it.
    #[inline(always)]
    unsafe fn output_combination(m: impl Fn(usize) -> __m512) -> [(__m512, __m512); 2] {
        let (mut s0, mut s1) = ([_mm512_setzero_ps(); 4], [_mm512_setzero_ps(); 4]);
        for j in 0..4 {
            s0[j] = _mm512_add_ps(_mm512_add_ps(m(j), m(4 + j)), m(8 + j));
            s1[j] = _mm512_sub_ps(_mm512_sub_ps(m(4 + j), m(8 + j)), m(12 + j));
        }
        let left = |s: &[__m512; 4]| _mm512_add_ps(_mm512_add_ps(s[0], s[1]), s[2]);
        let right = |s: &[__m512; 4]| _mm512_sub_ps(_mm512_sub_ps(s[1], s[2]), s[3]);
        [(left(&s0), right(&s0)), (left(&s1), right(&s1))]
    }

    /// `Bᵀ d B` a row of tiles at a time, up to 16 tiles per pass: the
    /// four padded rows they read (34 floats each at most, three vectors) are
    /// combined as `Bᵀ d` whole, and each tile's four columns are picked
    /// out with permutes. No gathers: with the microcode mitigation of
    /// Gather Data Sampling they cost tens of cycles each. Writes the real
    /// tiles only; the caller's buffer keeps the padding tiles zero. The
    /// caller checks the buffers' lengths against `layout`.
    ///
    /// # Safety
    /// The CPU must run the features enabled here: callers hold the `Isa` token
    /// that detection makes only where it does.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn transform_input(w: &Tiling, padded: &[f32], layout: TileLayout, transformed: &mut [f32]) {
        let (cin, tiles_x) = (w.g.in_channels, w.tiles_x);
        let (plane_rows, cols) = w.padded_shape();
        match tiles_x {
            ..=4 => return transform_input_narrow::<4>(w, padded, layout, transformed),
            5..=7 => return transform_input_narrow::<2>(w, padded, layout, transformed),
            _ => {}
        }
        let plane = plane_rows * cols;
        let lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        let twice = _mm512_add_epi32(lane, lane);
        let column = |l: i32| _mm512_add_epi32(twice, _mm512_set1_epi32(l));
        let columns = [column(0), column(1), column(2), column(3)];
        let out = transformed.as_mut_ptr();
        for first_tile in (0..tiles_x).step_by(16) {
            let tiles = (tiles_x - first_tile).min(16);
            let width = cols - 2 * first_tile;
            let (low, high, third) =
                (lanes_below(width), lanes_below(width.saturating_sub(16)), lanes_below(width.saturating_sub(32)));
            // The sixteenth tile's last two columns lie past two vectors.
            let sixteen = tiles == 16;
            let store = lanes_below(tiles);
            for c in 0..cin {
                for ty in 0..w.tiles_y {
                    let row = |k: usize| {
                        let p = padded.as_ptr().add(c * plane + (2 * ty + k) * cols + 2 * first_tile);
                        let past = if sixteen { _mm512_maskz_loadu_ps(third, p.add(32)) } else { _mm512_setzero_ps() };
                        [_mm512_maskz_loadu_ps(low, p), _mm512_maskz_loadu_ps(high, p.add(16)), past]
                    };
                    let (d0, d1, d2, d3) = (row(0), row(1), row(2), row(3));
                    let mut r = [[_mm512_setzero_ps(); 3]; 4];
                    for h in 0..3 {
                        let combined = input_combination(d0[h], d1[h], d2[h], d3[h]);
                        for (r, value) in r.iter_mut().zip(combined) {
                            r[h] = value;
                        }
                    }
                    for (i, r) in r.iter().enumerate() {
                        let pick = |l: usize| {
                            let v = _mm512_permutex2var_ps(r[0], columns[l], r[1]);
                            if sixteen && l >= 2 {
                                // Column 30 + l of lane 15: lane l - 2 of the third vector.
                                _mm512_mask_permutexvar_ps(v, 1 << 15, _mm512_set1_epi32(l as i32 - 2), r[2])
                            } else {
                                v
                            }
                        };
                        for (j, v) in input_combination(pick(0), pick(1), pick(2), pick(3)).into_iter().enumerate() {
                            let at = (4 * i + j) * layout.element + c * layout.channel + layout.first + ty * tiles_x + first_tile;
                            _mm512_mask_storeu_ps(out.add(at), store, v);
                        }
                    }
                }
            }
        }
    }

    /// `Bᵀ` on four rows (or columns) with eight lanes, as
    /// [`input_combination`].
    ///
    /// # Safety
    /// AVX2 must run on this CPU: these helpers inline into the AVX2
    /// transforms below, whose callers hold the `Isa` token that proves it.
    #[inline(always)]
    unsafe fn input_combination8(d0: __m256, d1: __m256, d2: __m256, d3: __m256) -> [__m256; 4] {
        [_mm256_sub_ps(d0, d2), _mm256_add_ps(d1, d2), _mm256_sub_ps(d2, d1), _mm256_sub_ps(d1, d3)]
    }

    /// `Bᵀ d B` of eight tiles. `load(k, h)` gives eight floats of padded
    /// row `k` of the patches: `h = 0, 1` the columns `2t` and `2t + 1` of
    /// tiles 0-3 and 4-7 (columns 0-7 of each half), `h = 2, 3` the same
    /// two columns further on. `store(ξ, v)` takes element `ξ` of the eight
    /// tiles.
    ///
    /// # Safety
    /// As for [`input_combination8`].
    #[inline(always)]
    unsafe fn transform_eight_tiles(load: impl Fn(usize, usize) -> __m256, mut store: impl FnMut(usize, __m256)) {
        let mut r = [[_mm256_setzero_ps(); 4]; 4];
        for h in 0..4 {
            let combined = input_combination8(load(0, h), load(1, h), load(2, h), load(3, h));
            for (r, value) in r.iter_mut().zip(combined) {
                r[h] = value;
            }
        }
        for (i, r) in r.iter().enumerate() {
            let (e0, o0) = (deinterleave::<false>(r[0], r[1]), deinterleave::<true>(r[0], r[1]));
            let (e1, o1) = (deinterleave::<false>(r[2], r[3]), deinterleave::<true>(r[2], r[3]));
            for (j, v) in input_combination8(e0, o0, e1, o1).into_iter().enumerate() {
                store(4 * i + j, v);
            }
        }
    }

    /// [`super::output_rows`] with AVX2, eight tiles per pass: `Aᵀ M A` of
    /// each tile in registers, its two outputs per row interleaved with
    /// unpacks and a lane swap. A last pass of fewer than eight tiles reads
    /// them with masked loads and stores only its outputs: rows of 4 and 7
    /// tiles (7- and 14-wide planes) would otherwise run scalar whole.
    /// Only the first `4 · tiles` floats of `rows` are used.
    ///
    /// # Safety
    /// The CPU must run the features enabled here: callers hold the `Isa` token
    /// that detection makes only where it does.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn output_rows_avx2<'a>(m: &[&[f32]; ELEMENTS], rows: &'a mut [f32]) -> (&'a [f32], &'a [f32]) {
        let tiles = m[0].len();
        assert!(m.iter().all(|row| row.len() == tiles) && rows.len() >= 4 * tiles, "Winograd output rows");
        let (top, bottom) = rows[..4 * tiles].split_at_mut(2 * tiles);
        for t in (0..tiles).step_by(8) {
            let n = (tiles - t).min(8);
            let mask = floats_below(n);
            let load = |xi: usize| _mm256_maskload_ps(m[xi].as_ptr().add(t), mask);
            let (mut s0, mut s1) = ([_mm256_setzero_ps(); 4], [_mm256_setzero_ps(); 4]);
            for j in 0..4 {
                s0[j] = _mm256_add_ps(_mm256_add_ps(load(j), load(4 + j)), load(8 + j));
                s1[j] = _mm256_sub_ps(_mm256_sub_ps(load(4 + j), load(8 + j)), load(12 + j));
            }
            for (s, row) in [(&s0, top.as_mut_ptr()), (&s1, bottom.as_mut_ptr())] {
                let left = _mm256_add_ps(_mm256_add_ps(s[0], s[1]), s[2]);
                let right = _mm256_sub_ps(_mm256_sub_ps(s[1], s[2]), s[3]);
                let (first, second) = interleave(left, right);
                store_first(row.add(2 * t), 2 * n, first);
                if n > 4 {
                    store_first(row.add(2 * t + 8), 2 * n - 8, second);
                }
            }
        }
        (&*top, &*bottom)
    }

    /// `Bᵀ d B` with AVX2, eight tiles per pass: on planes 4 tiles wide
    /// (7 and 8 pixels) two rows of tiles, each of whose padded rows is 10
    /// floats; otherwise up to eight tiles of one row, read with masked
    /// loads so that the last pass stops at the row's end. The even and
    /// odd columns are split with shuffles, not gathers. Writes the real
    /// tiles only, in the portable body's arithmetic order. The caller
    /// checks the buffers' lengths against `layout`.
    ///
    /// # Safety
    /// The CPU must run the features enabled here: callers hold the `Isa` token
    /// that detection makes only where it does.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn transform_input_avx2(w: &Tiling, padded: &[f32], layout: TileLayout, transformed: &mut [f32]) {
        let (cin, tiles_x, tiles_y) = (w.g.in_channels, w.tiles_x, w.tiles_y);
        let (plane_rows, cols) = w.padded_shape();
        let plane = plane_rows * cols;
        let (input, out) = (padded.as_ptr(), transformed.as_mut_ptr());
        let at = |xi: usize, c: usize, tile: usize| out.add(xi * layout.element + c * layout.channel + layout.first + tile);
        if tiles_x == 4 {
            for c in 0..cin {
                for ty in (0..tiles_y).step_by(2) {
                    let pair = ty + 1 < tiles_y;
                    // Padded rows `2ty + k` (lanes of tiles 0-3) and
                    // `2ty + 2 + k` (tiles 4-7): columns 0-7, then 2-9.
                    let load = |k: usize, h: usize| {
                        let row = 2 * ty + k + if h % 2 == 1 { 2 } else { 0 };
                        if h % 2 == 1 && !pair {
                            return _mm256_setzero_ps();
                        }
                        _mm256_loadu_ps(input.add(c * plane + row * cols + if h >= 2 { 2 } else { 0 }))
                    };
                    let tiles = if pair { 8 } else { 4 };
                    transform_eight_tiles(load, |xi, v| store_first(at(xi, c, ty * tiles_x), tiles, v));
                }
            }
            return;
        }
        for c in 0..cin {
            for ty in 0..tiles_y {
                let row = |k: usize| input.add(c * plane + (2 * ty + k) * cols);
                for first_tile in (0..tiles_x).step_by(8) {
                    let tiles = (tiles_x - first_tile).min(8);
                    // Columns from `2·first_tile` to the row's end.
                    let remaining = cols - 2 * first_tile;
                    let starts = [0, 8, 2, 10];
                    let mask = |h: usize| floats_below(remaining.saturating_sub(starts[h]));
                    let masks = [mask(0), mask(1), mask(2), mask(3)];
                    let load = |k: usize, h: usize| {
                        // Masked-off lanes are not read, so the pointer
                        // may run past the buffer (wrapping, never
                        // dereferenced there).
                        _mm256_maskload_ps(row(k).wrapping_add(2 * first_tile + starts[h]), masks[h])
                    };
                    transform_eight_tiles(load, |xi, v| store_first(at(xi, c, ty * tiles_x + first_tile), tiles, v));
                }
            }
        }
    }

    /// [`transform_input`] for planes of at most 7 tiles across, whose
    /// padded rows (16 floats at most) are one vector each: the tiles of
    /// `ROWS` rows of tiles fill one vector of each element, picked out of
    /// the rows' `Bᵀ d` a pair of tile rows per permute. A row of tiles
    /// alone would leave half the lanes or more empty and take twice the
    /// permutes and stores (the 7x7 layer's forward pass measured 17%
    /// faster this way).
    ///
    /// # Safety
    /// The CPU must run the features enabled here: callers hold the `Isa` token
    /// that detection makes only where it does.
    #[target_feature(enable = "avx512f")]
    unsafe fn transform_input_narrow<const ROWS: usize>(w: &Tiling, padded: &[f32], layout: TileLayout, transformed: &mut [f32]) {
        let (cin, tiles_x, tiles_y) = (w.g.in_channels, w.tiles_x, w.tiles_y);
        let (plane_rows, cols) = w.padded_shape();
        assert!(ROWS * tiles_x <= 16 && cols <= 16 && ROWS.is_multiple_of(2), "{ROWS} rows of {tiles_x} tiles in one vector");
        let plane = plane_rows * cols;
        // Lane `q·tiles_x + x` takes tile `x` of tile row `q`: for column
        // `l` of its patch, lane `2x + l` of the first or the second
        // (`+ 16`) tile row of its pair.
        let mut columns = [[[0i32; 16]; 4]; 2];
        let mut pair_lanes = [0u16; 2];
        for lane in 0..ROWS * tiles_x {
            let (q, x) = (lane / tiles_x, lane % tiles_x);
            for (l, column) in columns[q / 2].iter_mut().enumerate() {
                column[lane] = (16 * (q % 2) + 2 * x + l) as i32;
            }
            pair_lanes[q / 2] |= 1 << lane;
        }
        let columns = columns.map(|pair| pair.map(|column| _mm512_loadu_si512(column.as_ptr().cast())));
        let row_lanes = lanes_below(cols);
        let out = transformed.as_mut_ptr();
        for c in 0..cin {
            let channel = padded.as_ptr().add(c * plane);
            for first_row in (0..tiles_y).step_by(ROWS) {
                let rows = (tiles_y - first_row).min(ROWS);
                // `Bᵀ d` of each tile row, zero past the last.
                let mut r = [[_mm512_setzero_ps(); 4]; ROWS];
                for (q, r) in r.iter_mut().enumerate().take(rows) {
                    let row = |k: usize| _mm512_maskz_loadu_ps(row_lanes, channel.add((2 * (first_row + q) + k) * cols));
                    *r = input_combination(row(0), row(1), row(2), row(3));
                }
                let store = lanes_below(rows * tiles_x);
                for i in 0..4 {
                    let pick = |l: usize| {
                        let mut v = _mm512_permutex2var_ps(r[0][i], columns[0][l], r[1][i]);
                        if ROWS > 2 {
                            let second = _mm512_permutex2var_ps(r[2][i], columns[1][l], r[3][i]);
                            v = _mm512_mask_mov_ps(v, pair_lanes[1], second);
                        }
                        v
                    };
                    for (j, v) in input_combination(pick(0), pick(1), pick(2), pick(3)).into_iter().enumerate() {
                        let at = (4 * i + j) * layout.element + c * layout.channel + layout.first + first_row * tiles_x;
                        _mm512_mask_storeu_ps(out.add(at), store, v);
                    }
                }
            }
        }
    }

    /// # Safety
    /// The CPU must run the features enabled here: callers hold the `Isa` token
    /// that detection makes only where it does.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn transform_output(winograd: &Winograd, products: &[f32], out: &mut [f32]) {
        let (w, out_stride) = (&winograd.tiling, winograd.out_stride);
        let (positions, plane, width) = (w.positions, w.g.height * w.g.width, w.g.width);
        assert!(products.len() >= ELEMENTS * out_stride && out.len() >= w.g.out_channels * plane, "Winograd output buffers");
        match w.tiles_x {
            ..=4 => return transform_output_rows::<4>(winograd, products, out),
            5..=7 => return transform_output_rows::<2>(winograd, products, out),
            8..=16 => return transform_output_rows::<1>(winograd, products, out),
            _ => {}
        }
        for first in (0..positions).step_by(16) {
            let (output, real, second_row, second_column) = chunk(w, first);
            let below = _mm512_add_epi32(output, _mm512_set1_epi32(width as i32));
            let one = _mm512_set1_epi32(1);
            for o in 0..w.g.out_channels {
                let [(top_left, top_right), (bottom_left, bottom_right)] =
                    output_combination(|xi| _mm512_loadu_ps(products.as_ptr().add(xi * out_stride + o * positions + first)));
                let base = out.as_mut_ptr().add(o * plane);
                _mm512_mask_i32scatter_ps::<4>(base.cast(), real, output, top_left);
                _mm512_mask_i32scatter_ps::<4>(base.cast(), real & second_column, _mm512_add_epi32(output, one), top_right);
                _mm512_mask_i32scatter_ps::<4>(base.cast(), real & second_row, below, bottom_left);
                let corner = real & second_row & second_column;
                _mm512_mask_i32scatter_ps::<4>(base.cast(), corner, _mm512_add_epi32(below, one), bottom_right);
            }
        }
    }
    /// [`transform_output`] for planes of at most 16 tiles across: `ROWS`
    /// rows of tiles per vector, as [`transform_input_narrow`] lays them
    /// out, and each output row's two columns per tile interleaved with
    /// permutes into whole rows: contiguous stores instead of four scatters
    /// of sixteen single floats.
    ///
    /// # Safety
    /// The CPU must run the features enabled here: callers hold the `Isa` token
    /// that detection makes only where it does.
    #[target_feature(enable = "avx512f")]
    unsafe fn transform_output_rows<const ROWS: usize>(winograd: &Winograd, products: &[f32], out: &mut [f32]) {
        let (w, out_stride) = (&winograd.tiling, winograd.out_stride);
        let (positions, tiles_x, tiles_y) = (w.positions, w.tiles_x, w.tiles_y);
        let (height, width) = (w.g.height, w.g.width);
        assert!(ROWS * tiles_x <= 16 && (ROWS == 1 || 2 * tiles_x <= 16), "{ROWS} rows of {tiles_x} tiles in one vector");
        // Output row `q` of a group, columns `2x` and `2x + 1`: lanes
        // `q·tiles_x + x` of the left and (`+ 16`) the right column sums;
        // the second vector holds columns 16 to 31 where rows are that wide.
        let mut columns = [[[0i32; 16]; 2]; ROWS];
        for (q, halves) in columns.iter_mut().enumerate() {
            for (h, half) in halves.iter_mut().enumerate() {
                for (column, index) in half.iter_mut().enumerate() {
                    let x = (16 * h + column) / 2;
                    let lane = (q * tiles_x + x.min(tiles_x - 1)) as i32;
                    *index = if column % 2 == 0 { lane } else { lane + 16 };
                }
            }
        }
        let columns = columns.map(|halves| halves.map(|half| _mm512_loadu_si512(half.as_ptr().cast())));
        let (low, high) = (lanes_below(width), lanes_below(width.saturating_sub(16)));
        for o in 0..w.g.out_channels {
            let base = out.as_mut_ptr().add(o * height * width);
            for first_row in (0..tiles_y).step_by(ROWS) {
                let rows = (tiles_y - first_row).min(ROWS);
                let load = lanes_below(rows * tiles_x);
                let first = o * positions + first_row * tiles_x;
                let pairs = output_combination(|xi| _mm512_maskz_loadu_ps(load, products.as_ptr().add(xi * out_stride + first)));
                for (q, halves) in columns.iter().enumerate().take(rows) {
                    for (k, &(left, right)) in pairs.iter().enumerate() {
                        let y = 2 * (first_row + q) + k;
                        if y < height {
                            let row = base.add(y * width);
                            _mm512_mask_storeu_ps(row, low, _mm512_permutex2var_ps(left, halves[0], right));
                            if high != 0 {
                                _mm512_mask_storeu_ps(row.add(16), high, _mm512_permutex2var_ps(left, halves[1], right));
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::rng::Rng;

    /// Every variant of the input transform writes the portable body's
    /// bytes, into an offset layout, and leaves the padding tiles and the
    /// gaps between planes as they were: on planes 4 tiles wide with an
    /// even and an odd number of tile rows, rows of one and several passes
    /// with a tail, and rows of one or two tiles.
    #[test]
    fn every_input_transform_variant_writes_the_portable_bytes() {
        let isas = crate::isa::TestedIsas::new("winograd: input transform variants against the portable one");
        let cases = [(7, 7), (8, 8), (5, 8), (28, 28), (14, 14), (3, 34), (9, 3), (4, 1), (13, 17)];
        for (height, width) in cases {
            let g = ConvGeometry {
                in_channels: MIN_INPUT_CHANNELS,
                out_channels: 1,
                kernel: 3,
                padding: 1,
                height,
                width,
                stride: 1,
            };
            let mut rng = Rng::new(height as u64 * 100 + width as u64);
            let image: Vec<f32> = (0..g.in_len()).map(|_| rng.uniform(-1.0, 1.0)).collect();
            let transformed_on = |isa: Isa| {
                let tiling = Tiling::new(isa, &g);
                let mut padded = Vec::new();
                tiling.pad(&image, &mut padded);
                // A layout with room before the tiles and between channels,
                // filled with a sentinel that must survive.
                let (channel, first) = (tiling.positions + 3, 5);
                let layout = TileLayout { element: first + g.in_channels * channel + 7, channel, first };
                let mut out = vec![f32::MAX; ELEMENTS * layout.element];
                tiling.transform_input(&padded, layout, &mut out, &mut Vec::new());
                out
            };
            let expected = transformed_on(Isa::Portable);
            assert!(expected.iter().any(|&v| v != f32::MAX && v != 0.0), "{height}x{width}: the transform wrote values");
            isas.each(|isa| {
                let got = transformed_on(isa);
                let same = got.iter().zip(&expected).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{height}x{width} on {}: the input transform differs from the portable one", isa.name());
            });
        }
    }

    /// Every variant of the output transform's rows gives the portable
    /// body's bytes, for rows of tiles shorter than, as long as and longer
    /// than a vector.
    #[test]
    fn every_output_rows_variant_gives_the_portable_bytes() {
        let isas = crate::isa::TestedIsas::new("winograd: output-row variants against the portable one");
        for tiles in [1, 4, 7, 8, 9, 14, 16, 17] {
            let mut rng = Rng::new(tiles as u64);
            let products: Vec<Vec<f32>> = (0..ELEMENTS).map(|_| (0..tiles).map(|_| rng.uniform(-1.0, 1.0)).collect()).collect();
            let m: [&[f32]; ELEMENTS] = std::array::from_fn(|xi| products[xi].as_slice());
            let rows_on = |isa: Isa| {
                let mut rows = vec![0.0; 12 * tiles];
                let (top, bottom) = output_rows(isa, &m, &mut rows);
                [top, bottom].concat()
            };
            let expected = rows_on(Isa::Portable);
            isas.each(|isa| {
                let got = rows_on(isa);
                let same = got.iter().zip(&expected).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same && got.len() == expected.len(), "{tiles} tiles on {}: output rows differ", isa.name());
            });
        }
    }

    /// `Gᵀ dU G` is the adjoint of `g ↦ G g Gᵀ`: `⟨G g Gᵀ, dU⟩ = ⟨g, Gᵀ dU G⟩`
    /// for any kernel and any gradient, in every lane.
    #[test]
    fn untransform_is_the_adjoint_of_the_kernel_transform() {
        let mut rng = Rng::new(5);
        let du: [Lanes; ELEMENTS] = std::array::from_fn(|_| std::array::from_fn(|_| rng.uniform(-1.0, 1.0)));
        let dg = untransform_kernels(&du);
        for lane in 0..16 {
            let g: [f32; 9] = std::array::from_fn(|_| rng.uniform(-1.0, 1.0));
            let u = transform_kernel(&g);
            let left: f64 = (0..ELEMENTS).map(|xi| u[xi] as f64 * du[xi][lane] as f64).sum();
            let right: f64 = (0..9).map(|tap| g[tap] as f64 * dg[tap][lane] as f64).sum();
            assert!((left - right).abs() < 1e-5, "lane {lane}: {left} vs {right}");
        }
    }
}
