//! Attribute value validation: a definition (as its event stores it) and a
//! value checked against it never panic, and a value that validates
//! validates again to itself (validation is idempotent).
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use userstream_domain::attribute::Definition;

fuzz_target!(|bytes: &[u8]| {
    let Ok(input) = serde_json::from_slice::<Value>(bytes) else { return };
    let Ok(definition) = serde_json::from_value::<Definition>(input["definition"].clone()) else { return };
    let _ = definition.check();
    if let Ok(valid) = definition.validate(&input["value"]) {
        assert_eq!(definition.validate(&valid).as_ref(), Ok(&valid));
    }
});
