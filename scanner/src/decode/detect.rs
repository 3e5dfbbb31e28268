//! A finder-pattern QR detector over a binarized picture: finds the three
//! 1:1:3:1:1 finder patterns, the bottom-right alignment pattern, samples the
//! module grid through a perspective transform, and hands the bits to rqrr's
//! decoder (error correction and payload). The transform comes first from the
//! three finder centres and the alignment pattern (or an affine guess of the
//! fourth corner); when that fails, as under strong perspective, from a
//! least-squares fit to the corners of the finder patterns' cores and rings.

use super::binarize::{Bits, Luma, Thresholds};

/// The grey picture behind a binarized one, for reading modules too small
/// for the black-and-white pixels: each module's grey level, interpolated at
/// its centre, against the local threshold there.
pub(crate) struct Grey<'a> {
    pub(crate) img: &'a Luma<'a>,
    pub(crate) thresholds: &'a Thresholds,
    /// Light modules are the dark ones (light-on-dark codes).
    pub(crate) invert: bool,
}

impl Grey<'_> {
    /// Whether the picture is dark at the continuous point (`x`, `y`).
    fn dark(&self, x: f64, y: f64) -> bool {
        let (w, h) = (self.img.width, self.img.height);
        if !(x >= 0.0 && y >= 0.0 && x < w as f64 && y < h as f64) {
            return false;
        }
        let Some(t) = self.thresholds.at(x as usize, y as usize) else {
            return false;
        };
        // Bilinear between the four pixel centres around the point.
        let (fx, fy) = ((x - 0.5).max(0.0), (y - 0.5).max(0.0));
        let (x0, y0) = ((fx as usize).min(w - 1), (fy as usize).min(h - 1));
        let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
        let (ax, ay) = (fx - x0 as f64, fy - y0 as f64);
        let d = &self.img.data;
        let p = |x: usize, y: usize| f64::from(d[y * w + x]);
        let top = p(x0, y0) * (1.0 - ax) + p(x1, y0) * ax;
        let bottom = p(x0, y1) * (1.0 - ax) + p(x1, y1) * ax;
        let v = top * (1.0 - ay) + bottom * ay;
        if self.invert {
            v > f64::from(t)
        } else {
            v <= f64::from(t)
        }
    }

    fn sample(&self, hom: &Homography, size: usize) -> Sampled {
        let mut bits = Vec::with_capacity(size * size);
        for y in 0..size {
            for x in 0..size {
                let p = hom.map(x as f64 + 0.5, y as f64 + 0.5);
                bits.push(self.dark(p.x, p.y));
            }
        }
        Sampled { size, bits }
    }
}

#[derive(Clone, Copy, Debug)]
struct Pt {
    x: f64,
    y: f64,
}

impl Pt {
    fn dist(self, o: Pt) -> f64 {
        ((self.x - o.x).powi(2) + (self.y - o.y).powi(2)).sqrt()
    }
}

#[derive(Clone, Copy, Debug)]
struct Finder {
    at: Pt,
    module: f64,
    count: u32,
}

/// Walks from pixel (`x`, `y`) in direction (`dx`, `dy`) and back, counting
/// the five runs of a supposed finder pattern through it. Returns the centre
/// of the dark core along the walk (continuous coordinate, relative to the
/// start pixel's near edge) and the total length, when the runs fit 1:1:3:1:1.
fn cross_check(bits: &Bits, x: i64, y: i64, dx: i64, dy: i64, max_run: i64) -> Option<(f64, f64)> {
    if !bits.dark(x, y) {
        return None;
    }
    let at = |i: i64| (x + i * dx, y + i * dy);
    let dark = |i: i64| {
        let (px, py) = at(i);
        bits.dark(px, py)
    };
    let inside = |i: i64| {
        let (px, py) = at(i);
        in_bounds(bits, px, py)
    };
    let mut s = [0i64; 5];
    // Backwards: dark core (including the start), light ring, dark ring.
    let mut i = 0;
    while dark(-i) {
        s[2] += 1;
        i += 1;
        if s[2] > 3 * max_run {
            return None;
        }
    }
    let core_back = s[2];
    while inside(-i) && !dark(-i) && s[1] <= max_run {
        s[1] += 1;
        i += 1;
    }
    while dark(-i) && s[0] <= max_run {
        s[0] += 1;
        i += 1;
    }
    // Forwards.
    let mut i = 1;
    while dark(i) {
        s[2] += 1;
        i += 1;
        if s[2] > 3 * max_run {
            return None;
        }
    }
    let core_fwd = s[2] - core_back;
    while inside(i) && !dark(i) && s[3] <= max_run {
        s[3] += 1;
        i += 1;
    }
    while dark(i) && s[4] <= max_run {
        s[4] += 1;
        i += 1;
    }
    if s.iter().any(|&c| c > max_run * 3)
        || s[0] > max_run
        || s[1] > max_run
        || s[3] > max_run
        || s[4] > max_run
    {
        return None;
    }
    if !ratio_ok(&s) {
        return None;
    }
    let centre = (core_fwd - core_back + 2) as f64 / 2.0;
    Some((centre, s.iter().sum::<i64>() as f64))
}

fn in_bounds(bits: &Bits, x: i64, y: i64) -> bool {
    x >= 0 && y >= 0 && (x as usize) < bits.width && (y as usize) < bits.height
}

fn ratio_ok(s: &[i64; 5]) -> bool {
    let total: i64 = s.iter().sum();
    if total < 7 || s.contains(&0) {
        return false;
    }
    let m = total as f64 / 7.0;
    let v = m * 0.7;
    (m - s[0] as f64).abs() < v
        && (m - s[1] as f64).abs() < v
        && (3.0 * m - s[2] as f64).abs() < 3.0 * v
        && (m - s[3] as f64).abs() < v
        && (m - s[4] as f64).abs() < v
}

/// Every finder-pattern centre in the picture, merged across scan rows.
fn find_finders(bits: &Bits) -> Vec<Finder> {
    let (w, h) = (bits.width, bits.height);
    let mut found: Vec<Finder> = Vec::new();
    let step = if h >= 400 { 2 } else { 1 };
    let mut y = 0;
    while y < h {
        let row = &bits.data[y * w..(y + 1) * w];
        let mut s = [0i64; 5];
        let mut state = 0usize;
        for (x, &px) in row.iter().enumerate() {
            if px != 0 {
                if state % 2 == 1 {
                    state += 1;
                }
                s[state] += 1;
            } else if state % 2 == 1 {
                s[state] += 1;
            } else if s[state] == 0 {
                // Light before the first dark run.
            } else if state == 4 {
                if ratio_ok(&s) {
                    try_centre(bits, &s, x as i64, y as i64, &mut found);
                }
                s = [s[2], s[3], s[4], 1, 0];
                state = 3;
            } else {
                state += 1;
                s[state] += 1;
            }
        }
        if state == 4 && ratio_ok(&s) {
            try_centre(bits, &s, w as i64, y as i64, &mut found);
        }
        y += step;
    }
    found
}

fn try_centre(bits: &Bits, s: &[i64; 5], end: i64, y: i64, found: &mut Vec<Finder>) {
    let total: i64 = s.iter().sum();
    let cx = (end - s[4] - s[3]) as f64 - s[2] as f64 / 2.0;
    let max_run = (total as f64 / 7.0 * 2.5).ceil() as i64 + 1;
    // Vertical check through the supposed centre.
    let Some((off_v, tot_v)) = cross_check(bits, px(cx), y, 0, 1, max_run) else {
        return;
    };
    if (tot_v - total as f64).abs() > total as f64 {
        return;
    }
    let cy = y as f64 + off_v;
    // Horizontal again at the refined row.
    let Some((off_h, tot_h)) = cross_check(bits, px(cx), px(cy), 1, 0, max_run) else {
        return;
    };
    let cx = cx.floor() + off_h;
    // A diagonal check weeds out text and clutter.
    if cross_check(bits, px(cx), px(cy), 1, 1, max_run * 2).is_none() {
        return;
    }
    let module = (total as f64 + tot_v + tot_h) / 21.0;
    let at = Pt { x: cx, y: cy };
    for f in found.iter_mut() {
        if (f.at.x - at.x).abs() <= f.module.max(module)
            && (f.at.y - at.y).abs() <= f.module.max(module)
        {
            let ratio = f.module / module;
            if (0.6..=1.7).contains(&ratio) {
                let n = f64::from(f.count);
                f.at = Pt {
                    x: (f.at.x * n + at.x) / (n + 1.0),
                    y: (f.at.y * n + at.y) / (n + 1.0),
                };
                f.module = (f.module * n + module) / (n + 1.0);
                f.count += 1;
                return;
            }
        }
    }
    found.push(Finder {
        at,
        module,
        count: 1,
    });
}

/// Solves 8 linear equations in 8 unknowns, given as an augmented matrix
/// (Gauss-Jordan with partial pivoting); `None` when they are degenerate.
fn solve8(mut a: [[f64; 9]; 8]) -> Option<[f64; 8]> {
    for col in 0..8 {
        let pivot = (col..8).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        if a[pivot][col].abs() < 1e-12 {
            return None;
        }
        a.swap(col, pivot);
        let pivot_row = a[col];
        for (r, row) in a.iter_mut().enumerate() {
            if r != col {
                let f = row[col] / pivot_row[col];
                if f != 0.0 {
                    for (x, p) in row.iter_mut().zip(pivot_row.iter()).skip(col) {
                        *x -= f * p;
                    }
                }
            }
        }
    }
    let mut h = [0f64; 8];
    for i in 0..8 {
        h[i] = a[i][8] / a[i][i];
    }
    h.iter().all(|v| v.is_finite()).then_some(h)
}

/// A homography from module coordinates to picture coordinates.
struct Homography([f64; 8]);

impl Homography {
    fn from_points(src: &[Pt; 4], dst: &[Pt; 4]) -> Option<Self> {
        let mut a = [[0f64; 9]; 8];
        for i in 0..4 {
            let (x, y, u, v) = (src[i].x, src[i].y, dst[i].x, dst[i].y);
            a[2 * i] = [x, y, 1.0, 0.0, 0.0, 0.0, -u * x, -u * y, u];
            a[2 * i + 1] = [0.0, 0.0, 0.0, x, y, 1.0, -v * x, -v * y, v];
        }
        solve8(a).map(Homography)
    }

    /// The least-squares homography through many weighted pairs (module
    /// point, picture point), both sides normalised first so the equations
    /// stay well conditioned.
    fn fit(pairs: &[(Pt, Pt, f64)]) -> Option<Self> {
        if pairs.len() < 4 {
            return None;
        }
        // Centroid and mean distance from it, per side.
        let norm = |pick: &dyn Fn(&(Pt, Pt, f64)) -> Pt| {
            let n = pairs.len() as f64;
            let (mx, my) = pairs.iter().fold((0.0, 0.0), |(x, y), p| {
                let q = pick(p);
                (x + q.x / n, y + q.y / n)
            });
            let d = pairs
                .iter()
                .map(|p| {
                    let q = pick(p);
                    (q.x - mx).hypot(q.y - my)
                })
                .sum::<f64>()
                / n;
            (mx, my, if d > 1e-9 { 1.0 / d } else { 1.0 })
        };
        let (sx, sy, ss) = norm(&|p| p.0);
        let (px, py, ps) = norm(&|p| p.1);
        let mut a = [[0f64; 9]; 8];
        for &(m, q, w) in pairs {
            let (x, y) = ((m.x - sx) * ss, (m.y - sy) * ss);
            let (u, v) = ((q.x - px) * ps, (q.y - py) * ps);
            for (row, rhs) in [
                ([x, y, 1.0, 0.0, 0.0, 0.0, -u * x, -u * y], u),
                ([0.0, 0.0, 0.0, x, y, 1.0, -v * x, -v * y], v),
            ] {
                for i in 0..8 {
                    for j in 0..8 {
                        a[i][j] += w * row[i] * row[j];
                    }
                    a[i][8] += w * row[i] * rhs;
                }
            }
        }
        let n = solve8(a)?;
        // Picture = P^-1 * N * S, with S and P the two normalisations.
        let nm = [[n[0], n[1], n[2]], [n[3], n[4], n[5]], [n[6], n[7], 1.0]];
        let sm = [[ss, 0.0, -ss * sx], [0.0, ss, -ss * sy], [0.0, 0.0, 1.0]];
        let pinv = [[1.0 / ps, 0.0, px], [0.0, 1.0 / ps, py], [0.0, 0.0, 1.0]];
        let mul = |a: [[f64; 3]; 3], b: [[f64; 3]; 3]| {
            let mut c = [[0f64; 3]; 3];
            for i in 0..3 {
                for j in 0..3 {
                    c[i][j] = (0..3).map(|k| a[i][k] * b[k][j]).sum();
                }
            }
            c
        };
        let h = mul(pinv, mul(nm, sm));
        if h[2][2].abs() < 1e-12 {
            return None;
        }
        let k = 1.0 / h[2][2];
        let out = [
            h[0][0] * k,
            h[0][1] * k,
            h[0][2] * k,
            h[1][0] * k,
            h[1][1] * k,
            h[1][2] * k,
            h[2][0] * k,
            h[2][1] * k,
        ];
        out.iter().all(|v| v.is_finite()).then_some(Homography(out))
    }

    fn map(&self, x: f64, y: f64) -> Pt {
        let h = &self.0;
        let d = h[6] * x + h[7] * y + 1.0;
        Pt {
            x: (h[0] * x + h[1] * y + h[2]) / d,
            y: (h[3] * x + h[4] * y + h[5]) / d,
        }
    }
}

struct Sampled {
    size: usize,
    bits: Vec<bool>,
}

impl rqrr::BitGrid for Sampled {
    fn size(&self) -> usize {
        self.size
    }
    fn bit(&self, y: usize, x: usize) -> bool {
        self.bits.get(y * self.size + x).copied().unwrap_or(false)
    }
}

/// The pixel holding the continuous coordinate `v`: `floor`, without the
/// library call it compiles to on baseline x86-64 (NaN gives 0, out of range
/// saturates; both read as outside the picture or harmlessly).
#[inline]
fn px(v: f64) -> i64 {
    let i = v as i64;
    if (i as f64) > v { i - 1 } else { i }
}

/// The module grid of `size` x `size` seen through `hom`, when its timing
/// patterns (row and column 6 between the finders, alternating dark and
/// light) mostly match: a cheap check, made before sampling the rest, that
/// the grid size and geometry are right.
fn sample_timed(bits: &Bits, hom: &Homography, size: usize) -> Option<Sampled> {
    if size < 21 {
        return None;
    }
    let at = |x: usize, y: usize| {
        let p = hom.map(x as f64 + 0.5, y as f64 + 0.5);
        bits.dark(px(p.x), px(p.y))
    };
    let mut good = 0usize;
    for i in 8..size - 8 {
        let want = i % 2 == 0;
        good += usize::from(at(i, 6) == want) + usize::from(at(6, i) == want);
    }
    if good * 4 < (size - 16) * 2 * 3 {
        return None;
    }
    let mut out = Vec::with_capacity(size * size);
    for y in 0..size {
        for x in 0..size {
            out.push(at(x, y));
        }
    }
    Some(Sampled { size, bits: out })
}

/// Looks for the bottom-right alignment pattern near `guess`, matching a 5x5
/// module template along the code's module axes `u` and `v`.
fn find_alignment(bits: &Bits, guess: Pt, u: Pt, v: Pt, module: f64) -> Option<Pt> {
    let radius = (module * 5.0).max(4.0);
    let stride = (module / 3.0).max(1.0);
    let steps = (radius / stride).ceil() as i64;
    // The template's 25 cells: offset from the centre, and whether dark.
    let mut cells = [(0.0, 0.0, false); 25];
    for (k, cell) in cells.iter_mut().enumerate() {
        let (a, b) = ((k % 5) as f64 - 2.0, (k / 5) as f64 - 2.0);
        let ring = a.abs().max(b.abs());
        *cell = (a * u.x + b * v.x, a * u.y + b * v.y, ring != 1.0);
    }
    // Only positions matching at least 22 cells count, so a position is
    // given up at its fourth mismatch (or sooner, once the best is higher).
    let mut best = (22u32, 0.0, 0.0, 0u32);
    for j in -steps..=steps {
        for i in -steps..=steps {
            let c = Pt {
                x: guess.x + i as f64 * stride,
                y: guess.y + j as f64 * stride,
            };
            let allowed = 25 - best.0;
            let mut misses = 0u32;
            for &(dx, dy, want_dark) in &cells {
                let (x, y) = (px(c.x + dx), px(c.y + dy));
                if bits.dark(x, y) != want_dark {
                    misses += 1;
                    if misses > allowed {
                        break;
                    }
                }
            }
            if misses > allowed {
                continue;
            }
            // Keep the centroid of the best-scoring positions.
            let score = 25 - misses;
            if score > best.0 || best.3 == 0 {
                best = (score, c.x, c.y, 1);
            } else {
                best.1 += c.x;
                best.2 += c.y;
                best.3 += 1;
            }
        }
    }
    (best.3 > 0).then(|| Pt {
        x: best.1 / f64::from(best.3),
        y: best.2 / f64::from(best.3),
    })
}

/// The width of one finder pattern along the line from its centre `a` to
/// the centre `b` of another, over seven: dark core, light ring, dark ring,
/// walked both ways.
fn pattern_module(bits: &Bits, a: Pt, b: Pt) -> Option<f64> {
    let len = a.dist(b);
    if len < 1.0 {
        return None;
    }
    let (ux, uy) = ((b.x - a.x) / len, (b.y - a.y) / len);
    let mut width = 0.0;
    for sign in [1.0, -1.0] {
        let mut t = 0.0;
        let mut state = 0; // 0 core, 1 light ring, 2 dark ring
        loop {
            let (x, y) = (a.x + sign * t * ux, a.y + sign * t * uy);
            let dark = bits.dark(px(x), px(y));
            state = match (state, dark) {
                (0, false) => 1,
                (1, true) => 2,
                (2, false) => break,
                (s, _) => s,
            };
            t += 0.5;
            if t > len / 2.0 {
                return None;
            }
        }
        width += t;
    }
    Some(width / 7.0)
}

fn axis_module(bits: &Bits, a: Pt, b: Pt) -> Option<f64> {
    Some((pattern_module(bits, a, b)? + pattern_module(bits, b, a)?) / 2.0)
}

/// The dark pixels 4-connected to (`x`, `y`) within `radius` pixels of
/// `centre`, or `None` when they reach that far (the region leaks into the
/// rest of the code) or there are more than `max` of them.
fn region(
    bits: &Bits,
    x: i64,
    y: i64,
    centre: Pt,
    radius: i64,
    max: usize,
) -> Option<Vec<(i64, i64)>> {
    if !bits.dark(x, y) {
        return None;
    }
    let (x0, y0) = (centre.x as i64 - radius, centre.y as i64 - radius);
    let side = 2 * radius + 1;
    let mut seen = vec![false; (side * side) as usize];
    let index = |px: i64, py: i64| {
        let (i, j) = (px - x0, py - y0);
        (i >= 0 && j >= 0 && i < side && j < side).then(|| (j * side + i) as usize)
    };
    let mut stack = vec![(x, y)];
    seen[index(x, y)?] = true;
    let mut out = Vec::new();
    while let Some((px, py)) = stack.pop() {
        out.push((px, py));
        if out.len() > max {
            return None;
        }
        for (nx, ny) in [(px + 1, py), (px - 1, py), (px, py + 1), (px, py - 1)] {
            if !bits.dark(nx, ny) {
                continue;
            }
            let i = index(nx, ny)?;
            if !seen[i] {
                seen[i] = true;
                stack.push((nx, ny));
            }
        }
    }
    Some(out)
}

/// The region's extreme points in the directions -u-v, u-v, u+v, -u+v: the
/// corners of a square seen along the module axes `u` and `v`, each at the
/// outer corner of its pixel.
fn extremes(pixels: &[(i64, i64)], u: Pt, v: Pt) -> [Pt; 4] {
    let dirs = [(-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0)];
    dirs.map(|(a, b)| {
        let d = Pt {
            x: a * u.x + b * v.x,
            y: a * u.y + b * v.y,
        };
        let mut best = (f64::MIN, 0, 0);
        for &(x, y) in pixels {
            let s = (x as f64 + 0.5) * d.x + (y as f64 + 0.5) * d.y;
            if s > best.0 {
                best = (s, x, y);
            }
        }
        Pt {
            x: best.1 as f64 + 0.5 + 0.5 * d.x.signum(),
            y: best.2 as f64 + 0.5 + 0.5 * d.y.signum(),
        }
    })
}

/// The corners of a finder pattern's dark core (3x3 modules) and of its outer
/// dark ring (7x7), each in the order top-left, top-right, bottom-right,
/// bottom-left of the code whose module axes point along `u` and `v` (unit
/// vectors).
fn finder_corners(bits: &Bits, f: &Finder, u: Pt, v: Pt) -> Option<([Pt; 4], [Pt; 4])> {
    let m = f.module;
    let area = m * m;
    let (cx, cy) = (px(f.at.x), px(f.at.y));
    let core = region(
        bits,
        cx,
        cy,
        f.at,
        (3.0 * m).ceil() as i64 + 2,
        (30.0 * area) as usize + 16,
    )?;
    if (core.len() as f64) < 3.0 * area {
        return None;
    }
    // The ring: walk out from the centre, past the core and the light ring.
    for dir in [Pt { x: -u.x, y: -u.y }, Pt { x: -v.x, y: -v.y }, u, v] {
        let mut t = 0.0;
        let mut state = 0;
        let seed = loop {
            let (x, y) = (px(f.at.x + t * dir.x), px(f.at.y + t * dir.y));
            let dark = bits.dark(x, y);
            match (state, dark) {
                (0, false) => state = 1,
                (1, true) => break Some((x, y)),
                _ => {}
            }
            t += 0.5;
            if t > 5.0 * m + 2.0 {
                break None;
            }
        };
        let Some((x, y)) = seed else { continue };
        let Some(ring) = region(
            bits,
            x,
            y,
            f.at,
            (6.0 * m).ceil() as i64 + 3,
            (80.0 * area) as usize + 64,
        ) else {
            continue;
        };
        if (ring.len() as f64) < 8.0 * area {
            continue;
        }
        return Some((extremes(&core, u, v), extremes(&ring, u, v)));
    }
    None
}

/// Reads the grid of `dim` modules seen through `hom`, when its timing
/// patterns match: from the black-and-white pixels, then, should error
/// correction fail, from the grey picture (tiny modules). The text goes into
/// `out`.
fn decode_at(
    bits: &Bits,
    grey: Option<&Grey<'_>>,
    hom: &Homography,
    dim: usize,
    out: &mut Vec<String>,
) -> bool {
    let Some(grid) = sample_timed(bits, hom, dim) else {
        return false;
    };
    let mut decoded = rqrr::Grid::new(grid).decode();
    if decoded.is_err()
        && let Some(grey) = grey
    {
        decoded = rqrr::Grid::new(grey.sample(hom, dim)).decode();
    }
    let Ok((_, text)) = decoded else {
        return false;
    };
    if !out.contains(&text) {
        out.push(text);
    }
    true
}

/// Reads a code under strong perspective, where an affine guess of the fourth
/// corner is far off: fits a homography to the corners of the three finder
/// patterns' cores and rings (and the alignment pattern, once found near
/// where that homography puts it), for dimensions around `base`.
fn read_perspective(
    bits: &Bits,
    grey: Option<&Grey<'_>>,
    tl: Finder,
    tr: Finder,
    bl: Finder,
    base: i64,
    out: &mut Vec<String>,
) -> bool {
    let unit = |a: Pt, b: Pt| {
        let d = a.dist(b).max(1e-9);
        Pt {
            x: (b.x - a.x) / d,
            y: (b.y - a.y) / d,
        }
    };
    let (u, v) = (unit(tl.at, tr.at), unit(tl.at, bl.at));
    let Some(corners) = [tl, tr, bl]
        .iter()
        .map(|f| finder_corners(bits, f, u, v))
        .collect::<Option<Vec<_>>>()
    else {
        return false;
    };
    for dim in [base, base + 4, base - 4, base + 8, base - 8] {
        if !(21..=177).contains(&dim) {
            continue;
        }
        let far = dim as f64 - 7.0;
        let mut pairs: Vec<(Pt, Pt, f64)> = Vec::with_capacity(28);
        for ((core, ring), (ox, oy)) in corners.iter().zip([(0.0, 0.0), (far, 0.0), (0.0, far)]) {
            let square = |lo: f64, hi: f64| {
                [(lo, lo), (hi, lo), (hi, hi), (lo, hi)].map(|(x, y)| Pt {
                    x: ox + x,
                    y: oy + y,
                })
            };
            for (m, p) in square(2.0, 5.0).into_iter().zip(core) {
                pairs.push((m, *p, 1.0));
            }
            for (m, p) in square(0.0, 7.0).into_iter().zip(ring) {
                pairs.push((m, *p, 1.0));
            }
        }
        let Some(hom) = Homography::fit(&pairs) else {
            continue;
        };
        let mut homs = Vec::with_capacity(2);
        if dim > 21 {
            let c = dim as f64 - 6.5;
            let guess = hom.map(c, c);
            let (du, dv) = (hom.map(c + 1.0, c), hom.map(c, c + 1.0));
            let mu = Pt {
                x: du.x - guess.x,
                y: du.y - guess.y,
            };
            let mv = Pt {
                x: dv.x - guess.x,
                y: dv.y - guess.y,
            };
            let m = mu.x.hypot(mu.y).max(mv.x.hypot(mv.y));
            if let Some(a) = find_alignment(bits, guess, mu, mv, m * 0.6) {
                pairs.push((Pt { x: c, y: c }, a, 8.0));
                if let Some(h) = Homography::fit(&pairs) {
                    homs.push(h);
                }
            }
        }
        homs.push(hom);
        for hom in homs {
            if decode_at(bits, grey, &hom, dim as usize, out) {
                return true;
            }
        }
    }
    false
}

/// Tries to read a code whose finder centres are `tl`, `tr`, `bl`.
fn read_triple(
    bits: &Bits,
    grey: Option<&Grey<'_>>,
    tl: Finder,
    tr: Finder,
    bl: Finder,
    out: &mut Vec<String>,
) -> bool {
    let module = (tl.module + tr.module + bl.module) / 3.0;
    let mx = axis_module(bits, tl.at, tr.at).unwrap_or(module);
    let my = axis_module(bits, tl.at, bl.at).unwrap_or(module);
    let dim_est = ((tl.at.dist(tr.at) / mx + tl.at.dist(bl.at) / my) / 2.0).round() as i64 + 7;
    let base = match dim_est.rem_euclid(4) {
        0 => dim_est + 1,
        2 => dim_est - 1,
        3 => dim_est + 2,
        _ => dim_est,
    };
    for dim in [base, base - 4, base + 4] {
        if !(21..=177).contains(&dim) {
            continue;
        }
        let n = dim as f64 - 7.0;
        let u = Pt {
            x: (tr.at.x - tl.at.x) / n,
            y: (tr.at.y - tl.at.y) / n,
        };
        let v = Pt {
            x: (bl.at.x - tl.at.x) / n,
            y: (bl.at.y - tl.at.y) / n,
        };
        let affine_br = Pt {
            x: tr.at.x + bl.at.x - tl.at.x,
            y: tr.at.y + bl.at.y - tl.at.y,
        };
        let mut tries: Vec<(Pt, Pt)> = Vec::with_capacity(2);
        if dim > 21 {
            let k = 1.0 - 3.0 / n;
            let guess = Pt {
                x: tl.at.x + k * (affine_br.x - tl.at.x),
                y: tl.at.y + k * (affine_br.y - tl.at.y),
            };
            let m = u.x.hypot(u.y).max(v.x.hypot(v.y));
            if let Some(a) = find_alignment(bits, guess, u, v, m) {
                tries.push((
                    Pt {
                        x: dim as f64 - 6.5,
                        y: dim as f64 - 6.5,
                    },
                    a,
                ));
            }
        }
        tries.push((
            Pt {
                x: dim as f64 - 3.5,
                y: dim as f64 - 3.5,
            },
            affine_br,
        ));
        for (src_corner, dst_corner) in tries {
            let src = [
                Pt { x: 3.5, y: 3.5 },
                Pt {
                    x: dim as f64 - 3.5,
                    y: 3.5,
                },
                Pt {
                    x: 3.5,
                    y: dim as f64 - 3.5,
                },
                src_corner,
            ];
            let dst = [tl.at, tr.at, bl.at, dst_corner];
            let Some(hom) = Homography::from_points(&src, &dst) else {
                continue;
            };
            if decode_at(bits, grey, &hom, dim as usize, out) {
                return true;
            }
        }
    }
    read_perspective(bits, grey, tl, tr, bl, base, out)
}

/// Reads every code it can find in `bits`, binarized from `grey` when given.
pub(crate) fn read(bits: &Bits, grey: Option<&Grey<'_>>) -> Vec<String> {
    let mut out = Vec::new();
    if bits.width < 21 || bits.height < 21 || bits.data.len() < bits.width * bits.height {
        return out;
    }
    let mut finders = find_finders(bits);
    finders.sort_by_key(|f| std::cmp::Reverse(f.count));
    // Patterns seen on one scan row only are mostly clutter; keep them only
    // when there is little else.
    if finders.iter().filter(|f| f.count >= 2).count() >= 3 {
        finders.retain(|f| f.count >= 2);
    }
    finders.truncate(12);
    let n = finders.len();
    if n < 3 {
        return out;
    }
    // Candidate triples, best-shaped first.
    let mut triples: Vec<(f64, usize, usize, usize)> = Vec::new();
    for i in 0..n {
        for j in i + 1..n {
            for k in j + 1..n {
                let (a, b, c) = (finders[i], finders[j], finders[k]);
                let mods = [a.module, b.module, c.module];
                let lo = mods.iter().copied().fold(f64::MAX, f64::min);
                let hi = mods.iter().copied().fold(0.0, f64::max);
                if hi > lo * 2.5 {
                    continue;
                }
                // The corner is opposite the longest side.
                let (ab, bc, ca) = (a.at.dist(b.at), b.at.dist(c.at), c.at.dist(a.at));
                let (corner, p, q, hyp) = if bc >= ab && bc >= ca {
                    (i, j, k, bc)
                } else if ca >= ab && ca >= bc {
                    (j, i, k, ca)
                } else {
                    (k, i, j, ab)
                };
                let (fc, fp, fq) = (finders[corner], finders[p], finders[q]);
                let (l1, l2) = (fc.at.dist(fp.at), fc.at.dist(fq.at));
                let module = (lo + hi) / 2.0;
                if l1.min(l2) < 10.0 * module || l1.max(l2) > 2.5 * l1.min(l2) {
                    continue;
                }
                let ideal = (l1 * l1 + l2 * l2).sqrt();
                let skew = (hyp - ideal).abs() / ideal;
                if skew > 0.6 {
                    continue;
                }
                let score = skew + (l1 - l2).abs() / (l1 + l2) + (hi - lo) / hi;
                triples.push((score, corner, p, q));
            }
        }
    }
    triples.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut used = vec![false; n];
    for &(_, c, p, q) in triples.iter().take(8) {
        if used[c] || used[p] || used[q] {
            continue;
        }
        let (tl, mut tr, mut bl) = (finders[c], finders[p], finders[q]);
        // Order so that tr is clockwise from bl around tl (y points down).
        let cross =
            (tr.at.x - tl.at.x) * (bl.at.y - tl.at.y) - (tr.at.y - tl.at.y) * (bl.at.x - tl.at.x);
        if cross < 0.0 {
            std::mem::swap(&mut tr, &mut bl);
        }
        if read_triple(bits, grey, tl, tr, bl, &mut out) {
            used[c] = true;
            used[p] = true;
            used[q] = true;
        }
    }
    out
}
