//! msim-chat's configuration, through the real binary: every key documented in
//! docs/OPERATING.md is accepted from the TOML file and comes back from `print-config`, and
//! a flag beats the environment, which beats the file.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};

const EVERY_KEY: &str = include_str!("../data/every-key.toml");
const OPERATING: &str = include_str!("../../../docs/OPERATING.md");

/// The long flags in the first column of the msim-chat options table, as TOML keys.
fn documented_keys() -> BTreeSet<String> {
    let section = OPERATING
        .split("## msim-chat")
        .nth(1)
        .and_then(|s| s.split("### Options").nth(1))
        .and_then(|s| s.split("\n### ").next())
        .expect("docs/OPERATING.md has the msim-chat options table");
    let mut keys = BTreeSet::new();
    for row in section.lines().filter(|l| l.starts_with("| `--")) {
        let first_cell = row.split('|').nth(1).expect("a table row");
        for flag in first_cell.split("`--").skip(1) {
            let name: String = flag
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            keys.insert(name);
        }
    }
    keys.remove("config"); // names the file itself
    keys
}

/// `msim-chat print-config` with a clean MSIM_CHAT_* environment plus `env`.
fn print_config(args: &[&str], env: &[(&str, &str)]) -> toml::Table {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_msim-chat"));
    for (name, _) in std::env::vars().filter(|(n, _)| n.starts_with("MSIM_CHAT_")) {
        cmd.env_remove(name);
    }
    let out: Output = cmd
        .args(args)
        .arg("print-config")
        .envs(env.iter().copied())
        .output()
        .expect("run msim-chat");
    assert!(
        out.status.success(),
        "msim-chat print-config failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .parse()
        .expect("print-config prints TOML")
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config");
    path.to_str().expect("utf-8 path").to_owned()
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
