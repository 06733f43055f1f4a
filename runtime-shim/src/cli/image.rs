//! `husk image ...`.

use std::path::Path;

#[derive(clap::Subcommand, Debug)]
pub enum ImageCommand {
    /// List images.
    Ls,
}

pub fn run(_store: &Path, _cmd: ImageCommand) -> anyhow::Result<i32> {
    anyhow::bail!("husk image: not implemented yet")
}
