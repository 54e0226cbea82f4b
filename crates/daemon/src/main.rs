//! `modeld`: the daemon on every host. See `modeld --help` and `docs/ARCHITECTURE.md`.
//!
//! This binary is thin: it reads the configuration, takes the data-dir lock, opens
//! the store, serves the local API, and stops cleanly on SIGINT or SIGTERM.

mod announce;
mod config;
mod daemon;
mod fetch;
mod handlers;
mod lock;
mod logging;
mod node;
mod server;

use std::process::ExitCode;

use clap::Parser;

/// mimalloc, keeping freed memory for reuse (see `modeld_alloc`).
#[global_allocator]
static ALLOCATOR: modeld_alloc::MiMalloc = modeld_alloc::MiMalloc;

fn main() -> ExitCode {
    modeld_alloc::keep_freed_memory();
    let args = config::Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("modeld: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &config::Args) -> anyhow::Result<()> {
    let config = config::Config::load(args)?;
    if args.print_config {
        print!("{}", config.to_toml());
        return Ok(());
    }
    logging::init(config.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.net.threads)
        .enable_all()
        .thread_name("modeld")
        .build()?;
    runtime.block_on(daemon::run(config))
}
