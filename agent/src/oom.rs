//! OOM kills in the container's cgroup: cgroup v2 counts them in
//! `memory.events` (`oom_kill N`) and signals every change of that file to
//! inotify watchers, so the request loop learns of them without polling.

use std::fs;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

pub struct OomWatch {
    inotify: Inotify,
    events_file: PathBuf,
    /// The count last reported to the host.
    reported: u64,
}

/// The `oom_kill` count of a `memory.events` text (0 when absent).
pub fn oom_kills(events: &str) -> u64 {
    events
        .lines()
        .find_map(|line| line.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

impl OomWatch {
    /// Watches `cgroup/memory.events`; `None` where the memory controller
    /// is off (nothing to report then).
    pub fn new(cgroup: &Path) -> Option<Self> {
        let events_file = cgroup.join("memory.events");
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK).ok()?;
        inotify
            .add_watch(&events_file, AddWatchFlags::IN_MODIFY)
            .ok()?;
        let reported = fs::read_to_string(&events_file)
            .map(|t| oom_kills(&t))
            .unwrap_or(0);
        Some(Self {
            inotify,
            events_file,
            reported,
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.inotify.as_fd()
    }

    /// Drains the inotify events; the new count if it grew since the
    /// last report.
    pub fn check(&mut self) -> Option<u64> {
        while let Ok(events) = self.inotify.read_events() {
            if events.is_empty() {
                break;
            }
        }
        let kills = fs::read_to_string(&self.events_file)
            .map(|t| oom_kills(&t))
            .unwrap_or(self.reported);
        (kills > self.reported).then(|| {
            self.reported = kills;
            kills
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oom_kill_count_is_read_from_memory_events() {
        let text = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(oom_kills(text), 2);
        assert_eq!(oom_kills("low 0\n"), 0);
        assert_eq!(oom_kills("oom_kill x\n"), 0);
    }

    #[test]
    fn a_grown_count_is_reported_once() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("memory.events");
        fs::write(&file, "oom_kill 0\n").unwrap();
        let mut watch = OomWatch::new(dir.path()).unwrap();
        assert_eq!(watch.check(), None);
        fs::write(&file, "oom 1\noom_kill 1\n").unwrap();
        assert_eq!(watch.check(), Some(1));
        assert_eq!(watch.check(), None);
    }
}
