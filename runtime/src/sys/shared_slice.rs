//! Typed views of shared memory: [`SharedSlice`] (read-only, shareable) and [`SharedSliceMut`]
//! (one owner per range). They live here, in `sys`, because their `Deref` impls are where raw
//! mapped memory becomes a Rust slice, and their ownership rules are what makes that sound:
//!
//! - A `SharedSliceMut` owns a byte range of a segment exclusively. It is not `Clone`; it can
//!   be split into disjoint parts and joined back; sending it in a message moves it.
//! - A `SharedSlice` exists only for a frozen segment: one whose whole range was owned by a
//!   single `SharedSliceMut` when it was frozen, so nobody can write it any more (the freezing
//!   process reads through the mapping it wrote through; the safe API gives only `&[T]` then).
//! - A view borrows its handle, and the handle holds the mapping: a view cannot outlive it.

use crate::shm::segment::{Segment, SegmentError, SegmentId};
use bytemuck::Pod;
use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

/// A read-only array of `T` in shared memory, shared by any number of processes.
///
/// Cheap to clone (a reference count); put it in a message or an actor's initial state to hand
/// it to another process, which maps the same pages: nothing is copied. Made with
/// [`SharedSliceMut::freeze`].
///
/// # Examples
/// ```
/// use ensemble_runtime::shm::SharedSliceMut;
/// let mut data = SharedSliceMut::<f64>::new(4)?;
/// data.copy_from_slice(&[1.0, 2.0, 3.0, 4.0]);
/// let frozen = data.freeze().expect("one owner of the whole segment");
/// assert_eq!(frozen.iter().sum::<f64>(), 10.0);
/// # Ok::<(), ensemble_runtime::shm::SegmentError>(())
/// ```
pub struct SharedSlice<T: Pod> {
    pub(crate) segment: Arc<Segment>,
    pub(crate) len: usize,
    pub(crate) _element: PhantomData<T>,
}

/// A mutable array of `T` in shared memory, owned by one value at a time.
///
/// Create one with [`SharedSliceMut::new`], write it, [`split`](Self::split_at) it into parts
/// for different workers (each part is sent in a message and written there), get the parts
/// back in replies, [`join`](Self::join) them, and [`freeze`](Self::freeze) the whole into a
/// [`SharedSlice`].
pub struct SharedSliceMut<T: Pod> {
    pub(crate) segment: Arc<Segment>,
    /// First element of this part, in elements from the segment start.
    pub(crate) start: usize,
    pub(crate) len: usize,
    pub(crate) _element: PhantomData<T>,
}

impl<T: Pod> SharedSliceMut<T> {
    /// A new zero-filled array of `len` elements in a new segment (an anonymous memory file:
    /// nothing appears in `/dev/shm`, and the memory goes with the last process that holds it).
    ///
    /// # Errors
    /// [`SegmentError::NoMemory`] when the memory that can back it is smaller (checked now, not
    /// at first write), or another [`SegmentError`].
    pub fn new(len: usize) -> Result<Self, SegmentError> {
        let bytes = len
            .checked_mul(size_of::<T>())
            .ok_or(SegmentError::NoMemory { requested: u64::MAX, available: 0 })?;
        let segment = Segment::create(bytes)?;
        Ok(SharedSliceMut { segment, start: 0, len, _element: PhantomData })
    }

    /// A new array holding a copy of `values`.
    ///
    /// # Errors
    /// As [`SharedSliceMut::new`].
    pub fn from_slice(values: &[T]) -> Result<Self, SegmentError> {
        let mut array = Self::new(values.len())?;
        array.copy_from_slice(values);
        Ok(array)
    }

    /// Splits into `[0, mid)` and `[mid, len)`.
    ///
    /// # Panics
    /// If `mid > len`.
    pub fn split_at(self, mid: usize) -> (Self, Self) {
        assert!(mid <= self.len, "split point {mid} is past the end {}", self.len);
        let right = SharedSliceMut {
            segment: Arc::clone(&self.segment),
            start: self.start + mid,
            len: self.len - mid,
            _element: PhantomData,
        };
        (SharedSliceMut { len: mid, ..self }, right)
    }

    /// Splits into parts of `size` elements (the last may be shorter), in order.
    ///
    /// # Panics
    /// If `size` is 0.
    pub fn chunks(self, size: usize) -> Vec<Self> {
        assert!(size > 0, "chunk size must be positive");
        let mut parts = Vec::with_capacity(self.len.div_ceil(size));
        let mut rest = self;
        while rest.len > size {
            let (part, tail) = rest.split_at(size);
            parts.push(part);
            rest = tail;
        }
        parts.push(rest);
        parts
    }

    /// Joins two adjacent parts of the same segment (`self` first).
    ///
    /// # Errors
    /// Gives both back when they are not adjacent parts of one segment, in this order.
    pub fn join(self, next: Self) -> Result<Self, (Self, Self)> {
        // Parts received in different messages are different mappings of one segment: compare
        // the memfd's identity.
        let same_segment =
            Arc::ptr_eq(&self.segment, &next.segment) || self.segment.id() == next.segment.id();
        if same_segment && self.start + self.len == next.start {
            return Ok(SharedSliceMut { len: self.len + next.len, ..self });
        }
        Err((self, next))
    }

    /// Joins parts into one, in the order given.
    ///
    /// # Errors
    /// Gives the parts back when they are not consecutive parts of one segment.
    pub fn join_all(parts: Vec<Self>) -> Result<Self, Vec<Self>> {
        let mut iter = parts.into_iter();
        let Some(mut whole) = iter.next() else { return Err(Vec::new()) };
        while let Some(part) = iter.next() {
            match whole.join(part) {
                Ok(joined) => whole = joined,
                Err((a, b)) => {
                    let mut back = vec![a, b];
                    back.extend(iter);
                    return Err(back);
                }
            }
        }
        Ok(whole)
    }

    /// Makes the array read-only and shareable. Only the owner of the whole segment can. The
    /// segment is sealed against writing (`F_SEAL_FUTURE_WRITE`): no process can map it
    /// writable or write it any more, not even through `/proc/PID/fd`. One system call at any
    /// size: the array stays where it is in this process, and is read through the same mapping.
    ///
    /// # Errors
    /// Gives `self` back when it is only a part of its segment, or, rarely, when the seal
    /// cannot be added (logged).
    pub fn freeze(self) -> Result<SharedSlice<T>, Self> {
        if self.start != 0 || self.len * size_of::<T>() != self.segment.len() {
            return Err(self);
        }
        match self.segment.freeze() {
            Ok(()) => Ok(SharedSlice { segment: self.segment, len: self.len, _element: PhantomData }),
            Err(e) => {
                tracing::error!("cannot freeze a shared array: {e}");
                Err(self)
            }
        }
    }

    /// Who the segment this part belongs to is, across processes.
    pub fn segment_id(&self) -> SegmentId {
        self.segment.id()
    }
}

impl<T: Pod> SharedSlice<T> {
    /// Who the segment is, across processes.
    pub fn segment_id(&self) -> SegmentId {
        self.segment.id()
    }

    /// Maps every page of the array into this process now, in one call, instead of at first
    /// read. Received arrays stay lazy unless asked (a hand-over costs the same at any size).
    ///
    /// This moves cost rather than saving it: call it where a slow start is better than a slow
    /// first request, for instance in a service worker's `pre_run` hook. The first pass over the
    /// array then runs at the speed of a warm one. For a single pass in order, the kernel's own
    /// read-ahead of page mappings (16 pages per fault) is cheaper overall: at 1.28 GB per
    /// worker on this project's 2-CPU machine (`weather_hours --rows 10000000 --populate`),
    /// populating took 230-300 ms in `pre_run` and made the first map 60 ms faster.
    ///
    /// # Errors
    /// The kernel's, from `madvise(MADV_POPULATE_READ)`: `EINVAL` before Linux 5.14, `ENOMEM`
    /// or `EFAULT` if the memory behind the segment is gone. The array stays usable either way.
    ///
    /// # Examples
    /// ```
    /// use ensemble_runtime::shm::SharedSliceMut;
    /// let data = SharedSliceMut::<u64>::new(1 << 20)?.freeze().expect("one owner");
    /// data.populate()?;
    /// assert_eq!(data.iter().sum::<u64>(), 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn populate(&self) -> std::io::Result<()> {
        self.segment.populate()
    }
}

impl<T: Pod> Deref for SharedSlice<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        // SAFETY: `len * size_of::<T>()` equals the segment's length (checked by `freeze` or,
        // on receipt, by the handle's check and `Segment::adopt`), so the range is inside the
        // mapping. A SharedSlice exists only for a frozen segment: sealed against new writes
        // and writable mappings, and no `SharedSliceMut` of it is left anywhere (freezing took
        // the whole range from its single owner; in the freezing process the mapping stays
        // writable, but what could write through it was consumed). The mapping is held by
        // `self.segment` for as long as this borrow of `self`.
        let bytes = unsafe { crate::sys::shm::bytes(self.segment.map_ref(), 0, self.len * size_of::<T>()) };
        bytemuck::cast_slice(bytes)
    }
}

impl<T: Pod> Deref for SharedSliceMut<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        // SAFETY: the part lies inside the segment (split/join keep `start + len` within the
        // original array; `Segment::open` checked the size on receipt). This value owns the
        // range exclusively, and `&self` excludes a concurrent `&mut` through it.
        let bytes = unsafe {
            crate::sys::shm::bytes(
                self.segment.map_ref(),
                self.start * size_of::<T>(),
                self.len * size_of::<T>(),
            )
        };
        bytemuck::cast_slice(bytes)
    }
}

impl<T: Pod> DerefMut for SharedSliceMut<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as for `deref`, and `&mut self` makes this the only reference to the range:
        // no other part overlaps it, and no SharedSlice of the segment exists while parts do.
        // The mapping is writable: a mutable handle is only ever made over a writable mapping
        // (`Segment::create`, or `Segment::adopt` of an unfrozen memfd).
        let bytes = unsafe {
            crate::sys::shm::bytes_mut(
                self.segment.map_ref(),
                self.start * size_of::<T>(),
                self.len * size_of::<T>(),
            )
        };
        bytemuck::cast_slice_mut(bytes)
    }
}

impl<T: Pod> Clone for SharedSlice<T> {
    fn clone(&self) -> Self {
        SharedSlice { segment: Arc::clone(&self.segment), len: self.len, _element: PhantomData }
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for SharedSlice<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedSlice").field("segment", &self.segment.id()).field("len", &self.len).finish()
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for SharedSliceMut<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedSliceMut")
            .field("segment", &self.segment.id())
            .field("range", &(self.start..self.start + self.len))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_write_their_own_ranges_and_join_back() {
        let array = SharedSliceMut::<u32>::new(10).unwrap();
        let mut parts = array.chunks(3);
        assert_eq!(parts.iter().map(|p| p.len()).collect::<Vec<_>>(), [3, 3, 3, 1]);
        for (i, part) in parts.iter_mut().enumerate() {
            part.fill(i as u32 + 1);
        }
        let whole = SharedSliceMut::join_all(parts).unwrap();
        assert_eq!(&*whole, &[1, 1, 1, 2, 2, 2, 3, 3, 3, 4]);
        let frozen = whole.freeze().unwrap();
        assert_eq!(frozen.clone().iter().sum::<u32>(), 22);
    }

    #[test]
    fn a_part_cannot_be_frozen_and_non_adjacent_parts_do_not_join() {
        let (left, right) = SharedSliceMut::<u8>::new(8).unwrap().split_at(4);
        let left = left.freeze().unwrap_err();
        let (right, left) = right.join(left).unwrap_err();
        let whole = left.join(right).unwrap();
        assert_eq!(whole.len(), 8);
    }

    #[test]
    fn parts_of_different_segments_do_not_join() {
        let a = SharedSliceMut::<u8>::new(4).unwrap();
        let b = SharedSliceMut::<u8>::new(4).unwrap();
        assert!(a.join(b).is_err());
    }

    #[test]
    fn an_empty_array_works() {
        let empty = SharedSliceMut::<u64>::new(0).unwrap().freeze().unwrap();
        assert!(empty.is_empty());
    }
}
