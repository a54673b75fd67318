//! The command line: every argument and subcommand with its help text (clap). Nothing here
//! is read by the commands directly: [`crate::settings`] turns it into the settled
//! configuration, and each command gets its own arguments.

use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

/// Where the server is when nothing says otherwise.
pub const DEFAULT_SERVER: &str = "127.0.0.1:3214";

const EXIT_CODES: &str = "\
Exit codes:
    0  success
    1  error (connection, I/O, protocol, relay)
    2  usage error (bad arguments, missing credentials)
    3  authentication failed (wrong login or password, throttled)
    4  refused or rejected (unknown recipient, contact/profile refused,
       registration refused, file rejected by the recipient or the server)
  130  interrupted by Ctrl-C (listen, receive and typing --for stop cleanly
       with 0 instead; send-file waiting for the answer exits with 1)";

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
`ca_file = \"...\"` in the config file).

--json prints one JSON object per line on stdout (notices and progress go to
stderr); its fields are a stable interface, listed in the README (fields are
only ever added). A failure prints {\"error\",\"kind\",\"exit\"}.";

/// mSIM command-line client: messages, contacts and files through a relay.
#[derive(Debug, Parser)]
#[command(name = "msim", version, args_override_self = true, after_help = format!("{EXAMPLES}\n\n{EXIT_CODES}"))]
pub struct Cli {
    /// Server address: HOST:PORT (plain TCP) or tls://HOST:PORT (TLS, certificate verified
    /// for HOST) [default: 127.0.0.1:3214]
    #[arg(
        long,
        short = 's',
        global = true,
        env = "MSIM_SERVER",
        value_name = "ADDR"
    )]
    pub server: Option<String>,
    /// Login (bare or login@domain)
    #[arg(long, short = 'l', global = true, env = "MSIM_LOGIN")]
    pub login: Option<String>,
    /// Password (other local users can see it in the process list: prefer
    /// --password-stdin or the prompt)
    #[arg(
        long,
        short = 'p',
        global = true,
        env = "MSIM_PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<String>,
    /// Read the password from the first line of standard input
    #[arg(long, global = true)]
    pub password_stdin: bool,
    /// Config file [default: ~/.config/msim/config.toml, if it exists]
    #[arg(
        long,
        short = 'c',
        global = true,
        env = "MSIM_CONFIG",
        value_name = "FILE"
    )]
    pub config: Option<PathBuf>,
    /// Extra trusted CA certificate(s), PEM, for tls:// servers and https:// relays (e.g. a
    /// private CA or a self-signed server certificate); the bundled public roots are always
    /// trusted too
    #[arg(long, global = true, env = "MSIM_CA_FILE", value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Machine-readable output: one JSON object per line on stdout (stable fields, see the
    /// README)
    #[arg(long, global = true)]
    pub json: bool,
    /// Seconds to wait for each server answer
    #[arg(long, global = true, default_value_t = 30, value_name = "SECS")]
    pub timeout: u64,
    #[command(subcommand)]
    pub command: Command,
    /// Whether `password` came from `--password` (not from the environment).
    #[arg(skip)]
    pub password_from_flag: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
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

Files of 8 MiB or more are hashed while they are uploaded (one read of the file) and the \
SHA-256 is declared to the recipient afterwards; smaller ones, and files for users of other \
servers, are hashed before the offer. If the relay stored something other than what was sent, \
the transfer is cancelled and send-file fails.

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
(\"cat (1).jpg\"). While it downloads a file is msim-transfer-<transfer id>.part there, named \
by its transfer (an interrupted download of the same transfer resumes it; another transfer of \
the same file name never does). The SHA-256 is verified against the sender's: announced with \
the offer, or declared by the sender right after its upload (files of 8 MiB or more); a file \
whose sender declared none within 10 s, or an offer from another server without one, is kept \
and reported as NOT verified (the relay's own hash only catches damage).

Up to 4 files download at once, at most 2 from one sender (further accepted offers wait their \
turn). While offers wait, a download that moved less than 64 KiB in the last 30 s is paused \
(its .part kept) and queued behind them; it goes on from where it stopped at its next turn, so \
senders that drip their uploads cannot hold the slots. Free slots go in turns: one to the \
first file in the queue (so a paused file gets its turn however many new senders offer after \
it), the next to a sender with nothing downloading or paused (so a new sender's file starts \
soon however many paused files wait). A file whose bytes are all in no longer takes a slot \
while it waits for the sender's hash. A file paused 16 times is given up for this run (each \
turn costs one of the transfer's downloads on the relay, 64 at most): it gets a \"Failed:\" \
line, its .part stays, and the next receive resumes it. A transfer that fails \
(a hash mismatch, a cancelled or expired transfer, no progress for 180 s) gets its own \
\"Failed:\" line (event \"failed\" with --json) and receive goes on; with --count, receive \
exits 1 at the end if any failed. A transfer accepted by an earlier run that did not finish is \
resumed when receive logs in again (the server sends its download grant again).

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
pub struct SaveArgs {
    /// Save server, login and password to the config file (mode 0600)
    #[arg(long)]
    pub save: bool,
}

#[derive(Debug, Subcommand)]
pub enum ContactsCommand {
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
pub enum PrivacyCommand {
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

#[derive(Debug, Subcommand)]
pub enum ProfileCommand {
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

/// The parsed command line (clap exits on `--help`, `--version` and usage errors).
pub fn parse() -> Cli {
    let matches = Cli::command().get_matches();
    let mut cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // `--password-stdin` overrides MSIM_PASSWORD and the config file, but not `--password`.
    cli.password_from_flag = matches.value_source("password") == Some(ValueSource::CommandLine);
    cli
}

impl Command {
    /// Whether the command itself reads standard input (so the password cannot come from
    /// there).
    pub fn reads_stdin(&self) -> bool {
        match self {
            Command::Send { text, .. } => text == "-",
            Command::Receive {
                accept_all,
                reject_all,
                ..
            } => !accept_all && !reject_all,
            _ => false,
        }
    }

    /// `register --save` or `login --save`.
    pub fn saves_config(&self) -> bool {
        matches!(
            self,
            Command::Register(SaveArgs { save: true }) | Command::Login(SaveArgs { save: true })
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_that_read_stdin() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("msim").chain(args.iter().copied()))
                .map(|c| c.command.reads_stdin())
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
}
