//! The parsers that read what others send, one function each, for
//! coverage-guided fuzzing (`fuzz/`, `cargo fuzz`) and for replaying the
//! committed corpus on stable (`tests/corpus.rs`, in `scripts/test`).
//!
//! Each function must not panic on any input; where a parser accepts, it
//! also checks that what it accepted survives its own encoding (a parser
//! and a writer that disagree would corrupt documents between services).

use prost::Message;
use rtc_core::{Assignment, Document, Heartbeat, TokenSigner};
use rtc_keda_scaler::proto::{GetMetricsRequest, ScaledObjectRef};

/// A fuzz target: takes any bytes, panics only on a bug.
pub type Target = fn(&[u8]);

/// Every target, by the name of its corpus folder.
pub const TARGETS: [(&str, Target); 7] = [
    ("client_frame", client_frame),
    ("connect_token", connect_token),
    ("jwt", jwt),
    ("heartbeat", heartbeat),
    ("assignment", assignment),
    ("decision", decision),
    ("grpc_request", grpc_request),
];

/// A WebSocket text frame from a client.
pub fn client_frame(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(frame) = rtc_core::protocol::parse_client_frame(text, 64 * 1024) {
        let again = rtc_core::protocol::parse_client_frame(&frame.to_json(), usize::MAX);
        assert_eq!(again.as_ref().ok(), Some(&frame), "a frame differs after its own encoding");
    }
}

/// The `token` query parameter of a connect.
pub fn connect_token(data: &[u8]) {
    let Ok(token) = std::str::from_utf8(data) else { return };
    let signer = TokenSigner::new(b"fuzz-secret");
    if let Ok(claims) = signer.verify(token, 0) {
        // Only a token this secret signed verifies: signing its claims again
        // must verify too.
        assert!(signer.verify(&signer.sign(&claims), 0).is_ok());
    }
    let _ = rtc_core::token::fingerprint(token);
}

/// The `Authorization` header of a route request, with JWT auth on.
pub fn jwt(data: &[u8]) {
    let Ok(header) = std::str::from_utf8(data) else { return };
    let auth = rtc_load_balancer::auth::Auth::hs256(b"fuzz-secret").expecting(Some("rtc"), Some("rtc-route"));
    let _ = auth.user(Some(header), None);
    let _ = auth.user(Some(&format!("Bearer {header}")), Some("u1"));
}

/// A heartbeat entry of the stream, as the load balancer reads it.
pub fn heartbeat(data: &[u8]) {
    round_trip::<Heartbeat>(data);
}

/// The assignment document, as nodes and load balancers read it.
pub fn assignment(data: &[u8]) {
    round_trip::<Assignment>(data);
}

/// The scale decision, as the KEDA scaler reads it.
pub fn decision(data: &[u8]) {
    round_trip::<rtc_core::Decision>(data);
}

/// A gRPC request body of the KEDA scaler's service.
pub fn grpc_request(data: &[u8]) {
    if let Ok(request) = GetMetricsRequest::decode(data) {
        assert_eq!(GetMetricsRequest::decode(request.encode_to_vec().as_slice()).ok(), Some(request));
    }
    if let Ok(reference) = ScaledObjectRef::decode(data) {
        assert_eq!(ScaledObjectRef::decode(reference.encode_to_vec().as_slice()).ok(), Some(reference));
    }
}

fn round_trip<D: Document + PartialEq + std::fmt::Debug>(data: &[u8]) {
    if let Ok(doc) = D::from_json(data) {
        let again = D::from_json(doc.to_json().as_bytes());
        assert_eq!(again.as_ref().ok(), Some(&doc), "a document differs after its own encoding");
    }
}
