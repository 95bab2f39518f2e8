//! Build-time work: the linker script, the radio's NVRAM block, and the settings that come
//! from the environment (never from the source).

use std::env;
use std::fs;
use std::path::PathBuf;

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));

    // memory.x where the linker finds it.
    fs::copy("memory.x", out.join("memory.x")).expect("memory.x is next to Cargo.toml");
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed=memory.x");

    // The NVRAM block: non-comment lines, each NUL-terminated, then two NULs.
    let text =
        fs::read_to_string("cyw43439-nvram.txt").expect("cyw43439-nvram.txt is next to Cargo.toml");
    let mut nvram = Vec::new();
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        nvram.extend_from_slice(line.as_bytes());
        nvram.push(0);
    }
    nvram.extend_from_slice(&[0, 0]);
    fs::write(out.join("nvram.bin"), &nvram).expect("OUT_DIR is writable");
    println!("cargo:rerun-if-changed=cyw43439-nvram.txt");

    // Settings: required ones stop the build with a clear message when missing.
    for (name, required) in [
        ("TERN_WIFI_SSID", true),
        ("TERN_WIFI_PASSWORD", true),
        ("TERN_BROKER_HOST", true),
        ("TERN_BROKER_PORT", false),
        ("TERN_BROKER_TLS", false),
        ("TERN_MQTT_USER", false),
        ("TERN_MQTT_PASSWORD", false),
        ("TERN_CLIENT_ID", false),
        ("TERN_TOPIC", false),
    ] {
        println!("cargo:rerun-if-env-changed={name}");
        if required && env::var_os(name).is_none() {
            panic!("set {name} when building (see README.md): WiFi and broker settings come from the environment");
        }
    }
}
