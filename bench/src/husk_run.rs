//! Helpers of the backend benchmark (benches/run_backends.rs), which drives
//! the `husk` binary: reading its log lines and finding the VMM process it
//! started.

use std::path::Path;

/// `line` without ANSI escape sequences (CSI `ESC [ … final` and two-byte
/// `ESC x`), as a coloured log line reads on a terminal.
pub fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        // CSI: parameter and intermediate bytes up to a final byte in @..~;
        // any other escape is two characters long.
        if let Some('[') = chars.next() {
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        }
    }
    out
}

/// The `vm_to_hello_ms` field of husk's "agent ready" log line (VM program
/// start to the agent's Hello), or None for any other line.
pub fn vm_to_hello_ms(line: &str) -> Option<u64> {
    let line = strip_ansi(line);
    if !line.contains("agent ready") {
        return None;
    }
    let (_, rest) = line.split_once("vm_to_hello_ms=")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Whether `line` is husk's "agent ready" log line.
pub fn is_agent_ready(line: &str) -> bool {
    vm_to_hello_ms(line).is_some()
}

/// Direct children of `pid`, from /proc/PID/task/*/children (every thread
/// has its own list: a child belongs to the thread that forked it).
pub fn children(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return found;
    };
    for task in tasks.flatten() {
        let Ok(text) = std::fs::read_to_string(task.path().join("children")) else {
            continue;
        };
        found.extend(
            text.split_whitespace()
                .filter_map(|word| word.parse::<u32>().ok()),
        );
    }
    found.sort_unstable();
    found.dedup();
    found
}

/// The file name of the program process `pid` runs (/proc/PID/exe), without
/// the " (deleted)" the kernel appends when the file was replaced.
pub fn program_name(pid: u32) -> Option<String> {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let name = exe.file_name()?.to_string_lossy().into_owned();
    Some(
        name.strip_suffix(" (deleted)")
            .map(str::to_owned)
            .unwrap_or(name),
    )
}

/// The first descendant of `root` (breadth first) whose program's file name
/// is `program`.
pub fn find_descendant(root: u32, program: &str) -> Option<u32> {
    let mut queue = std::collections::VecDeque::from(children(root));
    let mut seen = std::collections::HashSet::new();
    while let Some(pid) = queue.pop_front() {
        if !seen.insert(pid) {
            continue;
        }
        if program_name(pid).as_deref() == Some(program) {
            return Some(pid);
        }
        queue.extend(children(pid));
    }
    None
}

/// Whether process `pid` still exists and runs `program`.
pub fn runs(pid: u32, program: &str) -> bool {
    Path::new(&format!("/proc/{pid}")).exists() && program_name(pid).as_deref() == Some(program)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};

    #[test]
    fn colours_are_stripped() {
        let line = "\u{1b}[2m2026-12-02T03:00:00Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m \
                    \u{1b}[2mhusk::sandbox::launch\u{1b}[0m\u{1b}[2m:\u{1b}[0m agent ready \
                    \u{1b}[3magent\u{1b}[0m\u{1b}[2m=\u{1b}[0m0.1.0 \
                    \u{1b}[3mvm_to_hello_ms\u{1b}[0m\u{1b}[2m=\u{1b}[0m1234";
        assert_eq!(
            strip_ansi(line),
            "2026-12-02T03:00:00Z  INFO husk::sandbox::launch: agent ready agent=0.1.0 \
             vm_to_hello_ms=1234"
        );
        assert_eq!(vm_to_hello_ms(line), Some(1234));
        assert_eq!(strip_ansi("plain \u{1b}"), "plain ");
    }

    #[test]
    fn only_the_agent_ready_line_counts() {
        let plain = "2026-12-02T03:00:00Z  INFO husk::sandbox::launch: agent ready \
                     agent=0.1.0 elapsed=2.5s vm_to_hello_ms=987 other=1";
        assert_eq!(vm_to_hello_ms(plain), Some(987));
        assert!(is_agent_ready(plain));
        assert_eq!(
            vm_to_hello_ms("INFO VM started pid=12 vm_to_hello_ms=5"),
            None
        );
        assert_eq!(vm_to_hello_ms("INFO agent ready agent=0.1.0"), None);
        assert_eq!(vm_to_hello_ms("INFO agent ready vm_to_hello_ms=x"), None);
    }

    #[test]
    fn finds_a_grandchild_by_program() {
        // The outer sh starts an inner sh, which says "started" once it runs
        // (so it has been exec'd) and stays a shell: the trailing `:` keeps
        // it from exec'ing sleep. The inner sh is our grandchild.
        let mut child = Command::new("sh")
            .args(["-c", "sh -c 'echo started; sleep 30; :' & wait"])
            .stdout(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line, "started\n");
        let shell = program_name(child.id()).expect("the child's program");
        let inner = find_descendant(child.id(), &shell).expect("the inner sh");
        assert_ne!(inner, child.id());
        assert!(runs(inner, &shell));
        assert!(children(child.id()).contains(&inner));
        assert_eq!(find_descendant(child.id(), "no-such-program"), None);
        // SAFETY: kill has no memory-safety preconditions; the child leads
        // its own process group, which holds only the shells and sleep.
        unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
        child.wait().unwrap();
        assert!(!runs(child.id(), &shell));
    }
}
