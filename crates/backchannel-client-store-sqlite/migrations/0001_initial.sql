-- Schema version 1 of the client store: the key-derivation parameters with
-- the key check, and the sealed values.
--
-- Tables are STRICT so that a value of the wrong type is refused on write
-- rather than surfacing on read. Nothing here is plaintext but the
-- namespace tags: keys are HMAC-SHA256 blinded (32 bytes), values are
-- nonce[24] ‖ XChaCha20-Poly1305 ciphertext ‖ tag[16].

-- Exactly one row: how the passphrase becomes keys, and a value sealed
-- under them that tells a wrong passphrase from a damaged value.
CREATE TABLE meta (
    id           INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    salt         BLOB    NOT NULL CHECK (length(salt) = 32),
    scrypt_log_n INTEGER NOT NULL CHECK (scrypt_log_n BETWEEN 1 AND 63),
    key_check    BLOB    NOT NULL CHECK (length(key_check) >= 40)
) STRICT;

-- Every value, by namespace tag and blinded key.
CREATE TABLE kv (
    ns INTEGER NOT NULL CHECK (ns BETWEEN 0 AND 255),
    k  BLOB    NOT NULL CHECK (length(k) = 32),
    v  BLOB    NOT NULL CHECK (length(v) >= 40),
    PRIMARY KEY (ns, k)
) STRICT;
