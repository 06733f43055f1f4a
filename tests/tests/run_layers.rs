//! Images of many layers run (8, 20 and 100 here; the import's limit is
//! 125): an image's layers reach the guest as one disk that concatenates
//! their erofs images, not as a virtio device per layer, so neither
//! backend's device slots limit them. The three images share their lower
//! layers (same content, same diff ID), so this also checks that layers
//! shared between images stay one file each in the store.

mod run_support;

use husk_e2e::fixtures::{self, dir, file, Compression, Format, LayerSpec, Node};
use run_support::{assert_code, text};

/// busybox's base layer, then `count - 1` layers: layer i adds /layers/i
/// and rewrites /top; the last one also deletes /layers/1 (a whiteout), so
/// the result shows both that every layer is there and their order.
fn layered_image(name: &str, count: usize) -> fixtures::ImageSpec {
    let mut layers = vec![fixtures::busybox_base_layer(Compression::None).expect("busybox")];
    for i in 1..count {
        let mut nodes = vec![
            dir("/layers", 0o755),
            file(&format!("/layers/{i}"), format!("{i}\n").as_bytes(), 0o644),
            file("/top", format!("{i}\n").as_bytes(), 0o644),
        ];
        if i == count - 1 {
            nodes.push(Node::Whiteout {
                path: "/layers/1".into(),
            });
        }
        layers.push(LayerSpec {
            nodes,
            compression: Compression::None,
        });
    }
    fixtures::ImageSpec {
        name: Some(name.into()),
        layers,
        cmd: vec!["sh".into()],
    }
}

#[test]
fn images_of_8_20_and_100_layers_run() {
    let env = run_env!();
    let counts = [8usize, 20, 100];
    let images: Vec<_> = counts
        .iter()
        .map(|n| fixtures::build(&layered_image(&format!("layers{n}:latest"), *n)))
        .collect();
    let work = tempfile::tempdir().unwrap();
    let archive = work.path().join("layered.tar");
    fixtures::write(&images, Format::Docker, &archive).unwrap();
    env.store.import(&archive, &[]);

    // Shared layers are stored once (layerdb is keyed by chain ID): the
    // base layer (also busybox's, same diff ID) and busybox's two others,
    // numbered layers 1..=98 shared by every image that has them, and each
    // image's own top layer (the one with the whiteout).
    let chains = std::fs::read_dir(env.store.root().join("layerdb/sha256"))
        .unwrap()
        .count();
    assert_eq!(chains, 1 + 2 + 98 + 3, "layer records in the store");

    for n in counts {
        let image = format!("layers{n}");
        let out = env.run(&[
            "--rm",
            &image,
            "sh",
            "-c",
            "cat /top; ls /layers | wc -l; test -e /layers/1 || echo whiteout ok",
        ]);
        assert_code(&out, 0);
        let top = n - 1;
        assert_eq!(
            text(&out.stdout),
            format!("{top}\n{}\nwhiteout ok\n", n - 2),
            "image of {n} layers; stderr: {}",
            text(&out.stderr)
        );
        env.assert_clean();
    }
}
