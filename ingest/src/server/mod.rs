//! The HTTP server: actix-server accepting connections (TLS when configured), each through a
//! connection gate ([`gate`]) into actix-http's HTTP/1 dispatcher and the app.
//!
//! This is what `actix_web::HttpServer` builds, with the gate added between the socket and the
//! dispatcher: `HttpServer` takes the socket as it is, and its head timeout covers only the first
//! request of a connection.

mod answers;
mod drain;
mod gate;
mod head;
mod track;

use std::fmt;
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use actix_http::{HttpService, Request, Response, body::MessageBody};
use actix_server::ServerBuilder;
use actix_service::{
    IntoServiceFactory, ServiceFactory, ServiceFactoryExt, fn_service, map_config,
};
use actix_tls::accept::rustls_0_23::{Acceptor, TlsStream};
use actix_web::dev::{AppConfig, Extensions};
use actix_web::rt::net::TcpStream;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};

pub(crate) use drain::{Drain, close_when_draining};
use gate::Gate;
pub(crate) use track::track;

/// KAZOO's HTTP client keeps idle connections for 120 s; keeping ours open longer means the
/// client, not us, closes them, so a request never races a server-side close.
const KEEP_ALIVE: Duration = Duration::from_secs(150);
/// How long a closing connection may take to say goodbye.
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Adds a listener on `listener` serving the app `factory` makes (one per worker thread), over
/// TLS when `tls` is set. Its connections close when `drain` says (see [`drain`]).
pub(crate) fn listen<F, I, S, B>(
    builder: ServerBuilder,
    name: &str,
    listener: TcpListener,
    tls: Option<ServerConfig>,
    drain: &Drain,
    factory: F,
) -> std::io::Result<ServerBuilder>
where
    F: Fn() -> I + Send + Clone + 'static,
    I: IntoServiceFactory<S, Request>,
    S: ServiceFactory<Request, Config = AppConfig> + 'static,
    S::Error: Into<actix_web::Error> + 'static,
    S::InitError: fmt::Debug,
    S::Response: Into<Response<B>> + 'static,
    S::Service: 'static,
    <S::Service as actix_service::Service<Request>>::Future: 'static,
    B: MessageBody + 'static,
{
    let drain = drain.clone();
    match tls {
        None => builder.listen(name, listener, move || {
            let drain = drain.clone();
            fn_service(move |io: TcpStream| {
                let closing = drain.closing();
                async move {
                    let peer = io.peer_addr().ok();
                    Ok::<_, ()>((Gate::new(io, closing), peer))
                }
            })
            .and_then(http(&factory))
        }),
        Some(config) => {
            let acceptor = Acceptor::new(config);
            builder.listen(name, listener, move || {
                let drain = drain.clone();
                acceptor
                    .clone()
                    .map_err(|_| ())
                    .map(move |io: TlsStream<TcpStream>| {
                        let peer = io.get_ref().0.peer_addr().ok();
                        (Gate::new(io, drain.closing()), peer)
                    })
                    .and_then(http(&factory))
            })
        }
    }
}

/// HTTP/1 over a gated connection, for one worker thread's copy of the app.
fn http<T, F, I, S, B>(
    factory: &F,
) -> impl ServiceFactory<
    (Gate<T>, Option<SocketAddr>),
    Config = (),
    Response = (),
    Error = (),
    InitError = (),
> + use<T, F, I, S, B>
where
    T: AsyncRead + AsyncWrite + Unpin + 'static,
    F: Fn() -> I,
    I: IntoServiceFactory<S, Request>,
    S: ServiceFactory<Request, Config = AppConfig> + 'static,
    S::Error: Into<actix_web::Error> + 'static,
    S::InitError: fmt::Debug,
    S::Response: Into<Response<B>> + 'static,
    S::Service: 'static,
    <S::Service as actix_service::Service<Request>>::Future: 'static,
    B: MessageBody + 'static,
{
    let app = factory()
        .into_factory()
        .map_err(|e| e.into().error_response());
    HttpService::build()
        .keep_alive(KEEP_ALIVE)
        // The gate times every head, the first one included, and answers with JSON.
        .client_request_timeout(Duration::ZERO)
        .client_disconnect_timeout(DISCONNECT_TIMEOUT)
        // No graceful-shutdown signal for actix-http: it would close every idle connection at
        // once, and drop a request whose bytes had arrived. The gates close idle connections
        // themselves, between requests (see drain.rs).
        .on_connect_ext(|io: &Gate<T>, data: &mut Extensions| {
            data.insert(io.handle());
        })
        .h1(map_config(app, |()| AppConfig::default()))
        .map_err(|_| ())
        .map_init_err(|_| ())
}
