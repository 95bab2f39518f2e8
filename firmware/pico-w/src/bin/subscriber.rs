//! The tutorial's subscriber: subscribes to `TERN_TOPIC` and handles each message as it arrives
//! (here: toggles the on-board LED), pinging on time so the broker keeps it; after any failure
//! it waits 2 s and starts over, subscribing again.
#![no_std]
#![no_main]

use embassy_executor::Spawner;
use embassy_futures::select::{select, Either};
use embassy_time::{Duration, Instant, Timer};
use embedded_io_async::{Read, Write};
use panic_halt as _;
use tern_client::embedded::Client;
use tern_client::{Event, QoS};
use tern_pico_w::{wifi, WifiPins, TOPIC};

const CLIENT_ID: &str = match option_env!("TERN_CLIENT_ID") {
    Some(id) => id,
    None => "pico-sub",
};

#[embassy_executor::main]
async fn main(spawner: Spawner) {
    let p = embassy_rp::init(Default::default());
    let pins = WifiPins {
        pwr: p.PIN_23,
        cs: p.PIN_25,
        dio: p.PIN_24,
        clk: p.PIN_29,
        pio: p.PIO0,
        dma: p.DMA_CH0,
    };
    let (stack, mut control) = wifi(spawner, pins).await;
    let mut led = false;
    loop {
        session(stack, &mut control, &mut led).await;
        Timer::after(Duration::from_secs(2)).await;
    }
}

async fn session(
    stack: embassy_net::Stack<'static>,
    control: &mut cyw43::Control<'static>,
    led: &mut bool,
) {
    let (mut mqtt_rx, mut mqtt_tx) = ([0u8; 1024], [0u8; 256]);
    tern_pico_w::with_broker!(stack, CLIENT_ID, &mut mqtt_rx, &mut mqtt_tx, |client| {
        listen(&mut client, control, led).await;
    });
}

async fn listen<T: Read + Write>(
    client: &mut Client<'_, T, 4>,
    control: &mut cyw43::Control<'static>,
    led: &mut bool,
) {
    if client.subscribe(TOPIC, QoS::AtLeastOnce).await.is_err() {
        return;
    }
    loop {
        let ping_at = client
            .next_deadline()
            .map_or(Instant::MAX, Instant::from_millis);
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
