//! The NBD option phase (server side) fed arbitrary client bytes. Checks
//! that every reply the server sends is well framed.
#![no_main]

#[path = "mem_backend.rs"]
mod mem_backend;

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use toolbox::nbd::export::{Export, Exports};
use toolbox::nbd::negotiate::{greet, options};
use toolbox::nbd::proto::OPTION_REPLY_MAGIC;

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // Two exports, the second offering qemu:allocation-depth; a
        // second-byte bit says whether "" means the default one.
        let export = |name: &str, depth: bool| {
            Arc::new(Export {
                name: name.into(),
                description: Some("fuzz".into()),
                backend: Arc::new(mem_backend::MemBackend::new(1 << 16)),
                read_only: data.first().is_some_and(|b| b & 1 == 1),
                multi_conn: true,
                rotational: false,
                allocation_depth: depth,
            })
        };
        let exports = Exports::new(
            vec![export("disk", false), export("b", true)],
            data.get(1).is_some_and(|b| b & 1 == 1),
        );
        let (mut client, mut server) = tokio::io::duplex(1 << 20);
        client.write_all(data).await.unwrap();
        client.shutdown().await.unwrap();
        // An odd last byte: TLS required (the server then refuses options
        // with NBD_REP_ERR_TLS_REQD and stops at an acknowledged STARTTLS).
        let tls_required = data.last().is_some_and(|b| b & 1 == 1);
        if let Ok(mut phase) = greet(&mut server, tls_required).await {
            let _ = options(&mut server, &exports, &mut phase).await;
        }
        drop(server);
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        assert!(out.len() >= 18, "no greeting");
        assert_eq!(&out[..16], b"NBDMAGICIHAVEOPT");
        // Option replies: magic, option, type, length, then exactly length bytes.
        // (A transmission-phase start ends the framing: stop at the first
        // non-reply, which only EXPORT_NAME's raw answer can be.)
        let mut at = 18;
        while at + 20 <= out.len() {
            let magic = u64::from_be_bytes(out[at..at + 8].try_into().unwrap());
            if magic != OPTION_REPLY_MAGIC {
                assert!(
                    out.len() - at == 10 || out.len() - at == 134,
                    "stray bytes after replies"
                );
                return;
            }
            let len = u32::from_be_bytes(out[at + 16..at + 20].try_into().unwrap()) as usize;
            assert!(
                at + 20 + len <= out.len(),
                "reply claims more than was sent"
            );
            at += 20 + len;
        }
        assert!(at == out.len() || out.len() - at == 10 || out.len() - at == 134);
    });
});
