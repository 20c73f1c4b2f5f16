//! Images made ahead: after a create of a loopfs filesystem volume of a common size (at
//! most [`STOCK_MAX_BYTES`]), the daemon's background work makes one more formatted,
//! allocated image of that size and filesystem in its pool base's stock ([`STOCK_DIR`]),
//! and the next create of that size renames it into place instead of running `mkfs`. The
//! host names an image in the stock only once it is whole; every stock is emptied at start,
//! so nothing a crash left half made is ever used. A stock image is one more real image on
//! the host disk, so its bytes are out of the free space the pools' room is measured on.

use std::path::{Path, PathBuf};

use super::types::*;
use super::*;
use crate::host::Host;

/// The largest volume size kept in stock: one image per size and filesystem, so the stock
/// of a base never holds more than a few of these.
pub const STOCK_MAX_BYTES: u64 = 1 << 30;

impl<H: Host> Engine<H> {
    /// The stock of a pool base.
    pub(super) fn stock_of(base: &Path) -> PathBuf {
        base.join(STOCK_DIR)
    }

    /// Puts a stock image at `image` for a new volume of `size` and `fs` if there is one,
    /// and asks for the stock to be refilled. A stock that fails (a symlink planted for it,
    /// say) fails the create, like any other host step.
    pub(super) fn take_stock(
        &self,
        v: &Volume,
        image: &Path,
        size: u64,
        fs: FsType,
    ) -> Result<(), EngineError> {
        if size > STOCK_MAX_BYTES {
            return Ok(());
        }
        let stock = Self::stock_of(&v.placement.base);
        self.host
            .take_from_stock(&stock, size, fs, image)
            .map_err(Self::host_err(&v.name, "taking an image from the stock"))?;
        self.trash.push_stock(stock, size, fs);
        Ok(())
    }

    /// Makes the stock image of `size` and `fs` if the stock has none; logs a failure (the
    /// next create makes its own image).
    pub(super) fn refill_stock(&self, stock: &Path, size: u64, fs: FsType) {
        if let Err(e) = self.host.stock_image(stock, size, fs) {
            tracing::warn!(stock = %stock.display(), size, fs = fs.as_str(), error = %e, "could not make a stock image");
        }
    }
}
