//! vsock ingest: the listener binds (a second daemon cannot take its port),
//! and, where the kernel has a vsock loopback transport, a guest-style client
//! goes through the same connection handler as Unix peers: default deny,
//! allowed by a grant for its CID, its CID and port recorded as the peer.

use std::time::Duration;

use rand::Rng;
use tally_client::proto::{peer, ErrorCode};
use tally_client::{Client, ClientError};
use tally_tests::skip::{skip, Needs, Part};
use tally_tests::{seed, Daemon, DaemonOpts};

/// VMADDR_CID_LOCAL: this host, through the vsock_loopback transport.
const CID_LOCAL: u32 = 1;

fn vsock_available() -> Result<(), String> {
    if !std::path::Path::new("/dev/vsock").exists() {
        return Err("no /dev/vsock on this machine".into());
    }
    Ok(())
}

/// A port unlikely to be taken: from the test's seeded generator, offset by
/// the process id so that suites running at once on one machine differ.
fn free_port(rng: &mut impl Rng) -> u32 {
    20_000 + (std::process::id() % 20_000) + rng.gen_range(0..10_000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vsock_listener_binds_and_serves_through_the_shared_handler() {
    if let Err(why) = vsock_available() {
        skip(Needs::ThisMachine, Part::Whole, &why.to_string());
        return;
    }
    let port = free_port(&mut seed::rng("vsock"));
    let config = format!(
        "vsock_port = {port}\n[access]\n[[access.grants]]\nvsock_cid = {CID_LOCAL}\nroles = [\"append\", \"read\"]\n"
    );
    let daemon = match Daemon::start(DaemonOpts::with_config(&config)) {
        Ok(daemon) => daemon,
        Err(err) if err.to_string().contains("cannot listen on vsock") => {
            skip(
                Needs::ThisMachine,
                Part::Whole,
                &format!("this kernel refuses vsock listeners: {err}"),
            );
            return;
        }
        Err(err) => panic!("{err}"),
    };
    assert!(
        daemon.stderr().contains("listening on vsock"),
        "{}",
        daemon.stderr()
    );

    // The port is really bound: a second daemon cannot listen on it.
    let other = Daemon::start(DaemonOpts::with_config(&format!("vsock_port = {port}\n")));
    let refused = other
        .expect_err("two daemons listened on one vsock port")
        .to_string();
    assert!(
        refused.contains(&format!("cannot listen on vsock port {port}")),
        "{refused}"
    );

    // The round trip needs a vsock loopback transport in the kernel.
    let connected = tokio::time::timeout(
        Duration::from_secs(3),
        Client::connect_vsock(CID_LOCAL, port, "vsock-e2e"),
    )
    .await;
    let mut client = match connected {
        Ok(Ok(mut client)) => {
            client.set_timeout(Some(tally_tests::CLIENT_TIMEOUT));
            client
        }
        Ok(Err(err)) => {
            skip(
                Needs::ThisMachine,
                Part::Only("round trip"),
                &format!(
                    "cannot connect to our own vsock listener ({err}); \
                     this kernel has no vsock loopback transport (modprobe vsock_loopback). \
                     The Unix-socket suite runs the same connection handler."
                ),
            );
            return;
        }
        Err(_) => {
            skip(
                Needs::ThisMachine,
                Part::Only("round trip"),
                "vsock connect timed out; no loopback transport here",
            );
            return;
        }
    };
    let acks = client.append(tally_tests::events(0, 3)).await.unwrap();
    assert_eq!(acks.len(), 3);
    let records = client.read(0, 3).await.unwrap();
    let body = tally_client::record::decode(&records[0].record)
        .unwrap()
        .body;
    match body.peer.and_then(|peer| peer.kind) {
        Some(peer::Kind::Vsock(vsock)) => assert_eq!(vsock.cid, CID_LOCAL),
        other => panic!("expected a vsock peer, got {other:?}"),
    }
    drop(client);

    // Without a grant for its CID, a vsock peer may do nothing.
    let ungranted = Daemon::start(DaemonOpts::with_config(&format!(
        "vsock_port = {}\n",
        port + 1
    )))
    .unwrap();
    let mut client = tokio::time::timeout(
        tally_tests::CLIENT_TIMEOUT,
        Client::connect_vsock(CID_LOCAL, port + 1, "vsock-e2e"),
    )
    .await
    .unwrap()
    .unwrap();
    client.set_timeout(Some(tally_tests::CLIENT_TIMEOUT));
    match client.append(tally_tests::events(0, 1)).await {
        Err(ClientError::Server {
            code: ErrorCode::PermissionDenied,
            ..
        }) => {}
        other => panic!("expected PermissionDenied, got {other:?}"),
    }
    drop(ungranted);
}
