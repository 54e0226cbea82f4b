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

/// mimalloc rather than the C library's allocator. A transfer allocates and frees an
/// answer of about a MiB per piece, on many threads; glibc gave much of that memory
/// back to the kernel and took it again, zeroed, piece after piece.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc's `mimalloc.h`: how long freed memory stays
/// mapped for reuse before it goes back to the kernel (milliseconds; -1: for good).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Freed memory is kept for reuse. The daemon's memory is bounded (the answer budget,
/// QUIC windows, bounded queues), so what is kept is its high-water mark, and reusing
/// it spares the kernel zeroing pages for every piece. In the lab's burst at
/// 100 Mbit/s the daemons used 3 % less CPU with mimalloc so set than with glibc, and
/// 5 % less than with mimalloc handing memory back after a second
/// (`docs/benchmarks.md`). `MIMALLOC_PURGE_DELAY` in the environment still decides.
fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: `mi_option_set` stores an option's value; this runs first thing in
        // `main`, before any other thread exists; -1 is a documented value.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}

fn main() -> ExitCode {
    keep_freed_memory();
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
