//! Encryption at rest of attribute values whose definition says `encrypted`:
//! AES-256-GCM with a random 96-bit nonce per value. A sealed value is
//! `{"enc": "v1:<base64(nonce ‖ ciphertext)>"}`; that is what the log, the
//! read models and every copy of them hold. The key comes from
//! `USERSTREAM_ATTRIBUTE_KEY` (32 bytes, base64); without it a key is made
//! once and kept in the database, which protects nothing against someone
//! holding the database: set the variable in production.
//!
//! The same master key wraps the log's per-user data keys (through a key
//! derived from it for that purpose): see `userstream_eventlog::shred`.
//!
//! The database also keeps a check value sealed with the key of the first
//! start. A server started with another key refuses to start, naming the
//! mismatch, instead of answering 500 (or worse) on every encrypted read.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};
use sha2::Sha256;
use userstream_eventlog::keys::KeyStore;

pub struct Sealer {
    cipher: Aes256Gcm,
    /// Wraps the per-user data keys of the log (crypto-shredding): derived
    /// from the same master key, for that one purpose.
    wrapping: [u8; 32],
}

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("the attribute key must be 32 bytes, base64-encoded")]
    BadKey,
    #[error("a sealed value could not be opened (wrong key or damaged data)")]
    Open,
    #[error(
        "the attribute key is not the one this database's encrypted attributes were sealed with \
         (USERSTREAM_ATTRIBUTE_KEY / --attribute-key differs from the first start's, or was set or unset since)"
    )]
    WrongKey,
    #[error("reading the attribute key check: {0}")]
    Storage(#[from] sqlx::Error),
}

/// The plaintext of the check value kept beside the data.
const CHECK_PLAINTEXT: &str = "userstream attribute key check v1";

/// The sealer the service uses: the configured key, or one kept in the
/// database; fails with [`CryptoError::WrongKey`] when the key does not open
/// the check value sealed at the first start.
pub async fn sealer(configured: Option<&SecretString>, keys: &KeyStore) -> Result<Sealer, CryptoError> {
    let sealer = match configured {
        Some(key) => Sealer::from_base64(key.expose_secret())?,
        None => {
            tracing::warn!("USERSTREAM_ATTRIBUTE_KEY is not set: encrypted attributes use a key kept in the database");
            let stored = SecretString::from(keys.shared_secret("attribute-key", &Sealer::new_key()).await?);
            Sealer::from_base64(stored.expose_secret())?
        }
    };
    let candidate = sealer.seal(&json!(CHECK_PLAINTEXT)).to_string();
    let check: Value = serde_json::from_str(&keys.shared_secret("attribute-key-check", &candidate).await?)
        .map_err(|_| CryptoError::WrongKey)?;
    match sealer.open(&check) {
        Ok(v) if v == json!(CHECK_PLAINTEXT) => Ok(sealer),
        _ => Err(CryptoError::WrongKey),
    }
}

impl Sealer {
    /// From a base64 key of 32 bytes.
    pub fn from_base64(key: &str) -> Result<Sealer, CryptoError> {
        let bytes = B64.decode(key.trim()).map_err(|_| CryptoError::BadKey)?;
        let cipher = Aes256Gcm::new_from_slice(&bytes).map_err(|_| CryptoError::BadKey)?;
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&bytes).map_err(|_| CryptoError::BadKey)?;
        mac.update(b"userstream data-key wrapping v1");
        Ok(Sealer { cipher, wrapping: mac.finalize().into_bytes().into() })
    }

    /// The key that wraps the log's per-user data keys.
    pub fn wrapping_key(&self) -> &[u8; 32] {
        &self.wrapping
    }

    /// A fresh random key, base64.
    pub fn new_key() -> String {
        B64.encode(rand::random::<[u8; 32]>())
    }

    pub fn seal(&self, value: &Value) -> Value {
        let nonce_bytes: [u8; 12] = rand::random();
        let plaintext = value.to_string();
        // Encrypting a byte string of any length with a fresh nonce cannot fail.
        let ciphertext = self.cipher.encrypt(Nonce::from_slice(&nonce_bytes), plaintext.as_bytes()).unwrap_or_default();
        let mut sealed = nonce_bytes.to_vec();
        sealed.extend(ciphertext);
        json!({ "enc": format!("v1:{}", B64.encode(sealed)) })
    }

    /// The plaintext of a sealed value; other values are returned as they are.
    pub fn open(&self, value: &Value) -> Result<Value, CryptoError> {
        let Some(text) = value.get("enc").and_then(Value::as_str) else {
            return Ok(value.clone());
        };
        let raw = B64.decode(text.strip_prefix("v1:").ok_or(CryptoError::Open)?).map_err(|_| CryptoError::Open)?;
        if raw.len() < 12 {
            return Err(CryptoError::Open);
        }
        let (nonce, ciphertext) = raw.split_at(12);
        let plaintext = self.cipher.decrypt(Nonce::from_slice(nonce), ciphertext).map_err(|_| CryptoError::Open)?;
        serde_json::from_slice(&plaintext).map_err(|_| CryptoError::Open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_with_the_key_and_hide_the_plaintext() {
        let sealer = Sealer::from_base64(&Sealer::new_key()).expect("key");
        let sealed = sealer.seal(&json!("4111-1111"));
        assert!(!sealed.to_string().contains("4111"));
        assert_eq!(sealer.open(&sealed).expect("open"), json!("4111-1111"));
        let other = Sealer::from_base64(&Sealer::new_key()).expect("key");
        assert!(other.open(&sealed).is_err(), "another key cannot open it");
        assert_ne!(sealer.seal(&json!(1)), sealer.seal(&json!(1)), "a fresh nonce per value");
    }
}
