//! Replay decides key validity by log position, acceptance of roster and
//! ground rules, the talks' phase, and what counts where: formal acts in
//! the record room only, once each; messages in the other rooms; joint
//! sessions, letter rooms, commit failures and history handed over.

use backchannel_codec::{PartyId, PrincipalId, RoomId, StatementId};
use backchannel_core::replay::{
    Accepted, AuthorityPass, CommitFailureRecord, Equivocation, HistoryShare, KeyRole,
    LoggedStatement, Phase, Rejected, Replay,
};
use backchannel_crypto::{Digest, Signer};
use backchannel_statement::LifecyclePhase::{Closed, Concluded, Resumed, Suspended};
use backchannel_statement::fixtures::{self, LETTER, PLENARY, key, labels::*};
use backchannel_statement::roster::{ChangeRule, GroundRules, RoomDecl, RoomPurpose};
use backchannel_statement::{
    Acceptance, Act, Audience, AuthorityPassed, CommitFailure, Conveyed, DeviceCert, Endorsement,
    HistoryShared, LifecycleChange, LifecyclePhase, MemberCert, Message, PassedHow, Payload,
    Receipt, ReceiptKind, Revoke, RevokeReason, Role, SessionConsent, SignedStatement,
    StatementType,
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
        Self::with(fixtures::talks())
    }
    fn with(t: fixtures::Talks) -> Self {
        Self { t }
    }
    fn roster(&self, signer: u8) -> SignedStatement {
        self.roster_seeded(1, signer)
    }
    /// The roster under another statement id (seed).
    fn roster_seeded(&self, seed: u64, signer: u8) -> SignedStatement {
        let party = if signer == OMAN_TALKS {
            self.t.oman
        } else {
            self.t.us
        };
        self.t.statement(
            seed,
            &key(signer),
            party,
            Payload::Roster(self.t.roster.clone()),
        )
    }
    fn rules(&self) -> SignedStatement {
        self.rules_with(2, self.t.ground_rules.clone())
    }
    fn rules_with(&self, seed: u64, rules: GroundRules) -> SignedStatement {
        self.t.statement(
            seed,
            &key(OMAN_TALKS),
            self.t.oman,
            Payload::GroundRules(rules),
        )
    }
    /// A statement by `signer` for its party, addressed to `rooms`.
    fn to(&self, seed: u64, signer: u8, rooms: &[RoomId], payload: Payload) -> SignedStatement {
        let audience = rooms.iter().map(|r| Audience::Room(*r)).collect();
        self.t
            .statement_to(seed, &key(signer), self.party(signer), audience, payload)
    }
    /// A message by `signer`, addressed to `rooms`.
    fn message(&self, seed: u64, signer: u8, rooms: &[RoomId], text: &str) -> SignedStatement {
        let m = Message::new(None, text, None).unwrap_or_else(|e| panic!("{e}"));
        self.to(seed, signer, rooms, Payload::Message(m))
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
            OMAN_TALKS | OMAN_LEAD | OMAN_LEAD_DEVICE => self.t.oman,
            US_TALKS | US_TALKS_SUCCESSOR | US_HEAD | US_HEAD_DEVICE | US_NEGOTIATOR
            | NEW_IDENTITY => self.t.us,
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
    /// A revocation of `target` (its statement id depends on the target:
    /// one key signs one statement per id).
    fn revoke(&self, signer: u8, party_is_us: bool, target: u8) -> SignedStatement {
        let party = if party_is_us { self.t.us } else { self.t.iran };
        let r = Revoke {
            key: key(target).public_key().id(),
            reason: RevokeReason::Compromised,
            lost_at: None,
        };
        self.t.statement(
            500 + u64::from(target),
            &key(signer),
            party,
            Payload::Revoke(r),
        )
    }
}

/// Replays `log` (seq = position, node time = 1000 × seq, record room unless
/// given): the replay, for its state, and each verdict.
fn verdicts(
    log: &[(SignedStatement, Option<RoomId>)],
) -> (Replay, Vec<Result<Accepted, Rejected>>) {
    let t = fixtures::talks();
    let mut replay = Replay::new(t.talks);
    let mut got = Vec::new();
    let entries: Vec<LoggedStatement<'_>> = log
        .iter()
        .enumerate()
        .map(|(seq, (statement, room))| LoggedStatement {
            seq: seq as u64,
            node_time: 1000 * seq as u64,
            room: room.unwrap_or(t.record),
            statement,
        })
        .collect();
    for entry in &entries {
        got.push(replay.apply(*entry));
    }
    // Replaying the whole log with its signatures verified ahead, on one
    // thread or several, gives the same verdicts and the same state.
    for threads in [1, 2, 3] {
        let threads = std::num::NonZeroUsize::new(threads).unwrap_or(std::num::NonZeroUsize::MIN);
        let mut ahead = Replay::new(t.talks);
        let mut rng = fixtures::rng(threads.get() as u64);
        assert_eq!(
            ahead.apply_all(&entries, threads, &mut rng),
            got,
            "{threads} threads"
        );
        assert_same_state(&ahead, &replay, log);
    }
    (replay, got)
}

/// Whether two replays of `log` hold the same state, as far as their
/// accessors show it (every key the log names, every room's consents).
fn assert_same_state(a: &Replay, b: &Replay, log: &[(SignedStatement, Option<RoomId>)]) {
    assert_eq!(a.roster_statement(), b.roster_statement());
    assert_eq!(a.record_room(), b.record_room());
    assert_eq!(a.ground_rules_statement(), b.ground_rules_statement());
    assert_eq!(a.accepted_by(), b.accepted_by());
    assert_eq!(a.phase(), b.phase());
    assert_eq!(a.equivocations(), b.equivocations());
    assert_eq!(a.commit_failures(), b.commit_failures());
    assert_eq!(a.history_shared(), b.history_shared());
    assert_eq!(a.authority_passes(), b.authority_passes());
    for (statement, room) in log {
        let s = statement.unverified();
        let mut keys = vec![s.author];
        match &s.payload {
            Payload::MemberCert(c) => keys.push(c.identity_key.id()),
            Payload::DeviceCert(c) => keys.push(c.device_key.id()),
            Payload::Revoke(r) => keys.push(r.key),
            Payload::AuthorityPassed(p) => keys.extend([p.old_key, p.new_key.id()]),
            _ => {}
        }
        for k in keys {
            assert_eq!(a.key(&k), b.key(&k));
        }
        if let Some(room) = room {
            assert_eq!(a.session_consents(*room), b.session_consents(*room));
        }
    }
    for room in [PLENARY, LETTER] {
        assert_eq!(a.session_consents(room), b.session_consents(room));
    }
}

/// Replays `log` as [`verdicts`] does and compares each verdict: `Ok(())`
/// for accepted, `Err(fragment)` for a rejection whose message contains the
/// fragment. Returns the replay, for its state.
fn check(log: &[(SignedStatement, Option<RoomId>)], expect: &[Result<(), &str>]) -> Replay {
    assert_eq!(log.len(), expect.len());
    let (replay, got) = verdicts(log);
    for (seq, (got, want)) in got.into_iter().zip(expect).enumerate() {
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
fn a_forged_signature_is_refused_alone_whether_verified_ahead_or_in_turn() {
    // `check` replays each log statement by statement and with the
    // signatures batch-verified ahead on 1, 2 and 3 threads: a forged
    // signature fails its batch, and each statement then gets its own
    // verdict, so only the forged one is refused.
    let l = Log::new();
    let bad = "signature does not verify";
    check(
        &[
            at(l.roster(OMAN_TALKS)),
            at(fixtures::forged(&l.rules())),
            at(l.rules()),
            at(l.member_cert(US_TALKS)),
            at(fixtures::forged(&l.device_cert(4, NEW_DEVICE, u64::MAX))),
            at(l.device_cert(4, NEW_DEVICE, u64::MAX)),
            at(fixtures::forged(&l.revoke(US_TALKS, true, NEW_IDENTITY))),
        ],
        &[Ok(()), Err(bad), Ok(()), Ok(()), Err(bad), Ok(()), Err(bad)],
    );
    // A forged roster is refused by its own check; nothing after it counts.
    check(
        &[at(fixtures::forged(&l.roster(OMAN_TALKS))), at(l.rules())],
        &[Err("must be signed by"), Err("roster must come first")],
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
        &[at(l.roster(OMAN_TALKS)), at(l.roster_seeded(9, OMAN_TALKS))],
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
            at(l.lifecycle(11, OMAN_TALKS, Concluded)),
            at(l.accept(20, US_TALKS)),
            at(l.device_cert(4, NEW_DEVICE, u64::MAX)),
            at(l.revoke(US_TALKS, true, US_HEAD_DEVICE)),
            at(l.lifecycle(12, OMAN_TALKS, Closed)),
            at(l.revoke(US_TALKS, true, NEW_IDENTITY)),
            at(l.accept(21, IRAN_TALKS)),
            at(l.roster_seeded(9, OMAN_TALKS)),
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

// --- What counts where ----------------------------------------------------------

/// A device of the Oman lead mediator's, certified by statement.
const LEAD_NEW_DEVICE: u8 = 0x47;

impl Log {
    /// A device certificate by the lead mediator's identity key.
    fn lead_device_cert(&self, seed: u64, rooms: &[RoomId]) -> SignedStatement {
        let cert = DeviceCert {
            principal: fixtures::PRINCIPALS[0],
            device_key: key(LEAD_NEW_DEVICE).public_key(),
            not_after: u64::MAX,
        };
        self.to(seed, OMAN_LEAD, rooms, Payload::DeviceCert(cert))
    }
    fn consent(&self, seed: u64, signer: u8, room: RoomId, window: (u64, u64)) -> SignedStatement {
        let c = SessionConsent::new(room, window.0, window.1).unwrap_or_else(|e| panic!("{e}"));
        self.to(seed, signer, &[self.t.record], Payload::SessionConsent(c))
    }
    fn failure(
        &self,
        seed: u64,
        signer: u8,
        rooms: &[RoomId],
        at: (RoomId, u64),
    ) -> SignedStatement {
        let f = CommitFailure::new(at.0, at.1, 7, "could not process the commit")
            .unwrap_or_else(|e| panic!("{e}"));
        self.to(seed, signer, rooms, Payload::CommitFailure(f))
    }
}

#[test]
fn formal_acts_count_only_in_the_record_room_the_roster_declares() {
    let l = Log::new();
    let t = &l.t;
    let (record, caucus) = (t.record, t.us_caucus);
    let both = [record, caucus];
    // A roster addressed to the record room and the US caucus: the caucus
    // is in its audience, but the roster counts only in the room it
    // declares as record.
    let roster = l.to(1, OMAN_TALKS, &both, Payload::Roster(t.roster.clone()));
    let (replay, got) = verdicts(&[(roster.clone(), Some(caucus))]);
    assert_eq!(
        got,
        [Err(Rejected::NotInRecordRoom {
            statement: StatementType::Roster
        })]
    );
    assert!(replay.roster().is_none() && replay.record_room().is_none());
    let replay = check(
        &[(roster.clone(), Some(caucus)), at(roster.clone())],
        &[Err("formal act"), Ok(())],
    );
    assert_eq!(replay.record_room(), Some(record));
    // Every formal act, addressed to both rooms and posted to the caucus,
    // is refused and changes nothing; the same bytes then posted to the
    // record room count there (the first posting to the record room).
    let cert = MemberCert::new(
        fixtures::PRINCIPALS[3],
        t.us,
        Role::Negotiator,
        key(NEW_IDENTITY).public_key(),
        vec![],
        None,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let acts = [
        l.to(3, US_TALKS, &both, Payload::MemberCert(cert)),
        l.to(
            2,
            OMAN_TALKS,
            &both,
            Payload::GroundRules(t.ground_rules.clone()),
        ),
        l.to(
            5,
            US_TALKS,
            &both,
            Payload::Revoke(Revoke {
                key: key(US_HEAD_DEVICE).public_key().id(),
                reason: RevokeReason::Lost,
                lost_at: None,
            }),
        ),
        l.failure(6, US_HEAD, &both, (caucus, 0)),
        l.to(
            7,
            US_TALKS,
            &both,
            Payload::Lifecycle(
                LifecycleChange::new(Suspended, "for consultations")
                    .unwrap_or_else(|e| panic!("{e}")),
            ),
        ),
    ];
    let mut log = vec![at(roster)];
    let mut expect = vec![Ok(())];
    for (act, name) in acts.iter().zip([
        "member-cert",
        "ground-rules",
        "revoke",
        "commit-failure",
        "lifecycle",
    ]) {
        log.push((act.clone(), Some(caucus)));
        expect.push(Err(name));
    }
    let (replay, got) = verdicts(&log);
    for (g, want) in got.iter().skip(1).zip(&expect[1..]) {
        let Err(e) = g else {
            panic!("accepted outside the record room: {g:?}")
        };
        let (Rejected::NotInRecordRoom { statement }, Err(name)) = (e, want) else {
            panic!("{e:?}")
        };
        assert_eq!(statement.name(), *name);
        assert!(
            e.to_string()
                .contains("counts only in the talks' record room")
        );
    }
    let new_identity = key(NEW_IDENTITY).public_key().id();
    let device = key(US_HEAD_DEVICE).public_key().id();
    assert!(replay.key(&new_identity).is_none());
    assert_eq!(replay.ground_rules(), None);
    assert_eq!(replay.key(&device).and_then(|k| k.revoked_at), None);
    assert!(replay.commit_failures().is_empty());
    assert_eq!(replay.phase(), &Phase::Open);
    // Then in the record room: each counts.
    log.extend(acts.iter().map(|a| at(a.clone())));
    expect.extend([Ok(()); 5]);
    let replay = check(&log, &expect);
    assert!(replay.key(&new_identity).is_some());
    assert_eq!(replay.ground_rules(), Some(&t.ground_rules));
    assert_eq!(replay.key(&device).and_then(|k| k.revoked_at), Some(8));
    assert_eq!(replay.commit_failures().len(), 1);
    assert_eq!(replay.phase(), &Phase::Suspended { by: t.us, at: 10 });
}

#[test]
fn messages_are_said_in_the_other_rooms_only_while_open_and_change_nothing() {
    let l = Log::new();
    let t = &l.t;
    let roster = l.roster(OMAN_TALKS);
    let non_paper = l.to(
        61,
        OMAN_LEAD,
        &[t.iran_caucus],
        Payload::Conveyance(Conveyed::NonPaper {
            item: None,
            text: "a non-paper on sequencing".into(),
        }),
    );
    let receipt = l.to(
        62,
        IRAN_HEAD,
        &[t.iran_caucus],
        Payload::Receipt(Receipt {
            kind: ReceiptKind::Received,
            statement: non_paper.unverified().id,
            hash: non_paper.hash(),
            room: t.iran_caucus,
            seq: 2,
        }),
    );
    let by_device = l.message(65, US_HEAD_DEVICE, &[t.us_caucus], "from a device");
    let (replay, got) = verdicts(&[
        at(roster.clone()),
        (
            l.message(60, US_HEAD, &[t.us_caucus], "our opening position"),
            Some(t.us_caucus),
        ),
        (non_paper.clone(), Some(t.iran_caucus)),
        (receipt.clone(), Some(t.iran_caucus)),
        // In the record room: refused.
        at(l.message(63, US_HEAD, &[t.record], "for the record")),
        at(l.to(
            64,
            OMAN_LEAD,
            &[t.record],
            Payload::Conveyance(Conveyed::NonPaper {
                item: None,
                text: "to everyone".into(),
            }),
        )),
        // Verified like any statement.
        (by_device, Some(t.us_caucus)),
        (
            l.message(66, IRAN_HEAD, &[t.us_caucus], "not my caucus"),
            Some(t.us_caucus),
        ),
        (
            l.message(67, US_HEAD, &[t.us_caucus], "elsewhere"),
            Some(t.iran_caucus),
        ),
        (
            l.message(68, US_HEAD, &[t.us_caucus], "nowhere"),
            Some(RoomId([0xee; 16])),
        ),
        // A party's member passing itself off as the mediators.
        (
            l.to(
                69,
                US_HEAD,
                &[t.us_caucus],
                Payload::Conveyance(Conveyed::NonPaper {
                    item: None,
                    text: "an unattributed draft".into(),
                }),
            ),
            Some(t.us_caucus),
        ),
    ]);
    assert_eq!(
        got[..4],
        [
            Ok(Accepted::Roster),
            Ok(Accepted::Said),
            Ok(Accepted::Said),
            Ok(Accepted::Said)
        ]
    );
    for (g, name) in got[4..6].iter().zip(["message", "conveyance"]) {
        let Err(e @ Rejected::MessageInRecordRoom { statement }) = g else {
            panic!("{g:?}")
        };
        assert_eq!(statement.name(), name);
        assert!(e.to_string().contains(
            "messages belong in the talks' other rooms; the record room carries formal statements only"
        ));
    }
    let fragments = [
        "device keys sign envelopes",
        "the author's party has no member in the room",
        "outside its audience",
        "not declared",
        "only a mediator whose role permits it conveys",
    ];
    assert_eq!(got.len(), 6 + fragments.len());
    for (g, frag) in got[6..].iter().zip(fragments) {
        let Err(e) = g else { panic!("{g:?}") };
        assert!(e.to_string().contains(frag), "{e} lacks {frag:?}");
    }
    // Nothing said changed the talks' state.
    assert_eq!(replay.phase(), &Phase::Open);
    assert_eq!(replay.ground_rules(), None);
    assert!(replay.accepted_by().is_empty());
    assert!(replay.equivocations().is_empty());
    // Only while open: not while suspended, again once resumed, not once concluded.
    let said = |seed| {
        (
            l.message(seed, US_HEAD, &[t.us_caucus], "a position"),
            Some(t.us_caucus),
        )
    };
    check(
        &[
            at(roster),
            at(l.lifecycle(70, IRAN_TALKS, Suspended)),
            said(71),
            (non_paper.clone(), Some(t.iran_caucus)),
            (receipt, Some(t.iran_caucus)),
            at(l.lifecycle(72, IRAN_TALKS, Resumed)),
            said(73),
            at(l.lifecycle(74, OMAN_TALKS, Concluded)),
            said(75),
        ],
        &[
            Ok(()),
            Ok(()),
            Err("no message statement is accepted while the talks are suspended"),
            Err("no conveyance statement is accepted while the talks are suspended"),
            Err("no receipt statement is accepted while the talks are suspended"),
            Ok(()),
            Ok(()),
            Ok(()),
            Err("no message statement is accepted while the talks are concluded"),
        ],
    );
}

#[test]
fn an_act_counts_once_and_other_bytes_under_its_id_are_equivocation() {
    let l = Log::new();
    let t = &l.t;
    let (r, g) = (l.roster(OMAN_TALKS), l.rules());
    let accept = l.accept(20, US_TALKS);
    let us_talks = key(US_TALKS).public_key().id();
    // A copy counts once, where it was first posted; the roster too.
    let (replay, got) = verdicts(&[
        at(r.clone()),
        at(g.clone()),
        at(accept.clone()),
        at(accept.clone()),
        at(r.clone()),
        // Another key may use the same id (seed): not a copy.
        at(l.accept(20, IRAN_TALKS)),
    ]);
    assert_eq!(
        got,
        [
            Ok(Accepted::Roster),
            Ok(Accepted::GroundRules),
            Ok(Accepted::Acceptance(t.us)),
            Ok(Accepted::Copy { first: 2 }),
            Ok(Accepted::Copy { first: 0 }),
            Ok(Accepted::Acceptance(t.iran)),
        ]
    );
    assert!(replay.equivocations().is_empty());
    // The same key and id with other bytes: the suspension counts, the
    // resumption signed under its id is equivocation and changes nothing.
    let suspend = l.lifecycle(80, US_TALKS, Suspended);
    let resume = l.lifecycle(80, US_TALKS, Resumed);
    let id = suspend.unverified().id;
    assert_eq!(id, resume.unverified().id);
    let (replay, got) = verdicts(&[at(r.clone()), at(suspend.clone()), at(resume.clone())]);
    assert_eq!(
        got[2],
        Err(Rejected::Equivocation {
            first: 1,
            statement: id
        })
    );
    assert_eq!(replay.phase(), &Phase::Suspended { by: t.us, at: 1 });
    let evidence = Equivocation {
        first: 1,
        later: 2,
        statement: id,
        author: us_talks,
    };
    assert_eq!(replay.equivocations(), [evidence]);
    // Without the suspension first, the same resumption is judged on its own.
    let (_, got) = verdicts(&[at(r.clone()), at(resume)]);
    assert!(
        matches!(got[1], Err(Rejected::WrongPhase { .. })),
        "{got:?}"
    );
    // A copy of a statement that did not count does not count later.
    let replay = check(
        &[
            at(r.clone()),
            at(accept.clone()),
            at(g.clone()),
            at(accept.clone()),
        ],
        &[
            Ok(()),
            Err("no ground rules have been set yet"),
            Ok(()),
            Err("a copy of the statement at seq 1, which did not count"),
        ],
    );
    assert!(replay.accepted_by().is_empty());
}

#[test]
fn statements_in_other_rooms_count_once_per_room_and_never_sway_the_record() {
    let l = Log::new();
    let t = &l.t;
    let caucuses = [t.us_caucus, t.iran_caucus];
    let lead = key(OMAN_LEAD).public_key().id();
    let said = l.message(90, OMAN_LEAD, &caucuses, "the same words to both");
    let (replay, got) = verdicts(&[
        at(l.roster(OMAN_TALKS)),
        (said.clone(), Some(t.us_caucus)),
        (said.clone(), Some(t.iran_caucus)),
        (said.clone(), Some(t.us_caucus)),
        // Other words under the same id, to one caucus: equivocation.
        (
            l.message(90, OMAN_LEAD, &caucuses, "other words"),
            Some(t.iran_caucus),
        ),
    ]);
    assert_eq!(
        got[1..4],
        [
            Ok(Accepted::Said),
            Ok(Accepted::Said),
            Ok(Accepted::Copy { first: 1 })
        ]
    );
    let id = said.unverified().id;
    assert_eq!(
        got[4],
        Err(Rejected::Equivocation {
            first: 1,
            statement: id
        })
    );
    assert_eq!(replay.equivocations().len(), 1);
    // A message first, then a formal act under its id in the record room:
    // the record room's verdict does not depend on rooms not every party
    // sees (the act counts), but the equivocation is kept as evidence.
    let (replay, got) = verdicts(&[
        at(l.roster(OMAN_TALKS)),
        (
            l.message(91, OMAN_LEAD, &[t.us_caucus], "words"),
            Some(t.us_caucus),
        ),
        at(l.lead_device_cert(91, &[t.record])),
    ]);
    let device = key(LEAD_NEW_DEVICE).public_key().id();
    assert_eq!(got[2], Ok(Accepted::Certified(device)));
    let cert_id = l.lead_device_cert(91, &[t.record]).unverified().id;
    assert_eq!(
        replay.equivocations(),
        [Equivocation {
            first: 1,
            later: 2,
            statement: cert_id,
            author: lead,
        }]
    );
    // The formal act first: the message under its id is refused.
    let (replay, got) = verdicts(&[
        at(l.roster(OMAN_TALKS)),
        at(l.lead_device_cert(92, &[t.record])),
        (
            l.message(92, OMAN_LEAD, &[t.us_caucus], "words"),
            Some(t.us_caucus),
        ),
    ]);
    assert_eq!(got[1], Ok(Accepted::Certified(device)));
    assert!(
        matches!(got[2], Err(Rejected::Equivocation { first: 1, .. })),
        "{got:?}"
    );
    assert_eq!(replay.equivocations().len(), 1);
}

/// The plenary and letter talks, with the lead mediator taken out of the
/// plenary (a plenary of the two delegations alone).
fn plenary_without_mediator() -> fixtures::Talks {
    let mut t = fixtures::talks_with_plenary_and_letter();
    let lead: PrincipalId = fixtures::PRINCIPALS[0];
    for r in &mut t.roster.rooms {
        if r.room == PLENARY {
            r.members.retain(|m| *m != lead);
        }
    }
    t.roster.access_list_hash = t
        .roster
        .implied_access_list(t.talks)
        .unwrap_or_else(|e| panic!("{e}"))
        .hash();
    t
}

#[test]
fn a_joint_session_is_open_while_every_party_in_the_room_consents() {
    let l = Log::with(fixtures::talks_with_plenary_and_letter());
    let log = [
        at(l.roster(OMAN_TALKS)),
        at(l.consent(100, US_TALKS, PLENARY, (1000, 5000))),
        // A head may accept the talks, so may consent for its party.
        at(l.consent(101, IRAN_HEAD, PLENARY, (2000, 6000))),
        // The mediator team is in the room too.
        at(l.consent(102, OMAN_LEAD, PLENARY, (0, 4000))),
        // A later consent replaces the party's earlier one.
        at(l.consent(103, US_TALKS, PLENARY, (3500, 7000))),
    ];
    let expect = [Ok(()); 5];
    // (statements replayed, [(now, session)])
    #[allow(clippy::type_complexity)]
    let steps: &[(usize, &[(u64, Option<(u64, u64)>)])] = &[
        (1, &[(3000, None)]),
        (3, &[(3000, None)]),
        (
            4,
            &[
                (1999, None),
                (2000, Some((2000, 4000))),
                (3999, Some((2000, 4000))),
                (4000, None),
            ],
        ),
        (5, &[(3000, None), (3500, Some((3500, 4000))), (5000, None)]),
    ];
    for (n, sessions) in steps {
        let replay = check(&log[..*n], &expect[..*n]);
        for (now, want) in *sessions {
            assert_eq!(
                replay.joint_session(PLENARY, *now),
                *want,
                "after {n}, at {now}"
            );
        }
    }
    let replay = check(&log, &expect);
    let consents: Vec<_> = replay
        .session_consents(PLENARY)
        .into_iter()
        .map(|(p, w)| (p, w.opens, w.closes, w.at))
        .collect();
    assert_eq!(
        consents,
        [
            (l.t.oman, 0, 4000, 3),
            (l.t.us, 3500, 7000, 4),
            (l.t.iran, 2000, 6000, 2)
        ]
    );
    // No joint session outside a plenary, or while the talks are suspended.
    assert_eq!(replay.joint_session(LETTER, 3600), None);
    let mut suspended = log.to_vec();
    suspended.push(at(l.lifecycle(104, IRAN_TALKS, Suspended)));
    suspended.push(at(l.consent(105, US_TALKS, PLENARY, (0, 9000))));
    let replay = check(
        &suspended,
        &[
            Ok(()),
            Ok(()),
            Ok(()),
            Ok(()),
            Ok(()),
            Ok(()),
            Err("no session-consent statement is accepted while the talks are suspended"),
        ],
    );
    assert_eq!(replay.joint_session(PLENARY, 3600), None);
}

#[test]
fn a_consent_needs_a_plenary_its_party_is_in_and_a_signer_who_may_accept() {
    let l = Log::with(fixtures::talks_with_plenary_and_letter());
    let t = &l.t;
    let replay = check(
        &[
            at(l.roster(OMAN_TALKS)),
            at(l.consent(110, US_NEGOTIATOR, PLENARY, (0, 9000))),
            at(l.consent(111, US_TALKS, t.us_caucus, (0, 9000))),
            at(l.consent(112, US_TALKS, LETTER, (0, 9000))),
            at(l.consent(113, US_TALKS, RoomId([0xee; 16]), (0, 9000))),
            // Addressed to and posted in the plenary: a formal act elsewhere.
            (
                l.to(
                    114,
                    US_TALKS,
                    &[PLENARY],
                    Payload::SessionConsent(
                        SessionConsent::new(PLENARY, 0, 9000).unwrap_or_else(|e| panic!("{e}")),
                    ),
                ),
                Some(PLENARY),
            ),
        ],
        &[
            Ok(()),
            Err("through its talks authority or a member who may accept the talks"),
            Err("joint sessions are held in plenary rooms only"),
            Err("joint sessions are held in plenary rooms only"),
            Err("names a room the roster does not declare"),
            Err("a session-consent statement is a formal act"),
        ],
    );
    assert!(replay.session_consents(PLENARY).is_empty());
    // A party with no member in the room may not consent, and is not
    // waited for.
    let l = Log::with(plenary_without_mediator());
    let replay = check(
        &[
            at(l.roster(OMAN_TALKS)),
            at(l.consent(120, OMAN_TALKS, PLENARY, (0, 9000))),
            at(l.consent(121, US_TALKS, PLENARY, (1000, 5000))),
            at(l.consent(122, IRAN_TALKS, PLENARY, (2000, 6000))),
        ],
        &[
            Ok(()),
            Err("the consenting party has no member in the room"),
            Ok(()),
            Ok(()),
        ],
    );
    assert_eq!(replay.joint_session(PLENARY, 3000), Some((2000, 5000)));
}

#[test]
fn ground_rules_must_allow_the_letters_of_every_letter_room() {
    let l = Log::with(fixtures::talks_with_plenary_and_letter());
    let t = &l.t;
    let without = GroundRules {
        sealed_letters: Vec::new(),
        ..t.ground_rules.clone()
    };
    let other_pair = GroundRules {
        sealed_letters: vec![(t.oman.min(t.us), t.oman.max(t.us))],
        ..t.ground_rules.clone()
    };
    let (replay, got) = verdicts(&[
        at(l.roster(OMAN_TALKS)),
        at(l.rules_with(130, without.clone())),
        at(l.rules_with(131, other_pair)),
        at(l.rules()),
    ]);
    assert_eq!(
        got[1..],
        [
            Err(Rejected::LettersNotAllowed { room: LETTER }),
            Err(Rejected::LettersNotAllowed { room: LETTER }),
            Ok(Accepted::GroundRules),
        ]
    );
    assert_eq!(replay.ground_rules(), Some(&t.ground_rules));
    // Talks without a letter room need no letters.
    let base = Log::new();
    let replay = check(
        &[
            at(base.roster(OMAN_TALKS)),
            at(base.rules_with(130, without.clone())),
        ],
        &[Ok(()), Ok(())],
    );
    assert_eq!(replay.ground_rules(), Some(&without));
}

#[test]
fn commit_failures_are_kept_from_member_identity_keys_in_the_record_room() {
    let l = Log::new();
    let t = &l.t;
    let record = [t.record];
    let (replay, got) = verdicts(&[
        at(l.roster(OMAN_TALKS)),
        at(l.failure(140, US_HEAD, &record, (t.us_caucus, 0))),
        at(l.failure(141, US_TALKS, &record, (t.us_caucus, 0))),
        at(l.failure(142, US_HEAD, &record, (RoomId([0xee; 16]), 0))),
        at(l.failure(143, US_HEAD, &record, (t.us_caucus, 4))),
        (
            l.failure(144, US_HEAD, &[t.us_caucus], (t.us_caucus, 0)),
            Some(t.us_caucus),
        ),
        // About keys, like revocations: while suspended and concluded too.
        at(l.lifecycle(145, US_TALKS, Suspended)),
        at(l.failure(146, IRAN_HEAD, &record, (t.iran_caucus, 3))),
        at(l.lifecycle(147, OMAN_TALKS, Concluded)),
        at(l.failure(148, US_NEGOTIATOR, &record, (t.us_caucus, 5))),
        at(l.lifecycle(149, OMAN_TALKS, Closed)),
        at(l.failure(150, US_HEAD, &record, (t.us_caucus, 9))),
    ]);
    assert_eq!(
        got[1],
        Ok(Accepted::CommitFailure {
            room: t.us_caucus,
            seq: 0
        })
    );
    let fragments = [
        (2, "stated by the member's identity key"),
        (3, "names a room the roster does not declare"),
        (4, "a commit not sequenced before it"),
        (5, "a commit-failure statement is a formal act"),
        (
            11,
            "no commit-failure statement is accepted while the talks are closed",
        ),
    ];
    for (seq, frag) in fragments {
        let Err(e) = &got[seq] else {
            panic!("seq {seq}: {:?}", got[seq])
        };
        assert!(
            e.to_string().contains(frag),
            "seq {seq}: {e} lacks {frag:?}"
        );
    }
    for seq in [6, 7, 8, 9, 10] {
        assert!(got[seq].is_ok(), "seq {seq}: {:?}", got[seq]);
    }
    let [_, us_head, iran_head, us_neg] = fixtures::PRINCIPALS;
    let record = |room, seq, by, at| CommitFailureRecord {
        room,
        seq,
        epoch: 7,
        by,
        at,
    };
    assert_eq!(
        replay.commit_failures(),
        [
            record(t.us_caucus, 0, us_head, 1),
            record(t.iran_caucus, 3, iran_head, 7),
            record(t.us_caucus, 5, us_neg, 9),
        ]
    );
}

/// A revocation for loss records when the key was lost (the earliest any
/// valid revocation names); one that names no time records none, and a
/// refused revocation records nothing.
#[test]
fn a_loss_is_dated_by_the_earliest_valid_revocation() {
    let l = Log::new();
    let t = fixtures::talks();
    let device = key(US_HEAD_DEVICE).public_key().id();
    let lost = |n: u64, signer: u8, at: Option<u64>| {
        t.statement(
            600 + n,
            &key(signer),
            t.us,
            Payload::Revoke(Revoke {
                key: device,
                reason: RevokeReason::Lost,
                lost_at: at,
            }),
        )
    };
    let replay = check(
        &[
            at(l.roster(OMAN_TALKS)),
            at(l.revoke(US_TALKS, true, US_HEAD_DEVICE)),
        ],
        &[Ok(()), Ok(())],
    );
    assert_eq!(replay.key(&device).unwrap().lost_at, None);
    // Iran's authority may not revoke a US device: no date from it.
    let replay = check(
        &[
            at(l.roster(OMAN_TALKS)),
            at(t.statement(
                700,
                &key(IRAN_TALKS),
                t.iran,
                Payload::Revoke(Revoke {
                    key: device,
                    reason: RevokeReason::Lost,
                    lost_at: Some(5),
                }),
            )),
            at(lost(1, US_TALKS, Some(9_000))),
            at(lost(2, US_HEAD, Some(7_000))),
            at(lost(3, US_TALKS, Some(8_000))),
        ],
        &[Ok(()), Err("may revoke it"), Ok(()), Ok(()), Ok(())],
    );
    let state = replay.key(&device).unwrap();
    assert_eq!(
        state.revoked_at,
        Some(2),
        "the first valid revocation's seq"
    );
    assert_eq!(state.lost_at, Some(7_000), "the earliest date named");
}

// --- History shared (rule 15) ---------------------------------------------------

/// The US head's private-notes room of [`talks_with_private_notes`].
const US_HEAD_NOTES: RoomId = RoomId([0x79; 16]);
/// A US interpreter's identity key, certified by statement.
const INTERPRETER_IDENTITY: u8 = 0x36;
/// A US member certified by statement, and the interpreter.
const NEW_US_MEMBER: PrincipalId = PrincipalId([0xa5; 16]);
const US_INTERPRETER: PrincipalId = PrincipalId([0xa6; 16]);
/// Key label of [`NEW_US_MEMBER`]'s identity.
const NEW_US_MEMBER_IDENTITY: u8 = 0x37;

/// The reference talks with the US head's private-notes room too.
fn talks_with_private_notes() -> fixtures::Talks {
    let mut t = fixtures::talks();
    t.roster.rooms.push(RoomDecl {
        room: US_HEAD_NOTES,
        purpose: RoomPurpose::PrivateNotes,
        name: "Notes: US envoy".into(),
        members: vec![fixtures::PRINCIPALS[1]],
    });
    t.roster.rooms.sort_by_key(|r| r.room);
    t.roster.access_list_hash = t
        .roster
        .implied_access_list(t.talks)
        .unwrap_or_else(|e| panic!("{e}"))
        .hash();
    t
}

impl Log {
    /// A history share by `signer`, addressed to and meant for `posted`.
    fn share(
        &self,
        seed: u64,
        signer: u8,
        posted: &[RoomId],
        to: PrincipalId,
        rooms: &[RoomId],
        until: u64,
    ) -> SignedStatement {
        let share = HistoryShared::new(to, rooms.to_vec(), until, Digest([0xb0; 32]))
            .unwrap_or_else(|e| panic!("{e}"));
        self.to(seed, signer, posted, Payload::HistoryShared(share))
    }
    /// A certificate by the US talks authority for a new US member.
    fn us_member(
        &self,
        seed: u64,
        principal: PrincipalId,
        role: Role,
        ident: u8,
    ) -> SignedStatement {
        let cert = MemberCert::new(
            principal,
            self.t.us,
            role,
            key(ident).public_key(),
            vec![],
            None,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        self.to(seed, US_TALKS, &[self.t.record], Payload::MemberCert(cert))
    }
}

#[test]
fn history_is_shared_by_an_entitled_member_with_its_own_party_and_kept() {
    let l = Log::with(talks_with_private_notes());
    let t = &l.t;
    let record = [t.record];
    let [lead, us_head, iran_head, us_neg] = fixtures::PRINCIPALS;
    let caucuses = [t.record, t.us_caucus];
    let interpreter = {
        let cert = MemberCert::new(
            US_INTERPRETER,
            t.us,
            Role::Interpreter,
            key(INTERPRETER_IDENTITY).public_key(),
            vec![],
            None,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        l.to(201, US_TALKS, &record, Payload::MemberCert(cert))
    };
    let by_interpreter = l.t.statement_to(
        211,
        &key(INTERPRETER_IDENTITY),
        t.us,
        vec![Audience::Room(t.record)],
        Payload::HistoryShared(
            HistoryShared::new(us_head, vec![t.us_caucus], 1, Digest([0xb0; 32]))
                .unwrap_or_else(|e| panic!("{e}")),
        ),
    );
    let accepted = l.share(210, US_HEAD, &record, us_neg, &caucuses, 3);
    let log = vec![
        at(l.roster(OMAN_TALKS)),
        at(interpreter),
        at(l.us_member(202, NEW_US_MEMBER, Role::Negotiator, NEW_US_MEMBER_IDENTITY)),
        // 3: the head shares both rooms up to its own seq with the negotiator.
        at(accepted.clone()),
        // 4: with itself (its own new device), and with a member certified
        // by statement; the lead mediator with itself.
        at(l.share(212, US_HEAD, &record, us_head, &[t.us_caucus], 1)),
        at(l.share(
            213,
            US_NEGOTIATOR,
            &record,
            NEW_US_MEMBER,
            &[t.us_caucus],
            5,
        )),
        at(l.share(214, OMAN_LEAD, &record, lead, &[t.iran_caucus], 6)),
        // 7: a talks authority, never.
        at(l.share(215, US_TALKS, &record, us_head, &[t.us_caucus], 1)),
        // 8: a role without the act.
        at(by_interpreter),
        // 9, 10, 11: a member of another party; a principal replay does not
        // know; the other party's delegation.
        at(l.share(216, US_HEAD, &record, iran_head, &[t.us_caucus], 1)),
        at(l.share(
            217,
            US_HEAD,
            &record,
            PrincipalId([0xee; 16]),
            &[t.us_caucus],
            1,
        )),
        at(l.share(218, OMAN_LEAD, &record, us_head, &[t.us_caucus], 1)),
        // 12: private notes, never; 13: a room the roster does not declare.
        at(l.share(
            219,
            US_HEAD,
            &record,
            us_neg,
            &[t.us_caucus, US_HEAD_NOTES],
            1,
        )),
        at(l.share(
            220,
            US_HEAD,
            &record,
            us_neg,
            &[RoomId([0x70; 16]), t.us_caucus],
            1,
        )),
        // 14: the future.
        at(l.share(221, US_HEAD, &record, us_neg, &[t.us_caucus], 15)),
        // 15: not in the record room.
        (
            l.share(222, US_HEAD, &caucuses, us_neg, &[t.us_caucus], 1),
            Some(t.us_caucus),
        ),
        // 16: a copy of seq 3 counts once; 17: other bytes under its id.
        at(accepted.clone()),
        at(l.share(210, US_HEAD, &record, us_neg, &caucuses, 2)),
    ];
    let (replay, got) = verdicts(&log);
    assert_eq!(
        got[3],
        Ok(Accepted::HistoryShared {
            by: us_head,
            to: us_neg,
            until: 3
        })
    );
    for seq in [1, 2, 4, 5, 6] {
        assert!(got[seq].is_ok(), "seq {seq}: {:?}", got[seq]);
    }
    let fragments = [
        (
            7,
            "history is handed over by a member's identity key, not a talks authority",
        ),
        (8, "the member's role does not permit handing over history"),
        (9, "not a member of the author's party"),
        (10, "not a member of the author's party"),
        (11, "not a member of the author's party"),
        (
            12,
            "names room 79797979797979797979797979797979: private notes are never handed over",
        ),
        (
            13,
            "names room 70707070707070707070707070707070: the roster does not declare it",
        ),
        (14, "it covers log positions after its own seq"),
        (15, "a history-shared statement is a formal act"),
        (17, "equivocation"),
    ];
    for (seq, frag) in fragments {
        let Err(e) = &got[seq] else {
            panic!("seq {seq}: {:?}", got[seq])
        };
        assert!(
            e.to_string().contains(frag),
            "seq {seq}: {e} lacks {frag:?}"
        );
    }
    assert!(matches!(got[7], Err(Rejected::NotEntitled(_))));
    assert!(matches!(got[8], Err(Rejected::NotEntitled(_))));
    assert_eq!(
        got[12],
        Err(Rejected::HistoryRoom {
            room: US_HEAD_NOTES,
            reason: "private notes are never handed over"
        })
    );
    assert_eq!(
        got[15],
        Err(Rejected::NotInRecordRoom {
            statement: StatementType::HistoryShared
        })
    );
    assert_eq!(got[16], Ok(Accepted::Copy { first: 3 }));
    assert_eq!(
        replay.equivocations(),
        [Equivocation {
            first: 3,
            later: 17,
            statement: accepted.unverified().id,
            author: key(US_HEAD).public_key().id(),
        }]
    );
    let share =
        |seq: u64, seed: &SignedStatement, by, party, to, rooms: &[RoomId], until| HistoryShare {
            seq,
            statement: seed.unverified().id,
            by,
            party,
            to,
            rooms: rooms.to_vec(),
            until,
            bundle: Digest([0xb0; 32]),
        };
    assert_eq!(
        replay.history_shared(),
        [
            share(3, &log[3].0, us_head, t.us, us_neg, &caucuses, 3),
            share(4, &log[4].0, us_head, t.us, us_head, &[t.us_caucus], 1),
            share(5, &log[5].0, us_neg, t.us, NEW_US_MEMBER, &[t.us_caucus], 5),
            share(6, &log[6].0, lead, t.oman, lead, &[t.iran_caucus], 6),
        ]
    );
}

#[test]
fn history_is_shared_while_suspended_or_concluded_but_not_once_closed() {
    let l = Log::new();
    let t = &l.t;
    let record = [t.record];
    let us_neg = fixtures::PRINCIPALS[3];
    let replay = check(
        &[
            at(l.roster(OMAN_TALKS)),
            at(l.lifecycle(230, US_TALKS, Suspended)),
            at(l.share(231, US_HEAD, &record, us_neg, &[t.us_caucus], 2)),
            at(l.lifecycle(232, OMAN_TALKS, Concluded)),
            at(l.share(233, US_HEAD, &record, us_neg, &[t.us_caucus], 4)),
            at(l.lifecycle(234, OMAN_TALKS, Closed)),
            at(l.share(235, US_HEAD, &record, us_neg, &[t.us_caucus], 6)),
        ],
        &[
            Ok(()),
            Ok(()),
            Ok(()),
            Ok(()),
            Ok(()),
            Ok(()),
            Err("no history-shared statement is accepted while the talks are closed"),
        ],
    );
    let kept: Vec<_> = replay
        .history_shared()
        .iter()
        .map(|h| (h.seq, h.until))
        .collect();
    assert_eq!(kept, [(2, 2), (4, 4)]);
}

// --- Authority passed (rule 16) ---------------------------------------------------

/// A successor to Oman's talks authority (tests only).
const OMAN_TALKS_SUCCESSOR: u8 = 0x27;
/// A US member certified by the successor talks authority.
const SUCCESSOR_MEMBER: PrincipalId = PrincipalId([0xa7; 16]);
const SUCCESSOR_MEMBER_IDENTITY: u8 = 0x38;

/// A second mediator team (tests only): its party, long-term and talks
/// authority.
const QATAR: PartyId = PartyId([0x0d; 16]);
const QATAR_AUTHORITY: u8 = 0x14;
const QATAR_TALKS: u8 = 0x24;

/// The reference talks with a second mediator team, Qatar (no members).
fn talks_with_two_mediator_teams() -> fixtures::Talks {
    let mut t = fixtures::talks();
    let qatar = backchannel_statement::roster::PartyEntry::certify(
        t.talks,
        QATAR,
        backchannel_statement::PartyKind::Mediator,
        "State of Qatar",
        &key(QATAR_AUTHORITY),
        key(QATAR_TALKS).public_key(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    t.roster.parties.push(qatar);
    t.roster.parties.sort_by_key(|p| p.party);
    t.roster.access_list_hash = t
        .roster
        .implied_access_list(t.talks)
        .unwrap_or_else(|e| panic!("{e}"))
        .hash();
    t
}

/// What an authority pass carries, by key label: the author, the party, the
/// old and new keys, how, who signs as the new key, who certifies as the
/// long-term authority, and each endorsement as (key, signer).
struct Pass {
    author: u8,
    party: PartyId,
    old: u8,
    new: u8,
    how: PassedHow,
    new_signer: u8,
    cert: Option<u8>,
    endorsers: Vec<(u8, u8)>,
}

impl Pass {
    /// The US talks authority handed over by the old key to the successor.
    fn handed_over(l: &Log) -> Self {
        Self {
            author: US_TALKS,
            party: l.t.us,
            old: US_TALKS,
            new: US_TALKS_SUCCESSOR,
            how: PassedHow::HandedOver,
            new_signer: US_TALKS_SUCCESSOR,
            cert: None,
            endorsers: vec![],
        }
    }
    /// The US talks authority re-appointed by Oman, certified by the US
    /// long-term authority and endorsed by Iran.
    fn reappointed(l: &Log) -> Self {
        Self {
            author: OMAN_TALKS,
            how: PassedHow::Reappointed,
            cert: Some(US_AUTHORITY),
            endorsers: vec![(IRAN_TALKS, IRAN_TALKS)],
            ..Self::handed_over(l)
        }
    }
    fn payload(&self, l: &Log) -> AuthorityPassed {
        let old = key(self.old).public_key().id();
        let new = key(self.new).public_key();
        let sign = |label: u8| {
            AuthorityPassed::sign_transfer(&key(label), l.t.talks, self.party, &old, &new, self.how)
                .unwrap_or_else(|e| panic!("{e}"))
        };
        let mut endorsements: Vec<Endorsement> = self
            .endorsers
            .iter()
            .map(|(k, signer)| Endorsement {
                key: key(*k).public_key().id(),
                signature: sign(*signer),
            })
            .collect();
        endorsements.sort_by_key(|e| e.key);
        AuthorityPassed::new(
            self.party,
            old,
            new,
            self.how,
            sign(self.new_signer),
            self.cert.map(sign),
            endorsements,
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }
    /// The statement, by `author` for its party, to `rooms`.
    fn to(&self, l: &Log, seed: u64, rooms: &[RoomId]) -> SignedStatement {
        let party = match self.author {
            OMAN_TALKS_SUCCESSOR => l.t.oman,
            QATAR_TALKS => QATAR,
            IRAN_TALKS_SUCCESSOR => l.t.iran,
            a => l.party(a),
        };
        let audience = rooms.iter().map(|r| Audience::Room(*r)).collect();
        l.t.statement_to(
            seed,
            &key(self.author),
            party,
            audience,
            Payload::AuthorityPassed(self.payload(l)),
        )
    }
    fn at(&self, l: &Log, seed: u64) -> (SignedStatement, Option<RoomId>) {
        at(self.to(l, seed, &[l.t.record]))
    }
}

impl Log {
    /// A member certificate by `signer` (a US talks authority) for a new US member.
    fn us_member_by(
        &self,
        seed: u64,
        signer: u8,
        principal: PrincipalId,
        ident: u8,
    ) -> SignedStatement {
        let cert = MemberCert::new(
            principal,
            self.t.us,
            Role::Negotiator,
            key(ident).public_key(),
            vec![],
            None,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        self.t
            .statement(seed, &key(signer), self.t.us, Payload::MemberCert(cert))
    }
    /// An acceptance by `signer` of `self.roster(OMAN_TALKS)` and `rules`.
    fn accept_rules(&self, seed: u64, signer: u8, rules: &SignedStatement) -> SignedStatement {
        let r = self.roster(OMAN_TALKS);
        self.acceptance(
            seed,
            signer,
            Acceptance {
                roster: r.unverified().id,
                roster_hash: r.hash(),
                ground_rules: rules.unverified().id,
                ground_rules_hash: rules.hash(),
            },
        )
    }
    /// Ground rules with `rule` as their change rule.
    fn rules_changed_by(&self, rule: ChangeRule) -> SignedStatement {
        let mut g = self.t.ground_rules.clone();
        g.change_rule = rule;
        self.rules_with(2, g)
    }
}

#[test]
fn a_handed_over_authority_signs_for_its_party_from_the_next_statement_and_the_old_key_no_more() {
    let l = Log::new();
    let t = &l.t;
    let pass = Pass::handed_over(&l);
    let old = key(US_TALKS).public_key().id();
    let new = key(US_TALKS_SUCCESSOR).public_key();
    let a = |seed, signer| {
        let (r, g) = (l.roster(OMAN_TALKS), l.rules());
        l.t.statement(
            seed,
            &key(signer),
            t.us,
            Payload::Acceptance(Acceptance {
                roster: r.unverified().id,
                roster_hash: r.hash(),
                ground_rules: g.unverified().id,
                ground_rules_hash: g.hash(),
            }),
        )
    };
    let log = vec![
        at(l.roster(OMAN_TALKS)),
        at(l.rules()),
        // 2: the old key certifies a member before the pass.
        at(l.member_cert(US_TALKS)),
        // 3: the pass.
        pass.at(&l, 600),
        // 4, 5: the old key, after it: refused (a certificate, an acceptance).
        at(l.us_member_by(601, US_TALKS, SUCCESSOR_MEMBER, SUCCESSOR_MEMBER_IDENTITY)),
        at(a(602, US_TALKS)),
        // 6..9: the new key certifies a member, accepts, revokes, suspends.
        at(l.us_member_by(
            603,
            US_TALKS_SUCCESSOR,
            SUCCESSOR_MEMBER,
            SUCCESSOR_MEMBER_IDENTITY,
        )),
        at(a(604, US_TALKS_SUCCESSOR)),
        // 8: the member the old key certified before the pass still signs.
        at(l.device_cert(605, NEW_DEVICE, u64::MAX)),
        at(l.revoke(US_TALKS_SUCCESSOR, true, NEW_DEVICE)),
        at(l.lifecycle(606, US_TALKS_SUCCESSOR, Suspended)),
        // 11: the same pass again is a copy, by a key that signs nothing now.
        pass.at(&l, 600),
    ];
    let (replay, got) = verdicts(&log);
    assert_eq!(
        got[3],
        Ok(Accepted::AuthorityPassed {
            party: t.us,
            old,
            new: new.id(),
        })
    );
    for seq in [0, 1, 2, 6, 7, 8, 9, 10] {
        assert!(got[seq].is_ok(), "seq {seq}: {:?}", got[seq]);
    }
    for seq in [4, 5, 11] {
        assert_eq!(
            got[seq],
            Err(Rejected::AuthorityRetired { passed_at: 3 }),
            "seq {seq}"
        );
    }
    let Err(e) = &got[4] else { unreachable!() };
    assert!(
        e.to_string()
            .contains("passed its party's talks authority to a new key at seq 3"),
        "{e}"
    );
    assert_eq!(
        replay.authority_passes(),
        [AuthorityPass {
            seq: 3,
            statement: log[3].0.unverified().id,
            party: t.us,
            old,
            new,
            how: PassedHow::HandedOver,
        }]
    );
    let old_state = replay.key(&old).unwrap_or_else(|| panic!("old key"));
    assert_eq!(old_state.passed_at, Some(3));
    assert_eq!(old_state.revoked_at, None);
    assert_eq!(old_state.retired_at(), Some(3));
    let new_state = replay.key(&new.id()).unwrap_or_else(|| panic!("new key"));
    assert_eq!(new_state.role, KeyRole::TalksAuthority { party: t.us });
    assert_eq!(new_state.valid_from, 3);
    assert_eq!(replay.talks_authority(t.us).map(|k| k.key), Some(new));
    assert_eq!(
        replay.talks_authority(t.iran).map(|k| k.key),
        Some(key(IRAN_TALKS).public_key())
    );
    // Certified before the pass by the old key, still valid.
    let member = replay
        .key(&key(NEW_IDENTITY).public_key().id())
        .unwrap_or_else(|| panic!("member"));
    assert_eq!((member.valid_from, member.revoked_at), (2, None));
    assert!(
        replay
            .key(&key(SUCCESSOR_MEMBER_IDENTITY).public_key().id())
            .is_some()
    );
    assert_eq!(replay.accepted_by(), [t.us]);
    assert_eq!(replay.phase(), &Phase::Suspended { by: t.us, at: 10 });
}

#[test]
fn a_re_appointed_authority_needs_the_long_term_authority_and_the_change_rules_endorsements() {
    let l = Log::new();
    // All parties (the fixture's rule): Iran endorses.
    let replay = check(
        &[
            at(l.roster(OMAN_TALKS)),
            at(l.rules()),
            Pass::reappointed(&l).at(&l, 610),
            at(l.us_member_by(611, US_TALKS, SUCCESSOR_MEMBER, SUCCESSOR_MEMBER_IDENTITY)),
            at(l.us_member_by(
                612,
                US_TALKS_SUCCESSOR,
                SUCCESSOR_MEMBER,
                SUCCESSOR_MEMBER_IDENTITY,
            )),
        ],
        &[
            Ok(()),
            Ok(()),
            Ok(()),
            Err("passed its party's talks authority to a new key at seq 2"),
            Ok(()),
        ],
    );
    assert_eq!(
        replay
            .authority_passes()
            .iter()
            .map(|p| (p.seq, p.how))
            .collect::<Vec<_>>(),
        [(2, PassedHow::Reappointed)]
    );
    // Mediator and affected parties, accepted by every party: no
    // endorsement needed, but one given must count.
    let bare = Pass {
        endorsers: vec![],
        ..Pass::reappointed(&l)
    };
    let forged = Pass {
        endorsers: vec![(IRAN_TALKS, IRAN_AUTHORITY)],
        ..Pass::reappointed(&l)
    };
    let rules = l.rules_changed_by(ChangeRule::MediatorAndAffectedParties);
    check(
        &[
            at(l.roster(OMAN_TALKS)),
            at(rules.clone()),
            at(l.accept_rules(617, US_TALKS, &rules)),
            at(l.accept_rules(618, IRAN_TALKS, &rules)),
            forged.at(&l, 613),
            bare.at(&l, 614),
        ],
        &[
            Ok(()),
            Ok(()),
            Ok(()),
            Ok(()),
            Err("its signature over the transfer does not verify"),
            Ok(()),
        ],
    );
    // Posted by the mediator but not yet accepted by every party (none,
    // then the US alone): its change rule does not count yet; all parties.
    check(
        &[
            at(l.roster(OMAN_TALKS)),
            at(rules.clone()),
            bare.at(&l, 619),
            at(l.accept_rules(620, US_TALKS, &rules)),
            bare.at(&l, 621),
            Pass::reappointed(&l).at(&l, 622),
        ],
        &[
            Ok(()),
            Ok(()),
            Err("party 0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c has not endorsed it"),
            Ok(()),
            Err("party 0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c has not endorsed it"),
            Ok(()),
        ],
    );
    // No ground rules yet: all parties.
    check(
        &[
            at(l.roster(OMAN_TALKS)),
            bare.at(&l, 615),
            Pass::reappointed(&l).at(&l, 616),
        ],
        &[
            Ok(()),
            Err("party 0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c has not endorsed it"),
            Ok(()),
        ],
    );
}

#[test]
fn an_authority_pass_is_refused_unless_every_part_fits() {
    let l = Log::new();
    let t = &l.t;
    let h = || Pass::handed_over(&l);
    let r = || Pass::reappointed(&l);
    let other_party = PartyId([0xee; 16]);
    let log = vec![
        at(l.roster(OMAN_TALKS)),
        at(l.rules()),
        // 2: handed over, signed by another party's talks authority.
        Pass {
            author: IRAN_TALKS,
            ..h()
        }
        .at(&l, 620),
        // 3: re-appointed by a party that is no mediator team.
        Pass {
            author: IRAN_TALKS,
            ..r()
        }
        .at(&l, 621),
        // 4: by a member's identity key.
        Pass {
            author: OMAN_LEAD,
            ..r()
        }
        .at(&l, 622),
        // 5: the old key is not the party's talks authority.
        Pass {
            old: IRAN_TALKS,
            ..r()
        }
        .at(&l, 623),
        // 6, 7: the new key is a known key, or a roster long-term authority.
        Pass {
            new: US_HEAD,
            new_signer: US_HEAD,
            ..h()
        }
        .at(&l, 624),
        Pass {
            new: US_AUTHORITY,
            new_signer: US_AUTHORITY,
            ..h()
        }
        .at(&l, 625),
        // 8: the new key did not sign.
        Pass {
            new_signer: IRAN_TALKS_SUCCESSOR,
            ..h()
        }
        .at(&l, 626),
        // 9: another long-term authority certifies.
        Pass {
            cert: Some(IRAN_AUTHORITY),
            ..r()
        }
        .at(&l, 627),
        // 10: all parties, no endorsement.
        Pass {
            endorsers: vec![],
            ..r()
        }
        .at(&l, 628),
        // 11, 12, 13: endorsed by an identity key, by the party itself, with
        // a signature by another key.
        Pass {
            endorsers: vec![(IRAN_HEAD, IRAN_HEAD)],
            ..r()
        }
        .at(&l, 629),
        Pass {
            endorsers: vec![(IRAN_TALKS, IRAN_TALKS), (US_TALKS, US_TALKS)],
            ..r()
        }
        .at(&l, 630),
        Pass {
            endorsers: vec![(IRAN_TALKS, IRAN_AUTHORITY)],
            ..r()
        }
        .at(&l, 631),
        // 14: a party the roster does not declare.
        Pass {
            party: other_party,
            ..r()
        }
        .at(&l, 632),
        // 15: outside the record room.
        (h().to(&l, 633, &[t.record, t.us_caucus]), Some(t.us_caucus)),
        // 16: an endorsement by a key replay does not know.
        Pass {
            endorsers: vec![(0x99, 0x99)],
            ..r()
        }
        .at(&l, 634),
        // 17: the valid hand-over.
        h().at(&l, 635),
        // 18: the old key again, now passed on.
        r().at(&l, 636),
        // 19, 20: Iran re-appointed: endorsed by the retired US key, then by
        // the current one.
        Pass {
            party: t.iran,
            old: IRAN_TALKS,
            new: IRAN_TALKS_SUCCESSOR,
            new_signer: IRAN_TALKS_SUCCESSOR,
            cert: Some(IRAN_AUTHORITY),
            endorsers: vec![(US_TALKS, US_TALKS)],
            ..r()
        }
        .at(&l, 637),
        Pass {
            party: t.iran,
            old: IRAN_TALKS,
            new: IRAN_TALKS_SUCCESSOR,
            new_signer: IRAN_TALKS_SUCCESSOR,
            cert: Some(IRAN_AUTHORITY),
            endorsers: vec![(US_TALKS_SUCCESSOR, US_TALKS_SUCCESSOR)],
            ..r()
        }
        .at(&l, 638),
        // 21: a re-appointment by the re-appointed party's own new key? No:
        // the US successor is no mediator team.
        Pass {
            author: US_TALKS_SUCCESSOR,
            old: US_TALKS_SUCCESSOR,
            new: 0x28,
            new_signer: 0x28,
            ..r()
        }
        .at(&l, 639),
    ];
    let expect: &[Result<(), &str>] = &[
        Ok(()),
        Ok(()),
        Err("a handed-over talks authority is passed by the old key itself"),
        Err("re-appointed by another mediator team's talks authority"),
        Err("a talks authority passes only by a talks authority's statement"),
        Err("the old key is not the party's talks authority at this seq"),
        Err("the new key is already known"),
        Err("the new key is already known"),
        Err("the new key's signature over the transfer does not verify"),
        Err("the party's long-term authority certification does not verify"),
        Err("party 0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c has not endorsed it"),
        Err("it is not a talks authority"),
        Err("it speaks for the party itself or the re-appointing mediator team"),
        Err("its signature over the transfer does not verify"),
        Err("it names a party the roster does not declare"),
        Err("a authority-passed statement is a formal act"),
        Err("replay does not know the key"),
        Ok(()),
        Err("the old key is not the party's talks authority at this seq"),
        Err("it is not its party's talks authority at this seq"),
        Ok(()),
        Err("re-appointed by another mediator team's talks authority"),
    ];
    let replay = check(&log, expect);
    let (_, got) = verdicts(&log);
    assert!(matches!(got[2], Err(Rejected::NotEntitled(_))));
    assert!(matches!(got[10], Err(Rejected::MissingEndorsement { party }) if party == t.iran));
    assert!(matches!(
        got[13],
        Err(Rejected::Endorsement { key: k, .. }) if k == key(IRAN_TALKS).public_key().id()
    ));
    assert_eq!(
        got[15],
        Err(Rejected::NotInRecordRoom {
            statement: StatementType::AuthorityPassed
        })
    );
    assert_eq!(
        replay
            .authority_passes()
            .iter()
            .map(|p| (p.seq, p.party, p.how))
            .collect::<Vec<_>>(),
        [
            (17, t.us, PassedHow::HandedOver),
            (20, t.iran, PassedHow::Reappointed)
        ]
    );
    // Refused passes changed nothing: the keys they named are unknown.
    assert!(replay.key(&key(0x28).public_key().id()).is_none());
    assert_eq!(
        replay.talks_authority(t.iran).map(|k| k.key),
        Some(key(IRAN_TALKS_SUCCESSOR).public_key())
    );
}

#[test]
fn a_mediator_teams_authority_is_handed_over_but_never_re_appointed() {
    let l = Log::with(talks_with_two_mediator_teams());
    let t = &l.t;
    let oman = Pass {
        party: t.oman,
        old: OMAN_TALKS,
        new: OMAN_TALKS_SUCCESSOR,
        new_signer: OMAN_TALKS_SUCCESSOR,
        ..Pass::handed_over(&l)
    };
    // Qatar re-appoints Oman's talks authority, certified by Oman's
    // long-term authority and endorsed by every other party: refused.
    let reappointed = Pass {
        author: QATAR_TALKS,
        how: PassedHow::Reappointed,
        cert: Some(OMAN_AUTHORITY),
        endorsers: vec![(US_TALKS, US_TALKS), (IRAN_TALKS, IRAN_TALKS)],
        ..oman
    };
    // Qatar may re-appoint a delegation's, with Oman and Iran endorsing.
    let us = Pass {
        author: QATAR_TALKS,
        endorsers: vec![(OMAN_TALKS, OMAN_TALKS), (IRAN_TALKS, IRAN_TALKS)],
        ..Pass::reappointed(&l)
    };
    let replay = check(
        &[
            at(l.roster(OMAN_TALKS)),
            at(l.rules()),
            reappointed.at(&l, 650),
            us.at(&l, 651),
            Pass {
                author: OMAN_TALKS,
                ..oman
            }
            .at(&l, 652),
        ],
        &[
            Ok(()),
            Ok(()),
            Err("a mediator team's talks authority is not re-appointed"),
            Ok(()),
            Ok(()),
        ],
    );
    assert_eq!(
        replay
            .authority_passes()
            .iter()
            .map(|p| (p.seq, p.party, p.how))
            .collect::<Vec<_>>(),
        [
            (3, t.us, PassedHow::Reappointed),
            (4, t.oman, PassedHow::HandedOver)
        ]
    );
}

#[test]
fn a_revoked_authority_is_re_appointed_but_not_handed_over() {
    let l = Log::new();
    let t = &l.t;
    let log = vec![
        at(l.roster(OMAN_TALKS)),
        at(l.rules()),
        // 2: the US revokes its lost talks authority.
        at(l.revoke(US_TALKS, true, US_TALKS)),
        // 3: the revoked key hands over: refused.
        Pass::handed_over(&l).at(&l, 660),
        // 4: re-appointed by Oman: accepted.
        Pass::reappointed(&l).at(&l, 661),
        // 5: the new key certifies a member.
        at(l.us_member_by(
            662,
            US_TALKS_SUCCESSOR,
            SUCCESSOR_MEMBER,
            SUCCESSOR_MEMBER_IDENTITY,
        )),
        // 6: the revoked key, now passed on, re-appointed again: refused.
        Pass {
            new: 0x28,
            new_signer: 0x28,
            ..Pass::reappointed(&l)
        }
        .at(&l, 663),
    ];
    let replay = check(
        &log,
        &[
            Ok(()),
            Ok(()),
            Ok(()),
            Err("the author's key was revoked at seq 2"),
            Ok(()),
            Ok(()),
            Err("the old key is not the party's talks authority at this seq"),
        ],
    );
    // Revoked, the party has no current talks authority; re-appointed, the
    // new key is it.
    let (before, _) = verdicts(&log[..4]);
    assert!(before.talks_authority(t.us).is_none());
    assert_eq!(
        replay.talks_authority(t.us).map(|k| k.key),
        Some(key(US_TALKS_SUCCESSOR).public_key())
    );
    let old = replay
        .key(&key(US_TALKS).public_key().id())
        .unwrap_or_else(|| panic!("old key"));
    assert_eq!((old.revoked_at, old.passed_at), (Some(2), Some(4)));
    assert_eq!(old.retired_at(), Some(2));
}

#[test]
fn authority_passes_while_suspended_or_concluded_but_not_once_closed() {
    let l = Log::new();
    let t = &l.t;
    let oman = Pass {
        author: OMAN_TALKS,
        party: t.oman,
        old: OMAN_TALKS,
        new: OMAN_TALKS_SUCCESSOR,
        new_signer: OMAN_TALKS_SUCCESSOR,
        ..Pass::handed_over(&l)
    };
    let replay = check(
        &[
            at(l.roster(OMAN_TALKS)),
            at(l.lifecycle(640, US_TALKS, Suspended)),
            Pass::handed_over(&l).at(&l, 641),
            at(l.lifecycle(642, OMAN_TALKS, Concluded)),
            Pass {
                party: t.iran,
                old: IRAN_TALKS,
                new: IRAN_TALKS_SUCCESSOR,
                new_signer: IRAN_TALKS_SUCCESSOR,
                cert: Some(IRAN_AUTHORITY),
                endorsers: vec![(US_TALKS_SUCCESSOR, US_TALKS_SUCCESSOR)],
                ..Pass::reappointed(&l)
            }
            .at(&l, 643),
            at(l.lifecycle(644, OMAN_TALKS, Closed)),
            oman.at(&l, 645),
        ],
        &[
            Ok(()),
            Ok(()),
            Ok(()),
            Ok(()),
            Ok(()),
            Ok(()),
            Err("no authority-passed statement is accepted while the talks are closed"),
        ],
    );
    assert_eq!(
        replay
            .authority_passes()
            .iter()
            .map(|p| p.seq)
            .collect::<Vec<_>>(),
        [2, 4]
    );
}
