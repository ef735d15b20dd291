use clap::Parser;

fn main() -> std::process::ExitCode {
    common::cli::init_logging();
    let cli = summarizer::Cli::parse();
    common::stage::exit_with("summarizer", summarizer::run(&cli))
}
