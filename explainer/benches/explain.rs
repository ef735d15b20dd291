//! Wall time of explaining 200 probe images, forward pass included (as the
//! peers' numbers are; Grad-CAM's forward pass keeps only the layers it
//! reads): LRP with the epsilon-gamma-box composite (Zennit's
//! `EpsilonGammaBox`) and Grad-CAM on the last conv layer (Captum's
//! `LayerGradCam`), on both architectures at 1x28x28 and 3x32x32.
//!
//! `cargo bench -p explainer --bench explain`; `BENCH_REPS` sets the
//! repetitions per case (default 9), `BENCH_IMAGES` the batch (default 200),
//! `BENCH_ONLY` a part of the case names to run (e.g. `simple 1x28x28`).

use std::time::Instant;

use common::architecture::ModelKind;
use common::config::{CompositeSpec, ExplainedClass, MethodConfig, NamedComposite};
use common::data::{ImageShape, Normalization};
use common::rng::Rng;
use engine::Model;
use explainer::Method;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).filter(|&v| v > 0).unwrap_or(default)
}

/// Median and minimum seconds of `reps` runs of `f`, after one warm-up run.
fn time(reps: usize, mut f: impl FnMut()) -> (f64, f64) {
    f();
    let mut seconds: Vec<f64> = (0..reps)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .collect();
    seconds.sort_by(|a, b| a.total_cmp(b));
    (seconds[seconds.len() / 2], seconds[0])
}

fn main() {
    engine::allocator::keep_freed_memory();
    let reps = env_or("BENCH_REPS", 9);
    let images = env_or("BENCH_IMAGES", 200);
    println!("{images} images, median (min) of {reps} runs, {} rayon threads", rayon::current_num_threads());
    println!("{:<24} {:>18} {:>18} {:>18}", "case", "forward only", "LRP eps-gamma-box", "Grad-CAM last conv");
    let lrp_config =
        MethodConfig::Lrp { composite: CompositeSpec::Named(NamedComposite::EpsilonGammaBox), target: ExplainedClass::Predicted };
    let cam_config = MethodConfig::Gradcam { layer: None, relu: false, upsample: false, target: ExplainedClass::Predicted };
    for (kind, shape) in [
        (ModelKind::Simple, ImageShape::GRAY_28),
        (ModelKind::Simple, ImageShape::RGB_32),
        (ModelKind::Complex, ImageShape::GRAY_28),
        (ModelKind::Complex, ImageShape::RGB_32),
    ] {
        let case = format!("{} {shape}", kind.name());
        if std::env::var("BENCH_ONLY").is_ok_and(|only| !case.contains(&only)) {
            continue;
        }
        let model = Model::initialized(kind, shape, 10, 1);
        let normalization = Normalization { mean: vec![0.5; shape.channels], std: vec![0.5; shape.channels] };
        let mut rng = Rng::new(7);
        let x: Vec<f32> = (0..images * shape.len()).map(|_| rng.uniform(-1.0, 1.0)).collect();
        let labels: Vec<u8> = (0..images).map(|i| (i % 10) as u8).collect();
        let lrp = Method::from_config(&lrp_config, &normalization).expect("named composite");
        let cam = Method::from_config(&cam_config, &normalization).expect("default Grad-CAM");
        // Each method's forward pass keeps what that method reads, as the
        // stage does when it explains with that method alone.
        let explain = |method: &Method| {
            let first_kept = method.first_traced_layer(&model).expect("the model has the method's layer");
            let trace = model.forward_trace_from(&x, first_kept).expect("input of the model's shape");
            let explanation = method.explain(&model, &trace, &labels).expect("explainable");
            std::hint::black_box(explanation);
        };
        let forward = time(reps, || {
            std::hint::black_box(model.forward_trace(&x).expect("input of the model's shape"));
        });
        let lrp_time = time(reps, || explain(&lrp));
        let cam_time = time(reps, || explain(&cam));
        let cell = |(median, min): (f64, f64)| format!("{median:.4}s ({min:.4}s)");
        println!(
            "{:<24} {:>18} {:>18} {:>18}",
            format!("{} {shape}", kind.name()),
            cell(forward),
            cell(lrp_time),
            cell(cam_time)
        );
    }
}
