//! `husk pull`, `husk login`, `husk logout`: the store and OCI registries.

use crate::image::digest::Digest;
use crate::image::limits::Limits;
use crate::image::registry::{
    self, auth, platform::Platform, PullOptions, PullReport, RegistryOptions,
};
use crate::image::Store;
use anyhow::Context;
use indicatif::HumanBytes;
use std::io::{BufRead as _, IsTerminal as _};
use std::path::{Path, PathBuf};

/// How to reach registries; shared by the commands that talk to one.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct RegistryArgs {
    /// Speak plain HTTP to this registry (HOST:PORT); repeatable. Only the
    /// registries listed here are ever reached without TLS.
    #[arg(
        long = "insecure-registry",
        value_name = "HOST:PORT",
        env = "HUSK_INSECURE_REGISTRIES",
        value_delimiter = ','
    )]
    pub insecure_registry: Vec<String>,
    /// Trust this PEM CA certificate besides the system's; repeatable.
    #[arg(long = "ca-file", value_name = "PEM")]
    pub ca_file: Vec<PathBuf>,
    /// Credentials file (docker config.json format) `husk login` writes;
    /// default $XDG_CONFIG_HOME/husk/auth.json. ~/.docker/config.json is
    /// read after it.
    #[arg(long, env = "HUSK_AUTH_FILE", value_name = "FILE")]
    pub authfile: Option<PathBuf>,
}

impl RegistryArgs {
    fn auth_file(&self) -> PathBuf {
        self.authfile
            .clone()
            .unwrap_or_else(auth::default_auth_file)
    }

    pub fn options(&self) -> RegistryOptions {
        let mut auth_files = vec![self.auth_file()];
        auth_files.extend(auth::docker_config_file());
        RegistryOptions {
            insecure: self.insecure_registry.clone(),
            ca_files: self.ca_file.clone(),
            auth_files,
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct PullArgs {
    /// Image reference: NAME[:TAG] or NAME@sha256:DIGEST; short names are
    /// Docker Hub's (busybox = docker.io/library/busybox:latest).
    pub reference: String,
    /// Platform to choose from a multi-platform image (OS/ARCH[/VARIANT]);
    /// default: this host's.
    #[arg(long, value_parser = Platform::parse)]
    pub platform: Option<Platform>,
    /// Blobs downloaded at once.
    #[arg(long, default_value_t = registry::DEFAULT_CONCURRENT_DOWNLOADS)]
    pub max_concurrent_downloads: usize,
    /// No progress output.
    #[arg(long, short)]
    pub quiet: bool,
    /// Print the result as JSON (and no progress).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

pub fn pull(store: &Path, args: PullArgs) -> anyhow::Result<i32> {
    let store = Store::open(store)
        .with_context(|| format!("opening the image store {}", store.display()))?;
    let report = pull_into(
        &store,
        &args.reference,
        &args.registry,
        args.platform,
        !args.quiet && !args.json,
        args.max_concurrent_downloads,
    )?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if !args.quiet {
        print_report(&report);
    } else {
        println!("{}", report.id);
    }
    Ok(0)
}

/// Pulls one image (also what `husk run --pull` uses).
pub fn pull_into(
    store: &Store,
    reference: &str,
    registry_args: &RegistryArgs,
    platform: Option<Platform>,
    progress: bool,
    max_concurrent_downloads: usize,
) -> anyhow::Result<PullReport> {
    let options = PullOptions {
        registry: registry_args.options(),
        platform,
        progress,
        max_concurrent_downloads,
        limits: Limits::default(),
    };
    registry::pull(store, reference, &options).with_context(|| format!("pulling {reference}"))
}

pub fn print_report(report: &PullReport) {
    let id = Digest::parse(&report.id)
        .map(|d| d.short().to_string())
        .unwrap_or_else(|_| report.id.clone());
    let seconds = report.elapsed.as_secs_f64();
    let resumed = if report.resumed_bytes > 0 {
        format!(" (+{} resumed)", HumanBytes(report.resumed_bytes))
    } else {
        String::new()
    };
    println!(
        "pulled {} as {} ({id}): {} layer{}, {} fetched, {}{resumed} downloaded in {seconds:.2}s",
        report.reference,
        report.name.as_deref().unwrap_or("<untagged>"),
        report.layers,
        if report.layers == 1 { "" } else { "s" },
        report.fetched_layers,
        HumanBytes(report.downloaded_bytes),
    );
    println!("digest: {}", report.manifest_digest);
}

#[derive(clap::Args, Debug)]
pub struct LoginArgs {
    /// Registry (HOST[:PORT]); docker.io for Docker Hub.
    pub registry: String,
    #[arg(short, long)]
    pub username: Option<String>,
    /// Password (visible in `ps`; prefer --password-stdin).
    #[arg(short, long)]
    pub password: Option<String>,
    /// Read the password from standard input (one line).
    #[arg(long)]
    pub password_stdin: bool,
    #[command(flatten)]
    pub registry_args: RegistryArgs,
}

pub fn login(args: LoginArgs) -> anyhow::Result<i32> {
    let registry = normalize_registry(&args.registry);
    let stdin = std::io::stdin();
    let username = match args.username {
        Some(u) => u,
        None => {
            anyhow::ensure!(
                !args.password_stdin && stdin.is_terminal(),
                "--username is needed when standard input is not a terminal"
            );
            eprint!("Username: ");
            let mut line = String::new();
            stdin.lock().read_line(&mut line)?;
            line.trim_end_matches(['\r', '\n']).to_string()
        }
    };
    let password = match (args.password, args.password_stdin) {
        (Some(_), true) => anyhow::bail!("--password and --password-stdin exclude each other"),
        (Some(p), false) => p,
        (None, true) => {
            let mut line = String::new();
            stdin.lock().read_line(&mut line)?;
            line.trim_end_matches(['\r', '\n']).to_string()
        }
        (None, false) => {
            anyhow::ensure!(
                stdin.is_terminal(),
                "no password: use --password-stdin when standard input is not a terminal"
            );
            read_password()?
        }
    };
    anyhow::ensure!(!username.is_empty(), "empty username");
    let credentials = auth::Credentials { username, password };
    let mut options = args.registry_args.options();
    registry::check_login(&mut options, &registry, &credentials)
        .with_context(|| format!("logging in to {registry}"))?;
    let file = args.registry_args.auth_file();
    auth::store(&file, &registry, &credentials)?;
    println!(
        "Login Succeeded ({registry}; credentials in {})",
        file.display()
    );
    Ok(0)
}

#[derive(clap::Args, Debug)]
pub struct LogoutArgs {
    /// Registry (HOST[:PORT]).
    pub registry: String,
    #[command(flatten)]
    pub registry_args: RegistryArgs,
}

pub fn logout(args: LogoutArgs) -> anyhow::Result<i32> {
    let registry = normalize_registry(&args.registry);
    let file = args.registry_args.auth_file();
    if auth::remove(&file, &registry)? {
        println!("Removed login credentials for {registry}");
        Ok(0)
    } else {
        eprintln!("husk: not logged in to {registry} (in {})", file.display());
        Ok(1)
    }
}

/// `https://host/` and Docker Hub's aliases to the name references use.
fn normalize_registry(text: &str) -> String {
    let host = text
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or_default();
    match host {
        "index.docker.io" | "registry-1.docker.io" | "" => "docker.io".into(),
        other => other.to_string(),
    }
}

/// A password typed without echo.
fn read_password() -> anyhow::Result<String> {
    use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
    let stdin = std::io::stdin();
    let saved = tcgetattr(&stdin)?;
    let mut quiet = saved.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    tcsetattr(&stdin, SetArg::TCSANOW, &quiet)?;
    eprint!("Password: ");
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    let _ = tcsetattr(&stdin, SetArg::TCSANOW, &saved);
    eprintln!();
    read?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

#[derive(clap::Args, Debug)]
pub struct PushArgs {
    /// Image in the store (name or ID).
    pub image: String,
    /// Where to push it (a full reference); default: the image's name.
    pub destination: Option<String>,
    /// No progress output.
    #[arg(long, short)]
    pub quiet: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

pub fn push(store: &Path, args: PushArgs) -> anyhow::Result<i32> {
    let store = Store::open(store)
        .with_context(|| format!("opening the image store {}", store.display()))?;
    let destination = args.destination.as_deref().unwrap_or(&args.image);
    let report = registry::push::push(
        &store,
        &args.image,
        destination,
        &args.registry.options(),
        !args.quiet && !args.json,
    )
    .with_context(|| format!("pushing {} to {destination}", args.image))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "pushed {} ({} layers; {} blobs, {} sent) in {:.2}s\ndigest: {}",
            report.reference,
            report.layers,
            report.pushed_blobs,
            HumanBytes(report.pushed_bytes),
            report.elapsed.as_secs_f64(),
            report.manifest_digest
        );
    }
    Ok(0)
}
