//! A shopping cart on sessions: log in with a name, add items, log out.
//!
//! - `GET /cart`: the page (a login form, or your cart).
//! - `POST /cart/login` (`name=`): regenerates the session id (no session fixation), then
//!   remembers who you are.
//! - `POST /cart/add` (`item=`): adds an item. A cart over the session size limit gets 413.
//! - `POST /cart/logout`: destroys the session and clears the cookie.
//!
//! Nothing is kept in the instance: every request reads the session from the store, so any
//! replica can serve any step.

use tabula_sdk::{Error, Request, Response, handler, session};

#[handler]
fn cart(req: Request) -> Result<Response, Error> {
    // The app's mount point, so the page works wherever it is routed.
    let base = format!("/{}", req.path().split('/').nth(1).unwrap_or_default());
    let action = req.path()[base.len()..].trim_matches('/');
    match (req.method().as_str(), action) {
        ("GET", "") => page(&base),
        ("POST", "login") => {
            let name = req.form_value("name").unwrap_or_default();
            let name = name.trim();
            if name.is_empty() {
                return Err(Error::new(400, "a name is required"));
            }
            session::regenerate()?;
            session::set("user", name)?;
            Ok(Response::redirect(&base))
        }
        ("POST", "add") => {
            if session::get("user")?.is_none() {
                return Ok(Response::redirect(&base));
            }
            let item = req
                .form_value("item")
                .unwrap_or_default()
                .replace(['\n', '\r'], " ");
            if item.trim().is_empty() {
                return Err(Error::new(400, "an item is required"));
            }
            let mut items = session::get_string("items")?.unwrap_or_default();
            items.push_str(item.trim());
            items.push('\n');
            match session::set("items", items) {
                Err(session::Error::TooLarge { limit }) => Ok(Response::html(format!(
                    "<p>Your cart is full (a session holds at most {limit} bytes). \
                     <a href=\"{base}\">Back</a></p>"
                ))
                .with_status(413)),
                other => other
                    .map(|()| Response::redirect(&base))
                    .map_err(Error::from),
            }
        }
        ("POST", "logout") => {
            session::destroy()?;
            Ok(Response::redirect(&base))
        }
        _ => Ok(Response::not_found()),
    }
}

fn page(base: &str) -> Result<Response, Error> {
    let body = match session::get_string("user")? {
        None => format!(
            "<h1>Welcome</h1>\n<form method=\"post\" action=\"{base}/login\">\
             <input name=\"name\" placeholder=\"Your name\"> <button>Log in</button></form>\n"
        ),
        Some(user) => {
            let items = session::get_string("items")?.unwrap_or_default();
            let list: String = items
                .lines()
                .map(|item| format!("<li>{}</li>\n", escape(item)))
                .collect();
            format!(
                "<h1>Hello, {}</h1>\n<ul>\n{list}</ul>\n\
                 <form method=\"post\" action=\"{base}/add\"><input name=\"item\"> \
                 <button>Add</button></form>\n\
                 <form method=\"post\" action=\"{base}/logout\"><button>Log out</button></form>\n",
                escape(&user)
            )
        }
    };
    Ok(Response::html(format!(
        "<!doctype html>\n<meta charset=\"utf-8\">\n<title>Cart</title>\n{body}"
    )))
}

/// Text for HTML: what a visitor typed must never become markup.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(path: &str, form: &str) -> Response {
        cart(Request::post(path, form)).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn login_add_logout() {
        assert!(
            cart(Request::get("/cart"))
                .unwrap()
                .body_text()
                .contains("Log in")
        );
        assert_eq!(post("/cart/login", "name=Ada").status(), 303);
        post("/cart/add", "item=tea");
        post("/cart/add", "item=%3Cscript%3E");
        let page = cart(Request::get("/cart")).unwrap();
        let html = page.body_text();
        assert!(html.contains("Hello, Ada"), "{html}");
        assert!(
            html.contains("<li>tea</li>") && html.contains("<li>&lt;script&gt;</li>"),
            "{html}"
        );
        post("/cart/logout", "");
        assert!(
            cart(Request::get("/cart"))
                .unwrap()
                .body_text()
                .contains("Log in")
        );
    }
}
