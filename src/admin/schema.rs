//! The admin gRPC service's `.proto`, shipped inside the binary and compiled at startup with
//! protox, like the user's protos: no code generation, and the messages are
//! [`DynamicMessage`](prost_reflect::DynamicMessage)s mapped to and from the JSON of the HTTP
//! routes, so both front ends carry the same fields.

use prost_reflect::{DescriptorPool, ServiceDescriptor};
use protox::file::{ChainFileResolver, File, FileResolver, GoogleFileResolver};

/// The admin API's `.proto`, as it ships.
pub const ADMIN_PROTO: &str = include_str!("../../proto/protoserve/admin/v1/admin.proto");
/// Its name for imports and reflection.
pub const ADMIN_PROTO_NAME: &str = "protoserve/admin/v1/admin.proto";
/// The service's full name.
pub const ADMIN_SERVICE: &str = "protoserve.admin.v1.Admin";

/// The compiled admin schema.
pub struct AdminSchema {
    pub service: ServiceDescriptor,
    /// The encoded descriptor set (with google/protobuf/struct.proto), for reflection.
    pub encoded: Vec<u8>,
}

struct Embedded;

impl FileResolver for Embedded {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        if name == ADMIN_PROTO_NAME {
            File::from_source(name, ADMIN_PROTO)
        } else {
            Err(protox::Error::file_not_found(name))
        }
    }
}

/// Compiles the shipped `.proto`; an error here is a defect of the build, not of the user's
/// files.
pub fn compile() -> Result<AdminSchema, String> {
    let mut resolver = ChainFileResolver::new();
    resolver.add(Embedded);
    resolver.add(GoogleFileResolver::new());
    let mut compiler = protox::Compiler::with_file_resolver(resolver);
    compiler.include_imports(true);
    compiler
        .open_file(ADMIN_PROTO_NAME)
        .map_err(|e| format!("the admin API's own .proto does not compile: {e}"))?;
    let pool: DescriptorPool = compiler.descriptor_pool();
    let service = pool
        .get_service_by_name(ADMIN_SERVICE)
        .ok_or_else(|| format!("the admin API's .proto lacks {ADMIN_SERVICE}"))?;
    Ok(AdminSchema {
        service,
        encoded: compiler.encode_file_descriptor_set(),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_shipped_proto_compiles() {
        let schema = super::compile().unwrap();
        assert!(schema.service.methods().any(|m| m.name() == "Verify"));
    }
}
