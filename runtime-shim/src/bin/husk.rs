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
    /// Pull an image from an OCI registry into the store.
    Pull(cli::registry::PullArgs),
    /// Push an image of the store to an OCI registry.
    Push(cli::registry::PushArgs),
    /// Record credentials for a registry (checked first).
    Login(cli::registry::LoginArgs),
    /// Forget the credentials of a registry.
    Logout(cli::registry::LogoutArgs),
    /// Run a command in a new container, in its own microVM.
    Run(Box<cli::run::RunArgs>),
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
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Write man pages (husk.1 and one per subcommand) into a directory.
    #[command(hide = true)]
    Man { dir: PathBuf },
}

/// `husk man DIR`: `husk.1`, `husk-image.1`, `husk-image-import.1`, ...
fn write_man_pages(dir: &std::path::Path) -> anyhow::Result<i32> {
    use clap::CommandFactory;
    fn render(cmd: &clap::Command, name: String, dir: &std::path::Path) -> anyhow::Result<()> {
        let cmd = cmd
            .clone()
            .display_name(name.clone())
            .bin_name(name.replace('-', " "));
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd.clone()).render(&mut page)?;
        std::fs::write(dir.join(format!("{name}.1")), page)?;
        for sub in cmd
            .get_subcommands()
            .filter(|s| !s.is_hide_set() && s.get_name() != "help")
        {
            render(sub, format!("{name}-{}", sub.get_name()), dir)?;
        }
        Ok(())
    }
    std::fs::create_dir_all(dir)?;
    let mut cmd = Cli::command();
    cmd.build();
    render(&cmd, "husk".into(), dir)?;
    Ok(0)
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
        Command::Pull(args) => cli::registry::pull(&cli.store, args),
        Command::Push(args) => cli::registry::push(&cli.store, args),
        Command::Login(args) => cli::registry::login(args),
        Command::Logout(args) => cli::registry::logout(args),
        Command::Run(args) => cli::run::run(&cli.store, *args),
        Command::Ps(args) => cli::containers::ps(&cli.store, args),
        Command::Exec(args) => cli::containers::exec(&cli.store, args),
        Command::Logs(args) => cli::containers::logs(&cli.store, args),
        Command::Stop(args) => cli::containers::stop(&cli.store, args),
        Command::Kill(args) => cli::containers::kill(&cli.store, args),
        Command::Rm(args) => cli::containers::rm(&cli.store, args),
        Command::Inspect(args) => cli::containers::inspect(&cli.store, args),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "husk", &mut std::io::stdout());
            Ok(0)
        }
        Command::Man { dir } => write_man_pages(&dir),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("husk: {e:#}");
            std::process::exit(125);
        }
    }
}
