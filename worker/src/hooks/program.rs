//! A command hook's program is checked at start-up: one that is missing or not executable
//! stops the worker with the hook's name, rather than failing every run.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

/// Whether `program` (a path, or a name looked up in `PATH` as the run will) can be executed;
/// else why not, to follow the program's name in an error.
pub(super) fn check(program: &str) -> Result<(), String> {
    if program.contains('/') {
        return executable(Path::new(program));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut found_not_executable = None;
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(program);
        match executable(&candidate) {
            Ok(()) => return Ok(()),
            Err(why) if candidate.exists() => found_not_executable = Some(why),
            Err(_) => {}
        }
    }
    Err(found_not_executable
        .unwrap_or_else(|| format!("not found on PATH ({})", path.to_string_lossy())))
}

fn executable(path: &Path) -> Result<(), String> {
    match std::fs::metadata(path) {
        Ok(meta) if !meta.is_file() => Err(format!("{} is not a file", path.display())),
        Ok(meta) if meta.permissions().mode() & 0o111 == 0 => {
            Err(format!("{} is not executable", path.display()))
        }
        Ok(_) => Ok(()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_found_on_path_or_by_path() {
        assert_eq!(check("sh"), Ok(()));
        assert_eq!(check("/bin/sh"), Ok(()));
        let missing = check("vmpipe-no-such-program").unwrap_err();
        assert!(missing.starts_with("not found on PATH ("), "{missing}");
        let missing = check("/no/such/program").unwrap_err();
        assert!(
            missing.contains("/no/such/program: No such file"),
            "{missing}"
        );
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "#!/bin/sh\n").unwrap();
        let error = check(plain.to_str().unwrap()).unwrap_err();
        assert!(error.ends_with("is not executable"), "{error}");
        assert!(check(dir.path().to_str().unwrap()).is_err(), "a directory");
    }
}
