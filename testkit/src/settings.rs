//! Checks of a server binary's configuration against docs/OPERATING.md: the documented
//! options, the binary's `print-config` with a clean environment, config files.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};

/// The long options in the first column of the options table of `## {program}` in
/// docs/OPERATING.md (`operating`), as TOML keys (`config`, naming the file, left out).
pub fn documented_keys(operating: &str, program: &str) -> BTreeSet<String> {
    let section = operating
        .split(&format!("## {program}"))
        .nth(1)
        .and_then(|s| s.split("### Options").nth(1))
        .and_then(|s| s.split("\n### ").next())
        .unwrap_or_else(|| panic!("docs/OPERATING.md has the {program} options table"));
    let mut keys = BTreeSet::new();
    for row in section.lines().filter(|l| l.starts_with("| `--")) {
        let first_cell = row.split('|').nth(1).unwrap_or_default();
        for flag in first_cell.split("`--").skip(1) {
            let name: String = flag
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            keys.insert(name);
        }
    }
    keys.remove("config");
    keys
}

/// Runs `program` with `args` and, of the environment, no variable starting with
/// `env_prefix` (e.g. `MSIM_RELAY_`) but those of `env`.
pub fn run_clean(program: &str, env_prefix: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(program);
    for (name, _) in std::env::vars().filter(|(n, _)| n.starts_with(env_prefix)) {
        cmd.env_remove(name);
    }
    cmd.args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"))
}

/// `program ARGS print-config` as [`run_clean`] runs it: the merged settings it prints.
pub fn print_config(
    program: &str,
    env_prefix: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> toml::Table {
    let mut all = args.to_vec();
    all.push("print-config");
    let out = run_clean(program, env_prefix, &all, env);
    assert!(
        out.status.success(),
        "{program} print-config failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .parse()
        .expect("print-config prints TOML")
}

/// Writes `text` to `dir/name`; its path, as an argument.
pub fn write_config(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config");
    path.to_str().expect("utf-8 path").to_owned()
}
