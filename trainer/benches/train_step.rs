//! Median time of one training step (batch 100, forward + backward on the
//! tape + Adam) for both models at both input shapes and for the custom
//! model of `configs/custom-model.toml` (see `common::benchmarks`), the
//! work the PyTorch peer (`../shared/bench/torch_peer.py`,
//! `scripts/peer_models.py`) times as `*_train_step_s`.
//!
//!     cargo bench -p trainer --bench train_step
//!     PEER_JSON=peer.json cargo bench -p trainer --bench train_step   # adds ratios
//!
//! `peer.json` is the line the peer script prints; `BENCH_ONLY=fmnist_simple`
//! runs one case, `BENCH_REPS` sets the timed steps per case (default 7).

use common::benchmarks::{benchmark_cases, env_count, BenchmarkCase, Timings};
use common::rng::Rng;
use engine::training::{loss_and_gradients, Device};
use engine::Model;
use trainer::adam::Adam;

#[global_allocator]
static ALLOCATOR: engine::allocator::LineAlignedAllocator = engine::allocator::LineAlignedAllocator;

fn main() {
    let peer: Option<serde_json::Value> = std::env::var("PEER_JSON")
        .ok()
        .map(|path| serde_json::from_str(&std::fs::read_to_string(&path).expect("PEER_JSON file")).expect("PEER_JSON is JSON"));
    engine::allocator::keep_freed_memory();
    let dev = Device::default();
    println!("threads: {}", rayon::current_num_threads());
    println!("instruction set: {}", engine::detected_instruction_set());
    println!("{:<16} {:>12} {:>12} {:>8}", "case", "ours (s)", "peer (s)", "ratio");
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for BenchmarkCase { name: case, architecture, shape } in benchmark_cases(&workspace) {
        if std::env::var("BENCH_ONLY").is_ok_and(|only| only != case) {
            continue;
        }
        let mut model = Model::initialized(&architecture, shape, 0).unwrap();
        let lengths: Vec<usize> = model.parameters().iter().map(|p| p.data.len()).collect();
        let mut adam = Adam::new(1e-3, &lengths);
        let mut rng = Rng::new(1);
        let x: Vec<f32> = (0..100 * shape.len()).map(|_| rng.normal()).collect();
        let labels: Vec<u8> = (0..100).map(|_| rng.below(10) as u8).collect();
        let seconds = Timings::of(2, env_count("BENCH_REPS", 7), || {
            let step = loss_and_gradients(&dev, &model, x.clone(), &labels, 0).expect("valid batch");
            adam.step(model.parameters_mut(), &step.gradients);
        })
        .median();
        let peer_seconds = peer.as_ref().and_then(|p| p[format!("{case}_train_step_s")].as_f64());
        match peer_seconds {
            Some(p) => println!("{case:<16} {seconds:>12.4} {p:>12.4} {:>8.2}", seconds / p),
            None => println!("{case:<16} {seconds:>12.4} {:>12} {:>8}", "-", "-"),
        }
    }
}
