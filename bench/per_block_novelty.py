#!/usr/bin/env python3
"""Per-block novelty scores on a bundle's cached CIFAR-10 features (issue 13).

The bundles score novelty by one Mahalanobis distance on the concatenation
of every MBConv block's pooled output (1808 values for b0), centred on the
base classes' mean and L2-normalised. Lee et al. (2018) score each layer on
its own and combine the scores. This measures that alternative in f64 numpy:
each block centred, L2-normalised and fitted on its own (class means of the
base classes, shared covariance with shrinkage), its score standardised by
its own distribution on base training images, then summed; and each block
alone. The base classes are 0-4, the unseen ones 5-9, as `gaussedge eval`.

    bench/per_block_novelty.py TRAIN.f32 TEST.f32 CIFAR_DIR

TRAIN.f32 / TEST.f32: the raw f32 feature files `gaussedge eval` caches in
$GAUSSEDGE_CACHE/features (N x 1808, rows in the data set's record order).
"""
import sys

import numpy as np

DIMS = [16, 24, 24, 40, 40, 80, 80, 80, 112, 112, 112, 192, 192, 192, 192, 320]


def labels(folder, files):
    return np.concatenate([np.fromfile(f"{folder}/{f}", dtype=np.uint8).reshape(-1, 3073)[:, 0] for f in files])


def auroc(known, unseen):
    """P(score of an unseen image > score of a known one), by ranks."""
    s = np.concatenate([known, unseen])
    r = s.argsort().argsort() + 1
    n0, n1 = len(known), len(unseen)
    return (r[n0:].sum() - n1 * (n1 + 1) / 2) / (n0 * n1)


def fit(z, y, shrink):
    means = np.stack([z[y == c].mean(0) for c in range(5)])
    r = z - means[y]
    s = r.T @ r / (len(z) - 5)
    s = (1 - shrink) * s + shrink * np.trace(s) / len(s) * np.eye(len(s))
    return means, np.linalg.inv(s)


def score(z, means, prec):
    return np.stack([np.einsum("ij,jk,ik->i", z - m, prec, z - m) for m in means], 1).min(1)


def unit(x, centre):
    z = x - centre
    return z / np.linalg.norm(z, axis=1, keepdims=True)


def main():
    train_f, test_f, folder = sys.argv[1:4]
    d = sum(DIMS)
    train = np.fromfile(train_f, dtype=np.float32).reshape(-1, d).astype(np.float64)
    test = np.fromfile(test_f, dtype=np.float32).reshape(-1, d).astype(np.float64)
    y_train = labels(folder, [f"data_batch_{i}.bin" for i in range(1, 6)])
    y_test = labels(folder, ["test_batch.bin"])
    base = y_train < 5
    xb, yb = train[base], y_train[base]
    known = y_test < 5
    centre = xb.mean(0)
    means, prec = fit(unit(xb, centre), yb, 1e-5)
    s = score(unit(test, centre), means, prec)
    print(f"concatenated (the bundles' score): AUROC {auroc(s[known], s[~known]):.4f}")
    offsets = np.cumsum([0] + DIMS)
    per = []
    for b, width in enumerate(DIMS):
        cols = slice(offsets[b], offsets[b + 1])
        c = xb[:, cols].mean(0)
        zb = unit(xb[:, cols], c)
        means, prec = fit(zb, yb, 1e-3)
        sb = score(unit(test[:, cols], c), means, prec)
        ref = score(zb[::10], means, prec)
        per.append((sb - ref.mean()) / ref.std())
        print(f"block {b:2d} ({width:3d} values) alone: AUROC {auroc(sb[known], sb[~known]):.4f}")
    per = np.stack(per, 1)
    print(f"all blocks, standardised and summed: AUROC {auroc(per[known].sum(1), per[~known].sum(1)):.4f}")
    print(f"last four blocks, standardised and summed: AUROC {auroc(per[known, -4:].sum(1), per[~known, -4:].sum(1)):.4f}")


if __name__ == "__main__":
    main()
