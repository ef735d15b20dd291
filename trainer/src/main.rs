use clap::Parser;

fn main() -> std::process::ExitCode {
    common::cli::init_logging();
    let cli = trainer::Cli::parse();
    common::cli::exit_with("trainer", trainer::run(&cli))
}
