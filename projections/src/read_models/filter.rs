//! The JSON user filter of `GET …/customers/list?q=`: a safe subset of the
//! Mongo-like form in the Fynd documents, compiled to parameterised SQL.
//!
//! Supported: `$and`, `$or` (arrays of filters), several keys in one object
//! (all must hold), `field: value` and `{"$eq": value}` (equality),
//! `{"$in": [values]}`, and `{"$regex": pattern, "$options": "i"}` where the
//! pattern is a literal with optional `^`/`$` anchors (metacharacters may be
//! escaped with `\`). Fields: `emails.email` (`email`), `phone_numbers.phone`
//! (`phoneNumbers.phone`, `phone`), `username`, `first_name`, `last_name`,
//! `gender`, `external_id`, `rr_id`, `_id` (`user_id`). Anything else is
//! refused with the reason. Bounds: depth 4, 32 conditions, 50 values per
//! `$in`, 100 characters per pattern.

use serde_json::Value;
use userstream_domain::{Email, Phone};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Email,
    Phone,
    Username,
    FirstName,
    LastName,
    Gender,
    ExternalId,
    RrId,
    UserId,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anchor {
    Exact,
    Prefix,
    Suffix,
    Contains,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    All(Vec<Filter>),
    Any(Vec<Filter>),
    In(Field, Vec<String>),
    Like { field: Field, text: String, anchor: Anchor, case_insensitive: bool },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported filter: {0}")]
pub struct FilterError(pub String);

const MAX_DEPTH: usize = 4;
const MAX_CONDITIONS: usize = 32;
const MAX_IN: usize = 50;
const MAX_PATTERN: usize = 100;

impl Filter {
    /// Parses the JSON text of `q`.
    pub fn parse_json(text: &str) -> Result<Filter, FilterError> {
        let value: Value = serde_json::from_str(text).map_err(|e| FilterError(format!("q is not valid JSON: {e}")))?;
        let mut count = 0;
        parse_object(&value, 0, &mut count)
    }

    /// The plain `q` of the Fynd API: one email or phone number.
    pub fn email_or_phone(q: &str) -> Filter {
        Filter::Any(vec![
            Filter::In(Field::Email, vec![normalise(Field::Email, q)]),
            Filter::In(Field::Phone, vec![normalise(Field::Phone, q)]),
        ])
    }

    /// Appends this filter as a SQL condition on the users table aliased `u`.
    pub fn to_sql(&self, out: &mut SqlBuilder) {
        match self {
            Filter::All(parts) | Filter::Any(parts) if parts.is_empty() => out.sql.push_str("1 = 1"),
            Filter::All(parts) => out.join(parts, " AND "),
            Filter::Any(parts) => out.join(parts, " OR "),
            Filter::In(field, values) => {
                let (open, column, close) = column(*field);
                out.sql.push_str(open);
                out.sql.push_str(column);
                out.sql.push_str(" IN (");
                for (i, v) in values.iter().enumerate() {
                    if i > 0 {
                        out.sql.push_str(", ");
                    }
                    out.bind(v.clone());
                }
                out.sql.push(')');
                out.sql.push_str(close);
            }
            Filter::Like { field, text, anchor, case_insensitive } => {
                let (open, column, close) = column(*field);
                let escaped = text.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
                let mut pattern = match anchor {
                    Anchor::Exact => escaped,
                    Anchor::Prefix => format!("{escaped}%"),
                    Anchor::Suffix => format!("%{escaped}"),
                    Anchor::Contains => format!("%{escaped}%"),
                };
                out.sql.push_str(open);
                if *case_insensitive {
                    pattern = pattern.to_lowercase();
                    out.sql.push_str("LOWER(");
                    out.sql.push_str(column);
                    out.sql.push(')');
                } else {
                    out.sql.push_str(column);
                }
                out.sql.push_str(" LIKE ");
                out.bind(pattern);
                out.sql.push_str(" ESCAPE '\\'");
                out.sql.push_str(close);
            }
        }
    }

    /// When the filter only matches users found by index lookups (an id, an
    /// email, a phone number, a username or an external id, exactly),
    /// appends a query of those users' ids in `application_id` and answers
    /// true. The caller then narrows to them first: SQLite keeps no
    /// statistics here, so it would rather walk the tenant's list index in
    /// order and test every user (1.8 s at 1,000,000 users for one
    /// username) than look the few up and sort them.
    pub fn candidates(&self, application_id: &str, out: &mut SqlBuilder) -> bool {
        let Some(lookups) = self.lookups() else { return false };
        for (i, (field, values)) in lookups.into_iter().enumerate() {
            if i > 0 {
                out.sql.push_str(" UNION ALL ");
            }
            out.sql.push_str(match field {
                Field::Email => {
                    "SELECT c.user_id FROM user_contacts_v1 c WHERE c.kind = 'email' AND c.application_id = "
                }
                Field::Phone => {
                    "SELECT c.user_id FROM user_contacts_v1 c WHERE c.kind = 'phone' AND c.application_id = "
                }
                _ => "SELECT l.user_id FROM users_v1 l WHERE l.application_id = ",
            });
            out.bind(application_id.to_string());
            out.sql.push_str(match field {
                Field::Email | Field::Phone => " AND c.value IN (",
                Field::Username => " AND l.username_key IN (",
                Field::ExternalId => " AND l.external_id IN (",
                _ => " AND l.user_id IN (",
            });
            for (j, v) in values.iter().enumerate() {
                if j > 0 {
                    out.sql.push_str(", ");
                }
                out.bind(v.clone());
            }
            out.sql.push(')');
        }
        true
    }

    /// The index lookups whose union holds every user this filter matches.
    fn lookups(&self) -> Option<Vec<(Field, &[String])>> {
        match self {
            Filter::In(
                field @ (Field::Email | Field::Phone | Field::Username | Field::ExternalId | Field::UserId),
                values,
            ) => Some(vec![(*field, values.as_slice())]),
            Filter::In(..) | Filter::Like { .. } => None,
            // Every part must hold: the lookups of any one part will do.
            Filter::All(parts) => parts.iter().find_map(Filter::lookups),
            // Any part may hold: every part needs its lookups.
            Filter::Any(parts) if !parts.is_empty() => {
                parts.iter().map(Filter::lookups).collect::<Option<Vec<_>>>().map(|l| l.concat())
            }
            Filter::Any(_) => None,
        }
    }
}

/// SQL text with `$n` placeholders and their string values.
#[derive(Debug, Default)]
pub struct SqlBuilder {
    pub sql: String,
    pub binds: Vec<String>,
    /// Placeholders already used before this builder's first bind.
    pub offset: usize,
}

impl SqlBuilder {
    pub fn starting_after(offset: usize) -> Self {
        SqlBuilder { offset, ..Default::default() }
    }

    pub fn bind(&mut self, value: String) {
        self.binds.push(value);
        self.sql.push_str(&format!("${}", self.offset + self.binds.len()));
    }

    fn join(&mut self, parts: &[Filter], sep: &str) {
        self.sql.push('(');
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                self.sql.push_str(sep);
            }
            part.to_sql(self);
        }
        self.sql.push(')');
    }
}

fn column(field: Field) -> (&'static str, &'static str, &'static str) {
    const EMAIL: &str = "EXISTS (SELECT 1 FROM user_contacts_v1 c WHERE c.application_id = u.application_id AND c.user_id = u.user_id AND c.kind = 'email' AND ";
    const PHONE: &str = "EXISTS (SELECT 1 FROM user_contacts_v1 c WHERE c.application_id = u.application_id AND c.user_id = u.user_id AND c.kind = 'phone' AND ";
    match field {
        Field::Email => (EMAIL, "c.value", ")"),
        Field::Phone => (PHONE, "c.value", ")"),
        Field::Username => ("", "u.username_key", ""),
        Field::FirstName => ("", "u.first_name", ""),
        Field::LastName => ("", "u.last_name", ""),
        Field::Gender => ("", "u.gender", ""),
        Field::ExternalId => ("", "u.external_id", ""),
        Field::RrId => ("", "u.rr_id", ""),
        Field::UserId => ("", "u.user_id", ""),
    }
}

fn field_named(name: &str) -> Result<Field, FilterError> {
    Ok(match name {
        "emails.email" | "email" => Field::Email,
        "phone_numbers.phone" | "phoneNumbers.phone" | "phone" => Field::Phone,
        "username" => Field::Username,
        "first_name" | "firstName" => Field::FirstName,
        "last_name" | "lastName" => Field::LastName,
        "gender" => Field::Gender,
        "external_id" | "externalId" => Field::ExternalId,
        "rr_id" => Field::RrId,
        "_id" | "user_id" | "id" => Field::UserId,
        other => return Err(FilterError(format!("field {other:?} cannot be filtered on"))),
    })
}

/// The stored form of a value, so equality matches what the read model holds.
pub(crate) fn normalise(field: Field, raw: &str) -> String {
    match field {
        Field::Email => {
            Email::parse("q", raw).map(|e| e.as_str().to_string()).unwrap_or_else(|_| raw.trim().to_lowercase())
        }
        Field::Phone => Phone::parse("q", raw).map(|p| p.e164()).unwrap_or_else(|_| raw.trim().to_string()),
        Field::UserId | Field::Username => raw.trim().to_lowercase(),
        _ => raw.to_string(),
    }
}

fn scalar(field: Field, v: &Value) -> Result<String, FilterError> {
    match v {
        Value::String(s) => Ok(normalise(field, s)),
        Value::Number(n) => Ok(normalise(field, &n.to_string())),
        Value::Bool(b) => Ok(b.to_string()),
        _ => Err(FilterError("values must be strings, numbers or booleans".into())),
    }
}

fn parse_object(v: &Value, depth: usize, count: &mut usize) -> Result<Filter, FilterError> {
    if depth > MAX_DEPTH {
        return Err(FilterError(format!("nested deeper than {MAX_DEPTH} levels")));
    }
    let Value::Object(map) = v else {
        return Err(FilterError("a filter must be a JSON object".into()));
    };
    let mut parts = Vec::with_capacity(map.len());
    for (key, value) in map {
        parts.push(match key.as_str() {
            "$or" | "$and" => {
                let Value::Array(items) = value else {
                    return Err(FilterError(format!("{key} takes an array")));
                };
                let items = items.iter().map(|i| parse_object(i, depth + 1, count)).collect::<Result<Vec<_>, _>>()?;
                if key == "$or" {
                    Filter::Any(items)
                } else {
                    Filter::All(items)
                }
            }
            op if op.starts_with('$') => {
                return Err(FilterError(format!("operator {op} is not supported at this level")))
            }
            name => {
                *count += 1;
                if *count > MAX_CONDITIONS {
                    return Err(FilterError(format!("more than {MAX_CONDITIONS} conditions")));
                }
                parse_condition(field_named(name)?, value)?
            }
        });
    }
    Ok(if parts.len() == 1 { parts.remove(0) } else { Filter::All(parts) })
}

fn parse_condition(field: Field, v: &Value) -> Result<Filter, FilterError> {
    let Value::Object(ops) = v else {
        return Ok(Filter::In(field, vec![scalar(field, v)?]));
    };
    let case_insensitive = match ops.get("$options") {
        None => false,
        Some(Value::String(o)) if o.is_empty() || o == "i" => o == "i",
        Some(_) => return Err(FilterError("$options supports only \"i\"".into())),
    };
    let mut parts = Vec::new();
    for (op, arg) in ops {
        parts.push(match op.as_str() {
            "$eq" => Filter::In(field, vec![scalar(field, arg)?]),
            "$in" => {
                let Value::Array(items) = arg else {
                    return Err(FilterError("$in takes an array".into()));
                };
                if items.is_empty() || items.len() > MAX_IN {
                    return Err(FilterError(format!("$in takes 1 to {MAX_IN} values")));
                }
                Filter::In(field, items.iter().map(|i| scalar(field, i)).collect::<Result<_, _>>()?)
            }
            "$regex" => {
                let Value::String(pattern) = arg else {
                    return Err(FilterError("$regex takes a string".into()));
                };
                literal_regex(field, pattern, case_insensitive)?
            }
            "$options" => continue,
            other => return Err(FilterError(format!("operator {other} is not supported (use $eq, $in, $regex)"))),
        });
    }
    match parts.len() {
        0 => Err(FilterError("empty condition".into())),
        1 => Ok(parts.remove(0)),
        _ => Ok(Filter::All(parts)),
    }
}

fn literal_regex(field: Field, pattern: &str, case_insensitive: bool) -> Result<Filter, FilterError> {
    if pattern.chars().count() > MAX_PATTERN {
        return Err(FilterError(format!("$regex longer than {MAX_PATTERN} characters")));
    }
    let (start, body) = match pattern.strip_prefix('^') {
        Some(rest) => (true, rest),
        None => (false, pattern),
    };
    let (end, body) = match body.strip_suffix('$').filter(|b| !b.ends_with('\\')) {
        Some(rest) => (true, rest),
        None => (false, body),
    };
    let mut text = String::with_capacity(body.len());
    let mut chars = body.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(e) if !e.is_alphanumeric() => text.push(e),
                _ => return Err(FilterError("$regex supports only escapes of punctuation (like \\.)".into())),
            },
            '.' | '*' | '+' | '?' | '(' | ')' | '[' | ']' | '{' | '}' | '|' | '^' | '$' => {
                return Err(FilterError(format!(
                    "$regex supports literal text with optional ^ and $ anchors; {c:?} must be escaped"
                )))
            }
            c => text.push(c),
        }
    }
    let anchor = match (start, end) {
        (true, true) => Anchor::Exact,
        (true, false) => Anchor::Prefix,
        (false, true) => Anchor::Suffix,
        (false, false) => Anchor::Contains,
    };
    Ok(Filter::Like { field, text, anchor, case_insensitive })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_example_parses() {
        let f = Filter::parse_json(r#"{"$or":[{"emails.email":"A@b.com"},{"phoneNumbers.phone":"9876543210"}]}"#)
            .expect("supported");
        assert_eq!(
            f,
            Filter::Any(vec![
                Filter::In(Field::Email, vec!["a@b.com".into()]),
                Filter::In(Field::Phone, vec!["+919876543210".into()])
            ])
        );
    }

    #[test]
    fn regex_literal_becomes_like() {
        let f = Filter::parse_json(r#"{"first_name":{"$regex":"^jo\\.","$options":"i"}}"#).expect("supported");
        let mut b = SqlBuilder::default();
        f.to_sql(&mut b);
        assert_eq!(b.sql, "LOWER(u.first_name) LIKE $1 ESCAPE '\\'");
        assert_eq!(b.binds, vec!["jo.%".to_string()]);
    }

    #[test]
    fn unsupported_things_are_refused_with_a_reason() {
        for (q, needle) in [
            (r#"{"first_name":{"$gt":"a"}}"#, "$gt"),
            (r#"{"$where":"1"}"#, "$where"),
            (r#"{"password":"x"}"#, "password"),
            (r#"{"first_name":{"$regex":"a.*b"}}"#, "literal"),
            (r#"[1]"#, "object"),
            (r#"{"a":"#, "JSON"),
        ] {
            let err = Filter::parse_json(q).expect_err(q);
            assert!(err.0.contains(needle), "{q}: {err}");
        }
    }

    #[test]
    fn bounds_are_enforced() {
        let deep = r#"{"$or":[{"$or":[{"$or":[{"$or":[{"$or":[{"username":"a"}]}]}]}]}]}"#;
        assert!(Filter::parse_json(deep).is_err());
        let many: Vec<String> = (0..60).map(|i| format!("\"{i}\"")).collect();
        assert!(Filter::parse_json(&format!(r#"{{"username":{{"$in":[{}]}}}}"#, many.join(","))).is_err());
    }
}
