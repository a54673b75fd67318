//! `profile set|show`.

use anyhow::{bail, Result};

use super::Ctx;
use crate::args::ProfileCommand;
use crate::error::UsageError;
use crate::output::json;

pub async fn run(ctx: &Ctx<'_>, cmd: ProfileCommand) -> Result<()> {
    let (client, _) = ctx.settings.login().await?;
    match cmd {
        ProfileCommand::Set { name, note } => {
            if name.is_none() && note.is_none() {
                bail!(UsageError(
                    "nothing to change: give --name and/or --note".into()
                ));
            }
            client
                .update_profile(name.as_deref(), note.as_deref())
                .await?;
            ctx.out
                .print(&json::Done::new(), || "Profile updated.".to_owned());
        }
        ProfileCommand::Show { id } => {
            let p = client.profile(id.as_deref()).await?;
            let shown = json::Profile {
                id: &p.id,
                name: &p.name,
                note: &p.note,
            };
            ctx.out.print(&shown, || {
                if p.note.is_empty() {
                    format!("{} <{}>", p.name, p.id)
                } else {
                    format!("{} <{}>\n  {}", p.name, p.id, p.note)
                }
            });
        }
    }
    Ok(())
}
