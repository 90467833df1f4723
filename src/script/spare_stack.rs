//! Coroutine stacks kept per thread for the next pausable operation.
//!
//! Pattern operations ([`super::pausable`]) and big request conversions
//! ([`super::sliced_decode`]) run on `corosensei` stacks of their own so that they can stop
//! between two steps. Making a stack maps memory (and a guard page), which would cost more than
//! a short operation itself, so a finished one leaves its stack here for the next of its size.
//! One stack per size is kept: pages already touched stay with it, and the rest are only mapped.

use std::cell::RefCell;

use corosensei::stack::{DefaultStack, Stack};

thread_local! {
    /// Stacks finished operations left, at most one per size.
    static SPARE: RefCell<Vec<DefaultStack>> = const { RefCell::new(Vec::new()) };
}

/// Usable bytes of `stack`.
fn size(stack: &DefaultStack) -> usize {
    stack.base().get() - stack.limit().get()
}

/// A stack of at least `bytes`: one a finished operation left on this thread, or a new one.
pub fn take(bytes: usize) -> std::io::Result<DefaultStack> {
    let kept = SPARE
        .try_with(|s| {
            let mut s = s.borrow_mut();
            let at = s.iter().position(|stack| size(stack) >= bytes)?;
            Some(s.swap_remove(at))
        })
        .ok()
        .flatten();
    match kept {
        Some(stack) => Ok(stack),
        None => DefaultStack::new(bytes),
    }
}

/// Keeps `stack` for this thread's next operation of its size (dropped instead while the
/// thread exits, or when one of that size is kept already).
pub fn keep(stack: DefaultStack) {
    let _ = SPARE.try_with(|s| {
        let mut s = s.borrow_mut();
        if !s.iter().any(|kept| size(kept) == size(&stack)) {
            s.push(stack);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_stack_is_taken_again_by_its_size() {
        let small = take(1 << 20).unwrap();
        let big = take(2 << 20).unwrap();
        let (small_base, big_base) = (small.base(), big.base());
        keep(small);
        keep(big);
        let (big, small) = (take(2 << 20).unwrap(), take(1 << 20).unwrap());
        assert_eq!((big.base(), small.base()), (big_base, small_base));
        // A size kept already keeps one; a small stack never serves a bigger need.
        keep(small);
        keep(take(1 << 20).unwrap());
        assert!(size(&take(4 << 20).unwrap()) >= 4 << 20);
        SPARE.with(|s| assert_eq!(s.borrow().len(), 1));
    }
}
