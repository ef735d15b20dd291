use clap::Parser;

fn main() -> std::process::ExitCode {
    common::cli::init_logging();
    let cli = analyzer::Cli::parse();
    if cli.calibrate {
        print!("{}", analyzer::calibration::report(cli.calibration_pairs, cli.calibration_seed));
        return std::process::ExitCode::SUCCESS;
    }
    common::stage::exit_with("analyzer", analyzer::run(&cli))
}
