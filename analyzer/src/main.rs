use clap::Parser;

fn main() -> std::process::ExitCode {
    common::cli::init_logging();
    let cli = analyzer::Cli::parse();
    common::stage::exit_with("analyzer", analyzer::run(&cli))
}
