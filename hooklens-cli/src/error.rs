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
    /// The library's message, except where the command line has its own flag for the
    /// fix: a switched-off hook point names `--all-hooks`, not the config field.
    fn from(e: hooklens::Error) -> Self {
        match e {
            hooklens::Error::DisabledHook { name, flag } => CliError(format!(
                "hook point `{name}` is off unless asked for (TransformerLens's `{flag}`): pass --all-hooks \
                 to switch on every optional hook point"
            )),
            other => CliError(other.to_string()),
        }
    }
}

impl From<candle_core::Error> for CliError {
    /// Through hooklens's error, so that a hooklens error carried inside a candle
    /// error is shown as itself.
    fn from(e: candle_core::Error) -> Self {
        hooklens::Error::from(e).into()
    }
}

/// The message of a write to a closed stdout (`hooklens hooks ... | head`): the reader
/// has what it wanted, so `main` exits quietly.
pub const BROKEN_PIPE: &str = "stdout closed";

impl CliError {
    /// Whether this error only says that stdout was closed.
    pub fn is_broken_pipe(&self) -> bool {
        self.0 == BROKEN_PIPE
    }
}

/// Writes one line to stdout: `println!`, but an error instead of a panic when stdout
/// is closed or full.
pub fn write_line(args: fmt::Arguments<'_>) -> CliResult<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{args}").map_err(|e| match e.kind() {
        std::io::ErrorKind::BrokenPipe => CliError::msg(BROKEN_PIPE),
        _ => CliError(format!("cannot write to stdout: {e}")),
    })
}

/// `println!` through [`write_line`]; use with `?`-returning functions.
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::error::write_line(format_args!($($arg)*))?
    };
}
