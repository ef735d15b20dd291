//! A sequential network built from an architecture of `common` (the
//! presets' layer lists), run plain (`forward`, `forward_trace`:
//! evaluation, LRP, Grad-CAM) or on dfdx's autodiff tape
//! (`training::loss_and_gradients`).

use std::collections::BTreeMap;
use std::sync::Arc;

use common::architecture::{Architecture, LayerKind};
use common::image::ImageShape;
use common::rng::Rng;
use rayon::prelude::*;

use crate::conv_stack::{ConvBlock, ConvStack};
use crate::geometry::{ConvGeometry, PoolGeometry};
use crate::kernels;
use crate::layers::{ActivationShape, Conv2d, Dense, Layer, ModelError, ParameterRef};

/// The output of every layer for a batch, kept for relevance and gradient
/// passes. `outputs[i]` is the output of `layers[i]`; the input is separate.
/// What [`Trace::keeps`] says it keeps is there; the other outputs are
/// empty.
#[derive(Debug)]
pub struct Trace {
    pub batch: usize,
    pub input: Vec<f32>,
    pub outputs: Vec<Vec<f32>>,
    /// For max-pool layers, the winning input of each window.
    pub argmax: Vec<Option<Vec<u32>>>,
    pub keeps: TraceKeeps,
}

/// Which layers' outputs a forward trace keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TraceKeeps {
    /// Every layer's output from this layer on; the layers before run
    /// fused and keep nothing. A method that only looks at the top of the
    /// network (Grad-CAM) needs no more than its layer's.
    LayersFrom(usize),
    /// What the input gradient reads: the output of each conv block (a
    /// conv with the ReLU and max-pool after it) after its last layer,
    /// with the pool's winners, and every other layer's output. The outputs
    /// inside a block (the conv's before its ReLU, the ReLU's before the
    /// pool) are left empty: the blocks run image by image, those stay in
    /// cache, and only a quarter of a pooled block's activations is
    /// written out.
    BlockOutputs,
}

impl TraceKeeps {
    /// Whether a trace that keeps `self` holds every output one that keeps
    /// `needed` would.
    pub fn covers(self, needed: TraceKeeps) -> bool {
        match (self, needed) {
            (TraceKeeps::LayersFrom(first), TraceKeeps::LayersFrom(needed)) => first <= needed,
            (TraceKeeps::LayersFrom(first), TraceKeeps::BlockOutputs) => first == 0,
            (TraceKeeps::BlockOutputs, TraceKeeps::BlockOutputs) => true,
            (TraceKeeps::BlockOutputs, TraceKeeps::LayersFrom(_)) => false,
        }
    }

    /// The least a trace must keep for both `self` and `other`.
    pub fn and(self, other: TraceKeeps) -> TraceKeeps {
        match (self, other) {
            (TraceKeeps::BlockOutputs, TraceKeeps::BlockOutputs) => TraceKeeps::BlockOutputs,
            (TraceKeeps::LayersFrom(a), TraceKeeps::LayersFrom(b)) => TraceKeeps::LayersFrom(a.min(b)),
            _ => TraceKeeps::LayersFrom(0),
        }
    }
}

impl std::fmt::Display for TraceKeeps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TraceKeeps::LayersFrom(first) => write!(f, "every layer's output from layer {first} on"),
            TraceKeeps::BlockOutputs => write!(f, "the outputs of the conv blocks and the layers between them"),
        }
    }
}

impl Trace {
    /// The input of layer `i`.
    pub fn layer_input(&self, i: usize) -> &[f32] {
        if i == 0 {
            &self.input
        } else {
            &self.outputs[i - 1]
        }
    }

    pub fn logits(&self) -> &[f32] {
        self.outputs.last().map(|v| v.as_slice()).unwrap_or(&self.input)
    }
}

/// A sequential CNN for one input shape: an architecture's layers with
/// their parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    pub architecture: Architecture,
    pub input: ImageShape,
    pub classes: usize,
    pub layers: Vec<Layer>,
}

/// Builds the layers of an architecture for one input shape, tracking the
/// shape of the activations.
struct Builder {
    layers: Vec<Layer>,
    shape: ActivationShape,
}

impl Builder {
    fn planes(&self) -> (usize, usize, usize) {
        match self.shape {
            ActivationShape::Planes { channels, height, width } => (channels, height, width),
            ActivationShape::Flat(_) => unreachable!("checked: planes before the flatten"),
        }
    }

    fn conv(&mut self, name: &str, out_channels: usize, kernel: usize, padding: usize, stride: usize) {
        let (channels, height, width) = self.planes();
        let geometry = ConvGeometry { in_channels: channels, out_channels, kernel, padding, height, width, stride };
        self.shape =
            ActivationShape::Planes { channels: out_channels, height: geometry.out_height(), width: geometry.out_width() };
        let weight = vec![0.0; geometry.weight_len()];
        self.layers.push(Layer::Conv(Conv2d { name: name.to_string(), geometry, weight, bias: vec![0.0; out_channels] }));
    }

    fn pool(&mut self) -> PoolGeometry {
        let (channels, height, width) = self.planes();
        let geometry = PoolGeometry { channels, height, width };
        self.shape = ActivationShape::Planes { channels, height: geometry.out_height(), width: geometry.out_width() };
        geometry
    }

    fn dense(&mut self, name: &str, outputs: usize) {
        let inputs = self.shape.len();
        self.shape = ActivationShape::Flat(outputs);
        let (weight, bias) = (vec![0.0; inputs * outputs], vec![0.0; outputs]);
        self.layers.push(Layer::Dense(Dense { name: name.to_string(), inputs, outputs, weight: Arc::new(weight), bias }));
    }

    fn add(&mut self, kind: LayerKind, name: Option<&str>) {
        let name = || name.expect("every conv and dense layer is named");
        match kind {
            LayerKind::Conv { channels, kernel, padding, stride } => self.conv(name(), channels, kernel, padding, stride),
            LayerKind::Relu => self.layers.push(Layer::Relu),
            LayerKind::MaxPool => {
                let pool = self.pool();
                self.layers.push(Layer::MaxPool(pool));
            }
            LayerKind::AvgPool => {
                let pool = self.pool();
                self.layers.push(Layer::AvgPool(pool));
            }
            LayerKind::Flatten => {
                self.shape = ActivationShape::Flat(self.shape.len());
                self.layers.push(Layer::Flatten);
            }
            LayerKind::Dense { outputs } => self.dense(name(), outputs),
            LayerKind::Dropout { rate } => self.layers.push(Layer::Dropout { rate }),
        }
    }
}

impl Model {
    /// The architecture on `input` images with all parameters zero (see
    /// [`Model::initialized`]); an architecture that does not fit the
    /// images is an error naming the layer.
    pub fn zeros(architecture: &Architecture, input: ImageShape) -> Result<Self, ModelError> {
        architecture.shapes(input)?;
        let mut builder = Builder { layers: Vec::new(), shape: ActivationShape::of_image(input) };
        for spec in &architecture.layers {
            builder.add(spec.kind, spec.name.as_deref());
        }
        Ok(Model { architecture: architecture.clone(), input, classes: architecture.classes(), layers: builder.layers })
    }

    /// A model of layers built by hand (tests, small tools): its
    /// architecture is read off the layers, whose conv and dense layers are
    /// renamed as the architecture names them. Panics if the layers do not
    /// chain on `input` images.
    pub fn from_layers(input: ImageShape, mut layers: Vec<Layer>) -> Self {
        let kinds = layers
            .iter()
            .map(|layer| match layer {
                Layer::Conv(c) => LayerKind::Conv {
                    channels: c.geometry.out_channels,
                    kernel: c.geometry.kernel,
                    padding: c.geometry.padding,
                    stride: c.geometry.stride,
                },
                Layer::Relu => LayerKind::Relu,
                Layer::MaxPool(_) => LayerKind::MaxPool,
                Layer::AvgPool(_) => LayerKind::AvgPool,
                Layer::Flatten => LayerKind::Flatten,
                Layer::Dense(d) => LayerKind::Dense { outputs: d.outputs },
                Layer::Dropout { rate } => LayerKind::Dropout { rate: *rate },
            })
            .collect();
        let architecture = Architecture::new("hand-built", kinds);
        let built = Self::zeros(&architecture, input).unwrap_or_else(|e| panic!("hand-built layers: {e}"));
        for ((layer, spec), zero) in layers.iter_mut().zip(&architecture.layers).zip(&built.layers) {
            assert_eq!(std::mem::discriminant(layer), std::mem::discriminant(zero));
            match (layer, zero) {
                (Layer::Conv(c), Layer::Conv(z)) => {
                    assert_eq!(c.geometry, z.geometry, "hand-built conv geometry");
                    c.name = spec.name.clone().expect("named");
                }
                (Layer::Dense(d), Layer::Dense(z)) => {
                    assert_eq!(d.inputs, z.inputs, "hand-built dense inputs");
                    d.name = spec.name.clone().expect("named");
                }
                (Layer::MaxPool(g), Layer::MaxPool(z)) | (Layer::AvgPool(g), Layer::AvgPool(z)) => {
                    assert_eq!(g, z, "hand-built pool geometry")
                }
                _ => {}
            }
        }
        Model { layers, ..built }
    }

    /// PyTorch's default initialisation: weights and biases uniform in
    /// ±1/sqrt(fan_in), drawn in parameter order from `seed`.
    pub fn initialized(architecture: &Architecture, input: ImageShape, seed: u64) -> Result<Self, ModelError> {
        let mut model = Self::zeros(architecture, input)?;
        let mut rng = Rng::for_purpose(seed, "init");
        for layer in &mut model.layers {
            let (fan_in, weight, bias) = match layer {
                Layer::Conv(c) => (c.geometry.patch_len(), &mut c.weight, &mut c.bias),
                Layer::Dense(d) => (d.inputs, Arc::make_mut(&mut d.weight), &mut d.bias),
                _ => continue,
            };
            let bound = 1.0 / (fan_in as f32).sqrt();
            for v in weight.iter_mut().chain(bias.iter_mut()) {
                *v = rng.uniform(-bound, bound);
            }
        }
        Ok(model)
    }

    /// The shape of each layer's output for one image.
    pub fn activation_shapes(&self) -> Vec<ActivationShape> {
        self.architecture.shapes(self.input).expect("checked when the model was built")
    }

    /// Parameters in checkpoint order with their PyTorch names and shapes.
    pub fn parameters(&self) -> Vec<ParameterRef<'_>> {
        let mut out = Vec::new();
        for layer in &self.layers {
            match layer {
                Layer::Conv(c) => {
                    let g = c.geometry;
                    out.push(ParameterRef {
                        name: format!("{}.weight", c.name),
                        shape: vec![g.out_channels, g.in_channels, g.kernel, g.kernel],
                        data: &c.weight,
                    });
                    out.push(ParameterRef { name: format!("{}.bias", c.name), shape: vec![g.out_channels], data: &c.bias });
                }
                Layer::Dense(d) => {
                    out.push(ParameterRef {
                        name: format!("{}.weight", d.name),
                        shape: vec![d.outputs, d.inputs],
                        data: &d.weight,
                    });
                    out.push(ParameterRef { name: format!("{}.bias", d.name), shape: vec![d.outputs], data: &d.bias });
                }
                _ => {}
            }
        }
        out
    }

    /// Mutable parameter buffers in the order of [`Model::parameters`].
    pub fn parameters_mut(&mut self) -> Vec<&mut Vec<f32>> {
        let mut out = Vec::new();
        for layer in &mut self.layers {
            match layer {
                Layer::Conv(c) => out.extend([&mut c.weight, &mut c.bias]),
                Layer::Dense(d) => out.extend([Arc::make_mut(&mut d.weight), &mut d.bias]),
                _ => {}
            }
        }
        out
    }

    /// Sets every parameter from `tensors` (name → (shape, data)), checking
    /// that each exists with the expected shape and nothing else is there.
    pub fn load_parameters(&mut self, tensors: &BTreeMap<String, (Vec<usize>, Vec<f32>)>) -> Result<(), ModelError> {
        let expected: Vec<(String, Vec<usize>)> = self.parameters().into_iter().map(|p| (p.name, p.shape)).collect();
        if let Some(name) = tensors.keys().find(|k| !expected.iter().any(|(n, _)| n == *k)) {
            return Err(ModelError::Unexpected { name: name.clone(), model: self.architecture.name.clone() });
        }
        for ((name, shape), buffer) in expected.into_iter().zip(self.parameters_mut()) {
            let (found, data) = tensors.get(&name).ok_or_else(|| ModelError::Missing { name: name.clone() })?;
            if *found != shape || data.len() != shape.iter().product::<usize>() {
                return Err(ModelError::Shape { name, found: found.clone(), expected: shape });
            }
            buffer.clone_from(data);
        }
        Ok(())
    }

    pub(crate) fn check_input(&self, x: &[f32]) -> Result<usize, ModelError> {
        let n = self.input.len();
        if x.is_empty() || x.len() % n != 0 {
            return Err(ModelError::Input { found: x.len(), shape: self.input });
        }
        Ok(x.len() / n)
    }

    /// Runs the network on normalised images (N·C·H·W) and keeps every
    /// layer's output.
    pub fn forward_trace(&self, x: &[f32]) -> Result<Trace, ModelError> {
        self.forward_trace_from(x, 0)
    }

    /// Runs the network and keeps the outputs of layers `first_kept..`; the
    /// layers before run fused and keep nothing.
    pub fn forward_trace_from(&self, x: &[f32], first_kept: usize) -> Result<Trace, ModelError> {
        self.forward_trace_keeping(x, TraceKeeps::LayersFrom(first_kept))
    }

    /// Runs the network and keeps what `keeps` says.
    pub fn forward_trace_keeping(&self, x: &[f32], keeps: TraceKeeps) -> Result<Trace, ModelError> {
        let batch = self.check_input(x)?;
        match keeps {
            TraceKeeps::LayersFrom(first_kept) => Ok(self.trace_layers_from(x, batch, first_kept)),
            TraceKeeps::BlockOutputs => Ok(self.trace_block_outputs(x, batch)),
        }
    }

    /// See [`TraceKeeps::BlockOutputs`].
    fn trace_block_outputs(&self, x: &[f32], batch: usize) -> Trace {
        let layers = self.layers.len();
        let mut outputs: Vec<Vec<f32>> = vec![Vec::new(); layers];
        let mut argmax: Vec<Option<Vec<u32>>> = vec![None; layers];
        for step in self.steps_from(0) {
            // Every step keeps the output of its last layer: the next
            // step's input.
            let input = |first: usize| if first == 0 { x } else { outputs[first - 1].as_slice() };
            match step {
                Step::Blocks { first, blocks } => {
                    let kept = ConvStack::new(&blocks).infer_every_block(input(first));
                    let mut end = first;
                    for ((block, _), kept) in blocks.iter().zip(kept) {
                        end += block.layer_count();
                        (outputs[end - 1], argmax[end - 1]) = (kept.output, kept.argmax);
                    }
                }
                Step::Layer(index) => (outputs[index], argmax[index]) = apply_layer(&self.layers[index], input(index)),
            }
        }
        Trace { batch, input: x.to_vec(), outputs, argmax, keeps: TraceKeeps::BlockOutputs }
    }

    /// The layers from `first` on in the steps that a trace of the block
    /// outputs takes them, keeping each step's output, and that the
    /// backward pass takes them back, reading those.
    pub(crate) fn steps_from(&self, first: usize) -> Vec<Step<'_>> {
        let mut steps = Vec::new();
        let mut index = first;
        while index < self.layers.len() {
            match conv_blocks(&self.layers, index, self.layers.len()) {
                (blocks, after) if !blocks.is_empty() => {
                    steps.push(Step::Blocks { first: index, blocks });
                    index = after;
                }
                _ => {
                    steps.push(Step::Layer(index));
                    index += 1;
                }
            }
        }
        steps
    }

    /// See [`TraceKeeps::LayersFrom`].
    fn trace_layers_from(&self, x: &[f32], batch: usize, first_kept: usize) -> Trace {
        let first_kept = first_kept.min(self.layers.len());
        let mut outputs: Vec<Vec<f32>> = Vec::with_capacity(self.layers.len());
        let mut argmax = Vec::with_capacity(self.layers.len());
        let mut current: Option<Vec<f32>> = None;
        let mut index = 0;
        while index < first_kept {
            let (out, consumed) = fused_step(&self.layers, index, current.as_deref().unwrap_or(x), first_kept);
            current = Some(out);
            index += consumed;
        }
        outputs.resize_with(first_kept, Vec::new);
        argmax.resize_with(first_kept, || None);
        if let Some(last) = current {
            outputs[first_kept - 1] = last;
        }
        while let Some(layer) = self.layers.get(index) {
            let input = outputs.last().map(|v| v.as_slice()).unwrap_or(x);
            // A conv and its ReLU are written in one pass; both are traced.
            if let (Layer::Conv(c), (true, _)) = (layer, conv_followers(&self.layers, index, self.layers.len())) {
                let (output, activated) = kernels::conv2d_forward_and_relu(input, &c.geometry, &c.weight, Some(&c.bias));
                outputs.extend([output, activated]);
                argmax.extend([None, None]);
                index += 2;
                continue;
            }
            let (out, arg) = apply_layer(layer, input);
            outputs.push(out);
            argmax.push(arg);
            index += 1;
        }
        Trace { batch, input: x.to_vec(), outputs, argmax, keeps: TraceKeeps::LayersFrom(first_kept) }
    }

    /// Logits (N·classes) of normalised images, keeping no intermediates.
    pub fn forward(&self, x: &[f32]) -> Result<Vec<f32>, ModelError> {
        self.check_input(x)?;
        Ok(forward_layers(&self.layers, x))
    }

    /// See [`conv_blocks`].
    pub(crate) fn conv_blocks(&self, index: usize, limit: usize) -> (Vec<(ConvBlock, &Conv2d)>, usize) {
        conv_blocks(&self.layers, index, limit)
    }
}

/// A step of a pass through a model's layers: a run of conv blocks (image
/// by image, see `conv_stack`), or one other layer.
pub(crate) enum Step<'a> {
    /// The conv blocks from layer `first` on.
    Blocks {
        first: usize,
        blocks: Vec<(ConvBlock, &'a Conv2d)>,
    },
    Layer(usize),
}

/// The output of `layers` run in order on a batch whose images fit the
/// first of them, keeping no intermediates.
pub(crate) fn forward_layers(layers: &[Layer], x: &[f32]) -> Vec<f32> {
    let mut current: Option<Vec<f32>> = None;
    let mut index = 0;
    while index < layers.len() {
        let (out, consumed) = fused_step(layers, index, current.as_deref().unwrap_or(x), layers.len());
        current = Some(out);
        index += consumed;
    }
    current.unwrap_or_else(|| x.to_vec())
}

/// The ReLU and 2x2 max-pool directly after layer `index`, among the
/// layers before `limit`: what the fused passes run together with a conv
/// there.
fn conv_followers(layers: &[Layer], index: usize, limit: usize) -> (bool, Option<PoolGeometry>) {
    let within = |i: usize| if i < limit { layers.get(i) } else { None };
    let relu = matches!(within(index + 1), Some(Layer::Relu));
    let pool = match within(index + 1 + relu as usize) {
        Some(Layer::MaxPool(pool)) => Some(*pool),
        _ => None,
    };
    (relu, pool)
}

/// The conv blocks (a conv with the ReLU and max-pool after it) that
/// follow each other from layer `index` on, among the layers before
/// `limit`, and the index after them.
fn conv_blocks(layers: &[Layer], mut index: usize, limit: usize) -> (Vec<(ConvBlock, &Conv2d)>, usize) {
    let mut blocks = Vec::new();
    while let (true, Some(Layer::Conv(c))) = (index < limit, layers.get(index)) {
        let (relu, pool) = conv_followers(layers, index, limit);
        let block = ConvBlock { geometry: c.geometry, relu, pool };
        index += block.layer_count();
        blocks.push((block, c));
    }
    (blocks, index)
}

/// The output of layer `index` on `input` and how many layers that was:
/// from a conv, every conv block up to `limit` image by image (an image's
/// activations stay in cache).
fn fused_step(layers: &[Layer], index: usize, input: &[f32], limit: usize) -> (Vec<f32>, usize) {
    match conv_blocks(layers, index, limit) {
        (blocks, after) if !blocks.is_empty() => (ConvStack::new(&blocks).infer(input), after - index),
        _ => (apply_layer(&layers[index], input).0, 1),
    }
}

fn apply_layer(layer: &Layer, input: &[f32]) -> (Vec<f32>, Option<Vec<u32>>) {
    match layer {
        Layer::Conv(c) => (kernels::conv2d_forward(input, &c.geometry, &c.weight, Some(&c.bias)), None),
        Layer::Relu => (input.par_iter().with_min_len(1 << 14).map(|&v| v.max(0.0)).collect(), None),
        Layer::MaxPool(g) => {
            let (y, arg) = kernels::maxpool2x2_forward(input, g);
            (y, Some(arg))
        }
        Layer::AvgPool(g) => (kernels::avgpool2x2_forward(input, g), None),
        // Dropout acts in training only (see `training`).
        Layer::Flatten | Layer::Dropout { .. } => (input.to_vec(), None),
        Layer::Dense(d) => (kernels::dense_forward(input, d.inputs, &d.weight, Some(&d.bias)), None),
    }
}

/// Mean cross-entropy and the number of correct argmax predictions.
pub fn cross_entropy_and_correct(logits: &[f32], labels: &[u8], classes: usize) -> (f64, usize) {
    let mut loss = 0.0f64;
    let mut correct = 0;
    for (row, &label) in logits.chunks(classes).zip(labels) {
        let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        let log_sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln() + max;
        loss += log_sum - row[label as usize] as f64;
        if argmax(row) == label as usize {
            correct += 1;
        }
    }
    (loss / labels.len().max(1) as f64, correct)
}

/// Index of the first maximum.
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

/// The models tests run through, with an input shape each: both presets,
/// and a model with the layers they lack (a strided conv with its ReLU and
/// pool, a conv with neither ReLU nor pool, a conv straight into a pool, a
/// 5x5 block, an average pool after a max-pool, a dense layer with a ReLU
/// and dropout).
#[cfg(test)]
pub(crate) fn test_architectures() -> [(Architecture, ImageShape); 3] {
    [
        (common::architecture::ModelKind::Complex.architecture(10), ImageShape::RGB_32),
        (common::architecture::ModelKind::Simple.architecture(10), ImageShape::GRAY_28),
        (custom_architecture(), ImageShape::RGB_32),
    ]
}

#[cfg(test)]
fn custom_architecture() -> Architecture {
    use common::architecture::LayerKind::*;
    let conv = |channels, kernel, stride| Conv { channels, kernel, padding: kernel / 2, stride };
    Architecture::new(
        "custom",
        vec![
            conv(8, 3, 2),
            Relu,
            MaxPool,
            conv(32, 3, 1),
            conv(32, 3, 1),
            MaxPool,
            conv(16, 5, 1),
            Relu,
            MaxPool,
            AvgPool,
            Flatten,
            Dense { outputs: 12 },
            Relu,
            Dropout { rate: 0.5 },
            Dense { outputs: 10 },
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::architecture::ModelKind;

    #[test]
    fn layer_names_and_shapes_follow_the_reference_modules() {
        let simple = Model::zeros(&ModelKind::Simple.architecture(10), ImageShape::GRAY_28).unwrap();
        let names: Vec<(String, Vec<usize>)> = simple.parameters().into_iter().map(|p| (p.name, p.shape)).collect();
        assert_eq!(
            names,
            vec![
                ("features_conv.0.weight".into(), vec![16, 1, 5, 5]),
                ("features_conv.0.bias".into(), vec![16]),
                ("features_conv.3.weight".into(), vec![32, 16, 5, 5]),
                ("features_conv.3.bias".into(), vec![32]),
                ("fc1.weight".into(), vec![10, 32 * 7 * 7]),
                ("fc1.bias".into(), vec![10]),
            ]
        );
        let complex = Model::zeros(&ModelKind::Complex.architecture(10), ImageShape::RGB_32).unwrap();
        let names: Vec<(String, Vec<usize>)> = complex.parameters().into_iter().map(|p| (p.name, p.shape)).collect();
        let convs: Vec<&str> = names.iter().filter(|(n, _)| n.ends_with("weight")).map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            convs,
            vec![
                "features_conv.0.weight",
                "features_conv.2.weight",
                "features_conv.5.weight",
                "features_conv.7.weight",
                "features_conv.10.weight",
                "features_conv.12.weight",
                "fc1.weight",
                "fc2.weight"
            ]
        );
        assert!(names.contains(&("fc1.weight".into(), vec![1024, 128 * 4 * 4])));
        assert!(names.contains(&("features_conv.12.weight".into(), vec![128, 128, 3, 3])));
        let fmnist_complex = Model::zeros(&ModelKind::Complex.architecture(10), ImageShape::GRAY_28).unwrap();
        assert_eq!(fmnist_complex.activation_shapes().last(), Some(&ActivationShape::Flat(10)));
        assert!(fmnist_complex.parameters().iter().any(|p| p.name == "fc1.weight" && p.shape == vec![1024, 128 * 3 * 3]));
    }

    #[test]
    fn loading_checks_names_and_shapes() {
        let source = Model::initialized(&ModelKind::Simple.architecture(10), ImageShape::GRAY_28, 3).unwrap();
        let mut tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)> =
            source.parameters().into_iter().map(|p| (p.name, (p.shape, p.data.to_vec()))).collect();
        let mut target = Model::zeros(&ModelKind::Simple.architecture(10), ImageShape::GRAY_28).unwrap();
        target.load_parameters(&tensors).unwrap();
        assert_eq!(target, source);
        tensors.get_mut("fc1.bias").unwrap().0 = vec![11];
        let err = target.load_parameters(&tensors).unwrap_err().to_string();
        assert!(err.contains("fc1.bias") && err.contains("[10]"), "{err}");
        tensors.remove("fc1.bias");
        assert!(target.load_parameters(&tensors).unwrap_err().to_string().contains("`fc1.bias` is missing"));
    }

    #[test]
    fn forward_and_trace_agree_and_reject_bad_input() {
        let model = Model::initialized(&ModelKind::Complex.architecture(10), ImageShape::GRAY_28, 1).unwrap();
        let mut rng = Rng::new(2);
        let x: Vec<f32> = (0..3 * 784).map(|_| rng.uniform(-1.0, 1.0)).collect();
        let trace = model.forward_trace(&x).unwrap();
        assert_eq!(trace.logits(), &model.forward(&x).unwrap()[..]);
        assert_eq!(trace.logits().len(), 30);
        for first_kept in 1..model.layers.len() {
            let partial = model.forward_trace_from(&x, first_kept).unwrap();
            assert!(partial.outputs[..first_kept - 1].iter().all(|o| o.is_empty()), "nothing kept before {first_kept}");
            assert_eq!(partial.outputs[first_kept - 1..], trace.outputs[first_kept - 1..], "kept from {first_kept}");
            assert_eq!(partial.argmax[first_kept..], trace.argmax[first_kept..]);
        }
        assert!(model.forward(&x[..100]).is_err());
    }

    /// A trace of the block outputs keeps, bit for bit, the full trace's
    /// outputs and winners at every conv block's last layer and at every
    /// layer outside the blocks, and nothing inside a block: on both
    /// presets and on the layers they lack (`test_architectures`).
    #[test]
    fn a_trace_of_block_outputs_keeps_the_full_traces_values_there() {
        for (architecture, shape) in test_architectures() {
            let model = Model::initialized(&architecture, shape, 4).unwrap();
            let mut rng = Rng::new(9);
            let x: Vec<f32> = (0..3 * shape.len()).map(|_| rng.uniform(-1.0, 1.0)).collect();
            let full = model.forward_trace(&x).unwrap();
            let lean = model.forward_trace_keeping(&x, TraceKeeps::BlockOutputs).unwrap();
            assert_eq!(lean.keeps, TraceKeeps::BlockOutputs);
            assert_eq!(lean.input, full.input);
            let layers = &model.layers;
            for i in 0..layers.len() {
                // Inside a block: a conv with a ReLU or pool after it, and
                // a conv's ReLU with a pool after it.
                let inner = match (&layers[i], layers.get(i + 1)) {
                    (Layer::Conv(_), Some(Layer::Relu | Layer::MaxPool(_))) => true,
                    (Layer::Relu, Some(Layer::MaxPool(_))) => i > 0 && matches!(layers[i - 1], Layer::Conv(_)),
                    _ => false,
                };
                let what = format!("{}: layer {i}, {:?}", architecture.name, layers[i]);
                if inner {
                    assert!(lean.outputs[i].is_empty() && lean.argmax[i].is_none(), "{what}: kept inside a block");
                } else {
                    assert!(!lean.outputs[i].is_empty(), "{what}: not kept");
                    assert_eq!(lean.outputs[i], full.outputs[i], "{what}: output");
                    assert_eq!(lean.argmax[i], full.argmax[i], "{what}: winners");
                }
            }
            assert_eq!(lean.logits(), full.logits());
        }
    }

    #[test]
    fn cross_entropy_by_hand() {
        let (loss, correct) = cross_entropy_and_correct(&[0.0, 0.0, 2.0, 1.0], &[1, 0], 2);
        let expected = ((2.0f64.ln()) + (1.0 + (-1.0f64).exp()).ln()) / 2.0;
        assert!((loss - expected).abs() < 1e-9);
        assert_eq!(correct, 1);
    }
}
