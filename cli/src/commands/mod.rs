//! One file per command family; [`run`] dispatches. Each command gets the settled
//! [`Settings`], the [`Output`] and the Ctrl-C token, and its own arguments.

mod account;
mod contacts;
pub(crate) mod files;
mod listen;
mod messages;
mod privacy;
mod profile;
mod receive_jobs;

use std::future::Future;

use anyhow::Result;
use tokio_util::sync::CancellationToken;

use crate::args::Command;
use crate::error::Interrupted;
use crate::output::Output;
use crate::settings::Settings;

/// What a command may use.
pub struct Ctx<'a> {
    pub settings: &'a Settings,
    pub out: Output,
    /// Cancelled by Ctrl-C.
    pub cancel: &'a CancellationToken,
}

impl Ctx<'_> {
    /// Runs `work`, or fails with [`Interrupted`] (exit 130) as soon as Ctrl-C arrives.
    pub async fn interruptible<T>(&self, work: impl Future<Output = Result<T>>) -> Result<T> {
        match self.cancel.run_until_cancelled(work).await {
            Some(result) => result,
            None => Err(Interrupted.into()),
        }
    }
}

/// Runs `command`. Commands that can stop cleanly at Ctrl-C watch the token themselves; the
/// others stop at once with [`Interrupted`].
pub async fn run(settings: &Settings, command: Command, cancel: &CancellationToken) -> Result<()> {
    let ctx = Ctx {
        settings,
        out: settings.output,
        cancel,
    };
    match command {
        Command::Register(args) => ctx.interruptible(account::register(&ctx, args)).await,
        Command::Login(args) => ctx.interruptible(account::login(&ctx, args)).await,
        Command::Send { to, text } => ctx.interruptible(messages::send(&ctx, &to, text)).await,
        Command::Read { id } => ctx.interruptible(messages::read(&ctx, &id)).await,
        // `--for` stops cleanly at Ctrl-C (and says "stopped typing").
        Command::Typing { peer, stop, hold } if hold.is_some() => {
            messages::typing(&ctx, &peer, stop, hold).await
        }
        Command::Typing { peer, stop, hold } => {
            ctx.interruptible(messages::typing(&ctx, &peer, stop, hold))
                .await
        }
        Command::Listen {
            count,
            no_ack,
            mark_read,
            no_reconnect,
        } => {
            let options = listen::ListenOptions {
                count,
                ack: !no_ack,
                mark_read,
                reconnect: !no_reconnect,
            };
            listen::listen(&ctx, &options).await
        }
        Command::Contacts(cmd) => ctx.interruptible(contacts::run(&ctx, cmd)).await,
        Command::Privacy(cmd) => ctx.interruptible(privacy::run(&ctx, cmd)).await,
        Command::Profile(cmd) => ctx.interruptible(profile::run(&ctx, cmd)).await,
        Command::SendFile {
            to,
            path,
            wait,
            mime,
        } => files::send_file(&ctx, &to, &path, wait, mime).await,
        Command::Receive {
            accept_all,
            reject_all,
            out,
            count,
        } => {
            let decide = files::Decide::from_flags(settings, accept_all, reject_all)?;
            let out = out.unwrap_or_else(|| settings.download_dir());
            files::receive(&ctx, decide, &out, count).await
        }
    }
}
