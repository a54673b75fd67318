//! `msim` — the mSIM command-line client.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::parser::ValueSource;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use msim::config::{self, ConfigFile};
use msim::proto::{
    sanitize_filename, Contact, ContactUpdate, DownloadGrant, Event, FileOffered, OfferFile,
    Presence,
};
use msim::transfer::{self, Transfer, TransferOptions};
use msim::{Client, ClientError, ClientOptions, Events};
use msim_shared::timestamp;
use serde_json::{json, Value};

const DEFAULT_SERVER: &str = "127.0.0.1:3214";

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  error (connection, I/O, protocol, relay)
  2  usage error (bad arguments, missing credentials)
  3  authentication failed (wrong login or password, throttled)
  4  refused or rejected (unknown recipient, contact/profile refused,
     registration refused, file rejected by the recipient or the server)";

const EXAMPLES: &str = "\
Examples:
  msim -l alice register                  # asks for the password (no echo)
  msim -l alice -p 'alice-password' send bob 'hi Bob!'
  msim -l bob -p 'bob-password' listen
  msim -l alice -p 'alice-password' send-file bob cat.jpg
  msim -l bob -p 'bob-password' receive --accept-all --out ~/Downloads
  pass show msim | msim -l alice --password-stdin send bob hi
  msim -l alice typing bob

Credentials come from --login/--password (or --password-stdin),
MSIM_LOGIN/MSIM_PASSWORD, or the config file (--config, default
~/.config/msim/config.toml), in that order. Without a password from any of
these, msim asks for it when standard input is a terminal.

TLS: --server tls://chat.example.org:3214 encrypts the connection and checks
the server's certificate (always; there is no way to turn that off). Files go
over https:// when the server hands out https relay URLs. For a self-signed
or private-CA certificate add it with --ca-file FILE (or MSIM_CA_FILE, or
`ca_file = \"...\"` in the config file).";

/// mSIM command-line client: messages, contacts and files through a relay.
#[derive(Debug, Parser)]
#[command(name = "msim", version, args_override_self = true, after_help = format!("{EXAMPLES}\n\n{EXIT_CODES}"))]
struct Cli {
    /// Server address: HOST:PORT (plain TCP) or tls://HOST:PORT (TLS, certificate verified
    /// for HOST) [default: 127.0.0.1:3214]
    #[arg(
        long,
        short = 's',
        global = true,
        env = "MSIM_SERVER",
        value_name = "ADDR"
    )]
    server: Option<String>,
    /// Login (bare or login@domain)
    #[arg(long, short = 'l', global = true, env = "MSIM_LOGIN")]
    login: Option<String>,
    /// Password (other local users can see it in the process list: prefer
    /// --password-stdin or the prompt)
    #[arg(
        long,
        short = 'p',
        global = true,
        env = "MSIM_PASSWORD",
        hide_env_values = true
    )]
    password: Option<String>,
    /// Read the password from the first line of standard input
    #[arg(long, global = true)]
    password_stdin: bool,
    /// Config file [default: ~/.config/msim/config.toml, if it exists]
    #[arg(
        long,
        short = 'c',
        global = true,
        env = "MSIM_CONFIG",
        value_name = "FILE"
    )]
    config: Option<PathBuf>,
    /// Extra trusted CA certificate(s), PEM, for tls:// servers and https:// relays (e.g. a
    /// private CA or a self-signed server certificate); the bundled public roots are always
    /// trusted too
    #[arg(long, global = true, env = "MSIM_CA_FILE", value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// Machine-readable output: one JSON object per line on stdout
    #[arg(long, global = true)]
    json: bool,
    /// Seconds to wait for each server answer
    #[arg(long, global = true, default_value_t = 30, value_name = "SECS")]
    timeout: u64,
    #[command(subcommand)]
    command: Command,
    /// Whether `password` came from `--password` (not from the environment).
    #[arg(skip)]
    password_from_flag: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create an account
    #[command(after_help = "Examples:
  msim -l alice register                              # asks for the password twice
  msim -l alice -p 'alice-password' register --save   # also write the config file
  printf '%s\\n' \"$PW\" | msim -l alice --password-stdin register")]
    Register(SaveArgs),
    /// Check the credentials (log in and out)
    #[command(after_help = "Examples:
  msim -l alice -p 'alice-password' login
  msim -l alice -p 'alice-password' login --save      # remember them in the config file
  msim -l alice login --save                          # asks for the password, then saves it
  MSIM_LOGIN=alice MSIM_PASSWORD=... msim login --json
  msim -l alice --password-stdin login < ~/.msim-password")]
    Login(SaveArgs),
    /// Send a text message and wait until the server stored it
    #[command(after_help = "Examples:
  msim send bob 'see you at 5'
  echo 'from a script' | msim send bob -
  msim send bob@example.org hello --json   # prints {\"id\":…,\"at\":…}
  msim -l alice --password-stdin send bob hi < ~/.msim-password

`-` cannot be combined with --password-stdin: both would read standard input.")]
    Send {
        /// Recipient (login or login@domain)
        to: String,
        /// Message text; `-` reads it from standard input
        text: String,
    },
    /// Print incoming messages, receipts, typing, presence and file offers until Ctrl-C
    #[command(
        after_help = "Messages are acknowledged (not redelivered at the next login) once \
printed, unless --no-ack.

When the connection drops (server restart, network error), listen reconnects with \
backoff (0.5 s doubling up to 30 s, with jitter) and logs in again; the server redelivers \
what was not acknowledged, and nothing already printed is printed twice. A notice goes to \
stderr on each disconnect and reconnect. A refused login (exit 3) ends it at once; so does \
any lost connection with --no-reconnect (exit 1).

Examples:
  msim listen
  msim listen --json | jq .
  msim listen --json --count 1     # wait for one message, print it, exit
  msim listen --no-reconnect       # exit when the connection drops"
    )]
    Listen {
        /// Exit after this many messages (counted across reconnections)
        #[arg(long, short = 'n', value_name = "N")]
        count: Option<u64>,
        /// Do not acknowledge messages (they are delivered again at the next login)
        #[arg(long)]
        no_ack: bool,
        /// Mark every printed message read (the sender gets a read receipt)
        #[arg(long)]
        mark_read: bool,
        /// Exit with an error when the connection drops instead of reconnecting
        #[arg(long)]
        no_reconnect: bool,
    },
    /// Tell someone you are typing to them (or that you stopped)
    #[command(
        after_help = "The server ends the typing notification by itself when this \
command disconnects, or 10 s after the last one; --for keeps it up for a while.

Examples:
  msim typing bob                 # bob sees \"alice is typing…\"
  msim typing bob --stop          # bob sees \"alice stopped typing\"
  msim typing bob --for 20        # typing for 20 s (or until Ctrl-C), then stopped"
    )]
    Typing {
        /// Peer (login or login@domain)
        peer: String,
        /// Send "stopped typing" (TYPING-END) instead
        #[arg(long)]
        stop: bool,
        /// Keep typing for SECS (repeated every 5 s; at most a day), then send "stopped typing"
        #[arg(
            long = "for",
            value_name = "SECS",
            conflicts_with = "stop",
            value_parser = clap::value_parser!(u64).range(1..=86_400)
        )]
        hold: Option<u64>,
    },
    /// Show and edit the contact list
    #[command(subcommand)]
    Contacts(ContactsCommand),
    /// Who sees your presence, and whom you block
    #[command(subcommand)]
    Privacy(PrivacyCommand),
    /// Show and edit your profile
    #[command(subcommand)]
    Profile(ProfileCommand),
    /// Offer a file, wait for the recipient to accept, upload it through the relay
    #[command(
        name = "send-file",
        after_help = "Examples:
  msim send-file bob cat.jpg
  msim send-file bob holiday.mp4 --wait 120   # give up after 2 minutes without an answer

Exits with 4 when the recipient (or the server) rejects the file."
    )]
    SendFile {
        /// Recipient (login or login@domain)
        to: String,
        /// The file
        path: PathBuf,
        /// Give up when the recipient has not answered after this many seconds
        #[arg(long, value_name = "SECS")]
        wait: Option<u64>,
        /// MIME type [default: guessed from the file name]
        #[arg(long)]
        mime: Option<String>,
    },
    /// Wait for file offers, accept them (asking, or --accept-all) and download them
    #[command(
        after_help = "Files are saved under --out (default: the config's download_dir, \
else the current directory) with the sender's file name; an existing file is never overwritten \
(\"cat (1).jpg\"). The SHA-256 is verified when the sender announced it.

Examples:
  msim receive                       # ask y/n for each offer
  msim receive --accept-all --out ~/Downloads
  msim receive --accept-all --count 1 --json"
    )]
    Receive {
        /// Accept every offer without asking
        #[arg(long, short = 'y')]
        accept_all: bool,
        /// Reject every offer without asking (clears pending offers)
        #[arg(long, conflicts_with = "accept_all")]
        reject_all: bool,
        /// Directory for received files
        #[arg(long, short = 'o', value_name = "DIR")]
        out: Option<PathBuf>,
        /// Exit after this many offers (accepted or rejected)
        #[arg(long, short = 'n', value_name = "N")]
        count: Option<u64>,
    },
    /// Mark a message read (the sender gets a read receipt)
    #[command(after_help = "Example:
  msim read 0190b5d2-7c3e-7d4a-9f10-2b4c6d8e0f12")]
    Read {
        /// Message id (as printed by `msim listen`)
        id: String,
    },
}

#[derive(Debug, Args)]
struct SaveArgs {
    /// Save server, login and password to the config file (mode 0600)
    #[arg(long)]
    save: bool,
}

#[derive(Debug, Subcommand)]
enum ContactsCommand {
    /// List contacts with presence
    #[command(after_help = "Example:\n  msim contacts list --json")]
    List,
    /// Add a contact
    #[command(
        after_help = "Example:\n  msim contacts add bob --name 'Bob B.' --group Work/Mobile"
    )]
    Add {
        /// Address (login or login@domain)
        id: String,
        /// Display name [default: their profile name]
        #[arg(long)]
        name: Option<String>,
        /// Group, nested with `/` (Work/Mobile)
        #[arg(long)]
        group: Option<String>,
    },
    /// Rename a contact or move it to another group
    #[command(
        after_help = "Examples:\n  msim contacts change bob --name Bobby\n  msim contacts change bob --group ''   # remove from its group"
    )]
    Change {
        /// Address
        id: String,
        /// New display name
        #[arg(long)]
        name: Option<String>,
        /// New group; empty removes the group
        #[arg(long)]
        group: Option<String>,
    },
    /// Delete a contact
    #[command(after_help = "Example:\n  msim contacts delete bob")]
    Delete {
        /// Address
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum ProfileCommand {
    /// Change your display name and/or status note
    #[command(after_help = "Example:\n  msim profile set --name 'Alice A.' --note 'on holiday'")]
    Set {
        /// Display name
        #[arg(long)]
        name: Option<String>,
        /// Status note shown to people who have you as a contact
        #[arg(long)]
        note: Option<String>,
    },
    /// Show your profile, or another local user's
    #[command(after_help = "Examples:\n  msim profile show\n  msim profile show bob")]
    Show {
        /// User [default: yourself]
        id: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum PrivacyCommand {
    /// Let a user who asked (PRESENCE-REQUEST) see your presence
    #[command(after_help = "Example:\n  msim privacy approve bob")]
    Approve {
        /// User
        id: String,
    },
    /// Refuse a presence request, or stop showing your presence to a user
    #[command(after_help = "Example:\n  msim privacy deny eve")]
    Deny {
        /// User
        id: String,
    },
    /// Block a user: their messages, typing, offers and presence queries go nowhere
    #[command(after_help = "Example:\n  msim privacy block mallory")]
    Block {
        /// User
        id: String,
    },
    /// Unblock a user
    #[command(after_help = "Example:\n  msim privacy unblock mallory")]
    Unblock {
        /// User
        id: String,
    },
    /// Who sees your presence (online and last seen)
    #[command(after_help = "Example:\n  msim privacy last-seen nobody")]
    LastSeen {
        /// everyone, contacts (approved watchers, the default) or nobody
        #[arg(value_parser = ["everyone", "contacts", "nobody"])]
        visibility: String,
    },
    /// Show your last-seen setting and block list
    Show,
}

async fn privacy(settings: &Settings, cmd: PrivacyCommand) -> Result<()> {
    use msim::proto::LastSeenVisibility;
    let (client, _) = settings.login().await?;
    let (id, done) = match cmd {
        PrivacyCommand::Approve { id } => {
            (client.approve_presence(&id).await.map(|_| id), "Approved")
        }
        PrivacyCommand::Deny { id } => (client.deny_presence(&id).await.map(|_| id), "Denied"),
        PrivacyCommand::Block { id } => (client.block(&id).await.map(|_| id), "Blocked"),
        PrivacyCommand::Unblock { id } => (client.unblock(&id).await.map(|_| id), "Unblocked"),
        PrivacyCommand::LastSeen { visibility } => {
            let v = LastSeenVisibility::parse(&visibility);
            client.set_last_seen_visibility(v).await?;
            settings.print(json!({"ok": true, "last-seen": visibility}), || {
                format!("Presence shown to: {visibility}.")
            });
            return Ok(());
        }
        PrivacyCommand::Show => {
            let p = client.privacy().await?;
            let seen = p.last_seen.as_str().to_owned();
            settings.print(json!({"last-seen": seen, "blocked": p.blocked}), || {
                format!(
                    "Presence shown to: {seen}\nBlocked: {}",
                    p.blocked.join(", ")
                )
            });
            return Ok(());
        }
    };
    let id = id?;
    settings.print(json!({"ok": true, "id": id}), || format!("{done} {id}."));
    Ok(())
}

/// A problem with the invocation (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(String);

fn exit_code(error: &anyhow::Error) -> u8 {
    if error.downcast_ref::<UsageError>().is_some() {
        return 2;
    }
    if let Some(e) = error.downcast_ref::<ClientError>() {
        if e.is_auth_failure() {
            return 3;
        }
        if e.is_refusal() {
            return 4;
        }
    }
    1
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let mut cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // `--password-stdin` overrides MSIM_PASSWORD and the config file, but not `--password`.
    cli.password_from_flag = matches.value_source("password") == Some(ValueSource::CommandLine);
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("msim: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let json = cli.json;
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let code = exit_code(&error);
            if json {
                let kind = match code {
                    2 => "usage",
                    3 => "auth",
                    4 => "refused",
                    _ => "error",
                };
                println!(
                    "{}",
                    json!({"error": format!("{error:#}"), "kind": kind, "exit": code})
                );
            }
            eprintln!("msim: {error:#}");
            ExitCode::from(code)
        }
    }
}

/// Resolved connection settings.
struct Settings {
    server: String,
    login: Option<String>,
    password: Option<String>,
    config_path: Option<PathBuf>,
    file: ConfigFile,
    json: bool,
    options: ClientOptions,
    /// Trust for TLS (tls:// servers, https:// relays).
    tls: Option<std::sync::Arc<msim::tls::rustls::ClientConfig>>,
    /// The password was read from standard input (`--password-stdin`).
    password_from_stdin: bool,
}

impl Settings {
    fn from_cli(cli: &Cli) -> Result<Settings> {
        // `--save` may name a file that does not exist yet.
        let saving = matches!(
            &cli.command,
            Command::Register(SaveArgs { save: true }) | Command::Login(SaveArgs { save: true })
        );
        let explicit = cli.config.as_deref().filter(|p| !saving || p.exists());
        let file = if cli.config.is_some() && explicit.is_none() {
            ConfigFile::default()
        } else {
            ConfigFile::load_or_default(explicit)
                .map_err(|e| UsageError(format!("config file: {e}")))?
        };
        let ca_file = cli.ca_file.clone().or_else(|| file.ca_file.clone());
        let tls = match ca_file {
            Some(path) => Some(
                msim::tls::client_config(&[path])
                    .map_err(|e| UsageError(format!("--ca-file: {e}")))?,
            ),
            None => None,
        };
        let options = ClientOptions {
            request_timeout: Duration::from_secs(cli.timeout.max(1)),
            tls: tls.clone(),
            ..ClientOptions::default()
        };
        Ok(Settings {
            // clap already gave flags priority over the environment.
            server: config::pick(cli.server.clone(), None, file.server.clone())
                .unwrap_or_else(|| DEFAULT_SERVER.to_owned()),
            login: config::pick(cli.login.clone(), None, file.login.clone()),
            password: config::pick(cli.password.clone(), None, file.password.clone()),
            config_path: cli.config.clone().or_else(config::default_path),
            file,
            json: cli.json,
            options,
            tls,
            password_from_stdin: false,
        })
    }

    /// A connection closed before the first answer on a plain connection: the server may be
    /// speaking TLS.
    fn closed_hint(&self, e: ClientError) -> anyhow::Error {
        let plain = !self.server.starts_with("tls://");
        if plain && matches!(e, ClientError::Closed) {
            anyhow::Error::from(e).context(format!(
                "{} closed the connection (if it serves TLS, use --server tls://{})",
                self.server, self.server
            ))
        } else {
            e.into()
        }
    }

    /// Transfer options: the default retries, the TLS trust of the settings.
    fn transfer_options(&self) -> TransferOptions {
        TransferOptions {
            tls: self.tls.clone(),
            ..TransferOptions::default()
        }
    }

    /// Fills in the password from `--password-stdin`, or asks for it on the terminal when no
    /// flag, environment variable or config file gave one.
    fn resolve_password(&mut self, cli: &Cli) -> Result<()> {
        if cli.password_stdin {
            if cli.password_from_flag {
                bail!(UsageError(
                    "--password and --password-stdin cannot be used together".into()
                ));
            }
            if reads_stdin(&cli.command) {
                bail!(UsageError(
                    "--password-stdin cannot be used with a command that reads standard input \
                     (`send … -`, or `receive` asking y/n): give the password another way"
                        .into()
                ));
            }
            let line = {
                let stdin = std::io::stdin();
                let mut lock = stdin.lock();
                read_password_line(&mut lock)?
            };
            self.password = Some(line);
            self.password_from_stdin = true;
            return Ok(());
        }
        if self.password.is_some() || !std::io::stdin().is_terminal() {
            return Ok(());
        }
        // Without a login there is nothing to ask for; `credentials` reports it.
        let Some(login) = self.login.clone() else {
            return Ok(());
        };
        let prompt = format!("Password for {login} on {}: ", self.server);
        let password = rpassword::prompt_password(prompt)
            .context("cannot read the password from the terminal")?;
        if password.is_empty() {
            bail!(UsageError("empty password".into()));
        }
        if matches!(cli.command, Command::Register(_)) {
            let again = rpassword::prompt_password("Repeat the password: ")
                .context("cannot read the password from the terminal")?;
            if again != password {
                bail!(UsageError("the passwords do not match".into()));
            }
        }
        self.password = Some(password);
        Ok(())
    }

    fn credentials(&self) -> Result<(&str, &str)> {
        let login = self.login.as_deref().ok_or_else(|| {
            UsageError("no login: use --login, MSIM_LOGIN or `login = …` in the config file".into())
        })?;
        let password = self.password.as_deref().ok_or_else(|| {
            UsageError(
                "no password: use --password, --password-stdin, MSIM_PASSWORD or `password = …` in \
                 the config file, or run msim in a terminal to be asked for it"
                    .into(),
            )
        })?;
        Ok((login, password))
    }

    async fn connect(&self) -> Result<(Client, Events)> {
        let connect = Client::connect_to(self.server.as_str(), self.options.clone());
        match tokio::time::timeout(self.options.request_timeout, connect).await {
            Ok(Err(
                e @ ClientError::Tls {
                    certificate: true, ..
                },
            )) if self.tls.is_none() => Err(anyhow::Error::from(e)).with_context(|| {
                format!(
                    "cannot connect to {} (for a self-signed or private-CA certificate, \
                     pass its CA with --ca-file)",
                    self.server
                )
            }),
            Ok(connected) => {
                connected.with_context(|| format!("cannot connect to {}", self.server))
            }
            Err(_) => Err(anyhow::Error::from(ClientError::Timeout))
                .with_context(|| format!("cannot connect to {}", self.server)),
        }
    }

    async fn login(&self) -> Result<(Client, Events)> {
        let (login, password) = self.credentials()?;
        let (client, events) = self.connect().await?;
        match client.login(login, password).await {
            Ok(_) => Ok((client, events)),
            // After a recent failure the server asks to wait a little: do so once.
            Err(ClientError::AuthFailed {
                retry_after: Some(secs),
                ..
            }) if secs <= 10 => {
                drop((client, events));
                eprintln!("msim: login throttled; retrying in {secs} s");
                tokio::time::sleep(Duration::from_secs(secs)).await;
                let (client, events) = self.connect().await?;
                client.login(login, password).await?;
                Ok((client, events))
            }
            Err(e) => Err(self.closed_hint(e)),
        }
    }

    fn save(&self) -> Result<PathBuf> {
        let path = self
            .config_path
            .clone()
            .ok_or_else(|| anyhow!("no config path: use --config FILE"))?;
        let mut file = self.file.clone();
        file.server = Some(self.server.clone());
        file.login = self.login.clone();
        file.password = self.password.clone();
        file.save(&path)?;
        Ok(path)
    }

    fn print(&self, value: Value, human: impl FnOnce() -> String) {
        if self.json {
            println!("{value}");
        } else {
            println!("{}", human());
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    let mut settings = Settings::from_cli(&cli)?;
    settings.resolve_password(&cli)?;
    match cli.command {
        Command::Register(args) => {
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
            settings.print(json!({"ok": true, "login": address}), || {
                let mut s = format!("Registered {address}.");
                if let Some(path) = &saved {
                    s.push_str(&format!(" Credentials saved to {}.", path.display()));
                }
                s
            });
        }
        Command::Login(args) => {
            let (client, _) = settings.login().await?;
            let session = client
                .session()
                .ok_or_else(|| anyhow!("no session after login"))?;
            let saved = if args.save {
                Some(settings.save()?)
            } else {
                None
            };
            settings.print(
                json!({
                    "ok": true,
                    "login": session.login,
                    "domain": session.domain,
                    "server": session.server,
                    "federation": session.federation,
                    "max_text": session.max_text,
                    "max_file_size": session.max_file_size,
                }),
                || {
                    let mut s = format!(
                        "Logged in as {} on {} ({}); files up to {}.",
                        session.login,
                        session.domain,
                        session.server,
                        human_bytes(session.max_file_size)
                    );
                    if let Some(path) = &saved {
                        s.push_str(&format!(" Credentials saved to {}.", path.display()));
                    }
                    s
                },
            );
        }
        Command::Send { to, text } => {
            let text = if text == "-" {
                read_stdin().await?
            } else {
                text
            };
            let (client, events) = settings.login().await?;
            drop(events);
            let sent = client.send_message(&to, &text).await?;
            let at = timestamp::format(sent.at);
            settings.print(
                json!({"ok": true, "id": sent.id, "to": to, "at": at}),
                || format!("Sent to {to} (id {}).", sent.id),
            );
        }
        Command::Listen {
            count,
            no_ack,
            mark_read,
            no_reconnect,
        } => {
            let options = ListenOptions {
                count,
                ack: !no_ack,
                mark_read,
                reconnect: !no_reconnect,
            };
            listen(&settings, &options).await?
        }
        Command::Typing { peer, stop, hold } => typing(&settings, &peer, stop, hold).await?,
        Command::Contacts(cmd) => contacts(&settings, cmd).await?,
        Command::Privacy(cmd) => privacy(&settings, cmd).await?,
        Command::Profile(cmd) => profile(&settings, cmd).await?,
        Command::SendFile {
            to,
            path,
            wait,
            mime,
        } => send_file(&settings, &to, &path, wait, mime).await?,
        Command::Receive {
            accept_all,
            reject_all,
            out,
            count,
        } => {
            let decide = if accept_all {
                Decide::Accept
            } else if reject_all {
                Decide::Reject
            } else if std::io::stdin().is_terminal() && !settings.password_from_stdin {
                Decide::Ask
            } else {
                bail!(UsageError(
                    "cannot ask without a terminal: use --accept-all or --reject-all".into()
                ));
            };
            let out = out
                .or_else(|| settings.file.download_dir.clone())
                .unwrap_or_else(|| PathBuf::from("."));
            receive(&settings, decide, &out, count).await?
        }
        Command::Read { id } => {
            let (client, _) = settings.login().await?;
            client.mark_read(&id).await?;
            settings.print(json!({"ok": true, "id": id}), || {
                format!("Marked {id} read.")
            });
        }
    }
    Ok(())
}

/// Whether the command itself reads standard input (so the password cannot come from there).
fn reads_stdin(command: &Command) -> bool {
    match command {
        Command::Send { text, .. } => text == "-",
        Command::Receive {
            accept_all,
            reject_all,
            ..
        } => !accept_all && !reject_all,
        _ => false,
    }
}

/// The password on the first line of `input` (`--password-stdin`), without its line ending.
fn read_password_line(input: &mut impl std::io::BufRead) -> Result<String> {
    let mut line = String::new();
    input
        .read_line(&mut line)
        .context("--password-stdin: cannot read standard input")?;
    let password = line
        .strip_suffix('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .unwrap_or(&line);
    if password.is_empty() {
        bail!(UsageError(
            "--password-stdin: the first line of standard input is empty".into()
        ));
    }
    Ok(password.to_owned())
}

async fn read_stdin() -> Result<String> {
    let text = tokio::task::spawn_blocking(|| {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).map(|_| s)
    })
    .await??;
    Ok(text.trim_end_matches(['\n', '\r']).to_owned())
}

/// The next pushed event, or `None` once Ctrl-C is pressed; a closed connection is an error.
async fn next_event(
    events: &mut Events,
    ctrl_c: &mut std::pin::Pin<&mut impl std::future::Future<Output = std::io::Result<()>>>,
) -> Result<Option<Event>> {
    tokio::select! {
        _ = ctrl_c.as_mut() => Ok(None),
        event = events.recv() => match event {
            Some(event) => Ok(Some(event)),
            None => bail!(ClientError::Closed),
        },
    }
}

/// `msim listen`'s options.
#[derive(Debug, Clone)]
struct ListenOptions {
    count: Option<u64>,
    ack: bool,
    mark_read: bool,
    reconnect: bool,
}

/// A connection that stayed up this long is healthy: the next loss starts the backoff over.
const HEALTHY_AFTER: Duration = Duration::from_secs(10);
/// Without any event for this long, `listen` checks the connection with a `PING`.
const LIVENESS_CHECK: Duration = Duration::from_secs(60);
/// How many printed message ids (and other redeliverable items) `listen` remembers.
const SEEN_CAPACITY: usize = 10_000;

/// A bounded set of recently printed keys: the oldest are forgotten first.
struct Seen {
    keys: std::collections::HashSet<String>,
    order: std::collections::VecDeque<String>,
    capacity: usize,
}

impl Seen {
    fn new(capacity: usize) -> Seen {
        Seen {
            keys: std::collections::HashSet::new(),
            order: std::collections::VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// Records `key`; `false` when it was already there.
    fn insert(&mut self, key: String) -> bool {
        if self.keys.contains(&key) {
            return false;
        }
        if self.order.len() >= self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.keys.remove(&old);
            }
        }
        self.keys.insert(key.clone());
        self.order.push_back(key);
        true
    }
}

/// What identifies an event the server may send again at the next login (pending messages,
/// offers and file results; receipts are sent once but cost nothing to remember).
fn redelivery_key(event: &Event) -> Option<String> {
    Some(match event {
        Event::Message(m) => format!("message {}", m.id),
        Event::ReadReceipt(r) => format!("read {} {}", r.id, r.by),
        Event::FileOffered(f) => format!("offer {}", f.transfer_id),
        Event::DownloadGrant(g) => format!("ready {}", g.transfer_id),
        Event::UploadGrant(g) => format!("accepted {}", g.transfer_id),
        Event::FileRejected(r) => format!("rejected {}", r.transfer_id),
        _ => return None,
    })
}

/// Whether `error` means the connection is gone (worth reconnecting), rather than a refusal,
/// a protocol problem or a local failure.
fn is_connection_loss(error: &anyhow::Error) -> bool {
    matches!(
        error.downcast_ref::<ClientError>(),
        Some(ClientError::Closed | ClientError::Io(_) | ClientError::Timeout)
    ) || error.downcast_ref::<std::io::Error>().is_some()
}

/// How one logged-in session of `listen` ended.
enum SessionEnd {
    /// Ctrl-C, or `--count` reached.
    Done,
    /// The connection is gone.
    Lost(anyhow::Error),
}

/// State kept across reconnections.
struct ListenState {
    printed: u64,
    seen: Seen,
}

async fn listen(settings: &Settings, options: &ListenOptions) -> Result<()> {
    let (mut client, mut events) = settings.login().await?;
    if !settings.json {
        if let Some(me) = client.me() {
            eprintln!("Listening as {me}; Ctrl-C to stop.");
        }
    }
    if options.count == Some(0) {
        return Ok(());
    }
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut state = ListenState {
        printed: 0,
        seen: Seen::new(SEEN_CAPACITY),
    };
    let mut backoff = msim::backoff::Backoff::default();
    loop {
        let connected_at = tokio::time::Instant::now();
        let lost = match listen_session(
            settings,
            options,
            &client,
            &mut events,
            &mut state,
            &mut ctrl_c,
        )
        .await?
        {
            SessionEnd::Done => return Ok(()),
            SessionEnd::Lost(error) => error,
        };
        drop((client, events));
        if !options.reconnect {
            return Err(lost);
        }
        if connected_at.elapsed() >= HEALTHY_AFTER {
            backoff.reset();
        }
        let mut delay = backoff.next_delay();
        eprintln!(
            "msim: connection to {} lost ({lost:#}); reconnecting in {:.1} s",
            settings.server,
            delay.as_secs_f64()
        );
        (client, events) = loop {
            tokio::select! {
                _ = ctrl_c.as_mut() => return Ok(()),
                _ = tokio::time::sleep(delay) => {}
            }
            let attempt = tokio::select! {
                _ = ctrl_c.as_mut() => return Ok(()),
                attempt = settings.login() => attempt,
            };
            match attempt {
                Ok(connected) => break connected,
                // A refused login (or a usage problem) does not get better by retrying.
                Err(error) if exit_code(&error) != 1 => return Err(error),
                Err(error) => {
                    delay = backoff.next_delay();
                    eprintln!(
                        "msim: reconnecting to {} failed ({error:#}); retrying in {:.1} s",
                        settings.server,
                        delay.as_secs_f64()
                    );
                }
            }
        };
        eprintln!(
            "msim: reconnected to {} as {}",
            settings.server,
            client.me().unwrap_or_default()
        );
    }
}

/// Prints events from one logged-in connection until Ctrl-C, `--count`, or the connection
/// is lost. Errors other than a lost connection end `listen`.
async fn listen_session(
    settings: &Settings,
    options: &ListenOptions,
    client: &Client,
    events: &mut Events,
    state: &mut ListenState,
    ctrl_c: &mut std::pin::Pin<&mut impl std::future::Future<Output = std::io::Result<()>>>,
) -> Result<SessionEnd> {
    // Connection losses become `SessionEnd::Lost`; anything else is returned as an error.
    macro_rules! check {
        ($e:expr) => {
            match $e {
                Ok(v) => v,
                Err(error) => {
                    let error = anyhow::Error::from(error);
                    if is_connection_loss(&error) {
                        return Ok(SessionEnd::Lost(error));
                    }
                    return Err(error);
                }
            }
        };
    }
    loop {
        let event = tokio::select! {
            _ = ctrl_c.as_mut() => return Ok(SessionEnd::Done),
            event = events.recv() => match event {
                Some(event) => event,
                None => return Ok(SessionEnd::Lost(ClientError::Closed.into())),
            },
            _ = tokio::time::sleep(LIVENESS_CHECK) => {
                // Quiet for a while: make sure the server is still there (a connection can
                // die without the socket noticing).
                let pong = tokio::select! {
                    _ = ctrl_c.as_mut() => return Ok(SessionEnd::Done),
                    pong = client.ping() => pong,
                };
                check!(pong);
                continue;
            }
        };
        let fresh = redelivery_key(&event).is_none_or(|key| state.seen.insert(key));
        if fresh {
            settings.print(event_json(&event), || event_text(&event));
        }
        let Event::Message(m) = &event else { continue };
        // Acknowledge redelivered copies too: the earlier acknowledgement may have been lost
        // with the connection.
        if options.mark_read {
            match client.mark_read(&m.id).await {
                // Marked read before the connection dropped.
                Err(ClientError::ReadFailed { .. }) if !fresh => {}
                other => check!(other),
            }
        } else if options.ack {
            check!(client.ack(&m.id).await);
        }
        if !fresh {
            continue;
        }
        state.printed += 1;
        if options.count.is_some_and(|n| state.printed >= n) {
            if options.ack || options.mark_read {
                // A round trip makes sure the ACK reached the server before we hang up.
                if let Err(error) = client.ping().await {
                    eprintln!(
                        "msim: the server may not have the last acknowledgement ({error}); \
                         the message can be delivered again at the next login"
                    );
                }
            }
            return Ok(SessionEnd::Done);
        }
    }
}

/// `msim typing PEER [--stop | --for SECS]`.
async fn typing(settings: &Settings, peer: &str, stop: bool, hold: Option<u64>) -> Result<()> {
    /// The server ends typing 10 s after the last `TYPING-STARTED`; repeat well before that.
    const REPEAT: Duration = Duration::from_secs(5);
    let (client, events) = settings.login().await?;
    drop(events);
    client.typing(peer, !stop).await?;
    if let Some(secs) = hold {
        let until = tokio::time::Instant::now() + Duration::from_secs(secs);
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        loop {
            let next = (tokio::time::Instant::now() + REPEAT).min(until);
            tokio::select! {
                _ = ctrl_c.as_mut() => break,
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
    settings.print(json!({"ok": true, "to": peer, "typing": typing}), || {
        if typing {
            format!("Told {peer} you are typing.")
        } else {
            format!("Told {peer} you stopped typing.")
        }
    });
    Ok(())
}

async fn contacts(settings: &Settings, cmd: ContactsCommand) -> Result<()> {
    let (client, _) = settings.login().await?;
    match cmd {
        ContactsCommand::List => {
            let list = client.contacts().await?;
            if settings.json {
                for c in &list {
                    println!("{}", contact_json(c));
                }
            } else if list.is_empty() {
                println!("No contacts yet. Add one with `msim contacts add LOGIN`.");
            } else {
                for c in &list {
                    println!("{}", contact_text(c));
                }
            }
        }
        ContactsCommand::Add { id, name, group } => {
            client
                .add_contact(&id, name.as_deref(), group.as_deref())
                .await?;
            settings.print(json!({"ok": true, "id": id}), || format!("Added {id}."));
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
            settings.print(json!({"ok": true, "id": id}), || format!("Changed {id}."));
        }
        ContactsCommand::Delete { id } => {
            client.delete_contact(&id).await?;
            settings.print(json!({"ok": true, "id": id}), || format!("Deleted {id}."));
        }
    }
    Ok(())
}

async fn profile(settings: &Settings, cmd: ProfileCommand) -> Result<()> {
    let (client, _) = settings.login().await?;
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
            settings.print(json!({"ok": true}), || "Profile updated.".to_owned());
        }
        ProfileCommand::Show { id } => {
            let p = client.profile(id.as_deref()).await?;
            settings.print(json!({"id": p.id, "name": p.name, "note": p.note}), || {
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

fn progress_bar(settings: &Settings, size: u64, label: &str) -> ProgressBar {
    if settings.json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(size);
    if let Ok(style) = ProgressStyle::with_template(
        "{msg} [{bar:30.cyan/blue}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(label.to_owned());
    bar
}

fn progress_of(bar: &ProgressBar) -> msim::Progress {
    let bar = bar.clone();
    Arc::new(move |done, total| {
        if bar.length() != Some(total) {
            bar.set_length(total);
        }
        bar.set_position(done);
    })
}

async fn send_file(
    settings: &Settings,
    to: &str,
    path: &Path,
    wait: Option<u64>,
    mime: Option<String>,
) -> Result<()> {
    let meta = tokio::fs::metadata(path)
        .await
        .with_context(|| format!("cannot read {}", path.display()))?;
    if !meta.is_file() {
        bail!(UsageError(format!("{} is not a file", path.display())));
    }
    let filename = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(sanitize_filename)
        .ok_or_else(|| UsageError(format!("{}: unusable file name", path.display())))?;
    let size = meta.len();
    let sha256 = transfer::sha256_file(path).await?;
    let (client, events) = settings.login().await?;
    drop(events);
    let offer = client
        .offer_file(OfferFile {
            to: to.to_owned(),
            filename: filename.clone(),
            size,
            sha256: Some(sha256.clone()),
            mime: mime.or_else(|| guess_mime(&filename).map(str::to_owned)),
        })
        .await?;
    let transfer_id = offer.transfer_id().to_owned();
    if settings.json {
        println!(
            "{}",
            json!({"event": "pending", "transfer_id": transfer_id, "to": offer.pending.to,
                   "expires": timestamp::format(offer.pending.expires)})
        );
    } else {
        eprintln!(
            "Offered {filename} ({}) to {}; waiting for them to accept… (Ctrl-C to give up)",
            human_bytes(size),
            offer.pending.to
        );
    }
    let answer = offer.answer();
    let ctrl_c = tokio::signal::ctrl_c();
    let grant = tokio::select! {
        grant = async {
            match wait {
                Some(secs) => tokio::time::timeout(Duration::from_secs(secs), answer)
                    .await
                    .map_err(|_| anyhow!("{to} did not answer within {secs} s"))?
                    .map_err(anyhow::Error::from),
                None => answer.await.map_err(anyhow::Error::from),
            }
        } => grant?,
        _ = ctrl_c => bail!("interrupted while waiting for {to}"),
    };
    let bar = progress_bar(settings, size, &filename);
    let report = transfer::upload(
        &Transfer::from(&grant),
        path,
        Some(progress_of(&bar)),
        &settings.transfer_options(),
    )
    .await;
    bar.finish_and_clear();
    let report = report?;
    if let Some(relay_sha) = &report.sha256 {
        if !relay_sha.eq_ignore_ascii_case(&sha256) {
            bail!(ClientError::ChecksumMismatch {
                expected: sha256,
                actual: relay_sha.clone(),
            });
        }
    }
    settings.print(
        json!({"event": "sent", "ok": true, "transfer_id": transfer_id, "to": to,
               "filename": filename, "size": size, "sha256": sha256}),
        || format!("Sent {filename} ({}) to {to}.", human_bytes(size)),
    );
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decide {
    Accept,
    Reject,
    Ask,
}

async fn ask(offer: &FileOffered) -> Result<bool> {
    let question = format!(
        "{} offers {} ({}). Accept? [y/N] ",
        offer.from,
        offer.filename,
        human_bytes(offer.size)
    );
    let answer = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        eprint!("{question}");
        let _ = std::io::stderr().flush();
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map(|_| line)
    })
    .await??;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

async fn receive(
    settings: &Settings,
    decide: Decide,
    out: &Path,
    count: Option<u64>,
) -> Result<()> {
    tokio::fs::create_dir_all(out)
        .await
        .with_context(|| format!("cannot create {}", out.display()))?;
    let (client, mut events) = settings.login().await?;
    if !settings.json {
        eprintln!(
            "Waiting for files as {}; saving to {}. Ctrl-C to stop.",
            client.me().unwrap_or_default(),
            out.display()
        );
    }
    if count == Some(0) {
        return Ok(());
    }
    let mut handled = 0u64;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let Some(event) = next_event(&mut events, &mut ctrl_c).await? else {
            return Ok(());
        };
        let offer = match event {
            Event::FileOffered(offer) => offer,
            Event::Message(m) if !settings.json => {
                eprintln!("{}", event_text(&Event::Message(m)));
                continue;
            }
            _ => continue,
        };
        let accept = match decide {
            Decide::Accept => true,
            Decide::Reject => false,
            Decide::Ask => ask(&offer).await?,
        };
        if accept {
            let grant = client.accept_file(&offer.transfer_id).await?;
            download_one(settings, &offer, &grant, out).await?;
        } else {
            client.reject_file(&offer.transfer_id).await?;
            settings.print(
                json!({"event": "rejected", "transfer_id": offer.transfer_id,
                       "from": offer.from, "filename": offer.filename}),
                || format!("Rejected {} from {}.", offer.filename, offer.from),
            );
        }
        handled += 1;
        if count.is_some_and(|n| handled >= n) {
            return Ok(());
        }
    }
}

async fn download_one(
    settings: &Settings,
    offer: &FileOffered,
    grant: &DownloadGrant,
    out: &Path,
) -> Result<()> {
    let name = sanitize_filename(&grant.filename)
        .or_else(|| sanitize_filename(&offer.filename))
        .unwrap_or_else(|| format!("transfer-{}", offer.transfer_id));
    let dest = unique_path(out, &name);
    let bar = progress_bar(settings, grant.size, &name);
    let sha = grant.sha256.as_deref().or(offer.sha256.as_deref());
    let report = transfer::download(
        &Transfer::from(grant),
        &dest,
        sha,
        Some(progress_of(&bar)),
        &settings.transfer_options(),
    )
    .await;
    bar.finish_and_clear();
    let report = report?;
    settings.print(
        json!({"event": "received", "ok": true, "transfer_id": offer.transfer_id,
               "from": offer.from, "filename": name, "path": report.path,
               "size": report.size, "sha256": report.sha256, "verified": report.verified}),
        || {
            format!(
                "Received {} ({}) from {} → {}{}",
                name,
                human_bytes(report.size),
                offer.from,
                report.path.display(),
                if report.verified {
                    " (SHA-256 verified)"
                } else {
                    ""
                }
            )
        },
    );
    Ok(())
}

/// `dir/name`, or `dir/stem (N).ext` when that exists (or a partial download of it does not).
fn unique_path(dir: &Path, name: &str) -> PathBuf {
    let candidate = dir.join(name);
    if !candidate.exists() {
        return candidate;
    }
    let (stem, ext) = match name.rfind('.') {
        Some(at) if at > 0 => (&name[..at], &name[at..]),
        _ => (name, ""),
    };
    for n in 1..10_000 {
        let candidate = dir.join(format!("{stem} ({n}){ext}"));
        if !candidate.exists() {
            return candidate;
        }
    }
    dir.join(format!(
        "{stem} ({}){ext}",
        timestamp::now().unix_timestamp()
    ))
}

fn guess_mime(filename: &str) -> Option<&'static str> {
    let ext = filename.rsplit_once('.')?.1.to_ascii_lowercase();
    Some(match ext.as_str() {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "heic" => "image/heic",
        "svg" => "image/svg+xml",
        "bmp" => "image/bmp",
        "txt" => "text/plain",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        "mp4" => "video/mp4",
        "mp3" => "audio/mpeg",
        _ => return None,
    })
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn presence_text(p: &Presence) -> String {
    match p {
        Presence::Online => "online".to_owned(),
        Presence::LastSeen(at) => format!("last seen {}", timestamp::format(*at)),
        Presence::Hidden => "presence hidden".to_owned(),
    }
}

fn contact_json(c: &Contact) -> Value {
    json!({"id": c.id, "name": c.name, "group": c.group, "note": c.note,
           "presence": c.presence.map(|p| p.to_wire())})
}

fn contact_text(c: &Contact) -> String {
    let mut s = format!("{:<24} {}", c.id, c.name);
    if let Some(g) = &c.group {
        s.push_str(&format!("  [{g}]"));
    }
    if let Some(p) = &c.presence {
        s.push_str(&format!("  ({})", presence_text(p)));
    }
    if let Some(n) = c.note.as_deref().filter(|n| !n.is_empty()) {
        s.push_str(&format!("  “{n}”"));
    }
    s
}

fn update_json(u: &ContactUpdate) -> Value {
    json!({"id": u.id, "name": u.name, "group": u.group, "note": u.note,
           "presence": u.presence.map(|p| p.to_wire()), "deleted": u.deleted})
}

/// One event as a JSON object with a `type` field.
fn event_json(event: &Event) -> Value {
    match event {
        Event::Message(m) => json!({"type": "message", "id": m.id, "from": m.from, "to": m.to,
                                    "at": timestamp::format(m.at), "text": m.text}),
        Event::ReadReceipt(r) => json!({"type": "read", "id": r.id, "by": r.by,
                                        "at": timestamp::format(r.at)}),
        Event::TypingStarted(t) => json!({"type": "typing", "from": t.from, "typing": true}),
        Event::TypingEnded(t) => json!({"type": "typing", "from": t.from, "typing": false}),
        Event::UpdateLastSeen(u) => json!({"type": "last-seen", "id": u.id,
                                           "at": timestamp::format(u.at)}),
        Event::ContactUpdated(c) => json!({"type": "contact-updated",
            "updates": c.updates.iter().map(update_json).collect::<Vec<_>>()}),
        Event::FileOffered(f) => json!({"type": "file-offer", "transfer_id": f.transfer_id,
            "from": f.from, "filename": f.filename, "size": f.size, "sha256": f.sha256,
            "mime": f.mime, "expires": timestamp::format(f.expires)}),
        Event::DownloadGrant(g) => json!({"type": "file-ready", "transfer_id": g.transfer_id,
            "from": g.from, "filename": g.filename, "size": g.size, "url": g.url}),
        Event::UploadGrant(g) => json!({"type": "file-accepted", "transfer_id": g.transfer_id}),
        Event::FileRejected(r) => json!({"type": "file-rejected", "transfer_id": r.transfer_id,
                                         "reason": r.reason.as_str()}),
        Event::MarkReadFailed(f) => json!({"type": "read-failed", "id": f.id,
                                           "reason": f.reason.as_str()}),
        other => json!({"type": "other", "packet": other.to_packet().to_string()}),
    }
}

fn event_text(event: &Event) -> String {
    let time = |at| {
        let s = timestamp::format(at);
        // 2024-01-01T12:34:56.789Z → 2024-01-01 12:34:56
        s.get(..19).map(|s| s.replace('T', " ")).unwrap_or(s)
    };
    match event {
        Event::Message(m) => format!("[{}] {}: {}    (id {})", time(m.at), m.from, m.text, m.id),
        Event::ReadReceipt(r) => format!("[{}] {} read your message {}", time(r.at), r.by, r.id),
        Event::TypingStarted(t) => format!("{} is typing…", t.from),
        Event::PresenceRequest(r) => format!(
            "{} asks to see your presence — `msim privacy approve {}` or `deny`",
            r.from, r.from
        ),
        Event::TypingEnded(t) => format!("{} stopped typing", t.from),
        Event::UpdateLastSeen(u) => format!("{} was last seen {}", u.id, time(u.at)),
        Event::ContactUpdated(c) => c
            .updates
            .iter()
            .map(|u| {
                let mut parts = Vec::new();
                if u.deleted {
                    parts.push("removed from contacts".to_owned());
                }
                if let Some(p) = &u.presence {
                    parts.push(presence_text(p));
                }
                if let Some(n) = &u.name {
                    parts.push(format!("name “{n}”"));
                }
                if let Some(n) = &u.note {
                    parts.push(format!("note “{n}”"));
                }
                if let Some(g) = &u.group {
                    parts.push(format!("group “{g}”"));
                }
                format!("{}: {}", u.id, parts.join(", "))
            })
            .collect::<Vec<_>>()
            .join("\n"),
        Event::FileOffered(f) => format!(
            "{} offers {} ({}) — `msim receive` to accept (transfer {})",
            f.from,
            f.filename,
            human_bytes(f.size),
            f.transfer_id
        ),
        Event::DownloadGrant(g) => format!("{} from {} is ready to download", g.filename, g.from),
        Event::UploadGrant(g) => format!("transfer {} was accepted", g.transfer_id),
        Event::FileRejected(r) => format!("transfer {} rejected: {}", r.transfer_id, r.reason),
        Event::MarkReadFailed(f) => format!("cannot mark {} read: {}", f.id, f.reason),
        other => other.to_packet().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn password_of(input: &str) -> Result<String> {
        read_password_line(&mut std::io::Cursor::new(input.as_bytes()))
    }

    #[test]
    fn password_stdin_takes_the_first_line_without_its_line_ending() {
        assert_eq!(password_of("secret\n").ok().as_deref(), Some("secret"));
        assert_eq!(password_of("secret\r\n").ok().as_deref(), Some("secret"));
        assert_eq!(password_of("secret").ok().as_deref(), Some("secret"));
        assert_eq!(
            password_of("with spaces \nnext line\n").ok().as_deref(),
            Some("with spaces ")
        );
        for empty in ["", "\n", "\r\n"] {
            let error = password_of(empty).expect_err("empty password");
            assert!(error.downcast_ref::<UsageError>().is_some(), "{error:#}");
            assert_eq!(exit_code(&error), 2);
        }
    }

    #[test]
    fn commands_that_read_stdin() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("msim").chain(args.iter().copied()))
                .map(|c| reads_stdin(&c.command))
                .ok()
        };
        assert_eq!(parse(&["send", "bob", "-"]), Some(true));
        assert_eq!(parse(&["send", "bob", "hi"]), Some(false));
        assert_eq!(parse(&["receive"]), Some(true));
        assert_eq!(parse(&["receive", "--accept-all"]), Some(false));
        assert_eq!(parse(&["listen"]), Some(false));
    }

    #[test]
    fn typing_for_is_bounded() {
        let parse =
            |secs: &str| Cli::try_parse_from(["msim", "typing", "bob", "--for", secs]).map(|_| ());
        assert!(parse("20").is_ok());
        assert!(parse("86400").is_ok());
        // Huge values would overflow the deadline (a panic): refused by the parser.
        assert!(parse("86401").is_err());
        assert!(parse("18446744073709551615").is_err());
        assert!(parse("0").is_err());
    }

    #[test]
    fn seen_is_bounded_and_forgets_the_oldest_first() {
        let mut seen = Seen::new(3);
        for k in ["a", "b", "c"] {
            assert!(seen.insert(k.to_owned()));
        }
        assert!(!seen.insert("a".to_owned()));
        assert!(seen.insert("d".to_owned())); // forgets "a"
        assert_eq!(seen.keys.len(), 3);
        assert!(!seen.insert("d".to_owned()));
        assert!(seen.insert("a".to_owned())); // forgets "b"
        assert!(seen.insert("b".to_owned()));
        assert!(seen.keys.len() <= 3 && seen.order.len() <= 3);
    }

    #[test]
    fn connection_losses_are_told_apart_from_other_errors() {
        assert!(is_connection_loss(&ClientError::Closed.into()));
        assert!(is_connection_loss(&ClientError::Timeout.into()));
        assert!(is_connection_loss(
            &anyhow::Error::from(ClientError::Io(std::io::ErrorKind::ConnectionReset.into()))
                .context("while listening")
        ));
        assert!(!is_connection_loss(&ClientError::NotLoggedIn.into()));
        assert!(!is_connection_loss(&UsageError("x".into()).into()));
    }
}
