//! Any text as a config file: a typed config or diagnostics, never a panic; every diagnostic
//! points inside the text; a valid config builds a directory snapshot.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    match gatehouse_config::parse(text, Path::new("/nonexistent/fuzz.toml")) {
        Ok(config) => {
            let snapshot = gatehouse_directory::Snapshot::from_config(&config);
            assert_eq!(snapshot.identities().len(), config.users.len());
            let _ = config.summary();
        }
        Err(e) => {
            let lines = text.lines().count().max(1);
            for d in e.diagnostics() {
                if d.file == Path::new("/nonexistent/fuzz.toml") {
                    assert!(d.line >= 1 && d.line <= lines + 1, "{d:?} in {lines} lines");
                }
            }
            let _ = e.to_string();
        }
    }
});
