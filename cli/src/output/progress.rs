//! Progress bars for transfers, on stderr when it is a terminal (never with `--json`).

use std::io::IsTerminal;
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressStyle};

/// A bar for `size` bytes labelled `label`, hidden when it would not be seen.
pub fn bar(json: bool, size: u64, label: &str) -> ProgressBar {
    if json || !std::io::stderr().is_terminal() {
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

/// The library's progress callback, moving `bar`.
pub fn callback(bar: &ProgressBar) -> msim::Progress {
    let bar = bar.clone();
    Arc::new(move |done, total| {
        if bar.length() != Some(total) {
            bar.set_length(total);
        }
        bar.set_position(done);
    })
}
