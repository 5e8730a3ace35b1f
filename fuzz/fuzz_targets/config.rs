//! The config loader on arbitrary text: the node's YAML file ([`Config::parse`]) and a
//! `LogCollection` spec as the API server would hand it over
//! ([`LogCollectionSpec::from_json`], then [`LogCollectionSpec::validate`]).
//!
//! Input: a selector byte, then UTF-8 text (other bytes are not a config: a file is
//! read as UTF-8 first and a non-UTF-8 one is refused before parsing). Bit 0 clear:
//! the text is the config file; set: it is YAML for a collection's spec, turned into
//! JSON first as the API server stores it. A config is written by people who make
//! typos and by namespace users who may be hostile: whatever the text, the loader
//! answers with a config or an error, never a panic, and an error names a file.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use logtap::config::Config;
use logtap::config::crd::LogCollectionSpec;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    if selector & 1 == 0 {
        if let Err(e) = Config::parse(text, "fuzz.yaml") {
            assert!(e.to_string().contains("fuzz.yaml"), "{e}");
        }
        return;
    }
    let Ok(spec) = yaml_serde::from_str::<serde_json::Value>(text) else {
        return;
    };
    if let Ok(collection) = LogCollectionSpec::from_json(&spec, "ns/fuzz") {
        let _ = collection.validate(Path::new("/var/lib/logtap"));
    }
});
