//! The store's own tests: namespaces, quotas, expiry, and replicas kept in
//! step through a cluster store.

use std::time::Duration;

use super::*;

const QUOTA: usize = 1 << 20;

fn store() -> Arc<KvStore> {
    Arc::new(KvStore::new())
}

/// The cluster store replicas sync with, as [`KvCluster`] keeps it.
struct Cluster(KvCluster);

impl Default for Cluster {
    fn default() -> Self {
        Cluster(KvCluster::new(1 << 30))
    }
}

impl Cluster {
    fn push(&mut self, changes: Vec<KvChange>) {
        self.0.push(changes);
    }

    fn snapshot(&mut self) -> Vec<KvSnapshotEntry> {
        self.0.snapshot()
    }

    /// One replica's sync: take, push, read, apply.
    fn sync(&mut self, replica: &KvStore) {
        self.push(replica.take_changes());
        replica.apply_snapshot(self.snapshot());
    }
}

#[test]
fn the_cluster_store_is_bounded_and_drops_what_expired() {
    let mut cluster = KvCluster::new(cluster::ENTRY_OVERHEAD + 64);
    let put = |key: &str, n: usize, ttl_ms| KvChange {
        namespace: "p".into(),
        key: key.into(),
        op: KvOp::Put {
            value: vec![0; n],
            ttl_ms,
        },
    };
    cluster.push(vec![put("a", 40, None), put("b", 40, None)]);
    assert_eq!(cluster.dropped(), 1, "the second would pass the bound");
    assert_eq!(cluster.bytes(), cluster::ENTRY_OVERHEAD + 2 + 40);
    cluster.push(vec![
        KvChange {
            namespace: "p".into(),
            key: "a".into(),
            op: KvOp::Add {
                delta: 5,
                ttl_ms: None,
            },
        },
        put("c", 1, Some(1)),
    ]);
    std::thread::sleep(Duration::from_millis(5));
    let snapshot = cluster.snapshot();
    assert_eq!(snapshot.len(), 1, "c expired; an Add on bytes is dropped");
    assert_eq!(snapshot[0].value, KvSnapshotValue::Bytes(vec![0; 40]));
    cluster.push(vec![KvChange {
        namespace: "p".into(),
        key: "a".into(),
        op: KvOp::Delete,
    }]);
    assert_eq!(cluster.bytes(), 0);
}

#[test]
fn values_and_counters_in_one_namespace() {
    let s = store();
    let ns = s.namespace("p", QUOTA);
    assert_eq!(ns.get("k"), None);
    ns.set("k", b"v".to_vec(), None).unwrap();
    assert_eq!(ns.get("k").as_deref(), Some(&b"v"[..]));
    assert_eq!(ns.counter("k"), Err(KvError::NotACounter));
    assert_eq!(ns.increment("k", 1, None), Err(KvError::NotACounter));
    assert_eq!(ns.counter("c"), Ok(0));
    assert_eq!(ns.increment("c", 5, None), Ok(5));
    assert_eq!(ns.increment("c", -7, None), Ok(-2));
    assert_eq!(ns.get("c").as_deref(), Some(&b"-2"[..]));
    // A set replaces a counter.
    ns.set("c", b"x".to_vec(), None).unwrap();
    assert_eq!(ns.counter("c"), Err(KvError::NotACounter));
    ns.delete("c");
    ns.delete("absent");
    assert_eq!(ns.get("c"), None);
    assert_eq!(ns.increment("c", i64::MAX, None), Ok(i64::MAX));
    assert_eq!(ns.increment("c", 1, None), Ok(i64::MAX), "saturates");
    assert_eq!(s.used_bytes("p"), 1 + 1 + 1 + COUNTER_BYTES);
}

#[test]
fn keys_are_bounded_and_namespaces_apart() {
    let s = store();
    let (a, b) = (s.namespace("a", QUOTA), s.namespace("b", QUOTA));
    let long = "k".repeat(MAX_KEY + 1);
    assert_eq!(a.set("", vec![], None), Err(KvError::InvalidKey));
    assert_eq!(a.set(&long, vec![], None), Err(KvError::InvalidKey));
    assert_eq!(a.increment(&long, 1, None), Err(KvError::InvalidKey));
    assert_eq!(a.counter(""), Err(KvError::InvalidKey));
    assert_eq!(a.get(&long), None);
    a.set(&long[1..], vec![1], None).unwrap();
    a.increment("n", 1, None).unwrap();
    assert_eq!(b.get("n"), None);
    assert_eq!(b.counter("n"), Ok(0));
    // A second handle on a namespace (another instance) sees it all.
    assert_eq!(s.namespace("a", QUOTA).counter("n"), Ok(1));
    assert_eq!(s.get("a", "n").as_deref(), Some(&b"1"[..]));
}

#[test]
fn the_quota_bounds_keys_and_values_together() {
    let s = store();
    let ns = s.namespace("p", 100);
    ns.set("a", vec![0; 90], None).unwrap();
    assert_eq!(ns.set("b", vec![0; 9], None), Err(KvError::QuotaExceeded));
    assert_eq!(
        ns.increment("counter", 1, None),
        Err(KvError::QuotaExceeded)
    );
    ns.set("b", vec![0; 8], None).unwrap();
    assert_eq!(s.used_bytes("p"), 100);
    // Replacing a value counts only the difference.
    ns.set("a", vec![1; 90], None).unwrap();
    assert_eq!(ns.set("a", vec![1; 91], None), Err(KvError::QuotaExceeded));
    assert_eq!(ns.get("a").map(|v| v.len()), Some(90), "left as it was");
    ns.delete("a");
    assert_eq!(s.used_bytes("p"), 9);
    ns.set("a", vec![0; 90], None).unwrap();
    // A zero quota: nothing can be written.
    let none = s.namespace("zero", 0);
    assert_eq!(none.increment("n", 1, None), Err(KvError::QuotaExceeded));
    assert_eq!(none.counter("n"), Ok(0));
}

#[test]
fn entries_expire_and_free_their_quota() {
    let s = store();
    let ns = s.namespace("p", 64);
    ns.set("short", vec![0; 40], Some(20)).unwrap();
    assert_eq!(ns.increment("n", 1, Some(20)), Ok(1));
    ns.set("long", vec![1], Some(60_000)).unwrap();
    // The ttl is set when a counter is made, not renewed.
    assert_eq!(ns.increment("n", 1, Some(60_000)), Ok(2));
    assert_eq!(
        ns.set("more", vec![0; 30], None),
        Err(KvError::QuotaExceeded)
    );
    std::thread::sleep(Duration::from_millis(40));
    assert_eq!(ns.counter("n"), Ok(0));
    assert_eq!(ns.get("long").as_deref(), Some(&[1][..]));
    // The write sweeps what expired, which makes room.
    ns.set("more", vec![0; 30], None).unwrap();
    assert_eq!(ns.get("short"), None);
    assert_eq!(s.used_bytes("p"), 4 + 1 + 4 + 30);
    assert!(lock(&s.space("p")).expiring.len() == 1, "only `long` left");
}

#[test]
fn two_replicas_lose_no_increment_through_interleaved_syncs() {
    let (a, b) = (store(), store());
    let (na, nb) = (a.namespace("p", QUOTA), b.namespace("p", QUOTA));
    let mut cluster = Cluster::default();
    let mut counted = 0;
    for round in 0..20_i64 {
        na.increment("n", round, None).unwrap();
        nb.increment("n", 2 * round, None).unwrap();
        counted += 3 * round;
        // Take, then an increment before the snapshot comes back.
        let changes = a.take_changes();
        na.increment("n", 1, None).unwrap();
        counted += 1;
        cluster.push(changes);
        if round % 3 == 0 {
            // b syncs between a's push and a's apply.
            cluster.sync(&b);
            nb.increment("n", 1, None).unwrap();
            counted += 1;
        }
        a.apply_snapshot(cluster.snapshot());
        // Each replica sees its own writes at once.
        assert!(na.counter("n").unwrap() >= 1);
    }
    cluster.sync(&a);
    cluster.sync(&b);
    cluster.sync(&a);
    assert_eq!(na.counter("n"), Ok(counted));
    assert_eq!(nb.counter("n"), Ok(counted));
    let snapshot = cluster.snapshot();
    assert_eq!(snapshot.len(), 1);
    assert_eq!(snapshot[0].value, KvSnapshotValue::Counter(counted));
}

#[test]
fn a_take_without_its_snapshot_keeps_the_pending_count() {
    let (a, b) = (store(), store());
    let (na, nb) = (a.namespace("p", QUOTA), b.namespace("p", QUOTA));
    let mut cluster = Cluster::default();
    na.increment("n", 5, None).unwrap();
    cluster.push(a.take_changes());
    assert_eq!(na.counter("n"), Ok(5), "pending still counts");
    na.increment("n", 1, None).unwrap();
    cluster.push(a.take_changes());
    nb.increment("n", 10, None).unwrap();
    cluster.sync(&b);
    assert_eq!(nb.counter("n"), Ok(16));
    a.apply_snapshot(cluster.snapshot());
    assert_eq!(na.counter("n"), Ok(16));
    assert!(a.take_changes().is_empty());
}

#[test]
fn values_are_last_writer_wins_and_local_changes_survive_a_snapshot() {
    let (a, b) = (store(), store());
    let (na, nb) = (a.namespace("p", QUOTA), b.namespace("p", QUOTA));
    let mut cluster = Cluster::default();
    na.set("k", b"a".to_vec(), None).unwrap();
    cluster.sync(&a);
    nb.set("k", b"b".to_vec(), None).unwrap();
    cluster.sync(&b);
    cluster.sync(&a);
    assert_eq!(na.get("k").as_deref(), Some(&b"b"[..]));
    // Changed here since the take: the snapshot does not undo it.
    let changes = a.take_changes();
    assert!(changes.is_empty(), "{changes:?}");
    na.set("k", b"a2".to_vec(), None).unwrap();
    a.apply_snapshot(cluster.snapshot());
    assert_eq!(na.get("k").as_deref(), Some(&b"a2"[..]));
    cluster.sync(&a);
    cluster.sync(&b);
    assert_eq!(nb.get("k").as_deref(), Some(&b"a2"[..]));
    // A delete travels too, and a snapshot before its take does not
    // bring the key back.
    nb.delete("k");
    b.apply_snapshot(cluster.snapshot());
    assert_eq!(nb.get("k"), None);
    cluster.sync(&b);
    cluster.sync(&a);
    assert_eq!(na.get("k"), None);
    assert!(cluster.snapshot().is_empty());
    assert_eq!(a.used_bytes("p"), 0);
    assert_eq!(b.used_bytes("p"), 0);
}

#[test]
fn a_counter_deleted_and_counted_again_starts_over_everywhere() {
    let (a, b) = (store(), store());
    let (na, nb) = (a.namespace("p", QUOTA), b.namespace("p", QUOTA));
    let mut cluster = Cluster::default();
    na.increment("n", 7, None).unwrap();
    cluster.sync(&a);
    cluster.sync(&b);
    assert_eq!(nb.counter("n"), Ok(7));
    nb.delete("n");
    nb.increment("n", 2, None).unwrap();
    let changes = b.take_changes();
    assert_eq!(
        changes.iter().map(|c| &c.op).collect::<Vec<_>>(),
        [
            &KvOp::Delete,
            &KvOp::Add {
                delta: 2,
                ttl_ms: None
            }
        ]
    );
    cluster.push(changes);
    b.apply_snapshot(cluster.snapshot());
    cluster.sync(&a);
    assert_eq!(na.counter("n"), Ok(2));
    assert_eq!(nb.counter("n"), Ok(2));
}

#[test]
fn ttls_travel_and_expire_on_every_replica() {
    let (a, b) = (store(), store());
    let (na, nb) = (a.namespace("p", QUOTA), b.namespace("p", QUOTA));
    let mut cluster = Cluster::default();
    na.increment("window", 3, Some(50)).unwrap();
    na.set("v", b"x".to_vec(), Some(50)).unwrap();
    let changes = a.take_changes();
    for c in &changes {
        match &c.op {
            KvOp::Add { ttl_ms, .. } | KvOp::Put { ttl_ms, .. } => {
                assert!(matches!(ttl_ms, Some(1..=50)), "{c:?}")
            }
            KvOp::Delete => panic!("{c:?}"),
        }
    }
    cluster.push(changes);
    b.apply_snapshot(cluster.snapshot());
    assert_eq!(nb.counter("window"), Ok(3));
    assert_eq!(nb.get("v").as_deref(), Some(&b"x"[..]));
    std::thread::sleep(Duration::from_millis(70));
    assert_eq!(nb.counter("window"), Ok(0));
    assert_eq!(nb.get("v"), None);
    assert_eq!(na.counter("window"), Ok(0));
    // Expired entries are not pushed.
    na.increment("window", 1, Some(10)).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    assert!(a.take_changes().is_empty());
    // The cluster dropped them too (its own expiry): the snapshot
    // lacks them, and nothing is left anywhere.
    assert!(cluster.snapshot().is_empty());
    a.apply_snapshot(cluster.snapshot());
    b.apply_snapshot(cluster.snapshot());
    assert_eq!(a.used_bytes("p"), 0);
    assert_eq!(b.used_bytes("p"), 0);
}

#[test]
fn a_snapshot_fills_namespaces_no_plugin_touched_yet() {
    let s = store();
    s.apply_snapshot(vec![KvSnapshotEntry {
        namespace: "later".into(),
        key: "n".into(),
        value: KvSnapshotValue::Counter(4),
        ttl_ms: None,
    }]);
    assert_eq!(s.namespace("later", QUOTA).increment("n", 1, None), Ok(5));
    let changes = s.take_changes();
    assert_eq!(
        changes,
        [KvChange {
            namespace: "later".into(),
            key: "n".into(),
            op: KvOp::Add {
                delta: 1,
                ttl_ms: None
            },
        }]
    );
}

#[test]
fn changes_and_snapshots_cross_as_plain_json() {
    let change = KvChange {
        namespace: "token-budget".into(),
        key: "tpm:acme:1".into(),
        op: KvOp::Add {
            delta: 6,
            ttl_ms: Some(120_000),
        },
    };
    assert_eq!(
        serde_json::to_value(&change).unwrap(),
        serde_json::json!({"namespace": "token-budget", "key": "tpm:acme:1",
                           "op": "add", "delta": 6, "ttl_ms": 120_000})
    );
    let delete: KvChange =
        serde_json::from_value(serde_json::json!({"namespace": "p", "key": "k", "op": "delete"}))
            .unwrap();
    assert_eq!(delete.op, KvOp::Delete);
    let entry: KvSnapshotEntry = serde_json::from_value(serde_json::json!(
        {"namespace": "p", "key": "k", "value": {"counter": 3}, "ttl_ms": null}
    ))
    .unwrap();
    assert_eq!(entry.value, KvSnapshotValue::Counter(3));
}

#[test]
fn tombstones_are_kept_only_while_syncing_and_bounded_by_the_quota() {
    let s = store();
    let ns = s.namespace("p", 10);
    for _ in 0..100 {
        ns.set("abcde", vec![0; 5], None).unwrap();
        ns.delete("abcde");
    }
    assert_eq!(s.used_bytes("p"), 0, "no tombstones before syncing");
    s.take_changes();
    ns.set("abcde", vec![0; 5], None).unwrap();
    ns.delete("abcde");
    assert_eq!(s.used_bytes("p"), 5, "the tombstone's key");
    assert_eq!(
        ns.set("other", vec![0; 1], None),
        Err(KvError::QuotaExceeded)
    );
    let changes = s.take_changes();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].op, KvOp::Delete);
    assert_eq!(s.used_bytes("p"), 0);
}
