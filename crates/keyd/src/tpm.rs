//! The store key sealed by a TPM: 32 random bytes made by keyd, sealed
//! under a primary key of the TPM's owner hierarchy (optionally bound to
//! a policy over SHA-256 PCRs), kept in the data directory only as the
//! TPM's sealed blob. Another TPM cannot load the blob, so a copied data
//! directory (or disk) cannot be opened elsewhere.
//!
//! ```text
//! DATA_DIR/tpm-sealed-store-key:
//!   "STPM" | version 1 | PCR count (u8) | each PCR index (u8)
//!   | public (u16 len + marshalled TPMT_PUBLIC) | private (u16 len + TPM2B_PRIVATE buffer)
//! ```
use std::path::{Path, PathBuf};
#[cfg(feature = "tpm")]
use std::str::FromStr;

use aws_lc_rs::aead::LessSafeKey;
#[cfg(feature = "tpm")]
use aws_lc_rs::aead::{UnboundKey, AES_256_GCM};
#[cfg(feature = "tpm")]
use sealtls_pki::files::write_atomic;
#[cfg(feature = "tpm")]
use tss_esapi::attributes::ObjectAttributesBuilder;
#[cfg(feature = "tpm")]
use tss_esapi::constants::response_code::Tss2ResponseCodeKind;
#[cfg(feature = "tpm")]
use tss_esapi::constants::SessionType;
#[cfg(feature = "tpm")]
use tss_esapi::handles::KeyHandle;
#[cfg(feature = "tpm")]
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
#[cfg(feature = "tpm")]
use tss_esapi::interface_types::ecc::EccCurve;
#[cfg(feature = "tpm")]
use tss_esapi::interface_types::resource_handles::Hierarchy;
#[cfg(feature = "tpm")]
use tss_esapi::interface_types::session_handles::PolicySession;
#[cfg(feature = "tpm")]
use tss_esapi::structures::{
    Digest, EccPoint, KeyedHashScheme, PcrSelectionList, PcrSelectionListBuilder, PcrSlot, Private, Public, PublicBuilder,
    PublicEccParametersBuilder, PublicKeyedHashParameters, SensitiveData, SymmetricDefinition, SymmetricDefinitionObject,
};
#[cfg(feature = "tpm")]
use tss_esapi::tcti_ldr::TctiNameConf;
#[cfg(feature = "tpm")]
use tss_esapi::traits::{Marshall, UnMarshall};
#[cfg(feature = "tpm")]
use tss_esapi::{Context, Error as TssError};
#[cfg(feature = "tpm")]
use zeroize::Zeroizing;

use crate::error::StoreError;

/// The sealed blob's file name in the data directory.
pub const BLOB_FILE: &str = "tpm-sealed-store-key";
/// The TPM keyd talks to unless told otherwise.
pub const DEFAULT_TCTI: &str = "device:/dev/tpmrm0";

const MAGIC: &[u8; 4] = b"STPM";
const VERSION: u8 = 1;
#[cfg(feature = "tpm")]
const KEY_LEN: usize = 32;

/// Which TPM seals the store key, and to which PCRs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TpmSeal {
    /// The TCTI, as tpm2-tss spells it (`device:/dev/tpmrm0`, `swtpm:host=H,port=P`).
    pub tcti: String,
    /// PCRs of the SHA-256 bank the key is bound to; empty for none.
    pub pcrs: Vec<u8>,
}

/// The sealed blob's path in `data_dir`.
pub fn blob_path(data_dir: &Path) -> PathBuf {
    data_dir.join(BLOB_FILE)
}

#[cfg(feature = "tpm")]
impl TpmSeal {
    fn err(&self, problem: impl Into<String>, fix: impl Into<String>) -> StoreError {
        StoreError::Tpm { tcti: self.tcti.clone(), problem: problem.into(), fix: fix.into() }
    }

    fn tss(&self, doing: &str, e: TssError) -> StoreError {
        self.err(format!("cannot {doing}: {e}"), "check that the TPM is present and that keyd may use it")
    }

    fn connect(&self) -> Result<Context, StoreError> {
        let conf = TctiNameConf::from_str(&self.tcti).map_err(|e| {
            self.err(
                format!("not a TCTI tpm2-tss understands ({e})"),
                "give --tpm device:/dev/tpmrm0, or swtpm:host=127.0.0.1,port=P for a software TPM",
            )
        })?;
        Context::new(conf).map_err(|e| {
            self.err(
                format!("cannot reach the TPM ({e})"),
                "check that the TPM exists and keyd may open it (the tss group for /dev/tpmrm0), or give another --tpm",
            )
        })
    }

    fn selection(&self, pcrs: &[u8]) -> Result<PcrSelectionList, StoreError> {
        let slots = pcrs
            .iter()
            .map(|&i| {
                1u32.checked_shl(u32::from(i))
                    .filter(|_| i < 24)
                    .and_then(|bit| PcrSlot::try_from(bit).ok())
                    .ok_or_else(|| self.err(format!("PCR {i} does not exist"), "give PCRs between 0 and 23, e.g. --tpm-pcrs 0,7"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        PcrSelectionListBuilder::new().with_selection(HashingAlgorithm::Sha256, &slots).build().map_err(|e| self.tss("select the PCRs", e))
    }

    /// The policy digest of TPM2_PolicyPCR over the current values of `pcrs`
    /// (`trial`) or a real policy session satisfied by them.
    fn pcr_session(&self, ctx: &mut Context, pcrs: &[u8], trial: bool) -> Result<PolicySession, StoreError> {
        let selection = self.selection(pcrs)?;
        let kind = if trial { SessionType::Trial } else { SessionType::Policy };
        let session = ctx
            .start_auth_session(None, None, None, kind, SymmetricDefinition::AES_128_CFB, HashingAlgorithm::Sha256)
            .map_err(|e| self.tss("start a policy session", e))?
            .ok_or_else(|| self.err("the TPM returned no session", "check the TPM"))?;
        let policy = PolicySession::try_from(session).map_err(|e| self.tss("start a policy session", e))?;
        // An empty digest: the TPM uses the PCRs' current values.
        ctx.policy_pcr(policy, Digest::default(), selection).map_err(|e| self.tss("read the PCR policy", e))?;
        Ok(policy)
    }

    fn primary(&self, ctx: &mut Context) -> Result<KeyHandle, StoreError> {
        let attributes = ObjectAttributesBuilder::new()
            .with_fixed_tpm(true)
            .with_fixed_parent(true)
            .with_sensitive_data_origin(true)
            .with_user_with_auth(true)
            .with_no_da(true)
            .with_restricted(true)
            .with_decrypt(true)
            .build()
            .map_err(|e| self.tss("describe the primary key", e))?;
        let params = PublicEccParametersBuilder::new_restricted_decryption_key(SymmetricDefinitionObject::AES_128_CFB, EccCurve::NistP256)
            .build()
            .map_err(|e| self.tss("describe the primary key", e))?;
        let public = PublicBuilder::new()
            .with_public_algorithm(PublicAlgorithm::Ecc)
            .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
            .with_object_attributes(attributes)
            .with_ecc_parameters(params)
            .with_ecc_unique_identifier(EccPoint::default())
            .build()
            .map_err(|e| self.tss("describe the primary key", e))?;
        ctx.execute_with_nullauth_session(|ctx| ctx.create_primary(Hierarchy::Owner, public, None, None, None, None))
            .map(|r| r.key_handle)
            .map_err(|e| self.tss("create the primary key of the owner hierarchy", e))
    }

    /// Makes a new store key and seals it to the TPM; returns the key and the blob to keep.
    fn seal_new(&self, ctx: &mut Context) -> Result<(Zeroizing<Vec<u8>>, Vec<u8>), StoreError> {
        let primary = self.primary(ctx)?;
        let mut policy = Digest::default();
        if !self.pcrs.is_empty() {
            let trial = self.pcr_session(ctx, &self.pcrs, true)?;
            policy = ctx.policy_get_digest(trial).map_err(|e| self.tss("compute the PCR policy", e))?;
            let _ = ctx.flush_context(tss_esapi::handles::SessionHandle::from(trial).into());
        }
        let attributes = ObjectAttributesBuilder::new()
            .with_fixed_tpm(true)
            .with_fixed_parent(true)
            .with_no_da(true)
            // Without a PCR policy the empty password opens it; with one, only the policy does.
            .with_user_with_auth(self.pcrs.is_empty())
            .build()
            .map_err(|e| self.tss("describe the sealed object", e))?;
        let public = PublicBuilder::new()
            .with_public_algorithm(PublicAlgorithm::KeyedHash)
            .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
            .with_object_attributes(attributes)
            .with_auth_policy(policy)
            .with_keyed_hash_parameters(PublicKeyedHashParameters::new(KeyedHashScheme::Null))
            .with_keyed_hash_unique_identifier(Digest::default())
            .build()
            .map_err(|e| self.tss("describe the sealed object", e))?;
        let mut key = Zeroizing::new(vec![0u8; KEY_LEN]);
        aws_lc_rs::rand::fill(&mut key).map_err(|_| StoreError::Random)?;
        let sensitive = SensitiveData::try_from(key.to_vec()).map_err(|e| self.tss("pass the store key", e))?;
        let created = ctx
            .execute_with_nullauth_session(|ctx| ctx.create(primary, public, None, Some(sensitive), None, None))
            .map_err(|e| self.tss("seal the store key", e))?;
        let _ = ctx.flush_context(primary.into());
        let public = created.out_public.marshall().map_err(|e| self.tss("encode the sealed object", e))?;
        let private = created.out_private.value().to_vec();
        let mut blob = MAGIC.to_vec();
        blob.push(VERSION);
        blob.push(self.pcrs.len() as u8);
        blob.extend_from_slice(&self.pcrs);
        for part in [&public, &private] {
            blob.extend_from_slice(&(part.len() as u16).to_be_bytes());
            blob.extend_from_slice(part);
        }
        Ok((key, blob))
    }

    fn unseal(&self, ctx: &mut Context, path: &Path, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        let (pcrs, public, private) = parse(blob).ok_or_else(|| self.damaged(path))?;
        if pcrs != self.pcrs {
            return Err(self.err(
                format!("{} was sealed to PCRs {:?}, not the --tpm-pcrs {:?} given", path.display(), pcrs, self.pcrs),
                format!("start keyd with --tpm-pcrs {}", join(&pcrs)),
            ));
        }
        let public = Public::unmarshall(public).map_err(|_| self.damaged(path))?;
        let private = Private::try_from(private.to_vec()).map_err(|_| self.damaged(path))?;
        let primary = self.primary(ctx)?;
        let loaded = ctx.execute_with_nullauth_session(|ctx| ctx.load(primary, private, public));
        let _ = ctx.flush_context(primary.into());
        let object = loaded.map_err(|e| self.foreign(path, e))?;
        let unsealed = if pcrs.is_empty() {
            ctx.execute_with_nullauth_session(|ctx| ctx.unseal(object.into()))
        } else {
            let policy = self.pcr_session(ctx, &pcrs, false)?;
            let r = ctx.execute_with_session(Some(policy.into()), |ctx| ctx.unseal(object.into()));
            let _ = ctx.flush_context(tss_esapi::handles::SessionHandle::from(policy).into());
            r
        };
        let _ = ctx.flush_context(object.into());
        let data = unsealed.map_err(|e| match e {
            TssError::Tss2Error(rc) if matches!(rc.kind(), Some(Tss2ResponseCodeKind::PolicyFail | Tss2ResponseCodeKind::PcrChanged)) => self.err(
                format!(
                    "the TPM refuses to unseal {}: the PCR policy is not met, PCRs {} differ from when the store was sealed (the boot state changed)",
                    path.display(),
                    join(&pcrs)
                ),
                format!(
                    "boot the machine as it was when the store was sealed, or re-provision the keys: move {} aside, start keyd with an empty --data-dir and install the keys again with `sealtls key put`",
                    path.parent().unwrap_or(Path::new(".")).display()
                ),
            ),
            e => self.tss(&format!("unseal {}", path.display()), e),
        })?;
        let key = Zeroizing::new(data.value().to_vec());
        if key.len() != KEY_LEN {
            return Err(self.damaged(path));
        }
        Ok(key)
    }

    fn damaged(&self, path: &Path) -> StoreError {
        self.err(
            format!("{} is not a sealed store key (it was modified or damaged)", path.display()),
            "restore the file from backup, or re-provision the keys into an empty --data-dir",
        )
    }

    fn foreign(&self, path: &Path, e: TssError) -> StoreError {
        self.err(
            format!(
                "the TPM refuses to load {} ({e}): the data directory was sealed by another TPM (copied from another machine, \
                 or the TPM was cleared), or the file was modified; nothing in it can be opened here, so keyd serves nothing from it",
                path.display()
            ),
            "run keyd on the machine whose TPM sealed it, or start with an empty --data-dir and install the keys again with `sealtls key put`",
        )
    }

    /// The store key for `data_dir`: unsealed from its blob, or made and
    /// sealed (the blob written 0600) when the directory has none.
    pub fn store_key(&self, data_dir: &Path) -> Result<LessSafeKey, StoreError> {
        let path = blob_path(data_dir);
        let mut ctx = self.connect()?;
        let key = match std::fs::read(&path) {
            Ok(blob) => self.unseal(&mut ctx, &path, &blob)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let (key, blob) = self.seal_new(&mut ctx)?;
                write_atomic(&path, &blob, 0o600, false).map_err(|e| self.err(e.to_string(), "check the data directory's permissions"))?;
                tracing::info!(file = %path.display(), tcti = %self.tcti, "sealed a new store key to the TPM");
                key
            }
            Err(e) => return Err(StoreError::io(&path, "read the sealed store key", e)),
        };
        let unbound = UnboundKey::new(&AES_256_GCM, &key).map_err(|_| self.damaged(&path))?;
        Ok(LessSafeKey::new(unbound))
    }
}

/// Without TPM support built in, `--seal tpm` says how to get it.
#[cfg(not(feature = "tpm"))]
impl TpmSeal {
    /// The store key: never, in a build without TPM support.
    pub fn store_key(&self, _data_dir: &Path) -> Result<LessSafeKey, StoreError> {
        Err(StoreError::Tpm {
            tcti: self.tcti.clone(),
            problem: "this sealtls was built without TPM support".into(),
            fix: "rebuild with `cargo build --release --features tpm` (needs Debian's libtss2-dev and pkg-config)".into(),
        })
    }
}

#[cfg(feature = "tpm")]
fn join(pcrs: &[u8]) -> String {
    pcrs.iter().map(u8::to_string).collect::<Vec<_>>().join(",")
}

/// Splits a blob into its PCRs, public and private parts.
#[cfg_attr(not(feature = "tpm"), allow(dead_code))]
fn parse(blob: &[u8]) -> Option<(Vec<u8>, &[u8], &[u8])> {
    let rest = blob.strip_prefix(MAGIC.as_slice())?;
    let (&version, rest) = rest.split_first()?;
    if version != VERSION {
        return None;
    }
    let (&count, rest) = rest.split_first()?;
    let pcrs = rest.get(..count as usize)?.to_vec();
    let rest = &rest[count as usize..];
    let part = |rest: &[u8]| -> Option<(usize, usize)> {
        let len = u16::from_be_bytes(rest.get(..2)?.try_into().ok()?) as usize;
        (rest.len() >= 2 + len).then_some((2, 2 + len))
    };
    let (a, b) = part(rest)?;
    let public = &rest[a..b];
    let rest = &rest[b..];
    let (c, d) = part(rest)?;
    (d == rest.len()).then_some((pcrs, public, &rest[c..d]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_refuses_short_or_trailing_bytes() {
        let mut blob = MAGIC.to_vec();
        blob.extend_from_slice(&[VERSION, 1, 16, 0, 2, 9, 9, 0, 1, 7]);
        assert_eq!(parse(&blob), Some((vec![16], &[9u8, 9][..], &[7u8][..])));
        for cut in 0..blob.len() {
            assert_eq!(parse(&blob[..cut]), None, "{cut}");
        }
        blob.push(0);
        assert_eq!(parse(&blob), None);
    }
}
