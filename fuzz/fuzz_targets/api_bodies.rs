//! API request bodies: whatever JSON arrives, decoding never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_cnm::api::types::{ConnectRequest, CreateNetworkRequest, DisconnectRequest};

fuzz_target!(|body: &[u8]| {
    let _ = serde_json::from_slice::<CreateNetworkRequest>(body);
    let _ = serde_json::from_slice::<ConnectRequest>(body);
    let _ = serde_json::from_slice::<DisconnectRequest>(body);
    if let Ok(capture) = serde_json::from_slice::<weft_cnm::capture::CaptureRequest>(body) {
        let _ = capture.problem();
    }
    let _ = serde_json::from_slice::<weft_cnm::attach::AttachRequest>(body);
});
