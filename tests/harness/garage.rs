//! Garage, a real S3-compatible object store, run single-node on loopback for the tests that
//! store voicemails in a bucket: one server per test binary ([`Garage::shared`]), shared by the
//! tests, each with a bucket of its own ([`Garage::bucket`]); a test that stops the store
//! starts its own ([`Garage::start`]).
//!
//! The binary is `VMPIPE_TEST_GARAGE`, else `garage` on the `PATH` or in `~/.cargo/bin`
//! (`scripts/test.sh` installs it there when it is missing).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use vmpipe_common::Settings;
use vmpipe_common::settings::{Secret, StorageKind};

use crate::audio::hex32;
use crate::process::free_port;

/// A Garage server with a layout, and one access key allowed on every bucket it makes.
pub struct Garage {
    pub endpoint: String,
    config: PathBuf,
    key_id: String,
    secret: String,
    child: Option<Child>,
    /// Kept until the server is dropped.
    _dir: tempfile::TempDir,
}

impl Garage {
    /// The server every test of this binary shares (started on first use; it stops within a
    /// second of the test binary's exit).
    pub fn shared() -> &'static Garage {
        static SHARED: OnceLock<Garage> = OnceLock::new();
        SHARED.get_or_init(|| Garage::launch(true))
    }

    /// A server of the test's own, stopped when dropped.
    pub fn start() -> Garage {
        Garage::launch(false)
    }

    fn launch(outlive_nothing: bool) -> Garage {
        let dir = tempfile::tempdir().expect("temp dir");
        let (rpc, s3, admin) = (free_port(), free_port(), free_port());
        let config = dir.path().join("garage.toml");
        std::fs::write(
            &config,
            format!(
                r#"metadata_dir = "{root}/meta"
data_dir = "{root}/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{secret}{secret2}"
[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:{s3}"
root_domain = ".s3.garage.localhost"
[admin]
api_bind_addr = "127.0.0.1:{admin}"
"#,
                root = dir.path().display(),
                secret = hex32(),
                secret2 = hex32(),
            ),
        )
        .expect("garage.toml");
        let mut garage = Garage {
            endpoint: format!("http://127.0.0.1:{s3}"),
            config,
            key_id: String::new(),
            secret: String::new(),
            child: None,
            _dir: dir,
        };
        garage.child = Some(garage.spawn_server(outlive_nothing));
        let node = garage.wait_for_node();
        garage.cli(&["layout", "assign", "-z", "dc1", "-c", "1G", &node]);
        garage.cli(&["layout", "apply", "--version", "1"]);
        let created = garage.cli(&["key", "create", "vmpipe-tests"]);
        garage.key_id = field(&created, "Key ID");
        garage.secret = field(&created, "Secret key");
        garage
    }

    fn spawn_server(&self, outlive_nothing: bool) -> Child {
        let log = std::fs::File::create(self.config.with_file_name("garage.log")).expect("log");
        let mut command = if outlive_nothing {
            // A static is never dropped: a shell watches this process and stops the server
            // once it is gone.
            let mut sh = Command::new("sh");
            sh.arg("-c")
                .arg(
                    "\"$0\" -c \"$1\" server & g=$!; \
                     while kill -0 \"$2\" 2>/dev/null && kill -0 $g 2>/dev/null; do sleep 1; done; \
                     kill $g 2>/dev/null; wait $g",
                )
                .arg(garage_binary())
                .arg(&self.config)
                .arg(std::process::id().to_string());
            sh
        } else {
            let mut garage = Command::new(garage_binary());
            garage.arg("-c").arg(&self.config).arg("server");
            garage
        };
        command
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("garage starts (is it installed? scripts/test.sh installs it)")
    }

    /// The node's id, once the server answers.
    fn wait_for_node(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let output = self
                .command(&["node", "id", "-q"])
                .output()
                .expect("garage");
            if output.status.success() {
                let text = String::from_utf8_lossy(&output.stdout);
                return text.trim().split('@').next().unwrap_or_default().to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "garage did not start: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(garage_binary());
        command
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null());
        command
    }

    /// Runs a `garage` admin command, which must succeed; its output.
    fn cli(&self, args: &[&str]) -> String {
        let output = self.command(args).output().expect("garage runs");
        assert!(
            output.status.success(),
            "garage {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// A new bucket (an S3-valid name starting with `label`), the key allowed on it.
    pub fn bucket(&self, label: &str) -> String {
        let name = format!("vm-{label}-{}", &hex32()[..12]);
        self.cli(&["bucket", "create", &name]);
        self.cli(&[
            "bucket",
            "allow",
            "--read",
            "--write",
            "--owner",
            &name,
            "--key",
            &self.key_id,
        ]);
        name
    }

    /// `settings` pointed at `bucket` on this server.
    pub fn use_bucket(&self, settings: &mut Settings, bucket: &str) {
        settings.storage = StorageKind::S3;
        settings.s3_bucket = Some(bucket.to_owned());
        settings.s3_endpoint = Some(self.endpoint.clone());
        settings.s3_region = "garage".into();
        settings.s3_access_key_id = Some(self.key_id.clone());
        settings.s3_secret_access_key = Some(Secret(self.secret.clone()));
    }

    /// The server's process id (for CPU and memory figures).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops the server (SIGKILL): the store is down.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the stopped server again, on the same ports and data; returns once it answers.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "running already");
        self.child = Some(self.spawn_server(false));
        self.wait_for_node();
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `Name: value` from `garage key create`'s output.
fn field(output: &str, name: &str) -> String {
    output
        .lines()
        .find_map(|line| {
            line.trim()
                .strip_prefix(name)?
                .trim_start()
                .strip_prefix(':')
        })
        .map(|value| value.trim().to_owned())
        .unwrap_or_else(|| panic!("no {name:?} in {output}"))
}

fn garage_binary() -> PathBuf {
    if let Ok(path) = std::env::var("VMPIPE_TEST_GARAGE") {
        return PathBuf::from(path);
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let installed = Path::new(&home).join(".cargo/bin/garage");
    if installed.exists() {
        return installed;
    }
    PathBuf::from("garage")
}
