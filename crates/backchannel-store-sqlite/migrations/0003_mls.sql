-- Schema version 3: MLS rooms (each room's group state and the commit that
-- left each of its epochs), the audience of Welcomes, and key packages with
-- their claim counters (storage contract version 3).
--
-- Same conventions as before: ids and hashes are raw BLOBs with their
-- lengths checked, u64 values are INTEGERs checked non-negative, tables are
-- STRICT; tables with large values (a public group state, a 16 KiB key
-- package) keep their rowid.

-- A Welcome's audience: the device keys (32 bytes each, concatenated, in
-- the order submitted) whose key packages it names. NULL for every other
-- envelope; an empty audience is an empty BLOB, not NULL.
ALTER TABLE envelopes ADD COLUMN welcome_to BLOB
    CHECK (welcome_to IS NULL OR length(welcome_to) % 32 = 0);

-- The MLS state of each room with a group, written in the `sequence`
-- transaction that sequences its Create or Commit: the current epoch, the
-- public group state and GroupInfo of that epoch, and the seq of the
-- envelope that created the group.
CREATE TABLE room_state (
    talks        BLOB    NOT NULL,
    room         BLOB    NOT NULL CHECK (length(room) = 16),
    epoch        INTEGER NOT NULL CHECK (epoch >= 0),
    public_group BLOB    NOT NULL,
    group_info   BLOB    NOT NULL,
    created_seq  INTEGER NOT NULL CHECK (created_seq >= 0),
    PRIMARY KEY (talks, room),
    FOREIGN KEY (talks, created_seq) REFERENCES envelopes (talks, seq)
) STRICT;

-- The commit that left each epoch of a room (at most one per epoch: the
-- primary key is what makes a second commit for an epoch lose), so a
-- losing commit learns the winner's seq and a Welcome's commit is checked.
CREATE TABLE room_commits (
    talks       BLOB    NOT NULL,
    room        BLOB    NOT NULL CHECK (length(room) = 16),
    epoch       INTEGER NOT NULL CHECK (epoch >= 0),
    seq         INTEGER NOT NULL CHECK (seq >= 0),
    header_hash BLOB    NOT NULL CHECK (length(header_hash) = 32),
    PRIMARY KEY (talks, room, epoch),
    FOREIGN KEY (talks, room) REFERENCES room_state (talks, room),
    FOREIGN KEY (talks, seq) REFERENCES envelopes (talks, seq)
) STRICT, WITHOUT ROWID;

-- Key packages of each device, by reference (claimed lowest reference
-- first). At most one last-resort package per device (the partial index).
CREATE TABLE key_packages (
    talks       BLOB    NOT NULL REFERENCES talks (talks),
    device      BLOB    NOT NULL CHECK (length(device) = 32),
    reference   BLOB    NOT NULL CHECK (length(reference) BETWEEN 1 AND 64),
    bytes       BLOB    NOT NULL CHECK (length(bytes) <= 16384),
    not_after   INTEGER NOT NULL CHECK (not_after >= 0),
    last_resort INTEGER NOT NULL CHECK (last_resort IN (0, 1)),
    PRIMARY KEY (talks, device, reference)
) STRICT;

CREATE UNIQUE INDEX key_packages_last_resort ON key_packages (talks, device)
    WHERE last_resort = 1;

-- Claims of key packages per (claimer, device): how many in the window
-- that started at `window_start` (Unix seconds).
CREATE TABLE key_package_claims (
    talks        BLOB    NOT NULL REFERENCES talks (talks),
    claimer      BLOB    NOT NULL CHECK (length(claimer) = 32),
    device       BLOB    NOT NULL CHECK (length(device) = 32),
    window_start INTEGER NOT NULL CHECK (window_start >= 0),
    claims       INTEGER NOT NULL CHECK (claims >= 0),
    PRIMARY KEY (talks, claimer, device)
) STRICT, WITHOUT ROWID;
