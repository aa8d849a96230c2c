//! The JSON `q` filter of `/customers/list` and exports: any text is a
//! filter or a reason, never a panic, and a filter always compiles to SQL
//! with one placeholder per bound value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use userstream_projections::read_models::filter::{Filter, SqlBuilder};

fuzz_target!(|text: &str| {
    if let Ok(filter) = Filter::parse_json(text) {
        let mut sql = SqlBuilder::starting_after(2);
        filter.to_sql(&mut sql);
        assert_eq!(sql.sql.matches('$').count(), sql.binds.len(), "{}", sql.sql);
    }
    let _ = userstream_api::fynd::list_filter(Some(text));
});
