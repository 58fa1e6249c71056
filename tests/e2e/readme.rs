//! The README's "Using it" block, run as written against a fresh tallyd on a
//! swtpm (issue 14: its `prove` examples failed on a new log, and nothing
//! kept the block true). The block is read from README.md at test time, so
//! the README cannot drift from what is tested.
//!
//! What is changed, and only that: `cargo build` and `export PATH=` lines are
//! not run (the test puts the workspace's binaries first on PATH); on the
//! `export TALLYD_DATA_DIR=` line the two default paths become a temporary
//! data directory and socket; the TPM is the swtpm's, through `TCTI` (which
//! tallyd reads when `tpm.tcti` is unset, as a real TPM's device would be
//! found). Each command must exit 0, except one whose comment says it runs
//! "until killed": it runs for 3 s and is then killed.

use std::path::Path;
use std::process::{Command, Stdio};

use tally_tests::skip::{skip, Needs, Part};
use tally_tests::swtpm::Swtpm;

const DEFAULT_DATA_DIR: &str = "/var/lib/tally";
const DEFAULT_SOCKET: &str = "/run/tally/tally.sock";

/// One shell command of the block (continuation lines joined).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Step {
    text: String,
    long_running: bool,
}

/// The first ```sh block after "## Using it".
fn using_it_block(readme: &str) -> &str {
    let section = &readme[readme.find("\n## Using it\n").expect("a Using it section")..];
    let start = section.find("```sh\n").expect("a sh block in Using it") + "```sh\n".len();
    let end = start + section[start..].find("\n```").expect("the block ends");
    &section[start..end]
}

/// The block's commands.
fn steps(block: &str, data_dir: &str, socket: &str) -> Vec<Step> {
    let mut joined = Vec::new();
    let mut current = String::new();
    for line in block.lines() {
        if let Some(head) = line.strip_suffix('\\') {
            current.push_str(head);
            continue;
        }
        current.push_str(line);
        joined.push(std::mem::take(&mut current));
    }
    let mut run = Vec::new();
    for line in joined {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if trimmed.starts_with("cargo build") || trimmed.starts_with("export PATH=") {
            continue;
        }
        let text = if trimmed.starts_with("export TALLYD_DATA_DIR=") {
            trimmed
                .replace(DEFAULT_DATA_DIR, data_dir)
                .replace(DEFAULT_SOCKET, socket)
        } else {
            assert!(
                !trimmed.contains(DEFAULT_DATA_DIR) && !trimmed.contains("/run/tally/"),
                "README command uses a fixed path instead of the variables: {trimmed}"
            );
            trimmed.to_owned()
        };
        run.push(Step {
            long_running: text.contains("until killed"),
            text,
        });
    }
    run
}

/// A bash script running each step in order, in one shell (variables and
/// the background tallyd carry over), stopping at the first that fails and
/// naming it on stderr as `@@FAIL <index> <exit code>`.
fn script(steps: &[Step], dir: &Path) -> String {
    let mut out = String::from(
        "set -o pipefail\n\
         trap 'kill $(jobs -p) 2>/dev/null' EXIT\n",
    );
    for (index, step) in steps.iter().enumerate() {
        out.push_str(&format!("echo '@@STEP {index}' >&2\n"));
        if step.long_running {
            let file = dir.join(format!("step-{index}.sh"));
            std::fs::write(&file, format!("{}\n", step.text)).unwrap();
            out.push_str(&format!(
                "timeout 3 bash {}; code=$?; [ $code = 124 ] && code=0\n",
                file.display()
            ));
        } else {
            out.push_str(&format!("{}\ncode=$?\n", step.text));
        }
        out.push_str(&format!(
            "if [ $code != 0 ]; then echo \"@@FAIL {index} $code\" >&2; exit 1; fi\n"
        ));
    }
    out.push_str("echo '@@DONE' >&2\n");
    out
}

#[test]
fn the_readme_block_is_read_with_its_substitutions() {
    let block = "cargo build --release\nexport PATH=\"$PWD/target/release:$PATH\"\n\
                 export TALLYD_DATA_DIR=/var/lib/tally TALLY_SOCKET=/run/tally/tally.sock\n\
                 # a comment\ntally append --kind a \\\n    --actor b\n\
                 tally tail --follow   # until killed\ntallyd check\n";
    let run = steps(block, "/tmp/d", "/tmp/s.sock");
    let texts: Vec<&str> = run.iter().map(|step| step.text.as_str()).collect();
    assert_eq!(
        texts,
        [
            "export TALLYD_DATA_DIR=/tmp/d TALLY_SOCKET=/tmp/s.sock",
            "tally append --kind a     --actor b",
            "tally tail --follow   # until killed",
            "tallyd check",
        ]
    );
    assert!(run[2].long_running && !run[1].long_running);
}

#[test]
fn the_using_it_block_runs_as_written() {
    let Some(tpm) = Swtpm::start() else { return };
    for tool in ["openssl", "timeout"] {
        if Command::new(tool).arg("--version").output().is_err() {
            skip(Needs::Ci, Part::Whole, &format!("{tool} is not installed"));
            return;
        }
    }
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let socket = dir.path().join("tally.sock");
    let steps = steps(
        using_it_block(&readme),
        &data_dir.display().to_string(),
        &socket.display().to_string(),
    );
    assert!(steps.len() >= 25, "the block lost its commands: {steps:?}");
    let script_path = dir.path().join("using-it.sh");
    std::fs::write(&script_path, script(&steps, dir.path())).unwrap();

    let bin_dir = tally_tests::binary("tally").unwrap();
    let bin_dir = bin_dir.parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut command = Command::new("timeout");
    command
        .args(["180", "bash"])
        .arg(&script_path)
        .current_dir(dir.path())
        .env("PATH", path)
        .env("TCTI", tpm.tcti())
        .env_remove("TALLY_SOCKET")
        .stdin(Stdio::null());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("TALLYD_") {
            command.env_remove(name);
        }
    }
    let out = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    if let Some(fail) = stderr.lines().find_map(|line| line.strip_prefix("@@FAIL ")) {
        let mut parts = fail.split(' ');
        let index: usize = parts.next().unwrap().parse().unwrap();
        let code = parts.next().unwrap_or("?");
        panic!(
            "README command failed (exit {code}): {}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
            steps[index].text
        );
    }
    assert!(
        out.status.success() && stderr.contains("@@DONE"),
        "the README block did not finish ({:?}):\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        out.status
    );
    // What the block did is there: the proofs verified, the anchors listed.
    assert!(stdout.contains("OK: log "), "{stdout}");
    assert!(stdout.contains("verdict:            PASS"), "{stdout}");
    assert!(
        stdout.contains("proven against the anchored log of"),
        "the range bundle verified: {stdout}"
    );
    assert!(dir.path().join("ten.tally").metadata().unwrap().len() > 0);
    assert!(
        data_dir.join("tpm/identity.json").is_file() || dir.path().join("identity.json").is_file()
    );
}
