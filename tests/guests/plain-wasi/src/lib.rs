//! A `wasi:http/proxy` component written against the public `wasi` crate alone, without the
//! tabula SDK: proof that components from other toolchains run unmodified.
//!
//! `GET /plain` answers with the method, path and a header; `GET /plain/outbound` tries an
//! outbound request and reports the error code the host gave; `GET /plain/noresponse` returns
//! without ever answering; `GET /plain/ambient` reports what environment, arguments,
//! preopened directories and stdin the host gave it. Every request prints a line to stdout, which the host logs.

use std::io::Write;

use wasi::http::outgoing_handler;
use wasi::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingRequest, OutgoingResponse, ResponseOutparam,
    Scheme,
};

struct Plain;

impl wasi::exports::http::incoming_handler::Guest for Plain {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        println!("plain guest handling {path}");
        if path.starts_with("/plain/noresponse") {
            return;
        }
        let text = if path.starts_with("/plain/ambient") {
            // What ambient authority the host handed over: there should be none.
            format!(
                "env={} args={} preopens={:?} stdin={}\n",
                wasi::cli::environment::get_environment().len(),
                wasi::cli::environment::get_arguments().len(),
                wasi::filesystem::preopens::get_directories()
                    .into_iter()
                    .map(|(_, name)| name)
                    .collect::<Vec<_>>(),
                wasi::cli::stdin::get_stdin()
                    .blocking_read(1)
                    .map_or("closed".to_string(), |b| format!("{} bytes", b.len())),
            )
        } else if path.starts_with("/plain/outbound") {
            let req = OutgoingRequest::new(Fields::new());
            let _ = req.set_scheme(Some(&Scheme::Http));
            let _ = req.set_authority(Some("127.0.0.1:9"));
            let _ = req.set_path_with_query(Some("/"));
            let result = outgoing_handler::handle(req, None).and_then(|pending| {
                pending.subscribe().block();
                pending
                    .get()
                    .expect("ready after block")
                    .expect("first get")
            });
            match result {
                Ok(_) => "outbound: allowed\n".to_string(),
                Err(code) => format!("outbound: {code:?}\n"),
            }
        } else {
            let agent = request
                .headers()
                .get("user-agent")
                .first()
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default();
            format!("plain wasi: {:?} {path} agent={agent}\n", request.method())
        };

        let headers = Fields::from_list(&[("content-type".into(), b"text/plain".to_vec())])
            .expect("valid header");
        let response = OutgoingResponse::new(headers);
        let body = response.body().expect("body");
        ResponseOutparam::set(out, Ok(response));
        let mut stream = body.write().expect("stream");
        stream.write_all(text.as_bytes()).expect("write");
        drop(stream);
        OutgoingBody::finish(body, None).expect("finish");
    }
}

wasi::http::proxy::export!(Plain);
