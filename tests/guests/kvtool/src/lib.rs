//! The kv API over HTTP, for the host's tests: `?key=K` names a key.
//! `GET` reads it (404 when missing), `PUT` stores the body (`&ttl_ms=N` to expire),
//! `DELETE` deletes it, `GET ?list=PREFIX` lists keys one per line. A key or value over the
//! host's limits answers 414 or 413; a write over the app's storage quota 507 with the
//! host's message; an unavailable store 503.
//! Sessions: `PUT ?session=NAME` stores the body in the session, `GET ?session=NAME` reads it.

use std::time::Duration;

use tabula_sdk::{Error, Method, Request, Response, handler, kv, session};

#[handler]
fn kvtool(req: Request) -> Result<Response, Error> {
    if let Some(name) = req.query_param("session") {
        return Ok(match req.method() {
            Method::Put => {
                session::set(&name, req.body())?;
                Response::new(204)
            }
            _ => match session::get(&name)? {
                Some(v) => Response::new(200).with_body(v),
                None => Response::not_found(),
            },
        });
    }
    if let Some(prefix) = req.query_param("list") {
        return Ok(Response::text(kv::all_keys(&prefix)?.join("\n")));
    }
    let key = req
        .query_param("key")
        .ok_or_else(|| Error::new(400, "pass ?key=K or ?list=PREFIX"))?;
    let result = match req.method() {
        Method::Get => kv::get(&key).map(|v| match v {
            Some(v) => Response::new(200).with_body(v),
            None => Response::not_found(),
        }),
        Method::Put => {
            let ttl = req
                .query_param("ttl_ms")
                .and_then(|t| t.parse().ok())
                .map(Duration::from_millis);
            match ttl {
                Some(ttl) => kv::set_with_ttl(&key, req.body(), ttl),
                None => kv::set(&key, req.body()),
            }
            .map(|()| Response::new(204))
        }
        Method::Delete => kv::delete(&key).map(|existed| Response::text(existed.to_string())),
        _ => return Ok(Response::new(405)),
    };
    match result {
        Err(kv::Error::KeyTooLarge { limit }) => {
            Ok(Response::text(format!("key over {limit}")).with_status(414))
        }
        Err(kv::Error::ValueTooLarge { limit }) => {
            Ok(Response::text(format!("value over {limit}")).with_status(413))
        }
        // What the host says when the app is at its storage quota, passed on as 507.
        Err(kv::Error::Other(why)) if why.contains("quota") => {
            Ok(Response::text(why).with_status(507))
        }
        other => Ok(other?),
    }
}
