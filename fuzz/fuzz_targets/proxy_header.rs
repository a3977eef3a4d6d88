//! Any bytes as the start of a PROXY-protocol connection: framing with its size cap and the
//! `ppp` parse; never a panic, never a read past the announced header.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokio::time::{Duration, Instant};

fuzz_target!(|data: &[u8]| {
    let _ = gatehouse_ssh::proxy::client_address(data);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut reader = data;
        let deadline = Instant::now() + Duration::from_secs(1);
        if gatehouse_ssh::proxy::read_header(&mut reader, deadline).await.is_ok() {
            let consumed = data.len() - reader.len();
            assert!(consumed <= 16 + gatehouse_ssh::proxy::MAX_VARIABLE_LEN);
        }
    });
});
