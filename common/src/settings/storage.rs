//! Where voicemail files are stored: `VMPIPE_STORAGE` and the `VMPIPE_S3_*` settings.

use serde::{Deserialize, Serialize};

use super::Settings;

/// `VMPIPE_STORAGE`: the backend of the voicemail files.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    /// Files below `VMPIPE_STORAGE_DIR/voicemails/` on this machine.
    #[default]
    Fs,
    /// Objects in an S3 bucket (AWS S3, Garage, MinIO, Ceph RGW): `VMPIPE_S3_*`.
    S3,
}

impl StorageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StorageKind::Fs => "fs",
            StorageKind::S3 => "s3",
        }
    }
}

/// The checks of the storage settings.
pub(super) fn validate(settings: &Settings) -> Result<(), String> {
    if settings.storage == StorageKind::Fs {
        return Ok(());
    }
    let bucket = settings.s3_bucket.as_deref().unwrap_or_default();
    if bucket.is_empty() {
        return Err("VMPIPE_STORAGE=s3 needs VMPIPE_S3_BUCKET".into());
    }
    if settings.s3_access_key_id.is_some() != settings.s3_secret_access_key.is_some() {
        return Err(
            "VMPIPE_S3_ACCESS_KEY_ID and VMPIPE_S3_SECRET_ACCESS_KEY go together (or neither, \
             for the AWS_* environment or an instance role)"
                .into(),
        );
    }
    if let Some(endpoint) = &settings.s3_endpoint
        && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
    {
        return Err(format!(
            "VMPIPE_S3_ENDPOINT must be an http:// or https:// URL: {endpoint:?}"
        ));
    }
    let prefix = &settings.s3_prefix;
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./".contains(c);
    if prefix.starts_with('/')
        || prefix.contains("//")
        || prefix.split('/').any(|s| s == ".." || s == ".")
        || !prefix.chars().all(plain)
    {
        return Err(format!(
            "VMPIPE_S3_PREFIX is a key prefix like `vmpipe/`: letters, digits, `-_./`, no leading \
             `/`, no `//`, `.` or `..`: {prefix:?}"
        ));
    }
    Ok(())
}
