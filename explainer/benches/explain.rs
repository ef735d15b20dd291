//! Wall time of explaining 200 probe images, forward pass included (as the
//! peers' numbers are; Grad-CAM's forward pass keeps only the layers it
//! reads), on both architectures at 1x28x28 and 3x32x32 and on the custom
//! model of `configs/custom-model.toml` (see `common::benchmarks`): LRP with the
//! epsilon-gamma-box composite (Zennit's `EpsilonGammaBox`), Grad-CAM on
//! the last conv layer (Captum's `LayerGradCam`) and the gradient family
//! with the peer's settings (Captum's `Saliency`, `InputXGradient`,
//! `IntegratedGradients` with 32 steps, `NoiseTunnel` SmoothGrad with 16
//! samples, `GuidedBackprop`, `Occlusion` with 4x4 windows at stride 4). Each row is named by the peer's key.
//!
//! `cargo bench -p explainer --bench explain`; `BENCH_REPS` sets the
//! repetitions per case (default 9), `BENCH_IMAGES` the batch (default 200),
//! `BENCH_ONLY` a part of the case names to run (e.g. `fmnist_simple`),
//! `BENCH_METHOD` parts of the method keys, comma-separated (e.g.
//! `lrp,gradcam`).

use common::benchmarks::{benchmark_cases, env_count, BenchmarkCase, Timings};
use common::config::{Baseline, CompositeSpec, ExplainedClass, MethodConfig, NamedComposite};
use common::data::Normalization;
use common::rng::Rng;
use engine::Model;
use explainer::Method;

/// Median and minimum seconds of `reps` runs of `f`, after one warm-up run.
fn median_and_min(reps: usize, f: impl FnMut()) -> (f64, f64) {
    let timings = Timings::of(1, reps, f);
    (timings.median(), timings.min())
}

/// Each timed method: the peer's key for it and its settings (those of
/// `torch_peer.py`).
fn methods() -> Vec<(&'static str, MethodConfig)> {
    let target = ExplainedClass::Predicted;
    vec![
        ("lrp200", MethodConfig::Lrp { composite: CompositeSpec::Named(NamedComposite::EpsilonGammaBox), target }),
        ("gradcam200", MethodConfig::Gradcam { layer: None, relu: false, upsample: false, target }),
        ("saliency200", MethodConfig::Gradient { abs: false, target }),
        ("ixg200", MethodConfig::GradientXInput { target }),
        ("ig32_200", MethodConfig::IntegratedGradients { steps: 32, baseline: Baseline::Zero, target }),
        // 0.075 of the [-1, 1] range: the peer's standard deviation 0.15.
        ("smoothgrad16_200", MethodConfig::Smoothgrad { samples: 16, noise: 0.075, seed: 0, target }),
        ("guidedbp200", MethodConfig::GuidedBackprop { target }),
        ("occlusion200", MethodConfig::Occlusion { window: 4, stride: 4, baseline: Baseline::Zero, target }),
    ]
}

#[global_allocator]
static ALLOCATOR: engine::allocator::LineAlignedAllocator = engine::allocator::LineAlignedAllocator;

fn main() {
    engine::allocator::keep_freed_memory();
    let reps = env_count("BENCH_REPS", 9);
    let images = env_count("BENCH_IMAGES", 200);
    println!("{images} images, median (min) of {reps} runs, {} rayon threads", rayon::current_num_threads());
    println!("{:<16} {:<18} {:>10} {:>10}", "case", "work", "median", "min");
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for BenchmarkCase { name: case, architecture, shape } in benchmark_cases(&workspace) {
        if std::env::var("BENCH_ONLY").is_ok_and(|only| !case.contains(&only)) {
            continue;
        }
        let model = Model::initialized(&architecture, shape, 1).unwrap();
        let normalization = Normalization { mean: vec![0.5; shape.channels], std: vec![0.5; shape.channels] };
        let mut rng = Rng::new(7);
        let x: Vec<f32> = (0..images * shape.len()).map(|_| rng.uniform(-1.0, 1.0)).collect();
        let labels: Vec<u8> = (0..images).map(|i| (i % 10) as u8).collect();
        let ids: Vec<i64> = (0..images as i64).collect();
        let print = |work: &str, (median, min): (f64, f64)| println!("{case:<16} {work:<18} {median:>9.4}s {min:>9.4}s");
        print(
            "forward",
            median_and_min(reps, || {
                std::hint::black_box(model.forward_trace(&x).expect("input of the model's shape"));
            }),
        );
        for (work, config) in methods() {
            if std::env::var("BENCH_METHOD").is_ok_and(|only| !only.split(',').any(|part| work.contains(part))) {
                continue;
            }
            let method = Method::from_config(&config, &normalization).expect("a valid method");
            // Each method's forward pass keeps what that method reads, as the
            // stage does when it explains with that method alone.
            let seconds = median_and_min(reps, || {
                let keeps = method.trace_keeps(&model).expect("the model has the method's layer");
                let trace = model.forward_trace_keeping(&x, keeps).expect("input of the model's shape");
                std::hint::black_box(method.explain(&model, &trace, &labels, &ids).expect("explainable"));
            });
            print(work, seconds);
        }
    }
}
