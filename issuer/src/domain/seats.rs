//! Best available: where to seat a party of N together.
//!
//! A party sits side by side in one row. Of the blocks of N free seats
//! side by side, the best is the one that leaves no lone free seat beside
//! it (a seat between the block and a taken seat or the row's end, which
//! no party of two or more could ever buy), then the front-most row, then
//! the block nearest the row's middle. A block that leaves a lone seat is
//! chosen only when every block does.

/// Whether each seat of a row is free, left to right.
pub type RowState<'a> = &'a [bool];

/// Where a block of seats is: a row's index in the rows given, and its
/// first seat's index in the row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block {
    pub row: usize,
    pub first: usize,
}

/// The best block of `n` free seats side by side in `rows` (front first),
/// if there is one.
pub fn best_block(rows: &[RowState<'_>], n: usize) -> Option<Block> {
    if n == 0 {
        return None;
    }
    let mut best: Option<(Rank, Block)> = None;
    for (r, seats) in rows.iter().enumerate() {
        // A block leaving no lone seat in a row before this one: none of
        // the rows behind can beat it.
        if best.as_ref().is_some_and(|(b, _)| b.lone == 0 && b.row < r) {
            break;
        }
        // Free runs of the row: each block of n inside a run is a choice.
        let mut start = 0;
        while start < seats.len() {
            if !seats[start] {
                start += 1;
                continue;
            }
            let end = seats[start..]
                .iter()
                .position(|free| !free)
                .map_or(seats.len(), |len| start + len);
            let run = end - start;
            if run >= n {
                for first in start..=end - n {
                    // Free seats left on either side within the run.
                    let (left, right) = (first - start, end - (first + n));
                    let rank = Rank {
                        lone: u8::from(left == 1) + u8::from(right == 1),
                        row: r,
                        off_centre: (2 * first + n).abs_diff(seats.len()),
                    };
                    if best.as_ref().is_none_or(|(b, _)| rank < *b) {
                        best = Some((rank, Block { row: r, first }));
                    }
                }
            }
            start = end;
        }
    }
    best.map(|(_, block)| block)
}

/// How good a block is: less is better, compared field by field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Rank {
    /// Lone free seats the block leaves beside it (0 to 2).
    lone: u8,
    /// Front rows first.
    row: usize,
    /// Twice the distance of the block's middle from the row's.
    off_centre: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A row from a picture: `.` free, `x` taken.
    fn row(s: &str) -> Vec<bool> {
        s.chars().map(|c| c == '.').collect()
    }

    fn best(rows: &[&str], n: usize) -> Option<(usize, usize)> {
        let rows: Vec<Vec<bool>> = rows.iter().map(|r| row(r)).collect();
        let views: Vec<&[bool]> = rows.iter().map(Vec::as_slice).collect();
        best_block(&views, n).map(|b| (b.row, b.first))
    }

    #[test]
    fn a_party_sits_in_the_front_row_in_the_middle() {
        assert_eq!(best(&["........", "........"], 2), Some((0, 3)));
        assert_eq!(best(&["xxxxxxxx", "........"], 4), Some((1, 2)));
    }

    #[test]
    fn no_lone_seat_is_left_when_another_choice_exists() {
        // Two of the front row's three free seats leave one alone; the
        // back row has room for two without: the back row is chosen.
        assert_eq!(best(&["x...x", "x....x"], 2), Some((1, 1)));
        // Beside the aisle end: "..." for two leaves one whichever way.
        // A block flush with a taken seat is preferred to one in the middle.
        let (r, first) = best(&["x.....x"], 2).unwrap();
        assert_eq!(r, 0);
        assert!(first == 1 || first == 4, "flush with a taken seat: {first}");
    }

    #[test]
    fn a_lone_seat_is_left_only_when_every_choice_leaves_one() {
        assert_eq!(best(&["x...x", "x.x"], 2), Some((0, 1)));
        // Flush with either end, one seat is left over: the middle-most.
        assert_eq!(best(&["x....x.x"], 3), Some((0, 2)));
    }

    #[test]
    fn a_party_too_large_for_every_run_gets_nothing() {
        assert_eq!(best(&["..x..", "x..x."], 3), None);
        assert_eq!(best(&[], 1), None);
        assert_eq!(best(&["...."], 0), None);
        assert_eq!(best(&["...."], 4), Some((0, 0)));
    }

    #[test]
    fn the_block_chosen_is_always_free_and_side_by_side() {
        // Every row of up to 10 seats, every party size.
        for bits in 0u32..1 << 10 {
            let seats: Vec<bool> = (0..10).map(|i| bits >> i & 1 == 1).collect();
            for n in 1..=10 {
                let got = best_block(&[&seats], n);
                let fits = (0..=10 - n).any(|f| seats[f..f + n].iter().all(|s| *s));
                assert_eq!(got.is_some(), fits, "{seats:?} {n}");
                if let Some(b) = got {
                    assert!(seats[b.first..b.first + n].iter().all(|s| *s));
                }
            }
        }
    }
}
