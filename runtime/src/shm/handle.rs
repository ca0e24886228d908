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

#[derive(Serialize, Deserialize)]
struct HandleWire {
    segment: String,
    /// Bytes of the whole segment.
    segment_len: usize,
    /// First element of the part.
    start: usize,
    /// Elements in the part.
    len: usize,
    element: String,
    element_size: usize,
}

impl HandleWire {
    fn of<T: Pod>(segment: &crate::shm::segment::Segment, start: usize, len: usize) -> HandleWire {
        HandleWire {
            segment: segment.name().to_owned(),
            segment_len: segment.len(),
            start,
            len,
            element: std::any::type_name::<T>().to_owned(),
            element_size: size_of::<T>(),
        }
    }

    fn check<T: Pod>(&self) -> Result<(), SegmentError> {
        let expected = std::any::type_name::<T>();
        if self.element != expected || self.element_size != size_of::<T>() {
            return Err(SegmentError::ElementType {
                name: self.segment.clone(),
                sent: self.element.clone(),
                expected: expected.to_owned(),
            });
        }
        let end = self.start.checked_add(self.len).and_then(|e| e.checked_mul(size_of::<T>()));
        match end {
            Some(end) if end <= self.segment_len => Ok(()),
            _ => Err(SegmentError::Size {
                name: self.segment.clone(),
                expected: end.unwrap_or(usize::MAX) as u64,
                actual: self.segment_len as u64,
            }),
        }
    }
}

impl<T: Pod> Serialize for SharedSlice<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        transfer::hold(&self.segment).map_err(S::Error::custom)?;
        HandleWire::of::<T>(&self.segment, 0, self.len).serialize(serializer)
    }
}

impl<'de, T: Pod> Deserialize<'de> for SharedSlice<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = HandleWire::deserialize(deserializer)?;
        wire.check::<T>().map_err(D::Error::custom)?;
        if wire.start != 0 || wire.len * size_of::<T>() != wire.segment_len {
            return Err(D::Error::custom("a read-only array must cover its whole segment"));
        }
        let segment = transfer::open(&wire.segment, wire.segment_len).map_err(D::Error::custom)?;
        Ok(SharedSlice { segment, len: wire.len, _element: PhantomData })
    }
}

impl<T: Pod> Serialize for SharedSliceMut<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        transfer::hold(&self.segment).map_err(S::Error::custom)?;
        HandleWire::of::<T>(&self.segment, self.start, self.len).serialize(serializer)
    }
}

impl<'de, T: Pod> Deserialize<'de> for SharedSliceMut<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = HandleWire::deserialize(deserializer)?;
        wire.check::<T>().map_err(D::Error::custom)?;
        let segment = transfer::open(&wire.segment, wire.segment_len).map_err(D::Error::custom)?;
        Ok(SharedSliceMut { segment, start: wire.start, len: wire.len, _element: PhantomData })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handle_cannot_be_serialized_outside_a_message() {
        let array = SharedSliceMut::<u8>::new(4).unwrap();
        let err = bincode::serialize(&array).unwrap_err();
        assert!(err.to_string().contains("only inside ensemble messages"), "{err}");
    }

    #[test]
    fn a_handle_round_trips_through_the_transfer_contexts() {
        let mut array = SharedSliceMut::<u16>::new(3).unwrap();
        array.copy_from_slice(&[7, 8, 9]);
        let (bytes, holds) = transfer::collecting_holds(|| bincode::serialize(&array).unwrap());
        assert_eq!(holds.len(), 1);
        drop(array);
        let (received, opened) =
            transfer::counting_opens(|| bincode::deserialize::<SharedSliceMut<u16>>(&bytes));
        assert_eq!(opened, 1);
        assert_eq!(&*received.unwrap(), &[7, 8, 9]);
    }

    #[test]
    fn a_handle_received_as_another_element_type_is_refused() {
        let array = SharedSliceMut::<u32>::new(2).unwrap();
        let (bytes, _holds) = transfer::collecting_holds(|| bincode::serialize(&array).unwrap());
        let (received, _) = transfer::counting_opens(|| bincode::deserialize::<SharedSliceMut<f32>>(&bytes));
        let err = received.unwrap_err().to_string();
        assert!(err.contains("holds u32, received as f32"), "{err}");
    }
}
