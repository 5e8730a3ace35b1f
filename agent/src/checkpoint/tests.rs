use super::*;
use std::collections::HashSet;

fn identity(inode: u64) -> FileIdentity {
    FileIdentity {
        dev: 1,
        inode,
        fingerprint_len: 10,
        fingerprint: 0xdead,
    }
}

#[test]
fn offset_advances_only_over_contiguous_acks() {
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::open(dir.path()).unwrap();
    let s = SourceId(7);
    reg.register(s, identity(1), "/a.log".into(), 0);
    for (id, end) in [(1, 100), (2, 200), (3, 300)] {
        assert_eq!(reg.next_package_id(s), id);
        reg.sent(s, id, end);
    }
    reg.acked(s, 2);
    assert_eq!(reg.acked_offset(s), Some(0), "package 1 not acked yet");
    reg.acked(s, 1);
    assert_eq!(reg.acked_offset(s), Some(200));
    reg.acked(s, 3);
    assert_eq!(reg.acked_offset(s), Some(300));
    assert_eq!(reg.in_flight(), 0);
}

#[test]
fn persist_and_reload_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let s = SourceId(42);
    {
        let reg = Registry::open(dir.path()).unwrap();
        reg.register(s, identity(5), "/var/log/x.log".into(), 0);
        reg.sent(s, 1, 1234);
        reg.acked(s, 1);
        reg.sent(s, 2, 9999); // never acked: must not be persisted
        reg.mark_closed(s);
        reg.persist().unwrap();
        assert!(reg.age().unwrap() < 5.0);
    }
    let reg = Registry::open(dir.path()).unwrap();
    let c = reg.lookup(1, 5).unwrap();
    assert_eq!(c.source_id, s);
    assert_eq!(c.offset, 1234);
    assert_eq!(c.last_package_id, 1);
    assert!(c.closed);
    assert_eq!(c.path, PathBuf::from("/var/log/x.log"));
    assert_eq!(c.identity, identity(5));
    // Resuming continues package numbering after the last acknowledged package.
    reg.register(s, c.identity, c.path.clone(), c.offset);
    assert_eq!(reg.next_package_id(s), 2);
    assert_eq!(reg.snapshot().len(), 1, "claimed, not duplicated");
}

#[test]
fn forgotten_source_stays_until_acked() {
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::open(dir.path()).unwrap();
    let s = SourceId(1);
    reg.register(s, identity(1), "/a".into(), 0);
    reg.sent(s, 1, 10);
    reg.forget(s);
    assert_eq!(reg.acked_offset(s), Some(0));
    reg.acked(s, 1);
    assert_eq!(reg.acked_offset(s), None);
    assert!(reg.snapshot().is_empty());
}

#[test]
fn corrupt_file_is_moved_aside_and_collection_starts_over() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(FILE_NAME), b"LTCK\0\0\0\0garbage").unwrap();
    let reg = Registry::open(dir.path()).unwrap();
    assert!(reg.snapshot().is_empty());
    assert!(dir.path().join(format!("{FILE_NAME}.corrupt")).exists());
}

#[test]
fn torn_tmp_file_is_ignored_and_complete_tmp_file_wins() {
    let dir = tempfile::tempdir().unwrap();
    let s = SourceId(3);
    {
        let reg = Registry::open(dir.path()).unwrap();
        reg.register(s, identity(9), "/b".into(), 77);
        reg.persist().unwrap();
    }
    // A crash in the middle of writing the tmp file.
    std::fs::write(dir.path().join(TMP_NAME), b"LTC").unwrap();
    let reg = Registry::open(dir.path()).unwrap();
    assert_eq!(reg.lookup(1, 9).unwrap().offset, 77);
    // A crash after the tmp file's fsync, before the rename: the tmp file is newer.
    reg.register(s, identity(9), "/b".into(), 77);
    reg.sent(s, 1, 88);
    reg.acked(s, 1);
    reg.persist().unwrap();
    std::fs::copy(dir.path().join(FILE_NAME), dir.path().join(TMP_NAME)).unwrap();
    {
        let reg2 = Registry::open(dir.path()).unwrap();
        assert_eq!(reg2.lookup(1, 9).unwrap().offset, 88);
    }
}

#[test]
fn reused_inode_retires_the_old_source() {
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::open(dir.path()).unwrap();
    reg.register(SourceId(1), identity(4), "/a".into(), 50);
    reg.register(SourceId(2), identity(4), "/a".into(), 0);
    let snap = reg.snapshot();
    assert_eq!(snap.len(), 1);
    assert_eq!(snap[0].source_id, SourceId(2));
}

#[test]
fn entries_of_files_gone_while_down_are_dropped_after_the_first_scan() {
    let dir = tempfile::tempdir().unwrap();
    {
        let reg = Registry::open(dir.path()).unwrap();
        reg.register(SourceId(1), identity(1), "/kept".into(), 10);
        reg.register(SourceId(2), identity(2), "/gone".into(), 20);
        // Its last known size survives the restart: 30 bytes were never read.
        reg.observed_size(SourceId(2), 50);
        reg.persist().unwrap();
    }
    let reg = Registry::open(dir.path()).unwrap();
    assert_eq!(reg.lookup(1, 2).unwrap().size, 50);
    let found: HashSet<(u64, u64)> = [(1, 1)].into_iter().collect();
    assert_eq!(reg.retain_unclaimed(&found), (1, 30));
    let snap = reg.snapshot();
    assert_eq!(snap.len(), 1);
    assert_eq!(snap[0].source_id, SourceId(1));
    // A closed file from the earlier run that vanishes later is forgotten too.
    reg.forget(SourceId(1));
    assert!(reg.snapshot().is_empty());
}

#[test]
fn progress_counts_only_acks_that_advance_an_offset() {
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::open(dir.path()).unwrap();
    let s = SourceId(5);
    reg.register(s, identity(2), "/p".into(), 0);
    reg.sent(s, 1, 10);
    reg.sent(s, 2, 20);
    reg.acked(s, 2);
    assert_eq!(reg.progress(), 0, "package 1 still holds the offset back");
    reg.acked(s, 1);
    assert_eq!(reg.progress(), 1);
    reg.acked(SourceId(99), 1);
    assert_eq!(reg.progress(), 1, "an unknown source changes nothing");
}

#[test]
fn ensure_durable_persists_a_new_source_id_once() {
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::open(dir.path()).unwrap();
    let s = SourceId(11);
    reg.register(s, identity(3), "/n".into(), 0);
    reg.ensure_durable(s).unwrap();
    assert_eq!(
        Registry::open(dir.path())
            .unwrap()
            .lookup(1, 3)
            .map(|c| c.source_id),
        Some(s),
        "the id is on disk before any package of the source is shipped"
    );
    std::fs::remove_file(dir.path().join(FILE_NAME)).unwrap();
    reg.ensure_durable(s).unwrap();
    assert!(!dir.path().join(FILE_NAME).exists(), "persisted only once");

    // A source resumed from the table on disk needs no write.
    reg.persist().unwrap();
    let reg = Registry::open(dir.path()).unwrap();
    std::fs::remove_file(dir.path().join(FILE_NAME)).unwrap();
    reg.register(s, identity(3), "/n".into(), 0);
    reg.ensure_durable(s).unwrap();
    assert!(
        !dir.path().join(FILE_NAME).exists(),
        "resumed: already durable"
    );
}

/// A file read by two configs: the persisted offset is the slower reader's, and a
/// branch that ended and was acknowledged no longer holds it back.
#[test]
fn branch_holds_its_parent_back_until_it_catches_up_or_ends() {
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::open(dir.path()).unwrap();
    let (file, branch) = (SourceId(7), SourceId(8));
    reg.register(file, identity(1), "/a.log".into(), 100);
    reg.register_branch(file, branch);
    assert_eq!(
        reg.acked_offset(branch),
        Some(100),
        "starts at the parent's"
    );
    assert_eq!(reg.next_package_id(branch), 1);
    reg.sent(file, reg.next_package_id(file), 300);
    reg.sent(branch, 1, 200);
    reg.sent(branch, 2, 300);
    assert_eq!(reg.in_flight(), 3);
    reg.acked(file, 1);
    let offset = |reg: &Registry| reg.lookup(1, 1).unwrap().offset;
    assert_eq!(offset(&reg), 100, "the branch acknowledged nothing yet");
    reg.acked(branch, 1);
    assert_eq!(offset(&reg), 200);
    assert_eq!(
        reg.snapshot()[0].offset,
        200,
        "persisted as the slower reader's"
    );
    reg.ensure_durable(branch).unwrap();
    reg.end_branch(branch);
    assert_eq!(offset(&reg), 200, "ended, but package 2 is still in flight");
    reg.acked(branch, 2);
    assert_eq!(offset(&reg), 300);
    assert_eq!(reg.acked_offset(branch), None, "gone once drained");
    assert_eq!(reg.in_flight(), 0);
}

#[test]
fn resumable_holds_unclaimed_loaded_entries_and_open_live_sources() {
    let dir = tempfile::tempdir().unwrap();
    {
        let reg = Registry::open(dir.path()).unwrap();
        reg.register(SourceId(1), identity(1), "/a.log".into(), 0);
        reg.sent(SourceId(1), 1, 100);
        reg.acked(SourceId(1), 1);
        reg.persist().unwrap();
    }
    let reg = Registry::open(dir.path()).unwrap();
    // A new live source, acknowledged up to 50, with a package in flight past it.
    reg.register(SourceId(2), identity(2), "/b.log".into(), 0);
    reg.sent(SourceId(2), 1, 50);
    reg.acked(SourceId(2), 1);
    reg.sent(SourceId(2), 2, 80);
    // Closed and forgotten sources are not resumed by a rebuilt file source.
    reg.register(SourceId(3), identity(3), "/c.log".into(), 0);
    reg.mark_closed(SourceId(3));
    reg.register(SourceId(4), identity(4), "/d.log".into(), 0);
    reg.forget(SourceId(4));
    let mut got: Vec<(u64, u64)> = reg
        .resumable()
        .iter()
        .map(|c| (c.source_id.0, c.offset))
        .collect();
    got.sort();
    assert_eq!(got, [(1, 100), (2, 50)]);
    // Claimed by a source, the loaded entry is resumable as that live source.
    reg.register(SourceId(1), identity(1), "/a.log".into(), 100);
    assert_eq!(reg.resumable().len(), 2);
}

/// A table written by an agent before sizes were kept still loads; its files' sizes
/// are taken as their offsets, so nothing is counted as lost for them at this start.
#[test]
fn a_version_1_table_loads_with_sizes_at_the_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let file = CheckpointFile::V1 {
        entries: vec![EntryV1 {
            source_id: 7,
            dev: 1,
            inode: 3,
            fingerprint_len: 10,
            fingerprint: 0xdead,
            path: b"/old".to_vec(),
            offset: 40,
            last_package_id: 2,
            closed: 0,
        }],
    };
    let body = rkyv::to_bytes::<rkyv::rancor::Error>(&file).unwrap();
    let mut bytes = MAGIC.to_vec();
    bytes.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    bytes.extend_from_slice(&body);
    std::fs::write(dir.path().join(FILE_NAME), bytes).unwrap();
    let reg = Registry::open(dir.path()).unwrap();
    let cp = reg.lookup(1, 3).unwrap();
    assert_eq!((cp.source_id, cp.offset, cp.size), (SourceId(7), 40, 40));
    assert_eq!(reg.retain_unclaimed(&HashSet::new()), (1, 0));
}

/// A source read on from another file (logrotate's copy of a file copy-truncated
/// while the agent was stopped) keeps its offset and its package numbering there.
#[test]
fn a_loaded_source_continued_on_another_file_keeps_its_numbering() {
    let dir = tempfile::tempdir().unwrap();
    {
        let reg = Registry::open(dir.path()).unwrap();
        reg.register(SourceId(5), identity(1), "/a.log".into(), 0);
        reg.sent(SourceId(5), 1, 40);
        reg.acked(SourceId(5), 1);
        reg.persist().unwrap();
    }
    let reg = Registry::open(dir.path()).unwrap();
    let checkpoint = reg.lookup(1, 1).unwrap();
    reg.continue_on(&checkpoint, identity(2));
    assert!(
        reg.lookup(1, 1).is_none(),
        "the truncated file is a new one"
    );
    reg.register(SourceId(5), identity(2), "/a.log".into(), 40);
    assert_eq!(reg.next_package_id(SourceId(5)), 2);
    assert_eq!(reg.acked_offset(SourceId(5)), Some(40));
    // Another source's entry is not moved.
    reg.continue_on(
        &FileCheckpoint {
            source_id: SourceId(9),
            ..checkpoint
        },
        identity(3),
    );
    assert!(reg.lookup(1, 3).is_none());
}

#[test]
fn a_tracked_source_follows_acks_and_is_never_persisted() {
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::open(dir.path()).unwrap();
    let file = SourceId(7);
    reg.register(file, identity(1), "/a.log".into(), 0);
    reg.sent(file, 1, 10);
    reg.acked(file, 1);
    let net = SourceId(99);
    reg.track(net);
    for (id, end) in [(1, 100), (2, 250)] {
        assert_eq!(reg.next_package_id(net), id);
        reg.sent(net, id, end);
    }
    reg.acked(net, 2);
    assert_eq!(reg.acked_offset(net), Some(0), "package 1 not acked yet");
    reg.acked(net, 1);
    assert_eq!(reg.acked_offset(net), Some(250));
    reg.persist().unwrap();
    let entries = reg.snapshot();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0].offset, 10, "a tracked source holds no file back");
    reg.end_branch(net);
    assert_eq!(
        reg.acked_offset(net),
        None,
        "gone once ended with nothing in flight"
    );
    let reopened = Registry::open(dir.path()).unwrap();
    assert_eq!(reopened.snapshot().len(), 1);
}
