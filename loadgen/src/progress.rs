//! Progress while a phase runs: an indicatif bar on a terminal, and a plain
//! line every couple of seconds on stderr otherwise (CI logs, pipes), so a
//! long run is never silent.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

const PLAIN_EVERY: Duration = Duration::from_secs(2);

pub struct Progress {
    bar: ProgressBar,
    label: &'static str,
    /// When the last plain line was printed; `None` when drawing a bar.
    last_plain: Option<Mutex<Instant>>,
}

impl Progress {
    pub fn new(label: &'static str, len: u64) -> Progress {
        let style = ProgressStyle::with_template(
            "{prefix:>10} [{elapsed_precise}] {bar:30.cyan/blue} {pos:>7}/{len:7} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        let bar = ProgressBar::new(len).with_style(style).with_prefix(label);
        let last_plain = bar.is_hidden().then(|| Mutex::new(Instant::now() - PLAIN_EVERY));
        Progress {
            bar,
            label,
            last_plain,
        }
    }

    pub fn update(&self, pos: u64, msg: String) {
        self.bar.set_position(pos);
        if let Some(last) = &self.last_plain {
            let mut last = last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if last.elapsed() >= PLAIN_EVERY {
                *last = Instant::now();
                let len = self.bar.length().unwrap_or(0);
                eprintln!("{}: {pos}/{len} {msg}", self.label);
            }
        }
        self.bar.set_message(msg);
    }

    pub fn len(&self) -> u64 {
        self.bar.length().unwrap_or(0)
    }

    /// Prints a line above the bar (or plainly).
    pub fn println(&self, line: impl AsRef<str>) {
        if self.bar.is_hidden() {
            eprintln!("{}", line.as_ref());
        } else {
            self.bar.println(line);
        }
    }

    pub fn finish(&self) {
        if self.last_plain.is_some() {
            let len = self.bar.length().unwrap_or(0);
            eprintln!(
                "{}: {}/{len} {}",
                self.label,
                self.bar.position(),
                self.bar.message()
            );
        }
        self.bar.finish();
    }
}
