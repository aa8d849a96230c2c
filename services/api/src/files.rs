//! The files directory (`--files-dir` / `USERSTREAM_FILES_DIR`): the only
//! place a `file://` URL may name. A URL that leaves it, lexically (`..`) or
//! through a symlink, is refused with a 400 before a byte of the file is
//! read, so a request cannot make the service read its own database, keys
//! or anything else on the host.

use crate::http::ApiError;
use std::path::{Component, Path, PathBuf};

#[derive(Debug, Clone)]
pub struct FilesDir {
    /// Canonical (symlinks resolved), so containment is a prefix check.
    root: PathBuf,
}

impl FilesDir {
    /// Opens `path`, creating it if missing.
    pub fn open(path: &Path) -> std::io::Result<FilesDir> {
        std::fs::create_dir_all(path)?;
        Ok(FilesDir { root: std::fs::canonicalize(path)? })
    }

    /// The default directory for a database URL: `files/` beside a SQLite
    /// database file, `./files` otherwise (PostgreSQL, in-memory SQLite).
    pub fn default_for(database_url: &str) -> PathBuf {
        let file = userstream_eventlog::sqlite_file(database_url);
        match file.as_deref().and_then(|f| Path::new(f).parent()) {
            Some(parent) if !parent.as_os_str().is_empty() => parent.join("files"),
            _ => PathBuf::from("files"),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file `file://{path}` names: an absolute path inside the
    /// directory, or a path relative to it. Refused (400) when it is
    /// outside, lexically or once symlinks are followed, or is no file.
    pub async fn resolve(&self, path: &str) -> Result<PathBuf, ApiError> {
        let outside = || ApiError::invalid(format!("file_url must name a file inside the files directory {path:?}"));
        let requested = Path::new(path);
        let joined = if requested.is_absolute() { requested.to_path_buf() } else { self.root.join(requested) };
        if !lexically_normal(&joined).starts_with(&self.root) {
            return Err(outside());
        }
        let missing = || ApiError::invalid(format!("file_url names no file in the files directory: {path:?}"));
        let real = tokio::fs::canonicalize(&joined).await.map_err(|_| missing())?;
        if !real.starts_with(&self.root) {
            return Err(outside());
        }
        match tokio::fs::metadata(&real).await {
            Ok(meta) if meta.is_file() => Ok(real),
            // A directory, a FIFO (whose read would wait for a writer) or a device.
            Ok(_) => Err(ApiError::invalid(format!(
                "file_url must name a regular file, not a directory, FIFO or device: {path:?}"
            ))),
            Err(_) => Err(missing()),
        }
    }
}

/// `path` with `.` dropped and `..` applied, without touching the file system.
fn lexically_normal(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_sits_beside_a_sqlite_file_and_in_the_working_directory_otherwise() {
        assert_eq!(FilesDir::default_for("sqlite:///var/lib/us/users.db"), PathBuf::from("/var/lib/us/files"));
        assert_eq!(FilesDir::default_for("sqlite://data/users.db?mode=rwc"), PathBuf::from("data/files"));
        assert_eq!(FilesDir::default_for("sqlite://userstream.db"), PathBuf::from("files"));
        assert_eq!(FilesDir::default_for("sqlite::memory:"), PathBuf::from("files"));
        assert_eq!(FilesDir::default_for("postgres://u@h/db"), PathBuf::from("files"));
    }

    #[tokio::test]
    async fn a_path_outside_the_directory_is_refused_lexically_and_through_symlinks() {
        let base = std::env::temp_dir().join(format!("userstream-files-{}", uuid::Uuid::now_v7().simple()));
        let files = FilesDir::open(&base.join("files")).expect("open");
        std::fs::write(files.root().join("in.csv"), "a").expect("write");
        std::fs::write(base.join("secret.txt"), "s").expect("write");
        std::os::unix::fs::symlink(base.join("secret.txt"), files.root().join("link.csv")).expect("symlink");
        assert!(files.resolve("in.csv").await.is_ok());
        assert!(files.resolve(&files.root().join("in.csv").display().to_string()).await.is_ok());
        // Not files: a directory, a FIFO (a read would block), a device.
        std::fs::create_dir(files.root().join("sub")).expect("dir");
        let fifo = std::process::Command::new("mkfifo").arg(files.root().join("pipe.csv")).status().expect("mkfifo");
        assert!(fifo.success());
        std::os::unix::fs::symlink("/dev/zero", files.root().join("zero.csv")).expect("symlink");
        for bad in
            ["../secret.txt", "link.csv", "/etc/passwd", "missing.csv", ".", "sub", "pipe.csv", "zero.csv", "/dev/zero"]
        {
            let err = files.resolve(bad).await.expect_err(bad);
            assert_eq!(err.status, axum::http::StatusCode::BAD_REQUEST, "{bad}");
        }
        let _ = std::fs::remove_dir_all(&base);
    }
}
