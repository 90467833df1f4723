//! Every linked file, encoded once, with the indexes serving needs: file by name, file by
//! symbol (for reflection), the services and their methods (for listing, health and routing of
//! methods without handlers), and each file's dependencies (to cut a closure out for the pool).
//!
//! This is what a big tree costs while serving: the encoded descriptors (about 19 MB for all of
//! googleapis) and a few names per type, not a prost-reflect pool of every file.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use prost::Message as _;

use super::link::join;
use super::{parallel, raw};
use crate::handler::Shape;

/// One linked file.
#[derive(Debug)]
pub struct FileEntry {
    pub name: Box<str>,
    /// The encoded `FileDescriptorProto`, without source info.
    pub bytes: Bytes,
    /// Indexes of the files it imports.
    pub deps: Box<[u32]>,
    /// Written in a protobuf edition (only descriptor sets have these).
    pub editions: bool,
    /// A `syntax` no protobuf version has (only a descriptor set can say one), which the
    /// descriptor library panics on.
    pub unknown_syntax: Option<Box<str>>,
}

/// A service as declared, whether or not serving has its descriptors.
#[derive(Debug)]
pub struct ServiceEntry {
    pub name: Box<str>,
    pub file: u32,
    pub methods: Vec<MethodEntry>,
}

/// A method as declared.
#[derive(Debug)]
pub struct MethodEntry {
    pub name: Box<str>,
    pub input: Box<str>,
    pub output: Box<str>,
    pub shape: Shape,
}

/// All linked files, in dependency order (a file comes after everything it imports).
#[derive(Debug, Default)]
pub struct Files {
    files: Vec<FileEntry>,
    by_name: HashMap<Box<str>, u32>,
    symbols: HashMap<Box<str>, u32>,
    services: Vec<ServiceEntry>,
    /// Every method's HTTP/2 path, `/package.Service/Method`.
    paths: HashSet<Box<str>>,
    /// Extensions by the message they extend: each one's field number and file.
    extensions: HashMap<Box<str>, Vec<(i32, u32)>>,
}

impl Files {
    /// Indexes encoded files, which must be in dependency order.
    pub fn from_encoded(files: Vec<Bytes>) -> Result<Self, String> {
        let names = parallel::map(files, |bytes| {
            raw::FileNames::decode(bytes.as_ref()).map(|n| (n, bytes))
        });
        let mut out = Files::default();
        out.files.reserve(names.len());
        for n in names {
            let (names, bytes) = n.map_err(|e| e.to_string())?;
            out.push(names, bytes);
        }
        Ok(out)
    }

    /// Indexes an encoded `FileDescriptorSet` without copying its files; files that come before
    /// what they import are put in dependency order first.
    pub fn from_encoded_set(set: Bytes) -> Result<Self, String> {
        let mut files = Vec::new();
        let mut rest = set.clone();
        while !rest.is_empty() {
            let bad = |what: &str| format!("not a FileDescriptorSet: {what}");
            let (tag, wire) =
                prost::encoding::decode_key(&mut rest).map_err(|e| bad(&e.to_string()))?;
            if tag != 1 || wire != prost::encoding::WireType::LengthDelimited {
                return Err(bad("a field other than `file`"));
            }
            let len = prost::encoding::decode_varint(&mut rest).map_err(|e| bad(&e.to_string()))?;
            let len = usize::try_from(len).unwrap_or(usize::MAX);
            if len > rest.len() {
                return Err(bad("truncated"));
            }
            files.push(rest.split_to(len));
        }
        Self::from_encoded(dependency_order(files).map_err(|e| e.to_string())?)
    }

    fn push(&mut self, file: raw::FileNames, bytes: Bytes) {
        let index = self.files.len() as u32;
        let package = raw::name(&file.package).to_owned();
        let mut names = Vec::new();
        let mut extensions = Vec::new();
        for m in &file.message_type {
            message_names(&package, m, &mut names, &mut extensions);
        }
        for e in &file.enum_type {
            names.push(join(&package, raw::name(&e.name)));
        }
        for x in &file.extension {
            names.push(join(&package, raw::name(&x.name)));
            extensions.push(x);
        }
        for s in &file.service {
            let full = join(&package, raw::name(&s.name));
            let methods = s
                .method
                .iter()
                .map(|m| {
                    names.push(format!("{full}.{}", raw::name(&m.name)));
                    self.paths
                        .insert(format!("/{full}/{}", raw::name(&m.name)).into());
                    MethodEntry {
                        name: raw::name(&m.name).into(),
                        input: raw::name(&m.input_type).trim_start_matches('.').into(),
                        output: raw::name(&m.output_type).trim_start_matches('.').into(),
                        shape: match (
                            m.client_streaming.unwrap_or(false),
                            m.server_streaming.unwrap_or(false),
                        ) {
                            (false, false) => Shape::Unary,
                            (false, true) => Shape::ServerStreaming,
                            (true, false) => Shape::ClientStreaming,
                            (true, true) => Shape::Bidi,
                        },
                    }
                })
                .collect();
            names.push(full.clone());
            self.services.push(ServiceEntry {
                name: full.into(),
                file: index,
                methods,
            });
        }
        for name in names {
            self.symbols.entry(name.into()).or_insert(index);
        }
        for x in extensions {
            if let Some(number) = x.number {
                let extendee = raw::name(&x.extendee).trim_start_matches('.');
                self.extensions
                    .entry(extendee.into())
                    .or_default()
                    .push((number, index));
            }
        }
        let deps = file
            .dependency
            .iter()
            .filter_map(|d| self.by_name.get(d.as_str()).copied())
            .collect();
        let name: Box<str> = raw::name(&file.name).into();
        self.by_name.insert(name.clone(), index);
        self.files.push(FileEntry {
            name,
            bytes,
            deps,
            editions: file.syntax.as_deref() == Some("editions"),
            unknown_syntax: file
                .syntax
                .as_deref()
                .filter(|s| !matches!(*s, "" | "proto2" | "proto3" | "editions"))
                .map(Into::into),
        });
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// The file at `index`.
    pub fn get(&self, index: u32) -> Option<&FileEntry> {
        self.files.get(index as usize)
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &FileEntry> {
        self.files.iter()
    }

    pub fn services(&self) -> &[ServiceEntry] {
        &self.services
    }

    /// The service named `name` (`package.Service`), if some file declares it.
    pub fn service(&self, name: &str) -> Option<&ServiceEntry> {
        // The symbol table answers for most names without walking the services.
        if !self.declares_symbol(name) {
            return None;
        }
        self.services.iter().find(|s| &*s.name == name)
    }

    /// Whether `path` (`/package.Service/Method`) is a method some file declares.
    pub fn declares(&self, path: &str) -> bool {
        self.paths.contains(path)
    }

    pub fn method_count(&self) -> usize {
        self.services.iter().map(|s| s.methods.len()).sum()
    }

    pub fn by_name(&self, name: &str) -> Option<&FileEntry> {
        self.by_name.get(name).map(|&i| &self.files[i as usize])
    }

    /// The file that defines a message, enum, service, method or extension.
    pub fn by_symbol(&self, symbol: &str) -> Option<&FileEntry> {
        let symbol = symbol.trim_start_matches('.');
        if let Some(&i) = self.symbols.get(symbol) {
            return Some(&self.files[i as usize]);
        }
        // A field or enum value: the file of its parent.
        let (parent, _) = symbol.rsplit_once('.')?;
        self.symbols.get(parent).map(|&i| &self.files[i as usize])
    }

    /// Whether some file declares the message `name`, or anything else by that name.
    pub fn declares_symbol(&self, name: &str) -> bool {
        self.symbols.contains_key(name.trim_start_matches('.'))
    }

    /// The file that declares extension `number` of message `extendee`.
    pub fn by_extension(&self, extendee: &str, number: i32) -> Option<&FileEntry> {
        let found = self.extensions.get(extendee.trim_start_matches('.'))?;
        let &(_, i) = found.iter().find(|&&(n, _)| n == number)?;
        Some(&self.files[i as usize])
    }

    /// The field numbers of every extension of message `extendee`.
    pub fn extension_numbers(&self, extendee: &str) -> impl Iterator<Item = i32> + '_ {
        let found = self.extensions.get(extendee.trim_start_matches('.'));
        found.into_iter().flatten().map(|&(n, _)| n)
    }

    /// Total encoded size.
    pub fn encoded_len(&self) -> usize {
        self.files.iter().map(|f| f.bytes.len()).sum()
    }

    /// The files `roots` need (themselves and everything they import), in dependency order.
    pub fn closure(&self, roots: impl IntoIterator<Item = u32>) -> Vec<u32> {
        let mut wanted = vec![false; self.files.len()];
        let mut stack: Vec<u32> = roots.into_iter().collect();
        while let Some(i) = stack.pop() {
            if !std::mem::replace(&mut wanted[i as usize], true) {
                stack.extend(self.files[i as usize].deps.iter().copied());
            }
        }
        (0..self.files.len() as u32)
            .filter(|&i| wanted[i as usize])
            .collect()
    }

    /// The files at `indexes` as an encoded `FileDescriptorSet`, each file passed through `map`.
    pub fn encode_set_with<E>(
        &self,
        indexes: impl IntoIterator<Item = u32>,
        map: impl Fn(&FileEntry) -> Result<Option<Vec<u8>>, E>,
    ) -> Result<Vec<u8>, E> {
        let mut out = Vec::new();
        for i in indexes {
            let file = &self.files[i as usize];
            let mapped = map(file)?;
            let bytes = mapped.as_deref().unwrap_or(&file.bytes);
            prost::encoding::encode_key(1, prost::encoding::WireType::LengthDelimited, &mut out);
            prost::encoding::encode_varint(bytes.len() as u64, &mut out);
            out.extend_from_slice(bytes);
        }
        Ok(out)
    }

    /// Every file as an encoded `FileDescriptorSet`.
    pub fn encode_all(&self) -> Vec<u8> {
        let all = self.encode_set_with(0..self.files.len() as u32, |_| {
            Ok::<_, std::convert::Infallible>(None)
        });
        match all {
            Ok(set) => set,
            Err(never) => match never {},
        }
    }
}

/// The names `m` declares, into `out`, and the extensions declared inside it, into `extensions`.
fn message_names<'m>(
    scope: &str,
    m: &'m raw::MessageNames,
    out: &mut Vec<String>,
    extensions: &mut Vec<&'m raw::ExtensionNames>,
) {
    let full = join(scope, raw::name(&m.name));
    for n in &m.nested_type {
        message_names(&full, n, out, extensions);
    }
    for e in &m.enum_type {
        out.push(join(&full, raw::name(&e.name)));
    }
    for x in &m.extension {
        out.push(join(&full, raw::name(&x.name)));
        extensions.push(x);
    }
    out.push(full);
}

/// `files` reordered so each comes after the files it imports (a set written by another tool
/// may list them in any order); files whose imports are missing or circular keep their place,
/// for the pool to report.
fn dependency_order(files: Vec<Bytes>) -> Result<Vec<Bytes>, prost::DecodeError> {
    let heads = files
        .iter()
        .map(|b| raw::FileHead::decode(b.as_ref()))
        .collect::<Result<Vec<_>, _>>()?;
    let index: HashMap<&str, usize> = heads
        .iter()
        .enumerate()
        .map(|(i, f)| (raw::name(&f.name), i))
        .collect();
    let mut state = vec![0u8; files.len()]; // 0 new, 1 on the path, 2 done
    let mut order = Vec::with_capacity(files.len());
    for start in 0..files.len() {
        if state[start] != 0 {
            continue;
        }
        // Depth first without recursion: (file, next import to look at).
        let mut stack = vec![(start, 0usize)];
        state[start] = 1;
        while let Some((i, d)) = stack.last_mut() {
            if let Some(dep) = heads[*i].dependency.get(*d) {
                *d += 1;
                if let Some(&j) = index.get(dep.as_str()) {
                    if state[j] == 0 {
                        state[j] = 1;
                        stack.push((j, 0));
                    }
                }
            } else {
                state[*i] = 2;
                order.push(*i);
                stack.pop();
            }
        }
    }
    if order.iter().enumerate().all(|(k, &i)| k == i) {
        return Ok(files);
    }
    let mut slots: Vec<Option<Bytes>> = files.into_iter().map(Some).collect();
    Ok(order.into_iter().filter_map(|i| slots[i].take()).collect())
}
