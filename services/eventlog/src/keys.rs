//! Storage for API credentials and the server's shared signing secret:
//! rows only. Hashing, verification and token formats belong to the API.

use crate::{format_time, Db, Migration};
use sqlx::Row;
use time::OffsetDateTime;

const DDL: &str = "
    CREATE TABLE IF NOT EXISTS api_keys (
        key_id TEXT PRIMARY KEY,
        company_id TEXT NOT NULL,
        application_id TEXT,
        secret_hash TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS server_secrets (
        name TEXT PRIMARY KEY,
        secret TEXT NOT NULL
    );";

const MIGRATIONS: &[Migration] = &[Migration { version: 1, sqlite: DDL, postgres: DDL }];

/// One stored key: its tenants and the hash of its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    pub key_id: String,
    pub company_id: String,
    pub application_id: Option<String>,
    pub secret_hash: String,
}

#[derive(Clone)]
pub struct KeyStore {
    db: Db,
}

impl KeyStore {
    pub async fn open(db: Db) -> Result<KeyStore, sqlx::Error> {
        db.migrate("access", MIGRATIONS).await?;
        Ok(KeyStore { db })
    }

    /// The secret stored under `name`; `candidate` becomes it if there is
    /// none yet. Every process on the database gets the same answer.
    pub async fn shared_secret(&self, name: &str, candidate: &str) -> Result<String, sqlx::Error> {
        {
            let _turn = self.db.write_turn().await;
            sqlx::query(self.db.pick(
                "INSERT INTO server_secrets (name, secret) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
                "INSERT INTO server_secrets (name, secret) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
            ))
            .bind(name)
            .bind(candidate)
            .execute(&self.db.pool)
            .await?;
        }
        let row = sqlx::query(self.db.pick(
            "SELECT secret FROM server_secrets WHERE name = ?",
            "SELECT secret FROM server_secrets WHERE name = $1",
        ))
        .bind(name)
        .fetch_one(&self.db.pool)
        .await?;
        row.try_get("secret")
    }

    pub async fn insert(&self, key: &StoredKey) -> Result<(), sqlx::Error> {
        let _turn = self.db.write_turn().await;
        sqlx::query(self.db.pick(
            "INSERT INTO api_keys (key_id, company_id, application_id, secret_hash, created_at) VALUES (?, ?, ?, ?, ?)",
            "INSERT INTO api_keys (key_id, company_id, application_id, secret_hash, created_at) VALUES ($1, $2, $3, $4, $5)",
        ))
        .bind(&key.key_id)
        .bind(&key.company_id)
        .bind(&key.application_id)
        .bind(&key.secret_hash)
        .bind(format_time(OffsetDateTime::now_utc()))
        .execute(&self.db.pool)
        .await?;
        Ok(())
    }

    pub async fn find(&self, key_id: &str) -> Result<Option<StoredKey>, sqlx::Error> {
        let row = sqlx::query(self.db.pick(
            "SELECT company_id, application_id, secret_hash FROM api_keys WHERE key_id = ?",
            "SELECT company_id, application_id, secret_hash FROM api_keys WHERE key_id = $1",
        ))
        .bind(key_id)
        .fetch_optional(&self.db.pool)
        .await?;
        row.map(|r| {
            Ok(StoredKey {
                key_id: key_id.to_string(),
                company_id: r.try_get("company_id")?,
                application_id: r.try_get("application_id")?,
                secret_hash: r.try_get("secret_hash")?,
            })
        })
        .transpose()
    }

    pub async fn count(&self) -> Result<i64, sqlx::Error> {
        sqlx::query("SELECT COUNT(*) AS n FROM api_keys").fetch_one(&self.db.pool).await?.try_get("n")
    }
}
