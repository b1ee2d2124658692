//! The S3 backend against a real Garage: what the `Storage` trait promises, object by object
//! (the whole stack on a bucket is in `past_one_machine.rs`).

use bytes::Bytes;
use futures_util::StreamExt;
use vmpipe_common::settings::ByteSize;
use vmpipe_common::store::{S3Store, Storage};
use vmpipe_common::{Revoked, Settings, StorageError, StorageKey};
use vmpipe_tests::*;

fn key(raw: &str) -> StorageKey {
    StorageKey::parse(raw).unwrap()
}

/// A store on a fresh bucket of the shared Garage, with a local directory for its copies.
fn store(label: &str, prefix: &str) -> (S3Store, tempfile::TempDir) {
    let garage = Garage::shared();
    let dir = tempfile::tempdir().unwrap();
    let mut settings = Settings {
        storage_dir: dir.path().to_path_buf(),
        s3_prefix: prefix.into(),
        max_body: ByteSize(16 << 20),
        ..Settings::default()
    };
    garage.use_bucket(&mut settings, &garage.bucket(label));
    (S3Store::open(&settings).unwrap(), dir)
}

async fn put(store: &S3Store, raw: &str, body: &[u8]) -> Box<dyn vmpipe_common::Committed> {
    let mut writer = store.create(&key(raw));
    for piece in body.chunks(64 * 1024) {
        writer.write(Bytes::copy_from_slice(piece)).await.unwrap();
    }
    writer.commit().await.unwrap()
}

async fn read(store: &S3Store, raw: &str) -> Option<Vec<u8>> {
    let object = store.open(&key(raw)).await.unwrap()?;
    let mut body = Vec::new();
    let mut stream = object.body;
    while let Some(chunk) = stream.next().await {
        body.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(body.len() as u64, object.size);
    Some(body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_are_stored_read_listed_copied_and_removed() {
    let (store, dir) = store("trait", "vmpipe/");
    assert_eq!(
        store.location(),
        format!("s3://{}/vmpipe", bucket_of(&store))
    );
    store.check_writable().await.unwrap();
    put(&store, "acct/d1/a.mp3", b"first")
        .await
        .keep()
        .await
        .unwrap();
    // Larger than one part: a multipart upload.
    let big: Vec<u8> = (0..12 << 20).map(|i| (i % 251) as u8).collect();
    put(&store, "acct/d2/big.wav", &big)
        .await
        .keep()
        .await
        .unwrap();
    assert_eq!(read(&store, "acct/d1/a.mp3").await.unwrap(), b"first");
    assert!(read(&store, "acct/d2/big.wav").await.unwrap() == big);
    assert!(read(&store, "acct/d9/none.mp3").await.is_none());

    let info = store.stat(&key("acct/d2/big.wav")).await.unwrap().unwrap();
    assert_eq!(info.size, big.len() as u64);
    assert_eq!(store.stat(&key("acct/d9/none.mp3")).await.unwrap(), None);

    let mut names: Vec<String> = store
        .list()
        .map(|listed| listed.unwrap().name)
        .collect()
        .await;
    names.sort();
    assert_eq!(
        names,
        ["acct/d1/a.mp3", "acct/d2/big.wav"],
        "nothing of vmpipe's own"
    );

    // KAZOO's doubled path resolves to the stored key.
    let doubled = ["acct", "d1", "a.mp3", "acct", "d1", "a.mp3"].map(String::from);
    assert_eq!(
        store.find_prefix(doubled.to_vec()).await.unwrap(),
        Some(key("acct/d1/a.mp3"))
    );
    let unknown = ["acct", "d7", "x.mp3"].map(String::from);
    assert_eq!(store.find_prefix(unknown.to_vec()).await.unwrap(), None);

    let copy = store
        .local_copy(&key("acct/d2/big.wav"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(std::fs::read(copy.path()).unwrap(), big);
    let copied = copy.path().to_path_buf();
    drop(copy);
    assert!(!copied.exists(), "the copy is deleted after use");
    assert!(
        store
            .local_copy(&key("acct/d9/none.mp3"))
            .await
            .unwrap()
            .is_none()
    );

    assert!(store.remove(&key("acct/d1/a.mp3")).await.unwrap().file);
    assert!(!store.remove(&key("acct/d1/a.mp3")).await.unwrap().file);
    assert!(read(&store, "acct/d1/a.mp3").await.is_none());

    // vmpipe's own names are not keys.
    let mut writer = store.create(&key(".vmpipe/previous/x"));
    let refused = writer.write(Bytes::from_static(b"x")).await.unwrap_err();
    assert!(matches!(refused, StorageError::Conflict(_)), "{refused}");
    drop(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_commit_puts_back_what_it_replaced_and_leaves_a_newer_upload_alone() {
    let (store, _dir) = store("revoke", "");
    // Nothing before: the key is empty again.
    let revoked = put(&store, "a/1/new.mp3", b"v1")
        .await
        .revoke()
        .await
        .unwrap();
    assert_eq!(revoked, Revoked::Removed);
    assert!(read(&store, "a/1/new.mp3").await.is_none());

    // A version before: it is back.
    put(&store, "a/1/x.mp3", b"old").await.keep().await.unwrap();
    let revoked = put(&store, "a/1/x.mp3", b"new")
        .await
        .revoke()
        .await
        .unwrap();
    assert_eq!(revoked, Revoked::Restored);
    assert_eq!(read(&store, "a/1/x.mp3").await.unwrap(), b"old");

    // Another upload replaced it meanwhile: left alone.
    let first = put(&store, "a/1/x.mp3", b"mine").await;
    put(&store, "a/1/x.mp3", b"theirs")
        .await
        .keep()
        .await
        .unwrap();
    assert_eq!(first.revoke().await.unwrap(), Revoked::Superseded);
    assert_eq!(read(&store, "a/1/x.mp3").await.unwrap(), b"theirs");

    // No side copies are left behind by any of it.
    let own = store
        .remove_stale_temp_files(std::time::Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(own, 0, "every copy of a replaced version was deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_upload_leaves_nothing_visible() {
    let (store, _dir) = store("abandon", "");
    put(&store, "a/1/kept.mp3", b"kept")
        .await
        .keep()
        .await
        .unwrap();
    // Half of a large body, then the client is gone: the multipart upload is aborted.
    let mut writer = store.create(&key("a/1/gone.mp3"));
    let part = vec![7u8; 6 << 20];
    writer.write(Bytes::from(part)).await.unwrap();
    drop(writer);
    // And a small one that never reached its PUT.
    let mut writer = store.create(&key("a/1/kept.mp3"));
    writer.write(Bytes::from_static(b"half")).await.unwrap();
    drop(writer);
    assert!(read(&store, "a/1/gone.mp3").await.is_none());
    assert_eq!(read(&store, "a/1/kept.mp3").await.unwrap(), b"kept");
    let names: Vec<String> = store.list().map(|l| l.unwrap().name).collect().await;
    assert_eq!(names, ["a/1/kept.mp3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_is_down_is_unavailable_and_one_that_refuses_is_refused() {
    let mut garage = Garage::start();
    let dir = tempfile::tempdir().unwrap();
    let mut settings = Settings {
        storage_dir: dir.path().to_path_buf(),
        ..Settings::default()
    };
    garage.use_bucket(&mut settings, &garage.bucket("down"));
    let store = S3Store::open(&settings).unwrap();
    put(&store, "a/1/x.mp3", b"x").await.keep().await.unwrap();
    garage.stop();
    let mut writer = store.create(&key("a/1/y.mp3"));
    writer.write(Bytes::from_static(b"y")).await.unwrap();
    let down = writer.commit().await.unwrap_err();
    assert!(matches!(down, StorageError::Unavailable { .. }), "{down}");
    let down = store.stat(&key("a/1/x.mp3")).await.unwrap_err();
    assert!(matches!(down, StorageError::Unavailable { .. }), "{down}");
    garage.restart();
    assert_eq!(read(&store, "a/1/x.mp3").await.unwrap(), b"x");

    // A wrong secret is not an outage.
    settings.s3_secret_access_key = Some(vmpipe_common::settings::Secret("0".repeat(64)));
    let wrong = S3Store::open(&settings).unwrap();
    let refused = wrong.stat(&key("a/1/x.mp3")).await.unwrap_err();
    assert!(matches!(refused, StorageError::Refused { .. }), "{refused}");
}

fn bucket_of(store: &S3Store) -> String {
    let location = store.location();
    location["s3://".len()..]
        .split('/')
        .next()
        .unwrap()
        .to_owned()
}
