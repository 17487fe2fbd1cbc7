//! Builds the eBPF object (`interceptor-ebpf`, nightly + bpf-linker) into `$OUT_DIR`, where
//! `src/kernel` embeds it with `aya::include_bytes_aligned!`.
fn main() -> anyhow::Result<()> {
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
