//! msim-relay's configuration, through the real binary: every key documented in
//! docs/OPERATING.md is accepted from the TOML file (sizes also with units) and comes back
//! from `print-config`, and a flag beats the environment, which beats the file.

use msim_testkit::settings::{self, write_config as write};
use std::collections::BTreeSet;
use std::process::Output;

const EVERY_KEY: &str = include_str!("../data/every-key.toml");
const OPERATING: &str = include_str!("../../../docs/OPERATING.md");

const RELAY: &str = env!("CARGO_BIN_EXE_msim-relay");

fn documented_keys() -> BTreeSet<String> {
    settings::documented_keys(OPERATING, "msim-relay")
}

fn relay(args: &[&str], env: &[(&str, &str)]) -> Output {
    settings::run_clean(RELAY, "MSIM_RELAY_", args, env)
}

/// `msim-relay print-config` with a clean MSIM_RELAY_* environment plus `env`.
fn print_config(args: &[&str], env: &[(&str, &str)]) -> toml::Table {
    settings::print_config(RELAY, "MSIM_RELAY_", args, env)
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
