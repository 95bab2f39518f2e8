//! The WebSocket listener's path: the upgrade, then MQTT bytes out of frames; any bytes end in
//! an error or the end of the stream, never a panic or a hang.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else { return };
    tern_server::fuzzing::websocket(rest, first % 4 != 0);
});
