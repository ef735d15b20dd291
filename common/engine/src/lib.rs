//! The network engine: the CNNs of the study as plain layer structs
//! ([`layers`], [`network`]), their kernels ([`kernels`]: direct
//! convolutions and Winograd's F(2x2, 3x3) and F(2x2, 5x5) over per-instruction-set
//! microkernels, max-pooling, dense products through `gemm`), the training
//! step on dfdx's autodiff tape ([`training`]), input gradients through a
//! forward trace (`Model::backpropagate`) and checkpoints read into
//! networks ([`checkpoint`]).
//!
//! Only the stages that compute with networks (trainer, explainer) link
//! this crate; the others read their files through `common`.

pub mod allocator;
mod backprop;
pub mod checkpoint;
mod conv_stack;
pub mod geometry;
mod isa;
pub mod kernels;
pub mod layers;
mod microkernels;
pub mod network;
pub mod pooled;
mod strided;
mod tape_ops;
pub mod training;
mod variants;
mod winograd;

pub use backprop::ReluBackward;
pub use checkpoint::{read_checkpoint, write_checkpoint, Checkpoint};
pub use geometry::{ConvGeometry, PoolGeometry};
pub use isa::{detected_instruction_set, instruction_set, InstructionSetError, INSTRUCTION_SET_ENV};
pub use layers::{ActivationShape, Conv2d, Dense, Layer, ModelError, ParameterRef};
pub use network::{argmax, cross_entropy_and_correct, Model, Trace, TraceKeeps};
pub use pooled::PooledConvGradient;
pub use variants::{Region, Span, Variant};
