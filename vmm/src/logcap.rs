//! Logs the guest can fill, kept bounded.
//!
//! The guest controls how much goes to its serial console and, through
//! misbehaving drivers, how many warnings the VMM logs. Both would grow a
//! host file without limit: [`CappedWriter`] stops a log at a size (with
//! one note saying so) and [`RateLimit`] keeps repeated warnings from one
//! place in the code to a trickle. husk uses the same writer for the logs
//! of QEMU, which it reads through a pipe.

use std::collections::HashMap;
use std::io::{self, Write};
use std::sync::Mutex;
use std::time::Instant;

use tracing::Metadata;

/// The default size a VM's serial log and VMM log may reach.
pub const DEFAULT_LOG_CAP: u64 = 1 << 20;

/// Writes at most `cap` bytes to `inner`, then one note, then nothing:
/// later writes succeed without writing, so the producer (the guest's
/// UART, a log copier) never stalls or fails on a full log.
pub struct CappedWriter<W: Write> {
    inner: W,
    written: u64,
    cap: u64,
    /// What the note names (e.g. "serial log").
    what: &'static str,
    noted: bool,
}

impl<W: Write> CappedWriter<W> {
    pub fn new(inner: W, cap: u64, what: &'static str) -> Self {
        CappedWriter {
            inner,
            written: 0,
            cap,
            what,
            noted: false,
        }
    }

    /// Bytes written to the inner writer (the note excluded).
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Whether output was dropped.
    pub fn capped(&self) -> bool {
        self.noted
    }
}

impl<W: Write> Write for CappedWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = self.cap.saturating_sub(self.written);
        if room > 0 {
            let take = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
            let n = self.inner.write(&buf[..take])?;
            self.written += n as u64;
            return Ok(n);
        }
        if !self.noted && !buf.is_empty() {
            self.noted = true;
            let note = format!(
                "\n[husk: {} reached its cap of {} bytes; further output is dropped]\n",
                self.what, self.cap
            );
            self.inner.write_all(note.as_bytes())?;
            self.inner.flush()?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Per call site: at most `burst` events at once, refilled at `per_second`;
/// what is dropped is counted and reported with the next event let through.
pub struct RateLimit {
    burst: u32,
    per_second: u32,
    /// Per call site, keyed by the address of its static metadata.
    sites: Mutex<Option<HashMap<usize, Bucket>>>,
}

struct Bucket {
    tokens: f64,
    last: Instant,
    dropped: u64,
}

/// The decision for one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Log it; `dropped` events from this site were suppressed before it.
    Pass {
        dropped: u64,
    },
    Drop,
}

impl RateLimit {
    pub const fn new_default() -> Self {
        // Defaults: enough to see what happens, too few to fill a log.
        RateLimit::new(10, 1)
    }

    pub const fn new(burst: u32, per_second: u32) -> Self {
        RateLimit {
            burst,
            per_second,
            sites: Mutex::new(None),
        }
    }

    /// Whether an event of the call site `site` at `now` is logged.
    pub fn check(&self, site: usize, now: Instant) -> Verdict {
        let Ok(mut sites) = self.sites.lock() else {
            return Verdict::Pass { dropped: 0 };
        };
        let bucket = sites
            .get_or_insert_with(HashMap::new)
            .entry(site)
            .or_insert(Bucket {
                tokens: f64::from(self.burst),
                last: now,
                dropped: 0,
            });
        let elapsed = now.saturating_duration_since(bucket.last);
        bucket.last = now;
        bucket.tokens = (bucket.tokens + elapsed.as_secs_f64() * f64::from(self.per_second))
            .min(f64::from(self.burst));
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            let dropped = std::mem::take(&mut bucket.dropped);
            Verdict::Pass { dropped }
        } else {
            bucket.dropped += 1;
            Verdict::Drop
        }
    }
}

/// The process-wide limiter for warnings and errors.
static LIMIT: RateLimit = RateLimit::new_default();

/// A tracing filter that rate-limits WARN and ERROR events per call site
/// (INFO and below are not guest-driven); when a site resumes after
/// drops, a warning says how many were suppressed.
pub fn rate_limit_filter() -> tracing_subscriber::filter::FilterFn {
    tracing_subscriber::filter::filter_fn(|meta| {
        if !meta.is_event() || *meta.level() > tracing::Level::WARN {
            return true;
        }
        let site = meta as *const Metadata<'_> as usize;
        match LIMIT.check(site, Instant::now()) {
            Verdict::Pass { dropped: 0 } => true,
            Verdict::Pass { dropped } => {
                // Written straight to stderr: an event from inside a filter
                // would re-enter the subscriber.
                eprintln!(
                    "husk-vmm: {dropped} more like the next warning ({}:{}) were suppressed",
                    meta.file().unwrap_or("?"),
                    meta.line().unwrap_or(0)
                );
                true
            }
            Verdict::Drop => false,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// How long the bucket of the test takes to refill one token.
    const REFILL: Duration = Duration::from_secs(1);

    #[test]
    fn a_capped_writer_stops_at_the_cap_with_one_note() {
        let mut out = CappedWriter::new(Vec::new(), 1000, "serial log");
        let chunk = [b'x'; 300];
        // 1 GiB from the guest, in chunks: all accepted, 1000 bytes kept.
        let mut total = 0u64;
        while total < 1 << 30 {
            let n = out.write(&chunk).unwrap();
            assert!(n > 0);
            total += n as u64;
        }
        assert!(out.capped());
        assert_eq!(out.written(), 1000);
        let text = String::from_utf8(out.inner).unwrap();
        assert!(text.starts_with(&"x".repeat(1000)));
        let note = &text[1000..];
        assert!(
            note.contains("serial log reached its cap of 1000 bytes"),
            "{note}"
        );
        assert_eq!(note.matches("cap").count(), 1);
    }

    #[test]
    fn under_the_cap_nothing_is_added() {
        let mut out = CappedWriter::new(Vec::new(), 10, "log");
        out.write_all(b"0123456789").unwrap();
        assert!(!out.capped());
        assert_eq!(out.inner, b"0123456789");
    }

    #[test]
    fn repeated_warnings_are_limited_and_the_drops_reported() {
        let limit = RateLimit::new(3, 1);
        let (site, other) = (1, 2);
        let start = Instant::now();
        let verdicts: Vec<_> = (0..1000).map(|_| limit.check(site, start)).collect();
        let passed = verdicts.iter().filter(|v| **v != Verdict::Drop).count();
        assert_eq!(passed, 3, "a burst of 3, then nothing at the same instant");
        // A second later one more passes and says how many were dropped.
        assert_eq!(
            limit.check(site, start + REFILL),
            Verdict::Pass { dropped: 997 }
        );
        assert_eq!(limit.check(site, start + REFILL), Verdict::Drop);
        // Another call site has its own budget.
        assert_eq!(limit.check(other, start), Verdict::Pass { dropped: 0 });
    }
}
