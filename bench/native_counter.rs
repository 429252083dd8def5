//! The baseline for `bench/counter.sh`: the counter example's work written natively, a hyper
//! server that answers every request with `INCRBY visits 1` on Redis, over the same kind of
//! reconnecting multiplexed connection tabula uses.
//!
//! `native-counter LISTEN_ADDR REDIS_URL`

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (listen, url) = match (args.next(), args.next()) {
        (Some(listen), Some(url)) => (listen, url),
        _ => anyhow::bail!("usage: native-counter LISTEN_ADDR REDIS_URL"),
    };
    let redis = redis::Client::open(url)?.get_connection_manager().await?;
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!(
        "native-counter: serving on http://{}",
        listener.local_addr()?
    );
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let redis = redis.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |_req: Request<Incoming>| {
                let mut redis = redis.clone();
                async move {
                    let response = match redis::cmd("INCRBY")
                        .arg("visits")
                        .arg(1)
                        .query_async::<i64>(&mut redis)
                        .await
                    {
                        Ok(n) => Response::new(Full::new(Bytes::from(format!("{n}\n")))),
                        Err(_) => {
                            let mut r =
                                Response::new(Full::new(Bytes::from_static(b"unavailable\n")));
                            *r.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
                            r
                        }
                    };
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
