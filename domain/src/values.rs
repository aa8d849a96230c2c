//! Validated value types. Each `parse` either returns a normalised value or a
//! [`ValueError`] that names the rule that failed; once built, a value is
//! valid for its whole life.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Why a raw value was refused. The message is safe to show to API callers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("{field} must not be empty")]
    Empty { field: &'static str },
    #[error("{field} is longer than {max} characters")]
    TooLong { field: &'static str, max: usize },
    #[error("{field} is shorter than {min} characters")]
    TooShort { field: &'static str, min: usize },
    #[error("{field} is not a valid email address")]
    InvalidEmail { field: &'static str },
    #[error("{field} is not a valid phone number: {reason}")]
    InvalidPhone { field: &'static str, reason: &'static str },
    #[error("{field} may contain only letters, digits and . _ - + @")]
    InvalidUsername { field: &'static str },
    #[error("{field} must be a 24-character hexadecimal id")]
    InvalidId { field: &'static str },
    #[error("{field} must be one of male, female, other, unisex")]
    InvalidGender { field: &'static str },
    #[error("{field} contains control characters")]
    ControlCharacters { field: &'static str },
}

impl ValueError {
    /// The request field the error is about.
    pub fn field(&self) -> &'static str {
        match self {
            ValueError::Empty { field }
            | ValueError::TooLong { field, .. }
            | ValueError::TooShort { field, .. }
            | ValueError::InvalidEmail { field }
            | ValueError::InvalidPhone { field, .. }
            | ValueError::InvalidUsername { field }
            | ValueError::InvalidId { field }
            | ValueError::InvalidGender { field }
            | ValueError::ControlCharacters { field } => field,
        }
    }
}

/// A user id: 24 lower-case hex characters, like the seeds' Mongo ids.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserId(String);

impl UserId {
    pub fn parse(field: &'static str, raw: &str) -> Result<Self, ValueError> {
        let raw = raw.trim();
        if raw.len() == 24 && raw.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(UserId(raw.to_ascii_lowercase()))
        } else {
            Err(ValueError::InvalidId { field })
        }
    }

    /// Builds an id from 12 bytes supplied by the caller (time prefix + randomness).
    pub fn from_bytes(bytes: [u8; 12]) -> Self {
        UserId(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An email address, trimmed and lower-cased (uniqueness is case-insensitive).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Email(String);

impl Email {
    /// The address grammar of RFC 5322 / RFC 6531 (internationalised local
    /// parts and domains), as the `email_address` crate checks it, with what
    /// mail servers deliver to: no display name, no domain literal
    /// (`a@[10.0.0.1]`), a domain of at least two labels.
    pub fn parse(field: &'static str, raw: &str) -> Result<Self, ValueError> {
        let value = raw.trim().to_lowercase();
        if value.is_empty() {
            return Err(ValueError::Empty { field });
        }
        if value.len() > 254 {
            return Err(ValueError::TooLong { field, max: 254 });
        }
        let options = email_address::Options {
            minimum_sub_domains: 2,
            allow_domain_literal: false,
            allow_display_text: false,
            allow_long_local_parts: false,
        };
        let tld_ok = value.rsplit_once('.').is_some_and(|(_, tld)| tld.chars().count() >= 2);
        match email_address::EmailAddress::parse_with_options(&value, options) {
            Ok(_) if tld_ok => Ok(Email(value)),
            _ => Err(ValueError::InvalidEmail { field }),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A phone number: a country calling code and the national significant
/// number (digits only, Italian-style leading zeros kept), valid for its
/// country by libphonenumber's metadata (the `phonenumber` crate).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Phone {
    pub country_code: u16,
    pub number: String,
}

impl Phone {
    /// The country code used when a number arrives without one (Fynd's home market).
    pub const DEFAULT_COUNTRY_CODE: u16 = 91;

    /// Accepts `9876543210` (default country code), `+91 9876543210`,
    /// `+91-98765-43210` and `+919876543210`; spaces, dashes, dots and
    /// brackets are ignored, a national trunk prefix (`0…`) is dropped.
    pub fn parse(field: &'static str, raw: &str) -> Result<Self, ValueError> {
        Self::parse_with_code(field, raw, None)
    }

    /// Like [`Phone::parse`], with a country code given separately (the
    /// `country_code` field of update requests), which wins when the number
    /// itself has none.
    pub fn parse_with_code(field: &'static str, raw: &str, country_code: Option<&str>) -> Result<Self, ValueError> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err(ValueError::Empty { field });
        }
        let national = raw.strip_prefix('+').unwrap_or(raw);
        if !national.chars().all(|c| c.is_ascii_digit() || " -.()".contains(c)) {
            return Err(ValueError::InvalidPhone { field, reason: "contains a character that is not a digit" });
        }
        if national.chars().filter(char::is_ascii_digit).count() > 17 {
            return Err(ValueError::InvalidPhone { field, reason: "more than 15 digits with the country code" });
        }
        let international = if raw.starts_with('+') {
            raw.to_string()
        } else {
            let code = match country_code.map(str::trim) {
                Some(code) if !code.is_empty() => parse_code(field, code.trim_start_matches('+'))?,
                _ => Self::DEFAULT_COUNTRY_CODE,
            };
            format!("+{code} {raw}")
        };
        let parsed = phonenumber::parse(None, &international)
            .map_err(|_| ValueError::InvalidPhone { field, reason: "not a phone number of any country" })?;
        if !parsed.is_valid() {
            return Err(ValueError::InvalidPhone {
                field,
                reason: "not a number in use in its country (libphonenumber's metadata)",
            });
        }
        let national = parsed.national();
        let zeros = "0".repeat(usize::from(national.zeros()));
        Ok(Phone { country_code: parsed.code().value(), number: format!("{zeros}{}", national.value()) })
    }

    /// `+{country_code}{number}`: E.164, the form used for uniqueness and search.
    pub fn e164(&self) -> String {
        format!("+{}{}", self.country_code, self.number)
    }
}

fn parse_code(field: &'static str, raw: &str) -> Result<u16, ValueError> {
    match raw.parse::<u16>() {
        Ok(code) if (1..=999).contains(&code) && !raw.starts_with('0') => Ok(code),
        _ => Err(ValueError::InvalidPhone { field, reason: "country code must be 1 to 3 digits" }),
    }
}

/// A username: 3 to 64 of letters, digits and `. _ - + @`, compared case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Username(String);

impl Username {
    pub fn parse(field: &'static str, raw: &str) -> Result<Self, ValueError> {
        let value = raw.trim();
        if value.is_empty() {
            return Err(ValueError::Empty { field });
        }
        let len = value.chars().count();
        if len < 3 {
            return Err(ValueError::TooShort { field, min: 3 });
        }
        if len > 64 {
            return Err(ValueError::TooLong { field, max: 64 });
        }
        if value.chars().all(|c| c.is_alphanumeric() || "._-+@".contains(c)) {
            Ok(Username(value.to_string()))
        } else {
            Err(ValueError::InvalidUsername { field })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key under which uniqueness is enforced.
    pub fn key(&self) -> String {
        self.0.to_lowercase()
    }
}

/// A first or last name: at most 100 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Name(String);

impl Name {
    pub fn parse(field: &'static str, raw: &str) -> Result<Self, ValueError> {
        let value = raw.trim();
        if value.chars().count() > 100 {
            return Err(ValueError::TooLong { field, max: 100 });
        }
        if value.chars().any(char::is_control) {
            return Err(ValueError::ControlCharacters { field });
        }
        Ok(Name(value.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Gender as the Fynd API spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Gender {
    Male,
    Female,
    Other,
    Unisex,
}

impl Gender {
    pub fn parse(field: &'static str, raw: &str) -> Result<Self, ValueError> {
        match raw.trim().to_lowercase().as_str() {
            "male" => Ok(Gender::Male),
            "female" => Ok(Gender::Female),
            "other" => Ok(Gender::Other),
            "unisex" => Ok(Gender::Unisex),
            _ => Err(ValueError::InvalidGender { field }),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Gender::Male => "male",
            Gender::Female => "female",
            Gender::Other => "other",
            Gender::Unisex => "unisex",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_is_lowercased_and_trimmed() {
        assert_eq!(Email::parse("email", " A.B@Example.COM ").map(|e| e.0), Ok("a.b@example.com".into()));
    }

    #[test]
    fn email_without_at_or_tld_is_refused() {
        for bad in ["plainaddress", "a@b", "a@.com", "a@b..com", ".a@b.com", "a b@c.com", "@b.com"] {
            assert_eq!(Email::parse("email", bad), Err(ValueError::InvalidEmail { field: "email" }), "{bad}");
        }
    }

    #[test]
    fn phone_without_country_code_gets_the_default() {
        let p = Phone::parse("phone_number", "98765 43210").expect("valid");
        assert_eq!((p.country_code, p.number.as_str()), (91, "9876543210"));
    }

    #[test]
    fn phone_with_plus_splits_the_country_code() {
        assert_eq!(Phone::parse("p", "+919876543210").map(|p| p.e164()), Ok("+919876543210".into()));
        assert_eq!(Phone::parse("p", "+14155550100").map(|p| p.country_code), Ok(1));
        assert_eq!(Phone::parse("p", "+353 861234567").map(|p| p.country_code), Ok(353));
        assert_eq!(Phone::parse("p", "+353861234567").map(|p| p.country_code), Ok(353));
        assert_eq!(Phone::parse("p", "+12015550123").map(|p| p.e164()), Ok("+12015550123".into()));
    }

    #[test]
    fn internationalised_addresses_pass_and_what_no_server_delivers_to_fails() {
        for good in ["jörg@bücher.de", "用户@例子.广告", "a+tag@sub.example.co.in", "o'brien@example.ie"] {
            assert!(Email::parse("email", good).is_ok(), "{good}");
        }
        for bad in ["a@[10.0.0.1]", "Ada <ada@example.com>", "a@b.c", "a@-b.com", "a\u{0}b@example.com"] {
            assert!(Email::parse("email", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn numbers_not_in_use_in_their_country_are_refused() {
        for bad in ["12345", "0000000000", "+91 12345", "+1 5555550123", "+44 20"] {
            assert!(Phone::parse("p", bad).is_err(), "{bad}");
        }
        // Stored as E.164, whatever the spelling.
        for (raw, e164) in [
            ("+91 98765-43210", "+919876543210"),
            ("098765 43210", "+919876543210"),
            ("+39 06 1234 5678", "+390612345678"),
            ("+44 (0)20 7946 0958", "+442079460958"),
        ] {
            assert_eq!(Phone::parse("p", raw).map(|p| p.e164()), Ok(e164.to_string()), "{raw}");
        }
    }

    #[test]
    fn phone_with_letters_or_too_many_digits_is_refused() {
        assert!(Phone::parse("p", "98765abc10").is_err());
        assert!(Phone::parse("p", "+91 1234567890123456").is_err());
        assert!(Phone::parse("p", "123").is_err());
        assert!(Phone::parse("p", "+0 12345678").is_err());
    }

    #[test]
    fn username_rules() {
        assert!(Username::parse("username", "raaz_crzy_gmail_com_63747").is_ok());
        assert_eq!(Username::parse("username", "ab"), Err(ValueError::TooShort { field: "username", min: 3 }));
        assert_eq!(Username::parse("username", "a b c"), Err(ValueError::InvalidUsername { field: "username" }));
        assert_eq!(Username::parse("username", "Alice").map(|u| u.key()), Ok("alice".into()));
    }

    #[test]
    fn user_id_is_24_hex() {
        assert!(UserId::parse("user_id", "61f02c3dcc701256044ed6c0").is_ok());
        assert!(UserId::parse("user_id", "61f02c3dcc701256044ed6c").is_err());
        assert!(UserId::parse("user_id", "zzf02c3dcc701256044ed6c0").is_err());
    }

    #[test]
    fn names_and_gender() {
        assert!(Name::parse("first_name", &"x".repeat(101)).is_err());
        assert!(Name::parse("first_name", "a\u{0}b").is_err());
        assert_eq!(Gender::parse("gender", "Female"), Ok(Gender::Female));
        assert!(Gender::parse("gender", "robot").is_err());
    }
}
