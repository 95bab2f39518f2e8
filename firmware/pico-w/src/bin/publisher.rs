//! The tutorial's publisher: connects to the broker and publishes a reading to `TERN_TOPIC`
//! every second at QoS 1, pinging on time; after any failure it waits 2 s and starts over.
#![no_std]
#![no_main]

use embassy_executor::Spawner;
use embassy_futures::select::{select, Either};
use embassy_time::{Duration, Instant, Timer};
use embedded_io_async::{Read, Write};
use panic_halt as _;
use tern_client::embedded::Client;
use tern_client::QoS;
use tern_pico_w::{decimal, wifi, WifiPins, TOPIC};

const CLIENT_ID: &str = match option_env!("TERN_CLIENT_ID") {
    Some(id) => id,
    None => "pico-pub",
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
    let (stack, _control) = wifi(spawner, pins).await;
    let mut reading = 0u32;
    loop {
        session(stack, &mut reading).await;
        Timer::after(Duration::from_secs(2)).await;
    }
}

/// One connection, until something fails.
async fn session(stack: embassy_net::Stack<'static>, reading: &mut u32) {
    let (mut mqtt_rx, mut mqtt_tx) = ([0u8; 512], [0u8; 512]);
    tern_pico_w::with_broker!(stack, CLIENT_ID, &mut mqtt_rx, &mut mqtt_tx, |client| {
        publish_forever(&mut client, reading).await;
    });
}

async fn publish_forever<T: Read + Write>(client: &mut Client<'_, T, 4>, reading: &mut u32) {
    loop {
        let mut text = [0u8; 10];
        if client
            .publish(TOPIC, decimal(*reading, &mut text), QoS::AtLeastOnce, false)
            .await
            .is_err()
        {
            return;
        }
        *reading = reading.wrapping_add(1);
        // Until the next second: take acknowledgements, ping when due.
        let next = Instant::now() + Duration::from_secs(1);
        loop {
            let ping_at = client
                .next_deadline()
                .map_or(next, Instant::from_millis)
                .min(next);
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
