//! Encryption at rest of attribute values whose definition says `encrypted`:
//! AES-256-GCM with a random 96-bit nonce per value. A sealed value is
//! `{"enc": "v1:<base64(nonce ‖ ciphertext)>"}`; that is what the log, the
//! read models and every copy of them hold. The key comes from
//! `USERSTREAM_ATTRIBUTE_KEY` (32 bytes, base64); without it a key is made
//! once and kept in the database, which protects nothing against someone
//! holding the database: set the variable in production.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Value};

pub struct Sealer {
    cipher: Aes256Gcm,
}

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("the attribute key must be 32 bytes, base64-encoded")]
    BadKey,
    #[error("a sealed value could not be opened (wrong key or damaged data)")]
    Open,
}

impl Sealer {
    /// From a base64 key of 32 bytes.
    pub fn from_base64(key: &str) -> Result<Sealer, CryptoError> {
        let bytes = B64.decode(key.trim()).map_err(|_| CryptoError::BadKey)?;
        let cipher = Aes256Gcm::new_from_slice(&bytes).map_err(|_| CryptoError::BadKey)?;
        Ok(Sealer { cipher })
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
