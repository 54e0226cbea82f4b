//! One module per group of commands.

pub(crate) mod fetch;
pub(crate) mod inspect;
pub(crate) mod keys;
pub(crate) mod manifest;
pub(crate) mod peers;
pub(crate) mod publish;
pub(crate) mod store;
pub(crate) mod trust;

use anyhow::bail;
use modeld_api::protocol::Reply;

/// Fails with a clear message if the daemon answered with the wrong kind of reply.
pub(crate) fn unexpected(reply: Reply) -> anyhow::Error {
    anyhow::anyhow!("unexpected reply from modeld: {reply:?}")
}

/// Parses a duration such as `90d`, `12h`, `1y`.
pub(crate) fn parse_duration(text: &str) -> anyhow::Result<std::time::Duration> {
    match humantime::parse_duration(text) {
        Ok(d) if d.as_secs() > 0 => Ok(d),
        Ok(_) => bail!("duration {text:?} must be at least one second"),
        Err(e) => bail!("{text:?} is not a duration like 90d or 12h: {e}"),
    }
}
