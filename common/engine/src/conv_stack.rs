//! A run of conv blocks (a convolution with the ReLU and 2x2 max-pool
//! after it) trained image by image. A strided convolution runs as the
//! stride-1 convolution of its input's phases (see `strided`), made per
//! image.
//!
//! Run layer by layer over a whole batch, every block's activations stream
//! through main memory (ten megabytes for the first convolution of a batch
//! of 100) and every layer ends at a barrier where the threads wait for
//! each other. Here one thread takes an image through all blocks forward,
//! and a group of images (the group of a partial gradient sum) through all
//! blocks backward, block by block, so their activations stay in its
//! core's cache and the threads meet once per pass. The arithmetic is that
//! of the layer-by-layer kernels (a pooled block's gradients those of
//! `pooled`, from the pool's winners): every image is computed alone, and
//! parameter gradients are summed over fixed groups of images and then over
//! the groups in order, so no result depends on the thread count or on the
//! batch an image came in.

use std::mem::MaybeUninit;
use std::sync::{Mutex, PoisonError};

use rayon::prelude::*;

use crate::backprop::ReluBackward;
use crate::geometry::{ConvGeometry, PoolGeometry, RowLayout};
use crate::isa::Isa;
use crate::kernels::{
    self, ConvPass, GradientBuffers, InputGradient, InputGradientBuffers, ParamGradient, PassBuffers, IMAGES_PER_PARTIAL_GRADIENT,
};
use crate::layers::Conv2d;
use crate::microkernels::relu_gradient;
use crate::pooled::{BeforeInput, PooledConvGradient, PooledScratch, Winners};
use crate::strided::PhaseSplit;

/// A convolution and what follows it inside a stack: an optional ReLU and
/// an optional 2x2 max-pool after the ReLU.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct ConvBlock {
    pub geometry: ConvGeometry,
    pub relu: bool,
    pub pool: Option<PoolGeometry>,
}

impl ConvBlock {
    /// Layers of the model the block runs: the conv, its ReLU, its pool.
    pub(crate) fn layer_count(&self) -> usize {
        1 + self.relu as usize + self.pool.is_some() as usize
    }

    /// Floats of one image's output, after the pool if there is one.
    fn out_len(&self) -> usize {
        self.pool.map_or(self.geometry.out_len(), |pool| pool.out_len())
    }

    /// Floats of one row of one image's output, after the pool if there is
    /// one.
    fn out_width(&self) -> usize {
        self.pool.map_or(self.geometry.out_width(), |pool| pool.out_width())
    }
}

/// One block with its convolution prepared for both passes.
struct Stage {
    block: ConvBlock,
    /// A strided convolution's phases: its forward pass and weight
    /// gradient are then those of the phase convolution.
    split: Option<PhaseSplit>,
    /// Whether training keeps the block's input itself: a strided block's
    /// after a block with a ReLU, whose mask it is (the padded input is
    /// the phases).
    keeps_input: bool,
    forward: ConvPass,
    params: ParamGradient,
    /// Whether the block passes a gradient to its input: not a first
    /// block whose input needs none (the images).
    passes_gradient: bool,
    backward: Backward,
}

/// How a block's backward pass computes its gradients.
enum Backward {
    /// From the gradient at every output of the convolution: the weight
    /// gradient by `params`, the input gradient by the transposed
    /// convolution (absent where the block passes none, or infers).
    Dense(Option<InputGradient>),
    /// With a max-pool over the whole output: both from the pool's winners
    /// alone (see `pooled`).
    Pooled(PooledConvGradient),
}

impl Stage {
    /// The block on one image: its input (a strided block's phases) padded
    /// into `saved` (as the weight gradient reads it when `training` is
    /// set; the forward pass reads that layout too) with the winners of its
    /// max-pool, and its output into `scratch.output`. A strided block
    /// after a ReLU also keeps its input itself in training, for that
    /// ReLU's gradient. The buffers are reused.
    fn run(&self, scratch: &mut Scratch, input: &[f32], saved: &mut Saved, training: bool) {
        let output = &mut scratch.output;
        let g = &self.block.geometry;
        if training && self.keeps_input {
            saved.input.clear();
            saved.input.extend_from_slice(input);
        }
        let input = PhaseSplit::pass_input(self.split.as_ref(), input, &mut scratch.phases);
        if training {
            self.params.pad_input(input, &mut saved.padded_input);
        } else {
            self.forward.pad(input, &mut saved.padded_input);
        }
        match self.block.pool {
            Some(pool) => {
                scratch.conv_out.resize(g.out_len(), 0.0);
                self.forward.padded_image(&mut scratch.forward, &saved.padded_input, &mut scratch.conv_out);
                output.resize(pool.out_len(), 0.0);
                saved.argmax.resize(pool.out_len(), 0);
                kernels::pool_image(&pool, &scratch.conv_out, output, &mut saved.argmax);
            }
            None => {
                output.resize(g.out_len(), 0.0);
                self.forward.padded_image(&mut scratch.forward, &saved.padded_input, output);
            }
        }
    }

    /// The block's input as [`Stage::run`] saved it in training, with its
    /// layout (a strided block's only where it keeps it).
    fn saved_input<'a>(&self, saved: &'a Saved) -> (&'a [f32], RowLayout) {
        let g = &self.block.geometry;
        match self.split {
            Some(_) => (&saved.input, (g.height * g.width, g.width, 0)),
            None => (&saved.padded_input, self.params.input_layout()),
        }
    }

    /// The weight and bias gradients from the partial sums of the groups
    /// of images, in order.
    fn finish_params(&self, partials: &[Vec<f32>]) -> WeightAndBias {
        if let Backward::Pooled(pooled) = &self.backward {
            return pooled.finish(partials);
        }
        let (dw, db) = self.params.finish(partials);
        match &self.split {
            Some(split) => (split.weight_gradient(&dw), db),
            None => (dw, db),
        }
    }
}

/// Consecutive conv blocks with their weights.
pub(crate) struct ConvStack {
    stages: Vec<Stage>,
    /// What its buffers' layouts follow from, for [`Recycled`].
    key: StackKey,
}

/// What a stack is prepared for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Purpose {
    /// Forward passes alone.
    Inference,
    /// Training steps, whose first block passes a gradient to its input
    /// only when `input_gradient` is set.
    Training { input_gradient: bool },
    /// Input gradients alone, from what a forward trace kept of each block
    /// (see [`ConvStack::input_gradient`]).
    InputGradient,
}

/// A stack's blocks and what it is prepared for.
type StackKey = (Vec<ConvBlock>, Purpose);

/// Buffers of earlier steps, handed to the next stack with the same blocks
/// and purpose: the saved activations of a batch, and per-job scratch.
/// Allocating and zero-filling them afresh for every step cost several
/// percent of it. The padded layouts keep their zero borders only for the
/// layout they were made for, so buffers only go to a stack with the same
/// key. Two keys are kept, the older dropped first: training a model and
/// evaluating it alternate. What is kept is a batch's saved activations
/// and a scratch per thread (a few megabytes each), as a step holds anyway.
struct Recycled {
    key: StackKey,
    saved: Vec<SavedImage>,
    scratch: Vec<Vec<Scratch>>,
}

/// Keys [`RECYCLED`] keeps buffers for.
const RECYCLED_KEYS: usize = 2;

static RECYCLED: Mutex<Vec<Recycled>> = Mutex::new(Vec::new());

/// The recycled buffers for `key`, made the newest entry.
fn with_recycled<R>(key: &StackKey, f: impl FnOnce(&mut Recycled) -> R) -> R {
    // A panic elsewhere while the lock was held leaves whole buffers.
    let mut pool = RECYCLED.lock().unwrap_or_else(PoisonError::into_inner);
    let entry = match pool.iter().position(|r| &r.key == key) {
        Some(i) => pool.remove(i),
        None => Recycled { key: key.clone(), saved: Vec::new(), scratch: Vec::new() },
    };
    if pool.len() == RECYCLED_KEYS {
        pool.remove(0);
    }
    pool.push(entry);
    f(pool.last_mut().expect("just pushed"))
}

/// A job's scratch, back to [`RECYCLED`] when the job ends.
struct JobScratch<'a> {
    key: &'a StackKey,
    scratch: Vec<Scratch>,
}

impl Drop for JobScratch<'_> {
    fn drop(&mut self) {
        let scratch = std::mem::take(&mut self.scratch);
        with_recycled(self.key, |r| r.scratch.push(scratch));
    }
}

/// What the backward pass needs of one image at one block.
#[derive(Default)]
struct Saved {
    /// The block's input (a strided block's phases) padded as the weight
    /// gradient reads it. Otherwise it is also the output of the block
    /// before, after its ReLU: where that is not positive, the ReLU passes
    /// no gradient.
    padded_input: Vec<f32>,
    /// A strided block's input, for the ReLU before it (empty where no
    /// ReLU comes before it).
    input: Vec<f32>,
    /// The winner of each pool window (empty without a pool).
    argmax: Vec<u32>,
}

/// The gradients of one block's weight and bias.
pub(crate) type WeightAndBias = (Vec<f32>, Vec<f32>);

/// One image's activations at every block of a stack, and the stack's
/// output (the last block's, which no block after it keeps).
pub(crate) struct SavedImage {
    blocks: Vec<Saved>,
    output: Vec<f32>,
}

/// One block's outputs for a batch (see [`ConvStack::infer_every_block`]).
pub(crate) struct BlockOutput {
    pub(crate) output: Vec<f32>,
    /// The winners of the block's max-pool, where it has one.
    pub(crate) argmax: Option<Vec<u32>>,
}

/// What [`ConvStack::input_gradient`] reads of one block's forward pass
/// over a batch (N·C·H·W): its output, after its ReLU and pool, and its
/// pool's winners, where it has one.
pub(crate) struct KeptBlock<'a> {
    pub output: &'a [f32],
    pub argmax: Option<&'a [u32]>,
}

/// Where one image's output of block `block` goes (and its pool's
/// winners, when asked).
/// The slots need not hold values: [`ConvStack::infer_keeping`] writes
/// every one of them, so that outputs are not zero-filled before.
struct KeptOutput<'a> {
    block: usize,
    output: &'a mut [MaybeUninit<f32>],
    argmax: Option<&'a mut [MaybeUninit<u32>]>,
}

/// Writes `values` into `slots`, every one of them.
fn write_all<T: Copy>(slots: &mut [MaybeUninit<T>], values: &[T]) {
    assert_eq!(slots.len(), values.len(), "a kept output's length");
    // SAFETY: both hold `values.len()` elements (asserted), of the same
    // layout (`MaybeUninit<T>` is `T`'s), in distinct borrows.
    unsafe { std::ptr::copy_nonoverlapping(values.as_ptr(), slots.as_mut_ptr().cast::<T>(), values.len()) };
}

/// Images a parallel job takes at least: rayon splits the batch into
/// jobs as threads go idle. Jobs take their scratch from [`RECYCLED`], so
/// small ones cost little, and many of them let an idle thread take work
/// from one slowed down (by a neighbour on a shared machine, say).
fn images_per_job(batch: usize) -> usize {
    batch.div_ceil(16 * rayon::current_num_threads()).max(1)
}

/// A thread's reusable buffers for one block.
#[derive(Default)]
struct Scratch {
    /// The block's output, the next block's input.
    output: Vec<f32>,
    /// A strided block's input as its phases.
    phases: Vec<f32>,
    forward: PassBuffers,
    conv_out: Vec<f32>,
    gradient: GradientBuffers,
    input_gradient: InputGradientBuffers,
    /// One image's window gradients (after the ReLU) and its scratch, for
    /// a pooled block's gradients.
    windows: Vec<f32>,
    pooled: PooledScratch,
}

impl ConvStack {
    /// The stack of `blocks` with their layers' weights, for inference.
    pub(crate) fn new(blocks: &[(ConvBlock, &Conv2d)]) -> Self {
        Self::prepared(blocks, Purpose::Inference)
    }

    /// The stack for a training step. The first block passes gradients to
    /// its input only when `input_gradient` is set.
    pub(crate) fn for_training(blocks: &[(ConvBlock, &Conv2d)], input_gradient: bool) -> Self {
        Self::prepared(blocks, Purpose::Training { input_gradient })
    }

    /// The stack for [`ConvStack::input_gradient`].
    pub(crate) fn for_input_gradient(blocks: &[(ConvBlock, &Conv2d)]) -> Self {
        Self::prepared(blocks, Purpose::InputGradient)
    }

    /// Input-gradient passes are prepared for training, for every block
    /// after the first and for the first when asked, and for input
    /// gradients alone, for every block.
    fn prepared(blocks: &[(ConvBlock, &Conv2d)], purpose: Purpose) -> Self {
        for pair in blocks.windows(2) {
            let ((before, layer), (after, next)) = (&pair[0], &pair[1]);
            assert_eq!(before.out_len(), after.geometry.in_len(), "{} does not take the output of {}", next.name, layer.name);
        }
        let isa = Isa::detected();
        // Packing the weights (and transforming them for Winograd's method)
        // is done for every step, so the layers are prepared in parallel.
        let stages = blocks
            .par_iter()
            .enumerate()
            .map(|(i, (block, layer))| {
                let g = &block.geometry;
                if let Some(pool) = block.pool {
                    assert_eq!(pool.in_len(), g.out_len(), "the max-pool after {} must take its whole output", layer.name);
                }
                let passes_gradient = match purpose {
                    Purpose::Inference => false,
                    Purpose::Training { input_gradient } => i > 0 || input_gradient,
                    Purpose::InputGradient => true,
                };
                // Input gradients alone take the winners' route only
                // through a ReLU, as the explainer's gradients always have:
                // a conv straight into a pool takes the transposed
                // convolution of the unpooled gradient (the same sums in
                // another order), so its maps keep their bits.
                let pooled_route = match purpose {
                    Purpose::Inference => false,
                    Purpose::Training { .. } => true,
                    Purpose::InputGradient => block.relu,
                };
                let pooled = block.pool.filter(|pool| pooled_route && PooledConvGradient::applies(g, pool));
                let split = (g.stride != 1).then(|| PhaseSplit::new(g));
                let keeps_input = split.is_some() && i > 0 && blocks[i - 1].0.relu;
                let bias_and_relu = (Some(&layer.bias[..]), block.relu);
                let (forward, backward) = rayon::join(
                    || match &split {
                        Some(split) => ConvPass::of_phases(isa, split, &layer.weight, bias_and_relu),
                        None => ConvPass::new(isa, g, &layer.weight, Some(&layer.bias), block.relu),
                    },
                    || match pooled {
                        Some(pool) => Backward::Pooled(PooledConvGradient::new(g, &layer.weight, &pool)),
                        None => Backward::Dense(passes_gradient.then(|| InputGradient::new(isa, g, &layer.weight))),
                    },
                );
                let params = match &split {
                    Some(split) => ParamGradient::of_phases(isa, split),
                    None => ParamGradient::new(isa, g),
                };
                Stage { block: *block, split, keeps_input, forward, params, passes_gradient, backward }
            })
            .collect();
        let key = (blocks.iter().map(|(block, _)| *block).collect(), purpose);
        ConvStack { stages, key }
    }

    fn in_len(&self) -> usize {
        self.stages[0].block.geometry.in_len()
    }

    fn out_len(&self) -> usize {
        self.last().out_len()
    }

    /// Floats of one image's largest gradient at a block's input or conv
    /// output.
    fn largest_gradient(&self) -> usize {
        self.stages.iter().map(|s| s.block.geometry.out_len().max(s.block.geometry.in_len())).max().unwrap_or(0)
    }

    fn last(&self) -> &ConvBlock {
        &self.stages.last().expect("a stack has blocks").block
    }

    /// (channels, height, width) of one image's output.
    pub(crate) fn output_shape(&self) -> (usize, usize, usize) {
        match self.last().pool {
            Some(pool) => (pool.channels, pool.out_height(), pool.out_width()),
            None => {
                let g = &self.last().geometry;
                (g.out_channels, g.out_height(), g.out_width())
            }
        }
    }

    /// A job's scratch: recycled where there is some, else new.
    fn scratch(&self) -> JobScratch<'_> {
        let scratch = with_recycled(&self.key, |r| r.scratch.pop())
            .unwrap_or_else(|| self.stages.iter().map(|_| Scratch::default()).collect());
        JobScratch { key: &self.key, scratch }
    }

    /// Hands a batch's saved activations back once its backward pass is
    /// done, for the next step's forward pass.
    pub(crate) fn recycle(&self, saved: Vec<SavedImage>) {
        with_recycled(&self.key, |r| r.saved = saved);
    }

    /// The stack's output for a batch of images (N·C·H·W) and what the
    /// backward pass needs of each image.
    pub(crate) fn forward(&self, x: &[f32]) -> (Vec<f32>, Vec<SavedImage>) {
        assert_eq!(x.len() % self.in_len(), 0, "conv stack input is not a whole number of images");
        let batch = x.len() / self.in_len();
        let mut saved = with_recycled(&self.key, |r| std::mem::take(&mut r.saved));
        saved.resize_with(batch, || SavedImage { blocks: Vec::new(), output: Vec::new() });
        saved
            .par_iter_mut()
            .zip(x.par_chunks(self.in_len()))
            .with_min_len(images_per_job(batch))
            .for_each_init(|| self.scratch(), |scratch, (saved, image)| self.forward_image(&mut scratch.scratch, image, saved));
        let mut out = Vec::with_capacity(saved.len() * self.out_len());
        for image in &saved {
            out.extend_from_slice(&image.output);
        }
        (out, saved)
    }

    /// One image through every block, into `saved` (whose buffers, when
    /// recycled, already have this stack's layouts).
    fn forward_image(&self, scratch: &mut [Scratch], image: &[f32], saved: &mut SavedImage) {
        saved.blocks.resize_with(self.stages.len(), Saved::default);
        for (i, (stage, saved)) in self.stages.iter().zip(&mut saved.blocks).enumerate() {
            let (before, rest) = scratch.split_at_mut(i);
            let (scratch, input) = (&mut rest[0], before.last().map_or(image, |before| before.output.as_slice()));
            stage.run(scratch, input, saved, true);
        }
        saved.output.clear();
        saved.output.extend_from_slice(&scratch.last().expect("a stack has blocks").output);
    }

    /// The stack's output for a batch of images (N·C·H·W), keeping nothing
    /// for a backward pass.
    pub(crate) fn infer(&self, x: &[f32]) -> Vec<f32> {
        assert_eq!(x.len() % self.in_len(), 0, "conv stack input is not a whole number of images");
        let (last, len) = (self.stages.len() - 1, x.len() / self.in_len() * self.out_len());
        let mut out = Vec::with_capacity(len);
        let images = out.spare_capacity_mut()[..len].chunks_exact_mut(self.out_len());
        self.infer_keeping(x, images.map(|output| vec![KeptOutput { block: last, output, argmax: None }]).collect());
        // SAFETY: `infer_keeping` wrote every slot of each image's output
        // (`x` holds `len / out_len` whole images, asserted above).
        unsafe { out.set_len(len) };
        out
    }

    /// Every block's output for a batch of images, after its ReLU and
    /// pool (N·C·H·W), with its pool's winners (indices within an image of
    /// the pool's input, as [`kernels::maxpool2x2_forward`] gives them):
    /// what a gradient through the blocks reads, without the outputs
    /// inside a block (before its ReLU, before its pool), which
    /// [`ConvStack::infer`] keeps in cache too.
    pub(crate) fn infer_every_block(&self, x: &[f32]) -> Vec<BlockOutput> {
        assert_eq!(x.len() % self.in_len(), 0, "conv stack input is not a whole number of images");
        let batch = x.len() / self.in_len();
        let lens = |stage: &Stage| (batch * stage.block.out_len(), stage.block.pool.map(|pool| batch * pool.out_len()));
        let mut outputs: Vec<Vec<f32>> = self.stages.iter().map(|stage| Vec::with_capacity(lens(stage).0)).collect();
        let mut winners: Vec<Option<Vec<u32>>> = self.stages.iter().map(|stage| lens(stage).1.map(Vec::with_capacity)).collect();
        let mut kept: Vec<Vec<KeptOutput>> = (0..batch).map(|_| Vec::with_capacity(self.stages.len())).collect();
        for (block, ((stage, outputs), winners)) in self.stages.iter().zip(&mut outputs).zip(&mut winners).enumerate() {
            let (output_len, winners_len) = lens(stage);
            let images = outputs.spare_capacity_mut()[..output_len].chunks_exact_mut(stage.block.out_len());
            let mut winners = winners.as_mut().map(|argmax| {
                let len = winners_len.expect("winners where there is a pool");
                argmax.spare_capacity_mut()[..len].chunks_exact_mut(len / batch)
            });
            for (image, output) in kept.iter_mut().zip(images) {
                let argmax = winners.as_mut().and_then(Iterator::next);
                image.push(KeptOutput { block, output, argmax });
            }
        }
        self.infer_keeping(x, kept);
        self.stages
            .iter()
            .zip(outputs.into_iter().zip(winners))
            .map(|(stage, (mut output, mut argmax))| {
                let (output_len, winners_len) = lens(stage);
                // SAFETY: `infer_keeping` wrote every slot of every image's
                // output and winners, `batch` images of each block (`x`
                // holds `batch` whole images).
                unsafe {
                    output.set_len(output_len);
                    if let (Some(argmax), Some(len)) = (argmax.as_mut(), winners_len) {
                        argmax.set_len(len);
                    }
                }
                BlockOutput { output, argmax }
            })
            .collect()
    }

    /// Runs every image of `x` through the blocks and copies, for each
    /// image, the outputs (and winners) of the blocks `kept` names.
    fn infer_keeping(&self, x: &[f32], kept: Vec<Vec<KeptOutput>>) {
        let per_job = images_per_job(kept.len());
        kept.into_par_iter().zip(x.par_chunks(self.in_len())).with_min_len(per_job).for_each_init(
            || (self.scratch(), self.stages.iter().map(|_| Saved::default()).collect::<Vec<_>>()),
            |(scratch, blocks), (mut kept, image)| {
                let scratch = &mut scratch.scratch;
                for (i, (stage, saved)) in self.stages.iter().zip(blocks.iter_mut()).enumerate() {
                    let (before, rest) = scratch.split_at_mut(i);
                    let (scratch, input) = (&mut rest[0], before.last().map_or(image, |before| before.output.as_slice()));
                    stage.run(scratch, input, saved, false);
                    for target in kept.iter_mut().filter(|target| target.block == i) {
                        write_all(target.output, &scratch.output);
                        if let Some(argmax) = target.argmax.as_deref_mut() {
                            write_all(argmax, &saved.argmax);
                        }
                    }
                }
            },
        );
    }

    /// The gradient of the stack's input (N·C·H·W) from that of its output,
    /// image by image through the blocks, so that an image's gradients stay
    /// in its core's cache: the same arithmetic as the layer-by-layer
    /// kernels. A block's ReLU passes the gradient as `relu` says, reading
    /// the block's output from `kept` (one entry per block, for the whole
    /// batch), and its max-pool routes it by the winners kept there. A
    /// stack made by [`ConvStack::for_input_gradient`].
    pub(crate) fn input_gradient(&self, kept: &[KeptBlock<'_>], d_output: &[f32], relu: ReluBackward) -> Vec<f32> {
        assert_eq!(self.key.1, Purpose::InputGradient, "a stack prepared for input gradients");
        assert_eq!(d_output.len() % self.out_len(), 0, "conv stack output gradient is not a whole number of images");
        let batch = d_output.len() / self.out_len();
        assert_eq!(kept.len(), self.stages.len(), "one kept output per block");
        for (stage, kept) in self.stages.iter().zip(kept) {
            let pooled = stage.block.pool.map(|pool| batch * pool.out_len());
            assert_eq!(kept.output.len(), batch * stage.block.out_len(), "a kept block output per image");
            assert_eq!(kept.argmax.map(<[u32]>::len), pooled, "the kept winners of a block's pool");
        }
        let isa = Isa::detected();
        // An image's gradient moves between two buffers, as in
        // `backward_group`.
        let largest = self.largest_gradient();
        let buffers = || (self.scratch(), Vec::with_capacity(largest), Vec::with_capacity(largest));
        let mut dx = vec![0.0f32; batch * self.in_len()];
        dx.par_chunks_mut(self.in_len())
            .zip(d_output.par_chunks(self.out_len()))
            .enumerate()
            .with_min_len(images_per_job(batch))
            .for_each_init(buffers, |(scratch, gradient, spare), (image, (dx, dout))| {
                gradient.clear();
                gradient.extend_from_slice(dout);
                for (i, stage) in self.stages.iter().enumerate().rev() {
                    let (block, scratch) = (&stage.block, &mut scratch.scratch[i]);
                    let of_image = |len: usize| image * len..(image + 1) * len;
                    // The ReLU's mask from the block's output: where a pool
                    // follows it, on the windows, from the pool's output.
                    if block.relu {
                        relu.apply(isa, gradient, &kept[i].output[of_image(block.out_len())]);
                    }
                    let argmax = kept[i].argmax.map(|argmax| &argmax[of_image(block.out_len())]);
                    let g = &block.geometry;
                    match (&stage.backward, block.pool.zip(argmax)) {
                        (Backward::Pooled(pooled), Some((_, argmax))) => {
                            spare.resize(g.in_len(), 0.0);
                            pooled.image(
                                isa,
                                Winners { gradients: gradient, argmax },
                                &mut scratch.pooled,
                                spare,
                                BeforeInput::Nothing,
                            );
                        }
                        (Backward::Dense(Some(input_gradient)), unpool) => {
                            if let Some((pool, argmax)) = unpool {
                                spare.resize(g.out_len(), 0.0);
                                kernels::unpool_image_dense(&pool, gradient, argmax, None, spare);
                                std::mem::swap(gradient, spare);
                            }
                            spare.resize(g.in_len(), 0.0);
                            input_gradient.image(&mut scratch.input_gradient, gradient, spare);
                        }
                        _ => unreachable!("an input-gradient stack passes every block's gradient, by the winners of its pool"),
                    }
                    std::mem::swap(gradient, spare);
                }
                dx.copy_from_slice(gradient);
            });
        dx
    }

    /// From the gradient of the stack's output (N·C·H·W): every block's
    /// weight and bias gradients, in block order, and the gradient of the
    /// stack's input when the stack passes one.
    pub(crate) fn backward(&self, saved: &[SavedImage], d_output: &[f32]) -> (Vec<WeightAndBias>, Option<Vec<f32>>) {
        assert_eq!(d_output.len(), saved.len() * self.out_len(), "conv stack output gradient length");
        let per = IMAGES_PER_PARTIAL_GRADIENT;
        let mut groups: Vec<(Vec<Vec<f32>>, Vec<f32>)> = saved
            .par_chunks(per)
            .zip(d_output.par_chunks(per * self.out_len()))
            .with_min_len(images_per_job(saved.len()).div_ceil(per))
            .map_init(|| self.scratch(), |scratch, (images, douts)| self.backward_group(&mut scratch.scratch, images, douts))
            .collect();
        let params = self
            .stages
            .iter()
            .enumerate()
            .map(|(i, stage)| {
                let partials: Vec<Vec<f32>> = groups.iter_mut().map(|(partials, _)| std::mem::take(&mut partials[i])).collect();
                stage.finish_params(&partials)
            })
            .collect();
        let dx = self.stages[0].passes_gradient.then(|| groups.into_iter().flat_map(|(_, dx)| dx).collect());
        (params, dx)
    }

    /// Whether, in training, block `i` passes its input gradient through
    /// the ReLU of the block before it itself: a pooled block does, as it
    /// writes that gradient (see [`BeforeInput`]), so the block before
    /// does not. False past the last block.
    fn masks_relu_before(&self, i: usize) -> bool {
        let pooled = self.stages.get(i).is_some_and(|stage| matches!(stage.backward, Backward::Pooled(_)));
        pooled && i > 0 && self.stages[i - 1].block.relu
    }

    /// A group of images' parameter gradients (a partial sum per block)
    /// and the gradient of their inputs when the first block passes one
    /// (empty otherwise). Block by block, so that a block's weight gradient
    /// takes the group's images in one sweep.
    fn backward_group(&self, scratch: &mut [Scratch], images: &[SavedImage], douts: &[f32]) -> (Vec<Vec<f32>>, Vec<f32>) {
        let isa = Isa::detected();
        let mut partials: Vec<Option<Vec<f32>>> = vec![None; self.stages.len()];
        // Each image's gradient moves between two buffers, block by block,
        // each with room for the largest gradient: every pass below writes
        // all of its output, so a buffer is neither zeroed again nor
        // reallocated (which would copy what it held).
        let largest = self.largest_gradient();
        let with_room = |values: &[f32]| {
            let mut buffer = Vec::with_capacity(largest);
            buffer.extend_from_slice(values);
            buffer
        };
        let mut gradients: Vec<Vec<f32>> = douts.chunks_exact(self.out_len()).map(with_room).collect();
        let mut spares: Vec<Vec<f32>> = gradients.iter().map(|_| with_room(&[])).collect();
        for (i, stage) in self.stages.iter().enumerate().rev() {
            let (g, scratch) = (&stage.block.geometry, &mut scratch[i]);
            for ((dout, spare), image) in gradients.iter_mut().zip(&mut spares).zip(images) {
                // The block's output, for the ReLU's mask: the next block's
                // saved input, or the stack's output.
                let output = match self.stages.get(i + 1) {
                    Some(next) => next.saved_input(&image.blocks[i + 1]),
                    None => (&image.output[..], (stage.block.out_len() / g.out_channels, stage.block.out_width(), 0)),
                };
                let relu = (stage.block.relu && !self.masks_relu_before(i + 1)).then_some(output);
                match (&stage.backward, stage.block.pool) {
                    (Backward::Pooled(pooled), _) => {
                        // Each window's gradient after the ReLU, which
                        // passes it where the window's output is positive.
                        let windows = match relu {
                            Some(output) => {
                                scratch.windows.clear();
                                scratch.windows.extend_from_slice(dout);
                                let shape = (pooled.pool().out_height(), pooled.pool().out_width());
                                relu_gradient_by_rows(isa, &mut scratch.windows, shape, output);
                                &scratch.windows
                            }
                            None => &dout[..],
                        };
                        let winners = Winners { gradients: windows, argmax: &image.blocks[i].argmax };
                        let input = (&image.blocks[i].padded_input[..], stage.params.input_layout());
                        pooled.add_param_gradients(isa, winners, input, &mut scratch.pooled);
                        if stage.passes_gradient {
                            // The previous block's ReLU, on the input
                            // just added.
                            let before =
                                if self.masks_relu_before(i) { BeforeInput::ReluOfAddedInput } else { BeforeInput::Nothing };
                            spare.resize(g.in_len(), 0.0);
                            pooled.image(isa, winners, &mut scratch.pooled, spare, before);
                            std::mem::swap(dout, spare);
                        }
                    }
                    (Backward::Dense(_), Some(pool)) => {
                        spare.resize(g.out_len(), 0.0);
                        kernels::unpool_image_dense(&pool, dout, &image.blocks[i].argmax, relu, spare);
                        std::mem::swap(dout, spare);
                    }
                    (Backward::Dense(_), None) => {
                        if let Some(output) = relu {
                            relu_gradient_by_rows(isa, dout, (g.out_height(), g.out_width()), output);
                        }
                    }
                }
            }
            if let Backward::Pooled(pooled) = &stage.backward {
                partials[i] = Some(pooled.take_param_gradients(&mut scratch.pooled));
            }
            if let Backward::Dense(input_gradient) = &stage.backward {
                let padded: Vec<&[f32]> = images.iter().map(|image| image.blocks[i].padded_input.as_slice()).collect();
                let dconvs: Vec<&[f32]> = gradients.iter().map(Vec::as_slice).collect();
                partials[i] = Some(stage.params.group(&padded, &dconvs, &mut scratch.gradient));
                if let Some(input_gradient) = input_gradient {
                    for (dconv, dx) in gradients.iter_mut().zip(&mut spares) {
                        dx.resize(g.in_len(), 0.0);
                        input_gradient.image(&mut scratch.input_gradient, dconv, dx);
                        std::mem::swap(dconv, dx);
                    }
                }
            }
            if !stage.passes_gradient {
                break;
            }
        }
        let partials = partials.into_iter().map(|partial| partial.expect("every block's partial sum")).collect();
        if !self.stages[0].passes_gradient {
            return (partials, Vec::new());
        }
        (partials, gradients.concat())
    }
}

/// The gradient through a ReLU, in place, of values (C·H·W, planes of
/// `(height, width)`) whose ReLU output `y` holds its rows where the
/// layout places them: zero where the output is not positive.
fn relu_gradient_by_rows(isa: Isa, gradient: &mut [f32], (height, width): (usize, usize), (y, layout): (&[f32], RowLayout)) {
    let (plane, row, first) = layout;
    for (r, d) in gradient.chunks_exact_mut(width).enumerate() {
        relu_gradient(isa, d, &y[(r / height) * plane + (r % height) * row + first..][..width]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::*;
    use common::rng::Rng;

    fn random(len: usize, rng: &mut Rng) -> Vec<f32> {
        (0..len).map(|_| rng.uniform(-1.0, 1.0)).collect()
    }

    fn layer(name: &str, geometry: ConvGeometry, rng: &mut Rng) -> Conv2d {
        Conv2d {
            name: name.into(),
            geometry,
            weight: random(geometry.weight_len(), rng),
            bias: random(geometry.out_channels, rng),
        }
    }

    fn masked(gradient: &[f32], output: &[f32]) -> Vec<f32> {
        gradient.iter().zip(output).map(|(&d, &y)| if y > 0.0 { d } else { 0.0 }).collect()
    }

    /// Image by image through the stack gives the same bits as the batch
    /// kernels layer by layer, forward and backward (a pooled block's
    /// gradients as `pooled` computes them, its parameters' up to rounding):
    /// a block with ReLU, one with ReLU and pool, one with neither, over batches that are not a
    /// whole number of gradient groups, on fresh and on recycled buffers.
    #[test]
    fn stack_equals_the_layer_by_layer_kernels() {
        let mut rng = Rng::new(11);
        // 64 channels between the first two blocks: the second block's
        // forward pass and the first one's input gradient use Winograd's
        // method.
        let ga = ConvGeometry { in_channels: 2, out_channels: 64, kernel: 3, padding: 1, height: 8, width: 8, stride: 1 };
        let gb = ConvGeometry { in_channels: 64, out_channels: 3, kernel: 3, padding: 1, height: 8, width: 8, stride: 1 };
        let pool = PoolGeometry { channels: 3, height: 8, width: 8 };
        let gc = ConvGeometry { in_channels: 3, out_channels: 5, kernel: 5, padding: 2, height: 4, width: 4, stride: 1 };
        let (a, b, c) = (layer("a", ga, &mut rng), layer("b", gb, &mut rng), layer("c", gc, &mut rng));
        let blocks = [
            (ConvBlock { geometry: ga, relu: true, pool: None }, &a),
            (ConvBlock { geometry: gb, relu: true, pool: Some(pool) }, &b),
            (ConvBlock { geometry: gc, relu: false, pool: None }, &c),
        ];
        // Three steps, each with a new stack as in training, the later ones
        // on the buffers the earlier ones recycled (batches of 5, 7, 3).
        for batch in [5, 7, 3] {
            let x = random(batch * ga.in_len(), &mut rng);
            let dout = random(batch * gc.out_len(), &mut rng);

            let stack = ConvStack::for_training(&blocks, true);
            assert_eq!(stack.output_shape(), (5, 4, 4));
            let (out, saved) = stack.forward(&x);
            let (params, dx) = stack.backward(&saved, &dout);
            stack.recycle(saved);

            let ya = conv2d_forward_with(&x, &ga, &a.weight, Some(&a.bias), true);
            let (yb, argmax) = maxpool2x2_forward(&conv2d_forward_with(&ya, &gb, &b.weight, Some(&b.bias), true), &pool);
            let yc = conv2d_forward(&yb, &gc, &c.weight, Some(&c.bias));
            assert_eq!(out, yc, "batch of {batch}");
            assert_eq!(ConvStack::new(&blocks).infer(&x), yc, "batch of {batch}");
            let grads_c = conv2d_backward_params(&yb, &dout, &gc);
            let dyb = masked(&conv2d_backward_input(&dout, &gc, &c.weight), &yb);
            let dconv_b = maxpool2x2_backward(&dyb, &argmax, &pool);
            let grads_b = conv2d_backward_params(&ya, &dconv_b, &gb);
            // Through the pooled block, the input gradient from the pool's
            // winners (the same sums as the transposed convolution of
            // `dconv_b`, in another order).
            let dya = masked(&PooledConvGradient::new(&gb, &b.weight, &pool).input_gradient(&dyb, &argmax), &ya);
            let grads_a = conv2d_backward_params(&x, &dya, &ga);
            assert_eq!((&params[0], &params[2]), (&grads_a, &grads_c), "batch of {batch}");
            // The pooled block's parameter gradients come from its winners:
            // the same sums in another order.
            for (got, want) in [(&params[1].0, &grads_b.0), (&params[1].1, &grads_b.1)] {
                let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let worst = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
                assert!(worst <= 1e-5 * scale, "batch of {batch}: {worst} of {scale}");
            }
            assert_eq!(dx, Some(conv2d_backward_input(&dya, &ga, &a.weight)), "batch of {batch}");
        }

        let x = random(4 * ga.in_len(), &mut rng);
        let dout = random(4 * gc.out_len(), &mut rng);
        let without_input_gradient = ConvStack::for_training(&blocks, false);
        let (_, saved) = without_input_gradient.forward(&x);
        assert_eq!(without_input_gradient.backward(&saved, &dout).1, None);
    }

    /// Strided blocks in a stack give the bits of the strided kernels layer
    /// by layer, forward and backward: a strided block first, one after a
    /// block with a ReLU (whose mask it then keeps), with a 5x5 kernel, and
    /// one whose stride skips the input's last row and column (3x3 at
    /// stride 2 with a 2x2 kernel).
    #[test]
    fn strided_blocks_in_a_stack_equal_the_strided_kernels() {
        let mut rng = Rng::new(12);
        let ga = ConvGeometry { in_channels: 3, out_channels: 8, kernel: 3, padding: 1, height: 12, width: 12, stride: 2 };
        let gb = ConvGeometry { in_channels: 8, out_channels: 6, kernel: 3, padding: 1, height: 6, width: 6, stride: 1 };
        let gc = ConvGeometry { in_channels: 6, out_channels: 5, kernel: 5, padding: 2, height: 6, width: 6, stride: 2 };
        let gd = ConvGeometry { in_channels: 5, out_channels: 4, kernel: 3, padding: 1, height: 3, width: 3, stride: 1 };
        let ge = ConvGeometry { in_channels: 4, out_channels: 4, kernel: 2, padding: 0, height: 3, width: 3, stride: 2 };
        let [a, b, c, d, e] = [("a", ga), ("b", gb), ("c", gc), ("d", gd), ("e", ge)].map(|(name, g)| layer(name, g, &mut rng));
        assert_eq!(ge.out_height(), 1);
        let blocks = [
            (ConvBlock { geometry: ga, relu: true, pool: None }, &a),
            (ConvBlock { geometry: gb, relu: true, pool: None }, &b),
            (ConvBlock { geometry: gc, relu: true, pool: None }, &c),
            (ConvBlock { geometry: gd, relu: false, pool: None }, &d),
            (ConvBlock { geometry: ge, relu: false, pool: None }, &e),
        ];
        for batch in [5, 3] {
            let x = random(batch * ga.in_len(), &mut rng);
            let dout = random(batch * ge.out_len(), &mut rng);
            let stack = ConvStack::for_training(&blocks, true);
            let (out, saved) = stack.forward(&x);
            let (params, dx) = stack.backward(&saved, &dout);
            stack.recycle(saved);

            let ya = conv2d_forward_with(&x, &ga, &a.weight, Some(&a.bias), true);
            let yb = conv2d_forward_with(&ya, &gb, &b.weight, Some(&b.bias), true);
            let yc = conv2d_forward_with(&yb, &gc, &c.weight, Some(&c.bias), true);
            let yd = conv2d_forward(&yc, &gd, &d.weight, Some(&d.bias));
            let ye = conv2d_forward(&yd, &ge, &e.weight, Some(&e.bias));
            assert_eq!(out, ye, "batch of {batch}");
            assert_eq!(ConvStack::new(&blocks).infer(&x), ye, "batch of {batch}");
            let dyd = conv2d_backward_input(&dout, &ge, &e.weight);
            let dyc = masked(&conv2d_backward_input(&dyd, &gd, &d.weight), &yc);
            let dyb = masked(&conv2d_backward_input(&dyc, &gc, &c.weight), &yb);
            let dya = masked(&conv2d_backward_input(&dyb, &gb, &b.weight), &ya);
            let want = [
                conv2d_backward_params(&x, &dya, &ga),
                conv2d_backward_params(&ya, &dyb, &gb),
                conv2d_backward_params(&yb, &dyc, &gc),
                conv2d_backward_params(&yc, &dyd, &gd),
                conv2d_backward_params(&yd, &dout, &ge),
            ];
            assert_eq!(params, want, "batch of {batch}");
            assert_eq!(dx, Some(conv2d_backward_input(&dya, &ga, &a.weight)), "batch of {batch}");
        }
    }
}
