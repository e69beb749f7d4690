-- Schema version 2 (storage contract version 4): leases, scheduled
-- submissions, and the lease epoch a checkpoint was integrated under.
--
-- Same conventions as 0001_initial.sql: ids and hashes are raw BYTEA with
-- their lengths checked; u64 values are BIGINT checked non-negative.

-- One row per lease name (a role one node plays at a time: the log
-- integrator), inserted by the first `acquire_lease` with epoch 0 and an
-- all-zero holder, then taken under `SELECT … FOR UPDATE`. `epoch` rises
-- by one each time the lease changes hands and never otherwise: it is the
-- fencing token a fenced `integrate` checks under `FOR SHARE` on this row
-- (so an `acquire_lease` that moves it waits for that integration, or the
-- integration sees the new epoch). `holder` is the holding node's instance
-- id; `expires_ms` its expiry by the holder's clock (0 once released).
CREATE TABLE leases (
    name       TEXT   NOT NULL PRIMARY KEY CHECK (octet_length(name) BETWEEN 1 AND 64),
    epoch      BIGINT NOT NULL CHECK (epoch >= 0),
    holder     BYTEA  NOT NULL CHECK (octet_length(holder) = 16),
    expires_ms BIGINT NOT NULL CHECK (expires_ms >= 0)
);

-- Submissions waiting to be sequenced when due (timers). `fire_due`
-- claims due rows with `FOR UPDATE SKIP LOCKED`, sequences them and
-- deletes them in one transaction, so each is sequenced once however many
-- nodes fire at once. The submission's columns as `envelopes` has them,
-- and its MLS gate as flat columns (`GateColumns`: kind 1 Create, 2 Commit,
-- 3 Epoch, 4 Welcome; all NULL for no gate). Bodies are MLS ciphertext,
-- stored uncompressed like the envelopes'.
CREATE TABLE scheduled (
    id                BYTEA    NOT NULL PRIMARY KEY CHECK (octet_length(id) = 16),
    due_ms            BIGINT   NOT NULL CHECK (due_ms >= 0),
    talks             BYTEA    NOT NULL REFERENCES talks (talks),
    room              BYTEA    NOT NULL CHECK (octet_length(room) = 16),
    sender            BYTEA    NOT NULL CHECK (octet_length(sender) = 32),
    idempotency_key   BYTEA    NOT NULL CHECK (octet_length(idempotency_key) = 16),
    header            BYTEA    NOT NULL,
    header_hash       BYTEA    NOT NULL CHECK (octet_length(header_hash) = 32),
    body              BYTEA    NOT NULL,
    body_hash         BYTEA    NOT NULL CHECK (octet_length(body_hash) = 32),
    gate_kind         SMALLINT CHECK (gate_kind IS NULL OR gate_kind BETWEEN 1 AND 4),
    gate_epoch        BIGINT   CHECK (gate_epoch IS NULL OR gate_epoch >= 0),
    gate_public_group BYTEA,
    gate_group_info   BYTEA,
    gate_commit       BYTEA    CHECK (gate_commit IS NULL OR octet_length(gate_commit) = 32),
    gate_to           BYTEA    CHECK (gate_to IS NULL OR octet_length(gate_to) % 32 = 0),
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
);

ALTER TABLE scheduled ALTER COLUMN body SET STORAGE EXTERNAL;

-- `fire_due` takes the earliest due rows first.
CREATE INDEX scheduled_due ON scheduled (due_ms, id);

-- The lease epoch a fenced `integrate` wrote the checkpoint under (NULL:
-- unfenced — a talks' first checkpoint — or written before version 2).
ALTER TABLE checkpoints ADD COLUMN lease_epoch BIGINT
    CHECK (lease_epoch IS NULL OR lease_epoch >= 0);
