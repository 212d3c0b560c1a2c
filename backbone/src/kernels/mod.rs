//! Which kernels a load picks and which vector unit they use: the one
//! place the CPU is asked.
//!
//! Every kernel of the crate (the [`crate::kernels::simd`] loops, the depthwise and
//! pointwise convolutions) is built once per x86-64 vector width and picks
//! one per call with [`Isa::best`]; on aarch64 the one build is the plain
//! loops, which the compiler vectorises for NEON. Tests run each kernel under every
//! [`Isa::available`] width with [`Isa::capped`], so a machine with AVX-512
//! also checks the AVX2 and portable builds another machine would run, and
//! the tests' output says which widths ran. Whether the convolutions
//! replace tract's at all is [`serve`]'s call.

pub mod parts;
pub mod simd;

use std::cell::Cell;

/// A vector instruction set the kernels are built for, narrowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// The target's baseline (SSE2 on x86-64, NEON on arm64): plain loops.
    Portable,
    /// AVX2 with FMA.
    Avx2,
    /// AVX-512F (with FMA).
    Avx512,
}

/// Whether a graph loaded now has the project's convolution kernels in
/// place of tract's.
///
/// On x86-64 with AVX2 and FMA, or AVX-512, they always do: tract has no
/// depthwise vector kernel there, and its 1x1 products write channel-last
/// tiles a scalar at a time. On aarch64 tract's kernels are hand-written
/// NEON, and it runs them on the calling thread (its pool is not linked,
/// [`parts`]); the project's are what split a frame over cores, so they
/// replace tract's where the load asks for more than one thread
/// ([`parts::threads`] when the backbone is loaded) and tract's keep the
/// one-thread default. Elsewhere (an x86-64 without AVX2) tract's run.
pub fn serve() -> bool {
    if cfg!(target_arch = "aarch64") {
        return parts::threads() > 1;
    }
    Isa::detected() > Isa::Portable
}

/// The kernel set a load picks now, as the compiled graph's fingerprint
/// names it: `tract` where [`serve`] says no, else the widest [`Isa`].
pub fn set_name() -> &'static str {
    if serve() {
        Isa::detected().name()
    } else {
        "tract"
    }
}

thread_local! {
    /// The widest width this thread may use ([`Isa::capped`]).
    static CAP: Cell<Isa> = const { Cell::new(Isa::Avx512) };
}

impl Isa {
    /// The widest width this CPU has.
    pub fn detected() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("fma") {
                return Isa::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }

    /// What a kernel should use now: the widest this CPU has, or less
    /// inside [`capped`](Self::capped). Never more than the CPU has, which
    /// is what makes the kernels' `unsafe` calls sound.
    pub fn best() -> Isa {
        Isa::detected().min(CAP.with(Cell::get))
    }

    /// Every width this CPU can run, narrowest first.
    pub fn available() -> impl Iterator<Item = Isa> {
        let top = Isa::detected();
        [Isa::Portable, Isa::Avx2, Isa::Avx512].into_iter().filter(move |&i| i <= top)
    }

    /// Runs `f` with the kernels of this thread limited to `cap`.
    pub fn capped<R>(cap: Isa, f: impl FnOnce() -> R) -> R {
        let before = CAP.with(|c| c.replace(cap));
        struct Restore(Isa);
        impl Drop for Restore {
            fn drop(&mut self) {
                CAP.with(|c| c.set(self.0));
            }
        }
        let _restore = Restore(before);
        f()
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cap_lowers_the_width_and_is_restored() {
        let top = Isa::detected();
        eprintln!("this CPU runs: {}", Isa::available().map(Isa::name).collect::<Vec<_>>().join(", "));
        assert_eq!(Isa::best(), top);
        assert_eq!(Isa::capped(Isa::Portable, Isa::best), Isa::Portable);
        // A cap above the CPU does not raise it.
        assert_eq!(Isa::capped(Isa::Avx512, Isa::best), top);
        assert_eq!(Isa::best(), top);
        assert_eq!(Isa::available().last(), Some(top));
    }
}
