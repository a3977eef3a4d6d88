//! The harness rule: a test fails if a program it ran printed a Rust panic, whatever else the
//! test checked. A daemon that panics on one connection keeps serving the others, so a test
//! that only looks at what its client saw would pass over it.
//!
//! Standalone (no other harness module), so that test binaries that include only parts of the
//! harness (`tests/vpc.rs`) apply the same rule.

/// What the standard panic hook prints first: "thread '<name>' panicked at <file>:<line>".
const PANIC_MARK: &str = "panicked at";

/// The first line of `output` that reports a panic, if any.
pub fn panic_line(output: &str) -> Option<&str> {
    output.lines().find(|line| line.contains(PANIC_MARK))
}

/// Fails the test if `output` (a program's stdout or stderr) reports a panic. `what` names
/// the program and the stream; `context` is quoted in the failure (the logs).
#[track_caller]
pub fn assert_no_panic(what: &str, output: &str, context: &dyn std::fmt::Display) {
    if let Some(line) = panic_line(output) {
        panic!("{what} panicked: {line}\n{context}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_standard_hook_line_only() {
        let log = "INFO ok\nthread 'tokio-runtime-worker' panicked at src/server.rs:1:2:\n`async fn` resumed after completion\n";
        assert_eq!(
            panic_line(log),
            Some("thread 'tokio-runtime-worker' panicked at src/server.rs:1:2:")
        );
        assert_eq!(panic_line("INFO connection refused: panic button\n"), None);
    }
}
