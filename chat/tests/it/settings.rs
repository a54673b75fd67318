//! msim-chat's configuration, through the real binary: every key documented in
//! docs/OPERATING.md is accepted from the TOML file and comes back from `print-config`, and
//! a flag beats the environment, which beats the file.

use msim_testkit::settings::{self, write_config as write};
use std::collections::BTreeSet;
use std::process::Command;

const EVERY_KEY: &str = include_str!("../data/every-key.toml");
const OPERATING: &str = include_str!("../../../docs/OPERATING.md");

fn documented_keys() -> BTreeSet<String> {
    settings::documented_keys(OPERATING, "msim-chat")
}

/// `msim-chat print-config` with a clean MSIM_CHAT_* environment plus `env`.
fn print_config(args: &[&str], env: &[(&str, &str)]) -> toml::Table {
    settings::print_config(env!("CARGO_BIN_EXE_msim-chat"), "MSIM_CHAT_", args, env)
}

#[test]
fn every_documented_key_is_accepted_from_the_file_and_printed_back() {
    let file: toml::Table = EVERY_KEY.parse().expect("every-key.toml");
    let in_file: BTreeSet<String> = file.keys().cloned().collect();
    assert_eq!(
        in_file,
        documented_keys(),
        "every-key.toml and the docs/OPERATING.md table must list the same keys"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(dir.path(), "chat.toml", EVERY_KEY);
    assert_eq!(print_config(&["--config", &path], &[]), file);
}

#[test]
fn print_config_never_shows_the_database_password() {
    let t = print_config(
        &["--database", "postgres://msim:hunter2@db.example:5432/msim"],
        &[],
    );
    assert_eq!(
        t.get("database").and_then(|v| v.as_str()),
        Some("postgres://msim:***@db.example:5432/msim")
    );
}

#[test]
fn unknown_keys_in_the_file_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(dir.path(), "chat.toml", "max-txt = 100\n");
    let out = Command::new(env!("CARGO_BIN_EXE_msim-chat"))
        .args(["--config", &path, "print-config"])
        .env_remove("MSIM_CHAT_CONFIG")
        .output()
        .expect("run msim-chat");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("max-txt"));
}

#[test]
fn flag_beats_environment_beats_file_beats_default() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(
        dir.path(),
        "chat.toml",
        "max-text = 100\nlogin-timeout = \"10s\"\ndomain = \"file.example\"\n\
         relay = [\"http://file:1\"]\n",
    );
    let env = [
        ("MSIM_CHAT_CONFIG", path.as_str()),
        ("MSIM_CHAT_MAX_TEXT", "200"),
        ("MSIM_CHAT_LOGIN_TIMEOUT", "20s"),
        ("MSIM_CHAT_RELAYS", "http://env:1,http://env:2"),
    ];
    let merged = print_config(&["--max-text", "300"], &env);
    let expected: toml::Table = "max-text = 300\nlogin-timeout = \"20s\"\n\
         domain = \"file.example\"\nrelay = [\"http://env:1\", \"http://env:2\"]\n"
        .parse()
        .expect("toml");
    assert_eq!(merged, expected);
    // Repeated --relay flags replace the environment's list; unset keys stay unset.
    let merged = print_config(
        &["--relay", "http://flag:1", "--relay", "http://flag:2"],
        &env,
    );
    assert_eq!(
        merged["relay"],
        toml::Value::from(vec!["http://flag:1", "http://flag:2"])
    );
    assert!(!merged.contains_key("max-line"));
}
