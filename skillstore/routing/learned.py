"""The learned router: a small classifier on an input's token n-grams or the base's pooled
hidden states."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import CorruptPackError, RoutingError, unknown_name

NONE_CLASS = "<none>"  # inputs that belong to the base's general skills: no pack
#: 2: the features the router reads are named; 3: per-class centroids and familiarity bounds
ROUTER_FORMAT = "skillstore.router/3"
#: Router files this version reads; a /1 file read pooled hidden states (FEATURES "hidden"), and
#: /1 and /2 files have no familiarity bounds (they abstain on their threshold only).
READABLE_FORMATS = ("skillstore.router/1", "skillstore.router/2", ROUTER_FORMAT)
# Calibration never abstains on more than this share of the in-skill calibration prompts that
# the router routes to their pack (see calibrated_threshold).
KEEP_ROUTED = 0.99
#: The highest abstention threshold calibration sets. Above it the threshold would separate
#: probabilities that differ in the third decimal: a router sure of its inputs (n-gram features
#: saturate near 1) would abstain on one calibration prompt's account, and evaluation reuse,
#: which cannot tell a route within 1e-3 of the threshold, could predict none of its routes.
MAX_THRESHOLD = 0.99


def pooled_features(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                    layer: int = -1) -> torch.Tensor:
    """Mean of one hidden layer of the base over the real (unmasked) tokens: (batch, hidden)."""
    body = model.base_model if hasattr(model, "base_model") else model
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    with torch.no_grad():
        out = body(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
    hidden = out.hidden_states[layer].float()
    mask = attention_mask.to(hidden.device, hidden.dtype).unsqueeze(-1)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)


#: Buckets of the hashed n-gram features, and the n-gram lengths counted.
NGRAM_DIM = 4096
NGRAM_ORDERS = (1, 2, 3)
# Odd multipliers of a polynomial hash over token ids (int64 never overflows at these sizes:
# ids stay below 2**21 and each product below 2**42), one offset per order.
_HASH = (1_000_003, 998_244_353, 754_974_721)


def token_ngrams(input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                 dim: int = NGRAM_DIM, orders: Sequence[int] = NGRAM_ORDERS) -> torch.Tensor:
    """Counts of the input's token n-grams (orders ``orders``) hashed into ``dim`` buckets:
    (batch, dim). Only n-grams of real (unmasked) tokens count, whichever side is padded.

    The words a request uses ("backwards", "alphabetical") are what tells skills apart when the
    request names none of them; a tiny base's hidden states blur them (docs/composition.md).
    """
    ids = input_ids.detach().long().cpu()
    mask = (torch.ones_like(ids) if attention_mask is None else attention_mask.cpu()).bool()
    out = torch.zeros(ids.shape[0], dim)
    for n in orders:
        if ids.shape[1] < n:
            continue
        code = torch.full_like(ids[:, : ids.shape[1] - n + 1], n)
        real = torch.ones_like(code, dtype=torch.bool)
        for i in range(n):
            window = slice(i, ids.shape[1] - n + 1 + i)
            code = (code * _HASH[i % len(_HASH)] + ids[:, window]) % (1 << 31)
            real &= mask[:, window]
        out.scatter_add_(1, code % dim, real.float())
    return out


@dataclass(frozen=True)
class FeatureKind:
    """One thing a router may read of an input: ``read(model, input_ids, attention_mask, layer)``
    gives (batch, dim). ``min_scale`` is the smallest standardising divisor (see
    ``feature_scale``): 0.1 for counts, so a rare n-gram is not blown up into a strong signal;
    tiny for hidden states, whose scale is the model's."""

    name: str
    read: Callable[[nn.Module, torch.Tensor, torch.Tensor | None, int], torch.Tensor]
    min_scale: float


FEATURES: dict[str, FeatureKind] = {f.name: f for f in (
    FeatureKind("ngrams", lambda model, ids, mask, layer: token_ngrams(ids, mask), 0.1),
    FeatureKind("hidden", pooled_features, 1e-6),
)}
#: Measured on the zoo's held-out templates, n-grams route 0.99 and hidden states 0.45
#: (docs/composition.md, "Routing without the keyword").
DEFAULT_FEATURES = "ngrams"


def feature_kind(name: str) -> FeatureKind:
    if name not in FEATURES:
        raise unknown_name("router features", name, tuple(FEATURES))
    return FEATURES[name]


def input_features(model: nn.Module, input_ids: torch.Tensor,
                   attention_mask: torch.Tensor | None, *, features: str = DEFAULT_FEATURES,
                   layer: int = -1) -> torch.Tensor:
    """The router features ``features`` (a FEATURES name) of a batch, on the CPU."""
    return feature_kind(features).read(model, input_ids, attention_mask, layer).cpu()


def prompt_features(model: nn.Module, tokenizer, prompts: Sequence[str], *, layer: int = -1,
                    features: str = DEFAULT_FEATURES, batch_size: int = 64) -> torch.Tensor:
    device = next(model.parameters()).device
    chunks = []
    for start in range(0, len(prompts), batch_size):
        enc = tokenizer(list(prompts[start:start + batch_size]), return_tensors="pt", padding=True)
        chunks.append(input_features(model, enc["input_ids"].to(device),
                                     enc["attention_mask"].to(device), features=features,
                                     layer=layer))
    return torch.cat(chunks)


def feature_scale(feats: torch.Tensor, min_scale: float) -> torch.Tensor:
    """Per-feature divisor for standardising: the training std, at least ``min_scale``; a
    feature that never varied in training gets infinity, so it reads as 0 (the router learned
    nothing from it, and an n-gram first seen at inference must not swamp the ones it knows)."""
    std = feats.std(0)
    return torch.where(std > 1e-6, std.clamp_min(min_scale), torch.full_like(std, float("inf")))


class RouterClassifier(nn.Module):
    """Standardised features -> one hidden layer -> logits over packs plus the no-pack class.

    With a ``threshold``, an input whose largest class probability is below it abstains: it
    gets no pack (the base's own behaviour), whatever class is on top. None never abstains.
    An input also abstains when it is unfamiliar to its top class: its cosine similarity to
    the mean of that class's training features is below the class's ``familiar`` bound
    (``familiarity_bounds``; -inf, the default, never abstains). A softmax is sure of inputs
    far from everything it was fitted on; the similarity is not.
    """

    def __init__(self, classes: Sequence[str], dim: int, *, hidden: int = 64, layer: int = -1,
                 top_k: int = 1, base_fingerprint: str | None = None,
                 threshold: float | None = None, features: str = DEFAULT_FEATURES):
        super().__init__()
        if len(set(classes)) != len(classes) or len(classes) < 2:
            raise RoutingError(
                f"Router classes {list(classes)} must be at least two distinct names.")
        if not 1 <= top_k <= len(classes):
            raise RoutingError(
                f"Router top_k={top_k} must be between 1 and {len(classes)} (the classes).")
        self.classes, self.layer, self.top_k = list(classes), layer, top_k
        feature_kind(features)
        self.base_fingerprint, self.threshold = base_fingerprint, threshold
        self.features = features
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.register_buffer("centroid", torch.zeros(len(classes), dim))
        self.register_buffer("familiar", torch.full((len(classes),), float("-inf")))
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, len(classes)))

    @property
    def feature_key(self) -> tuple[str, int]:
        """What the router reads of an input: its features' name and (for "hidden") layer."""
        return self.features, self.layer

    def featurize(self, model: nn.Module, tokenizer, prompts: Sequence[str]) -> torch.Tensor:
        return prompt_features(model, tokenizer, prompts, layer=self.layer,
                               features=self.features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net((features.float() - self.mean) / self.std)

    def probs(self, features: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self(features.to(self.mean.device)).softmax(-1)

    def similarity(self, features: torch.Tensor) -> torch.Tensor:
        """(batch, classes): cosine similarity of each input's features to each class's
        training centroid."""
        x = nn.functional.normalize(features.float().to(self.mean.device), dim=-1)
        return x @ self.centroid.T

    def abstains(self, probs: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """(batch,) bool: the inputs whose top probability is below the threshold, or whose
        similarity to their top class is below that class's familiarity bound."""
        top = probs.max(-1)
        off = torch.zeros(probs.shape[0], dtype=torch.bool, device=probs.device)
        if self.threshold is not None:
            off |= top.values < self.threshold
        bound = self.familiar[top.indices]
        if torch.isfinite(bound).any():
            sim = self.similarity(features).gather(-1, top.indices.unsqueeze(-1)).squeeze(-1)
            off |= sim < bound
        return off

    def class_weights(self, features: torch.Tensor) -> torch.Tensor:
        """(batch, classes): 1 on the argmax for top-1, else renormalised top-k probabilities;
        an all-zero row (no pack) where the router abstains."""
        p = self.probs(features)
        top = p.topk(self.top_k, dim=-1)
        out = torch.zeros_like(p).scatter(-1, top.indices, top.values)
        out = out / out.sum(-1, keepdim=True)
        return out.masked_fill(self.abstains(p, features).unsqueeze(-1), 0.0)

    def predict(self, features: torch.Tensor) -> list[str]:
        """The top class of each input, NONE_CLASS where the router abstains."""
        p = self.probs(features)
        off = self.abstains(p, features).tolist()
        return [NONE_CLASS if o else self.classes[i]
                for i, o in zip(p.argmax(-1).tolist(), off, strict=True)]

    def familiarity(self) -> dict[str, float]:
        """class -> familiarity bound, for the classes that have one."""
        return {c: round(float(b), 4) for c, b in zip(self.classes, self.familiar.tolist(),
                                                      strict=True) if b != float("-inf")}

    def config(self) -> dict:
        return {"format": ROUTER_FORMAT, "classes": self.classes, "layer": self.layer,
                "top_k": self.top_k, "hidden": self.net[0].out_features,
                "dim": self.mean.numel(), "base_fingerprint": self.base_fingerprint,
                "threshold": self.threshold, "features": self.features}


def keep_bound(probs: torch.Tensor, labels: torch.Tensor, classes: Sequence[str],
               keep: float = KEEP_ROUTED) -> float | None:
    """The largest threshold that keeps ``keep`` of the in-skill calibration inputs the router
    routes to their pack (label and argmax the same pack, not NONE_CLASS) still routed there;
    None when it routes none of them right."""
    pack = torch.tensor([c != NONE_CLASS for c in classes])[labels]
    top = probs.max(-1)
    right = top.values[pack & (top.indices == labels)].sort().values
    if right.numel() == 0:
        return None
    return float(right[int((1.0 - keep) * right.numel())])


def calibrated_threshold(probs: torch.Tensor, labels: torch.Tensor, classes: Sequence[str],
                         keep: float = KEEP_ROUTED) -> float | None:
    """The abstention threshold from held-out calibration inputs: the smallest that routes the
    most of them right (abstaining is right for a NONE_CLASS input, wrong for an in-skill one),
    no larger than ``keep_bound`` (so at most 1 - ``keep`` of the right in-skill routes are
    lost) or MAX_THRESHOLD; None (never abstain) when abstaining gets none of them more right.

    A router that is sure of its training forms keeps every route: the threshold only takes
    away the low-confidence routes that sent general inputs to a pack.
    """
    kept = keep_bound(probs, labels, classes, keep)
    bound = MAX_THRESHOLD if kept is None else min(kept, MAX_THRESHOLD)
    top = probs.max(-1)
    none = torch.tensor([c == NONE_CLASS for c in classes])[labels]
    routed_right = (top.indices == labels) & ~none
    routed_none = torch.tensor([classes[i] == NONE_CLASS for i in top.indices.tolist()])
    best, best_right = None, int(routed_right.sum() + (none & routed_none).sum())
    for t in top.values.sort().values.unique().tolist():
        if t > bound:
            break
        kept = top.values >= t
        right = int((routed_right & kept).sum() + (none & (routed_none | ~kept)).sum())
        if right > best_right:
            best, best_right = t, right
    return best


def set_familiarity(clf: RouterClassifier, feats: torch.Tensor, labels: torch.Tensor,
                    held: torch.Tensor) -> None:
    """Each class's centroid (the normalised mean of its fitted inputs' normalised features)
    and, for each pack class, its familiarity bound: just above the highest similarity to that
    class of any NONE_CLASS input (the general inputs we know look at most this much like the
    skill), where that is below every one of the class's own held-out inputs (``held``; its
    fitted ones where none are held out). Where a general input is as like the skill as one of
    its own prompts, similarity cannot tell them apart and the class gets no bound (-inf); so
    does every class when there are no NONE_CLASS inputs.
    """
    x = nn.functional.normalize(feats.float(), dim=-1)
    for c in range(len(clf.classes)):
        clf.centroid[c] = nn.functional.normalize(x[(labels == c) & ~held].mean(0), dim=0)
    clf.familiar.fill_(float("-inf"))
    if NONE_CLASS not in clf.classes:
        return
    none = labels == clf.classes.index(NONE_CLASS)
    sim = x @ clf.centroid.T
    for c, name in enumerate(clf.classes):
        own = (labels == c) & held
        own = own if own.any() else labels == c
        if name == NONE_CLASS or not own.any():
            continue
        ceiling = torch.nextafter(sim[none, c].max(), torch.tensor(float("inf")))
        if ceiling < sim[own, c].min():
            clf.familiar[c] = ceiling


#: Below this share of non-zero standardised features, fitting multiplies them as sparse.
SPARSE_BELOW = 0.1


class _SparseRowsTimesWeight(torch.autograd.Function):
    """``rows @ weight.T`` for fixed sparse rows (CSR, and its transpose for the gradient)."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, rows: torch.Tensor, rows_t: torch.Tensor):
        ctx.rows_t = rows_t
        return rows @ weight.T.contiguous()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return (ctx.rows_t @ grad.contiguous()).T, None, None


def fitting_forward(clf: RouterClassifier, feats: torch.Tensor) -> Callable[[], torch.Tensor]:
    """``clf(feats)`` for a fixed training batch, made cheap.

    The batch is standardised once, not at every step. Where it is sparse (n-gram counts: about
    70 of 4,096 buckets are non-zero in a prompt), standardising as ``x / std - mean / std``
    lets the first layer multiply the counts as a sparse matrix: the same logits up to float
    rounding, for a fraction of the work. Dense features (hidden states) are multiplied as
    they are.
    """
    scaled = feats.float().to(clf.mean.device) / clf.std  # 0 where std is inf: never varied
    if scaled.count_nonzero() > SPARSE_BELOW * scaled.numel():
        standard = scaled - clf.mean / clf.std
        return lambda: clf.net(standard)
    with warnings.catch_warnings():  # "sparse CSR support is in beta": matmul is all we use
        warnings.simplefilter("ignore", UserWarning)
        rows, rows_t = scaled.to_sparse_csr(), scaled.T.contiguous().to_sparse_csr()
    shift = clf.mean / clf.std
    first, rest = clf.net[0], clf.net[1:]

    def forward() -> torch.Tensor:
        hidden = _SparseRowsTimesWeight.apply(first.weight, rows, rows_t)
        return rest(hidden + first.bias - shift @ first.weight.T)
    return forward


def fit_classifier(clf: RouterClassifier, feats: torch.Tensor, labels: torch.Tensor, *,
                   steps: int, lr: float, shortcut: bool = True) -> None:
    """Standardise ``clf`` on ``feats`` and fit it by full-batch AdamW, then set it to eval.
    ``shortcut=False`` runs the classifier's own forward at every step instead of
    ``fitting_forward`` (what `bench routing` compares it with)."""
    clf.mean.copy_(feats.mean(0))
    clf.std.copy_(feature_scale(feats, feature_kind(clf.features).min_scale))
    opt = torch.optim.AdamW(clf.parameters(), lr=lr, weight_decay=1e-3)
    logits = fitting_forward(clf, feats) if shortcut else (lambda: clf(feats))
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(logits(), labels).backward()
        opt.step()
    clf.eval()


@dataclass(frozen=True)
class RouterTraining:
    classifier: RouterClassifier
    train_accuracy: float
    n_examples: int
    n_calibration: int = 0  # prompts held out of fitting to calibrate the threshold


def train_router(model: nn.Module, tokenizer, prompts: Mapping[str, Sequence[str]], *,
                 layer: int = -1, top_k: int = 1, hidden: int = 64, steps: int = 300,
                 lr: float = 1e-2, seed: int = 0, calibration: float = 0.0,
                 features: str = DEFAULT_FEATURES) -> RouterTraining:
    """Fit the classifier on prompts per class (a pack name, or NONE_CLASS for general inputs).

    With ``calibration`` > 0, the last that share of each class's prompts is held out of fitting
    and sets the abstention threshold (``calibrated_threshold``); with 0 the router never
    abstains. Full-batch AdamW on features computed once (`fitting_forward`).
    """
    empty = [name for name, items in prompts.items() if not items]
    if empty or len(prompts) < 2:
        raise RoutingError("Router training needs prompts for at least two classes; "
                           f"empty: {empty or 'n/a'}.")
    classes = list(prompts)
    fit, held = {}, {}
    for name in classes:
        cut = len(prompts[name]) - int(len(prompts[name]) * calibration)
        cut = max(cut, 1)  # every class keeps a prompt to fit on
        fit[name], held[name] = list(prompts[name][:cut]), list(prompts[name][cut:])
    texts = [t for name in classes for t in fit[name]]
    labels = torch.tensor([i for i, name in enumerate(classes) for _ in fit[name]])
    feats = prompt_features(model, tokenizer, texts, layer=layer, features=features)
    torch.manual_seed(seed)
    clf = RouterClassifier(classes, feats.shape[1], hidden=hidden, layer=layer, top_k=top_k,
                           base_fingerprint=getattr(model, "skillstore_fingerprint", None),
                           features=features)
    fit_classifier(clf, feats, labels, steps=steps, lr=lr)
    accuracy = (clf.probs(feats).argmax(-1) == labels).float().mean().item()
    cal_texts = [t for name in classes for t in held[name]]
    cal_feats = clf.featurize(model, tokenizer, cal_texts) if cal_texts else feats[:0]
    cal_labels = torch.tensor([i for i, name in enumerate(classes) for _ in held[name]],
                              dtype=torch.long)
    if cal_texts:
        clf.threshold = calibrated_threshold(clf.probs(cal_feats), cal_labels, classes)
    set_familiarity(clf, torch.cat([feats, cal_feats]), torch.cat([labels, cal_labels]),
                    held=torch.arange(len(texts) + len(cal_texts)) >= len(texts))
    return RouterTraining(clf, accuracy, len(texts), len(cal_texts))


def save_router(clf: RouterClassifier, path: str | Path) -> Path:
    """One safetensors file; the JSON config rides in its metadata. Never pickle."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in clf.state_dict().items()}
    save_file(tensors, str(path),
              metadata={"skillstore_router": json.dumps(clf.config(), sort_keys=True)})
    return path


def load_router(path: str | Path) -> RouterClassifier:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise RoutingError(f"Router file {str(path)!r} does not exist; train the router with "
                           "`skillstore state route`.")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        config = json.loads(meta["skillstore_router"])
        if config.get("format") not in READABLE_FORMATS:
            raise KeyError("format")
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises several types for damaged headers
        raise CorruptPackError(f"{str(path)!r} is not a skillstore router file ({exc}); "
                               "retrain the router.") from None
    clf = RouterClassifier(config["classes"], config["dim"], hidden=config["hidden"],
                           layer=config["layer"], top_k=config["top_k"],
                           base_fingerprint=config["base_fingerprint"],
                           threshold=config.get("threshold"),  # absent in older files: never
                           features=config.get("features", "hidden"))  # /1 read hidden states
    if config["format"] != ROUTER_FORMAT:  # no familiarity before /3: never abstain on it
        tensors = {**tensors, "centroid": clf.centroid, "familiar": clf.familiar}
    clf.load_state_dict(tensors)
    clf.eval()
    return clf
