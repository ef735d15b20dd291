//! Small synthetic models and independent reference computations for the
//! unit tests.

use common::image::ImageShape;
use common::rng::Rng;
use engine::kernels::{avgpool2x2_forward, conv2d_forward, dense_forward, maxpool2x2_forward, ConvGeometry, PoolGeometry};
use engine::{Conv2d, Dense, Layer, Model};

pub fn random(len: usize, seed: u64, low: f32, high: f32) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..len).map(|_| rng.uniform(low, high)).collect()
}

/// The model with every bias set to zero.
pub fn without_biases(mut model: Model) -> Model {
    for layer in &mut model.layers {
        match layer {
            Layer::Conv(c) => c.bias.fill(0.0),
            Layer::Dense(d) => d.bias.fill(0.0),
            _ => {}
        }
    }
    model
}

/// conv(1→3, 3x3, same) + ReLU + 2x2 max-pool + flatten + dense(27→4) on
/// 1x6x6 images, random weights.
pub fn tiny_model(seed: u64, with_biases: bool) -> Model {
    let geometry = ConvGeometry { in_channels: 1, out_channels: 3, kernel: 3, padding: 1, height: 6, width: 6, stride: 1 };
    let pool = PoolGeometry { channels: 3, height: 6, width: 6 };
    let bias_range = if with_biases { 0.3 } else { 0.0 };
    let model = Model::from_layers(
        ImageShape { channels: 1, height: 6, width: 6 },
        vec![
            Layer::Conv(Conv2d {
                name: "conv".into(),
                geometry,
                weight: random(geometry.weight_len(), seed, -0.6, 0.6),
                bias: random(3, seed + 1, -bias_range, bias_range),
            }),
            Layer::Relu,
            Layer::MaxPool(pool),
            Layer::Flatten,
            Layer::Dense(Dense {
                name: "fc".into(),
                inputs: 27,
                outputs: 4,
                weight: random(4 * 27, seed + 2, -0.5, 0.5).into(),
                bias: random(4, seed + 3, -bias_range, bias_range),
            }),
        ],
    );
    if with_biases {
        model
    } else {
        without_biases(model)
    }
}

/// A model of dense layers on `input` images: flatten, then for each
/// `(name, outputs, weights)` a dense layer without bias, with a ReLU
/// between consecutive ones.
pub fn dense_model(input: ImageShape, layers: &[(&str, usize, Vec<f32>)]) -> Model {
    let mut inputs = input.len();
    let mut built = vec![Layer::Flatten];
    for (k, (name, outputs, weight)) in layers.iter().enumerate() {
        if k > 0 {
            built.push(Layer::Relu);
        }
        assert_eq!(weight.len(), inputs * outputs, "dense layer `{name}` weights");
        built.push(Layer::Dense(Dense {
            name: name.to_string(),
            inputs,
            outputs: *outputs,
            weight: weight.clone().into(),
            bias: vec![0.0; *outputs],
        }));
        inputs = *outputs;
    }
    Model::from_layers(input, built)
}

/// Runs `layers[from..]` of `model` on `x` with the kernels directly
/// (independent of the trace): the network's tail as a function.
pub fn forward_from(model: &Model, from: usize, x: &[f32]) -> Vec<f32> {
    let mut current = x.to_vec();
    for layer in &model.layers[from..] {
        current = match layer {
            Layer::Conv(c) => conv2d_forward(&current, &c.geometry, &c.weight, Some(&c.bias)),
            Layer::Relu => current.iter().map(|v| v.max(0.0)).collect(),
            Layer::MaxPool(g) => maxpool2x2_forward(&current, g).0,
            Layer::AvgPool(g) => avgpool2x2_forward(&current, g),
            Layer::Flatten | Layer::Dropout { .. } => current,
            Layer::Dense(d) => dense_forward(&current, d.inputs, &d.weight, Some(&d.bias)),
        };
    }
    current
}

pub fn assert_close(actual: &[f32], expected: &[f32], tolerance: f32, what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: lengths");
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!((a - e).abs() <= tolerance * (1.0 + e.abs()), "{what}[{i}]: {a} vs expected {e}");
    }
}
