'use strict';
// @grpc/grpc-js + @grpc/proto-loader peer for the protoserve benchmarks.
//
// Serves helloworld.Greeter, routeguide.RouteGuide (the gRPC tutorial's
// behaviour) and bench.Echo, loading the .proto files at startup like the
// grpc-js examples do.
//
//   node server.js --listen 127.0.0.1:0 --data route_guide_db.json \
//       --protos ../../../protos --protos ../../protos
//
// With --load-all DIR it instead loads every .proto under DIR and answers
// every unary method with a default message: the startup-time comparison.

const fs = require('fs');
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const LOADER_OPTS = { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true };

function parseArgs(argv) {
  const out = { listen: '127.0.0.1:50051', data: null, protos: [], loadAll: null };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const v = () => {
      if (i + 1 >= argv.length) usage();
      return argv[++i];
    };
    if (a === '--listen') out.listen = v();
    else if (a === '--data') out.data = v();
    else if (a === '--protos') out.protos.push(v());
    else if (a === '--load-all') out.loadAll = v();
    else usage();
  }
  return out;
}

function usage() {
  console.error('usage: node server.js --listen ADDR [--data DB.json] --protos DIR [--protos DIR]... | --load-all DIR');
  process.exit(2);
}

function findProto(dirs, name) {
  for (const d of dirs) {
    const p = path.join(d, name);
    if (fs.existsSync(p)) return p;
  }
  throw new Error(`${name} not found in ${dirs.join(', ')}`);
}

// ---------------------------------------------------------------- RouteGuide

const COORD_FACTOR = 1e7;

function inRange(p, rect) {
  const left = Math.min(rect.lo.longitude, rect.hi.longitude);
  const right = Math.max(rect.lo.longitude, rect.hi.longitude);
  const bottom = Math.min(rect.lo.latitude, rect.hi.latitude);
  const top = Math.max(rect.lo.latitude, rect.hi.latitude);
  return p.longitude >= left && p.longitude <= right && p.latitude >= bottom && p.latitude <= top;
}

function distance(a, b) {
  const rad = (x) => (x * Math.PI) / 180;
  const lat1 = rad(a.latitude / COORD_FACTOR);
  const lat2 = rad(b.latitude / COORD_FACTOR);
  const lon1 = rad(a.longitude / COORD_FACTOR);
  const lon2 = rad(b.longitude / COORD_FACTOR);
  const R = 6371000;
  const dlat = lat2 - lat1;
  const dlon = lon2 - lon1;
  const h = Math.sin(dlat / 2) ** 2 + Math.cos(lat1) * Math.cos(lat2) * Math.sin(dlon / 2) ** 2;
  return Math.trunc(R * 2 * Math.atan2(Math.sqrt(h), Math.sqrt(1 - h)));
}

function routeGuide(features) {
  const findFeature = (p) => {
    for (const f of features) {
      if (f.location.latitude === p.latitude && f.location.longitude === p.longitude) return f;
    }
    return null;
  };
  return {
    GetFeature(call, callback) {
      const f = findFeature(call.request);
      callback(null, f || { name: '', location: call.request });
    },
    ListFeatures(call) {
      const rect = call.request;
      for (const f of features) {
        if (inRange(f.location, rect)) call.write(f);
      }
      call.end();
    },
    RecordRoute(call, callback) {
      let pointCount = 0;
      let featureCount = 0;
      let dist = 0;
      let previous = null;
      const start = process.hrtime.bigint();
      call.on('data', (p) => {
        pointCount += 1;
        const f = findFeature(p);
        if (f && f.name !== '') featureCount += 1;
        if (previous) dist += distance(previous, p);
        previous = p;
      });
      call.on('end', () => {
        const elapsed = Number((process.hrtime.bigint() - start) / 1000000000n);
        callback(null, { point_count: pointCount, feature_count: featureCount, distance: dist, elapsed_time: elapsed });
      });
    },
    RouteChat(call) {
      // Answer each note with the notes received earlier at the same location.
      const notes = new Map();
      call.on('data', (note) => {
        const key = `${note.location.latitude} ${note.location.longitude}`;
        let earlier = notes.get(key);
        if (earlier === undefined) {
          earlier = [];
          notes.set(key, earlier);
        }
        for (const prev of earlier) call.write(prev);
        earlier.push(note);
      });
      call.on('end', () => call.end());
    },
  };
}

// ---------------------------------------------------------------- main

function listProtos(dir) {
  const out = [];
  const walk = (d) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.name.endsWith('.proto')) out.push(path.relative(dir, p));
    }
  };
  walk(dir);
  return out.sort();
}

function addAllServices(server, pkg) {
  // Walk the loaded package tree; every service gets default replies.
  const visit = (obj) => {
    for (const v of Object.values(obj)) {
      if (typeof v === 'function' && v.service) {
        const impl = {};
        for (const [name, def] of Object.entries(v.service)) {
          if (!def.requestStream && !def.responseStream) impl[name] = (call, cb) => cb(null, {});
          else impl[name] = (call) => call.destroy(new Error('unimplemented'));
          if (def.originalName) impl[def.originalName] = impl[name];
        }
        server.addService(v.service, impl);
      } else if (v && typeof v === 'object' && !v.format) {
        visit(v);
      }
    }
  };
  visit(pkg);
}

function main() {
  const args = parseArgs(process.argv.slice(2));
  const server = new grpc.Server();
  let what;
  if (args.loadAll) {
    const files = listProtos(args.loadAll);
    const def = protoLoader.loadSync(files, { ...LOADER_OPTS, includeDirs: [path.resolve(args.loadAll)] });
    addAllServices(server, grpc.loadPackageDefinition(def));
    what = `${files.length} proto files`;
  } else {
    const files = ['helloworld.proto', 'route_guide.proto', 'bench.proto'];
    files.forEach((f) => findProto(args.protos, f));
    const includeDirs = args.protos.map((d) => path.resolve(d));
    const def = protoLoader.loadSync(files, { ...LOADER_OPTS, includeDirs });
    const pkg = grpc.loadPackageDefinition(def);
    const features = args.data ? JSON.parse(fs.readFileSync(args.data, 'utf8')) : [];
    const hello = (call, callback) => callback(null, { message: `Hello, ${call.request.name}!` });
    server.addService(pkg.helloworld.Greeter.service, { SayHello: hello, SayHelloAgain: hello });
    server.addService(pkg.routeguide.RouteGuide.service, routeGuide(features));
    server.addService(pkg.bench.Echo.service, { Echo: (call, callback) => callback(null, call.request) });
    what = `${features.length} features`;
  }
  const host = args.listen.slice(0, args.listen.lastIndexOf(':'));
  server.bindAsync(args.listen, grpc.ServerCredentials.createInsecure(), (err, port) => {
    if (err) {
      console.error(`bind ${args.listen}: ${err.message}`);
      process.exit(1);
    }
    console.error(`node grpc-js peer listening on ${host}:${port} (${what})`);
  });
}

main();
