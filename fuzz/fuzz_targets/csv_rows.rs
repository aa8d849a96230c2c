//! CSV rows of a group's members file and of import files (CSV and JSONL,
//! users and attribute rows): any bytes give rows or row errors, never a
//! panic, and rows are numbered without gaps.
#![no_main]

use libfuzzer_sys::fuzz_target;
use userstream_api::jobs::source::{read_rows_from, Columns, Format};
use userstream_api::jobs::{attributes, import};

fn rows(bytes: &[u8], format: Format, columns: Columns) {
    let mut next = 0;
    let _ = read_rows_from(bytes, format, columns, 0, 3, |chunk| {
        for row in chunk {
            assert_eq!(row.index, next);
            next += 1;
        }
        true
    });
}

fuzz_target!(|bytes: &[u8]| {
    let _ = userstream_api::members_file::parse(bytes);
    for columns in [import::COLUMNS, attributes::COLUMNS] {
        rows(bytes, Format::Csv, columns);
        rows(bytes, Format::Jsonl, columns);
    }
});
