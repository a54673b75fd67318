//! `contacts list|add|change|delete`.

use anyhow::{bail, Result};

use super::Ctx;
use crate::args::ContactsCommand;
use crate::error::UsageError;
use crate::output::{human, json};

pub async fn run(ctx: &Ctx<'_>, cmd: ContactsCommand) -> Result<()> {
    let (client, _) = ctx.settings.login().await?;
    match cmd {
        ContactsCommand::List => {
            let list = client.contacts().await?;
            if ctx.out.json {
                for c in &list {
                    ctx.out.json_line(&json::ContactLine::from(c));
                }
            } else if list.is_empty() {
                println!("No contacts yet. Add one with `msim contacts add LOGIN`.");
            } else {
                for c in &list {
                    println!("{}", human::contact(c));
                }
            }
        }
        ContactsCommand::Add { id, name, group } => {
            client
                .add_contact(&id, name.as_deref(), group.as_deref())
                .await?;
            ctx.out
                .print(&json::Done::with_id(&id), || format!("Added {id}."));
        }
        ContactsCommand::Change { id, name, group } => {
            if name.is_none() && group.is_none() {
                bail!(UsageError(
                    "nothing to change: give --name and/or --group".into()
                ));
            }
            client
                .change_contact(&id, name.as_deref(), group.as_deref())
                .await?;
            ctx.out
                .print(&json::Done::with_id(&id), || format!("Changed {id}."));
        }
        ContactsCommand::Delete { id } => {
            client.delete_contact(&id).await?;
            ctx.out
                .print(&json::Done::with_id(&id), || format!("Deleted {id}."));
        }
    }
    Ok(())
}
