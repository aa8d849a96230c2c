//! SQL for a rule condition's index probe ([`Probe`]) over the typed value
//! columns `num_value` and `text_value`, which the attributes read model and
//! the membership engine both keep (filled by `rules::index_keys`).

use sqlx::any::{Any, AnyArguments};
use sqlx::query::Query;
use userstream_domain::rules::Probe;

/// A value bound to a probe's placeholder.
#[derive(Debug, Clone, PartialEq)]
pub enum Bind {
    Number(f64),
    Text(String),
}

/// The SQL of a probe, to follow a `WHERE`: `""` for [`Probe::Exists`],
/// else ` AND …` on `{alias}.num_value` / `{alias}.text_value` with
/// placeholders from `$next` on (advanced past the ones used). `opaque`
/// wraps the column (`+ 0`, `|| ''`) so the planner keeps the scan on the
/// (definition, user) index and its order instead of the value index.
pub fn sql(probe: &Probe, alias: &str, opaque: bool, next: &mut usize, binds: &mut Vec<Bind>) -> String {
    let num = if opaque { format!("({alias}.num_value + 0)") } else { format!("{alias}.num_value") };
    let text = if opaque { format!("({alias}.text_value || '')") } else { format!("{alias}.text_value") };
    let mut placeholder = |bind: Bind| {
        binds.push(bind);
        *next += 1;
        format!("${}", *next - 1)
    };
    match probe {
        Probe::Exists => String::new(),
        Probe::Range { low, high } => {
            let mut out = format!(" AND {alias}.num_value IS NOT NULL");
            if let Some((n, inclusive)) = low {
                out.push_str(&format!(
                    " AND {num} {} {}",
                    if *inclusive { ">=" } else { ">" },
                    placeholder(Bind::Number(*n))
                ));
            }
            if let Some((n, inclusive)) = high {
                out.push_str(&format!(
                    " AND {num} {} {}",
                    if *inclusive { "<=" } else { "<" },
                    placeholder(Bind::Number(*n))
                ));
            }
            out
        }
        Probe::Numbers(list) => {
            let list: Vec<String> = list.iter().map(|n| placeholder(Bind::Number(*n))).collect();
            format!(" AND {num} IN ({})", list.join(", "))
        }
        Probe::Texts(list) => {
            let list: Vec<String> = list.iter().map(|t| placeholder(Bind::Text(t.clone()))).collect();
            format!(" AND {text} IN ({})", list.join(", "))
        }
    }
}

/// The SQL for a row's `num_value`: the next placeholder for a number,
/// `NULL` for none; bind the number only when there is one. sqlx's Any
/// driver sends a missing `f64` to PostgreSQL as a `float4` NULL, and a
/// statement a connection prepared that way then refuses every `f64`
/// ("incorrect binary data format"), so a missing number is never bound.
pub fn number_slot(number: Option<f64>, next: &mut usize) -> String {
    match number {
        Some(_) => {
            *next += 1;
            format!("${}", *next - 1)
        }
        None => "NULL".to_string(),
    }
}

/// Binds `binds` in order.
pub fn bind<'q>(mut query: Query<'q, Any, AnyArguments<'q>>, binds: &'q [Bind]) -> Query<'q, Any, AnyArguments<'q>> {
    for b in binds {
        query = match b {
            Bind::Number(n) => query.bind(*n),
            Bind::Text(t) => query.bind(t.as_str()),
        };
    }
    query
}

/// How selective a probe usually is: lists before ranges before "has a value".
pub fn rank(probe: &Probe) -> u8 {
    match probe {
        Probe::Numbers(_) | Probe::Texts(_) => 0,
        Probe::Range { .. } => 1,
        Probe::Exists => 2,
    }
}
