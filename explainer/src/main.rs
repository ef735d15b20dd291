//! `explainer`: LRP and Grad-CAM maps of the probe set at every checkpoint.

use clap::Parser;

#[global_allocator]
static ALLOCATOR: engine::allocator::LineAlignedAllocator = engine::allocator::LineAlignedAllocator;

fn main() -> std::process::ExitCode {
    common::cli::init_logging();
    engine::allocator::keep_freed_memory();
    let cli = explainer::Cli::parse();
    common::stage::exit_with("explainer", explainer::run(&cli))
}
