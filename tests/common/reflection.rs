//! Server reflection clients, one per protocol version (`v1`, `v1alpha`): the same calls,
//! each with its version's generated types.

macro_rules! reflection_client {
    ($version:ident) => {
        pub mod $version {
            use tonic::transport::Channel;
            use tonic_reflection::pb::$version::server_reflection_client::ServerReflectionClient;
            pub use tonic_reflection::pb::$version::server_reflection_request::MessageRequest;
            pub use tonic_reflection::pb::$version::server_reflection_response::MessageResponse;
            use tonic_reflection::pb::$version::ServerReflectionRequest;

            /// Sends `requests` on one reflection stream; their answers, in order.
            pub async fn ask(
                channel: Channel,
                requests: Vec<MessageRequest>,
            ) -> Vec<MessageResponse> {
                let n = requests.len();
                let requests: Vec<_> = requests
                    .into_iter()
                    .map(|r| ServerReflectionRequest {
                        host: String::new(),
                        message_request: Some(r),
                    })
                    .collect();
                let mut responses = ServerReflectionClient::new(channel)
                    .server_reflection_info(futures_util::stream::iter(requests))
                    .await
                    .expect("reflection call")
                    .into_inner();
                let mut out = Vec::with_capacity(n);
                for _ in 0..n {
                    let answer = responses
                        .message()
                        .await
                        .expect("reflection answer")
                        .expect("one answer per request");
                    out.push(answer.message_response.expect("an answer with a message"));
                }
                out
            }

            /// The services the server lists (`ListServices`).
            pub async fn list_services(channel: Channel) -> Vec<String> {
                let answer = ask(channel, vec![MessageRequest::ListServices(String::new())]).await;
                match answer.into_iter().next() {
                    Some(MessageResponse::ListServicesResponse(list)) => {
                        list.service.into_iter().map(|s| s.name).collect()
                    }
                    other => panic!("expected a service list, got {other:?}"),
                }
            }
        }
    };
}

reflection_client!(v1);
reflection_client!(v1alpha);
