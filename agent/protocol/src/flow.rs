//! Credit-based flow control for stdio streams.
//!
//! Each (process, stream) has a window owned by its receiver. The sender
//! starts with [`INITIAL_WINDOW`] bytes of credit, never sends more than its
//! credit, and gains credit only from the receiver's Credit frames. The
//! receiver grants credit back only for bytes it has passed on (written to
//! the pipe / the terminal), so a slow consumer makes the sender stop
//! instead of making the receiver buffer without bound: at most one window
//! is ever buffered per stream.

use super::error::ProtocolError;
use super::frame::{Stream, MAX_DATA_CHUNK};
use super::messages::ProcessId;

/// Credit every stream starts with, in both directions, without any frame.
pub const INITIAL_WINDOW: u32 = 256 * 1024;

/// The receiver returns credit once this much was consumed (batched so a
/// byte-at-a-time consumer does not cause a frame per byte).
const GRANT_THRESHOLD: u32 = INITIAL_WINDOW / 4;

/// Sender side: how many more bytes the peer accepts on one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendCredit {
    available: u32,
}

impl Default for SendCredit {
    fn default() -> Self {
        Self::new()
    }
}

impl SendCredit {
    pub fn new() -> Self {
        Self {
            available: INITIAL_WINDOW,
        }
    }

    pub fn available(&self) -> u32 {
        self.available
    }

    /// How many of `wanted` bytes may go into the next Data frame now.
    pub fn allowance(&self, wanted: usize) -> usize {
        wanted.min(self.available as usize).min(MAX_DATA_CHUNK)
    }

    /// Records that `sent` bytes went out. Sending more than the credit is
    /// a bug on our side; it saturates rather than wrapping.
    pub fn consume(&mut self, sent: usize) {
        debug_assert!(sent <= self.available as usize, "sent beyond credit");
        self.available = self
            .available
            .saturating_sub(u32::try_from(sent).unwrap_or(u32::MAX));
    }

    /// Adds credit the peer granted. A peer may never hold out more than
    /// the initial window in total: more is a protocol violation.
    pub fn grant(&mut self, bytes: u32) -> Result<(), ProtocolError> {
        match self.available.checked_add(bytes) {
            Some(total) if total <= INITIAL_WINDOW => {
                self.available = total;
                Ok(())
            }
            _ => Err(ProtocolError::CreditOverflow {
                max: INITIAL_WINDOW,
            }),
        }
    }
}

/// Receiver side: polices the peer's sending and decides when to grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecvWindow {
    /// Bytes the peer may still send.
    remaining: u32,
    /// Bytes consumed but not yet granted back.
    consumed_not_granted: u32,
}

impl Default for RecvWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl RecvWindow {
    pub fn new() -> Self {
        Self {
            remaining: INITIAL_WINDOW,
            consumed_not_granted: 0,
        }
    }

    /// Accounts for a received Data frame; an error if the peer overran
    /// its credit (the receiver should then drop the connection).
    pub fn on_data(
        &mut self,
        process: ProcessId,
        stream: Stream,
        len: usize,
    ) -> Result<(), ProtocolError> {
        match u32::try_from(len) {
            Ok(len) if len <= self.remaining => {
                self.remaining -= len;
                Ok(())
            }
            _ => Err(ProtocolError::CreditExceeded {
                process,
                stream: stream.name(),
                len,
                credit: self.remaining,
            }),
        }
    }

    /// Records that `len` received bytes were passed on; returns the credit
    /// to grant in a Credit frame now, if any.
    pub fn on_consumed(&mut self, len: usize) -> Option<u32> {
        let len = u32::try_from(len).unwrap_or(u32::MAX);
        self.consumed_not_granted = self.consumed_not_granted.saturating_add(len);
        // Never grant more than the window could have delivered.
        let grantable = self
            .consumed_not_granted
            .min(INITIAL_WINDOW - self.remaining);
        if grantable >= GRANT_THRESHOLD || (grantable > 0 && self.remaining == 0) {
            self.consumed_not_granted -= grantable;
            self.remaining += grantable;
            Some(grantable)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sender_never_exceeds_credit_and_resumes_on_grant() {
        let mut credit = SendCredit::new();
        let mut sent = 0usize;
        loop {
            let n = credit.allowance(100_000);
            if n == 0 {
                break;
            }
            assert!(n <= MAX_DATA_CHUNK);
            credit.consume(n);
            sent += n;
        }
        assert_eq!(sent, INITIAL_WINDOW as usize);
        assert_eq!(credit.allowance(1), 0);
        credit.grant(10).unwrap();
        assert_eq!(credit.allowance(100), 10);
    }

    #[test]
    fn granting_beyond_the_window_is_a_violation() {
        let mut credit = SendCredit::new();
        assert!(matches!(
            credit.grant(1),
            Err(ProtocolError::CreditOverflow { .. })
        ));
        credit.consume(100);
        credit.grant(100).unwrap();
        assert!(credit.grant(u32::MAX).is_err());
    }

    #[test]
    fn receiver_rejects_data_beyond_credit() {
        let mut window = RecvWindow::new();
        window
            .on_data(1, Stream::Stdin, INITIAL_WINDOW as usize)
            .unwrap();
        let err = window.on_data(1, Stream::Stdin, 1).unwrap_err();
        assert!(matches!(
            err,
            ProtocolError::CreditExceeded { credit: 0, .. }
        ));
    }

    #[test]
    fn receiver_grants_back_only_what_was_consumed_in_batches() {
        let mut window = RecvWindow::new();
        window.on_data(1, Stream::Stdin, 100_000).unwrap();
        // Small consumption: batched, nothing granted yet.
        assert_eq!(window.on_consumed(10), None);
        // Crossing the threshold grants everything consumed so far.
        assert_eq!(window.on_consumed(70_000), Some(70_010));
        assert_eq!(window.on_consumed(29_990), None);
        // Peer may now send the initial window minus what is unacknowledged.
        window
            .on_data(1, Stream::Stdin, INITIAL_WINDOW as usize - 29_990)
            .unwrap();
        assert!(window.on_data(1, Stream::Stdin, 1).is_err());
    }

    #[test]
    fn sender_and_receiver_agree_without_deadlock() {
        // Simulate a slow consumer: sender and receiver exchange frames
        // until 3 MiB went through; credit must never be exceeded and the
        // receiver's buffer never exceeds one window.
        let mut credit = SendCredit::new();
        let mut window = RecvWindow::new();
        let mut buffered = 0usize;
        let mut delivered = 0usize;
        let total = 3 << 20;
        let mut sent_total = 0usize;
        while delivered < total {
            let n = credit.allowance(total - sent_total);
            if n > 0 {
                credit.consume(n);
                sent_total += n;
                window.on_data(1, Stream::Stdout, n).unwrap();
                buffered += n;
            }
            assert!(buffered <= INITIAL_WINDOW as usize);
            // The consumer drains 1000 bytes per step.
            let drained = buffered.min(1000);
            buffered -= drained;
            delivered += drained;
            if let Some(grant) = window.on_consumed(drained) {
                credit.grant(grant).unwrap();
            }
        }
        assert_eq!(delivered, total);
    }
}
