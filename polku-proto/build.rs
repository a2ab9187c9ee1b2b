//! Compiles the .proto files with protox (no system protoc) and generates the
//! Rust code with tonic-prost-build. The encoded descriptor set is written to
//! OUT_DIR as well: it feeds gRPC server reflection.

use prost::Message;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/polku/v1/event.proto",
        "proto/polku/v1/gateway.proto",
        "proto/polku/v1/plugin.proto",
        "proto/polku/v1/admin.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("polku_descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        // The event types live in polku-core, which derives prost::Message
        // itself: events decode straight off the wire into the pipeline's type,
        // and a batch sizes its vector once.
        .extern_path(".polku.v1.Event", "::polku_core::Event")
        .extern_path(".polku.v1.EventBatch", "::polku_core::EventBatch")
        .extern_path(".polku.v1.Severity", "::polku_core::Severity")
        .bytes(".polku.v1")
        // Decode failures are the client's fault: INVALID_ARGUMENT, not INTERNAL.
        .codec_path("crate::codec::PolkuCodec")
        .emit_rerun_if_changed(false)
        .compile_fds(fds)?;
    Ok(())
}
