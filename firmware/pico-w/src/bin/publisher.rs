//! The tutorial's publisher: connects to the broker and publishes a reading to `TERN_TOPIC`
//! every second at QoS 1, pinging on time; after any failure it waits 2 s and starts over.
#![no_std]
#![no_main]

use embassy_executor::Spawner;
use embassy_futures::select::{select, Either};
use embassy_rp::clocks::RoscRng;
use embassy_time::{Duration, Instant, Timer};
use embedded_io_async::{Read, Write};
use embedded_tls::{Aes128GcmSha256, TlsConfig, TlsConnection, TlsContext, UnsecureProvider};
use panic_halt as _;
use tern_client::embedded::Client;
use tern_client::{Options, QoS};
use tern_pico_w::{clock, decimal, tcp, wifi, WifiPins, BROKER_HOST, BROKER_TLS, MQTT_PASSWORD, MQTT_USER, TOPIC};

const CLIENT_ID: &str = match option_env!("TERN_CLIENT_ID") {
    Some(id) => id,
    None => "pico-pub",
};

#[embassy_executor::main]
async fn main(spawner: Spawner) {
    let p = embassy_rp::init(Default::default());
    let pins = WifiPins { pwr: p.PIN_23, cs: p.PIN_25, dio: p.PIN_24, clk: p.PIN_29, pio: p.PIO0, dma: p.DMA_CH0 };
    let (stack, _control) = wifi(spawner, pins).await;
    let mut reading = 0u32;
    loop {
        session(stack, &mut reading).await;
        Timer::after(Duration::from_secs(2)).await;
    }
}

/// One connection, until something fails.
async fn session(stack: embassy_net::Stack<'static>, reading: &mut u32) {
    let (mut rx, mut tx) = ([0u8; 2048], [0u8; 2048]);
    let Some(socket) = tcp(stack, &mut rx, &mut tx).await else { return };
    let (mut mqtt_rx, mut mqtt_tx) = ([0u8; 512], [0u8; 512]);
    if BROKER_TLS {
        let (mut record_rx, mut record_tx) = ([0u8; 16_640], [0u8; 4096]);
        let mut tls = TlsConnection::new(socket, &mut record_rx, &mut record_tx);
        let config = TlsConfig::new().with_server_name(BROKER_HOST);
        // Like the tutorial's boards, the certificate is not checked.
        let context = TlsContext::new(&config, UnsecureProvider::new::<Aes128GcmSha256>(RoscRng));
        if tls.open(context).await.is_err() {
            return;
        }
        publish_forever(Client::new(tls, &mut mqtt_rx, &mut mqtt_tx, clock), reading).await;
    } else {
        publish_forever(Client::new(socket, &mut mqtt_rx, &mut mqtt_tx, clock), reading).await;
    }
}

async fn publish_forever<T: Read + Write>(mut client: Client<'_, T, 4>, reading: &mut u32) {
    let mut options = Options::new(CLIENT_ID);
    options.username = MQTT_USER;
    options.password = MQTT_PASSWORD.map(str::as_bytes);
    if client.connect(&options).await.is_err() {
        return;
    }
    loop {
        let mut text = [0u8; 10];
        if client.publish(TOPIC, decimal(*reading, &mut text), QoS::AtLeastOnce, false).await.is_err() {
            return;
        }
        *reading = reading.wrapping_add(1);
        // Until the next second: take acknowledgements, ping when due.
        let next = Instant::now() + Duration::from_secs(1);
        loop {
            let ping_at = client.next_deadline().map_or(next, Instant::from_millis).min(next);
            match select(client.next(), Timer::at(ping_at)).await {
                Either::First(Ok(_)) => {}
                Either::First(Err(_)) => return,
                Either::Second(()) if Instant::now() >= next => break,
                Either::Second(()) => {
                    if client.keep_alive().await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}
