//! Device worker threads: a thread that owns a device's backend while the
//! device is active, an EventFd to stop it, and a small epoll wrapper that
//! the workers' event loops share.

use std::io;
use std::os::fd::RawFd;
use std::thread::{self, JoinHandle};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// A running worker. `stop` hands the backend state back so that a device
/// reset followed by a new activation reuses the same disk or socket.
pub(crate) struct Worker<S: Send + 'static> {
    stop_evt: EventFd,
    thread: Option<JoinHandle<S>>,
}

impl<S: Send + 'static> Worker<S> {
    /// Spawns `body` on a named thread; it receives the stop EventFd, which
    /// becomes readable when it must return.
    pub(crate) fn spawn<F>(name: String, body: F) -> io::Result<Self>
    where
        F: FnOnce(EventFd) -> S + Send + 'static,
    {
        let stop_evt = EventFd::new(EFD_NONBLOCK)?;
        let thread_stop_evt = stop_evt.try_clone()?;
        let thread = thread::Builder::new().name(name).spawn(move || {
            // A worker serves guest requests: its own, tighter filter.
            if let Err(e) = crate::jail::seccomp::apply(crate::jail::seccomp::ThreadKind::Worker) {
                eprintln!("husk-vmm: {e}");
                // SAFETY: ending the process; a device without its filter
                // must not run.
                unsafe { libc::_exit(1) };
            }
            body(thread_stop_evt)
        })?;
        Ok(Self {
            stop_evt,
            thread: Some(thread),
        })
    }

    /// Asks the worker to stop and waits for it. `None` if it panicked.
    pub(crate) fn stop(mut self) -> Option<S> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> Option<S> {
        let thread = self.thread.take()?;
        if let Err(e) = self.stop_evt.write(1) {
            tracing::error!("cannot signal a device worker to stop: {e}");
        }
        match thread.join() {
            Ok(state) => Some(state),
            Err(_) => {
                tracing::error!("a device worker thread panicked");
                None
            }
        }
    }
}

/// Debug builds only: starts a worker (through the real worker start, so
/// with the worker filter) that makes a syscall no filter allows,
/// socket(2), for the test that proves a violation kills with SIGSYS.
#[cfg(debug_assertions)]
pub fn seccomp_violation_self_test() -> io::Result<()> {
    let worker = Worker::spawn("violator".into(), |_stop| {
        // SAFETY: a plain syscall; the filter stops it before it runs.
        unsafe { libc::syscall(libc::SYS_socket, libc::AF_UNIX, libc::SOCK_STREAM, 0) };
    })?;
    // The process ends with the violation: never join.
    std::mem::forget(worker);
    Ok(())
}

impl<S: Send + 'static> Drop for Worker<S> {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// Level-triggered epoll over the worker's file descriptors, each tagged
/// with a caller-chosen token.
pub(crate) struct EventLoop {
    epoll: Epoll,
}

impl EventLoop {
    pub(crate) fn new() -> io::Result<Self> {
        Ok(Self {
            epoll: Epoll::new()?,
        })
    }

    pub(crate) fn add(&self, fd: RawFd, token: u64, events: EventSet) -> io::Result<()> {
        self.epoll
            .ctl(ControlOperation::Add, fd, EpollEvent::new(events, token))
    }

    pub(crate) fn modify(&self, fd: RawFd, token: u64, events: EventSet) -> io::Result<()> {
        self.epoll
            .ctl(ControlOperation::Modify, fd, EpollEvent::new(events, token))
    }

    pub(crate) fn delete(&self, fd: RawFd) -> io::Result<()> {
        self.epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default())
    }

    /// Waits for events without a timeout; EINTR is retried.
    pub(crate) fn wait(&self, events: &mut [EpollEvent]) -> io::Result<usize> {
        self.wait_timeout(events, -1)
    }

    /// Waits up to `timeout_ms` (-1: forever, 0: just poll); EINTR is retried.
    pub(crate) fn wait_timeout(
        &self,
        events: &mut [EpollEvent],
        timeout_ms: i32,
    ) -> io::Result<usize> {
        loop {
            match self.epoll.wait(timeout_ms, events) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }
}

/// Empties a notification EventFd. Nothing pending is not an error.
pub(crate) fn drain_eventfd(evt: &EventFd) -> io::Result<()> {
    match evt.read() {
        Err(e) if e.kind() != io::ErrorKind::WouldBlock => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn worker_returns_its_state_when_stopped() {
        let worker = Worker::spawn("test-worker".into(), |stop: EventFd| {
            let event_loop = EventLoop::new().unwrap();
            event_loop.add(stop.as_raw_fd(), 7, EventSet::IN).unwrap();
            let mut events = [EpollEvent::default(); 4];
            let n = event_loop.wait(&mut events).unwrap();
            assert_eq!(n, 1);
            events[0].data()
        })
        .unwrap();
        assert_eq!(worker.stop(), Some(7));
    }
}
