//! Errors, and the bookkeeping that turns byte offsets into `FILE:LINE:COLUMN`.
//!
//! A config that fails validation usually has more than one problem, and an operator fixing a
//! bastion at 3 a.m. should see all of them at once. So [`ConfigError::Invalid`] carries a list
//! of [`Diagnostic`]s, each pointing at a file position; its `Display` prints one per line.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file itself could not be read (missing, unreadable, not UTF-8).
    ///
    /// The I/O error's text is part of the message (and deliberately not a `source()`), so a
    /// caller that prints the whole error chain does not print it twice.
    #[error("{}: cannot read config file: {error}", path.display())]
    Read {
        /// The path that was given to [`crate::load`].
        path: PathBuf,
        /// What the operating system said.
        error: std::io::Error,
    },
    /// The file was read but is not a valid configuration. Every problem found is listed,
    /// config-file problems first in file order, then those found in `keys_file`s.
    #[error("{}", render(.0))]
    Invalid(Vec<Diagnostic>),
}

impl ConfigError {
    /// Every positioned problem (empty for [`ConfigError::Read`]).
    #[must_use]
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            ConfigError::Read { .. } => &[],
            ConfigError::Invalid(list) => list,
        }
    }
}

fn render(list: &[Diagnostic]) -> String {
    let lines: Vec<String> = list.iter().map(ToString::to_string).collect();
    lines.join("\n")
}

/// One problem, at one place in one file. Displays as `FILE:LINE:COLUMN: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file the problem is in: the config file as it was named to [`crate::load`] or
    /// [`crate::parse`], or a `keys_file` resolved against the config's directory.
    pub file: PathBuf,
    /// 1-based line number.
    pub line: usize,
    /// 1-based column, counted in characters (a tab counts as one).
    pub column: usize,
    /// What is wrong; starts with the key it is about, e.g. `users[1].keys[0]: ...`.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

/// A text with a file name, able to place byte offsets as 1-based line and column.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Source<'a> {
    pub(crate) file: &'a Path,
    pub(crate) text: &'a str,
}

impl<'a> Source<'a> {
    pub(crate) fn new(file: &'a Path, text: &'a str) -> Self {
        Source { file, text }
    }

    /// 1-based (line, column) of a byte offset; offsets past the end or inside a multi-byte
    /// character are clamped rather than trusted.
    pub(crate) fn position(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        (line, column)
    }

    /// A diagnostic at the start of `span`.
    pub(crate) fn at(&self, span: &Range<usize>, message: impl Into<String>) -> Diagnostic {
        let (line, column) = self.position(span.start);
        Diagnostic {
            file: self.file.to_path_buf(),
            line,
            column,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_and_count_characters() {
        let text = "ab\nçd\n\nx";
        let src = Source::new(Path::new("f"), text);
        assert_eq!(src.position(0), (1, 1));
        assert_eq!(src.position(1), (1, 2));
        assert_eq!(src.position(3), (2, 1));
        // `ç` is two bytes; `d` is the second character of line 2.
        assert_eq!(src.position(5), (2, 2));
        // Inside `ç`: clamped back to its start.
        assert_eq!(src.position(4), (2, 1));
        assert_eq!(src.position(7), (3, 1));
        assert_eq!(src.position(8), (4, 1));
        assert_eq!(src.position(1000), (4, 2));
    }

    #[test]
    fn invalid_displays_one_diagnostic_per_line() {
        let d = |line| Diagnostic {
            file: PathBuf::from("c.toml"),
            line,
            column: 3,
            message: format!("problem {line}"),
        };
        let err = ConfigError::Invalid(vec![d(1), d(2)]);
        assert_eq!(
            err.to_string(),
            "c.toml:1:3: problem 1\nc.toml:2:3: problem 2"
        );
        assert_eq!(err.diagnostics().len(), 2);
    }
}
