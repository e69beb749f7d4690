//! Every signature and hash context of the project, in one prefix-free set:
//! since messages are signed as `context ‖ message` with no separator, no
//! context may be a prefix of another, and none may be empty except the
//! bare context of C2SP notes, whose texts cannot begin with `backchannel/`.

use backchannel_crypto::Context;

#[test]
fn contexts_are_unique_and_prefix_free() {
    let mut all: Vec<Context> = backchannel_statement::contexts();
    all.push(backchannel_tlog::RECEIPT_CONTEXT);
    all.push(backchannel_crypto::KEY_ID_CONTEXT);
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
    // C2SP notes are signed bare; their origins may not begin with our prefix.
    assert_eq!(Context::C2SP_SIGNED_NOTE.as_str(), "");
    assert!(backchannel_tlog::NodeOrigin::new("backchannel/v1/statement").is_err());
    assert!(!backchannel_tlog::COSIGNATURE_HEADER.starts_with("backchannel/"));
}
