//! The sealed-file backend: each key in its own file under DATA_DIR/keys,
//! encrypted with AES-256-GCM under a key derived from the device secret,
//! the domain and key id bound in as associated data.
//!
//! ```text
//! entry file:  "STKS" | version 1 | domain (u16 len + bytes) | key id (32) | nonce (12) | ciphertext + tag
//! plaintext:   key form (1 PKCS#8, 2 SEC1, 3 PKCS#1) | key (u32 len + DER) | certificate count (u16) | each: u32 len + DER
//! associated data: every byte before the nonce
//! ```
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, NONCE_LEN};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer};
use sealtls_custody_proto::KeyId;
use sealtls_failure::{Problem, Remedy};
use sealtls_pki::files::write_atomic;
use sealtls_pki::issue::KeyType;
use tracing::warn;
use zeroize::Zeroizing;

use crate::backend::{csr_for, Backend, Entry, Location, State};
use crate::device;
use crate::error::StoreError;
use crate::keys::{check_chain, KeyInfo, MemoryKey};
use crate::record;
use crate::tpm::{self, TpmSeal};

const ENTRY_MAGIC: &[u8; 4] = b"STKS";
const CHECK_MAGIC: &[u8; 4] = b"STKC";
const VERSION: u8 = 1;
const CHECK_TEXT: &[u8] = b"sealtls sealed-file store";
const TAG_LEN: usize = 16;
const MAX_ENTRY: u64 = 4 << 20;

/// Why an entry file cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    /// Not an entry file, or cut short.
    #[error("not a sealed key entry ({0})")]
    Malformed(&'static str),
    /// A format version this build cannot read.
    #[error("entry format version {0} is not supported")]
    Version(u8),
    /// AES-GCM refused it: the file was changed, or sealed under another device secret.
    #[error("failed authentication: the file was modified or damaged, or sealed under another device secret")]
    Authentication,
}

/// An entry file's header, read but not yet authenticated.
#[derive(Debug, PartialEq, Eq)]
pub struct Header<'a> {
    /// The domain it claims.
    pub domain: String,
    /// The key id it claims.
    pub key_id: KeyId,
    aad: &'a [u8],
    nonce: [u8; NONCE_LEN],
    sealed: &'a [u8],
}

/// Reads an entry file's header. Never panics, whatever the bytes.
pub fn read_header(bytes: &[u8]) -> Result<Header<'_>, EntryError> {
    let short = EntryError::Malformed("file too short");
    if bytes.len() < 7 || &bytes[..4] != ENTRY_MAGIC {
        return Err(EntryError::Malformed("wrong magic"));
    }
    if bytes[4] != VERSION {
        return Err(EntryError::Version(bytes[4]));
    }
    let dlen = u16::from_be_bytes([bytes[5], bytes[6]]) as usize;
    let id_at = 7 + dlen;
    let nonce_at = id_at + 32;
    let sealed_at = nonce_at + NONCE_LEN;
    if bytes.len() < sealed_at + TAG_LEN {
        return Err(short);
    }
    let domain = String::from_utf8(bytes[7..id_at].to_vec()).map_err(|_| EntryError::Malformed("domain is not UTF-8"))?;
    Ok(Header {
        domain,
        key_id: KeyId(bytes[id_at..nonce_at].try_into().expect("32 bytes")),
        aad: &bytes[..nonce_at],
        nonce: bytes[nonce_at..sealed_at].try_into().expect("12 bytes"),
        sealed: &bytes[sealed_at..],
    })
}

/// What an entry holds once opened.
pub struct Plain {
    /// The private key.
    pub key: PrivateKeyDer<'static>,
    /// The chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
}

fn seal(store: &LessSafeKey, aad: &[u8], mut plain: Zeroizing<Vec<u8>>) -> Result<Vec<u8>, StoreError> {
    let mut nonce = [0u8; NONCE_LEN];
    aws_lc_rs::rand::fill(&mut nonce).map_err(|_| StoreError::Random)?;
    store
        .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut *plain)
        .map_err(|_| StoreError::invalid("cannot encrypt the entry"))?;
    let mut out = aad.to_vec();
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&plain);
    Ok(out)
}

fn open_in_place<'a>(store: &LessSafeKey, aad: &[u8], nonce: [u8; NONCE_LEN], buf: &'a mut [u8]) -> Result<&'a [u8], EntryError> {
    let plain = store.open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), buf).map_err(|_| EntryError::Authentication)?;
    Ok(plain)
}

/// Builds an entry file for `domain`.
pub fn seal_entry(
    store: &LessSafeKey,
    domain: &str,
    key_id: &KeyId,
    key: &PrivateKeyDer<'_>,
    chain: &[CertificateDer<'_>],
) -> Result<Vec<u8>, StoreError> {
    let mut aad = ENTRY_MAGIC.to_vec();
    aad.push(VERSION);
    aad.extend_from_slice(&(domain.len() as u16).to_be_bytes());
    aad.extend_from_slice(domain.as_bytes());
    aad.extend_from_slice(&key_id.0);
    let (form, der) = match key {
        PrivateKeyDer::Pkcs8(k) => (1u8, k.secret_pkcs8_der()),
        PrivateKeyDer::Sec1(k) => (2, k.secret_sec1_der()),
        PrivateKeyDer::Pkcs1(k) => (3, k.secret_pkcs1_der()),
        _ => return Err(StoreError::invalid("unsupported private key form")),
    };
    let mut plain = Zeroizing::new(Vec::with_capacity(der.len() + 64 + chain.iter().map(|c| c.len() + 4).sum::<usize>()));
    plain.push(form);
    record::put_bytes(&mut plain, der);
    record::put_certs(&mut plain, chain);
    seal(store, &aad, plain)
}

/// Authenticates and decrypts an entry.
pub fn open_entry(store: &LessSafeKey, header: &Header<'_>) -> Result<Plain, EntryError> {
    let mut buf = Zeroizing::new(header.sealed.to_vec());
    let plain = open_in_place(store, header.aad, header.nonce, &mut buf)?;
    // Authenticated bytes were written by seal_entry, but parse them defensively anyway.
    let bad = EntryError::Malformed("sealed contents do not parse");
    let mut fields = record::Fields::new(plain);
    let (form, kder) = (fields.u8().ok_or(bad.clone())?, fields.bytes().ok_or(bad.clone())?.to_vec());
    let key = match form {
        1 => PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(kder)),
        2 => PrivateKeyDer::Sec1(PrivateSec1KeyDer::from(kder)),
        3 => PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(kder)),
        _ => return Err(bad),
    };
    let chain = fields.certs().filter(|_| fields.is_done()).ok_or(bad)?;
    Ok(Plain { key, chain })
}

/// Keys sealed in files under a data directory.
pub struct SealedFiles {
    keys_dir: PathBuf,
    store: LessSafeKey,
    /// `sealed-file` or `tpm`: what seals the store key.
    kind: &'static str,
}

impl SealedFiles {
    /// Opens (creating on first use) the store in `data_dir` under the
    /// device secret at `device_key`. Refuses an exposed secret or
    /// directory, and a directory sealed under another secret.
    pub fn open(data_dir: &Path, device_key: &Path) -> Result<Self, StoreError> {
        device::ensure_data_dir(data_dir)?;
        device::check_data_dir(data_dir)?;
        let blob = tpm::blob_path(data_dir);
        if blob.exists() {
            return Err(StoreError::refused(
                format!("data directory {} was sealed by a TPM ({} exists), not under a device secret", data_dir.display(), blob.display()),
                "start keyd with --seal tpm (and the --tpm and --tpm-pcrs it was made with)",
            ));
        }
        let secret = device::load_or_create(device_key)?;
        let store = device::store_key(&secret);
        drop(secret);
        Self::open_with(data_dir, store, "sealed-file", || StoreError::ForeignStore {
            dir: data_dir.to_owned(),
            secret: device_key.to_owned(),
        })
    }

    /// Opens (creating on first use) the store in `data_dir` under a store
    /// key the TPM seals (see [`tpm`]). Refuses a directory whose key
    /// another TPM sealed, or whose PCR policy is no longer met.
    pub fn open_tpm(data_dir: &Path, seal: &TpmSeal) -> Result<Self, StoreError> {
        device::ensure_data_dir(data_dir)?;
        device::check_data_dir(data_dir)?;
        if !tpm::blob_path(data_dir).exists() && data_dir.join("store.check").exists() {
            return Err(StoreError::refused(
                format!("data directory {} was sealed under a device secret (--seal file), not by a TPM", data_dir.display()),
                "start keyd with --seal file, or re-provision the keys into an empty --data-dir with --seal tpm",
            ));
        }
        let store = seal.store_key(data_dir)?;
        Self::open_with(data_dir, store, "tpm", || {
            StoreError::refused(
                format!(
                    "data directory {}: its keys were not sealed under the key in {} (the file was replaced)",
                    data_dir.display(),
                    tpm::blob_path(data_dir).display()
                ),
                "restore the original file, or re-provision the keys into an empty --data-dir",
            )
        })
    }

    fn open_with(data_dir: &Path, store: LessSafeKey, kind: &'static str, foreign: impl Fn() -> StoreError) -> Result<Self, StoreError> {
        let keys_dir = data_dir.join("keys");
        if !keys_dir.exists() {
            use std::os::unix::fs::DirBuilderExt;
            fs::DirBuilder::new().mode(0o700).create(&keys_dir).map_err(|e| StoreError::io(&keys_dir, "create the keys directory", e))?;
        }
        let check = data_dir.join("store.check");
        match fs::read(&check) {
            Ok(bytes) => {
                let ok = bytes.len() > 5 + NONCE_LEN && bytes[..4] == *CHECK_MAGIC && bytes[4] == VERSION && {
                    let nonce: [u8; NONCE_LEN] = bytes[5..5 + NONCE_LEN].try_into().expect("12 bytes");
                    let mut sealed = bytes[5 + NONCE_LEN..].to_vec();
                    open_in_place(&store, &bytes[..5], nonce, &mut sealed).is_ok_and(|p| p == CHECK_TEXT)
                };
                if !ok {
                    return Err(foreign());
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if entry_files(&keys_dir)?.next().is_some() {
                    return Err(foreign());
                }
                let mut aad = CHECK_MAGIC.to_vec();
                aad.push(VERSION);
                let file = seal(&store, &aad, Zeroizing::new(CHECK_TEXT.to_vec()))?;
                write_atomic(&check, &file, 0o600, false).map_err(|e| StoreError::Invalid(Problem::of(&e)))?;
            }
            Err(e) => return Err(StoreError::io(&check, "read", e)),
        }
        Ok(Self { keys_dir, store, kind })
    }

    fn path_for(&self, domain: &str) -> PathBuf {
        let hash = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, domain.as_bytes());
        let name: String = hash.as_ref()[..16].iter().map(|b| format!("{b:02x}")).collect();
        self.keys_dir.join(format!("{name}.sealed"))
    }

    fn write(&self, domain: &str, key: &PrivateKeyDer<'_>, chain: &[CertificateDer<'static>]) -> Result<Entry, StoreError> {
        let memory = MemoryKey::new(key, domain)?;
        let info = memory.info().clone();
        let not_after = if chain.is_empty() { None } else { Some(check_chain(domain, &info, chain)?) };
        let file = seal_entry(&self.store, domain, &info.id, key, chain)?;
        let path = self.path_for(domain);
        write_atomic(&path, &file, 0o600, true).map_err(|e| StoreError::Invalid(Problem::of(&e)))?;
        Ok(Entry {
            domain: domain.into(),
            key: info,
            chain: chain.to_vec(),
            not_after,
            location: Location::SealedFile(path),
            state: State::Ready(Arc::new(memory)),
        })
    }

    fn load_one(&self, path: &Path) -> Option<Entry> {
        let bytes = match sealtls_pki::load::read_limited(path) {
            Ok((b, _)) if b.len() as u64 <= MAX_ENTRY => b,
            Ok(_) => return None,
            Err(e) => {
                warn!(file = %path.display(), error = %e.with_fix(), "cannot read a key entry; skipped");
                return None;
            }
        };
        let header = match read_header(&bytes) {
            Ok(h) => h,
            Err(e) => {
                warn!(file = %path.display(), error = %e, "not a key entry; skipped (move it out of the keys directory)");
                return None;
            }
        };
        let unavailable = |why: String| {
            warn!(domain = %header.domain, file = %path.display(), "key entry {why}; skipped, other keys are served. Remove it with `sealtls key rm {}` and install the key again", header.domain);
            let key = KeyInfo::unknown(header.key_id);
            Some(Entry {
                domain: header.domain.clone(),
                key,
                chain: Vec::new(),
                not_after: None,
                location: Location::SealedFile(path.to_owned()),
                state: State::Unavailable(why),
            })
        };
        if self.path_for(&header.domain) != path {
            return unavailable("is stored under the wrong file name (renamed or copied by hand)".into());
        }
        let (key, chain) = match open_entry(&self.store, &header) {
            Ok(p) => (Zeroizing::new(p.key), p.chain),
            Err(e) => return unavailable(e.to_string()),
        };
        let memory = match MemoryKey::new(&key, &header.domain) {
            Ok(m) if m.info().id == header.key_id => m,
            Ok(_) => return unavailable("holds a key other than its header names".into()),
            Err(e) => return unavailable(format!("holds a key that cannot be used: {e}")),
        };
        let info = memory.info().clone();
        let not_after = if chain.is_empty() { None } else { check_chain(&header.domain, &info, &chain).ok() };
        Some(Entry {
            domain: header.domain.clone(),
            key: info,
            chain,
            not_after,
            location: Location::SealedFile(path.to_owned()),
            state: State::Ready(Arc::new(memory)),
        })
    }
}

fn entry_files(dir: &Path) -> Result<impl Iterator<Item = PathBuf>, StoreError> {
    let read = fs::read_dir(dir).map_err(|e| StoreError::io(dir, "list", e))?;
    Ok(read.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "sealed")))
}

impl Backend for SealedFiles {
    fn describe(&self) -> String {
        format!("sealed files in {}", self.keys_dir.display())
    }

    fn kind(&self) -> &'static str {
        self.kind
    }

    fn load(&self) -> Result<Vec<Entry>, StoreError> {
        // A crash between writing a temporary file and renaming it leaves the temporary behind; the entry itself is intact.
        for leftover in fs::read_dir(&self.keys_dir).map_err(|e| StoreError::io(&self.keys_dir, "list", e))?.filter_map(Result::ok) {
            let name = leftover.file_name();
            if name.to_string_lossy().starts_with('.') && name.to_string_lossy().contains(".tmp") {
                let _ = fs::remove_file(leftover.path());
            }
        }
        Ok(entry_files(&self.keys_dir)?.filter_map(|p| self.load_one(&p)).collect())
    }

    fn put(&self, domain: &str, key: &PrivateKeyDer<'_>, chain: &[CertificateDer<'static>]) -> Result<Entry, StoreError> {
        self.write(domain, key, chain)
    }

    fn put_chain(&self, entry: &Entry, chain: &[CertificateDer<'static>]) -> Result<Entry, StoreError> {
        let path = self.path_for(&entry.domain);
        let (bytes, _) = sealtls_pki::load::read_limited(&path).map_err(|e| StoreError::Invalid(Problem::of(&e)))?;
        let header = read_header(&bytes).map_err(|e| StoreError::invalid(format!("{}: {e}", path.display())))?;
        let plain = open_entry(&self.store, &header).map_err(|e| StoreError::invalid(format!("{}: {e}", path.display())))?;
        let key = Zeroizing::new(plain.key);
        self.write(&entry.domain, &key, chain)
    }

    fn generate(&self, domain: &str, key_type: KeyType) -> Result<(Entry, Vec<u8>), StoreError> {
        let pair = key_type.generate().map_err(|e| StoreError::invalid(format!("cannot generate a {} key: {e}", key_type.name())))?;
        let csr = csr_for(domain, &pair)?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pair.serialize_der()));
        let key = Zeroizing::new(der);
        Ok((self.write(domain, &key, &[])?, csr))
    }

    fn remove(&self, entry: &Entry) -> Result<(), StoreError> {
        let path = self.path_for(&entry.domain);
        fs::remove_file(&path).map_err(|e| StoreError::io(&path, "remove", e))?;
        fs::File::open(&self.keys_dir).and_then(|d| d.sync_all()).map_err(|e| StoreError::io(&self.keys_dir, "sync", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn store() -> LessSafeKey {
        device::store_key(&[7; 32])
    }

    fn sample() -> (PrivateKeyDer<'static>, KeyId) {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        (PrivateKeyDer::Pkcs8(kp.serialize_der().into()), crate::keys::key_id(&rcgen::PublicKeyData::subject_public_key_info(&kp)))
    }

    #[test]
    fn entries_round_trip_and_every_flipped_byte_is_caught() {
        let (key, id) = sample();
        let chain = vec![CertificateDer::from(vec![0x30, 3, 1, 2, 3])];
        let file = seal_entry(&store(), "www.example.com", &id, &key, &chain).unwrap();
        let header = read_header(&file).unwrap();
        assert_eq!((header.domain.as_str(), header.key_id), ("www.example.com", id));
        let plain = open_entry(&store(), &header).unwrap();
        assert_eq!(plain.key.secret_der(), key.secret_der());
        assert_eq!(plain.chain, chain);
        for i in 0..file.len() {
            let mut bad = file.clone();
            bad[i] ^= 0x01;
            let opened = read_header(&bad).and_then(|h| open_entry(&store(), &h).map(|_| ()));
            assert!(opened.is_err(), "flipping byte {i} went unnoticed");
        }
        let other = device::store_key(&[8; 32]);
        assert_eq!(open_entry(&other, &header).err(), Some(EntryError::Authentication));
    }

    proptest! {
        #[test]
        fn arbitrary_files_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(h) = read_header(&bytes) {
                prop_assert!(open_entry(&store(), &h).is_err());
            }
        }

        #[test]
        fn arbitrary_bodies_behind_a_valid_magic_never_panic(dlen in 0u16..40, body in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut bytes = ENTRY_MAGIC.to_vec();
            bytes.push(VERSION);
            bytes.extend_from_slice(&dlen.to_be_bytes());
            bytes.extend_from_slice(&body);
            if let Ok(h) = read_header(&bytes) {
                prop_assert!(open_entry(&store(), &h).is_err());
            }
        }
    }
}
