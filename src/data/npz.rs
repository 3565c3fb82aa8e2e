//! NPZ files (a zip of `.npy` arrays, loadable by `numpy.load`), written into memory so the
//! bytes can be hashed before they reach disk. Only what the cache needs: little-endian
//! `int64` vectors and `float64` matrices, stored uncompressed (fast to write and read;
//! shards are bounded by `data.cache.shard_seconds`).

use std::io::{Cursor, Read, Write};

use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipArchive, ZipWriter};

use super::dataobject::Matrix;

/// An array read back from an NPZ.
#[derive(Debug, Clone, PartialEq)]
pub enum Array {
    /// A 1-D `int64` array.
    I64(Vec<i64>),
    /// A 2-D `float64` array.
    F64(Matrix),
    /// A 2-D `float32` array (the preprocessed rows).
    F32 {
        /// Rows.
        rows: usize,
        /// Columns.
        cols: usize,
        /// `rows * cols` values, row by row.
        data: Vec<f32>,
    },
}

/// Builds an NPZ in memory.
pub struct NpzWriter {
    zip: ZipWriter<Cursor<Vec<u8>>>,
}

impl Default for NpzWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl NpzWriter {
    /// An empty archive.
    pub fn new() -> Self {
        Self {
            zip: ZipWriter::new(Cursor::new(Vec::new())),
        }
    }

    fn entry(&mut self, name: &str, descr: &str, shape: &str, data: &[u8]) -> std::io::Result<()> {
        let options = SimpleFileOptions::default()
            .compression_method(CompressionMethod::Stored)
            // Fixed timestamps: the same data gives the same bytes, hence the same sha256.
            .last_modified_time(zip::DateTime::default())
            .large_file(data.len() > u32::MAX as usize / 2);
        self.zip
            .start_file(format!("{name}.npy"), options)
            .map_err(std::io::Error::other)?;
        let mut header =
            format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        // Magic (6) + version (2) + length (2) + header + '\n' is padded to 64 bytes.
        let total = 10 + header.len() + 1;
        header.extend(std::iter::repeat_n(' ', total.next_multiple_of(64) - total));
        header.push('\n');
        self.zip.write_all(b"\x93NUMPY\x01\x00")?;
        self.zip.write_all(&(header.len() as u16).to_le_bytes())?;
        self.zip.write_all(header.as_bytes())?;
        self.zip.write_all(data)
    }

    /// Adds a 1-D `int64` array.
    pub fn add_i64(&mut self, name: &str, values: &[i64]) -> std::io::Result<()> {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.entry(name, "<i8", &format!("({},)", values.len()), &bytes)
    }

    /// Adds a 2-D `float64` array.
    pub fn add_f64(&mut self, name: &str, m: &Matrix) -> std::io::Result<()> {
        let bytes: Vec<u8> = m.data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.entry(name, "<f8", &format!("({}, {})", m.rows, m.cols), &bytes)
    }

    /// Adds a 2-D `float32` array of `rows x cols` values.
    pub fn add_f32(
        &mut self,
        name: &str,
        data: &[f32],
        rows: usize,
        cols: usize,
    ) -> std::io::Result<()> {
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.entry(name, "<f4", &format!("({rows}, {cols})"), &bytes)
    }

    /// The archive's bytes.
    pub fn finish(self) -> std::io::Result<Vec<u8>> {
        Ok(self
            .zip
            .finish()
            .map_err(std::io::Error::other)?
            .into_inner())
    }
}

/// Reads arrays from NPZ bytes.
pub struct NpzReader<'a> {
    zip: ZipArchive<Cursor<&'a [u8]>>,
}

impl<'a> NpzReader<'a> {
    /// Opens NPZ bytes.
    pub fn new(bytes: &'a [u8]) -> Result<Self, String> {
        ZipArchive::new(Cursor::new(bytes))
            .map(|zip| Self { zip })
            .map_err(|e| format!("not a zip archive: {e}"))
    }

    /// Reads array `name` (without `.npy`).
    pub fn read(&mut self, name: &str) -> Result<Array, String> {
        let mut f = self
            .zip
            .by_name(&format!("{name}.npy"))
            .map_err(|_| format!("array {name} missing"))?;
        let mut bytes = Vec::with_capacity(f.size() as usize);
        f.read_to_end(&mut bytes)
            .map_err(|e| format!("array {name}: {e}"))?;
        parse_npy(name, &bytes)
    }
}

fn parse_npy(name: &str, bytes: &[u8]) -> Result<Array, String> {
    let bad = |what: &str| format!("array {name}: {what}");
    if bytes.len() < 10 || &bytes[..8] != b"\x93NUMPY\x01\x00" {
        return Err(bad("not a version 1.0 .npy"));
    }
    let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = bytes
        .get(10..10 + hlen)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or_else(|| bad("truncated header"))?;
    let data = &bytes[10 + hlen..];
    let shape_text = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| bad("no shape"))?;
    let shape: Vec<usize> = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| bad("bad shape")))
        .collect::<Result<_, _>>()?;
    let count: usize = shape.iter().product();
    if header.contains("'descr': '<f4'") {
        return match (&shape[..], data.len() == count * 4) {
            ([rows, cols], true) => Ok(Array::F32 {
                rows: *rows,
                cols: *cols,
                data: data
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                    .collect(),
            }),
            _ => Err(bad(&format!(
                "{} data bytes for float32 shape {shape:?}",
                data.len()
            ))),
        };
    }
    if data.len() != count * 8 {
        return Err(bad(&format!(
            "{} data bytes for shape {shape:?}",
            data.len()
        )));
    }
    let words = data.chunks_exact(8).map(|c| c.try_into().expect("8 bytes"));
    match (
        header.contains("'descr': '<i8'"),
        header.contains("'descr': '<f8'"),
        &shape[..],
    ) {
        (true, _, [_]) => Ok(Array::I64(words.map(i64::from_le_bytes).collect())),
        (_, true, [rows, cols]) => Ok(Array::F64(Matrix::new(
            *rows,
            *cols,
            words.map(f64::from_le_bytes).collect(),
        ))),
        _ => Err(bad(&format!(
            "unsupported dtype or shape in header {header:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_round_trip_and_headers_are_aligned() {
        let m = Matrix::new(2, 3, vec![1.0, 2.5, -3.0, f64::MAX, 0.1, 1e-300]);
        let mut w = NpzWriter::new();
        w.add_i64("BTCUSDT/ts", &[1, -2, 3]).unwrap();
        w.add_f64("BTCUSDT/bid_price", &m).unwrap();
        let bytes = w.finish().unwrap();
        let mut r = NpzReader::new(&bytes).unwrap();
        assert_eq!(r.read("BTCUSDT/ts").unwrap(), Array::I64(vec![1, -2, 3]));
        assert_eq!(r.read("BTCUSDT/bid_price").unwrap(), Array::F64(m.clone()));
        assert!(r.read("nope").unwrap_err().contains("array nope missing"));
        // Same arrays, same bytes (the cache hashes them).
        let mut w2 = NpzWriter::new();
        w2.add_i64("BTCUSDT/ts", &[1, -2, 3]).unwrap();
        w2.add_f64("BTCUSDT/bid_price", &m).unwrap();
        assert_eq!(w2.finish().unwrap(), bytes);
    }
}
