//! What a participant's home keeps about each talks it takes part in, and
//! the documents that travel between participants out of band.
//!
//! - [`PinnedNode`]: the node a talks lives on, as pinned (address, TLS
//!   fingerprint, origin, log key). Whatever a participant later learns
//!   from the node is checked against it; the safety code covers the
//!   fingerprint and the log key, so a pin substituted on the way shows up
//!   when parties compare codes.
//! - [`InvitationDoc`]: what a mediator hands a party out of band — the
//!   pinned node, the talks, the party's id and its one-time token. It is
//!   a secret until redeemed (whoever holds it can enrol as the party).
//! - [`Enrolment`]: what a party leaves for the mediator when it redeems
//!   its token: its certified party entry and member entries, from which
//!   the mediator builds the roster. **The node can read it** (it is not
//!   yet encrypted to the mediator: that needs the mediator's key package,
//!   which the rooms issue brings); it holds names and public keys only.
//! - [`TalksRecord`]: what the home remembers of one talks: the pin, who
//!   this participant is in it, the parties the mediator invited, the
//!   members this participant invited into its party (for their names),
//!   and the verification state of every other party
//!   ([`PartyVerification`]).
//! - [`MemberInvitationDoc`] and [`MemberReplyDoc`]: the two hand-overs
//!   that add a member to a party after the roster, so that the member's
//!   secret keys never leave the member's home.
//!
//! Everything here is encoded canonically (`backchannel-codec`) and stored
//! through [`ClientStore`] under [`Namespace::Talks`]; `docs/formats.md`
//! § "Client-local state" describes the records.

use std::collections::BTreeMap;

use backchannel_codec::{
    Decode, DecodeError, Encode, PartyId, PrincipalId, Reader, RoomId, TalksId, Writer,
};
use backchannel_crypto::{PublicKey, SecretKey};
use backchannel_node::tls::Fingerprint;
use backchannel_statement::roster::{MemberEntry, PartyEntry};
use backchannel_statement::{InvitationToken, PartyKind, Role};
use backchannel_tlog::NodeOrigin;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::net::{MAX_NODE_ADDRESSES_LEN, NetError, NodeAddresses, NodeClient};
use crate::safety::PartyVerification;
use crate::store::{ClientStore, ClientStoreError, Namespace, Put};

/// The version of [`TalksRecord`]s and the talks index.
pub const RECORD_VERSION: u8 = 1;
/// The version of invitation documents.
pub const INVITATION_DOC_VERSION: u8 = 2;

/// The version of the member invitation and reply documents.
pub const MEMBER_DOC_VERSION: u8 = 1;
/// The version of enrolment payloads.
pub const ENROLMENT_VERSION: u8 = 1;
/// The most member entries one enrolment carries.
pub const MAX_ENROLLED_MEMBERS: usize = 64;
/// The most members one home invites into its party in one talks (kept
/// once admitted, for their names).
pub const MAX_INVITED_MEMBERS: usize = 1024;
/// The longest name (a party's, a member's, a room's), bytes; a node address list
/// has its own limit, [`crate::net::MAX_NODE_ADDRESSES_LEN`].
pub const MAX_NAME: usize = 256;
/// The most parties one mediator invites to one talks.
pub const MAX_INVITED: usize = 64;
/// The most talks one home takes part in.
pub const MAX_TALKS: usize = 10_000;

/// The store key of the index of talks.
const INDEX_KEY: &[u8] = b"backchannel/v1/home/talks/index";
/// The prefix of a talks record's store key.
const RECORD_PREFIX: &[u8] = b"backchannel/v1/home/talks/record/";

/// The node a talks lives on, as pinned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedNode {
    /// `host:port`, or several nodes serving the talks' one database and
    /// log, `host:port,host:port` (at most
    /// [`crate::net::MAX_NODE_ADDRESSES`]): the client fails over between
    /// them ([`crate::net`]). Checked when parsed or decoded; the
    /// fingerprint, origin and log key are the same for all of them.
    pub address: String,
    /// SHA-256 of its TLS certificate.
    pub fingerprint: Fingerprint,
    /// Its origin.
    pub origin: NodeOrigin,
    /// Its log key.
    pub log_key: PublicKey,
}

impl PinnedNode {
    /// A client of this node acting as `key`.
    pub fn client(&self, key: &SecretKey) -> Result<NodeClient, NetError> {
        NodeClient::new(&self.address, self.fingerprint, key)
    }
}

impl Encode for PinnedNode {
    fn encode(&self, w: &mut Writer) {
        w.text(&self.address);
        w.raw(&self.fingerprint.0);
        w.text(self.origin.as_str());
        self.log_key.encode(w);
    }
}

impl Decode for PinnedNode {
    const MIN_LEN: usize = 4 + 32 + 4 + 32;
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let address = r.text("node address", MAX_NODE_ADDRESSES_LEN)?;
        if NodeAddresses::parse(address)
            .ok()
            .map(|a| a.to_string())
            .as_deref()
            != Some(address)
        {
            return Err(DecodeError::Invalid {
                field: "node address",
                reason: "not a list of host:port addresses in canonical form",
            });
        }
        let address = address.to_owned();
        let fingerprint = Fingerprint(r.array("node fingerprint")?);
        let origin = NodeOrigin::new(r.text("node origin", MAX_NAME)?).map_err(|_| {
            DecodeError::Invalid {
                field: "node origin",
                reason: "not a node origin",
            }
        })?;
        let log_key = PublicKey::decode(r)?;
        Ok(Self {
            address,
            fingerprint,
            origin,
            log_key,
        })
    }
}

/// An invitation as a party receives it, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvitationDoc {
    /// The node.
    pub node: PinnedNode,
    /// The talks.
    pub talks: TalksId,
    /// The party's id.
    pub party: PartyId,
    /// The one-time token.
    pub token: InvitationToken,
    /// When the node stops honouring it (Unix ms).
    pub expires_at: u64,
    /// The mediator's HPKE (X25519) public key the party seals its
    /// enrolment to ([`Enrolment::seal`]), so the node never reads the
    /// names it carries.
    pub enrolment_key: [u8; 32],
}

/// The JSON form of an [`InvitationDoc`], as written to a file.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct InvitationJson {
    version: u8,
    node_address: String,
    node_fingerprint: String,
    node_origin: String,
    log_key: String,
    talks: String,
    party: String,
    token: String,
    expires_at: u64,
    enrolment_key: String,
}

/// Why an invitation document was refused.
#[derive(Debug, Error)]
pub enum InvitationDocError {
    /// Not the JSON an invitation is.
    #[error("not an invitation document: {0}")]
    Json(String),
    /// Another version.
    #[error(
        "document version {0}, which this client does not read: ask for one made by this \
         version of Backchannel"
    )]
    Version(u8),
    /// A field does not parse.
    #[error("the invitation's {field} is not valid: {reason}")]
    Field {
        /// The field.
        field: &'static str,
        /// Why.
        reason: String,
    },
}

/// One field (of a document, or given on a command line) that does not
/// parse.
#[derive(Debug, Error)]
#[error("the {field} is not valid: {reason}")]
pub struct FieldError {
    /// The field.
    pub field: &'static str,
    /// Why.
    pub reason: String,
}

impl From<FieldError> for InvitationDocError {
    fn from(e: FieldError) -> Self {
        InvitationDocError::Field {
            field: e.field,
            reason: e.reason,
        }
    }
}

fn hex32(field: &'static str, s: &str) -> Result<[u8; 32], FieldError> {
    let bytes = hex::decode(s).map_err(|e| FieldError {
        field,
        reason: format!("{e}; give 64 hex digits"),
    })?;
    bytes.try_into().map_err(|_| FieldError {
        field,
        reason: "not 32 bytes; give 64 hex digits".into(),
    })
}

fn key_of(field: &'static str, s: &str) -> Result<PublicKey, FieldError> {
    PublicKey::from_bytes(&hex32(field, s)?).map_err(|e| FieldError {
        field,
        reason: e.to_string(),
    })
}

/// Checks a name (a party's, a member's, an address, a "how" of a
/// verification): 1 to [`MAX_NAME`] bytes, not blank, no control
/// characters.
pub fn check_name(field: &'static str, s: &str) -> Result<(), FieldError> {
    if s.trim().is_empty() || s.len() > MAX_NAME || s.chars().any(char::is_control) {
        return Err(FieldError {
            field,
            reason: format!(
                "it must be 1 to {MAX_NAME} bytes, not blank, with no control characters"
            ),
        });
    }
    Ok(())
}

fn text_of(field: &'static str, s: String) -> Result<String, FieldError> {
    check_name(field, &s)?;
    Ok(s)
}

impl PinnedNode {
    /// A pin from its parts as `backchannel node info` prints them: the
    /// address (`host:port`), the TLS fingerprint and the log key (64 hex
    /// digits each), and the origin.
    pub fn parse(
        address: String,
        fingerprint: &str,
        origin: &str,
        log_key: &str,
    ) -> Result<Self, FieldError> {
        // The list's own rules (host:port items, count, canonical length)
        // are the address's only limits.
        let address = NodeAddresses::parse(&address)
            .map_err(|e| FieldError {
                field: "node address",
                reason: e.to_string(),
            })?
            .to_string();
        Ok(Self {
            address,
            fingerprint: Fingerprint(hex32("node fingerprint", fingerprint)?),
            origin: NodeOrigin::new(origin).map_err(|e| FieldError {
                field: "node origin",
                reason: e.to_string(),
            })?,
            log_key: key_of("log key", log_key)?,
        })
    }
}

impl InvitationDoc {
    /// The document's text (JSON, one object).
    pub fn to_json(&self) -> String {
        let json = InvitationJson {
            version: INVITATION_DOC_VERSION,
            node_address: self.node.address.clone(),
            node_fingerprint: hex::encode(self.node.fingerprint.0),
            node_origin: self.node.origin.as_str().to_owned(),
            log_key: hex::encode(self.node.log_key.as_bytes()),
            talks: self.talks.to_hex(),
            party: self.party.to_hex(),
            token: hex::encode(self.token.0),
            expires_at: self.expires_at,
            enrolment_key: hex::encode(self.enrolment_key),
        };
        // Serialising a struct of strings and integers cannot fail.
        serde_json::to_string_pretty(&json).unwrap_or_default()
    }

    /// Parses a document, strictly.
    pub fn parse(text: &str) -> Result<Self, InvitationDocError> {
        let json: InvitationJson = json_of(text)?;
        if json.version != INVITATION_DOC_VERSION {
            return Err(InvitationDocError::Version(json.version));
        }
        Ok(Self {
            node: PinnedNode::parse(
                json.node_address,
                &json.node_fingerprint,
                &json.node_origin,
                &json.log_key,
            )?,
            talks: TalksId::from_hex(&json.talks).map_err(field_err("talks"))?,
            party: PartyId::from_hex(&json.party).map_err(field_err("party"))?,
            token: InvitationToken(hex32("token", &json.token)?),
            expires_at: json.expires_at,
            enrolment_key: hex32("enrolment key", &json.enrolment_key)?,
        })
    }
}

/// What a party's talks-authority holder hands a new member of the party
/// out of band (`backchannel members add`): where the talks live and who
/// the member will be in them. Not secret (it admits nobody by itself: the
/// member's reply must come back and be admitted), but it carries the pin,
/// so it travels over a channel the node does not control.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInvitationDoc {
    /// The node.
    pub node: PinnedNode,
    /// The talks.
    pub talks: TalksId,
    /// The party.
    pub party: PartyId,
    /// The party's name.
    pub party_name: String,
    /// The new member's principal id.
    pub principal: PrincipalId,
    /// The new member's name.
    pub name: String,
    /// The new member's role.
    pub role: Role,
    /// The record room.
    pub record_room: RoomId,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MemberInvitationJson {
    version: u8,
    node_address: String,
    node_fingerprint: String,
    node_origin: String,
    log_key: String,
    talks: String,
    party: String,
    party_name: String,
    principal: String,
    name: String,
    role: u8,
    record_room: String,
}

/// What the new member hands back (`backchannel members join`): their
/// identity and device keys, and the device certificate their identity
/// key signed (a statement the talks-authority holder posts for them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberReplyDoc {
    /// The talks.
    pub talks: TalksId,
    /// The member's principal id.
    pub principal: PrincipalId,
    /// The identity key.
    pub identity_key: PublicKey,
    /// The device key.
    pub device_key: PublicKey,
    /// The device certificate statement, signed by the identity key.
    pub device_cert: Vec<u8>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MemberReplyJson {
    version: u8,
    talks: String,
    principal: String,
    identity_key: String,
    device_key: String,
    device_cert: String,
}

fn field_err(field: &'static str) -> impl Fn(DecodeError) -> InvitationDocError {
    move |e| InvitationDocError::Field {
        field,
        reason: e.to_string(),
    }
}

fn json_of<T: for<'de> Deserialize<'de>>(text: &str) -> Result<T, InvitationDocError> {
    serde_json::from_str(text).map_err(|e| InvitationDocError::Json(e.to_string()))
}

impl MemberInvitationDoc {
    /// The document's text.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&MemberInvitationJson {
            version: MEMBER_DOC_VERSION,
            node_address: self.node.address.clone(),
            node_fingerprint: hex::encode(self.node.fingerprint.0),
            node_origin: self.node.origin.as_str().to_owned(),
            log_key: hex::encode(self.node.log_key.as_bytes()),
            talks: self.talks.to_hex(),
            party: self.party.to_hex(),
            party_name: self.party_name.clone(),
            principal: self.principal.to_hex(),
            name: self.name.clone(),
            role: self.role as u8,
            record_room: self.record_room.to_hex(),
        })
        .unwrap_or_default()
    }

    /// Parses a document, strictly.
    pub fn parse(text: &str) -> Result<Self, InvitationDocError> {
        let j: MemberInvitationJson = json_of(text)?;
        if j.version != MEMBER_DOC_VERSION {
            return Err(InvitationDocError::Version(j.version));
        }
        let role = Role::from_canonical_bytes(&[j.role]).map_err(field_err("role"))?;
        Ok(Self {
            node: PinnedNode::parse(
                j.node_address,
                &j.node_fingerprint,
                &j.node_origin,
                &j.log_key,
            )?,
            talks: TalksId::from_hex(&j.talks).map_err(field_err("talks"))?,
            party: PartyId::from_hex(&j.party).map_err(field_err("party"))?,
            party_name: text_of("party name", j.party_name)?,
            principal: PrincipalId::from_hex(&j.principal).map_err(field_err("principal"))?,
            name: text_of("name", j.name)?,
            role,
            record_room: RoomId::from_hex(&j.record_room).map_err(field_err("record room"))?,
        })
    }
}

impl MemberReplyDoc {
    /// The document's text.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&MemberReplyJson {
            version: MEMBER_DOC_VERSION,
            talks: self.talks.to_hex(),
            principal: self.principal.to_hex(),
            identity_key: hex::encode(self.identity_key.as_bytes()),
            device_key: hex::encode(self.device_key.as_bytes()),
            device_cert: hex::encode(&self.device_cert),
        })
        .unwrap_or_default()
    }

    /// Parses a document, strictly (the certificate is checked by whoever
    /// admits the member).
    pub fn parse(text: &str) -> Result<Self, InvitationDocError> {
        let j: MemberReplyJson = json_of(text)?;
        if j.version != MEMBER_DOC_VERSION {
            return Err(InvitationDocError::Version(j.version));
        }
        let device_cert = hex::decode(&j.device_cert).map_err(|e| InvitationDocError::Field {
            field: "device certificate",
            reason: e.to_string(),
        })?;
        if device_cert.len() > 64 * 1024 {
            return Err(InvitationDocError::Field {
                field: "device certificate",
                reason: "longer than 64 KiB".into(),
            });
        }
        Ok(Self {
            talks: TalksId::from_hex(&j.talks).map_err(field_err("talks"))?,
            principal: PrincipalId::from_hex(&j.principal).map_err(field_err("principal"))?,
            identity_key: key_of("identity key", &j.identity_key)?,
            device_key: key_of("device key", &j.device_key)?,
            device_cert,
        })
    }
}

/// What a party leaves for the mediator when it enrols.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrolment {
    /// Its party entry, certified by its long-term authority.
    pub entry: PartyEntry,
    /// Its members, certified by its talks authority.
    pub members: Vec<MemberEntry>,
}

impl Encode for Enrolment {
    fn encode(&self, w: &mut Writer) {
        w.u8(ENROLMENT_VERSION);
        self.entry.encode(w);
        w.list(&self.members);
    }
}

impl Decode for Enrolment {
    const MIN_LEN: usize = 1 + PartyEntry::MIN_LEN + 4;
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.version("enrolment version", ENROLMENT_VERSION)?;
        let entry = PartyEntry::decode(r)?;
        let members = r.list("enrolled members", MAX_ENROLLED_MEMBERS)?;
        Ok(Self { entry, members })
    }
}

/// The HPKE `info` an enrolment is sealed under: it binds the talks and
/// the party, so a sealed enrolment cannot be replayed into other talks or
/// for another party.
fn enrolment_info(talks: TalksId, party: PartyId) -> Vec<u8> {
    let mut info = b"backchannel/v1/enrolment-seal".to_vec();
    info.extend_from_slice(talks.as_bytes());
    info.extend_from_slice(party.as_bytes());
    info
}

/// Why a sealed enrolment could not be opened.
#[derive(Debug, Error)]
pub enum EnrolmentError {
    /// It does not open with the mediator's key for these talks and party.
    #[error("the enrolment does not open with your enrolment key for that party: {0}")]
    Open(#[from] backchannel_mls::HpkeError),
    /// It opened but does not decode.
    #[error("the enrolment does not decode: {0}")]
    Decode(#[from] DecodeError),
}

impl Enrolment {
    /// The payload a party posts with its invitation token: the canonical
    /// enrolment sealed (HPKE) to the mediator's enrolment key from the
    /// invitation document.
    pub fn seal(&self, doc: &InvitationDoc) -> Result<Vec<u8>, backchannel_mls::HpkeError> {
        self.seal_to(&doc.enrolment_key, doc.talks, doc.party)
    }

    /// [`Enrolment::seal`] to the enrolment key `key` of `talks`, for
    /// `party`.
    pub fn seal_to(
        &self,
        key: &[u8; 32],
        talks: TalksId,
        party: PartyId,
    ) -> Result<Vec<u8>, backchannel_mls::HpkeError> {
        backchannel_mls::hpke_seal(
            key,
            &enrolment_info(talks, party),
            &[],
            &self.to_canonical_bytes(),
        )
    }

    /// Opens a payload [`Enrolment::seal`] made, with the mediator's
    /// enrolment secret `ikm` for `talks`, as posted for `party`.
    pub fn open(
        ikm: &[u8; 32],
        talks: TalksId,
        party: PartyId,
        payload: &[u8],
    ) -> Result<Self, EnrolmentError> {
        let bytes = backchannel_mls::hpke_open(ikm, &enrolment_info(talks, party), &[], payload)?;
        Ok(Self::from_canonical_bytes(&bytes)?)
    }
}

/// A party the mediator invited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invited {
    /// Its id.
    pub party: PartyId,
    /// Its caucus room with the mediator.
    pub caucus: RoomId,
}

impl Encode for Invited {
    fn encode(&self, w: &mut Writer) {
        self.party.encode(w);
        self.caucus.encode(w);
    }
}

impl Decode for Invited {
    const MIN_LEN: usize = 32;
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            party: PartyId::decode(r)?,
            caucus: RoomId::decode(r)?,
        })
    }
}

/// A member this participant invited into its party (`backchannel members
/// add`, then `members admit`); kept once admitted, for the name the
/// record does not carry (member certificates name no one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingMember {
    /// Their principal id.
    pub principal: PrincipalId,
    /// Their role, as invited (the reply cannot change it).
    pub role: Role,
    /// Their name.
    pub name: String,
}

impl Encode for PendingMember {
    fn encode(&self, w: &mut Writer) {
        self.principal.encode(w);
        self.role.encode(w);
        w.text(&self.name);
    }
}

impl Decode for PendingMember {
    const MIN_LEN: usize = 16 + 1 + 4;
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            principal: PrincipalId::decode(r)?,
            role: Role::decode(r)?,
            name: r.text("member name", MAX_NAME)?.to_owned(),
        })
    }
}

/// What a home remembers of one talks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TalksRecord {
    /// The talks.
    pub talks: TalksId,
    /// Where they live.
    pub node: PinnedNode,
    /// This participant's party.
    pub party: PartyId,
    /// Its kind.
    pub party_kind: PartyKind,
    /// Its name.
    pub party_name: String,
    /// This participant.
    pub principal: PrincipalId,
    /// Their name.
    pub member_name: String,
    /// Their role.
    pub role: Role,
    /// The record room (known from the start: the mediator chose it and
    /// the roster declares it).
    pub record_room: Option<RoomId>,
    /// The parties the mediator invited (the mediator's home only).
    pub invited: Vec<Invited>,
    /// Members this participant invited into its party.
    pub pending_members: Vec<PendingMember>,
    /// How every other party's keys stand for this participant; a party
    /// absent here is vouched for by the mediator only.
    pub verifications: BTreeMap<PartyId, PartyVerification>,
}

impl TalksRecord {
    /// The state of `party`'s keys as this participant has verified them.
    pub fn verification(&self, party: PartyId) -> PartyVerification {
        self.verifications
            .get(&party)
            .cloned()
            .unwrap_or(PartyVerification::VouchedByMediator)
    }
}

impl Encode for TalksRecord {
    fn encode(&self, w: &mut Writer) {
        w.u8(RECORD_VERSION);
        self.talks.encode(w);
        self.node.encode(w);
        self.party.encode(w);
        self.party_kind.encode(w);
        w.text(&self.party_name);
        self.principal.encode(w);
        w.text(&self.member_name);
        self.role.encode(w);
        w.option(self.record_room.as_ref());
        w.list(&self.invited);
        w.list(&self.pending_members);
        w.len(self.verifications.len());
        for (party, v) in &self.verifications {
            party.encode(w);
            v.encode(w);
        }
    }
}

impl Decode for TalksRecord {
    const MIN_LEN: usize = 1 + 16 + PinnedNode::MIN_LEN + 16 + 1 + 4 + 16 + 4 + 1 + 1 + 4 + 4 + 4;
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.version("talks record version", RECORD_VERSION)?;
        let talks = TalksId::decode(r)?;
        let node = PinnedNode::decode(r)?;
        let party = PartyId::decode(r)?;
        let party_kind = PartyKind::decode(r)?;
        let party_name = r.text("party name", MAX_NAME)?.to_owned();
        let principal = PrincipalId::decode(r)?;
        let member_name = r.text("member name", MAX_NAME)?.to_owned();
        let role = Role::decode(r)?;
        let record_room = r.option("record room")?;
        let invited = r.list("invited parties", MAX_INVITED)?;
        let pending_members = r.list("invited members", MAX_INVITED_MEMBERS)?;
        let n = r.len("verifications", MAX_INVITED + 1, 17)?;
        let mut verifications = BTreeMap::new();
        let mut last: Option<PartyId> = None;
        for _ in 0..n {
            let p = PartyId::decode(r)?;
            let v = PartyVerification::decode(r)?;
            // One encoding per value: parties strictly increasing.
            if last.is_some_and(|l| p <= l) {
                return Err(DecodeError::Invalid {
                    field: "verifications",
                    reason: "parties must be sorted and unique",
                });
            }
            last = Some(p);
            verifications.insert(p, v);
        }
        Ok(Self {
            talks,
            node,
            party,
            party_kind,
            party_name,
            principal,
            member_name,
            role,
            record_room,
            invited,
            pending_members,
            verifications,
        })
    }
}

fn record_key(talks: TalksId) -> Vec<u8> {
    let mut k = RECORD_PREFIX.to_vec();
    k.extend_from_slice(talks.as_bytes());
    k
}

/// Why reading or writing the home's talks failed.
#[derive(Debug, Error)]
pub enum TalksStoreError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] ClientStoreError),
    /// A stored record does not decode.
    #[error("the home's record of talks is damaged: {0}")]
    Damaged(String),
    /// The home already takes part in these talks.
    #[error("this home already takes part in talks {0}")]
    Exists(TalksId),
    /// Too many talks.
    #[error("this home already takes part in {MAX_TALKS} talks")]
    Full,
}

fn damaged(e: DecodeError) -> TalksStoreError {
    TalksStoreError::Damaged(e.to_string())
}

/// The talks this home takes part in, in the order it joined them.
pub async fn talks_index<S: ClientStore>(store: &S) -> Result<Vec<TalksId>, TalksStoreError> {
    match store.get(Namespace::Talks, INDEX_KEY).await? {
        None => Ok(Vec::new()),
        Some(b) => {
            let mut r = Reader::new(&b);
            r.version("talks index version", RECORD_VERSION)
                .map_err(damaged)?;
            let v = r.list("talks index", MAX_TALKS).map_err(damaged)?;
            r.finish().map_err(damaged)?;
            Ok(v)
        }
    }
}

/// The record of `talks`, if this home takes part.
pub async fn load<S: ClientStore>(
    store: &S,
    talks: TalksId,
) -> Result<Option<TalksRecord>, TalksStoreError> {
    match store.get(Namespace::Talks, &record_key(talks)).await? {
        None => Ok(None),
        Some(b) => {
            let record = TalksRecord::from_canonical_bytes(&b).map_err(damaged)?;
            if record.talks != talks {
                return Err(TalksStoreError::Damaged(format!(
                    "the record stored for talks {talks} is of talks {}",
                    record.talks
                )));
            }
            Ok(Some(record))
        }
    }
}

/// Adds a new talks' record (refused if the home already has one).
pub async fn create<S: ClientStore>(
    store: &S,
    record: &TalksRecord,
) -> Result<(), TalksStoreError> {
    let mut index = talks_index(store).await?;
    if index.contains(&record.talks) {
        return Err(TalksStoreError::Exists(record.talks));
    }
    if index.len() >= MAX_TALKS {
        return Err(TalksStoreError::Full);
    }
    index.push(record.talks);
    let mut w = Writer::new();
    w.u8(RECORD_VERSION);
    w.list(&index);
    store
        .put_many(vec![
            Put {
                ns: Namespace::Talks,
                key: record_key(record.talks),
                value: Some(record.to_canonical_bytes()),
            },
            Put {
                ns: Namespace::Talks,
                key: INDEX_KEY.to_vec(),
                value: Some(w.into_bytes()),
            },
        ])
        .await?;
    Ok(())
}

/// Replaces an existing talks' record.
pub async fn save<S: ClientStore>(store: &S, record: &TalksRecord) -> Result<(), TalksStoreError> {
    store
        .put(
            Namespace::Talks,
            &record_key(record.talks),
            &record.to_canonical_bytes(),
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::safety::SafetyCode;
    use crate::store::MemoryClientStore;
    use backchannel_crypto::{Digest, Signer as _};

    fn node() -> PinnedNode {
        PinnedNode {
            address: "127.0.0.1:7443".into(),
            fingerprint: Fingerprint([7; 32]),
            origin: NodeOrigin::new("node.example.org").expect("origin"),
            log_key: SecretKey::from_seed(&[1; 32]).expect("key").public_key(),
        }
    }

    fn record() -> TalksRecord {
        TalksRecord {
            talks: TalksId([1; 16]),
            node: node(),
            party: PartyId([2; 16]),
            party_kind: PartyKind::Mediator,
            party_name: "Sultanate of Oman".into(),
            principal: PrincipalId([3; 16]),
            member_name: "Omani lead mediator".into(),
            role: Role::Lead,
            record_room: Some(RoomId([4; 16])),
            invited: vec![Invited {
                party: PartyId([5; 16]),
                caucus: RoomId([6; 16]),
            }],
            pending_members: vec![PendingMember {
                principal: PrincipalId([11; 16]),
                role: Role::Staff,
                name: "note-taker".into(),
            }],
            verifications: [
                (
                    PartyId([5; 16]),
                    PartyVerification::Verified {
                        how: "in person, Muscat".into(),
                        at_ms: 9,
                        code: SafetyCode(Digest([8; 32])),
                    },
                ),
                (
                    PartyId([9; 16]),
                    PartyVerification::Changed {
                        was: SafetyCode(Digest([10; 32])),
                    },
                ),
            ]
            .into(),
        }
    }

    #[test]
    fn records_round_trip_and_decode_strictly() {
        let r = record();
        let bytes = r.to_canonical_bytes();
        assert_eq!(
            TalksRecord::from_canonical_bytes(&bytes).expect("decode"),
            r
        );
        for cut in 0..bytes.len() {
            assert!(TalksRecord::from_canonical_bytes(&bytes[..cut]).is_err());
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(TalksRecord::from_canonical_bytes(&longer).is_err());
    }

    #[test]
    fn invitation_documents_round_trip_and_refuse_bad_fields() {
        let doc = InvitationDoc {
            node: node(),
            talks: TalksId([1; 16]),
            party: PartyId([2; 16]),
            token: InvitationToken([3; 32]),
            expires_at: 42,
            enrolment_key: [4; 32],
        };
        let text = doc.to_json();
        assert_eq!(InvitationDoc::parse(&text).expect("parse"), doc);
        let check = |from: &str, to: &str, want: &str| {
            let bad = text.replacen(from, to, 1);
            assert_ne!(bad, text, "{from} not found");
            let e = InvitationDoc::parse(&bad).expect_err(&bad).to_string();
            assert!(e.contains(want), "{e} lacks {want}");
        };
        check("\"version\": 2", "\"version\": 3", "version 3");
        check(&doc.talks.to_hex(), "zz", "talks");
        check(&hex::encode([3u8; 32]), "0303", "token");
        check(&hex::encode([4u8; 32]), "04", "enrolment key");
        check("node.example.org", "", "node origin");
        check(
            "\"expires_at\"",
            "\"extra\": 1, \"expires_at\"",
            "unknown field",
        );
        assert!(InvitationDoc::parse("not json").is_err());
    }

    #[test]
    fn member_documents_round_trip_and_refuse_bad_fields() {
        let inv = MemberInvitationDoc {
            node: node(),
            talks: TalksId([1; 16]),
            party: PartyId([2; 16]),
            party_name: "United States".into(),
            principal: PrincipalId([3; 16]),
            name: "US negotiator".into(),
            role: Role::Negotiator,
            record_room: RoomId([4; 16]),
        };
        let text = inv.to_json();
        assert_eq!(MemberInvitationDoc::parse(&text).expect("parse"), inv);
        for (from, to) in [
            ("\"role\": 2", "\"role\": 99"),
            ("US negotiator", ""),
            ("\"version\": 1", "\"version\": 7"),
        ] {
            let bad = text.replacen(from, to, 1);
            assert_ne!(bad, text, "{from}");
            assert!(MemberInvitationDoc::parse(&bad).is_err(), "{bad}");
        }
        let reply = MemberReplyDoc {
            talks: TalksId([1; 16]),
            principal: PrincipalId([3; 16]),
            identity_key: SecretKey::from_seed(&[5; 32]).expect("key").public_key(),
            device_key: SecretKey::from_seed(&[6; 32]).expect("key").public_key(),
            device_cert: vec![1, 2, 3],
        };
        let text = reply.to_json();
        assert_eq!(MemberReplyDoc::parse(&text).expect("parse"), reply);
        let bad = text.replacen("010203", "0102zz", 1);
        assert!(MemberReplyDoc::parse(&bad).is_err());
    }

    #[tokio::test]
    async fn the_index_lists_talks_once() {
        let store = MemoryClientStore::default();
        let r = record();
        create(&store, &r).await.expect("create");
        assert!(matches!(
            create(&store, &r).await,
            Err(TalksStoreError::Exists(_))
        ));
        assert_eq!(talks_index(&store).await.expect("index"), vec![r.talks]);
        let mut changed = r.clone();
        changed.verifications.clear();
        save(&store, &changed).await.expect("save");
        assert_eq!(load(&store, r.talks).await.expect("load"), Some(changed));
        assert_eq!(load(&store, TalksId([0; 16])).await.expect("load"), None);
    }
}
