//! `worker probe FILE…`: measures audio files, one JSON object per line.

use std::path::PathBuf;

use crate::audio::probe;

/// Prints one JSON line per file; whether every file could be measured. A reader that goes
/// away (`| head`) ends it quietly.
pub fn probe_files(files: &[PathBuf]) -> bool {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let mut all_measured = true;
    for file in files {
        let line = match probe::probe_file(file) {
            Ok(probed) => {
                let mut value = serde_json::to_value(probed).expect("serialisable");
                value["file"] = file.display().to_string().into();
                value
            }
            Err(e) => {
                all_measured = false;
                serde_json::json!({ "file": file.display().to_string(), "error": e.to_string() })
            }
        };
        if writeln!(out, "{line}").is_err() {
            break;
        }
    }
    all_measured
}
