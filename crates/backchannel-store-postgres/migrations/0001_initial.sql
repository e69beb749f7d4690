-- Schema version 1 of the PostgreSQL backend: the whole of storage contract
-- version 3 (the SQLite backend reached it in three migrations; this
-- backend starts there). Talks, access lists, envelopes with their receipts,
-- log heads, integrated tree hashes and checkpoints; invitations, pending
-- access-list changes, blobs; MLS room state, commits and key packages.
--
-- Conventions, as in the SQLite schema: ids and hashes are raw BYTEA with
-- their lengths checked; u64 values are BIGINT checked non-negative (the
-- contract keeps every number below 2^63); flags are BOOLEAN. Tables are
-- created in the schema first on the connection's `search_path` (the
-- store's own schema when one is configured).

-- One row per talks, never deleted. `FOR NO KEY UPDATE` on this row is the
-- talks lock that serialises invitation, blob and key-package writes of a
-- talks (it does not block the key-share locks foreign keys take).
CREATE TABLE talks (
    talks      BYTEA  NOT NULL PRIMARY KEY CHECK (octet_length(talks) = 16),
    creator    BYTEA  NOT NULL CHECK (octet_length(creator) = 32),
    created_at BIGINT NOT NULL CHECK (created_at >= 0)
);

-- The current access list of each talks (replaced by compare-and-swap
-- under this row's lock).
CREATE TABLE access_lists (
    talks   BYTEA  NOT NULL PRIMARY KEY REFERENCES talks (talks),
    version BIGINT NOT NULL CHECK (version >= 0),
    hash    BYTEA  NOT NULL CHECK (octet_length(hash) = 32),
    bytes   BYTEA  NOT NULL
);

-- The head of each talks' log: the next seq (= log size), the last node
-- timestamp (timestamps never decrease along a log) and how many leaves are
-- integrated into the tree. It is the sequencing counter: `sequence` and
-- `integrate` lock it (`SELECT … FOR UPDATE`) and write it in the same
-- transaction as the rows it counts, so seqs are handed out in one order
-- across connections and nodes, and a rolled-back transaction rolls the
-- counter back with its envelopes (no gaps).
CREATE TABLE log_heads (
    talks           BYTEA  NOT NULL PRIMARY KEY REFERENCES talks (talks),
    next_seq        BIGINT NOT NULL CHECK (next_seq >= 0),
    last_time       BIGINT NOT NULL CHECK (last_time >= 0),
    integrated_size BIGINT NOT NULL
        CHECK (integrated_size >= 0 AND integrated_size <= next_seq)
);

-- The integrator's work list (`unintegrated_talks`): only talks with
-- leaves not yet integrated are in this index.
CREATE INDEX log_heads_unintegrated ON log_heads (talks)
    WHERE integrated_size < next_seq;

-- Every sequenced envelope, with its receipt. `body` is NULL once purged;
-- everything else stays so proofs and receipts keep verifying. The unique
-- (talks, sender, idempotency_key) makes retries find their original, even
-- after a restart. `welcome_to` is a Welcome's audience: device keys
-- (32 bytes each, concatenated, in the order submitted); NULL for every
-- other envelope, an empty audience an empty BYTEA.
CREATE TABLE envelopes (
    talks           BYTEA  NOT NULL REFERENCES talks (talks),
    seq             BIGINT NOT NULL CHECK (seq >= 0),
    node_time       BIGINT NOT NULL CHECK (node_time >= 0),
    room            BYTEA  NOT NULL CHECK (octet_length(room) = 16),
    sender          BYTEA  NOT NULL CHECK (octet_length(sender) = 32),
    idempotency_key BYTEA  NOT NULL CHECK (octet_length(idempotency_key) = 16),
    header          BYTEA  NOT NULL,
    header_hash     BYTEA  NOT NULL CHECK (octet_length(header_hash) = 32),
    body            BYTEA,
    body_hash       BYTEA  NOT NULL CHECK (octet_length(body_hash) = 32),
    leaf_hash       BYTEA  NOT NULL CHECK (octet_length(leaf_hash) = 32),
    receipt         BYTEA  NOT NULL,
    welcome_to      BYTEA  CHECK (welcome_to IS NULL OR octet_length(welcome_to) % 32 = 0),
    PRIMARY KEY (talks, seq),
    UNIQUE (talks, sender, idempotency_key)
);

-- Bodies are MLS ciphertext: compressing them is wasted work, so large ones
-- go out of line uncompressed.
ALTER TABLE envelopes ALTER COLUMN body SET STORAGE EXTERNAL;

-- Stored tree hashes of each talks' log (indexes as in
-- `tlog_tiles::stored_hash_index`), written by integration.
CREATE TABLE tree_hashes (
    talks BYTEA  NOT NULL REFERENCES talks (talks),
    idx   BIGINT NOT NULL CHECK (idx >= 0),
    hash  BYTEA  NOT NULL CHECK (octet_length(hash) = 32),
    PRIMARY KEY (talks, idx)
);

-- Signed checkpoints (C2SP signed notes with gathered cosignature lines),
-- one per integrated size; the latest is the one with the largest size.
CREATE TABLE checkpoints (
    talks BYTEA  NOT NULL REFERENCES talks (talks),
    size  BIGINT NOT NULL CHECK (size >= 0),
    note  BYTEA  NOT NULL,
    PRIMARY KEY (talks, size)
);

-- Invitations, by the hash of their one-time token. The three redemption
-- columns are all NULL (not redeemed) or all set, together with the access
-- list the redemption installed (in the same transaction).
CREATE TABLE invitations (
    talks        BYTEA  NOT NULL REFERENCES talks (talks),
    token_hash   BYTEA  NOT NULL CHECK (octet_length(token_hash) = 32),
    party        BYTEA  NOT NULL CHECK (octet_length(party) = 16),
    expires_at   BIGINT NOT NULL CHECK (expires_at >= 0),
    invitation   BYTEA  NOT NULL,
    created_at   BIGINT NOT NULL CHECK (created_at >= 0),
    redeemed_key BYTEA  CHECK (octet_length(redeemed_key) = 32),
    redeemed_at  BIGINT CHECK (redeemed_at >= 0),
    payload      BYTEA,
    PRIMARY KEY (talks, token_hash),
    CHECK ((redeemed_key IS NULL) = (redeemed_at IS NULL)
       AND (redeemed_key IS NULL) = (payload IS NULL))
);

-- Access-list changes waiting for signatures, by delta hash. Each applies
-- to the current access list: replacing the list deletes them all.
CREATE TABLE pending_changes (
    talks      BYTEA NOT NULL REFERENCES talks (talks),
    delta_hash BYTEA NOT NULL CHECK (octet_length(delta_hash) = 32),
    change     BYTEA NOT NULL,
    PRIMARY KEY (talks, delta_hash)
);

-- Blobs (encrypted attachments), by content hash within a talks. `size`
-- counts against `party`'s quota in that talks (summed by the index below).
CREATE TABLE blobs (
    talks      BYTEA   NOT NULL REFERENCES talks (talks),
    hash       BYTEA   NOT NULL CHECK (octet_length(hash) = 32),
    size       BIGINT  NOT NULL CHECK (size >= 0),
    party      BYTEA   NOT NULL CHECK (octet_length(party) = 16),
    uploader   BYTEA   NOT NULL CHECK (octet_length(uploader) = 32),
    created_at BIGINT  NOT NULL CHECK (created_at >= 0),
    complete   BOOLEAN NOT NULL,
    PRIMARY KEY (talks, hash)
);

CREATE INDEX blobs_by_party ON blobs (talks, party, size);

-- The rooms that reference each blob (at least one per blob).
CREATE TABLE blob_rooms (
    talks BYTEA NOT NULL,
    hash  BYTEA NOT NULL,
    room  BYTEA NOT NULL CHECK (octet_length(room) = 16),
    PRIMARY KEY (talks, hash, room),
    FOREIGN KEY (talks, hash) REFERENCES blobs (talks, hash)
);

-- The chunks of each blob stored so far: every chunk is `BLOB_CHUNK`
-- bytes but the last, checked on write. Encrypted, so stored uncompressed.
CREATE TABLE blob_chunks (
    talks BYTEA  NOT NULL,
    hash  BYTEA  NOT NULL,
    idx   BIGINT NOT NULL CHECK (idx >= 0),
    bytes BYTEA  NOT NULL,
    PRIMARY KEY (talks, hash, idx),
    FOREIGN KEY (talks, hash) REFERENCES blobs (talks, hash)
);

ALTER TABLE blob_chunks ALTER COLUMN bytes SET STORAGE EXTERNAL;

-- The MLS state of each room with a group, written in the `sequence`
-- transaction that sequences its Create or Commit: the current epoch, the
-- public group state and GroupInfo of that epoch, and the seq of the
-- envelope that created the group.
CREATE TABLE room_state (
    talks        BYTEA  NOT NULL,
    room         BYTEA  NOT NULL CHECK (octet_length(room) = 16),
    epoch        BIGINT NOT NULL CHECK (epoch >= 0),
    public_group BYTEA  NOT NULL,
    group_info   BYTEA  NOT NULL,
    created_seq  BIGINT NOT NULL CHECK (created_seq >= 0),
    PRIMARY KEY (talks, room),
    FOREIGN KEY (talks, created_seq) REFERENCES envelopes (talks, seq)
);

-- The commit that left each epoch of a room (at most one per epoch: the
-- primary key is what makes a second commit for an epoch lose), so a
-- losing commit learns the winner's seq and a Welcome's commit is checked.
CREATE TABLE room_commits (
    talks       BYTEA  NOT NULL,
    room        BYTEA  NOT NULL CHECK (octet_length(room) = 16),
    epoch       BIGINT NOT NULL CHECK (epoch >= 0),
    seq         BIGINT NOT NULL CHECK (seq >= 0),
    header_hash BYTEA  NOT NULL CHECK (octet_length(header_hash) = 32),
    PRIMARY KEY (talks, room, epoch),
    FOREIGN KEY (talks, room) REFERENCES room_state (talks, room),
    FOREIGN KEY (talks, seq) REFERENCES envelopes (talks, seq)
);

-- Key packages of each device, by reference (claimed lowest reference
-- first). At most one last-resort package per device (the partial index).
CREATE TABLE key_packages (
    talks       BYTEA   NOT NULL REFERENCES talks (talks),
    device      BYTEA   NOT NULL CHECK (octet_length(device) = 32),
    reference   BYTEA   NOT NULL CHECK (octet_length(reference) BETWEEN 1 AND 64),
    bytes       BYTEA   NOT NULL CHECK (octet_length(bytes) <= 16384),
    not_after   BIGINT  NOT NULL CHECK (not_after >= 0),
    last_resort BOOLEAN NOT NULL,
    PRIMARY KEY (talks, device, reference)
);

CREATE UNIQUE INDEX key_packages_last_resort ON key_packages (talks, device)
    WHERE last_resort;

-- Claims of key packages per (claimer, device): how many in the window
-- that started at `window_start` (Unix seconds).
CREATE TABLE key_package_claims (
    talks        BYTEA  NOT NULL REFERENCES talks (talks),
    claimer      BYTEA  NOT NULL CHECK (octet_length(claimer) = 32),
    device       BYTEA  NOT NULL CHECK (octet_length(device) = 32),
    window_start BIGINT NOT NULL CHECK (window_start >= 0),
    claims       BIGINT NOT NULL CHECK (claims >= 0),
    PRIMARY KEY (talks, claimer, device)
);
