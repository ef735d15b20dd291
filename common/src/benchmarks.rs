//! The cases the benchmarks time against the PyTorch peer (`cargo bench`,
//! `make bench-peer`): both presets at both input shapes, named by the
//! peer's keys, and `cifar_vgg`, the model of `configs/custom-model.toml`
//! on 3x32x32 images, which is no preset (a 5x5 layer, a stride-2
//! convolution, an average pool, dropout). The peer gets that model's
//! PyTorch module from `trainer --torch-module`, so both sides time the
//! same network. Also the benchmarks' timing and settings helpers.

use std::path::Path;
use std::time::Instant;

use crate::architecture::{Architecture, ModelKind};
use crate::config::PipelineConfig;
use crate::image::ImageShape;

/// One benchmark case: the peer's name for it, a model and its images.
pub struct BenchmarkCase {
    pub name: &'static str,
    pub architecture: Architecture,
    pub shape: ImageShape,
}

/// The config that defines the custom model, relative to the workspace.
pub const CUSTOM_MODEL_CONFIG: &str = "configs/custom-model.toml";
/// The custom model's name in it.
pub const CUSTOM_MODEL: &str = "small-vgg";

/// Every case, in the order the benchmarks print them; `workspace` is the
/// folder holding [`CUSTOM_MODEL_CONFIG`].
pub fn benchmark_cases(workspace: &Path) -> Vec<BenchmarkCase> {
    let preset = |name, kind: ModelKind, shape| BenchmarkCase { name, architecture: kind.architecture(10), shape };
    let config = PipelineConfig::load(&workspace.join(CUSTOM_MODEL_CONFIG)).unwrap_or_else(|e| panic!("{e}"));
    let vgg =
        config.architecture(CUSTOM_MODEL, 10).unwrap_or_else(|| panic!("{CUSTOM_MODEL_CONFIG} defines no `{CUSTOM_MODEL}`"));
    vec![
        preset("fmnist_simple", ModelKind::Simple, ImageShape::GRAY_28),
        preset("cifar_simple", ModelKind::Simple, ImageShape::RGB_32),
        preset("fmnist_complex", ModelKind::Complex, ImageShape::GRAY_28),
        preset("cifar_complex", ModelKind::Complex, ImageShape::RGB_32),
        BenchmarkCase { name: "cifar_vgg", architecture: vgg, shape: ImageShape::RGB_32 },
    ]
}

/// The seconds of timed runs of a benchmarked piece of work, sorted.
pub struct Timings(Vec<f64>);

impl Timings {
    /// Times `runs` runs of `work` after `warmup` untimed ones.
    pub fn of(warmup: usize, runs: usize, mut work: impl FnMut()) -> Self {
        assert!(runs > 0, "at least one timed run");
        for _ in 0..warmup {
            work();
        }
        let mut seconds: Vec<f64> = (0..runs)
            .map(|_| {
                let start = Instant::now();
                work();
                start.elapsed().as_secs_f64()
            })
            .collect();
        seconds.sort_by(f64::total_cmp);
        Timings(seconds)
    }

    pub fn median(&self) -> f64 {
        self.0[self.0.len() / 2]
    }

    pub fn min(&self) -> f64 {
        self.0[0]
    }
}

/// A benchmark's setting from the environment: the positive integer in
/// variable `name`, or `default`.
pub fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).filter(|&v| v > 0).unwrap_or(default)
}
