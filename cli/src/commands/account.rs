//! `register` and `login`: the account and the credentials.

use anyhow::{anyhow, Result};
use indicatif::HumanBytes;

use super::Ctx;
use crate::args::SaveArgs;
use crate::output::json;

pub async fn register(ctx: &Ctx<'_>, args: SaveArgs) -> Result<()> {
    let settings = ctx.settings;
    let (login, password) = settings.credentials()?;
    let (client, _) = settings.connect().await?;
    let address = client
        .register(login, password)
        .await
        .map_err(|e| settings.closed_hint(e))?;
    let saved = if args.save {
        Some(settings.save()?)
    } else {
        None
    };
    let done = json::Registered {
        ok: true,
        login: &address,
    };
    ctx.out.print(&done, || {
        let mut s = format!("Registered {address}.");
        if let Some(path) = &saved {
            s.push_str(&format!(" Credentials saved to {}.", path.display()));
        }
        s
    });
    Ok(())
}

pub async fn login(ctx: &Ctx<'_>, args: SaveArgs) -> Result<()> {
    let settings = ctx.settings;
    let (client, _) = settings.login().await?;
    let session = client
        .session()
        .ok_or_else(|| anyhow!("no session after login"))?;
    let saved = if args.save {
        Some(settings.save()?)
    } else {
        None
    };
    let done = json::LoggedIn {
        ok: true,
        login: &session.login,
        domain: &session.domain,
        server: &session.server,
        federation: session.federation,
        max_text: session.max_text,
        max_file_size: session.max_file_size,
    };
    ctx.out.print(&done, || {
        let mut s = format!(
            "Logged in as {} on {} ({}); files up to {}.",
            session.login,
            session.domain,
            session.server,
            HumanBytes(session.max_file_size)
        );
        if let Some(path) = &saved {
            s.push_str(&format!(" Credentials saved to {}.", path.display()));
        }
        s
    });
    Ok(())
}
