//! This crate's contexts join the project's one prefix-free set: the set
//! `backchannel-core/tests/contexts.rs` checks, plus ours. (Checked here
//! rather than there so the pure core's tests need not build SQLite and the
//! client.)

use backchannel_crypto::Context;

#[test]
fn contexts_are_prefix_free_with_every_other() {
    let ours = backchannel_client_store_sqlite::contexts();
    let mut all: Vec<Context> = backchannel_statement::contexts();
    all.push(backchannel_tlog::RECEIPT_CONTEXT);
    all.push(backchannel_crypto::KEY_ID_CONTEXT);
    all.extend(ours.iter().copied());
    for (i, a) in all.iter().enumerate() {
        assert!(a.as_str().starts_with("backchannel/v1/"), "{a}");
        for (j, b) in all.iter().enumerate() {
            if i != j {
                assert!(
                    !b.as_str().starts_with(a.as_str()),
                    "{a} is a prefix of {b}"
                );
            }
        }
    }
    assert!(
        ours.iter()
            .all(|c| c.as_str().starts_with("backchannel/v1/client-store/"))
    );
}
