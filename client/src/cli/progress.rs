//! The progress bar of the long commands (export, verify): drawn on stderr
//! only when it is a terminal, so scripts and pipes see none.

use std::io::{self, IsTerminal};

use indicatif::{ProgressBar, ProgressStyle};

/// A bar counting records, or a hidden one when stderr is not a terminal.
pub fn progress_bar(what: &str) -> ProgressBar {
    if !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0);
    let template = format!("{what} {{bar:40}} {{pos}}/{{len}} records ({{per_sec}}, eta {{eta}})");
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style);
    }
    bar
}
