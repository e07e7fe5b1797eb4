//! Owned bundle bytes at a 64-byte aligned address (feature `alloc`), for bundles read from
//! files on a host.

use alloc::vec::Vec;

/// 64 bytes, 64-byte aligned.
#[derive(Clone, Copy, Debug, bytemuck::Zeroable, bytemuck::Pod)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// Bytes stored at a 64-byte aligned address, as [`crate::Bundle::parse`] needs them.
#[derive(Clone, Debug)]
pub struct AlignedBytes {
    lines: Vec<Line>,
    len: usize,
}

impl AlignedBytes {
    /// Copies `bytes` into aligned storage.
    pub fn new(bytes: &[u8]) -> Self {
        let mut lines = alloc::vec![Line([0; 64]); bytes.len().div_ceil(64)];
        let storage: &mut [u8] = bytemuck::cast_slice_mut(&mut lines);
        storage
            .iter_mut()
            .zip(bytes)
            .for_each(|(to, from)| *to = *from);
        Self {
            lines,
            len: bytes.len(),
        }
    }

    /// `len` zero bytes, to be filled in place (a file read straight into aligned memory,
    /// so a bundle is held once).
    pub fn zeroed(len: usize) -> Self {
        Self {
            lines: alloc::vec![Line([0; 64]); len.div_ceil(64)],
            len,
        }
    }

    /// The bytes, writable.
    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        let storage: &mut [u8] = bytemuck::cast_slice_mut(&mut self.lines);
        storage.get_mut(..self.len).unwrap_or(&mut [])
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        let storage: &[u8] = bytemuck::cast_slice(&self.lines);
        storage.get(..self.len).unwrap_or(&[])
    }
}
