//! gRPC server reflection (v1 and v1alpha) over the linked files, served as they were encoded.
//!
//! tonic-reflection decodes every file into `prost_types` (which drops custom options such as
//! `google.api.http`) and keeps that copy: for a tree like googleapis, hundreds of megabytes. This
//! answers from [`Files`] instead: a lookup by name or symbol and the file's encoded bytes.
//! A request for something unknown gets the protocol's NOT_FOUND error response and the stream
//! goes on, as the reflection protocol asks; a request that is not one (bytes that do not
//! decode, a message over `--max-message-size`) ends the stream with the gRPC status that says
//! so, never with OK. So does an answer over `--max-message-size` (RESOURCE_EXHAUSTED, as for
//! every method): an answer repeats its request, so a request just under the limit made an
//! answer over it, which clients refuse.
//!
//! Each request is read and answered only when the transport asks for the next response, never
//! ahead of it: an answer can be a file of megabytes, and the only answer a stream holds outside
//! `crate::layers::buffers` is the one being encoded. (Answers queued ahead, four per stream,
//! were not counted: streams whose client read nothing made the server hold five times
//! `--max-buffered`.)

use std::pin::Pin;
use std::sync::Arc;

use futures_util::{stream, Stream};
use tonic::{Request, Response, Status, Streaming};

use crate::schema::Files;

/// What reflection serves: the user's files, then the built-in services' files.
#[derive(Debug, Clone)]
pub struct Index {
    layers: Arc<[Arc<Files>]>,
    /// `--max-message-size`: the largest answer.
    max_message_size: usize,
}

impl Index {
    pub fn new(user: Arc<Files>, builtin: Arc<Files>, max_message_size: usize) -> Self {
        Self {
            layers: vec![user, builtin].into(),
            max_message_size,
        }
    }

    fn file_by_name(&self, name: &str) -> Option<Vec<u8>> {
        self.layers
            .iter()
            .find_map(|f| f.by_name(name))
            .map(|f| f.bytes.to_vec())
    }

    fn file_by_symbol(&self, symbol: &str) -> Option<Vec<u8>> {
        self.layers
            .iter()
            .find_map(|f| f.by_symbol(symbol))
            .map(|f| f.bytes.to_vec())
    }

    /// The file declaring extension `number` of message `extendee`.
    fn file_by_extension(&self, extendee: &str, number: i32) -> Option<Vec<u8>> {
        self.layers
            .iter()
            .find_map(|f| f.by_extension(extendee, number))
            .map(|f| f.bytes.to_vec())
    }

    /// The field numbers of every extension of message `extendee`, in order.
    fn extension_numbers(&self, extendee: &str) -> Vec<i32> {
        let mut numbers: Vec<i32> = self
            .layers
            .iter()
            .flat_map(|f| f.extension_numbers(extendee))
            .collect();
        numbers.sort_unstable();
        numbers.dedup();
        numbers
    }

    fn services(&self) -> Vec<String> {
        self.layers
            .iter()
            .flat_map(|f| f.services().iter().map(|s| s.name.to_string()))
            .collect()
    }
}

/// A name from a request, quoted for an error message: a long one by its start only, so that
/// an answer never repeats megabytes the client sent.
fn quoted(name: &str) -> String {
    const SHOWN: usize = 200;
    match name.char_indices().nth(SHOWN) {
        Some((cut, _)) => format!("{:?}… ({} bytes)", &name[..cut], name.len()),
        None => format!("{name:?}"),
    }
}

/// `grpc.reflection.*` NOT_FOUND.
const NOT_FOUND: i32 = tonic::Code::NotFound as i32;

macro_rules! reflection_service {
    ($module:ident, $name:ident) => {
        pub mod $module {
            use super::*;
            use tonic_reflection::pb::$module::server_reflection_request::MessageRequest;
            use tonic_reflection::pb::$module::server_reflection_response::MessageResponse;
            use tonic_reflection::pb::$module::server_reflection_server::{
                ServerReflection, ServerReflectionServer,
            };
            use tonic_reflection::pb::$module::{
                ErrorResponse, ExtensionNumberResponse, FileDescriptorResponse,
                ListServiceResponse, ServerReflectionRequest, ServerReflectionResponse,
                ServiceResponse,
            };

            /// The reflection service of this protocol version.
            pub struct $name(pub Index);

            impl $name {
                pub fn server(index: Index) -> ServerReflectionServer<Self> {
                    ServerReflectionServer::new(Self(index))
                }

                fn answer(&self, request: &MessageRequest) -> MessageResponse {
                    let file = |found: Option<Vec<u8>>, what: &str| match found {
                        Some(bytes) => {
                            MessageResponse::FileDescriptorResponse(FileDescriptorResponse {
                                file_descriptor_proto: vec![bytes],
                            })
                        }
                        None => MessageResponse::ErrorResponse(ErrorResponse {
                            error_code: NOT_FOUND,
                            error_message: format!("{what} not found"),
                        }),
                    };
                    match request {
                        MessageRequest::FileByFilename(name) => {
                            file(self.0.file_by_name(name), &format!("file {}", quoted(name)))
                        }
                        MessageRequest::FileContainingSymbol(symbol) => file(
                            self.0.file_by_symbol(symbol),
                            &format!("symbol {}", quoted(symbol)),
                        ),
                        MessageRequest::FileContainingExtension(e) => file(
                            self.0
                                .file_by_extension(&e.containing_type, e.extension_number),
                            &format!(
                                "extension {} of {}",
                                e.extension_number,
                                quoted(&e.containing_type)
                            ),
                        ),
                        // Clients such as grpcurl expect an answer here, not an error: a type
                        // that is unknown, or that nothing extends, has no extension numbers.
                        MessageRequest::AllExtensionNumbersOfType(t) => {
                            MessageResponse::AllExtensionNumbersResponse(ExtensionNumberResponse {
                                base_type_name: t.clone(),
                                extension_number: self.0.extension_numbers(t),
                            })
                        }
                        MessageRequest::ListServices(_) => {
                            MessageResponse::ListServicesResponse(ListServiceResponse {
                                service: self
                                    .0
                                    .services()
                                    .into_iter()
                                    .map(|name| ServiceResponse { name })
                                    .collect(),
                            })
                        }
                    }
                }

                /// The response to one request of the stream; an error when it is over
                /// `--max-message-size`.
                fn respond(
                    &self,
                    req: ServerReflectionRequest,
                ) -> Result<ServerReflectionResponse, Status> {
                    let response = match &req.message_request {
                        Some(m) => self.answer(m),
                        None => MessageResponse::ErrorResponse(ErrorResponse {
                            error_code: tonic::Code::InvalidArgument as i32,
                            error_message: "empty reflection request".into(),
                        }),
                    };
                    let response = ServerReflectionResponse {
                        valid_host: req.host.clone(),
                        original_request: Some(req),
                        message_response: Some(response),
                    };
                    let len = prost::Message::encoded_len(&response);
                    let limit = self.0.max_message_size;
                    if len > limit {
                        return Err(crate::error::CallError::ResponseTooLarge { len, limit }.into());
                    }
                    Ok(response)
                }
            }

            #[tonic::async_trait]
            impl ServerReflection for $name {
                type ServerReflectionInfoStream =
                    Pin<Box<dyn Stream<Item = Result<ServerReflectionResponse, Status>> + Send>>;

                async fn server_reflection_info(
                    &self,
                    request: Request<Streaming<ServerReflectionRequest>>,
                ) -> Result<Response<Self::ServerReflectionInfoStream>, Status> {
                    let this = Self(self.0.clone());
                    let answers =
                        stream::unfold(Some((request.into_inner(), this)), |state| async move {
                            let (mut requests, this) = state?;
                            match requests.message().await {
                                Ok(Some(req)) => match this.respond(req) {
                                    Ok(answer) => Some((Ok(answer), Some((requests, this)))),
                                    Err(status) => Some((Err(status), None)),
                                },
                                Ok(None) => None,
                                // A request that does not decode, is over
                                // `--max-message-size` or breaks the framing ends the stream
                                // with its status (rewritten as gRPC specifies on the way
                                // out, see `crate::layers::status`), not with OK.
                                Err(status) => Some((Err(status), None)),
                            }
                        });
                    Ok(Response::new(Box::pin(answers)))
                }
            }
        }
    };
}

reflection_service!(v1, ReflectionV1);
reflection_service!(v1alpha, ReflectionV1alpha);
