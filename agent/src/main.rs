//! husk-agent: PID 1 of a husk microVM. Mounts the guest's base
//! filesystems, opens the host channel (a virtio serial port named
//! org.husk.agent where the host offers one, else /dev/hvc0), says Hello and serves
//! the protocol of `husk_agent::protocol` until Shutdown, then powers off.
//!
//! Build (static, so the initramfs needs nothing else):
//! `RUSTFLAGS="-C target-feature=+crt-static" cargo build -p husk-agent --release --target x86_64-unknown-linux-gnu`
//! → `target/x86_64-unknown-linux-gnu/release/husk-agent`, packed as `/init`.
//!
//! Flags (for debugging outside a VM): `--channel PATH` (default /dev/hvc0).
//! Logs go to stderr (the kernel console, ttyS0); the level comes from
//! `HUSK_AGENT_LOG` (the kernel passes `husk_agent_log=debug`-style
//! command-line words to init as environment: both spellings work).

mod channel;
mod container;
mod error;
mod init;
mod loopdev;
mod network;
mod oom;
mod pod;
mod rootfs;
mod server;

use std::path::PathBuf;

use anyhow::Context;
use tracing_subscriber::EnvFilter;

use channel::Channel;
use server::Server;

const DEFAULT_CHANNEL: &str = "/dev/hvc0";

fn init_logging() {
    let filter = std::env::var("HUSK_AGENT_LOG")
        .or_else(|_| std::env::var("husk_agent_log"))
        .unwrap_or_else(|_| "info".to_owned());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .without_time()
        .try_init();
}

/// The name a host gives the agent's port when it offers a named virtio
/// serial port (QEMU: `virtserialport,name=...`) instead of the console
/// port 0 that becomes /dev/hvc0 (husk-vmm).
const AGENT_PORT_NAME: &str = "org.husk.agent";

/// `--channel PATH`, if given.
fn channel_flag() -> Option<PathBuf> {
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--channel" {
            return args.next().map(PathBuf::from);
        }
    }
    None
}

/// The agent's port: a virtio serial port named [`AGENT_PORT_NAME`]
/// (/dev/vportNpM) where the host offers one, else the console /dev/hvc0.
fn find_channel(virtio_ports: &std::path::Path) -> PathBuf {
    if let Ok(entries) = std::fs::read_dir(virtio_ports) {
        for entry in entries.flatten() {
            let name = std::fs::read_to_string(entry.path().join("name")).unwrap_or_default();
            if name.trim_end_matches(['\n', '\0']) == AGENT_PORT_NAME {
                return std::path::Path::new("/dev").join(entry.file_name());
            }
        }
    }
    PathBuf::from(DEFAULT_CHANNEL)
}

/// Opens the channel, waiting briefly for its device node: a driver that
/// probes late would otherwise cost the whole VM.
fn open_channel() -> std::io::Result<(PathBuf, Channel)> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let path = channel_flag()
            .unwrap_or_else(|| find_channel(std::path::Path::new("/sys/class/virtio-ports")));
        match Channel::open(&path) {
            Err(err)
                if err.kind() == std::io::ErrorKind::NotFound
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(err) => {
                return Err(std::io::Error::new(
                    err.kind(),
                    format!("open {}: {err}", path.display()),
                ))
            }
            Ok(channel) => return Ok((path, channel)),
        }
    }
}

fn serve(is_pid1: bool) -> anyhow::Result<()> {
    if is_pid1 {
        init::setup().context("guest setup")?;
    }
    let (path, channel) = open_channel().context("open the host channel")?;
    let mut server = Server::new(channel).context("signal setup")?;
    server.hello().context("send Hello")?;
    tracing::info!(channel = %path.display(), "agent ready");
    match server.run() {
        Ok(server::Outcome::Shutdown) => {
            tracing::info!("shutdown requested");
            Ok(())
        }
        Err(err) => {
            server.report_fatal(err.to_string());
            server.shutdown();
            Err(err).context("serving the host")
        }
    }
}

fn main() {
    let is_pid1 = std::process::id() == 1;
    init_logging();
    let result = serve(is_pid1);
    if let Err(err) = &result {
        tracing::error!("{err:#}");
    }
    if is_pid1 {
        init::power_off();
    }
    std::process::exit(if result.is_ok() { 0 } else { 1 });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_named_agent_port_wins_over_the_console() {
        let sys = tempfile::tempdir().unwrap();
        assert_eq!(find_channel(sys.path()), PathBuf::from("/dev/hvc0"));
        for (port, name) in [("vport0p1", "other\n"), ("vport0p2", "org.husk.agent\n")] {
            std::fs::create_dir(sys.path().join(port)).unwrap();
            std::fs::write(sys.path().join(port).join("name"), name).unwrap();
        }
        assert_eq!(find_channel(sys.path()), PathBuf::from("/dev/vport0p2"));
    }
}
