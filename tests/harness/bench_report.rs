//! Benchmarks write their results into `docs/benchmarks.md`, one marked section each.

use anyhow::{Context, Result};

use crate::util::workspace_root;

/// Replaces the section between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->` (appending it
/// when absent), keeping every other benchmark's section.
pub fn write_section(name: &str, report: &str) -> Result<()> {
    let (start, end) = (
        format!("<!-- bench:{name} -->"),
        format!("<!-- /bench:{name} -->"),
    );
    let path = workspace_root().join("docs/benchmarks.md");
    let old = std::fs::read_to_string(&path).unwrap_or_else(|_| "# Benchmarks\n\n".into());
    let section = format!("{start}\n{report}{end}");
    let new = match (old.find(&start), old.find(&end)) {
        (Some(a), Some(b)) => format!("{}{section}{}", &old[..a], &old[b + end.len()..]),
        _ => format!("{}\n{section}\n", old.trim_end()),
    };
    std::fs::write(&path, new).with_context(|| format!("writing {}", path.display()))
}
