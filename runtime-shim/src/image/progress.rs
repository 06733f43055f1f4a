//! Per-layer progress bars on stderr (indicatif): reading+verifying while
//! the blob streams through, then building the erofs disk. Hidden when
//! stderr is not a terminal or progress is off.

use super::digest::Digest;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::{IsTerminal, Read};
use std::time::Duration;

pub struct Progress {
    bars: MultiProgress,
}

impl Progress {
    pub fn new(enabled: bool) -> Self {
        let target = if enabled && std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        Self {
            bars: MultiProgress::with_draw_target(target),
        }
    }

    pub fn layer(&self, image: &str, index: usize, count: usize, chain_id: &Digest) -> LayerBar {
        let bar = self.bars.add(ProgressBar::new(0));
        bar.set_style(style(
            "{prefix} {msg:>10} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
        ));
        bar.set_prefix(format!(
            "{image} layer {index}/{count} {}",
            chain_id.short()
        ));
        LayerBar { bar }
    }
}

impl Drop for Progress {
    /// indicatif leaves the cursor at the end of the last bar; the summary
    /// line printed next must start on a line of its own.
    fn drop(&mut self) {
        if !self.bars.is_hidden() {
            eprintln!();
        }
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

pub struct LayerBar {
    bar: ProgressBar,
}

impl LayerBar {
    pub fn reading(&self, blob_bytes: u64) {
        self.bar.set_length(blob_bytes);
        self.bar.set_message("reading");
    }

    pub fn wrap<R: Read>(&self, reader: R) -> impl Read {
        self.bar.wrap_read(reader)
    }

    pub fn entries(&self, entries: u64) {
        if entries & 0xff == 0 {
            self.bar.set_message(format!("{entries} files"));
        }
    }

    pub fn verifying(&self) {
        self.bar.set_message("verifying");
    }

    pub fn building(&self) {
        self.bar
            .set_style(style("{prefix} {msg:>10} {spinner} {elapsed}"));
        self.bar.set_message("building");
        self.bar.enable_steady_tick(Duration::from_millis(120));
    }

    pub fn done(&self, tar_bytes: u64) {
        self.bar.set_style(style("{prefix} {msg}"));
        self.bar
            .finish_with_message(format!("built ({})", indicatif::HumanBytes(tar_bytes)));
    }

    pub fn present(&self) {
        self.bar.set_style(style("{prefix} {msg}"));
        self.bar.finish_with_message("already present");
    }
}
