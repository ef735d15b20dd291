use clap::Parser;

#[global_allocator]
static ALLOCATOR: engine::allocator::LineAlignedAllocator = engine::allocator::LineAlignedAllocator;

fn main() -> std::process::ExitCode {
    common::cli::init_logging();
    engine::allocator::keep_freed_memory();
    let cli = trainer::Cli::parse();
    match trainer::requested_torch_module(&cli) {
        Some(Ok(code)) => {
            print!("{code}");
            return std::process::ExitCode::SUCCESS;
        }
        Some(Err(e)) => return common::stage::exit_with("trainer", Err(e)),
        None => {}
    }
    common::stage::exit_with("trainer", trainer::run(&cli))
}
