//! How near this CPU's multiply-add peak each convolution layer of the
//! benchmark models runs (see `common::benchmarks`): the peak measured by
//! a loop of independent vector FMAs on every rayon thread, then per
//! distinct conv layer the median time of its forward pass, input gradient
//! and weight gradient on a batch, as multiply-adds per second twice over:
//! as a direct convolution would need them (Winograd's method can pass the
//! peak by this count) and as the kernels' method computes them (the
//! fraction of the peak shown).
//!
//!     cargo bench -p engine --bench layers
//!
//! `BENCH_ONLY` a part of the case names (e.g. `fmnist_complex`),
//! `BENCH_IMAGES` the batch (default 100, a training batch), `BENCH_REPS`
//! the repetitions per layer (default 9).

use std::hint::black_box;

use common::benchmarks::{benchmark_cases, env_count, Timings};
use common::rng::Rng;
use engine::kernels::{conv2d_backward_input, conv2d_backward_params, conv2d_forward, conv_arithmetic, ConvWork};
use engine::{ConvGeometry, Layer, Model};
use rayon::prelude::*;

/// Independent accumulators of the peak loop: more than FMA latency times
/// FMA ports on the CPUs we run on, so the loop is bound by throughput.
const ACCUMULATORS: usize = 12;

/// `iterations` rounds of one FMA on each of [`ACCUMULATORS`] 8-lane vectors.
///
/// # Safety
/// The CPU must run AVX2 and FMA (the caller checks with
/// `is_x86_feature_detected!`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_rounds_avx2(iterations: u64) -> f32 {
    use std::arch::x86_64::*;
    let (scale, shift) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
    let mut acc = [_mm256_set1_ps(1.0); ACCUMULATORS];
    for _ in 0..iterations {
        for a in &mut acc {
            *a = _mm256_fmadd_ps(*a, scale, shift);
        }
    }
    let mut lanes = [0.0f32; 8];
    let sum = acc.iter().fold(_mm256_setzero_ps(), |s, &a| _mm256_add_ps(s, a));
    _mm256_storeu_ps(lanes.as_mut_ptr(), sum);
    lanes.iter().sum()
}

/// The AVX-512 version of [`fma_rounds_avx2`]: 16-lane vectors.
///
/// # Safety
/// The CPU must run AVX-512F (the caller checks).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn fma_rounds_avx512(iterations: u64) -> f32 {
    use std::arch::x86_64::*;
    let (scale, shift) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
    let mut acc = [_mm512_set1_ps(1.0); ACCUMULATORS];
    for _ in 0..iterations {
        for a in &mut acc {
            *a = _mm512_fmadd_ps(*a, scale, shift);
        }
    }
    _mm512_reduce_add_ps(acc.iter().fold(_mm512_setzero_ps(), |s, &a| _mm512_add_ps(s, a)))
}

/// Multiply-adds per second of the peak loop on every rayon thread, with
/// the vector width the kernels use on this CPU; `None` where there is no
/// vector FMA (the portable kernels). Shared machines change their speed
/// from one minute to the next (on a 2-vCPU VM the peak has measured 51
/// and 96 G/s minutes apart), so each layer's row is divided by the peak
/// measured just before it (about 25 ms of loops).
fn fma_peak() -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    {
        let threads = rayon::current_num_threads();
        let (lanes, rounds): (u64, unsafe fn(u64) -> f32) = match engine::detected_instruction_set() {
            // SAFETY (both arms): the kernels chose this instruction set by
            // detecting its features on this CPU, the same ones the loops enable.
            "avx512" => (16, fma_rounds_avx512),
            "avx2" => (8, fma_rounds_avx2),
            _ => return None,
        };
        let iterations = 2_000_000;
        let run = || {
            (0..threads).into_par_iter().map(|_| unsafe { rounds(black_box(iterations)) }).sum::<f32>();
        };
        let seconds = Timings::of(1, 5, run).median();
        Some((threads as u64 * iterations * ACCUMULATORS as u64 * lanes) as f64 / seconds)
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}

fn main() {
    engine::allocator::keep_freed_memory();
    let images = env_count("BENCH_IMAGES", 100);
    let reps = env_count("BENCH_REPS", 9);
    println!("threads: {}, instruction set: {}", rayon::current_num_threads(), engine::detected_instruction_set());
    println!("{images} images, median of {reps} runs; G/s = 1e9 multiply-adds per second;");
    println!("peak: the vector-FMA loop on every thread just before the row; % peak: method G/s of that");
    println!(
        "{:<15} {:<22} {:<15} {:<16} {:>9} {:>10} {:>11} {:>8} {:>7}",
        "case", "layer", "work", "method", "ms", "direct G/s", "method G/s", "peak G/s", "% peak"
    );
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut seen: Vec<ConvGeometry> = Vec::new();
    for case in benchmark_cases(&workspace) {
        if std::env::var("BENCH_ONLY").is_ok_and(|only| !case.name.contains(&only)) {
            continue;
        }
        let model = Model::initialized(&case.architecture, case.shape, 0).expect("benchmark models fit their images");
        for (index, layer) in model.layers.iter().enumerate() {
            let Layer::Conv(conv) = layer else { continue };
            let g = conv.geometry;
            // The same layer in two cases (the presets share some) is timed once.
            if seen.contains(&g) {
                continue;
            }
            seen.push(g);
            let mut rng = Rng::new(index as u64);
            let x: Vec<f32> = (0..images * g.in_len()).map(|_| rng.normal()).collect();
            let dy: Vec<f32> = (0..images * g.out_len()).map(|_| rng.normal()).collect();
            let name = format!(
                "{} {}>{} {}x{} k{}{}",
                index,
                g.in_channels,
                g.out_channels,
                g.height,
                g.width,
                g.kernel,
                if g.stride == 1 { String::new() } else { format!(" s{}", g.stride) }
            );
            for work in [ConvWork::Forward, ConvWork::InputGradient, ConvWork::WeightGradient] {
                let peak = fma_peak();
                let seconds = match work {
                    ConvWork::Forward => {
                        Timings::of(1, reps, || drop(black_box(conv2d_forward(&x, &g, &conv.weight, Some(&conv.bias))))).median()
                    }
                    ConvWork::InputGradient => {
                        Timings::of(1, reps, || drop(black_box(conv2d_backward_input(&dy, &g, &conv.weight)))).median()
                    }
                    ConvWork::WeightGradient => {
                        Timings::of(1, reps, || drop(black_box(conv2d_backward_params(&x, &dy, &g)))).median()
                    }
                };
                let arithmetic = conv_arithmetic(&g, work);
                let rate = |count: u64| (count * images as u64) as f64 / seconds;
                let (peak, share) = match peak {
                    Some(p) => (format!("{:.1}", p / 1e9), format!("{:.0}", 100.0 * rate(arithmetic.computed) / p)),
                    None => ("-".to_string(), "-".to_string()),
                };
                println!(
                    "{:<15} {:<22} {:<15} {:<16} {:>9.2} {:>10.1} {:>11.1} {:>8} {:>7}",
                    case.name,
                    name,
                    format!("{work:?}"),
                    arithmetic.method,
                    seconds * 1e3,
                    rate(arithmetic.direct) / 1e9,
                    rate(arithmetic.computed) / 1e9,
                    peak,
                    share
                );
            }
        }
    }
}
