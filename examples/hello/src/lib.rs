//! The smallest useful handler: a greeting, personalised by `?name=`.

use tabula_sdk::{Request, Response, handler};

#[handler]
fn hello(req: Request) -> Response {
    let name = req.query_param("name").unwrap_or_else(|| "world".into());
    Response::text(format!("Hello, {name}!\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greets_by_name() {
        assert_eq!(hello(Request::get("/hello")).body_text(), "Hello, world!\n");
        assert_eq!(
            hello(Request::get("/hello?name=Ada")).body_text(),
            "Hello, Ada!\n"
        );
    }
}
