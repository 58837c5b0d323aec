//! include/sealtls_offload.h is written by hand: its OS_Error_t values and
//! function names must match the library.
use sealtls_offload::Code;
use sealtls_offload_proto::ALL_CODES;

const HEADER: &str = include_str!("../../../include/sealtls_offload.h");

#[test]
fn header_codes_are_the_library_codes() {
    let declared: Vec<(String, i32)> = HEADER
        .lines()
        .filter_map(|l| {
            let (name, value) = l.trim().trim_end_matches(',').split_once('=')?;
            let name = name.trim();
            name.starts_with("OS_").then(|| (name.to_owned(), value.trim().parse().expect("a number")))
        })
        .collect();
    let expected: Vec<(String, i32)> = ALL_CODES.iter().map(|c: &Code| (c.name().to_owned(), c.value())).collect();
    assert_eq!(declared, expected);
}

#[test]
fn header_declares_every_exported_function() {
    let source = include_str!("../src/ffi.rs");
    let exported: Vec<&str> = source.lines().filter_map(|l| l.split("extern \"C\" fn ").nth(1)?.split('(').next()).collect();
    assert_eq!(exported.len(), 10);
    for name in exported {
        let declared = [" ", "*"].iter().any(|before| HEADER.contains(&format!("{before}{name}(")));
        assert!(declared, "{name} is not declared in the header");
    }
}
