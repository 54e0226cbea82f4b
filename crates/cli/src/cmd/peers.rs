//! `modelctl peers`: the peers this node knows, nearest first.

use modeld_api::protocol::{Reply, Request};

use crate::{Context, cmd::unexpected, output};

pub(crate) fn run(ctx: &Context) -> anyhow::Result<()> {
    let reply = ctx.connect()?.call(Request::Peers, &mut |_| {})?;
    let Reply::Peers(peers) = reply else {
        return Err(unexpected(reply));
    };
    if ctx.json {
        return output::json(&peers);
    }
    if peers.is_empty() {
        println!("no peers known (is mDNS off and no bootstrap peer configured?)");
        return Ok(());
    }
    let rows: Vec<_> = peers
        .iter()
        .map(|p| {
            vec![
                p.id.to_string(),
                p.data.clone().unwrap_or_else(|| "-".into()),
                p.sources.join(","),
                if p.connected { "yes" } else { "no" }.to_owned(),
                p.rtt_us
                    .map_or_else(|| "-".into(), |r| format!("{:.1}ms", r as f64 / 1000.0)),
                p.addrs.first().cloned().unwrap_or_default(),
            ]
        })
        .collect();
    output::table(
        &[
            "NODE",
            "DATA",
            "LEARNED FROM",
            "CONNECTED",
            "RTT",
            "CONTROL ADDRESS",
        ],
        &rows,
    );
    Ok(())
}
