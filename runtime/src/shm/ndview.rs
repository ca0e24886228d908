//! n-dimensional views of shared arrays, with the `ndarray` feature.
//!
//! The views borrow their handle like slices do: they cannot outlive the mapping.

use crate::sys::shared_slice::{SharedSlice, SharedSliceMut};
use bytemuck::Pod;
use ndarray::{ArrayView, ArrayViewMut, Dimension, IntoDimension, ShapeError};

impl<T: Pod> SharedSlice<T> {
    /// The array as an `ndarray` view of `shape` (row-major).
    ///
    /// # Errors
    /// When `shape` does not hold exactly `len()` elements.
    ///
    /// # Examples
    /// ```
    /// use ensemble_runtime::shm::SharedSliceMut;
    /// let mut data = SharedSliceMut::<f64>::new(6)?;
    /// data.copy_from_slice(&[1., 2., 3., 4., 5., 6.]);
    /// let data = data.freeze().unwrap();
    /// let matrix = data.view((2, 3))?;
    /// assert_eq!(matrix.row(1).sum(), 15.0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn view<D: IntoDimension>(&self, shape: D) -> Result<ArrayView<'_, T, D::Dim>, ShapeError> {
        ArrayView::from_shape(shape.into_dimension(), self)
    }
}

impl<T: Pod> SharedSliceMut<T> {
    /// This part as an `ndarray` view of `shape` (row-major).
    ///
    /// # Errors
    /// When `shape` does not hold exactly `len()` elements.
    pub fn view<D: IntoDimension>(&self, shape: D) -> Result<ArrayView<'_, T, D::Dim>, ShapeError> {
        ArrayView::from_shape(shape.into_dimension(), self)
    }

    /// This part as a mutable `ndarray` view of `shape` (row-major).
    ///
    /// # Errors
    /// When `shape` does not hold exactly `len()` elements.
    pub fn view_mut<D: IntoDimension>(&mut self, shape: D) -> Result<ArrayViewMut<'_, T, D::Dim>, ShapeError>
    where
        D::Dim: Dimension,
    {
        ArrayViewMut::from_shape(shape.into_dimension(), self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mutable_view_writes_the_shared_array() {
        let mut data = SharedSliceMut::<u32>::new(12).unwrap();
        data.view_mut((3, 4)).unwrap().column_mut(2).fill(7);
        assert_eq!(&data[..4], &[0, 0, 7, 0]);
        let frozen = data.freeze().unwrap();
        assert_eq!(frozen.view((3, 4)).unwrap().sum(), 21);
        assert!(frozen.view((5, 5)).is_err());
    }
}
