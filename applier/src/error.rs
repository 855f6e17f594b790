//! The applier's error: every failure is either a refusal (exit 2: unsafe now, wrong target, already
//! applied) or an error (exit 1), and carries one line that names the file, function or thread at fault.

/// What went wrong, as one line for a person.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The operation is refused: the target is not the one the patch was built for, the patch is
    /// already applied, or the change cannot be made safely now. Exit code 2.
    #[error("{0}")]
    Refused(String),
    /// Anything else: bad input, a process that cannot be traced, an I/O failure. Exit code 1.
    #[error("{0}")]
    Failed(String),
}

impl Error {
    /// The process exit code this error maps to.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Refused(_) => 2,
            Error::Failed(_) => 1,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Shorthand for an [`Error::Failed`] built with `format!`.
macro_rules! failed {
    ($($arg:tt)*) => { $crate::error::Error::Failed(format!($($arg)*)) };
}

/// Shorthand for an [`Error::Refused`] built with `format!`.
macro_rules! refused {
    ($($arg:tt)*) => { $crate::error::Error::Refused(format!($($arg)*)) };
}

pub(crate) use {failed, refused};
