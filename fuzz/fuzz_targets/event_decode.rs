//! Event decoding with upcasters: a stored event as the golden fixtures
//! spell it (`{"type", "schema", "data"}`) never panics the decoder, and
//! what decodes encodes to something that decodes to the same event.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use userstream_domain::{codec, job};

fn round_trip<E: PartialEq + std::fmt::Debug>(
    event_type: &str,
    schema: u32,
    data: &Value,
    decode: impl Fn(&str, u32, &Value) -> Result<E, codec::DecodeError>,
    encode: impl Fn(&E) -> codec::EncodedEvent,
) {
    if let Ok(event) = decode(event_type, schema, data) {
        let again = encode(&event);
        assert_eq!(decode(again.event_type, again.schema, &again.data).ok().as_ref(), Some(&event));
    }
}

fuzz_target!(|bytes: &[u8]| {
    let Ok(stored) = serde_json::from_slice::<Value>(bytes) else { return };
    let event_type = stored["type"].as_str().unwrap_or_default();
    let schema = stored["schema"].as_u64().and_then(|s| u32::try_from(s).ok()).unwrap_or(1);
    let data = &stored["data"];
    // The text form too: the log hands the decoder JSON text.
    let _ = codec::decode(event_type, schema, data.to_string().as_str());
    round_trip(event_type, schema, data, |t, s, d| codec::decode(t, s, d), codec::encode);
    round_trip(event_type, schema, data, |t, s, d| codec::decode_definition(t, s, d), codec::encode_definition);
    round_trip(event_type, schema, data, |t, s, d| codec::decode_values(t, s, d), codec::encode_values);
    round_trip(event_type, schema, data, |t, s, d| codec::decode_group(t, s, d), codec::encode_group);
    round_trip(event_type, schema, data, |t, s, d| job::decode(t, s, d), job::encode);
});
