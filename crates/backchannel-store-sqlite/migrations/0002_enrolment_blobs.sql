-- Schema version 2: invitations and their redemptions, pending access-list
-- changes, blobs with their room references and chunks, and an index for
-- the integrator's work list (storage contract version 2).
--
-- Same conventions as version 1: ids and hashes are raw BLOBs with their
-- lengths checked, u64 values are INTEGERs checked non-negative, tables are
-- STRICT. Tables whose rows hold large values (an invitation, a 64 KiB
-- enrolment payload, a 1 MiB chunk) keep their rowid, as `envelopes` does:
-- WITHOUT ROWID suits small rows only.

-- Invitations, by the hash of their one-time token. The three redemption
-- columns are all NULL (not redeemed) or all set, together with the access
-- list the redemption installed (in the same transaction).
CREATE TABLE invitations (
    talks        BLOB    NOT NULL REFERENCES talks (talks),
    token_hash   BLOB    NOT NULL CHECK (length(token_hash) = 32),
    party        BLOB    NOT NULL CHECK (length(party) = 16),
    expires_at   INTEGER NOT NULL CHECK (expires_at >= 0),
    invitation   BLOB    NOT NULL,
    created_at   INTEGER NOT NULL CHECK (created_at >= 0),
    redeemed_key BLOB    CHECK (length(redeemed_key) = 32),
    redeemed_at  INTEGER CHECK (redeemed_at >= 0),
    payload      BLOB,
    PRIMARY KEY (talks, token_hash),
    CHECK ((redeemed_key IS NULL) = (redeemed_at IS NULL)
       AND (redeemed_key IS NULL) = (payload IS NULL))
) STRICT;

-- Access-list changes waiting for signatures, by delta hash. Each applies
-- to the current access list: replacing the list deletes them all.
CREATE TABLE pending_changes (
    talks      BLOB NOT NULL REFERENCES talks (talks),
    delta_hash BLOB NOT NULL CHECK (length(delta_hash) = 32),
    change     BLOB NOT NULL,
    PRIMARY KEY (talks, delta_hash)
) STRICT;

-- Blobs (encrypted attachments), by content hash within a talks. `size`
-- counts against `party`'s quota in that talks (summed by the index below).
CREATE TABLE blobs (
    talks      BLOB    NOT NULL REFERENCES talks (talks),
    hash       BLOB    NOT NULL CHECK (length(hash) = 32),
    size       INTEGER NOT NULL CHECK (size >= 0),
    party      BLOB    NOT NULL CHECK (length(party) = 16),
    uploader   BLOB    NOT NULL CHECK (length(uploader) = 32),
    created_at INTEGER NOT NULL CHECK (created_at >= 0),
    complete   INTEGER NOT NULL CHECK (complete IN (0, 1)),
    PRIMARY KEY (talks, hash)
) STRICT, WITHOUT ROWID;

CREATE INDEX blobs_by_party ON blobs (talks, party, size);

-- The rooms that reference each blob (at least one per blob).
CREATE TABLE blob_rooms (
    talks BLOB NOT NULL,
    hash  BLOB NOT NULL,
    room  BLOB NOT NULL CHECK (length(room) = 16),
    PRIMARY KEY (talks, hash, room),
    FOREIGN KEY (talks, hash) REFERENCES blobs (talks, hash)
) STRICT, WITHOUT ROWID;

-- The chunks of each blob stored so far: every chunk is `BLOB_CHUNK`
-- bytes but the last, checked on write.
CREATE TABLE blob_chunks (
    talks BLOB    NOT NULL,
    hash  BLOB    NOT NULL,
    idx   INTEGER NOT NULL CHECK (idx >= 0),
    bytes BLOB    NOT NULL,
    PRIMARY KEY (talks, hash, idx),
    FOREIGN KEY (talks, hash) REFERENCES blobs (talks, hash)
) STRICT;

-- The integrator's work list (`unintegrated_talks`): only talks with
-- leaves not yet integrated are in this index, so polling it costs nothing
-- per idle talks.
CREATE INDEX log_heads_unintegrated ON log_heads (talks)
    WHERE integrated_size < next_seq;
