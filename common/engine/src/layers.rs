//! The layers of a network as small plain structs: parameters as
//! `Vec<f32>` (a dense weight behind an `Arc`) in the layouts of the
//! reference PyTorch modules
//! (docs/DESIGN.md, "Checkpoints"), and no knowledge of the kernels that
//! compute them.

use std::sync::Arc;

pub use common::architecture::ActivationShape;
use common::image::ImageShape;

use crate::geometry::{ConvGeometry, PoolGeometry};

/// A convolution with symmetric zero padding and stride 1 or 2; weight
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
    /// Shared, not copied, with a training step's backward pass, which
    /// reads it after the forward pass (a complex model's is 4.7 MB).
    /// Writers take it with `Arc::make_mut`, which copies only while a
    /// step still holds it.
    pub weight: Arc<Vec<f32>>,
    pub bias: Vec<f32>,
}

/// One step of the sequential network.
#[derive(Clone, Debug, PartialEq)]
pub enum Layer {
    Conv(Conv2d),
    Relu,
    MaxPool(PoolGeometry),
    AvgPool(PoolGeometry),
    Flatten,
    Dense(Dense),
    /// Zeroes each input with probability `rate` in training (scaling the
    /// others by `1 / (1 - rate)`); the identity otherwise.
    Dropout {
        rate: f32,
    },
}

impl Layer {
    pub fn kind_name(&self) -> &'static str {
        match self {
            Layer::Conv(_) => "conv",
            Layer::Relu => "relu",
            Layer::MaxPool(_) => "max-pool",
            Layer::AvgPool(_) => "avg-pool",
            Layer::Flatten => "flatten",
            Layer::Dense(_) => "dense",
            Layer::Dropout { .. } => "dropout",
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
    Unexpected { name: String, model: String },
    #[error(transparent)]
    Architecture(#[from] common::architecture::ShapeError),
    #[error("input of {found} floats is not a whole number of {shape} images")]
    Input { found: usize, shape: ImageShape },
    /// A backward pass needs what its forward trace did not keep.
    #[error("the forward trace does not keep {0}")]
    Trace(String),
}
