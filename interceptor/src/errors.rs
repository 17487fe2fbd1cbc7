//! How errors read to people: the whole cause chain on one line.

/// `outer: cause: root cause`, skipping a cause whose text its parent already contains
/// (many library errors repeat their source in their own message).
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = String::new();
    for cause in std::iter::successors(Some(error), |e| e.source()) {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_causes_are_said_once() {
        let io = std::io::Error::other("permission denied");
        let e = anyhow::Error::new(io)
            .context("load failed: permission denied")
            .context("starting");
        assert_eq!(
            chain(e.as_ref()),
            "starting: load failed: permission denied"
        );
        let e = anyhow::anyhow!("root").context("outer");
        assert_eq!(chain(e.as_ref()), "outer: root");
    }
}
