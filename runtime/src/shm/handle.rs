//! The wire form of a segment handle, and the serde impls of the shared arrays.
//!
//! Serializing a handle leaves a hold with the sender (see [`super::transfer`]); deserializing
//! one opens and holds the segment in the receiver, after checking the name's prefix, the size
//! and the element type.

use crate::shm::segment::SegmentError;
use crate::shm::transfer;
use crate::sys::shared_slice::{SharedSlice, SharedSliceMut};
use bytemuck::Pod;
use serde::de::Error as _;
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::marker::PhantomData;

/// A handle as it travels: which of the frame's descriptors is the segment, and the part of it.
#[derive(Serialize, Deserialize)]
struct HandleWire {
    /// Index of the segment's descriptor among those attached to the frame.
    descriptor: u32,
    /// Bytes of the whole segment.
    segment_len: u64,
    /// First element of the part.
    start: u64,
    /// Elements in the part.
    len: u64,
    element: String,
    element_size: u64,
}

impl HandleWire {
    fn of<T: Pod>(descriptor: u32, segment_len: usize, start: usize, len: usize) -> HandleWire {
        HandleWire {
            descriptor,
            segment_len: segment_len as u64,
            start: start as u64,
            len: len as u64,
            element: std::any::type_name::<T>().to_owned(),
            element_size: size_of::<T>() as u64,
        }
    }

    /// Checks the element type and that the part lies inside the segment; returns the part's
    /// `(start, len)` and the segment's length.
    fn check<T: Pod>(&self) -> Result<(usize, usize, usize), SegmentError> {
        let expected = std::any::type_name::<T>();
        if self.element != expected || self.element_size != size_of::<T>() as u64 {
            return Err(SegmentError::ElementType {
                sent: self.element.clone(),
                sent_size: self.element_size as usize,
                expected,
                expected_size: size_of::<T>(),
            });
        }
        let end = self.start.checked_add(self.len).and_then(|e| e.checked_mul(size_of::<T>() as u64));
        let fits = |n: u64| usize::try_from(n).ok();
        match (end, fits(self.start), fits(self.len), fits(self.segment_len)) {
            (Some(end), Some(start), Some(len), Some(segment_len)) if end <= self.segment_len => {
                Ok((start, len, segment_len))
            }
            _ => Err(SegmentError::Size { expected: end.unwrap_or(u64::MAX), actual: self.segment_len }),
        }
    }
}

impl<T: Pod> Serialize for SharedSlice<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let descriptor = transfer::hold(&self.segment).map_err(S::Error::custom)?;
        HandleWire::of::<T>(descriptor, self.segment.len(), 0, self.len).serialize(serializer)
    }
}

impl<'de, T: Pod> Deserialize<'de> for SharedSlice<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = HandleWire::deserialize(deserializer)?;
        let (start, len, segment_len) = wire.check::<T>().map_err(D::Error::custom)?;
        if start != 0 || len * size_of::<T>() != segment_len {
            return Err(D::Error::custom("a read-only array must cover its whole segment"));
        }
        let segment = transfer::open(wire.descriptor, segment_len, false).map_err(D::Error::custom)?;
        Ok(SharedSlice { segment, len, _element: PhantomData })
    }
}

impl<T: Pod> Serialize for SharedSliceMut<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let descriptor = transfer::hold(&self.segment).map_err(S::Error::custom)?;
        HandleWire::of::<T>(descriptor, self.segment.len(), self.start, self.len).serialize(serializer)
    }
}

impl<'de, T: Pod> Deserialize<'de> for SharedSliceMut<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = HandleWire::deserialize(deserializer)?;
        let (start, len, segment_len) = wire.check::<T>().map_err(D::Error::custom)?;
        let segment = transfer::open(wire.descriptor, segment_len, true).map_err(D::Error::custom)?;
        Ok(SharedSliceMut { segment, start, len, _element: PhantomData })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsFd, OwnedFd};

    /// Encodes `value` as a message would, and gives the bytes and the descriptors to attach.
    fn sent<V: Serialize>(value: &V) -> (Vec<u8>, Vec<OwnedFd>) {
        let (bytes, holds) = transfer::collecting_holds(|| bincode::serialize(value).unwrap());
        let fds = holds.iter().map(|h| h.fd().try_clone_to_owned().unwrap()).collect();
        (bytes, fds)
    }

    #[test]
    fn a_handle_cannot_be_serialized_outside_a_message() {
        let array = SharedSliceMut::<u8>::new(4).unwrap();
        let err = bincode::serialize(&array).unwrap_err();
        assert!(err.to_string().contains("only inside ensemble messages"), "{err}");
    }

    #[test]
    fn a_handle_round_trips_with_its_descriptor() {
        let mut array = SharedSliceMut::<u16>::new(3).unwrap();
        array.copy_from_slice(&[7, 8, 9]);
        let (bytes, fds) = sent(&array);
        assert_eq!(fds.len(), 1);
        drop(array);
        let (received, opened) =
            transfer::receiving(fds, || bincode::deserialize::<SharedSliceMut<u16>>(&bytes));
        assert_eq!(opened, 1);
        assert_eq!(&*received.unwrap(), &[7, 8, 9]);
    }

    #[test]
    fn parts_of_one_segment_travel_as_one_descriptor_and_join_back() {
        let parts = SharedSliceMut::<u8>::new(8).unwrap().chunks(4);
        let (bytes, fds) = sent(&parts);
        assert_eq!(fds.len(), 1);
        let (received, opened) =
            transfer::receiving(fds, || bincode::deserialize::<Vec<SharedSliceMut<u8>>>(&bytes));
        assert_eq!(opened, 2);
        let whole = SharedSliceMut::join_all(received.unwrap()).unwrap();
        assert_eq!(whole.len(), 8);
    }

    #[test]
    fn a_handle_forged_from_bytes_is_refused_and_opens_nothing() {
        let array = SharedSliceMut::<u32>::new(2).unwrap();
        let (bytes, _fds) = sent(&array);
        let (received, opened) =
            transfer::receiving(Vec::new(), || bincode::deserialize::<SharedSliceMut<u32>>(&bytes));
        let err = received.unwrap_err().to_string();
        assert!(err.contains("without its descriptor"), "{err}");
        assert_eq!(opened, 0);
    }

    #[test]
    fn a_handle_received_as_another_element_type_names_both_with_sizes() {
        let array = SharedSliceMut::<u32>::new(2).unwrap();
        let (bytes, fds) = sent(&array);
        let (received, _) = transfer::receiving(fds, || bincode::deserialize::<SharedSliceMut<u16>>(&bytes));
        let err = received.unwrap_err().to_string();
        assert!(err.contains("holds u32 (4 bytes each), received as u16 (2 bytes each)"), "{err}");
    }

    #[test]
    fn a_writable_handle_to_a_frozen_segment_is_refused() {
        let frozen = SharedSliceMut::<u8>::new(16).unwrap().freeze().unwrap();
        let (bytes, fds) = sent(&frozen);
        let (received, _) = transfer::receiving(fds, || bincode::deserialize::<SharedSliceMut<u8>>(&bytes));
        assert!(received.unwrap_err().to_string().contains("frozen"));
        let fd = frozen.segment.fd().as_fd().try_clone_to_owned().unwrap();
        let (received, _) = transfer::receiving(vec![fd], || bincode::deserialize::<SharedSlice<u8>>(&bytes));
        assert_eq!(received.unwrap().len(), 16);
    }
}
