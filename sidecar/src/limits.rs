//! Storage limits of DESIGN §4, checked before anything reaches storage, so a refused call or a
//! refused carried write writes nothing.

use base64::Engine as _;
use http::StatusCode;
use rusqlite::types::Value;

use crate::error::ApiError;
use crate::storage::param_from_json;

/// Storage limits of DESIGN §4 (defaults are Cloudflare's figures where it has them).
#[derive(Debug, Clone, clap::Args)]
pub struct Limits {
    /// Longest KV key, in UTF-8 bytes.
    #[arg(long, env = "STEAD_MAX_KEY_BYTES", default_value_t = 2048)]
    pub max_key_bytes: usize,
    /// Largest KV value, in bytes.
    #[arg(long, env = "STEAD_MAX_VALUE_BYTES", default_value_t = 2 << 20)]
    pub max_value_bytes: usize,
    /// Most keys or entries in one KV call.
    #[arg(long, env = "STEAD_MAX_BATCH", default_value_t = 128)]
    pub max_batch: usize,
    /// Longest SQL text, in bytes.
    #[arg(long, env = "STEAD_MAX_STATEMENT_BYTES", default_value_t = 100 << 10)]
    pub max_statement_bytes: usize,
    /// Most bound parameters in one SQL call.
    #[arg(long, env = "STEAD_MAX_PARAMS", default_value_t = 100)]
    pub max_params: usize,
    /// Largest object database, in bytes.
    #[arg(long, env = "STEAD_MAX_DATABASE_BYTES", default_value_t = 10 << 30)]
    pub max_database_bytes: u64,
    /// Largest app API request body, in bytes.
    #[arg(long, env = "STEAD_MAX_API_BODY_BYTES", default_value_t = 64 << 20)]
    pub max_api_body_bytes: usize,
    /// Largest SQL result (as held in memory while the answer is built), largest single SQL
    /// value, and largest KV list answer, in bytes.
    #[arg(long, env = "STEAD_MAX_SQL_RESULT_BYTES", default_value_t = 32 << 20)]
    pub max_sql_result_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_key_bytes: 2048,
            max_value_bytes: 2 << 20,
            max_batch: 128,
            max_statement_bytes: 100 << 10,
            max_params: 100,
            max_database_bytes: 10 << 30,
            max_api_body_bytes: 64 << 20,
            max_sql_result_bytes: 32 << 20,
        }
    }
}

impl Limits {
    pub fn key(&self, key: &str) -> Result<(), ApiError> {
        if key.len() > self.max_key_bytes {
            return Err(ApiError::too_large(
                "key_too_large",
                format!(
                    "key is {} bytes; the limit is {}",
                    key.len(),
                    self.max_key_bytes
                ),
            ));
        }
        Ok(())
    }

    pub fn batch(&self, n: usize) -> Result<(), ApiError> {
        if n > self.max_batch {
            return Err(ApiError::bad_request(
                "batch_too_large",
                format!("{n} keys in one call; the limit is {}", self.max_batch),
            ));
        }
        if n == 0 {
            return Err(ApiError::bad_request("bad_request", "no keys given"));
        }
        Ok(())
    }

    pub fn value(&self, key: &str, b64: &str) -> Result<Vec<u8>, ApiError> {
        // Refuse before decoding what cannot fit.
        if b64.len() / 4 * 3 > self.max_value_bytes + 3 {
            return Err(self.value_too_large(key, b64.len() / 4 * 3));
        }
        let value = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| {
                ApiError::bad_request(
                    "bad_request",
                    format!("value of {key:?} is not base64: {e}"),
                )
            })?;
        if value.len() > self.max_value_bytes {
            return Err(self.value_too_large(key, value.len()));
        }
        Ok(value)
    }

    pub fn value_too_large(&self, key: &str, len: usize) -> ApiError {
        ApiError::too_large(
            "value_too_large",
            format!(
                "value of {key:?} is {len} bytes; the limit is {}",
                self.max_value_bytes
            ),
        )
    }

    /// Checks an SQL statement of the app (a call's, or one its answer carries) before it
    /// reaches storage: its size, its parameter count, no `_stead_` name; returns its
    /// parameters as SQLite values (400 `bad_request` for one that is not a value).
    pub fn sql(&self, sql: &str, params: &[serde_json::Value]) -> Result<Vec<Value>, ApiError> {
        if sql.len() > self.max_statement_bytes {
            return Err(ApiError::too_large(
                "statement_too_large",
                format!(
                    "SQL is {} bytes; the limit is {}",
                    sql.len(),
                    self.max_statement_bytes
                ),
            ));
        }
        if params.len() > self.max_params {
            return Err(ApiError::bad_request(
                "too_many_params",
                format!(
                    "{} bound parameters; the limit is {}",
                    params.len(),
                    self.max_params
                ),
            ));
        }
        if sql.to_ascii_lowercase().contains("_stead_") {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "reserved_name",
                "names starting with _stead_ are reserved for Stead's own tables",
            ));
        }
        params
            .iter()
            .map(param_from_json)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ApiError::bad_request("bad_request", e))
    }
}
