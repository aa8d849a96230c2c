//! The group rule compiler and evaluator: conditions over definitions, as
//! stored, compile or are refused with a reason, and a compiled rule is
//! evaluated over any value without a panic. For a value of the
//! definition's type, the index keys decide a condition as the value does
//! (the membership engine's index probes rely on it).
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use userstream_domain::attribute::Definition;
use userstream_domain::rules::{self, Condition};

fuzz_target!(|bytes: &[u8]| {
    let Ok(input) = serde_json::from_slice::<Value>(bytes) else { return };
    let Ok(definitions) = serde_json::from_value::<Vec<Definition>>(input["definitions"].clone()) else { return };
    let Ok(conditions) = serde_json::from_value::<Vec<Condition>>(input["conditions"].clone()) else { return };
    let Ok(compiled) = rules::compile(&conditions, |id| definitions.iter().find(|d| d.id == id)) else { return };
    let value = &input["value"];
    let _ = rules::matches(&compiled, |_| Some(value));
    for (condition, compiled) in conditions.iter().zip(&compiled) {
        let _ = compiled.holds(Some(value));
        let keys = rules::index_keys(value);
        let _ = compiled.holds_keys(Some((keys.0, keys.1.as_deref())));
        if let Some(probe) = compiled.probe() {
            let _ = probe.admits(keys.0, keys.1.as_deref());
        }
        let definition = definitions.iter().find(|d| d.id == condition.user_attribute_definition_id);
        if let Some(valid) = definition.and_then(|d| d.validate(value).ok()) {
            let (number, text) = rules::index_keys(&valid);
            if let Some(by_keys) = compiled.holds_keys(Some((number, text.as_deref()))) {
                assert_eq!(by_keys, compiled.holds(Some(&valid)), "{condition:?} on {valid}");
            }
        }
    }
});
