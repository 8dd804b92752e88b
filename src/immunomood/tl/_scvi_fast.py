"""scVI training with the data resident on the device: a compact loop over the SCVI module (``tl.integrate(fast=...)``).

The loop replaces scvi-tools' Lightning ``TrainingPlan`` + ``DataLoader`` with mini-batches gathered on the device
(same objective, optimiser, KL warm-up and validation ELBO). It reaches into private scvi-tools APIs
(``scvi.data._utils.registry_key_to_default_dtype``, ``module._get_inference_input``, the ``LossOutput`` fields
``reconstruction_loss_sum`` / ``kl_local_sum``), so it is used only with the scvi-tools versions it was written and
tested for (:data:`SCVI_TESTED`); with any other version :func:`unsupported_reason` says why and
``tl.integrate`` falls back to scvi-tools' own ``train`` (logged, and recorded in ``uns["integration"]``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse

from .._settings import progress

#: scvi-tools versions the loop was written and tested for: ``(lowest, first version not covered)``.
SCVI_TESTED = ("1.4", "1.5")
#: dense device copy of the training matrix when it takes at most this many bytes (else sparse CSR on device)
_DENSE_MAX_BYTES_CPU = 2 * 1024**3
_DENSE_FRACTION_GPU = 0.5


def unsupported_reason(version: str | None = None) -> str | None:
    """Why the installed scvi-tools (or ``version``) cannot use the fast loop; ``None`` when it can."""
    from packaging.version import InvalidVersion, Version

    if version is None:
        import scvi

        version = scvi.__version__
    lo, hi = SCVI_TESTED
    try:
        v = Version(version)
    except InvalidVersion:
        return f"scvi-tools version {version!r} cannot be parsed"
    if not Version(lo) <= v < Version(hi):
        return (
            f"the device-resident loop uses private scvi-tools APIs and was tested with scvi-tools >={lo},<{hi}; "
            f"installed: {version}"
        )
    return None


class DeviceMatrix:
    """The training matrix on the device: one dense tensor, or CSR arrays with an on-device row gather."""

    def __init__(self, X, device, *, dense: bool | None = None):
        import torch

        n, g = X.shape
        nbytes = 4 * n * g
        if dense is None:
            if device.type == "cuda":
                free, _ = torch.cuda.mem_get_info(device)
                dense = nbytes <= _DENSE_FRACTION_GPU * free
            else:
                dense = nbytes <= _DENSE_MAX_BYTES_CPU
        self.dense = bool(dense)
        self.shape = (n, g)
        self.device = device
        if self.dense:
            if sparse.issparse(X):
                # build the dense tensor in row chunks to bound host memory
                self.X = torch.empty((n, g), dtype=torch.float32, device=device)
                step = max(1, int(2**28 // max(g, 1) // 4))
                for s in range(0, n, step):
                    self.X[s : s + step] = torch.from_numpy(X[s : s + step].toarray()).to(device)
            else:
                self.X = torch.as_tensor(np.ascontiguousarray(X), dtype=torch.float32, device=device)
        else:
            X = sparse.csr_matrix(X)
            self.indptr = torch.as_tensor(X.indptr.astype(np.int64), device=device)
            self.indices = torch.as_tensor(X.indices.astype(np.int64), device=device)
            self.data = torch.as_tensor(X.data.astype(np.float32), device=device)

    def rows(self, idx):
        import torch

        if self.dense:
            return self.X.index_select(0, idx)
        starts = self.indptr.index_select(0, idx)
        lens = self.indptr.index_select(0, idx + 1) - starts
        b = idx.shape[0]
        out = torch.zeros((b, self.shape[1]), dtype=torch.float32, device=self.device)
        total = int(lens.sum())
        if total == 0:
            return out
        row_of = torch.repeat_interleave(torch.arange(b, device=self.device), lens, output_size=total)
        offs = torch.cumsum(lens, 0) - lens
        pos = torch.arange(total, device=self.device) - offs.index_select(0, row_of) + starts.index_select(0, row_of)
        out[row_of, self.indices.index_select(0, pos)] = self.data.index_select(0, pos)
        return out


def _registry_tensors(model, device) -> tuple[DeviceMatrix | None, dict]:
    """Every registered field except X as a device tensor with scvi-tools' loader dtypes."""
    import torch
    from scvi import REGISTRY_KEYS
    from scvi.data._utils import registry_key_to_default_dtype

    mgr = model.adata_manager
    out = {}
    for key in mgr.data_registry:
        if key == REGISTRY_KEYS.X_KEY:
            continue
        val = mgr.get_from_registry(key)
        if isinstance(val, pd.DataFrame):
            val = val.to_numpy()
        val = np.asarray(val)
        dtype = registry_key_to_default_dtype(key)
        out[key] = torch.as_tensor(val.astype(dtype), device=device)
    return out


def _split(n: int, rng: np.random.Generator, train_size: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    """Random train/validation split as scvi-tools' DataSplitter (``ceil(0.9 n)`` training cells)."""
    n_train = int(math.ceil(train_size * n))
    perm = rng.permutation(n)
    return np.sort(perm[:n_train]), np.sort(perm[n_train:])


def fast_train(
    model, *, sched: Any, device, random_state: int, early_stopping: bool = True, dense: bool | None = None
) -> dict[str, Any]:
    """Train ``model.module`` with mini-batches gathered on the device from a device-resident matrix.

    Same objective, optimiser (Adam, ``eps=0.01``, ``weight_decay=1e-6``), KL warm-up and validation ELBO
    as scvi-tools' ``TrainingPlan``; no DataLoader, no collate, no host-to-device copy per step.
    ``sched`` is the schedule of ``tl._integrate.default_training`` (``lr``, ``batch_size``, ``max_epochs``,
    ``n_epochs_kl_warmup``, ``check_val_every_n_epoch``, ``early_stopping_patience``); it is not imported here, so
    that this module does not import ``_integrate`` back.
    """
    import torch
    from scvi import REGISTRY_KEYS

    module = model.module
    module.to(device)
    Xdev = DeviceMatrix(model.adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY), device, dense=dense)
    other = _registry_tensors(model, device)
    n = Xdev.shape[0]
    rng = np.random.default_rng(random_state)
    train_idx, val_idx = _split(n, rng)
    train_t = torch.as_tensor(train_idx, device=device)
    val_t = torch.as_tensor(val_idx, device=device)
    gen = torch.Generator(device=device)
    gen.manual_seed(int(random_state))

    params = filter(lambda p: p.requires_grad, module.parameters())
    opt = torch.optim.Adam(params, lr=sched.lr, eps=0.01, weight_decay=1e-6)
    bs = sched.batch_size
    n_train = len(train_idx)
    n_full, rem = divmod(n_train, bs)
    # as scvi-tools: keep the last partial batch unless it is tiny (batch norm needs > 1 cell)
    bounds = [(i * bs, (i + 1) * bs) for i in range(n_full)]
    if rem >= 3 or n_full == 0:
        bounds.append((n_full * bs, n_train))

    def batch(idx):
        t = {k: v.index_select(0, idx) for k, v in other.items()}
        t[REGISTRY_KEYS.X_KEY] = Xdev.rows(idx)
        return t

    history: dict[str, list[float]] = {"elbo_train": [], "elbo_validation": [], "kl_weight": []}
    best, wait, epochs_run, stopped = math.inf, 0, 0, False
    bar = progress(total=sched.max_epochs, desc="scVI epochs", unit="epoch")
    for epoch in range(sched.max_epochs):
        bar.update(1)
        kl_weight = min(1.0, epoch / sched.n_epochs_kl_warmup) if sched.n_epochs_kl_warmup else 1.0
        module.train()
        perm = train_t.index_select(0, torch.randperm(n_train, generator=gen, device=device))
        elbo_sum = torch.zeros((), device=device)
        for s, e in bounds:
            _, _, losses = module(batch(perm[s:e]), loss_kwargs={"kl_weight": kl_weight})
            opt.zero_grad(set_to_none=True)
            losses.loss.backward()
            opt.step()
            elbo_sum += (losses.reconstruction_loss_sum + losses.kl_local_sum).detach()
        epochs_run = epoch + 1
        history["elbo_train"].append(float(elbo_sum) / n_train)
        history["kl_weight"].append(float(kl_weight))
        if len(val_idx) and (epoch + 1) % sched.check_val_every_n_epoch == 0:
            module.eval()
            v = torch.zeros((), device=device)
            with torch.no_grad():
                for s in range(0, len(val_idx), 8192):
                    _, _, losses = module(batch(val_t[s : s + 8192]), loss_kwargs={"kl_weight": 1.0})
                    v += losses.reconstruction_loss_sum + losses.kl_local_sum
            val = float(v) / len(val_idx)
            history["elbo_validation"].append(val)
            if early_stopping and epoch + 1 > sched.n_epochs_kl_warmup:
                if val < best:
                    best, wait = val, 0
                else:
                    wait += 1
                    if wait >= sched.early_stopping_patience:
                        stopped = True
                        break
            elif val < best:
                best = val
    bar.close()
    module.eval()
    model.is_trained_ = True
    model.train_indices, model.validation_indices, model.test_indices = train_idx, val_idx, np.array([], dtype=int)
    model.history_ = {k: pd.DataFrame({k: v}) for k, v in history.items()}
    model._immunomood_device_data = (Xdev, other)
    return {"epochs_run": epochs_run, "early_stopped": stopped, "history": history, "dense_on_device": Xdev.dense}


def fast_latent(model, device, chunk: int = 16384) -> np.ndarray:
    """Posterior means (``qz.loc``) computed on the device in large chunks from the resident data."""
    import torch
    from scvi import REGISTRY_KEYS

    Xdev, other = model._immunomood_device_data
    module = model.module
    module.eval()
    n = Xdev.shape[0]
    out = []
    with torch.no_grad():
        for s in range(0, n, chunk):
            idx = torch.arange(s, min(n, s + chunk), device=device)
            t = {k: v.index_select(0, idx) for k, v in other.items()}
            t[REGISTRY_KEYS.X_KEY] = Xdev.rows(idx)
            inf = module.inference(**module._get_inference_input(t))
            out.append(inf["qz"].loc.detach().cpu().numpy())
    del model._immunomood_device_data
    return np.concatenate(out, 0)
