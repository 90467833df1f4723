//! Code-generated tonic peer for the protoserve benchmarks.
//!
//! Serves helloworld.Greeter, routeguide.RouteGuide (the gRPC tutorial's
//! behaviour), bench.Echo and bench.Compute with plain tonic/prost code generation, written
//! the way a tonic user would write it. It is the baseline every ratio in
//! bench/RESULTS.md is relative to.
//!
//! Usage: bench-tonic-peer --listen 127.0.0.1:50051 --data route_guide_db.json

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

pub mod helloworld {
    tonic::include_proto!("helloworld");
}
pub mod routeguide {
    tonic::include_proto!("routeguide");
}
pub mod bench {
    tonic::include_proto!("bench");
}

use bench::compute_server::{Compute, ComputeServer};
use bench::echo_server::{Echo, EchoServer};
use bench::{Blob, RouteRequest, RouteResult};
use helloworld::greeter_server::{Greeter, GreeterServer};
use helloworld::{HelloReply, HelloRequest};
use routeguide::route_guide_server::{RouteGuide, RouteGuideServer};
use routeguide::{Feature, Point, Rectangle, RouteNote, RouteSummary};

// ---------------------------------------------------------------- Greeter

#[derive(Default)]
struct GreeterImpl;

#[tonic::async_trait]
impl Greeter for GreeterImpl {
    async fn say_hello(&self, req: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
        let message = format!("Hello, {}!", req.into_inner().name);
        Ok(Response::new(HelloReply { message }))
    }

    async fn say_hello_again(
        &self,
        req: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        let message = format!("Hello, {}!", req.into_inner().name);
        Ok(Response::new(HelloReply { message }))
    }
}

// ---------------------------------------------------------------- Echo

#[derive(Default)]
struct EchoImpl;

#[tonic::async_trait]
impl Echo for EchoImpl {
    async fn echo(&self, req: Request<Blob>) -> Result<Response<Blob>, Status> {
        Ok(Response::new(req.into_inner()))
    }
}

// ---------------------------------------------------------------- Compute

#[derive(Default)]
struct ComputeImpl;

#[tonic::async_trait]
impl Compute for ComputeImpl {
    /// The RecordRoute loop over a generated route (see bench/protos/bench.proto), as the Lua
    /// handler bench/handlers/lua/compute.lua runs it: a value per point, haversine between
    /// consecutive points, the floor of the sum.
    async fn route(&self, req: Request<RouteRequest>) -> Result<Response<RouteResult>, Status> {
        let n = req.into_inner().points.max(0);
        let mut total = 0.0f64;
        let mut previous: Option<Point> = None;
        for i in 0..i64::from(n) {
            let point = Point {
                latitude: (400_000_000 + (i * 7919) % 2_000_000 - 1_000_000) as i32,
                longitude: (-740_000_000 + (i * 104_729) % 2_000_000 - 1_000_000) as i32,
            };
            if let Some(prev) = &previous {
                total += distance_m(prev, &point);
            }
            previous = Some(point);
        }
        Ok(Response::new(RouteResult { point_count: n, distance: total.floor() as i64 }))
    }
}

// ---------------------------------------------------------------- RouteGuide

struct RouteGuideImpl {
    features: Arc<Vec<Feature>>,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl RouteGuide for RouteGuideImpl {
    async fn get_feature(&self, req: Request<Point>) -> Result<Response<Feature>, Status> {
        let point = req.into_inner();
        for feature in self.features.iter() {
            if feature.location.as_ref() == Some(&point) {
                return Ok(Response::new(feature.clone()));
            }
        }
        Ok(Response::new(Feature { name: String::new(), location: Some(point) }))
    }

    type ListFeaturesStream = BoxStream<Feature>;

    async fn list_features(
        &self,
        req: Request<Rectangle>,
    ) -> Result<Response<Self::ListFeaturesStream>, Status> {
        let rect = req.into_inner();
        let features = self.features.clone();
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            for feature in features.iter() {
                if let Some(loc) = &feature.location {
                    if in_range(loc, &rect) && tx.send(Ok(feature.clone())).await.is_err() {
                        return; // client went away
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn record_route(
        &self,
        req: Request<Streaming<Point>>,
    ) -> Result<Response<RouteSummary>, Status> {
        let mut stream = req.into_inner();
        let start = Instant::now();
        let mut summary = RouteSummary::default();
        let mut last: Option<Point> = None;
        while let Some(point) = stream.next().await {
            let point = point?;
            summary.point_count += 1;
            if self.features.iter().any(|f| f.location.as_ref() == Some(&point) && !f.name.is_empty()) {
                summary.feature_count += 1;
            }
            if let Some(prev) = &last {
                summary.distance += distance(prev, &point);
            }
            last = Some(point);
        }
        summary.elapsed_time = start.elapsed().as_secs() as i32;
        Ok(Response::new(summary))
    }

    type RouteChatStream = BoxStream<RouteNote>;

    async fn route_chat(
        &self,
        req: Request<Streaming<RouteNote>>,
    ) -> Result<Response<Self::RouteChatStream>, Status> {
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            // Notes received so far, per location. Like the gRPC tutorial
            // (Go/C++), a note is answered with the notes received *earlier*
            // at the same location, then remembered.
            let mut notes: HashMap<(i32, i32), Vec<RouteNote>> = HashMap::new();
            while let Some(note) = inbound.next().await {
                let note = match note {
                    Ok(n) => n,
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                };
                let key = note.location.as_ref().map(|p| (p.latitude, p.longitude)).unwrap_or_default();
                let earlier = notes.entry(key).or_default();
                for prev in earlier.iter() {
                    if tx.send(Ok(prev.clone())).await.is_err() {
                        return;
                    }
                }
                earlier.push(note);
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

fn in_range(p: &Point, rect: &Rectangle) -> bool {
    let lo = rect.lo.clone().unwrap_or_default();
    let hi = rect.hi.clone().unwrap_or_default();
    let (left, right) = (lo.longitude.min(hi.longitude), lo.longitude.max(hi.longitude));
    let (bottom, top) = (lo.latitude.min(hi.latitude), lo.latitude.max(hi.latitude));
    p.longitude >= left && p.longitude <= right && p.latitude >= bottom && p.latitude <= top
}

/// Great-circle distance in metres (haversine), coordinates in E7 degrees.
fn distance(a: &Point, b: &Point) -> i32 {
    const COORD_FACTOR: f64 = 1e7;
    const R: f64 = 6_371_000.0;
    let lat1 = (a.latitude as f64 / COORD_FACTOR).to_radians();
    let lat2 = (b.latitude as f64 / COORD_FACTOR).to_radians();
    let lng1 = (a.longitude as f64 / COORD_FACTOR).to_radians();
    let lng2 = (b.longitude as f64 / COORD_FACTOR).to_radians();
    let dlat = lat2 - lat1;
    let dlng = lng2 - lng1;
    let h = (dlat / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * (dlng / 2.0).sin().powi(2);
    let c = 2.0 * h.sqrt().atan2((1.0 - h).sqrt());
    (R * c) as i32
}

/// The same in the steps of the Lua handlers (longitudes subtracted before the conversion),
/// unrounded.
fn distance_m(a: &Point, b: &Point) -> f64 {
    const COORD_FACTOR: f64 = 1e7;
    const R: f64 = 6_371_000.0;
    let lat1 = (a.latitude as f64 / COORD_FACTOR).to_radians();
    let lat2 = (b.latitude as f64 / COORD_FACTOR).to_radians();
    let dlng = ((b.longitude - a.longitude) as f64 / COORD_FACTOR).to_radians();
    let dlat = lat2 - lat1;
    let h = (dlat / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * (dlng / 2.0).sin().powi(2);
    let c = 2.0 * h.sqrt().atan2((1.0 - h).sqrt());
    R * c
}

// ---------------------------------------------------------------- data + CLI

#[derive(serde::Deserialize)]
struct JsonPoint {
    latitude: i32,
    longitude: i32,
}

#[derive(serde::Deserialize)]
struct JsonFeature {
    #[serde(default)]
    name: String,
    location: JsonPoint,
}

fn load_features(path: &str) -> Vec<Feature> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read route guide DB {path}: {e}"));
    let parsed: Vec<JsonFeature> =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad route guide DB {path}: {e}"));
    parsed
        .into_iter()
        .map(|f| Feature {
            name: f.name,
            location: Some(Point { latitude: f.location.latitude, longitude: f.location.longitude }),
        })
        .collect()
}

fn usage() -> ! {
    eprintln!("usage: bench-tonic-peer --listen ADDR --data ROUTE_GUIDE_DB.json");
    std::process::exit(2);
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut listen: SocketAddr = "127.0.0.1:50051".parse()?;
    let mut data: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().unwrap_or_else(|| usage()).parse()?,
            "--data" => data = Some(args.next().unwrap_or_else(|| usage())),
            _ => usage(),
        }
    }
    let features = Arc::new(data.as_deref().map(load_features).unwrap_or_default());

    // TcpIncoming (not a bare listener stream) so accepted sockets get
    // TCP_NODELAY, as `Server::serve` would set: without it Nagle + delayed
    // ACKs add ~40 ms stalls to streaming calls.
    let incoming = tonic::transport::server::TcpIncoming::bind(listen)?.with_nodelay(Some(true));
    let addr = incoming.local_addr()?;
    eprintln!("bench-tonic-peer listening on {addr} ({} features)", features.len());

    tonic::transport::Server::builder()
        .add_service(GreeterServer::new(GreeterImpl))
        .add_service(RouteGuideServer::new(RouteGuideImpl { features }))
        .add_service(EchoServer::new(EchoImpl))
        .add_service(ComputeServer::new(ComputeImpl))
        .serve_with_incoming(incoming)
        .await?;
    Ok(())
}
