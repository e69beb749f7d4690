//! Moving a member's home onto a new device key: a restore from a backup,
//! a home rebuilt from a recovery sheet.
//!
//! What moves: the keys the member holds (identity, talks authority), the
//! verified archive, the log follower's state and checkpoints, the talks
//! record. What never moves: the MLS state. A restored MLS state would be a
//! second copy of a leaf the group already moved past (or will move past
//! from the original device), so two devices would commit from one leaf and
//! the group would fork (RFC 9420 §16.6; the bug Wire, XMTP and Marmot
//! shipped). The new device key is a new leaf: it is seated on the access
//! list (a device certificate its identity key signs) and added to each
//! room by a member of the room, like any new device; what was sent
//! between the backup and the add comes in a handover from a member who
//! holds it (`handover`).
//!
//! [`device_state_erasure`] is the one place that knows which of a
//! device's stored values belong to its MLS leaf and key: the caller writes
//! them away in the same atomic write that stores the new device key, so a
//! home never holds a device key with another key's MLS state.

use backchannel_codec::{Reader, TalksId, Writer};
use backchannel_crypto::{KeyId, SecretKey, Signer as _};
use backchannel_mls::Member;

use crate::session::{key, room_key};
use crate::store::{ClientStore, ClientStoreError, Namespace, Put};

/// How many former device keys a home remembers per talks (a restore
/// adds one; the oldest is forgotten first).
pub const MAX_FORMER_DEVICES: usize = 64;

/// This home's former device keys in `talks` (empty if it was never
/// restored).
pub async fn former_devices<S: ClientStore>(
    store: &S,
    talks: TalksId,
) -> Result<Vec<KeyId>, ClientStoreError> {
    let Some(bytes) = store.get(Namespace::Mls, &key(talks, FORMER)).await? else {
        return Ok(Vec::new());
    };
    let mut r = Reader::new(&bytes);
    let list: Vec<KeyId> = r
        .list("former devices", MAX_FORMER_DEVICES)
        .and_then(|l| r.finish().map(|()| l))
        .map_err(|e| ClientStoreError::Corrupt(format!("the former device keys: {e}")))?;
    Ok(list)
}

/// The store name of [`former_devices`].
const FORMER: &str = "former-devices";

/// The writes that forget everything of `talks` that belongs to the device
/// key `old` rather than to the member: its MLS state (groups, key
/// packages' private keys), the request it wrote before a send it may not
/// have made (signed by `old`), the leaf updates and newcomers' copies it
/// owed in each of its rooms, and the handovers waiting to be opened (they
/// are sealed to `old`). The archive, the checkpoints, the handover
/// records, the talks record and the plaintexts of what `old` sent stay;
/// `old` joins the [`former_devices`], whose messages not yet archived
/// are opened from those plaintexts.
///
/// The rooms come from the stored MLS state, read with `old`; a state that
/// no longer reads is forgotten all the same (its rooms' small per-room
/// values then stay, and only ever cost one early leaf update).
pub async fn device_state_erasure<S: ClientStore>(
    store: &S,
    talks: TalksId,
    old: &SecretKey,
) -> Result<Vec<Put>, ClientStoreError> {
    let forget = |k: Vec<u8>| Put {
        ns: Namespace::Mls,
        key: k,
        value: None,
    };
    let mut former = former_devices(store, talks).await?;
    former.push(old.public_key().id());
    if former.len() > MAX_FORMER_DEVICES {
        former.remove(0);
    }
    let mut w = Writer::new();
    w.list(&former);
    let mut out = vec![
        forget(key(talks, "mls")),
        forget(key(talks, "unsent")),
        forget(key(talks, "handovers-pending")),
        Put {
            ns: Namespace::Mls,
            key: key(talks, FORMER),
            value: Some(w.into_bytes()),
        },
    ];
    if let Some(bytes) = store.get(Namespace::Mls, &key(talks, "mls")).await?
        && let Ok(old) = SecretKey::from_seed(&old.seed())
        && let Ok(member) = Member::from_bytes(talks, old, &bytes)
    {
        for room in member.rooms() {
            // The names `rooms` keeps them under.
            out.push(forget(room_key(talks, "pcs", room)));
            out.push(forget(room_key(talks, "copy", room)));
        }
    }
    Ok(out)
}
