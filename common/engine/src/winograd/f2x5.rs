//! The transforms of Winograd's F(2x2, 5x5), for 5x5 convolutions with
//! padding 2: each 2x2 output tile reads a 6x6 patch, and a tile costs 36
//! multiply-adds per channel pair instead of the direct convolution's 100.
//!
//! The transforms come from the interpolation points 0, 1, -1, 2, -2 and
//! infinity (the six points of F(4x4, 3x3), whose data transform `Bᵀ` is
//! the same):
//!
//! ```text
//!        | 4   0  -5   0   1   0 |          | 1/4     0     0     0     0 |
//!        | 0  -4  -4   1   1   0 |          | -1/6 -1/6  -1/6  -1/6  -1/6 |
//!   Bᵀ = | 0   4  -4  -1   1   0 |     G =  | -1/6  1/6  -1/6   1/6  -1/6 |
//!        | 0  -2  -1   2   1   0 |          | 1/24 1/12   1/6   1/3   2/3 |
//!        | 0   2  -1  -2   1   0 |          | 1/24 -1/12  1/6  -1/3   2/3 |
//!        | 0   4   0  -5   0   1 |          | 0       0     0     0     1 |
//!
//!   Aᵀ = | 1   1   1   1   1   0 |
//!        | 0   1  -1   2  -2   1 |
//! ```
//!
//! Their rounding is larger than F(2x2, 3x3)'s (the data transform scales
//! by up to 5 and the kernel transform by 1/24): about 5e-6 of an output's
//! size against 2e-7 for the direct sums, on 32 channels of unit-sized
//! inputs. Each transform is one body, compiled for every instruction set
//! with the same operations in the same order (no fused multiply-adds), so
//! every variant gives the same bytes.

use super::{lanes, transform_gradient_with, untransform_gradient_with, Lanes, TileLayout, Tiling, Winograd};
use crate::isa::for_each_isa;

/// Elements of a transformed tile.
pub(super) const ELEMENTS: usize = 36;

/// Fewest input and output channels for which F(2x2, 5x5) serves: its
/// input transform costs about as much per input channel, and its output
/// transform per output channel, as 36 of the products that the other side's
/// channels multiply. On 16x16 planes with AVX-512 (the layer benchmark),
/// 32 -> 64 channels ran 1.0-1.3x faster than the direct convolution (the
/// forward pass 1.3x, the weight gradient 1.0-1.1x), and 16 -> 32 and
/// 32 -> 16 1.2-1.4x slower.
pub(crate) const MIN_CHANNELS: usize = 32;

/// Values along one side of a patch.
const PATCH: usize = 6;

/// Taps of a 5x5 kernel.
const TAPS: usize = 25;

/// `Bᵀ` applied to six values of a patch, along its rows or its columns.
#[inline(always)]
fn input_combination([d0, d1, d2, d3, d4, d5]: [f32; 6]) -> [f32; 6] {
    [
        4.0 * d0 - 5.0 * d2 + d4,
        (d3 + d4) - 4.0 * (d1 + d2),
        (d4 - d3) + 4.0 * (d1 - d2),
        (d4 - d2) + 2.0 * (d3 - d1),
        (d4 - d2) + 2.0 * (d1 - d3),
        4.0 * d1 - 5.0 * d3 + d5,
    ]
}

/// `Aᵀ` applied to six values of a tile's products: two outputs.
#[inline(always)]
fn output_combination([m0, m1, m2, m3, m4, m5]: [f32; 6]) -> [f32; 2] {
    [m0 + (m1 + m2) + (m3 + m4), (m1 - m2) + 2.0 * (m3 - m4) + m5]
}

/// `G` applied to five taps of a kernel.
fn kernel_combination([k0, k1, k2, k3, k4]: [f32; 5]) -> [f32; 6] {
    let (even, odd) = (k0 + k2 + k4, k1 + k3);
    let side = |k1: f32, k3: f32| k0 / 24.0 + k1 / 12.0 + k2 / 6.0 + k3 / 3.0 + k4 * (2.0 / 3.0);
    [k0 / 4.0, -(even + odd) / 6.0, -(even - odd) / 6.0, side(k1, k3), side(-k1, -k3), k4]
}

/// `U = G g Gᵀ` of one 5x5 kernel (row-major): 36 elements, `6i + j` for
/// row `i` and column `j` of the transformed tile.
pub(super) fn transform_kernel(k: &[f32]) -> [f32; ELEMENTS] {
    assert_eq!(k.len(), TAPS, "5x5 kernel");
    // G g: six rows of five columns, one column at a time.
    let columns: [[f32; PATCH]; 5] = std::array::from_fn(|x| kernel_combination(std::array::from_fn(|y| k[5 * y + x])));
    let mut u = [0.0f32; ELEMENTS];
    for i in 0..PATCH {
        u[PATCH * i..][..PATCH].copy_from_slice(&kernel_combination(std::array::from_fn(|x| columns[x][i])));
    }
    u
}

/// Sixteen consecutive values of `values` from `at`.
#[inline(always)]
fn load(values: &[f32], at: usize) -> Lanes {
    lanes(&values[at..])
}

/// Stores sixteen lanes at `at`. By value: the lanes stay in registers.
#[inline(always)]
fn store(values: &mut [f32], at: usize, lanes: Lanes) {
    let out: &mut Lanes = (&mut values[at..at + 16]).try_into().expect("sixteen lanes");
    *out = lanes;
}

/// Stores the first `count` of sixteen lanes at `at`: the image's last
/// tiles. Apart, so that the lanes of the common full stores are not kept
/// in memory for it.
#[cold]
#[inline(never)]
fn store_first(values: &mut [f32], at: usize, lanes: Lanes, count: usize) {
    values[at..at + count].copy_from_slice(&lanes[..count]);
}

/// [`input_combination`] in each of sixteen lanes. Plain loops: closures
/// would not inline into the variants compiled for AVX.
#[inline(always)]
fn input_lanes(d: [&Lanes; PATCH]) -> [Lanes; PATCH] {
    let mut out = [[0.0f32; 16]; PATCH];
    for l in 0..16 {
        let v = input_combination([d[0][l], d[1][l], d[2][l], d[3][l], d[4][l], d[5][l]]);
        for (out, v) in out.iter_mut().zip(v) {
            out[l] = v;
        }
    }
    out
}

/// [`output_combination`] in each of sixteen lanes.
#[inline(always)]
fn output_lanes(m: [&Lanes; PATCH]) -> [Lanes; 2] {
    let mut out = [[0.0f32; 16]; 2];
    for l in 0..16 {
        let v = output_combination([m[0][l], m[1][l], m[2][l], m[3][l], m[4][l], m[5][l]]);
        (out[0][l], out[1][l]) = (v[0], v[1]);
    }
    out
}

for_each_isa! {
    /// `V = Bᵀ d B` for every channel and tile of one image, stored as
    /// `layout` says.
    ///
    /// Tiles start at every second row and column, so each padded plane is
    /// first split into its four phases (even and odd rows and columns,
    /// `tiles_x + 2` wide): a tile's patch value `(a, b)` is then phase
    /// `(a mod 2, b mod 2)` at the tile's index plus `(a div 2, b div 2)`,
    /// one offset for every tile. `B` along the columns runs along each
    /// phase row, sixteen tiles a vector, and stores its rows `tiles_x`
    /// apart, so that `Bᵀ` along the rows then runs over sixteen
    /// consecutive tiles a vector, every lane a real tile, straight into
    /// the layout. (Over phase rows `tiles_x + 2` wide, a 16x16 plane's
    /// eight tiles a row filled only half of each vector of the row pass,
    /// which did three quarters of the transform's work.)
    pub(super) fn transform_input(t: &Tiling, padded: &[f32], layout: TileLayout, transformed: &mut [f32], rows: &mut Vec<f32>) = transform_input_body
}

#[inline(always)]
fn transform_input_body(t: &Tiling, padded: &[f32], layout: TileLayout, transformed: &mut [f32], rows: &mut Vec<f32>) {
    let (cin, tiles_x, tiles) = (t.g.in_channels, t.tiles_x, t.tiles());
    let (plane_rows, cols) = t.padded_shape();
    // A phase plane: (tiles_y + 2) rows of tiles_x + 2; the column pass's
    // outputs: as many rows of tiles_x. Every buffer has room for the
    // vectors that run past its last row.
    let (half, phase_rows) = (tiles_x + 2, plane_rows / 2);
    let len = phase_rows * half + 32;
    let column_len = phase_rows * tiles_x + 32;
    // Four phases of the input, then the column pass's six outputs for the
    // even and for the odd rows.
    rows.resize(4 * len + 2 * PATCH * column_len, 0.0);
    let (phases, columns) = rows.split_at_mut(4 * len);
    for c in 0..cin {
        let plane = &padded[c * plane_rows * cols..][..plane_rows * cols];
        for (y, row) in plane.chunks_exact(cols).enumerate() {
            let at = (y / 2) * half;
            let (even, odd) = phases[2 * (y % 2) * len..][..2 * len].split_at_mut(len);
            for ((pair, e), o) in row.chunks_exact(2).zip(&mut even[at..at + half]).zip(&mut odd[at..at + half]) {
                (*e, *o) = (pair[0], pair[1]);
            }
        }
        // `B` along the columns: phase (row parity, column 0 or 1) at
        // offsets 0, 0, 1, 1, 2, 2. A vector's lanes past a row of tiles
        // are stored over the next row's first tiles, which are stored
        // after them.
        for parity in 0..2 {
            let (even, odd) = phases[2 * parity * len..][..2 * len].split_at(len);
            let out = &mut columns[PATCH * parity * column_len..][..PATCH * column_len];
            for r in 0..phase_rows {
                for tx in (0..tiles_x).step_by(16) {
                    let k = r * half + tx;
                    let (e0, o0, e1) = (load(even, k), load(odd, k), load(even, k + 1));
                    let (o1, e2, o2) = (load(odd, k + 1), load(even, k + 2), load(odd, k + 2));
                    let [v0, v1, v2, v3, v4, v5] = input_lanes([&e0, &o0, &e1, &o1, &e2, &o2]);
                    let at = r * tiles_x + tx;
                    store(out, at, v0);
                    store(out, column_len + at, v1);
                    store(out, 2 * column_len + at, v2);
                    store(out, 3 * column_len + at, v3);
                    store(out, 4 * column_len + at, v4);
                    store(out, 5 * column_len + at, v5);
                }
            }
        }
        // `Bᵀ` along the rows: even and odd rows at offsets 0, 0, 1, 1, 2,
        // 2 rows of tiles; past the image's last tile, only real tiles are
        // stored.
        for j in 0..PATCH {
            let even = &columns[j * column_len..][..column_len];
            let odd = &columns[(PATCH + j) * column_len..][..column_len];
            for tile in (0..tiles).step_by(16) {
                let (d0, d1, d2) = (load(even, tile), load(odd, tile), load(even, tile + tiles_x));
                let (d3, d4, d5) = (load(odd, tile + tiles_x), load(even, tile + 2 * tiles_x), load(odd, tile + 2 * tiles_x));
                let real = (tiles - tile).min(16);
                let [v0, v1, v2, v3, v4, v5] = input_lanes([&d0, &d1, &d2, &d3, &d4, &d5]);
                let (at, step) = (j * layout.element + c * layout.channel + layout.first + tile, PATCH * layout.element);
                // By value in both branches, so that the lanes stay in
                // registers on the common one.
                if real == 16 {
                    store(transformed, at, v0);
                    store(transformed, at + step, v1);
                    store(transformed, at + 2 * step, v2);
                    store(transformed, at + 3 * step, v3);
                    store(transformed, at + 4 * step, v4);
                    store(transformed, at + 5 * step, v5);
                } else {
                    for (i, lanes) in [v0, v1, v2, v3, v4, v5].into_iter().enumerate() {
                        store_first(transformed, at + i * step, lanes, real);
                    }
                }
            }
        }
    }
}

for_each_isa! {
    /// `Y = Aᵀ M A` for every output channel and tile: the output planes,
    /// tiles past the edge cropped, into `planes` (`[channel][y][x]`).
    /// Sixteen tiles a vector give each tile's four outputs as four phase
    /// planes in `rows`, which are then interleaved into the output rows.
    pub(super) fn transform_output(winograd: &Winograd, products: &[f32], planes: &mut [f32], rows: &mut Vec<f32>) = transform_output_body
}

#[inline(always)]
fn transform_output_body(winograd: &Winograd, products: &[f32], planes: &mut [f32], rows: &mut Vec<f32>) {
    let (t, out_stride) = (&winograd.tiling, winograd.out_stride);
    let (positions, tiles_x, height, width) = (t.positions, t.tiles_x, t.g.height, t.g.width);
    let plane = height * width;
    assert!(planes.len() >= t.g.out_channels * plane, "Winograd output planes");
    assert!(products.len() >= (ELEMENTS - 1) * out_stride + t.g.out_channels * positions, "Winograd products");
    // The outputs (0, 0), (0, 1), (1, 0), (1, 1) of every tile.
    rows.resize(4 * positions, 0.0);
    for o in 0..t.g.out_channels {
        for first in (0..t.tiles()).step_by(16) {
            let at = o * positions + first;
            // Aᵀ M: two rows of six columns, then the two outputs of each.
            let mut sums = [[[0.0f32; 16]; PATCH]; 2];
            for j in 0..PATCH {
                let column = [
                    &load(products, j * out_stride + at),
                    &load(products, (6 + j) * out_stride + at),
                    &load(products, (12 + j) * out_stride + at),
                    &load(products, (18 + j) * out_stride + at),
                    &load(products, (24 + j) * out_stride + at),
                    &load(products, (30 + j) * out_stride + at),
                ];
                let [top, bottom] = output_lanes(column);
                (sums[0][j], sums[1][j]) = (top, bottom);
            }
            for (k, sums) in sums.iter().enumerate() {
                let [left, right] = output_lanes([&sums[0], &sums[1], &sums[2], &sums[3], &sums[4], &sums[5]]);
                store(rows, 2 * k * positions + first, left);
                store(rows, (2 * k + 1) * positions + first, right);
            }
        }
        for y in 0..height {
            let (k, first) = (y % 2, (y / 2) * tiles_x);
            let (left, right) =
                (&rows[2 * k * positions + first..][..tiles_x], &rows[(2 * k + 1) * positions + first..][..tiles_x]);
            let row = &mut planes[o * plane + y * width..][..width];
            for (pair, (l, r)) in row.chunks_exact_mut(2).zip(left.iter().zip(right)) {
                (pair[0], pair[1]) = (*l, *r);
            }
            if width % 2 == 1 {
                row[width - 1] = left[tiles_x - 1];
            }
        }
    }
}

for_each_isa! {
    /// `A dY Aᵀ` of every tile of one image from its output gradient
    /// transposed to `[y·2·tiles_x + x][channel]`, stored `[ξ][sum][channel]`
    /// where `sums = (first, count)` places tile `t` at sum `first + t` of
    /// `count` per element; the sum of `dY` over positions is added to
    /// `bias`.
    pub(super) fn transform_gradient(t: &Tiling, transposed: &[f32], channels: usize, sums: (usize, usize), out: &mut [f32], bias: &mut [f32]) = transform_gradient_body
}

#[inline(always)]
fn transform_gradient_body(
    t: &Tiling,
    transposed: &[f32],
    channels: usize,
    sums: (usize, usize),
    out: &mut [f32],
    bias: &mut [f32],
) {
    // With the columns of Aᵀ, a pair `(p, q)` of a tile's rows or columns
    // becomes `(p, p + q, p - q, p + 2q, p - 2q, q)`. Plain loops: closures
    // would not inline into the variants compiled for AVX.
    #[inline(always)]
    fn spread(p: &Lanes, q: &Lanes) -> [Lanes; PATCH] {
        let mut out = [*p; PATCH];
        for l in 0..16 {
            out[1][l] = p[l] + q[l];
            out[2][l] = p[l] - q[l];
            out[3][l] = p[l] + 2.0 * q[l];
            out[4][l] = p[l] - 2.0 * q[l];
            out[5][l] = q[l];
        }
        out
    }
    transform_gradient_with(t, transposed, channels, sums, out, bias, spread)
}

for_each_isa! {
    /// `dg = Gᵀ dU G` for every pair of channels, from `du`
    /// (`[ξ][in][channel]` for `(in, channels, element stride)`) appended to
    /// `partial` as `[in][tap][channel]`, one input channel at a time
    /// through `scratch`.
    pub(super) fn untransform_gradient(du: &[f32], shape: (usize, usize, usize), scratch: &mut Vec<f32>, partial: &mut Vec<f32>) = untransform_gradient_body
}

#[inline(always)]
fn untransform_gradient_body(du: &[f32], shape: (usize, usize, usize), scratch: &mut Vec<f32>, partial: &mut Vec<f32>) {
    untransform_gradient_with(du, shape, scratch, partial, untransform_kernels)
}

/// `Gᵀ dU G`, sixteen at a time: the gradients of 5x5 kernels (row-major,
/// tap-major) from those of their transforms [`transform_kernel`].
#[inline(always)]
fn untransform_kernels(du: &[Lanes; ELEMENTS]) -> [Lanes; TAPS] {
    // `Gᵀ` of six values: five. Plain loops, as in `spread`.
    #[inline(always)]
    fn combine(z: [&Lanes; PATCH], out: &mut [Lanes]) {
        for l in 0..16 {
            let (s12, d12, s34, d34) = (z[1][l] + z[2][l], z[1][l] - z[2][l], z[3][l] + z[4][l], z[3][l] - z[4][l]);
            out[0][l] = z[0][l] / 4.0 - s12 / 6.0 + s34 / 24.0;
            out[1][l] = d34 / 12.0 - d12 / 6.0;
            out[2][l] = (s34 - s12) / 6.0;
            out[3][l] = d34 / 3.0 - d12 / 6.0;
            out[4][l] = s34 * (2.0 / 3.0) - s12 / 6.0 + z[5][l];
        }
    }
    // Gᵀ dU: five rows of six columns.
    let mut columns = [[[0.0f32; 16]; 5]; PATCH];
    for (j, column) in columns.iter_mut().enumerate() {
        combine([&du[j], &du[6 + j], &du[12 + j], &du[18 + j], &du[24 + j], &du[30 + j]], column);
    }
    let mut dg = [[0.0f32; 16]; TAPS];
    for ky in 0..5 {
        let row = [&columns[0][ky], &columns[1][ky], &columns[2][ky], &columns[3][ky], &columns[4][ky], &columns[5][ky]];
        combine(row, &mut dg[5 * ky..5 * ky + 5]);
    }
    dg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::ConvGeometry;
    use crate::isa::Isa;
    use common::rng::Rng;

    /// `Gᵀ dU G` is the adjoint of `g ↦ G g Gᵀ`: `⟨G g Gᵀ, dU⟩ = ⟨g, Gᵀ dU G⟩`
    /// for any kernel and any gradient, in every lane.
    #[test]
    fn untransform_is_the_adjoint_of_the_kernel_transform() {
        let mut rng = Rng::new(7);
        let du: [Lanes; ELEMENTS] = std::array::from_fn(|_| std::array::from_fn(|_| rng.uniform(-1.0, 1.0)));
        let dg = untransform_kernels(&du);
        for lane in 0..16 {
            let g: Vec<f32> = (0..TAPS).map(|_| rng.uniform(-1.0, 1.0)).collect();
            let u = transform_kernel(&g);
            let left: f64 = (0..ELEMENTS).map(|xi| u[xi] as f64 * du[xi][lane] as f64).sum();
            let right: f64 = (0..TAPS).map(|tap| g[tap] as f64 * dg[tap][lane] as f64).sum();
            assert!((left - right).abs() < 1e-5, "lane {lane}: {left} vs {right}");
        }
    }

    /// The input and output transforms give the same bytes on every
    /// instruction set (one body, compiled for each), on planes whose rows
    /// of tiles are shorter than, as long as and longer than a vector.
    #[test]
    fn every_variant_gives_the_portable_bytes() {
        let isas = crate::isa::TestedIsas::new("winograd F(2x2, 5x5): transforms against the portable ones");
        for (height, width) in [(7, 9), (16, 16), (3, 34), (14, 14)] {
            let g = ConvGeometry { in_channels: 32, out_channels: 33, kernel: 5, padding: 2, height, width, stride: 1 };
            let mut rng = Rng::new((height * 100 + width) as u64);
            let image: Vec<f32> = (0..g.in_len()).map(|_| rng.uniform(-1.0, 1.0)).collect();
            let weight: Vec<f32> = (0..g.weight_len()).map(|_| rng.uniform(-1.0, 1.0)).collect();
            let outputs_on = |isa: Isa| {
                let winograd = Winograd::new(isa, &g, &weight);
                let t = winograd.tiling();
                let mut padded = Vec::new();
                t.pad(&image, &mut padded);
                let mut transformed = vec![0.0; ELEMENTS * t.in_stride];
                t.transform_input(&padded, t.image_layout(), &mut transformed, &mut Vec::new());
                // The same products everywhere, in this variant's layout
                // (its blocks of output channels set the element stride).
                let mut products = vec![0.0; ELEMENTS * winograd.out_stride];
                for xi in 0..ELEMENTS {
                    for at in 0..g.out_channels * t.positions {
                        products[xi * winograd.out_stride + at] = ((xi * 31 + at) % 97) as f32 / 97.0 - 0.5;
                    }
                }
                let mut planes = vec![0.0; g.out_len()];
                transform_output(isa, &winograd, &products, &mut planes, &mut Vec::new());
                (transformed, planes)
            };
            let expected = outputs_on(Isa::Portable);
            isas.each(|isa| {
                let got = outputs_on(isa);
                let same = |a: &[f32], b: &[f32]| a.len() == b.len() && a.iter().zip(b).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same(&got.0, &expected.0), "{height}x{width} on {}: input transform", isa.name());
                assert!(same(&got.1, &expected.1), "{height}x{width} on {}: output transform", isa.name());
            });
        }
    }

    /// One tile by hand: the transforms give the 2x2 correlation of a 6x6
    /// patch with a 5x5 kernel, `Y = Aᵀ ((G g Gᵀ) ⊙ (Bᵀ d B)) A`, in
    /// double-checked sums.
    #[test]
    fn one_tile_is_the_correlation_of_its_patch() {
        let mut rng = Rng::new(8);
        let d: Vec<f32> = (0..PATCH * PATCH).map(|_| rng.uniform(-1.0, 1.0)).collect();
        let g: Vec<f32> = (0..TAPS).map(|_| rng.uniform(-1.0, 1.0)).collect();
        let u = transform_kernel(&g);
        // Bᵀ d B by rows, then columns.
        let rows: Vec<[f32; PATCH]> = (0..PATCH).map(|x| input_combination(std::array::from_fn(|y| d[PATCH * y + x]))).collect();
        let v: Vec<f32> =
            (0..ELEMENTS).map(|xi| input_combination(std::array::from_fn(|x| rows[x][xi / PATCH]))[xi % PATCH]).collect();
        let m: Vec<f32> = u.iter().zip(&v).map(|(u, v)| u * v).collect();
        let columns: Vec<[f32; 2]> = (0..PATCH).map(|j| output_combination(std::array::from_fn(|i| m[PATCH * i + j]))).collect();
        for oy in 0..2 {
            for ox in 0..2 {
                let y = output_combination(std::array::from_fn(|j| columns[j][oy]))[ox];
                let expected: f64 = (0..TAPS).map(|tap| g[tap] as f64 * d[PATCH * (oy + tap / 5) + ox + tap % 5] as f64).sum();
                assert!((y as f64 - expected).abs() < 2e-5, "output ({oy}, {ox}): {y} vs {expected}");
            }
        }
    }
}
