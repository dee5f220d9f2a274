"""The field's classical label estimators, tuned the way their users tune them, for side-by-side scoring.

* :class:`BoostedTrees` - XGBoost (Chen & Guestrin 2016) or LightGBM (Ke et al. 2017) regressors, one per
  label, on the continuum-normalised flux averaged over ``bin_pixels`` pixels (the usual feature reduction:
  LAMOST's ~3500 rest-frame pixels become ~900 features), histogram trees, early stopping on a held-out
  share of the training set. Pixels without data (ivar 0) are missing values, which both libraries route
  natively. Targets in physical units; a star with a label unknown is left out of that label's trees.
* :class:`Cannon` - The Cannon (Ness et al. 2015, ApJ 808, 16): a quadratic label-to-flux model per pixel,
  ``f_lambda(l) = theta_lambda . v(l)`` with ``v = [1, s, s_i s_j (i <= j)]`` on standardised labels
  ``s = (l - pivot) / scale``. Training: per-pixel weighted linear least squares with weights
  ``1 / (sigma_n,lambda^2 + s_lambda^2)``; the intrinsic scatter ``s_lambda^2`` is the excess of the
  squared residuals over the noise variance (method of moments), and the coefficients are refitted with it
  (``iterations`` rounds). Test step: labels minimising chi^2 by Levenberg-Marquardt, batched over spectra
  and starts (the linear model's solution, the training mean, and a few training label vectors), the best
  chi^2 kept; formal errors from the inverse of J^T W J at the solution. All in float64 torch, on the GPU
  when the inputs are there. Training stars need every label known.

Everything works on the preprocessed ``flux`` / ``ivar`` (B, M) of ``preprocess.preprocess_batch``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, Sequence

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from neurotrain.tasks.stellar.config import BaselineSection

# --------------------------------------------------------------------------- boosted trees


def bin_flux(flux: Tensor, bin_pixels: int, ivar: Tensor | None = None) -> Tensor:
    """(B, M) -> (B, ceil(M / bin_pixels)) mean of each run of ``bin_pixels`` pixels; pixels with ivar 0
    are ignored, and a bin with no data is NaN (a missing value for the trees)."""
    x = flux.float()
    if ivar is not None:
        x = torch.where(ivar > 0, x, torch.full_like(x, float("nan")))
    b, m = x.shape
    k = int(bin_pixels)
    if k == 1:
        return x
    pad = (-m) % k
    if pad:
        x = torch.cat([x, x.new_full((b, pad), float("nan"))], 1)
    return torch.nanmean(x.view(b, -1, k), dim=2)


class BoostedTrees:
    """One gradient-boosted regressor per label on binned flux.

    Args:
        kind: ``"xgboost"`` or ``"lightgbm"``.
        names: label names.
        n_estimators, max_depth, learning_rate, early_stopping_rounds: the usual knobs.
        num_leaves: LightGBM leaves per tree (capped at 2**max_depth).
        subsample, colsample: row and feature subsampling per tree.
        bin_pixels: pixels averaged into one feature.
        val_fraction: share of the training set held out for early stopping.
        n_jobs: CPU threads.
        device: XGBoost's ``"cpu"`` / ``"cuda"`` (``"auto"``: CUDA when torch sees a GPU).
        seed: subsampling and split seed.
        max_bin: histogram bins per feature (both libraries).
    """

    def __init__(
        self,
        kind: Literal["xgboost", "lightgbm"],
        names: Sequence[str],
        n_estimators: int = 600,
        max_depth: int = 6,
        learning_rate: float = 0.05,
        early_stopping_rounds: int = 30,
        num_leaves: int = 31,
        subsample: float = 0.8,
        colsample: float = 0.8,
        bin_pixels: int = 4,
        val_fraction: float = 0.1,
        n_jobs: int = 2,
        device: str = "auto",
        seed: int = 0,
        max_bin: int = 256,
    ) -> None:
        if kind not in ("xgboost", "lightgbm"):
            raise ValueError(f"baseline kind: expected xgboost or lightgbm (got {kind!r})")
        self.kind, self.names = kind, list(names)
        self.params = dict(
            n_estimators=n_estimators, max_depth=max_depth, learning_rate=learning_rate,
            early_stopping_rounds=early_stopping_rounds, num_leaves=min(num_leaves, 2**max_depth),
            subsample=subsample, colsample=colsample, max_bin=max_bin,
        )
        self.bin_pixels, self.val_fraction, self.n_jobs, self.seed = bin_pixels, val_fraction, n_jobs, seed
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        self.models: list[Any] = []
        self.best_iterations: list[int] = []

    def _train_one(self, X: np.ndarray, y: np.ndarray, Xv: np.ndarray, yv: np.ndarray) -> tuple[Any, int]:
        """One booster with early stopping on (Xv, yv), through the libraries' native APIs (no scikit-learn
        needed); returns the booster and its best number of rounds."""
        p = self.params
        if self.kind == "xgboost":
            import xgboost as xgb

            params = {
                "objective": "reg:squarederror", "tree_method": "hist", "max_depth": p["max_depth"],
                "eta": p["learning_rate"], "subsample": p["subsample"], "colsample_bytree": p["colsample"],
                "nthread": self.n_jobs, "device": self.device, "seed": self.seed, "max_bin": p["max_bin"],
            }
            booster = xgb.train(
                params, xgb.DMatrix(X, label=y, nthread=self.n_jobs), num_boost_round=p["n_estimators"],
                evals=[(xgb.DMatrix(Xv, label=yv, nthread=self.n_jobs), "val")],
                early_stopping_rounds=p["early_stopping_rounds"], verbose_eval=False,
            )
            return booster, int(booster.best_iteration) + 1
        import lightgbm as lgb

        params = {
            "objective": "regression", "learning_rate": p["learning_rate"], "max_depth": p["max_depth"],
            "num_leaves": p["num_leaves"], "bagging_fraction": p["subsample"], "bagging_freq": 1,
            "feature_fraction": p["colsample"], "num_threads": self.n_jobs, "seed": self.seed, "verbose": -1,
        }
        data_params = {"max_bin": p["max_bin"], "verbose": -1}
        train = lgb.Dataset(X, y, free_raw_data=True, params=data_params)
        booster = lgb.train(
            params, train, num_boost_round=p["n_estimators"],
            valid_sets=[lgb.Dataset(Xv, yv, reference=train, params=data_params)],
            callbacks=[lgb.early_stopping(p["early_stopping_rounds"], verbose=False)],
        )
        return booster, int(booster.best_iteration or p["n_estimators"])

    def _predict_one(self, booster: Any, best: int, X: np.ndarray) -> np.ndarray:
        if self.kind == "xgboost":
            import xgboost as xgb

            return booster.predict(xgb.DMatrix(X, nthread=self.n_jobs), iteration_range=(0, best))
        return booster.predict(X, num_iteration=best)

    def features(self, flux: Tensor, ivar: Tensor | None = None) -> np.ndarray:
        """(B, M) flux -> (B, F) float32 NumPy features."""
        return bin_flux(flux, self.bin_pixels, ivar).cpu().numpy().astype(np.float32)

    def fit(self, flux: Tensor, labels: Tensor, known: Tensor | None = None, ivar: Tensor | None = None) -> "BoostedTrees":
        """Train on (N, M) flux and (N, L) physical labels (``known`` (N, L) bool; default: finite)."""
        X = self.features(flux, ivar)
        Y = labels.double().cpu().numpy()
        K = np.isfinite(Y) if known is None else (known.cpu().numpy() & np.isfinite(Y))
        rng = np.random.default_rng(self.seed)
        is_val = rng.random(len(X)) < self.val_fraction
        self.models, self.best_iterations = [], []
        for j in range(len(self.names)):
            tr, va = K[:, j] & ~is_val, K[:, j] & is_val
            if tr.sum() < 2 or va.sum() < 1:
                raise ValueError(f"baseline {self.kind}: label {self.names[j]} has too few known training stars")
            reg, best = self._train_one(X[tr], Y[tr, j], X[va], Y[va, j])
            self.models.append(reg)
            self.best_iterations.append(best)
        return self

    def predict(self, flux: Tensor, ivar: Tensor | None = None) -> Tensor:
        """(B, M) flux -> (B, L) physical labels (float32, on ``flux``'s device)."""
        X = self.features(flux, ivar)
        out = np.stack([self._predict_one(m, b, X) for m, b in zip(self.models, self.best_iterations)], 1) if len(X) else np.zeros((0, len(self.models)))
        return torch.as_tensor(out, dtype=torch.float32, device=flux.device)


# --------------------------------------------------------------------------- The Cannon


class Cannon:
    """Quadratic label-to-flux model (The Cannon), trained by weighted least squares, labels by LM.

    Args:
        names: label names (K of them).
        regularization: ridge on the non-constant coefficients, relative to the mean diagonal of each
            pixel's normal matrix (0 = plain least squares).
        iterations: coefficient fits, each followed by a scatter update.
        starts: extra Levenberg-Marquardt starts drawn from the training labels.
        max_steps: LM steps.
        batch_size: spectra per test-step batch.
        seed: draws of the starts.
    """

    def __init__(
        self, names: Sequence[str], regularization: float = 0.0, iterations: int = 2, starts: int = 2,
        max_steps: int = 40, batch_size: int = 1024, seed: int = 0,
    ) -> None:
        self.names = list(names)
        K = len(self.names)
        self.regularization, self.iterations, self.starts = float(regularization), int(iterations), int(starts)
        self.max_steps, self.batch_size, self.seed = int(max_steps), int(batch_size), int(seed)
        iu = torch.triu_indices(K, K)
        self._i, self._j = iu[0], iu[1]
        self.n_terms = 1 + K + self._i.numel()
        self.theta: Tensor | None = None  # (M, P)
        self.scatter2: Tensor | None = None  # (M,)
        self.pivot: Tensor | None = None
        self.scale: Tensor | None = None
        self.train_s: Tensor | None = None  # standardised training labels (for starts and the box)

    # ---- the model
    def design(self, s: Tensor) -> Tensor:
        """(B, K) standardised labels -> (B, P) design vectors [1, s, s_i s_j]."""
        i, j = self._i.to(s.device), self._j.to(s.device)
        return torch.cat([torch.ones_like(s[:, :1]), s, s[:, i] * s[:, j]], 1)

    def design_jacobian(self, s: Tensor) -> Tensor:
        """(B, K) -> (B, P, K) derivative of the design vector with respect to the standardised labels."""
        B, K = s.shape
        i, j = self._i.to(s.device), self._j.to(s.device)
        eye = torch.eye(K, dtype=s.dtype, device=s.device)
        # d(s_i s_j)/d s_k = delta_ik s_j + delta_jk s_i
        quad = eye[i][None] * s[:, j, None] + eye[j][None] * s[:, i, None]
        return torch.cat([s.new_zeros(B, 1, K), eye.expand(B, K, K), quad], 1)

    def standardise(self, labels: Tensor) -> Tensor:
        assert self.pivot is not None and self.scale is not None
        return (labels.double() - self.pivot.to(labels.device)) / self.scale.to(labels.device)

    def model_flux(self, labels: Tensor) -> Tensor:
        """(B, K) physical labels -> (B, M) model flux."""
        assert self.theta is not None
        return self.design(self.standardise(labels)) @ self.theta.to(labels.device).T

    # ---- training
    def fit(self, flux: Tensor, ivar: Tensor, labels: Tensor, known: Tensor | None = None, chunk: int = 2048) -> "Cannon":
        """Train on (N, M) flux / ivar and (N, K) physical labels; stars missing any label are left out."""
        ok = torch.isfinite(labels).all(1)
        if known is not None:
            ok &= known.bool().all(1)
        f, w0, lab = flux[ok].double(), ivar[ok].double(), labels[ok].double()
        N, M = f.shape
        P = self.n_terms
        if N < P:
            raise ValueError(f"The Cannon: {P} coefficients per pixel need at least {P} training stars (got {N})")
        self.pivot, self.scale = lab.mean(0), lab.std(0).clamp_min(1e-12)
        s = self.standardise(lab)
        self.train_s = s
        V = self.design(s)
        has = w0 > 0
        var0 = torch.where(has, 1.0 / w0.clamp_min(1e-300), torch.zeros_like(w0))
        s2 = f.new_zeros(M)
        for _ in range(self.iterations):
            w = torch.where(has, 1.0 / (var0 + s2), torch.zeros_like(w0))
            A = f.new_zeros(P * P, M)
            b = f.new_zeros(P, M)
            for a in range(0, N, chunk):
                v = V[a : a + chunk]
                A += (v[:, :, None] * v[:, None, :]).reshape(len(v), P * P).T @ w[a : a + chunk]
                b += v.T @ (w[a : a + chunk] * f[a : a + chunk])
            A = A.T.reshape(M, P, P)
            diag = torch.diagonal(A, dim1=1, dim2=2).mean(1)  # (M,)
            ridge = torch.full((P,), self.regularization, dtype=f.dtype, device=f.device)
            ridge[0] = 0.0
            # the jitter only keeps pixels without any data (A = 0) solvable; their coefficients come out 0
            reg = diag[:, None] * ridge[None] + 1e-12 * (diag[:, None] + 1.0)
            A = A + torch.diag_embed(reg)
            theta = torch.linalg.solve(A, b.T)  # (M, P)
            # intrinsic scatter: mean excess of the squared residual over the noise variance, per pixel
            num, den = f.new_zeros(M), f.new_zeros(M)
            for a in range(0, N, chunk):
                r = f[a : a + chunk] - V[a : a + chunk] @ theta.T
                h = has[a : a + chunk]
                num += torch.where(h, r**2 - var0[a : a + chunk], torch.zeros_like(r)).sum(0)
                den += h.sum(0)
            s2 = (num / den.clamp_min(1)).clamp_min(0.0)
        self.theta, self.scatter2 = theta, s2
        return self

    # ---- test step
    def _chi2(self, v: Tensor, G: Tensor, c: Tensor, fwf: Tensor) -> Tensor:
        return fwf - 2 * (v * c).sum(1) + torch.einsum("bp,bpq,bq->b", v, G, v)

    def _solve_batch(self, f: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
        assert self.theta is not None and self.train_s is not None
        th = self.theta.to(f.device)
        B, M = f.shape
        P, K = self.n_terms, len(self.names)
        # chi^2(v) = f'Wf - 2 v.c + v'Gv with G = Theta' W Theta, c = Theta' W f: the M-pixel sums are done
        # once per spectrum, every LM step then works in the P-dimensional design space
        G = (w @ (th[:, :, None] * th[:, None, :]).reshape(M, P * P)).view(B, P, P)
        c = (w * f) @ th
        fwf = (w * f * f).sum(1)
        # starts: the linear model's solution (quadratic terms off), the training mean (s = 0), and draws
        lin = torch.linalg.solve(
            G[:, 1 : K + 1, 1 : K + 1] + 1e-9 * torch.eye(K, dtype=f.dtype, device=f.device),
            (c[:, 1 : K + 1] - G[:, 1 : K + 1, 0]).unsqueeze(-1),
        ).squeeze(-1)
        ts = self.train_s.to(f.device)
        lo, hi = ts.min(0).values, ts.max(0).values
        span = hi - lo
        lo, hi = lo - 0.2 * span, hi + 0.2 * span  # the model is trusted a little beyond the training box
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        pick = torch.randint(len(ts), (self.starts,), generator=gen).to(f.device)
        starts = [lin.clamp(lo, hi), torch.zeros_like(lin)] + [ts[p].expand(B, K) for p in pick]
        S = len(starts)
        s = torch.cat(starts, 0)  # (S B, K)
        Gs, cs, fs = G.repeat(S, 1, 1), c.repeat(S, 1), fwf.repeat(S)
        lam = torch.full((S * B,), 1e-3, dtype=f.dtype, device=f.device)
        chi = self._chi2(self.design(s), Gs, cs, fs)
        eye = torch.eye(K, dtype=f.dtype, device=f.device)
        for _ in range(self.max_steps):
            v, D = self.design(s), self.design_jacobian(s)
            H = D.transpose(1, 2) @ Gs @ D  # J'WJ (K, K)
            g = (D.transpose(1, 2) @ (cs - (Gs @ v.unsqueeze(-1)).squeeze(-1)).unsqueeze(-1)).squeeze(-1)  # J'W r
            Hd = torch.diagonal(H, dim1=1, dim2=2)
            step = torch.linalg.solve(H + lam[:, None, None] * torch.diag_embed(Hd + 1e-12) + 1e-12 * eye, g)
            s_new = (s + step).clamp(lo, hi)
            chi_new = self._chi2(self.design(s_new), Gs, cs, fs)
            better = chi_new < chi
            s = torch.where(better[:, None], s_new, s)
            chi = torch.where(better, chi_new, chi)
            lam = torch.where(better, lam * 0.3, lam * 10.0).clamp(1e-9, 1e9)
        best = chi.view(S, B).argmin(0)
        s = s.view(S, B, K)[best, torch.arange(B, device=f.device)]
        D = self.design_jacobian(s)
        H = D.transpose(1, 2) @ G @ D
        cov = torch.linalg.pinv(H)
        err = torch.sqrt(torch.diagonal(cov, dim1=1, dim2=2).clamp_min(0.0))
        return s, err

    @torch.no_grad()
    def predict(self, flux: Tensor, ivar: Tensor) -> tuple[Tensor, Tensor]:
        """(B, M) flux / ivar -> physical labels (B, K) and their formal errors (B, K), float32."""
        if self.theta is None or self.scatter2 is None or self.pivot is None or self.scale is None:
            raise RuntimeError("The Cannon: predict before fit")
        s2 = self.scatter2.to(flux.device)
        labels, errors = [], []
        for a in range(0, flux.shape[0], self.batch_size):
            f = flux[a : a + self.batch_size].double()
            iv = ivar[a : a + self.batch_size].double()
            w = torch.where(iv > 0, iv / (1.0 + iv * s2), torch.zeros_like(iv))
            s, e = self._solve_batch(torch.nan_to_num(f), w)
            labels.append(s * self.scale.to(f.device) + self.pivot.to(f.device))
            errors.append(e * self.scale.to(f.device))
        if not labels:
            z = flux.new_zeros(0, len(self.names))
            return z, z
        return torch.cat(labels).float(), torch.cat(errors).float()


# --------------------------------------------------------------------------- from the config


def build_baseline(name: str, cfg: BaselineSection, names: Sequence[str], seed: int = 0) -> BoostedTrees | Cannon:
    """The baseline ``name`` (``xgboost``, ``lightgbm``, ``cannon``) configured from ``cfg``."""
    if name == "cannon":
        return Cannon(
            names, cfg.cannon_regularization, cfg.cannon_iterations, cfg.cannon_starts, cfg.cannon_max_steps,
            cfg.cannon_batch, seed,
        )
    return BoostedTrees(
        name,  # type: ignore[arg-type]
        names, cfg.n_estimators, cfg.max_depth, cfg.learning_rate, cfg.early_stopping_rounds, cfg.num_leaves,
        cfg.subsample, cfg.colsample, cfg.bin_pixels, cfg.val_fraction, cfg.n_jobs, cfg.tree_device, seed,
        cfg.max_bin,
    )


def fit_predict(
    model: BoostedTrees | Cannon, train: dict[str, Tensor], test: dict[str, Tensor]
) -> dict[str, Tensor]:
    """Fit on ``train`` (``flux``, ``ivar``, ``target``, optional ``target_mask``) and predict ``test``
    (``flux``, ``ivar``): ``{"mean": (B, L)}`` plus ``"sigma"`` for The Cannon's formal errors."""
    known = train.get("target_mask")
    if isinstance(model, Cannon):
        model.fit(train["flux"], train["ivar"], train["target"], known)
        mean, err = model.predict(test["flux"], test["ivar"])
        return {"mean": mean, "sigma": err}
    model.fit(train["flux"], train["target"], known, train["ivar"])
    return {"mean": model.predict(test["flux"], test["ivar"])}
