//! Plain-slice kernels of the network: 2-D convolution (symmetric zero
//! padding; stride 1, or 2 as stride 1 on the input's phases) as a direct convolution over a
//! padded image (see `microkernels`) or by Winograd's method, 2x2 max- and
//! average pooling, and dense layers through `gemm`.
//!
//! They serve three callers: the training tape (see `tape_ops`), plain
//! inference, and LRP's relevance passes, which run the same layers with
//! modified weights. Work is split over images with rayon; every image is
//! computed by one thread and reductions over the batch run in a fixed
//! order, so results do not depend on the number of threads or on the
//! batch an image came in.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use crate::geometry::RowLayout;
pub use crate::geometry::{ConvGeometry, PoolGeometry};
use crate::isa::Isa;
use crate::microkernels::{
    pool_row, relu_gradient, tap_products, tap_products_rows, transpose, transpose_planes, unpool_row, weight_gradient, Rows,
};
use crate::strided::PhaseSplit;
use crate::winograd::{Winograd, WinogradBuffers, WinogradGradient};

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

/// `dst (m x n, row-major) (+)= a (m x k) · b (k x n)`, on the calling
/// thread or, with `Parallelism::Rayon`, split over rayon's threads by
/// blocks of the destination (gemm never splits the sum over k, so the
/// result does not depend on the thread count).
fn matmul(dst: &mut [f32], accumulate: bool, a: Mat, b: Mat, shape: (usize, usize, usize), parallelism: gemm::Parallelism) {
    assert!(dst.len() >= shape.0 * shape.1, "matmul destination too small");
    // SAFETY: `dst` holds the m·n floats, initialised.
    unsafe { matmul_into(dst.as_mut_ptr(), accumulate, a, b, shape, parallelism) }
}

/// `a (m x k) · b (k x n)` into a new row-major vector that only the
/// product writes: a large one (a dense layer's weight gradient, 4.7 MB in
/// the complex model) is not zero-filled first.
fn product(a: Mat, b: Mat, (m, n, k): (usize, usize, usize), parallelism: gemm::Parallelism) -> Vec<f32> {
    let mut dst = Vec::with_capacity(m * n);
    // SAFETY: the spare capacity holds m·n floats; without `accumulate`
    // they are written and never read. Every one of them is written (by
    // gemm, or as zeros where k is 0), so the length can then cover them.
    unsafe {
        matmul_into(dst.as_mut_ptr(), false, a, b, (m, n, k), parallelism);
        dst.set_len(m * n);
    }
    dst
}

/// [`matmul`] into `dst`.
///
/// # Safety
/// `dst` must be valid for writes of m·n floats, and hold them initialised
/// where `accumulate` is set (which reads them).
unsafe fn matmul_into(
    dst: *mut f32,
    accumulate: bool,
    a: Mat,
    b: Mat,
    (m, n, k): (usize, usize, usize),
    parallelism: gemm::Parallelism,
) {
    a.check(m, k, "matmul lhs");
    b.check(k, n, "matmul rhs");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            // SAFETY: `dst` is valid for m·n floats (the caller's
            // contract); zero bits are 0.0.
            unsafe { std::ptr::write_bytes(dst, 0, m * n) };
        }
        return;
    }
    // gemm's micro-kernels tile the rows of its destination 24 to 64 at a
    // time (by instruction set): with few rows (a layer's channels) and many columns (positions),
    // computing the transpose `bᵀ·aᵀ` into the same memory fills the tiles.
    let (rows, cols, dst_cs, dst_rs, lhs, rhs) = if m < n {
        (n, m, n, 1, (b.data, b.row_stride, b.col_stride), (a.data, a.row_stride, a.col_stride))
    } else {
        (m, n, 1, n, (a.data, a.col_stride, a.row_stride), (b.data, b.col_stride, b.row_stride))
    };
    // Split by us, not by gemm: gemm packs the whole left operand on the
    // calling thread before it splits, and with two threads that serial
    // packing idled the other one for a few percent of a training step.
    // Each stretch of destination rows is a serial gemm of its own, whose
    // sums do not depend on where the stretch starts or ends (gemm blocks
    // k by k alone), so no result depends on the thread count. (For small
    // products, such as the simple model's, gemm's parallel path had
    // summed in another order than its serial one.)
    let stretches = match parallelism {
        gemm::Parallelism::None => 1,
        _ => (2 * rayon::current_num_threads()).min(rows.div_ceil(MIN_ROWS_PER_STRETCH)).max(1),
    };
    let per_stretch = rows.div_ceil(stretches);
    let dst_address = dst as usize;
    let run = |first: usize| {
        let count = per_stretch.min(rows - first);
        // SAFETY: the views were bounds-checked above for the given
        // extents, and `dst` holds m*n floats laid out row-major
        // (read as its transpose, column-major, in the first case). The
        // stretches cover disjoint rows of the destination, so no two
        // write the same floats.
        unsafe {
            gemm::gemm(
                count,
                cols,
                k,
                (dst_address as *mut f32).add(first * dst_rs),
                dst_cs as isize,
                dst_rs as isize,
                accumulate,
                lhs.0.as_ptr().add(first * lhs.2),
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
    };
    if stretches == 1 {
        run(0);
    } else {
        (0..rows).into_par_iter().step_by(per_stretch).for_each(run);
    }
}

/// Fewest destination rows [`matmul`] gives a thread.
const MIN_ROWS_PER_STRETCH: usize = 64;

/// Images per partial sum of the weight gradient: a fixed number, so the
/// order of the sums does not depend on the thread count.
pub(crate) const IMAGES_PER_PARTIAL_GRADIENT: usize = 4;

/// `y = conv(x, weight) + bias` for a batch of images (N·C·H·W), each image
/// computed alone by one thread.
pub fn conv2d_forward(x: &[f32], g: &ConvGeometry, weight: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    conv2d_forward_with(x, g, weight, bias, false)
}

/// [`conv2d_forward`], followed by a ReLU when `relu` is set (one pass over
/// the output instead of two).
pub fn conv2d_forward_with(x: &[f32], g: &ConvGeometry, weight: &[f32], bias: Option<&[f32]>, relu: bool) -> Vec<f32> {
    forward_on(Isa::detected(), x, g, weight, bias, relu, false).0
}

/// The convolution's output and its ReLU, written in one pass.
pub fn conv2d_forward_and_relu(x: &[f32], g: &ConvGeometry, weight: &[f32], bias: Option<&[f32]>) -> (Vec<f32>, Vec<f32>) {
    let (activated, output) = forward_on(Isa::detected(), x, g, weight, bias, true, true);
    (output.expect("kept on request"), activated)
}

/// A convolution prepared for a batch: its weights laid out for the
/// method that computes it.
pub(crate) struct ConvPass {
    g: ConvGeometry,
    /// `g`'s output width and plane, which a pass reads for every output
    /// row (each is a division by the stride).
    out_width: usize,
    out_plane: usize,
    method: Method,
    bias: Option<Vec<f32>>,
    relu: bool,
}

enum Method {
    /// The microkernel over the padded image (see `microkernels`).
    Direct {
        isa: Isa,
        block: usize,
        packed: Vec<f32>,
        offsets: Vec<usize>,
        positions: usize,
        /// The real positions among them, where the products can skip the
        /// virtual ones: rows of whole vectors (16-wide planes with
        /// AVX-512, 8- and 16-wide with AVX2), with virtual columns
        /// between them.
        real_rows: Option<Rows>,
    },
    Winograd(Winograd),
}

/// A thread's reusable buffers for one [`ConvPass`].
#[derive(Default)]
pub(crate) struct PassBuffers {
    padded: Vec<f32>,
    products: Vec<f32>,
    winograd: WinogradBuffers,
}

impl ConvPass {
    pub(crate) fn new(isa: Isa, g: &ConvGeometry, weight: &[f32], bias: Option<&[f32]>, relu: bool) -> Self {
        ConvPass::with_taps(isa, g, weight, (bias, relu), &g.all_taps())
    }

    /// A pass whose direct method computes the kernel's taps `taps` alone
    /// (indices into a patch, in order), where the others' weights are zero
    /// (a strided convolution's phase kernel, see `strided`): the sums are
    /// the same, without the zero products. Winograd's method, where it
    /// applies, computes every tap.
    pub(crate) fn with_taps(
        isa: Isa,
        g: &ConvGeometry,
        weight: &[f32],
        (bias, relu): (Option<&[f32]>, bool),
        taps: &[usize],
    ) -> Self {
        assert_eq!(g.stride, 1, "a pass computes a stride-1 convolution (see `strided`)");
        assert_eq!(weight.len(), g.weight_len(), "conv2d weight length");
        if let Some(bias) = bias {
            assert_eq!(bias.len(), g.out_channels, "conv2d bias length");
        }
        let method = if Winograd::applies(g) {
            Method::Winograd(Winograd::new(isa, g, weight))
        } else {
            let block = isa.channel_block(g.out_channels, g.virtual_positions());
            let packed = g.pack_weights(weight, block, taps);
            let offsets = select_taps(&g.tap_offsets(), taps);
            let rows = g.output_rows();
            let whole_vectors = isa.vector_width().is_some_and(|width| rows.width.is_multiple_of(width));
            let real_rows = (whole_vectors && rows.pitch > rows.width).then_some(rows);
            Method::Direct { isa, block, packed, offsets, positions: g.virtual_positions(), real_rows }
        };
        let (out_width, out_plane) = (g.out_width(), g.out_plane());
        ConvPass { g: *g, out_width, out_plane, method, bias: bias.map(<[f32]>::to_vec), relu }
    }

    /// The pass that computes a strided convolution as the stride-1
    /// convolution of its input's phases (see `strided`), on the phase
    /// kernel's real taps alone.
    pub(crate) fn of_phases(isa: Isa, split: &PhaseSplit, weight: &[f32], (bias, relu): (Option<&[f32]>, bool)) -> Self {
        ConvPass::with_taps(isa, &split.phased, &split.weight(weight), (bias, relu), &split.real_taps())
    }

    /// The pass whose forward computation is this convolution's input
    /// gradient (see [`ConvGeometry::transposed`]).
    pub(crate) fn input_gradient(isa: Isa, g: &ConvGeometry, weight: &[f32]) -> Self {
        assert_eq!(weight.len(), g.weight_len(), "conv2d weight length");
        assert!(g.padding < g.kernel, "conv2d input gradient needs padding below the kernel size");
        let (transposed, flipped) = g.transposed(weight);
        ConvPass::new(isa, &transposed, &flipped, None, false)
    }

    pub(crate) fn geometry(&self) -> &ConvGeometry {
        &self.g
    }

    /// Copies one image into the padded layout this pass reads (see
    /// [`ConvGeometry::pad_image`] and the Winograd tiling's `pad`).
    pub(crate) fn pad(&self, image: &[f32], padded: &mut Vec<f32>) {
        match &self.method {
            Method::Direct { .. } => self.g.pad_image(image, padded, false),
            Method::Winograd(method) => method.tiling().pad(image, padded),
        }
    }

    /// One image's output (after the ReLU if the pass has one) into `out`,
    /// and the output before the ReLU into `pre` when given.
    pub(crate) fn image(&self, buffers: &mut PassBuffers, image: &[f32], out: &mut [f32], pre: Option<&mut [f32]>) {
        // SAFETY: `image_into` writes only values into the slots.
        let (out, pre) = unsafe { (as_slots(out), pre.map(|pre| as_slots(pre))) };
        self.image_into(buffers, image, out, pre);
    }

    /// [`ConvPass::image`] into slots that need not hold values yet: it
    /// writes every one of them.
    fn image_into(
        &self,
        buffers: &mut PassBuffers,
        image: &[f32],
        out: &mut [MaybeUninit<f32>],
        pre: Option<&mut [MaybeUninit<f32>]>,
    ) {
        let PassBuffers { padded, products, winograd } = buffers;
        self.pad(image, padded);
        self.compute(padded, products, winograd, out, pre);
    }

    /// [`ConvPass::image`] for an image the caller has padded as
    /// [`ConvPass::pad`] does (a direct pass also reads the layout with the
    /// row of ones after it).
    pub(crate) fn padded_image(&self, buffers: &mut PassBuffers, padded: &[f32], out: &mut [f32]) {
        // SAFETY: `compute` writes only values into the slots.
        let out = unsafe { as_slots(out) };
        self.compute(padded, &mut buffers.products, &mut buffers.winograd, out, None);
    }

    /// Writes every value of `out` (and of `pre` when given): each method
    /// hands [`ConvPass::finish_rows`] every row of every output channel
    /// (the direct loop below; Winograd's output transform, whole planes or
    /// every row of each channel). The outputs of a batch pass are not
    /// zeroed first because of this (zeroing them took 9% of the time of
    /// explaining 200 images by their gradient, forward pass included);
    /// `every_output_is_written` checks it for each method and
    /// instruction set.
    fn compute(
        &self,
        padded: &[f32],
        products: &mut Vec<f32>,
        winograd: &mut WinogradBuffers,
        out: &mut [MaybeUninit<f32>],
        mut pre: Option<&mut [MaybeUninit<f32>]>,
    ) {
        let g = &self.g;
        assert_eq!(out.len(), g.out_len(), "conv2d output of one image");
        match &self.method {
            Method::Direct { isa, block, packed, offsets, positions, real_rows } => {
                products.resize(g.out_channels.next_multiple_of(*block) * positions, 0.0);
                match real_rows {
                    Some(rows) => tap_products_rows(*isa, *block, padded, offsets, packed, (*rows, *positions), products),
                    None => tap_products(*isa, *block, padded, offsets, packed, *positions, products),
                }
                let (row, ow) = (g.padded_width(), g.out_width());
                for o in 0..g.out_channels {
                    for y in 0..g.out_height() {
                        self.finish_rows(o, y, &products[o * positions + y * row..][..ow], out, pre.as_deref_mut());
                    }
                }
            }
            Method::Winograd(method) => {
                method.padded_image(winograd, padded, |o, y, values| self.finish_rows(o, y, values, out, pre.as_deref_mut()))
            }
        }
    }

    /// Output rows of channel `o` from row `y` on, as many whole rows as
    /// `products` holds: bias, ReLU, and the value before the ReLU into
    /// `pre` when given.
    fn finish_rows(
        &self,
        o: usize,
        y: usize,
        products: &[f32],
        out: &mut [MaybeUninit<f32>],
        pre: Option<&mut [MaybeUninit<f32>]>,
    ) {
        let len = products.len();
        debug_assert_eq!(len % self.out_width, 0, "whole output rows");
        let at = o * self.out_plane + y * self.out_width;
        let b = self.bias.as_ref().map_or(0.0, |b| b[o]);
        let dst = &mut out[at..][..len];
        // A loop per case for the output alone, so that neither tests the
        // ReLU per value. With a kept pre-activation (beside a ReLU, where
        // the passes keep one) the ReLU test is the same for every value
        // of the loop; both slots are written either way, since the
        // outputs are not zeroed first.
        match (self.relu, pre) {
            (false, None) => dst.iter_mut().zip(products).for_each(|(d, &s)| {
                d.write(s + b);
            }),
            (true, None) => dst.iter_mut().zip(products).for_each(|(d, &s)| {
                d.write((s + b).max(0.0));
            }),
            (relu, Some(pre)) => {
                for ((d, p), &s) in dst.iter_mut().zip(&mut pre[at..][..len]).zip(products) {
                    p.write(s + b);
                    d.write(if relu { (s + b).max(0.0) } else { s + b });
                }
            }
        }
    }
}

/// The convolution (with ReLU when `relu` is set) and, when
/// `keep_pre_activation` is set, the output before the ReLU too. A strided
/// convolution runs as the stride-1 convolution of its input's phases (see
/// `strided`).
fn forward_on(
    isa: Isa,
    x: &[f32],
    g: &ConvGeometry,
    weight: &[f32],
    bias: Option<&[f32]>,
    relu: bool,
    keep_pre_activation: bool,
) -> (Vec<f32>, Option<Vec<f32>>) {
    assert_eq!(x.len() % g.in_len(), 0, "conv2d input is not a whole number of images");
    if g.stride != 1 {
        let split = PhaseSplit::new(g);
        let pass = ConvPass::of_phases(isa, &split, weight, (bias, relu));
        return run_pass(&pass, x, Some(&split), keep_pre_activation);
    }
    run_pass(&ConvPass::new(isa, g, weight, bias, relu), x, None, keep_pre_activation)
}

/// The entries of `all` (one per kernel tap) at `taps`.
fn select_taps(all: &[usize], taps: &[usize]) -> Vec<usize> {
    taps.iter().map(|&t| all[t]).collect()
}

/// `pass` over every image of `x`, in parallel; with `phases`, over each
/// image's phases (`pass` is then that split's phase convolution).
fn run_pass(pass: &ConvPass, x: &[f32], phases: Option<&PhaseSplit>, keep_pre_activation: bool) -> (Vec<f32>, Option<Vec<f32>>) {
    let g = pass.geometry();
    let image_len = phases.map_or(g.in_len(), PhaseSplit::image_len);
    assert_eq!(x.len() % image_len, 0, "convolution input is not a whole number of images");
    let len = x.len() / image_len * g.out_len();
    // Not zeroed: the pass writes every output (see `ConvPass::compute`).
    let mut y = Vec::with_capacity(len);
    let mut pre = keep_pre_activation.then(|| Vec::with_capacity(len));
    let image = |(buffers, split): &mut (PassBuffers, Vec<f32>), image, out, pre| {
        pass.image_into(buffers, PhaseSplit::pass_input(phases, image, split), out, pre)
    };
    let outputs = y.spare_capacity_mut()[..len].par_chunks_mut(g.out_len());
    match pre.as_mut() {
        Some(pre) => outputs
            .zip(pre.spare_capacity_mut()[..len].par_chunks_mut(g.out_len()))
            .zip(x.par_chunks(image_len))
            .for_each_init(Default::default, |buffers, ((out, pre), x)| image(buffers, x, out, Some(pre))),
        None => {
            outputs.zip(x.par_chunks(image_len)).for_each_init(Default::default, |buffers, (out, x)| image(buffers, x, out, None))
        }
    }
    // SAFETY: `x` holds `len / out_len` whole images (asserted above), so
    // the loop above handed every `out_len` chunk of the first `len` slots
    // of `y` (and of `pre`) to `ConvPass::compute`, which writes every
    // slot it is given; a panic in it leaves the lengths at zero.
    unsafe {
        y.set_len(len);
        if let Some(pre) = pre.as_mut() {
            pre.set_len(len);
        }
    }
    (y, pre)
}

/// `values` as slots that [`ConvPass::compute`] writes.
///
/// # Safety
/// Only values may be written into the slots, never
/// `MaybeUninit::uninit()`: `values` must stay initialised.
unsafe fn as_slots(values: &mut [f32]) -> &mut [MaybeUninit<f32>] {
    // SAFETY: `MaybeUninit<f32>` has the layout of `f32`; the caller keeps
    // the values initialised.
    unsafe { &mut *(values as *mut [f32] as *mut [MaybeUninit<f32>]) }
}

/// Gradient of a convolution's output with respect to its input: the
/// forward pass of the transposed convolution of `dy` with `weight`.
pub fn conv2d_backward_input(dy: &[f32], g: &ConvGeometry, weight: &[f32]) -> Vec<f32> {
    assert_eq!(dy.len() % g.out_len(), 0, "conv2d output gradient is not a whole number of images");
    let isa = Isa::detected();
    if g.stride == 1 {
        return run_pass(&ConvPass::input_gradient(isa, g, weight), dy, None, false).0;
    }
    let strided = StridedInputGradient::new(isa, g, weight);
    // Not zeroed: `StridedInputGradient::image` writes every value.
    let mut dx = Vec::with_capacity(dy.len() / g.out_len() * g.in_len());
    let len = dx.capacity();
    dx.spare_capacity_mut()[..len]
        .par_chunks_mut(g.in_len())
        .zip(dy.par_chunks(g.out_len()))
        .for_each_init(InputGradientBuffers::default, |buffers, (dx, dy)| strided.image_into(buffers, dy, dx));
    // SAFETY: `dy` holds `len / in_len` whole images (asserted above), so
    // the loop handed every `in_len` chunk of the first `len` slots to
    // `StridedInputGradient::image_into`, which writes every slot.
    unsafe { dx.set_len(len) };
    dx
}

/// A convolution's input gradient, one image at a time.
pub(crate) enum InputGradient {
    /// A stride-1 convolution's: the forward pass of its transposed
    /// convolution.
    Transposed(ConvPass),
    /// A strided convolution's, from the gradient of its phases.
    Phased(StridedInputGradient),
}

/// A thread's reusable buffers for an [`InputGradient`].
#[derive(Default)]
pub(crate) struct InputGradientBuffers {
    pass: PassBuffers,
    padded: Vec<f32>,
    d_phases: Vec<f32>,
}

impl InputGradient {
    pub(crate) fn new(isa: Isa, g: &ConvGeometry, weight: &[f32]) -> Self {
        match g.stride {
            1 => InputGradient::Transposed(ConvPass::input_gradient(isa, g, weight)),
            _ => InputGradient::Phased(StridedInputGradient::new(isa, g, weight)),
        }
    }

    /// One image's input gradient from its output gradient `dy` into `dx`
    /// (every value written).
    pub(crate) fn image(&self, buffers: &mut InputGradientBuffers, dy: &[f32], dx: &mut [f32]) {
        match self {
            InputGradient::Transposed(pass) => pass.image(&mut buffers.pass, dy, dx, None),
            // SAFETY: `image_into` writes only values into the slots.
            InputGradient::Phased(strided) => strided.image_into(buffers, dy, unsafe { as_slots(dx) }),
        }
    }
}

/// The input gradient of a strided convolution: the gradient of its phases
/// (a pass per phase of their channels, each with the taps that phase
/// has), put back in the input's layout.
pub(crate) struct StridedInputGradient {
    split: PhaseSplit,
    passes: Vec<ConvPass>,
}

impl StridedInputGradient {
    fn new(isa: Isa, g: &ConvGeometry, weight: &[f32]) -> Self {
        let split = PhaseSplit::new(g);
        let passes = split
            .transposed_by_phase(weight)
            .iter()
            .map(|phase| ConvPass::with_taps(isa, &phase.geometry, &phase.weight, (None, false), &phase.taps))
            .collect();
        StridedInputGradient { split, passes }
    }

    /// One image's input gradient into slots that need not hold values
    /// yet: it writes every one of them.
    fn image_into(&self, buffers: &mut InputGradientBuffers, dy: &[f32], dx: &mut [MaybeUninit<f32>]) {
        let InputGradientBuffers { pass: pass_buffers, padded, d_phases } = buffers;
        let phase_len = self.passes[0].geometry().out_len();
        // Every phase value is written by its pass.
        d_phases.resize(self.split.phased.in_len(), 0.0);
        self.passes[0].pad(dy, padded);
        for (pass, out) in self.passes.iter().zip(d_phases.chunks_exact_mut(phase_len)) {
            pass.padded_image(pass_buffers, padded, out);
        }
        self.split.image_gradient(d_phases, dx);
    }
}

/// Gradients of a convolution's weight and bias, summed over the batch in a
/// fixed order (the result does not depend on the thread count).
pub fn conv2d_backward_params(x: &[f32], dy: &[f32], g: &ConvGeometry) -> (Vec<f32>, Vec<f32>) {
    params_on(Isa::detected(), x, dy, g)
}

/// The weight and bias gradients; a strided convolution's through the
/// phase kernel's (see `strided`).
fn params_on(isa: Isa, x: &[f32], dy: &[f32], g: &ConvGeometry) -> (Vec<f32>, Vec<f32>) {
    assert_eq!(x.len() % g.in_len(), 0, "conv2d input is not a whole number of images");
    let batch = x.len() / g.in_len();
    assert_eq!(dy.len(), batch * g.out_len(), "conv2d output gradient length");
    if g.stride != 1 {
        let split = PhaseSplit::new(g);
        let (d_phased, db) = params_of(&ParamGradient::of_phases(isa, &split), x, Some(&split), dy);
        return (split.weight_gradient(&d_phased), db);
    }
    params_of(&ParamGradient::new(isa, g), x, None, dy)
}

/// The weight and bias gradients by `params` (of a stride-1 convolution),
/// summed over groups of images in a fixed order; with `phases`, of each
/// image's phases (`params` is then that split's phase convolution's).
fn params_of(params: &ParamGradient, x: &[f32], phases: Option<&PhaseSplit>, dy: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let g = &params.g;
    let image_len = phases.map_or(g.in_len(), PhaseSplit::image_len);
    let per = IMAGES_PER_PARTIAL_GRADIENT;
    let partials: Vec<Vec<f32>> = x
        .par_chunks(per * image_len)
        .zip(dy.par_chunks(per * g.out_len()))
        .map_init(
            || (Vec::new(), Vec::new(), GradientBuffers::default()),
            |(padded, split_image, buffers): &mut (Vec<Vec<f32>>, Vec<f32>, _), (images, douts)| {
                let images: Vec<&[f32]> = images.chunks_exact(image_len).collect();
                padded.resize_with(images.len(), Vec::new);
                for (image, padded) in images.iter().zip(padded.iter_mut()) {
                    params.pad_input(PhaseSplit::pass_input(phases, image, split_image), padded);
                }
                let padded: Vec<&[f32]> = padded.iter().take(images.len()).map(Vec::as_slice).collect();
                let douts: Vec<&[f32]> = douts.chunks_exact(g.out_len()).collect();
                params.group(&padded, &douts, buffers)
            },
        )
        .collect();
    params.finish(&partials)
}

/// The weight and bias gradient of one convolution, as partial sums over
/// groups of images that are added in a fixed order. A partial sum is
/// `[tap][channel]`, channels padded to [`Isa::gradient_channel_width`],
/// with one tap more than the kernel has for the bias.
pub(crate) struct ParamGradient {
    g: ConvGeometry,
    channels: usize,
    /// The kernel's taps (indices into a patch) the partial sums hold, in
    /// order: every one, or those [`ParamGradient::with_taps`] names.
    taps: Vec<usize>,
    method: GradientMethod,
}

enum GradientMethod {
    /// The microkernel over the padded image. Its extra tap reads the row
    /// of ones after the padded image, so its gradient is the bias
    /// gradient.
    Direct { isa: Isa, offsets: Vec<usize> },
    /// Where the convolution itself runs by Winograd's method.
    Winograd(WinogradGradient),
}

/// A thread's reusable buffers for [`ParamGradient::group`].
#[derive(Default)]
pub(crate) struct GradientBuffers {
    transposed: Vec<f32>,
    winograd: WinogradBuffers,
}

impl ParamGradient {
    pub(crate) fn new(isa: Isa, g: &ConvGeometry) -> Self {
        ParamGradient::with_taps(isa, g, g.all_taps())
    }

    /// The gradient whose direct method computes the kernel's taps `taps`
    /// alone (indices into a patch, in order); the others' gradients are
    /// zero. Winograd's method, where it applies, computes every tap.
    pub(crate) fn with_taps(isa: Isa, g: &ConvGeometry, taps: Vec<usize>) -> Self {
        assert_eq!(g.stride, 1, "the weight gradient of a stride-1 convolution (see `strided`)");
        let channels = g.out_channels.next_multiple_of(isa.gradient_channel_width(g.out_channels));
        if Winograd::applies(g) {
            let method = GradientMethod::Winograd(WinogradGradient::new(isa, g, channels));
            return ParamGradient { g: *g, channels, taps: g.all_taps(), method };
        }
        let mut offsets = select_taps(&g.tap_offsets(), &taps);
        offsets.push(g.padded_len());
        ParamGradient { g: *g, channels, taps, method: GradientMethod::Direct { isa, offsets } }
    }

    /// The weight gradient of a strided convolution's phase convolution
    /// (see [`ConvPass::of_phases`]), on the phase kernel's real taps
    /// alone; [`PhaseSplit::weight_gradient`] reads the convolution's
    /// from it.
    pub(crate) fn of_phases(isa: Isa, split: &PhaseSplit) -> Self {
        ParamGradient::with_taps(isa, &split.phased, split.real_taps())
    }

    /// Copies one image (the convolution's input) into the padded layout
    /// the gradient reads. The forward [`ConvPass`] of the same geometry
    /// reads it too.
    pub(crate) fn pad_input(&self, image: &[f32], padded: &mut Vec<f32>) {
        match &self.method {
            GradientMethod::Direct { .. } => self.g.pad_image(image, padded, true),
            GradientMethod::Winograd(method) => method.tiling().pad(image, padded),
        }
    }

    /// Where the image's rows lie in a buffer [`ParamGradient::pad_input`]
    /// filled.
    pub(crate) fn input_layout(&self) -> RowLayout {
        match &self.method {
            GradientMethod::Direct { .. } => self.g.padded_layout(),
            GradientMethod::Winograd(method) => method.tiling().padded_layout(),
        }
    }

    /// Floats of a partial sum: `[tap][channel]`, the output channels
    /// padded to `channels` per tap, the bias last.
    fn partial_len(&self) -> usize {
        (self.taps.len() + 1) * self.channels
    }

    /// The partial sum of a group of images: `padded` holds the images as
    /// [`ParamGradient::pad_input`] pads them, `douts` the gradients of the
    /// convolution's outputs.
    pub(crate) fn group(&self, padded: &[&[f32]], douts: &[&[f32]], buffers: &mut GradientBuffers) -> Vec<f32> {
        let g = &self.g;
        assert_eq!(padded.len(), douts.len(), "one output gradient per image");
        match &self.method {
            GradientMethod::Direct { isa, offsets } => {
                let mut partial = vec![0.0f32; self.partial_len()];
                let (shape, row) = ((g.out_channels, g.out_height(), g.out_width()), g.padded_width());
                for (padded, dout) in padded.iter().zip(douts) {
                    assert_eq!(dout.len(), g.out_len(), "conv2d output gradient of one image");
                    transpose_planes(*isa, dout, shape, row, g.virtual_positions(), self.channels, &mut buffers.transposed);
                    let positions = (g.virtual_positions(), g.output_rows());
                    weight_gradient(*isa, padded, offsets, &buffers.transposed, positions, &mut partial, true);
                }
                partial
            }
            GradientMethod::Winograd(method) => method.group(padded, douts, &mut buffers.transposed, &mut buffers.winograd),
        }
    }

    /// The weight `[out][tap]` and bias gradients: the partial sums added
    /// in their order.
    pub(crate) fn finish(&self, partials: &[Vec<f32>]) -> (Vec<f32>, Vec<f32>) {
        let total = sum_in_order(partials, self.partial_len());
        let channels = self.channels;
        let mut dw = vec![0.0f32; self.g.weight_len()];
        for (o, row) in dw.chunks_exact_mut(self.g.patch_len()).enumerate() {
            for (i, &t) in self.taps.iter().enumerate() {
                row[t] = total[i * channels + o];
            }
        }
        let db = total[self.taps.len() * channels..][..self.g.out_channels].to_vec();
        (dw, db)
    }
}

/// The sum of partial sums of `len` floats each: every entry added over
/// the partials in their order, from zero, whichever thread takes its
/// stretch.
pub(crate) fn sum_in_order(partials: &[Vec<f32>], len: usize) -> Vec<f32> {
    const STRETCH: usize = 1 << 12;
    assert!(partials.iter().all(|partial| partial.len() == len), "partial sums of {len} floats");
    let mut total = vec![0.0f32; len];
    total.par_chunks_mut(STRETCH).enumerate().for_each(|(i, total)| {
        for partial in partials {
            total.iter_mut().zip(&partial[i * STRETCH..]).for_each(|(a, b)| *a += b);
        }
    });
    total
}

/// Max of each 2x2 window and, per output, the index of the winning input
/// within its image (the first maximum on ties, as PyTorch).
pub fn maxpool2x2_forward(x: &[f32], g: &PoolGeometry) -> (Vec<f32>, Vec<u32>) {
    assert_eq!(x.len() % g.in_len(), 0, "max-pool input is not a whole number of images");
    let batch = x.len() / g.in_len();
    let mut y = vec![0.0f32; batch * g.out_len()];
    let mut arg = vec![0u32; batch * g.out_len()];
    y.par_chunks_mut(g.out_len())
        .zip(arg.par_chunks_mut(g.out_len()))
        .zip(x.par_chunks(g.in_len()))
        .for_each(|((out, arg), image)| pool_image(g, image, out, arg));
    (y, arg)
}

/// One image's window maxima and their winners (indices within the image).
pub(crate) fn pool_image(g: &PoolGeometry, image: &[f32], out: &mut [f32], arg: &mut [u32]) {
    pool_image_on(Isa::detected(), g, image, out, arg)
}

fn pool_image_on(isa: Isa, g: &PoolGeometry, image: &[f32], out: &mut [f32], arg: &mut [u32]) {
    let (w, in_plane, ow, out_plane) = (g.width, g.height * g.width, g.out_width(), g.out_height() * g.out_width());
    for (c, (channel, (out, arg))) in
        image.chunks_exact(in_plane).zip(out.chunks_exact_mut(out_plane).zip(arg.chunks_exact_mut(out_plane))).enumerate()
    {
        for (oy, (out, arg)) in out.chunks_exact_mut(ow).zip(arg.chunks_exact_mut(ow)).enumerate() {
            let top = &channel[2 * oy * w..][..2 * ow];
            let bottom = &channel[(2 * oy + 1) * w..][..2 * ow];
            let first = c * in_plane + 2 * oy * w;
            if pool_row(isa, top, bottom, w, first as u32, out, arg) {
                continue;
            }
            for ox in 0..ow {
                let corners = [top[2 * ox], top[2 * ox + 1], bottom[2 * ox], bottom[2 * ox + 1]];
                let (best, value) = window_max(corners);
                out[ox] = value;
                arg[ox] = (first + 2 * ox + (best & 1) + (best >> 1) * w) as u32;
            }
        }
    }
}

/// The largest of a window's corners and its index: the first maximum, or
/// the last NaN where there is one (NaN propagates, as in PyTorch). Both
/// answers are computed and one is selected, so the loop has no branch on
/// the data (a random winner would mispredict) and can be vectorised.
#[inline(always)]
fn window_max(corners: [f32; 4]) -> (usize, f32) {
    let [a, b, c, d] = corners;
    let largest = a.max(b).max(c.max(d));
    let first_largest = if a == largest {
        0
    } else if b == largest {
        1
    } else if c == largest {
        2
    } else {
        3
    };
    let last_nan = if d.is_nan() {
        3
    } else if c.is_nan() {
        2
    } else if b.is_nan() {
        1
    } else {
        0
    };
    if a.is_nan() || b.is_nan() || c.is_nan() || d.is_nan() {
        (last_nan, corners[last_nan])
    } else {
        (first_largest, largest)
    }
}

/// Routes each output's gradient to the input that won its window (zero
/// to the others), image by image in whole vectors (see
/// [`unpool_image_dense`]); the same bits as adding each gradient to a
/// zeroed input at its winner.
pub fn maxpool2x2_backward(dy: &[f32], argmax: &[u32], g: &PoolGeometry) -> Vec<f32> {
    assert_eq!(dy.len(), argmax.len(), "max-pool gradient and argmax lengths");
    assert_eq!(dy.len() % g.out_len(), 0, "max-pool gradient is not a whole number of images");
    let batch = dy.len() / g.out_len();
    let isa = Isa::detected();
    let mut dx = vec![0.0f32; batch * g.in_len()];
    dx.par_chunks_mut(g.in_len())
        .zip(dy.par_chunks(g.out_len()).zip(argmax.par_chunks(g.out_len())))
        .for_each(|(dimage, (dout, arg))| unpool_image_dense_on(isa, g, dout, arg, None, dimage));
    dx
}

/// The gradient through a ReLU, in place: zero where the ReLU's input (or,
/// the same, its output) is not positive, in stretches of whole vectors
/// across the threads.
pub fn relu_backward(gradient: &mut [f32], input: &[f32]) {
    assert_eq!(gradient.len(), input.len(), "ReLU gradient and input lengths");
    let isa = Isa::detected();
    gradient.par_chunks_mut(1 << 14).zip(input.par_chunks(1 << 14)).for_each(|(g, x)| relu_gradient(isa, g, x));
}

/// One image's gradient before a 2x2 max-pool (`dimage`, every element
/// written) from the gradient after it: each window's winner (`arg` as
/// [`pool_image`] gives it) gets the window's gradient, every other input
/// zero. With `activated`, the pool's output (a ReLU's output, as the pool
/// follows the ReLU) and where its rows lie, windows whose output is not
/// positive pass nothing: the ReLU's gradient in the same pass.
pub(crate) fn unpool_image_dense(
    g: &PoolGeometry,
    dout: &[f32],
    arg: &[u32],
    activated: Option<(&[f32], RowLayout)>,
    dimage: &mut [f32],
) {
    unpool_image_dense_on(Isa::detected(), g, dout, arg, activated, dimage)
}

fn unpool_image_dense_on(
    isa: Isa,
    g: &PoolGeometry,
    dout: &[f32],
    arg: &[u32],
    activated: Option<(&[f32], RowLayout)>,
    dimage: &mut [f32],
) {
    assert!(dout.len() == g.out_len() && arg.len() == g.out_len() && dimage.len() == g.in_len(), "unpool image lengths");
    let (w, in_plane, ow) = (g.width, g.height * g.width, g.out_width());
    let rows = dout.chunks_exact(ow).zip(arg.chunks_exact(ow));
    for (r, (dout, arg)) in rows.enumerate() {
        let (c, oy) = (r / g.out_height(), r % g.out_height());
        let first = c * in_plane + 2 * oy * w;
        let activated = activated.map(|(y, (plane, row, first))| &y[c * plane + oy * row + first..][..ow]);
        let (top, bottom) = dimage[first..][..2 * w].split_at_mut(w);
        if !unpool_row(isa, dout, activated, arg, (first as u32, w as u32), top, bottom) {
            for (ox, (&d, &i)) in dout.iter().zip(arg).enumerate() {
                let kept = activated.is_none_or(|y| y[ox] > 0.0);
                let corner = i as usize - (first + 2 * ox);
                let value = |offset: usize| if kept && corner == offset { 0.0 + d } else { 0.0 };
                (top[2 * ox], top[2 * ox + 1]) = (value(0), value(1));
                (bottom[2 * ox], bottom[2 * ox + 1]) = (value(w), value(w + 1));
            }
        }
        // A last column outside every window.
        top[2 * ow..].fill(0.0);
        bottom[2 * ow..].fill(0.0);
    }
    // A last row outside every window.
    for channel in dimage.chunks_exact_mut(in_plane) {
        channel[2 * g.out_height() * w..].fill(0.0);
    }
}

/// Mean of each 2x2 window (odd trailing rows and columns dropped, as in
/// PyTorch's `AvgPool2d(2)`).
pub fn avgpool2x2_forward(x: &[f32], g: &PoolGeometry) -> Vec<f32> {
    assert_eq!(x.len() % g.in_len(), 0, "average-pool input is not a whole number of images");
    let mut y = vec![0.0f32; x.len() / g.in_len() * g.out_len()];
    y.par_chunks_mut(g.out_len()).zip(x.par_chunks(g.in_len())).for_each(|(out, image)| {
        for (out, [a, b, c, d]) in out.iter_mut().zip(g.windows()) {
            *out = (image[a] + image[b] + image[c] + image[d]) * 0.25;
        }
    });
    y
}

/// The gradient before a 2x2 average pool: a quarter of each window's
/// gradient to each of its inputs, zero outside every window.
pub fn avgpool2x2_backward(dy: &[f32], g: &PoolGeometry) -> Vec<f32> {
    assert_eq!(dy.len() % g.out_len(), 0, "average-pool gradient is not a whole number of images");
    let mut dx = vec![0.0f32; dy.len() / g.out_len() * g.in_len()];
    dx.par_chunks_mut(g.in_len()).zip(dy.par_chunks(g.out_len())).for_each(|(dimage, dout)| {
        for (&d, corners) in dout.iter().zip(g.windows()) {
            corners.iter().for_each(|&i| dimage[i] = d * 0.25);
        }
    });
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
            for (&d, corners) in dout.iter().zip(g.windows()) {
                let total: f32 = corners.iter().map(|&i| w[i]).sum();
                for &i in &corners {
                    dimage[i] += if total != 0.0 { d * w[i] / total } else { d * 0.25 };
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
const ROWS_PER_PRODUCT: usize = 64;

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
    let (_, outputs) = dense_shape(x, inputs, weight);
    let columns = weight_columns(Isa::detected(), weight, inputs);
    by_row_blocks(x, inputs, outputs, |rows, out| {
        if let Some(bias) = bias {
            for row in out.chunks_mut(outputs) {
                row.copy_from_slice(bias);
            }
        }
        let m = ROWS_PER_PRODUCT;
        matmul(
            out,
            bias.is_some(),
            Mat::row_major(rows, inputs),
            Mat::row_major(&columns, outputs),
            (m, outputs, inputs),
            SERIAL,
        );
    })
}

/// A dense layer's weight `[out, in]` as `[in, out]`, for gemm.
///
/// gemm packs the weight of `x · weightᵀ` (its left operand: the product
/// is computed transposed) a few output rows at a time for each input.
/// From `[out, in]` it gathers them one float at a time, rows apart; from
/// `[in, out]` it copies whole vectors. The packed values and the order of
/// the sums are the same, so the result is too. The gather took 13% of a
/// saliency pass on cifar complex (2048 inputs, rows 8 KiB apart); the
/// copy and the vector packing take about a fifth of that. The training
/// step's [`dense_batch_forward`] keeps the gather: packing its weight
/// once per step, it gained on cifar complex and lost on fmnist complex
/// about what the copy costs.
fn weight_columns(isa: Isa, weight: &[f32], inputs: usize) -> Vec<f32> {
    /// Inputs a thread transposes at a time.
    const BAND: usize = 64;
    let outputs = weight.len() / inputs;
    let mut columns = vec![0.0f32; weight.len()];
    if outputs > 0 {
        columns.par_chunks_mut(BAND * outputs).enumerate().for_each(|(band, dst)| {
            let first = band * BAND;
            transpose(isa, &weight[first..], (outputs, inputs), dst.len() / outputs, (dst, outputs));
        });
    }
    columns
}

/// `dx = dy · weight`: the gradient of a dense layer with respect to its input.
pub fn dense_backward_input(dy: &[f32], inputs: usize, weight: &[f32]) -> Vec<f32> {
    let outputs = weight.len() / inputs;
    assert_eq!(dy.len() % outputs, 0, "dense output gradient is not a whole number of rows");
    by_row_blocks(dy, outputs, inputs, |rows, out| {
        matmul(
            out,
            false,
            Mat::row_major(rows, outputs),
            Mat::row_major(weight, inputs),
            (ROWS_PER_PRODUCT, inputs, outputs),
            SERIAL,
        );
    })
}

/// The dense layer of a training step, `y = x · weightᵀ + bias` over the
/// whole batch as one product split over the threads. Unlike
/// [`dense_forward`], a row's result depends on the batch size (gemm tiles
/// the batch), which a training batch of fixed size does not mind.
pub fn dense_batch_forward(x: &[f32], inputs: usize, weight: &[f32], bias: &[f32]) -> Vec<f32> {
    let (batch, outputs) = dense_shape(x, inputs, weight);
    assert_eq!(bias.len(), outputs, "dense bias length");
    let mut y: Vec<f32> = bias.iter().copied().cycle().take(batch * outputs).collect();
    let shape = (batch, outputs, inputs);
    matmul(&mut y, true, Mat::row_major(x, inputs), Mat::transposed(weight, inputs), shape, PARALLEL);
    y
}

/// The gradients of [`dense_batch_forward`] from its output gradient `dy`:
/// weight `[out, in]`, bias, and input.
pub fn dense_batch_backward(x: &[f32], dy: &[f32], inputs: usize, weight: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (batch, outputs) = dense_shape(x, inputs, weight);
    assert_eq!(dy.len(), batch * outputs, "dense output gradient length");
    let dw = product(Mat::transposed(dy, outputs), Mat::row_major(x, inputs), (outputs, inputs, batch), PARALLEL);
    let dx = product(Mat::row_major(dy, outputs), Mat::row_major(weight, inputs), (batch, inputs, outputs), PARALLEL);
    let mut db = vec![0.0f32; outputs];
    for row in dy.chunks_exact(outputs) {
        db.iter_mut().zip(row).for_each(|(s, &d)| *s += d);
    }
    (dw, db, dx)
}

/// (rows, outputs) of a dense layer's input, checked against its weight.
fn dense_shape(x: &[f32], inputs: usize, weight: &[f32]) -> (usize, usize) {
    assert!(inputs > 0 && x.len() % inputs == 0, "dense input is not a whole number of rows of {inputs}");
    assert_eq!(weight.len() % inputs, 0, "dense weight length");
    (x.len() / inputs, weight.len() / inputs)
}

const SERIAL: gemm::Parallelism = gemm::Parallelism::None;
const PARALLEL: gemm::Parallelism = gemm::Parallelism::Rayon(0);

/// One of the three computations of a convolution layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvWork {
    /// [`conv2d_forward`].
    Forward,
    /// [`conv2d_backward_input`].
    InputGradient,
    /// [`conv2d_backward_params`].
    WeightGradient,
}

/// How the kernels compute one image's share of a [`ConvWork`], and the
/// multiply-adds that takes (neither count includes padding): what a layer
/// benchmark divides by the time to say how near the FMA peak it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvArithmetic {
    /// `direct` or `winograd`, after `phases+` for a strided convolution
    /// (see `strided`).
    pub method: &'static str,
    /// As a direct convolution of the layer: output positions · input
    /// channels · output channels · kernel².
    pub direct: u64,
    /// As `method` computes it: Winograd's 16 (3x3) or 36 (5x5) per 2x2
    /// output tile and channel pair; a strided convolution's on its phases.
    pub computed: u64,
}

/// The arithmetic of `work` on one image of a convolution of geometry `g`.
pub fn conv_arithmetic(g: &ConvGeometry, work: ConvWork) -> ConvArithmetic {
    let direct = (g.out_height() * g.out_width() * g.in_channels * g.out_channels * g.kernel * g.kernel) as u64;
    if g.stride != 1 {
        let split = PhaseSplit::new(g);
        let phases = conv_arithmetic(&split.phased, work);
        if phases.method == "winograd" {
            return ConvArithmetic { method: "phases+winograd", direct, computed: phases.computed };
        }
        // The direct passes compute the phase kernel's real taps alone: the
        // forward pass and weight gradient per output position, the input
        // gradient per phase position (each phase with its own taps).
        let computed = match work {
            ConvWork::InputGradient => {
                let phase = split.phase_gradient_geometry();
                let taps: usize = (0..g.stride * g.stride).map(|p| split.phase_gradient_taps(p).len()).sum();
                (phase.out_height() * phase.out_width() * taps * phase.out_channels) as u64
            }
            ConvWork::Forward | ConvWork::WeightGradient => {
                (g.out_height() * g.out_width() * split.real_taps().len() * g.out_channels) as u64
            }
        };
        return ConvArithmetic { method: "phases+direct", direct, computed };
    }
    // The input gradient runs as the forward pass of the transposed
    // convolution, so its method is chosen on that geometry.
    let chosen = match work {
        ConvWork::InputGradient => g.transposed_geometry(),
        ConvWork::Forward | ConvWork::WeightGradient => *g,
    };
    if let Some(elements) = Winograd::tile_elements(&chosen) {
        let tiles = (chosen.out_height().div_ceil(2) * chosen.out_width().div_ceil(2)) as u64;
        let computed = elements as u64 * tiles * (chosen.in_channels * chosen.out_channels) as u64;
        ConvArithmetic { method: "winograd", direct, computed }
    } else {
        ConvArithmetic { method: "direct", direct, computed: direct }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isa::TestedIsas;
    use crate::winograd::{MIN_CHANNELS_5X5, MIN_INPUT_CHANNELS};
    use common::rng::Rng;

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
                                    let iy = (oy * g.stride) as isize + ky as isize - g.padding as isize;
                                    let ix = (ox * g.stride) as isize + kx as isize - g.padding as isize;
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

    /// `Σ_n Σ_(y,x) dy[n][o][y][x] · x[n][c][y + ky - p][x + kx - p]` in
    /// double precision, and the bias gradient.
    fn naive_params(x: &[f32], dy: &[f32], g: &ConvGeometry) -> (Vec<f32>, Vec<f32>) {
        let (oh, ow, k, p) = (g.out_height(), g.out_width(), g.kernel, g.padding as isize);
        let mut dw = vec![0.0f64; g.weight_len()];
        let mut db = vec![0.0f64; g.out_channels];
        for (x, dy) in x.chunks_exact(g.in_len()).zip(dy.chunks_exact(g.out_len())) {
            for o in 0..g.out_channels {
                for (oy, ox) in (0..oh).flat_map(|oy| (0..ow).map(move |ox| (oy, ox))) {
                    let d = dy[(o * oh + oy) * ow + ox] as f64;
                    db[o] += d;
                    for (c, ky, kx) in
                        (0..g.in_channels).flat_map(|c| (0..k).flat_map(move |ky| (0..k).map(move |kx| (c, ky, kx))))
                    {
                        let (iy, ix) = ((oy * g.stride) as isize + ky as isize - p, (ox * g.stride) as isize + kx as isize - p);
                        if iy >= 0 && ix >= 0 && (iy as usize) < g.height && (ix as usize) < g.width {
                            let xv = x[(c * g.height + iy as usize) * g.width + ix as usize] as f64;
                            dw[((o * g.in_channels + c) * k + ky) * k + kx] += d * xv;
                        }
                    }
                }
            }
        }
        (dw.iter().map(|&v| v as f32).collect(), db.iter().map(|&v| v as f32).collect())
    }

    fn geometry() -> ConvGeometry {
        ConvGeometry { in_channels: 3, out_channels: 4, kernel: 3, padding: 1, height: 5, width: 6, stride: 1 }
    }

    fn assert_close(a: &[f32], b: &[f32], tol: f32) {
        assert_close_named(a, b, tol, "values");
    }

    fn assert_close_named(a: &[f32], b: &[f32], tol: f32, what: &str) {
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= tol * (1.0 + y.abs()), "{what}: index {i}: {x} vs {y}");
        }
    }

    #[test]
    fn conv_forward_matches_naive_reference() {
        for g in
            [geometry(), ConvGeometry { in_channels: 2, out_channels: 3, kernel: 5, padding: 2, height: 7, width: 7, stride: 1 }]
        {
            let x = random(5 * g.in_len(), 1);
            let w = random(g.weight_len(), 2);
            let b = random(g.out_channels, 3);
            assert_close(&conv2d_forward(&x, &g, &w, Some(&b)), &naive_conv(&x, &g, &w, &b), 1e-5);
            let zero = vec![0.0; g.out_channels];
            assert_close(&conv2d_forward(&x, &g, &w, None), &naive_conv(&x, &g, &w, &zero), 1e-5);
        }
    }

    /// Stride 2 (odd and even sides, with and without padding, Winograd's
    /// 3x3 and a direct 5x5) against the naive strided convolution and its
    /// weight gradient; the input gradient by the adjoint identity
    /// `<conv(x), dy> = <x, conv_input_gradient(dy)>` (bias zero).
    #[test]
    fn strided_convolutions_match_the_naive_reference() {
        let strided = |in_channels, out_channels, kernel, padding, height, width| ConvGeometry {
            in_channels,
            out_channels,
            kernel,
            padding,
            height,
            width,
            stride: 2,
        };
        for g in [
            strided(MIN_INPUT_CHANNELS, 5, 3, 1, 9, 8),
            strided(2, 3, 5, 2, 8, 8),
            strided(3, 4, 3, 0, 7, 6),
            strided(1, 2, 2, 0, 5, 5),
        ] {
            assert_eq!(g.out_height(), (g.height + 2 * g.padding - g.kernel) / 2 + 1);
            let (x, w, b) = (random(3 * g.in_len(), 40), random(g.weight_len(), 41), random(g.out_channels, 42));
            let dy = random(3 * g.out_len(), 43);
            let y = conv2d_forward(&x, &g, &w, Some(&b));
            assert_close_named(&y, &naive_conv(&x, &g, &w, &b), 1e-5, &format!("{g:?}: forward"));
            let (activated_pre, activated) = conv2d_forward_and_relu(&x, &g, &w, Some(&b));
            assert_eq!(activated_pre, y, "{g:?}: the output kept beside its ReLU");
            assert!(activated.iter().zip(&y).all(|(a, v)| *a == v.max(0.0)), "{g:?}: ReLU");
            let (dw, db) = conv2d_backward_params(&x, &dy, &g);
            let (naive_dw, naive_db) = naive_params(&x, &dy, &g);
            assert_close_named(&dw, &naive_dw, 1e-4, &format!("{g:?}: weight gradient"));
            assert_close_named(&db, &naive_db, 1e-4, &format!("{g:?}: bias gradient"));
            let dx = conv2d_backward_input(&dy, &g, &w);
            assert_eq!(dx.len(), x.len());
            let zero = vec![0.0; g.out_channels];
            let forward_side: f64 = naive_conv(&x, &g, &w, &zero).iter().zip(&dy).map(|(a, b)| (a * b) as f64).sum();
            let backward_side: f64 = x.iter().zip(&dx).map(|(a, b)| (a * b) as f64).sum();
            assert!(
                (forward_side - backward_side).abs() < 1e-4 * (1.0 + forward_side.abs()),
                "{g:?}: {forward_side} vs {backward_side}"
            );
        }
    }

    #[test]
    fn average_pool_by_hand() {
        let g = PoolGeometry { channels: 1, height: 3, width: 4 };
        let x: Vec<f32> = (1..=12).map(|v| v as f32).collect();
        // Windows (1, 2, 5, 6) and (3, 4, 7, 8); the third row lies outside both.
        assert_eq!(avgpool2x2_forward(&x, &g), [3.5, 5.5]);
        assert_eq!(avgpool2x2_backward(&[4.0, -8.0], &g), [1.0, 1.0, -2.0, -2.0, 1.0, 1.0, -2.0, -2.0, 0.0, 0.0, 0.0, 0.0]);
    }

    /// Every instruction-set variant of the microkernels this CPU runs (the
    /// detected one is what the other tests see) against the naive
    /// convolution and the naive weight gradient, for channel counts that
    /// fill and that leave partial blocks; the fused variants agree bit for
    /// bit, as the microkernels promise.
    #[test]
    fn every_microkernel_variant_matches_the_reference() {
        let isas = TestedIsas::new("kernels: every microkernel variant against the naive convolution");
        let case = |name: &'static str, in_channels, out_channels, kernel, height, width| {
            (name, ConvGeometry { in_channels, out_channels, kernel, padding: kernel / 2, height, width, stride: 1 })
        };
        let cases = [
            case("3 to 4 channels, 3x3 on 5x6", 3, 4, 3, 5, 6),
            case("40 outputs: whole and partial channel blocks", 3, 40, 3, 9, 7),
            case("5x5 kernel on 6x6", 2, 16, 5, 6, 6),
            case("80 virtual positions: whole blocks and a tail vector", 5, 12, 3, 8, 8),
            case("rows of whole vectors, virtual columns skipped", 3, 16, 5, 6, 16),
            case("seven rows of one AVX-512 vector: blocks of 3, 2 and 2", 3, 12, 3, 7, 16),
            case("32-wide rows, few channels", 2, 4, 3, 3, 32),
            case("five rows of one AVX-512 vector: blocks of 2, 2 and 1", 3, 4, 3, 5, 16),
            case("Winograd, odd and even sides", MIN_INPUT_CHANNELS, 4, 3, 5, 7),
            case("Winograd, channels past a vector", MIN_INPUT_CHANNELS + 3, 3, 3, 4, 6),
            case("Winograd, 35 tiles: two vectors and three tiles apart", MIN_INPUT_CHANNELS, 9, 3, 10, 13),
        ];
        for (name, g) in cases {
            let x = random(3 * g.in_len(), 20);
            let w = random(g.weight_len(), 21);
            let b = random(g.out_channels, 22);
            let dy = random(3 * g.out_len(), 23);
            let expected = naive_conv(&x, &g, &w, &b);
            let relu: Vec<f32> = expected.iter().map(|v| v.max(0.0)).collect();
            let (naive_dw, naive_db) = naive_params(&x, &dy, &g);
            let mut fused: Option<(Vec<f32>, Vec<f32>)> = None;
            isas.each(|isa| {
                let what = format!("{name} on {}", isa.name());
                let y = forward_on(isa, &x, &g, &w, Some(&b), false, false).0;
                assert_close_named(&y, &expected, 1e-5, &format!("{what}: forward"));
                let (activated, pre) = forward_on(isa, &x, &g, &w, Some(&b), true, true);
                assert_close_named(&activated, &relu, 1e-5, &format!("{what}: forward with ReLU"));
                assert_eq!(pre.as_ref(), Some(&y), "{what}: pre-activation kept beside the ReLU");
                let (dw, db) = params_on(isa, &x, &dy, &g);
                assert_close_named(&dw, &naive_dw, 1e-4, &format!("{what}: weight gradient"));
                assert_close_named(&db, &naive_db, 1e-4, &format!("{what}: bias gradient"));
                if isa != Isa::Portable {
                    match &fused {
                        Some((y0, dw0)) => assert!(y0 == &y && dw0 == &dw, "{what}: differs from the other fused variant"),
                        None => fused = Some((y, dw)),
                    }
                }
            });
        }
    }

    /// A batch pass does not zero its outputs, so every method must write
    /// every output and every kept pre-activation: slots that start as NaN
    /// all hold numbers afterwards, for the direct method (whole rows, rows
    /// of whole vectors, a phase kernel's taps), Winograd's (3x3 on odd and
    /// even sides, 5x5) and a transposed pass, with and without the ReLU.
    #[test]
    fn every_output_is_written() {
        let isas = TestedIsas::new("kernels: every output of a pass is written");
        let geometry = |in_channels, out_channels, kernel, height, width| ConvGeometry {
            in_channels,
            out_channels,
            kernel,
            padding: kernel / 2,
            height,
            width,
            stride: 1,
        };
        let cases = [
            ("direct, 3x3 on 5x6", geometry(3, 20, 3, 5, 6), None),
            ("direct, rows of whole vectors", geometry(3, 16, 5, 6, 16), None),
            ("direct, some taps", geometry(4, 8, 3, 6, 7), Some(vec![0, 2, 6, 8])),
            ("Winograd 3x3, odd sides", geometry(MIN_INPUT_CHANNELS, 9, 3, 7, 5), None),
            ("Winograd 3x3, even sides", geometry(MIN_INPUT_CHANNELS, 17, 3, 8, 12), None),
            ("Winograd 5x5", geometry(MIN_CHANNELS_5X5, 33, 5, 9, 6), None),
        ];
        isas.each(|isa| {
            for (name, g, taps) in &cases {
                assert_eq!(name.starts_with("Winograd"), Winograd::applies(g), "{name}: the method named");
                let w = random(g.weight_len(), 30);
                let b = random(g.out_channels, 31);
                let taps = taps.clone().unwrap_or_else(|| g.all_taps());
                let passes = [
                    ("with ReLU", ConvPass::with_taps(isa, g, &w, (Some(&b), true), &taps)),
                    ("without ReLU", ConvPass::with_taps(isa, g, &w, (Some(&b), false), &taps)),
                    ("transposed", ConvPass::input_gradient(isa, g, &w)),
                ];
                for (variant, pass) in passes {
                    let len = pass.geometry().out_len();
                    let mut out = vec![MaybeUninit::new(f32::NAN); len];
                    let mut pre = vec![MaybeUninit::new(f32::NAN); len];
                    let input = random(pass.geometry().in_len(), 32);
                    pass.image_into(&mut PassBuffers::default(), &input, &mut out, Some(&mut pre));
                    for (what, slots) in [("output", &out), ("pre-activation", &pre)] {
                        // SAFETY: every slot was initialised (to NaN) above.
                        let unwritten = slots.iter().filter(|v| unsafe { v.assume_init() }.is_nan()).count();
                        assert_eq!(unwritten, 0, "{name}, {variant}, on {}: {what} values left unwritten", isa.name());
                    }
                }
            }
        });
    }

    /// Winograd's method against the naive convolution and its weight and
    /// bias gradients on layers the size of the complex model's (3x3) and
    /// the simple one's (5x5), with several blocks of output channels, over
    /// a batch that is not a whole number of gradient groups.
    #[test]
    fn winograd_matches_the_naive_convolution() {
        let isas = TestedIsas::new("kernels: Winograd against the naive convolution");
        // (name, in channels, out channels, kernel, height, width). "Four rows" and
        // "two rows": narrow planes, whose AVX-512 transforms put that many
        // rows of tiles in a vector; "tail of N": N tiles past the last
        // whole vector, summed apart.
        let cases = [
            ("7x7, four rows of tiles per vector", MIN_INPUT_CHANNELS, 40, 3, 7, 7),
            ("8x8, 80 channels, four rows per vector", 80, 20, 3, 8, 8),
            ("14x13, two rows per vector, tail of 1", MIN_INPUT_CHANNELS, 9, 3, 14, 13),
            ("5x9, 15 tiles: sweeps at offsets that are not whole vectors", MIN_INPUT_CHANNELS, 6, 3, 5, 9),
            ("3x34, rows of 17 tiles: two input-transform passes, tail of 2", MIN_INPUT_CHANNELS, 5, 3, 3, 34),
            ("11x5, a partial group of four rows, tail of 2", MIN_INPUT_CHANNELS, 7, 3, 11, 5),
            ("5x27, rows of 14 tiles: output rows wider than a vector, cropped", MIN_INPUT_CHANNELS, 4, 3, 5, 27),
            ("12x11, tail of 4", MIN_INPUT_CHANNELS, 12, 3, 12, 11),
            ("5x5, 14x14: rows of 7 tiles", MIN_CHANNELS_5X5, 32, 5, 14, 14),
            ("5x5, 16x16: 8x8 tiles, 40 channels", 2 * MIN_CHANNELS_5X5, 40, 5, 16, 16),
            ("5x5, 5x9: odd sides, 15 tiles", MIN_CHANNELS_5X5 + 1, 36, 5, 5, 9),
            ("5x5, 3x34: rows of 17 tiles, cropped", MIN_CHANNELS_5X5, 33, 5, 3, 34),
        ];
        for (name, in_channels, out_channels, kernel, height, width) in cases {
            let g = ConvGeometry { in_channels, out_channels, kernel, padding: kernel / 2, height, width, stride: 1 };
            assert!(Winograd::applies(&g), "{name}");
            let batch = IMAGES_PER_PARTIAL_GRADIENT + 1;
            let x = random(batch * g.in_len(), 24);
            let w = random(g.weight_len(), 25);
            let b = random(g.out_channels, 26);
            let dy = random(batch * g.out_len(), 27);
            let expected = naive_conv(&x, &g, &w, &b);
            let (naive_dw, naive_db) = naive_params(&x, &dy, &g);
            isas.each(|isa| {
                let what = format!("{name} on {}", isa.name());
                let (activated, pre) = forward_on(isa, &x, &g, &w, Some(&b), true, true);
                let pre = pre.expect("kept on request");
                // F(2x2, 5x5)'s transforms scale by up to 5 and 1/24: its
                // error, measured against the largest output, was up to
                // 3e-6 of it (F(2x2, 3x3)'s below 5e-7).
                let tolerance = match kernel {
                    5 => 1e-5 * expected.iter().fold(0.0f32, |m, v| m.max(v.abs())),
                    _ => 1e-5,
                };
                assert_close_named(&pre, &expected, tolerance, &format!("{what}: forward"));
                assert_eq!(activated, pre.iter().map(|v| v.max(0.0)).collect::<Vec<_>>(), "{what}: ReLU");
                let (dw, db) = params_on(isa, &x, &dy, &g);
                // Sums of hundreds of terms cancel, so the error is
                // measured against the largest entry: it was below 6e-7 of
                // it on every variant with F(2x2, 3x3), and up to 1.7e-5
                // with F(2x2, 5x5), whose transformed sums are larger
                // (its data transform scales by up to 5 each way) and cancel
                // more in `Gᵀ dU G`.
                let scale = naive_dw.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let relative = if kernel == 5 { 5e-5 } else { 4e-6 };
                assert_close_named(&dw, &naive_dw, relative * scale, &format!("{what}: weight gradient"));
                assert_close_named(&db, &naive_db, 1e-5, &format!("{what}: bias gradient"));
            });
        }
    }

    /// The loss `sum(y * r)` has gradient `r` at the output; compare the
    /// kernels' gradients with central finite differences of that loss,
    /// with few and many channels and without padding.
    #[test]
    fn conv_backward_matches_finite_differences() {
        let geometries = [
            geometry(),
            ConvGeometry { in_channels: 5, out_channels: 3, kernel: 3, padding: 1, height: 6, width: 5, stride: 1 },
            ConvGeometry { in_channels: 4, out_channels: 2, kernel: 3, padding: 0, height: 5, width: 6, stride: 1 },
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
            ConvGeometry { in_channels: 16, out_channels: 32, kernel: 5, padding: 2, height: 14, width: 14, stride: 1 },
            ConvGeometry { in_channels: 1, out_channels: 16, kernel: 5, padding: 2, height: 28, width: 28, stride: 1 },
            ConvGeometry { in_channels: 6, out_channels: 5, kernel: 3, padding: 0, height: 7, width: 5, stride: 1 },
        ];
        for (i, g) in geometries.into_iter().enumerate() {
            let batch = 2 * IMAGES_PER_PARTIAL_GRADIENT + 3;
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
    fn weight_columns_are_the_transpose_in_bands() {
        let isas = TestedIsas::new("kernels: dense weight as columns");
        let mut rng = Rng::new(5);
        // Inputs within one band, across bands and a partial last band;
        // outputs narrower and wider than a vector.
        for (outputs, inputs) in [(1, 1), (10, 7), (10, 130), (37, 64), (17, 200)] {
            let weight: Vec<f32> = (0..outputs * inputs).map(|_| rng.uniform(-1.0, 1.0)).collect();
            let expected: Vec<f32> =
                (0..inputs).flat_map(|i| (0..outputs).map(move |o| (o, i))).map(|(o, i)| weight[o * inputs + i]).collect();
            isas.each(|isa| {
                assert_eq!(weight_columns(isa, &weight, inputs), expected, "{} {outputs}x{inputs}", isa.name());
            });
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
        let window = PoolGeometry { channels: 1, height: 2, width: 2 };
        assert_eq!(maxpool2x2_forward(&[2.0, 2.0, 2.0, 2.0], &window).1, vec![0], "ties go to the first corner");
        assert_eq!(maxpool2x2_forward(&[1.0, 3.0, 3.0, 2.0], &window).1, vec![1]);
        let (value, arg) = maxpool2x2_forward(&[1.0, f32::NAN, 3.0, f32::NAN], &window);
        assert!(value[0].is_nan() && arg == vec![3], "NaN propagates from the last NaN corner");
    }

    /// The dense unpool with its ReLU, on every variant, against the ReLU's
    /// mask and the scatter of `unpool_image`, bit for bit: odd and even
    /// sizes, rows wider and narrower than a vector, ties, zeros and NaNs.
    #[test]
    fn dense_unpool_matches_relu_mask_then_scatter() {
        let isas = TestedIsas::new("kernels: dense unpool against mask and scatter");
        let mut rng = Rng::new(37);
        for (height, width) in [(2, 2), (7, 7), (4, 14), (5, 47), (3, 70)] {
            let g = PoolGeometry { channels: 3, height, width };
            let x: Vec<f32> = (0..g.in_len())
                .map(|_| match rng.below(10) {
                    0 => f32::NAN,
                    1..=2 => 1.0,
                    3 => 0.0,
                    _ => rng.uniform(-2.0, 2.0),
                })
                .collect();
            let (pooled, arg) = maxpool2x2_forward(&x, &g);
            let dout: Vec<f32> = (0..g.out_len()).map(|i| if i % 5 == 0 { -0.0 } else { rng.uniform(-1.0, 1.0) }).collect();
            for relu in [false, true] {
                // The scatter: each window's (masked) gradient added to a
                // zeroed input at its winner.
                let mut expected = vec![0.0f32; g.in_len()];
                for ((&d, &y), &i) in dout.iter().zip(&pooled).zip(&arg) {
                    expected[i as usize] += if !relu || y > 0.0 { d } else { 0.0 };
                }
                isas.each(|isa| {
                    let mut dimage = vec![f32::NAN; g.in_len()];
                    let layout = (g.out_height() * g.out_width(), g.out_width(), 0);
                    unpool_image_dense_on(isa, &g, &dout, &arg, relu.then_some((&pooled[..], layout)), &mut dimage);
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&dimage), bits(&expected), "{} {height}x{width} relu {relu}", isa.name());
                });
            }
        }
    }

    /// The ReLU gradient on every variant against the rule written out, bit
    /// for bit: rows shorter and longer than a vector, outputs of zero,
    /// -0 and NaN, gradients of -0 and NaN.
    #[test]
    fn every_relu_gradient_variant_masks_like_the_rule() {
        let isas = TestedIsas::new("kernels: ReLU gradient variants");
        let mut rng = Rng::new(41);
        let special = |rng: &mut Rng| match rng.below(8) {
            0 => f32::NAN,
            1 => 0.0,
            2 => -0.0,
            _ => rng.uniform(-2.0, 2.0),
        };
        for len in [1, 7, 14, 16, 28, 33] {
            let output: Vec<f32> = (0..len).map(|_| special(&mut rng)).collect();
            let gradient: Vec<f32> = (0..len).map(|_| special(&mut rng)).collect();
            let expected: Vec<u32> = gradient.iter().zip(&output).map(|(&d, &y)| if y > 0.0 { d.to_bits() } else { 0 }).collect();
            isas.each(|isa| {
                let mut masked = gradient.clone();
                relu_gradient(isa, &mut masked, &output);
                assert_eq!(masked.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), expected, "{} on {len}", isa.name());
            });
        }
    }

    /// Every pool variant against the scalar one, on rows wider and
    /// narrower than a vector, with ties, zeros, infinities and NaNs.
    #[test]
    fn every_pool_variant_matches_the_scalar_one() {
        let isas = TestedIsas::new("kernels: max-pool variants");
        let mut rng = Rng::new(31);
        for (height, width) in [(2, 2), (4, 14), (6, 32), (5, 47), (3, 70)] {
            let g = PoolGeometry { channels: 3, height, width };
            let x: Vec<f32> = (0..2 * g.in_len())
                .map(|_| match rng.below(12) {
                    0 => f32::NAN,
                    1 => f32::INFINITY,
                    2 => f32::NEG_INFINITY,
                    3..=5 => 1.0,
                    6 => 0.0,
                    _ => rng.uniform(-2.0, 2.0),
                })
                .collect();
            let pooled = |isa: Isa| {
                let mut out = vec![0.0f32; 2 * g.out_len()];
                let mut arg = vec![0u32; 2 * g.out_len()];
                for ((image, out), arg) in x.chunks(g.in_len()).zip(out.chunks_mut(g.out_len())).zip(arg.chunks_mut(g.out_len()))
                {
                    pool_image_on(isa, &g, image, out, arg);
                }
                (out.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), arg)
            };
            let scalar = pooled(Isa::Portable);
            isas.each(|isa| {
                assert_eq!(pooled(isa), scalar, "{} on {height}x{width}", isa.name());
            });
        }
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

    /// The training step's dense layer against sums written out, and the
    /// same bits on one thread as on several (which split every product
    /// into different numbers of stretches).
    #[test]
    fn batch_dense_matches_naive_on_any_thread_count() {
        let (inputs, outputs, batch) = (300, 200, 45);
        let x = random(batch * inputs, 14);
        let w = random(outputs * inputs, 15);
        let b = random(outputs, 16);
        let dy = random(batch * outputs, 17);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| (dense_batch_forward(&x, inputs, &w, &b), dense_batch_backward(&x, &dy, inputs, &w)))
        };
        let (y, (dw, db, dx)) = run(1);
        assert_eq!(run(3), (y.clone(), (dw.clone(), db.clone(), dx.clone())));
        let close = |a: f32, b: f32| (a - b).abs() < 1e-4 * (1.0 + b.abs());
        for n in 0..batch {
            for o in 0..outputs {
                let expect: f32 = b[o] + (0..inputs).map(|i| x[n * inputs + i] * w[o * inputs + i]).sum::<f32>();
                assert!(close(y[n * outputs + o], expect), "y[{n}][{o}]");
            }
            for i in 0..inputs {
                let expect: f32 = (0..outputs).map(|o| dy[n * outputs + o] * w[o * inputs + i]).sum();
                assert!(close(dx[n * inputs + i], expect), "dx[{n}][{i}]");
            }
        }
        for o in 0..outputs {
            for i in 0..inputs {
                let expect: f32 = (0..batch).map(|n| dy[n * outputs + o] * x[n * inputs + i]).sum();
                assert!(close(dw[o * inputs + i], expect), "dw[{o}][{i}]");
            }
            let expect: f32 = (0..batch).map(|n| dy[n * outputs + o]).sum();
            assert!(close(db[o], expect), "db[{o}]");
        }
    }

    #[test]
    fn conv_arithmetic_counts_by_hand() {
        let g = |in_channels, out_channels, kernel, padding, side, stride| ConvGeometry {
            in_channels,
            out_channels,
            kernel,
            padding,
            height: side,
            width: side,
            stride,
        };
        // 64 -> 64 channels, 3x3 on 14x14: Winograd on 7x7 tiles of 2x2, both ways.
        let winograd = g(64, 64, 3, 1, 14, 1);
        for work in [ConvWork::Forward, ConvWork::InputGradient, ConvWork::WeightGradient] {
            let a = conv_arithmetic(&winograd, work);
            assert_eq!((a.method, a.direct, a.computed), ("winograd", 196 * 64 * 64 * 9, 16 * 49 * 64 * 64), "{work:?}");
        }
        // One input channel: a direct forward pass, but the input gradient
        // (32 -> 1 as the transposed convolution) has the channels Winograd needs.
        let first = g(1, 32, 3, 1, 28, 1);
        assert_eq!(
            conv_arithmetic(&first, ConvWork::Forward),
            ConvArithmetic { method: "direct", direct: 784 * 32 * 9, computed: 784 * 32 * 9 }
        );
        assert_eq!(conv_arithmetic(&first, ConvWork::InputGradient).method, "winograd");
        // 5x5 with padding 2, 32 -> 64 channels on 14x14: F(2x2, 5x5) on
        // 7x7 tiles, 36 products each, both ways; 16 -> 32 (the simple
        // model's) has too few input channels, and its input gradient too
        // few outputs.
        let wide = g(32, 64, 5, 2, 14, 1);
        for work in [ConvWork::Forward, ConvWork::InputGradient, ConvWork::WeightGradient] {
            let a = conv_arithmetic(&wide, work);
            assert_eq!((a.method, a.direct, a.computed), ("winograd", 196 * 32 * 64 * 25, 36 * 49 * 32 * 64), "{work:?}");
        }
        for work in [ConvWork::Forward, ConvWork::InputGradient, ConvWork::WeightGradient] {
            assert_eq!(conv_arithmetic(&g(16, 32, 5, 2, 14, 1), work).method, "direct", "{work:?}");
        }
        // 5x5 without padding on 16x16: 12x12 outputs, direct.
        let a = conv_arithmetic(&g(16, 32, 5, 0, 16, 1), ConvWork::Forward);
        assert_eq!((a.method, a.computed), ("direct", 144 * 16 * 32 * 25));
        // Stride 2, 3x3, padding 1 on 32x32: 16x16 outputs from phases of
        // 4·32 channels with a 2x2 kernel, of whose 16 taps per input
        // channel 9 are real and computed: as many as the strided form.
        let strided = g(32, 32, 3, 1, 32, 2);
        for work in [ConvWork::Forward, ConvWork::WeightGradient] {
            let a = conv_arithmetic(&strided, work);
            assert_eq!((a.method, a.direct, a.computed), ("phases+direct", 256 * 32 * 32 * 9, 256 * 32 * 32 * 9), "{work:?}");
        }
        // The input gradient: 17x17 positions per phase (the phase images),
        // the phases with 4, 2, 2 and 1 taps per channel pair.
        let a = conv_arithmetic(&strided, ConvWork::InputGradient);
        assert_eq!((a.method, a.computed), ("phases+direct", 17 * 17 * 32 * 32 * 9));
    }

    #[test]
    fn gradient_transposes_match_the_plain_copy_on_every_variant() {
        let isas = TestedIsas::new("kernels: gradient transpose variants");
        // (channels, height, width, row, stride): whole and partial blocks
        // of eight channels and positions, rows wider than the plane.
        let cases = [(16, 14, 14, 16, 16), (32, 3, 8, 9, 32), (13, 5, 17, 19, 16), (3, 2, 5, 5, 16), (40, 4, 7, 8, 48)];
        for (channels, height, width, row, stride) in cases {
            let dy = random(channels * height * width, (channels * 31 + width) as u64);
            let positions = (height * row).next_multiple_of(16);
            let mut expected = vec![0.0f32; positions * stride];
            for c in 0..channels {
                for y in 0..height {
                    for x in 0..width {
                        expected[(y * row + x) * stride + c] = dy[(c * height + y) * width + x];
                    }
                }
            }
            isas.each(|isa| {
                let mut out = Vec::new();
                transpose_planes(isa, &dy, (channels, height, width), row, positions, stride, &mut out);
                assert!(
                    out.iter().zip(&expected).all(|(a, b)| a.to_bits() == b.to_bits()) && out.len() == expected.len(),
                    "{} {channels}x{height}x{width}",
                    isa.name()
                );
            });
        }
    }
}
