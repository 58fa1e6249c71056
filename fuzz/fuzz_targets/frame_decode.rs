//! Raw bytes -> the daemon's framing (`tally_client::frame::codec`, with a
//! small limit so oversized frames are common) -> `Request::decode` on every
//! frame. Must never panic. A request that decodes must also survive an
//! encode/decode round trip unchanged (compared as its encoding).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use tally_client::frame;
use tally_client::proto::Request;
use tokio_util::codec::Decoder;

/// Frame limit for this target: small, so "frame too large" is reached often.
const MAX_FRAME: usize = 1024;

fuzz_target!(|data: &[u8]| {
    let mut codec = frame::codec(MAX_FRAME);
    let mut buf = BytesMut::from(data);
    loop {
        let next = match codec.decode(&mut buf) {
            Ok(Some(frame)) => frame,
            // End of input: what decode_eof says about a partial frame.
            Ok(None) => {
                if let Err(err) = codec.decode_eof(&mut buf) {
                    let _ = frame::is_frame_too_large(&err);
                }
                break;
            }
            Err(err) => {
                // The daemon tells the client "frame too large" from this.
                assert!(
                    frame::is_frame_too_large(&err),
                    "unexpected codec error: {err}"
                );
                break;
            }
        };
        assert!(
            next.len() <= MAX_FRAME,
            "frame of {} bytes passed a {MAX_FRAME}-byte limit",
            next.len()
        );
        if let Ok(request) = Request::decode(next) {
            // Compared as encodings, not with `==`: a typed attribute's NaN
            // double is not equal to itself, but its bits must round-trip.
            let encoded = request.encode_to_vec();
            let again = Request::decode(encoded.as_slice()).map(|again| again.encode_to_vec());
            assert_eq!(
                again.as_ref().ok(),
                Some(&encoded),
                "request does not round-trip"
            );
        }
    }
});
