//! The layers of a network as small plain structs: parameters as
//! `Vec<f32>` in the layouts of the reference PyTorch modules
//! (docs/DESIGN.md, "Checkpoints"), and no knowledge of the kernels that
//! compute them.

use common::image::ImageShape;

use crate::geometry::{ConvGeometry, PoolGeometry};

/// Shape of an activation of one image: a stack of planes or a flat vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActivationShape {
    Planes { channels: usize, height: usize, width: usize },
    Flat(usize),
}

impl ActivationShape {
    pub fn len(&self) -> usize {
        match *self {
            ActivationShape::Planes { channels, height, width } => channels * height * width,
            ActivationShape::Flat(n) => n,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A convolution with stride 1 and symmetric zero padding; weight
/// `[out, in, k, k]`, bias `[out]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Conv2d {
    pub name: String,
    pub geometry: ConvGeometry,
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

/// A fully connected layer; weight `[out, in]`, bias `[out]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Dense {
    pub name: String,
    pub inputs: usize,
    pub outputs: usize,
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

/// One step of the sequential network.
#[derive(Clone, Debug, PartialEq)]
pub enum Layer {
    Conv(Conv2d),
    Relu,
    MaxPool(PoolGeometry),
    Flatten,
    Dense(Dense),
}

impl Layer {
    pub fn kind_name(&self) -> &'static str {
        match self {
            Layer::Conv(_) => "conv",
            Layer::Relu => "relu",
            Layer::MaxPool(_) => "max-pool",
            Layer::Flatten => "flatten",
            Layer::Dense(_) => "dense",
        }
    }
}

/// A named parameter tensor as stored in checkpoints.
pub struct ParameterRef<'a> {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: &'a [f32],
}

/// A model's parameters could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("tensor `{name}` is missing")]
    Missing { name: String },
    #[error("tensor `{name}` has shape {found:?}, expected {expected:?}")]
    Shape { name: String, found: Vec<usize>, expected: Vec<usize> },
    #[error("unexpected tensor `{name}` (not a parameter of the {model} model)")]
    Unexpected { name: String, model: &'static str },
    #[error("input of {found} floats is not a whole number of {shape} images")]
    Input { found: usize, shape: ImageShape },
}
