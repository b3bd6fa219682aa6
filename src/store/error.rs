//! Typed errors of the store. Each carries a [`Kind`] that maps to one of the
//! contract's exit codes; the binary decides how to show it.

use std::fmt;

/// The contract's error kinds (SPEC "Errors and exit codes").
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Internal,
    Usage,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    Invalid,
    Unsupported,
}

impl Kind {
    /// The process exit code for this kind.
    pub fn exit_code(self) -> u8 {
        match self {
            Kind::Internal => 1,
            Kind::Usage => 2,
            Kind::NotFound => 3,
            Kind::AlreadyExists => 4,
            Kind::FailedPrecondition => 5,
            Kind::Invalid => 6,
            Kind::Unsupported => 7,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Internal => "internal",
            Kind::Usage => "usage",
            Kind::NotFound => "not_found",
            Kind::AlreadyExists => "already_exists",
            Kind::FailedPrecondition => "failed_precondition",
            Kind::Invalid => "invalid",
            Kind::Unsupported => "unsupported",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An error of the store: a kind, a one-line message naming the snapshot,
/// optional hints a person can act on, and the underlying cause.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    kind: Kind,
    message: String,
    hints: Vec<String>,
    #[source]
    source: Option<Source>,
    reported: bool,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            hints: Vec::new(),
            source: None,
            reported: false,
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Kind::Internal, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Kind::NotFound, message)
    }
    pub fn already_exists(message: impl Into<String>) -> Self {
        Self::new(Kind::AlreadyExists, message)
    }
    pub fn precondition(message: impl Into<String>) -> Self {
        Self::new(Kind::FailedPrecondition, message)
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Kind::Invalid, message)
    }
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(Kind::Unsupported, message)
    }

    /// An I/O failure while doing `what`: `internal`, but where the kernel
    /// cannot do it at all. EPERM is not among those: a file that is
    /// immutable or on a kernel file system says it too, and a script
    /// taking 7 for "use the native driver, or root" would act on it
    /// (audit); where EPERM does mean "without privilege" (mount(2),
    /// umount2(2)) the caller says so.
    pub fn io(what: impl Into<String>, err: std::io::Error) -> Self {
        let kind = match err.kind() {
            std::io::ErrorKind::Unsupported => Kind::Unsupported,
            _ => match err.raw_os_error() {
                Some(libc::ENOSYS) | Some(libc::ENODEV) => Kind::Unsupported,
                _ => Kind::Internal,
            },
        };
        Self::new(kind, what).with_source(err)
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hints.push(hint.into());
        self
    }

    /// This error without its hints, for a caller that knows better.
    pub fn without_hints(mut self) -> Self {
        self.hints.clear();
        self
    }

    pub fn with_source(mut self, source: impl Into<Source>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Marks an error whose message was already shown (e.g. one of several
    /// failures of `rm a b c`): it only decides the exit code.
    pub fn reported(mut self) -> Self {
        self.reported = true;
        self
    }
    pub fn is_reported(&self) -> bool {
        self.reported
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }
    pub fn message(&self) -> &str {
        &self.message
    }
    pub fn hints(&self) -> &[String] {
        &self.hints
    }
}

/// Whether SQLite's error says the machine is in the way (descriptors,
/// permissions, a read-only or full disk, another process), not that the
/// index is damaged.
pub(crate) fn in_the_way(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode as C;
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(
                f.code,
                C::CannotOpen | C::ReadOnly | C::DiskFull | C::PermissionDenied
                    | C::SystemIoFailure | C::OutOfMemory | C::DatabaseBusy | C::DatabaseLocked
            )
    )
}

impl From<rusqlite::Error> for Error {
    /// What a failure of the index means for the user, where SQLite's code
    /// says (audit: "the store's index failed: Error code 8: attempt to
    /// write a readonly database", for every write on a read-only store).
    fn from(err: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode;
        let code = match &err {
            rusqlite::Error::SqliteFailure(e, _) => Some(e.code),
            _ => None,
        };
        let (what, hint) = match code {
            Some(ErrorCode::ReadOnly) => (
                "the store's index cannot be written: it is read-only",
                Some(
                    "the store's file system is mounted read-only, or index.db (or its directory) is not writable by this user",
                ),
            ),
            Some(ErrorCode::DiskFull) => (
                "the store's index cannot grow: its disk is full",
                Some(
                    "free some space on the store's disk, then run the command again; nothing was changed",
                ),
            ),
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => (
                "the store's index is busy: another process held it too long",
                Some(
                    "run the command again; `strata check` tells whether a process left it locked",
                ),
            ),
            Some(ErrorCode::CannotOpen) => (
                "the store's index cannot be opened",
                Some(
                    "is the process out of file descriptors (ulimit -n), or the store's directory not readable?",
                ),
            ),
            _ if matches!(
                err,
                rusqlite::Error::FromSqlConversionFailure(..)
                    | rusqlite::Error::InvalidColumnType(..)
            ) =>
            {
                (
                    "the store's index holds a row strata cannot read",
                    Some(
                        "`strata check` names it; correct it with sqlite3, or restore index.db from a backup",
                    ),
                )
            }
            _ => ("the store's index failed", None),
        };
        let error = Error::internal(what).with_source(err);
        match hint {
            Some(hint) => error.with_hint(hint),
            None => error,
        }
    }
}

/// Attach "while doing X" context to I/O results.
pub trait IoContext<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::io(what(), e))
    }
}
