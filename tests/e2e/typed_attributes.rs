//! Typed attributes end to end: every value kind a client sends comes back
//! unchanged through the client's read and as the right JSON through
//! `tally tail --json`, a log holding them exports and verifies, string-map
//! events (old clients) are shown as before, the daemon refuses each invalid
//! event with BAD_REQUEST and stores nothing of its request, and the hello
//! reply carries the configured limits.

use prost::Message;
use serde_json::{json, Value};
use tally_client::attributes::attribute;
use tally_client::proto::{
    attribute_value::Value as V, response, ArrayValue, Attribute, AttributeValue, ErrorCode, Event,
    Response,
};
use tally_client::ClientError;
use tally_tests::raw::{self, RawConn};
use tally_tests::{event, read_range, stored_event, Daemon, DaemonOpts, Run};

fn array(values: Vec<V>) -> V {
    V::ArrayValue(ArrayValue {
        values: values
            .into_iter()
            .map(|value| AttributeValue { value: Some(value) })
            .collect(),
    })
}

/// One attribute of every kind and edge, each with the JSON `tally tail
/// --json` must show for it.
fn every_kind() -> Vec<(Attribute, Value)> {
    let cases = [
        ("s", V::StringValue("gpt-4o".into()), json!("gpt-4o")),
        ("s.empty", V::StringValue(String::new()), json!("")),
        ("b.true", V::BoolValue(true), json!(true)),
        ("b.false", V::BoolValue(false), json!(false)),
        ("gen_ai.usage.input_tokens", V::IntValue(812), json!(812)),
        ("i.zero", V::IntValue(0), json!(0)),
        ("i.min", V::IntValue(i64::MIN), json!(i64::MIN)),
        ("i.max", V::IntValue(i64::MAX), json!(i64::MAX)),
        ("d", V::DoubleValue(0.25), json!(0.25)),
        ("d.neg", V::DoubleValue(-1e300), json!(-1e300)),
        ("d.nan", V::DoubleValue(f64::NAN), json!("NaN")),
        ("d.inf", V::DoubleValue(f64::INFINITY), json!("Infinity")),
        (
            "d.neg_inf",
            V::DoubleValue(f64::NEG_INFINITY),
            json!("-Infinity"),
        ),
        (
            "bytes",
            V::BytesValue(vec![0, 1, 0xfe, 0xff]),
            json!({"base64": "AAH+/w=="}),
        ),
        (
            "a.s",
            array(vec![V::StringValue("a".into()), V::StringValue("b".into())]),
            json!(["a", "b"]),
        ),
        (
            "a.b",
            array(vec![V::BoolValue(true), V::BoolValue(false)]),
            json!([true, false]),
        ),
        (
            "a.i",
            array(vec![V::IntValue(i64::MIN), V::IntValue(812)]),
            json!([i64::MIN, 812]),
        ),
        (
            "a.d",
            array(vec![V::DoubleValue(1.5), V::DoubleValue(f64::NAN)]),
            json!([1.5, "NaN"]),
        ),
        (
            "a.bytes",
            array(vec![V::BytesValue(vec![0xff]), V::BytesValue(Vec::new())]),
            json!([{"base64": "/w=="}, {"base64": ""}]),
        ),
        ("a.empty", array(Vec::new()), json!([])),
    ];
    cases
        .into_iter()
        .map(|(key, value, json)| (attribute(key, value), json))
        .collect()
}

fn typed_event(typed_attributes: Vec<Attribute>) -> Event {
    Event {
        kind: "gen_ai.chat".into(),
        actor: "agent-7".into(),
        subject: "req-1".into(),
        attributes: [("model_id".to_owned(), "llama-3-8b".to_owned())].into(),
        typed_attributes,
        ..Event::default()
    }
}

fn ok(run: Run) -> Run {
    assert_eq!(run.code, 0, "{run:?}");
    run
}

/// `tally tail --json` from seq 0: one JSON object per record.
fn tail_json(daemon: &Daemon) -> anyhow::Result<Vec<Value>> {
    let run = ok(daemon.tally(&["tail", "--json"])?);
    run.stdout
        .lines()
        .map(|line| Ok(serde_json::from_str(line)?))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_round_trips_through_read_and_tail_json_and_verifies() -> anyhow::Result<()> {
    let daemon = Daemon::start(DaemonOpts::default())?;
    let cases = every_kind();
    let sent = typed_event(cases.iter().map(|(a, _)| a.clone()).collect());
    let mut client = daemon.client().await?;
    let acks = client.append(vec![sent.clone(), event(1)]).await?;
    assert_eq!(acks.len(), 2);

    // The client's read: the stored event is what was sent. Compared as
    // encodings, since NaN is not equal to itself.
    let records = read_range(&mut client, 0, 2).await?;
    let stored = stored_event(&records[0])?;
    assert_eq!(stored.encode_to_vec(), sent.encode_to_vec());
    assert_eq!(stored.typed_attributes.len(), cases.len());
    let nan = stored
        .typed_attributes
        .iter()
        .find(|attribute| attribute.key == "d.nan")
        .and_then(|attribute| attribute.value.as_ref()?.value.clone());
    let Some(V::DoubleValue(nan)) = nan else {
        panic!("d.nan is not a double: {stored:?}");
    };
    assert!(nan.is_nan());
    assert_eq!(stored_event(&records[1])?, event(1));

    // tail --json: one object of both fields, typed values as JSON values.
    let tailed = tail_json(&daemon)?;
    assert_eq!(tailed.len(), 2, "{tailed:?}");
    let mut expected: serde_json::Map<String, Value> = cases
        .iter()
        .map(|(attribute, json)| (attribute.key.clone(), json.clone()))
        .collect();
    expected.insert("model_id".into(), json!("llama-3-8b"));
    assert_eq!(tailed[0]["attributes"], Value::Object(expected));
    assert_eq!(tailed[0]["attributes"]["gen_ai.usage.input_tokens"], 812);
    assert!(tailed[0]["attributes"]["gen_ai.usage.input_tokens"].is_i64());
    assert_eq!(tailed[0]["kind"], "gen_ai.chat");

    // The human line shows them as text.
    let run = ok(daemon.tally(&["tail"])?);
    let first = run.stdout.lines().next().unwrap_or_default();
    for needle in [
        " model_id=llama-3-8b ",
        " gen_ai.usage.input_tokens=812 ",
        " i.min=-9223372036854775808 ",
        " d.nan=NaN ",
        " bytes=base64:AAH+/w== ",
        " a.s=[\"a\",\"b\"] ",
        " a.empty=[] ",
    ] {
        assert!(first.contains(needle), "{needle:?} not in {first:?}");
    }

    let verified = daemon.export_and_verify()?;
    assert_eq!(verified.size, 2);
    assert_eq!(verified.head_hash, hex::encode(acks[1].entry_hash));
    Ok(())
}

/// An old client's event (string map only) is stored and shown as before:
/// every value a JSON string, even when it looks like a number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_string_map_only_event_is_shown_as_before() -> anyhow::Result<()> {
    let daemon = Daemon::start(DaemonOpts::default())?;
    let mut client = daemon.client().await?;
    client.append(vec![event(812)]).await?;
    let records = read_range(&mut client, 0, 1).await?;
    let stored = stored_event(&records[0])?;
    assert_eq!(stored, event(812));
    assert!(stored.typed_attributes.is_empty());
    let tailed = tail_json(&daemon)?;
    assert_eq!(tailed[0]["attributes"], json!({"i": "812"}));
    let run = ok(daemon.tally(&["tail"])?);
    let line = run.stdout.trim_end();
    assert!(
        line.contains(" test.event actor=tally-e2e subject=event-812 [uid=")
            && line.ends_with("] i=812 (256 payload bytes)"),
        "{run:?}"
    );
    Ok(())
}

/// The invalid events, each with the rule the daemon's message must name.
fn invalid_events() -> Vec<(&'static str, Event, &'static str)> {
    let with = |typed: Vec<Attribute>| typed_event(typed);
    let mut empty_kind = event(0);
    empty_kind.kind.clear();
    let mut empty_map_key = event(0);
    empty_map_key.attributes.insert(String::new(), "x".into());
    let mut reserved_kind = event(0);
    reserved_kind.kind = "tally.access_denied".into();
    vec![
        ("empty kind", empty_kind, "the event's kind is empty"),
        (
            "a kind reserved for the daemon",
            reserved_kind,
            "kind \"tally.access_denied\" is reserved: kinds starting \"tally.\" are written by tallyd only",
        ),
        (
            "empty typed key",
            with(vec![attribute("", V::IntValue(1))]),
            "an attribute has an empty key",
        ),
        (
            "empty map key",
            empty_map_key,
            "an attribute has an empty key",
        ),
        (
            "duplicate typed key",
            with(vec![
                attribute("tokens", V::IntValue(1)),
                attribute("tokens", V::IntValue(2)),
            ]),
            "attribute \"tokens\" appears more than once",
        ),
        (
            "key in the map and the typed list",
            with(vec![attribute("model_id", V::StringValue("x".into()))]),
            "attribute \"model_id\" appears more than once",
        ),
        (
            "no value",
            with(vec![Attribute {
                key: "v".into(),
                value: None,
            }]),
            "attribute \"v\" has no value",
        ),
        (
            "an empty value",
            with(vec![Attribute {
                key: "v".into(),
                value: Some(AttributeValue { value: None }),
            }]),
            "attribute \"v\" has no value",
        ),
        (
            "nested array",
            with(vec![attribute("n", array(vec![array(Vec::new())]))]),
            "attribute \"n\": arrays may not nest",
        ),
        (
            "mixed array",
            with(vec![attribute(
                "m",
                array(vec![V::IntValue(1), V::DoubleValue(1.0)]),
            )]),
            "attribute \"m\": array elements must all be of one kind",
        ),
        (
            "unset array element",
            with(vec![attribute(
                "u",
                V::ArrayValue(ArrayValue {
                    values: vec![AttributeValue { value: None }],
                }),
            )]),
            "attribute \"u\": an array element has no value",
        ),
    ]
}

/// Each invalid event, second of three in one append over a raw connection
/// (no client library to catch it first), gets BAD_REQUEST naming its
/// position and rule; the log does not grow, the connection stays usable,
/// and a valid append afterwards is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_invalid_event_is_refused_and_nothing_of_its_append_is_stored() -> anyhow::Result<()> {
    let daemon = Daemon::start(DaemonOpts::default())?;
    let mut client = daemon.client().await?;
    client.append(vec![event(0)]).await?;
    let mut conn = RawConn::greeted(&daemon.socket()).await?;
    for (id, (name, bad, rule)) in (10..).zip(invalid_events()) {
        let good = typed_event(vec![attribute("ok", V::IntValue(1))]);
        conn.send(&raw::append(id, vec![good.clone(), bad, good]))
            .await?;
        let (got_id, code, message) = conn.recv_error().await?;
        assert_eq!(got_id, id, "{name}");
        assert_eq!(code, ErrorCode::BadRequest, "{name}: {message}");
        assert_eq!(message, format!("event 1: {rule}"), "{name}");
        assert_eq!(client.status().await?.size, 1, "{name}: the log grew");
    }
    // The same connection appends a valid event of every kind afterwards.
    let sent = typed_event(every_kind().into_iter().map(|(a, _)| a).collect());
    conn.send(&raw::append(99, vec![sent])).await?;
    match conn.recv().await? {
        Some(Response {
            id: 99,
            body: Some(response::Body::Append(reply)),
        }) => assert_eq!(reply.acks.len(), 1),
        other => panic!("expected an append reply, got {other:?}"),
    }
    assert_eq!(client.status().await?.size, 2);
    let records = read_range(&mut client, 0, 2).await?;
    assert_eq!(stored_event(&records[0])?, event(0));
    Ok(())
}

/// The Rust client's append of an invalid event is refused the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clients_append_of_an_invalid_event_is_refused() -> anyhow::Result<()> {
    let daemon = Daemon::start(DaemonOpts::default())?;
    let mut client = daemon.client().await?;
    let mut empty_kind = event(1);
    empty_kind.kind.clear();
    let err = client
        .append(vec![event(0), empty_kind])
        .await
        .expect_err("an empty kind must be refused");
    match err {
        ClientError::Server { code, message } => {
            assert_eq!(code, ErrorCode::BadRequest, "{message}");
            assert_eq!(message, "event 1: the event's kind is empty");
        }
        // A client that checks the rules itself before sending says so in
        // its own words; nothing may be sent either way.
        other => assert!(other.to_string().contains("kind is empty"), "{other}"),
    }
    assert_eq!(client.status().await?.size, 0, "nothing may be stored");
    Ok(())
}

/// The hello reply carries the daemon's configured limits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_reply_carries_the_configured_limits() -> anyhow::Result<()> {
    let daemon = Daemon::start(DaemonOpts::with_config(
        "max_frame_bytes = 123456\nmax_events_per_append = 77",
    ))?;
    let client = daemon.client().await?;
    let hello = client.server_hello();
    assert_eq!(hello.max_frame_bytes, 123_456);
    assert_eq!(hello.max_events_per_append, 77);
    Ok(())
}

/// Root's edit of a typed value where it is stored: the daemon stopped, its
/// LMDB store opened beside the genuine files and the token count of seq 1
/// changed from 812 to 813 in the record bytes. The restarted daemon serves
/// the edit, but its export refuses the log and `tallyd check` fails, each
/// naming the record (what a bundle edited the same way gets: tamper.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roots_edit_of_a_stored_typed_value_is_detected() {
    let Some(tpm) = tally_tests::swtpm::Swtpm::start() else {
        return;
    };
    let mut daemon = tally_tests::anchored::daemon(&tpm, "");
    let identity = daemon.dir().join("identity.json");
    let json = tally_tests::anchored::ok(daemon.tallyd(&["identity"]).unwrap(), "identity");
    std::fs::write(&identity, json).unwrap();
    let tokens = |n: i64| typed_event(vec![attribute("gen_ai.usage.input_tokens", V::IntValue(n))]);
    let mut client = daemon.client().await.unwrap();
    client
        .append(vec![tokens(100), tokens(812), tokens(300)])
        .await
        .unwrap();
    drop(client);
    tally_tests::anchored::anchor(&daemon);
    let verify = |daemon: &Daemon, name: &str| {
        let bundle = daemon.dir().join(name);
        let out = bundle.to_str().unwrap();
        tally_tests::anchored::ok(daemon.tally(&["export", "--out", out]).unwrap(), "export");
        daemon
            .tally(&["verify", out, "--identity", identity.to_str().unwrap()])
            .unwrap()
    };
    let honest = verify(&daemon, "honest.bundle");
    assert_ne!(
        honest.code, 1,
        "the untouched log must not fail: {honest:?}"
    );

    assert!(daemon.terminate().unwrap().success());
    // int_value 812 is `18 ac 06`; 813 is `18 ad 06` (same length).
    tally_tests::store_edit::edit(&daemon.data_dir(), |wtxn, dbs| {
        let record = dbs
            .records
            .get(wtxn, &1)?
            .expect("seq 1 is stored")
            .to_vec();
        let at = record
            .windows(3)
            .position(|w| w == [0x18, 0xac, 0x06])
            .expect("the stored record holds int_value 812");
        let mut edited = record;
        edited[at + 1] = 0xad;
        dbs.records.put(wtxn, &1, &edited)?;
        Ok(())
    })
    .unwrap();
    daemon.restart().unwrap();
    // The daemon serves each record with the entry hash its successor links
    // to (not a hash of the edited bytes), and tail recomputes it: the edit
    // is refused by name, not displayed.
    let shown = daemon.tally(&["tail", "--from", "1", "--json"]).unwrap();
    assert_eq!(
        shown.code, 2,
        "tail must refuse the edited record: {shown:?}"
    );
    assert!(
        shown
            .stderr
            .contains("seq 1: the daemon's entry hash does not match the record"),
        "tail names the edited record: {shown:?}"
    );
    assert!(
        !shown.stdout.contains("\"gen_ai.usage.input_tokens\":813"),
        "the edited value is not shown as if it were the log's: {shown:?}"
    );
    // The export checks the chain as it reads: it refuses the edited log,
    // naming the first record whose link no longer matches.
    let out = daemon.dir().join("edited.bundle");
    let run = daemon
        .tally(&["export", "--out", out.to_str().unwrap()])
        .unwrap();
    assert_eq!(run.code, 2, "an edited store must not export: {run:?}");
    assert!(
        run.stderr.contains("chain broken at seq 2"),
        "the refusal names the record after the edit: {run:?}"
    );
    // And with the daemon stopped, tallyd's own check of the store names it.
    assert!(daemon.terminate().unwrap().success());
    let check = daemon.tallyd(&["check"]).unwrap();
    assert_ne!(
        check.code, 0,
        "tallyd check must fail on the edited store: {check:?}"
    );
    assert!(
        check.stderr.contains("chain broken at seq 2"),
        "tallyd check names the record after the edit: {check:?}"
    );
}
