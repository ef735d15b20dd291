use clap::Parser;

fn main() -> std::process::ExitCode {
    common::cli::init_logging();
    common::allocator::keep_freed_memory();
    let cli = trainer::Cli::parse();
    common::cli::exit_with("trainer", trainer::run(&cli))
}
