//! The Passage list's query string: filters with operators
//! (`ne: gt: lt: like: not_like:`), `order_by`, paging and `created_before`
//! are parsed or refused with a reason, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use userstream_projections::read_models::user_list::ListQuery;

fuzz_target!(|query: &str| {
    let pairs: Vec<(String, String)> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (pair.to_string(), String::new()),
        })
        .collect();
    let _ = ListQuery::parse(&pairs, time::OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000));
});
