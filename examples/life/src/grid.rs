//! The Game of Life itself: a fixed-size grid whose edges wrap around (a torus).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// Columns of a room's grid.
pub const WIDTH: u16 = 64;
/// Rows of a room's grid.
pub const HEIGHT: u16 = 48;

/// A generation of a room: its number and its live cells as `[x, y]`, sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grid {
    pub generation: u64,
    pub cells: BTreeSet<[u16; 2]>,
}

impl Grid {
    /// Brings the cells of `input` that lie on the grid to life. Returns how many were added
    /// (cells already alive and cells off the grid are not counted).
    pub fn add(&mut self, input: &[[i64; 2]]) -> usize {
        let mut added = 0;
        for &[x, y] in input {
            let (Ok(x), Ok(y)) = (u16::try_from(x), u16::try_from(y)) else {
                continue;
            };
            if x < WIDTH && y < HEIGHT && self.cells.insert([x, y]) {
                added += 1;
            }
        }
        added
    }

    /// The next generation: a live cell with 2 or 3 live neighbours lives on, a dead cell with
    /// exactly 3 comes to life, every other cell is dead.
    pub fn step(&mut self) {
        let (w, h) = (usize::from(WIDTH), usize::from(HEIGHT));
        let mut counts = vec![0u8; w * h];
        for &[x, y] in &self.cells {
            let (x, y) = (usize::from(x), usize::from(y));
            for dy in [h - 1, 0, 1] {
                for dx in [w - 1, 0, 1] {
                    if dx == 0 && dy == 0 {
                        continue;
                    }
                    counts[((y + dy) % h) * w + (x + dx) % w] += 1;
                }
            }
        }
        let mut next = BTreeSet::new();
        for (i, &n) in counts.iter().enumerate() {
            let cell = [(i % w) as u16, (i / w) as u16];
            if n == 3 || (n == 2 && self.cells.contains(&cell)) {
                next.insert(cell);
            }
        }
        self.cells = next;
        self.generation += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(cells: &[[u16; 2]]) -> Grid {
        Grid {
            generation: 0,
            cells: cells.iter().copied().collect(),
        }
    }

    #[test]
    fn a_block_is_still() {
        let mut g = grid(&[[1, 1], [2, 1], [1, 2], [2, 2]]);
        let before = g.cells.clone();
        g.step();
        assert_eq!(g.cells, before);
        assert_eq!(g.generation, 1);
    }

    #[test]
    fn a_blinker_blinks() {
        let mut g = grid(&[[5, 4], [5, 5], [5, 6]]);
        g.step();
        assert_eq!(g.cells, grid(&[[4, 5], [5, 5], [6, 5]]).cells);
        g.step();
        assert_eq!(g.cells, grid(&[[5, 4], [5, 5], [5, 6]]).cells);
    }

    #[test]
    fn lonely_cells_die_and_edges_wrap() {
        let mut g = grid(&[[0, 0]]);
        g.step();
        assert!(g.cells.is_empty());
        // A blinker across the corner of the torus.
        let mut g = grid(&[[WIDTH - 1, 0], [0, 0], [1, 0]]);
        g.step();
        assert_eq!(g.cells, grid(&[[0, HEIGHT - 1], [0, 0], [0, 1]]).cells);
    }

    #[test]
    fn a_glider_comes_back_shifted_after_four_generations() {
        let glider = [[1, 0], [2, 1], [0, 2], [1, 2], [2, 2]];
        let mut g = grid(&glider);
        for _ in 0..4 {
            g.step();
        }
        let shifted: BTreeSet<[u16; 2]> = glider.iter().map(|&[x, y]| [x + 1, y + 1]).collect();
        assert_eq!(g.cells, shifted);
    }

    #[test]
    fn only_cells_on_the_grid_are_added() {
        let mut g = Grid::default();
        let added = g.add(&[[0, 0], [0, 0], [-1, 3], [64, 0], [63, 47], [0, 48]]);
        assert_eq!(added, 2);
        assert_eq!(g.cells, grid(&[[0, 0], [63, 47]]).cells);
    }
}
