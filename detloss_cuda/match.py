"""Hungarian matching of the DETR family (transformers' ``HungarianMatcher`` and its
subclasses), fused: the matching cost of each image's queries against that image's targets
only, in one kernel (``torch.ops.detloss.detr_match_cost``; the formula in
``csrc/math/box.h``), then each image's block solved by SciPy's ``linear_sum_assignment``
after one host copy of the blocks, or the whole batch by ``torch-linear-assignment`` on the
GPU where it is installed (``solve``).

The libraries build the cost of every query of the batch against every target of the batch,
``(B·Q) × ΣT`` (a softmax or focal class cost, ``cdist(p=1)``, a GIoU matrix and their weighted
sum, each a tensor of that size), copy it to the host and solve only the diagonal blocks:
at 16 images that is 16 times the entries used.
"""
import torch

from . import _ops

__all__ = ["detr_match_cost", "solve", "hungarian_match", "SOLVERS", "default_solver"]


def _check(name, t):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"detr_match_cost: {name} must be a torch.Tensor, got {type(t).__name__}")


def detr_match_cost(logits, pred_boxes, target_labels, target_boxes, sizes, *, class_cost=1.0,
                    bbox_cost=1.0, giou_cost=1.0, class_kind="softmax", alpha=0.25, gamma=2.0,
                    convention="transformers"):
    """The matchers' cost, per image: ``[B, Q, max(sizes)]``, entry ``[b, q, j]`` the cost of
    query q of image b against target j of image b (``sizes[b]`` targets; the entries beyond
    them are 0). ``logits [B, Q, C]``, ``pred_boxes [B, Q, 4]`` and ``target_boxes [T, 4]``
    centre-size (cx, cy, w, h), ``target_labels [T]`` the classes of every image's targets,
    concatenated in image order (as the libraries concatenate them), ``sizes`` each image's
    target count (a list of ints or a 1-D tensor).

    ``cost = bbox_cost·L1 + class_cost·class - giou_cost·GIoU``, the class term
    ``-softmax(logits)[label]`` (``class_kind='softmax'``, DETR's) or the focal cost
    ``alpha·(1-p)^gamma·(-log(p + 1e-8)) - (1-alpha)·p^gamma·(-log(1-p + 1e-8))`` of
    ``p = sigmoid(logit)`` (``'focal'``, Deformable DETR's, RT-DETR's, ...); NaN and ±inf are
    replaced by the dtype's largest value, as the libraries do. With ``class_kind='given'``
    ``logits`` is the class cost itself, ``[B, Q, max(sizes)]`` in the output's layout (a
    matcher whose class cost is a matmul, Grounding DINO's), and ``target_labels`` may be None.

    ``convention='ultralytics'``: ultralytics' ``HungarianMatcher`` instead:
    ``class_cost·class + bbox_cost·L1 + giou_cost·(1 - GIoU)``, its ``bbox_iou`` GIoU (``eps``
    1e-7 in the union and the enclosing area), NaN and ±inf replaced by 0.
    Forward only (the matchers run under ``no_grad``); deterministic."""
    if target_labels is None and class_kind == "given" and isinstance(target_boxes, torch.Tensor):
        target_labels = torch.zeros(target_boxes.shape[:1], dtype=torch.int64,
                                    device=target_boxes.device)
    for name, t in (("logits", logits), ("pred_boxes", pred_boxes),
                    ("target_labels", target_labels), ("target_boxes", target_boxes)):
        _check(name, t)
    if isinstance(sizes, torch.Tensor):
        sizes = sizes.tolist()
    try:
        sizes = [int(s) for s in sizes]
    except (TypeError, ValueError):
        raise TypeError(f"detr_match_cost: sizes must be a list of ints (each image's target "
                        f"count), got {sizes!r}") from None
    for name, v in (("class_cost", class_cost), ("bbox_cost", bbox_cost), ("giou_cost", giou_cost),
                    ("alpha", alpha), ("gamma", gamma)):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"detr_match_cost: {name} must be a number, got {type(v).__name__}")
    return _ops.ops.detr_match_cost(logits, pred_boxes, target_labels, target_boxes, sizes,
                                    class_kind, float(class_cost), float(bbox_cost),
                                    float(giou_cost), float(alpha), float(gamma), convention)


SOLVERS = ("auto", "scipy", "batched")
default_solver = "auto"  # what solve() (and the patched matchers) use when not told


def _batched_solver():
    try:
        from torch_linear_assignment import batch_linear_assignment
    except ImportError:
        return None
    return batch_linear_assignment


def solve(cost, sizes, solver=None, groups=1):
    """Each image's block ``cost[b, :, :sizes[b]]`` solved: a list of ``(query indices, target
    indices)`` int64 tensors on the CPU, as the libraries' matchers return them.

    ``groups`` (LW-DETR's and RF-DETR's ``group_detr``): the queries form that many groups of
    ``Q // groups`` (a remainder is left out, as the libraries' split leaves it), each matched
    to the image's targets apart, all groups' blocks in the one host copy (or batched call);
    an image's indices are its groups' concatenated, offset by each group's first query.

    ``solver`` (default: ``detloss_cuda.match.default_solver``, ``'auto'``):

    * ``'scipy'``: one host copy of ``cost``, SciPy's ``linear_sum_assignment`` on each block
      (the libraries' solver). Where several assignments reach the minimum, the one SciPy
      returns for that block (the libraries' too, up to the last ulp of the costs).
    * ``'batched'``: the whole padded batch in one call of ``torch_linear_assignment``'s
      ``batch_linear_assignment`` (an optional dependency: Triton on CUDA GPUs of compute
      capability 8.0 and newer, SciPy elsewhere), in float64 as SciPy solves, and one host
      copy of the ``[B, Q]`` assignment. Each image's columns past its targets are set to 0
      for every query (a constant: they change no image's optimum); it needs
      ``Q >= max(sizes)``. The same matchings where
      the optimum is unique; where it is not, another optimal one (the same total cost).
    * ``'auto'``: ``'batched'`` where ``cost`` is on a CUDA device, the package is installed
      and ``Q >= max(sizes)``; ``'scipy'`` otherwise.
    """
    solver = default_solver if solver is None else solver
    if solver not in SOLVERS:
        raise ValueError(f"solve: solver must be one of {SOLVERS}, got {solver!r}")
    sizes = [int(n) for n in sizes]
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"solve: groups must be an int >= 1, got {groups!r}")
    if groups > 1:  # [B, G·n, T] -> [B·G, n, T]: image b's group g is problem b·G + g
        B, n = cost.shape[0], cost.shape[1] // groups
        flat = cost[:, :groups * n].reshape(B * groups, n, cost.shape[-1])
        parts = solve(flat, [s for s in sizes for _ in range(groups)], solver)
        return [(torch.cat([parts[b * groups + g][0] + g * n for g in range(groups)]),
                 torch.cat([parts[b * groups + g][1] for g in range(groups)])) for b in range(B)]
    fits = cost.dim() == 3 and cost.shape[1] >= max(sizes, default=0)
    batched = _batched_solver() if solver != "scipy" else None
    if solver == "batched":
        if batched is None:
            raise ImportError("solve(solver='batched') needs torch-linear-assignment "
                              "(pip install torch-linear-assignment)")
        if not fits:
            raise ValueError(f"solve(solver='batched') needs at least as many queries as an "
                             f"image's targets: cost of shape {tuple(cost.shape)}, sizes {sizes}")
    elif solver == "auto" and not (cost.is_cuda and batched is not None and fits):
        batched = None
    if batched is not None and max(sizes, default=0) > 0:
        # each image's columns past its targets set to 0 (whatever the cost held there): a
        # constant for every query, so they move no image's optimum
        width = max(sizes)
        c = cost.detach()[:, :, :width].to(torch.float64, copy=True)
        past = torch.arange(width, device=c.device) >= torch.tensor(sizes, device=c.device)[:, None, None]
        assignment = batched(c.masked_fill_(past, 0)).cpu()
        out = []
        for b, n in enumerate(sizes):
            i = ((assignment[b] >= 0) & (assignment[b] < n)).nonzero().flatten()
            out.append((i, assignment[b, i]))
        return out

    from scipy.optimize import linear_sum_assignment

    blocks = cost.detach().cpu()
    out = []
    for b, n in enumerate(sizes):
        i, j = linear_sum_assignment(blocks[b, :, :int(n)])
        out.append((torch.as_tensor(i, dtype=torch.int64), torch.as_tensor(j, dtype=torch.int64)))
    return out


def hungarian_match(logits, pred_boxes, targets, *, class_cost=1.0, bbox_cost=1.0, giou_cost=1.0,
                    class_kind="softmax", alpha=0.25, gamma=2.0, solver=None):
    """transformers' ``HungarianMatcher.forward`` (and, with ``class_kind='focal'``, its
    Deformable DETR / RT-DETR subclasses'), fused: ``targets`` a list of dicts with
    ``class_labels [T_b]`` and ``boxes [T_b, 4]`` (cxcywh), one per image."""
    sizes = [len(t["boxes"]) for t in targets]
    labels = torch.cat([t["class_labels"] for t in targets])
    boxes = torch.cat([t["boxes"] for t in targets])
    cost = detr_match_cost(logits, pred_boxes, labels, boxes, sizes, class_cost=class_cost,
                           bbox_cost=bbox_cost, giou_cost=giou_cost, class_kind=class_kind,
                           alpha=alpha, gamma=gamma)
    return solve(cost, sizes, solver)
