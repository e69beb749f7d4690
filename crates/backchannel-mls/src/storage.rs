//! Canonical encoding of an OpenMLS storage map: `count:u32`, then each
//! entry `key:bytes ‖ value:bytes` (u32-length-prefixed), keys strictly
//! increasing, so one state has one encoding.

use backchannel_codec::{DecodeError, Reader, Writer};

use crate::provider::Map;

/// The largest key or value accepted when decoding a stored state (a ratchet
/// tree of many thousand leaves, as OpenMLS stores it, stays far below).
pub(crate) const MAX_VALUE: usize = 256 << 20;

/// Writes `map` canonically.
pub(crate) fn write_map(w: &mut Writer, map: &Map) {
    w.len(map.len());
    for (k, v) in map {
        w.bytes(k);
        w.bytes(v);
    }
}

/// Reads a map written by [`write_map`], refusing unsorted or duplicate keys.
pub(crate) fn read_map(r: &mut Reader<'_>) -> Result<Map, DecodeError> {
    // Each entry takes at least 8 bytes (two lengths).
    let count = r.len("storage entries", usize::MAX, 8)?;
    let mut map = Map::new();
    let mut last: Option<Vec<u8>> = None;
    for _ in 0..count {
        let k = r.bytes("storage key", MAX_VALUE)?.to_vec();
        let v = r.bytes("storage value", MAX_VALUE)?.to_vec();
        if last.as_ref().is_some_and(|l| *l >= k) {
            return Err(DecodeError::Invalid {
                field: "storage key",
                reason: "keys not strictly increasing",
            });
        }
        last = Some(k.clone());
        map.insert(k, v);
    }
    Ok(map)
}
