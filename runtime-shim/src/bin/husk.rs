//! `husk`: containers in KVM microVMs. The CLI binary: clap parsing and
//! exit codes; the work is in the `husk` library.

use clap::{Parser, Subcommand};
use husk::cli;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "husk",
    version,
    about = "Containers, each in its own KVM microVM"
)]
pub struct Cli {
    /// Image store directory (layers, images, layer disks).
    #[arg(
        long,
        global = true,
        env = "HUSK_STORE",
        default_value = "/var/lib/husk"
    )]
    pub store: PathBuf,
    /// Log level: error, warn, info, debug, trace.
    #[arg(long, global = true, default_value = "warn")]
    pub log_level: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Check whether this host can run husk microVMs, and what to fix.
    Check(cli::check::CheckArgs),
    /// Manage images: import, ls, inspect, rm, prune.
    #[command(subcommand)]
    Image(cli::image::ImageCommand),
    /// Run a command in a new container, in its own microVM.
    Run(cli::run::RunArgs),
    /// List containers (running; -a for all).
    Ps(cli::containers::PsArgs),
    /// Run a command in a running container.
    Exec(cli::containers::ExecArgs),
    /// A container's output (stdout and stderr).
    Logs(cli::containers::LogsArgs),
    /// Stop containers: SIGTERM, then SIGKILL after a timeout.
    Stop(cli::containers::StopArgs),
    /// Send a signal to containers (default SIGKILL).
    Kill(cli::containers::KillArgs),
    /// Remove containers.
    Rm(cli::containers::RmArgs),
    /// Containers in detail (JSON).
    Inspect(cli::containers::InspectArgs),
}

fn main() {
    if let Some(code) = husk::container::monitor::dispatch() {
        std::process::exit(code);
    }
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    // Rust ignores SIGPIPE, so `husk image ls | head` would panic in println!.
    // Listing commands die quietly like any Unix filter; `husk run` keeps
    // SIGPIPE ignored because it must tear its VM down (it reports 141 itself).
    if !matches!(cli.command, Command::Run(_)) {
        // SAFETY: resetting a signal disposition to its default has no
        // preconditions; no handler of ours is replaced.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let result = match cli.command {
        Command::Check(args) => cli::check::run(args),
        Command::Image(cmd) => cli::image::run(&cli.store, cmd),
        Command::Run(args) => cli::run::run(&cli.store, args),
        Command::Ps(args) => cli::containers::ps(&cli.store, args),
        Command::Exec(args) => cli::containers::exec(&cli.store, args),
        Command::Logs(args) => cli::containers::logs(&cli.store, args),
        Command::Stop(args) => cli::containers::stop(&cli.store, args),
        Command::Kill(args) => cli::containers::kill(&cli.store, args),
        Command::Rm(args) => cli::containers::rm(&cli.store, args),
        Command::Inspect(args) => cli::containers::inspect(&cli.store, args),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("husk: {e:#}");
            std::process::exit(125);
        }
    }
}
