/// Why a storage call failed. Each variant maps to one documented API error code. Messages
/// never carry file paths or OS detail: that goes to the sidecar log where the error is made.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("the turn of this token has ended; storage calls must happen before the app answers")]
    TurnFinished,
    #[error("{0}")]
    ReservedName(String),
    #[error("{0}")]
    NotAllowed(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("SQL error: {0}")]
    Sql(String),
    #[error("the object's database reached its size limit; delete data before writing more")]
    DatabaseFull,
    #[error(
        "the shard's storage volume is full: nothing was written and the turn rolls back; retry once space is freed"
    )]
    StorageFull,
    #[error(
        "the object's database could not be read or written (I/O error; the detail is in the sidecar log): nothing was written and the turn rolls back"
    )]
    Io,
    #[error(
        "the alarm index could not be written ({}): the turn was rolled back{}",
        if *full { "the shard's storage volume is full" } else { "I/O error; the detail is in the sidecar log" },
        if *full { "; retry once space is freed" } else { "" }
    )]
    AlarmIndex { full: bool },
    #[error(
        "the turn's deadline (the turn timeout) passed while a statement ran: the statement was interrupted and the turn rolls back"
    )]
    Deadline,
    #[error(
        "the SQL result, or a value in it, exceeds the limit of {limit} bytes: nothing was written; select fewer rows (LIMIT) or smaller values"
    )]
    ResultTooLarge { limit: usize },
    #[error(
        "the entries listed pass {limit} bytes; pass a limit, or list a narrower range and continue after the last key"
    )]
    ListTooLarge { limit: usize },
    #[error("storage failed: {0}")]
    Internal(String),
    #[error(
        "an earlier turn of this object failed to commit, and this turn ran against its writes; it was rolled back"
    )]
    EarlierCommitFailed,
    #[error(
        "the shard's storage volume failed to make the commit durable (I/O error; the detail is in the sidecar log): the turn may or may not have been written, and the shard accepts no writes until it restarts"
    )]
    VolumeFailed,
    #[error("the storage pool is shut down")]
    Closed,
}

impl StorageError {
    /// Classifies an SQLite error met while running the app's own statement: the app's fault
    /// (400) unless SQLite says the disk or the file failed.
    pub fn from_app_sql(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode;
        match e.sqlite_error_code() {
            Some(ErrorCode::AuthorizationForStatementDenied) => StorageError::NotAllowed(
                "statement not allowed: transactions, savepoints, ATTACH, DETACH and PRAGMA are managed by Stead (the turn is the transaction)".into(),
            ),
            Some(ErrorCode::OperationInterrupted) => StorageError::Deadline,
            Some(
                ErrorCode::DiskFull
                | ErrorCode::SystemIoFailure
                | ErrorCode::DatabaseCorrupt
                | ErrorCode::CannotOpen
                | ErrorCode::OutOfMemory
                | ErrorCode::NotADatabase
                | ErrorCode::ReadOnly,
            ) => StorageError::from(e),
            _ => StorageError::Sql(e.to_string()),
        }
    }

    /// The error says that the disk, not the app, failed: the turn cannot be trusted to go on.
    pub fn is_disk_failure(&self) -> bool {
        matches!(
            self,
            StorageError::DatabaseFull
                | StorageError::StorageFull
                | StorageError::Io
                | StorageError::VolumeFailed
        )
    }
}

impl From<rusqlite::Error> for StorageError {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            // A full volume also answers SQLITE_FULL: the storage layer, which knows the
            // volume, refines this (see `faults::volume_is_full`).
            Some(rusqlite::ErrorCode::DiskFull) => StorageError::DatabaseFull,
            Some(rusqlite::ErrorCode::OperationInterrupted) => StorageError::Deadline,
            _ => {
                tracing::error!(error = %e, "SQLite failed");
                StorageError::Io
            }
        }
    }
}

impl From<std::io::Error> for StorageError {
    fn from(e: std::io::Error) -> Self {
        let full = matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
            || e.kind() == std::io::ErrorKind::StorageFull;
        tracing::error!(error = %e, "storage I/O failed");
        if full {
            StorageError::StorageFull
        } else {
            StorageError::Io
        }
    }
}

impl From<crate::alarms::AlarmError> for StorageError {
    fn from(e: crate::alarms::AlarmError) -> Self {
        tracing::error!(error = %e, "alarm index write-ahead failed");
        StorageError::AlarmIndex {
            full: matches!(e, crate::alarms::AlarmError::VolumeFull),
        }
    }
}
