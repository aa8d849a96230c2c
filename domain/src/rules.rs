//! Group rules: conditions on attribute values, all of which must hold.
//!
//! A condition arrives as the wire writes it (`{definition id, type, value}`,
//! value a string) and is compiled against its definition once: the value is
//! parsed into the definition's type, and operators the type has no meaning
//! for (`gt` on a boolean) are refused. Evaluation is then a pure function of
//! the user's values.

use crate::attribute::{AttrType, Definition};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::cmp::Ordering;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Eq,
    Neq,
    Gt,
    Gte,
    Lt,
    Lte,
    In,
    Nin,
    Contains,
    Exists,
    NotExists,
    Between,
}

impl Op {
    pub fn parse(raw: &str) -> Option<Op> {
        serde_json::from_value(Value::String(raw.to_string())).ok()
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "eq",
            Op::Neq => "neq",
            Op::Gt => "gt",
            Op::Gte => "gte",
            Op::Lt => "lt",
            Op::Lte => "lte",
            Op::In => "in",
            Op::Nin => "nin",
            Op::Contains => "contains",
            Op::Exists => "exists",
            Op::NotExists => "not_exists",
            Op::Between => "between",
        }
    }
}

/// A condition as stored in group events: the wire form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Condition {
    pub user_attribute_definition_id: String,
    #[serde(rename = "type")]
    pub op: Op,
    #[serde(default)]
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("condition {index}: unknown operator {op:?}")]
    UnknownOp { index: usize, op: String },
    #[error("condition {index}: {op} is not supported for {kind} attributes")]
    Unsupported { index: usize, op: &'static str, kind: &'static str },
    #[error("condition {index}: {message}")]
    BadValue { index: usize, message: String },
    #[error("condition {index}: attribute definition {id} not found")]
    UnknownDefinition { index: usize, id: String },
    #[error("condition {index}: {id} is encrypted; rules cannot read encrypted values")]
    Encrypted { index: usize, id: String },
    #[error("a group may have at most {max} conditions")]
    TooMany { max: usize },
}

/// A typed operand.
#[derive(Debug, Clone, PartialEq)]
enum Operand {
    Number(f64),
    Text(String),
    Bool(bool),
}

impl Operand {
    fn of(value: &Value) -> Option<Operand> {
        match value {
            Value::Number(n) => n.as_f64().map(Operand::Number),
            Value::String(s) => Some(Operand::Text(s.clone())),
            Value::Bool(b) => Some(Operand::Bool(*b)),
            _ => None,
        }
    }

    fn cmp(&self, other: &Operand) -> Option<Ordering> {
        match (self, other) {
            (Operand::Number(a), Operand::Number(b)) => a.partial_cmp(b),
            (Operand::Text(a), Operand::Text(b)) => Some(a.cmp(b)),
            (Operand::Bool(a), Operand::Bool(b)) => Some(a.cmp(b)),
            _ => None,
        }
    }
}

/// A condition checked against its definition, ready to evaluate.
#[derive(Debug, Clone, PartialEq)]
pub struct Compiled {
    pub definition_id: String,
    op: Op,
    operands: Vec<Operand>,
    multi_value: bool,
    /// Values are booleans (their text key is `true`/`false`).
    boolean: bool,
}

pub const MAX_CONDITIONS: usize = 20;

fn parse_operand(def: &Definition, raw: &str, index: usize) -> Result<Operand, RuleError> {
    let bad = |message: String| RuleError::BadValue { index, message };
    let raw = raw.trim();
    match def.kind {
        AttrType::Number => {
            raw.parse::<f64>().map(Operand::Number).map_err(|_| bad(format!("{raw:?} is not a number")))
        }
        AttrType::Boolean => match raw {
            "true" => Ok(Operand::Bool(true)),
            "false" => Ok(Operand::Bool(false)),
            _ => Err(bad(format!("{raw:?} is not true or false"))),
        },
        // Other types compare as their normalised text (emails lower case,
        // datetimes in UTC RFC 3339: both order correctly as text).
        _ => {
            let normalised =
                def.validate_scalar(&Value::String(raw.to_string())).map_err(|e| bad(format!("{raw:?}: {e}")))?;
            Ok(Operand::of(&normalised).unwrap_or(Operand::Text(raw.to_string())))
        }
    }
}

/// Splits a list value: a JSON array of strings, or comma-separated text.
fn list(raw: &str) -> Vec<String> {
    if let Ok(Value::Array(items)) = serde_json::from_str::<Value>(raw) {
        return items.iter().map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())).collect();
    }
    raw.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
}

/// Compiles every condition of a rule; `find` looks definitions up by id.
pub fn compile<'a>(
    conditions: &[Condition],
    find: impl Fn(&str) -> Option<&'a Definition>,
) -> Result<Vec<Compiled>, RuleError> {
    if conditions.len() > MAX_CONDITIONS {
        return Err(RuleError::TooMany { max: MAX_CONDITIONS });
    }
    conditions
        .iter()
        .enumerate()
        .map(|(index, c)| {
            let def = find(&c.user_attribute_definition_id)
                .ok_or_else(|| RuleError::UnknownDefinition { index, id: c.user_attribute_definition_id.clone() })?;
            if def.encrypted {
                return Err(RuleError::Encrypted { index, id: def.id.clone() });
            }
            let unsupported = || RuleError::Unsupported { index, op: c.op.as_str(), kind: def.kind.as_str() };
            let operands = match c.op {
                Op::Exists | Op::NotExists => vec![],
                Op::Gt | Op::Gte | Op::Lt | Op::Lte if !def.kind.ordered() => return Err(unsupported()),
                Op::Between if !def.kind.ordered() => return Err(unsupported()),
                Op::Contains if !(def.multi_value || matches!(def.kind, AttrType::String | AttrType::Email)) => {
                    return Err(unsupported())
                }
                Op::Contains if !def.multi_value => vec![Operand::Text(c.value.to_lowercase())],
                _ if def.kind == AttrType::Json => return Err(unsupported()),
                Op::In | Op::Nin => {
                    let items = list(&c.value);
                    if items.is_empty() {
                        return Err(RuleError::BadValue { index, message: "in/nin need at least one value".into() });
                    }
                    items.iter().map(|v| parse_operand(def, v, index)).collect::<Result<_, _>>()?
                }
                Op::Between => {
                    let items = list(&c.value);
                    if items.len() != 2 {
                        return Err(RuleError::BadValue {
                            index,
                            message: format!("between needs two values (\"low,high\"), got {}", items.len()),
                        });
                    }
                    items.iter().map(|v| parse_operand(def, v, index)).collect::<Result<_, _>>()?
                }
                _ => vec![parse_operand(def, &c.value, index)?],
            };
            Ok(Compiled {
                definition_id: def.id.clone(),
                op: c.op,
                operands,
                multi_value: def.multi_value,
                boolean: def.kind == AttrType::Boolean,
            })
        })
        .collect()
}

impl Compiled {
    /// Whether the condition holds for `value` (`None`: the user has no value).
    pub fn holds(&self, value: Option<&Value>) -> bool {
        match (self.op, value) {
            (Op::Exists, v) => v.is_some(),
            (Op::NotExists, v) => v.is_none(),
            // Negative operators hold for users without a value too.
            (Op::Neq | Op::Nin, None) => true,
            (_, None) => false,
            (op, Some(Value::Array(items))) if self.multi_value => {
                let scalars: Vec<Operand> = items.iter().filter_map(Operand::of).collect();
                match op {
                    Op::Contains | Op::Eq => scalars.iter().any(|s| self.one(Op::Eq, s)),
                    Op::Neq | Op::Nin => scalars.iter().all(|s| self.one(op, s)),
                    _ => scalars.iter().any(|s| self.one(op, s)),
                }
            }
            (op, Some(v)) => Operand::of(v).is_some_and(|s| self.one(op, &s)),
        }
    }

    /// [`Compiled::holds`] for a value known only by its [`index_keys`]
    /// (`None`: the user has no value), which carry all of a single value
    /// of the definition's type; `None` for multi-value definitions, whose
    /// lists the keys do not carry.
    pub fn holds_keys(&self, keys: Option<(Option<f64>, Option<&str>)>) -> Option<bool> {
        if self.multi_value {
            return None;
        }
        let Some((number, text)) = keys else { return Some(self.holds(None)) };
        let operand = match (number, text) {
            (Some(n), _) => Some(Operand::Number(n)),
            (None, Some("true")) if self.boolean => Some(Operand::Bool(true)),
            (None, Some("false")) if self.boolean => Some(Operand::Bool(false)),
            (None, Some(t)) => Some(Operand::Text(t.to_string())),
            (None, None) => None,
        };
        Some(match (self.op, operand) {
            (Op::Exists, _) => true,
            (Op::NotExists, _) => false,
            (op, Some(o)) => self.one(op, &o),
            (_, None) => false,
        })
    }

    fn one(&self, op: Op, value: &Operand) -> bool {
        let first = self.operands.first();
        let cmp = |o: Option<&Operand>| o.and_then(|o| value.cmp(o));
        match op {
            Op::Eq => cmp(first) == Some(Ordering::Equal),
            Op::Neq => cmp(first) != Some(Ordering::Equal),
            Op::Gt => cmp(first) == Some(Ordering::Greater),
            Op::Gte => matches!(cmp(first), Some(Ordering::Greater | Ordering::Equal)),
            Op::Lt => cmp(first) == Some(Ordering::Less),
            Op::Lte => matches!(cmp(first), Some(Ordering::Less | Ordering::Equal)),
            Op::In => self.operands.iter().any(|o| value.cmp(o) == Some(Ordering::Equal)),
            Op::Nin => !self.operands.iter().any(|o| value.cmp(o) == Some(Ordering::Equal)),
            Op::Between => {
                matches!(cmp(self.operands.first()), Some(Ordering::Greater | Ordering::Equal))
                    && matches!(cmp(self.operands.get(1)), Some(Ordering::Less | Ordering::Equal))
            }
            Op::Contains => match (value, first) {
                (Operand::Text(s), Some(Operand::Text(needle))) => s.to_lowercase().contains(needle.as_str()),
                _ => false,
            },
            Op::Exists | Op::NotExists => true,
        }
    }
}

/// The typed copies of a value that read models index: a number, or text
/// (booleans as `true`/`false`). Lists and JSON objects get neither.
pub fn index_keys(value: &Value) -> (Option<f64>, Option<String>) {
    match value {
        Value::Number(n) => (n.as_f64(), None),
        Value::String(s) => (None, Some(s.clone())),
        Value::Bool(b) => (None, Some(b.to_string())),
        _ => (None, None),
    }
}

/// What an index over [`index_keys`] can answer of a condition: a superset
/// of the users it holds for, among those with a value.
#[derive(Debug, Clone, PartialEq)]
pub enum Probe {
    /// Every user with a value of the definition.
    Exists,
    /// The number key within the bounds (value, inclusive).
    Range { low: Option<(f64, bool)>, high: Option<(f64, bool)> },
    /// The number key among these.
    Numbers(Vec<f64>),
    /// The text key among these.
    Texts(Vec<String>),
}

impl Probe {
    /// Whether a value with these index keys is within the probe.
    pub fn admits(&self, number: Option<f64>, text: Option<&str>) -> bool {
        let within = |n: f64, bound: Option<(f64, bool)>, above: bool| match bound {
            None => true,
            Some((b, inclusive)) => (inclusive && n == b) || if above { n > b } else { n < b },
        };
        match self {
            Probe::Exists => true,
            Probe::Range { low, high } => number.is_some_and(|n| within(n, *low, true) && within(n, *high, false)),
            Probe::Numbers(list) => number.is_some_and(|n| list.contains(&n)),
            Probe::Texts(list) => text.is_some_and(|t| list.iter().any(|l| l == t)),
        }
    }
}

impl Compiled {
    /// The index probe that finds every user this condition holds for, or
    /// `None` when it also holds for users without a value (`neq`, `nin`,
    /// `not_exists`), which no index over values can list.
    pub fn probe(&self) -> Option<Probe> {
        if matches!(self.op, Op::Neq | Op::Nin | Op::NotExists) {
            return None;
        }
        if self.multi_value {
            return Some(Probe::Exists);
        }
        let numbers: Vec<f64> =
            self.operands.iter().filter_map(|o| if let Operand::Number(n) = o { Some(*n) } else { None }).collect();
        let all_numbers = !self.operands.is_empty() && numbers.len() == self.operands.len();
        let texts = || {
            self.operands
                .iter()
                .map(|o| match o {
                    Operand::Text(t) => Some(t.clone()),
                    Operand::Bool(b) => Some(b.to_string()),
                    Operand::Number(_) => None,
                })
                .collect::<Option<Vec<String>>>()
        };
        let first = numbers.first().copied();
        Some(match (self.op, all_numbers) {
            (Op::Eq | Op::In, true) => Probe::Numbers(numbers),
            (Op::Eq | Op::In, false) => texts().map(Probe::Texts).unwrap_or(Probe::Exists),
            (Op::Gt, true) => Probe::Range { low: first.map(|n| (n, false)), high: None },
            (Op::Gte, true) => Probe::Range { low: first.map(|n| (n, true)), high: None },
            (Op::Lt, true) => Probe::Range { low: None, high: first.map(|n| (n, false)) },
            (Op::Lte, true) => Probe::Range { low: None, high: first.map(|n| (n, true)) },
            (Op::Between, true) if numbers.len() == 2 => {
                Probe::Range { low: Some((numbers[0], true)), high: Some((numbers[1], true)) }
            }
            _ => Probe::Exists,
        })
    }
}

/// Whether every condition holds for a user whose values are given by `value_of`.
pub fn matches<'a>(rule: &[Compiled], value_of: impl Fn(&str) -> Option<&'a Value>) -> bool {
    rule.iter().all(|c| c.holds(value_of(&c.definition_id)))
}
