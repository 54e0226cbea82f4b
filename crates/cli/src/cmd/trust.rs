//! `modelctl trust`: which publisher keys this node accepts manifests from.

use clap::Subcommand;
use modeld_api::protocol::{Reply, Request, TrustedKey};
use modeld_core::PublicKey;

use crate::{Context, cmd::unexpected, output};

#[derive(Debug, Subcommand)]
pub(crate) enum TrustCommand {
    /// Trust a publisher key (for all names, an organisation `org/`, or one `org/model`).
    Add {
        /// The public key, `ed25519:` and 64 hex digits (from `modelctl key show`).
        key: PublicKey,
        /// Names it may sign for: `*` (all), `org/`, or `org/model`.
        #[arg(long, default_value = "*")]
        scope: String,
    },
    /// List trusted keys and their scopes.
    List,
    /// Stop trusting a key (for one scope, or entirely).
    Remove {
        /// The public key.
        key: PublicKey,
        /// Remove only this scope.
        #[arg(long)]
        scope: Option<String>,
    },
}

pub(crate) fn run(ctx: &Context, command: TrustCommand) -> anyhow::Result<()> {
    let (request, note) = match command {
        TrustCommand::Add { key, scope } => {
            let note = format!("trusting {key} for {scope}");
            (Request::TrustAdd { key, scope }, Some(note))
        }
        TrustCommand::List => (Request::TrustList, None),
        TrustCommand::Remove { key, scope } => {
            let note = format!("removed trust in {key}");
            (Request::TrustRemove { key, scope }, Some(note))
        }
    };
    let reply = ctx.connect()?.call(request, &mut |_| {})?;
    let Reply::Trust(keys) = reply else {
        return Err(unexpected(reply));
    };
    if ctx.json {
        return output::json(&keys);
    }
    if let Some(note) = note {
        eprintln!("{note}");
    }
    print(&keys);
    Ok(())
}

fn print(keys: &[TrustedKey]) {
    if keys.is_empty() {
        println!(
            "no trusted keys: this node accepts no manifests (add one with `modelctl trust add`)"
        );
        return;
    }
    let rows: Vec<_> = keys
        .iter()
        .map(|k| vec![k.key.to_string(), k.scopes.join(", ")])
        .collect();
    output::table(&["KEY", "SCOPES"], &rows);
}
