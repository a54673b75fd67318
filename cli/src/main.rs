//! `msim` — the mSIM command-line client, over the `msim` library.
//!
//! Layout: [`args`] defines the command line; [`settings`] resolves it (flag > environment >
//! config file > prompt) into the [`settings::Settings`] the commands read; [`commands`] holds
//! one file per command family; [`output`] prints results (text or `--json`); [`cancel`] is
//! the one Ctrl-C path; [`error`] maps failures to exit codes.

mod args;
mod cancel;
mod commands;
mod config_file;
mod connect;
mod error;
mod output;
mod settings;

use std::process::ExitCode;

use anyhow::Result;

use crate::output::Output;
use crate::settings::Settings;

fn main() -> ExitCode {
    msim::timing::mark("start");
    let cli = args::parse();
    msim_shared::logging::init("warn");
    let runtime = match runtime_for(&cli.command) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("msim: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let out = Output { json: cli.json };
    let result = runtime.block_on(run(cli));
    // A blocking read of stdin (`send … -`, the y/n question) may still be running after
    // Ctrl-C: do not wait for it.
    runtime.shutdown_background();
    msim::timing::mark("exit");
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => ExitCode::from(out.failure(&error).code()),
    }
}

/// Sending a picture runs on one thread: no worker threads to start, and the hand-overs
/// between the connection's tasks (request, writer, reader) stay on it instead of waking
/// another core. Everything else keeps two workers: a large upload or download was slower on
/// one thread (BENCHMARKS.md, cli-transfer, sixth session).
fn runtime_for(command: &args::Command) -> std::io::Result<tokio::runtime::Runtime> {
    let picture = match command {
        args::Command::SendFile { path, .. } => {
            std::fs::metadata(path).is_ok_and(|m| m.len() <= commands::files::HOLD_UP_TO as u64)
        }
        _ => false,
    };
    if picture {
        return tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

async fn run(cli: args::Cli) -> Result<()> {
    let mut settings = Settings::from_cli(&cli)?;
    // The password prompt comes before Ctrl-C is caught, so that Ctrl-C at the prompt still
    // ends the program the usual way.
    settings.resolve_password(&cli)?;
    let cancel = cancel::on_ctrl_c();
    commands::run(&settings, cli.command, &cancel).await
}
