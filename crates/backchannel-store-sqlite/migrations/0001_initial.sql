-- Schema version 1: talks, access lists, envelopes with their receipts, log
-- heads, integrated tree hashes and checkpoints (storage contract version 1).
--
-- Ids and hashes are raw BLOBs with their lengths checked; u64 values are
-- INTEGERs (i64) checked non-negative. Tables are STRICT so that a value of
-- the wrong type is refused on write rather than surfacing on read.

-- One row per talks, never deleted.
CREATE TABLE talks (
    talks      BLOB    NOT NULL PRIMARY KEY CHECK (length(talks) = 16),
    creator    BLOB    NOT NULL CHECK (length(creator) = 32),
    created_at INTEGER NOT NULL CHECK (created_at >= 0)
) STRICT, WITHOUT ROWID;

-- The current access list of each talks (replaced by compare-and-swap).
CREATE TABLE access_lists (
    talks   BLOB    NOT NULL PRIMARY KEY REFERENCES talks (talks),
    version INTEGER NOT NULL CHECK (version >= 0),
    hash    BLOB    NOT NULL CHECK (length(hash) = 32),
    bytes   BLOB    NOT NULL
) STRICT;

-- The head of each talks' log: the next seq (= log size), the last node
-- timestamp (timestamps never decrease along a log) and how many leaves are
-- integrated into the tree. Written in the same transaction as the rows it
-- counts, so it can never disagree with them.
CREATE TABLE log_heads (
    talks           BLOB    NOT NULL PRIMARY KEY REFERENCES talks (talks),
    next_seq        INTEGER NOT NULL CHECK (next_seq >= 0),
    last_time       INTEGER NOT NULL CHECK (last_time >= 0),
    integrated_size INTEGER NOT NULL CHECK (integrated_size >= 0 AND integrated_size <= next_seq)
) STRICT, WITHOUT ROWID;

-- Every sequenced envelope, with its receipt. `body` is NULL once purged;
-- everything else stays so proofs and receipts keep verifying. The unique
-- (talks, sender, idempotency_key) makes retries find their original, even
-- after a restart.
CREATE TABLE envelopes (
    talks           BLOB    NOT NULL REFERENCES talks (talks),
    seq             INTEGER NOT NULL CHECK (seq >= 0),
    node_time       INTEGER NOT NULL CHECK (node_time >= 0),
    room            BLOB    NOT NULL CHECK (length(room) = 16),
    sender          BLOB    NOT NULL CHECK (length(sender) = 32),
    idempotency_key BLOB    NOT NULL CHECK (length(idempotency_key) = 16),
    header          BLOB    NOT NULL,
    header_hash     BLOB    NOT NULL CHECK (length(header_hash) = 32),
    body            BLOB,
    body_hash       BLOB    NOT NULL CHECK (length(body_hash) = 32),
    leaf_hash       BLOB    NOT NULL CHECK (length(leaf_hash) = 32),
    receipt         BLOB    NOT NULL,
    PRIMARY KEY (talks, seq),
    UNIQUE (talks, sender, idempotency_key)
) STRICT;

-- Stored tree hashes of each talks' log (indexes as in
-- `tlog_tiles::stored_hash_index`), written by integration.
CREATE TABLE tree_hashes (
    talks BLOB    NOT NULL REFERENCES talks (talks),
    idx   INTEGER NOT NULL CHECK (idx >= 0),
    hash  BLOB    NOT NULL CHECK (length(hash) = 32),
    PRIMARY KEY (talks, idx)
) STRICT, WITHOUT ROWID;

-- Signed checkpoints (C2SP signed notes with gathered cosignature lines),
-- one per integrated size; the latest is the one with the largest size.
CREATE TABLE checkpoints (
    talks BLOB    NOT NULL REFERENCES talks (talks),
    size  INTEGER NOT NULL CHECK (size >= 0),
    note  BLOB    NOT NULL,
    PRIMARY KEY (talks, size)
) STRICT;
