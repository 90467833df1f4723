//! RouteGuide served from the repository's protos/ + handlers/ + data/, checked against values
//! computed here from the tutorial's feature database (`data/route_guide_db.json`, the gRPC
//! tutorial's 100 features) and against figures the tutorial's own clients print.

mod common;

use std::time::Duration;

use common::{repo, Client, Server};
use serde_json::{json, Value};

fn db() -> Vec<Value> {
    let text = std::fs::read_to_string(repo().join("data/route_guide_db.json"))
        .expect("data/route_guide_db.json");
    serde_json::from_str(&text).unwrap()
}

async fn route_guide() -> (Server, Client) {
    // The defaults: protos/, handlers/ and data/ of the repository.
    let server = Server::start(&[]);
    let client = Client::connect(server.addr, common::pool(&repo().join("protos"))).await;
    (server, client)
}

fn point(f: &Value) -> (i64, i64) {
    (
        f["location"]["latitude"].as_i64().unwrap(),
        f["location"]["longitude"].as_i64().unwrap(),
    )
}

/// What a client sees: proto3 JSON drops empty names and zero coordinates.
fn as_seen(f: &Value) -> Value {
    let (lat, lon) = point(f);
    let mut location = serde_json::Map::new();
    if lat != 0 {
        location.insert("latitude".into(), json!(lat));
    }
    if lon != 0 {
        location.insert("longitude".into(), json!(lon));
    }
    let mut out = serde_json::Map::new();
    if f["name"].as_str() != Some("") {
        out.insert("name".into(), f["name"].clone());
    }
    out.insert("location".into(), Value::Object(location));
    Value::Object(out)
}

fn haversine(a: (i64, i64), b: (i64, i64)) -> f64 {
    let rad = |e7: i64| (e7 as f64 / 1e7).to_radians();
    let (lat1, lat2) = (rad(a.0), rad(b.0));
    let dlat = lat2 - lat1;
    let dlon = rad(b.1 - a.1);
    let h = (dlat / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * (dlon / 2.0).sin().powi(2);
    6_371_000.0 * 2.0 * h.sqrt().atan2((1.0 - h).sqrt())
}

/// The tutorial's data as its own clients see it: 100 features, 64 of them named, all inside the
/// rectangle the tutorial's client asks for, and the feature its client looks up first.
#[tokio::test]
async fn serves_the_tutorial_database() {
    let (_s, client) = route_guide().await;
    assert_eq!(db().len(), 100);
    let got = client
        .unary(
            "routeguide.RouteGuide/GetFeature",
            json!({"latitude": 409146138, "longitude": -746188906}),
        )
        .await
        .unwrap();
    assert_eq!(
        got["name"],
        json!("Berkshire Valley Management Area Trail, Jefferson, NJ, USA")
    );
    let all = client
        .server_stream(
            "routeguide.RouteGuide/ListFeatures",
            json!({"lo": {"latitude": 400000000, "longitude": -750000000},
                   "hi": {"latitude": 420000000, "longitude": -730000000}}),
        )
        .await
        .unwrap();
    assert_eq!(all.len(), 100);
    assert_eq!(all.iter().filter(|f| f.get("name").is_some()).count(), 64);
}

#[tokio::test]
async fn get_feature_finds_named_and_unnamed_points() {
    let (_s, client) = route_guide().await;
    let db = db();
    let named = db.iter().find(|f| f["name"] != "").unwrap();
    let (lat, lon) = point(named);
    let got = client
        .unary(
            "routeguide.RouteGuide/GetFeature",
            json!({"latitude": lat, "longitude": lon}),
        )
        .await
        .unwrap();
    assert_eq!(got, as_seen(named));
    let got = client
        .unary(
            "routeguide.RouteGuide/GetFeature",
            json!({"latitude": 1, "longitude": -2}),
        )
        .await
        .unwrap();
    assert_eq!(got, json!({"location": {"latitude": 1, "longitude": -2}}));
}

#[tokio::test]
async fn list_features_in_either_corner_order_bounds_inclusive() {
    let (_s, client) = route_guide().await;
    let db = db();
    let (lo, hi) = (
        (400_000_000i64, -750_000_000i64),
        (420_000_000i64, -730_000_000i64),
    );
    let inside = |f: &&Value| {
        let (lat, lon) = point(f);
        lat >= lo.0 && lat <= hi.0 && lon >= lo.1 && lon <= hi.1
    };
    let want: Vec<Value> = db.iter().filter(inside).map(as_seen).collect();
    assert!(want.len() > 10);
    let rect = |a: (i64, i64), b: (i64, i64)| json!({"lo": {"latitude": a.0, "longitude": a.1}, "hi": {"latitude": b.0, "longitude": b.1}});
    let got = client
        .server_stream("routeguide.RouteGuide/ListFeatures", rect(lo, hi))
        .await
        .unwrap();
    assert_eq!(got, want);
    let got = client
        .server_stream("routeguide.RouteGuide/ListFeatures", rect(hi, lo))
        .await
        .unwrap();
    assert_eq!(got, want);
    let got = client
        .server_stream(
            "routeguide.RouteGuide/ListFeatures",
            rect((hi.0, lo.1), (lo.0, hi.1)),
        )
        .await
        .unwrap();
    assert_eq!(got, want);
    // A rectangle whose corners are exactly one feature's point holds that feature.
    let f = &db[3];
    let p = point(f);
    let got = client
        .server_stream("routeguide.RouteGuide/ListFeatures", rect(p, p))
        .await
        .unwrap();
    let same: Vec<Value> = db.iter().filter(|g| point(g) == p).map(as_seen).collect();
    assert_eq!(got, same);
}

#[tokio::test]
async fn record_route_counts_measures_and_times() {
    let (_s, client) = route_guide().await;
    let db = db();
    let mut points: Vec<(i64, i64)> = db.iter().step_by(7).take(8).map(point).collect();
    points.insert(3, (1, 1));
    points.push((-1, -1));
    let features = points
        .iter()
        .filter(|p| db.iter().any(|f| point(f) == **p))
        .count();
    let distance: f64 = points.windows(2).map(|w| haversine(w[0], w[1])).sum();
    let items: Vec<Value> = points
        .iter()
        .map(|p| json!({"latitude": p.0, "longitude": p.1}))
        .collect();
    let got = client
        .client_stream("routeguide.RouteGuide/RecordRoute", items)
        .await
        .unwrap();
    assert_eq!(got["pointCount"], json!(points.len()));
    assert_eq!(got["featureCount"], json!(features));
    assert_eq!(got["distance"], json!(distance as i64));
    assert_eq!(got.get("elapsedTime"), None, "{got}");

    // elapsed_time: whole seconds from the start of the call to the end of the stream.
    let m = client.method("routeguide.RouteGuide/RecordRoute");
    let input = m.input();
    let slow = async_stream_points(input, vec![(1, 1), (2, 2)], Duration::from_millis(1100));
    let mut grpc = tonic::client::Grpc::new(client.channel.clone());
    grpc.ready().await.unwrap();
    let resp = grpc
        .client_streaming(
            tonic::Request::new(slow),
            "/routeguide.RouteGuide/RecordRoute".parse().unwrap(),
            common::DynamicCodec::new(m.output()),
        )
        .await
        .unwrap();
    let got = common::to_json(resp.get_ref());
    assert_eq!(got["pointCount"], 2);
    assert_eq!(got["elapsedTime"], 1);
}

fn async_stream_points(
    desc: prost_reflect::MessageDescriptor,
    points: Vec<(i64, i64)>,
    gap: Duration,
) -> impl futures_util::Stream<Item = protoserve::codec::Outgoing> {
    futures_util::stream::unfold((points.into_iter(), true), move |(mut it, first)| {
        let desc = desc.clone();
        async move {
            let p = it.next()?;
            if !first {
                tokio::time::sleep(gap).await;
            }
            let msg = Client::message(&desc, json!({"latitude": p.0, "longitude": p.1}));
            Some((protoserve::codec::Outgoing::Message(msg), (it, false)))
        }
    })
}

#[tokio::test]
async fn route_chat_replays_earlier_notes_at_the_same_place() {
    let (_s, client) = route_guide().await;
    let a = json!({"latitude": 1, "longitude": 1});
    let b = json!({"latitude": 2, "longitude": 2});
    let notes: Vec<Value> = [(&a, "1"), (&b, "2"), (&a, "3"), (&a, "4"), (&b, "5")]
        .iter()
        .map(|(l, m)| json!({"location": l, "message": m}))
        .collect();
    let (got, status) = client
        .bidi("routeguide.RouteGuide/RouteChat", notes.clone())
        .await;
    assert!(status.is_none(), "{status:?}");
    let messages: Vec<&str> = got.iter().map(|n| n["message"].as_str().unwrap()).collect();
    assert_eq!(messages, vec!["1", "1", "3", "2"]);
    // A second call starts with nothing remembered.
    let (got, _) = client
        .bidi("routeguide.RouteGuide/RouteChat", notes[..1].to_vec())
        .await;
    assert!(got.is_empty());
}

/// A message that arrives while the script waits on its request stream goes through the same
/// checks as one already buffered: a malformed one fails the call with INVALID_ARGUMENT.
#[tokio::test]
async fn a_malformed_message_arriving_while_the_script_waits_fails_the_call() {
    let (_s, client) = route_guide().await;
    let m = client.method("routeguide.RouteGuide/RecordRoute");
    let good = Client::message(&m.input(), json!({"latitude": 1, "longitude": 1}));
    let bodies = vec![
        protoserve::codec::Outgoing::Message(good),
        // Field 1 (latitude), a varint whose continuation bit promises a byte that never comes.
        protoserve::codec::Outgoing::Encoded(bytes::Bytes::from_static(&[0x08, 0x80])),
    ];
    let slow =
        futures_util::stream::unfold((bodies.into_iter(), true), |(mut it, first)| async move {
            let body = it.next()?;
            if !first {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Some((body, (it, false)))
        });
    let mut grpc = tonic::client::Grpc::new(client.channel.clone());
    grpc.ready().await.unwrap();
    let status = grpc
        .client_streaming(
            tonic::Request::new(slow),
            "/routeguide.RouteGuide/RecordRoute".parse().unwrap(),
            common::DynamicCodec::new(m.output()),
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
}
