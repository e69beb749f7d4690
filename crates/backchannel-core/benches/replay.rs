//! Replay of a record room's archive into state, every signature and
//! commitment re-verified (issue 8: 100,000 record-room statements in at
//! most 2 s; no MLS decryption).
//!
//! Run: `cargo bench -p backchannel-core --bench replay -- --warm-up-time 1 --measurement-time 5`.
//!
//! Setup (untimed, once): an archive of [`STATEMENTS`] record-room
//! statements of the reference talks with a plenary room
//! (`fixtures::talks_with_plenary_and_letter`), each as a client archives
//! it: the signed header logged at its seq (sent by a device of the author's
//! member or party, its commitment `Commitment::to_plaintext(salt,
//! statement)`), the salt and the canonical statement bytes. After the
//! roster, the ground rules and both parties' acceptances, a cycle of 20
//! statements repeats: device certificates (new device keys, so the record
//! knows more and more keys), access-list changes (co-signed by two talks
//! authorities), session consents by talks authorities and by members,
//! revocations of superseded devices, commit failures, history shares, a
//! suspension and its resumption with key management in between, and a
//! re-posted copy; every 25 cycles a new member certificate, and twice the
//! US and Iranian talks authorities handed over to new keys. Every
//! statement is checked to be accepted by one untimed replay first.
//!
//! Timed:
//! - `replay/full, one by one`: per archived envelope, what the client
//!   checks when it archives it, less MLS: the logged header decoded, its
//!   sender's key found as `backchannel_client::session::sender_key` finds
//!   it (the current access list, else a device key the replay so far
//!   certified at or before the seq), the header signature verified, the
//!   commitment re-hashed from salt and statement bytes, then the statement
//!   decoded and replayed (`Replay::apply`: author key at that seq,
//!   signature, rules);
//! - `replay/statements, one by one`: each statement decoded and
//!   `Replay::apply`'d (its signature re-verified, no header or
//!   commitment);
//! - `replay/full, batched` and `replay/statements, batched`, on 1 and 2
//!   threads: the same checks with the signatures verified in batches: the
//!   statements through `Replay::apply_all` (what `Session::replay` does:
//!   each window of 4,096 verified ahead as one `BatchVerifier` per
//!   thread, judged in order), the headers by `SignedHeader::verify_batch`
//!   in batches of [`HEADER_BATCH`] once the record is replayed, with the
//!   commitments (the client's archive path checks headers one at a time
//!   as they arrive; this is what a batched re-verification of the archive
//!   costs).
//!
//! And the floor under all of them, one Ed25519 verification, over
//! [`FLOOR`] of the archive's statement signatures: `floor/verify` one at a
//! time, as replay checks a signature no batch proved good
//! (`backchannel_crypto::verify`: the ZIP-215 equation on curve25519-dalek
//! 4, AVX2 where the CPU has it; before d957af5, ed25519-consensus on
//! curve25519-dalek-ng's serial backend, and a `floor/dalek4` case measured
//! the equation on curve25519-dalek 4 beside it), and `floor/batch` all of
//! them in one `BatchVerifier` (ed25519-consensus).
#![allow(missing_docs)] // criterion generates the entry points.
#![allow(clippy::expect_used)] // Bench setup: a failure is a broken bench.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::rc::Rc;
use std::time::{Duration, Instant};

use backchannel_codec::{PartyId, PrincipalId, RoomId};
use backchannel_core::replay::{Accepted, KeyRole, LoggedStatement, Replay};
use backchannel_crypto::{Digest, KeyId, PublicKey, SecretKey, Signer, sha256};
use backchannel_statement::fixtures::{self, PLENARY, key, labels::*};
use backchannel_statement::{
    Acceptance, AccessEntry, AccessListChange, AccessListDelta, AuthorityPassed, CommitFailure,
    Commitment, DeviceCert, Header, HistoryShared, Kind, LifecycleChange, LifecyclePhase,
    MemberCert, PassedHow, Payload, Revoke, RevokeReason, Role, Salt, SessionConsent, SignedHeader,
    SignedStatement, StatementType,
};
use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};

/// Record-room statements in the archive.
const STATEMENTS: usize = 100_000;

/// Signatures per iteration of the `floor` benches.
const FLOOR: usize = 4096;

/// Header signatures per batch in the parallel `replay/full` cases.
const HEADER_BATCH: usize = 4096;

/// One archived record-room envelope, as the client keeps it (less the
/// receipt, which replay does not look at).
struct Archived {
    seq: u64,
    node_time: u64,
    /// The signed header logged at `seq` (canonical bytes).
    header: Vec<u8>,
    /// The commitment's salt, kept with the plaintext.
    salt: Salt,
    /// The canonical signed statement the envelope carried.
    statement: Vec<u8>,
}

/// A member as the generator tracks it.
struct Member {
    principal: PrincipalId,
    party: PartyId,
    identity: SecretKey,
    /// Certified devices not revoked, oldest first.
    devices: Vec<Rc<SecretKey>>,
}

struct Builder {
    t: fixtures::Talks,
    members: Vec<Member>,
    /// Each party's current talks authority.
    authority: HashMap<PartyId, Rc<SecretKey>>,
    out: Vec<Archived>,
    /// Statement seeds (statement ids), salts, idempotency keys, new keys.
    counter: u64,
    seq: u64,
    /// Statements whose bytes are re-posted later (copies).
    last_consent: Option<(Vec<u8>, KeyId)>,
}

fn fresh_key(n: u64) -> SecretKey {
    let mut seed = [0x77u8; 32];
    seed[..8].copy_from_slice(&n.to_le_bytes());
    SecretKey::from_seed(&seed).expect("seed")
}

impl Builder {
    fn new() -> Self {
        let t = fixtures::talks_with_plenary_and_letter();
        let [lead, us_head, iran_head, us_neg] = fixtures::PRINCIPALS;
        let m = |principal, party, ident: u8, dev: u8| Member {
            principal,
            party,
            identity: key(ident),
            devices: vec![Rc::new(key(dev))],
        };
        let members = vec![
            m(lead, t.oman, OMAN_LEAD, OMAN_LEAD_DEVICE),
            m(us_head, t.us, US_HEAD, US_HEAD_DEVICE),
            m(iran_head, t.iran, IRAN_HEAD, IRAN_HEAD_DEVICE),
            m(us_neg, t.us, US_NEGOTIATOR, US_NEGOTIATOR_DEVICE),
        ];
        let authority = HashMap::from([
            (t.oman, Rc::new(key(OMAN_TALKS))),
            (t.us, Rc::new(key(US_TALKS))),
            (t.iran, Rc::new(key(IRAN_TALKS))),
        ]);
        Self {
            t,
            members,
            authority,
            out: Vec::with_capacity(STATEMENTS),
            counter: 1_000,
            seq: 0,
            last_consent: None,
        }
    }

    fn next(&mut self) -> u64 {
        self.counter += 1;
        self.counter
    }

    /// The head of `party` (its first member): whose device posts what the
    /// party's talks authority signs.
    fn head(&self, party: PartyId) -> usize {
        self.members
            .iter()
            .position(|m| m.party == party)
            .expect("every party has a member")
    }

    /// The device member `m` posts from: its newest, or its party head's
    /// while it has none yet.
    fn poster(&self, m: usize) -> Rc<SecretKey> {
        let member = &self.members[m];
        match member.devices.last() {
            Some(d) => d.clone(),
            None => self.poster(self.head(member.party)),
        }
    }

    /// Logs `statement` as an envelope sent by `device` to the record room.
    fn log_bytes(&mut self, statement: Vec<u8>, device: &SecretKey) {
        let n = self.next();
        let mut salt = [0u8; 32];
        salt[..8].copy_from_slice(&n.to_le_bytes());
        let salt = Salt(salt);
        let mut idempotency_key = [0u8; 16];
        idempotency_key[..8].copy_from_slice(&n.to_le_bytes());
        let header = Header {
            talks: self.t.talks,
            room: self.t.record,
            sender: device.public_key().id(),
            kind: Kind::MlsApp,
            idempotency_key,
            body_len: 1 << 10,
            body_hash: sha256(&n.to_be_bytes()),
            commitment: Commitment::to_plaintext(&salt, &statement),
        }
        .sign(device)
        .expect("header");
        // Record-room statements sit among the other rooms' envelopes.
        self.seq += 1 + n % 3;
        self.out.push(Archived {
            seq: self.seq,
            node_time: 1_700_000_000_000 + 250 * self.seq,
            header: header.to_bytes().to_vec(),
            salt,
            statement,
        });
    }

    fn log(&mut self, statement: SignedStatement, device: &SecretKey) {
        self.log_bytes(statement.as_bytes().to_vec(), device);
    }

    /// A statement by member `m`'s identity key, posted from its device.
    fn by_member(&mut self, m: usize, payload: Payload) -> Vec<u8> {
        let seed = self.next();
        let member = &self.members[m];
        let s = self
            .t
            .statement(seed, &member.identity, member.party, payload);
        let device = self.poster(m);
        let bytes = s.as_bytes().to_vec();
        self.log(s, &device);
        bytes
    }

    /// A statement by `party`'s talks authority, posted from its head's device.
    fn by_authority(&mut self, party: PartyId, payload: Payload) -> Vec<u8> {
        let seed = self.next();
        let signer = self.authority[&party].clone();
        let s = self.t.statement(seed, &*signer, party, payload);
        let device = self.poster(self.head(party));
        let bytes = s.as_bytes().to_vec();
        self.log(s, &device);
        bytes
    }

    fn caucus(&self, party: PartyId) -> RoomId {
        if party == self.t.iran {
            self.t.iran_caucus
        } else {
            self.t.us_caucus
        }
    }

    fn genesis(&mut self) {
        let t = &self.t;
        let roster = t.statement(
            1,
            &key(OMAN_TALKS),
            t.oman,
            Payload::Roster(t.roster.clone()),
        );
        let rules = t.statement(
            2,
            &key(OMAN_TALKS),
            t.oman,
            Payload::GroundRules(t.ground_rules.clone()),
        );
        let acceptance = Payload::Acceptance(Acceptance {
            roster: roster.unverified().id,
            roster_hash: roster.hash(),
            ground_rules: rules.unverified().id,
            ground_rules_hash: rules.hash(),
        });
        let (oman, us, iran) = (t.oman, t.us, t.iran);
        let device = self.poster(self.head(oman));
        self.log(roster, &device);
        self.log(rules, &device);
        self.by_authority(us, acceptance.clone());
        self.by_authority(iran, acceptance);
    }

    /// A new device for member `m`, certified by its identity key.
    fn device_cert(&mut self, m: usize) {
        let device = fresh_key(self.next());
        let cert = DeviceCert {
            principal: self.members[m].principal,
            device_key: device.public_key(),
            not_after: u64::MAX,
        };
        self.by_member(m, Payload::DeviceCert(cert));
        self.members[m].devices.push(Rc::new(device));
    }

    /// The newest device of member `m` seated, by its party's talks
    /// authority, co-signed by the mediator team's.
    fn seat(&mut self, m: usize) {
        let member = &self.members[m];
        let (principal, party) = (member.principal, member.party);
        let device = self.poster(m).public_key();
        let rooms = vec![self.t.record, self.caucus(party), PLENARY];
        let entry = AccessEntry::new(device, principal, party, rooms, 0).expect("entry");
        let base = Digest(sha256(&self.counter.to_le_bytes()).0);
        let delta = AccessListDelta::new(self.t.talks, base, vec![], vec![entry]).expect("delta");
        let mut signatures = vec![delta.sign(&*self.authority[&party]).expect("sign")];
        if party != self.t.oman {
            signatures.push(delta.sign(&*self.authority[&self.t.oman]).expect("sign"));
        }
        let change = AccessListChange::new(delta, signatures).expect("change");
        self.by_authority(party, Payload::AccessListChange(change));
    }

    /// Member `m`'s oldest device revoked by its identity key (superseded),
    /// if it has three; else a commit failure. The roster's devices stay
    /// (they posted the genesis statements, before the record knew them, so
    /// only the current access list vouches for them there).
    fn revoke_or_fail(&mut self, m: usize) {
        if self.members[m].devices.len() >= 3 {
            let oldest = usize::from(m < 4);
            let old = self.members[m].devices.remove(oldest);
            let revoke = Revoke {
                key: old.public_key().id(),
                reason: RevokeReason::Superseded,
                lost_at: None,
            };
            self.by_member(m, Payload::Revoke(revoke));
        } else {
            self.commit_failure(m);
        }
    }

    fn commit_failure(&mut self, m: usize) {
        let room = self.caucus(self.members[m].party);
        let failure =
            CommitFailure::new(room, self.seq, 7, "could not process the commit").expect("failure");
        self.by_member(m, Payload::CommitFailure(failure));
    }

    fn history_shared(&mut self, m: usize) {
        let room = self.caucus(self.members[m].party);
        let until = self.seq + 1;
        let share = HistoryShared::new(
            self.members[m].principal,
            vec![room],
            until,
            sha256(&self.counter.to_le_bytes()),
        )
        .expect("share");
        self.by_member(m, Payload::HistoryShared(share));
    }

    fn consent(&mut self, who: Result<PartyId, usize>, window: u64) {
        let opens = 1_700_000_000_000 + window * 3_600_000;
        let c = SessionConsent::new(PLENARY, opens, opens + 7_200_000).expect("consent");
        let (bytes, author) = match who {
            Ok(party) => {
                let author = self.authority[&party].public_key().id();
                (self.by_authority(party, Payload::SessionConsent(c)), author)
            }
            Err(m) => {
                let author = self.members[m].identity.public_key().id();
                (self.by_member(m, Payload::SessionConsent(c)), author)
            }
        };
        self.last_consent = Some((bytes, author));
    }

    fn lifecycle(&mut self, party: PartyId, phase: LifecyclePhase) {
        let change = LifecycleChange::new(phase, "for consultations").expect("change");
        self.by_authority(party, Payload::Lifecycle(change));
    }

    /// A new member of `party` (a negotiator), certified by its talks authority.
    fn member_cert(&mut self, party: PartyId) {
        let n = self.next();
        let identity = fresh_key(n);
        let mut p = [0xc0u8; 16];
        p[..8].copy_from_slice(&n.to_le_bytes());
        let principal = PrincipalId(p);
        let cert = MemberCert::new(
            principal,
            party,
            Role::Negotiator,
            identity.public_key(),
            vec![],
            None,
        )
        .expect("cert");
        self.by_authority(party, Payload::MemberCert(cert));
        self.members.push(Member {
            principal,
            party,
            identity,
            devices: Vec::new(),
        });
    }

    /// `party`'s talks authority handed over to `new`.
    fn hand_over(&mut self, party: PartyId, new: SecretKey) {
        let old = self.authority[&party].public_key().id();
        let signature = AuthorityPassed::sign_transfer(
            &new,
            self.t.talks,
            party,
            &old,
            &new.public_key(),
            PassedHow::HandedOver,
        )
        .expect("transfer");
        let pass = AuthorityPassed::new(
            party,
            old,
            new.public_key(),
            PassedHow::HandedOver,
            signature,
            None,
            vec![],
        )
        .expect("pass");
        self.by_authority(party, Payload::AuthorityPassed(pass));
        self.authority.insert(party, Rc::new(new));
    }

    /// The last session consent posted again, byte for byte (a resend).
    fn copy(&mut self) {
        let (bytes, author) = self.last_consent.clone().expect("a consent first");
        let m = self
            .members
            .iter()
            .position(|m| m.identity.public_key().id() == author);
        let device = match m {
            Some(m) => self.poster(m),
            None => {
                let party = *self
                    .authority
                    .iter()
                    .find(|(_, k)| k.public_key().id() == author)
                    .expect("an authority")
                    .0;
                self.poster(self.head(party))
            }
        };
        self.log_bytes(bytes, &device);
    }

    /// One cycle of 20 record-room statements.
    fn cycle(&mut self, c: usize) {
        let (oman, us, iran) = (self.t.oman, self.t.us, self.t.iran);
        let n = self.members.len();
        let (a, b, d) = (c % n, (c + 1) % n, (c + 2) % n);
        let window = c as u64;
        let suspender = if c.is_multiple_of(2) { us } else { iran };
        self.device_cert(a);
        self.seat(a);
        self.consent(Ok(us), window);
        self.consent(Err(self.head(iran)), window);
        self.consent(Err(self.head(oman)), window);
        self.revoke_or_fail(a);
        self.commit_failure(b);
        self.history_shared(b);
        self.lifecycle(suspender, LifecyclePhase::Suspended);
        self.device_cert(d);
        self.seat(d);
        self.lifecycle(suspender, LifecyclePhase::Resumed);
        let cycles = (STATEMENTS - 4) / 20;
        if c == cycles / 3 {
            self.hand_over(us, key(US_TALKS_SUCCESSOR));
        } else if c == 2 * cycles / 3 {
            self.hand_over(iran, key(IRAN_TALKS_SUCCESSOR));
        } else if c % 25 == 24 {
            self.member_cert(if c % 50 == 24 { us } else { iran });
        } else {
            self.copy();
        }
        self.seat(b);
        self.consent(Ok(us), window + 1);
        self.consent(Ok(iran), window + 1);
        self.commit_failure(d);
        self.seat(d);
        self.history_shared(a);
        self.consent(Ok(oman), window + 1);
    }

    fn build(mut self) -> (fixtures::Talks, Vec<Archived>, HashMap<KeyId, PublicKey>) {
        self.genesis();
        let mut c = 0;
        while self.out.len() + 20 <= STATEMENTS {
            self.cycle(c);
            c += 1;
        }
        while self.out.len() < STATEMENTS {
            let i = self.out.len() % self.members.len();
            self.commit_failure(i);
        }
        // The node's current access list: every device not revoked.
        let list = self
            .members
            .iter()
            .flat_map(|m| m.devices.iter())
            .map(|d| (d.public_key().id(), d.public_key()))
            .collect();
        (self.t, self.out, list)
    }
}

/// The header signature's key, as the client finds it: the current access
/// list, else a device key the record certified at or before `seq`.
fn sender_key(
    list: &HashMap<KeyId, PublicKey>,
    replay: &Replay,
    seq: u64,
    sender: &KeyId,
) -> PublicKey {
    if let Some(k) = list.get(sender) {
        return *k;
    }
    let state = replay.key(sender).expect("a device the record knows");
    assert!(matches!(state.role, KeyRole::Device { .. }));
    assert!(state.valid_from <= seq);
    state.key
}

/// Replays `archive` as the client checks each envelope (less MLS).
fn replay_full(
    t: &fixtures::Talks,
    archive: &[Archived],
    list: &HashMap<KeyId, PublicKey>,
    mut verdict: impl FnMut(Accepted),
) -> Replay {
    let mut replay = Replay::new(t.talks);
    for a in archive {
        let header = SignedHeader::decode(&a.header).expect("header");
        let h = header.header();
        let sender = sender_key(list, &replay, a.seq, &h.sender);
        header.verify(&sender).expect("header signature");
        assert!(h.commitment.opens(&a.salt, &a.statement), "commitment");
        let statement = SignedStatement::decode(&a.statement).expect("statement");
        let accepted = replay
            .apply(LoggedStatement {
                seq: a.seq,
                node_time: a.node_time,
                room: h.room,
                statement: &statement,
            })
            .unwrap_or_else(|e| panic!("seq {}: {e}", a.seq));
        verdict(accepted);
    }
    replay
}

/// [`replay_full`] with the signatures verified on `threads` threads: the
/// headers decoded, the statements decoded and replayed by
/// `Replay::apply_all`, then every header signature and commitment checked
/// in parallel against the replayed record. Same verdicts: a device key's
/// `valid_from` and role never change once replay knows it, so "certified
/// at or before the seq" reads the same after the whole replay as at the
/// seq.
fn replay_full_parallel(
    t: &fixtures::Talks,
    archive: &[Archived],
    list: &HashMap<KeyId, PublicKey>,
    threads: NonZeroUsize,
) -> Replay {
    let headers: Vec<SignedHeader> = archive
        .iter()
        .map(|a| SignedHeader::decode(&a.header).expect("header"))
        .collect();
    let replay = replay_parallel(t, archive, |i| headers[i].header().room, threads);
    // Each thread's share: the header signatures in batches of
    // `HEADER_BATCH` (`SignedHeader::verify_batch`), the commitments one by
    // one.
    let check = |chunk: &[(&Archived, &SignedHeader)], seed: u64| {
        let mut rng = fixtures::rng(seed);
        for batch in chunk.chunks(HEADER_BATCH) {
            let items: Vec<(&SignedHeader, PublicKey)> = batch
                .iter()
                .map(|(a, header)| {
                    let sender = sender_key(list, &replay, a.seq, &header.header().sender);
                    (*header, sender)
                })
                .collect();
            for verdict in SignedHeader::verify_batch(&items, &mut rng) {
                verdict.expect("header signature");
            }
            for (a, header) in batch {
                let h = header.header();
                assert!(h.commitment.opens(&a.salt, &a.statement), "commitment");
            }
        }
    };
    let pairs: Vec<_> = archive.iter().zip(&headers).collect();
    let per_thread = pairs.len().div_ceil(threads.get());
    std::thread::scope(|scope| {
        let mut chunks = pairs.chunks(per_thread);
        let first = chunks.next().unwrap_or_default();
        let others: Vec<_> = chunks
            .zip(1..)
            .map(|(c, seed)| scope.spawn(move || check(c, seed)))
            .collect();
        check(first, 0);
        for h in others {
            h.join().expect("checked");
        }
    });
    replay
}

/// The statements decoded and replayed by `Replay::apply_all` on
/// `threads` threads, each posted to `room(i)`.
fn replay_parallel(
    t: &fixtures::Talks,
    archive: &[Archived],
    room: impl Fn(usize) -> RoomId,
    threads: NonZeroUsize,
) -> Replay {
    let statements: Vec<SignedStatement> = archive
        .iter()
        .map(|a| SignedStatement::decode(&a.statement).expect("statement"))
        .collect();
    let entries: Vec<LoggedStatement<'_>> = archive
        .iter()
        .zip(&statements)
        .enumerate()
        .map(|(i, (a, statement))| LoggedStatement {
            seq: a.seq,
            node_time: a.node_time,
            room: room(i),
            statement,
        })
        .collect();
    let mut replay = Replay::new(t.talks);
    let verdicts = replay.apply_all(&entries, threads, &mut fixtures::rng(11));
    for (a, v) in archive.iter().zip(verdicts) {
        v.unwrap_or_else(|e| panic!("seq {}: {e}", a.seq));
    }
    replay
}

/// Replays the statements alone, as `Session::replay` does.
fn replay_statements(t: &fixtures::Talks, archive: &[Archived], room: RoomId) -> Replay {
    let mut replay = Replay::new(t.talks);
    for a in archive {
        let statement = SignedStatement::decode(&a.statement).expect("statement");
        replay
            .apply(LoggedStatement {
                seq: a.seq,
                node_time: a.node_time,
                room,
                statement: &statement,
            })
            .unwrap_or_else(|e| panic!("seq {}: {e}", a.seq));
    }
    replay
}

/// Times `f` alone, per iteration: dropping its result (a whole replayed
/// state) is not part of the figure.
fn timed<R>(b: &mut criterion::Bencher<'_>, mut f: impl FnMut() -> R) {
    b.iter_custom(|iters| {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            let start = Instant::now();
            let r = f();
            total += start.elapsed();
            drop(r);
        }
        total
    });
}

fn bench(c: &mut Criterion) {
    let start = Instant::now();
    let (t, archive, list) = Builder::new().build();
    assert_eq!(archive.len(), STATEMENTS);
    // Untimed check: every statement counts, and what the mix is.
    let mut kinds: HashMap<StatementType, usize> = HashMap::new();
    for a in &archive {
        let s = SignedStatement::decode(&a.statement).expect("statement");
        *kinds
            .entry(s.unverified().payload.statement_type())
            .or_default() += 1;
    }
    let mut copies = 0;
    let replay = replay_full(&t, &archive, &list, |a| {
        if matches!(a, Accepted::Copy { .. }) {
            copies += 1;
        }
    });
    // Verified ahead on two threads: the same record.
    let two = NonZeroUsize::new(2).expect("two");
    let parallel = replay_full_parallel(&t, &archive, &list, two);
    assert_eq!(parallel.history_shared(), replay.history_shared());
    assert_eq!(parallel.commit_failures(), replay.commit_failures());
    assert_eq!(parallel.authority_passes(), replay.authority_passes());
    assert_eq!(parallel.phase(), replay.phase());
    assert_eq!(parallel.equivocations(), replay.equivocations());
    let mut mix: Vec<_> = kinds.into_iter().map(|(k, n)| (k.name(), n)).collect();
    mix.sort();
    eprintln!(
        "replay bench: {} statements built and checked in {:.1} s; {} copies; mix {mix:?}; \
         {} history shares, {} commit failures, {} authority passes",
        archive.len(),
        start.elapsed().as_secs_f64(),
        copies,
        replay.history_shared().len(),
        replay.commit_failures().len(),
        replay.authority_passes().len(),
    );

    let mut group = c.benchmark_group("replay");
    group.throughput(Throughput::Elements(STATEMENTS as u64));
    // One iteration is a whole archive: few samples, one iteration each.
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    let one = NonZeroUsize::MIN;
    group.bench_function(
        format!("full, one by one/{STATEMENTS} record-room statements"),
        |b| timed(b, || replay_full(&t, &archive, &list, |_| {})),
    );
    group.bench_function(
        format!("statements, one by one/{STATEMENTS} record-room statements"),
        |b| timed(b, || replay_statements(&t, &archive, t.record)),
    );
    for (name, threads) in [("1 thread", one), ("2 threads", two)] {
        group.bench_function(
            format!("full, batched, {name}/{STATEMENTS} record-room statements"),
            |b| timed(b, || replay_full_parallel(&t, &archive, &list, threads)),
        );
        group.bench_function(
            format!("statements, batched, {name}/{STATEMENTS} record-room statements"),
            |b| timed(b, || replay_parallel(&t, &archive, |_| t.record, threads)),
        );
    }
    group.finish();
}

/// One statement signature: its author key, context, frame and signature.
struct Signed {
    key: PublicKey,
    context: backchannel_crypto::Context,
    frame: Vec<u8>,
    signature: backchannel_crypto::Signature,
}

fn floor(c: &mut Criterion) {
    let (t, archive, list) = Builder::new().build();
    let replay = replay_full(&t, &archive, &list, |_| {});
    let signed: Vec<Signed> = archive
        .iter()
        .skip(archive.len() - FLOOR)
        .map(|a| {
            let s = SignedStatement::decode(&a.statement).expect("statement");
            let u = s.unverified();
            Signed {
                key: replay.key(&u.author).expect("author").key,
                context: u.statement_type().context(),
                frame: s.frame().to_vec(),
                signature: *s.signature(),
            }
        })
        .collect();
    assert!(
        signed.iter().all(|s| {
            backchannel_crypto::verify(&s.key, s.context, &s.frame, &s.signature).is_ok()
        }),
        "every signature verifies"
    );
    let mut group = c.benchmark_group("floor");
    group.throughput(Throughput::Elements(FLOOR as u64));
    group.bench_function(format!("verify/{FLOOR} statement signatures"), |b| {
        b.iter(|| {
            signed.iter().all(|s| {
                backchannel_crypto::verify(&s.key, s.context, &s.frame, &s.signature).is_ok()
            })
        })
    });
    let mut rng = fixtures::rng(7);
    group.bench_function(format!("batch/{FLOOR} statement signatures"), |b| {
        b.iter(|| {
            let mut v = backchannel_crypto::BatchVerifier::new();
            for s in &signed {
                v.queue(&s.key, s.context, &s.frame, &s.signature);
            }
            v.verify(&mut rng).is_ok()
        })
    });
    group.finish();
}

criterion_group!(benches, bench, floor);
criterion_main!(benches);
