//! Static files from the app's read-only assets: `GET /site/PATH` serves `/app/PATH` (the
//! project's `public/` directory, packaged at build time), `/site/` serves `index.html`.
//! The host refuses paths that climb out of `/app`; this handler also refuses `..` outright.

use tabula_sdk::{Request, Response, handler};

#[handler]
fn site(req: Request) -> Response {
    let rest = req.path().splitn(3, '/').nth(2).unwrap_or("");
    let rest = if rest.is_empty() || rest.ends_with('/') {
        format!("{rest}index.html")
    } else {
        rest.to_string()
    };
    if rest.split('/').any(|part| part == "..") {
        return Response::not_found();
    }
    match std::fs::read(format!("/app/{rest}")) {
        Ok(bytes) => Response::new(200)
            .with_header("content-type", content_type(&rest))
            .with_header("cache-control", "public, max-age=300")
            .with_body(bytes),
        Err(_) => Response::not_found(),
    }
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" => "text/javascript; charset=utf-8",
        "json" => "application/json",
        "png" => "image/png",
        "svg" => "image/svg+xml",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::content_type;

    #[test]
    fn types_by_extension() {
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        assert_eq!(content_type("a/b.css"), "text/css; charset=utf-8");
        assert_eq!(content_type("blob"), "application/octet-stream");
    }
}
