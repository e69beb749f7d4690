//! Offline fork evidence: `backchannel log compare` turns two checkpoint
//! notes of one log that cannot both be honest into a self-contained
//! evidence file; `backchannel evidence verify` checks such a file with
//! nothing but the node's log key and the log origin. No node, no home.

use std::path::Path;

use anyhow::{Context as _, bail};
use backchannel_client::fork::{ForkEvidence, NotAFork};
use backchannel_codec::{Decode, Encode, TalksId};
use backchannel_crypto::PublicKey;
use backchannel_tlog::{LogOrigin, NodeOrigin};

use crate::cli::{CompareArgs, LogIdentity, VerifyEvidenceArgs};

fn read(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading the {what} {}", path.display()))
}

fn log_identity(id: &LogIdentity) -> anyhow::Result<(PublicKey, LogOrigin)> {
    let key = hex::decode(&id.log_key)
        .ok()
        .and_then(|b| PublicKey::from_bytes(&b).ok())
        .context("--log-key must be the node's log key: 64 hex digits (`backchannel node info`)")?;
    let origin = NodeOrigin::new(&id.origin).map_err(|e| {
        anyhow::anyhow!("--origin: {e}; use the node's origin (`backchannel node info`)")
    })?;
    let talks = TalksId::from_hex(&id.talks)
        .map_err(|_| anyhow::anyhow!("--talks must be 32 hex digits"))?;
    Ok((key, LogOrigin::new(&origin, talks)))
}

/// `backchannel log compare`.
pub fn compare(args: CompareArgs) -> anyhow::Result<()> {
    let (key, origin) = log_identity(&args.log)?;
    let a = read(&args.checkpoint_a, "checkpoint")?;
    let b = read(&args.checkpoint_b, "checkpoint")?;
    let evidence = match ForkEvidence::from_checkpoints(&a, &b, &key, &origin) {
        Ok(e) => e,
        Err(NotAFork::SameRoot { .. }) => {
            bail!("no fork: both checkpoints have the same size and root")
        }
        Err(NotAFork::DifferentSizes { .. }) => bail!(
            "the checkpoints have different sizes: compare the verified roots at one size \
             (each participant's `log verify` keeps them), or fetch a consistency proof"
        ),
        Err(e) => bail!("these checkpoints prove no fork: {e}"),
    };
    let verified = evidence.verify(&key, &origin)?;
    if args.out.exists() {
        bail!("{} exists; choose another --out", args.out.display());
    }
    std::fs::write(&args.out, evidence.to_canonical_bytes())
        .with_context(|| format!("writing {}", args.out.display()))?;
    let summary = verified.summary();
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        println!(
            "FORK: the node signed two trees of size {} for {}:\n  {}\n  {}\nevidence written to {} \
             (check it anywhere with `backchannel evidence verify`)",
            summary.size,
            summary.origin,
            summary.root_a,
            summary.root_b,
            args.out.display()
        );
    }
    Ok(())
}

/// `backchannel evidence verify`.
pub fn verify(args: VerifyEvidenceArgs) -> anyhow::Result<()> {
    let (key, origin) = log_identity(&args.log)?;
    let bytes = read(&args.file, "evidence file")?;
    let evidence = ForkEvidence::from_canonical_bytes(&bytes)
        .map_err(|e| anyhow::anyhow!("{} is not fork evidence: {e}", args.file.display()))?;
    let verified = evidence
        .verify(&key, &origin)
        .map_err(|e| anyhow::anyhow!("the evidence does not verify: {e}"))?;
    let summary = verified.summary();
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        println!(
            "VERIFIED: the node holding log key {} signed two trees of size {} for {}:\n  {}\n  {}",
            args.log.log_key, summary.size, summary.origin, summary.root_a, summary.root_b
        );
    }
    Ok(())
}
