//! Membership rows from a CSV file named by URL (`file://` inside the files
//! directory, or `http(s)://` through the confined [`Fetcher`]): a header with `action` and one of `user_id`,
//! `email`, `phone_number`.
//! The whole file is read and checked before any membership changes, so a
//! bad file (unsupported scheme, unreachable host, missing `action` column,
//! unknown action, too many rows) changes nothing.

use crate::fetch::Fetcher;
use crate::files::FilesDir;
use crate::http::ApiError;
use serde::Deserialize;
use std::time::Duration;

/// Rows one PatchGroupMembers may carry (JSON or CSV).
pub const MAX_MEMBER_ROWS: usize = 10_000;

/// One membership row, from JSON or CSV.
#[derive(Debug, Clone, Deserialize, PartialEq, utoipa::ToSchema)]
#[schema(as = UserGroupUpdateData)]
pub struct MemberRow {
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub phone_number: Option<String>,
    /// `add` or `remove` (any case).
    #[schema(value_type = crate::openapi::schemas::MemberAction)]
    pub action: String,
}

/// Largest file read.
const MAX_BYTES: u64 = 5 * 1024 * 1024;

/// Longest a fetch of a members file may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn fetch(files: &FilesDir, fetcher: &Fetcher, url: &str) -> Result<Vec<MemberRow>, ApiError> {
    let url = url.trim();
    let bytes = if let Some(path) = url.strip_prefix("file://") {
        let path = files.resolve(path).await?;
        let size = tokio::fs::metadata(&path).await.map_err(|e| ApiError::invalid(format!("file_url {url}: {e}")))?;
        if size.len() > MAX_BYTES {
            return Err(ApiError::invalid(format!("file_url {url} is larger than {MAX_BYTES} bytes")));
        }
        tokio::fs::read(&path).await.map_err(|e| ApiError::invalid(format!("file_url {url}: {e}")))?
    } else if crate::jobs::source::is_remote(url) {
        fetcher.bytes(url, MAX_BYTES, FETCH_TIMEOUT).await.map_err(|e| ApiError::invalid(format!("file_url {e}")))?
    } else {
        return Err(ApiError::invalid(format!("file_url must be a file:// or http(s):// URL, got {url:?}")));
    };
    parse(&bytes)
}

pub fn parse(bytes: &[u8]) -> Result<Vec<MemberRow>, ApiError> {
    let mut reader = csv::ReaderBuilder::new().trim(csv::Trim::All).from_reader(bytes);
    let headers = reader.headers().map_err(|e| ApiError::invalid(format!("file_url: not a CSV file: {e}")))?.clone();
    if !headers.iter().any(|h| h == "action") {
        return Err(ApiError::invalid("file_url: the CSV needs an action column (add or remove)"));
    }
    if !headers.iter().any(|h| matches!(h, "user_id" | "email" | "phone_number")) {
        return Err(ApiError::invalid("file_url: the CSV needs a user_id, email or phone_number column"));
    }
    let mut rows = Vec::new();
    for (i, record) in reader.deserialize::<MemberRow>().enumerate() {
        if i >= MAX_MEMBER_ROWS {
            return Err(ApiError::invalid(format!("file_url: at most {MAX_MEMBER_ROWS} rows")));
        }
        let row = record.map_err(|e| ApiError::invalid(format!("file_url: row {}: {e}", i + 1)))?;
        if !matches!(row.action.to_ascii_lowercase().as_str(), "add" | "remove") {
            return Err(ApiError::invalid(format!(
                "file_url: row {}: action must be add or remove, got {:?}",
                i + 1,
                row.action
            )));
        }
        rows.push(row);
    }
    Ok(rows)
}
