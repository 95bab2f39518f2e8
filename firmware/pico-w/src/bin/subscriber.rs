//! The tutorial's subscriber: subscribes to `TERN_TOPIC` and handles each message as it arrives
//! (here: toggles the on-board LED), pinging on time so the broker keeps it; after any failure
//! it waits 2 s and starts over, subscribing again.
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
use tern_client::{Event, Options, QoS};
use tern_pico_w::{clock, tcp, wifi, WifiPins, BROKER_HOST, BROKER_TLS, MQTT_PASSWORD, MQTT_USER, TOPIC};

const CLIENT_ID: &str = match option_env!("TERN_CLIENT_ID") {
    Some(id) => id,
    None => "pico-sub",
};

#[embassy_executor::main]
async fn main(spawner: Spawner) {
    let p = embassy_rp::init(Default::default());
    let pins = WifiPins { pwr: p.PIN_23, cs: p.PIN_25, dio: p.PIN_24, clk: p.PIN_29, pio: p.PIO0, dma: p.DMA_CH0 };
    let (stack, mut control) = wifi(spawner, pins).await;
    let mut led = false;
    loop {
        session(stack, &mut control, &mut led).await;
        Timer::after(Duration::from_secs(2)).await;
    }
}

async fn session(stack: embassy_net::Stack<'static>, control: &mut cyw43::Control<'static>, led: &mut bool) {
    let (mut rx, mut tx) = ([0u8; 2048], [0u8; 2048]);
    let Some(socket) = tcp(stack, &mut rx, &mut tx).await else { return };
    let (mut mqtt_rx, mut mqtt_tx) = ([0u8; 1024], [0u8; 256]);
    if BROKER_TLS {
        let (mut record_rx, mut record_tx) = ([0u8; 16_640], [0u8; 4096]);
        let mut tls = TlsConnection::new(socket, &mut record_rx, &mut record_tx);
        let config = TlsConfig::new().with_server_name(BROKER_HOST);
        let context = TlsContext::new(&config, UnsecureProvider::new::<Aes128GcmSha256>(RoscRng));
        if tls.open(context).await.is_err() {
            return;
        }
        listen(Client::new(tls, &mut mqtt_rx, &mut mqtt_tx, clock), control, led).await;
    } else {
        listen(Client::new(socket, &mut mqtt_rx, &mut mqtt_tx, clock), control, led).await;
    }
}

async fn listen<T: Read + Write>(mut client: Client<'_, T, 4>, control: &mut cyw43::Control<'static>, led: &mut bool) {
    let mut options = Options::new(CLIENT_ID);
    options.username = MQTT_USER;
    options.password = MQTT_PASSWORD.map(str::as_bytes);
    if client.connect(&options).await.is_err() || client.subscribe(TOPIC, QoS::AtLeastOnce).await.is_err() {
        return;
    }
    loop {
        let ping_at = client.next_deadline().map_or(Instant::MAX, Instant::from_millis);
        match select(client.next(), Timer::at(ping_at)).await {
            Either::First(Ok(Event::Message(_message))) => {
                // The callback: the message is handled as it arrives.
                *led = !*led;
                control.gpio_set(0, *led).await;
            }
            Either::First(Ok(_)) => {}
            Either::First(Err(_)) => return,
            Either::Second(()) => {
                if client.keep_alive().await.is_err() {
                    return;
                }
            }
        }
    }
}
