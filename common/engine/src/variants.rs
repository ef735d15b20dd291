//! Forward passes of copies of images that differ from them only inside a
//! rectangle (occlusion's occluded copies).
//!
//! A layer that computes each output from nearby inputs (a stride-1
//! convolution, a ReLU, a 2x2 pool) changes only the outputs near a changed
//! rectangle. So the layers up to a split run on a crop of each copy around
//! its rectangle, the part of the crop's activations that can differ is
//! pasted into the original image's activations at the split, and only the
//! layers after the split run on whole planes.
//!
//! The logits are those of [`Model::forward`] on the copies, bit for bit:
//! every kernel computes an output by the same operations wherever it lies
//! in the plane, from the same inputs, so a crop whose pooling windows and
//! Winograd tiles lie where the plane's do reproduces every output it holds
//! whole. Winograd's method computes a 2x2 tile of outputs together, from
//! one patch of inputs, so a whole tile counts as changed where its patch
//! changed: whether an output's bits can depend on a patch input outside
//! its own window is a property of the transform, and this holds whatever
//! it is.

use std::collections::BTreeMap;

use common::image::ImageShape;
use rayon::prelude::*;

use crate::geometry::PoolGeometry;
use crate::layers::{ActivationShape, Layer, ModelError};
use crate::network::{forward_layers, Model};
use crate::winograd::Winograd;

/// Positions `start..end` along one axis of a plane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    fn len(self) -> usize {
        self.end.saturating_sub(self.start)
    }

    fn clamped(self, size: usize) -> Span {
        Span { start: self.start.min(size), end: self.end.min(size) }
    }
}

/// A rectangle of an image's planes, in every channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    pub rows: Span,
    pub cols: Span,
}

/// A copy of base image `base` that equals it outside `region`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Variant {
    pub base: usize,
    pub region: Region,
}

/// The split is taken where it saves at least this share of the
/// convolutions' multiply-adds before it (pasting counted as
/// [`PASTING_WORK`]). Measured on occlusion (4x4 windows, stride 4) of 200
/// images: the complex model's split after its first pool saves 71%
/// (1x28x28) and 77% (3x32x32) by this count and took 17-23% off the time;
/// the simple model's on 3x32x32 saves 53% and gained nothing measurable,
/// its later splits saved less and were slower.
const LEAST_SAVING: f64 = 0.6;

/// What copying a value of the activations at the split into a variant's
/// own costs, counted in multiply-adds. A rough figure from the simple
/// model's split after its first pool: on 1x28x28 it saves 82
/// multiply-adds per value copied, and was about 10% slower; on 3x32x32,
/// 256, and about as fast.
const PASTING_WORK: f64 = 100.0;

/// How a layer that computes each output from nearby inputs maps positions
/// along one axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Local {
    /// Each output from its own input (a ReLU; dropout, the identity here).
    Pointwise,
    /// A 2x2 pool: output `i` from inputs `2i` and `2i + 1`.
    Pool,
    /// A convolution: output `i` from inputs `stride·i - padding` to
    /// `stride·i - padding + kernel - 1`. With `tiles` (Winograd's method)
    /// each pair of outputs `2i, 2i + 1` is computed together, from the
    /// inputs of both.
    Conv { kernel: usize, padding: usize, stride: usize, tiles: bool },
}

impl Local {
    fn of(layer: &Layer) -> Option<Local> {
        match layer {
            Layer::Relu | Layer::Dropout { .. } => Some(Local::Pointwise),
            Layer::MaxPool(_) | Layer::AvgPool(_) => Some(Local::Pool),
            Layer::Conv(c) => Some(Local::Conv {
                kernel: c.geometry.kernel,
                padding: c.geometry.padding,
                stride: c.geometry.stride,
                // A strided convolution's phases never take Winograd's
                // method (their kernels are unpadded); counting its outputs
                // in pairs anyway costs a little and is safe.
                tiles: c.geometry.stride > 1 || Winograd::applies(&c.geometry),
            }),
            _ => None,
        }
    }

    /// The output's size along the axis for an input of `size`; 0 where
    /// the layer does not fit it.
    fn out_size(self, size: usize) -> usize {
        match self {
            Local::Pointwise => size,
            Local::Pool => size / 2,
            Local::Conv { kernel, padding, stride, .. } => match size + 2 * padding {
                padded if padded >= kernel => (padded - kernel) / stride + 1,
                _ => 0,
            },
        }
    }

    /// Input positions per output position.
    fn scale(self) -> usize {
        match self {
            Local::Pool => 2,
            Local::Conv { stride, .. } => stride,
            Local::Pointwise => 1,
        }
    }

    /// Whether the outputs go in pairs from even positions (a crop must put
    /// this layer's output at an even position of the plane).
    fn paired_outputs(self) -> bool {
        matches!(self, Local::Conv { tiles: true, .. })
    }

    /// `span` of the outputs widened to the pairs computed together.
    fn whole_pairs(self, span: Span) -> Span {
        match self {
            Local::Conv { tiles: true, .. } => Span { start: span.start / 2 * 2, end: span.end.next_multiple_of(2) },
            _ => span,
        }
    }

    /// The outputs (of `out` along the axis) that can differ where the
    /// inputs `span` differ.
    fn changed(self, span: Span, out: usize) -> Span {
        let direct = match self {
            Local::Pointwise => span,
            Local::Pool => Span { start: span.start / 2, end: span.end.div_ceil(2) },
            Local::Conv { kernel, padding, stride, .. } => Span {
                start: (span.start + padding + 1).saturating_sub(kernel).div_ceil(stride),
                end: (span.end + padding).div_ceil(stride),
            },
        };
        self.whole_pairs(direct).clamped(out)
    }

    /// The inputs (of `size` along the axis) that the outputs `span` are
    /// computed from.
    fn needed(self, span: Span, size: usize) -> Span {
        let span = self.whole_pairs(span);
        let inputs = match self {
            Local::Pointwise => span,
            Local::Pool => Span { start: 2 * span.start, end: 2 * span.end },
            Local::Conv { kernel, padding, stride, .. } => Span {
                start: (stride * span.start).saturating_sub(padding),
                end: (stride * span.end + kernel).saturating_sub(stride + padding),
            },
        };
        inputs.clamped(size)
    }
}

/// One axis of the layers before a split.
#[derive(Debug)]
struct Axis {
    /// Each layer and the size of its input along the axis.
    steps: Vec<(Local, usize)>,
    /// The size at the split.
    out: usize,
    /// A crop starts at a multiple of this, so that every pool's windows
    /// and every Winograd layer's tiles lie in the crop where they lie in
    /// the plane.
    alignment: usize,
    /// Input positions per position at the split.
    scale: usize,
}

/// Where one axis of a variant's crop lies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct AxisCrop {
    /// The input positions the crop takes.
    input: Span,
    /// The positions at the split that can differ from the base image's.
    changed: Span,
    /// The position at the split of the crop's first one there.
    offset: usize,
}

impl Axis {
    fn new(steps: Vec<(Local, usize)>, out: usize) -> Axis {
        // A layer that reduces the plane needs its input at a multiple of
        // its scale; one with paired outputs needs them at even positions.
        let (mut alignment, mut scale) = (1, 1);
        for (step, _) in &steps {
            alignment = alignment.max(step.scale() * scale);
            scale *= step.scale();
            if step.paired_outputs() {
                alignment = alignment.max(2 * scale);
            }
        }
        Axis { steps, out, alignment, scale }
    }

    /// The crop for inputs `changed`; `None` where nothing changes at the
    /// split or the layers do not fit the crop.
    fn crop(&self, changed: Span) -> Option<AxisCrop> {
        let mut span = changed;
        for (i, (step, _)) in self.steps.iter().enumerate() {
            span = step.changed(span, self.steps.get(i + 1).map_or(self.out, |&(_, size)| size));
        }
        let at_split = span;
        if at_split.len() == 0 {
            return None;
        }
        let needed = self.steps.iter().rev().fold(at_split, |span, &(step, size)| step.needed(span, size));
        let start = needed.start / self.alignment * self.alignment;
        let crop = AxisCrop { input: Span { start, end: needed.end }, changed: at_split, offset: start / self.scale };
        let sizes = self.crop_sizes(crop.input.len());
        let fits = sizes.iter().all(|&size| size > 0) && sizes.last().is_some_and(|&out| at_split.end <= crop.offset + out);
        fits.then_some(crop)
    }

    /// The sizes of a crop of `size` positions at each layer's output.
    fn crop_sizes(&self, size: usize) -> Vec<usize> {
        self.steps
            .iter()
            .scan(size, |size, (step, _)| {
                *size = step.out_size(*size);
                Some(*size)
            })
            .collect()
    }
}

/// The layers before `at` run on crops; `rows` and `cols` say how.
#[derive(Debug)]
struct Split {
    at: usize,
    rows: Axis,
    cols: Axis,
}

/// A variant's crop.
#[derive(Clone, Copy, Debug)]
struct Crop {
    rows: AxisCrop,
    cols: AxisCrop,
}

impl Split {
    fn crop(&self, region: Region) -> Option<Crop> {
        Some(Crop { rows: self.rows.crop(region.rows)?, cols: self.cols.crop(region.cols)? })
    }
}

/// Multiply-adds of a layer per output position (a convolution's; the
/// others' are few next to them).
fn work_per_position(layer: &Layer) -> f64 {
    match layer {
        Layer::Conv(c) => (c.geometry.in_channels * c.geometry.out_channels * c.geometry.kernel * c.geometry.kernel) as f64,
        _ => 0.0,
    }
}

fn planes(shape: ActivationShape) -> Option<(usize, usize, usize)> {
    match shape {
        ActivationShape::Planes { channels, height, width } => Some((channels, height, width)),
        ActivationShape::Flat(_) => None,
    }
}

/// `layers` (all of them [`Local`]) for inputs of `shape`.
fn for_input(layers: &[Layer], shape: ImageShape) -> Vec<Layer> {
    let (mut height, mut width) = (shape.height, shape.width);
    layers
        .iter()
        .map(|layer| match layer {
            Layer::Conv(c) => {
                let mut c = c.clone();
                (c.geometry.height, c.geometry.width) = (height, width);
                (height, width) = (c.geometry.out_height(), c.geometry.out_width());
                Layer::Conv(c)
            }
            Layer::MaxPool(p) | Layer::AvgPool(p) => {
                let pool = PoolGeometry { channels: p.channels, height, width };
                (height, width) = (pool.out_height(), pool.out_width());
                match layer {
                    Layer::MaxPool(_) => Layer::MaxPool(pool),
                    _ => Layer::AvgPool(pool),
                }
            }
            other => other.clone(),
        })
        .collect()
}

/// Whether `variant` equals `base` (one image each, of `shape`) bit for bit
/// outside `region`, and `region` lies in the plane: what
/// [`Model::forward_variants`] relies on when it pastes a crop's
/// activations into the base image's.
fn equals_outside(variant: &[f32], base: &[f32], region: Region, shape: ImageShape) -> bool {
    let Region { rows, cols } = region;
    if rows.end > shape.height || cols.end > shape.width {
        return false;
    }
    let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(a, b)| a.to_bits() == b.to_bits());
    variant.chunks_exact(shape.width).zip(base.chunks_exact(shape.width)).enumerate().all(|(i, (v, b))| {
        let y = i % shape.height;
        if (rows.start..rows.end).contains(&y) && cols.start < cols.end {
            same(&v[..cols.start], &b[..cols.start]) && same(&v[cols.end..], &b[cols.end..])
        } else {
            same(v, b)
        }
    })
}

impl Model {
    /// Logits (N'·classes) of `variants` (N'·C·H·W), where variant `v`
    /// equals image `changes[v].base` of `base` (N·C·H·W) outside
    /// `changes[v].region`: the same, bit for bit, as
    /// [`Model::forward`] on `variants`, computed by recomputing only what
    /// each region changes in the layers where that is a small part of the
    /// plane (see the module's documentation).
    ///
    /// # Panics
    /// Where a split is taken and a variant differs from its base outside
    /// its region (or its region leaves the plane): the pasted activations
    /// would silently be those of another image.
    pub fn forward_variants(&self, base: &[f32], variants: &[f32], changes: &[Variant]) -> Result<Vec<f32>, ModelError> {
        let images = self.check_input(base)?;
        let count = self.check_input(variants)?;
        assert_eq!(count, changes.len(), "one change per variant");
        assert!(changes.iter().all(|c| c.base < images), "a variant of an image not in the base");
        let Some(split) = self.split_for(images, changes) else {
            return Ok(forward_layers(&self.layers, variants));
        };
        let image_len = self.input.len();
        let outside = changes.par_iter().enumerate().find_first(|&(v, change)| {
            let base = &base[change.base * image_len..][..image_len];
            !equals_outside(&variants[v * image_len..][..image_len], base, change.region, self.input)
        });
        if let Some((v, change)) = outside {
            panic!("variant {v} differs from image {} outside its region {:?}", change.base, change.region);
        }
        let (prefix, suffix) = self.layers.split_at(split.at);
        let at_split = forward_layers(prefix, base);
        let split_len = at_split.len() / images;
        let (split_height, split_width) = (split.rows.out, split.cols.out);
        let channels = split_len / (split_height * split_width);
        let mut pasted: Vec<f32> = changes.iter().flat_map(|c| &at_split[c.base * split_len..][..split_len]).copied().collect();
        // Variants whose crops have one shape run together.
        let mut by_shape: BTreeMap<(usize, usize), Vec<(usize, Crop)>> = BTreeMap::new();
        for (v, change) in changes.iter().enumerate() {
            if let Some(crop) = split.crop(change.region) {
                by_shape.entry((crop.rows.input.len(), crop.cols.input.len())).or_default().push((v, crop));
            }
        }
        let image = self.input;
        for ((height, width), members) in by_shape {
            let shape = ImageShape { height, width, ..image };
            let layers = for_input(prefix, shape);
            let mut crops = vec![0.0f32; members.len() * shape.len()];
            crops.par_chunks_mut(shape.len()).zip(&members).for_each(|(out, &(v, crop))| {
                let variant = &variants[v * image_len..][..image_len];
                for (c, plane) in out.chunks_exact_mut(height * width).enumerate() {
                    for (row, out_row) in plane.chunks_exact_mut(width).enumerate() {
                        let start = (c * image.height + crop.rows.input.start + row) * image.width + crop.cols.input.start;
                        out_row.copy_from_slice(&variant[start..][..width]);
                    }
                }
            });
            let outputs = forward_layers(&layers, &crops);
            let (out_height, out_width) = (split.rows.crop_sizes(height), split.cols.crop_sizes(width));
            let (out_height, out_width) = (*out_height.last().expect("layers"), *out_width.last().expect("layers"));
            for (output, &(v, crop)) in outputs.chunks_exact(channels * out_height * out_width).zip(&members) {
                let target = &mut pasted[v * split_len..][..split_len];
                let (rows, cols) = (crop.rows.changed, crop.cols.changed);
                for c in 0..channels {
                    for row in rows.start..rows.end {
                        let from = (c * out_height + row - crop.rows.offset) * out_width + cols.start - crop.cols.offset;
                        let to = (c * split_height + row) * split_width + cols.start;
                        target[to..][..cols.len()].copy_from_slice(&output[from..][..cols.len()]);
                    }
                }
            }
        }
        Ok(forward_layers(suffix, &pasted))
    }

    /// The split that saves the most multiply-adds on these variants, where
    /// one saves at least [`LEAST_SAVING`] of those before it.
    fn split_for(&self, images: usize, changes: &[Variant]) -> Option<Split> {
        let outputs = self.activation_shapes();
        let inputs: Vec<ActivationShape> =
            std::iter::once(ActivationShape::of_image(self.input)).chain(outputs.iter().copied()).collect();
        let local = self.layers.iter().take_while(|layer| Local::of(layer).is_some()).count();
        let mut best: Option<(f64, Split)> = None;
        // The multiply-adds of one image through the layers before `at`.
        let mut before = 0.0;
        for at in 1..=local {
            let (_, height, width) = planes(outputs[at - 1])?;
            before += work_per_position(&self.layers[at - 1]) * (height * width) as f64;
            // Splits right after a pool alone: measured on the benchmark
            // models' occlusion, one before a pool (or inside a conv block)
            // pastes whole planes and breaks up the conv stack that keeps
            // an image's activations in cache, and cost more than they saved.
            if !matches!(self.layers[at - 1], Layer::MaxPool(_) | Layer::AvgPool(_)) {
                continue;
            }
            let axis = |size: fn(ActivationShape) -> usize| {
                let steps = (0..at).map(|i| (Local::of(&self.layers[i]).expect("a local layer"), size(inputs[i]))).collect();
                Axis::new(steps, size(outputs[at - 1]))
            };
            let split = Split {
                at,
                rows: axis(|shape| planes(shape).expect("local layers take planes").1),
                cols: axis(|shape| planes(shape).expect("local layers take planes").2),
            };
            let cropped: f64 = changes
                .iter()
                .filter_map(|change| split.crop(change.region))
                .map(|crop| {
                    let rows = split.rows.crop_sizes(crop.rows.input.len());
                    let cols = split.cols.crop_sizes(crop.cols.input.len());
                    let layers = self.layers[..at].iter().zip(rows.iter().zip(&cols));
                    layers.map(|(layer, (h, w))| work_per_position(layer) * (h * w) as f64).sum::<f64>()
                })
                .sum();
            let plain = before * changes.len() as f64;
            let pasting = PASTING_WORK * (height * width * planes(outputs[at - 1])?.0 * changes.len()) as f64;
            let saving = plain - cropped - before * images as f64 - pasting;
            let better = match &best {
                Some((most, _)) => saving > *most,
                None => true,
            };
            if saving >= LEAST_SAVING * plain && better {
                best = Some((saving, split));
            }
        }
        best.map(|(_, split)| split)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::architecture::ModelKind;
    use common::benchmarks::{benchmark_cases, BenchmarkCase};
    use common::rng::Rng;

    fn span(start: usize, end: usize) -> Span {
        Span { start, end }
    }

    const DIRECT_3X3: Local = Local::Conv { kernel: 3, padding: 1, stride: 1, tiles: false };
    const WINOGRAD_3X3: Local = Local::Conv { kernel: 3, padding: 1, stride: 1, tiles: true };

    #[test]
    fn each_layer_maps_changed_and_needed_positions_by_hand() {
        // Output i of a 3x3 'same' convolution reads inputs i-1..=i+1.
        assert_eq!(DIRECT_3X3.changed(span(4, 8), 28), span(3, 9));
        assert_eq!(DIRECT_3X3.needed(span(3, 9), 28), span(2, 10));
        // Winograd's tiles widen both to whole pairs of outputs.
        assert_eq!(WINOGRAD_3X3.changed(span(4, 8), 28), span(2, 10));
        assert_eq!(WINOGRAD_3X3.needed(span(3, 9), 28), span(1, 11));
        // At the edges, to the plane.
        assert_eq!(WINOGRAD_3X3.changed(span(26, 28), 28), span(24, 28));
        assert_eq!(WINOGRAD_3X3.needed(span(0, 2), 28), span(0, 3));
        // A 5x5 'same' convolution, and a 3x3 one without padding (output i
        // reads inputs i..=i+2).
        let same_5x5 = Local::Conv { kernel: 5, padding: 2, stride: 1, tiles: false };
        assert_eq!(same_5x5.changed(span(0, 4), 28), span(0, 6));
        assert_eq!(same_5x5.needed(span(0, 6), 28), span(0, 8));
        let valid_3x3 = Local::Conv { kernel: 3, padding: 0, stride: 1, tiles: false };
        assert_eq!(valid_3x3.changed(span(4, 8), 26), span(2, 8));
        assert_eq!(valid_3x3.needed(span(2, 8), 28), span(2, 10));
        assert_eq!(valid_3x3.out_size(28), 26);
        // A 3x3 convolution of stride 2 and padding 1: output i reads
        // inputs 2i-1..=2i+1 (its pairs not widened here).
        let strided = Local::Conv { kernel: 3, padding: 1, stride: 2, tiles: false };
        assert_eq!(strided.changed(span(4, 8), 14), span(2, 5));
        assert_eq!(strided.needed(span(2, 5), 28), span(3, 10));
        assert_eq!((strided.out_size(28), strided.out_size(27)), (14, 14));
        // A 2x2 pool.
        assert_eq!(Local::Pool.changed(span(3, 9), 14), span(1, 5));
        assert_eq!(Local::Pool.needed(span(1, 5), 28), span(2, 10));
    }

    #[test]
    fn a_crop_starts_where_the_pools_and_tiles_line_up() {
        // conv (direct), ReLU, conv (Winograd), ReLU, pool on 28 positions:
        // a crop starts at an even position and holds what the changed
        // pooled outputs need.
        let steps = vec![(DIRECT_3X3, 28), (Local::Pointwise, 28), (WINOGRAD_3X3, 28), (Local::Pointwise, 28), (Local::Pool, 28)];
        let axis = Axis::new(steps, 14);
        assert_eq!((axis.alignment, axis.scale), (2, 2));
        let crop = axis.crop(span(8, 12)).unwrap();
        // Changed: 7..13 after the first conv, 6..14 after the second, 3..7
        // pooled; needed back: 6..14 before the pool, 5..15 before the
        // second conv, 4..16 before the first.
        assert_eq!(crop, AxisCrop { input: span(4, 16), changed: span(3, 7), offset: 2 });
        assert_eq!(axis.crop_sizes(12), [12, 12, 12, 12, 6]);
        // A Winograd conv and a pool: inputs 7..15 are needed, and the crop
        // starts at 6, where a pool window and a tile start.
        let axis = Axis::new(vec![(WINOGRAD_3X3, 28), (Local::Pool, 28)], 14);
        assert_eq!(axis.crop(span(10, 12)).unwrap(), AxisCrop { input: span(6, 15), changed: span(4, 7), offset: 3 });
        // A pool, then a Winograd conv at half the resolution: its tiles
        // start at multiples of 4 of the input.
        let axis = Axis::new(vec![(Local::Pool, 28), (WINOGRAD_3X3, 14)], 14);
        assert_eq!((axis.alignment, axis.scale), (4, 2));
    }

    /// Every benchmark model, and the complex one and the custom model on
    /// 3x64x64 images (split after the complex one's second pool, and
    /// after the custom one's stride-2 convolution and first pool), its
    /// logits of occluded copies of two images
    /// (windows of several sizes, at the edges and inside) through
    /// `forward_variants` and through `forward`.
    #[test]
    fn variants_give_the_plain_forward_pass_logits_bit_for_bit() {
        let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut rng = Rng::new(7);
        let mut cases = benchmark_cases(&workspace);
        let large = ImageShape { channels: 3, height: 64, width: 64 };
        let vgg = cases.iter().find(|case| case.name == "cifar_vgg").expect("the custom model").architecture.clone();
        cases.push(BenchmarkCase { name: "large_complex", architecture: ModelKind::Complex.architecture(10), shape: large });
        cases.push(BenchmarkCase { name: "large_vgg", architecture: vgg, shape: large });
        for case in cases {
            let model = Model::initialized(&case.architecture, case.shape, 3).unwrap();
            let (len, height, width) = (case.shape.len(), case.shape.height, case.shape.width);
            let base: Vec<f32> = (0..2 * len).map(|_| rng.normal()).collect();
            let mut regions = Vec::new();
            for y in (0..=height - 4).step_by(4) {
                for x in (0..=width - 4).step_by(8) {
                    regions.push(Region { rows: span(y, y + 4), cols: span(x, x + 4) });
                }
            }
            regions.push(Region { rows: span(1, 6), cols: span(7, 10) });
            regions.push(Region { rows: span(height - 1, height), cols: span(width - 1, width) });
            regions.push(Region { rows: span(0, height), cols: span(0, width) });
            let changes: Vec<Variant> = regions.iter().enumerate().map(|(i, &region)| Variant { base: i % 2, region }).collect();
            let mut variants = Vec::with_capacity(changes.len() * len);
            for change in &changes {
                let start = variants.len();
                variants.extend_from_slice(&base[change.base * len..][..len]);
                let Region { rows, cols } = change.region;
                for c in 0..case.shape.channels {
                    for y in rows.start..rows.end {
                        for x in cols.start..cols.end {
                            variants[start + (c * height + y) * width + x] = rng.normal();
                        }
                    }
                }
            }
            let split = model.split_for(2, &changes).map(|split| split.at);
            let expected = match case.name {
                "fmnist_complex" | "cifar_complex" => Some(5),
                "large_complex" => Some(10),
                "large_vgg" => Some(7),
                _ => None,
            };
            assert_eq!(split, expected, "{}: where the layers are split", case.name);
            let plain = model.forward(&variants).unwrap();
            let cropped = model.forward_variants(&base, &variants, &changes).unwrap();
            assert_eq!(cropped.len(), plain.len());
            let differing = cropped.iter().zip(&plain).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
            assert_eq!(differing, 0, "{}: logits that differ (split at {split:?})", case.name);
        }
    }

    /// The contract is checked: a variant that differs from its base one
    /// value outside its region (here just right of it, and just below
    /// it), or whose region leaves the plane, is refused, where a split
    /// would otherwise paste the wrong activations.
    #[test]
    fn a_variant_that_differs_outside_its_region_is_refused() {
        let shape = ImageShape { channels: 3, height: 32, width: 32 };
        let model = Model::initialized(&ModelKind::Complex.architecture(10), shape, 3).unwrap();
        let mut rng = Rng::new(9);
        let base: Vec<f32> = (0..shape.len()).map(|_| rng.normal()).collect();
        let region = Region { rows: span(8, 12), cols: span(4, 8) };
        let changes: Vec<Variant> = (0..64).map(|_| Variant { base: 0, region }).collect();
        assert!(model.split_for(1, &changes).is_some(), "the case takes a split");
        let variants = || base.iter().cycle().take(64 * shape.len()).copied().collect::<Vec<f32>>();
        let inside = (2 * shape.height + 9) * shape.width + 5;
        let mut fine = variants();
        fine[inside] += 1.0;
        assert!(model.forward_variants(&base, &fine, &changes).is_ok());
        let refused = |at: usize, changes: &[Variant]| {
            let mut bad = variants();
            bad[7 * shape.len() + at] += 1.0;
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| model.forward_variants(&base, &bad, changes)));
            run.is_err()
        };
        assert!(refused(inside + 3, &changes), "a value right of the region");
        assert!(refused(inside + 3 * shape.width - 1, &changes), "a value below the region");
        assert!(!refused(inside + 2, &changes), "a value inside the region");
        let mut leaving = changes.clone();
        leaving[3].region = Region { rows: span(30, 33), cols: span(4, 8) };
        assert!(refused(inside, &leaving), "a region past the plane's last row");
        assert!(equals_outside(&base, &base, region, shape));
    }
}
