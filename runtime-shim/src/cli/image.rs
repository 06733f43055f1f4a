//! `husk image`: import, ls, inspect, rm, prune over the image store.

use crate::image::digest::Digest;
use crate::image::import::{self, ImportOptions};
use crate::image::limits::Limits;
use crate::image::Store;
use anyhow::Context;
use indicatif::HumanBytes;
use std::path::{Path, PathBuf};

#[derive(clap::Subcommand, Debug)]
pub enum ImageCommand {
    /// Import every image of an OCI image layout (directory or tar) or a
    /// `docker save` archive.
    Import(ImportArgs),
    /// List images.
    Ls {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show an image's config and layers (diff IDs, chain IDs, sizes, disks).
    Inspect {
        /// Image name (busybox, busybox:latest) or (short) image ID.
        name: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Remove images or tags; layers other images use stay.
    Rm {
        /// Image names or IDs.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Delete layers no image uses and leftovers of interrupted imports.
    Prune,
}

#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    /// OCI image layout (directory or tar) or docker-save archive.
    pub path: PathBuf,
    /// Name for the image when the archive does not name it (or for the
    /// archive's only image).
    #[arg(long)]
    pub tag: Option<String>,
    /// Print the result as JSON (and no progress bars).
    #[arg(long)]
    pub json: bool,
    /// No progress bars.
    #[arg(long, short)]
    pub quiet: bool,
    /// Most tar entries one layer may have.
    #[arg(long, default_value_t = Limits::default().max_entries_per_layer)]
    pub max_entries: u64,
    /// Most bytes one uncompressed layer may have.
    #[arg(long, default_value_t = Limits::default().max_layer_bytes)]
    pub max_layer_size: u64,
}

pub fn run(store: &Path, cmd: ImageCommand) -> anyhow::Result<i32> {
    let store = Store::open(store)
        .with_context(|| format!("opening the image store {}", store.display()))?;
    match cmd {
        ImageCommand::Import(args) => import_images(&store, args),
        ImageCommand::Ls { json } => list(&store, json),
        ImageCommand::Inspect { name, json } => inspect(&store, &name, json),
        ImageCommand::Rm { names } => remove(&store, &names),
        ImageCommand::Prune => prune(&store),
    }
}

fn import_images(store: &Store, args: ImportArgs) -> anyhow::Result<i32> {
    let limits = Limits {
        max_entries_per_layer: args.max_entries,
        max_layer_bytes: args.max_layer_size,
        ..Limits::default()
    };
    let options = ImportOptions {
        tag: args.tag,
        limits,
        progress: !args.quiet && !args.json,
    };
    let report = import::import(store, &args.path, &options)
        .with_context(|| format!("importing {}", args.path.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(0);
    }
    let images: Vec<String> = report
        .images
        .iter()
        .map(|image| {
            let id = Digest::parse(&image.id)
                .map(|d| d.short().to_string())
                .unwrap_or_else(|_| image.id.clone());
            match image.names.is_empty() {
                true => format!("<untagged> {id}"),
                false => format!("{} {id}", image.names.join(", ")),
            }
        })
        .collect();
    let seconds = report.elapsed.as_secs_f64();
    let rate = if seconds > 0.0 {
        report.new_layer_bytes as f64 / seconds
    } else {
        0.0
    };
    println!(
        "imported {} image{} ({}): {} new layer{}, {} already present, {} of layer data in {:.2}s ({}/s)",
        report.images.len(),
        plural(report.images.len()),
        images.join("; "),
        report.new_layers,
        plural(report.new_layers),
        report.present_layers,
        HumanBytes(report.new_layer_bytes),
        seconds,
        HumanBytes(rate as u64),
    );
    Ok(0)
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn list(store: &Store, json: bool) -> anyhow::Result<i32> {
    let images = store.images()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&images)?);
        return Ok(0);
    }
    println!(
        "{:<40} {:<14} {:<22} {:>6} {:>10}",
        "NAME", "IMAGE ID", "CREATED", "LAYERS", "SIZE"
    );
    for image in images {
        let id = image.id.strip_prefix("sha256:").unwrap_or(&image.id);
        let short = &id[..id.len().min(12)];
        let names = if image.tags.is_empty() {
            vec!["<none>".to_string()]
        } else {
            image.tags.clone()
        };
        for name in names {
            println!(
                "{:<40} {:<14} {:<22} {:>6} {:>10}",
                name,
                short,
                image.created.as_deref().unwrap_or("-"),
                image.layers,
                HumanBytes(image.size).to_string()
            );
        }
    }
    Ok(0)
}

fn inspect(store: &Store, name: &str, json: bool) -> anyhow::Result<i32> {
    let image = store.resolve(name)?;
    let id = Digest::parse(&image.id)?;
    let tags = store.repositories()?.tags_of(&id);
    let mut layers = Vec::new();
    for layer in &image.layers {
        layers.push(store.layer(&Digest::parse(&layer.chain_id)?)?);
    }
    let manifest = store.image_manifest_digest(&id).map(|d| d.to_string());
    if json {
        let config: serde_json::Value = serde_json::from_slice(&store.image_config_bytes(&id)?)?;
        let out = serde_json::json!({
            "id": image.id,
            "name": image.name,
            "tags": tags,
            "manifest": manifest,
            "config": config,
            "layers": layers,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(0);
    }
    println!("id:       {}", image.id);
    println!(
        "tags:     {}",
        if tags.is_empty() {
            "<none>".to_string()
        } else {
            tags.join(", ")
        }
    );
    if let Some(manifest) = manifest {
        println!("manifest: {manifest}");
    }
    println!(
        "os/arch:  {}/{}",
        image.config.os(),
        image.config.architecture()
    );
    if let Some(config) = image.config.config() {
        if let Some(entrypoint) = config.entrypoint() {
            println!("entrypoint: {entrypoint:?}");
        }
        if let Some(cmd) = config.cmd() {
            println!("cmd:      {cmd:?}");
        }
        if let Some(env) = config.env() {
            println!("env:      {env:?}");
        }
        if let Some(dir) = config.working_dir() {
            println!("workdir:  {dir}");
        }
        if let Some(user) = config.user() {
            println!("user:     {user}");
        }
    }
    println!("layers:");
    for (i, (layer, record)) in image.layers.iter().zip(&layers).enumerate() {
        println!("  {}. diff_id  {}", i + 1, layer.diff_id);
        println!("     chain_id {}", layer.chain_id);
        println!(
            "     size     {} uncompressed, disk {} ({})",
            HumanBytes(layer.size),
            HumanBytes(record.disk_size),
            layer.disk.display()
        );
    }
    Ok(0)
}

fn remove(store: &Store, names: &[String]) -> anyhow::Result<i32> {
    for name in names {
        let report = store
            .remove(name)
            .with_context(|| format!("removing {name}"))?;
        for tag in &report.untagged {
            println!("untagged: {tag}");
        }
        if let Some(id) = &report.deleted_image {
            println!("deleted: {id}");
        }
        for layer in &report.deleted_layers {
            println!("deleted layer: {layer}");
        }
        for layer in &report.kept_leased {
            println!("kept layer: {layer} (in use by a running container; `husk image prune` removes it later)");
        }
    }
    Ok(0)
}

fn prune(store: &Store) -> anyhow::Result<i32> {
    let report = store.prune()?;
    for layer in &report.deleted_layers {
        println!("deleted layer: {layer}");
    }
    for (layer, container) in &report.kept_in_use {
        println!("kept layer: {layer} (used by container {container})");
    }
    for layer in &report.kept_leased {
        println!("kept layer: {layer} (in use by a running container)");
    }
    println!(
        "pruned {} layer{}, {} blob{}, {} stale staging entr{}, {} lock file{}; reclaimed {}",
        report.deleted_layers.len(),
        plural(report.deleted_layers.len()),
        report.deleted_blobs.len(),
        plural(report.deleted_blobs.len()),
        report.swept_staging,
        if report.swept_staging == 1 {
            "y"
        } else {
            "ies"
        },
        report.swept_locks,
        plural(report.swept_locks),
        HumanBytes(report.reclaimed_bytes)
    );
    Ok(0)
}
