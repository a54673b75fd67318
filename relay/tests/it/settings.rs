//! msim-relay's configuration, through the real binary: every key documented in
//! docs/OPERATING.md is accepted from the TOML file (sizes also with units) and comes back
//! from `print-config`, and a flag beats the environment, which beats the file.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};

const EVERY_KEY: &str = include_str!("../data/every-key.toml");
const OPERATING: &str = include_str!("../../../docs/OPERATING.md");

/// The long options in the first column of the msim-relay options table, as TOML keys.
fn documented_keys() -> BTreeSet<String> {
    let section = OPERATING
        .split("## msim-relay")
        .nth(1)
        .and_then(|s| s.split("### Options").nth(1))
        .and_then(|s| s.split("\n### ").next())
        .expect("docs/OPERATING.md has the msim-relay options table");
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

fn relay(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_msim-relay"));
    for (name, _) in std::env::vars().filter(|(n, _)| n.starts_with("MSIM_RELAY_")) {
        cmd.env_remove(name);
    }
    cmd.args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run msim-relay")
}

/// `msim-relay print-config` with a clean MSIM_RELAY_* environment plus `env`.
fn print_config(args: &[&str], env: &[(&str, &str)]) -> toml::Table {
    let mut all = args.to_vec();
    all.push("print-config");
    let out = relay(&all, env);
    assert!(
        out.status.success(),
        "msim-relay print-config failed: {}",
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
    let path = write(dir.path(), "relay.toml", EVERY_KEY);
    assert_eq!(print_config(&["--config", &path], &[]), file);
}

#[test]
fn sizes_take_units_in_the_file_and_bad_values_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(
        dir.path(),
        "relay.toml",
        "max-file-size = \"100MiB\"\nquota = \"1.5GB\"\n",
    );
    let merged = print_config(&["--config", &path], &[]);
    assert_eq!(merged["max-file-size"].as_integer(), Some(100 << 20));
    assert_eq!(merged["quota"].as_integer(), Some(1_500_000_000));
    for bad in [
        "quota = \"12 parsecs\"\n",
        "ttl = \"soon\"\n",
        "max-txt = 1\n",
    ] {
        let path = write(dir.path(), "bad.toml", bad);
        let out = relay(&["--config", &path, "print-config"], &[]);
        assert!(!out.status.success(), "{bad} was accepted");
    }
}

#[test]
fn flag_beats_environment_beats_file_beats_default() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(
        dir.path(),
        "relay.toml",
        "quota = 100\nttl = \"1h\"\ncapacity = 5000\n",
    );
    let env = [
        ("MSIM_RELAY_CONFIG", path.as_str()),
        ("MSIM_RELAY_QUOTA", "200"),
        ("MSIM_RELAY_TTL", "2h"),
        ("MSIM_RELAY_METRICS_ON_MAIN_PORT", "true"),
    ];
    let merged = print_config(&["--quota", "300"], &env);
    let expected: toml::Table =
        "quota = 300\nttl = \"2h\"\ncapacity = 5000\nmetrics-on-main-port = true\n"
            .parse()
            .expect("toml");
    assert_eq!(merged, expected);
}
