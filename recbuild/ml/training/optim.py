"""The optimizers: Adam for dense parameters, lazy (sparse) Adam for large embedding tables, run
through torch's functional updates with their state kept here."""

from __future__ import annotations

from typing import Any, Callable

SPARSE_TABLE_ROWS = 20000  # tables at least this large get sparse gradients + SparseAdam


class _Optimizers:
    """Lazy (sparse) Adam for large embedding tables, Adam for the rest.

    A dense Adam step touches every row of every table each step (most of the step time with
    100k-bucket tables); sparse gradients update only the rows the batch looked up. Small tables
    stay dense: coalescing a sparse gradient with many repeated rows (TDM's few internal nodes)
    costs more than updating the whole table.
    """

    def __init__(self, optimizers):
        self.optimizers = optimizers

    def zero_grad(self):
        for opt in self.optimizers:
            opt.zero_grad()

    def step(self):
        for opt in self.optimizers:
            opt.step()


class _AdamState:
    """The update of torch.optim.Adam / SparseAdam with their default settings, computed by torch's
    own functional ``adam`` / ``sparse_adam``, with the moments and step counts kept here.

    Why not torch.optim: constructing an Optimizer, and the first zero_grad() and step(), import
    torch._dynamo (~1 s before the first step, the compiler stack training never uses); the
    functional updates do not. Same arithmetic, same bytes: tests/test_training.py steps both side
    by side and compares the weights bit for bit.
    """

    BETAS = (0.9, 0.999)
    EPS = 1e-8

    def __init__(self, params, lr: float):
        self.params = list(params)
        self.lr = lr
        self.state: dict[int, dict] = {}

    def zero_grad(self) -> None:
        for param in self.params:
            param.grad = None

    def _with_grad(self) -> list:
        return [p for p in self.params if p.grad is not None]

    def _moments(self, param, first_step: Callable[[], Any]) -> dict:
        import torch

        if id(param) not in self.state:
            self.state[id(param)] = {
                "step": first_step(),
                "exp_avg": torch.zeros_like(param, memory_format=torch.preserve_format),
                "exp_avg_sq": torch.zeros_like(param, memory_format=torch.preserve_format)}
        return self.state[id(param)]


class _DenseAdam(_AdamState):
    def step(self) -> None:
        import torch
        from torch.optim.adam import adam

        # torch.optim.Adam keeps its step count in a 0-d CPU tensor of this dtype
        step_dtype = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
        with torch.no_grad():
            params = self._with_grad()
            states = [self._moments(p, lambda: torch.tensor(0.0, dtype=step_dtype)) for p in params]
            adam(params, [p.grad for p in params], [s["exp_avg"] for s in states],
                 [s["exp_avg_sq"] for s in states], [], [s["step"] for s in states],
                 amsgrad=False, has_complex=False, beta1=self.BETAS[0], beta2=self.BETAS[1],
                 lr=self.lr, weight_decay=0, eps=self.EPS, maximize=False, foreach=None,
                 capturable=False, differentiable=False, fused=None, grad_scale=None,
                 found_inf=None, decoupled_weight_decay=False)


class _SparseAdam(_AdamState):
    def step(self) -> None:
        import torch
        from torch.optim._functional import sparse_adam

        with torch.no_grad():
            params = self._with_grad()
            states = [self._moments(p, lambda: 0) for p in params]
            for state in states:
                state["step"] += 1
            sparse_adam(params, [p.grad for p in params], [s["exp_avg"] for s in states],
                        [s["exp_avg_sq"] for s in states], [s["step"] for s in states],
                        eps=self.EPS, beta1=self.BETAS[0], beta2=self.BETAS[1], lr=self.lr,
                        maximize=False)


def _make_optimizer(model, lr: float) -> _Optimizers:
    import torch

    sparse_params, sparse_ids = [], set()
    for module in model.modules():
        if not isinstance(module, torch.nn.Embedding) or module.num_embeddings < SPARSE_TABLE_ROWS:
            continue
        module.sparse = True  # training only: the flag is not part of the state_dict
        if id(module.weight) not in sparse_ids:
            sparse_ids.add(id(module.weight))
            sparse_params.append(module.weight)
    dense_params = [p for p in model.parameters() if id(p) not in sparse_ids]
    optimizers = []
    if sparse_params:
        optimizers.append(_SparseAdam(sparse_params, lr))
    if dense_params:
        optimizers.append(_DenseAdam(dense_params, lr))
    return _Optimizers(optimizers)
