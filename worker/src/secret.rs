//! Secrets the settings name by file (a Docker secret, say): read once, when the worker starts.

use anyhow::Context as _;

/// The secret in `file`, without the line end around it; `what` names the setting in errors
/// (`api_key_file`). An empty file is an error.
pub(crate) fn read_file(file: &std::path::Path, what: &str) -> anyhow::Result<String> {
    let secret =
        std::fs::read_to_string(file).with_context(|| format!("{what} {}", file.display()))?;
    let secret = secret.trim();
    anyhow::ensure!(!secret.is_empty(), "{what} {} is empty", file.display());
    Ok(secret.to_owned())
}
