//! One device's session in one talks: send through the seal seam, receive
//! into a verified archive, follow and verify the log, witness checkpoints.
//!
//! Everything the session learns is kept in its [`ClientStore`]: the
//! archive (one record per accepted envelope, by seq), the log follower,
//! the witness and the receipts awaiting inclusion. A restarted session
//! resumes from what it stored.
//!
//! Verification, as the client issue asks, without per-envelope proofs:
//! - every delivered envelope's body is re-hashed against its header (by
//!   [`crate::net`]), its receipt is verified against the node's log key,
//!   its header signature against the sender's key on the access list, and
//!   its body is opened and checked against the header's commitment;
//! - each new checkpoint is verified from the data tiles of the new range,
//!   re-hashed into the follower's compact tree ([`crate::follow`]), then
//!   every new leaf of the session's rooms must be in the archive with the
//!   same header hash, and every receipt awaiting inclusion must be settled
//!   within [`crate::follow::MAX_MERGE_DELAY_MS`];
//! - only a checkpoint verified that way is cosigned, and the witness state
//!   is stored before the cosignature is sent.

use std::collections::BTreeSet;

use backchannel_codec::{Decode, Encode, Reader, RoomId, TalksId, Writer};
use backchannel_crypto::{Digest, PublicKey, SecretKey, Signer};
use backchannel_statement::header::BODY_BUCKETS;
use backchannel_statement::{AccessList, Header, Kind, Salt, SignedHeader};
use backchannel_tlog::{LogOrigin, NodeOrigin, Receipt, SignedCheckpoint};
use thiserror::Error;

use crate::follow::{self, Follower, Pending, Withheld, Witness};
use crate::net::{Delivered, NetError, NodeClient};
use crate::seal::{AppMessage, Content, Seal, SealError};
use crate::store::{ClientStore, ClientStoreError, Namespace, Put};

/// One accepted envelope, as archived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archived {
    /// Its seq.
    pub seq: u64,
    /// The node's timestamp.
    pub node_time: u64,
    /// The signed header.
    pub header: SignedHeader,
    /// Its receipt.
    pub receipt: Receipt,
    /// What it carried, if the body could be opened (absent once purged).
    pub message: Option<AppMessage>,
}

impl Archived {
    fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(1);
        w.u64(self.seq);
        w.u64(self.node_time);
        w.raw(&self.header.to_bytes());
        w.bytes(&self.receipt.to_canonical_bytes());
        match &self.message {
            Some(m) => {
                w.u8(1);
                w.bytes(&m.to_bytes());
            }
            None => w.u8(0),
        }
        w.into_bytes()
    }

    fn decode(bytes: &[u8]) -> Result<Self, SessionError> {
        let bad = |e: backchannel_codec::DecodeError| SessionError::Stored(e.to_string());
        let mut r = Reader::new(bytes);
        r.version("archive record version", 1).map_err(bad)?;
        let seq = r.u64("seq").map_err(bad)?;
        let node_time = r.u64("node time").map_err(bad)?;
        let header = SignedHeader::decode(
            r.take(backchannel_statement::header::SIGNED_HEADER_LEN, "header")
                .map_err(bad)?,
        )
        .map_err(bad)?;
        let receipt = Receipt::from_canonical_bytes(r.bytes("receipt", 1 << 16).map_err(bad)?)
            .map_err(bad)?;
        let message = match r.u8("message present").map_err(bad)? {
            0 => None,
            _ => Some(
                AppMessage::from_bytes(r.bytes("message", 1 << 21).map_err(bad)?).map_err(bad)?,
            ),
        };
        r.finish().map_err(bad)?;
        Ok(Self {
            seq,
            node_time,
            header,
            receipt,
            message,
        })
    }
}

/// Why a session step failed.
#[derive(Debug, Error)]
pub enum SessionError {
    /// The node refused or could not be reached.
    #[error(transparent)]
    Net(#[from] NetError),
    /// Local storage failed.
    #[error(transparent)]
    Store(#[from] ClientStoreError),
    /// Stored state does not decode.
    #[error("stored session state is damaged: {0}")]
    Stored(String),
    /// The content could not be sealed.
    #[error(transparent)]
    Seal(#[from] SealError),
    /// Signing failed.
    #[error("signing failed: {0}")]
    Sign(String),
    /// Evidence against the node: what was served does not verify.
    #[error("evidence against the node: {0}")]
    Evidence(String),
}

/// What one log verification found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogReport {
    /// The verified size.
    pub size: u64,
    /// The verified root.
    pub root: Digest,
    /// Envelopes of this session's rooms the log holds but the archive
    /// lacks, or holds differently.
    pub withheld: Vec<Withheld>,
    /// Receipts not merged within the deadline.
    pub not_merged: Vec<u64>,
}

/// What replaying the archive found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Seqs of statements replay accepted.
    pub accepted: Vec<u64>,
    /// Seqs of statements replay rejected, with why.
    pub rejected: Vec<(u64, String)>,
    /// Statements whose checkpoint reference disagrees with this session's
    /// verified tree: (seq, size, our root, their root) — fork evidence.
    pub forks: Vec<(u64, u64, Digest, Digest)>,
}

/// A device's session in one talks.
pub struct Session<S: ClientStore, L: Seal> {
    store: std::sync::Arc<S>,
    seal: L,
    node: NodeClient,
    device: SecretKey,
    talks: TalksId,
    log_key: PublicKey,
    origin: LogOrigin,
    /// The next seq to fetch.
    next: u64,
    follower: Follower,
    witness: Witness,
    pending: Pending,
    idempotency: u64,
}

fn key(talks: TalksId, name: &str) -> Vec<u8> {
    let mut k = talks.0.to_vec();
    k.extend_from_slice(name.as_bytes());
    k
}

fn seq_key(talks: TalksId, seq: u64) -> Vec<u8> {
    let mut k = talks.0.to_vec();
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

impl<S: ClientStore, L: Seal> Session<S, L> {
    /// Opens (or resumes) the session of `device` in `talks` on the node
    /// `node` (already pinned), whose log origin and key are `node_origin`
    /// and `log_key`.
    pub async fn open(
        store: std::sync::Arc<S>,
        seal: L,
        node: NodeClient,
        device: SecretKey,
        talks: TalksId,
        node_origin: &NodeOrigin,
        log_key: PublicKey,
    ) -> Result<Self, SessionError> {
        let get = |name: &'static str| {
            let store = store.clone();
            async move { store.get(Namespace::Checkpoints, &key(talks, name)).await }
        };
        let decode_err = |e: backchannel_codec::DecodeError| SessionError::Stored(e.to_string());
        let follower = match get("follower").await? {
            Some(b) => Follower::from_canonical_bytes(&b).map_err(decode_err)?,
            None => Follower::new(),
        };
        let pending = match get("pending").await? {
            Some(b) => Pending::from_canonical_bytes(&b).map_err(decode_err)?,
            None => Pending::new(),
        };
        let witness = match store
            .get(Namespace::Cosigned, &key(talks, "witness"))
            .await?
        {
            Some(b) => Witness::from_canonical_bytes(&b).map_err(decode_err)?,
            None => Witness::new(),
        };
        let next = match get("next").await? {
            Some(b) => u64::from_be_bytes(
                b.as_slice()
                    .try_into()
                    .map_err(|_| SessionError::Stored("next seq".into()))?,
            ),
            None => 0,
        };
        let idempotency = match get("idempotency").await? {
            Some(b) => u64::from_be_bytes(
                b.as_slice()
                    .try_into()
                    .map_err(|_| SessionError::Stored("idempotency counter".into()))?,
            ),
            None => 0,
        };
        Ok(Self {
            store,
            seal,
            node,
            device,
            talks,
            log_key,
            origin: LogOrigin::new(node_origin, talks),
            next,
            follower,
            witness,
            pending,
            idempotency,
        })
    }

    /// The node client.
    pub fn node(&self) -> &NodeClient {
        &self.node
    }

    /// The talks.
    pub fn talks(&self) -> TalksId {
        self.talks
    }

    /// The device key.
    pub fn device(&self) -> &SecretKey {
        &self.device
    }

    /// The verified log state.
    pub fn follower(&self) -> &Follower {
        &self.follower
    }

    /// The next seq this session will fetch (everything below is archived
    /// or not for its rooms).
    pub fn next_seq(&self) -> u64 {
        self.next
    }

    /// Seals `content` for `room`, signs the header with the device key and
    /// submits it; the receipt is verified and kept until the envelope is
    /// included in a verified checkpoint. Returns the seq.
    pub async fn send(
        &mut self,
        room: RoomId,
        content: Content,
        salt: Salt,
    ) -> Result<u64, SessionError> {
        let message = AppMessage { content, salt };
        let body = self.seal.seal(room, &message)?;
        debug_assert!(BODY_BUCKETS.contains(&(body.len() as u32)));
        // The idempotency key is stored before the submission, so a retry
        // after a crash reuses it rather than sending twice.
        self.idempotency += 1;
        self.store
            .put(
                Namespace::Checkpoints,
                &key(self.talks, "idempotency"),
                &self.idempotency.to_be_bytes(),
            )
            .await?;
        let mut idem = [0u8; 16];
        idem[..8].copy_from_slice(&self.idempotency.to_be_bytes());
        idem[8..].copy_from_slice(&self.device.public_key().as_bytes()[..8]);
        let header = Header {
            talks: self.talks,
            room,
            sender: self.device.public_key().id(),
            kind: Kind::MlsApp,
            idempotency_key: idem,
            body_len: body.len() as u32,
            body_hash: backchannel_crypto::sha256(&body),
            commitment: message.commitment(),
        }
        .sign(&self.device)
        .map_err(|e| SessionError::Sign(e.to_string()))?;
        let sequenced = self.node.submit(self.talks, &header, &body).await?;
        sequenced
            .verify_receipt(&self.log_key, self.talks)
            .map_err(|e| SessionError::Evidence(format!("a receipt that does not verify: {e}")))?;
        self.pending
            .add(
                sequenced.seq,
                sequenced.leaf_hash,
                sequenced.receipt.batch_timestamp_ms(),
            )
            .map_err(|e| SessionError::Evidence(e.to_string()))?;
        self.store
            .put(
                Namespace::Checkpoints,
                &key(self.talks, "pending"),
                &self.pending.to_canonical_bytes(),
            )
            .await?;
        Ok(sequenced.seq)
    }

    /// Fetches everything new of this session's rooms, verifies it and
    /// archives it. `list` is the access list the client accepted (senders'
    /// keys come from it). Returns the newly archived envelopes.
    pub async fn receive(&mut self, list: &AccessList) -> Result<Vec<Archived>, SessionError> {
        let mut out = Vec::new();
        loop {
            let page = self.node.fetch(self.talks, self.next, 1000).await?;
            let mut writes = Vec::new();
            for d in page.envelopes {
                let archived = self.accept(list, d)?;
                writes.push(Put {
                    ns: Namespace::Archive,
                    key: seq_key(self.talks, archived.seq),
                    value: Some(archived.encode()),
                });
                out.push(archived);
            }
            self.next = page.next;
            writes.push(Put {
                ns: Namespace::Checkpoints,
                key: key(self.talks, "next"),
                value: Some(self.next.to_be_bytes().to_vec()),
            });
            // The archive and the cursor move together.
            self.store.put_many(writes).await?;
            if page.next >= page.log_size {
                return Ok(out);
            }
        }
    }

    fn accept(&self, list: &AccessList, d: Delivered) -> Result<Archived, SessionError> {
        let seq = d.seq;
        let evidence = |what: String| SessionError::Evidence(format!("seq {seq}: {what}"));
        d.verify_receipt(&self.log_key)
            .map_err(|e| evidence(format!("its receipt does not verify ({e})")))?;
        let h = *d.header.header();
        let sender = list
            .get(&h.sender)
            .ok_or_else(|| evidence("its sender is not on the access list".into()))?;
        d.header
            .verify(sender.key())
            .map_err(|_| evidence("its header signature does not verify".into()))?;
        let message = match &d.body {
            Some(body) => Some(
                self.seal
                    .open(h.room, body, &h.commitment)
                    .map_err(|e| evidence(format!("its body does not open: {e}")))?,
            ),
            None => None,
        };
        Ok(Archived {
            seq,
            node_time: d.node_time,
            header: d.header,
            receipt: d.receipt,
            message,
        })
    }

    /// The archived envelope at `seq`, if any.
    pub async fn archived(&self, seq: u64) -> Result<Option<Archived>, SessionError> {
        match self
            .store
            .get(Namespace::Archive, &seq_key(self.talks, seq))
            .await?
        {
            Some(b) => Ok(Some(Archived::decode(&b)?)),
            None => Ok(None),
        }
    }

    /// Every archived envelope below the fetch cursor, in seq order.
    pub async fn archive(&self) -> Result<Vec<Archived>, SessionError> {
        let mut out = Vec::new();
        for seq in 0..self.next {
            if let Some(a) = self.archived(seq).await? {
                out.push(a);
            }
        }
        Ok(out)
    }

    /// The checkpoint reference every statement this session's participant
    /// signs should carry: the size and root of the latest checkpoint it
    /// verified, so every recipient can compare it with its own tree.
    pub fn checkpoint_ref(&self) -> backchannel_statement::CheckpointRef {
        backchannel_statement::CheckpointRef {
            size: self.follower.size(),
            root: self.follower.root(),
        }
    }

    /// Replays every statement in the archive, in log order, with
    /// `backchannel_core::replay::Replay` (key validity by log position:
    /// a revoked or expired key's later statements are rejected), and
    /// compares each statement's checkpoint reference with this session's
    /// verified tree. Runs over the archive only (MLS cannot decrypt twice).
    pub async fn replay(&self) -> Result<ReplayReport, SessionError> {
        let mut replay = backchannel_core::replay::Replay::new(self.talks);
        let mut report = ReplayReport::default();
        for a in self.archive().await? {
            let Some(AppMessage {
                content: Content::Statement(bytes),
                ..
            }) = &a.message
            else {
                continue;
            };
            let Ok(statement) = backchannel_statement::SignedStatement::decode(bytes) else {
                report.rejected.push((a.seq, "does not decode".into()));
                continue;
            };
            let logged = backchannel_core::replay::LoggedStatement {
                seq: a.seq,
                node_time: a.node_time,
                room: a.header.header().room,
                statement: &statement,
            };
            match replay.apply(logged) {
                Ok(_) => report.accepted.push(a.seq),
                Err(e) => report.rejected.push((a.seq, e.to_string())),
            }
            let r = statement.unverified().checkpoint;
            match self.follower.compare_reference(r.size, &r.root) {
                follow::Reference::Differs { size, ours, theirs } => {
                    report.forks.push((a.seq, size, ours, theirs));
                }
                follow::Reference::Matches | follow::Reference::Unknown => {}
            }
        }
        Ok(report)
    }

    /// Verifies the node's latest checkpoint from the data tiles of the new
    /// range, accounts for every new leaf of `my_rooms`, settles receipts,
    /// and stores the new verified state. `now_ms`: the client's clock, for
    /// the merge deadline.
    pub async fn verify_log(
        &mut self,
        my_rooms: &BTreeSet<RoomId>,
        now_ms: u64,
    ) -> Result<(LogReport, SignedCheckpoint), SessionError> {
        let (_, note) = self.node.checkpoint(self.talks).await?;
        let checkpoint =
            SignedCheckpoint::verify(&note, &self.log_key, &self.origin).map_err(|e| {
                SessionError::Evidence(format!("a checkpoint that does not verify: {e}"))
            })?;
        let from = self.follower.size();
        let to = checkpoint.checkpoint().size;
        let mut leaves = Vec::new();
        for tile in follow::data_tiles(from, to) {
            let t = tlog_tiles::Tile::from_path(tile.path())
                .map_err(|e| SessionError::Stored(format!("a tile path: {e}")))?;
            let bytes = self.node.data_tile(self.talks, &t).await?;
            leaves.extend(
                tile.parse(&bytes)
                    .map_err(|e| SessionError::Evidence(format!("a data tile: {e}")))?,
            );
        }
        let follower = self
            .follower
            .advance(&checkpoint, &leaves)
            .map_err(|e| SessionError::Evidence(e.to_string()))?;
        // Accounting: the archive must hold every leaf of my rooms that the
        // session has fetched past.
        let mut archived = std::collections::BTreeMap::new();
        for leaf in &leaves {
            if leaf.seq < self.next {
                if let Some(a) = self.archived(leaf.seq).await? {
                    archived.insert(leaf.seq, a.header.hash());
                }
            }
        }
        let fetched: Vec<_> = leaves
            .iter()
            .filter(|l| l.seq < self.next)
            .cloned()
            .collect();
        let withheld = follow::withheld(&fetched, my_rooms, |seq| archived.get(&seq).copied());
        self.pending
            .settle(&follower, &leaves)
            .map_err(|e| SessionError::Evidence(e.to_string()))?;
        let not_merged = self.pending.overdue(now_ms).iter().map(|n| n.seq).collect();
        self.follower = follower;
        self.store
            .put_many(vec![
                Put {
                    ns: Namespace::Checkpoints,
                    key: key(self.talks, "follower"),
                    value: Some(self.follower.to_canonical_bytes()),
                },
                Put {
                    ns: Namespace::Checkpoints,
                    key: key(self.talks, "pending"),
                    value: Some(self.pending.to_canonical_bytes()),
                },
            ])
            .await?;
        Ok((
            LogReport {
                size: self.follower.size(),
                root: self.follower.root(),
                withheld,
                not_merged,
            },
            checkpoint,
        ))
    }

    /// Cosigns `checkpoint` (which [`Session::verify_log`] verified) and
    /// sends the cosignature; the witness state is stored first.
    pub async fn cosign(
        &mut self,
        checkpoint: &SignedCheckpoint,
        now_s: u64,
    ) -> Result<(), SessionError> {
        let line = self
            .witness
            .cosign(&self.follower, checkpoint, &self.device, now_s)
            .map_err(|e| SessionError::Evidence(e.to_string()))?;
        self.store
            .put(
                Namespace::Cosigned,
                &key(self.talks, "witness"),
                &self.witness.to_canonical_bytes(),
            )
            .await?;
        let cosignature = backchannel_tlog::Cosignature::from_line(&line)
            .map_err(|e| SessionError::Sign(format!("a cosignature line: {e}")))?;
        self.node
            .cosign(self.talks, checkpoint.checkpoint().size, &cosignature)
            .await?;
        Ok(())
    }
}
