//! PUBLISH in both directions: QoS 0, 1 and 2, retained messages, `$` topics, aliases.

use std::time::Duration;

use tern_proto::{
    Ack, Packet, Properties, ProtocolVersion::*, Publish, QoS, RetainHandling, SubscriptionIds,
    SubscriptionOptions, TopicName,
};

use crate::client::{pid, publish, TestBroker};

#[tokio::test]
async fn qos_round_trips_in_both_versions() {
    // [MQTT-4.3.1] QoS 0, [MQTT-4.3.2] QoS 1 (PUBACK), [MQTT-4.3.3] QoS 2 (PUBREC, PUBREL,
    // PUBCOMP), publisher to subscriber, at min(published, granted) QoS [MQTT-3.8.4-8].
    for version in [V3_1_1, V5] {
        let broker = TestBroker::start().await;
        let mut sub = broker.connect(version, "sub").await;
        sub.subscribe("t/#", QoS::ExactlyOnce, 1).await;
        let mut publisher = broker.connect(version, "pub").await;
        for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
            .into_iter()
            .enumerate()
        {
            publisher
                .publish("t/x", &[i as u8], qos, 10 + i as u16)
                .await;
            let got = sub.expect_publish().await;
            assert_eq!(
                (got.qos, got.payload.clone()),
                (qos, vec![i as u8]),
                "{version}"
            );
            match qos {
                QoS::AtMostOnce => assert_eq!(got.packet_id, None),
                QoS::AtLeastOnce => {
                    sub.ack(Packet::PubAck(Ack::new(pid(got.packet_id.unwrap()))))
                        .await
                }
                QoS::ExactlyOnce => {
                    let id = pid(got.packet_id.unwrap());
                    sub.ack(Packet::PubRec(Ack::new(id))).await;
                    sub.recv(|p| {
                        assert!(matches!(p, Packet::PubRel(a) if a.packet_id == id), "{p:?}")
                    })
                    .await;
                    sub.ack(Packet::PubComp(Ack::new(id))).await;
                }
            }
        }
        // Granted QoS caps delivery.
        let mut low = broker.connect(version, "low").await;
        low.subscribe("t/#", QoS::AtMostOnce, 2).await;
        publisher.publish("t/y", b"z", QoS::ExactlyOnce, 20).await;
        assert_eq!(low.expect_publish().await.qos, QoS::AtMostOnce);
    }
}

#[tokio::test]
async fn qos2_duplicate_is_delivered_once() {
    // [MQTT-4.3.3-10] until PUBREL, a re-sent QoS 2 PUBLISH with the same id is not delivered
    // again.
    let broker = TestBroker::start().await;
    let mut sub = broker.connect(V3_1_1, "sub").await;
    sub.subscribe("d", QoS::AtMostOnce, 1).await;
    let mut p = broker.connect(V3_1_1, "pub").await;
    let mut first = publish("d", b"once", QoS::ExactlyOnce, 5);
    p.send(&Packet::Publish(first)).await;
    p.recv(|x| assert!(matches!(x, Packet::PubRec(_)))).await;
    first.dup = true;
    p.send(&Packet::Publish(first)).await;
    p.recv(|x| assert!(matches!(x, Packet::PubRec(_)))).await;
    p.send(&Packet::PubRel(Ack::new(pid(5)))).await;
    p.recv(|x| assert!(matches!(x, Packet::PubComp(_)))).await;
    assert_eq!(sub.expect_publish().await.payload, b"once");
    sub.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn dollar_topics_are_not_matched_by_leading_wildcards() {
    // [MQTT-4.7.2-1]
    let broker = TestBroker::start().await;
    let mut all = broker.connect(V3_1_1, "all").await;
    all.subscribe("#", QoS::AtMostOnce, 1).await;
    let mut sys = broker.connect(V3_1_1, "sys").await;
    sys.subscribe("$SYS/#", QoS::AtMostOnce, 1).await;
    tern_server_sys_tick(&broker);
    assert!(sys.expect_publish().await.topic.starts_with("$SYS/broker/"));
    all.expect_silence(Duration::from_millis(200)).await;
}

fn tern_server_sys_tick(broker: &TestBroker) {
    broker.server.publish_sys();
}

#[tokio::test]
async fn retained_messages_set_replace_clear() {
    // [MQTT-3.3.1-5] stored; [MQTT-3.3.1-6] sent on subscribe with RETAIN 1; a new one replaces
    // it; [MQTT-3.3.1-10] (3.1.1) an empty payload clears it; [MQTT-3.3.1-12] forwarded live
    // messages have RETAIN 0 for a subscription without Retain As Published.
    let broker = TestBroker::start().await;
    let mut p = broker.connect(V3_1_1, "pub").await;
    let mut m = publish("r/a", b"one", QoS::AtLeastOnce, 1);
    m.retain = true;
    p.send(&Packet::Publish(m)).await;
    p.recv(|_| ()).await;
    m.payload = b"two";
    m.packet_id = Some(pid(2));
    p.send(&Packet::Publish(m)).await;
    p.recv(|_| ()).await;

    let mut s = broker.connect(V3_1_1, "s").await;
    s.subscribe("r/+", QoS::AtLeastOnce, 1).await;
    let got = s.expect_publish().await;
    assert_eq!((got.payload.as_slice(), got.retain), (&b"two"[..], true));
    s.ack(Packet::PubAck(Ack::new(pid(got.packet_id.unwrap()))))
        .await;

    // Live: RETAIN 0 toward an existing subscriber.
    m.payload = b"three";
    m.packet_id = Some(pid(3));
    p.send(&Packet::Publish(m)).await;
    p.recv(|_| ()).await;
    let live = s.expect_publish().await;
    assert_eq!(
        (live.payload.as_slice(), live.retain),
        (&b"three"[..], false)
    );

    m.payload = b"";
    m.qos = QoS::AtMostOnce;
    m.packet_id = None;
    p.send(&Packet::Publish(m)).await;
    let mut late = broker.connect(V3_1_1, "late").await;
    late.subscribe("r/#", QoS::AtMostOnce, 1).await;
    late.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn retain_handling_and_retain_as_published() {
    // [MQTT-3.3.1-9] Retain Handling 0 sends at every subscribe; [MQTT-3.3.1-10] 1 only for a
    // new subscription; [MQTT-3.3.1-11] 2 never; [MQTT-3.3.1-13] Retain As Published keeps the
    // flag on live messages.
    let broker = TestBroker::start().await;
    let mut p = broker.connect(V5, "pub").await;
    let mut m = publish("k", b"v", QoS::AtMostOnce, 0);
    m.retain = true;
    p.send(&Packet::Publish(m)).await;
    let mut s = broker.connect(V5, "s").await;
    let opts = |rh| SubscriptionOptions {
        qos: QoS::AtMostOnce,
        no_local: false,
        retain_as_published: true,
        retain_handling: rh,
    };
    s.subscribe_with("k", opts(RetainHandling::SendIfNew), 1, 0)
        .await;
    assert!(s.expect_publish().await.retain);
    s.subscribe_with("k", opts(RetainHandling::SendIfNew), 2, 0)
        .await;
    s.expect_silence(Duration::from_millis(100)).await;
    s.subscribe_with("k", opts(RetainHandling::DoNotSend), 3, 0)
        .await;
    s.expect_silence(Duration::from_millis(100)).await;
    s.subscribe_with("k", opts(RetainHandling::SendAtSubscribe), 4, 0)
        .await;
    assert!(s.expect_publish().await.retain);
    p.send(&Packet::Publish(m)).await;
    assert!(s.expect_publish().await.retain, "retain as published");
}

#[tokio::test]
async fn no_local_and_overlapping_subscriptions() {
    // [MQTT-3.8.3-3] No Local: not sent back to its publisher. [MQTT-3.3.4-2] overlapping
    // subscriptions: one copy at the highest granted QoS, with every Subscription
    // Identifier [MQTT-3.3.4-3].
    let broker = TestBroker::start().await;
    let mut c = broker.connect(V5, "me").await;
    let nl = SubscriptionOptions {
        no_local: true,
        ..SubscriptionOptions::new(QoS::AtMostOnce)
    };
    c.subscribe_with("mine", nl, 1, 0).await;
    c.publish("mine", b"x", QoS::AtMostOnce, 0).await;
    c.expect_silence(Duration::from_millis(200)).await;

    let mut s = broker.connect(V5, "s").await;
    for (i, (filter, qos)) in [("o/+", QoS::AtMostOnce), ("o/#", QoS::AtLeastOnce)]
        .into_iter()
        .enumerate()
    {
        let ids = [i as u32 + 7];
        let subs = [tern_proto::Subscription {
            filter: tern_proto::TopicFilter::new(filter).unwrap(),
            options: SubscriptionOptions::new(qos),
        }];
        s.send(&Packet::Subscribe(tern_proto::Subscribe {
            packet_id: pid(i as u16 + 1),
            properties: Properties {
                subscription_identifiers: SubscriptionIds::List(&ids),
                ..Properties::default()
            },
            subscriptions: tern_proto::List::Items(&subs),
        }))
        .await;
        s.recv(|p| assert!(matches!(p, Packet::SubAck(_)))).await;
    }
    c.publish("o/x", b"y", QoS::AtLeastOnce, 9).await;
    let got = s.expect_publish().await;
    assert_eq!(got.qos, QoS::AtLeastOnce);
    let mut ids = got.subscription_ids.clone();
    ids.sort();
    assert_eq!(ids, [7, 8]);
    s.ack(Packet::PubAck(Ack::new(pid(got.packet_id.unwrap()))))
        .await;
    s.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn topic_alias_from_client() {
    // [MQTT-3.3.2-12] an alias set with a topic may be used with an empty topic; an alias above
    // the broker's Topic Alias Maximum is 0x94 [MQTT-3.3.2-9].
    let broker = TestBroker::start().await;
    let mut s = broker.connect(V5, "s").await;
    s.subscribe("alias/t", QoS::AtMostOnce, 1).await;
    let mut p = broker.connect(V5, "p").await;
    let with_alias = |topic, alias| Publish {
        properties: Properties {
            topic_alias: Some(alias),
            ..Properties::default()
        },
        ..publish(topic, b"a", QoS::AtMostOnce, 0)
    };
    p.send(&Packet::Publish(with_alias("alias/t", 3))).await;
    let empty = Publish {
        topic: TopicName::EMPTY,
        ..with_alias("x", 3)
    };
    p.send(&Packet::Publish(empty)).await;
    assert_eq!(s.expect_publish().await.topic, "alias/t");
    assert_eq!(s.expect_publish().await.topic, "alias/t");
    p.send(&Packet::Publish(with_alias("alias/t", 65))).await;
    p.expect_disconnect(0x94).await;
}

#[tokio::test]
async fn puback_reports_no_matching_subscribers() {
    // Section 3.4.2.1: 0x10 No matching subscribers (MQTT 5).
    let broker = TestBroker::start().await;
    let mut p = broker.connect(V5, "p").await;
    p.send(&Packet::Publish(publish(
        "nobody",
        b"x",
        QoS::AtLeastOnce,
        4,
    )))
    .await;
    p.expect_bytes(&[0x40, 3, 0, 4, 0x10]).await;
}

/// One write holding `packets`, so that the broker reads them in one turn.
fn one_read(version: tern_proto::ProtocolVersion, packets: &[Packet<'_>]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for p in packets {
        bytes.extend(p.encode_to_vec(version).unwrap());
    }
    bytes
}

#[tokio::test]
async fn qos0_publications_read_together_keep_their_order_and_their_moment() {
    // [MQTT-4.6.0-6] one publisher's messages reach a subscriber in the order published,
    // whatever their topics and QoS. The broker routes a read's QoS 0 publications to one
    // topic together; a packet of another kind is handled after the publications before it
    // were routed and before those after it: the publisher's own SUBSCRIBE in the middle
    // gets it the publications after, not those before ([MQTT-3.8.4-3] existing messages
    // are not sent on a new subscription unless retained).
    let broker = TestBroker::start().await;
    let mut s = broker.connect(V3_1_1, "s").await;
    s.subscribe("#", QoS::AtLeastOnce, 1).await;
    let mut p = broker.connect(V3_1_1, "p").await;

    let self_sub = [tern_proto::Subscription {
        filter: tern_proto::TopicFilter::new("a").unwrap(),
        options: SubscriptionOptions::new(QoS::AtMostOnce),
    }];
    let payloads: Vec<String> = (0..300).map(|i| format!("m{i}")).collect();
    let topic_of = |i: usize| match i {
        150 => "b",
        200..=204 => "c",
        _ => "a",
    };
    let mut packets: Vec<Packet<'_>> = Vec::new();
    for (i, body) in payloads.iter().enumerate() {
        if i == 250 {
            packets.push(Packet::Subscribe(tern_proto::Subscribe {
                packet_id: pid(7),
                properties: Properties::default(),
                subscriptions: tern_proto::List::Items(&self_sub),
            }));
        }
        let qos = if i == 150 {
            QoS::AtLeastOnce
        } else {
            QoS::AtMostOnce
        };
        packets.push(Packet::Publish(publish(
            topic_of(i),
            body.as_bytes(),
            qos,
            3,
        )));
    }
    p.send_bytes(&one_read(V3_1_1, &packets)).await;

    for (i, body) in payloads.iter().enumerate() {
        let got = s.expect_publish().await;
        assert_eq!(
            (got.topic.as_str(), got.payload.as_slice()),
            (topic_of(i), body.as_bytes())
        );
        if got.qos == QoS::AtLeastOnce {
            s.ack(Packet::PubAck(Ack::new(pid(got.packet_id.unwrap()))))
                .await;
        }
    }
    // The publisher: PUBACK for message 150, SUBACK, then its own messages 250 to 299.
    p.recv(|x| {
        assert!(
            matches!(x, Packet::PubAck(a) if a.packet_id == pid(3)),
            "{x:?}"
        )
    })
    .await;
    p.recv(|x| assert!(matches!(x, Packet::SubAck(_)), "{x:?}"))
        .await;
    for body in &payloads[250..] {
        assert_eq!(p.expect_publish().await.payload, body.as_bytes());
    }
    p.expect_silence(Duration::from_millis(200)).await;
    s.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn a_fan_out_keeps_each_subscribers_order_across_qos() {
    // [MQTT-4.6.0-6] order per publisher, here with every message going to three
    // subscribers: a QoS 0 copy shared by all is written from the message's one encoding
    // while a QoS 1 copy takes its packet identifier in between, and the copies after it
    // wait their turn.
    let broker = TestBroker::start().await;
    let mut subs = Vec::new();
    for name in ["s1", "s2", "s3"] {
        let mut s = broker.connect(V3_1_1, name).await;
        s.subscribe("#", QoS::AtLeastOnce, 1).await;
        subs.push(s);
    }
    let mut p = broker.connect(V3_1_1, "p").await;
    let payloads: Vec<String> = (0..120).map(|i| format!("m{i}")).collect();
    let qos_of = |i: usize| {
        if i % 40 == 20 {
            QoS::AtLeastOnce
        } else {
            QoS::AtMostOnce
        }
    };
    let packets: Vec<Packet<'_>> = payloads
        .iter()
        .enumerate()
        .map(|(i, body)| Packet::Publish(publish("fan", body.as_bytes(), qos_of(i), i as u16 + 1)))
        .collect();
    p.send_bytes(&one_read(V3_1_1, &packets)).await;
    for s in &mut subs {
        for (i, body) in payloads.iter().enumerate() {
            let got = s.expect_publish().await;
            assert_eq!(
                (got.payload.as_slice(), got.qos),
                (body.as_bytes(), qos_of(i))
            );
            if got.qos == QoS::AtLeastOnce {
                s.ack(Packet::PubAck(Ack::new(pid(got.packet_id.unwrap()))))
                    .await;
            }
        }
        s.expect_silence(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn qos0_publications_read_together_take_turns_in_a_shared_group() {
    // Section 4.8.2: each message of a shared subscription goes to one member; read together,
    // they are spread over the members in turn as if they had come one by one.
    let broker = TestBroker::start().await;
    let mut a = broker.connect(V5, "a").await;
    let mut b = broker.connect(V5, "b").await;
    a.subscribe("$share/g/jobs", QoS::AtMostOnce, 1).await;
    b.subscribe("$share/g/jobs", QoS::AtMostOnce, 1).await;
    let mut p = broker.connect(V5, "p").await;
    let packets: Vec<Packet<'_>> = (0..40)
        .map(|_| Packet::Publish(publish("jobs", b"j", QoS::AtMostOnce, 0)))
        .collect();
    p.send_bytes(&one_read(V5, &packets)).await;
    for member in [&mut a, &mut b] {
        for _ in 0..20 {
            assert_eq!(member.expect_publish().await.topic, "jobs");
        }
        member.expect_silence(Duration::from_millis(200)).await;
    }
}
