//! What `msim` prints: human-readable lines, or with `--json` one JSON object per line
//! ([`json`]). Results go to stdout; notices, prompts and progress bars to stderr.

pub mod human;
pub mod json;
pub mod progress;

use serde::Serialize;

use crate::error::Exit;

/// Prints results in the chosen format.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    /// `--json`.
    pub json: bool,
}

impl Output {
    /// Prints `value` as a JSON line, or the text `human` makes.
    pub fn print(&self, value: &impl Serialize, human: impl FnOnce() -> String) {
        if self.json {
            self.json_line(value);
        } else {
            println!("{}", human());
        }
    }

    /// Prints `value` as a JSON line (only with `--json`).
    pub fn json_line(&self, value: &impl Serialize) {
        if self.json {
            match serde_json::to_string(value) {
                Ok(line) => println!("{line}"),
                // Only a map with non-string keys can fail; none of the output types has one.
                Err(e) => eprintln!("msim: cannot write JSON output: {e}"),
            }
        }
    }

    /// Prints a notice on stderr, only without `--json`.
    pub fn notice(&self, text: impl FnOnce() -> String) {
        if !self.json {
            eprintln!("{}", text());
        }
    }

    /// Reports a failure: the JSON line on stdout (with `--json`), the message on stderr.
    pub fn failure(&self, error: &anyhow::Error) -> Exit {
        let exit = Exit::of(error);
        self.json_line(&json::Failure {
            error: format!("{error:#}"),
            kind: exit.kind(),
            exit: exit.code(),
        });
        eprintln!("msim: {error:#}");
        exit
    }
}
