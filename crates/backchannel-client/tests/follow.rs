//! The log follower verifies checkpoints from the leaves it is served and
//! agrees with the reference tree; it catches tampered leaves, rollbacks and
//! forks; accounting finds withheld and rewritten envelopes; receipts are
//! held to their merge deadline; the witness cosigns only what was verified.

use std::collections::BTreeSet;
use std::sync::OnceLock;

use backchannel_client::follow::{
    Advance, DataTile, EMPTY_ROOT, FollowError, Follower, MAX_MERGE_DELAY_MS, MAX_VERIFIED_ROOTS,
    NotMerged, Pending, PendingError, Reference, ReferenceProofError, SettleError, TileError,
    Withheld, Witness, WitnessError, data_tiles, parse_data_tile, withheld,
};
use backchannel_codec::{Decode, DecodeError, Encode, RoomId, TalksId};
use backchannel_crypto::{Digest, Signer, sha256};
use backchannel_statement::fixtures::{key, labels};
use backchannel_tlog::{
    BatchRecord, Checkpoint, Cosignature, CosignerKey, HashReader, LEAF_DATA_LEN, LeafData,
    LogOrigin, MemoryHashStore, NodeOrigin, SignedBatch, SignedCheckpoint, attach,
    verify_cosignatures, witness_name,
};
use proptest::prelude::*;

const TALKS: TalksId = TalksId([0x7a; 16]);
const ROOMS: [RoomId; 3] = [RoomId([1; 16]), RoomId([2; 16]), RoomId([3; 16])];
/// A device key that witnesses.
const WITNESS: u8 = labels::US_HEAD_DEVICE;

fn ok<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

fn origin() -> LogOrigin {
    LogOrigin::new(&ok(NodeOrigin::new("node.example")), TALKS)
}

/// The leaf at `seq` of a log; `history` tells two logs apart.
fn leaf(history: u8, seq: u64) -> LeafData {
    LeafData {
        seq,
        timestamp_ms: 1_700_000_000_000 + seq,
        room: ROOMS[(seq % 3) as usize],
        header_hash: sha256(format!("header {history} {seq}").as_bytes()),
        body_hash: sha256(format!("body {history} {seq}").as_bytes()),
    }
}

/// The node's side: the leaves and the reference tree.
struct Log {
    leaves: Vec<LeafData>,
    tree: MemoryHashStore,
}

impl Log {
    fn new(history: u8, size: u64) -> Self {
        let mut log = Log {
            leaves: Vec::new(),
            tree: MemoryHashStore::new(),
        };
        for seq in 0..size {
            let l = leaf(history, seq);
            ok(log.tree.append(&l.hash()));
            log.leaves.push(l);
        }
        log
    }

    fn root(&self, size: u64) -> Digest {
        ok(self.tree.root_at(size))
    }

    /// The node's signed checkpoint at `size`, as a client verifies it.
    fn checkpoint(&self, size: u64) -> SignedCheckpoint {
        signed(size, self.root(size))
    }

    fn leaves(&self, from: u64, to: u64) -> Vec<LeafData> {
        self.leaves[from as usize..to as usize].to_vec()
    }

    /// What the node serves for a data tile.
    fn tile(&self, t: &DataTile) -> Vec<u8> {
        let first = t.first_seq() as usize;
        self.leaves[first..first + t.width() as usize]
            .iter()
            .flat_map(|l| l.to_canonical_bytes())
            .collect()
    }

    /// The leaves `[from, to)` fetched through data tiles.
    fn fetch(&self, from: u64, to: u64) -> Vec<LeafData> {
        data_tiles(from, to)
            .flat_map(|t| ok(t.parse(&self.tile(&t))))
            .collect()
    }
}

/// A checkpoint signed by the node's log key and verified as a client does.
fn signed(size: u64, root: Digest) -> SignedCheckpoint {
    let cp = Checkpoint {
        origin: origin(),
        size,
        root,
    };
    let note = ok(cp.sign(&key(labels::NODE_LOG)));
    ok(SignedCheckpoint::verify(
        note.note(),
        &key(labels::NODE_LOG).public_key(),
        &origin(),
    ))
}

fn reference_log() -> &'static Log {
    static LOG: OnceLock<Log> = OnceLock::new();
    LOG.get_or_init(|| Log::new(0, 1100))
}

/// Follows `log` through `sizes` by data tiles, checking at each step the
/// root and compact range against the reference tree and the encoding.
fn check_path(log: &Log, sizes: &[u64]) -> Follower {
    let mut f = Follower::new();
    assert_eq!(f.root(), EMPTY_ROOT);
    assert_eq!(EMPTY_ROOT, sha256(b""));
    for &size in sizes {
        let leaves = log.fetch(f.size(), size);
        assert_eq!(leaves, log.leaves(f.size(), size), "tiles to {size}");
        f = ok(f.advance(&log.checkpoint(size), &leaves));
        assert_eq!(f.size(), size);
        assert_eq!(f.root(), log.root(size), "root at {size}");
        assert_eq!(f.root_at(size), Some(log.root(size)));
        // The compact range is the stored hashes of tlog_tiles' subtrees
        // of [0, size): one per set bit.
        let want = ok(log
            .tree
            .read_hashes(&tlog_tiles::sub_tree_index(0, size, vec![])));
        let got: Vec<_> = f.range().iter().map(|d| tlog_tiles::Hash(d.0)).collect();
        assert_eq!(got, want, "range at {size}");
        assert_eq!(f.range().len(), size.count_ones() as usize);
        for (s, r) in f.verified() {
            assert_eq!(*r, log.root(*s));
        }
        let bytes = f.to_canonical_bytes();
        assert_eq!(ok(Follower::from_canonical_bytes(&bytes)), f);
    }
    f
}

#[test]
fn advancing_agrees_with_the_reference_tree() {
    let log = reference_log();
    for path in [
        &[1, 7, 256, 257, 1000][..],
        &[1000],
        &[255, 256, 511, 512, 513],
        &[2, 3, 4, 5, 6, 7, 8, 9],
        &[300, 300, 1024, 1025, 1100],
        &[0, 1, 1],
    ] {
        let f = check_path(log, path);
        let distinct: BTreeSet<u64> = path.iter().copied().filter(|&s| s > 0).collect();
        assert_eq!(
            f.verified().keys().copied().collect::<BTreeSet<_>>(),
            distinct
        );
    }
}

#[test]
fn a_long_catch_up_goes_tile_by_tile() {
    let log = reference_log();
    let f = check_path(log, &[3]);
    let cp = log.checkpoint(1100);
    let mut advance: Advance<'_> = ok(f.begin(&cp));
    advance.note(600);
    advance.note(2); // already passed: ignored
    for t in data_tiles(advance.next(), advance.size()) {
        assert_eq!(t.wanted().start, advance.next());
        ok(advance.push(&ok(t.parse(&log.tile(&t)))));
    }
    let g = ok(advance.finish());
    assert_eq!(g.root(), log.root(1100));
    assert_eq!(g.root_at(600), Some(log.root(600)));
    assert_eq!(g.root_at(2), None);
    // Nothing changed in the follower it started from.
    assert_eq!(f.size(), 3);
}

#[test]
fn data_tile_paths() {
    fn check(from: u64, to: u64, want: &[(&str, u64, std::ops::Range<u64>)]) {
        let got: Vec<_> = data_tiles(from, to)
            .map(|t| (t.path(), t.first_seq(), t.wanted()))
            .collect();
        let want: Vec<_> = want
            .iter()
            .map(|(p, f, w)| ((*p).to_owned(), *f, w.clone()))
            .collect();
        assert_eq!(got, want, "{from}..{to}");
        for t in data_tiles(from, to) {
            let parsed = ok(tlog_tiles::Tile::from_path(&t.path()));
            assert!(parsed.is_data() && parsed.height() == 8);
            assert_eq!(u64::from(parsed.width()), t.width());
        }
    }
    check(0, 0, &[]);
    check(7, 7, &[]);
    check(9, 3, &[]);
    check(0, 1, &[("tile/8/data/000.p/1", 0, 0..1)]);
    check(0, 256, &[("tile/8/data/000", 0, 0..256)]);
    check(1, 7, &[("tile/8/data/000.p/7", 0, 1..7)]);
    check(
        255,
        257,
        &[
            ("tile/8/data/000", 0, 255..256),
            ("tile/8/data/001.p/1", 256, 256..257),
        ],
    );
    check(256, 512, &[("tile/8/data/001", 256, 256..512)]);
    check(
        300,
        1000,
        &[
            ("tile/8/data/001", 256, 300..512),
            ("tile/8/data/002", 512, 512..768),
            ("tile/8/data/003.p/232", 768, 768..1000),
        ],
    );
    check(
        256_000,
        256_010,
        &[("tile/8/data/x001/000.p/10", 256_000, 256_000..256_010)],
    );
    // Lazy: a huge range costs nothing until iterated.
    assert_eq!(
        data_tiles(0, u64::MAX).nth(1).map(|t| t.first_seq()),
        Some(256)
    );
    let last = data_tiles(u64::MAX - 3, u64::MAX).last();
    assert_eq!(last.map(|t| t.wanted()), Some(u64::MAX - 3..u64::MAX));
}

#[test]
fn data_tiles_are_parsed_strictly() {
    let log = reference_log();
    let three: Vec<u8> = log
        .leaves(256, 259)
        .iter()
        .flat_map(|l| l.to_canonical_bytes())
        .collect();
    assert_eq!(ok(parse_data_tile(&three, 256, 3)), log.leaves(256, 259));

    fn check(bytes: &[u8], first: u64, count: u64, want: TileError) {
        assert_eq!(parse_data_tile(bytes, first, count), Err(want));
    }
    let n = LEAF_DATA_LEN;
    check(
        &three[..3 * n - 1],
        256,
        3,
        TileError::Length {
            count: 3,
            len: 3 * n - 1,
        },
    );
    let mut long = three.clone();
    long.push(0);
    check(
        &long,
        256,
        3,
        TileError::Length {
            count: 3,
            len: 3 * n + 1,
        },
    );
    check(
        &three,
        256,
        2,
        TileError::Length {
            count: 2,
            len: 3 * n,
        },
    );
    check(&[], 256, 1, TileError::Length { count: 1, len: 0 });
    check(
        &three,
        256,
        u64::MAX,
        TileError::Length {
            count: u64::MAX,
            len: 3 * n,
        },
    );
    // Entries out of place, or from another tile.
    let mut swapped = three.clone();
    swapped[..n].copy_from_slice(&three[n..2 * n]);
    swapped[n..2 * n].copy_from_slice(&three[..n]);
    check(
        &swapped,
        256,
        3,
        TileError::Seq {
            index: 256,
            seq: 257,
        },
    );
    check(&three, 0, 3, TileError::Seq { index: 0, seq: 256 });
    // An entry that does not decode.
    let mut bad = three.clone();
    bad[n] = 2;
    assert!(matches!(
        parse_data_tile(&bad, 256, 3),
        Err(TileError::Entry {
            seq: 257,
            error: DecodeError::UnknownValue { .. }
        })
    ));
    // A tile's parse checks its whole width, and returns what was wanted.
    let t = ok(data_tiles(258, 259).next().ok_or("no tile"));
    assert_eq!(t.width(), 3);
    assert_eq!(ok(t.parse(&three)), log.leaves(258, 259));
    assert!(t.parse(&swapped).is_err());
}

#[test]
fn wrong_leaves_are_refused() {
    let log = reference_log();
    let f = check_path(log, &[10]);
    let cp = log.checkpoint(20);
    let good = log.leaves(10, 20);

    fn check(f: &Follower, cp: &SignedCheckpoint, leaves: &[LeafData], want: FollowError) {
        assert_eq!(f.advance(cp, leaves), Err(want));
    }
    // A tampered leaf: the node's checkpoint does not commit to it.
    for field in 0..4 {
        let mut tampered = good.clone();
        let l = &mut tampered[5];
        match field {
            0 => l.room = ROOMS[(l.seq as usize + 1) % 3],
            1 => l.timestamp_ms += 1,
            2 => l.header_hash = sha256(b"another header"),
            _ => l.body_hash = sha256(b"another body"),
        }
        let computed = {
            let mut g = f.begin(&cp).unwrap_or_else(|e| panic!("{e}"));
            ok(g.push(&tampered));
            match g.finish() {
                Err(FollowError::RootMismatch { computed, .. }) => computed,
                other => panic!("{other:?}"),
            }
        };
        check(
            &f,
            &cp,
            &tampered,
            FollowError::RootMismatch {
                size: 20,
                checkpoint: log.root(20),
                computed,
            },
        );
    }
    // A checkpoint whose root is not the leaves' (the node signed a forged
    // root, or serves other leaves).
    let forged = signed(20, Digest([9; 32]));
    assert!(matches!(
        f.advance(&forged, &good),
        Err(FollowError::RootMismatch { size: 20, .. })
    ));
    // Leaves out of order, missing, surplus, or starting elsewhere.
    let mut swapped = good.clone();
    swapped.swap(2, 3);
    check(
        &f,
        &cp,
        &swapped,
        FollowError::LeafIndex { index: 12, seq: 13 },
    );
    check(
        &f,
        &cp,
        &good[..9],
        FollowError::Short { size: 20, next: 19 },
    );
    check(&f, &cp, &[], FollowError::Short { size: 20, next: 10 });
    check(
        &f,
        &cp,
        &log.leaves(10, 21),
        FollowError::Surplus { size: 20, seq: 20 },
    );
    check(
        &f,
        &cp,
        &log.leaves(9, 19),
        FollowError::LeafIndex { index: 10, seq: 9 },
    );
    // The follower is untouched.
    assert_eq!(ok(f.advance(&cp, &good)).root(), log.root(20));
}

#[test]
fn rollbacks_and_forks_are_refused() {
    let log = reference_log();
    let other = Log::new(1, 20);
    let f = check_path(log, &[5, 10]);

    // The same checkpoint again is nothing new.
    assert_eq!(ok(f.advance(&log.checkpoint(10), &[])), f);
    // An older checkpoint: a rollback (even with the right root).
    assert_eq!(
        f.advance(&log.checkpoint(7), &[]),
        Err(FollowError::Rollback {
            verified: 10,
            offered: 7
        })
    );
    assert_eq!(
        f.advance(&log.checkpoint(5), &[]),
        Err(FollowError::Rollback {
            verified: 10,
            offered: 5
        })
    );
    // Another root at a verified size: a fork.
    for size in [10, 5] {
        assert_eq!(
            f.advance(&other.checkpoint(size), &[]),
            Err(FollowError::Fork {
                size,
                ours: log.root(size),
                theirs: other.root(size),
            })
        );
    }
    // Another root at an older size we no longer hold: a rollback.
    assert_eq!(
        f.advance(&other.checkpoint(7), &[]),
        Err(FollowError::Rollback {
            verified: 10,
            offered: 7
        })
    );
    // At size 0, only the empty root.
    let empty = Follower::new();
    assert_eq!(ok(empty.advance(&signed(0, EMPTY_ROOT), &[])), empty);
    assert_eq!(
        empty.advance(&signed(0, Digest([1; 32])), &[]),
        Err(FollowError::Fork {
            size: 0,
            ours: EMPTY_ROOT,
            theirs: Digest([1; 32]),
        })
    );
    // A larger checkpoint from another history does not hash from our leaves.
    assert!(matches!(
        f.advance(&other.checkpoint(20), &log.leaves(10, 20)),
        Err(FollowError::RootMismatch { .. })
    ));
}

#[test]
fn checkpoint_references() {
    let log = reference_log();
    let f = check_path(log, &[5, 10]);
    let mut a = ok(f.begin(&log.checkpoint(20)));
    a.note(13);
    ok(a.push(&log.leaves(10, 20)));
    let f = ok(a.finish());
    let other = Digest([7; 32]);

    fn check(f: &Follower, size: u64, root: Digest, want: Reference) {
        assert_eq!(f.compare_reference(size, &root), want, "size {size}");
    }
    check(&f, 0, Digest([0; 32]), Reference::Matches);
    check(&f, 0, EMPTY_ROOT, Reference::Matches);
    check(
        &f,
        0,
        other,
        Reference::Differs {
            size: 0,
            ours: EMPTY_ROOT,
            theirs: other,
        },
    );
    for size in [5, 10, 13, 20] {
        check(&f, size, log.root(size), Reference::Matches);
        check(
            &f,
            size,
            other,
            Reference::Differs {
                size,
                ours: log.root(size),
                theirs: other,
            },
        );
    }
    check(&f, 12, log.root(12), Reference::Unknown);
    check(&f, 21, log.root(21), Reference::Unknown);

    // A reference we do not hold, settled by a consistency proof.
    let proof = ok(log.tree.prove_consistency(12, 20));
    assert_eq!(
        f.compare_reference_with_proof(12, &log.root(12), &proof),
        Ok(Reference::Matches)
    );
    assert_eq!(
        f.compare_reference_with_proof(12, &other, &proof),
        Err(ReferenceProofError::Invalid {
            size: 12,
            verified: 20
        })
    );
    let wrong_sizes = ok(log.tree.prove_consistency(11, 20));
    assert!(
        f.compare_reference_with_proof(12, &log.root(12), &wrong_sizes)
            .is_err()
    );
    // Beyond our size stays unknown; what we hold ignores the proof.
    assert_eq!(
        f.compare_reference_with_proof(21, &log.root(21), &proof),
        Ok(Reference::Unknown)
    );
    assert_eq!(
        f.compare_reference_with_proof(10, &other, &proof),
        Ok(Reference::Differs {
            size: 10,
            ours: log.root(10),
            theirs: other
        })
    );
}

#[test]
fn verified_roots_are_bounded() {
    let log = reference_log();
    let f = check_path(log, &[1]);
    let mut a = ok(f.begin(&log.checkpoint(1100)));
    for size in 2..1100 {
        a.note(size);
    }
    ok(a.push(&log.leaves(1, 1100)));
    let f = ok(a.finish());
    assert_eq!(f.verified().len(), 1100);
    for (s, r) in f.verified() {
        assert_eq!(*r, log.root(*s));
    }
    // Past the bound, the oldest go.
    let big = Log::new(2, MAX_VERIFIED_ROOTS as u64 + 10);
    let end = big.leaves.len() as u64;
    let g = Follower::new();
    let mut a = ok(g.begin(&big.checkpoint(end)));
    for size in 1..end {
        a.note(size);
    }
    ok(a.push(&big.leaves(0, end)));
    let g = ok(a.finish());
    assert_eq!(g.verified().len(), MAX_VERIFIED_ROOTS);
    assert_eq!(
        g.verified().keys().next(),
        Some(&(end - MAX_VERIFIED_ROOTS as u64 + 1))
    );
    assert_eq!(g.root_at(5), None);
    assert_eq!(
        ok(Follower::from_canonical_bytes(&g.to_canonical_bytes())),
        g
    );
}

#[test]
fn accounting_finds_withheld_and_rewritten_envelopes() {
    let log = reference_log();
    let leaves = log.leaves(0, 12);
    let mine: BTreeSet<RoomId> = [ROOMS[0], ROOMS[1]].into();
    let rewritten = sha256(b"what the node delivered");
    // The archive: every envelope of my rooms but seq 4; seq 7 delivered
    // with another header; seq 2 (not my room) archived and right; seq 5
    // (not my room) archived but other than logged.
    let archived = |seq: u64| -> Option<Digest> {
        let l = &leaves[seq as usize];
        match seq {
            4 => None,
            7 | 5 => Some(rewritten),
            2 => Some(l.header_hash),
            _ if mine.contains(&l.room) => Some(l.header_hash),
            _ => None,
        }
    };
    assert_eq!(
        withheld(&leaves, &mine, archived),
        vec![
            Withheld::Missing {
                seq: 4,
                room: ROOMS[1]
            },
            Withheld::Mismatch {
                seq: 5,
                room: ROOMS[2],
                logged: leaves[5].header_hash,
                archived: rewritten,
            },
            Withheld::Mismatch {
                seq: 7,
                room: ROOMS[1],
                logged: leaves[7].header_hash,
                archived: rewritten,
            },
        ]
    );
    // A complete archive accounts for everything; no rooms, nothing owed.
    assert_eq!(
        withheld(&leaves, &mine, |s| Some(leaves[s as usize].header_hash)),
        vec![]
    );
    assert_eq!(withheld(&leaves, &BTreeSet::new(), |_| None), vec![]);
}

#[test]
fn receipts_are_held_to_the_merge_deadline() {
    let log = reference_log();
    let node = key(labels::NODE_LOG);
    let f = check_path(log, &[10]);
    // The client's envelopes at seqs 10 and 11, receipted in two batches.
    let mut pending = Pending::new();
    for (seq, batch_time) in [(10u64, 1_000u64), (11, 3_000)] {
        let l = log.leaves[seq as usize];
        let record = BatchRecord {
            talks: TALKS,
            seq,
            timestamp_ms: l.timestamp_ms,
            leaf_hash: l.hash(),
        };
        let batch = ok(SignedBatch::sign(&node, vec![record], batch_time));
        let receipt = ok(batch.receipt(0).ok_or("no receipt"));
        ok(receipt.verify(&node.public_key(), TALKS, seq, l.timestamp_ms, &l.hash()));
        ok(pending.add(seq, l.hash(), receipt.batch_timestamp_ms()));
        ok(pending.add(seq, l.hash(), receipt.batch_timestamp_ms())); // again: no-op
    }
    assert_eq!(
        pending.add(11, Digest([1; 32]), 3_000),
        Err(PendingError::Conflict {
            seq: 11,
            held: log.leaves[11].hash(),
            offered: Digest([1; 32])
        })
    );
    assert_eq!(pending.len(), 2);
    // Nothing below the verified size yet: settling is a no-op.
    ok(pending.settle(&f, &[]));

    fn check(p: &Pending, now: u64, want: &[(u64, u64)]) {
        let want: Vec<_> = want
            .iter()
            .map(|&(seq, receipt_time_ms)| NotMerged {
                seq,
                receipt_time_ms,
            })
            .collect();
        assert_eq!(p.overdue(now), want, "at {now}");
    }
    check(&pending, 0, &[]);
    check(&pending, 1_000 + MAX_MERGE_DELAY_MS - 1, &[]);
    check(&pending, 1_000 + MAX_MERGE_DELAY_MS, &[(10, 1_000)]);
    check(
        &pending,
        3_000 + MAX_MERGE_DELAY_MS,
        &[(10, 1_000), (11, 3_000)],
    );
    check(&pending, u64::MAX, &[(10, 1_000), (11, 3_000)]);

    // Persisted and restored.
    let bytes = pending.to_canonical_bytes();
    assert_eq!(ok(Pending::from_canonical_bytes(&bytes)), pending);

    // The log reaches 11: seq 10 settles, 11 still waits.
    let leaves = log.leaves(10, 11);
    let g = ok(f.advance(&log.checkpoint(11), &leaves));
    assert_eq!(
        pending.clone().settle(&g, &[]),
        Err(SettleError::LeafNotGiven { seq: 10 })
    );
    ok(pending.settle(&g, &leaves));
    assert_eq!(pending.seqs().collect::<Vec<_>>(), vec![11]);
    check(&pending, u64::MAX, &[(11, 3_000)]);

    // A receipt promising a leaf the verified log does not hold: evidence.
    let mut lied = pending.clone();
    ok(lied.add(12, Digest([2; 32]), 4_000));
    let leaves = log.leaves(11, 13);
    let h = ok(g.advance(&log.checkpoint(13), &leaves));
    assert_eq!(
        lied.settle(&h, &leaves),
        Err(SettleError::LeafDiffers {
            seq: 12,
            promised: Digest([2; 32]),
            logged: log.leaves[12].hash(),
        })
    );
    assert_eq!(lied.len(), 2, "nothing settles on an error");
    ok(pending.settle(&h, &leaves));
    assert!(pending.is_empty());
    check(&pending, u64::MAX, &[]);

    // A receipt that arrives after the follower passed its seq settles with
    // an inclusion proof.
    let mut late = Pending::new();
    ok(late.add(3, log.leaves[3].hash(), 500));
    ok(late.add(4, Digest([3; 32]), 500));
    let proof = ok(log.tree.prove_inclusion(3, 13));
    ok(late.settle_with_proof(&h, 3, &proof));
    let proof4 = ok(log.tree.prove_inclusion(4, 13));
    assert_eq!(
        late.settle_with_proof(&h, 4, &proof4),
        Err(SettleError::BadProof { seq: 4 })
    );
    assert_eq!(late.seqs().collect::<Vec<_>>(), vec![4]);
}

#[test]
fn the_witness_cosigns_only_what_was_verified() {
    let log = reference_log();
    let other = Log::new(1, 20);
    let me = key(WITNESS);
    let cosigner = ok(CosignerKey::new(
        &witness_name(&me.public_key().id()),
        me.public_key(),
    ));
    let f = check_path(log, &[5, 10]);
    let mut w = Witness::new();
    assert_eq!(w.last_cosigned(), None);

    fn check(w: &mut Witness, f: &Follower, cp: &SignedCheckpoint, want: WitnessError) {
        let before = w.clone();
        assert_eq!(
            w.cosign(f, cp, &key(WITNESS), 1_700_000_000).map(|_| ()),
            Err(want)
        );
        assert_eq!(*w, before, "a refusal changes nothing");
    }
    // Not verified: beyond the follower, or another root at its size.
    check(
        &mut w,
        &f,
        &log.checkpoint(11),
        WitnessError::Unverified { size: 11 },
    );
    check(
        &mut w,
        &f,
        &log.checkpoint(7),
        WitnessError::Unverified { size: 7 },
    );
    check(
        &mut w,
        &f,
        &other.checkpoint(10),
        WitnessError::Disagrees {
            size: 10,
            verified: log.root(10),
            offered: other.root(10),
        },
    );

    // A verified checkpoint: a line the node and any verifier accept.
    let cp = log.checkpoint(10);
    let line = ok(w.cosign(&f, &cp, &me, 1_700_000_000));
    assert_eq!(w.last_cosigned(), Some((10, log.root(10))));
    let cos = ok(Cosignature::from_line(&line));
    assert_eq!(cos.name(), cosigner.name());
    assert_eq!(cos.timestamp(), 1_700_000_000);
    ok(cos.verify(&cosigner, &cp.body()));
    let note = ok(attach(cp.note(), &cos));
    assert_eq!(
        ok(verify_cosignatures(&note, std::slice::from_ref(&cosigner))),
        vec![cos]
    );
    // The same checkpoint again (a retry) is fine.
    ok(w.cosign(&f, &cp, &me, 1_700_000_001));

    // Older than the last cosigned, even if verified.
    check(
        &mut w,
        &f,
        &log.checkpoint(5),
        WitnessError::Older {
            cosigned: 10,
            offered: 5,
        },
    );
    // Another root at the cosigned size: a fork (before asking the follower).
    check(
        &mut w,
        &f,
        &other.checkpoint(10),
        WitnessError::Fork {
            size: 10,
            cosigned: log.root(10),
            offered: other.root(10),
        },
    );
    // A follower rebuilt on another history cannot get a larger checkpoint
    // cosigned either.
    let rebuilt = check_path(&other, &[10, 20]);
    check(
        &mut w,
        &rebuilt,
        &other.checkpoint(20),
        WitnessError::Fork {
            size: 10,
            cosigned: log.root(10),
            offered: other.root(10),
        },
    );
    // Onwards along the verified log.
    let g = ok(f.advance(&log.checkpoint(12), &log.leaves(10, 12)));
    ok(w.cosign(&g, &log.checkpoint(12), &me, 1_700_000_002));
    assert_eq!(w.last_cosigned(), Some((12, log.root(12))));

    // Persisted and restored.
    for state in [Witness::new(), w.clone()] {
        let bytes = state.to_canonical_bytes();
        assert_eq!(ok(Witness::from_canonical_bytes(&bytes)), state);
    }
    assert_eq!(me.public_key(), *cosigner.public_key());
}

#[test]
fn encodings_are_strict() {
    let log = reference_log();
    let f = check_path(log, &[5, 258]);
    let bytes = f.to_canonical_bytes();
    // version, size, 2 range hashes, count, 2 verified roots
    assert_eq!(bytes.len(), 1 + 8 + 2 * 32 + 4 + 2 * 40);
    let refused = |b: &[u8]| Follower::from_canonical_bytes(b).is_err();
    let mut trailing = bytes.clone();
    trailing.push(0);
    assert!(refused(&trailing));
    assert!(refused(&bytes[..bytes.len() - 1]));
    let mut v2 = bytes.clone();
    v2[0] = 2;
    assert!(refused(&v2));
    // A range hash changed: the last verified root is no longer the range's.
    let mut range = bytes.clone();
    range[9] ^= 1;
    assert!(refused(&range));
    // Verified sizes out of order, or past the size.
    let mut swapped = bytes.clone();
    let roots = 1 + 8 + 64 + 4;
    swapped[roots..roots + 40].copy_from_slice(&bytes[roots + 40..roots + 80]);
    swapped[roots + 40..roots + 80].copy_from_slice(&bytes[roots..roots + 40]);
    assert!(refused(&swapped));
    // No verified roots at a non-zero size.
    let mut none = bytes[..roots].to_vec();
    none[roots - 4..].copy_from_slice(&[0; 4]);
    assert!(refused(&none));
    // The empty follower.
    let empty = Follower::new().to_canonical_bytes();
    assert_eq!(empty, [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(ok(Follower::from_canonical_bytes(&empty)), Follower::new());

    // Witness: presence byte, trailing bytes.
    let w = Witness::new().to_canonical_bytes();
    assert_eq!(w, [1, 0]);
    assert!(Witness::from_canonical_bytes(&[1, 2]).is_err());
    assert!(Witness::from_canonical_bytes(&[1, 0, 0]).is_err());
    assert!(Witness::from_canonical_bytes(&[2, 0]).is_err());

    // Pending: sorted, unique, no trailing bytes.
    let mut p = Pending::new();
    ok(p.add(1, Digest([1; 32]), 10));
    ok(p.add(2, Digest([2; 32]), 20));
    let bytes = p.to_canonical_bytes();
    assert_eq!(bytes.len(), 1 + 4 + 2 * 48);
    let mut trailing = bytes.clone();
    trailing.push(0);
    assert!(Pending::from_canonical_bytes(&trailing).is_err());
    let mut dup = bytes.clone();
    dup[5 + 48..5 + 56].copy_from_slice(&1u64.to_be_bytes());
    assert!(Pending::from_canonical_bytes(&dup).is_err());
    assert!(Pending::from_canonical_bytes(&[1, 0xff, 0xff, 0xff, 0xff]).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any sequence of checkpoint sizes, with the leaves pushed in any
    /// chunks, ends at the reference root.
    #[test]
    fn random_split_points_reach_the_reference_root(
        mut sizes in proptest::collection::vec(0u64..=1100, 1..8),
        chunk in 1usize..300,
    ) {
        let log = reference_log();
        sizes.sort_unstable();
        let mut f = Follower::new();
        for &size in &sizes {
            let mut a = ok(f.begin(&log.checkpoint(size)));
            for part in log.leaves(a.next(), size).chunks(chunk) {
                ok(a.push(part));
            }
            f = ok(a.finish());
            prop_assert_eq!(f.root(), log.root(size));
        }
        let last = sizes[sizes.len() - 1];
        prop_assert_eq!(f.size(), last);
        let direct = ok(Follower::new().advance(&log.checkpoint(last), &log.leaves(0, last)));
        prop_assert_eq!(f.range(), direct.range());
        prop_assert_eq!(
            ok(Follower::from_canonical_bytes(&f.to_canonical_bytes())),
            f
        );
    }
}
