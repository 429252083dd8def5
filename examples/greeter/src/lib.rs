//! Settings from outside the code: `GET /greeter?name=Ada` greets with the app's `greeting`
//! variable; `GET /greeter/private` answers only a request that presents the secret
//! `api_key` as a bearer token (and 503 while the app has no `api_key`).
//!
//! The variables come from `[variables]` in `tabula.toml`, `--var`/`--secret` on the
//! command line, or a deploy: one build, different settings per place it runs.

use tabula_sdk::{Request, Response, config, handler};

#[handler]
fn greeter(req: Request) -> Response {
    if req.path().ends_with("/private") {
        return private(&req);
    }
    let greeting = config::get("greeting").unwrap_or_else(|| "Hello".into());
    let name = req.query_param("name").unwrap_or_else(|| "world".into());
    Response::text(format!("{greeting}, {name}!\n"))
}

fn private(req: &Request) -> Response {
    let Some(key) = config::get("api_key") else {
        return Response::text(
            "no api_key is configured: start with --secret api_key=TABULA_SECRET_API_KEY\n",
        )
        .with_status(503);
    };
    let presented = req
        .header("authorization")
        .and_then(|h| h.strip_prefix("Bearer "));
    if presented == Some(key.as_str()) {
        Response::text("welcome\n")
    } else {
        Response::text("a valid bearer token is required\n").with_status(401)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greets_with_the_configured_greeting() {
        assert_eq!(
            greeter(Request::get("/greeter")).body_text(),
            "Hello, world!\n"
        );
        config::set_for_test("greeting", "Howdy");
        assert_eq!(
            greeter(Request::get("/greeter?name=Ada")).body_text(),
            "Howdy, Ada!\n"
        );
    }

    #[test]
    fn the_private_page_wants_the_secret() {
        assert_eq!(greeter(Request::get("/greeter/private")).status(), 503);
        config::set_for_test("api_key", "k3y");
        assert_eq!(greeter(Request::get("/greeter/private")).status(), 401);
        let req = Request::get("/greeter/private").with_header("authorization", "Bearer k3y");
        assert_eq!(greeter(req).status(), 200);
    }
}
