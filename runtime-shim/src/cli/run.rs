//! `husk run`.

use std::path::Path;

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Image name.
    pub image: String,
    /// Command and arguments.
    #[arg(trailing_var_arg = true)]
    pub command: Vec<String>,
}

pub fn run(_store: &Path, _args: RunArgs) -> anyhow::Result<i32> {
    anyhow::bail!("husk run: not implemented yet")
}
