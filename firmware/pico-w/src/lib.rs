//! What both programs share: bringing up WiFi on the Pico W, reaching the broker over TCP and
//! TLS 1.3 (embedded-tls), and the settings baked in at build time.
#![no_std]

use core::net::Ipv4Addr;

use cyw43::{Aligned, JoinOptions, A4};
use cyw43_pio::{PioSpi, DEFAULT_CLOCK_DIVIDER};
use embassy_executor::Spawner;
use embassy_net::dns::DnsQueryType;
use embassy_net::tcp::TcpSocket;
use embassy_net::{Config, IpAddress, Stack, StackResources};
use embassy_rp::clocks::RoscRng;
use embassy_rp::gpio::{Level, Output};
use embassy_rp::peripherals::{DMA_CH0, PIO0};
use embassy_rp::pio::{InterruptHandler, Pio};
use embassy_rp::{bind_interrupts, dma, Peri};
use embassy_time::{Duration, Timer};
use static_cell::StaticCell;

/// WiFi network name (`TERN_WIFI_SSID`).
pub const WIFI_SSID: &str = env!("TERN_WIFI_SSID");
/// WiFi password (`TERN_WIFI_PASSWORD`).
pub const WIFI_PASSWORD: &str = env!("TERN_WIFI_PASSWORD");
/// Broker host name (`TERN_BROKER_HOST`), also sent as the TLS server name.
pub const BROKER_HOST: &str = env!("TERN_BROKER_HOST");
/// Broker port (`TERN_BROKER_PORT`, default 8883).
pub const BROKER_PORT: u16 = parse_port(option_env!("TERN_BROKER_PORT"));
/// Whether to use TLS (`TERN_BROKER_TLS`, default on; `0` for plain TCP on a LAN).
pub const BROKER_TLS: bool = !matches!(option_env!("TERN_BROKER_TLS"), Some(v) if is_zero(v));

const fn is_zero(v: &str) -> bool {
    matches!(v.as_bytes(), [b'0'])
}
/// MQTT user name (`TERN_MQTT_USER`).
pub const MQTT_USER: Option<&str> = option_env!("TERN_MQTT_USER");
/// MQTT password (`TERN_MQTT_PASSWORD`).
pub const MQTT_PASSWORD: Option<&str> = option_env!("TERN_MQTT_PASSWORD");
/// Topic (`TERN_TOPIC`, default `Topic` as in the tutorial).
pub const TOPIC: &str = match option_env!("TERN_TOPIC") {
    Some(t) => t,
    None => "Topic",
};

const fn parse_port(s: Option<&str>) -> u16 {
    let Some(s) = s else { return 8883 };
    let bytes = s.as_bytes();
    let mut port: u16 = 0;
    let mut i = 0;
    while i < bytes.len() {
        port = port * 10 + (bytes[i] - b'0') as u16;
        i += 1;
    }
    port
}

/// The radio's firmware and NVRAM, 4-byte aligned as the chip loader wants them.
static FIRMWARE: &Aligned<A4, [u8; 231077]> = &Aligned(*cyw43_firmware::CYW43_43439A0);
static NVRAM: &Aligned<A4, [u8; NVRAM_LEN]> =
    &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/nvram.bin")));
const NVRAM_LEN: usize = include_bytes!(concat!(env!("OUT_DIR"), "/nvram.bin")).len();

bind_interrupts!(struct Irqs {
    PIO0_IRQ_0 => InterruptHandler<PIO0>;
    DMA_IRQ_0 => dma::InterruptHandler<DMA_CH0>;
});

type Radio = cyw43::Runner<'static, cyw43::SpiBus<Output<'static>, PioSpi<'static, PIO0, 0>>>;

#[embassy_executor::task]
async fn radio_task(runner: Radio) -> ! {
    runner.run().await
}

#[embassy_executor::task]
async fn net_task(mut runner: embassy_net::Runner<'static, cyw43::NetDriver<'static>>) -> ! {
    runner.run().await
}

/// The pins and blocks WiFi needs.
pub struct WifiPins {
    /// Radio power (GPIO 23).
    pub pwr: Peri<'static, embassy_rp::peripherals::PIN_23>,
    /// Radio chip select (GPIO 25).
    pub cs: Peri<'static, embassy_rp::peripherals::PIN_25>,
    /// Radio data (GPIO 24).
    pub dio: Peri<'static, embassy_rp::peripherals::PIN_24>,
    /// Radio clock (GPIO 29).
    pub clk: Peri<'static, embassy_rp::peripherals::PIN_29>,
    /// PIO block for the radio's SPI.
    pub pio: Peri<'static, PIO0>,
    /// DMA channel for it.
    pub dma: Peri<'static, DMA_CH0>,
}

/// Starts the radio, joins the WiFi network (retrying until it works) and waits for DHCP.
/// Returns the network stack and the radio control (for the LED).
pub async fn wifi(spawner: Spawner, pins: WifiPins) -> (Stack<'static>, cyw43::Control<'static>) {
    let pwr = Output::new(pins.pwr, Level::Low);
    let cs = Output::new(pins.cs, Level::High);
    let mut pio = Pio::new(pins.pio, Irqs);
    let spi = PioSpi::new(
        &mut pio.common,
        pio.sm0,
        DEFAULT_CLOCK_DIVIDER,
        pio.irq0,
        cs,
        pins.dio,
        pins.clk,
        dma::Channel::new(pins.dma, Irqs),
    );
    static STATE: StaticCell<cyw43::State> = StaticCell::new();
    let state = STATE.init(cyw43::State::new());
    let (device, mut control, runner) = cyw43::new(state, pwr, spi, FIRMWARE, NVRAM).await;
    spawner.spawn(radio_task(runner).expect("the radio task is spawned once"));
    control.init(cyw43_firmware::CYW43_43439A0_CLM).await;
    control
        .set_power_management(cyw43::PowerManagementMode::PowerSave)
        .await;

    let seed = RoscRng.next_u64();
    static RESOURCES: StaticCell<StackResources<3>> = StaticCell::new();
    let (stack, runner) = embassy_net::new(
        device,
        Config::dhcpv4(Default::default()),
        RESOURCES.init(StackResources::new()),
        seed,
    );
    spawner.spawn(net_task(runner).expect("the network task is spawned once"));

    while control
        .join(WIFI_SSID, JoinOptions::new(WIFI_PASSWORD.as_bytes()))
        .await
        .is_err()
    {
        Timer::after(Duration::from_secs(2)).await;
    }
    stack.wait_config_up().await;
    (stack, control)
}

/// The broker's address, by DNS unless the host is an IPv4 address already.
pub async fn broker_address(stack: Stack<'static>) -> Option<(IpAddress, u16)> {
    let ip: IpAddress = match BROKER_HOST.parse::<Ipv4Addr>() {
        Ok(ip) => ip.into(),
        Err(_) => stack
            .dns_query(BROKER_HOST, DnsQueryType::A)
            .await
            .ok()?
            .first()
            .copied()?,
    };
    Some((ip, BROKER_PORT))
}

/// Opens TCP to the broker.
pub async fn tcp<'a>(
    stack: Stack<'static>,
    rx: &'a mut [u8],
    tx: &'a mut [u8],
) -> Option<TcpSocket<'a>> {
    let addr = broker_address(stack).await?;
    let mut socket = TcpSocket::new(stack, rx, tx);
    socket.set_timeout(Some(Duration::from_secs(30)));
    socket.connect(addr).await.ok()?;
    Some(socket)
}

/// Milliseconds since boot, the clock tern-client wants.
pub fn clock() -> u64 {
    embassy_time::Instant::now().as_millis()
}

/// Writes a number as text into `buf`; returns the bytes used.
pub fn decimal(mut n: u32, buf: &mut [u8; 10]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// The MQTT connect options of a board: its client id and the user from the environment.
pub fn options(client_id: &str) -> tern_client::Options<'_> {
    let mut options = tern_client::Options::new(client_id);
    options.username = MQTT_USER;
    options.password = MQTT_PASSWORD.map(str::as_bytes);
    options
}

/// Opens TCP to the broker, then TLS 1.3 unless `TERN_BROKER_TLS=0`, connects as `$client_id`
/// and runs `$body` with `$client` bound to the connected `tern_client::embedded::Client`;
/// returns when anything fails. A macro because the TLS and plain clients are different types.
/// Like the tutorial's boards, the broker's certificate is not checked.
#[macro_export]
macro_rules! with_broker {
    ($stack:expr, $client_id:expr, $mqtt_rx:expr, $mqtt_tx:expr, |$client:ident| $body:block) => {{
        let (mut rx, mut tx) = ([0u8; 2048], [0u8; 2048]);
        let options = $crate::options($client_id);
        let socket = $crate::tcp($stack, &mut rx, &mut tx).await;
        if let Some(socket) = socket {
            if $crate::BROKER_TLS {
                let (mut record_rx, mut record_tx) = ([0u8; 16_640], [0u8; 4096]);
                let mut tls = embedded_tls::TlsConnection::new(socket, &mut record_rx, &mut record_tx);
                let config = embedded_tls::TlsConfig::new().with_server_name($crate::BROKER_HOST);
                let provider = embedded_tls::UnsecureProvider::new::<embedded_tls::Aes128GcmSha256>(embassy_rp::clocks::RoscRng);
                if tls.open(embedded_tls::TlsContext::new(&config, provider)).await.is_ok() {
                    let mut $client = tern_client::embedded::Client::<_, 4>::new(tls, $mqtt_rx, $mqtt_tx, $crate::clock);
                    if $client.connect(&options).await.is_ok() $body
                }
            } else {
                let mut $client = tern_client::embedded::Client::<_, 4>::new(socket, $mqtt_rx, $mqtt_tx, $crate::clock);
                if $client.connect(&options).await.is_ok() $body
            }
        };
    }};
}
