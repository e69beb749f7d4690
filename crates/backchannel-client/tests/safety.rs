//! A dishonest mediator substitutes a party's keys in one party's copy of
//! the roster. Every signature in both copies verifies — the substitute
//! keys are certified by a substitute "long-term authority" that only the
//! mediator vouches for — so nothing inside the talks can tell. The talks
//! safety codes differ, and until the parties compare them out of band
//! each shows the other's signatures as "vouched for by the mediator only".
#![allow(clippy::expect_used, clippy::unwrap_used)]

use backchannel_client::safety::{PartyVerification, SafetyCode, SafetyInputs};
use backchannel_crypto::{Signer, sha256};
use backchannel_statement::fixtures::{self, key, labels::*};
use backchannel_statement::roster::{PartyEntry, VerifiedRoster};
use backchannel_statement::{Payload, Roster, SignedStatement};

fn signed_roster(roster: Roster) -> SignedStatement {
    let t = fixtures::talks();
    t.statement(1, &key(OMAN_TALKS), t.oman, Payload::Roster(roster))
}

fn code(roster: &SignedStatement) -> SafetyCode {
    let t = fixtures::talks();
    let rules = t.statement(
        2,
        &key(OMAN_TALKS),
        t.oman,
        Payload::GroundRules(t.ground_rules.clone()),
    );
    SafetyCode::compute(&SafetyInputs {
        talks: t.talks,
        roster: sha256(roster.as_bytes()),
        ground_rules: sha256(rules.as_bytes()),
        node_fingerprint: [7; 32],
        log_key: key(NODE_LOG).public_key(),
        authority_passes: Vec::new(),
    })
}

#[test]
fn a_substituted_key_gives_different_safety_codes_and_is_only_vouched_for() {
    let t = fixtures::talks();
    let honest = t.roster.clone();

    // The mediator's copy for Iran: the US party entry now names keys the
    // mediator holds — a fake long-term authority certifying a fake talks
    // authority, which certifies the US members with a substituted device.
    let (fake_authority, fake_talks_authority, fake_device) = (0x70, 0x71, 0x72);
    let mut forged = honest.clone();
    for p in &mut forged.parties {
        if p.party == t.us {
            *p = PartyEntry::certify(
                t.talks,
                p.party,
                p.kind,
                p.name.clone(),
                &key(fake_authority),
                key(fake_talks_authority).public_key(),
            )
            .unwrap();
        }
    }
    for m in &mut forged.members {
        if m.party == t.us {
            let mut fields = m.member.clone();
            if fields.principal == fixtures::PRINCIPALS[1] {
                fields.devices = vec![key(fake_device).public_key()];
            }
            *m = fields.certify(t.talks, &key(fake_talks_authority)).unwrap();
        }
    }
    forged.access_list_hash = forged.implied_access_list(t.talks).unwrap().hash();

    // Both copies verify: nothing inside the talks tells them apart.
    let for_us = signed_roster(honest);
    let for_iran = signed_roster(forged);
    VerifiedRoster::verify(t.talks, &for_us).expect("the honest roster verifies");
    VerifiedRoster::verify(t.talks, &for_iran).expect("the forged roster verifies too");

    // The safety codes differ, so the out-of-band comparison fails.
    let us_code = code(&for_us);
    let iran_code = code(&for_iran);
    assert_ne!(us_code, iran_code);
    assert_ne!(us_code.words(), iran_code.words());
    assert_ne!(us_code.phrase(), iran_code.phrase());

    // Until compared, Iran's view of every US signature says so.
    let iran_view_of_us = PartyVerification::VouchedByMediator;
    assert_eq!(iran_view_of_us.label(), "vouched for by the mediator only");
    assert!(!iran_view_of_us.is_verified());
    // Had Iran verified the US on the honest code, the forged roster's
    // code would turn that into "changed: verify again".
    let verified = PartyVerification::Verified {
        how: "in person, Muscat".into(),
        at_ms: 1,
        code: us_code,
    };
    let now = verified.against(iran_code);
    assert_eq!(now, PartyVerification::Changed { was: us_code });
    assert!(now.label().starts_with("keys changed since verified"));

    // The honest copy, seen by both, gives both the same code.
    assert_eq!(code(&for_us), us_code);
}
