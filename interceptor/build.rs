//! Builds the eBPF object (`interceptor-ebpf`, nightly + bpf-linker) into `$OUT_DIR`, where
//! `src/kernel` embeds it with `aya::include_bytes_aligned!`, and lists the shipped secret
//! rules (`policies/rules/*.yaml`) for `detection::rules` to embed with `include_str!`, so a
//! daemon started anywhere has them.
use std::path::Path;

fn main() -> anyhow::Result<()> {
    embed_rules(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../policies/rules"
    )))?;
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../interceptor-ebpf");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "interceptor-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
}

/// Writes `$OUT_DIR/builtin_rules.rs`: `&[(file name, include_str!(file))]`, in name order.
fn embed_rules(dir: &Path) -> anyhow::Result<()> {
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            println!("cargo:rerun-if-changed={}", path.display());
            files.push(path.canonicalize()?);
        }
    }
    files.sort();
    anyhow::ensure!(!files.is_empty(), "no rule files in {}", dir.display());
    let mut out = String::from("&[\n");
    for path in files {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        out.push_str(&format!(
            "    ({name:?}, include_str!({:?})),\n",
            path.display().to_string()
        ));
    }
    out.push_str("]\n");
    let dest = Path::new(&std::env::var("OUT_DIR")?).join("builtin_rules.rs");
    std::fs::write(dest, out)?;
    Ok(())
}
