-- Schema version 4: leases (a role one node plays at a time, with its
-- fencing epoch), scheduled submissions (timers), and the lease epoch a
-- checkpoint was integrated under (storage contract version 4).
--
-- Same conventions as before: ids and hashes are raw BLOBs with their
-- lengths checked, u64 values are INTEGERs checked non-negative, tables are
-- STRICT.

-- One row per lease name, created by its first `acquire_lease`. `epoch`
-- rises by one each time the lease changes hands (the fencing token);
-- `holder` is the holding node's instance id; `expires_ms` its expiry
-- (0 once released).
CREATE TABLE leases (
    name       TEXT    NOT NULL PRIMARY KEY,
    epoch      INTEGER NOT NULL CHECK (epoch >= 0),
    holder     BLOB    NOT NULL CHECK (length(holder) = 16),
    expires_ms INTEGER NOT NULL CHECK (expires_ms >= 0)
) STRICT, WITHOUT ROWID;

-- Submissions waiting to be sequenced when due (`fire_due` claims,
-- sequences and deletes them in one transaction). The submission's
-- columns as `envelopes` has them, and its gate as flat columns
-- (`GateColumns`: kind 1 Create, 2 Commit, 3 Epoch, 4 Welcome; all NULL
-- for no gate).
CREATE TABLE scheduled (
    id                BLOB    NOT NULL PRIMARY KEY CHECK (length(id) = 16),
    due_ms            INTEGER NOT NULL CHECK (due_ms >= 0),
    talks             BLOB    NOT NULL REFERENCES talks (talks),
    room              BLOB    NOT NULL CHECK (length(room) = 16),
    sender            BLOB    NOT NULL CHECK (length(sender) = 32),
    idempotency_key   BLOB    NOT NULL CHECK (length(idempotency_key) = 16),
    header            BLOB    NOT NULL,
    header_hash       BLOB    NOT NULL CHECK (length(header_hash) = 32),
    body              BLOB    NOT NULL,
    body_hash         BLOB    NOT NULL CHECK (length(body_hash) = 32),
    gate_kind         INTEGER CHECK (gate_kind IS NULL OR gate_kind BETWEEN 1 AND 4),
    gate_epoch        INTEGER CHECK (gate_epoch IS NULL OR gate_epoch >= 0),
    gate_public_group BLOB,
    gate_group_info   BLOB,
    gate_commit       BLOB    CHECK (gate_commit IS NULL OR length(gate_commit) = 32),
    gate_to           BLOB    CHECK (gate_to IS NULL OR length(gate_to) % 32 = 0),
    -- The gate's columns agree with its kind (as `GateColumns` reads them).
    CHECK (
        (gate_kind IS NULL AND gate_epoch IS NULL AND gate_public_group IS NULL
            AND gate_group_info IS NULL AND gate_commit IS NULL AND gate_to IS NULL)
        OR (gate_kind = 1 AND gate_epoch IS NULL AND gate_public_group IS NOT NULL
            AND gate_group_info IS NOT NULL AND gate_commit IS NULL AND gate_to IS NULL)
        OR (gate_kind = 2 AND gate_epoch IS NOT NULL AND gate_public_group IS NOT NULL
            AND gate_group_info IS NOT NULL AND gate_commit IS NULL AND gate_to IS NULL)
        OR (gate_kind = 3 AND gate_epoch IS NOT NULL AND gate_public_group IS NULL
            AND gate_group_info IS NULL AND gate_commit IS NULL AND gate_to IS NULL)
        OR (gate_kind = 4 AND gate_epoch IS NOT NULL AND gate_public_group IS NULL
            AND gate_group_info IS NULL AND gate_commit IS NOT NULL AND gate_to IS NOT NULL)
    )
) STRICT;

-- `fire_due` takes the earliest first.
CREATE INDEX scheduled_due ON scheduled (due_ms, id);

-- The lease epoch a fenced `integrate` wrote the checkpoint under (NULL:
-- unfenced, or written before version 4).
ALTER TABLE checkpoints ADD COLUMN lease_epoch INTEGER
    CHECK (lease_epoch IS NULL OR lease_epoch >= 0);
