//! Live progress on a terminal: one line per running copy or block job,
//! several at once, drawn by indicatif below the log. Log lines are printed
//! above the bars (the logger goes through `suspend`), so neither garbles
//! the other. When stderr is not a terminal (cron, a pipe, a file), or
//! before `enable`, no bar exists and nothing at all is drawn.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::sync::OnceLock;
use std::time::Duration;

static BARS: OnceLock<MultiProgress> = OnceLock::new();

/// Turns progress on for this process when `on` and stderr is a terminal.
/// Returns whether it is on.
pub fn enable(on: bool) -> bool {
    use std::io::IsTerminal;
    if on && std::io::stderr().is_terminal() {
        BARS.get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(4)));
        true
    } else {
        false
    }
}

/// Runs `f` (which writes a log line) with the bars taken off the screen
/// and drawn again after it.
pub fn suspend<R>(f: impl FnOnce() -> R) -> R {
    match BARS.get() {
        Some(m) => m.suspend(f),
        None => f(),
    }
}

/// One line of progress; a no-op when progress is off. It goes away when
/// dropped.
pub struct Bar(Option<ProgressBar>);

impl Bar {
    /// A bar that never draws.
    pub fn hidden() -> Bar {
        Bar(None)
    }

    /// A byte counter: "label [=====>   ] 1.2 GiB/4.0 GiB 180 MiB/s".
    pub fn bytes(label: impl Into<String>, total: u64) -> Bar {
        Bar::new(
            label.into(),
            total,
            "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} {eta}",
        )
    }

    /// A block job: QEMU's progress units mean nothing to people, so only
    /// the percentage shows.
    pub fn percent(label: impl Into<String>) -> Bar {
        Bar::new(label.into(), 100, "{msg} [{bar:30}] {percent}% {elapsed}")
    }

    fn new(label: String, total: u64, template: &str) -> Bar {
        let Some(m) = BARS.get() else {
            return Bar(None);
        };
        let style = ProgressStyle::with_template(template)
            .expect("the templates are valid")
            .progress_chars("=> ");
        let bar = m.add(
            ProgressBar::new(total)
                .with_style(style)
                .with_message(label),
        );
        bar.enable_steady_tick(Duration::from_millis(500));
        Bar(Some(bar))
    }

    /// Sets the position (bytes, or for a percent bar `cur` of `end`).
    pub fn set(&self, pos: u64) {
        if let Some(b) = &self.0 {
            b.set_position(pos);
        }
    }

    /// A block job's `cur` of `end`.
    pub fn fraction(&self, cur: u64, end: u64) {
        self.set(cur.saturating_mul(100).checked_div(end).unwrap_or(0));
    }

    /// True when it draws (a terminal, progress on).
    pub fn is_shown(&self) -> bool {
        self.0.is_some()
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        if let Some(b) = self.0.take() {
            b.finish_and_clear();
            if let Some(m) = BARS.get() {
                m.remove(&b);
            }
        }
    }
}
