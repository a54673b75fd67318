//! `send`, `read` and `typing`: messages and what goes with them.

use std::time::Duration;

use anyhow::Result;
use msim_shared::timestamp;

use super::Ctx;
use crate::output::json;

/// `msim send TO TEXT` (`-` reads the text from standard input).
pub async fn send(ctx: &Ctx<'_>, to: &str, text: String) -> Result<()> {
    let text = if text == "-" {
        read_stdin().await?
    } else {
        text
    };
    let (client, events) = ctx.settings.login().await?;
    drop(events);
    let sent = client.send_message(to, &text).await?;
    let line = json::Sent {
        ok: true,
        id: &sent.id,
        to,
        at: timestamp::format(sent.at),
    };
    ctx.out
        .print(&line, || format!("Sent to {to} (id {}).", sent.id));
    Ok(())
}

async fn read_stdin() -> Result<String> {
    let text = tokio::task::spawn_blocking(|| {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).map(|_| s)
    })
    .await??;
    Ok(text.trim_end_matches(['\n', '\r']).to_owned())
}

/// `msim read ID`.
pub async fn read(ctx: &Ctx<'_>, id: &str) -> Result<()> {
    let (client, _) = ctx.settings.login().await?;
    client.mark_read(id).await?;
    ctx.out
        .print(&json::Done::with_id(id), || format!("Marked {id} read."));
    Ok(())
}

/// `msim typing PEER [--stop | --for SECS]`.
pub async fn typing(ctx: &Ctx<'_>, peer: &str, stop: bool, hold: Option<u64>) -> Result<()> {
    /// The server ends typing 10 s after the last `TYPING-STARTED`; repeat well before that.
    const REPEAT: Duration = Duration::from_secs(5);
    let client = ctx
        .interruptible(async {
            let (client, events) = ctx.settings.login().await?;
            drop(events);
            client.typing(peer, !stop).await?;
            Ok(client)
        })
        .await?;
    if let Some(secs) = hold {
        let until = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let next = (tokio::time::Instant::now() + REPEAT).min(until);
            tokio::select! {
                _ = ctx.cancel.cancelled() => break,
                _ = tokio::time::sleep_until(next) => {}
            }
            if tokio::time::Instant::now() >= until {
                break;
            }
            client.typing(peer, true).await?;
        }
        client.typing(peer, false).await?;
    }
    // Typing is never answered: a round trip makes sure the server handled it before we
    // hang up (which would end the typing notification anyway).
    client.ping().await?;
    let typing = !stop && hold.is_none();
    let line = json::Typing {
        ok: true,
        to: peer,
        typing,
    };
    ctx.out.print(&line, || {
        if typing {
            format!("Told {peer} you are typing.")
        } else {
            format!("Told {peer} you stopped typing.")
        }
    });
    Ok(())
}
