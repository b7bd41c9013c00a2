/// Why a storage call failed. Each variant maps to one documented API error code.
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
    #[error("storage failed: {0}")]
    Internal(String),
    #[error("the storage pool is shut down")]
    Closed,
}

impl StorageError {
    /// Classifies an SQLite error met while running the app's own statement: the app's fault
    /// (400) unless SQLite says the disk or the file failed.
    pub fn from_app_sql(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode;
        match e.sqlite_error_code() {
            Some(ErrorCode::DiskFull) => StorageError::DatabaseFull,
            Some(ErrorCode::AuthorizationForStatementDenied) => StorageError::NotAllowed(
                "statement not allowed: transactions, savepoints, ATTACH, DETACH and PRAGMA are managed by Stead (the turn is the transaction)".into(),
            ),
            Some(
                ErrorCode::SystemIoFailure
                | ErrorCode::DatabaseCorrupt
                | ErrorCode::CannotOpen
                | ErrorCode::OutOfMemory
                | ErrorCode::NotADatabase
                | ErrorCode::ReadOnly,
            ) => StorageError::Internal(e.to_string()),
            _ => StorageError::Sql(e.to_string()),
        }
    }
}

impl From<rusqlite::Error> for StorageError {
    fn from(e: rusqlite::Error) -> Self {
        if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) {
            return StorageError::DatabaseFull;
        }
        StorageError::Internal(e.to_string())
    }
}

impl From<std::io::Error> for StorageError {
    fn from(e: std::io::Error) -> Self {
        StorageError::Internal(e.to_string())
    }
}
