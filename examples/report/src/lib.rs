//! Upload a CSV, get a summary: `POST /report` with a CSV body (a header row, then rows).
//! The upload is written to the request's private `/tmp`, read back and summed per numeric
//! column; the summary is stored with `kv` and returned. `GET /report` shows the last one.
//! `/tmp` is gone when the request ends, so nothing of the upload outlives it.

use std::fs;
use std::io::{BufRead, BufReader};

use tabula_sdk::{Error, Method, Request, Response, handler, kv};

const UPLOAD: &str = "/tmp/upload.csv";
const LAST: &str = "last-report";

#[handler]
fn report(req: Request) -> Result<Response, Error> {
    match req.method() {
        Method::Get => Ok(match kv::get(LAST)? {
            Some(summary) => Response::text(String::from_utf8_lossy(&summary)),
            None => Response::text("no report yet: POST a CSV to /report\n").with_status(404),
        }),
        Method::Post => {
            fs::write(UPLOAD, req.body())?;
            let summary = summarize(BufReader::new(fs::File::open(UPLOAD)?))?;
            kv::set(LAST, &summary)?;
            Ok(Response::text(summary))
        }
        _ => Ok(Response::new(405)),
    }
}

/// Row count, then the sum and mean of every column whose values are all numbers.
fn summarize(csv: impl BufRead) -> Result<String, Error> {
    let mut lines = csv.lines();
    let header = lines
        .next()
        .transpose()?
        .ok_or_else(|| Error::new(400, "the CSV is empty"))?;
    let columns: Vec<String> = header.split(',').map(|c| c.trim().to_string()).collect();
    let mut sums: Vec<Option<f64>> = vec![Some(0.0); columns.len()];
    let mut rows = 0u64;
    for line in lines {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        rows += 1;
        let cells: Vec<&str> = line.split(',').collect();
        for (i, sum) in sums.iter_mut().enumerate() {
            let value = cells.get(i).and_then(|c| c.trim().parse::<f64>().ok());
            *sum = match (*sum, value) {
                (Some(s), Some(v)) => Some(s + v),
                _ => None,
            };
        }
    }
    let mut out = format!("rows: {rows}\n");
    for (name, sum) in columns.iter().zip(&sums) {
        if let (Some(sum), true) = (sum, rows > 0) {
            out += &format!("{name}: sum {sum}, mean {}\n", sum / rows as f64);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_numeric_columns() {
        let csv = "item,qty,price\ntea,2,3.5\nscones,4,1.25\n\n";
        assert_eq!(
            summarize(csv.as_bytes()).unwrap(),
            "rows: 2\nqty: sum 6, mean 3\nprice: sum 4.75, mean 2.375\n"
        );
        assert_eq!(summarize("".as_bytes()).unwrap_err().status(), 400);
    }
}
