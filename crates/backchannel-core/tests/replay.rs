//! Replay decides key validity by log position.

use backchannel_codec::RoomId;
use backchannel_core::replay::{LoggedStatement, Replay};
use backchannel_crypto::Signer;
use backchannel_statement::fixtures::{self, key, labels::*};
use backchannel_statement::{
    Act, DeviceCert, MemberCert, Payload, Revoke, RevokeReason, Role, SignedStatement,
};

/// A new US negotiator's identity key, and its devices.
const NEW_IDENTITY: u8 = 0x35;
const NEW_DEVICE: u8 = 0x45;
const LATER_DEVICE: u8 = 0x46;

struct Log {
    t: fixtures::Talks,
}

impl Log {
    fn new() -> Self {
        Self {
            t: fixtures::talks(),
        }
    }
    fn roster(&self, signer: u8) -> SignedStatement {
        let party = if signer == OMAN_TALKS {
            self.t.oman
        } else {
            self.t.us
        };
        self.t.statement(
            1,
            &key(signer),
            party,
            Payload::Roster(self.t.roster.clone()),
        )
    }
    fn rules(&self) -> SignedStatement {
        self.t.statement(
            2,
            &key(OMAN_TALKS),
            self.t.oman,
            Payload::GroundRules(self.t.ground_rules.clone()),
        )
    }
    fn member_cert(&self, signer: u8) -> SignedStatement {
        let party = if signer == US_TALKS {
            self.t.us
        } else {
            self.t.iran
        };
        let cert = MemberCert::new(
            fixtures::PRINCIPALS[3],
            self.t.us,
            Role::Negotiator,
            key(NEW_IDENTITY).public_key(),
            vec![Act::ProposeText],
            None,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        self.t
            .statement(3, &key(signer), party, Payload::MemberCert(cert))
    }
    fn device_cert(&self, seed: u64, device: u8, not_after: u64) -> SignedStatement {
        let cert = DeviceCert {
            principal: fixtures::PRINCIPALS[3],
            device_key: key(device).public_key(),
            not_after,
        };
        self.t.statement(
            seed,
            &key(NEW_IDENTITY),
            self.t.us,
            Payload::DeviceCert(cert),
        )
    }
    fn revoke(&self, signer: u8, party_is_us: bool, target: u8) -> SignedStatement {
        let party = if party_is_us { self.t.us } else { self.t.iran };
        let r = Revoke {
            key: key(target).public_key().id(),
            reason: RevokeReason::Compromised,
            lost_at: None,
        };
        self.t.statement(5, &key(signer), party, Payload::Revoke(r))
    }
}

/// Replays `log` (seq = position, node time = 1000 × seq, record room unless
/// given) and compares each verdict: `Ok(())` for accepted, `Err(fragment)`
/// for a rejection whose message contains the fragment.
fn check(log: &[(SignedStatement, Option<RoomId>)], expect: &[Result<(), &str>]) {
    let t = fixtures::talks();
    let mut replay = Replay::new(t.talks);
    assert_eq!(log.len(), expect.len());
    for (seq, ((statement, room), want)) in log.iter().zip(expect).enumerate() {
        let got = replay.apply(LoggedStatement {
            seq: seq as u64,
            node_time: 1000 * seq as u64,
            room: room.unwrap_or(t.record),
            statement,
        });
        match (got, want) {
            (Ok(_), Ok(())) => {}
            (Err(e), Err(frag)) => {
                assert!(
                    e.to_string().contains(frag),
                    "seq {seq}: {e} lacks {frag:?}"
                )
            }
            (got, want) => panic!("seq {seq}: got {got:?}, want {want:?}"),
        }
    }
}

fn at(s: SignedStatement) -> (SignedStatement, Option<RoomId>) {
    (s, None)
}

#[test]
fn a_statement_after_its_keys_revocation_is_rejected_and_before_it_accepted() {
    let l = Log::new();
    let statement = l.device_cert(4, NEW_DEVICE, u64::MAX);
    let revoke = l.revoke(US_TALKS, true, NEW_IDENTITY);
    // Revocation first: the same statement, sequenced after it, is refused
    // whatever time it claims.
    check(
        &[
            at(l.roster(OMAN_TALKS)),
            at(l.rules()),
            at(l.member_cert(US_TALKS)),
            at(revoke.clone()),
            at(statement.clone()),
        ],
        &[Ok(()), Ok(()), Ok(()), Ok(()), Err("revoked at seq 3")],
    );
    // The same statement before the revocation counts.
    check(
        &[
            at(l.roster(OMAN_TALKS)),
            at(l.rules()),
            at(l.member_cert(US_TALKS)),
            at(statement),
            at(revoke),
        ],
        &[Ok(()), Ok(()), Ok(()), Ok(()), Ok(())],
    );
}

#[test]
fn certificates_need_the_right_signer() {
    let l = Log::new();
    check(&[at(l.rules())], &[Err("roster must come first")]);
    check(
        &[at(l.roster(US_TALKS))],
        &[Err("mediator team's talks authority")],
    );
    check(
        &[at(l.roster(OMAN_TALKS)), at(l.roster(OMAN_TALKS))],
        &[Ok(()), Err("already have a roster")],
    );
    // Iran's authority cannot certify a US member.
    check(
        &[at(l.roster(OMAN_TALKS)), at(l.member_cert(IRAN_TALKS))],
        &[Ok(()), Err("signed by its party's talks authority")],
    );
    // A device certificate by an identity key not yet certified.
    check(
        &[
            at(l.roster(OMAN_TALKS)),
            at(l.device_cert(4, NEW_DEVICE, u64::MAX)),
        ],
        &[Ok(()), Err("not certified")],
    );
    // Iran's talks authority cannot revoke a US key.
    check(
        &[
            at(l.roster(OMAN_TALKS)),
            at(l.member_cert(US_TALKS)),
            at(l.revoke(IRAN_TALKS, false, NEW_IDENTITY)),
        ],
        &[Ok(()), Ok(()), Err("may revoke it")],
    );
}

#[test]
fn devices_expire_by_node_time_and_statements_stay_in_their_audience() {
    let l = Log::new();
    let t = fixtures::talks();
    // Device valid until node time 2500: it may certify at seq 3 (t=3000)? No.
    let by_device = |seed| {
        let cert = DeviceCert {
            principal: fixtures::PRINCIPALS[3],
            device_key: key(LATER_DEVICE).public_key(),
            not_after: u64::MAX,
        };
        // Device keys never sign statements, but the expiry check comes first.
        t.statement(seed, &key(NEW_DEVICE), t.us, Payload::DeviceCert(cert))
    };
    check(
        &[
            at(l.roster(OMAN_TALKS)),
            at(l.member_cert(US_TALKS)),
            at(l.device_cert(4, NEW_DEVICE, 2500)),
            at(by_device(9)),
        ],
        &[Ok(()), Ok(()), Ok(()), Err("expired")],
    );
    check(
        &[
            at(l.roster(OMAN_TALKS)),
            at(l.member_cert(US_TALKS)),
            at(l.device_cert(4, NEW_DEVICE, 1 << 40)),
            at(by_device(9)),
        ],
        &[
            Ok(()),
            Ok(()),
            Ok(()),
            Err("device keys sign envelopes, not statements"),
        ],
    );
    // Addressed to the record room, posted in Iran's caucus.
    check(
        &[
            at(l.roster(OMAN_TALKS)),
            (l.member_cert(US_TALKS), Some(t.iran_caucus)),
        ],
        &[Ok(()), Err("outside its audience")],
    );
    check(
        &[
            at(l.roster(OMAN_TALKS)),
            (l.member_cert(US_TALKS), Some(RoomId([0xee; 16]))),
        ],
        &[Ok(()), Err("not declared")],
    );
    // The US head's device from the roster signs nothing after its revocation by the US authority.
    let us_device_statement = t.statement(
        11,
        &key(US_HEAD_DEVICE),
        t.us,
        Payload::Revoke(Revoke {
            key: key(US_HEAD_DEVICE).public_key().id(),
            reason: RevokeReason::Superseded,
            lost_at: None,
        }),
    );
    check(
        &[
            at(l.roster(OMAN_TALKS)),
            at(l.revoke(US_TALKS, true, US_HEAD_DEVICE)),
            at(us_device_statement),
        ],
        &[Ok(()), Ok(()), Err("revoked at seq 1")],
    );
    assert!(key(US_HEAD_DEVICE).public_key() != key(US_HEAD).public_key());
}

#[test]
fn acceptances_and_ground_rules_need_an_authority_and_identities_expire() {
    let l = Log::new();
    let t = fixtures::talks();
    let acceptance = |label: u8, party| {
        t.statement(
            20,
            &key(label),
            party,
            Payload::Acceptance(backchannel_statement::Acceptance {
                roster: backchannel_codec::StatementId([1; 16]),
                roster_hash: backchannel_crypto::Digest([2; 32]),
                ground_rules: backchannel_codec::StatementId([3; 16]),
                ground_rules_hash: backchannel_crypto::Digest([4; 32]),
            }),
        )
    };
    check(
        &[
            at(l.roster(OMAN_TALKS)),
            at(l.rules()),
            at(acceptance(US_TALKS, t.us)),
            at(acceptance(US_HEAD, t.us)),
        ],
        &[Ok(()), Ok(()), Ok(()), Err("through its talks authority")],
    );
    let us_rules = t.statement(
        2,
        &key(US_TALKS),
        t.us,
        Payload::GroundRules(t.ground_rules.clone()),
    );
    check(
        &[at(l.roster(OMAN_TALKS)), at(us_rules)],
        &[Ok(()), Err("mediator team's talks authority")],
    );
    // An identity certified until node time 2500 signs nothing at seq 3 (time 3000).
    let cert = MemberCert::new(
        fixtures::PRINCIPALS[3],
        t.us,
        Role::Negotiator,
        key(NEW_IDENTITY).public_key(),
        vec![],
        Some(2500),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let cert = t.statement(3, &key(US_TALKS), t.us, Payload::MemberCert(cert));
    check(
        &[
            at(l.roster(OMAN_TALKS)),
            at(cert.clone()),
            at(l.device_cert(4, NEW_DEVICE, u64::MAX)),
        ],
        &[Ok(()), Ok(()), Ok(())],
    );
    check(
        &[
            at(l.roster(OMAN_TALKS)),
            at(cert),
            at(l.rules()),
            at(l.device_cert(4, NEW_DEVICE, u64::MAX)),
        ],
        &[Ok(()), Ok(()), Ok(()), Err("expired")],
    );
}

#[test]
fn a_key_is_certified_once() {
    let l = Log::new();
    let t = fixtures::talks();
    // A device certificate naming the US head's identity key, already certified by the roster.
    let cert = DeviceCert {
        principal: fixtures::PRINCIPALS[1],
        device_key: key(US_HEAD).public_key(),
        not_after: u64::MAX,
    };
    let cert = t.statement(30, &key(US_HEAD), t.us, Payload::DeviceCert(cert));
    check(
        &[at(l.roster(OMAN_TALKS)), at(cert)],
        &[Ok(()), Err("already certified")],
    );
}

#[test]
fn a_principal_belongs_to_one_party() {
    let l = Log::new();
    let t = fixtures::talks();
    // Iran's authority certifies a key for the US head's principal, then
    // uses it to revoke the US head's device.
    let cert = MemberCert::new(
        fixtures::PRINCIPALS[1],
        t.iran,
        Role::Negotiator,
        key(NEW_IDENTITY).public_key(),
        vec![],
        None,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let cert = t.statement(40, &key(IRAN_TALKS), t.iran, Payload::MemberCert(cert));
    check(
        &[at(l.roster(OMAN_TALKS)), at(cert)],
        &[Ok(()), Err("belongs to another party")],
    );
}
