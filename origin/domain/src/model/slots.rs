//! Slot allocation within a layer. A layer has 10 000 slots; a running experiment owns
//! disjoint half-open ranges of them. Ranges are allocated when an experiment starts (or its
//! traffic grows) and never move, so no other experiment's users change.

/// A half-open range `[start, end)` of slots.
pub type Range = (u16, u16);

pub const LAYER_SLOTS: u16 = 10_000;

/// The unallocated ranges of a layer, in order.
pub fn free_ranges(allocated: &[Range]) -> Vec<Range> {
    let mut taken = allocated.to_vec();
    taken.sort_unstable();
    let mut free = Vec::new();
    let mut cursor = 0;
    for (start, end) in taken {
        if start > cursor {
            free.push((cursor, start));
        }
        cursor = cursor.max(end);
    }
    if cursor < LAYER_SLOTS {
        free.push((cursor, LAYER_SLOTS));
    }
    free
}

pub fn free_bp(allocated: &[Range]) -> u16 {
    free_ranges(allocated).iter().map(|(s, e)| e - s).sum()
}

/// Allocates `needed` slots: the first free range large enough (first fit); if no single
/// range is, the free ranges from the lowest up, split as little as possible. `Err` carries
/// the free total when the layer lacks room.
pub fn allocate(allocated: &[Range], needed: u16) -> Result<Vec<Range>, u16> {
    let free = free_ranges(allocated);
    let total: u16 = free.iter().map(|(s, e)| e - s).sum();
    if needed > total {
        return Err(total);
    }
    if needed == 0 {
        return Ok(Vec::new());
    }
    if let Some(&(start, _)) = free.iter().find(|(s, e)| e - s >= needed) {
        return Ok(vec![(start, start + needed)]);
    }
    let mut out = Vec::new();
    let mut remaining = needed;
    for (start, end) in free {
        let take = remaining.min(end - start);
        out.push((start, start + take));
        remaining -= take;
        if remaining == 0 {
            break;
        }
    }
    Ok(out)
}

/// Sorts ranges and joins adjacent ones.
pub fn merge(mut ranges: Vec<Range>) -> Vec<Range> {
    ranges.sort_unstable();
    let mut out: Vec<Range> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match out.last_mut() {
            Some(last) if last.1 == start => last.1 = end,
            _ => out.push((start, end)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_fit_prefers_a_single_range() {
        let taken = [(0, 1_000), (1_500, 2_000), (3_000, 10_000)];
        assert_eq!(free_ranges(&taken), vec![(1_000, 1_500), (2_000, 3_000)]);
        assert_eq!(allocate(&taken, 400), Ok(vec![(1_000, 1_400)]));
        assert_eq!(allocate(&taken, 800), Ok(vec![(2_000, 2_800)]));
        // Nothing single is large enough: fill from the bottom.
        assert_eq!(
            allocate(&taken, 1_200),
            Ok(vec![(1_000, 1_500), (2_000, 2_700)])
        );
        assert_eq!(allocate(&taken, 1_501), Err(1_500));
    }

    #[test]
    fn an_empty_layer_gives_the_lowest_slots() {
        assert_eq!(allocate(&[], 2_000), Ok(vec![(0, 2_000)]));
        assert_eq!(allocate(&[], 10_000), Ok(vec![(0, 10_000)]));
        assert_eq!(allocate(&[(0, 10_000)], 1), Err(0));
        assert_eq!(allocate(&[(0, 10_000)], 0), Ok(vec![]));
    }

    #[test]
    fn merge_joins_neighbours() {
        assert_eq!(
            merge(vec![(20, 30), (0, 10), (10, 20), (40, 50)]),
            vec![(0, 30), (40, 50)]
        );
    }
}
