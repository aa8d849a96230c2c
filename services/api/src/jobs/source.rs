//! A job's input file, read row by row and never whole: where it comes from
//! (`file://` inside the files directory, or `http(s)://` copied into it
//! with a size and a time limit), and its rows (CSV with a header, or JSONL,
//! one JSON object per line) as JSON objects numbered by index and line.
//!
//! A row that cannot be read (invalid UTF-8, a wrong number of fields, a
//! line that is not a JSON object) is a row error; the rows after it are
//! read on. A file without a usable header is refused as a whole.

use crate::fetch::Fetcher;
use crate::files::FilesDir;
use crate::http::ApiError;
use serde_json::{Map, Value};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a download of an `http(s)://` source may take in all.
pub const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(600);

/// The two formats of job files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Jsonl,
}

impl Format {
    pub fn parse(raw: &str) -> Result<Format, ApiError> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "csv" => Ok(Format::Csv),
            "jsonl" | "ndjson" | "json" => Ok(Format::Jsonl),
            other => Err(ApiError::invalid(format!("file_format must be csv or jsonl, got {other:?}"))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Jsonl => "jsonl",
        }
    }
}

/// One row: its 0-based index among the file's rows, the line it starts
/// on, and its fields (or why it cannot be read).
#[derive(Debug)]
pub struct Row {
    pub index: u64,
    pub line: u64,
    pub fields: Result<Map<String, Value>, String>,
}

/// The columns a file may have, and the ones it must have.
#[derive(Debug, Clone, Copy)]
pub struct Columns {
    pub allowed: &'static [&'static str],
    /// Each inner list: at least one of these.
    pub required: &'static [&'static [&'static str]],
    /// Columns whose CSV cell is JSON text (`meta`).
    pub json: &'static [&'static str],
}

impl Columns {
    fn check_header(&self, header: &[String]) -> Result<(), String> {
        if let Some(unknown) = header.iter().find(|h| !self.allowed.contains(&h.as_str())) {
            return Err(format!("unknown column {unknown:?} (columns: {})", self.allowed.join(", ")));
        }
        for one_of in self.required {
            if !one_of.iter().any(|c| header.iter().any(|h| h == c)) {
                return Err(format!("the header needs a {} column", one_of.join(" or ")));
            }
        }
        Ok(())
    }

    fn check_object(&self, object: &Map<String, Value>) -> Result<(), String> {
        match object.keys().find(|k| !self.allowed.contains(&k.as_str())) {
            Some(unknown) => Err(format!("unknown field {unknown:?}")),
            None => Ok(()),
        }
    }
}

/// Where a job's rows are read from: a file of the files directory.
/// `http(s)://` sources are first copied there ([`download`]).
pub async fn local(files: &FilesDir, url: &str, max_bytes: u64) -> Result<PathBuf, ApiError> {
    let Some(path) = url.trim().strip_prefix("file://") else {
        return Err(ApiError::invalid(format!("{url:?} is not a file:// URL")));
    };
    let path = files.resolve(path).await?;
    let size = tokio::fs::metadata(&path).await.map_err(|e| ApiError::invalid(format!("{url}: {e}")))?.len();
    if size > max_bytes {
        return Err(ApiError::invalid(format!("{url} is {size} bytes, more than the limit of {max_bytes}")));
    }
    Ok(path)
}

/// Whether `url` is fetched over the network.
pub fn is_remote(url: &str) -> bool {
    let url = url.trim().to_ascii_lowercase();
    url.starts_with("http://") || url.starts_with("https://")
}

/// Copies an `http(s)://` source to `to` through the confined
/// [`Fetcher`], streaming, refusing more than `max_bytes` or
/// [`DOWNLOAD_TIMEOUT`]. The message says why it failed.
pub async fn download(fetcher: &Fetcher, url: &str, to: &Path, max_bytes: u64) -> Result<(), String> {
    use tokio::io::AsyncWriteExt;
    let mut download = fetcher.get(url, max_bytes, DOWNLOAD_TIMEOUT).await.map_err(|e| e.to_string())?;
    let mut file = tokio::fs::File::create(to).await.map_err(|e| e.to_string())?;
    while let Some(chunk) = download.chunk().await.map_err(|e| e.to_string())? {
        file.write_all(&chunk).await.map_err(|e| e.to_string())?;
    }
    file.sync_all().await.map_err(|e| e.to_string())
}

/// The header of a file, checked (blocking IO: call from a blocking task).
pub fn check_header(path: &Path, format: Format, columns: Columns) -> Result<(), String> {
    if format == Format::Jsonl {
        return Ok(());
    }
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut reader = csv::ReaderBuilder::new().trim(csv::Trim::All).from_reader(file);
    let header = reader.byte_headers().map_err(|e| format!("the header cannot be read: {e}"))?;
    let header = header_names(header)?;
    if header.iter().all(String::is_empty) {
        return Err("the file has no header".to_string());
    }
    columns.check_header(&header)
}

/// The header's column names, lower case; a UTF-8 byte order mark (as
/// spreadsheets write it) is dropped.
fn header_names(header: &csv::ByteRecord) -> Result<Vec<String>, String> {
    header
        .iter()
        .map(|h| {
            std::str::from_utf8(h)
                .map(|s| s.trim_start_matches('\u{feff}').trim().to_ascii_lowercase())
                .map_err(|_| "the header is not valid UTF-8".to_string())
        })
        .collect()
}

/// Counts the rows of a file (blocking).
pub fn count_rows(path: &Path, format: Format) -> Result<u64, String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    match format {
        Format::Csv => {
            let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(file);
            let mut record = csv::ByteRecord::new();
            let mut n = 0;
            while reader.read_byte_record(&mut record).map_err(|e| e.to_string())? {
                n += 1;
            }
            Ok(n)
        }
        Format::Jsonl => {
            let mut reader = BufReader::with_capacity(1 << 16, file);
            let (mut n, mut line) = (0, Vec::new());
            while reader.read_until(b'\n', &mut line).map_err(|e| e.to_string())? > 0 {
                if !line.trim_ascii().is_empty() {
                    n += 1;
                }
                line.clear();
            }
            Ok(n)
        }
    }
}

/// Reads the rows of `path` from row `skip` on, calling `each` with chunks of
/// up to `chunk` rows; stops early when `each` returns false (blocking).
pub fn read_rows(
    path: &Path,
    format: Format,
    columns: Columns,
    skip: u64,
    chunk: usize,
    each: impl FnMut(Vec<Row>) -> bool,
) -> Result<(), String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    read_rows_from(BufReader::with_capacity(1 << 16, file), format, columns, skip, chunk, each)
}

/// [`read_rows`] over any reader (the fuzz targets feed it bytes).
pub fn read_rows_from(
    reader: impl BufRead,
    format: Format,
    columns: Columns,
    skip: u64,
    chunk: usize,
    mut each: impl FnMut(Vec<Row>) -> bool,
) -> Result<(), String> {
    let mut rows = Vec::with_capacity(chunk);
    let mut push = |row: Row| {
        if row.index >= skip {
            rows.push(row);
        }
        if rows.len() >= chunk {
            return each(std::mem::replace(&mut rows, Vec::with_capacity(chunk)));
        }
        true
    };
    let go_on = match format {
        Format::Csv => csv_rows(reader, columns, &mut push)?,
        Format::Jsonl => jsonl_rows(reader, columns, &mut push)?,
    };
    if go_on && !rows.is_empty() {
        each(rows);
    }
    Ok(())
}

fn csv_rows(reader: impl Read, columns: Columns, push: &mut impl FnMut(Row) -> bool) -> Result<bool, String> {
    let mut reader = csv::ReaderBuilder::new().trim(csv::Trim::All).flexible(true).from_reader(reader);
    let header = header_names(reader.byte_headers().map_err(|e| format!("the header cannot be read: {e}"))?)?;
    columns.check_header(&header)?;
    let mut record = csv::ByteRecord::new();
    let mut index = 0;
    loop {
        let line = reader.position().line();
        let fields = match reader.read_byte_record(&mut record) {
            Ok(false) => return Ok(true),
            Ok(true) => csv_fields(&header, &record, columns),
            Err(e) => Err(e.to_string()),
        };
        let line = record.position().map_or(line, |p| p.line());
        if !push(Row { index, line, fields }) {
            return Ok(false);
        }
        index += 1;
    }
}

fn csv_fields(header: &[String], record: &csv::ByteRecord, columns: Columns) -> Result<Map<String, Value>, String> {
    if record.len() != header.len() {
        return Err(format!("the row has {} fields, the header {}", record.len(), header.len()));
    }
    let mut object = Map::new();
    for (name, raw) in header.iter().zip(record.iter()) {
        let text = std::str::from_utf8(raw).map_err(|_| format!("{name} is not valid UTF-8"))?;
        if text.is_empty() {
            continue;
        }
        let value = if columns.json.contains(&name.as_str()) {
            serde_json::from_str(text).map_err(|e| format!("{name} is not JSON: {e}"))?
        } else {
            Value::String(text.to_string())
        };
        object.insert(name.clone(), value);
    }
    Ok(object)
}

fn jsonl_rows(mut reader: impl BufRead, columns: Columns, push: &mut impl FnMut(Row) -> bool) -> Result<bool, String> {
    let (mut index, mut line_no, mut line) = (0, 0, Vec::new());
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).map_err(|e| e.to_string())? == 0 {
            return Ok(true);
        }
        line_no += 1;
        if line.trim_ascii().is_empty() {
            continue;
        }
        let fields = match std::str::from_utf8(&line) {
            Err(_) => Err("the line is not valid UTF-8".to_string()),
            Ok(text) => match serde_json::from_str::<Value>(text) {
                Ok(Value::Object(object)) => columns.check_object(&object).map(|()| object),
                Ok(_) => Err("the line is not a JSON object".to_string()),
                Err(e) => Err(format!("the line is not JSON: {e}")),
            },
        };
        if !push(Row { index, line: line_no, fields }) {
            return Ok(false);
        }
        index += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COLUMNS: Columns =
        Columns { allowed: &["email", "username", "meta"], required: &[&["username"]], json: &["meta"] };

    fn rows_of(text: &[u8], format: Format, skip: u64) -> Result<Vec<Row>, String> {
        let path = std::env::temp_dir().join(format!("userstream-rows-{}", uuid::Uuid::now_v7().simple()));
        std::fs::write(&path, text).expect("write");
        let mut all = Vec::new();
        let result = read_rows(&path, format, COLUMNS, skip, 2, |chunk| {
            all.extend(chunk);
            true
        });
        let _ = std::fs::remove_file(&path);
        result.map(|()| all)
    }

    #[test]
    fn csv_rows_are_numbered_and_bad_rows_are_row_errors() {
        let text = b"username,email,meta\nann,a@x.io,\"{\"\"k\"\":1}\"\nbob,b@\xff.io,\ncid\ndan,d@x.io,";
        let rows = rows_of(text, Format::Csv, 0).expect("read");
        assert_eq!(rows.len(), 4);
        assert_eq!((rows[0].index, rows[0].line), (0, 2));
        assert_eq!(rows[0].fields.as_ref().expect("read")["meta"]["k"], 1);
        assert!(rows[1].fields.as_ref().expect_err("a row error").contains("UTF-8"));
        assert!(rows[2].fields.as_ref().expect_err("a row error").contains("1 fields"), "{:?}", rows[2].fields);
        assert_eq!((rows[3].index, rows[3].line), (3, 5));
        assert!(rows[3].fields.is_ok());
        let skipped = rows_of(text, Format::Csv, 2).expect("read");
        assert_eq!(skipped.iter().map(|r| r.index).collect::<Vec<_>>(), [2, 3]);
    }

    #[test]
    fn a_byte_order_mark_before_the_header_is_dropped() {
        let rows = rows_of("\u{feff}username,email\nann,a@x.io\n".as_bytes(), Format::Csv, 0).expect("read");
        assert_eq!(rows[0].fields.as_ref().expect("read")["username"], "ann");
    }

    #[test]
    fn a_header_with_unknown_or_missing_columns_refuses_the_file() {
        assert!(rows_of(b"username,phone\nann,1\n", Format::Csv, 0)
            .expect_err("a row error")
            .contains("unknown column"));
        assert!(rows_of(b"email\na@x.io\n", Format::Csv, 0).expect_err("a row error").contains("username"));
    }

    #[test]
    fn jsonl_rows_skip_blank_lines_and_report_a_truncated_last_line() {
        let text = b"{\"username\":\"ann\"}\n\n[1]\n{\"username\":\"bob\",\"x\":1}\n{\"username\":\"cid\"";
        let rows = rows_of(text, Format::Jsonl, 0).expect("read");
        assert_eq!(rows.iter().map(|r| r.line).collect::<Vec<_>>(), [1, 3, 4, 5]);
        assert!(rows[0].fields.is_ok());
        assert!(rows[1].fields.as_ref().expect_err("a row error").contains("not a JSON object"));
        assert!(rows[2].fields.as_ref().expect_err("a row error").contains("unknown field"));
        assert!(rows[3].fields.as_ref().expect_err("a row error").contains("not JSON"));
    }
}
