//! What a pull shows while it downloads: a bar per blob on a terminal,
//! otherwise one plain line per event (for logs and CI), or nothing.

use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal as _;

#[derive(Clone)]
pub struct PullProgress {
    mode: Mode,
}

#[derive(Clone)]
enum Mode {
    Quiet,
    Lines,
    Bars(MultiProgress),
}

impl PullProgress {
    pub fn new(enabled: bool) -> Self {
        let mode = match enabled {
            false => Mode::Quiet,
            true if std::io::stderr().is_terminal() => {
                Mode::Bars(MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
            }
            true => Mode::Lines,
        };
        Self { mode }
    }

    /// A message of the pull as a whole (resolved digests and the like).
    pub fn note(&self, text: &str) {
        match &self.mode {
            Mode::Quiet => {}
            Mode::Lines => eprintln!("{text}"),
            Mode::Bars(bars) => {
                let _ = bars.println(text);
            }
        }
    }

    pub fn blob(&self, label: String, size: u64) -> BlobProgress {
        let bar = match &self.mode {
            Mode::Bars(bars) => {
                let bar = bars.add(ProgressBar::new(size));
                bar.set_style(
                    ProgressStyle::with_template(
                        "{prefix} {msg:>11} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                bar.set_prefix(label.clone());
                Some(bar)
            }
            _ => None,
        };
        BlobProgress {
            lines: matches!(self.mode, Mode::Lines),
            bar,
            label,
            size,
        }
    }
}

pub struct BlobProgress {
    lines: bool,
    bar: Option<ProgressBar>,
    label: String,
    size: u64,
}

impl BlobProgress {
    fn line(&self, text: std::fmt::Arguments) {
        if self.lines {
            eprintln!("{}: {text}", self.label);
        }
    }

    fn finish(&self, message: &'static str) {
        if let Some(bar) = &self.bar {
            bar.set_style(
                ProgressStyle::with_template("{prefix} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.finish_with_message(message);
        }
    }

    pub fn present(&self) {
        self.line(format_args!("already present"));
        self.finish("already present");
    }

    pub fn start(&self, offset: u64) {
        if offset > 0 {
            self.line(format_args!(
                "resuming at {} of {}",
                HumanBytes(offset),
                HumanBytes(self.size)
            ));
        } else {
            self.line(format_args!("downloading {}", HumanBytes(self.size)));
        }
        if let Some(bar) = &self.bar {
            bar.set_position(offset);
            bar.set_message(if offset > 0 {
                "resuming"
            } else {
                "downloading"
            });
        }
    }

    /// The registry ignored the range request: starting over.
    pub fn restart(&self) {
        self.line(format_args!(
            "the registry cannot resume: downloading again"
        ));
        if let Some(bar) = &self.bar {
            bar.set_position(0);
        }
    }

    pub fn advance(&self, bytes: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(bytes);
        }
    }

    pub fn done(&self) {
        self.line(format_args!("downloaded and verified"));
        self.finish("downloaded");
    }

    pub fn failed(&self) {
        self.finish("failed");
    }
}
