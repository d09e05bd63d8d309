//! Bytes → (if UTF-8) the parser. It must return a file or a diagnostic, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = kiln::syntax::parse_source(text, 0);
    }
});
