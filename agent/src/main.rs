//! husk-agent: PID 1 of a husk microVM. Mounts the guest's base
//! filesystems, opens the host channel (/dev/hvc0), says Hello and serves
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

fn channel_path() -> PathBuf {
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--channel" {
            if let Some(path) = args.next() {
                return PathBuf::from(path);
            }
        }
    }
    PathBuf::from(DEFAULT_CHANNEL)
}

/// Opens the channel, waiting briefly for its device node: a driver that
/// probes late would otherwise cost the whole VM.
fn open_channel(path: &std::path::Path) -> std::io::Result<Channel> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match Channel::open(path) {
            Err(err)
                if err.kind() == std::io::ErrorKind::NotFound
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            result => return result,
        }
    }
}

fn serve(is_pid1: bool) -> anyhow::Result<()> {
    if is_pid1 {
        init::setup().context("guest setup")?;
    }
    let path = channel_path();
    let channel = open_channel(&path).with_context(|| format!("open {}", path.display()))?;
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
