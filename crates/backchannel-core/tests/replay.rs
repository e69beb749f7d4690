//! Replay decides key validity by log position, acceptance of roster and
//! ground rules, and the talks' phase.

use backchannel_codec::{PartyId, RoomId, StatementId};
use backchannel_core::replay::{LoggedStatement, Phase, Replay};
use backchannel_crypto::{Digest, Signer};
use backchannel_statement::LifecyclePhase::{Closed, Concluded, Resumed, Suspended};
use backchannel_statement::fixtures::{self, key, labels::*};
use backchannel_statement::{
    Acceptance, Act, DeviceCert, LifecycleChange, LifecyclePhase, MemberCert, Payload, Revoke,
    RevokeReason, Role, SignedStatement,
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
    /// The party a fixture key speaks for.
    fn party(&self, signer: u8) -> PartyId {
        match signer {
            OMAN_TALKS | OMAN_LEAD => self.t.oman,
            US_TALKS | US_HEAD | US_NEGOTIATOR | NEW_IDENTITY => self.t.us,
            _ => self.t.iran,
        }
    }
    /// An acceptance of `self.roster(OMAN_TALKS)` and `self.rules()`, by `signer`.
    fn accept(&self, seed: u64, signer: u8) -> SignedStatement {
        let (r, g) = (self.roster(OMAN_TALKS), self.rules());
        self.acceptance(
            seed,
            signer,
            Acceptance {
                roster: r.unverified().id,
                roster_hash: r.hash(),
                ground_rules: g.unverified().id,
                ground_rules_hash: g.hash(),
            },
        )
    }
    fn acceptance(&self, seed: u64, signer: u8, a: Acceptance) -> SignedStatement {
        self.t.statement(
            seed,
            &key(signer),
            self.party(signer),
            Payload::Acceptance(a),
        )
    }
    fn lifecycle(&self, seed: u64, signer: u8, phase: LifecyclePhase) -> SignedStatement {
        let change = LifecycleChange::new(phase, format!("{} for the record", phase.name()))
            .unwrap_or_else(|e| panic!("{e}"));
        self.t.statement(
            seed,
            &key(signer),
            self.party(signer),
            Payload::Lifecycle(change),
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
/// for a rejection whose message contains the fragment. Returns the replay,
/// for its state.
fn check(log: &[(SignedStatement, Option<RoomId>)], expect: &[Result<(), &str>]) -> Replay {
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
    replay
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
    check(
        &[
            at(l.roster(OMAN_TALKS)),
            at(l.rules()),
            at(l.accept(20, US_TALKS)),
            at(l.accept(20, US_HEAD)),
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

#[test]
fn every_lifecycle_transition_is_allowed_or_refused_by_phase_and_signer() {
    let l = Log::new();
    let t = fixtures::talks();
    let us = t.us;
    // After the roster (seq 0): lifecycle changes (signer, change), their
    // verdicts, and the phase at the end. A refused change changes nothing.
    #[allow(clippy::type_complexity)]
    let cases: &[(&[(u8, LifecyclePhase)], &[Result<(), &str>], Phase)] = &[
        // Open.
        (
            &[(US_TALKS, Suspended)],
            &[Ok(())],
            Phase::Suspended { by: us, at: 1 },
        ),
        (
            &[(IRAN_TALKS, Suspended)],
            &[Ok(())],
            Phase::Suspended { by: t.iran, at: 1 },
        ),
        (
            &[(OMAN_TALKS, Suspended)],
            &[Err("only a party of kind party suspends")],
            Phase::Open,
        ),
        (
            &[(US_HEAD, Suspended)],
            &[Err("signed by a talks authority")],
            Phase::Open,
        ),
        (
            &[(US_TALKS, Resumed)],
            &[Err("cannot be resumed while open")],
            Phase::Open,
        ),
        (
            &[(OMAN_TALKS, Resumed)],
            &[Err("cannot be resumed while open")],
            Phase::Open,
        ),
        (
            &[(OMAN_TALKS, Concluded)],
            &[Ok(())],
            Phase::Concluded { at: 1 },
        ),
        (
            &[(US_TALKS, Concluded)],
            &[Err("only the mediator team concludes")],
            Phase::Open,
        ),
        (
            &[(OMAN_TALKS, Closed)],
            &[Err("cannot be closed while open")],
            Phase::Open,
        ),
        (
            &[(US_TALKS, Closed)],
            &[Err("only the mediator team closes")],
            Phase::Open,
        ),
        // Suspended.
        (
            &[(US_TALKS, Suspended), (US_TALKS, Resumed)],
            &[Ok(()), Ok(())],
            Phase::Open,
        ),
        (
            &[(US_TALKS, Suspended), (OMAN_TALKS, Resumed)],
            &[Ok(()), Ok(())],
            Phase::Open,
        ),
        (
            &[(US_TALKS, Suspended), (IRAN_TALKS, Resumed)],
            &[
                Ok(()),
                Err("only the suspending party or the mediator team"),
            ],
            Phase::Suspended { by: us, at: 1 },
        ),
        (
            &[(US_TALKS, Suspended), (US_HEAD, Resumed)],
            &[Ok(()), Err("signed by a talks authority")],
            Phase::Suspended { by: us, at: 1 },
        ),
        (
            &[(US_TALKS, Suspended), (IRAN_TALKS, Suspended)],
            &[Ok(()), Err("cannot be suspended while suspended by party")],
            Phase::Suspended { by: us, at: 1 },
        ),
        (
            &[(US_TALKS, Suspended), (US_TALKS, Suspended)],
            &[Ok(()), Err("cannot be suspended while suspended")],
            Phase::Suspended { by: us, at: 1 },
        ),
        (
            &[(US_TALKS, Suspended), (OMAN_TALKS, Concluded)],
            &[Ok(()), Ok(())],
            Phase::Concluded { at: 2 },
        ),
        (
            &[(US_TALKS, Suspended), (US_TALKS, Concluded)],
            &[Ok(()), Err("only the mediator team concludes")],
            Phase::Suspended { by: us, at: 1 },
        ),
        (
            &[(US_TALKS, Suspended), (OMAN_TALKS, Closed)],
            &[Ok(()), Err("cannot be closed while suspended")],
            Phase::Suspended { by: us, at: 1 },
        ),
        (
            &[
                (US_TALKS, Suspended),
                (US_TALKS, Resumed),
                (IRAN_TALKS, Suspended),
            ],
            &[Ok(()), Ok(()), Ok(())],
            Phase::Suspended { by: t.iran, at: 3 },
        ),
        // Concluded.
        (
            &[(OMAN_TALKS, Concluded), (OMAN_TALKS, Closed)],
            &[Ok(()), Ok(())],
            Phase::Closed { at: 2 },
        ),
        (
            &[(OMAN_TALKS, Concluded), (US_TALKS, Suspended)],
            &[Ok(()), Err("cannot be suspended while concluded at seq 1")],
            Phase::Concluded { at: 1 },
        ),
        (
            &[(OMAN_TALKS, Concluded), (OMAN_TALKS, Resumed)],
            &[Ok(()), Err("cannot be resumed while concluded")],
            Phase::Concluded { at: 1 },
        ),
        (
            &[(OMAN_TALKS, Concluded), (OMAN_TALKS, Concluded)],
            &[Ok(()), Err("cannot be concluded while concluded")],
            Phase::Concluded { at: 1 },
        ),
        (
            &[(OMAN_TALKS, Concluded), (IRAN_TALKS, Closed)],
            &[Ok(()), Err("only the mediator team closes")],
            Phase::Concluded { at: 1 },
        ),
        // Closed: nothing.
        (
            &[
                (OMAN_TALKS, Concluded),
                (OMAN_TALKS, Closed),
                (OMAN_TALKS, Closed),
            ],
            &[
                Ok(()),
                Ok(()),
                Err("cannot be closed while closed at seq 2"),
            ],
            Phase::Closed { at: 2 },
        ),
        (
            &[
                (OMAN_TALKS, Concluded),
                (OMAN_TALKS, Closed),
                (OMAN_TALKS, Concluded),
            ],
            &[Ok(()), Ok(()), Err("cannot be concluded while closed")],
            Phase::Closed { at: 2 },
        ),
        (
            &[
                (OMAN_TALKS, Concluded),
                (OMAN_TALKS, Closed),
                (OMAN_TALKS, Resumed),
            ],
            &[Ok(()), Ok(()), Err("cannot be resumed while closed")],
            Phase::Closed { at: 2 },
        ),
        (
            &[
                (OMAN_TALKS, Concluded),
                (OMAN_TALKS, Closed),
                (US_TALKS, Suspended),
            ],
            &[Ok(()), Ok(()), Err("cannot be suspended while closed")],
            Phase::Closed { at: 2 },
        ),
    ];
    for (i, (changes, verdicts, phase)) in cases.iter().enumerate() {
        let mut log = vec![at(l.roster(OMAN_TALKS))];
        let mut expect = vec![Ok(())];
        for (j, (signer, change)) in changes.iter().enumerate() {
            log.push(at(l.lifecycle(100 + j as u64, *signer, *change)));
        }
        expect.extend_from_slice(verdicts);
        let replay = check(&log, &expect);
        assert_eq!(replay.phase(), phase, "case {i}: {changes:?}");
    }
}

#[test]
fn acceptances_wait_while_suspended_and_count_after_resume() {
    let l = Log::new();
    let t = fixtures::talks();
    let replay = check(
        &[
            at(l.roster(OMAN_TALKS)),
            at(l.rules()),
            at(l.lifecycle(1, IRAN_TALKS, Suspended)),
            at(l.accept(20, US_TALKS)),
            at(l.accept(21, IRAN_TALKS)),
            // Key management goes on: a new member, its device, and the
            // revocation of a lost device.
            at(l.member_cert(US_TALKS)),
            at(l.device_cert(4, NEW_DEVICE, u64::MAX)),
            at(l.revoke(US_TALKS, true, US_HEAD_DEVICE)),
            at(l.lifecycle(2, IRAN_TALKS, Resumed)),
            at(l.accept(22, US_TALKS)),
            at(l.accept(23, IRAN_TALKS)),
        ],
        &[
            Ok(()),
            Ok(()),
            Ok(()),
            Err("no acceptance statement is accepted while the talks are suspended by party 0c0c"),
            Err("is accepted while the talks are suspended by party"),
            Ok(()),
            Ok(()),
            Ok(()),
            Ok(()),
            Ok(()),
            Ok(()),
        ],
    );
    assert_eq!(replay.phase(), &Phase::Open);
    assert_eq!(replay.accepted_by(), vec![t.us, t.iran]);
    assert!(replay.awaiting_acceptance().is_empty());
    // Ground rules are a formal act too; suspended before any, none are set.
    let replay = check(
        &[
            at(l.roster(OMAN_TALKS)),
            at(l.lifecycle(1, US_TALKS, Suspended)),
            at(l.rules()),
        ],
        &[
            Ok(()),
            Ok(()),
            Err("no ground-rules statement is accepted while the talks are suspended"),
        ],
    );
    assert_eq!(replay.ground_rules(), None);
}

#[test]
fn after_conclusion_only_revocations_and_closing_and_after_closing_nothing() {
    let l = Log::new();
    let replay = check(
        &[
            at(l.roster(OMAN_TALKS)),
            at(l.rules()),
            at(l.member_cert(US_TALKS)),
            at(l.lifecycle(1, OMAN_TALKS, Concluded)),
            at(l.accept(20, US_TALKS)),
            at(l.device_cert(4, NEW_DEVICE, u64::MAX)),
            at(l.revoke(US_TALKS, true, US_HEAD_DEVICE)),
            at(l.lifecycle(2, OMAN_TALKS, Closed)),
            at(l.revoke(US_TALKS, true, NEW_IDENTITY)),
            at(l.accept(21, IRAN_TALKS)),
            at(l.roster(OMAN_TALKS)),
        ],
        &[
            Ok(()),
            Ok(()),
            Ok(()),
            Ok(()),
            Err("no acceptance statement is accepted while the talks are concluded at seq 3"),
            Err("no device-cert statement is accepted while the talks are concluded"),
            Ok(()),
            Ok(()),
            Err("no revoke statement is accepted while the talks are closed at seq 7"),
            Err("is accepted while the talks are closed"),
            Err("already have a roster"),
        ],
    );
    assert_eq!(replay.phase(), &Phase::Closed { at: 7 });
    assert!(replay.accepted_by().is_empty());
    // The revocation after closing changed nothing.
    let identity = key(NEW_IDENTITY).public_key().id();
    assert_eq!(replay.key(&identity).and_then(|k| k.revoked_at), None);
}

#[test]
fn awaiting_acceptance_shrinks_as_parties_accept() {
    let l = Log::new();
    let t = fixtures::talks();
    let log = [
        at(l.roster(OMAN_TALKS)),
        at(l.rules()),
        at(l.accept(20, US_TALKS)),
        // The mediator team accepts too, but is not awaited.
        at(l.accept(21, OMAN_TALKS)),
        // A repeated acceptance changes nothing.
        at(l.accept(22, US_TALKS)),
        at(l.accept(23, IRAN_TALKS)),
    ];
    let expect = [Ok(()); 6];
    // (statements replayed, accepted by, awaiting)
    let steps: &[(usize, &[PartyId], &[PartyId])] = &[
        (0, &[], &[]),
        (1, &[], &[t.us, t.iran]),
        (2, &[], &[t.us, t.iran]),
        (3, &[t.us], &[t.iran]),
        (4, &[t.oman, t.us], &[t.iran]),
        (5, &[t.oman, t.us], &[t.iran]),
        (6, &[t.oman, t.us, t.iran], &[]),
    ];
    for (n, accepted, awaiting) in steps {
        let replay = check(&log[..*n], &expect[..*n]);
        assert_eq!(replay.accepted_by(), accepted.to_vec(), "after {n}");
        assert_eq!(replay.awaiting_acceptance(), awaiting.to_vec(), "after {n}");
    }
}

#[test]
fn an_acceptance_must_name_the_roster_and_ground_rules_by_id_and_hash() {
    let l = Log::new();
    let t = fixtures::talks();
    let (r, g) = (l.roster(OMAN_TALKS), l.rules());
    let good = Acceptance {
        roster: r.unverified().id,
        roster_hash: r.hash(),
        ground_rules: g.unverified().id,
        ground_rules_hash: g.hash(),
    };
    let with = |f: fn(&mut Acceptance)| {
        let mut a = good.clone();
        f(&mut a);
        at(l.acceptance(30, US_TALKS, a))
    };
    type Edit = fn(&mut Acceptance);
    let cases: &[(Edit, Result<(), &str>)] = &[
        (|_| {}, Ok(())),
        (
            |a| a.roster_hash = Digest([2; 32]),
            Err("its roster hash is not that of the roster statement"),
        ),
        (
            |a| a.roster = StatementId([1; 16]),
            Err("names another roster statement"),
        ),
        (
            |a| a.ground_rules_hash = Digest([4; 32]),
            Err("its ground-rules hash is not that of the ground-rules statement"),
        ),
        (
            |a| a.ground_rules = StatementId([3; 16]),
            Err("names another ground-rules statement"),
        ),
        // Roster and ground rules swapped.
        (
            |a| {
                std::mem::swap(&mut a.roster, &mut a.ground_rules);
                std::mem::swap(&mut a.roster_hash, &mut a.ground_rules_hash);
            },
            Err("names another roster statement"),
        ),
    ];
    for (f, want) in cases {
        let replay = check(
            &[at(r.clone()), at(g.clone()), with(*f)],
            &[Ok(()), Ok(()), *want],
        );
        let accepted = if want.is_ok() { vec![t.us] } else { vec![] };
        assert_eq!(replay.accepted_by(), accepted);
    }
    // Before any ground rules.
    check(
        &[at(r.clone()), with(|_| {})],
        &[Ok(()), Err("no ground rules have been set yet")],
    );
    // The first ground rules are the talks' ground rules; a second is refused.
    let other_rules = t.statement(
        3,
        &key(OMAN_TALKS),
        t.oman,
        Payload::GroundRules(t.ground_rules.clone()),
    );
    let replay = check(
        &[at(r.clone()), at(g.clone()), at(other_rules), with(|_| {})],
        &[Ok(()), Ok(()), Err("already have ground rules"), Ok(())],
    );
    assert_eq!(replay.ground_rules(), Some(&t.ground_rules));
    let cited = replay
        .ground_rules_statement()
        .map(|s| (s.seq, s.id, s.hash));
    assert_eq!(cited, Some((1, g.unverified().id, g.hash())));
    let cited = replay.roster_statement().map(|s| (s.seq, s.id, s.hash));
    assert_eq!(cited, Some((0, r.unverified().id, r.hash())));
}
