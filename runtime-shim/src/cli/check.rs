//! `husk check`.

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(_args: CheckArgs) -> anyhow::Result<i32> {
    anyhow::bail!("husk check: not implemented yet")
}
