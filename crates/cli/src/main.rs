//! `modelctl`: the command line for modeld. See `modelctl --help`.
//!
//! Thin by design: parse arguments, run one command, print the error chain once.
//! Commands that need the store talk to the running daemon of the data dir through
//! the local API (`modeld-api`); key commands and reading a manifest file work alone.

mod cmd;
mod output;
mod walk;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

/// Command-line interface of modelctl.
#[derive(Debug, Parser)]
#[command(
    name = "modelctl",
    version,
    about = "Publish, fetch, export and verify models through modeld.",
    after_help = "Commands other than `key`, `inspect` and `manifest show FILE` talk to the modeld of the data dir.\n\
Exit status: 0 on success, 1 on any failure (including corruption found by verify), 2 on bad usage."
)]
pub(crate) struct Cli {
    /// Data dir of the modeld to talk to. Default: $MODELD_DATA_DIR, else modeld's default.
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,

    /// Print machine-readable JSON on stdout (and progress events as JSON lines on stderr).
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Publisher keys: generate and show.
    #[command(subcommand)]
    Key(cmd::keys::KeyCommand),
    /// Which publisher keys this node trusts, and for which names.
    #[command(subcommand)]
    Trust(cmd::trust::TrustCommand),
    /// Hash a directory, sign a manifest for it, store and pin it.
    Publish(cmd::publish::PublishArgs),
    /// Fetch a model from peers (every piece verified), pin it, optionally export it.
    Fetch(cmd::fetch::FetchArgs),
    /// What model files are (by content), and whether modeld would publish them.
    Inspect(cmd::inspect::InspectArgs),
    /// Inspect manifests.
    #[command(subcommand)]
    Manifest(cmd::manifest::ManifestCommand),
    /// List the manifests in the store.
    Ls,
    /// Write a model's files into a directory.
    Export(cmd::store::ExportArgs),
    /// Pin a manifest: GC keeps it and its files.
    Pin {
        /// Manifest id (or 6+ hex digits of it), org/model or org/model:version.
        reference: String,
    },
    /// Unpin a manifest: the next GC may remove it.
    Unpin {
        /// Manifest id (or 6+ hex digits of it), org/model or org/model:version.
        reference: String,
    },
    /// Remove unpinned manifests and the blobs nothing pinned needs.
    Gc,
    /// Re-hash stored data; report (and mark missing) anything corrupt.
    Verify {
        /// Only this manifest's files (default: everything in the store).
        reference: Option<String>,
    },
    /// Show the daemon and store status.
    Status,
    /// List the peers this node knows (nearest first), how it learned of them, and their addresses.
    Peers,
}

/// What every command gets.
pub(crate) struct Context {
    pub(crate) data_dir: PathBuf,
    pub(crate) json: bool,
}

impl Context {
    /// Connects to the daemon of the data dir.
    pub(crate) fn connect(&self) -> anyhow::Result<modeld_api::client::Client> {
        Ok(modeld_api::client::Client::connect(&self.data_dir)?)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let ctx = Context {
        data_dir: modeld_api::paths::data_dir(cli.data_dir.as_deref()),
        json: cli.json,
    };
    match run(&ctx, cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(ioe) = e.downcast_ref::<std::io::Error>()
                && ioe.kind() == std::io::ErrorKind::BrokenPipe
            {
                return ExitCode::SUCCESS;
            }
            if e.downcast_ref::<output::AlreadyReported>().is_none() {
                output::error(&ctx, &e);
            }
            ExitCode::FAILURE
        }
    }
}

fn run(ctx: &Context, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Key(c) => cmd::keys::run(ctx, c),
        Command::Trust(c) => cmd::trust::run(ctx, c),
        Command::Publish(a) => cmd::publish::run(ctx, &a),
        Command::Fetch(a) => cmd::fetch::run(ctx, &a),
        Command::Inspect(a) => cmd::inspect::run(ctx, &a),
        Command::Manifest(c) => cmd::manifest::run(ctx, c),
        Command::Ls => cmd::store::ls(ctx),
        Command::Export(a) => cmd::store::export(ctx, &a),
        Command::Pin { reference } => cmd::store::pin(ctx, &reference, true),
        Command::Unpin { reference } => cmd::store::pin(ctx, &reference, false),
        Command::Gc => cmd::store::gc(ctx),
        Command::Verify { reference } => cmd::store::verify(ctx, reference),
        Command::Status => cmd::store::status(ctx),
        Command::Peers => cmd::peers::run(ctx),
    }
}
