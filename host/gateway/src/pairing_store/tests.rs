use super::*;

fn settings(pending_ttl_ms: u64) -> PairingSettings {
    PairingSettings {
        pending_ttl_ms,
        ..PairingSettings::default()
    }
}

async fn approved(store: &PairingStore, device: &str) {
    let req = store
        .request(device, "pk", Role::Worker, &[], "cli", "127.0.0.1:1")
        .await
        .unwrap();
    store.approve(&req.request_id, "admin-token").await.unwrap();
}

#[tokio::test]
async fn approvals_persist_with_their_approver_and_tokens_are_per_instance() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pairing.json");
    let store = PairingStore::open(&path, &settings(60_000)).unwrap();
    let req = store
        .request("dev1", "pk", Role::Worker, &[], "cli", "127.0.0.1:1")
        .await
        .unwrap();
    assert_eq!(
        store
            .request("dev1", "pk", Role::Worker, &[], "cli", "127.0.0.1:2")
            .await
            .unwrap()
            .request_id,
        req.request_id,
        "a second connect reuses the open request"
    );
    let d = store.approve(&req.request_id, "admin-token").await.unwrap();
    assert_eq!(d.approved_by, "admin-token");
    assert!(matches!(
        store.approve(&req.request_id, "admin-token").await,
        Err(PairingError::UnknownRequest(_))
    ));
    let (a1, _) = store.issue_token("dev1", "a").await.unwrap().unwrap();
    let (b1, _) = store.issue_token("dev1", "b").await.unwrap().unwrap();
    assert_eq!(store.device_for_token(&a1).unwrap().0.id, "dev1");
    // A new token for instance `a` supersedes a's old one only.
    let (a2, _) = store.issue_token("dev1", "a").await.unwrap().unwrap();
    assert_eq!(
        store.device_for_token(&a1).unwrap_err(),
        TokenRefusal::Unknown
    );
    assert!(store.device_for_token(&b1).is_ok());
    assert_eq!(store.device_for_token(&a2).unwrap().1.instance, "a");

    let reopened = PairingStore::open(&path, &settings(60_000)).unwrap();
    assert_eq!(reopened.device("dev1").unwrap().roles, vec![Role::Worker]);
    assert!(reopened.device_for_token(&a2).is_ok());
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        !text.contains(&a2) && !text.contains(&b1),
        "token stored in clear"
    );
}

#[tokio::test]
async fn tokens_expire_and_are_bounded_per_device() {
    let dir = tempfile::tempdir().unwrap();
    let s = PairingSettings {
        token_ttl_ms: 1,
        max_tokens_per_device: 2,
        ..settings(60_000)
    };
    let store = PairingStore::open(&dir.path().join("p.json"), &s).unwrap();
    approved(&store, "dev1").await;
    let (t, expires) = store.issue_token("dev1", "a").await.unwrap().unwrap();
    // Wait out the one-millisecond lifetime on the clock the store reads.
    while now_ms() < expires + 1 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        store.device_for_token(&t).unwrap_err(),
        TokenRefusal::Expired
    );

    let s = PairingSettings {
        max_tokens_per_device: 2,
        ..settings(60_000)
    };
    let store = PairingStore::open(&dir.path().join("q.json"), &s).unwrap();
    approved(&store, "dev1").await;
    let (a, _) = store.issue_token("dev1", "a").await.unwrap().unwrap();
    let (b, _) = store.issue_token("dev1", "b").await.unwrap().unwrap();
    let (c, _) = store.issue_token("dev1", "c").await.unwrap().unwrap();
    assert_eq!(store.device("dev1").unwrap().tokens.len(), 2);
    assert!(store.device_for_token(&a).is_err(), "the oldest went");
    assert!(store.device_for_token(&b).is_ok() && store.device_for_token(&c).is_ok());
}

#[tokio::test]
async fn revoking_removes_the_device_and_its_tokens_and_announces_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = PairingStore::open(&dir.path().join("p.json"), &settings(60_000)).unwrap();
    let mut events = store.subscribe();
    approved(&store, "dev1").await;
    let (t, _) = store.issue_token("dev1", "").await.unwrap().unwrap();
    let removed = store.revoke("dev1").await.unwrap();
    assert_eq!(removed.id, "dev1");
    assert!(store.device("dev1").is_none());
    assert_eq!(
        store.device_for_token(&t).unwrap_err(),
        TokenRefusal::Unknown
    );
    assert_eq!(
        events.recv().await.unwrap(),
        StoreEvent::DeviceRemoved("dev1".into())
    );
    assert!(matches!(
        store.revoke("dev1").await,
        Err(PairingError::UnknownDevice(_))
    ));
}

#[tokio::test]
async fn a_version_1_store_is_read_and_its_tokens_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pairing.json");
    let token = "tgd1_old-token";
    std::fs::write(
        &path,
        format!(
            "{{\"version\":1,\"devices\":[{{\"id\":\"dev1\",\"publicKey\":\"pk\",\"roles\":[\"worker\"],\"clientId\":\"cli\",\"approvedAtMs\":1,\"tokenSha256\":\"{}\"}}]}}",
            token_hash(token)
        ),
    )
    .unwrap();
    let store = PairingStore::open(&path, &settings(60_000)).unwrap();
    assert_eq!(store.device_for_token(token).unwrap().0.id, "dev1");
}

#[test]
fn a_corrupt_store_is_reported_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pairing.json");
    std::fs::write(&path, b"{\"version\":2,\"devices\":[{\"id\":").unwrap();
    let err = PairingStore::open(&path, &settings(60_000)).unwrap_err();
    assert!(err.to_string().contains("is corrupt"), "{err}");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        b"{\"version\":2,\"devices\":[{\"id\":"
    );
}

#[tokio::test]
async fn pending_requests_expire() {
    let dir = tempfile::tempdir().unwrap();
    let store = PairingStore::open(&dir.path().join("p.json"), &settings(0)).unwrap();
    let req = store
        .request("dev1", "pk", Role::Worker, &[], "cli", "x")
        .await
        .unwrap();
    assert!(store.pending().is_empty());
    assert!(matches!(
        store.approve(&req.request_id, "admin-token").await,
        Err(PairingError::UnknownRequest(_))
    ));
}
