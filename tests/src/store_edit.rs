//! Root's edits of a stopped daemon's LMDB store, the way an attacker with a
//! Python LMDB binding would make them: open the environment beside the
//! genuine tallyd's files and put or delete keys in its named databases.

use std::path::Path;

use heed::types::{Bytes, Str, U64};
use heed::{byteorder::BigEndian, CommitOrAbort, Database, Env, EnvOpenOptions, RwTxn};

/// The store's named databases.
#[derive(Debug, Clone, Copy)]
pub struct Dbs {
    pub records: Database<'static, U64<BigEndian>, Bytes>,
    pub anchors: Database<'static, U64<BigEndian>, Bytes>,
    pub meta: Database<'static, Str, Bytes>,
    pub tree: Database<'static, Bytes, Bytes>,
    /// The receive-time index (docs/DESIGN.md, section 4c).
    pub times: Database<'static, Bytes, Bytes>,
    /// Sealed openings by seq (docs/DESIGN.md, section 3b).
    pub content: Database<'static, U64<BigEndian>, Bytes>,
}

/// Opens `<data_dir>/store` (the daemon must be stopped) and runs `edit` in
/// one committed write transaction.
pub fn edit<T>(
    data_dir: &Path,
    edit: impl FnOnce(&mut RwTxn<'_>, &Dbs) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let env = open(data_dir)?;
    // heed 0.23: databases are opened in a transaction of their own.
    let opened = env.create_databases_and_commit(env.write_txn()?, |opener, wtxn| {
        let dbs = (
            opener.create_database(wtxn, Some("records"))?,
            opener.create_database(wtxn, Some("anchors"))?,
            opener.create_database(wtxn, Some("meta"))?,
            opener.create_database(wtxn, Some("tree"))?,
            opener.create_database(wtxn, Some("times"))?,
            opener.create_database(wtxn, Some("content"))?,
        );
        Ok::<_, heed::Error>(CommitOrAbort::<_, std::convert::Infallible>::Commit(dbs))
    })?;
    let (records, anchors, meta, tree, times, content) = match opened {
        CommitOrAbort::Commit(dbs) => dbs,
        CommitOrAbort::Abort(never) => match never {},
    };
    let dbs = Dbs {
        records,
        anchors,
        meta,
        tree,
        times,
        content,
    };
    let mut wtxn = env.write_txn()?;
    let out = edit(&mut wtxn, &dbs)?;
    wtxn.commit()?;
    Ok(out)
}

fn open(data_dir: &Path) -> anyhow::Result<Env> {
    let mut options = EnvOpenOptions::new();
    options.max_dbs(8).map_size(1 << 30);
    // SAFETY: the daemon is stopped and nothing else in this process opens
    // this environment, which is all heed asks.
    Ok(unsafe { options.open(data_dir.join("store")) }?)
}

/// Deletes every anchor (what a restored copy "with its anchors deleted" is).
pub fn delete_all_anchors(data_dir: &Path) -> anyhow::Result<usize> {
    edit(data_dir, |wtxn, dbs| {
        let count = dbs.anchors.len(wtxn)? as usize;
        dbs.anchors.clear(wtxn)?;
        Ok(count)
    })
}

/// Empties the log but keeps its meta keys that name it (`log_id`,
/// `journal_key`, `identity`, `format_version`): the start of a log
/// fabricated from seq 0 under the genuine log id.
pub fn empty_the_log(data_dir: &Path) -> anyhow::Result<()> {
    edit(data_dir, |wtxn, dbs| {
        dbs.records.clear(wtxn)?;
        dbs.content.clear(wtxn)?;
        dbs.anchors.clear(wtxn)?;
        dbs.tree.clear(wtxn)?;
        // An empty log's head and Merkle frontier, as a fresh store has them.
        let mut head = 0u64.to_be_bytes().to_vec();
        head.extend_from_slice(&tally_attest::GENESIS_PREV);
        dbs.meta.put(wtxn, "head", &head)?;
        let frontier = tally_attest::merkle::Frontier::new().to_bytes();
        dbs.meta.put(wtxn, "frontier", &frontier)?;
        Ok(())
    })
}

/// Writes a meta key (e.g. v1's `anchor_intent`, which must mean nothing now).
pub fn put_meta(data_dir: &Path, key: &str, value: &[u8]) -> anyhow::Result<()> {
    edit(data_dir, |wtxn, dbs| Ok(dbs.meta.put(wtxn, key, value)?))
}

/// The store's meta keys, for tests that look for what they must not find.
pub fn meta_keys(data_dir: &Path) -> anyhow::Result<Vec<String>> {
    edit(data_dir, |wtxn, dbs| {
        let mut keys = Vec::new();
        for entry in dbs.meta.iter(wtxn)? {
            keys.push(entry?.0.to_owned());
        }
        Ok(keys)
    })
}
