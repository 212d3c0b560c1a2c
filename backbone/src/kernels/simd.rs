//! The element loops of the channel-last ops, compiled once per x86-64
//! vector width and picked at run time.
//!
//! The crate builds for the x86-64 baseline (SSE2), so a plain loop
//! vectorises four lanes wide; these are the same loops, the same
//! arithmetic in the same order (bit-identical results), built again with
//! AVX2 and AVX-512 enabled, the widest the CPU has chosen per call. Other
//! architectures get the plain loop.

/// Defines `fn $name` whose body is compiled three times (baseline, AVX2,
/// AVX-512) and dispatched on [`crate::kernels::Isa::best`].
macro_rules! vectorized {
    ($(#[$meta:meta])* pub fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        pub fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                fn avx512($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                #[target_feature(enable = "avx2")]
                fn avx2($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                match crate::kernels::Isa::best() {
                    // SAFETY: `best` never names a width the CPU lacks.
                    crate::kernels::Isa::Avx512 => return unsafe { avx512($($arg),*) },
                    // SAFETY: as above.
                    crate::kernels::Isa::Avx2 => return unsafe { avx2($($arg),*) },
                    crate::kernels::Isa::Portable => {}
                }
            }
            body($($arg),*)
        }
    };
}

vectorized! {
    /// Multiplies each `scale.len()`-long row of `values` by `scale`.
    pub fn scale_rows(values: &mut [f32], scale: &[f32]) {
        for row in values.chunks_exact_mut(scale.len()) {
            for (x, s) in row.iter_mut().zip(scale) {
                *x *= s;
            }
        }
    }
}

vectorized! {
    /// Adds each `sum.len()`-long row of `values` into `sum`, in order.
    pub fn sum_rows(sum: &mut [f32], values: &[f32]) {
        for row in values.chunks_exact(sum.len()) {
            for (s, v) in sum.iter_mut().zip(row) {
                *s += v;
            }
        }
    }
}

vectorized! {
    /// Adds `b` to every value.
    pub fn add_scalar(values: &mut [f32], b: f32) {
        for v in values {
            *v += b;
        }
    }
}

vectorized! {
    /// The sum of `values`, in sixteen interleaved partial sums (one
    /// running sum is a chain of dependent adds, 4 cycles each).
    pub fn sum(values: &[f32]) -> f32 {
        let mut acc = [0f32; 16];
        let mut chunks = values.chunks_exact(16);
        for chunk in &mut chunks {
            for (a, v) in acc.iter_mut().zip(chunk) {
                *a += v;
            }
        }
        let tail: f32 = chunks.remainder().iter().sum();
        acc.iter().sum::<f32>() + tail
    }
}

vectorized! {
    /// `y += W x` for `W` stored as one `y.len()`-long row per element of
    /// `x` (`W[i, :]` multiplies `x[i]`).
    pub fn gemv_rows(y: &mut [f32], x: &[f32], w: &[f32]) {
        for (&xi, row) in x.iter().zip(w.chunks_exact(y.len())) {
            for (y, w) in y.iter_mut().zip(row) {
                *y += xi * w;
            }
        }
    }
}

vectorized! {
    /// The dot product of `a` and `b`, in sixteen interleaved partial sums.
    pub fn dot(a: &[f32], b: &[f32]) -> f32 {
        let mut acc = [0f32; 16];
        let (mut ca, mut cb) = (a.chunks_exact(16), b.chunks_exact(16));
        for (x, y) in (&mut ca).zip(&mut cb) {
            for ((s, x), y) in acc.iter_mut().zip(x).zip(y) {
                *s += x * y;
            }
        }
        let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
        acc.iter().sum::<f32>() + tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loops_match_their_plain_arithmetic() {
        let widths: Vec<_> = crate::kernels::Isa::available().map(crate::kernels::Isa::name).collect();
        eprintln!("simd loops checked on this CPU: {}", widths.join(", "));
        for isa in crate::kernels::Isa::available() {
            crate::kernels::Isa::capped(isa, loops_match_under_the_current_width);
        }
    }

    fn loops_match_under_the_current_width() {
        let values: Vec<f32> = (0..7 * 37).map(|i| (i as f32 * 0.7).sin()).collect();
        let scale: Vec<f32> = (0..37).map(|i| 1.0 + i as f32 * 0.01).collect();
        let mut scaled = values.clone();
        scale_rows(&mut scaled, &scale);
        let mut sum = vec![0.0; 37];
        sum_rows(&mut sum, &values);
        let mut shifted = values.clone();
        add_scalar(&mut shifted, 0.25);
        for (i, v) in values.iter().enumerate() {
            assert_eq!(scaled[i], v * scale[i % 37]);
            assert_eq!(shifted[i], v + 0.25);
        }
        for (c, s) in sum.iter().enumerate() {
            let want = (0..7).fold(0.0f32, |acc, r| acc + values[r * 37 + c]);
            assert_eq!(*s, want);
        }
        for n in [0, 1, 15, 16, 17, 258] {
            let want: f64 = values[..n].iter().map(|&v| f64::from(v)).sum();
            assert!((f64::from(super::sum(&values[..n])) - want).abs() < 1e-4, "{n}");
            let want: f64 = values[..n].iter().zip(&values[1..]).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum();
            assert!((f64::from(dot(&values[..n], &values[1..n + 1])) - want).abs() < 1e-4, "{n}");
        }
    }
}
