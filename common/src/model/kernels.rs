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
    // SAFETY: the views were bounds-checked above for the given extents,
    // and `dst` holds at least m*n floats laid out row-major.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
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

    fn padded_height(&self) -> usize {
        self.height + 2 * self.padding
    }

    fn padded_width(&self) -> usize {
        self.width + 2 * self.padding
    }

    /// The image with its zero border, so that every window read is in
    /// bounds and the row copies below need no checks.
    fn pad(&self, image: &[f32], padded: &mut Vec<f32>) {
        let (ph, pw, p) = (self.padded_height(), self.padded_width(), self.padding);
        padded.clear();
        padded.resize(self.in_channels * ph * pw, 0.0);
        for (c, channel) in image.chunks(self.height * self.width).enumerate() {
            for (y, src) in channel.chunks(self.width).enumerate() {
                padded[(c * ph + y + p) * pw + p..][..self.width].copy_from_slice(src);
            }
        }
    }

    /// One image's receptive fields as rows: row `p` (an output position)
    /// holds the `(c, ky, kx)` inputs that position sees, zero outside the
    /// image. Rows of one image are contiguous, so a group of images is one
    /// `(images·positions) x patch` matrix.
    fn im2row(&self, image: &[f32], rows: &mut [f32], padded: &mut Vec<f32>) {
        self.pad(image, padded);
        let copy = |src: usize, dst: usize, k: usize| rows[dst..dst + k].copy_from_slice(&padded[src..src + k]);
        match self.kernel {
            3 => self.windows::<3>(copy),
            5 => self.windows::<5>(copy),
            _ => self.windows::<0>(copy),
        }
    }

    /// Adds each row's entries back onto the image positions they were read
    /// from (the adjoint of [`ConvGeometry::im2row`]).
    fn row2im_add(&self, rows: &[f32], image: &mut [f32], padded: &mut Vec<f32>) {
        padded.clear();
        padded.resize(self.in_channels * self.padded_height() * self.padded_width(), 0.0);
        let add = |dst: usize, src: usize, k: usize| {
            padded[dst..dst + k].iter_mut().zip(&rows[src..src + k]).for_each(|(d, s)| *d += s)
        };
        match self.kernel {
            3 => self.windows::<3>(add),
            5 => self.windows::<5>(add),
            _ => self.windows::<0>(add),
        }
        let (ph, pw, p) = (self.padded_height(), self.padded_width(), self.padding);
        for (c, channel) in image.chunks_mut(self.height * self.width).enumerate() {
            for (y, dst) in channel.chunks_mut(self.width).enumerate() {
                let src = &padded[(c * ph + y + p) * pw + p..][..self.width];
                dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
            }
        }
    }

    /// Calls `visit(start in the padded image, start in the rows, k)` for
    /// every kernel row of every receptive field: the `k` inputs of channel
    /// `c`, kernel row `ky`, at output position `(oy, ox)`. A fixed `K`
    /// (`0`: the geometry's kernel) turns the copies into a few moves.
    #[inline(always)]
    fn windows<const K: usize>(&self, mut visit: impl FnMut(usize, usize, usize)) {
        let k = if K == 0 { self.kernel } else { K };
        let (ph, pw) = (self.padded_height(), self.padded_width());
        let (oh, ow, patch) = (self.out_height(), self.out_width(), self.patch_len());
        for oy in 0..oh {
            for ox in 0..ow {
                let row = (oy * ow + ox) * patch;
                for c in 0..self.in_channels {
                    for ky in 0..k {
                        visit((c * ph + oy + ky) * pw + ox, row + (c * k + ky) * k, k);
                    }
                }
            }
        }
    }

    /// The receptive-field rows of a group of images, zero rows for the
    /// padding images of a short last group.
    fn group_rows(&self, images: &[f32], rows: &mut [f32], padded: &mut Vec<f32>) {
        let block = self.out_plane() * self.patch_len();
        let count = images.len() / self.in_len();
        for (image, dst) in images.chunks(self.in_len()).zip(rows.chunks_mut(block)) {
            self.im2row(image, dst, padded);
        }
        rows[count * block..].fill(0.0);
    }

    /// A group of output-shaped images as one `channels x (images·positions)`
    /// matrix, zero columns for the padding images.
    fn group_channels(&self, images: &[f32], grouped: &mut [f32]) {
        let (plane, width) = (self.out_plane(), IMAGES_PER_GEMM * self.out_plane());
        grouped.fill(0.0);
        for (i, image) in images.chunks(self.out_len()).enumerate() {
            for (o, src) in image.chunks(plane).enumerate() {
                grouped[o * width + i * plane..][..plane].copy_from_slice(src);
            }
        }
    }
}

/// Images per matrix product in a convolution. Every product of a
/// convolution has the same shape whatever the batch size (a short last
/// group is padded with zero images), and groups are independent tasks, so
/// an image's result depends neither on the batch it came in nor on the
/// thread count.
pub const IMAGES_PER_GEMM: usize = 10;

/// `y = conv(x, weight) + bias` for a batch of images (N·C·H·W).
pub fn conv2d_forward(x: &[f32], g: &ConvGeometry, weight: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    assert_eq!(x.len() % g.in_len(), 0, "conv2d input is not a whole number of images");
    assert_eq!(weight.len(), g.weight_len(), "conv2d weight length");
    let batch = x.len() / g.in_len();
    let (plane, patch, channels) = (g.out_plane(), g.patch_len(), g.out_channels);
    let width = IMAGES_PER_GEMM * plane;
    let mut y = vec![0.0f32; batch * g.out_len()];
    y.par_chunks_mut(g.out_len() * IMAGES_PER_GEMM).zip(x.par_chunks(g.in_len() * IMAGES_PER_GEMM)).for_each_init(
        || (vec![0.0f32; width * patch], vec![0.0f32; channels * width], Vec::new()),
        |(rows, grouped, padded), (out, images)| {
            g.group_rows(images, rows, padded);
            matmul(grouped, false, Mat::row_major(weight, patch), Mat::transposed(rows, patch), channels, width, patch);
            for (i, out_image) in out.chunks_mut(g.out_len()).enumerate() {
                for (o, dst) in out_image.chunks_mut(plane).enumerate() {
                    let b = bias.map_or(0.0, |b| b[o]);
                    dst.iter_mut().zip(&grouped[o * width + i * plane..][..plane]).for_each(|(d, s)| *d = s + b);
                }
            }
        },
    );
    y
}

/// Gradients of a convolution: with respect to its input (when `weight` is
/// given) and to its weight and bias, summed over the batch (when `x` is
/// given). One pass shares the regrouped output gradient between both.
pub fn conv2d_backward(
    x: Option<&[f32]>,
    dy: &[f32],
    g: &ConvGeometry,
    weight: Option<&[f32]>,
) -> (Option<Vec<f32>>, Option<(Vec<f32>, Vec<f32>)>) {
    assert_eq!(dy.len() % g.out_len(), 0, "conv2d output gradient is not a whole number of images");
    let batch = dy.len() / g.out_len();
    if let Some(x) = x {
        assert_eq!(x.len(), batch * g.in_len(), "conv2d input length");
    }
    if let Some(w) = weight {
        assert_eq!(w.len(), g.weight_len(), "conv2d weight length");
    }
    let (plane, patch, channels) = (g.out_plane(), g.patch_len(), g.out_channels);
    let width = IMAGES_PER_GEMM * plane;
    let groups = batch.div_ceil(IMAGES_PER_GEMM);
    let per_group: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = (0..groups)
        .into_par_iter()
        .map_init(
            || (vec![0.0f32; channels * width], vec![0.0f32; width * patch], Vec::new()),
            |(dy_grouped, rows, padded), group| {
                let images = group * IMAGES_PER_GEMM..((group + 1) * IMAGES_PER_GEMM).min(batch);
                g.group_channels(&dy[images.start * g.out_len()..images.end * g.out_len()], dy_grouped);
                let mut dx = Vec::new();
                if let Some(w) = weight {
                    matmul(rows, false, Mat::transposed(dy_grouped, width), Mat::row_major(w, patch), width, patch, channels);
                    dx = vec![0.0f32; images.len() * g.in_len()];
                    for (dimage, block) in dx.chunks_mut(g.in_len()).zip(rows.chunks(plane * patch)) {
                        g.row2im_add(block, dimage, padded);
                    }
                }
                let (mut dw, mut db) = (Vec::new(), Vec::new());
                if let Some(x) = x {
                    g.group_rows(&x[images.start * g.in_len()..images.end * g.in_len()], rows, padded);
                    dw = vec![0.0f32; g.weight_len()];
                    matmul(
                        &mut dw,
                        false,
                        Mat::row_major(dy_grouped, width),
                        Mat::row_major(rows, patch),
                        channels,
                        patch,
                        width,
                    );
                    db = dy_grouped.chunks(width).map(|row| row.iter().sum()).collect();
                }
                (dx, dw, db)
            },
        )
        .collect();
    let dx = weight.map(|_| per_group.iter().flat_map(|(dx, _, _)| dx.iter().copied()).collect());
    let params = x.map(|_| {
        let mut dw = vec![0.0f32; g.weight_len()];
        let mut db = vec![0.0f32; channels];
        for (_, pw, pb) in &per_group {
            dw.iter_mut().zip(pw).for_each(|(a, b)| *a += b);
            db.iter_mut().zip(pb).for_each(|(a, b)| *a += b);
        }
        (dw, db)
    });
    (dx, params)
}

/// Gradient of a convolution's output with respect to its input (the
/// transposed convolution of `dy` with `weight`).
pub fn conv2d_backward_input(dy: &[f32], g: &ConvGeometry, weight: &[f32]) -> Vec<f32> {
    conv2d_backward(None, dy, g, Some(weight)).0.expect("input gradient requested")
}

/// Gradients of a convolution's weight and bias, summed over the batch.
pub fn conv2d_backward_params(x: &[f32], dy: &[f32], g: &ConvGeometry) -> (Vec<f32>, Vec<f32>) {
    conv2d_backward(Some(x), dy, g, None).1.expect("parameter gradients requested")
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

/// `y = x · weightᵀ + bias` for a batch of row vectors; `weight` is `[out, in]`.
pub fn dense_forward(x: &[f32], inputs: usize, weight: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    assert_eq!(x.len() % inputs, 0, "dense input is not a whole number of rows");
    assert_eq!(weight.len() % inputs, 0, "dense weight length");
    let outputs = weight.len() / inputs;
    let batch = x.len() / inputs;
    let mut y = vec![0.0f32; batch * outputs];
    const ROWS: usize = 16;
    y.par_chunks_mut(outputs * ROWS).zip(x.par_chunks(inputs * ROWS)).for_each(|(out, rows)| {
        let n = rows.len() / inputs;
        if let Some(bias) = bias {
            for row in out.chunks_mut(outputs) {
                row.copy_from_slice(bias);
            }
        }
        matmul(out, bias.is_some(), Mat::row_major(rows, inputs), Mat::transposed(weight, inputs), n, outputs, inputs);
    });
    y
}

/// `dx = dy · weight`: the gradient of a dense layer with respect to its input.
pub fn dense_backward_input(dy: &[f32], inputs: usize, weight: &[f32]) -> Vec<f32> {
    let outputs = weight.len() / inputs;
    assert_eq!(dy.len() % outputs, 0, "dense output gradient is not a whole number of rows");
    let batch = dy.len() / outputs;
    let mut dx = vec![0.0f32; batch * inputs];
    const ROWS: usize = 16;
    dx.par_chunks_mut(inputs * ROWS).zip(dy.par_chunks(outputs * ROWS)).for_each(|(out, rows)| {
        let n = rows.len() / outputs;
        matmul(out, false, Mat::row_major(rows, outputs), Mat::row_major(weight, inputs), n, inputs, outputs);
    });
    dx
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
    /// kernels' gradients with central finite differences of that loss.
    #[test]
    fn conv_backward_matches_finite_differences() {
        let g = geometry();
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
            assert!((dx[i] - num).abs() < 1e-3, "dx[{i}] {} vs {num}", dx[i]);
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
