//! The command line's error: a sentence for stderr.

use std::fmt;

/// An error shown to the user as `error: <message>`.
#[derive(Debug)]
pub struct CliError(pub String);

/// The result type of every subcommand.
pub type CliResult<T> = Result<T, CliError>;

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl CliError {
    /// An error with `msg` as its message.
    pub fn msg(msg: impl Into<String>) -> Self {
        CliError(msg.into())
    }
}

impl From<hooklens::Error> for CliError {
    fn from(e: hooklens::Error) -> Self {
        CliError(e.to_string())
    }
}

impl From<candle_core::Error> for CliError {
    /// Through hooklens's error, so that a hooklens error carried inside a candle
    /// error is shown as itself.
    fn from(e: candle_core::Error) -> Self {
        CliError(hooklens::Error::from(e).to_string())
    }
}
