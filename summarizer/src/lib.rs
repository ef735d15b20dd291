//! Stage 3 of the attribution-trends pipeline: summarise each attribution
//! map by scalar measures (norm, entropy, sparsity, ...).
//!
//! - [`measures`]: the measures, pure functions of one map;
//! - [`stage`]: the (run, method) units, fingerprints and the Parquet output.

pub mod measures;
pub mod stage;

pub use measures::Measure;
pub use stage::{run, Cli};
