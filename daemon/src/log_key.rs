//! The log's Ed25519 checkpoint key, sealed to the TPM.
//!
//! Lifecycle (docs/DESIGN.md, "The log key"):
//! * **creation**: on the first start with a TPM, 32 random bytes from the
//!   OS become the Ed25519 seed; the TPM seals them (`tpm/log-key.sealed`)
//!   and the public key is written as a C2SP verifier key (`tpm/log-key.pub`).
//!   The seed never touches the disk in clear.
//! * **use**: every start unseals it; anchors and fresh attestations carry
//!   checkpoints signed with it (C2SP signed notes).
//! * **backup**: the sealed blob is useless without this TPM, by design.
//!   Back up `log-key.pub`: it verifies every checkpoint ever signed.
//! * **rotation** (TPM replaced or cleared, key suspected): move
//!   `log-key.sealed` away; the next start makes a new key. Distribute the
//!   new `log-key.pub`; old checkpoints verify with the old one.

use std::path::{Path, PathBuf};

use rand::RngCore;
use tally_attest::note::Signer;
use tally_attest::tpm::error::TpmError;
use tally_attest::tpm::seal::SealedBlob;
use tally_attest::tpm::worker::TpmHandle;
use zeroize::Zeroizing;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogKeyError {
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} is not a sealed key blob")]
    Malformed(PathBuf),
    #[error(
        "cannot unseal the log's checkpoint key {path}: {source}. If the TPM was replaced or its owner \
         hierarchy cleared, the key cannot come back: rotate it by moving that file away and restarting, \
         then distribute the new log-key.pub (old checkpoints verify with the old key)"
    )]
    Unseal { path: PathBuf, source: TpmError },
    #[error("TPM: {0}")]
    Tpm(#[from] TpmError),
    #[error("key: {0}")]
    Note(#[from] tally_attest::note::NoteError),
}

/// Loads the sealed key from `dir` (creating it on first use) and returns
/// the signer named `name` (the checkpoint origin).
pub async fn load_or_create(
    tpm: &TpmHandle,
    dir: &Path,
    name: &str,
) -> Result<Signer, LogKeyError> {
    let sealed_path = dir.join("log-key.sealed");
    let io = |what, path: &Path| {
        let path = path.to_owned();
        move |source| LogKeyError::Io { what, path, source }
    };
    let seed: Zeroizing<Vec<u8>> = match std::fs::read(&sealed_path) {
        Ok(bytes) => {
            let blob = SealedBlob::from_bytes(&bytes)
                .ok_or_else(|| LogKeyError::Malformed(sealed_path.clone()))?;
            tpm.unseal(blob)
                .await
                .map_err(|source| LogKeyError::Unseal {
                    path: sealed_path.clone(),
                    source,
                })?
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            let mut seed = Zeroizing::new(vec![0u8; 32]);
            rand::rngs::OsRng.fill_bytes(&mut seed);
            let blob = tpm.seal(seed.clone()).await?;
            std::fs::create_dir_all(dir).map_err(io("create", dir))?;
            let partial = dir.join("log-key.sealed.partial");
            write_synced(&partial, &blob.to_bytes()).map_err(io("write", &partial))?;
            std::fs::rename(&partial, &sealed_path).map_err(io("rename", &sealed_path))?;
            // The rename is durable only once the directory is flushed
            // (POSIX; ext4 usually commits it with a later journal commit,
            // but a power cut before that would lose the key while the
            // store's genesis, committed next, survived: a new key at the
            // next start, and checkpoints no verifier of the identity takes).
            std::fs::File::open(dir)
                .and_then(|dir| dir.sync_all())
                .map_err(io("sync", dir))?;
            tracing::info!(path = %sealed_path.display(), "created the log's checkpoint key, sealed to the TPM");
            seed
        }
        Err(err) => return Err(io("read", &sealed_path)(err)),
    };
    let seed: Zeroizing<[u8; 32]> = Zeroizing::new(
        seed.as_slice()
            .try_into()
            .map_err(|_| LogKeyError::Malformed(sealed_path.clone()))?,
    );
    let signer = Signer::from_seed(name, &seed)?;
    let public = dir.join("log-key.pub");
    std::fs::write(&public, format!("{}\n", signer.verifier().to_key_string()))
        .map_err(io("write", &public))?;
    Ok(signer)
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}
