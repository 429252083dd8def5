//! `std::fs` over HTTP, for the host's filesystem tests. Each endpoint answers with what
//! happened, errors included as `err: KIND`, so tests can see the guest's view exactly.
//!
//! - `GET /fstool/exercise`: a tour of what std::fs needs in `/tmp`.
//! - `GET /fstool/read?path=P`, `PUT /fstool/write?path=P` (body), `GET /fstool/ls?path=P`,
//!   `POST /fstool/mkdir|rm|rmdir?path=P`, `POST /fstool/rename?from=A&to=B`,
//!   `GET /fstool/canon?path=P`.
//! - `GET /fstool/private?id=X`: writes X to `/tmp/shared`, waits 50 ms, reads it back.
//! - `POST /fstool/many?n=N`: creates N small files in `/tmp`.
//! - `PUT /fstool/fill?mib=N`: writes N MiB to `/tmp/fill` in 1 MiB chunks, then reads it back.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};

use tabula_sdk::{Request, Response, handler};

fn kind(e: std::io::Error) -> String {
    format!("err: {:?}", e.kind())
}

fn report<T: std::fmt::Debug>(r: std::io::Result<T>) -> String {
    match r {
        Ok(v) => format!("ok: {v:?}"),
        Err(e) => kind(e),
    }
}

fn exercise() -> std::io::Result<String> {
    let mut out = String::new();
    out += &format!("tmp empty: {}\n", fs::read_dir("/tmp")?.count() == 0);
    fs::create_dir_all("/tmp/a/b")?;
    fs::write("/tmp/a/b/f.txt", b"hello")?;
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/tmp/a/b/f.txt")?;
    f.seek(SeekFrom::Start(5))?;
    f.write_all(b", world")?;
    f.seek(SeekFrom::Start(0))?;
    let mut text = String::new();
    f.read_to_string(&mut text)?;
    out += &format!("read back: {text}\n");
    let mut appended = fs::OpenOptions::new().append(true).open("/tmp/a/b/f.txt")?;
    appended.write_all(b"!")?;
    out += &format!("after append: {}\n", fs::read_to_string("/tmp/a/b/f.txt")?);
    out += &format!("len: {}\n", fs::metadata("/tmp/a/b/f.txt")?.len());
    out += &format!("is_dir: {}\n", fs::metadata("/tmp/a")?.is_dir());
    fs::rename("/tmp/a/b/f.txt", "/tmp/a/g.txt")?;
    let mut names: Vec<String> = fs::read_dir("/tmp/a")?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    names.sort();
    out += &format!("ls /tmp/a: {names:?}\n");
    out += &format!(
        "canonicalize: {}\n",
        report(fs::canonicalize("/tmp/a/b/../g.txt"))
    );
    fs::remove_file("/tmp/a/g.txt")?;
    fs::remove_dir("/tmp/a/b")?;
    fs::remove_dir("/tmp/a")?;
    out += &format!("gone: {}\n", !fs::exists("/tmp/a")?);
    out += &format!("asset: {}", fs::read_to_string("/app/readme.txt")?);
    Ok(out)
}

#[handler]
fn fstool(req: Request) -> Response {
    let path = req.query_param("path").unwrap_or_default();
    let text = match req.path() {
        "/fstool/exercise" => exercise().unwrap_or_else(kind),
        "/fstool/read" => match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) => kind(e),
        },
        "/fstool/write" => report(fs::write(&path, req.body())),
        "/fstool/ls" => report(fs::read_dir(&path).map(|rd| {
            let mut names: Vec<String> = rd
                .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect();
            names.sort();
            names
        })),
        "/fstool/mkdir" => report(fs::create_dir(&path)),
        "/fstool/rm" => report(fs::remove_file(&path)),
        "/fstool/rmdir" => report(fs::remove_dir(&path)),
        "/fstool/rename" => report(fs::rename(
            req.query_param("from").unwrap_or_default(),
            req.query_param("to").unwrap_or_default(),
        )),
        "/fstool/canon" => report(fs::canonicalize(&path)),
        "/fstool/private" => {
            // Writes a value only this request knows, waits, and checks nobody changed it.
            let id = req.query_param("id").unwrap_or_default();
            let result = (|| {
                fs::write("/tmp/shared", &id)?;
                std::thread::sleep(std::time::Duration::from_millis(50));
                let seen = fs::read_to_string("/tmp/shared")?;
                let entries = fs::read_dir("/tmp")?.count();
                Ok::<_, std::io::Error>(format!("{} {entries}", seen == id))
            })();
            report(result)
        }
        "/fstool/many" => {
            let n: usize = req
                .query_param("n")
                .and_then(|m| m.parse().ok())
                .unwrap_or(1);
            report((0..n).try_for_each(|i| fs::write(format!("/tmp/f{i}"), b"x")))
        }
        "/fstool/fill" => {
            let mib: usize = req
                .query_param("mib")
                .and_then(|m| m.parse().ok())
                .unwrap_or(1);
            let chunk = vec![7u8; 1 << 20];
            let result = (|| {
                let mut f = fs::File::create("/tmp/fill")?;
                for _ in 0..mib {
                    f.write_all(&chunk)?;
                }
                drop(f);
                let back = fs::read("/tmp/fill")?;
                Ok::<_, std::io::Error>(back.len())
            })();
            report(result)
        }
        _ => return Response::not_found(),
    };
    Response::text(text + "\n")
}
