//! `husk-fixtures busybox --format docker|oci|oci-dir --out PATH [--tag NAME]`:
//! writes the busybox test image (see `husk_e2e::fixtures`) as an archive.

use clap::{Parser, Subcommand, ValueEnum};
use husk_e2e::fixtures::{self, Format};
use std::path::PathBuf;

#[derive(Parser)]
#[command(about = "Build husk's test images from Debian's busybox-static")]
struct Cli {
    #[command(subcommand)]
    image: Image,
}

#[derive(Subcommand)]
enum Image {
    /// The three-layer busybox image (the demo image).
    Busybox {
        #[arg(long, value_enum, default_value_t = FormatArg::Docker)]
        format: FormatArg,
        #[arg(long)]
        out: PathBuf,
        /// Image name; `--tag ""` leaves it untagged.
        #[arg(long, default_value = "busybox:latest")]
        tag: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum FormatArg {
    Docker,
    Oci,
    OciDir,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.image {
        Image::Busybox { format, out, tag } => {
            let name = Some(tag.as_str()).filter(|t| !t.is_empty());
            let image = fixtures::build(&fixtures::busybox(name)?);
            let format = match format {
                FormatArg::Docker => Format::Docker,
                FormatArg::Oci => Format::Oci,
                FormatArg::OciDir => Format::OciDir,
            };
            fixtures::write(std::slice::from_ref(&image), format, &out)?;
            println!("{} {}", out.display(), image.id);
        }
    }
    Ok(())
}
