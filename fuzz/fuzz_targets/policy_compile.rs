//! Any text given as a policy compiles or is refused with a line and column inside it;
//! nothing panics.
#![no_main]

use std::path::Path;

use interceptor::policy::Policy;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    if let Err(e) = Policy::parse(Path::new("fuzz.toml"), text) {
        let lines = text.lines().count().max(1);
        assert!(
            e.line >= 1 && e.line <= lines + 1,
            "{e}: line outside the text"
        );
        assert!(e.column >= 1, "{e}: no column");
    }
});
