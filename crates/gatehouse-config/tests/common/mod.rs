//! What the config test files share: a config's refusals, read through the public API.

use std::path::Path;

use gatehouse_config::{parse, ConfigError, Diagnostic};

/// The diagnostics of `text` (as file `g.toml`), which must be refused.
pub fn errors(text: &str) -> Vec<Diagnostic> {
    match parse(text, Path::new("g.toml")) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(ConfigError::Invalid(list)) => list,
        Err(other) => panic!("{other:?}"),
    }
}

/// `text` is refused with exactly one diagnostic, at `line`:`column`, containing `needle`.
#[track_caller]
pub fn one_error(text: &str, line: usize, column: usize, needle: &str) {
    let list = errors(text);
    assert_eq!(list.len(), 1, "{list:?}");
    let d = &list[0];
    assert_eq!((d.line, d.column), (line, column), "{d}");
    assert!(d.message.contains(needle), "{d}");
}
