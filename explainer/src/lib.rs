//! The explainer stage: LRP composites, Grad-CAM and gradient-family maps
//! of the probe set at every checkpoint (see DESIGN: "LRP and Grad-CAM,
//! precisely", "The gradient family").
//!
//! The methods live here as a library (`rules`, `composite`, `lrp`,
//! `gradcam`, `gradient`, `occlusion`, `method`) so that tests and benchmarks call them directly;
//! `stage` turns them into the pipeline stage behind the `explainer` binary.

pub mod composite;
pub mod error;
pub mod gradcam;
pub mod gradient;
pub mod linear;
pub mod lrp;
pub mod method;
pub mod occlusion;
pub mod rules;
pub mod stage;

#[cfg(test)]
mod test_support;

pub use composite::{Composite, PoolTreatment};
pub use error::ExplainError;
pub use gradcam::{gradcam, GradCamMaps, GradCamSettings};
pub use lrp::relevance;
pub use method::{Explanation, Method};
pub use rules::Rule;
pub use stage::{run, Cli};
