//! NPZ files (a zip of `.npy` arrays, loadable by `numpy.load`) through `ndarray-npy`,
//! written into memory so the bytes can be hashed before they reach disk. Arrays are 1-D
//! vectors or 2-D row-major matrices of any `.npy` element type (the cache and the store
//! use `int64`, `float64` and `float32`), stored uncompressed (fast to write and read;
//! shards are bounded by `data.cache.shard_seconds`).

use std::io::{self, Cursor};

use ndarray::{Array, Array1, Array2, ArrayView1, ArrayView2, Dimension};
use ndarray_npy::{ReadNpzError, ReadableElement, WritableElement, WriteNpyExt, WriteNpzError};
use zip::result::ZipError;
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, DateTime};

/// Why an NPZ or one of its arrays could not be read or written; names the array.
#[derive(Debug, thiserror::Error)]
pub enum NpzError {
    /// The bytes are not a zip archive.
    #[error("not an NPZ archive: {0}")]
    NotArchive(#[source] ReadNpzError),
    /// The archive has no such array.
    #[error("array {0} missing")]
    Missing(String),
    /// The array is not what the reader expects (element type, dimensions, truncated data).
    #[error("array {name} is not a {expected} array: {source}")]
    Read {
        /// The array.
        name: String,
        /// Dimensions and element type, e.g. `1-D i64`.
        expected: String,
        /// What ndarray-npy found.
        #[source]
        source: ReadNpzError,
    },
    /// The values do not fill the given shape.
    #[error("array {name}: {len} values for shape {rows}x{cols}")]
    Shape {
        /// The array.
        name: String,
        /// Values given.
        len: usize,
        /// Rows given.
        rows: usize,
        /// Columns given.
        cols: usize,
    },
    /// The array or the archive's directory could not be encoded.
    #[error("encoding {what}: {source}")]
    Write {
        /// `array <name>` or `the zip directory`.
        what: String,
        /// What ndarray-npy or zip reported.
        #[source]
        source: WriteNpzError,
    },
}

/// Builds an NPZ in memory.
pub struct NpzWriter {
    npz: ndarray_npy::NpzWriter<Cursor<Vec<u8>>>,
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
            // Each array gets its own options (`large_file` depends on its size).
            npz: ndarray_npy::NpzWriter::new(Cursor::new(Vec::new())),
        }
    }

    /// Adds a 1-D array.
    pub fn add_vector<T: WritableElement>(&mut self, name: &str, values: &[T]) -> io::Result<()> {
        self.add(name, &ArrayView1::from(values), size_of_val(values))
    }

    /// Adds a 2-D array of `rows x cols` values, given row by row.
    pub fn add_matrix<T: WritableElement>(
        &mut self,
        name: &str,
        values: &[T],
        rows: usize,
        cols: usize,
    ) -> io::Result<()> {
        let view = ArrayView2::from_shape((rows, cols), values).map_err(|_| {
            io::Error::other(NpzError::Shape {
                name: name.to_owned(),
                len: values.len(),
                rows,
                cols,
            })
        })?;
        self.add(name, &view, size_of_val(values))
    }

    fn add<A: WriteNpyExt>(&mut self, name: &str, array: &A, bytes: usize) -> io::Result<()> {
        self.npz
            .add_array_with_options(name, array, options(bytes))
            .map_err(|source| {
                io::Error::other(NpzError::Write {
                    what: format!("array {name}"),
                    source,
                })
            })
    }

    /// The archive's bytes.
    pub fn finish(self) -> io::Result<Vec<u8>> {
        match self.npz.finish() {
            Ok(cursor) => Ok(cursor.into_inner()),
            Err(source) => Err(io::Error::other(NpzError::Write {
                what: "the zip directory".into(),
                source,
            })),
        }
    }
}

/// Zip options for an array of `bytes` data bytes.
fn options(bytes: usize) -> SimpleFileOptions {
    SimpleFileOptions::default()
        .compression_method(CompressionMethod::Stored)
        // Fixed timestamps: the same data gives the same bytes, hence the same sha256.
        .last_modified_time(DateTime::default())
        // Zip64 records near the 4 GiB limit of plain entries (zip refuses to cross it).
        .large_file(bytes > u32::MAX as usize / 2)
}

/// Reads arrays from NPZ bytes.
pub struct NpzReader<'a> {
    npz: ndarray_npy::NpzReader<Cursor<&'a [u8]>>,
}

impl<'a> NpzReader<'a> {
    /// Opens NPZ bytes.
    pub fn new(bytes: &'a [u8]) -> Result<Self, NpzError> {
        ndarray_npy::NpzReader::new(Cursor::new(bytes))
            .map(|npz| Self { npz })
            .map_err(NpzError::NotArchive)
    }

    /// Reads 1-D array `name` (without `.npy`).
    pub fn read_vector<T: ReadableElement>(&mut self, name: &str) -> Result<Vec<T>, NpzError> {
        let a: Array1<T> = self.read(name)?;
        Ok(a.into_raw_vec_and_offset().0)
    }

    /// Reads 2-D array `name` (without `.npy`): `(rows, cols, values row by row)`.
    pub fn read_matrix<T: ReadableElement + Clone>(
        &mut self,
        name: &str,
    ) -> Result<(usize, usize, Vec<T>), NpzError> {
        let a: Array2<T> = self.read(name)?;
        let (rows, cols) = a.dim();
        // numpy writes column-major (`fortran_order`) files too.
        let a = if a.is_standard_layout() {
            a
        } else {
            a.as_standard_layout().into_owned()
        };
        Ok((rows, cols, a.into_raw_vec_and_offset().0))
    }

    fn read<T: ReadableElement, D: Dimension>(
        &mut self,
        name: &str,
    ) -> Result<Array<T, D>, NpzError> {
        self.npz.by_name(name).map_err(|e| match e {
            ReadNpzError::Zip(ZipError::FileNotFound) => NpzError::Missing(name.to_owned()),
            source => NpzError::Read {
                name: name.to_owned(),
                expected: format!(
                    "{}-D {}",
                    D::NDIM.map_or("N".to_owned(), |n| n.to_string()),
                    std::any::type_name::<T>()
                ),
                source,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let m = [1.0, 2.5, -3.0, f64::MAX, 0.1, 1e-300];
        let mut w = NpzWriter::new();
        w.add_vector("BTCUSDT/ts", &[1i64, -2, 3]).unwrap();
        w.add_matrix("BTCUSDT/bid_price", &m, 2, 3).unwrap();
        w.add_matrix("rows", &[0.5f32, -1.0], 1, 2).unwrap();
        w.add_matrix("empty", &[] as &[f64], 0, 4).unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn arrays_round_trip_with_the_same_bytes_for_the_same_data() {
        let bytes = sample();
        let mut r = NpzReader::new(&bytes).unwrap();
        assert_eq!(r.read_vector::<i64>("BTCUSDT/ts").unwrap(), [1, -2, 3]);
        assert_eq!(
            r.read_matrix::<f64>("BTCUSDT/bid_price").unwrap(),
            (2, 3, vec![1.0, 2.5, -3.0, f64::MAX, 0.1, 1e-300])
        );
        assert_eq!(
            r.read_matrix::<f32>("rows").unwrap(),
            (1, 2, vec![0.5, -1.0])
        );
        assert_eq!(r.read_matrix::<f64>("empty").unwrap(), (0, 4, vec![]));
        // Same arrays, same bytes (the cache hashes them).
        assert_eq!(sample(), bytes);
    }

    #[test]
    fn errors_name_the_array_and_what_is_wrong() {
        let bytes = sample();
        let mut r = NpzReader::new(&bytes).unwrap();
        let err = |e: NpzError| e.to_string();
        assert_eq!(
            err(r.read_vector::<i64>("nope").unwrap_err()),
            "array nope missing"
        );
        let wrong_type = err(r.read_matrix::<f32>("BTCUSDT/bid_price").unwrap_err());
        assert!(
            wrong_type.starts_with("array BTCUSDT/bid_price is not a 2-D f32 array"),
            "{wrong_type}"
        );
        let wrong_ndim = err(r.read_vector::<f64>("BTCUSDT/bid_price").unwrap_err());
        assert!(wrong_ndim.contains("1-D f64"), "{wrong_ndim}");
        assert!(NpzReader::new(b"not a zip").is_err());
        let shape = NpzWriter::new().add_matrix("m", &[1.0f64; 5], 2, 3);
        assert_eq!(
            shape.unwrap_err().to_string(),
            "array m: 5 values for shape 2x3"
        );
    }
}
