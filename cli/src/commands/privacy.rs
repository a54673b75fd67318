//! `privacy approve|deny|block|unblock|last-seen|show`: who sees your presence, whom you block.

use anyhow::Result;
use msim::proto::LastSeenVisibility;

use super::Ctx;
use crate::args::PrivacyCommand;
use crate::output::json;

pub async fn run(ctx: &Ctx<'_>, cmd: PrivacyCommand) -> Result<()> {
    let (client, _) = ctx.settings.login().await?;
    let (id, done) = match cmd {
        PrivacyCommand::Approve { id } => {
            (client.approve_presence(&id).await.map(|_| id), "Approved")
        }
        PrivacyCommand::Deny { id } => (client.deny_presence(&id).await.map(|_| id), "Denied"),
        PrivacyCommand::Block { id } => (client.block(&id).await.map(|_| id), "Blocked"),
        PrivacyCommand::Unblock { id } => (client.unblock(&id).await.map(|_| id), "Unblocked"),
        PrivacyCommand::LastSeen { visibility } => {
            client
                .set_last_seen_visibility(LastSeenVisibility::parse(&visibility))
                .await?;
            let line = json::LastSeenSet {
                ok: true,
                last_seen: &visibility,
            };
            ctx.out
                .print(&line, || format!("Presence shown to: {visibility}."));
            return Ok(());
        }
        PrivacyCommand::Show => {
            let p = client.privacy().await?;
            let seen = p.last_seen.as_str();
            let line = json::Privacy {
                last_seen: seen,
                blocked: &p.blocked,
            };
            ctx.out.print(&line, || {
                format!(
                    "Presence shown to: {seen}\nBlocked: {}",
                    p.blocked.join(", ")
                )
            });
            return Ok(());
        }
    };
    let id = id?;
    ctx.out
        .print(&json::Done::with_id(&id), || format!("{done} {id}."));
    Ok(())
}
