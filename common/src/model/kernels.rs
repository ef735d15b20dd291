//! Plain-slice kernels of the network: 2-D convolution (stride 1, symmetric
//! zero padding) through im2col and `gemm`, 2x2 max-pooling, and dense layers.
//!
//! They serve three callers: the training tape (see `tape_ops`), plain
//! inference, and LRP's relevance passes, which run the same layers with
//! modified weights. Work is split over images with rayon; every image is
//! computed by one thread and reductions over the batch run in a fixed
//! order, so results do not depend on the number of threads.

use rayon::prelude::*;

/// A row-major or strided view of a matrix inside a slice.
#[derive(Clone, Copy)]
struct Mat<'a> {
    data: &'a [f32],
    row_stride: usize,
    col_stride: usize,
}

impl<'a> Mat<'a> {
    fn row_major(data: &'a [f32], cols: usize) -> Self {
        Self { data, row_stride: cols, col_stride: 1 }
    }

    /// The transpose of a row-major `rows x cols` matrix.
    fn transposed(data: &'a [f32], cols: usize) -> Self {
        Self { data, row_stride: 1, col_stride: cols }
    }

    fn check(&self, rows: usize, cols: usize, what: &str) {
        if rows > 0 && cols > 0 {
            let last = (rows - 1) * self.row_stride + (cols - 1) * self.col_stride;
            assert!(last < self.data.len(), "{what}: {rows}x{cols} view does not fit in {} floats", self.data.len());
        }
    }
}

/// `dst (m x n, row-major) (+)= a (m x k) · b (k x n)` on the calling thread.
fn matmul(dst: &mut [f32], accumulate: bool, a: Mat, b: Mat, m: usize, n: usize, k: usize) {
    assert!(dst.len() >= m * n, "matmul destination too small");
    a.check(m, k, "matmul lhs");
    b.check(k, n, "matmul rhs");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(0.0);
        }
        return;
    }
    // gemm's micro-kernel tiles the rows of its destination 24 at a time:
    // with few rows (a layer's channels) and many columns (positions),
    // computing the transpose `bᵀ·aᵀ` into the same memory fills the tiles.
    let (rows, cols, dst_cs, dst_rs, lhs, rhs) = if m < n {
        (n, m, n, 1, (b.data, b.row_stride, b.col_stride), (a.data, a.row_stride, a.col_stride))
    } else {
        (m, n, 1, n, (a.data, a.col_stride, a.row_stride), (b.data, b.col_stride, b.row_stride))
    };
    // SAFETY: the views were bounds-checked above for the given extents,
    // and `dst` holds at least m*n floats laid out row-major (read as its
    // transpose, column-major, in the first case).
    unsafe {
        gemm::gemm(
            rows,
            cols,
            k,
            dst.as_mut_ptr(),
            dst_cs as isize,
            dst_rs as isize,
            accumulate,
            lhs.0.as_ptr(),
            lhs.1 as isize,
            lhs.2 as isize,
            rhs.0.as_ptr(),
            rhs.1 as isize,
            rhs.2 as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Shape of a convolution with stride 1 and `padding` zeros on every side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeometry {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: usize,
    pub padding: usize,
    pub height: usize,
    pub width: usize,
}

impl ConvGeometry {
    pub fn out_height(&self) -> usize {
        self.height + 2 * self.padding + 1 - self.kernel
    }

    pub fn out_width(&self) -> usize {
        self.width + 2 * self.padding + 1 - self.kernel
    }

    /// Floats of one input image.
    pub fn in_len(&self) -> usize {
        self.in_channels * self.height * self.width
    }

    /// Floats of one output image.
    pub fn out_len(&self) -> usize {
        self.out_channels * self.out_plane()
    }

    fn out_plane(&self) -> usize {
        self.out_height() * self.out_width()
    }

    /// Length of one receptive field: in_channels · kernel².
    pub fn patch_len(&self) -> usize {
        self.in_channels * self.kernel * self.kernel
    }

    pub fn weight_len(&self) -> usize {
        self.out_channels * self.patch_len()
    }

    /// Images whose receptive fields share one matrix product: enough for
    /// about [`COLUMNS_PER_PRODUCT`] output positions. It depends on the
    /// geometry alone, and a short last group is padded with zero images, so
    /// every product of a layer has the same shape whatever the batch: an
    /// image's result never depends on the batch it came in.
    fn images_per_product(&self) -> usize {
        COLUMNS_PER_PRODUCT.div_ceil(self.out_plane().max(1)).clamp(1, MAX_IMAGES_PER_PRODUCT)
    }

    /// Writes one image's receptive fields into `fields` (rows `(c, ky, kx)`,
    /// `columns` wide) at columns `offset..offset + positions`, zero where a
    /// field reaches outside the image. Each field row of an output row is a
    /// contiguous copy.
    fn gather_fields(&self, image: &[f32], fields: &mut [f32], offset: usize, columns: usize) {
        let (k, p) = (self.kernel, self.padding as isize);
        let (h, w) = (self.height as isize, self.width as isize);
        let ow = self.out_width();
        let plane_in = self.height * self.width;
        for c in 0..self.in_channels {
            let channel = &image[c * plane_in..][..plane_in];
            for ky in 0..k {
                for kx in 0..k {
                    let row = &mut fields[((c * k + ky) * k + kx) * columns + offset..][..self.out_plane()];
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
                        let src = &channel[iy as usize * self.width..][..self.width];
                        dst[..lo].fill(0.0);
                        dst[lo..hi].copy_from_slice(&src[(lo as isize + shift) as usize..(hi as isize + shift) as usize]);
                        dst[hi..].fill(0.0);
                    }
                }
            }
        }
    }

    /// Adds one image's field columns back onto the image positions they were
    /// gathered from (the adjoint of [`ConvGeometry::gather_fields`]).
    fn scatter_fields(&self, fields: &[f32], offset: usize, columns: usize, image: &mut [f32]) {
        let (k, p) = (self.kernel, self.padding as isize);
        let (h, w) = (self.height as isize, self.width as isize);
        let ow = self.out_width();
        let plane_in = self.height * self.width;
        for c in 0..self.in_channels {
            let channel = &mut image[c * plane_in..][..plane_in];
            for ky in 0..k {
                for kx in 0..k {
                    let row = &fields[((c * k + ky) * k + kx) * columns + offset..][..self.out_plane()];
                    let shift = kx as isize - p;
                    let lo = (-shift).clamp(0, ow as isize) as usize;
                    let hi = (w - shift).clamp(lo as isize, ow as isize) as usize;
                    for (oy, src) in row.chunks_exact(ow).enumerate() {
                        let iy = oy as isize + ky as isize - p;
                        if iy < 0 || iy >= h || lo == hi {
                            continue;
                        }
                        let dst = &mut channel[iy as usize * self.width..][..self.width];
                        let dst = &mut dst[(lo as isize + shift) as usize..(hi as isize + shift) as usize];
                        dst.iter_mut().zip(&src[lo..hi]).for_each(|(d, s)| *d += s);
                    }
                }
            }
        }
    }

    /// The receptive fields of a group of images as one `patch x columns`
    /// matrix, zero columns for the padding images of a short group.
    fn group_fields(&self, images: &[f32], fields: &mut Vec<f32>) {
        let (plane, columns) = (self.out_plane(), self.images_per_product() * self.out_plane());
        fields.resize(self.patch_len() * columns, 0.0);
        let count = images.len() / self.in_len();
        for (i, image) in images.chunks_exact(self.in_len()).enumerate() {
            self.gather_fields(image, fields, i * plane, columns);
        }
        for row in fields.chunks_exact_mut(columns) {
            row[count * plane..].fill(0.0);
        }
    }

    /// A group of output-shaped images as one `channels x columns` matrix,
    /// zero columns for padding images.
    fn group_channels(&self, images: &[f32], grouped: &mut Vec<f32>) {
        let (plane, columns) = (self.out_plane(), self.images_per_product() * self.out_plane());
        grouped.clear();
        grouped.resize(self.out_channels * columns, 0.0);
        for (i, image) in images.chunks_exact(self.out_len()).enumerate() {
            for (o, src) in image.chunks_exact(plane).enumerate() {
                grouped[o * columns + i * plane..][..plane].copy_from_slice(src);
            }
        }
    }

    /// The convolution whose forward pass is this one's input gradient:
    /// channels swapped, kernel flipped, padding `k - 1 - p`, on the output's
    /// plane.
    fn transposed(&self, weight: &[f32]) -> (ConvGeometry, Vec<f32>) {
        let k = self.kernel;
        let transposed = ConvGeometry {
            in_channels: self.out_channels,
            out_channels: self.in_channels,
            kernel: k,
            padding: k - 1 - self.padding,
            height: self.out_height(),
            width: self.out_width(),
        };
        let mut flipped = vec![0.0f32; weight.len()];
        for o in 0..self.out_channels {
            for c in 0..self.in_channels {
                for ky in 0..k {
                    for kx in 0..k {
                        flipped[((c * self.out_channels + o) * k + (k - 1 - ky)) * k + (k - 1 - kx)] =
                            weight[((o * self.in_channels + c) * k + ky) * k + kx];
                    }
                }
            }
        }
        (transposed, flipped)
    }
}

/// Output positions per matrix product of a convolution (see
/// [`ConvGeometry::images_per_product`]), and the most images one takes.
const COLUMNS_PER_PRODUCT: usize = 1024;
const MAX_IMAGES_PER_PRODUCT: usize = 16;

/// Below this many input channels the input gradient scatters field columns
/// back; above it, it runs as the forward pass of the transposed
/// convolution, whose field gathering is cheaper than scattering many rows.
const MIN_CHANNELS_FOR_TRANSPOSED_PASS: usize = 4;

/// `y = conv(x, weight) + bias` for a batch of images (N·C·H·W).
pub fn conv2d_forward(x: &[f32], g: &ConvGeometry, weight: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    assert_eq!(x.len() % g.in_len(), 0, "conv2d input is not a whole number of images");
    assert_eq!(weight.len(), g.weight_len(), "conv2d weight length");
    let batch = x.len() / g.in_len();
    let group = g.images_per_product();
    let (plane, patch, channels, columns) = (g.out_plane(), g.patch_len(), g.out_channels, group * g.out_plane());
    let mut y = vec![0.0f32; batch * g.out_len()];
    y.par_chunks_mut(group * g.out_len()).zip(x.par_chunks(group * g.in_len())).for_each_init(
        || (Vec::new(), vec![0.0f32; channels * columns]),
        |(fields, product), (out, images)| {
            g.group_fields(images, fields);
            matmul(product, false, Mat::row_major(weight, patch), Mat::row_major(fields, columns), channels, columns, patch);
            for (i, out_image) in out.chunks_exact_mut(g.out_len()).enumerate() {
                for (o, dst) in out_image.chunks_exact_mut(plane).enumerate() {
                    let src = &product[o * columns + i * plane..][..plane];
                    match bias {
                        Some(b) => dst.iter_mut().zip(src).for_each(|(d, &s)| *d = s + b[o]),
                        None => dst.copy_from_slice(src),
                    }
                }
            }
        },
    );
    y
}

/// Gradient of a convolution's output with respect to its input (the
/// transposed convolution of `dy` with `weight`).
pub fn conv2d_backward_input(dy: &[f32], g: &ConvGeometry, weight: &[f32]) -> Vec<f32> {
    assert_eq!(dy.len() % g.out_len(), 0, "conv2d output gradient is not a whole number of images");
    assert_eq!(weight.len(), g.weight_len(), "conv2d weight length");
    if g.in_channels >= MIN_CHANNELS_FOR_TRANSPOSED_PASS && g.padding < g.kernel {
        let (transposed, flipped) = g.transposed(weight);
        return conv2d_forward(dy, &transposed, &flipped, None);
    }
    let batch = dy.len() / g.out_len();
    let group = g.images_per_product();
    let (plane, patch, channels, columns) = (g.out_plane(), g.patch_len(), g.out_channels, group * g.out_plane());
    let mut dx = vec![0.0f32; batch * g.in_len()];
    dx.par_chunks_mut(group * g.in_len()).zip(dy.par_chunks(group * g.out_len())).for_each_init(
        || (Vec::new(), vec![0.0f32; patch * columns]),
        |(grouped, fields), (dimages, douts)| {
            g.group_channels(douts, grouped);
            matmul(fields, false, Mat::transposed(weight, patch), Mat::row_major(grouped, columns), patch, columns, channels);
            for (i, dimage) in dimages.chunks_exact_mut(g.in_len()).enumerate() {
                g.scatter_fields(fields, i * plane, columns, dimage);
            }
        },
    );
    dx
}

/// Gradients of a convolution's weight and bias, summed over the batch
/// (groups are summed in order: the result does not depend on the thread
/// count).
pub fn conv2d_backward_params(x: &[f32], dy: &[f32], g: &ConvGeometry) -> (Vec<f32>, Vec<f32>) {
    assert_eq!(x.len() % g.in_len(), 0, "conv2d input is not a whole number of images");
    let batch = x.len() / g.in_len();
    assert_eq!(dy.len(), batch * g.out_len(), "conv2d output gradient length");
    let group = g.images_per_product();
    let (patch, channels, columns) = (g.patch_len(), g.out_channels, group * g.out_plane());
    let partials: Vec<(Vec<f32>, Vec<f32>)> = x
        .par_chunks(group * g.in_len())
        .zip(dy.par_chunks(group * g.out_len()))
        .map_init(
            || (Vec::new(), Vec::new()),
            |(fields, grouped), (images, douts)| {
                g.group_fields(images, fields);
                g.group_channels(douts, grouped);
                let mut dw = vec![0.0f32; g.weight_len()];
                matmul(
                    &mut dw,
                    false,
                    Mat::row_major(grouped, columns),
                    Mat::transposed(fields, columns),
                    channels,
                    patch,
                    columns,
                );
                let db = grouped.chunks_exact(columns).map(|row| row.iter().sum()).collect();
                (dw, db)
            },
        )
        .collect();
    let mut dw = vec![0.0f32; g.weight_len()];
    let mut db = vec![0.0f32; channels];
    for (pw, pb) in partials {
        dw.iter_mut().zip(pw).for_each(|(a, b)| *a += b);
        db.iter_mut().zip(pb).for_each(|(a, b)| *a += b);
    }
    (dw, db)
}

/// Shape of a 2x2, stride-2 max-pool over `channels` planes of `height x
/// width` (odd trailing rows and columns are dropped, as in PyTorch).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolGeometry {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl PoolGeometry {
    pub fn out_height(&self) -> usize {
        self.height / 2
    }

    pub fn out_width(&self) -> usize {
        self.width / 2
    }

    pub fn in_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    pub fn out_len(&self) -> usize {
        self.channels * self.out_height() * self.out_width()
    }

    /// Index (within one image) of the input of each 2x2 window's corner `(dy, dx)`.
    fn window(&self, c: usize, oy: usize, ox: usize, dy: usize, dx: usize) -> usize {
        (c * self.height + 2 * oy + dy) * self.width + 2 * ox + dx
    }
}

/// Max of each 2x2 window and, per output, the index of the winning input
/// within its image (the first maximum on ties, as PyTorch).
pub fn maxpool2x2_forward(x: &[f32], g: &PoolGeometry) -> (Vec<f32>, Vec<u32>) {
    assert_eq!(x.len() % g.in_len(), 0, "max-pool input is not a whole number of images");
    let batch = x.len() / g.in_len();
    let mut y = vec![0.0f32; batch * g.out_len()];
    let mut arg = vec![0u32; batch * g.out_len()];
    y.par_chunks_mut(g.out_len()).zip(arg.par_chunks_mut(g.out_len())).zip(x.par_chunks(g.in_len())).for_each(
        |((out, arg), image)| {
            let mut o = 0;
            for c in 0..g.channels {
                for oy in 0..g.out_height() {
                    for ox in 0..g.out_width() {
                        let mut best = g.window(c, oy, ox, 0, 0);
                        for (dy, dx) in [(0, 1), (1, 0), (1, 1)] {
                            let i = g.window(c, oy, ox, dy, dx);
                            if image[i] > image[best] || image[i].is_nan() {
                                best = i;
                            }
                        }
                        out[o] = image[best];
                        arg[o] = best as u32;
                        o += 1;
                    }
                }
            }
        },
    );
    (y, arg)
}

/// Routes each output's gradient to the input that won its window.
pub fn maxpool2x2_backward(dy: &[f32], argmax: &[u32], g: &PoolGeometry) -> Vec<f32> {
    assert_eq!(dy.len(), argmax.len(), "max-pool gradient and argmax lengths");
    let batch = dy.len() / g.out_len();
    let mut dx = vec![0.0f32; batch * g.in_len()];
    dx.par_chunks_mut(g.in_len()).zip(dy.par_chunks(g.out_len()).zip(argmax.par_chunks(g.out_len()))).for_each(
        |(dimage, (dout, arg))| {
            for (&d, &i) in dout.iter().zip(arg) {
                dimage[i as usize] += d;
            }
        },
    );
    dx
}

/// Spreads each output's value over its 2x2 window in proportion to
/// `weights` (the layer's inputs, or any other positive contribution);
/// windows whose weights sum to zero spread evenly. This is how LRP
/// redistributes through a max-pool treated as average pooling.
pub fn pool2x2_redistribute(dy: &[f32], weights: &[f32], g: &PoolGeometry) -> Vec<f32> {
    assert_eq!(weights.len() % g.in_len(), 0, "pool weights are not a whole number of images");
    let batch = weights.len() / g.in_len();
    assert_eq!(dy.len(), batch * g.out_len(), "pool relevance length");
    let mut dx = vec![0.0f32; batch * g.in_len()];
    dx.par_chunks_mut(g.in_len()).zip(dy.par_chunks(g.out_len()).zip(weights.par_chunks(g.in_len()))).for_each(
        |(dimage, (dout, w))| {
            let mut o = 0;
            for c in 0..g.channels {
                for oy in 0..g.out_height() {
                    for ox in 0..g.out_width() {
                        let corners = [(0, 0), (0, 1), (1, 0), (1, 1)].map(|(dy, dx)| g.window(c, oy, ox, dy, dx));
                        let total: f32 = corners.iter().map(|&i| w[i]).sum();
                        for &i in &corners {
                            dimage[i] += if total != 0.0 { dout[o] * w[i] / total } else { dout[o] * 0.25 };
                        }
                        o += 1;
                    }
                }
            }
        },
    );
    dx
}

/// Rows per matrix product of a dense layer. A short last block is padded
/// with zero rows, so every product has the same shape and a row's result
/// never depends on the batch it came in (gemm sums a lone row in another
/// order than a block of rows).
const ROWS_PER_PRODUCT: usize = 16;

/// Applies `product(input block, output block)` to blocks of exactly
/// [`ROWS_PER_PRODUCT`] rows of `x` (row length `inputs`), in parallel,
/// and returns the output rows (length `outputs` each).
fn by_row_blocks(x: &[f32], inputs: usize, outputs: usize, product: impl Fn(&[f32], &mut [f32]) + Sync) -> Vec<f32> {
    let batch = x.len() / inputs;
    let mut y = vec![0.0f32; batch * outputs];
    y.par_chunks_mut(outputs * ROWS_PER_PRODUCT).zip(x.par_chunks(inputs * ROWS_PER_PRODUCT)).for_each(|(out, rows)| {
        if rows.len() == inputs * ROWS_PER_PRODUCT {
            product(rows, out);
        } else {
            let mut padded_in = rows.to_vec();
            padded_in.resize(inputs * ROWS_PER_PRODUCT, 0.0);
            let mut padded_out = vec![0.0f32; outputs * ROWS_PER_PRODUCT];
            product(&padded_in, &mut padded_out);
            out.copy_from_slice(&padded_out[..out.len()]);
        }
    });
    y
}

/// `y = x · weightᵀ + bias` for a batch of row vectors; `weight` is `[out, in]`.
pub fn dense_forward(x: &[f32], inputs: usize, weight: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    assert_eq!(x.len() % inputs, 0, "dense input is not a whole number of rows");
    assert_eq!(weight.len() % inputs, 0, "dense weight length");
    let outputs = weight.len() / inputs;
    by_row_blocks(x, inputs, outputs, |rows, out| {
        if let Some(bias) = bias {
            for row in out.chunks_mut(outputs) {
                row.copy_from_slice(bias);
            }
        }
        let m = ROWS_PER_PRODUCT;
        matmul(out, bias.is_some(), Mat::row_major(rows, inputs), Mat::transposed(weight, inputs), m, outputs, inputs);
    })
}

/// `dx = dy · weight`: the gradient of a dense layer with respect to its input.
pub fn dense_backward_input(dy: &[f32], inputs: usize, weight: &[f32]) -> Vec<f32> {
    let outputs = weight.len() / inputs;
    assert_eq!(dy.len() % outputs, 0, "dense output gradient is not a whole number of rows");
    by_row_blocks(dy, outputs, inputs, |rows, out| {
        matmul(out, false, Mat::row_major(rows, outputs), Mat::row_major(weight, inputs), ROWS_PER_PRODUCT, inputs, outputs);
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn random(len: usize, seed: u64) -> Vec<f32> {
        let mut rng = Rng::new(seed);
        (0..len).map(|_| rng.uniform(-1.0, 1.0)).collect()
    }

    /// Direct seven-loop convolution, the independent reference.
    fn naive_conv(x: &[f32], g: &ConvGeometry, w: &[f32], b: &[f32]) -> Vec<f32> {
        let batch = x.len() / g.in_len();
        let (oh, ow, k) = (g.out_height(), g.out_width(), g.kernel);
        let mut y = vec![0.0f32; batch * g.out_len()];
        for n in 0..batch {
            for o in 0..g.out_channels {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut acc = b[o] as f64;
                        for c in 0..g.in_channels {
                            for ky in 0..k {
                                for kx in 0..k {
                                    let iy = oy as isize + ky as isize - g.padding as isize;
                                    let ix = ox as isize + kx as isize - g.padding as isize;
                                    if iy >= 0 && ix >= 0 && (iy as usize) < g.height && (ix as usize) < g.width {
                                        let xv = x[n * g.in_len() + (c * g.height + iy as usize) * g.width + ix as usize];
                                        acc += (xv * w[((o * g.in_channels + c) * k + ky) * k + kx]) as f64;
                                    }
                                }
                            }
                        }
                        y[n * g.out_len() + (o * oh + oy) * ow + ox] = acc as f32;
                    }
                }
            }
        }
        y
    }

    fn geometry() -> ConvGeometry {
        ConvGeometry { in_channels: 3, out_channels: 4, kernel: 3, padding: 1, height: 5, width: 6 }
    }

    fn assert_close(a: &[f32], b: &[f32], tol: f32) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= tol * (1.0 + y.abs()), "index {i}: {x} vs {y}");
        }
    }

    #[test]
    fn conv_forward_matches_naive_reference() {
        for g in [geometry(), ConvGeometry { in_channels: 2, out_channels: 3, kernel: 5, padding: 2, height: 7, width: 7 }] {
            let x = random(5 * g.in_len(), 1);
            let w = random(g.weight_len(), 2);
            let b = random(g.out_channels, 3);
            assert_close(&conv2d_forward(&x, &g, &w, Some(&b)), &naive_conv(&x, &g, &w, &b), 1e-5);
            let zero = vec![0.0; g.out_channels];
            assert_close(&conv2d_forward(&x, &g, &w, None), &naive_conv(&x, &g, &w, &zero), 1e-5);
        }
    }

    /// The loss `sum(y * r)` has gradient `r` at the output; compare the
    /// kernels' gradients with central finite differences of that loss,
    /// for both input-gradient paths (scattered fields below 4 input
    /// channels, the transposed convolution above) and without padding.
    #[test]
    fn conv_backward_matches_finite_differences() {
        let geometries = [
            geometry(),
            ConvGeometry { in_channels: 5, out_channels: 3, kernel: 3, padding: 1, height: 6, width: 5 },
            ConvGeometry { in_channels: 4, out_channels: 2, kernel: 3, padding: 0, height: 5, width: 6 },
        ];
        for g in geometries {
            check_conv_gradients(g);
        }
    }

    fn check_conv_gradients(g: ConvGeometry) {
        let x = random(2 * g.in_len(), 4);
        let w = random(g.weight_len(), 5);
        let b = random(g.out_channels, 6);
        let r = random(2 * g.out_len(), 7);
        let loss = |x: &[f32], w: &[f32], b: &[f32]| -> f64 {
            naive_conv(x, &g, w, b).iter().zip(&r).map(|(y, r)| (*y as f64) * (*r as f64)).sum()
        };
        let dx = conv2d_backward_input(&r, &g, &w);
        let (dw, db) = conv2d_backward_params(&x, &r, &g);
        let h = 1e-2f32;
        let fd = |v: &[f32], i: usize, f: &dyn Fn(&[f32]) -> f64| {
            let (mut plus, mut minus) = (v.to_vec(), v.to_vec());
            plus[i] += h;
            minus[i] -= h;
            ((f(&plus) - f(&minus)) / (2.0 * h as f64)) as f32
        };
        for i in (0..x.len()).step_by(7) {
            let num = fd(&x, i, &|v| loss(v, &w, &b));
            assert!((dx[i] - num).abs() < 1e-3, "{g:?} dx[{i}] {} vs {num}", dx[i]);
        }
        for i in 0..w.len() {
            let num = fd(&w, i, &|v| loss(&x, v, &b));
            assert!((dw[i] - num).abs() < 1e-3, "dw[{i}] {} vs {num}", dw[i]);
        }
        for i in 0..b.len() {
            let num = fd(&b, i, &|v| loss(&x, &w, v));
            assert!((db[i] - num).abs() < 1e-3, "db[{i}] {} vs {num}", db[i]);
        }
    }

    #[test]
    fn conv_results_do_not_depend_on_batch_composition() {
        let g = geometry();
        let x = random(9 * g.in_len(), 8);
        let w = random(g.weight_len(), 9);
        let all = conv2d_forward(&x, &g, &w, None);
        let one = conv2d_forward(&x[4 * g.in_len()..5 * g.in_len()], &g, &w, None);
        assert_eq!(&all[4 * g.out_len()..5 * g.out_len()], &one[..]);
    }

    /// Every kernel gives an image (or row) the same bits alone as in a batch
    /// of any size: explanations must not depend on the batch.
    #[test]
    fn every_kernel_is_independent_of_the_batch() {
        let geometries = [
            geometry(),
            ConvGeometry { in_channels: 16, out_channels: 32, kernel: 5, padding: 2, height: 14, width: 14 },
            ConvGeometry { in_channels: 1, out_channels: 16, kernel: 5, padding: 2, height: 28, width: 28 },
            ConvGeometry { in_channels: 6, out_channels: 5, kernel: 3, padding: 0, height: 7, width: 5 },
        ];
        for (i, g) in geometries.into_iter().enumerate() {
            let batch = 2 * g.images_per_product() + 3;
            let x = random(batch * g.in_len(), 80 + i as u64);
            let w = random(g.weight_len(), 90 + i as u64);
            let dy = random(batch * g.out_len(), 100 + i as u64);
            let all = conv2d_forward(&x, &g, &w, None);
            let all_dx = conv2d_backward_input(&dy, &g, &w);
            for n in [0, batch / 2, batch - 1] {
                let one = conv2d_forward(&x[n * g.in_len()..(n + 1) * g.in_len()], &g, &w, None);
                assert_eq!(&all[n * g.out_len()..(n + 1) * g.out_len()], &one[..], "{g:?} image {n}");
                let one_dx = conv2d_backward_input(&dy[n * g.out_len()..(n + 1) * g.out_len()], &g, &w);
                assert_eq!(&all_dx[n * g.in_len()..(n + 1) * g.in_len()], &one_dx[..], "{g:?} gradient {n}");
            }
        }
        let (inputs, outputs, batch) = (50, 7, 37);
        let x = random(batch * inputs, 110);
        let w = random(outputs * inputs, 111);
        let dy = random(batch * outputs, 112);
        let (all, all_dx) = (dense_forward(&x, inputs, &w, None), dense_backward_input(&dy, inputs, &w));
        for n in [0, 17, batch - 1] {
            assert_eq!(
                &all[n * outputs..(n + 1) * outputs],
                &dense_forward(&x[n * inputs..(n + 1) * inputs], inputs, &w, None)[..]
            );
            let one_dx = dense_backward_input(&dy[n * outputs..(n + 1) * outputs], inputs, &w);
            assert_eq!(&all_dx[n * inputs..(n + 1) * inputs], &one_dx[..], "dense row {n}");
        }
    }

    #[test]
    fn maxpool_picks_window_maxima_and_routes_gradients() {
        let g = PoolGeometry { channels: 1, height: 3, width: 4 };
        let x = vec![1.0, 5.0, 2.0, 2.0, 3.0, 4.0, 7.0, 0.0, 9.0, 9.0, 9.0, 9.0];
        let (y, arg) = maxpool2x2_forward(&x, &g);
        assert_eq!(y, vec![5.0, 7.0]);
        assert_eq!(arg, vec![1, 6]);
        let dx = maxpool2x2_backward(&[10.0, 20.0], &arg, &g);
        assert_eq!(dx, vec![0.0, 10.0, 0.0, 0.0, 0.0, 0.0, 20.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        let ties = maxpool2x2_forward(&[2.0, 2.0, 2.0, 2.0], &PoolGeometry { channels: 1, height: 2, width: 2 });
        assert_eq!(ties.1, vec![0]);
    }

    #[test]
    fn redistribution_conserves_and_follows_weights() {
        let g = PoolGeometry { channels: 1, height: 2, width: 4 };
        let weights = vec![1.0, 3.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        let dx = pool2x2_redistribute(&[8.0, 4.0], &weights, &g);
        assert_eq!(dx, vec![2.0, 6.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0]);
    }

    #[test]
    fn dense_matches_naive_and_its_transpose() {
        let (inputs, outputs, batch) = (7, 3, 37);
        let x = random(batch * inputs, 10);
        let w = random(outputs * inputs, 11);
        let b = random(outputs, 12);
        let y = dense_forward(&x, inputs, &w, Some(&b));
        for n in 0..batch {
            for o in 0..outputs {
                let expect: f32 = b[o] + (0..inputs).map(|i| x[n * inputs + i] * w[o * inputs + i]).sum::<f32>();
                assert!((y[n * outputs + o] - expect).abs() < 1e-5);
            }
        }
        let dy = random(batch * outputs, 13);
        let dx = dense_backward_input(&dy, inputs, &w);
        for n in 0..batch {
            for i in 0..inputs {
                let expect: f32 = (0..outputs).map(|o| dy[n * outputs + o] * w[o * inputs + i]).sum();
                assert!((dx[n * inputs + i] - expect).abs() < 1e-5);
            }
        }
    }
}
