//! `husk-runc`: the OCI runtime command line (runc's commands, flags and
//! exit codes). Clap parsing and exit codes only; the work is in
//! `husk::cli::oci`.

use clap::Parser;
use husk::cli::oci::{self, OciCli};

fn main() {
    if let Some(code) = husk::container::monitor::dispatch() {
        std::process::exit(code);
    }
    let cli = OciCli::parse();
    let level = if cli.debug { "debug" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let log_file = cli.log.as_ref().and_then(|path| {
        std::fs::File::options()
            .create(true)
            .append(true)
            .open(path)
            .ok()
    });
    match log_file {
        Some(file) => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(std::sync::Mutex::new(file))
            .init(),
        None => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
    }
    // runc's callers (containerd's shim) read the last error from the log
    // file as a JSON line with --log-format json.
    let json_log = (cli.log_format == "json")
        .then(|| cli.log.clone())
        .flatten();
    match oci::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            let message = format!("{e:#}");
            eprintln!("husk-runc: {message}");
            if let Some(path) = json_log {
                let line = serde_json::json!({
                    "level": "error",
                    "msg": message,
                    "time": husk::container::state::now_rfc3339(),
                });
                if let Ok(mut file) = std::fs::File::options()
                    .create(true)
                    .append(true)
                    .open(path)
                {
                    use std::io::Write;
                    let _ = writeln!(file, "{line}");
                }
            }
            std::process::exit(1);
        }
    }
}
