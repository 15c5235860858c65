//! Teltonika Codec 8 / 8 Extended end to end, replaying frames captured from real devices
//! (traccar/traccar `src/test/java/org/traccar/protocol/TeltonikaProtocolDecoderTest.java`) and
//! the examples of Teltonika's "Data Sending Protocols" wiki page: the IMEI handshake, the
//! acknowledgements the device waits for, and what reaches the fixes topic.

use crate::support::{read_envelopes, read_fixes, Ingest};
use gps_domain::wire::teltonika as codec;
use gps_domain::{FixEnvelope, Protocol};
use gps_runtime::testing::{seed_device, SeededDevice};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// Traccar capture: one Codec 8 record (2019-01-04T12:27:19Z, 48.1523066 N 16.3745183 E, 83 km/h).
const CODEC8: &str = "000000000000004c08010000016818d500580009c28d9f1cb3757a00be00c60f0053000f06f0011503c80001011d00fc0007423799180053cdf80dce426f430f88190bb8560bb802f100005aa110002887e000010000ee8d";
/// Traccar capture: one Codec 8 Extended record with a VIN (IO 256).
const CODEC8E: &str = "00000000000000a38e0100000178b11c9e1000040bbbc91f03190c002100e113001300000010000600ef0100f00100150300c800004501001e070005004237e00018000a00ce166200430f970024059f000300f10000665900c70000001e00100000a1b500000002010000115756315a5a5a32455a38363031353338380119002950303239392c50303637352c50303637342c50303637322c50303637312c50303437312c50324241430100001ad8";
/// Traccar capture: a UDP datagram of IMEI 357454072713975, packet id 0xCAFE, AVL packet id 0x22.
const UDP_TRACCAR: &str = "0049cafe0122000f33353734353430373237313339373508010000015d3766f6a800003eef961ec6215e0063006d09003100070401000200f001c8000242381c18003201c7000000e10001";
/// Teltonika wiki: a UDP datagram of IMEI 352093086403655 whose record has no position.
const UDP_WIKI: &str = "003DCAFE0105000F33353230393330383634303336353508010000016B4F815B30010000000000000000000000000000000103021503010101425DBC000001";

const WAIT: Duration = Duration::from_secs(15);

fn bytes(hex_text: &str) -> Vec<u8> {
    (0..hex_text.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(&hex_text[at..at + 2], 16).unwrap())
        .collect()
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Give `device` the uid `imei` and opt it in to uid-only reporting (Teltonika has no secret).
async fn as_teltonika(ingest: &Ingest, device: &SeededDevice, imei: &str) {
    sqlx::query("UPDATE devices SET uid = $1, uid_only = true WHERE id = $2")
        .bind(imei)
        .bind(device.device_id)
        .execute(&ingest.db.pool)
        .await
        .unwrap();
}

/// A random 15-digit IMEI.
fn new_imei() -> String {
    format!("35{:013}", rand_u64() % 10_000_000_000_000)
}

fn rand_u64() -> u64 {
    u64::from_le_bytes(uuid::Uuid::new_v4().as_bytes()[..8].try_into().unwrap())
}

/// Connect and send the IMEI handshake; returns the stream and the server's one-byte answer.
async fn handshake(addr: SocketAddr, imei: &str) -> (TcpStream, u8) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(&codec::encode_imei(imei).unwrap())
        .await
        .unwrap();
    let mut reply = [0u8; 1];
    tokio::time::timeout(WAIT, stream.read_exact(&mut reply))
        .await
        .expect("handshake answered")
        .unwrap();
    (stream, reply[0])
}

/// Send `frame` and read the four-byte acknowledgement.
async fn send_frame(stream: &mut TcpStream, frame: &[u8]) -> u32 {
    stream.write_all(frame).await.unwrap();
    let mut ack = [0u8; 4];
    tokio::time::timeout(WAIT, stream.read_exact(&mut ack))
        .await
        .expect("frame acknowledged")
        .unwrap();
    u32::from_be_bytes(ack)
}

/// Whether the server closes `stream` without sending a byte.
async fn closed_without_answer(stream: &mut TcpStream) -> bool {
    let mut rest = [0u8; 8];
    matches!(
        tokio::time::timeout(WAIT, stream.read(&mut rest)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

/// The selector of Teltonika packets of `transport` with `outcome`.
fn packets_metric(transport: &str, outcome: &str) -> String {
    format!(r#"gps_ingest_teltonika_packets_total{{outcome="{outcome}",transport="{transport}"}}"#)
}

async fn packets(ingest: &Ingest, transport: &str, outcome: &str) -> f64 {
    ingest.metric(&packets_metric(transport, outcome)).await
}

fn fix_time_of(envelopes: &[FixEnvelope], time: i64) -> &FixEnvelope {
    envelopes
        .iter()
        .find(|e| e.fixes.iter().any(|f| f.fix_time == time))
        .unwrap_or_else(|| panic!("no envelope with a fix at {time}: {envelopes:?}"))
}

#[tokio::test]
async fn a_tcp_session_is_acknowledged_per_frame_after_kafka() {
    let ingest = Ingest::start().await;
    let imei = new_imei();
    as_teltonika(&ingest, &ingest.device, &imei).await;

    let (mut stream, accepted) = handshake(ingest.teltonika, &imei).await;
    assert_eq!(accepted, 0x01, "a known, uid-only IMEI is accepted");
    assert_eq!(send_frame(&mut stream, &bytes(CODEC8)).await, 1);
    // A keep-alive byte between frames is skipped; Codec 8 Extended on the same session.
    stream.write_all(&[codec::KEEP_ALIVE]).await.unwrap();
    assert_eq!(send_frame(&mut stream, &bytes(CODEC8E)).await, 1);

    let envelopes = read_fixes(&ingest.kafka, 2).await;
    assert_eq!(envelopes.len(), 2, "one envelope per packet");
    let first = fix_time_of(&envelopes, 1_546_604_839_000);
    assert_eq!(first.proto, Protocol::Teltonika);
    assert_eq!(first.uid, imei);
    assert_eq!(first.device, ingest.device.device_id);
    assert_eq!(first.tenant, ingest.device.tenant_id);
    let fix = &first.fixes[0];
    assert_eq!((fix.lat, fix.lon), (48.152_306_6, 16.374_518_3));
    assert_eq!(fix.altitude_m, Some(190.0));
    assert_eq!(fix.heading_deg, Some(198.0));
    assert_eq!(fix.satellites, Some(15));
    assert!(
        (fix.speed_mps.unwrap() - 83.0 / 3.6).abs() < 1e-9,
        "km/h to m/s"
    );
    assert!(fix.valid);
    assert_eq!(fix.attributes["motion"], Value::Bool(true));
    assert_eq!(fix.attributes["external_voltage_v"], Value::from(14.233));
    assert_eq!(fix.attributes["odometer_m"], Value::from(2_656_224u64));
    let status = first
        .status
        .as_ref()
        .expect("the record's status travels too");
    assert_eq!(status.time, 1_546_604_839_000);
    assert_eq!(status.motion, Some(true));

    let extended = fix_time_of(&envelopes, 1_617_879_146_000);
    let fix = &extended.fixes[0];
    assert_eq!((fix.lat, fix.lon), (52.029_671_6, 6.787_783_3));
    assert_eq!(fix.attributes["ignition"], Value::Bool(true));
    assert_eq!(fix.attributes["vin"], Value::from("WV1ZZZ2EZ86015388"));

    assert_eq!(packets(&ingest, "tcp", "acked").await, 2.0);
    assert_eq!(
        ingest
            .metric(r#"gps_ingest_fixes_accepted_total{protocol="teltonika"}"#)
            .await,
        2.0
    );
    drop(stream);
    ingest.stop().await;
}

#[tokio::test]
async fn udp_datagrams_are_acknowledged_with_their_ids() {
    let ingest = Ingest::start().await;
    as_teltonika(&ingest, &ingest.device, "357454072713975").await;
    let wiki_device = seed_device(&ingest.db.pool, "acme").await;
    as_teltonika(&ingest, &wiki_device, "352093086403655").await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();

    let mut ack = [0u8; 16];
    for (datagram, expected) in [
        (UDP_WIKI, "0005cafe010501"),
        (UDP_TRACCAR, "0005cafe012201"),
    ] {
        socket
            .send_to(&bytes(datagram), ingest.teltonika)
            .await
            .unwrap();
        let (n, _) = tokio::time::timeout(WAIT, socket.recv_from(&mut ack))
            .await
            .expect("datagram acknowledged")
            .unwrap();
        assert_eq!(hex_of(&ack[..n]), expected);
    }

    let envelopes = read_envelopes(&ingest.kafka, 2).await;
    let traccar = fix_time_of(&envelopes, 0x0000_015d_3766_f6a8);
    assert_eq!(traccar.uid, "357454072713975");
    let fix = &traccar.fixes[0];
    assert_eq!((fix.lat, fix.lon), (51.630_115, 0.412_456_6));
    // The wiki record has no position: kept as the device's status, never as a fix.
    let wiki = envelopes
        .iter()
        .find(|e| e.device == wiki_device.device_id)
        .expect("the position-less record reached the log");
    assert!(wiki.fixes.is_empty());
    assert_eq!(wiki.status.as_ref().unwrap().time, 0x0000_016b_4f81_5b30);
    ingest.stop().await;
}

#[tokio::test]
async fn unknown_imeis_are_rejected_and_never_acknowledged() {
    let ingest = Ingest::start().await;
    // Known but not opted in to uid-only reporting: refused like an unknown one.
    let not_opted_in = new_imei();
    sqlx::query("UPDATE devices SET uid = $1 WHERE id = $2")
        .bind(&not_opted_in)
        .bind(ingest.device.device_id)
        .execute(&ingest.db.pool)
        .await
        .unwrap();
    for imei in [new_imei(), not_opted_in] {
        let (mut stream, accepted) = handshake(ingest.teltonika, &imei).await;
        assert_eq!(accepted, 0x00, "{imei} is rejected");
        assert!(closed_without_answer(&mut stream).await, "then closed");
    }

    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket
        .send_to(&bytes(UDP_TRACCAR), ingest.teltonika)
        .await
        .unwrap();
    ingest
        .wait_metric(&packets_metric("udp", "unknown_device"), 1.0)
        .await;
    let mut ack = [0u8; 16];
    assert!(
        tokio::time::timeout(Duration::from_millis(500), socket.recv_from(&mut ack))
            .await
            .is_err(),
        "an unknown IMEI gets no acknowledgement"
    );
    assert_eq!(packets(&ingest, "tcp", "unknown_device").await, 2.0);
    ingest.stop().await;
}

#[tokio::test]
async fn a_frame_with_a_bad_crc_is_refused_without_an_acknowledgement() {
    let ingest = Ingest::start().await;
    let imei = new_imei();
    as_teltonika(&ingest, &ingest.device, &imei).await;

    let (mut stream, accepted) = handshake(ingest.teltonika, &imei).await;
    assert_eq!(accepted, 0x01);
    let mut bad = bytes(CODEC8);
    let last = bad.len() - 1;
    bad[last] ^= 0x01;
    stream.write_all(&bad).await.unwrap();
    assert!(
        closed_without_answer(&mut stream).await,
        "no acknowledgement: the device keeps the records and resends"
    );
    assert_eq!(packets(&ingest, "tcp", "bad_crc").await, 1.0);

    // The device reconnects and resends: now it is taken, once.
    let (mut stream, _) = handshake(ingest.teltonika, &imei).await;
    assert_eq!(send_frame(&mut stream, &bytes(CODEC8)).await, 1);
    let envelopes = read_fixes(&ingest.kafka, 1).await;
    assert_eq!(
        envelopes.len(),
        1,
        "nothing of the bad frame reached the log"
    );
    ingest.stop().await;
}

/// The broker frozen: a frame is not acknowledged (the session closes once the delivery timeout
/// passed, the device keeps its records), and once the broker is back the resent frame is.
#[tokio::test]
async fn a_frame_kafka_did_not_take_is_never_acknowledged() {
    let (ingest, broker) = Ingest::start_on_private_broker(|c| {
        c.producer.delivery_timeout_ms = 2_000;
        c.limits.request_timeout_ms = 10_000;
    })
    .await;
    let imei = new_imei();
    as_teltonika(&ingest, &ingest.device, &imei).await;
    let (mut stream, _) = handshake(ingest.teltonika, &imei).await;
    assert_eq!(send_frame(&mut stream, &bytes(CODEC8)).await, 1);

    broker.pause();
    stream.write_all(&bytes(CODEC8E)).await.unwrap();
    assert!(
        closed_without_answer(&mut stream).await,
        "no acknowledgement while Kafka does not take the records"
    );
    assert_eq!(packets(&ingest, "tcp", "unavailable").await, 1.0);

    broker.resume();
    let mut acked = false;
    for _ in 0..20 {
        let (mut stream, _) = handshake(ingest.teltonika, &imei).await;
        stream.write_all(&bytes(CODEC8E)).await.unwrap();
        let mut ack = [0u8; 4];
        if let Ok(Ok(_)) = tokio::time::timeout(WAIT, stream.read_exact(&mut ack)).await {
            assert_eq!(u32::from_be_bytes(ack), 1);
            acked = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        acked,
        "the resent frame is acknowledged once the broker is back"
    );
    let envelopes = read_fixes(&ingest.kafka, 2).await;
    fix_time_of(&envelopes, 1_546_604_839_000);
    fix_time_of(&envelopes, 1_617_879_146_000);
    ingest.stop().await;
}

/// A peer that trickles a frame a byte at a time is closed once the frame took longer than the
/// idle timeout, and a frame announcing more than the cap is refused at its header.
#[tokio::test]
async fn sessions_are_bounded_in_time_and_size() {
    let ingest = Ingest::start_with(|c| {
        c.teltonika.idle_timeout_secs = 1;
        c.teltonika.max_frame_bytes = 1024;
    })
    .await;
    let imei = new_imei();
    as_teltonika(&ingest, &ingest.device, &imei).await;

    let (mut stream, accepted) = handshake(ingest.teltonika, &imei).await;
    assert_eq!(accepted, 0x01);
    let frame = bytes(CODEC8);
    let mut closed = false;
    for byte in &frame[..frame.len() - 1] {
        // Each byte well within the idle timeout, the whole frame far beyond it.
        if stream.write_all(&[*byte]).await.is_err() {
            closed = true;
            break;
        }
        let mut probe = [0u8; 1];
        match tokio::time::timeout(Duration::from_millis(300), stream.read(&mut probe)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(_)) => panic!("nothing is acknowledged before the frame is whole"),
            Err(_) => {}
        }
    }
    assert!(closed, "a trickled frame does not hold the session");

    let (mut stream, _) = handshake(ingest.teltonika, &imei).await;
    stream
        .write_all(&[0, 0, 0, 0, 0, 0, 0x10, 0x00])
        .await
        .unwrap();
    assert!(closed_without_answer(&mut stream).await);
    assert_eq!(packets(&ingest, "tcp", "too_large").await, 1.0);
    ingest.stop().await;
}
