//! Docker plugin call bodies: whatever JSON dockerd (or anything that can
//! reach the plugin socket) sends, decoding never panics, and what the
//! option and port parsers accept is what weft can make.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_cnm::docker_plugin::network_driver::{parse_network_options, port_mapping};
use weft_cnm::docker_plugin::protocol::{
    CreateEndpointRequest, CreateNetworkRequest, EndpointRequest, JoinRequest, PortBinding,
    ProgramExternalConnectivityRequest, ReleaseAddressRequest, ReleasePoolRequest,
    RequestAddressRequest, RequestPoolRequest,
};
use weft_cnm::model::DriverKind;

fuzz_target!(|body: &[u8]| {
    if let Ok(request) = serde_json::from_slice::<CreateNetworkRequest>(body) {
        if let Ok(options) = parse_network_options(&request.options.unwrap_or_default()) {
            assert!(matches!(
                options.driver,
                None | Some(DriverKind::Bridge | DriverKind::Overlay)
            ));
            assert!(!options
                .driver_options
                .keys()
                .any(|k| k.starts_with("com.docker.network.")));
        }
    }
    if let Ok(bindings) = serde_json::from_slice::<Vec<PortBinding>>(body) {
        for binding in &bindings {
            if let Ok(mapping) = port_mapping(binding) {
                assert!(mapping.container_port != 0);
                assert_eq!(mapping.host_port, binding.host_port);
            }
        }
    }
    let _ = serde_json::from_slice::<CreateEndpointRequest>(body);
    let _ = serde_json::from_slice::<EndpointRequest>(body);
    let _ = serde_json::from_slice::<JoinRequest>(body);
    let _ = serde_json::from_slice::<ProgramExternalConnectivityRequest>(body);
    let _ = serde_json::from_slice::<RequestPoolRequest>(body);
    let _ = serde_json::from_slice::<ReleasePoolRequest>(body);
    let _ = serde_json::from_slice::<RequestAddressRequest>(body);
    let _ = serde_json::from_slice::<ReleaseAddressRequest>(body);
});
