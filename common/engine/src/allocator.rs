//! Process-wide tuning of glibc's allocator for the training and
//! attribution loops, and an allocator that puts large blocks on cache
//! lines.
//!
//! Every step allocates and frees activation buffers of a few megabytes.
//! By default glibc serves those with fresh `mmap`s and hands freed memory
//! back to the kernel at once, so each step pays for page faults, zeroed
//! pages and TLB shootdowns across threads (about a third of a small
//! model's training step, measured). Keeping freed memory in the process
//! removes that; the peak resident size stays that of one step.

/// Serve large allocations from the heap and keep freed memory for reuse.
/// Call once at the start of a stage. Does nothing off glibc.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // glibc's largest allowed mmap threshold (32 MiB on 64-bit): above
        // it, allocations are rare and mapping them is fine.
        const MMAP_THRESHOLD: libc::c_int = 32 << 20;
        const TRIM_THRESHOLD: libc::c_int = 1 << 30;
        // SAFETY: mallopt only changes allocator parameters; both values
        // are within glibc's documented ranges.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        }
    }
}

/// The system allocator with every block of at least [`LINE_ALIGNED_FROM`]
/// bytes starting on a cache line. glibc aligns blocks to 16 bytes, so a
/// buffer's rows, even where their offsets are whole lines, straddled two
/// lines in three buffers of four, and so did every 64-byte vector load
/// and store on them. A binary opts in with
/// `#[global_allocator] static ALLOCATOR: LineAlignedAllocator = LineAlignedAllocator;`.
pub struct LineAlignedAllocator;

/// Blocks from this size on start on a cache line.
pub const LINE_ALIGNED_FROM: usize = 1024;

const LINE: usize = 64;

/// `layout`, aligned to a cache line where it is large enough.
fn widened(layout: std::alloc::Layout) -> std::alloc::Layout {
    if layout.size() >= LINE_ALIGNED_FROM && layout.align() < LINE {
        // Fails only for a size within a line of `isize::MAX`, which
        // keeps its own alignment.
        std::alloc::Layout::from_size_align(layout.size(), LINE).unwrap_or(layout)
    } else {
        layout
    }
}

// SAFETY: every block is served and released by `System` with the same
// widened layout (which `widened` derives from the caller's layout alone),
// and a widened layout only raises the alignment, so each block satisfies
// the caller's layout.
unsafe impl std::alloc::GlobalAlloc for LineAlignedAllocator {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: the caller's contract (non-zero size) holds for the
        // widened layout, which has the same size.
        unsafe { std::alloc::System.alloc(widened(layout)) }
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: as in `alloc`.
        unsafe { std::alloc::System.alloc_zeroed(widened(layout)) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: `ptr` came from `alloc`, `alloc_zeroed` or `realloc` with
        // this layout, so from `System` with its widened form.
        unsafe { std::alloc::System.dealloc(ptr, widened(layout)) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        // SAFETY (for the layout): the caller guarantees that `new_size`
        // with `layout`'s alignment is a valid layout.
        let new_layout = unsafe { std::alloc::Layout::from_size_align_unchecked(new_size, layout.align()) };
        let (old, new) = (widened(layout), widened(new_layout));
        if old.align() == new.align() {
            // SAFETY: `ptr` came from `System` with `old`; `new_size` is
            // valid for it (same alignment).
            return unsafe { std::alloc::System.realloc(ptr, old, new_size) };
        }
        // The block crosses the size from which blocks are aligned: a new
        // one with the new alignment, the values copied.
        // SAFETY: `new` has a non-zero size (the caller's contract).
        let moved = unsafe { std::alloc::System.alloc(new) };
        if !moved.is_null() {
            // SAFETY: both blocks are valid for the smaller size and are
            // distinct allocations; `ptr` is released with its layout.
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_size));
                std::alloc::System.dealloc(ptr, old);
            }
        }
        moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::{GlobalAlloc, Layout};

    /// Large blocks start on a line, small ones need not, and a block keeps
    /// its values when it grows past the aligned size, grows within it and
    /// shrinks below it.
    #[test]
    fn large_blocks_start_on_a_line_and_keep_their_values_when_resized() {
        let allocator = LineAlignedAllocator;
        let layout = |size| Layout::from_size_align(size, 4).unwrap();
        let on_a_line = |p: *mut u8| p.align_offset(LINE) == 0;
        let values = |p: *mut u8, len: usize| (0..len).all(|i| unsafe { *p.add(i) } == (i % 251) as u8);
        // SAFETY: every block is used within its size and released with
        // the layout it has.
        unsafe {
            let p = allocator.alloc(layout(100));
            assert!(!p.is_null());
            (0..100).for_each(|i| *p.add(i) = (i % 251) as u8);
            let p = allocator.realloc(p, layout(100), 5000);
            assert!(on_a_line(p) && values(p, 100));
            (100..5000).for_each(|i| *p.add(i) = (i % 251) as u8);
            let p = allocator.realloc(p, layout(5000), 9000);
            assert!(on_a_line(p) && values(p, 5000));
            let p = allocator.realloc(p, layout(9000), 50);
            assert!(values(p, 50));
            allocator.dealloc(p, layout(50));
            let zeroed = allocator.alloc_zeroed(layout(LINE_ALIGNED_FROM));
            assert!(on_a_line(zeroed) && (0..LINE_ALIGNED_FROM).all(|i| *zeroed.add(i) == 0));
            allocator.dealloc(zeroed, layout(LINE_ALIGNED_FROM));
        }
    }
}
