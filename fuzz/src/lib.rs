//! What the fuzz targets share: the shipped rules, compiled once per process.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use interceptor::detection::{Engine, load_dir};

pub fn engine() -> &'static Arc<Engine> {
    static ENGINE: OnceLock<Arc<Engine>> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/rules");
        Arc::new(
            Engine::compile(&load_dir(&dir).expect("the shipped rules load")).expect("and compile"),
        )
    })
}

/// Splits `input` into a header of up to `max` cut points (one byte each, scaled to the
/// data's length) and the data itself: the first byte says how many points follow.
pub fn cut_points(input: &[u8], max: usize) -> (Vec<usize>, &[u8]) {
    let Some((&n, rest)) = input.split_first() else {
        return (Vec::new(), input);
    };
    let n = (n as usize % (max + 1)).min(rest.len());
    let (head, data) = rest.split_at(n);
    let mut points: Vec<usize> = head
        .iter()
        .map(|&b| data.len() * b as usize / 255)
        .collect();
    points.sort();
    (points, data)
}
