//! Config parsing: any text is a validated `Config` or a `ConfigError`, never a panic (a bad
//! config must exit 78, not crash the service in a restart loop). Parsing touches no files.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use portier::config::{Config, ConfigError};

fuzz_target!(|data: &[u8]| {
    // Config files are read as UTF-8 (`read_to_string`): other bytes never reach the parser.
    let Ok(text) = std::str::from_utf8(data) else { return };
    match Config::parse(text, Path::new("/etc/portier/portier.toml")) {
        Ok(config) => {
            // Relative paths resolve against the config's folder.
            assert!(config.detector.path.is_absolute(), "{:?}", config.detector.path);
        }
        Err(e) => {
            // Every error names the file; parse errors also their line/key.
            let message = e.to_string();
            assert!(message.contains("/etc/portier/portier.toml"), "{message}");
            assert!(
                matches!(e, ConfigError::Parse { .. } | ConfigError::Invalid { .. }),
                "{message}"
            );
        }
    }
});
