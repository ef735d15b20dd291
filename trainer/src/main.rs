use clap::Parser;

fn main() -> std::process::ExitCode {
    common::cli::init_logging();
    engine::allocator::keep_freed_memory();
    let cli = trainer::Cli::parse();
    common::stage::exit_with("trainer", trainer::run(&cli))
}
